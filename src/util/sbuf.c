/*
 * DESIGN: the last unref frees; acquire/release ordering on the count makes
 * every write a thread did to the bytes before dropping its reference visible
 * to the thread that frees them.
 *
 * Send chunks. The send queues' chunks (sbuf_new_chunk, SBUF_CACHED_CAP
 * bytes) are each one page of their own, mapped with mmap, and kept on a
 * per-thread list instead of being unmapped, so a busy connection does not
 * cost a system call per write. The list holds a loop iteration's worth
 * (one chunk per connection written in a flush pass): with only a few kept,
 * a pass over many connections handed most chunks back and faulted the
 * pages in again on the next pass (measured with malloc'd chunks: 140,000
 * page faults in two seconds of the echo benchmark, 600 with the list sized
 * so).
 *
 * Why pages and not malloc: a burst (thousands of handshakes at once) fills
 * the list, and an idle server then held it for good (512 KiB per worker,
 * 50 bytes per connection at 10,000 idle ones). Freed, malloc'd chunks
 * stayed resident: they lie among the connections' own allocations, and
 * malloc can return no page of a 4 KiB hole. A chunk that is a page is
 * returned whole. sbuf_thread_trim, called by the owner once a second,
 * unmaps what the list never dipped into over the last interval (its
 * low-water mark) down to CACHE_KEEP; a busy thread's low-water mark stays
 * near the floor, so a steady load keeps its list.
 *
 * A chunk may end on another thread's list (the last reference is dropped
 * there): it is a page like any other, unmapped by whichever thread holds
 * it. Where the page size is not 4 KiB, chunks come from malloc and only
 * the list is trimmed.
 */
#include "util/sbuf.h"

#include <assert.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

_Static_assert(sizeof(struct sbuf) + SBUF_CACHED_CAP == SBUF_CHUNK_BYTES,
               "a send chunk fills its page exactly");

#define CACHE_MAX 128 /* 512 KiB per thread at most */
#define CACHE_KEEP 16 /* sbuf_thread_trim keeps this many */

/* Per-thread cache: only the owning thread touches it. */
static _Thread_local struct sbuf *cache[CACHE_MAX];
static _Thread_local unsigned ncache;
static _Thread_local unsigned ncache_low; /* fewest cached since the last trim */

/* Chunks are pages when pages are SBUF_CHUNK_BYTES. Asked on each call
 * (off the fast path: only when the list is empty or full; glibc answers
 * from memory), so no state says it and every thread agrees. */
static bool pages(void)
{
    return sysconf(_SC_PAGESIZE) == SBUF_CHUNK_BYTES;
}

static struct sbuf *chunk_new(void)
{
    if (!pages())
        return malloc(SBUF_CHUNK_BYTES);
    void *p = mmap(NULL, SBUF_CHUNK_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static void chunk_free(struct sbuf *b)
{
    if (!pages()) {
        free(b);
        return;
    }
    int rc = munmap(b, SBUF_CHUNK_BYTES);
    assert(rc == 0); /* a page this file mapped */
    (void)rc;
}

struct sbuf *sbuf_new(uint32_t cap)
{
    struct sbuf *b = malloc(sizeof *b + cap);
    if (!b)
        return NULL;
    atomic_init(&b->refs, 1);
    b->len = 0;
    b->cap = cap;
    b->chunk = 0;
    return b;
}

struct sbuf *sbuf_new_chunk(void)
{
    struct sbuf *b;
    if (ncache > 0) {
        b = cache[--ncache];
        if (ncache < ncache_low)
            ncache_low = ncache;
    } else if (!(b = chunk_new())) {
        return NULL;
    }
    atomic_init(&b->refs, 1);
    b->len = 0;
    b->cap = SBUF_CACHED_CAP;
    b->chunk = 1;
    return b;
}

void sbuf_unref(struct sbuf *b)
{
    sbuf_unref_n(b, 1);
}

void sbuf_unref_n(struct sbuf *b, uint32_t n)
{
    assert(n >= 1);
    unsigned was = atomic_fetch_sub_explicit(&b->refs, n, memory_order_acq_rel);
    assert(was >= n); /* a reference dropped twice */
    if (was != n)
        return;
    if (!b->chunk)
        free(b);
    else if (ncache < CACHE_MAX)
        cache[ncache++] = b;
    else
        chunk_free(b);
}

unsigned sbuf_thread_trim(void)
{
    unsigned spare = ncache_low < ncache ? ncache_low : ncache;
    unsigned freed = 0;
    while (spare > CACHE_KEEP) {
        chunk_free(cache[--ncache]);
        spare--;
        freed++;
    }
    ncache_low = ncache;
    return freed;
}

void sbuf_thread_cleanup(void)
{
    while (ncache > 0)
        chunk_free(cache[--ncache]);
    ncache_low = 0;
}
