/*
 * JSON writer tests: every output parses back (with jansson) to exactly what
 * was written, whatever bytes the strings hold.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "util/jw.h"
#include "util/sbuf.h"

static json_t *parse(struct jw *w, size_t reserve)
{
    assert_false(w->failed);
    json_error_t err;
    json_t *o = json_loadb(w->buf + reserve, w->len - reserve, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &err);
    if (!o)
        fail_msg("not JSON: %s in %.*s", err.text, (int)(w->len - reserve), w->buf + reserve);
    return o;
}

static void test_object_with_nesting(void **state)
{
    (void)state;
    struct jw w;
    jw_init(&w, 8, 14); /* tiny on purpose: growth is exercised */
    jw_open(&w);
    jw_kstr(&w, "type", "ack");
    jw_kint(&w, "seq", 9007199254740993LL);
    jw_kint(&w, "neg", -5);
    jw_kint(&w, "zero", 0);
    jw_kint(&w, "min", INT64_MIN);
    jw_kint(&w, "max", INT64_MAX);
    jw_key(&w, "sender");
    jw_open(&w);
    jw_kstr(&w, "id", "u1");
    jw_close(&w);
    jw_key(&w, "ok");
    jw_bool(&w, true);
    jw_key(&w, "meta");
    jw_raw(&w, "{\"a\":\"b\"}", 9);
    jw_close(&w);
    json_t *o = parse(&w, 14);
    assert_string_equal(json_string_value(json_object_get(o, "type")), "ack");
    assert_int_equal(json_integer_value(json_object_get(o, "seq")), 9007199254740993LL);
    assert_int_equal(json_integer_value(json_object_get(o, "neg")), -5);
    assert_int_equal(json_integer_value(json_object_get(o, "zero")), 0);
    assert_true(json_integer_value(json_object_get(o, "min")) == INT64_MIN);
    assert_true(json_integer_value(json_object_get(o, "max")) == INT64_MAX);
    assert_string_equal(json_string_value(json_object_get(json_object_get(o, "sender"), "id")),
                        "u1");
    assert_true(json_is_true(json_object_get(o, "ok")));
    assert_string_equal(json_string_value(json_object_get(json_object_get(o, "meta"), "a")), "b");
    json_decref(o);
    jw_release(&w);
}

/* Integers are written as printf writes them, at the edges too. */
static void test_integers_as_printf(void **state)
{
    (void)state;
    const int64_t v[] = {0, 1, -1, 9, 10, -10, 99, 100, 1234567890, INT32_MAX, INT32_MIN,
                         INT64_MAX, INT64_MIN, INT64_MIN + 1, 1000000000000000000LL};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        struct jw w;
        jw_init(&w, 1, 0);
        jw_int(&w, v[i]);
        char want[32];
        int n = snprintf(want, sizeof want, "%lld", (long long)v[i]);
        assert_int_equal(w.len, (size_t)n);
        assert_memory_equal(w.buf, want, (size_t)n);
        jw_release(&w);
    }
}

static void test_string_escaping_round_trips(void **state)
{
    (void)state;
    char s[256];
    /* Every byte below 0x80 (including NUL and all control characters),
     * then multi-byte UTF-8. */
    for (int i = 0; i < 128; i++)
        s[i] = (char)i;
    const char *utf8 = "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"; /* é € 😀 */
    size_t ul = strlen(utf8);
    memcpy(s + 128, utf8, ul);
    size_t n = 128 + ul;
    struct jw w;
    jw_init(&w, 16, 0);
    jw_open(&w);
    jw_key(&w, "s");
    jw_str(&w, s, n);
    jw_close(&w);
    json_t *o = parse(&w, 0);
    json_t *v = json_object_get(o, "s");
    assert_int_equal(json_string_length(v), n);
    assert_memory_equal(json_string_value(v), s, n);
    json_decref(o);
    jw_release(&w);
}

/* A string takes exactly its escaped length: a buffer sized for the text
 * (wire.c sizes each event's frame for its content) does not grow, with or
 * without escapes, and an empty string is "". */
static void test_string_reserves_exactly(void **state)
{
    (void)state;
    char plain[150], mixed[150];
    memset(plain, 'a', sizeof plain);
    memset(mixed, 'b', sizeof mixed);
    mixed[0] = '"';   /* 2 bytes */
    mixed[10] = '\n'; /* 2 */
    mixed[20] = 0x01; /* 6: \u0001 */
    mixed[149] = '\\'; /* 2 */
    struct {
        const char *s;
        size_t n, out; /* out: the bytes written, quotes included */
    } cases[] = {
        {plain, sizeof plain, sizeof plain + 2},
        {mixed, sizeof mixed, sizeof mixed + 1 + 1 + 5 + 1 + 2},
        {"", 0, 2},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct jw w;
        jw_init(&w, 160, 0);
        size_t cap = w.cap;
        jw_str(&w, cases[i].s, cases[i].n);
        assert_false(w.failed);
        assert_int_equal(w.len, cases[i].out);
        assert_int_equal(w.cap, cap); /* the worst case (6 a byte) would have grown it */
        json_error_t err;
        json_t *v = json_loadb(w.buf, w.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
        assert_non_null(v);
        assert_int_equal(json_string_length(v), cases[i].n);
        assert_memory_equal(json_string_value(v), cases[i].s, cases[i].n);
        json_decref(v);
        jw_release(&w);
    }
}

/* The escape of one byte, as a reference for the word-at-a-time scan. */
static size_t ref_escape(unsigned char c, char *out)
{
    static const char *two = "\"\"\\\\\nn\rr\tt\bb\ff";
    for (const char *t = two; *t; t += 2) {
        if ((unsigned char)t[0] == c) {
            out[0] = '\\';
            out[1] = t[1];
            return 2;
        }
    }
    if (c < 0x20)
        return (size_t)snprintf(out, 7, "\\u%04x", c);
    out[0] = (char)c;
    return 1;
}

/* Strings of every length up to 40 at every offset in a word, with a byte
 * that needs an escape (or none, or a high byte) at every place: the
 * output is the escape of each byte in turn, byte for byte. */
static void test_string_escapes_every_place(void **state)
{
    (void)state;
    const unsigned char specials[] = {'"', '\\', '\n', 0x00, 0x1f, 0x01, 0x7f, 0x80, 0xff,
                                      0x20, 0x21, 0x5b, 0x5d, 0x22 ^ 0x80, 0x5c ^ 0x80};
    char buf[64], want[400];
    for (size_t off = 0; off < 8; off++) {
        for (size_t n = 0; n <= 40; n++) {
            for (size_t k = 0; k < sizeof specials; k++) {
                for (size_t at = 0; at <= n; at++) { /* at == n: no special byte */
                    char *s = buf + off;
                    for (size_t i = 0; i < n; i++)
                        s[i] = (char)('a' + (i * 7 + k) % 26);
                    if (at < n)
                        s[at] = (char)specials[k];
                    if (n > 3 && at + 3 < n)
                        s[at + 3] = (char)specials[(k + 5) % sizeof specials];
                    size_t wl = 0;
                    want[wl++] = '"';
                    for (size_t i = 0; i < n; i++)
                        wl += ref_escape((unsigned char)s[i], want + wl);
                    want[wl++] = '"';
                    struct jw w;
                    jw_init(&w, 8, 0);
                    jw_str(&w, s, n);
                    assert_false(w.failed);
                    if (w.len != wl || memcmp(w.buf, want, wl) != 0)
                        fail_msg("offset %zu, length %zu, byte 0x%02x at %zu: %.*s, not %.*s", off,
                                 n, specials[k], at, (int)w.len, w.buf, (int)wl, want);
                    jw_release(&w);
                }
            }
        }
    }
}

/* jw_take hands over the text as a shared buffer: reserve bytes first, the
 * text after them, one reference, and it survives growth far past the
 * initial size. */
static void test_take_as_shared_buffer(void **state)
{
    (void)state;
    char big[5000];
    memset(big, 'q', sizeof big);
    struct jw w;
    jw_init(&w, 16, 10);
    jw_open(&w);
    jw_key(&w, "content");
    jw_str(&w, big, sizeof big);
    jw_close(&w);
    size_t len = w.len;
    struct sbuf *b = jw_take(&w);
    assert_non_null(b);
    assert_null(w.buf);
    assert_int_equal(b->len, len);
    assert_true(b->cap >= b->len);
    assert_true(sbuf_exclusive(b));
    json_error_t err;
    json_t *o = json_loadb((const char *)b->data + 10, b->len - 10, 0, &err);
    assert_non_null(o);
    assert_int_equal(json_string_length(json_object_get(o, "content")), sizeof big);
    json_decref(o);
    sbuf_unref(b);
    jw_release(&w); /* harmless after a take */
    sbuf_thread_cleanup();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_object_with_nesting),
        cmocka_unit_test(test_integers_as_printf),
        cmocka_unit_test(test_string_escaping_round_trips),
        cmocka_unit_test(test_string_reserves_exactly),
        cmocka_unit_test(test_string_escapes_every_place),
        cmocka_unit_test(test_take_as_shared_buffer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
