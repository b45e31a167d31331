/*
 * stream: one answer of the assistant while it streams, and how each
 * connection is brought level with it.
 *
 * The answer so far is kept whole, so that a device that connects,
 * resumes or reloads mid-answer first gets everything streamed so far in
 * one `ai_response` at offset 0, then the live deltas, with no byte lost or
 * repeated. The rule that makes it exact: the producer appends a delta
 * (under the stream's lock) before it publishes it, and each worker's inbox
 * is FIFO; so when a worker takes a snapshot of length L, every delta it
 * has not yet received that ends after L was appended after the snapshot
 * and reaches it later. asst_plan says, per connection and delta, what to
 * send.
 *
 * Threads: one producer appends (the HTTP client's thread); any thread may
 * take a snapshot or read the length. `lock` guards text, len and state;
 * the reference count is atomic; id and session are read-only after
 * asst_stream_new. A stream is freed by its last asst_stream_unref.
 */
#ifndef CHATD_ASSISTANT_STREAM_H
#define CHATD_ASSISTANT_STREAM_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ASST_STREAM_ID_LEN 19 /* "st_" + 16 hex digits */

enum asst_stream_state { ASST_STREAMING = 0, ASST_DONE, ASST_CUT };

struct asst_stream {
    /* read-only after asst_stream_new */
    char id[ASST_STREAM_ID_LEN + 1];
    char session[65];
    size_t max_bytes; /* the longest answer kept */
    atomic_uint refs;
    /* guarded by lock */
    pthread_mutex_t lock;
    char *text; /* owned */
    size_t len, cap;
    enum asst_stream_state state;
};

/* A new stream for session (one reference, the caller's), with id from
 * id_bits. 0, -EINVAL (a session id over 64 bytes) or -ENOMEM. */
int asst_stream_new(struct asst_stream **out, const char *session, uint64_t id_bits,
                    size_t max_bytes);
struct asst_stream *asst_stream_ref(struct asst_stream *s);
void asst_stream_unref(struct asst_stream *s);

/* Append a delta (the producer only): its offset in the answer, or
 * -EMSGSIZE when the answer would pass max_bytes (nothing appended), or
 * -ENOMEM, or -EPIPE once finished. */
int64_t asst_stream_append(struct asst_stream *s, const char *delta, size_t len);
/* End the stream (no more appends): done, or cut short. */
void asst_stream_finish(struct asst_stream *s, enum asst_stream_state how);
/* A copy of the answer so far (malloc'd, NUL-terminated; *len its length)
 * and, when state is not NULL, the state at that moment. NULL on OOM. */
char *asst_stream_snapshot(struct asst_stream *s, size_t *len, enum asst_stream_state *state);

/* What to do with one delta for one connection. sent: how many bytes of
 * this stream the connection has had, or -1 when it has had none (it
 * joined mid-answer, or this is the first delta it sees). */
enum asst_action {
    ASST_SKIP = 0, /* it has all of it already */
    ASST_SEND,     /* send delta[skip..len) at offset off + skip */
    ASST_SNAPSHOT, /* send everything so far at offset 0 (take a snapshot) */
};

struct asst_plan {
    enum asst_action action;
    size_t skip; /* ASST_SEND: bytes of the delta the connection already has */
};

/* Plan a delta at offset off of length len for a connection that has had
 * `sent` bytes (-1: none). A delta at offset 0 to a connection that has
 * none is simply sent; one further on needs a snapshot; a gap (off > sent,
 * which the FIFO order rules out) is filled with a snapshot too. */
struct asst_plan asst_plan(int64_t sent, uint64_t off, size_t len);

#endif
