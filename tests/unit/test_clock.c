/*
 * clock tests: the RFC 3339 format, and the monotonic timed waits that keep
 * the assistant's and the Redis bus's deadlines off the wall clock. A
 * condition variable left on CLOCK_REALTIME with a monotonic deadline would
 * return at once (the deadline is decades in its past): the waits below
 * would then end before their time.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "util/clock.h"

static void test_format(void **state)
{
    (void)state;
    char out[25];
    assert_int_equal(clock_format_rfc3339(out, 1795687200123LL), 24);
    assert_string_equal(out, "2026-11-26T10:00:00.123Z");
}

static void test_deadline_is_normalised(void **state)
{
    (void)state;
    for (int64_t ms = 0; ms < 2500; ms += 7) {
        struct timespec now, d;
        clock_gettime(CLOCK_MONOTONIC, &now);
        d = clock_cond_deadline(ms);
        assert_true(d.tv_nsec >= 0 && d.tv_nsec < 1000000000L);
        int64_t diff =
            ((int64_t)d.tv_sec - now.tv_sec) * 1000 + (d.tv_nsec - now.tv_nsec) / 1000000;
        assert_true(diff >= ms && diff <= ms + 50);
    }
}

static void test_timed_wait_runs_its_whole_time(void **state)
{
    (void)state;
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv;
    assert_int_equal(clock_cond_init(&cv), 0);
    pthread_mutex_lock(&mu);
    int64_t t0 = clock_mono_ms();
    struct timespec until = clock_cond_deadline(60);
    int rc;
    do
        rc = pthread_cond_timedwait(&cv, &mu, &until);
    while (rc == 0); /* a spurious wake-up: the same deadline again */
    int64_t waited = clock_mono_ms() - t0;
    pthread_mutex_unlock(&mu);
    pthread_cond_destroy(&cv);
    assert_int_equal(rc, ETIMEDOUT);
    assert_true(waited >= 59);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_format),
        cmocka_unit_test(test_deadline_is_normalised),
        cmocka_unit_test(test_timed_wait_runs_its_whole_time),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
