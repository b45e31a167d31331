/*
 * assistant: chatd's AI assistant. It answers the user messages of a
 * session with one streamed request to the session's model, hands every
 * piece of the answer to the hub as it comes, and at the end hands over the
 * whole answer to be stored.
 *
 * The rules it keeps:
 *   - One answer at a time per session (a "slot"). A message that is asked
 *     about while one runs marks the slot pending; when the running answer
 *     has been stored, one more answer starts and reads the history as it
 *     is then, so it answers every message that came meanwhile.
 *   - Takeover: while an admin connection has joined the session
 *     (assistant_hold), nothing starts there, and a pending answer is
 *     dropped. An answer already streaming when an admin joins finishes.
 *   - At most max_streams answers run at once in all sessions; past it
 *     assistant_ask refuses at once (-EBUSY), nothing queues behind the cap.
 *   - Every answer ends exactly once, through hooks->finished, whatever
 *     ended it: complete, stopped (assistant_stop), cut by the provider,
 *     timed out, too long, or cut by shutdown. Whatever text had streamed
 *     is handed over to be stored (partial when it did not complete).
 *
 * The path of one answer (threads in brackets):
 *   1. assistant_ask [the storage writer, from the hub's batch callback]
 *      takes the slot and queues a job for the assistant's own thread;
 *   2. [assistant thread] reads the session's recent history from the store
 *      (a blocking read, never on a worker), builds the provider request
 *      (provider.h) and submits it to the HTTP client (net/http_client.h);
 *   3. [HTTP client thread] parses the event stream (http/sse.h) and
 *      gathers the deltas' text of each answer; at the end of each turn of
 *      its loop (and when another answer's text comes, and before the
 *      answer ends) it appends what it gathered to the answer's stream
 *      (stream.h) in one piece and then calls hooks->delta with that
 *      piece, in that order, which is what lets a connection that comes
 *      mid-answer catch up exactly (stream.h);
 *   4. [HTTP client thread] at the end: hooks->failed when it failed, then
 *      hooks->finished with the text; the hub stores it and calls
 *      assistant_stored once the write is committed or refused, which frees
 *      the slot and starts a pending answer.
 *
 * Locks: `lock` (struct assistant, private) guards the slot table, the
 * job queue and the counts; it is never held while a hook or the HTTP
 * client or the store is called. A stream has its own lock (stream.h).
 * Ownership: the assistant owns its slots, answers, thread and HTTP
 * client; the store is borrowed and must outlive it.
 */
#ifndef CHATD_ASSISTANT_ASSISTANT_H
#define CHATD_ASSISTANT_ASSISTANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "assistant/stream.h"
#include "conf/config.h"
#include "net/http_client.h"
#include "store/store.h"

struct assistant;

/* What an answer came to, for hooks->finished (strings borrowed for the
 * call). */
struct asst_result {
    const char *session, *owner;
    const char *stream_id;
    const struct conf_model *model;
    const char *text; /* the answer (whole, or what had streamed) */
    size_t len;       /* 0: nothing streamed: nothing to store */
    bool partial;     /* it did not complete */
    bool failed;      /* hooks->failed has told the session why */
    const char *stop_reason; /* the provider's ("stop", "end_turn", "max_tokens"),
                              * or chatd's: "stopped", "error", "timeout",
                              * "too_long", "shutdown" */
    uint64_t input_tokens, output_tokens;
    bool tokens_estimated; /* the provider gave no usage: estimated from bytes */
    int64_t reply_to_seq;  /* the seq of the last event it was asked with (0: none);
                            * the hub stores it in the answer's metadata as
                            * "reply_to_seq", which places the answer in the
                            * history of later requests */
};

/* An error to tell the session about (hooks->failed). */
enum asst_error { ASST_ERR_PROVIDER = 0, ASST_ERR_TIMEOUT };

/* How the assistant reaches up to the hub (it calls up only through these).
 * All are called without the assistant's lock held. */
struct assistant_hooks {
    /* An answer starts (the session gets `loading`). Called inside
     * assistant_ask, on its caller's thread. */
    void (*started)(void *app, const char *session, const char *owner);
    /* A piece of the answer: len bytes at offset off of stream s, already
     * appended to s. HTTP client thread. The hub may gather pieces and
     * hand them on at flush. */
    void (*delta)(void *app, struct asst_stream *s, const char *owner, uint64_t off,
                  const char *text, size_t len);
    /* Hand on the pieces gathered: called on the HTTP client thread after
     * each turn of its loop, and before failed and finished of an answer
     * (so an answer's pieces always go out before its end). NULL: none. */
    void (*flush)(void *app);
    /* The answer failed: tell the session. stream_id "" when none had
     * started streaming; retry_after_ms < 0: none. Any assistant thread. */
    void (*failed)(void *app, const char *session, const char *owner, const char *stream_id,
                   enum asst_error kind, const char *message, bool recoverable,
                   int64_t retry_after_ms);
    /* The answer ended. With r->len > 0 the hub stores it and returns 0,
     * then calls assistant_stored when the write is done; any other return
     * (or r->len == 0, where the hub tells the session the answer is over
     * unless hooks->failed did) means nothing will be stored, and the
     * assistant frees the slot itself. Any assistant thread. */
    int (*finished)(void *app, const struct asst_result *r);
    /* Optional, for answers shared with other processes (nodes): asked
     * on the assistant thread as answer stream_id of session is about to
     * be requested. ASST_CLAIM_HELD: a person holds the session elsewhere
     * (assistant_hold covers this process): the answer ends before it
     * begins, stop_reason "taken_over", nothing stored. ASST_CLAIM_BUSY:
     * another process answers the session: this one waits for it, asking
     * again every ASST_CLAIM_RETRY_MS, for at most the total timeout. 0
     * (or negative: unknown): it goes ahead, and `released` follows when
     * it ends. */
    int (*claim)(void *app, const char *session, const char *stream_id);
    /* Optional: the answer claimed is over: stored (after
     * assistant_stored), or ended with nothing to store. Must not block:
     * any assistant thread, or the caller of assistant_stored. */
    void (*released)(void *app, const char *session, const char *stream_id);
    void *app;
};

#define ASST_CLAIM_HELD 1
#define ASST_CLAIM_BUSY 2
#define ASST_CLAIM_RETRY_MS 200

struct assistant_options {
    const struct conf_model *models; /* borrowed, read-only: the configured models */
    unsigned nmodels;
    unsigned default_model;          /* index into models */
    unsigned first_byte_timeout_ms;  /* to the first delta */
    unsigned total_timeout_ms;       /* to the end of the answer */
    unsigned max_streams;            /* answers running at once (cap) */
    unsigned context_messages;       /* history sent with a request, at most */
    size_t context_bytes;
    size_t max_answer_bytes;         /* longer answers are cut there (partial) */
    const char *ca_file;             /* PEM authorities for https endpoints (copied) */
    unsigned per_user_per_min;       /* answers one user may ask for a minute (0: no
                                        limit), in bursts of up to a quarter
                                        of it (at least 10, at most all of it) */
};

/* Is there a model with a provider among these (else the assistant is off
 * and need not be made)? */
bool assistant_configured(const struct conf_model *models, unsigned n);

/* Make the assistant, its HTTP client (net/http_client.h; one thread for
 * every answer's stream) and its thread. Main thread. 0, -ENOMEM, -EIO, or
 * the HTTP client's error (-ENOENT, -EACCES: the CA file). */
int assistant_new(struct assistant **out, const struct assistant_options *opt,
                  const struct assistant_hooks *hooks, struct store *store);

/*
 * Ask for an answer in session (owned by owner) with model model_id ("":
 * the default; an unknown id or a model without a provider: the default).
 * Called by the storage writer once the user's message is committed. 0: an
 * answer starts (hooks->started has been called); 1: one is running, this
 * one will follow it; -EPERM: an admin holds the session (takeover);
 * -EDQUOT: the owner has used their budget (per_user_per_min);
 * -EBUSY: max_streams answers run already; both with *retry_after_ms set;
 * -ENOENT: the model has no provider; -ESHUTDOWN: closing; -ENOMEM.
 * Nothing queues behind a refusal: the message stays unanswered.
 */
int assistant_ask(struct assistant *a, const char *session, const char *owner,
                  const char *model_id, int64_t *retry_after_ms);

/* The admin connection conn_id joined (true) or left (false) the session;
 * idempotent per connection. Storage writer thread (in commit order). */
void assistant_hold(struct assistant *a, const char *session, uint64_t conn_id, bool joined);

/* Stop the session's running answer (stop_generation): its partial text is
 * stored. true when one was running. Any thread. */
bool assistant_stop(struct assistant *a, const char *session);

/* The answer of stream_id in session has been stored (or refused): its slot
 * is free, and a pending answer starts unless an admin holds the session.
 * Storage writer thread. */
void assistant_stored(struct assistant *a, const char *session, const char *stream_id);

/* The session's answer while it streams, with a reference (release with
 * asst_stream_unref), or NULL when none streams. Any thread. */
struct asst_stream *assistant_stream(struct assistant *a, const char *session);

/* For /metrics. Any thread. */
struct assistant_stats {
    uint64_t started, completed, partial, failed, timeouts, refused_busy;
    uint64_t input_tokens, output_tokens, deltas;
    unsigned running;
};
void assistant_get_stats(struct assistant *a, struct assistant_stats *out);

/* Stop starting answers, end the thread (queued jobs that had not yet
 * asked the provider end with nothing to store) and free the HTTP client,
 * which ends every running answer: each is handed over as partial, stop
 * reason "shutdown". The owner then closes the store (which stores them)
 * and calls assistant_free. Main thread; a second call does nothing. */
void assistant_shutdown(struct assistant *a);
void assistant_free(struct assistant *a);

#endif
