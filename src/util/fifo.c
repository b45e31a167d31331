/*
 * DESIGN: a singly linked chain with head and tail pointers, so push and
 * take-all are O(1) and the lock is held for a few stores only; the consumer
 * walks what it took after unlocking. The condition variable runs on
 * CLOCK_MONOTONIC, so a wall clock step (NTP, an operator) neither shortens
 * nor stretches the storage writer's linger. Pushes signal it only when a
 * thread is actually waiting (the worker inboxes, which nobody waits on,
 * pay nothing for it), and after letting go of the lock.
 */
#include "util/fifo.h"

#include <assert.h>
#include <errno.h>
#include <time.h>

int fifo_init(struct fifo *f, size_t limit)
{
    f->_head = f->_tail = NULL;
    f->_count = 0;
    f->_limit = limit;
    f->_waiters = 0;
    f->_closed = false;

    pthread_condattr_t attr;
    int rc = pthread_condattr_init(&attr);
    if (rc != 0)
        return -rc;
    rc = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    if (rc == 0)
        rc = pthread_cond_init(&f->_ready, &attr);
    pthread_condattr_destroy(&attr);
    if (rc != 0)
        return -rc;
    rc = pthread_mutex_init(&f->_lock, NULL);
    if (rc != 0) {
        pthread_cond_destroy(&f->_ready);
        return -rc;
    }
    return 0;
}

void fifo_release(struct fifo *f)
{
    /* The owner took or closed everything, and no thread is left inside. */
    assert(f->_head == NULL && f->_count == 0);
    assert(f->_waiters == 0);
    pthread_cond_destroy(&f->_ready);
    pthread_mutex_destroy(&f->_lock);
}

int fifo_push_notify(struct fifo *f, struct fifo_node *n, void (*notify)(void *arg), void *arg)
{
    int rc;
    pthread_mutex_lock(&f->_lock);
    if (f->_closed) {
        rc = -ESHUTDOWN;
    } else if (f->_limit && f->_count >= f->_limit) {
        rc = -ENOBUFS;
    } else {
        n->next = NULL;
        rc = f->_head == NULL;
        if (rc)
            f->_head = n;
        else
            f->_tail->next = n;
        f->_tail = n;
        f->_count++;
        /* Under the lock: fifo_close cannot slip in between the push and
         * the notification, so the owner may tear down what notify touches
         * as soon as its close returns. */
        if (notify)
            notify(arg);
    }
    bool wake = rc >= 0 && f->_waiters > 0;
    pthread_mutex_unlock(&f->_lock);
    /* Signalled once the lock is free. Signalled under it, the woken
     * consumer, run at once on the pusher's core, would find the lock
     * still held and sleep again until the pusher let go of it: two more
     * context switches per push. A waiter that wakes for nothing (the node
     * taken meanwhile) looks again under the lock (fifo_wait's loop). */
    if (wake)
        pthread_cond_signal(&f->_ready);
    return rc;
}

int fifo_push(struct fifo *f, struct fifo_node *n)
{
    return fifo_push_notify(f, n, NULL, NULL);
}

/* Unlink up to max of the oldest nodes; the caller holds _lock. */
static struct fifo_node *take_locked(struct fifo *f, size_t max, size_t *count)
{
    struct fifo_node *first = f->_head;
    size_t n = 0;
    if (max >= f->_count) {
        n = f->_count;
        f->_head = f->_tail = NULL;
    } else if (max > 0) {
        struct fifo_node *last = first;
        for (n = 1; n < max; n++)
            last = last->next;
        f->_head = last->next;
        last->next = NULL;
    } else {
        first = NULL;
    }
    f->_count -= n;
    assert((f->_head == NULL) == (f->_count == 0));
    if (count)
        *count = n;
    return first;
}

struct fifo_node *fifo_take_all(struct fifo *f, size_t *count)
{
    pthread_mutex_lock(&f->_lock);
    struct fifo_node *first = take_locked(f, SIZE_MAX, count);
    pthread_mutex_unlock(&f->_lock);
    return first;
}

struct fifo_node *fifo_take(struct fifo *f, size_t max, size_t *count)
{
    assert(max >= 1);
    pthread_mutex_lock(&f->_lock);
    struct fifo_node *first = take_locked(f, max, count);
    pthread_mutex_unlock(&f->_lock);
    return first;
}

struct fifo_node *fifo_close(struct fifo *f, size_t *count)
{
    pthread_mutex_lock(&f->_lock);
    f->_closed = true;
    struct fifo_node *left = take_locked(f, SIZE_MAX, count);
    pthread_cond_broadcast(&f->_ready);
    pthread_mutex_unlock(&f->_lock);
    return left;
}

void fifo_shut(struct fifo *f)
{
    pthread_mutex_lock(&f->_lock);
    f->_closed = true;
    pthread_cond_broadcast(&f->_ready);
    pthread_mutex_unlock(&f->_lock);
}

/* now + ns on CLOCK_MONOTONIC, the clock _ready was made with. */
static struct timespec deadline_after(int64_t ns)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    t.tv_sec += (time_t)(ns / 1000000000);
    t.tv_nsec += (long)(ns % 1000000000);
    if (t.tv_nsec >= 1000000000) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000;
    }
    return t;
}

int fifo_wait(struct fifo *f, int64_t timeout_ns)
{
    struct timespec deadline = {0, 0};
    if (timeout_ns > 0)
        deadline = deadline_after(timeout_ns);
    pthread_mutex_lock(&f->_lock);
    int rc;
    bool expired = timeout_ns == 0;
    for (;;) {
        /* Nodes first: a shut fifo is drained before its consumer stops. */
        if (f->_head) {
            rc = 0;
            break;
        }
        if (f->_closed) {
            rc = -ESHUTDOWN;
            break;
        }
        if (expired) {
            rc = -ETIMEDOUT;
            break;
        }
        f->_waiters++;
        if (timeout_ns < 0) {
            pthread_cond_wait(&f->_ready, &f->_lock);
        } else if (pthread_cond_timedwait(&f->_ready, &f->_lock, &deadline) == ETIMEDOUT) {
            /* Look once more: a push may have come with the deadline. */
            expired = true;
        }
        f->_waiters--;
    }
    pthread_mutex_unlock(&f->_lock);
    return rc;
}

size_t fifo_count(struct fifo *f)
{
    pthread_mutex_lock(&f->_lock);
    size_t n = f->_count;
    pthread_mutex_unlock(&f->_lock);
    return n;
}
