/*
 * Timestamp format tests: clock_format_rfc3339 against strftime over many
 * instants, in and out of order (its per-thread cache of the second must
 * never show a stale date).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "util/clock.h"

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_against_strftime),
        cmocka_unit_test(test_out_of_range),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
