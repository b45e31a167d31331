/*
 * DESIGN: posting is the one thing any thread may do to a worker. The
 * wake-up is sent under the inbox's lock (fifo_push_notify): the worker
 * closes its async handle only after closing the fifo under that same
 * lock, so a post never wakes a closed handle, and a post to a stopped
 * worker is dropped at once on the posting thread.
 */
#include "net/worker.h"

#include <stdlib.h>

static _Thread_local struct worker *current_worker;

struct worker *worker_current(void) { return current_worker; }

void worker_set_current(struct worker *w) { current_worker = w; }

void worker_drop_msgs(struct fifo_node *n)
{
    while (n) {
        struct fifo_node *next = n->next;
        struct inbox_msg *m = FIFO_ENTRY(n, struct inbox_msg, node);
        if (m->drop)
            m->drop(m);
        else
            free(m);
        n = next;
    }
}

static void wake(void *async)
{
    uv_async_send(async);
}

void worker_post(struct worker *w, struct inbox_msg *m)
{
    m->node.next = NULL;
    if (fifo_push_notify(&w->inbox, &m->node, wake, &w->wakeup) < 0)
        worker_drop_msgs(&m->node); /* the worker has stopped */
}

void server_sum_stats(struct server *srv, struct worker_stats *out)
{
    uint64_t v[5] = {0, 0, 0, 0, 0};
    for (unsigned i = 0; i < srv->nworkers; i++) {
        struct worker_stats *s = &srv->workers[i].stats;
        v[0] += atomic_load_explicit(&s->http_requests, memory_order_relaxed);
        v[1] += atomic_load_explicit(&s->ws_messages_in, memory_order_relaxed);
        v[2] += atomic_load_explicit(&s->ws_messages_out, memory_order_relaxed);
        v[3] += atomic_load_explicit(&s->send_queue_drops, memory_order_relaxed);
        v[4] += atomic_load_explicit(&s->input_budget_closes, memory_order_relaxed);
    }
    atomic_init(&out->http_requests, v[0]);
    atomic_init(&out->ws_messages_in, v[1]);
    atomic_init(&out->ws_messages_out, v[2]);
    atomic_init(&out->send_queue_drops, v[3]);
    atomic_init(&out->input_budget_closes, v[4]);
}
