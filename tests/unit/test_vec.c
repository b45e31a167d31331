/*
 * vec tests: elements survive growth, capacity doubles from VEC_MIN_CAP,
 * reserve never shrinks nor reallocates when there is room, and every way a
 * growth can fail (length overflow, byte-count overflow, an allocation the
 * allocator refuses) returns -ENOMEM with the old array, length and
 * capacity intact.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "util/vec.h"

/* The sanitizer builds abort on an allocation they cannot serve unless told
 * to return NULL, as glibc does; the failure path is what is tested here.
 * (Options from the environment still win over these defaults.) */
const char *__asan_default_options(void);
const char *__tsan_default_options(void);
const char *__asan_default_options(void)
{
    return "allocator_may_return_null=1";
}
const char *__tsan_default_options(void)
{
    return "allocator_may_return_null=1";
}

struct pair {
    uint64_t a;
    uint32_t b;
};

static int is_pow2_times_min(size_t cap)
{
    if (cap < VEC_MIN_CAP || cap % VEC_MIN_CAP)
        return 0;
    size_t k = cap / VEC_MIN_CAP;
    return (k & (k - 1)) == 0;
}

static void test_push_keeps_elements_and_doubles(void **state)
{
    (void)state;
    VEC(int) v = VEC_INIT;
    assert_null(v.items);
    size_t grows = 0, last_cap = 0;
    for (int i = 0; i < 1000; i++) {
        assert_int_equal(vec_push(&v, i * 3), 0);
        assert_true(v.len <= v.cap);
        if (v.cap != last_cap) {
            /* Each growth doubles; the first allocates VEC_MIN_CAP. */
            assert_int_equal(v.cap, last_cap ? last_cap * 2 : VEC_MIN_CAP);
            last_cap = v.cap;
            grows++;
        }
    }
    assert_int_equal(v.len, 1000);
    assert_int_equal(v.cap, 1024);
    assert_int_equal(grows, 9); /* 4, 8, ..., 1024 */
    for (int i = 0; i < 1000; i++)
        assert_int_equal(v.items[i], i * 3);
    vec_release(&v);
    assert_null(v.items);
    assert_int_equal(v.len, 0);
    assert_int_equal(v.cap, 0);
    /* Released is as good as new. */
    assert_int_equal(vec_push(&v, 7), 0);
    assert_int_equal(v.items[0], 7);
    vec_release(&v);
}

static void test_push_evaluates_value_once(void **state)
{
    (void)state;
    VEC(struct pair) v = VEC_INIT;
    uint32_t next = 0;
    for (int i = 0; i < 10; i++)
        assert_int_equal(vec_push(&v, ((struct pair){.a = (uint64_t)i << 40, .b = next++})), 0);
    assert_int_equal(next, 10);
    for (uint32_t i = 0; i < 10; i++) {
        assert_int_equal(v.items[i].a, (uint64_t)i << 40);
        assert_int_equal(v.items[i].b, i);
    }
    vec_release(&v);
}

static void test_reserve(void **state)
{
    (void)state;
    VEC(char) v = VEC_INIT;
    /* Nothing asked, nothing allocated. */
    assert_int_equal(vec_reserve(&v, 0), 0);
    assert_null(v.items);
    assert_int_equal(v.cap, 0);
    /* A large first request is served at once, rounded by doubling. */
    assert_int_equal(vec_reserve(&v, 8192), 0);
    assert_int_equal(v.cap, 8192);
    assert_true(is_pow2_times_min(v.cap));
    memset(v.items, 'x', 8192);
    v.len = 8000;
    /* Room already: the array does not move. */
    char *before = v.items;
    assert_int_equal(vec_reserve(&v, 192), 0);
    assert_ptr_equal(v.items, before);
    assert_int_equal(v.cap, 8192);
    /* One more than fits: doubled, bytes kept. */
    assert_int_equal(vec_reserve(&v, 193), 0);
    assert_int_equal(v.cap, 16384);
    for (size_t i = 0; i < 8000; i++)
        assert_int_equal(v.items[i], 'x');
    /* More than a doubling: doubled as often as needed. */
    assert_int_equal(vec_reserve(&v, 100000), 0);
    assert_true(v.cap >= 108000);
    assert_int_equal(v.cap, 131072);
    vec_release(&v);
}

/* The shape of chatd's hand-written arrays: a pointer, a count and a size_t
 * capacity kept in the owner's own struct. */
struct owner {
    struct pair *ps;
    unsigned n;
    size_t cap;
};

static void test_grow_on_callers_fields(void **state)
{
    (void)state;
    struct owner o = {NULL, 0, 0};
    for (unsigned i = 0; i < 100; i++) {
        assert_int_equal(vec_grow(&o.ps, &o.cap, o.n, 1, sizeof *o.ps), 0);
        assert_true(o.cap > o.n);
        o.ps[o.n++] = (struct pair){i, i + 1};
    }
    for (unsigned i = 0; i < 100; i++) {
        assert_int_equal(o.ps[i].a, i);
        assert_int_equal(o.ps[i].b, i + 1);
    }
    assert_int_equal(o.cap, 128);
    free(o.ps);
}

static void test_overflow_refused_array_kept(void **state)
{
    (void)state;
    VEC(struct pair) v = VEC_INIT;
    for (uint32_t i = 0; i < 5; i++)
        assert_int_equal(vec_push(&v, ((struct pair){i, i})), 0);
    struct pair *items = v.items;
    size_t cap = v.cap;

    /* len + n wraps. */
    assert_int_equal(vec_reserve(&v, SIZE_MAX), -ENOMEM);
    assert_int_equal(vec_reserve(&v, SIZE_MAX - 4), -ENOMEM);
    /* len + n fits, its byte count does not. */
    assert_int_equal(vec_reserve(&v, SIZE_MAX / sizeof(struct pair)), -ENOMEM);
    /* Fits in size_t, but no allocator serves it. */
    assert_int_equal(vec_reserve(&v, SIZE_MAX / sizeof(struct pair) / 2), -ENOMEM);
    assert_int_equal(vec_reserve(&v, (size_t)1 << 50), -ENOMEM);
    assert_int_equal(vec_push(&v, ((struct pair){9, 9})), 0); /* still usable */

    assert_ptr_equal(v.items, items); /* no move: there was room for one */
    assert_int_equal(v.cap, cap);
    assert_int_equal(v.len, 6);
    for (uint32_t i = 0; i < 5; i++)
        assert_int_equal(v.items[i].b, i);
    vec_release(&v);
}

/* A capacity past half of size_t cannot double; growth settles for exactly
 * what is needed rather than wrapping to a small number. (The capacity is a
 * lie: the allocator refuses the size, so the block is never written.) */
static void test_no_wrap_near_size_max(void **state)
{
    (void)state;
    char *p = malloc(16);
    assert_non_null(p);
    memcpy(p, "kept", 5);
    size_t cap = SIZE_MAX / 2 + 10;
    assert_int_equal(vec_grow(&p, &cap, cap, 1, 1), -ENOMEM);
    assert_int_equal(cap, SIZE_MAX / 2 + 10);
    assert_string_equal(p, "kept");
    size_t cap2 = SIZE_MAX / 4 + 1;
    assert_int_equal(vec_grow(&p, &cap2, cap2, 1, 4), -ENOMEM);
    assert_int_equal(cap2, SIZE_MAX / 4 + 1);
    assert_string_equal(p, "kept");
    free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_push_keeps_elements_and_doubles),
        cmocka_unit_test(test_push_evaluates_value_once),
        cmocka_unit_test(test_reserve),
        cmocka_unit_test(test_grow_on_callers_fields),
        cmocka_unit_test(test_overflow_refused_array_kept),
        cmocka_unit_test(test_no_wrap_near_size_max),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
