/*
 * DESIGN: everything /metrics shows, written here: the server's counters
 * (net), devices per user (the registry), and the chat router's counters.
 * Each worker counts in its own structures (single writer, atomics so this
 * reader on any thread sees whole values); they are summed here.
 */
#include "hub/chat.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hub/chat_int.h"
#include "http/request.h"
#include "hub/metrics.h"
#include "hub/webhook.h"
#include "net/conn.h"
#include "util/text.h"

/* Server-to-client message types counted in chatd_messages_out_total. */
const char *const chat__out_names[CHAT_OUT_COUNT] = {
    "ack",          "user_message", "admin_message", "typing_indicator", "read",
    "help_request", "admin_join",   "admin_leave",   "resumed",          "ai_response",
    "loading",      "notification", "help_resolved", "error",
};

uint8_t chat__out_index(const char *type)
{
    for (uint8_t i = 0; i < CHAT_OUT_COUNT; i++)
        if (strcmp(type, chat__out_names[i]) == 0)
            return i;
    return CHAT_OUT_COUNT - 1;
}

/* The assistant's counters, when there is one. */
static void write_assistant(struct chat *ch, struct text *t)
{
    if (!ch->asst)
        return;
    struct assistant_stats as;
    assistant_get_stats(ch->asst, &as);
    text_printf(t,
            "# HELP chatd_assistant_answers_total Answers of the assistant that ended, by result.\n"
            "# TYPE chatd_assistant_answers_total counter\n"
            "chatd_assistant_answers_total{result=\"completed\"} %llu\n"
            "chatd_assistant_answers_total{result=\"partial\"} %llu\n"
            "chatd_assistant_answers_total{result=\"failed\"} %llu\n"
            "chatd_assistant_answers_total{result=\"timeout\"} %llu\n"
            "# HELP chatd_assistant_answers_started_total Answers started.\n"
            "# TYPE chatd_assistant_answers_started_total counter\n"
            "chatd_assistant_answers_started_total %llu\n"
            "# HELP chatd_assistant_refused_total Answers not started: too many at once.\n"
            "# TYPE chatd_assistant_refused_total counter\n"
            "chatd_assistant_refused_total{reason=\"max_streams\"} %llu\n"
            "# HELP chatd_assistant_streams Answers running now.\n"
            "# TYPE chatd_assistant_streams gauge\n"
            "chatd_assistant_streams %u\n"
            "# HELP chatd_assistant_deltas_total Pieces of answers received from providers.\n"
            "# TYPE chatd_assistant_deltas_total counter\n"
            "chatd_assistant_deltas_total %llu\n"
            "# HELP chatd_assistant_tokens_total Tokens used (the provider's counts, or an "
            "estimate of 4 bytes a token).\n"
            "# TYPE chatd_assistant_tokens_total counter\n"
            "chatd_assistant_tokens_total{direction=\"input\"} %llu\n"
            "chatd_assistant_tokens_total{direction=\"output\"} %llu\n",
            (unsigned long long)as.completed, (unsigned long long)as.partial,
            (unsigned long long)as.failed, (unsigned long long)as.timeouts,
            (unsigned long long)as.started, (unsigned long long)as.refused_busy, as.running,
            (unsigned long long)as.deltas, (unsigned long long)as.input_tokens,
            (unsigned long long)as.output_tokens);
}

void chat_write_metrics(struct chat *ch, struct text *t)
{
    text_printf(t,
            "# HELP chatd_messages_in_total Chat messages received, by type.\n"
            "# TYPE chatd_messages_in_total counter\n");
    for (int i = 0; i < CHAT_TYPE_COUNT; i++)
        text_printf(t, "chatd_messages_in_total{type=\"%s\"} %llu\n", hub_chat_types[i],
                (unsigned long long)atomic_load(&ch->in_by_kind[i]));
    text_printf(t,
            "# HELP chatd_messages_out_total Chat messages sent to connections, by type.\n"
            "# TYPE chatd_messages_out_total counter\n");
    for (size_t i = 0; i < CHAT_OUT_COUNT; i++) {
        uint64_t sum = 0;
        for (unsigned w = 0; w < ch->nworkers; w++)
            sum += atomic_load(&ch->locals[w].out[i]);
        text_printf(t, "chatd_messages_out_total{type=\"%s\"} %llu\n", chat__out_names[i],
                (unsigned long long)sum);
    }
    text_printf(t,
            "# HELP chatd_errors_total Error replies sent, by code.\n"
            "# TYPE chatd_errors_total counter\n");
    for (unsigned i = 0; i < ERR_COUNT; i++)
        text_printf(t, "chatd_errors_total{code=\"%s\"} %llu\n", hub_error_codes[i],
                (unsigned long long)atomic_load(&ch->hub->errors[i]));
    text_printf(t,
            "# HELP chatd_ws_refused_total WebSocket upgrades refused, by reason.\n"
            "# TYPE chatd_ws_refused_total counter\n");
    for (unsigned i = 0; i < HUB_REFUSAL_COUNT; i++)
        text_printf(t, "chatd_ws_refused_total{reason=\"%s\"} %llu\n", hub_refusal_names[i],
                (unsigned long long)atomic_load(&ch->hub->refused[i]));
    write_assistant(ch, t);
    if (ch->webhook)
        webhook_write_metrics(ch->webhook, t);
    if (!ch->store)
        return;
    struct store_stats ss;
    store_get_stats(ch->store, &ss);
    text_printf(t,
            "# HELP chatd_store_commit_seconds Time to commit one batch.\n"
            "# TYPE chatd_store_commit_seconds histogram\n");
    uint64_t cum = 0;
    for (int i = 0; i < 12; i++) {
        cum += ss.commit_us_bucket[i];
        text_printf(t, "chatd_store_commit_seconds_bucket{le=\"%g\"} %llu\n",
                store_commit_bounds_ms[i] / 1000.0, (unsigned long long)cum);
    }
    text_printf(t,
            "chatd_store_commit_seconds_bucket{le=\"+Inf\"} %llu\n"
            "chatd_store_commit_seconds_sum %.6f\n"
            "chatd_store_commit_seconds_count %llu\n",
            (unsigned long long)ss.commits, ss.commit_us_sum / 1e6, (unsigned long long)ss.commits);
    text_printf(t,
            "# HELP chatd_store_batch_size Requests per committed batch.\n"
            "# TYPE chatd_store_batch_size histogram\n");
    cum = 0;
    for (int i = 0; i < 8; i++) {
        cum += ss.batch_bucket[i];
        text_printf(t, "chatd_store_batch_size_bucket{le=\"%u\"} %llu\n",
                store_batch_bounds[i], (unsigned long long)cum);
    }
    text_printf(t,
            "chatd_store_batch_size_bucket{le=\"+Inf\"} %llu\n"
            "chatd_store_batch_size_sum %llu\n"
            "chatd_store_batch_size_count %llu\n"
            "# HELP chatd_store_commit_failures_total Batches rolled back by a storage error.\n"
            "# TYPE chatd_store_commit_failures_total counter\n"
            "chatd_store_commit_failures_total %llu\n",
            (unsigned long long)ss.commits, (unsigned long long)ss.batched_requests,
            (unsigned long long)ss.commits, (unsigned long long)ss.commit_failures);
}

struct dev_hist {
    uint64_t buckets[7]; /* devices per user: 1, 2, 3, 5, 10, 20, +Inf */
    uint64_t sum, count;
};

static void dev_hist_add(void *arg, const char *user, size_t len, unsigned n)
{
    static const unsigned bounds[6] = {1, 2, 3, 5, 10, 20};
    struct dev_hist *h = arg;
    (void)user;
    (void)len;
    int i = 0;
    while (i < 6 && n > bounds[i])
        i++;
    h->buckets[i]++;
    h->sum += n;
    h->count++;
}

void metrics_respond(struct hub *hub, struct conn *c, const struct http_request *req)
{
    struct server *srv = conn_worker(c)->srv;
    struct server_stats *st = &srv->stats;
    struct worker_stats ws;
    server_sum_stats(srv, &ws);
    struct text t = TEXT_INIT;
    text_printf(
        &t,
        "# HELP chatd_connections_open Open WebSocket connections.\n"
        "# TYPE chatd_connections_open gauge\n"
        "chatd_connections_open %llu\n"
        "# HELP chatd_tcp_connections_open Open TCP connections (HTTP and WebSocket).\n"
        "# TYPE chatd_tcp_connections_open gauge\n"
        "chatd_tcp_connections_open %llu\n"
        "# HELP chatd_tcp_connections_total Accepted TCP connections.\n"
        "# TYPE chatd_tcp_connections_total counter\n"
        "chatd_tcp_connections_total %llu\n"
        "# HELP chatd_http_requests_total HTTP request heads parsed.\n"
        "# TYPE chatd_http_requests_total counter\n"
        "chatd_http_requests_total %llu\n"
        "# HELP chatd_ws_messages_in_total WebSocket messages received.\n"
        "# TYPE chatd_ws_messages_in_total counter\n"
        "chatd_ws_messages_in_total %llu\n"
        "# HELP chatd_ws_messages_out_total WebSocket messages queued for sending.\n"
        "# TYPE chatd_ws_messages_out_total counter\n"
        "chatd_ws_messages_out_total %llu\n"
        "# HELP chatd_send_queue_drops_total Connections closed because they read too slowly.\n"
        "# TYPE chatd_send_queue_drops_total counter\n"
        "chatd_send_queue_drops_total %llu\n"
        "# HELP chatd_input_budget_closes_total Connections closed for sending past their input "
        "budget.\n"
        "# TYPE chatd_input_budget_closes_total counter\n"
        "chatd_input_budget_closes_total %llu\n",
        (unsigned long long)atomic_load(&st->ws_open),
        (unsigned long long)atomic_load(&st->conns_open),
        (unsigned long long)atomic_load(&st->conns_total),
        (unsigned long long)atomic_load(&ws.http_requests),
        (unsigned long long)atomic_load(&ws.ws_messages_in),
        (unsigned long long)atomic_load(&ws.ws_messages_out),
        (unsigned long long)atomic_load(&ws.send_queue_drops),
        (unsigned long long)atomic_load(&ws.input_budget_closes));
    if (hub) {
        struct dev_hist h = {{0}, 0, 0};
        registry_foreach(&hub->registry, dev_hist_add, &h);
        static const char *const le[7] = {"1", "2", "3", "5", "10", "20", "+Inf"};
        uint64_t cum = 0;
        text_printf(&t, "# HELP chatd_user_devices Open devices per online user.\n"
                        "# TYPE chatd_user_devices histogram\n");
        for (int i = 0; i < 7; i++) {
            cum += h.buckets[i];
            text_printf(&t, "chatd_user_devices_bucket{le=\"%s\"} %llu\n", le[i],
                        (unsigned long long)cum);
        }
        text_printf(&t, "chatd_user_devices_sum %llu\nchatd_user_devices_count %llu\n",
                    (unsigned long long)h.sum, (unsigned long long)h.count);
        if (hub->router)
            chat_write_metrics(hub->router, &t);
    }
    if (t.failed)
        conn_http_error(c, 500, "internal", "out of memory", -1, NULL, false);
    else
        conn_http_respond(c, 200, "text/plain; version=0.0.4", t.buf, t.len, req->keep_alive,
                          http_request_is_head(req));
    text_release(&t);
}
