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

#define SBUF_CACHED_CAP 4096  /* chunk size recycled per thread (see sbuf.c) */

struct sbuf {
    atomic_uint refs;
    uint32_t len; /* bytes used */
    uint32_t cap; /* bytes allocated in data */
    uint8_t data[];
};

/* New buffer with one reference and room for cap bytes; NULL on OOM. */
struct sbuf *sbuf_new(uint32_t cap);
static inline struct sbuf *sbuf_ref(struct sbuf *b)
{
    /* Only a holder may add a reference: the count cannot be 0 here. */
    assert(atomic_load_explicit(&b->refs, memory_order_relaxed) >= 1);
    atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed);
    return b;
}
/* Drop a reference; the last one frees the buffer. */
void sbuf_unref(struct sbuf *b);
/* Free this thread's cached buffers (call before a thread exits). */
void sbuf_thread_cleanup(void);
/* True when the caller holds the only reference (it may then append). */
static inline bool sbuf_exclusive(struct sbuf *b)
{
    return atomic_load_explicit(&b->refs, memory_order_acquire) == 1;
}

#endif
