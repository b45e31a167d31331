/*
 * Registry tests: admission limits, eviction order, idempotent removal, and a
 * stress run from 8 threads (100k admissions and removals) that must end with
 * every count at zero. Run under TSan in CI, where any race fails the test.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <uv.h>

#include "hub/registry.h"

static struct reg_device dev(uint64_t id)
{
    struct reg_device d = {.conn_id = id, .worker = (uint32_t)(id % 4), .opened_at_ms = (int64_t)id};
    return d;
}

static int admit(struct registry *r, const char *u, uint64_t id, unsigned max,
                 enum device_policy p, unsigned *count, struct reg_device *ev, unsigned *nothers)
{
    struct reg_device d = dev(id), others[16];
    return registry_admit(r, u, strlen(u), &d, max, p, count, others, 16, nothers, ev);
}

static void test_limit_refuses_and_lists_others(void **state)
{
    (void)state;
    struct registry r;
    assert_int_equal(registry_init(&r), 0);
    unsigned count, nothers;
    struct reg_device ev;
    for (uint64_t i = 1; i <= 10; i++) {
        assert_int_equal(admit(&r, "ann", i, 10, DEVICE_POLICY_REFUSE, &count, &ev, &nothers),
                         REG_ADMITTED);
        assert_int_equal(count, i);
    }
    assert_int_equal(admit(&r, "ann", 11, 10, DEVICE_POLICY_REFUSE, &count, &ev, &nothers),
                     REG_REFUSED);
    assert_int_equal(count, 10);
    assert_int_equal(nothers, 10);
    assert_int_equal(registry_count(&r, "ann", 3), 10);
    /* Another user is not affected. */
    assert_int_equal(admit(&r, "bob", 12, 10, DEVICE_POLICY_REFUSE, &count, &ev, &nothers),
                     REG_ADMITTED);
    assert_int_equal(atomic_load(&r.devices), 11);
    assert_int_equal(atomic_load(&r.users), 2);
    registry_release(&r);
}

static void test_evict_oldest_removes_first_admitted(void **state)
{
    (void)state;
    struct registry r;
    assert_int_equal(registry_init(&r), 0);
    unsigned count, nothers;
    struct reg_device ev;
    for (uint64_t i = 1; i <= 3; i++)
        admit(&r, "ann", i, 3, DEVICE_POLICY_EVICT_OLDEST, &count, &ev, &nothers);
    assert_int_equal(admit(&r, "ann", 4, 3, DEVICE_POLICY_EVICT_OLDEST, &count, &ev, &nothers),
                     REG_EVICTED);
    assert_int_equal(ev.conn_id, 1);
    assert_int_equal(count, 3);
    /* The evicted device's own removal later finds nothing. */
    assert_int_equal(registry_remove(&r, "ann", 3, 1), -ENOENT);
    assert_int_equal(admit(&r, "ann", 5, 3, DEVICE_POLICY_EVICT_OLDEST, &count, &ev, &nothers),
                     REG_EVICTED);
    assert_int_equal(ev.conn_id, 2);
    struct reg_device out[8];
    assert_int_equal(registry_devices(&r, "ann", 3, out, 8), 3);
    assert_int_equal(out[0].conn_id, 3);
    assert_int_equal(out[2].conn_id, 5);
    registry_release(&r);
}

static void test_remove_exactly_once(void **state)
{
    (void)state;
    struct registry r;
    assert_int_equal(registry_init(&r), 0);
    unsigned count, nothers;
    struct reg_device ev;
    admit(&r, "ann", 1, 10, DEVICE_POLICY_REFUSE, &count, &ev, &nothers);
    admit(&r, "ann", 2, 10, DEVICE_POLICY_REFUSE, &count, &ev, &nothers);
    assert_int_equal(registry_remove(&r, "ann", 3, 1), 0);
    assert_int_equal(registry_remove(&r, "ann", 3, 1), -ENOENT);
    assert_int_equal(registry_remove(&r, "nobody", 6, 1), -ENOENT);
    assert_int_equal(registry_count(&r, "ann", 3), 1);
    assert_int_equal(registry_remove(&r, "ann", 3, 2), 0);
    assert_int_equal(registry_count(&r, "ann", 3), 0);
    assert_int_equal(atomic_load(&r.users), 0);
    assert_int_equal(atomic_load(&r.devices), 0);
    registry_release(&r);
}

static void count_cb(void *arg, const char *user, size_t len, unsigned n)
{
    (void)user;
    (void)len;
    *(unsigned *)arg += n;
}

static void test_many_users_grow_table(void **state)
{
    (void)state;
    struct registry r;
    assert_int_equal(registry_init(&r), 0);
    unsigned count, nothers;
    struct reg_device ev;
    char name[32];
    for (uint64_t i = 1; i <= 20000; i++) {
        snprintf(name, sizeof name, "user-%llu", (unsigned long long)i);
        assert_int_equal(admit(&r, name, i, 10, DEVICE_POLICY_REFUSE, &count, &ev, &nothers),
                         REG_ADMITTED);
    }
    unsigned total = 0;
    registry_foreach(&r, count_cb, &total);
    assert_int_equal(total, 20000);
    for (uint64_t i = 1; i <= 20000; i++) {
        snprintf(name, sizeof name, "user-%llu", (unsigned long long)i);
        assert_int_equal(registry_remove(&r, name, strlen(name), i), 0);
    }
    assert_int_equal(atomic_load(&r.users), 0);
    registry_release(&r);
}

static void test_rate_bucket_survives_reconnect(void **state)
{
    (void)state;
    struct registry r;
    assert_int_equal(registry_init(&r), 0);
    unsigned count, nothers;
    struct reg_device ev;
    int64_t now = 1000000;
    admit(&r, "ann", 1, 10, DEVICE_POLICY_REFUSE, &count, &ev, &nothers);
    for (int i = 0; i < 3; i++)
        assert_int_equal(registry_take_token(&r, "ann", 3, 3, now), 0);
    int64_t wait = registry_take_token(&r, "ann", 3, 3, now);
    assert_true(wait > 0 && wait <= 20001);
    /* The last device leaves and comes back: the bucket is still empty. */
    assert_int_equal(registry_remove(&r, "ann", 3, 1), 0);
    assert_int_equal(atomic_load(&r.users), 0);
    admit(&r, "ann", 2, 10, DEVICE_POLICY_REFUSE, &count, &ev, &nothers);
    assert_int_equal(atomic_load(&r.users), 1);
    assert_true(registry_take_token(&r, "ann", 3, 3, now) > 0);
    /* A minute later it has refilled. */
    assert_int_equal(registry_take_token(&r, "ann", 3, 3, now + 60000), 0);
    assert_int_equal(registry_remove(&r, "ann", 3, 2), 0);
    /* gc frees the empty record once its bucket is full again. */
    registry_gc(&r, now + 60000);
    unsigned total_users = 0;
    for (int i = 0; i < REGISTRY_STRIPES; i++)
        total_users += (unsigned)r.stripes[i].nusers;
    assert_int_equal(total_users, 1); /* not yet full: 2 tokens short */
    registry_gc(&r, now + 10 * 60000);
    total_users = 0;
    for (int i = 0; i < REGISTRY_STRIPES; i++)
        total_users += (unsigned)r.stripes[i].nusers;
    assert_int_equal(total_users, 0);
    registry_release(&r);
}

/* ---- stress: 8 threads, 100k admissions and removals ---------------------- */

#define THREADS 8
#define OPS_PER_THREAD 12500 /* 8 x 12,500 = 100,000 admissions */
#define USERS 16
#define MAX_DEVICES 4

struct stress {
    struct registry *r;
    unsigned index;
    unsigned admitted, refused, evicted, removed;
    int policy;
};

static void stress_thread(void *arg)
{
    struct stress *s = arg;
    uint64_t mine[USERS][MAX_DEVICES + 1];
    unsigned held[USERS] = {0};
    uint32_t seed = 12345u + s->index;
    for (unsigned op = 0; op < OPS_PER_THREAD; op++) {
        seed = seed * 1103515245u + 12345u;
        unsigned u = (seed >> 16) % USERS;
        char name[16];
        snprintf(name, sizeof name, "u%u", u);
        uint64_t id = ((uint64_t)s->index << 32) | (op + 1);
        unsigned count, nothers;
        struct reg_device others[MAX_DEVICES], ev, d = dev(id);
        int rc = registry_admit(s->r, name, strlen(name), &d, MAX_DEVICES,
                                (enum device_policy)s->policy, &count, others, MAX_DEVICES,
                                &nothers, &ev);
        if (rc == REG_REFUSED) {
            s->refused++;
        } else {
            s->admitted++;
            if (rc == REG_EVICTED)
                s->evicted++;
            if (count > MAX_DEVICES)
                fail_msg("count %u over the limit", count);
            if (held[u] < MAX_DEVICES)
                mine[u][held[u]++] = id;
            else if (registry_remove(s->r, name, strlen(name), id) == 0)
                s->removed++;
        }
        /* Remove one of ours half of the time. */
        if (held[u] && (seed & 0x100)) {
            uint64_t victim = mine[u][--held[u]];
            if (registry_remove(s->r, name, strlen(name), victim) == 0)
                s->removed++;
        }
    }
    for (unsigned u = 0; u < USERS; u++) {
        char name[16];
        snprintf(name, sizeof name, "u%u", u);
        while (held[u]) {
            if (registry_remove(s->r, name, strlen(name), mine[u][--held[u]]) == 0)
                s->removed++;
        }
    }
}

static void run_stress(int policy)
{
    struct registry r;
    assert_int_equal(registry_init(&r), 0);
    struct stress st[THREADS];
    uv_thread_t th[THREADS];
    for (unsigned i = 0; i < THREADS; i++) {
        st[i] = (struct stress){.r = &r, .index = i, .policy = policy};
        assert_int_equal(uv_thread_create(&th[i], stress_thread, &st[i]), 0);
    }
    unsigned admitted = 0, removed = 0, evicted = 0;
    for (unsigned i = 0; i < THREADS; i++) {
        uv_thread_join(&th[i]);
        admitted += st[i].admitted;
        removed += st[i].removed;
        evicted += st[i].evicted;
    }
    /* Every admitted device left exactly once: by its removal or eviction. */
    assert_int_equal(admitted, removed + evicted);
    assert_int_equal(atomic_load(&r.devices), 0);
    assert_int_equal(atomic_load(&r.users), 0);
    unsigned total = 0;
    registry_foreach(&r, count_cb, &total);
    assert_int_equal(total, 0);
    registry_release(&r);
}

static void test_stress_refuse(void **state)
{
    (void)state;
    run_stress(DEVICE_POLICY_REFUSE);
}

static void test_stress_evict(void **state)
{
    (void)state;
    run_stress(DEVICE_POLICY_EVICT_OLDEST);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_limit_refuses_and_lists_others),
        cmocka_unit_test(test_evict_oldest_removes_first_admitted),
        cmocka_unit_test(test_remove_exactly_once),
        cmocka_unit_test(test_many_users_grow_table),
        cmocka_unit_test(test_rate_bucket_survives_reconnect),
        cmocka_unit_test(test_stress_refuse),
        cmocka_unit_test(test_stress_evict),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
