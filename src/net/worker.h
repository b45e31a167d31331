/*
 * worker: the worker threads' shared types and their inboxes.
 *
 * Threads. The main thread builds a struct server and starts N workers
 * (server.h); then it only handles signals. Each worker thread owns one
 * uv_loop_t, one listening socket on the shared port (SO_REUSEPORT: the
 * kernel spreads connections), and every connection it accepted; a
 * connection never moves. Nothing in a struct worker is touched by another
 * thread except its inbox.
 *
 * Inbox. Other threads hand work to a worker with worker_post(): the message
 * goes on the worker's fifo (util/fifo.h, its own lock, a leaf) and
 * uv_async_send wakes the loop, sent under that lock (fifo_push_notify), so
 * a post never wakes a handle the worker has closed. The loop drains the
 * fifo in one batch and runs each message's callback on the worker's
 * thread. The inbox has no count limit: what is posted to it is bounded by
 * its producers (one post per worker per storage batch, one per cross-worker
 * notification), and refusing a post would lose an event that was already
 * acknowledged. NEEDSWORK: a byte budget per inbox with a stated reaction.
 *
 * Shared state in struct server: the config (read-only after start), the
 * counters below (atomics), and `shutting_down` (atomic). Everything else is
 * per worker.
 */
#ifndef CHATD_NET_WORKER_H
#define CHATD_NET_WORKER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "conf/config.h"
#include "util/fifo.h"
#include "util/idmap.h"
#include "util/list.h"
#include "ws/frame.h"

struct worker;
struct server;

/* A message for a worker's inbox. The callback runs on the worker's thread
 * and owns the message (frees it). */
struct inbox_msg {
    struct fifo_node node; /* on the worker's inbox */
    void (*run)(struct worker *w, struct inbox_msg *m);
    /* Dispose of a message that will never run (its worker has stopped);
     * NULL means free(). Called on the posting thread or the worker's. */
    void (*drop)(struct inbox_msg *m);
};

#define WORKER_READ_BUF (64 * 1024)
#define FLUSH_PASS 128          /* connections written per flush pass (server.c) */

/* Counters one worker writes and /metrics reads: single writer, so a
 * relaxed load and store (no locked instruction) is enough. */
struct worker_stats {
    atomic_uint_fast64_t http_requests;
    atomic_uint_fast64_t ws_messages_in;
    atomic_uint_fast64_t ws_messages_out;
    atomic_uint_fast64_t send_queue_drops;
    atomic_uint_fast64_t input_budget_closes;
};

static inline void stat_inc(atomic_uint_fast64_t *c)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

struct worker {
    /* read-only after start */
    struct server *srv;
    unsigned index;
    uv_thread_t thread;
    int listen_fd;              /* owned: bound socket, watched by `listener` (-1 once
                                 * closed; the worker thread closes it) */

    /* owned by the worker thread */
    uv_loop_t loop;
    uv_poll_t listener;         /* readable: connections wait to be accepted */
    uv_async_t wakeup;
    uv_timer_t tick;            /* 1 s sweep: deadlines, pings, lingering closes */
    uv_check_t flush;           /* after each I/O phase: write what was queued */
    uv_prepare_t logs;          /* before each poll: write the batched log lines */
    uv_idle_t more;             /* active while queued output waits for a pass */
    struct list_node conns;     /* every connection of this worker */
    struct list_node dirty;     /* connections with output not yet flushed */
    struct idmap by_id;         /* conn id -> struct conn *, chat connections */
    uint8_t *read_buf;          /* one read buffer shared by all connections */
    struct ws_decoder scratch_dec; /* decodes reads of connections at rest (conn.c) */
    uint64_t next_conn_seq;
    unsigned nconns;
    bool listening;
    bool draining;              /* shutdown started on this worker */
    /* Out of file descriptors: accepting pauses (server.c accept_pause),
     * the connections wait in the kernel's queue, and accept is tried again
     * every ACCEPT_RETRY_MS until a descriptor is free. */
    bool accept_paused;
    uv_timer_t accept_retry;
    struct worker_stats stats;  /* written by this worker only */

    /* shared: messages from other threads, guarded by the fifo's own lock;
     * closed by the worker when it stops (posts are dropped from then on) */
    struct fifo inbox;
};

struct server_stats {
    atomic_uint_fast64_t ws_open;       /* open WebSocket connections, all workers */
    atomic_uint_fast64_t conns_open;    /* open TCP connections */
    atomic_uint_fast64_t conns_total;
};

/* Sum the per-worker counters (any thread). */
void server_sum_stats(struct server *srv, struct worker_stats *out);

struct conn;
struct http_request;

/* How net calls up: the layer above registers this table (and its own
 * pointer, `app`) before server_start; net includes nothing above it. */
struct net_ops {
    /* A complete HTTP request head on a connection: answer it (conn_http_*)
     * or upgrade it (conn_upgrade). Worker thread of the connection. */
    void (*on_request)(void *app, struct conn *c, const struct http_request *req);
};

struct server {
    /* read-only after server_listen */
    const struct config *cfg;
    unsigned nworkers;
    struct worker *workers;
    int port;                   /* the bound port (useful with --listen :0) */
    const struct net_ops *ops;  /* set by the layer above before server_start */
    void *app;                  /* its first argument (borrowed) */

    atomic_bool shutting_down;
    atomic_uint workers_done;
    struct server_stats stats;
};

/* Post a message to a worker's inbox (takes ownership). Any thread. */
void worker_post(struct worker *w, struct inbox_msg *m);

/* The worker running the calling thread, or NULL outside the workers. */
struct worker *worker_current(void);

/* Dispose of a chain of inbox nodes that will never run (see
 * inbox_msg.drop). */
void worker_drop_msgs(struct fifo_node *n);
/* Mark the calling thread as worker w's (the worker thread, at its start). */
void worker_set_current(struct worker *w);

#endif
