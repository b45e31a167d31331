/*
 * clock tests: the RFC 3339 format (against strftime over many instants, in
 * and out of order: its per-thread cache of the second must never show a
 * stale date), and the monotonic timed waits that keep
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
#include <stdio.h>
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

static void reference(int64_t ms, char out[32])
{
    int64_t s = ms / 1000, r = ms % 1000;
    if (r < 0) {
        s--;
        r += 1000;
    }
    time_t t = (time_t)s;
    struct tm tm;
    gmtime_r(&t, &tm);
    size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 32 - n, ".%03dZ", (int)r);
}

static void check(int64_t ms)
{
    char got[25], want[32];
    memset(got, 'x', sizeof got);
    assert_int_equal(clock_format_rfc3339(got, ms), 24);
    reference(ms, want);
    assert_string_equal(got, want);
}

static void test_against_strftime(void **state)
{
    (void)state;
    static const int64_t fixed[] = {0, 1, 999, 1000, 1764757200123LL, 951782400000LL /* 2000-02-29 */,
                                    253402300799999LL /* 9999-12-31T23:59:59.999 */, -1, -1000,
                                    -1001, 1700000000000LL};
    for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++)
        check(fixed[i]);
    /* A walk forward and back across seconds, minutes and days. */
    uint64_t x = 88172645463325252ULL;
    int64_t t = 1764806399000LL; /* a day's last second */
    for (int i = 0; i < 200000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        t += (int64_t)(x % 3001) - 1400;
        check(t);
    }
}

static void test_out_of_range(void **state)
{
    (void)state;
    char got[25];
    assert_int_equal(clock_format_rfc3339(got, 253402300800000LL), 24); /* year 10000 */
    assert_string_equal(got, "0000-00-00T00:00:00.000Z");
    check(1764806399500LL); /* and the next one is right again */
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
        cmocka_unit_test(test_against_strftime),
        cmocka_unit_test(test_out_of_range),
        cmocka_unit_test(test_deadline_is_normalised),
        cmocka_unit_test(test_timed_wait_runs_its_whole_time),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
