/*
 * fifo: an intrusive first-in first-out queue under a lock, the one place
 * where chatd's threads hand each other work.
 *
 * Two queues are built on it: each worker's inbox (producers: any thread;
 * consumer: the worker's loop, woken by its uv_async_t) and the storage
 * writer's request queue (producers: the workers; consumer: the writer
 * thread, which blocks in fifo_wait). A node is embedded in the message it
 * carries (struct fifo_node as a member, FIFO_ENTRY to get the message back),
 * so queuing never allocates and never fails for lack of memory.
 *
 * Ownership. fifo_push* takes ownership of the node only when it returns >= 0;
 * on a refusal (closed, full) the node is still the caller's, untouched, and
 * the caller disposes of it. fifo_take*, fifo_close hand back a NULL-terminated
 * chain linked by `next`, oldest first, owned by the caller from then on.
 *
 * Threads. Every function may be called from any thread, except init and
 * release (the owner, when no other thread can reach the fifo and every push
 * has returned: fifo_push signals a waiter after letting go of the lock).
 * All fields are guarded by the fifo's own mutex, `_lock`. Lock order:
 * `_lock` is a leaf: nothing else is locked while it is held, except what a
 * notify callback does (see fifo_push_notify), which must itself take no
 * lock.
 *
 * Closing. A fifo ends in one of two ways, both refusing every later push
 * with -ESHUTDOWN (the caller drops what it wanted to queue):
 *   - fifo_close: the owner's consumer is stopping and will run nothing more.
 *     It returns what was left for the owner to dispose of (the worker inbox:
 *     each message's drop function).
 *   - fifo_shut: the consumer will finish what was accepted. Queued nodes
 *     stay; fifo_wait returns -ESHUTDOWN only once they are all taken (the
 *     storage writer: "finish queued writes, then stop").
 *
 * Limit. A fifo made with a nonzero limit refuses a push that would hold more
 * than `limit` nodes with -ENOBUFS; it never blocks the producer, since the
 * producers are event loops that must not wait on a slow consumer. The caller
 * keeps the node and reacts as its own header says (drop and count it, or
 * answer the client that the server is busy). Every queue has a limit
 * (STYLE 12); 0 is for queues bounded elsewhere (for instance by the number
 * of connections that may each have one request outstanding).
 *
 * Waking a libuv loop is the caller's business, because only the caller knows
 * its uv_async_t. The worker inbox keeps today's guarantee, that a post never
 * calls uv_async_send on a handle the worker has closed, by this protocol:
 *
 *     post (any thread):
 *         rc = fifo_push_notify(&w->inbox, &m->node, wake, &w->wakeup);
 *         if (rc < 0)
 *             drop(m);                 (closed: the worker has stopped)
 *         with: static void wake(void *a) { uv_async_send(a); }
 *     drain (the worker, in the async callback):
 *         for (n = fifo_take_all(&w->inbox, NULL); n; n = next) { next = n->next; run(n); }
 *     stop (the worker, once, on its own thread):
 *         left = fifo_close(&w->inbox, NULL);
 *         drop every node of left;
 *         uv_close(&w->wakeup, ...);
 *
 * fifo_push_notify runs `wake` while still holding `_lock`, and fifo_close
 * takes the same lock: a push that got in before the close has finished its
 * uv_async_send, and one that comes after is refused before touching the
 * handle. A plain fifo_push followed by uv_async_send would lose that: between
 * the push's unlock and its send, the worker could close the fifo and the
 * handle.
 *
 * The storage writer needs no wake-up of its own: a push signals the fifo's
 * condition variable, on which fifo_wait blocks. Its loop, as today's:
 *
 *     submit (any thread): fifo_push(&s->queue, &r->node), -ESHUTDOWN as now
 *     writer thread:
 *         while (fifo_wait(&s->queue, FIFO_FOREVER) == 0) {
 *             batch = fifo_take(&s->queue, STORE_BATCH_MAX, &n);
 *             if (n < STORE_BATCH_MAX / 4 && the last commit ended < 2 ms ago) {
 *                 fifo_wait(&s->queue, STORE_LINGER_US * 1000);   (group commit)
 *                 append fifo_take(&s->queue, STORE_BATCH_MAX - n, &m) to batch;
 *             }
 *             run the batch;
 *         }
 *     close (main thread): fifo_shut(&s->queue); join the writer (it has
 *         committed everything accepted); fifo_release(&s->queue).
 *
 * The linger's fifo_wait returns at the first push or the deadline, like
 * today's uv_cond_timedwait; a close during it ends it at once.
 */
#ifndef CHATD_UTIL_FIFO_H
#define CHATD_UTIL_FIFO_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Embed one in each message; a node is on at most one fifo at a time. */
struct fifo_node {
    struct fifo_node *next;
};

/* The message that holds node `ptr` as its member `member`. */
#define FIFO_ENTRY(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* fifo_wait's timeout that never expires. */
#define FIFO_FOREVER (-1)

struct fifo {
    /* private: all guarded by _lock */
    pthread_mutex_t _lock;
    pthread_cond_t _ready;   /* signalled on push into a waited fifo, broadcast on close */
    struct fifo_node *_head; /* oldest; NULL when empty */
    struct fifo_node *_tail; /* newest; meaningless when _head is NULL */
    size_t _count;           /* nodes queued */
    size_t _limit;           /* most nodes held; 0: no limit (read-only after init) */
    unsigned _waiters;       /* threads blocked in fifo_wait */
    bool _closed;            /* fifo_close or fifo_shut was called */
};

/* Prepare an empty, open fifo holding at most limit nodes (0: no limit).
 * 0, or a negative errno when the mutex or condition cannot be made. */
int fifo_init(struct fifo *f, size_t limit);

/* Destroy the lock and condition. The fifo must be empty (take or close it
 * first and dispose of the nodes) and no thread may use it any more. */
void fifo_release(struct fifo *f);

/* Append n (takes ownership on success). Returns 1 when the fifo was empty
 * before (the consumer may need waking), 0 when it was not, -ESHUTDOWN once
 * closed or shut, -ENOBUFS when full; on a negative return n is untouched and
 * still the caller's. Wakes one thread blocked in fifo_wait. */
int fifo_push(struct fifo *f, struct fifo_node *n);

/* fifo_push, then notify(arg) before the lock is released, only when the push
 * was accepted. notify must be short and must take no lock nor call into this
 * fifo: uv_async_send is the intended one (see "Waking a libuv loop" above).
 * NULL: none (fifo_push). */
int fifo_push_notify(struct fifo *f, struct fifo_node *n, void (*notify)(void *arg), void *arg);

/* Take every queued node in one lock: the chain, oldest first, or NULL when
 * empty. *count (when count is not NULL) gets how many. Also after a close or
 * shut: that is how a shut fifo is drained. */
struct fifo_node *fifo_take_all(struct fifo *f, size_t *count);

/* Take at most max (>= 1) of the oldest nodes; as fifo_take_all otherwise.
 * For a consumer that works in bounded batches (the storage writer's
 * STORE_BATCH_MAX): what it leaves stays queued, so such a consumer must
 * come back for the rest without waiting for another push. */
struct fifo_node *fifo_take(struct fifo *f, size_t max, size_t *count);

/* Refuse pushes from now on, wake every waiter, and return what was queued
 * (chain, oldest first; *count when not NULL) for the caller to dispose of.
 * Calling it again returns NULL. */
struct fifo_node *fifo_close(struct fifo *f, size_t *count);

/* Refuse pushes from now on and wake every waiter, but leave the queued nodes
 * for the consumer to take (see "Closing" above). fifo_close after fifo_shut
 * takes what the consumer did not. */
void fifo_shut(struct fifo *f);

/*
 * Block the calling thread until the fifo holds a node, or is closed (or
 * shut) and empty, or timeout_ns nanoseconds have passed (FIFO_FOREVER: no
 * timeout; 0: just look). Returns 0 when there is something to take,
 * -ESHUTDOWN when closed and empty (the consumer stops), -ETIMEDOUT. A closed
 * fifo that still holds nodes returns 0, so a consumer drains it before it
 * sees -ESHUTDOWN. For a consumer thread that has nothing else to do (the
 * storage writer); never on an event loop. With one consumer, a 0 return
 * means its next take gets at least one node.
 */
int fifo_wait(struct fifo *f, int64_t timeout_ns);

/* How many nodes are queued: a snapshot for metrics and tests, stale as soon
 * as it returns. */
size_t fifo_count(struct fifo *f);

#endif
