/*
 * JSON reader tests: what it accepts and refuses, case by case, and the
 * members and values it gives back. (fuzz/fuzz_jread.c compares it with
 * jansson on arbitrary input.)
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "util/jread.h"

static int parse(const char *s, struct jr_member *m, size_t *n)
{
    return jr_object(s, strlen(s), m, JR_MAX_KEYS, n);
}

static void test_members_and_values(void **state)
{
    (void)state;
    struct jr_member m[JR_MAX_KEYS];
    size_t n;
    const char *s = " {\"sub\":\"al\\u00e9x\", \"exp\" : 1700000000,\"neg\":-9223372036854775808,"
                    "\"r\":1.5e3,\"t\":true,\"f\":false,\"z\":null,\"roles\":[\"a\",\"b\\\"c\"],"
                    "\"o\":{\"x\":[1,{\"y\":2}]},\"\\u0065sc\":\"\\ud83d\\ude00\\n\"}\n";
    assert_int_equal(parse(s, m, &n), 0);
    assert_int_equal(n, 10);
    const struct jr_value *v = jr_get(m, n, "sub");
    assert_non_null(v);
    char buf[64];
    assert_int_equal(jr_string(v, buf, sizeof buf), 5);
    assert_string_equal(buf, "al\xc3\xa9x");
    assert_true(jr_string_is(v, "al\xc3\xa9x", 5));
    assert_false(jr_string_is(v, "al\xc3\xa9", 4));
    assert_false(jr_string_is(v, "al\\u00e9x", 9));
    assert_int_equal(jr_string(v, buf, 6), 5);
    assert_int_equal(jr_string(v, buf, 5), -ENOBUFS); /* 5 bytes and the NUL */
    v = jr_get(m, n, "exp");
    assert_int_equal(v->type, JR_INT);
    assert_int_equal(v->i, 1700000000);
    v = jr_get(m, n, "neg");
    assert_int_equal(v->type, JR_INT);
    assert_true(v->i == INT64_MIN);
    assert_int_equal(jr_get(m, n, "r")->type, JR_REAL);
    assert_int_equal(jr_get(m, n, "t")->type, JR_TRUE);
    assert_int_equal(jr_get(m, n, "f")->type, JR_FALSE);
    assert_int_equal(jr_get(m, n, "z")->type, JR_NULL);
    assert_int_equal(jr_get(m, n, "o")->type, JR_OBJECT);
    assert_null(jr_get(m, n, "missing"));
    /* A key written with an escape is found by its decoded text. */
    v = jr_get(m, n, "esc");
    assert_non_null(v);
    assert_int_equal(jr_string(v, buf, sizeof buf), 5);
    assert_memory_equal(buf, "\xf0\x9f\x98\x80\n", 5);
    /* Arrays, one element at a time. */
    v = jr_get(m, n, "roles");
    assert_int_equal(v->type, JR_ARRAY);
    size_t pos = 0, count = 0;
    struct jr_value el;
    const char *want[] = {"a", "b\"c"};
    while (jr_array_next(v, &pos, &el)) {
        assert_true(count < 2);
        assert_true(jr_string_is(&el, want[count], strlen(want[count])));
        count++;
    }
    assert_int_equal(count, 2);
    pos = 0;
    assert_int_equal(jr_array_next(jr_get(m, n, "t"), &pos, &el), 0);
    /* A nested object's members, walked without a second check. */
    v = jr_get(m, n, "o");
    struct jr_member om[4];
    size_t on;
    assert_int_equal(jr_members(v, om, 4, &on), 0);
    assert_int_equal(on, 1);
    assert_int_equal(om[0].v.type, JR_ARRAY);
    pos = 0;
    assert_int_equal(jr_array_next(&om[0].v, &pos, &el), 1);
    assert_int_equal(el.type, JR_INT);
    assert_int_equal(jr_array_next(&om[0].v, &pos, &el), 1);
    assert_int_equal(el.type, JR_OBJECT);
    assert_int_equal(jr_members(&el, om, 4, &on), 0);
    assert_int_equal(on, 1);
    assert_true(jr_get(om, on, "y")->i == 2);
    assert_int_equal(jr_members(jr_get(m, n, "roles"), om, 4, &on), -EINVAL);
    assert_int_equal(on, 0);
    const char *q = "{\"x\":{\"a\":\"\\\\\",\"b\":\"\\\\\\\"}\\\\\",\"\\u0063\":{},\"d\":-7,\"e\":[\"]\"]}}";
    assert_int_equal(parse(q, m, &n), 0);
    assert_int_equal(jr_members(jr_get(m, n, "x"), om, 4, &on), -E2BIG);
    struct jr_member xm[8];
    assert_int_equal(jr_members(jr_get(m, n, "x"), xm, 8, &on), 0);
    assert_int_equal(on, 5);
    assert_true(jr_string_is(jr_get(xm, on, "a"), "\\", 1));
    assert_true(jr_string_is(jr_get(xm, on, "b"), "\\\"}\\", 4));
    assert_int_equal(jr_get(xm, on, "c")->type, JR_OBJECT);
    assert_true(jr_get(xm, on, "d")->i == -7);
    assert_int_equal(jr_get(xm, on, "e")->type, JR_ARRAY);
    struct jr_member e[1];
    assert_int_equal(parse("{\"a\":[]}", e, &n), 0);
    pos = 0;
    assert_int_equal(jr_array_next(&e[0].v, &pos, &el), 0);
    assert_int_equal(parse("{}", e, &n), 0);
    assert_int_equal(n, 0);
}

static void test_refused(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "", " ", "[]", "\"s\"", "1", "{", "}", "{\"a\"}", "{\"a\":}", "{\"a\":1,}", "{,}",
        "{\"a\":1}x", "{\"a\":1}{}", "{'a':1}", "{a:1}", "{\"a\":01}", "{\"a\":-}",
        "{\"a\":1.}", "{\"a\":.5}", "{\"a\":1e}", "{\"a\":+1}", "{\"a\":0x10}",
        "{\"a\":NaN}", "{\"a\":Infinity}", "{\"a\":1e400}", "{\"a\":-1e400}",
        "{\"a\":9223372036854775808}", "{\"a\":-9223372036854775809}",
        "{\"a\":tru}", "{\"a\":nul}", "{\"a\":True}", "{\"a\":\"\\x41\"}",
        "{\"a\":\"\\u12\"}", "{\"a\":\"\\u0000\"}", "{\"a\":\"\\ud800\"}",
        "{\"a\":\"\\udc00\"}", "{\"a\":\"\\ud800\\u0041\"}", "{\"a\":\"tab\there\"}",
        "{\"a\":\"\x01\"}", "{\"a\":\"\xc0\xaf\"}", "{\"a\":\"\xed\xa0\x80\"}",
        "{\"a\":\"\xf4\x90\x80\x80\"}", "{\"a\":\"\xff\"}", "{\"a\":\"\xe2\x82\"}",
        "{\"a\":[1,]}", "{\"a\":[,1]}", "{\"a\":[1 2]}", "\xef\xbb\xbf{}", "{\"a\":1}\x01",
        "{\"a\":\"unterminated}",
    };
    struct jr_member m[JR_MAX_KEYS];
    size_t n;
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int rc = parse(bad[i], m, &n);
        if (rc != -EINVAL)
            fail_msg("case %zu (%s): %d, expected -EINVAL", i, bad[i], rc);
        assert_int_equal(n, 0);
    }
    /* Embedded NUL: the length counts, not the terminator. */
    assert_int_equal(jr_object("{\"a\":1}\0", 8, m, JR_MAX_KEYS, &n), -EINVAL);
    assert_int_equal(jr_object("{\"a\":\"\0\"}", 8, m, JR_MAX_KEYS, &n), -EINVAL);
}

static void test_duplicates(void **state)
{
    (void)state;
    struct jr_member m[JR_MAX_KEYS];
    size_t n;
    assert_int_equal(parse("{\"a\":1,\"a\":2}", m, &n), -EEXIST);
    assert_int_equal(parse("{\"exp\":1,\"\\u0065xp\":2}", m, &n), -EEXIST);
    assert_int_equal(parse("{\"o\":{\"k\":1,\"k\":1}}", m, &n), -EEXIST);
    assert_int_equal(parse("{\"o\":[{\"k\":1},{\"k\":1}]}", m, &n), 0); /* two objects */
    assert_int_equal(parse("{\"a\":1,\"A\":2,\"a \":3}", m, &n), 0);
    /* Keys longer than a word, one spelled with an escape in each place. */
    assert_int_equal(parse("{\"abcdefghijklmnopq\":1,\"abcdefghijklmnop\\u0071\":2}", m, &n), -EEXIST);
    assert_int_equal(parse("{\"abcdefghijklmnopq\":1,\"\\u0061bcdefghijklmnopq\":2}", m, &n), -EEXIST);
    assert_int_equal(parse("{\"abcdefgh\\/\":1,\"abcdefgh/\":2}", m, &n), -EEXIST);
    assert_int_equal(parse("{\"abcdefgh\\u00e9\":1,\"abcdefgh\xc3\xa9\":2}", m, &n), -EEXIST);
    assert_int_equal(parse("{\"abcdefghijklmnopq\":1,\"abcdefghijklmnopr\":2,"
                           "\"abcdefghijklmnop\":3,\"bbcdefghijklmnopq\":4}", m, &n), 0);
    assert_int_equal(n, 4);
}

static void test_bounds(void **state)
{
    (void)state;
    struct jr_member m[JR_MAX_KEYS];
    size_t n;
    char deep[256] = "{\"a\":";
    for (int i = 0; i < JR_MAX_DEPTH - 1; i++)
        strcat(deep, "[");
    for (int i = 0; i < JR_MAX_DEPTH - 1; i++)
        strcat(deep, "]");
    strcat(deep, "}");
    assert_int_equal(parse(deep, m, &n), 0);
    char deeper[256] = "{\"a\":";
    for (int i = 0; i < JR_MAX_DEPTH; i++)
        strcat(deeper, "[");
    for (int i = 0; i < JR_MAX_DEPTH; i++)
        strcat(deeper, "]");
    strcat(deeper, "}");
    assert_int_equal(parse(deeper, m, &n), -E2BIG);
    char many[2048] = "{";
    for (int i = 0; i <= JR_MAX_KEYS; i++)
        sprintf(many + strlen(many), "%s\"k%d\":%d", i ? "," : "", i, i);
    strcat(many, "}");
    assert_int_equal(parse(many, m, &n), -E2BIG);
    assert_int_equal(jr_object("{\"a\":1,\"b\":2}", 13, m, 1, &n), -E2BIG);
}

/* Plain bytes are tested eight at a time: put each kind of byte that needs
 * a look of its own at every position of a word, in a value at the top
 * (checked) and in one nested (walked by jr_members, after the check). */
static void test_special_bytes_at_every_position(void **state)
{
    (void)state;
    static const struct {
        const char *raw;    /* as written in the JSON text */
        const char *dec;    /* decoded, or NULL: the text is refused */
    } kinds[] = {
        {"\\\"", "\""}, {"\\\\", "\\"}, {"\\n", "\n"}, {"\\/", "/"},
        {"\\u00e9", "\xc3\xa9"}, {"\xc3\xa9", "\xc3\xa9"}, {"\xf0\x9f\x98\x80", "\xf0\x9f\x98\x80"},
        {"\x7f", "\x7f"}, {" ", " "}, {"\x01", NULL}, {"\x1f", NULL}, {"\xff", NULL},
        {"\xc3", NULL}, {"\\x", NULL}, {"\"", NULL},
    };
    for (size_t k = 0; k < sizeof kinds / sizeof *kinds; k++) {
        for (size_t at = 0; at < 20; at++) {
            char val[64], want[64], text[256];
            memset(val, 'a', at);
            snprintf(val + at, sizeof val - at, "%s%s", kinds[k].raw, "bcdefghijklmnop");
            snprintf(text, sizeof text, "{\"v\":\"%s\",\"o\":{\"w\":\"%s\",\"after\":7},\"z\":1}", val,
                     val);
            struct jr_member m[JR_MAX_KEYS];
            size_t n;
            int rc = parse(text, m, &n);
            if (!kinds[k].dec) {
                if (rc != -EINVAL)
                    fail_msg("kind %zu at %zu: %d, expected -EINVAL", k, at, rc);
                continue;
            }
            if (rc != 0)
                fail_msg("kind %zu at %zu: %d, expected 0", k, at, rc);
            memset(want, 'a', at);
            snprintf(want + at, sizeof want - at, "%s%s", kinds[k].dec, "bcdefghijklmnop");
            char got[64];
            assert_int_equal(n, 3);
            assert_int_equal(jr_string(jr_get(m, n, "v"), got, sizeof got), (ssize_t)strlen(want));
            assert_string_equal(got, want);
            assert_int_equal(jr_get(m, n, "z")->i, 1);
            struct jr_member o[JR_MAX_KEYS];
            size_t on;
            assert_int_equal(jr_members(jr_get(m, n, "o"), o, JR_MAX_KEYS, &on), 0);
            assert_int_equal(on, 2);
            assert_int_equal(jr_string(jr_get(o, on, "w"), got, sizeof got), (ssize_t)strlen(want));
            assert_string_equal(got, want);
            assert_true(jr_string_is(jr_get(o, on, "w"), want, strlen(want)));
            assert_int_equal(jr_get(o, on, "after")->i, 7);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_members_and_values),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_duplicates),
        cmocka_unit_test(test_bounds),
        cmocka_unit_test(test_special_bytes_at_every_position),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
