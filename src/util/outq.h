/*
 * outq: a connection's queue of bytes waiting to be written to its socket.
 *
 * Entries are slices of sbufs. Small private output (echo replies, pongs,
 * acks) is appended into the tail buffer while the connection holds it alone,
 * so a burst of small messages becomes one or two large slices; a shared
 * broadcast frame is queued by reference, never copied. The first `inflight`
 * entries have been handed to the kernel by a pending write and must not
 * change until outq_consume. Owned by one connection; used only by the
 * connection's worker thread.
 */
#ifndef CHATD_UTIL_OUTQ_H
#define CHATD_UTIL_OUTQ_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "util/sbuf.h"

#define OUTQ_CHUNK SBUF_CACHED_CAP /* size of a fresh private tail buffer */

struct outq_ent {
    struct sbuf *buf; /* one reference held by the queue */
    uint32_t off;
    uint32_t len;
};

struct outq {
    /* read-only for users */
    uint64_t bytes;     /* queued bytes not yet written */
    uint32_t count;     /* entries */
    uint32_t inflight;  /* entries at the head given to a pending write */
    /* private */
    uint32_t _head;
    uint32_t _cap : 31; /* power of two, 0 when nothing is allocated */
    uint32_t _used : 1; /* a grown ring held empty was used since outq_trim */
    struct outq_ent *_ents;
};

static inline void outq_init(struct outq *q)
{
    q->bytes = 0;
    q->count = q->inflight = q->_head = 0;
    q->_cap = q->_used = 0;
    q->_ents = 0;
}

/* Copy len bytes to the end of the queue. 0 or -ENOMEM. */
int outq_append(struct outq *q, const void *data, size_t len);
/* Copy two pieces (a frame header and its payload) as one append. */
int outq_append2(struct outq *q, const void *a, size_t alen, const void *b, size_t blen);
/* Queue a slice of a shared buffer; takes a new reference. 0 or -ENOMEM. */
int outq_push_ref(struct outq *q, struct sbuf *b, uint32_t off, uint32_t len);
/* The same with a reference the caller took (sbuf_ref_n): the queue keeps
 * it, or drops it when the slice is not queued (len 0, -ENOMEM). */
int outq_push_owned(struct outq *q, struct sbuf *b, uint32_t off, uint32_t len);
/* Fill up to max iovecs from the head; returns how many; *nbytes their sum. */
unsigned outq_iov(const struct outq *q, struct iovec *iov, unsigned max, size_t *nbytes);
/* n bytes from the head were written: drop them. */
void outq_consume(struct outq *q, size_t n);
/* Drop every entry not in flight (a slow reader is being cut off). */
void outq_drop_pending(struct outq *q);
/* Drop everything and free the entry array. */
void outq_release(struct outq *q);
/* Once in a while (the worker's tick): an empty queue gives back a grown
 * ring it has not used since the last call. */
void outq_trim(struct outq *q);
/* Free the calling thread's cache of entry rings (before the thread exits). */
void outq_thread_cleanup(void);

#endif
