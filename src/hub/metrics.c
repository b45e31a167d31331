/*
 * DESIGN: the chat router's counters for /metrics. Each worker counts what
 * it sends in its own chat_local (single writer, atomics so this reader on
 * any thread sees whole values); they are summed here.
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hub/chat_int.h"
#include "util/text.h"

/* Server-to-client message types counted in chatd_messages_out_total. */
const char *const chat__out_names[CHAT_OUT_COUNT] = {
    "ack",          "user_message", "admin_message", "typing_indicator", "read",
    "help_request", "admin_join",   "admin_leave",   "resumed",          "error",
};

uint8_t chat__out_index(const char *type)
{
    for (uint8_t i = 0; i < CHAT_OUT_COUNT; i++)
        if (strcmp(type, chat__out_names[i]) == 0)
            return i;
    return CHAT_OUT_COUNT - 1;
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
