/*
 * fifo tests: order, partial takes, the two ways to close, the limit, the
 * notify-under-lock guarantee the worker inbox relies on, fifo_wait's three
 * outcomes, and a multi-producer, one-consumer stress that must lose, repeat
 * or reorder nothing (ThreadSanitizer checks the locking in its build).
 *
 * cmocka's asserts are not thread-safe: helper threads only record what they
 * saw, and the main thread asserts on it after joining them.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include <cmocka.h>

#include "util/fifo.h"

struct item {
    unsigned producer;
    unsigned seq;
    struct fifo_node node; /* not first on purpose: FIFO_ENTRY must do the work */
};

#define ITEM(n) FIFO_ENTRY((n), struct item, node)

static int64_t mono_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void sleep_ms(long ms)
{
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000};
    nanosleep(&t, NULL);
}

static size_t chain_len(const struct fifo_node *n)
{
    size_t k = 0;
    for (; n; n = n->next)
        k++;
    return k;
}

/* Threads blocked in fifo_wait (a private field, read under the fifo's lock
 * so that the test can know a waiter is really asleep before waking it). */
static unsigned waiters(struct fifo *f)
{
    pthread_mutex_lock(&f->_lock);
    unsigned n = f->_waiters;
    pthread_mutex_unlock(&f->_lock);
    return n;
}

static void wait_for_waiter(struct fifo *f)
{
    for (int i = 0; i < 5000 && waiters(f) == 0; i++)
        sleep_ms(1);
    assert_int_equal(waiters(f), 1);
}

static void test_order_and_was_empty(void **state)
{
    (void)state;
    struct fifo f;
    assert_int_equal(fifo_init(&f, 0), 0);
    struct item it[10];
    for (unsigned i = 0; i < 10; i++) {
        it[i].seq = i;
        /* Only the push into an empty fifo says so. */
        assert_int_equal(fifo_push(&f, &it[i].node), i == 0 ? 1 : 0);
    }
    assert_int_equal(fifo_count(&f), 10);
    size_t n = 99;
    struct fifo_node *c = fifo_take_all(&f, &n);
    assert_int_equal(n, 10);
    assert_int_equal(chain_len(c), 10);
    for (unsigned i = 0; i < 10; i++, c = c->next)
        assert_int_equal(ITEM(c)->seq, i);
    assert_null(c);
    assert_int_equal(fifo_count(&f), 0);
    assert_null(fifo_take_all(&f, &n));
    assert_int_equal(n, 0);
    /* Empty again: the next push reports it. */
    assert_int_equal(fifo_push(&f, &it[0].node), 1);
    assert_ptr_equal(fifo_take_all(&f, NULL), &it[0].node);
    fifo_release(&f);
}

static void test_take_at_most(void **state)
{
    (void)state;
    struct fifo f;
    assert_int_equal(fifo_init(&f, 0), 0);
    struct item it[5];
    for (unsigned i = 0; i < 5; i++) {
        it[i].seq = i;
        assert_true(fifo_push(&f, &it[i].node) >= 0);
    }
    size_t n;
    struct fifo_node *c = fifo_take(&f, 2, &n);
    assert_int_equal(n, 2);
    assert_int_equal(chain_len(c), 2); /* the chain is cut after the second */
    assert_int_equal(ITEM(c)->seq, 0);
    assert_int_equal(ITEM(c->next)->seq, 1);
    assert_int_equal(fifo_count(&f), 3);
    /* What was left keeps its order, and pushes still go behind it. */
    struct item extra = {.seq = 5};
    assert_int_equal(fifo_push(&f, &extra.node), 0);
    c = fifo_take(&f, 1, &n);
    assert_int_equal(n, 1);
    assert_int_equal(ITEM(c)->seq, 2);
    assert_null(c->next);
    c = fifo_take(&f, 100, &n);
    assert_int_equal(n, 3);
    for (unsigned want = 3; want <= 5; want++, c = c->next)
        assert_int_equal(ITEM(c)->seq, want);
    assert_null(c);
    assert_null(fifo_take(&f, 4, &n));
    assert_int_equal(n, 0);
    /* Taking exactly what is queued empties it, tail included. */
    assert_int_equal(fifo_push(&f, &it[0].node), 1);
    assert_int_equal(fifo_push(&f, &it[1].node), 0);
    c = fifo_take(&f, 2, &n);
    assert_int_equal(n, 2);
    assert_int_equal(fifo_push(&f, &it[2].node), 1);
    assert_ptr_equal(fifo_take_all(&f, NULL), &it[2].node);
    fifo_release(&f);
}

static void test_close_returns_rest_and_refuses(void **state)
{
    (void)state;
    struct fifo f;
    assert_int_equal(fifo_init(&f, 0), 0);
    struct item it[3];
    for (unsigned i = 0; i < 3; i++) {
        it[i].seq = i;
        assert_true(fifo_push(&f, &it[i].node) >= 0);
    }
    size_t n;
    struct fifo_node *left = fifo_close(&f, &n);
    assert_int_equal(n, 3);
    for (unsigned i = 0; i < 3; i++, left = left->next)
        assert_int_equal(ITEM(left)->seq, i);
    assert_null(left);

    /* A refused node is untouched and still the caller's. */
    struct item late;
    struct fifo_node sentinel;
    late.node.next = &sentinel;
    assert_int_equal(fifo_push(&f, &late.node), -ESHUTDOWN);
    assert_ptr_equal(late.node.next, &sentinel);
    assert_int_equal(fifo_count(&f), 0);
    assert_null(fifo_close(&f, &n)); /* a second close has nothing to return */
    assert_int_equal(n, 0);
    assert_null(fifo_take_all(&f, NULL));
    assert_int_equal(fifo_wait(&f, FIFO_FOREVER), -ESHUTDOWN);
    assert_int_equal(fifo_wait(&f, 0), -ESHUTDOWN);
    fifo_release(&f);
}

static void test_shut_leaves_nodes_to_drain(void **state)
{
    (void)state;
    struct fifo f;
    assert_int_equal(fifo_init(&f, 0), 0);
    struct item it[4];
    for (unsigned i = 0; i < 4; i++) {
        it[i].seq = i;
        assert_true(fifo_push(&f, &it[i].node) >= 0);
    }
    fifo_shut(&f);
    struct item late;
    assert_int_equal(fifo_push(&f, &late.node), -ESHUTDOWN);
    assert_int_equal(fifo_count(&f), 4);
    /* The consumer sees work until the last node is taken, then the end. */
    assert_int_equal(fifo_wait(&f, FIFO_FOREVER), 0);
    size_t n;
    struct fifo_node *c = fifo_take(&f, 3, &n);
    assert_int_equal(n, 3);
    assert_int_equal(ITEM(c)->seq, 0);
    assert_int_equal(fifo_wait(&f, 0), 0);
    /* A close after the shut hands the owner what the consumer left. */
    c = fifo_close(&f, &n);
    assert_int_equal(n, 1);
    assert_int_equal(ITEM(c)->seq, 3);
    assert_int_equal(fifo_wait(&f, FIFO_FOREVER), -ESHUTDOWN);
    fifo_release(&f);
}

static void test_limit_refuses_when_full(void **state)
{
    (void)state;
    struct fifo f;
    assert_int_equal(fifo_init(&f, 3), 0);
    struct item it[5];
    for (unsigned i = 0; i < 3; i++)
        assert_true(fifo_push(&f, &it[i].node) >= 0);
    struct fifo_node sentinel;
    it[3].node.next = &sentinel;
    assert_int_equal(fifo_push(&f, &it[3].node), -ENOBUFS);
    assert_ptr_equal(it[3].node.next, &sentinel);
    assert_int_equal(fifo_count(&f), 3);
    /* Room again after one is taken, and exactly one. */
    assert_ptr_equal(fifo_take(&f, 1, NULL), &it[0].node);
    assert_int_equal(fifo_push(&f, &it[3].node), 0);
    assert_int_equal(fifo_push(&f, &it[4].node), -ENOBUFS);
    /* Closed wins over full: the caller must learn the consumer is gone. */
    fifo_shut(&f);
    assert_int_equal(fifo_push(&f, &it[4].node), -ESHUTDOWN);
    size_t n;
    assert_non_null(fifo_close(&f, &n));
    assert_int_equal(n, 3);
    fifo_release(&f);
}

/* ---- notify runs under the lock, on accepted pushes only ----------------- */

struct notify_probe {
    struct fifo *f;
    int calls;
    int lock_was_held;
};

static void probe_notify(void *arg)
{
    struct notify_probe *p = arg;
    p->calls++;
    /* The mutex is not recursive: trylock from this thread fails while the
     * fifo holds it. */
    int rc = pthread_mutex_trylock(&p->f->_lock);
    if (rc == 0)
        pthread_mutex_unlock(&p->f->_lock);
    else if (rc == EBUSY)
        p->lock_was_held++;
}

static void test_notify_under_lock_only_when_accepted(void **state)
{
    (void)state;
    struct fifo f;
    assert_int_equal(fifo_init(&f, 2), 0);
    struct notify_probe p = {.f = &f};
    struct item it[3];
    assert_int_equal(fifo_push_notify(&f, &it[0].node, probe_notify, &p), 1);
    assert_int_equal(fifo_push_notify(&f, &it[1].node, probe_notify, &p), 0);
    assert_int_equal(p.calls, 2);
    assert_int_equal(p.lock_was_held, 2);
    assert_int_equal(fifo_push_notify(&f, &it[2].node, probe_notify, &p), -ENOBUFS);
    assert_int_equal(p.calls, 2);
    size_t n;
    assert_non_null(fifo_close(&f, &n));
    assert_int_equal(n, 2);
    assert_int_equal(fifo_push_notify(&f, &it[2].node, probe_notify, &p), -ESHUTDOWN);
    assert_int_equal(p.calls, 2);
    fifo_release(&f);
}

/*
 * The inbox protocol: producers post with fifo_push_notify, and the "worker"
 * closes the fifo, then its handle. A notify that ran after the handle was
 * closed would be a uv_async_send on a closed handle. `handle_closed` is a
 * plain int on purpose: the fifo's lock is what orders the close's write
 * before any later notify's read, and ThreadSanitizer reports a race if it
 * does not.
 */
#define RACE_PRODUCERS 3
#define RACE_ROUNDS 200

struct race {
    struct fifo f;
    int handle_closed;
    atomic_int notified_after_close;
    atomic_int refused;
    atomic_int accepted;
    atomic_int go;
};

static void race_notify(void *arg)
{
    struct race *r = arg;
    if (r->handle_closed)
        atomic_fetch_add(&r->notified_after_close, 1);
}

static void *race_producer(void *arg)
{
    struct race *r = arg;
    while (!atomic_load(&r->go))
        sched_yield();
    /* Keep posting until refused, as the storage writer replying to a
     * worker that stops: an accepted item is the fifo's (the close hands it
     * to the main thread), a refused one is still ours to drop. */
    for (;;) {
        struct item *it = malloc(sizeof *it);
        if (!it)
            abort();
        if (fifo_push_notify(&r->f, &it->node, race_notify, r) == -ESHUTDOWN) {
            free(it);
            atomic_fetch_add(&r->refused, 1);
            return NULL;
        }
        atomic_fetch_add(&r->accepted, 1);
    }
}

static void test_close_orders_against_notify(void **state)
{
    (void)state;
    for (int round = 0; round < RACE_ROUNDS; round++) {
        struct race r = {.handle_closed = 0};
        assert_int_equal(fifo_init(&r.f, 0), 0);
        pthread_t th[RACE_PRODUCERS];
        for (int i = 0; i < RACE_PRODUCERS; i++)
            assert_int_equal(pthread_create(&th[i], NULL, race_producer, &r), 0);
        atomic_store(&r.go, 1);
        if (round % 2)
            sched_yield();
        size_t n;
        struct fifo_node *left = fifo_close(&r.f, &n);
        r.handle_closed = 1; /* uv_close(&w->wakeup) */
        assert_int_equal(chain_len(left), n);
        for (int i = 0; i < RACE_PRODUCERS; i++)
            assert_int_equal(pthread_join(th[i], NULL), 0);
        while (left) {
            struct fifo_node *next = left->next;
            free(ITEM(left));
            left = next;
        }
        assert_int_equal(atomic_load(&r.notified_after_close), 0);
        /* Every producer was stopped by the close, and what they queued
         * before it is exactly what the close handed back. */
        assert_int_equal(atomic_load(&r.refused), RACE_PRODUCERS);
        assert_int_equal((size_t)atomic_load(&r.accepted), n);
        fifo_release(&r.f);
    }
}

/* ---- fifo_wait ----------------------------------------------------------- */

static void test_wait_times_out(void **state)
{
    (void)state;
    struct fifo f;
    assert_int_equal(fifo_init(&f, 0), 0);
    int64_t t0 = mono_ns();
    assert_int_equal(fifo_wait(&f, 0), -ETIMEDOUT);
    assert_int_equal(fifo_wait(&f, 30 * 1000000), -ETIMEDOUT);
    int64_t waited = mono_ns() - t0;
    assert_true(waited >= 30 * 1000000);
    assert_true(waited < 5 * 1000000000LL); /* generous: shared CI cores */
    /* A fifo that holds something answers at once, whatever the timeout. */
    struct item it;
    assert_int_equal(fifo_push(&f, &it.node), 1);
    assert_int_equal(fifo_wait(&f, FIFO_FOREVER), 0);
    assert_int_equal(fifo_wait(&f, 0), 0);
    assert_ptr_equal(fifo_take_all(&f, NULL), &it.node);
    fifo_release(&f);
}

struct waiter {
    struct fifo *f;
    int64_t timeout_ns;
    int rc;
};

static void *waiter_main(void *arg)
{
    struct waiter *w = arg;
    w->rc = fifo_wait(w->f, w->timeout_ns);
    return NULL;
}

static void test_wait_wakes_on_push(void **state)
{
    (void)state;
    struct fifo f;
    assert_int_equal(fifo_init(&f, 0), 0);
    /* A timeout far longer than the test: only the push can end the wait. */
    struct waiter w = {.f = &f, .timeout_ns = 600 * 1000000000LL, .rc = 1};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, waiter_main, &w), 0);
    wait_for_waiter(&f);
    struct item it;
    assert_int_equal(fifo_push(&f, &it.node), 1);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_int_equal(w.rc, 0);
    assert_ptr_equal(fifo_take_all(&f, NULL), &it.node);
    fifo_release(&f);
}

static void test_wait_wakes_on_close_and_shut(void **state)
{
    (void)state;
    for (int shut = 0; shut <= 1; shut++) {
        struct fifo f;
        assert_int_equal(fifo_init(&f, 0), 0);
        struct waiter w = {.f = &f, .timeout_ns = FIFO_FOREVER, .rc = 1};
        pthread_t th;
        assert_int_equal(pthread_create(&th, NULL, waiter_main, &w), 0);
        wait_for_waiter(&f);
        if (shut)
            fifo_shut(&f);
        else
            assert_null(fifo_close(&f, NULL));
        assert_int_equal(pthread_join(th, NULL), 0);
        assert_int_equal(w.rc, -ESHUTDOWN);
        fifo_release(&f);
    }
}

/* ---- stress: several producers, one consumer ------------------------------ */

#define PRODUCERS 4
#define PER_PRODUCER 50000

struct stress {
    struct fifo f;
    size_t limit;
    struct item *items[PRODUCERS];
    atomic_uint full_refusals;
    /* consumer's findings, read after join */
    unsigned got[PRODUCERS];
    unsigned out_of_order;
    unsigned bad_producer;
    size_t over_limit;
    unsigned timeouts;
};

struct producer_arg {
    struct stress *s;
    unsigned id;
};

static void *producer_main(void *arg)
{
    struct producer_arg *pa = arg;
    struct stress *s = pa->s;
    struct item *it = s->items[pa->id];
    for (unsigned i = 0; i < PER_PRODUCER; i++) {
        it[i].producer = pa->id;
        it[i].seq = i;
        int rc;
        /* A full fifo refuses; this producer insists, as a test may. */
        while ((rc = fifo_push(&s->f, &it[i].node)) == -ENOBUFS) {
            atomic_fetch_add_explicit(&s->full_refusals, 1, memory_order_relaxed);
            sched_yield();
        }
        if (rc < 0)
            abort(); /* nobody closes the fifo before the producers are done */
    }
    return NULL;
}

static void consume(struct stress *s, struct fifo_node *c, size_t n)
{
    /* One take never holds more than the fifo may. */
    if (s->limit && n > s->limit && n > s->over_limit)
        s->over_limit = n;
    for (; c; c = c->next) {
        struct item *it = ITEM(c);
        if (it->producer >= PRODUCERS) {
            s->bad_producer++;
            continue;
        }
        /* Each producer's items arrive in the order it pushed them. */
        if (it->seq != s->got[it->producer])
            s->out_of_order++;
        s->got[it->producer] = it->seq + 1;
    }
}

static void *consumer_main(void *arg)
{
    struct stress *s = arg;
    unsigned turn = 0;
    for (;;) {
        /* Short timeouts, so the timeout path runs under contention too. */
        int rc = fifo_wait(&s->f, 1000000);
        if (rc == -ESHUTDOWN)
            break;
        if (rc == -ETIMEDOUT) {
            s->timeouts++;
            continue;
        }
        size_t n;
        /* Alternate whole and bounded takes, as inbox and writer do. */
        struct fifo_node *c = turn++ % 2 ? fifo_take_all(&s->f, &n) : fifo_take(&s->f, 64, &n);
        consume(s, c, n);
    }
    return NULL;
}

static void run_stress(size_t limit)
{
    struct stress *s = calloc(1, sizeof *s);
    assert_non_null(s);
    s->limit = limit;
    assert_int_equal(fifo_init(&s->f, limit), 0);
    for (unsigned i = 0; i < PRODUCERS; i++) {
        s->items[i] = calloc(PER_PRODUCER, sizeof(struct item));
        assert_non_null(s->items[i]);
    }
    pthread_t cons, prod[PRODUCERS];
    struct producer_arg pa[PRODUCERS];
    assert_int_equal(pthread_create(&cons, NULL, consumer_main, s), 0);
    for (unsigned i = 0; i < PRODUCERS; i++) {
        pa[i] = (struct producer_arg){s, i};
        assert_int_equal(pthread_create(&prod[i], NULL, producer_main, &pa[i]), 0);
    }
    for (unsigned i = 0; i < PRODUCERS; i++)
        assert_int_equal(pthread_join(prod[i], NULL), 0);
    /* Every push is in: shut, and the consumer drains before it stops. */
    fifo_shut(&s->f);
    assert_int_equal(pthread_join(cons, NULL), 0);

    for (unsigned i = 0; i < PRODUCERS; i++)
        assert_int_equal(s->got[i], PER_PRODUCER);
    assert_int_equal(s->out_of_order, 0);
    assert_int_equal(s->bad_producer, 0);
    assert_int_equal(s->over_limit, 0);
    assert_int_equal(fifo_count(&s->f), 0);
    assert_null(fifo_close(&s->f, NULL));
    fifo_release(&s->f);
    for (unsigned i = 0; i < PRODUCERS; i++)
        free(s->items[i]);
    free(s);
}

static void test_stress_unbounded(void **state)
{
    (void)state;
    run_stress(0);
}

static void test_stress_bounded(void **state)
{
    (void)state;
    run_stress(16);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order_and_was_empty),
        cmocka_unit_test(test_take_at_most),
        cmocka_unit_test(test_close_returns_rest_and_refuses),
        cmocka_unit_test(test_shut_leaves_nodes_to_drain),
        cmocka_unit_test(test_limit_refuses_when_full),
        cmocka_unit_test(test_notify_under_lock_only_when_accepted),
        cmocka_unit_test(test_close_orders_against_notify),
        cmocka_unit_test(test_wait_times_out),
        cmocka_unit_test(test_wait_wakes_on_push),
        cmocka_unit_test(test_wait_wakes_on_close_and_shut),
        cmocka_unit_test(test_stress_unbounded),
        cmocka_unit_test(test_stress_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
