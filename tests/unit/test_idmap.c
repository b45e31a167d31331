/*
 * Unit tests for the id map (src/util/idmap.c): every object put is found
 * by its id until it is deleted, whatever the order of puts and deletes;
 * deletion leaves no hole that cuts a probe run; the map reads ids from the
 * objects (at the offset it was given) and never keeps a stale address.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "util/idmap.h"

/* An object as the map sees a connection: its id somewhere inside. */
struct obj {
    char before[24];
    uint64_t id;
    int alive;
};

#define N 20000

/* Connection ids as a worker makes them: worker index above 48 bits. */
static uint64_t id_of(unsigned i)
{
    return ((uint64_t)3 << 48) | (uint64_t)(i + 1);
}

static void test_put_get_del(void **state)
{
    (void)state;
    struct obj *o = calloc(N, sizeof *o);
    assert_non_null(o);
    struct idmap m;
    idmap_init(&m, offsetof(struct obj, id));
    assert_null(idmap_get(&m, 42));
    assert_null(idmap_del(&m, 42));
    for (unsigned i = 0; i < N; i++) {
        o[i].id = id_of(i);
        o[i].alive = 1;
        assert_int_equal(idmap_put(&m, o[i].id, &o[i]), 0);
    }
    assert_int_equal(m.count, N);
    /* the load stays at most 3/4 */
    assert_true(m.count * 4 <= (m.mask + 1) * 3);
    for (unsigned i = 0; i < N; i++)
        assert_ptr_equal(idmap_get(&m, o[i].id), &o[i]);
    assert_null(idmap_get(&m, id_of(N)));
    assert_null(idmap_get(&m, (uint64_t)1 << 48 | 1)); /* another worker's */

    /* Delete in a scattered order (a fixed LCG), checking everything left
     * after every few deletions: a shifted-back entry must stay findable. */
    unsigned x = 12345, left = N;
    while (left > N / 4) {
        x = x * 1103515245u + 12345u;
        unsigned i = (x >> 8) % N;
        if (!o[i].alive) {
            assert_null(idmap_del(&m, o[i].id));
            continue;
        }
        assert_ptr_equal(idmap_del(&m, o[i].id), &o[i]);
        o[i].alive = 0;
        left--;
        if (left % 997 == 0) {
            for (unsigned k = 0; k < N; k++)
                assert_ptr_equal(idmap_get(&m, o[k].id), o[k].alive ? &o[k] : NULL);
        }
    }
    assert_int_equal(m.count, left);
    for (unsigned k = 0; k < N; k++)
        assert_ptr_equal(idmap_get(&m, o[k].id), o[k].alive ? &o[k] : NULL);
    idmap_release(&m);
    assert_int_equal(m.count, 0);
    assert_null(idmap_get(&m, o[0].id));
    free(o);
}

/* A second object with an id already present replaces the first. */
static void test_put_replaces(void **state)
{
    (void)state;
    struct obj a = {.id = 7}, b = {.id = 7};
    struct idmap m;
    idmap_init(&m, offsetof(struct obj, id));
    assert_int_equal(idmap_put(&m, 7, &a), 0);
    assert_int_equal(idmap_put(&m, 7, &b), 0);
    assert_int_equal(m.count, 1);
    assert_ptr_equal(idmap_get(&m, 7), &b);
    assert_ptr_equal(idmap_del(&m, 7), &b);
    assert_null(idmap_get(&m, 7));
    assert_int_equal(m.count, 0);
    idmap_release(&m);
}

/* Objects come and go for a long time (connections opening and closing)
 * with few alive at once: the table does not grow with the churn. */
static void test_churn_keeps_the_table_small(void **state)
{
    (void)state;
    struct obj o[64];
    struct idmap m;
    idmap_init(&m, offsetof(struct obj, id));
    uint64_t next = 1;
    for (unsigned i = 0; i < 64; i++) {
        o[i].id = next++;
        assert_int_equal(idmap_put(&m, o[i].id, &o[i]), 0);
    }
    size_t cap = m.mask + 1;
    for (unsigned round = 0; round < 100000; round++) {
        struct obj *p = &o[round % 64];
        assert_ptr_equal(idmap_del(&m, p->id), p);
        p->id = next++;
        assert_int_equal(idmap_put(&m, p->id, p), 0);
    }
    assert_int_equal(m.count, 64);
    assert_int_equal(m.mask + 1, cap);
    for (unsigned i = 0; i < 64; i++)
        assert_ptr_equal(idmap_get(&m, o[i].id), &o[i]);
    idmap_release(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_get_del),
        cmocka_unit_test(test_put_replaces),
        cmocka_unit_test(test_churn_keeps_the_table_small),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
