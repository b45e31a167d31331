/*
 * sbuf: a reference-counted byte buffer, the unit of shared output.
 *
 * A broadcast frame is built once into an sbuf and queued on many
 * connections, possibly on several worker threads; each queue holds one
 * reference and drops it when the bytes are written. The count is atomic, so
 * sbuf_ref/sbuf_unref may be called from any thread; the bytes must not be
 * changed once a second reference exists (sbuf_exclusive says when they may).
 */
#ifndef CHATD_UTIL_SBUF_H
#define CHATD_UTIL_SBUF_H

#include <assert.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The send chunk: one page, header included, recycled per thread (sbuf.c). */
#define SBUF_CHUNK_BYTES 4096
#define SBUF_CACHED_CAP (SBUF_CHUNK_BYTES - 16) /* its bytes: 4080 */

struct sbuf {
    atomic_uint refs;
    uint32_t len; /* bytes used */
    uint32_t cap; /* bytes allocated in data */
    uint32_t chunk; /* 1: a send chunk (sbuf_new_chunk), 0: malloc'd */
    uint8_t data[];
};

/* New buffer with one reference and room for cap bytes; NULL on OOM. Its
 * holder may grow it with realloc while it has no other reference. */
struct sbuf *sbuf_new(uint32_t cap);
/* New send chunk (SBUF_CACHED_CAP bytes) with one reference, from this
 * thread's list when it has one; NULL on OOM. Never to be realloc'd. */
struct sbuf *sbuf_new_chunk(void);
static inline struct sbuf *sbuf_ref(struct sbuf *b)
{
    /* Only a holder may add a reference: the count cannot be 0 here. */
    assert(atomic_load_explicit(&b->refs, memory_order_relaxed) >= 1);
    atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed);
    return b;
}
/* Add n references at once: a holder about to hand the buffer to n
 * queues pays one atomic add rather than n (see outq_push_owned). */
static inline void sbuf_ref_n(struct sbuf *b, uint32_t n)
{
    assert(atomic_load_explicit(&b->refs, memory_order_relaxed) >= 1);
    atomic_fetch_add_explicit(&b->refs, n, memory_order_relaxed);
}
/* Drop a reference; the last one frees the buffer. */
void sbuf_unref(struct sbuf *b);
/* Drop n references (n >= 1) at once; the last one frees the buffer. */
void sbuf_unref_n(struct sbuf *b, uint32_t n);
/* Free the cached buffers this thread did not use since the last call,
 * keeping a few; call it periodically (the worker's tick). Returns how
 * many were freed. */
unsigned sbuf_thread_trim(void);
/* Free this thread's cached buffers (call before a thread exits). */
void sbuf_thread_cleanup(void);
/* True when the caller holds the only reference (it may then append). */
static inline bool sbuf_exclusive(struct sbuf *b)
{
    return atomic_load_explicit(&b->refs, memory_order_acquire) == 1;
}

#endif
