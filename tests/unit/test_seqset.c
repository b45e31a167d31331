/* Unit tests for the sent-seq set (src/hub/seqset.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "hub/seqset.h"

static void test_empty(void **state)
{
    (void)state;
    struct seqset s = {0};
    assert_false(seqset_has(&s, 0));
    assert_false(seqset_has(&s, 1));
    assert_int_equal(seqset_max(&s), 0);
    seqset_release(&s);
}

static void test_in_order_is_one_range(void **state)
{
    (void)state;
    struct seqset s = {0};
    for (int64_t i = 1; i <= 1000; i++)
        assert_int_equal(seqset_add(&s, i), 0);
    assert_int_equal(s.n, 1);
    assert_int_equal(seqset_ranges(&s)[0].lo, 1);
    assert_int_equal(seqset_ranges(&s)[0].hi, 1000);
    assert_true(seqset_has(&s, 1) && seqset_has(&s, 500) && seqset_has(&s, 1000));
    assert_false(seqset_has(&s, 0) || seqset_has(&s, 1001));
    assert_int_equal(seqset_max(&s), 1000);
    seqset_release(&s);
}

static void test_hole_filled_by_replay(void **state)
{
    (void)state;
    struct seqset s = {0};
    /* Live events 10..12 arrive before a replay of 1..9. */
    for (int64_t i = 10; i <= 12; i++)
        seqset_add(&s, i);
    assert_false(seqset_has(&s, 5));
    for (int64_t i = 1; i <= 8; i++)
        seqset_add(&s, i);
    assert_int_equal(s.n, 2);
    assert_false(seqset_has(&s, 9));
    seqset_add(&s, 9);
    assert_int_equal(s.n, 1);
    assert_int_equal(seqset_ranges(&s)[0].lo, 1);
    assert_int_equal(seqset_ranges(&s)[0].hi, 12);
    seqset_release(&s);
}

static void test_adding_twice_changes_nothing(void **state)
{
    (void)state;
    struct seqset s = {0};
    seqset_add(&s, 3);
    seqset_add(&s, 7);
    seqset_add(&s, 3);
    seqset_add(&s, 7);
    assert_int_equal(s.n, 2);
    assert_true(seqset_has(&s, 3) && seqset_has(&s, 7));
    assert_false(seqset_has(&s, 4) || seqset_has(&s, 5) || seqset_has(&s, 6));
    assert_int_equal(seqset_max(&s), 7);
    seqset_release(&s);
}

static void test_merges_from_both_sides(void **state)
{
    (void)state;
    struct seqset s = {0};
    seqset_add(&s, 5);
    seqset_add(&s, 1);
    seqset_add(&s, 9);
    assert_int_equal(s.n, 3);
    seqset_add(&s, 4); /* joins 5 from below */
    seqset_add(&s, 6); /* joins 4..5 from above */
    assert_int_equal(s.n, 3);
    seqset_add(&s, 2);
    seqset_add(&s, 3); /* 1..6 */
    assert_int_equal(s.n, 2);
    seqset_add(&s, 8);
    seqset_add(&s, 7); /* 1..9 */
    assert_int_equal(s.n, 1);
    assert_int_equal(seqset_ranges(&s)[0].lo, 1);
    assert_int_equal(seqset_ranges(&s)[0].hi, 9);
    seqset_release(&s);
}

/* A set moves its ranges out to an array at the second and back inside
 * when they merge into one; in and out again, nothing is lost or leaked
 * (ASan's leak check in the sanitizer builds). */
static void test_out_and_back_inside(void **state)
{
    (void)state;
    struct seqset s = {0};
    assert_int_equal(seqset_add(&s, 1), 0);
    for (int64_t top = 1; top < 9; top += 2) {
        assert_true(seqset_ranges(&s) == &s.u.one);
        assert_int_equal(seqset_add(&s, top + 2), 0); /* a hole: out to an array */
        assert_int_equal(s.n, 2);
        assert_true(seqset_ranges(&s) != &s.u.one);
        assert_false(seqset_has(&s, top + 1));
        assert_int_equal(seqset_add(&s, top + 1), 0); /* filled: back inside */
        assert_int_equal(s.n, 1);
        assert_true(seqset_ranges(&s) == &s.u.one);
        assert_int_equal(s.u.one.lo, 1);
        assert_int_equal(s.u.one.hi, top + 2);
    }
    assert_int_equal(seqset_max(&s), 9);
    seqset_release(&s);
    assert_int_equal(s.n, 0);
    assert_false(seqset_has(&s, 1));
    assert_int_equal(seqset_add(&s, 7), 0); /* usable again */
    assert_true(seqset_has(&s, 7));
    seqset_release(&s);
}

/* Against a plain bitmap: random adds in random order. */
static void test_matches_a_bitmap(void **state)
{
    (void)state;
    enum { N = 400 };
    unsigned seed = 12345;
    for (int round = 0; round < 50; round++) {
        struct seqset s = {0};
        char seen[N + 2] = {0};
        for (int k = 0; k < N; k++) {
            seed = seed * 1103515245u + 12345u;
            int64_t v = 1 + (seed >> 8) % N;
            seqset_add(&s, v);
            seen[v] = 1;
            if (k % 37 == 0) {
                for (int64_t q = 0; q <= N + 1; q++)
                    assert_int_equal(seqset_has(&s, q), seen[q]);
            }
        }
        int64_t max = 0;
        for (int64_t q = 0; q <= N + 1; q++) {
            assert_int_equal(seqset_has(&s, q), seen[q]);
            if (seen[q])
                max = q;
        }
        assert_int_equal(seqset_max(&s), max);
        for (unsigned i = 1; i < s.n; i++)
            assert_true(seqset_ranges(&s)[i - 1].hi + 1 < seqset_ranges(&s)[i].lo);
        seqset_release(&s);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_in_order_is_one_range),
        cmocka_unit_test(test_hole_filled_by_replay),
        cmocka_unit_test(test_adding_twice_changes_nothing),
        cmocka_unit_test(test_merges_from_both_sides),
        cmocka_unit_test(test_out_and_back_inside),
        cmocka_unit_test(test_matches_a_bitmap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
