/*
 * Unit tests for src/ws/utf8: whole-buffer verdicts at every encoding
 * boundary, the classic invalid forms (overlong, surrogate, above U+10FFFF,
 * stray and missing continuation bytes), and the incremental contract: any
 * split of the input gives the same verdict, and a bad byte is reported by
 * the very feed that carries it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "ws/utf8.h"

#define B(s) ((const uint8_t *)(s)), (sizeof(s) - 1)

static bool valid(const uint8_t *p, size_t n)
{
    return utf8_valid(p, n);
}

/* Feed p one byte at a time; return the index of the byte whose feed failed,
 * or n if every feed succeeded. */
static size_t first_bad_bytewise(const uint8_t *p, size_t n, bool *complete)
{
    struct utf8_state s;
    utf8_init(&s);
    for (size_t i = 0; i < n; i++)
        if (utf8_feed(&s, p + i, 1) < 0)
            return i;
    *complete = utf8_complete(&s);
    return n;
}

static void test_empty(void **state)
{
    (void)state;
    assert_true(utf8_valid((const uint8_t *)"", 0));
    struct utf8_state s;
    utf8_init(&s);
    assert_true(utf8_complete(&s));
    assert_int_equal(utf8_feed(&s, (const uint8_t *)"", 0), 0);
    assert_true(utf8_complete(&s));
}

static void test_ascii(void **state)
{
    (void)state;
    assert_true(valid(B("hello, world")));
    /* Long enough to exercise the eight-byte fast path, with every ASCII
     * value including NUL and DEL. */
    uint8_t all[128];
    for (int i = 0; i < 128; i++)
        all[i] = (uint8_t)i;
    assert_true(valid(all, sizeof all));
    for (size_t off = 0; off < 16; off++)
        assert_true(valid(all + off, sizeof all - off));
}

static void test_multibyte_valid(void **state)
{
    (void)state;
    assert_true(valid(B("\xC3\xA9")));                 /* U+00E9 e-acute */
    assert_true(valid(B("\xE2\x82\xAC")));             /* U+20AC euro */
    assert_true(valid(B("\xF0\x9F\x98\x80")));         /* U+1F600 emoji */
    assert_true(valid(B("a\xC3\xA9z\xE2\x82\xAC\xF0\x9F\x98\x80!")));
    assert_true(valid(B("\xEF\xBB\xBF")));             /* BOM U+FEFF is fine */
    assert_true(valid(B("\xEE\x80\x80")));             /* U+E000 private use */
    assert_true(valid(B("\xED\x9F\xBF")));             /* U+D7FF, just below surrogates */
    assert_true(valid(B("\xF3\xBF\xBF\xBF")));         /* U+FFFFF */
    assert_true(valid(B("\xF4\x80\x80\x80")));         /* U+100000 */
}

static void test_boundaries(void **state)
{
    (void)state;
    assert_true(valid(B("\x7F")));                     /* U+007F */
    assert_true(valid(B("\xC2\x80")));                 /* U+0080 */
    assert_true(valid(B("\xDF\xBF")));                 /* U+07FF */
    assert_true(valid(B("\xE0\xA0\x80")));             /* U+0800 */
    assert_true(valid(B("\xEF\xBF\xBF")));             /* U+FFFF */
    assert_true(valid(B("\xF0\x90\x80\x80")));         /* U+10000 */
    assert_true(valid(B("\xF4\x8F\xBF\xBF")));         /* U+10FFFF */
    /* Embedded NUL is a valid code point. */
    const uint8_t nul[] = {'a', 0, 'b'};
    assert_true(valid(nul, sizeof nul));
}

static void test_overlong(void **state)
{
    (void)state;
    assert_false(valid(B("\xC0\x80")));
    assert_false(valid(B("\xC1\xBF")));
    assert_false(valid(B("\xC0\xAF")));                /* overlong '/' */
    assert_false(valid(B("\xE0\x80\x80")));
    assert_false(valid(B("\xE0\x9F\xBF")));            /* overlong U+07FF */
    assert_false(valid(B("\xF0\x80\x80\x80")));
    assert_false(valid(B("\xF0\x8F\xBF\xBF")));        /* overlong U+FFFF */
}

static void test_surrogates(void **state)
{
    (void)state;
    assert_false(valid(B("\xED\xA0\x80")));            /* U+D800 */
    assert_false(valid(B("\xED\xAF\xBF")));            /* U+DBFF */
    assert_false(valid(B("\xED\xB0\x80")));            /* U+DC00 */
    assert_false(valid(B("\xED\xBF\xBF")));            /* U+DFFF */
    assert_false(valid(B("\xED\xA0\x80\xED\xB0\x80"))); /* CESU-8 pair */
}

static void test_above_max(void **state)
{
    (void)state;
    assert_false(valid(B("\xF4\x90\x80\x80")));        /* U+110000 */
    assert_false(valid(B("\xF4\xBF\xBF\xBF")));
    for (unsigned b = 0xF5; b <= 0xFF; b++) {
        uint8_t seq[4] = {(uint8_t)b, 0x80, 0x80, 0x80};
        assert_false(valid(seq, 4));
        assert_false(valid(seq, 1));
    }
    /* Old five- and six-byte forms. */
    assert_false(valid(B("\xF8\x88\x80\x80\x80")));
    assert_false(valid(B("\xFC\x84\x80\x80\x80\x80")));
}

static void test_stray_continuation(void **state)
{
    (void)state;
    for (unsigned b = 0x80; b <= 0xBF; b++) {
        uint8_t seq[3] = {'a', (uint8_t)b, 'b'};
        assert_false(valid(seq, 3));
        assert_false(valid(seq + 1, 1));
    }
    assert_false(valid(B("\xC3\xA9\xA9")));            /* one too many */
    assert_false(valid(B("\xE2\x82\xAC\x80")));
}

static void test_missing_continuation(void **state)
{
    (void)state;
    /* A lead byte followed by something that is not a continuation. */
    assert_false(valid(B("\xC3" "a")));
    assert_false(valid(B("\xE2\x82" "a")));
    assert_false(valid(B("\xF0\x9F\x98" "a")));
    assert_false(valid(B("\xC3\xC3\xA9")));
}

static void test_truncated(void **state)
{
    (void)state;
    assert_false(valid(B("\xC3")));
    assert_false(valid(B("\xE2\x82")));
    assert_false(valid(B("\xE2")));
    assert_false(valid(B("\xF0\x9F\x98")));
    assert_false(valid(B("abc\xF0\x9F")));

    /* A truncated sequence is a valid prefix: utf8_feed succeeds, only
     * utf8_complete says no. */
    struct utf8_state s;
    utf8_init(&s);
    assert_int_equal(utf8_feed(&s, B("abc\xF0\x9F")), 0);
    assert_false(utf8_complete(&s));
    assert_int_equal(utf8_feed(&s, B("\x98\x80")), 0);
    assert_true(utf8_complete(&s));
}

/* Every byte value as a lead byte against a reference table. */
static void test_lead_bytes(void **state)
{
    (void)state;
    for (unsigned b = 0; b < 256; b++) {
        uint8_t seq[4] = {(uint8_t)b, 0, 0, 0};
        size_t n;
        if (b < 0x80) {
            n = 1;
        } else if (b >= 0xC2 && b <= 0xDF) {
            seq[1] = 0x80 | 0x20;
            n = 2;
        } else if (b >= 0xE0 && b <= 0xEF) {
            seq[1] = b == 0xED ? 0x80 : 0xA0;
            seq[2] = 0x80;
            n = 3;
        } else if (b >= 0xF0 && b <= 0xF4) {
            seq[1] = b == 0xF4 ? 0x80 : 0x90;
            seq[2] = 0x80;
            seq[3] = 0x80;
            n = 4;
        } else {
            n = 0;
        }
        if (n) {
            assert_true(valid(seq, n));
        } else {
            seq[1] = 0x80;
            assert_false(valid(seq, 2));
            struct utf8_state s;
            utf8_init(&s);
            assert_int_equal(utf8_feed(&s, seq, 1), -1);
        }
    }
}

/* Exhaustive over all two-byte sequences: the validator agrees with a
 * decode-and-check reference. */
static bool ref_valid2(uint8_t a, uint8_t b)
{
    if (a < 0x80)
        return b < 0x80;
    if (a < 0xC2 || a > 0xDF)
        return false;
    return b >= 0x80 && b <= 0xBF;
}

static void test_all_two_byte(void **state)
{
    (void)state;
    for (unsigned a = 0; a < 256; a++)
        for (unsigned b = 0; b < 256; b++) {
            uint8_t seq[2] = {(uint8_t)a, (uint8_t)b};
            assert_int_equal(valid(seq, 2), ref_valid2(seq[0], seq[1]));
        }
}

/* Encode a code point as UTF-8 (the reference for the three-byte sweep). */
static size_t encode(uint32_t cp, uint8_t out[4])
{
    if (cp < 0x80) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xC0 | (cp >> 6));
        out[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xE0 | (cp >> 12));
        out[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (uint8_t)(0xF0 | (cp >> 18));
    out[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

/* Every code point (step 1 up to U+FFFF, sampled above) encodes to a
 * sequence the validator accepts exactly when it is not a surrogate. */
static void test_all_code_points(void **state)
{
    (void)state;
    for (uint32_t cp = 0; cp <= 0x10FFFF; cp += cp < 0x10000 ? 1 : 7) {
        uint8_t seq[4];
        size_t n = encode(cp, seq);
        bool surrogate = cp >= 0xD800 && cp <= 0xDFFF;
        assert_int_equal(valid(seq, n), !surrogate);
    }
    uint8_t seq[4];
    size_t n = encode(0x10FFFF, seq);
    assert_true(valid(seq, n));
    n = encode(0x110000, seq);
    assert_false(valid(seq, n));
}

static const uint8_t mixed[] =
    "plain ASCII text that is long enough for the fast path "
    "\xC3\xA9t\xC3\xA9 \xE2\x82\xAC" "42 \xF0\x9F\x98\x80 \xF4\x8F\xBF\xBF"
    "\xDF\xBF\xE0\xA0\x80\xEF\xBF\xBF\xF0\x90\x80\x80 and more ascii at the end";

/* Every split into two feeds gives the whole-buffer verdict, and after the
 * first feed utf8_complete tells whether the split fell on a boundary. */
static void test_incremental_splits_valid(void **state)
{
    (void)state;
    size_t n = sizeof mixed - 1;
    assert_true(valid(mixed, n));
    for (size_t cut = 0; cut <= n; cut++) {
        struct utf8_state s;
        utf8_init(&s);
        assert_int_equal(utf8_feed(&s, mixed, cut), 0);
        bool boundary = cut == n || (mixed[cut] & 0xC0) != 0x80;
        assert_int_equal(utf8_complete(&s), boundary);
        assert_int_equal(utf8_feed(&s, mixed + cut, n - cut), 0);
        assert_true(utf8_complete(&s));
    }
    /* And one byte at a time. */
    bool complete = false;
    assert_int_equal(first_bad_bytewise(mixed, n, &complete), n);
    assert_true(complete);
}

/* Fail fast: with a bad byte at position bad, every split reports -1 from
 * the feed that contains that byte, and 0 from a feed that ends before it. */
static void check_fail_fast(const uint8_t *p, size_t n, size_t bad)
{
    for (size_t cut = 0; cut <= n; cut++) {
        struct utf8_state s;
        utf8_init(&s);
        int r1 = utf8_feed(&s, p, cut);
        if (bad < cut) {
            assert_int_equal(r1, -1);
            continue;
        }
        assert_int_equal(r1, 0);
        assert_int_equal(utf8_feed(&s, p + cut, n - cut), -1);
    }
    bool complete;
    assert_int_equal(first_bad_bytewise(p, n, &complete), bad);
}

static void test_incremental_fail_fast(void **state)
{
    (void)state;
    uint8_t buf[sizeof mixed + 8];
    size_t n = sizeof mixed - 1;

    /* Corrupt the string at several positions with several kinds of bad
     * byte; "bad" is where the first invalid byte sits. */
    struct {
        size_t pos;        /* where to overwrite */
        const char *with;  /* bytes written there */
        size_t bad_rel;    /* offset of the first invalid byte in 'with' */
    } cases[] = {
        {3, "\xFF", 0},
        {20, "\x80", 0},                 /* stray continuation */
        {40, "\xC0\x80", 0},             /* overlong: C0 itself is invalid */
        {50, "\xE0\x80\x80", 1},         /* overlong: bad at second byte */
        {10, "\xED\xA0\x80", 1},         /* surrogate */
        {30, "\xF4\x90\x80\x80", 1},     /* above U+10FFFF */
        {33, "\xF0\x80\x80\x80", 1},     /* overlong four-byte */
        {60, "\xC3" "a", 1},             /* missing continuation */
        {n - 4, "\xF5", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        memcpy(buf, mixed, n);
        /* Keep the prefix before pos valid: pos must be on a boundary. */
        assert_true((mixed[cases[i].pos] & 0xC0) != 0x80);
        size_t wl = strlen(cases[i].with);
        memcpy(buf + cases[i].pos, cases[i].with, wl);
        assert_false(valid(buf, n));
        check_fail_fast(buf, n, cases[i].pos + cases[i].bad_rel);
    }
}

/* A truncated sequence at the end: every split succeeds on both feeds and
 * only utf8_complete reports the problem. */
static void test_incremental_truncated(void **state)
{
    (void)state;
    uint8_t buf[sizeof mixed + 4];
    size_t n = sizeof mixed - 1;
    memcpy(buf, mixed, n);
    memcpy(buf + n, "\xF0\x9F\x98", 3);
    n += 3;
    for (size_t cut = 0; cut <= n; cut++) {
        struct utf8_state s;
        utf8_init(&s);
        assert_int_equal(utf8_feed(&s, buf, cut), 0);
        assert_int_equal(utf8_feed(&s, buf + cut, n - cut), 0);
        assert_false(utf8_complete(&s));
    }
}

/* Three-way splits of a short multi-byte string, every pair of cut points. */
static void test_incremental_three_way(void **state)
{
    (void)state;
    const uint8_t s3[] = "\xF0\x9F\x98\x80\xE2\x82\xAC\xC3\xA9x";
    size_t n = sizeof s3 - 1;
    for (size_t a = 0; a <= n; a++)
        for (size_t b = a; b <= n; b++) {
            struct utf8_state s;
            utf8_init(&s);
            assert_int_equal(utf8_feed(&s, s3, a), 0);
            assert_int_equal(utf8_feed(&s, s3 + a, b - a), 0);
            assert_int_equal(utf8_feed(&s, s3 + b, n - b), 0);
            assert_true(utf8_complete(&s));
        }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_ascii),
        cmocka_unit_test(test_multibyte_valid),
        cmocka_unit_test(test_boundaries),
        cmocka_unit_test(test_overlong),
        cmocka_unit_test(test_surrogates),
        cmocka_unit_test(test_above_max),
        cmocka_unit_test(test_stray_continuation),
        cmocka_unit_test(test_missing_continuation),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_lead_bytes),
        cmocka_unit_test(test_all_two_byte),
        cmocka_unit_test(test_all_code_points),
        cmocka_unit_test(test_incremental_splits_valid),
        cmocka_unit_test(test_incremental_fail_fast),
        cmocka_unit_test(test_incremental_truncated),
        cmocka_unit_test(test_incremental_three_way),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
