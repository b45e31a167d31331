/*
 * DESIGN: the assistant's slots, its thread and the life of one answer
 * (see assistant.h for the rules and the path).
 *
 * An answer (struct answer) is made by assistant_ask with its slot taken,
 * sits on the job queue until the assistant thread reads the history and
 * submits the request, streams on the HTTP client thread, and ends in
 * finish() (on_done, or the assistant thread when it never got submitted).
 * finish() hands the text to hooks->finished; the answer is freed when its
 * slot is released: in assistant_stored once the hub has stored it, or at
 * once when there was nothing to store.
 *
 * The one subtle step is submitting: the HTTP client may end a request (and
 * call on_done) before http_client_submit has returned to the assistant
 * thread. So the thread holds `lock` from before the submit until the
 * request id is recorded, and on_done takes `lock` first: it cannot get
 * ahead of the bookkeeping, and the answer is never freed under the thread.
 */
#include "assistant/assistant.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "assistant/provider.h"
#include "http/sse.h"
#include "util/clock.h"
#include "util/hash.h"
#include "util/log.h"
#include "util/rate.h"
#include "util/vec.h"

#define SLOT_BUCKETS 4096
#define SSE_MAX_LINE (1u << 20)   /* one event line, at most */
#define READ_KEEP (64u * 1024)    /* the gathered text's buffer is kept up to this size */
#define ERROR_BODY_MAX 8192       /* of a provider's error answer, kept to read it */
#define HOLDERS_MAX 4096          /* admin connections holding one session */
#define BUDGET_BUCKETS 4096       /* chains of the per-user budgets */

/* Why an answer ended other than by the provider finishing it. */
enum end_cause {
    END_NONE = 0,
    END_STOPPED,   /* stop_generation */
    END_TOO_LONG,  /* max_answer_bytes */
    END_MALFORMED, /* an event chatd could not read */
    END_PROVIDER,  /* the provider reported an error in the stream */
    END_TAKEN_OVER, /* a person holds the session elsewhere (hooks->held) */
};

struct slot;

struct answer {
    struct assistant *a;
    struct slot *slot;             /* guarded by a->lock */
    struct answer *next_job;       /* on the job queue (a->lock) */
    int64_t not_before_ms;         /* a->lock: taken off the queue from then (0: at once) */
    int64_t deferred_since_ms;     /* assistant thread: waiting for another node since */
    bool claimed;                  /* set by the assistant thread before the submit (hooks->
                                    * claim said go); read when the slot is released */
    char session[STORE_ID_LEN + 1];
    char owner[STORE_MAX_USER + 1];
    const struct conf_model *model;
    struct asst_stream *stream;    /* one reference */
    /* guarded by a->lock */
    uint64_t req_id;               /* 0 until submitted */
    bool stop_asked;
    bool ended;                    /* finish() has begun: nothing left to stop */
    /* HTTP client thread only, from submit to on_done */
    struct sse_parser sse;
    bool sse_ready;
    struct provider_shape shape; /* how this answer's deltas come (provider.h) */
    int status;
    char *errbody;
    size_t errlen;
    int64_t retry_after_ms;
    int64_t t_submit_ms;
    bool got_delta, got_done;      /* got_delta: the stream has text */
    size_t text_len;               /* the stream's bytes and those gathered, not yet in it */
    int rd_err;                    /* its gathered text was lost (-ENOMEM): the request ends */
    enum end_cause cause;
    char stop_reason[32];
    char error[320];
    uint64_t in_tok, out_tok;
    bool usage_seen;
    size_t context_bytes;
    int64_t reply_to_seq; /* the last event of the history it was asked with */
};

/* One session the assistant knows of: while it answers, has one pending,
 * or is held by admins. Freed when none of these is true. */
struct slot {
    struct slot *next;
    char session[STORE_ID_LEN + 1];
    struct answer *running;   /* the answer in progress (until stored), or NULL */
    bool pending;             /* one more answer is owed after it */
    char pending_owner[STORE_MAX_USER + 1];
    char pending_model[CONF_MODEL_ID_MAX + 1];
    uint64_t *holders;        /* admin connections that joined */
    size_t nholders, capholders;
};

/* One user's assistant budget, kept while it is not full again. */
struct budget {
    struct budget *next;
    struct rate_bucket b;
    char user[];
};

struct assistant {
    struct assistant_options opt; /* read-only after new */
    struct assistant_hooks hooks;
    struct store *store;
    struct http_client *http;
    pthread_t thread;
    bool thread_started;
    uint64_t seed; /* of stream ids, with a counter */

    pthread_mutex_t lock;
    pthread_cond_t cond;
    /* guarded by lock */
    struct slot *slots[SLOT_BUCKETS];
    struct budget *budgets[BUDGET_BUCKETS];
    uint64_t budget_seed; /* user ids are the tokens' choice: seeded */
    struct answer *jobs, **jobs_tail;
    unsigned running; /* answers holding a slot */
    uint64_t next_stream;
    bool closing;

    /* HTTP client thread only: the text of rd_x's deltas read in this
     * turn of the HTTP client and not yet in its stream (text_gather).
     * A provider sends each event as a chunk of its own, one on_body call
     * each; appending them once per turn takes the stream's lock and calls
     * the hook once for all of them. Handed on (text_done) when the turn
     * ends, when another answer's text comes, and before the answer ends.
     * Holds at most what one turn read. */
    struct answer *rd_x;
    char *rd;
    size_t rd_len, rd_cap;
    unsigned rd_deltas;

    /* statistics, any thread */
    atomic_uint_fast64_t st_started, st_completed, st_partial, st_failed, st_timeouts,
        st_busy, st_in_tok, st_out_tok, st_deltas;
};

static const struct http_client_callbacks answer_cb;

bool assistant_configured(const struct conf_model *models, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        if (models[i].kind != CONF_MODEL_NONE)
            return true;
    return false;
}

/* ---- slots (a->lock held) ------------------------------------------------ */

static struct slot **slot_find(struct assistant *a, const char *session)
{
    struct slot **p = &a->slots[hash_str(session) % SLOT_BUCKETS];
    while (*p && strcmp((*p)->session, session) != 0)
        p = &(*p)->next;
    return p;
}

static struct slot *slot_get(struct assistant *a, const char *session)
{
    struct slot **p = slot_find(a, session);
    if (*p)
        return *p;
    struct slot *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    snprintf(s->session, sizeof s->session, "%s", session);
    *p = s;
    return s;
}

/* Free the slot if nothing keeps it. */
static void slot_gc(struct assistant *a, struct slot *s)
{
    if (s->running || s->pending || s->nholders)
        return;
    struct slot **p = slot_find(a, s->session);
    assert(*p == s);
    *p = s->next;
    free(s->holders);
    free(s);
}

/* The wire format a configured model speaks. */
static enum provider_kind kind_of(const struct conf_model *m)
{
    return m->kind == CONF_MODEL_ANTHROPIC ? PROVIDER_ANTHROPIC : PROVIDER_OPENAI;
}

static const struct conf_model *model_for(const struct assistant *a, const char *id)
{
    for (unsigned i = 0; id && *id && i < a->opt.nmodels; i++)
        if (strcmp(a->opt.models[i].id, id) == 0 && a->opt.models[i].kind != CONF_MODEL_NONE)
            return &a->opt.models[i];
    const struct conf_model *d = &a->opt.models[a->opt.default_model];
    return d->kind != CONF_MODEL_NONE ? d : NULL;
}

static void answer_free(struct answer *x)
{
    if (!x)
        return;
    if (x->sse_ready)
        sse_release(&x->sse);
    asst_stream_unref(x->stream);
    free(x->errbody);
    free(x);
}

/* Make an answer for slot s and queue it (a->lock held). */
static int answer_start(struct assistant *a, struct slot *s, const char *owner,
                        const struct conf_model *m)
{
    struct answer *x = calloc(1, sizeof *x);
    if (!x)
        return -ENOMEM;
    uint64_t bits = hash_mix64(a->seed ^ ++a->next_stream);
    if (asst_stream_new(&x->stream, s->session, bits, a->opt.max_answer_bytes) != 0) {
        free(x);
        return -ENOMEM;
    }
    x->a = a;
    x->slot = s;
    x->model = m;
    x->retry_after_ms = -1;
    snprintf(x->session, sizeof x->session, "%s", s->session);
    snprintf(x->owner, sizeof x->owner, "%s", owner);
    s->running = x;
    a->running++;
    *a->jobs_tail = x;
    a->jobs_tail = &x->next_job;
    pthread_cond_signal(&a->cond);
    atomic_fetch_add_explicit(&a->st_started, 1, memory_order_relaxed);
    return 0;
}

/* The slot's answer is over: free it, and start the pending one unless the
 * session is held or the assistant closes. Returns the session's owner for
 * hooks->started in *started_owner ("" when nothing started). a->lock held. */
static void slot_release(struct assistant *a, struct slot *s, struct answer *x,
                         char started_owner[STORE_MAX_USER + 1])
{
    started_owner[0] = '\0';
    if (s->running != x)
        return; /* already released */
    s->running = NULL;
    assert(a->running > 0);
    a->running--;
    answer_free(x);
    if (s->pending && !s->nholders && !a->closing && a->running < a->opt.max_streams) {
        const struct conf_model *m = model_for(a, s->pending_model);
        if (m && answer_start(a, s, s->pending_owner, m) == 0)
            snprintf(started_owner, STORE_MAX_USER + 1, "%s", s->pending_owner);
    }
    s->pending = false;
    slot_gc(a, s);
}

/* Take one answer from the user's budget; 0, or the ms until one is
 * there. Entries of the chain that have filled up again are dropped on the
 * way, so the table holds only users who asked within about a minute.
 * a->lock held. */
static int64_t budget_take(struct assistant *a, const char *user, int64_t now)
{
    uint64_t per_min = a->opt.per_user_per_min;
    uint64_t burst = per_min <= 10 ? per_min : per_min / 4 > 10 ? per_min / 4 : 10;
    size_t n = strlen(user);
    struct budget **p = &a->budgets[hash_bytes_seeded(user, n, a->budget_seed) % BUDGET_BUCKETS];
    struct budget *found = NULL;
    while (*p) {
        struct budget *b = *p;
        if (!found && strcmp(b->user, user) == 0) {
            found = b;
            p = &b->next;
            continue;
        }
        rate_refill(&b->b, now, per_min, burst);
        if (b->b.level >= burst * RATE_UNIT) {
            *p = b->next;
            free(b);
            continue;
        }
        p = &b->next;
    }
    if (!found) {
        found = calloc(1, sizeof *found + n + 1);
        if (!found)
            return 0; /* no memory to count with: let it through */
        memcpy(found->user, user, n + 1);
        found->next = a->budgets[hash_bytes_seeded(user, n, a->budget_seed) % BUDGET_BUCKETS];
        a->budgets[hash_bytes_seeded(user, n, a->budget_seed) % BUDGET_BUCKETS] = found;
    }
    return rate_take(&found->b, now, per_min, burst, 1);
}

/* ---- the public calls ---------------------------------------------------- */

int assistant_ask(struct assistant *a, const char *session, const char *owner,
                  const char *model_id, int64_t *retry_after_ms)
{
    *retry_after_ms = -1;
    pthread_mutex_lock(&a->lock);
    if (a->closing) {
        pthread_mutex_unlock(&a->lock);
        return -ESHUTDOWN;
    }
    const struct conf_model *m = model_for(a, model_id);
    if (!m) {
        pthread_mutex_unlock(&a->lock);
        return -ENOENT;
    }
    struct slot *s = slot_get(a, session);
    int rc;
    if (!s) {
        rc = -ENOMEM;
    } else if (s->nholders) {
        rc = -EPERM;
    } else if (!s->running && a->running >= a->opt.max_streams) {
        atomic_fetch_add_explicit(&a->st_busy, 1, memory_order_relaxed);
        *retry_after_ms = 5000;
        rc = -EBUSY;
    } else if (a->opt.per_user_per_min &&
               (*retry_after_ms = budget_take(a, owner, clock_mono_ms())) > 0) {
        rc = -EDQUOT;
    } else if (s->running) {
        s->pending = true;
        snprintf(s->pending_owner, sizeof s->pending_owner, "%s", owner);
        snprintf(s->pending_model, sizeof s->pending_model, "%s", model_id ? model_id : "");
        rc = 1;
    } else {
        rc = answer_start(a, s, owner, m);
    }
    if (s && rc < 0)
        slot_gc(a, s);
    pthread_mutex_unlock(&a->lock);
    if (rc == 0)
        a->hooks.started(a->hooks.app, session, owner);
    return rc;
}

void assistant_hold(struct assistant *a, const char *session, uint64_t conn_id, bool joined)
{
    pthread_mutex_lock(&a->lock);
    struct slot *s = joined ? slot_get(a, session) : *slot_find(a, session);
    if (s) {
        size_t i = 0;
        while (i < s->nholders && s->holders[i] != conn_id)
            i++;
        if (joined && i == s->nholders && s->nholders < HOLDERS_MAX &&
            vec_grow(&s->holders, &s->capholders, s->nholders, 1, sizeof *s->holders) == 0)
            s->holders[s->nholders++] = conn_id;
        else if (!joined && i < s->nholders)
            s->holders[i] = s->holders[--s->nholders];
        if (s->nholders)
            s->pending = false; /* a person is talking: nothing owed */
        slot_gc(a, s);
    }
    pthread_mutex_unlock(&a->lock);
}

bool assistant_stop(struct assistant *a, const char *session)
{
    uint64_t id = 0;
    bool stopped = false;
    pthread_mutex_lock(&a->lock);
    struct slot *s = *slot_find(a, session);
    struct answer *x = s ? s->running : NULL;
    if (x && !x->ended && !x->stop_asked) {
        x->stop_asked = true;
        s->pending = false; /* stopping means: no more for now */
        id = x->req_id;     /* 0: not submitted yet; the thread sees stop_asked */
        stopped = true;
    }
    /* Under the lock: assistant_shutdown frees the client only after it
     * has set closing under it (then nothing is cancelled here: the
     * shutdown ends every request itself). */
    if (id && !a->closing)
        http_client_cancel(a->http, id);
    pthread_mutex_unlock(&a->lock);
    return stopped;
}

void assistant_stored(struct assistant *a, const char *session, const char *stream_id)
{
    char owner[STORE_MAX_USER + 1] = "";
    bool claimed = false;
    pthread_mutex_lock(&a->lock);
    struct slot *s = *slot_find(a, session);
    if (s && s->running && strcmp(s->running->stream->id, stream_id) == 0) {
        claimed = s->running->claimed;
        slot_release(a, s, s->running, owner);
    }
    pthread_mutex_unlock(&a->lock);
    /* Stored: another node's answer of the session may start now, and
     * finds this one in the history. */
    if (claimed && a->hooks.released)
        a->hooks.released(a->hooks.app, session, stream_id);
    if (owner[0])
        a->hooks.started(a->hooks.app, session, owner);
}

struct asst_stream *assistant_stream(struct assistant *a, const char *session)
{
    struct asst_stream *st = NULL;
    pthread_mutex_lock(&a->lock);
    struct slot *s = *slot_find(a, session);
    if (s && s->running)
        st = asst_stream_ref(s->running->stream);
    pthread_mutex_unlock(&a->lock);
    return st;
}

void assistant_get_stats(struct assistant *a, struct assistant_stats *out)
{
    out->started = atomic_load(&a->st_started);
    out->completed = atomic_load(&a->st_completed);
    out->partial = atomic_load(&a->st_partial);
    out->failed = atomic_load(&a->st_failed);
    out->timeouts = atomic_load(&a->st_timeouts);
    out->refused_busy = atomic_load(&a->st_busy);
    out->input_tokens = atomic_load(&a->st_in_tok);
    out->output_tokens = atomic_load(&a->st_out_tok);
    out->deltas = atomic_load(&a->st_deltas);
    pthread_mutex_lock(&a->lock);
    out->running = a->running;
    pthread_mutex_unlock(&a->lock);
}

/* ---- the end of an answer ------------------------------------------------- */

/* Hand the answer over (hooks->failed first when it failed, then
 * hooks->finished) and release the slot unless the hub stores it. Called
 * once per answer, on the HTTP client thread (on_done, which first flushes
 * the answer's deltas) or the assistant thread (never submitted: no
 * delta). result/status/error: on_done's. */
static void finish(struct answer *x, int result, const char *error)
{
    struct assistant *a = x->a;
    pthread_mutex_lock(&a->lock);
    bool stop_asked = x->stop_asked, closing = a->closing;
    x->ended = true;
    pthread_mutex_unlock(&a->lock);

    const char *reason = x->stop_reason[0] ? x->stop_reason : "stop";
    bool partial = true, failed = false, recoverable = false;
    enum asst_error kind = ASST_ERR_PROVIDER;
    char msg[400];
    msg[0] = '\0';
    if (x->cause == END_TOO_LONG) {
        reason = "too_long";
    } else if (x->cause == END_TAKEN_OVER) {
        reason = "taken_over";
    } else if (result == -ECANCELED && stop_asked) {
        reason = "stopped";
    } else if (result == -ECANCELED || (result == -ESHUTDOWN && closing)) {
        reason = "shutdown";
    } else if (result == -ETIMEDOUT) {
        reason = "timeout";
        failed = recoverable = true;
        kind = ASST_ERR_TIMEOUT;
        snprintf(msg, sizeof msg, "the assistant took too long (%s)", error && *error ? error : "timeout");
    } else if (x->cause == END_MALFORMED || x->cause == END_PROVIDER) {
        reason = "error";
        failed = true;
        recoverable = x->cause == END_PROVIDER;
        snprintf(msg, sizeof msg, "%s", x->error);
    } else if (result == 0 && x->status >= 200 && x->status < 300) {
        if (x->got_done || !sse_pending(&x->sse)) {
            partial = !x->got_done;
            if (partial) {
                reason = "error";
                failed = recoverable = true;
                snprintf(msg, sizeof msg, "the model's answer ended before it was complete");
            }
        } else {
            reason = "error";
            failed = recoverable = true;
            snprintf(msg, sizeof msg, "the model's answer was cut off mid-event");
        }
    } else if (result == 0) {
        /* An HTTP error answer: the provider says why. */
        reason = "error";
        failed = true;
        char pm[256];
        recoverable = provider_error_message(kind_of(x->model),
                                             x->status, x->errbody, x->errlen, pm, sizeof pm);
        snprintf(msg, sizeof msg, "%s", pm);
    } else {
        reason = "error";
        failed = true;
        /* The provider could not be reached or broke the connection: worth
         * trying again later, except for a setup chatd cannot fix alone. */
        recoverable = result != -EINVAL && result != -EPROTO;
        snprintf(msg, sizeof msg, "the model provider failed: %s", error && *error ? error : strerror(-result));
    }
    if (x->cause == END_NONE && result == 0 && x->got_done)
        partial = false;
    if (x->cause == END_TOO_LONG || x->cause == END_STOPPED)
        partial = true;
    asst_stream_finish(x->stream, partial ? ASST_CUT : ASST_DONE);

    size_t len = 0;
    char *text = asst_stream_snapshot(x->stream, &len, NULL);
    if (!x->usage_seen) {
        x->in_tok = (x->context_bytes + 3) / 4;
        x->out_tok = (len + 3) / 4;
    }
    atomic_fetch_add_explicit(&a->st_in_tok, x->in_tok, memory_order_relaxed);
    atomic_fetch_add_explicit(&a->st_out_tok, x->out_tok, memory_order_relaxed);
    if (failed) {
        atomic_fetch_add_explicit(kind == ASST_ERR_TIMEOUT ? &a->st_timeouts : &a->st_failed, 1,
                                  memory_order_relaxed);
        struct log_quoted qs, qm;
        log_warn("assistant_failed", "session=%s model=%s status=%d error=%s",
                 log_quotes(&qs, x->session), x->model->id, x->status, log_quotes(&qm, msg));
        a->hooks.failed(a->hooks.app, x->session, x->owner, x->got_delta ? x->stream->id : "", kind,
                        msg, recoverable, x->retry_after_ms);
    } else if (x->cause != END_TAKEN_OVER) { /* never begun: counted as started only */
        atomic_fetch_add_explicit(partial ? &a->st_partial : &a->st_completed, 1,
                                  memory_order_relaxed);
    }
    struct asst_result r = {
        .session = x->session,
        .owner = x->owner,
        .stream_id = x->stream->id,
        .model = x->model,
        .text = text ? text : "",
        .len = text ? len : 0,
        .partial = partial,
        .failed = failed,
        .stop_reason = reason,
        .input_tokens = x->in_tok,
        .output_tokens = x->out_tok,
        .tokens_estimated = !x->usage_seen,
        .reply_to_seq = x->reply_to_seq,
    };
    int rc = a->hooks.finished(a->hooks.app, &r);
    free(text);
    if (r.len == 0 || rc != 0) {
        char owner[STORE_MAX_USER + 1];
        char session[STORE_ID_LEN + 1];
        char stream_id[ASST_STREAM_ID_LEN + 1];
        snprintf(session, sizeof session, "%s", x->session);
        snprintf(stream_id, sizeof stream_id, "%s", x->stream->id);
        bool claimed = x->claimed;
        pthread_mutex_lock(&a->lock);
        slot_release(a, x->slot, x, owner); /* frees x */
        pthread_mutex_unlock(&a->lock);
        if (claimed && a->hooks.released)
            a->hooks.released(a->hooks.app, session, stream_id);
        if (owner[0])
            a->hooks.started(a->hooks.app, session, owner);
    }
}

/* ---- the stream (HTTP client thread) ------------------------------------- */

static int on_head(void *arg, uint64_t id, int status, const struct http_client_header *h,
                   size_t n)
{
    struct answer *x = arg;
    (void)id;
    x->status = status;
    const struct http_client_header *ra = http_client_header_find(h, n, "retry-after");
    if (ra && ra->value_len && ra->value_len < 12) {
        char v[12];
        memcpy(v, ra->value, ra->value_len);
        v[ra->value_len] = '\0';
        char *end;
        long secs = strtol(v, &end, 10);
        if (*end == '\0' && secs >= 0 && secs <= 86400)
            x->retry_after_ms = (int64_t)secs * 1000;
    }
    return 0;
}

/* rd_x's gathered text goes into its stream, then to the hook, in one
 * piece. Only memory can fail it (the stream is finished after on_done
 * alone, and the answer's bound was checked as the text came): the text
 * is lost, and the answer's next on_body, or on_done, ends it with that
 * error, cut where its stream stands. */
static void text_done(struct assistant *a)
{
    struct answer *x = a->rd_x;
    if (!x)
        return;
    a->rd_x = NULL;
    int64_t off = asst_stream_append(x->stream, a->rd, a->rd_len);
    if (off >= 0) {
        assert((uint64_t)off + a->rd_len == x->text_len);
        x->got_delta = true;
        atomic_fetch_add_explicit(&a->st_deltas, a->rd_deltas, memory_order_relaxed);
        a->hooks.delta(a->hooks.app, x->stream, x->owner, (uint64_t)off, a->rd, a->rd_len);
    } else if (!x->rd_err) {
        x->rd_err = (int)off;
    }
    a->rd_len = 0;
    a->rd_deltas = 0;
    if (a->rd_cap > READ_KEEP) { /* an unusually large turn: not kept for good */
        free(a->rd);
        a->rd = NULL;
        a->rd_cap = 0;
    }
}

static int text_gather(struct answer *x, const char *text, size_t len)
{
    struct assistant *a = x->a;
    if (a->rd_x != x)
        text_done(a);
    if (vec_grow(&a->rd, &a->rd_cap, a->rd_len, len, 1) != 0)
        return -ENOMEM;
    a->rd_x = x;
    memcpy(a->rd + a->rd_len, text, len);
    a->rd_len += len;
    a->rd_deltas++;
    x->text_len += len;
    return 0;
}

static int on_event(void *arg, const struct sse_event *ev)
{
    struct answer *x = arg;
    struct assistant *a = x->a;
    struct provider_event pe;
    int prc = provider_parse_event(kind_of(x->model), &x->shape, ev->name, ev->data,
                                   ev->data_len, &pe);
    if (prc != 0) {
        x->cause = END_MALFORMED;
        if (prc == -ENOMEM)
            snprintf(x->error, sizeof x->error, "chatd ran out of memory reading the answer");
        else
            snprintf(x->error, sizeof x->error, "the model sent an event chatd cannot read (%s)",
                     pe.error);
        return -EPROTO;
    }
    if (pe.input_tokens || pe.output_tokens) {
        x->usage_seen = true;
        if (pe.input_tokens > x->in_tok)
            x->in_tok = pe.input_tokens;
        if (pe.output_tokens > x->out_tok)
            x->out_tok = pe.output_tokens;
    }
    if (pe.stop_reason[0])
        snprintf(x->stop_reason, sizeof x->stop_reason, "%s", pe.stop_reason);
    int rc = 0;
    switch (pe.type) {
    case PROVIDER_EV_DELTA: {
        if (!pe.len)
            break;
        if (!x->text_len && a->opt.first_byte_timeout_ms &&
            clock_mono_ms() - x->t_submit_ms > (int64_t)a->opt.first_byte_timeout_ms) {
            rc = -ETIMEDOUT; /* events came, but no text in time */
            break;
        }
        if (pe.len > x->stream->max_bytes - x->text_len) {
            x->cause = END_TOO_LONG; /* cut after the deltas before it */
            rc = -EMSGSIZE;
            break;
        }
        rc = text_gather(x, pe.text, pe.len);
        break;
    }
    case PROVIDER_EV_DONE:
        x->got_done = true;
        break;
    case PROVIDER_EV_ERROR:
        x->cause = END_PROVIDER;
        snprintf(x->error, sizeof x->error, "the model reported an error: %s", pe.error);
        rc = -EPROTO;
        break;
    default:
        break;
    }
    provider_event_release(&pe);
    return rc;
}

static int on_body(void *arg, uint64_t id, const char *data, size_t len)
{
    struct answer *x = arg;
    (void)id;
    if (x->status < 200 || x->status >= 300) {
        /* An error answer: keep its start, to read why. */
        size_t room = ERROR_BODY_MAX - x->errlen;
        size_t n = len < room ? len : room;
        if (n) {
            char *b = realloc(x->errbody, x->errlen + n + 1);
            if (!b)
                return -ENOMEM;
            memcpy(b + x->errlen, data, n);
            x->errlen += n;
            b[x->errlen] = '\0';
            x->errbody = b;
        }
        return 0;
    }
    if (x->rd_err)
        return x->rd_err;
    if (x->got_done)
        return 0; /* anything after the end is not part of the answer */
    int rc = sse_feed(&x->sse, data, len, on_event, x);
    if (rc == -EMSGSIZE && x->cause == END_NONE) {
        x->cause = END_MALFORMED;
        snprintf(x->error, sizeof x->error, "the model sent an event line longer than %u bytes",
                 SSE_MAX_LINE);
    }
    return rc;
}

static void on_done(void *arg, uint64_t id, int result, int status, const char *error)
{
    struct answer *x = arg;
    (void)id;
    if (!x->status)
        x->status = status;
    /* A stop or the end of the answer's length ends the request from our
     * side; those are not failures of the provider. */
    if (x->cause == END_TOO_LONG)
        result = -ECANCELED;
    /* Its deltas go out before its end does. */
    if (x->a->rd_x == x)
        text_done(x->a);
    if (x->rd_err && result == 0)
        result = x->rd_err;
    if (x->a->hooks.flush)
        x->a->hooks.flush(x->a->hooks.app);
    finish(x, result, error);
}

static const struct http_client_callbacks answer_cb = {
    .on_head = on_head,
    .on_body = on_body,
    .on_done = on_done,
};

/* ---- the assistant thread: history, request ------------------------------- */

/* Where an event falls in the conversation as the model should see it. An
 * answer is stored when it ends, after any message sent while it streamed,
 * but it answered what came before it started: it goes right after the
 * event it replied to (its metadata's reply_to_seq), ahead of those. */
static int64_t conversation_key(const struct store_event *e)
{
    if (strcmp(e->type, "ai_response") == 0 && e->metadata) {
        const char *p = strstr(e->metadata, "\"reply_to_seq\":");
        if (p) {
            long long to = strtoll(p + 15, NULL, 10);
            if (to > 0 && to < e->seq)
                return (int64_t)to * 2 + 1;
        }
    }
    return e->seq * 2;
}

static int by_conversation(const void *pa, const void *pb)
{
    const struct store_event *a = pa, *b = pb;
    int64_t ka = conversation_key(a), kb = conversation_key(b);
    if (ka != kb)
        return ka < kb ? -1 : 1;
    return a->seq < b->seq ? -1 : a->seq > b->seq;
}

/* The session's recent messages as the model sees them (oldest first),
 * read from storage. Returns the count, with *ev (to free) and *msgs. */
static int read_context(struct assistant *a, const char *session, struct store_event **ev,
                        int *nev, struct provider_msg **msgs, int64_t *reply_to)
{
    *ev = NULL;
    *nev = 0;
    *msgs = NULL;
    struct store_session ss;
    if (store_get_session(a->store, session, &ss) != 0)
        return -EIO;
    /* Session events (joins, help) are numbered among the messages: read
     * twice the messages wanted and keep the messages. */
    int64_t want = (int64_t)a->opt.context_messages * 2;
    int64_t after = ss.last_seq > want ? ss.last_seq - want : 0;
    int n = store_read_events(a->store, session, after, 0, 0, ev);
    if (n <= 0)
        return n;
    *nev = n;
    *reply_to = (*ev)[n - 1].seq;
    qsort(*ev, (size_t)n, sizeof **ev, by_conversation);
    struct provider_msg *m = calloc((size_t)n, sizeof *m);
    if (!m) {
        store_events_free(*ev, n);
        *ev = NULL;
        *nev = 0;
        return -ENOMEM;
    }
    int k = 0;
    for (int i = 0; i < n; i++) {
        struct store_event *e = &(*ev)[i];
        bool user = strcmp(e->type, "user_message") == 0;
        bool said = strcmp(e->type, "ai_response") == 0 || strcmp(e->type, "admin_message") == 0;
        if ((!user && !said) || !e->content_len)
            continue;
        m[k].role = user ? PROVIDER_USER : PROVIDER_ASSISTANT;
        m[k].text = e->content;
        m[k].len = e->content_len;
        k++;
    }
    *msgs = m;
    return k;
}

/* Read the history and submit the request for x. Assistant thread. */
static void run_job(struct assistant *a, struct answer *x)
{
    int claim = a->hooks.claim ? a->hooks.claim(a->hooks.app, x->session, x->stream->id) : 0;
    if (claim == ASST_CLAIM_HELD) {
        x->cause = END_TAKEN_OVER;
        finish(x, -ECANCELED, "taken over");
        return;
    }
    if (claim == ASST_CLAIM_BUSY) {
        int64_t now = clock_mono_ms();
        if (!x->deferred_since_ms)
            x->deferred_since_ms = now;
        pthread_mutex_lock(&a->lock);
        bool stop = x->stop_asked || a->closing;
        if (!stop && now - x->deferred_since_ms <= (int64_t)a->opt.total_timeout_ms) {
            /* Another node's answer of the session runs: after it. */
            x->not_before_ms = now + ASST_CLAIM_RETRY_MS;
            *a->jobs_tail = x;
            a->jobs_tail = &x->next_job;
            pthread_mutex_unlock(&a->lock);
            return;
        }
        pthread_mutex_unlock(&a->lock);
        if (stop) {
            x->cause = END_STOPPED;
            finish(x, -ECANCELED, "stopped");
        } else {
            finish(x, -ETIMEDOUT, "another node's answer of this session did not end");
        }
        return;
    }
    x->claimed = claim == 0;
    struct store_event *ev;
    struct provider_msg *msgs;
    int nev;
    int n = read_context(a, x->session, &ev, &nev, &msgs, &x->reply_to_seq);
    int rc = 0;
    char error[160] = "";
    char *body = NULL;
    size_t body_len = 0;
    if (n < 0) {
        rc = n;
        snprintf(error, sizeof error, "the session's history could not be read");
    } else if (n == 0) {
        rc = -ENODATA;
        snprintf(error, sizeof error, "the session has no message to answer");
    } else {
        size_t first = provider_context(msgs, (size_t)n, a->opt.context_messages,
                                        a->opt.context_bytes);
        for (size_t i = first; i < (size_t)n; i++)
            x->context_bytes += msgs[i].len;
        const struct conf_model *m = x->model;
        struct provider_request pr = {
            .kind = kind_of(m),
            .model = m->model,
            .system = m->system_prompt,
            .max_tokens = m->max_tokens,
            .msgs = msgs + first,
            .nmsgs = (size_t)n - first,
        };
        if (m->system_prompt)
            x->context_bytes += m->system_prompt_len;
        body = provider_body(&pr, &body_len);
        if (!body) {
            rc = -ENOMEM;
            snprintf(error, sizeof error, "out of memory");
        }
    }
    free(msgs);
    store_events_free(ev, nev);
    if (rc == 0) {
        rc = sse_init(&x->sse, SSE_MAX_LINE, SSE_MAX_LINE);
        x->sse_ready = rc == 0;
        x->shape.pre = 0; /* a retry learns its own */
    }
    if (rc == 0) {
        char url[HTTP_CLIENT_MAX_URL];
        snprintf(url, sizeof url, "%s%s", x->model->base_url,
                 provider_path(kind_of(x->model)));
        char lines[8][PROVIDER_HEADER_MAX];
        int nh = provider_headers(kind_of(x->model),
                                  x->model->key, lines, 8);
        struct http_client_field f[10];
        size_t nf = 0;
        f[nf++] = (struct http_client_field){"Content-Type", "application/json"};
        f[nf++] = (struct http_client_field){"Accept", "text/event-stream"};
        for (int i = 0; i < nh && nf < 10; i++) {
            char *colon = strchr(lines[i], ':');
            if (!colon)
                continue;
            *colon = '\0';
            const char *v = colon + 1;
            while (*v == ' ')
                v++;
            f[nf++] = (struct http_client_field){lines[i], v};
        }
        struct http_client_request req = {
            .method = "POST",
            .url = url,
            .headers = f,
            .nheaders = nf,
            .body = body,
            .body_len = body_len,
            .first_byte_timeout_ms = a->opt.first_byte_timeout_ms,
            .total_timeout_ms = a->opt.total_timeout_ms,
            /* The answer's own bound (stream.h) ends it first: events
             * wrap each delta in JSON, hence the room. */
            .max_response_bytes = a->opt.max_answer_bytes * 8 + (1u << 20),
            .cb = &answer_cb,
            .arg = x,
        };
        /* Held across the submit: on_done waits for the id to be noted. */
        pthread_mutex_lock(&a->lock);
        if (x->stop_asked) {
            rc = -ECANCELED;
        } else {
            x->t_submit_ms = clock_mono_ms();
            uint64_t id = 0;
            rc = http_client_submit(a->http, &req, &id);
            if (rc == 0)
                x->req_id = id;
            else
                snprintf(error, sizeof error, "%s",
                         rc == -EBUSY ? "too many requests to the model provider at once"
                                      : "the request could not be made");
        }
        pthread_mutex_unlock(&a->lock);
        for (int i = 0; i < nh; i++)
            memset(lines[i], 0, sizeof lines[i]); /* they held the key */
    }
    free(body);
    if (rc != 0) {
        if (rc == -ECANCELED) {
            x->cause = END_STOPPED;
            finish(x, -ECANCELED, "stopped");
        } else {
            x->cause = END_PROVIDER;
            snprintf(x->error, sizeof x->error, "%s", error);
            finish(x, -EIO, error);
        }
    }
}

/* The first job due at now, taken off the queue; NULL with *wait_ms the
 * time to the next one due (-1: the queue is empty). a->lock held. */
static struct answer *job_take(struct assistant *a, int64_t now, int64_t *wait_ms)
{
    for (struct answer **p = &a->jobs; *p; p = &(*p)->next_job) {
        struct answer *x = *p;
        if (x->not_before_ms <= now) {
            *p = x->next_job;
            if (!*p)
                a->jobs_tail = p;
            x->next_job = NULL;
            return x;
        }
        int64_t left = x->not_before_ms - now;
        if (*wait_ms < 0 || left < *wait_ms)
            *wait_ms = left;
    }
    return NULL;
}

static void *assistant_main(void *arg)
{
    struct assistant *a = arg;
    pthread_mutex_lock(&a->lock);
    for (;;) {
        int64_t wait_ms = -1;
        struct answer *x = job_take(a, a->closing ? INT64_MAX : clock_mono_ms(), &wait_ms);
        if (!x) {
            if (a->closing)
                break;
            if (wait_ms < 0) {
                pthread_cond_wait(&a->cond, &a->lock);
            } else {
                struct timespec until = clock_cond_deadline(wait_ms);
                pthread_cond_timedwait(&a->cond, &a->lock, &until);
            }
            continue;
        }
        bool closing = a->closing;
        pthread_mutex_unlock(&a->lock);
        if (closing) {
            finish(x, -ESHUTDOWN, "shutdown");
        } else {
            run_job(a, x);
        }
        pthread_mutex_lock(&a->lock);
    }
    pthread_mutex_unlock(&a->lock);
    return NULL;
}

/* ---- life ----------------------------------------------------------------- */

/* The HTTP client's turn ended: hand on the deltas gathered in it. */
static void after_turn(void *arg)
{
    struct assistant *a = arg;
    text_done(a);
    if (a->hooks.flush)
        a->hooks.flush(a->hooks.app);
}

int assistant_new(struct assistant **out, const struct assistant_options *opt,
                  const struct assistant_hooks *hooks, struct store *store)
{
    struct assistant *a = calloc(1, sizeof *a);
    if (!a)
        return -ENOMEM;
    a->opt = *opt;
    if (!a->opt.max_streams)
        a->opt.max_streams = 1;
    a->hooks = *hooks;
    a->store = store;
    a->jobs_tail = &a->jobs;
    /* Stream ids are the stored answers' client ids, deduplicated per
     * model: they must differ between the nodes of a cluster and between
     * one run and the next, so the seed is the kernel's, never the clock
     * (nodes started in the same millisecond, with the same heap layout,
     * drew the same ids, and one node's answer was taken for a retry of
     * the other's). */
    uint64_t seeds[2];
    if (getrandom(seeds, sizeof seeds, 0) != (ssize_t)sizeof seeds) {
        free(a);
        return -EIO;
    }
    a->seed = seeds[0];
    a->budget_seed = seeds[1];
    pthread_mutex_init(&a->lock, NULL);
    /* Its timed waits (a job's not_before_ms) on the monotonic clock, as
     * not_before_ms: the wall clock set back must not hold a retry. */
    if (clock_cond_init(&a->cond) != 0)
        pthread_cond_init(&a->cond, NULL);
    unsigned conns = a->opt.max_streams + 64;
    struct http_client_options ho = {
        .ca_file = opt->ca_file,
        /* Each answer is one request (a few more for what is being
         * cancelled), and over HTTP/1.1 one connection: none waits for
         * another's connection below the cap. */
        .max_requests = conns,
        .max_host_connections = conns,
        .max_total_connections = conns,
        .after_callbacks = after_turn,
        .after_arg = a,
    };
    int rc = http_client_new(&a->http, &ho);
    if (rc == 0 && pthread_create(&a->thread, NULL, assistant_main, a) != 0) {
        http_client_free(a->http);
        rc = -EIO;
    }
    if (rc != 0) {
        pthread_cond_destroy(&a->cond);
        pthread_mutex_destroy(&a->lock);
        free(a);
        return rc;
    }
    a->thread_started = true;
    *out = a;
    return 0;
}

void assistant_shutdown(struct assistant *a)
{
    if (!a)
        return;
    pthread_mutex_lock(&a->lock);
    a->closing = true;
    pthread_cond_broadcast(&a->cond);
    pthread_mutex_unlock(&a->lock);
    if (a->thread_started) {
        pthread_join(a->thread, NULL);
        a->thread_started = false;
    }
    /* Ends every answer still streaming (on_done: -ECANCELED), each
     * handed over as partial while the store still takes writes. */
    http_client_free(a->http);
    a->http = NULL;
}

void assistant_free(struct assistant *a)
{
    if (!a)
        return;
    assistant_shutdown(a);
    for (size_t b = 0; b < SLOT_BUCKETS; b++) {
        struct slot *s = a->slots[b];
        while (s) {
            struct slot *next = s->next;
            answer_free(s->running); /* stored or refused by now; nothing runs */
            free(s->holders);
            free(s);
            s = next;
        }
    }
    for (size_t b = 0; b < BUDGET_BUCKETS; b++) {
        struct budget *u = a->budgets[b];
        while (u) {
            struct budget *next = u->next;
            free(u);
            u = next;
        }
    }
    assert(!a->rd_x); /* every answer's on_done handed its text on */
    free(a->rd);
    pthread_cond_destroy(&a->cond);
    pthread_mutex_destroy(&a->lock);
    free(a);
}
