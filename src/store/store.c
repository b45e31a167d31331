/*
 * DESIGN: the store is a handle that pairs an engine's table of operations
 * with that engine's state, and every store_* call dispatches through the
 * table. Nothing here knows how an engine stores anything; what every engine
 * shares (the request and event destructors, session ids, the statistics
 * and their histogram bounds) lives here once.
 */
#include "store/store.h"

#include <errno.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/clock.h"
#include "util/hex.h"

/* The engines store_open chooses from are listed in store/engines.c (so
 * that this interface includes no engine: the engines include it). */
#define engines store_engines

struct store {
    const struct store_engine *engine; /* borrowed: a static table */
    void *e;                           /* owned: the engine's state, freed by engine->close */
};

const double store_commit_bounds_ms[12] = {0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 1000};
const unsigned store_batch_bounds[8] = {1, 2, 4, 8, 16, 64, 256, 1024};

int store_open(struct store **out, const struct store_options *opt, char *err, size_t errlen)
{
    const char *name = opt->engine ? opt->engine : STORE_ENGINE_DEFAULT;
    const struct store_engine *engine = NULL;
    for (size_t i = 0; i < store_nengines; i++)
        if (strcmp(engines[i]->name, name) == 0)
            engine = engines[i];
    if (!engine) {
        int len = snprintf(err, errlen, "unknown storage engine '%s' (known:", name);
        for (size_t i = 0; i < store_nengines; i++)
            if (len >= 0 && (size_t)len < errlen)
                len += snprintf(err + len, errlen - (size_t)len, " %s", engines[i]->name);
        if (len >= 0 && (size_t)len < errlen)
            snprintf(err + len, errlen - (size_t)len, ")");
        return -EINVAL;
    }
    struct store *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    s->engine = engine;
    int rc = engine->open(&s->e, opt, err, errlen);
    if (rc != 0) {
        free(s);
        return rc;
    }
    *out = s;
    return 0;
}

void store_close(struct store *s)
{
    if (!s)
        return;
    s->engine->close(s->e);
    free(s);
}

int store_submit(struct store *s, struct store_req *r)
{
    return s->engine->submit(s->e, r);
}

bool store_healthy(struct store *s)
{
    return s->engine->healthy(s->e);
}

bool store_failed(struct store *s)
{
    return s->engine->failed(s->e);
}

void store_get_stats(struct store *s, struct store_stats *out)
{
    s->engine->stats(s->e, out);
}

void store_fail_next_commits(struct store *s, unsigned n)
{
    s->engine->fail_next_commits(s->e, n);
}

int store_get_session(struct store *s, const char *id, struct store_session *out)
{
    return s->engine->get_session(s->e, id, out);
}

int store_read_events(struct store *s, const char *id, int64_t after_seq, int64_t limit,
                      size_t max_bytes, struct store_event **out)
{
    return s->engine->read_events(s->e, id, after_seq, limit, max_bytes, out);
}

int store_list_sessions(struct store *s, const char *owner, bool help_only, int limit,
                        struct store_session **out)
{
    return s->engine->list_sessions(s->e, owner, help_only, limit, out);
}

int store_get_reads(struct store *s, const char *id, struct store_read **out)
{
    return s->engine->get_reads(s->e, id, out);
}

int store_get_share(struct store *s, const char *token, char session[STORE_ID_LEN + 1],
                    int64_t *expires_ms)
{
    return s->engine->get_share(s->e, token, session, expires_ms);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

int store_get_summary(struct store *s, struct store_summary *out)
{
    int rc = s->engine->get_summary(s->e, out);
    if (rc == 0 && out->nhelp_waits) /* qsort wants an array, even of none */
        qsort(out->help_waits, out->nhelp_waits, sizeof *out->help_waits, cmp_i64);
    return rc;
}

/* ---- shared by every engine ----------------------------------------------- */

int64_t store__now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void store__copy_field(char *out, size_t cap, const char *text)
{
    size_t n = text ? strlen(text) : 0;
    if (n >= cap) {
        n = cap - 1;
        /* text[n] is the first byte left out: while it continues a
         * character, that character is left out whole. */
        while (n > 0 && ((unsigned char)text[n] & 0xC0) == 0x80)
            n--;
    }
    if (n)
        memcpy(out, text, n);
    out[n] = '\0';
}

static size_t take_more(struct fifo *queue, struct store_req **batch, size_t n)
{
    for (struct fifo_node *q = fifo_take(queue, STORE_BATCH_MAX - n, NULL); q; q = q->next)
        batch[n++] = FIFO_ENTRY(q, struct store_req, node);
    return n;
}

size_t store__take_batch(struct fifo *queue, struct store_req **batch, int64_t last_end_us)
{
    /* Group commit: everything that queued up meanwhile goes in one
     * transaction. Under steady load a small batch waits up to
     * STORE_LINGER_US for company: the batch closes by size or by that
     * short deadline, so many messages share one commit and their events
     * reach each connection in one write. An idle server commits at once. */
    size_t n = take_more(queue, batch, 0);
    if (n < STORE_BATCH_MAX / 4 && store__now_us() - last_end_us < 2000 &&
        fifo_wait(queue, (int64_t)STORE_LINGER_US * 1000) == 0)
        n = take_more(queue, batch, n);
    return n;
}

int store__push(struct fifo *queue, struct store_req *r)
{
    r->node.next = NULL;
    int rc = fifo_push(queue, &r->node);
    return rc < 0 ? rc : 0; /* -ESHUTDOWN once close began */
}

void store_req_free(struct store_req *r)
{
    if (!r)
        return;
    free(r->sender_name);
    free(r->content);
    free(r->metadata);
    free(r->arg);
    free(r);
}

void store_events_free(struct store_event *ev, int n)
{
    if (!ev)
        return;
    for (int i = 0; i < n; i++) {
        free(ev[i].sender_id);
        free(ev[i].sender_name);
        free(ev[i].client_id);
        free(ev[i].content);
        free(ev[i].metadata);
    }
    free(ev);
}

int store_new_session_id(char out[STORE_ID_LEN + 1])
{
    /* The first 8 hex digits are the wall clock's seconds, the other 16
     * are random: ids made in the same second sort together, after those
     * of the seconds before. Every table and index keyed by the session
     * (events above all, whose rows hold the content) then takes a new
     * session's rows at its right-hand end, on pages just written and
     * still cached, instead of on a leaf anywhere in the file that must
     * be read first. 64 random bits keep an id unguessable. */
    unsigned char raw[12];
    out[0] = '\0';
    /* Session ids must not be guessable: no weaker fallback. */
    if (RAND_bytes(raw + 4, 8) != 1)
        return -EIO;
    uint32_t secs = (uint32_t)(clock_wall_ms() / 1000); /* wraps in 2106 */
    for (int i = 0; i < 4; i++)
        raw[i] = (unsigned char)(secs >> (24 - 8 * i)); /* big-endian: sorts as it counts */
    out[0] = 's';
    out[1] = '_';
    hex_encode(out + 2, raw, sizeof raw);
    out[STORE_ID_LEN] = '\0';
    return 0;
}

void store__count_commit(struct store__counters *c, int64_t us, size_t n)
{
    atomic_fetch_add(&c->commits, 1);
    atomic_fetch_add(&c->batched, n);
    atomic_fetch_add(&c->commit_us_sum, (uint64_t)us);
    for (int i = 0; i < 12; i++)
        if ((double)us / 1000.0 <= store_commit_bounds_ms[i]) {
            atomic_fetch_add(&c->commit_hist[i], 1);
            break;
        }
    for (int i = 0; i < 8; i++)
        if (n <= store_batch_bounds[i]) {
            atomic_fetch_add(&c->batch_hist[i], 1);
            break;
        }
}

void store__count_failure(struct store__counters *c)
{
    atomic_fetch_add(&c->failures, 1);
}

void store__counters_read(struct store__counters *c, struct store_stats *out)
{
    out->commits = atomic_load(&c->commits);
    out->commit_failures = atomic_load(&c->failures);
    out->batched_requests = atomic_load(&c->batched);
    out->commit_us_sum = atomic_load(&c->commit_us_sum);
    for (int i = 0; i < 12; i++)
        out->commit_us_bucket[i] = atomic_load(&c->commit_hist[i]);
    for (int i = 0; i < 8; i++)
        out->batch_bucket[i] = atomic_load(&c->batch_hist[i]);
}
