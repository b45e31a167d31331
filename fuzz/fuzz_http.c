/*
 * libFuzzer driver for the HTTP request head parser (src/http/request.c).
 *
 * DESIGN: byte 0 holds settings, the rest is what a client sent:
 *   bit 0    append "\r\n\r\n" so most inputs reach the parser;
 *   bits 1-7 a split point for the resumable head scan.
 * The driver does what the connection layer does: scan for the end of the
 * head (whole, and resumed after a partial read from three bytes back, which
 * must agree), then parse exactly the head bytes from a buffer of exactly
 * that size, so ASan sees any read past it. On success every pointer of the
 * request must lie in the head and the lookup helpers must agree with the
 * header array. A broken invariant calls abort().
 */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "check.h"

#include "http/request.h"

/* [p, p + n) lies inside [base, base + len). */
static bool inside(const char *p, size_t n, const char *base, size_t len)
{
    return p >= base && n <= len && (size_t)(p - base) <= len - n;
}

static void check_query(const struct http_request *req, const char *name)
{
    char small[4], big[HTTP_MAX_HEAD + 1];
    char *outs[2] = {small, big};
    size_t caps[2] = {sizeof small, sizeof big};
    int results[2];
    for (int i = 0; i < 2; i++) {
        int r = http_query_param(req, name, outs[i], caps[i]);
        CHECK(r == -ENOENT || r == -ENOSPC || r == -EINVAL || r >= 0);
        if (r >= 0) {
            CHECK((size_t)r < caps[i]);
            CHECK(outs[i][r] == '\0');
            CHECK((size_t)r <= req->query_len);
        }
        results[i] = r;
    }
    /* The big buffer always fits, so only the small one may say ENOSPC, and
     * both agree on absent and malformed. */
    CHECK(results[1] != -ENOSPC);
    if (results[0] >= 0) {
        CHECK(results[1] == results[0]);
        CHECK(memcmp(small, big, (size_t)results[0]) == 0);
    } else if (results[0] == -ENOSPC) {
        CHECK(results[1] >= (int)sizeof small - 1 || results[1] == -EINVAL);
    } else {
        CHECK(results[1] == results[0]);
    }
}

static void check_request(const struct http_request *req, const char *head, size_t len)
{
    CHECK(req->url != NULL);
    CHECK(inside(req->url, req->url_len, head, len));
    CHECK(req->path == req->url);
    CHECK(req->path_len <= req->url_len);
    if (req->query) {
        CHECK(inside(req->query, req->query_len, head, len));
        CHECK(req->query > req->url && req->query[-1] == '?');
        /* The query runs to the end of the URL, or to a fragment's '#'. */
        CHECK(req->query + req->query_len <= req->url + req->url_len);
        CHECK(req->query + req->query_len == req->url + req->url_len ||
              req->query[req->query_len] == '#');
        CHECK(!memchr(req->query, '#', req->query_len));
        CHECK(req->path_len < req->url_len);
    } else {
        CHECK(req->query_len == 0);
    }
    CHECK(req->major == 1);
    CHECK(req->content_length >= -1);
    CHECK(!req->has_transfer_encoding || req->has_body);
    CHECK(req->nheaders <= HTTP_MAX_HEADERS);
    CHECK(http_request_method_name(req) != NULL);
    (void)http_request_is_get(req);
    (void)http_request_is_head(req);

    char name[HTTP_MAX_HEAD + 1];
    for (unsigned i = 0; i < req->nheaders; i++) {
        const struct http_header *h = &req->headers[i];
        CHECK(h->name != NULL);
        CHECK(inside(h->name, h->name_len, head, len));
        if (h->value)
            CHECK(inside(h->value, h->value_len, head, len));
        else
            CHECK(h->value_len == 0);
        if (h->value)
            (void)http_token_list_has(h->value, h->value_len, "upgrade");
        /* Lookups by this header's name find it or an earlier namesake. */
        if (memchr(h->name, '\0', h->name_len))
            continue;
        memcpy(name, h->name, h->name_len);
        name[h->name_len] = '\0';
        const struct http_header *found = http_request_header(req, name);
        CHECK(found != NULL && found <= h);
        CHECK(found->name_len == h->name_len);
        CHECK(strncasecmp(found->name, name, h->name_len) == 0);
        CHECK(http_request_header_count(req, name) >= 1);
    }

    static const char *params[] = {"token", "room", "a", "", "=", "%"};
    for (size_t i = 0; i < sizeof params / sizeof params[0]; i++)
        check_query(req, params[i]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    bool terminate = data[0] & 1;
    size_t n = size - 1;
    size_t len = n + (terminate ? 4 : 0);
    char *buf = malloc(len ? len : 1);
    CHECK(buf != NULL);
    if (n)
        memcpy(buf, data + 1, n);
    if (terminate)
        memcpy(buf + n, "\r\n\r\n", 4);

    /* Scan whole; then as after a partial read of k bytes, resuming three
     * bytes back as conn.c does. Both must find the same end. */
    size_t end = http_head_end(buf, len, 0);
    CHECK(end <= len);
    if (end) {
        CHECK(end >= 2 && buf[end - 1] == '\n');
        CHECK(buf[end - 2] == '\n' || (end >= 3 && buf[end - 2] == '\r' && buf[end - 3] == '\n'));
    }
    size_t k = len ? (size_t)(data[0] >> 1) * len / 127 : 0;
    if (k > len)
        k = len;
    size_t first = http_head_end(buf, k, 0);
    if (first) {
        CHECK(first == end);
    } else {
        size_t from = k > 3 ? k - 3 : 0;
        CHECK(http_head_end(buf, len, from) == end);
    }

    if (end) {
        /* Parse exactly the head, from a buffer of exactly its size. */
        char *head = malloc(end);
        CHECK(head != NULL);
        memcpy(head, buf, end);
        struct http_request *req = malloc(sizeof *req);
        CHECK(req != NULL);
        int status = http_request_parse(req, head, end);
        CHECK(status == 0 || status == 400 || status == 431 || status == 505);
        if (status == 0)
            check_request(req, head, end);
        free(req);
        free(head);
    }
    free(buf);
    return 0;
}
