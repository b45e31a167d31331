/*
 * hash tests: pinned values (the published FNV-1a vectors, and values of the
 * mixed and seeded hash computed by a separate implementation), the
 * equalities the header promises, and distribution checks that a weak hash
 * fails: bucket counts of chatd-like keys in low and high bits, avalanche
 * (one flipped input bit flips each output bit about half the time), and no
 * collision among many keys.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "util/hash.h"

static void test_fnv1a_reference_values(void **state)
{
    (void)state;
    /* From the FNV reference (64-bit FNV-1a test vectors). */
    assert_int_equal(hash_fnv1a("", 0, HASH_FNV64_OFFSET), 0xcbf29ce484222325ULL);
    assert_int_equal(hash_fnv1a("a", 1, HASH_FNV64_OFFSET), 0xaf63dc4c8601ec8cULL);
    assert_int_equal(hash_fnv1a("foobar", 6, HASH_FNV64_OFFSET), 0x85944171f73967e8ULL);
}

static void test_stable_values(void **state)
{
    (void)state;
    /* Computed once by an independent implementation; a change here changes
     * every table's layout and every stripe choice. */
    assert_int_equal(hash_bytes("", 0), 0xefd01f60ba992926ULL);
    assert_int_equal(hash_bytes("a", 1), 0x82a2a958a9bece5bULL);
    assert_int_equal(hash_bytes("foobar", 6), 0x2c22194922d1672bULL);
    assert_int_equal(hash_bytes("user-1", 6), 0x41a2fca5c68401c5ULL);
    assert_int_equal(hash_bytes("a\0b", 3), 0xab78f5eca36d0e2bULL);
    assert_int_equal(hash_str("sess-0001"), 0x02c21bf407484f82ULL);
    uint64_t seed = 0x0123456789abcdefULL;
    assert_int_equal(hash_bytes_seeded("", 0, seed), 0x7701da0f7662e43cULL);
    assert_int_equal(hash_bytes_seeded("foobar", 6, seed), 0xe37ffcd127ebe796ULL);
    assert_int_equal(hash_bytes_seeded("user-1", 6, seed), 0x4ae6c6672c9986faULL);
    assert_int_equal(hash_mix64(0), 0);
    assert_int_equal(hash_mix64(1), 0xb456bcfc34c2cb2cULL);
    assert_int_equal(hash_mix64(0x0123456789abcdefULL), 0x87cbfbfe89022ceaULL);
}

static void test_forms_agree(void **state)
{
    (void)state;
    const char *keys[] = {"", "a", "alice", "user-000042", "s-\xc3\xa9t\xc3\xa9"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
        size_t n = strlen(keys[i]);
        assert_int_equal(hash_str(keys[i]), hash_bytes(keys[i], n));
        assert_int_equal(hash_bytes_seeded(keys[i], n, 0), hash_bytes(keys[i], n));
        assert_int_equal(hash_bytes(keys[i], n),
                         hash_mix64(hash_fnv1a(keys[i], n, HASH_FNV64_OFFSET)));
    }
    /* Wire data: bytes after a NUL count, and the length does. */
    assert_int_not_equal(hash_bytes("a\0b", 3), hash_bytes("a\0c", 3));
    assert_int_not_equal(hash_bytes("a\0b", 3), hash_bytes("a", 1));
    assert_int_not_equal(hash_bytes("a", 1), hash_bytes("a\0", 2));
}

static void test_seeds_change_everything(void **state)
{
    (void)state;
    /* Two seeds: the same keys land elsewhere, in a way the other seed's
     * hash does not predict (about half the bits differ). */
    unsigned bits = 0;
    char key[32];
    for (int i = 0; i < 1000; i++) {
        int n = snprintf(key, sizeof key, "user-%d", i);
        uint64_t a = hash_bytes_seeded(key, (size_t)n, 0x1111);
        uint64_t b = hash_bytes_seeded(key, (size_t)n, 0x2222);
        assert_int_not_equal(a, b);
        assert_int_equal(a, hash_bytes_seeded(key, (size_t)n, 0x1111)); /* stable */
        bits += (unsigned)__builtin_popcountll(a ^ b);
    }
    assert_in_range(bits, 1000 * 28, 1000 * 36);
}

/* splitmix64: a fixed sequence, so the checks below are deterministic. */
static uint64_t next_rand(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Chi-square of nkeys chatd-like ids over 1024 buckets, taking the bucket
 * from bits [shift, shift + 10) of the hash. */
static double chi_square(unsigned shift, unsigned nkeys, unsigned *max_bucket)
{
    static unsigned bucket[1024];
    memset(bucket, 0, sizeof bucket);
    char key[32];
    for (unsigned i = 0; i < nkeys; i++) {
        int n = snprintf(key, sizeof key, "user-%u", i);
        bucket[(hash_bytes(key, (size_t)n) >> shift) & 1023]++;
    }
    double e = (double)nkeys / 1024, chi = 0;
    *max_bucket = 0;
    for (unsigned b = 0; b < 1024; b++) {
        chi += (bucket[b] - e) * (bucket[b] - e) / e;
        if (bucket[b] > *max_bucket)
            *max_bucket = bucket[b];
    }
    return chi;
}

static void test_buckets_even_in_low_and_high_bits(void **state)
{
    (void)state;
    /* 1023 degrees of freedom: mean 1023, standard deviation about 45. */
    const unsigned shifts[] = {0, 10, 27, 54};
    for (size_t i = 0; i < sizeof shifts / sizeof *shifts; i++) {
        unsigned maxb;
        double chi = chi_square(shifts[i], 100000, &maxb);
        assert_true(chi < 1250.0);
        assert_true(maxb < 2 * 100000 / 1024); /* no bucket twice the mean */
    }
}

static void test_avalanche(void **state)
{
    (void)state;
    /* Flip each bit of 16-byte keys; each output bit must flip with
     * probability near 1/2. FNV-1a alone fails: a flip in the last byte
     * never reaches the output bits below it. */
    enum { KEYS = 1000, INBITS = 128 };
    static unsigned flips[INBITS][64];
    memset(flips, 0, sizeof flips);
    uint64_t rng = 42;
    for (int k = 0; k < KEYS; k++) {
        unsigned char key[16];
        uint64_t r0 = next_rand(&rng), r1 = next_rand(&rng);
        memcpy(key, &r0, 8);
        memcpy(key + 8, &r1, 8);
        uint64_t h = hash_bytes(key, sizeof key);
        for (int ib = 0; ib < INBITS; ib++) {
            key[ib / 8] ^= (unsigned char)(1u << (ib % 8));
            uint64_t d = h ^ hash_bytes(key, sizeof key);
            key[ib / 8] ^= (unsigned char)(1u << (ib % 8));
            for (int ob = 0; ob < 64; ob++)
                flips[ib][ob] += (unsigned)(d >> ob & 1);
        }
    }
    for (int ib = 0; ib < INBITS; ib++) {
        unsigned row = 0;
        for (int ob = 0; ob < 64; ob++) {
            /* 1000 trials: standard deviation about 16, so 100 is over 6. */
            assert_in_range(flips[ib][ob], KEYS / 2 - 100, KEYS / 2 + 100);
            row += flips[ib][ob];
        }
        assert_in_range(row, 64 * KEYS * 45 / 100, 64 * KEYS * 55 / 100);
    }
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void test_no_collision_among_many_keys(void **state)
{
    (void)state;
    /* 200k keys in 2^64 values: a collision has odds near 1e-9. Keys differ
     * in one or two characters, the case that trips weak hashes. */
    enum { N = 200000 };
    static uint64_t hs[N];
    char key[32];
    for (unsigned i = 0; i < N; i++) {
        int n = snprintf(key, sizeof key, "%s-%u", i % 2 ? "sess" : "user", i / 2);
        hs[i] = hash_bytes(key, (size_t)n);
    }
    qsort(hs, N, sizeof *hs, cmp_u64);
    unsigned dup = 0;
    for (unsigned i = 1; i < N; i++)
        dup += hs[i] == hs[i - 1];
    assert_int_equal(dup, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fnv1a_reference_values),
        cmocka_unit_test(test_stable_values),
        cmocka_unit_test(test_forms_agree),
        cmocka_unit_test(test_seeds_change_everything),
        cmocka_unit_test(test_buckets_even_in_low_and_high_bits),
        cmocka_unit_test(test_avalanche),
        cmocka_unit_test(test_no_collision_among_many_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
