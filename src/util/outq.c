/*
 * DESIGN: a ring of slices that grows by doubling. Appends go into the tail
 * slice's buffer when that buffer is exclusively ours, not in flight, and the
 * slice ends where the buffer's data ends; otherwise a new private buffer is
 * started. Writes are gathered from the head (see outq_iov).
 *
 * Rings. An emptied queue gives its ring back at once when it is of the
 * smallest size (to a per-thread cache: no malloc), so an idle connection
 * holds none. A grown ring is kept while the queue is busy: a fan-out
 * queues a burst of frames on each watcher, writes them, and queues the
 * next burst, and growing 4 -> 8 -> 16 -> 32 again for each burst was a
 * malloc and a free per watcher every few deliveries (~5% of a fan-out's
 * CPU). outq_trim gives it back once a tick found it unused.
 */
#include "util/outq.h"

#include <assert.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static struct outq_ent *ent(const struct outq *q, uint32_t i)
{
    return &q->_ents[(q->_head + i) & (q->_cap - 1)];
}

/* Rings of the smallest size are recycled per thread, so an idle queue can
 * hold none and a busy one still costs no malloc per message. Only the
 * owning worker thread touches its cache. */
#define RING_MIN 4
#define RING_CACHE 256
static _Thread_local struct outq_ent *ring_cache[RING_CACHE];
static _Thread_local unsigned nring;

static void ring_free(struct outq_ent *r, uint32_t cap)
{
    if (cap == RING_MIN && nring < RING_CACHE)
        ring_cache[nring++] = r;
    else
        free(r);
}

void outq_thread_cleanup(void)
{
    while (nring > 0)
        free(ring_cache[--nring]);
}

/* An empty queue gives its ring back. */
static void drop_ring(struct outq *q)
{
    assert(q->count == 0);
    ring_free(q->_ents, q->_cap);
    q->_ents = NULL;
    q->_cap = 0;
    q->_head = 0;
}

static int grow(struct outq *q)
{
    /* Stored only when it changes: _used shares a word with _cap, which
     * is read next (and by every ent()), and a byte stored into a word
     * that is then loaded whole stalls the load until the store is done. */
    if (!q->_used)
        q->_used = 1;
    if (q->count < q->_cap)
        return 0;
    if (q->_cap >= (1u << 30))
        return -ENOMEM; /* _cap has 31 bits */
    uint32_t ncap = q->_cap ? q->_cap * 2 : RING_MIN;
    if (ncap == RING_MIN && nring > 0) {
        q->_ents = ring_cache[--nring];
        q->_cap = RING_MIN;
        q->_head = 0;
        return 0;
    }
    struct outq_ent *n = malloc(sizeof *n * ncap);
    if (!n)
        return -ENOMEM;
    for (uint32_t i = 0; i < q->count; i++)
        n[i] = *ent(q, i);
    if (q->_ents)
        ring_free(q->_ents, q->_cap);
    q->_ents = n;
    q->_cap = ncap;
    q->_head = 0;
    return 0;
}

/* The tail slice, if more bytes may be copied onto its end. */
static struct outq_ent *appendable_tail(struct outq *q, size_t len)
{
    if (q->count == 0 || q->count <= q->inflight)
        return NULL;
    struct outq_ent *t = ent(q, q->count - 1);
    if (t->off + t->len != t->buf->len || t->buf->cap - t->buf->len < len)
        return NULL;
    if (!sbuf_exclusive(t->buf))
        return NULL;
    return t;
}

int outq_append2(struct outq *q, const void *a, size_t alen, const void *b, size_t blen)
{
    size_t len = alen + blen;
    if (len == 0)
        return 0;
    if (len > UINT32_MAX - 64)
        return -ENOMEM;
    struct outq_ent *t = appendable_tail(q, len);
    if (!t) {
        if (grow(q) < 0)
            return -ENOMEM;
        struct sbuf *nb = len > OUTQ_CHUNK ? sbuf_new((uint32_t)len) : sbuf_new_chunk();
        if (!nb)
            return -ENOMEM;
        t = ent(q, q->count++);
        t->buf = nb;
        t->off = 0;
        t->len = 0;
    }
    uint8_t *dst = t->buf->data + t->buf->len;
    if (alen)
        memcpy(dst, a, alen);
    if (blen)
        memcpy(dst + alen, b, blen);
    t->buf->len += (uint32_t)len;
    t->len += (uint32_t)len;
    q->bytes += len;
    return 0;
}

int outq_append(struct outq *q, const void *data, size_t len)
{
    return outq_append2(q, data, len, NULL, 0);
}

int outq_push_owned(struct outq *q, struct sbuf *b, uint32_t off, uint32_t len)
{
    if (len == 0 || grow(q) < 0) {
        sbuf_unref(b);
        return len == 0 ? 0 : -ENOMEM;
    }
    struct outq_ent *t = ent(q, q->count++);
    t->buf = b;
    t->off = off;
    t->len = len;
    q->bytes += len;
    return 0;
}

int outq_push_ref(struct outq *q, struct sbuf *b, uint32_t off, uint32_t len)
{
    return outq_push_owned(q, sbuf_ref(b), off, len);
}

unsigned outq_iov(const struct outq *q, struct iovec *iov, unsigned max, size_t *nbytes)
{
    unsigned n = 0;
    size_t sum = 0;
    for (; n < max && n < q->count; n++) {
        const struct outq_ent *e = ent(q, n);
        iov[n].iov_base = e->buf->data + e->off;
        iov[n].iov_len = e->len;
        sum += e->len;
    }
    if (nbytes)
        *nbytes = sum;
    return n;
}

void outq_consume(struct outq *q, size_t n)
{
    assert(n <= q->bytes); /* never more than was queued */
    q->bytes -= n;
    while (n > 0) {
        struct outq_ent *e = ent(q, 0);
        if (n < e->len) {
            e->off += (uint32_t)n;
            e->len -= (uint32_t)n;
            return;
        }
        assert(q->count > 0);
        n -= e->len;
        sbuf_unref(e->buf);
        q->_head = (q->_head + 1) & (q->_cap - 1);
        q->count--;
        if (q->inflight)
            q->inflight--;
    }
    if (q->count == 0) {
        q->_head = 0;
        if (q->_cap == RING_MIN) /* a grown one waits for outq_trim */
            drop_ring(q);
    }
}

void outq_trim(struct outq *q)
{
    if (q->count || !q->_ents || q->_cap == RING_MIN)
        return;
    if (q->_used) {
        q->_used = 0;
        return;
    }
    drop_ring(q);
}

void outq_drop_pending(struct outq *q)
{
    while (q->count > q->inflight) {
        struct outq_ent *e = ent(q, q->count - 1);
        q->bytes -= e->len;
        sbuf_unref(e->buf);
        q->count--;
    }
}

void outq_release(struct outq *q)
{
    q->inflight = 0;
    outq_drop_pending(q);
    if (q->_ents)
        ring_free(q->_ents, q->_cap);
    outq_init(q);
}
