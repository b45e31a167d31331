/*
 * webhook: the help webhook (--help-webhook). When a user asks for a person
 * in a session, chatd POSTs one JSON document to the configured URL:
 *
 *   {"event":"help_request","session_id":"s_...",
 *    "user":{"id":"...","name":"..."},"title":"...",
 *    "timestamp":"2026-11-26T10:00:00.000Z"}
 *
 * with Content-Type: application/json, and, when a secret is configured
 * (--webhook-secret-file), X-Chatd-Signature: sha256=<lowercase hex of the
 * HMAC-SHA256 of the exact body bytes, keyed with the secret>. The body is
 * compact JSON (no spaces), its members in that order, UTF-8.
 *
 * Delivery, at least once (a receiver that answered but whose answer was
 * lost gets the same body again; session_id and timestamp name one help
 * request):
 *   - a 2xx answer is delivered;
 *   - 408, 429, any 5xx, and a failure to connect, a reset, a TLS failure
 *     or the per-attempt timeout (10 s) are retried;
 *   - any other answer (3xx: redirects are not followed; 4xx other than
 *     408 and 429) fails at once: the receiver refused this body and will
 *     refuse it again;
 *   - retries wait 1 s, 2 s, 4 s, ... (doubling, at most 60 s), each with
 *     up to a quarter more or less of random jitter, never past 60 s; a
 *     Retry-After of delta-seconds longer than that wait is obeyed (up to
 *     60 s); after 8 attempts in all the delivery fails.
 * Each delivery is one request of the webhook's own HTTP client
 * (net/http_client.h), its retries waiting on that client's thread
 * (delay_ms): nothing blocks the caller, and no worker thread is involved.
 *
 * Bounds. At most max_pending deliveries (default 1000) are pending at once,
 * sending or waiting for a retry; a help request past that is dropped and
 * counted, and a warning is logged at most once a second with the number
 * dropped since the last one. At shutdown (webhook_shutdown) every delivery
 * still pending, in flight or waiting for a retry, is dropped and counted:
 * nothing is kept across a restart.
 *
 * Logs: the URL once at start (event=webhook), one line per delivery
 * that ended (delivered at info, failed at warn), one per retry (info);
 * drops as said above (at most one warning a second, and one line at
 * shutdown with how many went). Values from users go through log_quote;
 * the URL is logged without userinfo, query or fragment; the secret, the
 * signature and the body never appear in a log.
 *
 * Threads: webhook_new, webhook_shutdown and webhook_free on the owner's
 * thread (main); webhook_help_request, webhook_get_stats and
 * webhook_write_metrics on any thread, until webhook_free begins (the
 * storage writer calls webhook_help_request; /metrics reads from a worker).
 * The retry decisions run on the HTTP client's thread.
 */
#ifndef CHATD_HUB_WEBHOOK_H
#define CHATD_HUB_WEBHOOK_H

#include <stddef.h>
#include <stdint.h>

#include "util/text.h"

#define WEBHOOK_MAX_PENDING 1000     /* deliveries pending at once (default) */
#define WEBHOOK_MAX_ATTEMPTS 8       /* attempts of one delivery, the first included */
#define WEBHOOK_TIMEOUT_MS 10000     /* one attempt, from its start to the last byte */
#define WEBHOOK_FIRST_RETRY_MS 1000  /* the wait before the second attempt */
#define WEBHOOK_MAX_RETRY_MS 60000   /* the longest wait before a retry */
#define WEBHOOK_SECRET_MAX 4096      /* bytes of the HMAC key */

struct webhook;

/* What webhook_new copies. The numbers are for tests; 0 takes the default. */
struct webhook_options {
    const char *url;             /* http:// or https://; required */
    const unsigned char *secret; /* the HMAC-SHA256 key, any bytes, 1 to
                                    WEBHOOK_SECRET_MAX; NULL: no signature */
    size_t secret_len;
    unsigned max_pending;        /* 0: WEBHOOK_MAX_PENDING */
    unsigned max_attempts;       /* 0: WEBHOOK_MAX_ATTEMPTS */
    unsigned timeout_ms;         /* 0: WEBHOOK_TIMEOUT_MS */
    unsigned first_retry_ms;     /* 0: WEBHOOK_FIRST_RETRY_MS */
    unsigned max_retry_ms;       /* 0: WEBHOOK_MAX_RETRY_MS */
};

/* Counters since webhook_new (a snapshot; each value is whole). */
struct webhook_stats {
    uint64_t delivered; /* a 2xx came back */
    uint64_t failed;    /* refused for good, or out of attempts */
    uint64_t dropped;   /* never finished: past max_pending, or at shutdown */
    uint64_t attempts;  /* POSTs that ended with an answer or an error */
    unsigned pending;   /* sending or waiting for a retry now */
};

/* Make the webhook and start its HTTP client (one thread). Owner thread.
 * 0 and *out, or -EINVAL (no URL, not http(s), a secret of a bad length),
 * -ENOMEM, or http_client_new's error. */
int webhook_new(struct webhook **out, const struct webhook_options *o);

/*
 * Queue one help_request POST: the body is built and signed now, and sent
 * from the HTTP client's thread. Any thread; never blocks on the network.
 * user_name NULL: user_id stands for it (as in a `sender`); title NULL: "".
 * Every string must be valid UTF-8. Returns 0 when queued, or a negative
 * errno when nothing will be sent: -EINVAL (NULL w, session_id or user_id,
 * or text that is not UTF-8), -EBUSY (max_pending deliveries are pending:
 * dropped and counted), -ESHUTDOWN (after webhook_shutdown: dropped and
 * counted), -ENOMEM. The caller need not look: each case is logged.
 */
int webhook_help_request(struct webhook *w, const char *session_id, const char *user_id,
                         const char *user_name, const char *title, int64_t ts_ms);

void webhook_get_stats(struct webhook *w, struct webhook_stats *st);

/* Append the webhook's Prometheus lines to t: chatd_webhook_deliveries_total
 * {result="delivered|failed|dropped"}, chatd_webhook_attempts_total and
 * chatd_webhook_pending. Any thread. */
void webhook_write_metrics(struct webhook *w, struct text *t);

/* Stop sending: later help requests are dropped and counted, and every
 * delivery still pending (in flight or waiting for a retry) is dropped and
 * counted as its request ends. Returns once no callback of the webhook runs
 * any more. Owner thread; idempotent; NULL is a no-op. */
void webhook_shutdown(struct webhook *w);

/* webhook_shutdown, then free everything, the secret overwritten first.
 * No other thread may call into w once this begins. NULL is a no-op. */
void webhook_free(struct webhook *w);

#endif
