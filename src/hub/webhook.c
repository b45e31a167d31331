/*
 * DESIGN: one delivery (struct delivery) is one help request's body and
 * signature, made once by webhook_help_request and sent as is by every
 * attempt. It is always exactly one request of the webhook's HTTP client:
 * the first attempt at once, each retry as a new request with delay_ms
 * submitted from the previous attempt's on_done, on the client's thread.
 * So the client's own bookkeeping holds every pending delivery, waiting or
 * running; http_client_free at shutdown ends each of them with -ECANCELED,
 * and on_done counts it dropped. A delivery is freed by the on_done that
 * ends it for good.
 *
 * `lock` orders webhook_help_request (any thread) against webhook_shutdown:
 * a submit from outside the client's thread happens under it, and the
 * client is freed only after `closing` was set under it. Submits from
 * on_done run on the client's own thread, which the client allows until
 * and during its free (they are then refused with -ESHUTDOWN or ended with
 * -ECANCELED). The counters are atomics, read by /metrics on any thread.
 */
#include "hub/webhook.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <uv.h>

#include "net/http_client.h"
#include "util/clock.h"
#include "util/hash.h"
#include "util/hex.h"
#include "util/log.h"

#define MAX_RESPONSE (64 * 1024)  /* of a receiver's answer body (ignored) */
#define CONNECTIONS 16            /* open at once to the receiver */
#define SIG_LEN (7 + 64)          /* "sha256=" and 64 hex digits */

struct webhook {
    /* read-only after webhook_new */
    char *url;
    char *log_url; /* scheme://host[:port]/path: no userinfo, query or fragment */
    unsigned char *secret; /* NULL: no signature */
    size_t secret_len;
    unsigned max_pending, max_attempts, timeout_ms, first_retry_ms, max_retry_ms;
    struct http_client *http; /* NULL once shut down */

    pthread_mutex_t lock;
    /* guarded by lock */
    bool closing;             /* webhook_shutdown began: no more submits from outside */
    int64_t drop_logged_ms;   /* when the last "dropped" warning was written */
    uint64_t drops_unlogged;  /* dropped for the cap since that warning */

    /* any thread */
    atomic_bool stopping;     /* set with closing: on_done drops instead of retrying */
    atomic_uint pending;
    atomic_uint_fast64_t delivered, failed, dropped, attempts;
    atomic_uint_fast64_t jitter; /* counter for the retry jitter */
    uint64_t jitter_seed;
};

struct delivery {
    struct webhook *w;
    /* the client's thread, once submitted */
    unsigned attempts;      /* ended so far */
    int64_t retry_after_ms; /* the last answer's Retry-After; -1: none */
    char session[64];       /* for the logs */
    char sig[SIG_LEN + 1];  /* the header value; "" without a secret */
    size_t body_len;
    char body[];
};

static const struct http_client_callbacks delivery_cb;

/* ---- the body and its signature ---------------------------------------- */

/* The body as compact JSON, its members in the documented order; NULL when
 * a string is not UTF-8 (jansson refuses it) or out of memory. */
static struct delivery *make_delivery(struct webhook *w, const char *session_id,
                                      const char *user_id, const char *user_name,
                                      const char *title, int64_t ts_ms, int *rc)
{
    char ts[32];
    clock_format_rfc3339(ts, ts_ms);
    json_error_t jerr;
    json_t *o = json_pack_ex(&jerr, 0, "{s:s, s:s, s:{s:s, s:s}, s:s, s:s}", "event",
                             "help_request", "session_id", session_id, "user", "id", user_id,
                             "name", user_name ? user_name : user_id, "title",
                             title ? title : "", "timestamp", ts);
    if (!o) {
        /* jansson says which: an invalid string, or memory. */
        *rc = strstr(jerr.text, "UTF-8") || strstr(jerr.text, "Invalid") ? -EINVAL : -ENOMEM;
        return NULL;
    }
    const size_t flags = JSON_COMPACT | JSON_PRESERVE_ORDER;
    size_t n = json_dumpb(o, NULL, 0, flags);
    struct delivery *d = n ? calloc(1, sizeof *d + n) : NULL;
    if (!d || json_dumpb(o, d->body, n, flags) != n) {
        json_decref(o);
        free(d);
        *rc = -ENOMEM;
        return NULL;
    }
    json_decref(o);
    d->w = w;
    d->body_len = n;
    d->retry_after_ms = -1;
    snprintf(d->session, sizeof d->session, "%s", session_id);
    if (w->secret) {
        unsigned char mac[EVP_MAX_MD_SIZE];
        unsigned int maclen = 0;
        if (!HMAC(EVP_sha256(), w->secret, (int)w->secret_len, (const unsigned char *)d->body,
                  d->body_len, mac, &maclen) ||
            maclen != 32) {
            free(d);
            *rc = -ENOMEM; /* OpenSSL fails only for want of memory here */
            return NULL;
        }
        memcpy(d->sig, "sha256=", 7);
        hex_encode(d->sig + 7, mac, 32);
        d->sig[SIG_LEN] = '\0';
        OPENSSL_cleanse(mac, sizeof mac);
    }
    *rc = 0;
    return d;
}

/* ---- sending ------------------------------------------------------------- */

/* One attempt of d, after delay_ms. The client's errors (-ESHUTDOWN once
 * it is being freed; -EBUSY cannot happen: max_requests is above
 * max_pending, and each pending delivery is one request). */
static int submit(struct delivery *d, unsigned delay_ms)
{
    struct webhook *w = d->w;
    struct http_client_field h[2] = {{"Content-Type", "application/json"},
                                     {"X-Chatd-Signature", d->sig}};
    struct http_client_request q = {
        .method = "POST",
        .url = w->url,
        .headers = h,
        .nheaders = d->sig[0] ? 2 : 1,
        .body = d->body,
        .body_len = d->body_len,
        .total_timeout_ms = w->timeout_ms,
        .delay_ms = delay_ms,
        .max_response_bytes = MAX_RESPONSE,
        .cb = &delivery_cb,
        .arg = d,
    };
    return http_client_submit(w->http, &q, NULL);
}

/* A delivery ended for good: counted under `result`, pending no more. */
static void finish(struct delivery *d, atomic_uint_fast64_t *counter)
{
    struct webhook *w = d->w;
    atomic_fetch_add(counter, 1);
    atomic_fetch_sub(&w->pending, 1);
    free(d);
}

/* The wait before attempt n+1, after n attempts: first_retry_ms doubled
 * n-1 times, at most max_retry_ms, with up to a quarter of it added or
 * taken away at random (so that deliveries that failed together do not
 * retry together), never past max_retry_ms; a longer Retry-After wins, up
 * to max_retry_ms. */
static unsigned retry_delay(struct webhook *w, unsigned n, int64_t retry_after_ms)
{
    uint64_t base = w->first_retry_ms;
    for (unsigned i = 1; i < n && base < w->max_retry_ms; i++)
        base *= 2;
    if (base > w->max_retry_ms)
        base = w->max_retry_ms;
    uint64_t r = hash_mix64(w->jitter_seed ^ atomic_fetch_add(&w->jitter, 1));
    uint64_t span = base / 2; /* from -base/4 to +base/4 */
    uint64_t d = base - base / 4 + (span ? r % (span + 1) : 0);
    if (retry_after_ms > 0 && (uint64_t)retry_after_ms > d)
        d = (uint64_t)retry_after_ms;
    if (d > w->max_retry_ms)
        d = w->max_retry_ms;
    return (unsigned)d;
}

/* Is an attempt that ended this way worth another? */
static bool retryable(int result, int status)
{
    if (status)
        return status == 408 || status == 429 || status >= 500;
    /* No answer: a connection refused or reset, a name not resolved, a
     * TLS failure, a timeout... all may pass. A URL libcurl refused will
     * not. */
    return result != -EINVAL;
}

/* Retry-After in delta-seconds (an HTTP date is not obeyed: the back-off
 * stands). -1 when absent or not a number. */
static int on_head(void *arg, uint64_t id, int status, const struct http_client_header *h,
                   size_t n)
{
    struct delivery *d = arg;
    (void)id;
    d->retry_after_ms = -1;
    const struct http_client_header *ra = http_client_header_find(h, n, "retry-after");
    if (ra && (status == 429 || status == 503) && ra->value_len > 0 && ra->value_len <= 6) {
        int64_t s = 0;
        for (size_t i = 0; i < ra->value_len && s >= 0; i++)
            s = ra->value[i] >= '0' && ra->value[i] <= '9' ? s * 10 + (ra->value[i] - '0') : -1;
        if (s >= 0)
            d->retry_after_ms = s * 1000;
    }
    return 0;
}

/* "ok", or the errno's name ("ECONNREFUSED"). */
static const char *errno_name(int result, char *buf, size_t len)
{
    if (result == 0)
        return "ok";
    uv_err_name_r(result, buf, len); /* uv_err_name leaks on unknown codes */
    return buf;
}

/* The end of one attempt (the client's thread): delivered, dropped,
 * failed, or the next attempt submitted. */
static void on_done(void *arg, uint64_t id, int result, int status, const char *error)
{
    struct delivery *d = arg;
    struct webhook *w = d->w;
    (void)id;
    struct log_quoted qs, qu, qe;
    char ebuf[64];
    bool stopping = atomic_load(&w->stopping);
    if (result != -ECANCELED) {
        d->attempts++;
        atomic_fetch_add(&w->attempts, 1);
    }
    if (status >= 200 && status <= 299) {
        log_info("webhook_delivered", "session=%s status=%d attempts=%u", log_quotes(&qs, d->session),
                 status, d->attempts);
        finish(d, &w->delivered);
        return;
    }
    if (result == -ECANCELED || stopping) {
        /* Only webhook_shutdown ends a delivery this way; it logs the
         * count. */
        log_debug("webhook_dropped", "session=%s reason=shutdown attempts=%u",
                  log_quotes(&qs, d->session), d->attempts);
        finish(d, &w->dropped);
        return;
    }
    bool again = retryable(result, status);
    if (!again || d->attempts >= w->max_attempts) {
        log_warn("webhook_failed", "session=%s url=%s status=%d result=%s attempts=%u reason=\"%s\"",
                 log_quotes(&qs, d->session), log_quotes(&qu, w->log_url), status,
                 log_quotes(&qe, errno_name(result, ebuf, sizeof ebuf)), d->attempts,
                 again ? "out of attempts" : "not retried");
        finish(d, &w->failed);
        return;
    }
    unsigned delay = retry_delay(w, d->attempts, d->retry_after_ms);
    {
        struct log_quoted qerr;
        log_info("webhook_retry", "session=%s status=%d error=%s attempts=%u delay_ms=%u",
                 log_quotes(&qs, d->session), status, log_quotes(&qerr, error), d->attempts,
                 delay);
    }
    int rc = submit(d, delay);
    if (rc == -ESHUTDOWN) {
        log_debug("webhook_dropped", "session=%s reason=shutdown attempts=%u",
                  log_quotes(&qs, d->session), d->attempts);
        finish(d, &w->dropped);
    } else if (rc != 0) {
        log_warn("webhook_failed", "session=%s attempts=%u reason=%s", log_quotes(&qs, d->session),
                 d->attempts, log_quotes(&qe, errno_name(rc, ebuf, sizeof ebuf)));
        finish(d, &w->failed);
    }
}

static const struct http_client_callbacks delivery_cb = {on_head, NULL, on_done};

/* ---- the API ------------------------------------------------------------- */

/* What may be logged of the URL (net/http_client.h), malloc'd. */
static char *url_for_logs(const char *url)
{
    size_t cap = strlen(url) + 1;
    char *out = malloc(cap);
    if (out)
        http_client_url_for_logs(url, out, cap);
    return out;
}

int webhook_new(struct webhook **out, const struct webhook_options *o)
{
    if (!o || !o->url ||
        (strncasecmp(o->url, "http://", 7) != 0 && strncasecmp(o->url, "https://", 8) != 0) ||
        (o->secret && (o->secret_len == 0 || o->secret_len > WEBHOOK_SECRET_MAX)))
        return -EINVAL;
    struct webhook *w = calloc(1, sizeof *w);
    if (!w)
        return -ENOMEM;
    w->max_pending = o->max_pending ? o->max_pending : WEBHOOK_MAX_PENDING;
    w->max_attempts = o->max_attempts ? o->max_attempts : WEBHOOK_MAX_ATTEMPTS;
    w->timeout_ms = o->timeout_ms ? o->timeout_ms : WEBHOOK_TIMEOUT_MS;
    w->first_retry_ms = o->first_retry_ms ? o->first_retry_ms : WEBHOOK_FIRST_RETRY_MS;
    w->max_retry_ms = o->max_retry_ms ? o->max_retry_ms : WEBHOOK_MAX_RETRY_MS;
    if (w->first_retry_ms > w->max_retry_ms)
        w->first_retry_ms = w->max_retry_ms;
    w->jitter_seed = hash_mix64((uint64_t)clock_wall_ms() ^ (uint64_t)clock_mono_ms() << 20 ^
                                (uint64_t)(uintptr_t)w);
    int rc = -ENOMEM;
    if (!(w->url = strdup(o->url)) || !(w->log_url = url_for_logs(o->url)))
        goto fail;
    if (o->secret) {
        if (!(w->secret = malloc(o->secret_len)))
            goto fail;
        memcpy(w->secret, o->secret, o->secret_len);
        w->secret_len = o->secret_len;
    }
    struct http_client_options ho = {
        /* Every pending delivery is one request: the cap is never what
         * refuses one (max_pending is). */
        .max_requests = w->max_pending + 16,
        .max_host_connections = CONNECTIONS,
        .max_total_connections = CONNECTIONS,
    };
    if ((rc = http_client_new(&w->http, &ho)) != 0)
        goto fail;
    pthread_mutex_init(&w->lock, NULL);
    struct log_quoted qu;
    log_info("webhook", "url=%s signed=%s max_pending=%u max_attempts=%u", log_quotes(&qu, w->log_url),
             w->secret ? "yes" : "no", w->max_pending, w->max_attempts);
    *out = w;
    return 0;

fail:
    if (w->secret)
        OPENSSL_cleanse(w->secret, w->secret_len);
    free(w->secret);
    free(w->log_url);
    free(w->url);
    free(w);
    return rc;
}

/* A help request dropped before it was sent (too many pending, or after
 * shutdown): counted; a warning at most once a second, with how many went
 * since the last one. Under w->lock. */
static void dropped_unsent(struct webhook *w, const char *session_id, const char *reason)
{
    atomic_fetch_add(&w->dropped, 1);
    w->drops_unlogged++;
    int64_t now = clock_mono_ms();
    if (w->drop_logged_ms && now - w->drop_logged_ms < 1000)
        return;
    struct log_quoted qs;
    log_warn("webhook_dropped", "session=%s reason=\"%s\" pending=%u dropped=%llu",
             log_quotes(&qs, session_id), reason, atomic_load(&w->pending),
             (unsigned long long)w->drops_unlogged);
    w->drop_logged_ms = now ? now : 1;
    w->drops_unlogged = 0;
}

int webhook_help_request(struct webhook *w, const char *session_id, const char *user_id,
                         const char *user_name, const char *title, int64_t ts_ms)
{
    if (!w || !session_id || !user_id)
        return -EINVAL;
    int rc;
    struct delivery *d = make_delivery(w, session_id, user_id, user_name, title, ts_ms, &rc);
    struct log_quoted qs;
    if (!d) {
        log_warn("webhook_not_sent", "session=%s reason=%s", log_quotes(&qs, session_id),
                 rc == -EINVAL ? "\"text is not UTF-8\"" : "\"out of memory\"");
        return rc;
    }
    pthread_mutex_lock(&w->lock);
    if (w->closing) {
        dropped_unsent(w, session_id, "shutting down");
        pthread_mutex_unlock(&w->lock);
        free(d);
        return -ESHUTDOWN;
    }
    if (atomic_load(&w->pending) >= w->max_pending) {
        dropped_unsent(w, session_id, "too many pending");
        pthread_mutex_unlock(&w->lock);
        free(d);
        return -EBUSY;
    }
    size_t bytes = d->body_len; /* d is the client's once submitted */
    atomic_fetch_add(&w->pending, 1);
    rc = submit(d, 0);
    if (rc != 0) {
        atomic_fetch_sub(&w->pending, 1);
        atomic_fetch_add(&w->dropped, 1);
    }
    pthread_mutex_unlock(&w->lock);
    if (rc != 0) {
        char ebuf[64];
        struct log_quoted qe;
        log_warn("webhook_dropped", "session=%s reason=%s", log_quotes(&qs, session_id),
                 log_quotes(&qe, errno_name(rc, ebuf, sizeof ebuf)));
        free(d);
        return rc;
    }
    log_debug("webhook_queued", "session=%s bytes=%zu", log_quotes(&qs, session_id), bytes);
    return 0;
}

void webhook_get_stats(struct webhook *w, struct webhook_stats *st)
{
    /* pending first: finish() counts a delivery's result before it stops
     * being pending, so a reader that sees pending at 0 then sees every
     * result (the other order could see neither). */
    st->pending = atomic_load(&w->pending);
    st->delivered = atomic_load(&w->delivered);
    st->failed = atomic_load(&w->failed);
    st->dropped = atomic_load(&w->dropped);
    st->attempts = atomic_load(&w->attempts);
}

void webhook_write_metrics(struct webhook *w, struct text *t)
{
    struct webhook_stats s;
    webhook_get_stats(w, &s);
    text_printf(t,
                "# HELP chatd_webhook_deliveries_total Help webhook deliveries that ended, by "
                "result.\n"
                "# TYPE chatd_webhook_deliveries_total counter\n"
                "chatd_webhook_deliveries_total{result=\"delivered\"} %llu\n"
                "chatd_webhook_deliveries_total{result=\"failed\"} %llu\n"
                "chatd_webhook_deliveries_total{result=\"dropped\"} %llu\n"
                "# HELP chatd_webhook_attempts_total Help webhook POSTs that ended, first tries "
                "and retries.\n"
                "# TYPE chatd_webhook_attempts_total counter\n"
                "chatd_webhook_attempts_total %llu\n"
                "# HELP chatd_webhook_pending Help webhook deliveries sending or waiting for a "
                "retry.\n"
                "# TYPE chatd_webhook_pending gauge\n"
                "chatd_webhook_pending %u\n",
                (unsigned long long)s.delivered, (unsigned long long)s.failed,
                (unsigned long long)s.dropped, (unsigned long long)s.attempts, s.pending);
}

void webhook_shutdown(struct webhook *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    bool first = !w->closing;
    w->closing = true;
    atomic_store(&w->stopping, true);
    pthread_mutex_unlock(&w->lock);
    if (!first)
        return;
    unsigned pending = atomic_load(&w->pending);
    uint64_t before = atomic_load(&w->dropped);
    /* Ends every delivery in flight or waiting: on_done counts each one
     * dropped. No submit from outside can come now (closing). */
    http_client_free(w->http);
    w->http = NULL;
    uint64_t dropped = atomic_load(&w->dropped) - before;
    log_event(dropped ? LOG_WARN : LOG_INFO, "webhook_shutdown", "pending=%u dropped=%llu",
              pending, (unsigned long long)dropped);
}

void webhook_free(struct webhook *w)
{
    if (!w)
        return;
    webhook_shutdown(w);
    pthread_mutex_destroy(&w->lock);
    if (w->secret)
        OPENSSL_cleanse(w->secret, w->secret_len);
    free(w->secret);
    free(w->log_url);
    free(w->url);
    free(w);
}
