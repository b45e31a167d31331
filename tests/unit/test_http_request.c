/*
 * HTTP request head tests: http_head_end over whole and piecewise input (the
 * connection's way of resuming a scan), http_request_parse on good heads
 * (request line, headers, keep-alive, body framing, methods) and on heads it
 * must refuse (malformed, too many or too large, NUL and bare CR bytes,
 * smuggling framings, other HTTP versions), header lookup, token lists and
 * query parameters with percent-decoding.
 *
 * Literals go through sizeof, not strlen, so that heads with a NUL inside
 * are passed whole.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "http/request.h"

/* Large (100 headers): one per test program, not on the stack. */
static struct http_request req;

#define PARSE(lit) http_request_parse(&req, (lit), sizeof(lit) - 1)

/* The header's value is exactly `want`. */
static void assert_header(const char *name, const char *want)
{
    const struct http_header *h = http_request_header(&req, name);
    assert_non_null(h);
    assert_int_equal(h->value_len, strlen(want));
    assert_memory_equal(h->value, want, h->value_len);
}

static void assert_slice(const char *p, size_t n, const char *want)
{
    assert_non_null(p);
    assert_int_equal(n, strlen(want));
    assert_memory_equal(p, want, n);
}

/* ---- request line and headers --------------------------------------------- */

static void test_complete_get(void **state)
{
    (void)state;
    static const char head[] = "GET /api/sessions?limit=5&before=9 HTTP/1.1\r\n"
                               "Host: chat.example\r\n"
                               "User-Agent: test/1.0\r\n"
                               "Accept: */*\r\n"
                               "\r\n";
    assert_int_equal(http_head_end(head, sizeof head - 1, 0), sizeof head - 1);
    assert_int_equal(http_request_parse(&req, head, sizeof head - 1), 0);
    assert_true(http_request_is_get(&req));
    assert_false(http_request_is_head(&req));
    assert_string_equal(http_request_method_name(&req), "GET");
    assert_int_equal(req.major, 1);
    assert_int_equal(req.minor, 1);
    assert_slice(req.url, req.url_len, "/api/sessions?limit=5&before=9");
    assert_slice(req.path, req.path_len, "/api/sessions");
    assert_slice(req.query, req.query_len, "limit=5&before=9");
    assert_int_equal(req.nheaders, 3);
    assert_slice(req.headers[0].name, req.headers[0].name_len, "Host");
    assert_slice(req.headers[0].value, req.headers[0].value_len, "chat.example");
    assert_slice(req.headers[2].name, req.headers[2].name_len, "Accept");
    assert_slice(req.headers[2].value, req.headers[2].value_len, "*/*");
    assert_true(req.keep_alive);
    assert_false(req.has_body);
    assert_false(req.has_transfer_encoding);
    assert_int_equal(req.content_length, -1);
    /* Nothing is copied: every slice points into the caller's buffer. */
    assert_true(req.url > head && req.url < head + sizeof head);
    for (unsigned i = 0; i < req.nheaders; i++) {
        assert_true(req.headers[i].name >= head && req.headers[i].name < head + sizeof head);
        assert_true(req.headers[i].value >= head && req.headers[i].value < head + sizeof head);
    }
}

static void test_path_without_query_or_fragment(void **state)
{
    (void)state;
    assert_int_equal(PARSE("GET /chat HTTP/1.1\r\n\r\n"), 0);
    assert_slice(req.path, req.path_len, "/chat");
    assert_null(req.query);
    assert_int_equal(PARSE("GET /page#section HTTP/1.1\r\n\r\n"), 0);
    assert_slice(req.path, req.path_len, "/page");
    /* An empty query is a query: present, zero bytes. */
    assert_int_equal(PARSE("GET /p? HTTP/1.1\r\n\r\n"), 0);
    assert_slice(req.path, req.path_len, "/p");
    assert_non_null(req.query);
    assert_int_equal(req.query_len, 0);
    /* Bare LF line ends are accepted, as clients send them. */
    assert_int_equal(PARSE("GET /lf HTTP/1.1\nHost: x\n\n"), 0);
    assert_slice(req.path, req.path_len, "/lf");
    assert_header("host", "x");
}

static void test_parse_resets_previous_result(void **state)
{
    (void)state;
    assert_int_equal(PARSE("POST /a?x=1 HTTP/1.1\r\nContent-Length: 3\r\nA: 1\r\nB: 2\r\n\r\n"), 0);
    assert_int_equal(req.nheaders, 3);
    assert_int_equal(PARSE("GET /b HTTP/1.1\r\n\r\n"), 0);
    assert_int_equal(req.nheaders, 0);
    assert_null(req.query);
    assert_null(http_request_header(&req, "a"));
    assert_int_equal(req.content_length, -1);
    assert_false(req.has_body);
    assert_true(http_request_is_get(&req));
}

static void test_headers_case_insensitive(void **state)
{
    (void)state;
    assert_int_equal(PARSE("GET / HTTP/1.1\r\n"
                           "HOST: one\r\n"
                           "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                           "X-Dup: first\r\n"
                           "x-dup: second\r\n"
                           "Empty:\r\n"
                           "\r\n"),
                     0);
    assert_header("host", "one");
    assert_header("Host", "one");
    assert_header("HoSt", "one");
    assert_header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==");
    /* The first of several wins; the count sees them all. */
    assert_header("X-DUP", "first");
    assert_int_equal(http_request_header_count(&req, "x-dup"), 2);
    assert_int_equal(http_request_header_count(&req, "host"), 1);
    assert_int_equal(http_request_header_count(&req, "origin"), 0);
    assert_header("empty", "");
    /* Whole names only: neither a prefix nor an extension matches. */
    assert_null(http_request_header(&req, "hos"));
    assert_null(http_request_header(&req, "hosts"));
    assert_null(http_request_header(&req, "x-du"));
    assert_null(http_request_header(&req, ""));
}

static void test_leading_whitespace_of_value_dropped(void **state)
{
    (void)state;
    assert_int_equal(PARSE("GET / HTTP/1.1\r\nUpgrade: \t websocket\r\nX:y\r\n\r\n"), 0);
    assert_header("upgrade", "websocket");
    assert_header("x", "y");
}

/* ---- methods -------------------------------------------------------------- */

static void test_methods(void **state)
{
    (void)state;
    assert_int_equal(PARSE("HEAD /h HTTP/1.1\r\n\r\n"), 0);
    assert_true(http_request_is_head(&req));
    assert_false(http_request_is_get(&req));
    assert_string_equal(http_request_method_name(&req), "HEAD");
    assert_int_equal(PARSE("POST /p HTTP/1.1\r\nContent-Length: 0\r\n\r\n"), 0);
    assert_false(http_request_is_get(&req));
    assert_false(http_request_is_head(&req));
    assert_string_equal(http_request_method_name(&req), "POST");
    assert_int_equal(PARSE("OPTIONS * HTTP/1.1\r\n\r\n"), 0);
    assert_string_equal(http_request_method_name(&req), "OPTIONS");
    assert_slice(req.path, req.path_len, "*");
    assert_int_equal(PARSE("DELETE /d HTTP/1.1\r\n\r\n"), 0);
    assert_string_equal(http_request_method_name(&req), "DELETE");
    assert_false(http_request_is_get(&req));
    /* Methods are case-sensitive tokens; unknown ones are refused. */
    assert_int_equal(PARSE("get / HTTP/1.1\r\n\r\n"), 400);
    assert_int_equal(PARSE("GOT / HTTP/1.1\r\n\r\n"), 400);
}

/* ---- keep-alive ----------------------------------------------------------- */

static void test_keep_alive_by_version_and_connection(void **state)
{
    (void)state;
    assert_int_equal(PARSE("GET / HTTP/1.1\r\n\r\n"), 0);
    assert_true(req.keep_alive); /* 1.1: persistent unless told */
    assert_int_equal(PARSE("GET / HTTP/1.1\r\nConnection: close\r\n\r\n"), 0);
    assert_false(req.keep_alive);
    assert_int_equal(PARSE("GET / HTTP/1.1\r\nCONNECTION: CLOSE\r\n\r\n"), 0);
    assert_false(req.keep_alive);
    assert_int_equal(PARSE("GET / HTTP/1.1\r\nConnection: Upgrade, close\r\n\r\n"), 0);
    assert_false(req.keep_alive);
    assert_int_equal(PARSE("GET / HTTP/1.1\r\nConnection: keep-alive\r\n"
                           "Connection: close\r\n\r\n"),
                     0);
    assert_false(req.keep_alive);
    assert_int_equal(PARSE("GET / HTTP/1.0\r\n\r\n"), 0);
    assert_int_equal(req.minor, 0);
    assert_false(req.keep_alive); /* 1.0: one request unless asked */
    assert_int_equal(PARSE("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"), 0);
    assert_true(req.keep_alive);
    assert_int_equal(PARSE("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"), 0);
    assert_true(req.keep_alive);
}

/* ---- token lists ---------------------------------------------------------- */

static void test_token_list(void **state)
{
    (void)state;
    const char *v = "keep-alive, Upgrade";
    assert_true(http_token_list_has(v, strlen(v), "upgrade"));
    assert_true(http_token_list_has(v, strlen(v), "UPGRADE"));
    assert_true(http_token_list_has(v, strlen(v), "keep-alive"));
    assert_false(http_token_list_has(v, strlen(v), "close"));
    /* Whole tokens only. */
    assert_false(http_token_list_has(v, strlen(v), "grade"));
    assert_false(http_token_list_has(v, strlen(v), "upgrades"));
    assert_false(http_token_list_has(v, strlen(v), "keep"));
    /* Spaces and tabs around tokens, empty elements. */
    const char *w = " ,\tclose\t , , upgrade ,,";
    assert_true(http_token_list_has(w, strlen(w), "close"));
    assert_true(http_token_list_has(w, strlen(w), "upgrade"));
    assert_false(http_token_list_has("", 0, "upgrade"));
    /* A space inside an element is part of it. */
    const char *x = "keep alive";
    assert_false(http_token_list_has(x, strlen(x), "keep"));
    assert_true(http_token_list_has(x, strlen(x), "keep alive"));
    /* The value is (ptr, len): bytes past len are not looked at. */
    const char *y = "close, upgrade";
    assert_true(http_token_list_has(y, 5, "close"));
    assert_false(http_token_list_has(y, 5, "upgrade"));
    assert_false(http_token_list_has(y, 4, "close"));

    /* On a parsed header, as the upgrade path uses it. */
    assert_int_equal(PARSE("GET /ws HTTP/1.1\r\nConnection: keep-alive,Upgrade\r\n"
                           "Upgrade: websocket\r\n\r\n"),
                     0);
    const struct http_header *h = http_request_header(&req, "connection");
    assert_non_null(h);
    assert_true(http_token_list_has(h->value, h->value_len, "upgrade"));
    h = http_request_header(&req, "upgrade");
    assert_true(http_token_list_has(h->value, h->value_len, "websocket"));
}

/* ---- query parameters ------------------------------------------------------ */

static char qbuf[512];

/* Parse "GET /p?<query> HTTP/1.1" into req; the head lives in qbuf. */
static void parse_query(const char *query)
{
    int n = snprintf(qbuf, sizeof qbuf, "GET /p?%s HTTP/1.1\r\n\r\n", query);
    assert_true(n > 0 && (size_t)n < sizeof qbuf);
    assert_int_equal(http_request_parse(&req, qbuf, (size_t)n), 0);
}

static void assert_param(const char *name, const char *want)
{
    char out[128];
    memset(out, 'Z', sizeof out);
    int n = http_query_param(&req, name, out, sizeof out);
    assert_int_equal(n, (int)strlen(want));
    assert_string_equal(out, want); /* NUL-terminated right after */
}

static void test_query_param_decoding(void **state)
{
    (void)state;
    parse_query("a=1&b=hello%20world&c=x+y&d=%41%4a%4A&e=&f&g=%e2%82%ac&h=%2B%26%3D&a=2");
    assert_param("a", "1"); /* the first of two */
    assert_param("b", "hello world");
    assert_param("c", "x y");
    assert_param("d", "AJJ"); /* either case of hex */
    assert_param("e", "");
    assert_param("f", ""); /* no '=': present, empty */
    assert_param("g", "\xe2\x82\xac");
    assert_param("h", "+&="); /* escaped separators are data */
    char out[16];
    assert_int_equal(http_query_param(&req, "z", out, sizeof out), -ENOENT);
    /* Names match whole and exactly: no prefix, no case folding, no decoding. */
    assert_int_equal(http_query_param(&req, "A", out, sizeof out), -ENOENT);
    assert_int_equal(http_query_param(&req, "hel", out, sizeof out), -ENOENT);
    assert_int_equal(http_query_param(&req, "", out, sizeof out), -ENOENT);

    parse_query("%61=1&&x=2&");
    assert_int_equal(http_query_param(&req, "a", out, sizeof out), -ENOENT);
    assert_param("%61", "1");
    assert_param("x", "2");

    /* A decoded NUL is data: the length says where the value ends. */
    parse_query("t=a%00b");
    memset(out, 'Z', sizeof out);
    assert_int_equal(http_query_param(&req, "t", out, sizeof out), 3);
    assert_memory_equal(out, "a\0b\0", 4);
}

static void test_query_param_absent(void **state)
{
    (void)state;
    char out[16];
    assert_int_equal(PARSE("GET /p HTTP/1.1\r\n\r\n"), 0);
    assert_int_equal(http_query_param(&req, "a", out, sizeof out), -ENOENT);
    assert_int_equal(PARSE("GET /p? HTTP/1.1\r\n\r\n"), 0);
    assert_int_equal(http_query_param(&req, "a", out, sizeof out), -ENOENT);
    /* Something that looks like a parameter in the path is not one. */
    assert_int_equal(PARSE("GET /a=1?b=2 HTTP/1.1\r\n\r\n"), 0);
    assert_int_equal(http_query_param(&req, "a", out, sizeof out), -ENOENT);
    assert_param("b", "2");
}

static void test_query_param_space(void **state)
{
    (void)state;
    parse_query("k=abcd&e=%41%42");
    char out[8];
    /* cap counts the NUL: four bytes need five. */
    memset(out, 'Z', sizeof out);
    assert_int_equal(http_query_param(&req, "k", out, 5), 4);
    assert_string_equal(out, "abcd");
    assert_int_equal(http_query_param(&req, "k", out, 4), -ENOSPC);
    assert_int_equal(http_query_param(&req, "k", out, 1), -ENOSPC);
    /* The decoded length is what must fit, not the escaped one. */
    assert_int_equal(http_query_param(&req, "e", out, 3), 2);
    assert_string_equal(out, "AB");
    assert_int_equal(http_query_param(&req, "e", out, 2), -ENOSPC);
    /* An empty value fits in one byte. */
    parse_query("n=");
    assert_int_equal(http_query_param(&req, "n", out, 1), 0);
    assert_string_equal(out, "");
}

static void test_query_param_malformed_escapes(void **state)
{
    (void)state;
    const char *bad[] = {"v=%", "v=%4", "v=abc%", "v=%zz", "v=%4g", "v=%g4", "v=%%41", "v=1%2"};
    char out[32];
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        parse_query(bad[i]);
        assert_int_equal(http_query_param(&req, "v", out, sizeof out), -EINVAL);
    }
    /* A bad escape in another parameter does not spoil this one. */
    parse_query("x=%zz&v=ok");
    assert_param("v", "ok");
    char small[2];
    assert_int_equal(http_query_param(&req, "x", small, sizeof small), -EINVAL);
}

/* ---- body framing ---------------------------------------------------------- */

static void test_body_flagged(void **state)
{
    (void)state;
    assert_int_equal(PARSE("POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\n"), 0);
    assert_true(req.has_body);
    assert_false(req.has_transfer_encoding);
    assert_int_equal(req.content_length, 5);
    assert_int_equal(PARSE("POST /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n"), 0);
    assert_false(req.has_body);
    assert_int_equal(req.content_length, 0);
    assert_int_equal(PARSE("POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), 0);
    assert_true(req.has_body);
    assert_true(req.has_transfer_encoding);
    assert_int_equal(req.content_length, -1);
    /* A body after the head is not the parser's business: it stops at the
     * blank line, whatever follows. */
    static const char with_body[] = "POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
    size_t end = http_head_end(with_body, sizeof with_body - 1, 0);
    assert_int_equal(end, sizeof with_body - 1 - 5);
    assert_int_equal(http_request_parse(&req, with_body, end), 0);
    assert_int_equal(req.content_length, 5);
}

static void test_bad_framing_refused(void **state)
{
    (void)state;
    /* Both framings at once: how request smuggling starts. */
    assert_int_equal(PARSE("POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
                           "Content-Length: 5\r\n\r\n"),
                     400);
    assert_int_equal(PARSE("POST /x HTTP/1.1\r\ncontent-length: 5\r\n"
                           "transfer-encoding: chunked\r\n\r\n"),
                     400);
    assert_int_equal(PARSE("POST /x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n"
                           "Content-Length: 5\r\n\r\n"),
                     400);
    assert_int_equal(PARSE("POST /x HTTP/1.1\r\nContent-Length: 5\r\n"
                           "Transfer-Encoding: gzip, chunked\r\n\r\n"),
                     400);
    /* Two lengths, even equal ones, and lengths that are not numbers. */
    assert_int_equal(PARSE("POST /x HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
                     400);
    assert_int_equal(PARSE("POST /x HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
                     400);
    assert_int_equal(PARSE("POST /x HTTP/1.1\r\nContent-Length: abc\r\n\r\n"), 400);
    assert_int_equal(PARSE("POST /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n"), 400);
    assert_int_equal(PARSE("POST /x HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n"), 400);
}

/* ---- refused heads ---------------------------------------------------------- */

static void test_malformed_heads_refused(void **state)
{
    (void)state;
    assert_int_equal(PARSE("GET / HTTP/1.1\r\nHost localhost\r\n\r\n"), 400); /* no colon */
    assert_int_equal(PARSE("GET / HTTP/1.1\r\n: value\r\n\r\n"), 400);        /* no name */
    assert_int_equal(PARSE("GET / HTTP/1.1\r\nX(: v\r\n\r\n"), 400);
    assert_int_equal(PARSE("GET /a b HTTP/1.1\r\n\r\n"), 400); /* space in target */
    assert_int_equal(PARSE("GET / HTTP/1.1 extra\r\n\r\n"), 400);
    assert_int_equal(PARSE("\r\n\r\n"), 400);
    assert_int_equal(PARSE(" GET / HTTP/1.1\r\n\r\n"), 400);
    /* A TLS ClientHello sent to the plain port. */
    assert_int_equal(PARSE("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"), 400);
    /* A DEL byte in a value. */
    assert_int_equal(PARSE("GET / HTTP/1.1\r\nX: a\x7f\r\n\r\n"), 400);
}

static void test_nul_and_bare_cr_refused(void **state)
{
    (void)state;
    assert_int_equal(PARSE("GET / HTTP/1.1\r\nX: a\0b\r\n\r\n"), 400);
    assert_int_equal(PARSE("GET / HTTP/1.1\r\nX\0Y: ab\r\n\r\n"), 400);
    assert_int_equal(PARSE("GET / HTTP/1.1\r\nX: ab\0\r\n\r\n"), 400);
    assert_int_equal(PARSE("GET / HTTP/1.1\r\nX\0: ab\r\n\r\n"), 400);
    assert_int_equal(PARSE("GET / HTTP/1.1\r\n\0X: ab\r\n\r\n"), 400);
    assert_int_equal(PARSE("GET /a\0b HTTP/1.1\r\n\r\n"), 400);
    /* A CR not followed by LF would let one header smuggle another line. */
    assert_int_equal(PARSE("GET / HTTP/1.1\r\nX: a\rInjected: 1\r\n\r\n"), 400);
}

static void test_versions(void **state)
{
    (void)state;
    assert_int_equal(PARSE("GET / HTTP/2.0\r\n\r\n"), 505);
    assert_int_equal(PARSE("GET / HTTP/0.9\r\n\r\n"), 505);
    assert_int_equal(PARSE("GET / HTTP/3.0\r\n\r\n"), 505);
    assert_int_equal(PARSE("GET / HTTP/1.1\r\n\r\n"), 0);
    assert_int_equal(PARSE("GET / HTTP/1.0\r\n\r\n"), 0);
    assert_int_equal(PARSE("GET / XTTP/1.1\r\n\r\n"), 400);
}

static void test_incomplete_head_never_succeeds(void **state)
{
    (void)state;
    /* The connection passes whole heads only; a part must still not pass
     * for a request. */
    static const char full[] = "GET /x HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n";
    for (size_t n = 0; n < sizeof full - 1; n++)
        assert_int_not_equal(http_request_parse(&req, full, n), 0);
    assert_int_equal(http_request_parse(&req, full, sizeof full - 1), 0);
}

/* ---- limits ------------------------------------------------------------------ */

static char big[HTTP_MAX_HEAD + 64];

/* "GET / HTTP/1.1\r\n<name>: <value of vlen 'v'>\r\n\r\n" into big. */
static size_t head_with_value(const char *name, size_t vlen)
{
    size_t n = (size_t)snprintf(big, sizeof big, "GET / HTTP/1.1\r\n%s: ", name);
    assert_true(n + vlen + 4 <= sizeof big);
    memset(big + n, 'v', vlen);
    n += vlen;
    memcpy(big + n, "\r\n\r\n", 4);
    return n + 4;
}

static void test_head_size_limit(void **state)
{
    (void)state;
    size_t fixed = head_with_value("X-Long", 0);
    /* A head of exactly HTTP_MAX_HEAD bytes is accepted, value intact. */
    size_t n = head_with_value("X-Long", HTTP_MAX_HEAD - fixed);
    assert_int_equal(n, HTTP_MAX_HEAD);
    assert_int_equal(http_request_parse(&req, big, n), 0);
    const struct http_header *h = http_request_header(&req, "x-long");
    assert_non_null(h);
    assert_int_equal(h->value_len, HTTP_MAX_HEAD - fixed);
    assert_true(h->value[0] == 'v' && h->value[h->value_len - 1] == 'v');
    /* One byte more is refused as too large. */
    n = head_with_value("X-Long", HTTP_MAX_HEAD - fixed + 1);
    assert_int_equal(n, HTTP_MAX_HEAD + 1);
    assert_int_equal(http_request_parse(&req, big, n), 431);
}

static void test_long_header_name(void **state)
{
    (void)state;
    static char name[8001];
    memset(name, 'n', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    size_t n = head_with_value(name, 3);
    assert_int_equal(http_request_parse(&req, big, n), 0);
    assert_int_equal(req.nheaders, 1);
    assert_int_equal(req.headers[0].name_len, 8000);
    assert_header(name, "vvv");
    /* A name that alone overflows the head. */
    static char huge[HTTP_MAX_HEAD];
    memset(huge, 'n', sizeof huge - 1);
    huge[sizeof huge - 1] = '\0';
    n = head_with_value(huge, 1);
    assert_int_equal(http_request_parse(&req, big, n), 431);
}

/* A head with k headers "H<i>: v<i>". */
static size_t head_with_headers(unsigned k)
{
    size_t n = (size_t)snprintf(big, sizeof big, "GET / HTTP/1.1\r\n");
    for (unsigned i = 0; i < k; i++)
        n += (size_t)snprintf(big + n, sizeof big - n, "H%u: v%u\r\n", i, i);
    n += (size_t)snprintf(big + n, sizeof big - n, "\r\n");
    assert_true(n < sizeof big);
    return n;
}

static void test_header_count_limit(void **state)
{
    (void)state;
    size_t n = head_with_headers(HTTP_MAX_HEADERS);
    assert_int_equal(http_request_parse(&req, big, n), 0);
    assert_int_equal(req.nheaders, HTTP_MAX_HEADERS);
    assert_header("h0", "v0");
    char name[16], value[16];
    snprintf(name, sizeof name, "h%u", HTTP_MAX_HEADERS - 1);
    snprintf(value, sizeof value, "v%u", HTTP_MAX_HEADERS - 1);
    assert_header(name, value);
    n = head_with_headers(HTTP_MAX_HEADERS + 1);
    assert_int_equal(http_request_parse(&req, big, n), 431);
    n = head_with_headers(HTTP_MAX_HEADERS * 3);
    assert_int_equal(http_request_parse(&req, big, n), 431);
}

/* ---- the end of a head, whole and in pieces ----------------------------------- */

static void test_head_end(void **state)
{
    (void)state;
    static const char crlf[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_int_equal(http_head_end(crlf, sizeof crlf - 1, 0), sizeof crlf - 1);
    static const char lf[] = "GET / HTTP/1.1\nHost: x\n\n";
    assert_int_equal(http_head_end(lf, sizeof lf - 1, 0), sizeof lf - 1);
    /* Not there yet. */
    assert_int_equal(http_head_end(crlf, sizeof crlf - 2, 0), 0);
    assert_int_equal(http_head_end(crlf, 16, 0), 0);
    assert_int_equal(http_head_end("", 0, 0), 0);
    /* Pipelined: the end of the first head only. */
    static const char two[] = "GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n";
    size_t first = http_head_end(two, sizeof two - 1, 0);
    assert_int_equal(first, strlen("GET /1 HTTP/1.1\r\n\r\n"));
    assert_int_equal(http_head_end(two + first, sizeof two - 1 - first, 0), sizeof two - 1 - first);
    /* A CR line end followed by a lone CR is not a blank line. */
    static const char lone_cr[] = "GET / HTTP/1.1\r\n\r\r\nX";
    assert_int_equal(http_head_end(lone_cr, sizeof lone_cr - 1, 0), 0);
}

/*
 * Feed a head in pieces cut at a and b (0 < a < b <= len), scanning as the
 * connection does: each call resumes three bytes before the previous end, so
 * a blank line cut anywhere is still seen. The end must be found exactly when
 * its last byte arrives, and the bytes so gathered must parse like the whole.
 */
static void feed_in_three(const char *head, size_t len, size_t a, size_t b)
{
    const size_t cuts[3] = {a, b, len};
    size_t have = 0, scanned = 0, end = 0;
    for (int i = 0; i < 3; i++) {
        have = cuts[i];
        end = http_head_end(head, have, scanned);
        if (have < len)
            assert_int_equal(end, 0);
        scanned = have > 3 ? have - 3 : 0;
    }
    assert_int_equal(end, len);
}

static void test_head_split_across_feeds(void **state)
{
    (void)state;
    static const char *heads[] = {
        ("GET /ws?token=abc HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\n"
         "Upgrade: websocket\r\n\r\n"),
        "GET / HTTP/1.1\nA: 1\n\n",
        "GET / HTTP/1.1\r\n\r\n",
    };
    for (size_t k = 0; k < sizeof heads / sizeof *heads; k++) {
        const char *head = heads[k];
        size_t len = strlen(head);
        for (size_t a = 1; a < len; a++)
            for (size_t b = a; b <= len; b++)
                feed_in_three(head, len, a, b);
    }
    /* What was gathered parses as the whole does. */
    const char *h = heads[0];
    assert_int_equal(http_request_parse(&req, h, strlen(h)), 0);
    assert_slice(req.path, req.path_len, "/ws");
    assert_header("upgrade", "websocket");
    char tok[8];
    assert_int_equal(http_query_param(&req, "token", tok, sizeof tok), 3);
    assert_string_equal(tok, "abc");
}

/* ---- what chatd checks beyond the parser ------------------------------------ */

static void test_header_names_are_tokens(void **state)
{
    (void)state;
    assert_int_equal(PARSE("GET / HTTP/1.1\r\nHost : x\r\n\r\n"), 400);
    assert_int_equal(PARSE("GET / HTTP/1.1\r\nX(y): 1\r\nHost: x\r\n\r\n"), 400);
    assert_int_equal(PARSE("GET / HTTP/1.1\r\nX-Ok_1.~: 1\r\nHost: x\r\n\r\n"), 0);
    assert_header("x-ok_1.~", "1");
}

static void test_value_spaces_trimmed_and_controls_refused(void **state)
{
    (void)state;
    assert_int_equal(PARSE("GET / HTTP/1.1\r\nSec-WebSocket-Version: 13 \t\r\nHost: x\r\n\r\n"),
                     0);
    assert_header("sec-websocket-version", "13");
    assert_int_equal(PARSE("GET / HTTP/1.1\r\nX-Empty:   \r\nHost: x\r\n\r\n"), 0);
    assert_header("x-empty", "");
    static const char nul_first[] = "GET / HTTP/1.1\r\nX: \0abc\r\nHost: x\r\n\r\n";
    assert_int_equal(http_request_parse(&req, nul_first, sizeof nul_first - 1), 400);
    assert_int_equal(PARSE("GET / HTTP/1.1\r\nX: a\x01b\r\nHost: x\r\n\r\n"), 400);
    /* A folded value would keep a raw CR LF inside: refused. */
    assert_int_equal(PARSE("GET / HTTP/1.1\r\nX: a\r\n b\r\nHost: x\r\n\r\n"), 400);
}

static void test_fragment_not_in_query(void **state)
{
    (void)state;
    char out[32];
    assert_int_equal(PARSE("GET /p?a=1#f HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
    assert_int_equal(http_query_param(&req, "a", out, sizeof out), 1);
    assert_string_equal(out, "1");
    assert_int_equal(PARSE("GET /p#f?a=1 HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
    assert_slice(req.path, req.path_len, "/p");
    assert_int_equal(http_query_param(&req, "a", out, sizeof out), -ENOENT);
}

static void test_query_param_zero_capacity(void **state)
{
    (void)state;
    char out[1] = {'z'};
    assert_int_equal(PARSE("GET /p?a=1 HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
    assert_int_equal(http_query_param(&req, "a", out, 0), -ENOSPC);
    assert_int_equal(out[0], 'z'); /* nothing written */
}

/* The end of a head as defined: just past the first blank line (LF LF or
 * LF CR LF) at or after from, 0 when there is none. */
static size_t head_end_reference(const char *buf, size_t len, size_t from)
{
    for (size_t i = from; i < len; i++) {
        if (buf[i] != '\n')
            continue;
        if (i + 1 < len && buf[i + 1] == '\n')
            return i + 2;
        if (i + 2 < len && buf[i + 1] == '\r' && buf[i + 2] == '\n')
            return i + 3;
    }
    return 0;
}

/* Buffers of 'a', CR and LF in every mix (a fixed generator), every start
 * and every cut: the scan agrees with the definition. */
static void test_head_end_against_reference(void **state)
{
    (void)state;
    static const char alphabet[] = {'a', '\r', '\n', '\n'};
    char buf[40];
    uint32_t x = 88172645u;
    for (int round = 0; round < 4000; round++) {
        for (size_t i = 0; i < sizeof buf; i++) {
            x ^= x << 13, x ^= x >> 17, x ^= x << 5;
            buf[i] = alphabet[x & 3];
        }
        for (size_t len = 0; len <= sizeof buf; len++)
            for (size_t from = 0; from <= len + 1; from++)
                assert_int_equal(http_head_end(buf, len, from), head_end_reference(buf, len, from));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_complete_get),
        cmocka_unit_test(test_head_end_against_reference),
        cmocka_unit_test(test_path_without_query_or_fragment),
        cmocka_unit_test(test_parse_resets_previous_result),
        cmocka_unit_test(test_headers_case_insensitive),
        cmocka_unit_test(test_leading_whitespace_of_value_dropped),
        cmocka_unit_test(test_methods),
        cmocka_unit_test(test_keep_alive_by_version_and_connection),
        cmocka_unit_test(test_token_list),
        cmocka_unit_test(test_query_param_decoding),
        cmocka_unit_test(test_query_param_absent),
        cmocka_unit_test(test_query_param_space),
        cmocka_unit_test(test_query_param_malformed_escapes),
        cmocka_unit_test(test_body_flagged),
        cmocka_unit_test(test_bad_framing_refused),
        cmocka_unit_test(test_malformed_heads_refused),
        cmocka_unit_test(test_nul_and_bare_cr_refused),
        cmocka_unit_test(test_versions),
        cmocka_unit_test(test_incomplete_head_never_succeeds),
        cmocka_unit_test(test_head_size_limit),
        cmocka_unit_test(test_long_header_name),
        cmocka_unit_test(test_header_count_limit),
        cmocka_unit_test(test_head_end),
        cmocka_unit_test(test_head_split_across_feeds),
        cmocka_unit_test(test_header_names_are_tokens),
        cmocka_unit_test(test_value_spaces_trimmed_and_controls_refused),
        cmocka_unit_test(test_fragment_not_in_query),
        cmocka_unit_test(test_query_param_zero_capacity),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
