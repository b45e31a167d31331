/*
 * Send queue tests: every byte queued comes out of outq_iov in order, once,
 * whatever mix of copies, shared references, partial writes and in-flight
 * entries produced it; shared buffers are never written into; references are
 * dropped exactly when their bytes are consumed (ASan checks the rest).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "util/outq.h"
#include "util/sbuf.h"

/* Everything the queue would write now, concatenated; returns its length. */
static size_t gather(const struct outq *q, uint8_t *out, size_t cap)
{
    struct iovec iov[256];
    size_t total;
    unsigned n = outq_iov(q, iov, 256, &total);
    assert_int_equal(n, q->count); /* the tests stay under 256 entries */
    size_t off = 0;
    for (unsigned i = 0; i < n; i++) {
        assert_true(off + iov[i].iov_len <= cap);
        memcpy(out + off, iov[i].iov_base, iov[i].iov_len);
        off += iov[i].iov_len;
    }
    assert_int_equal(off, total);
    return off;
}

/* A new shared buffer of cap bytes holding the text s. Out of memory ends
 * the test program: cmocka's asserts return to the caller as far as the
 * compiler knows, and with link-time optimisation GCC then warns about the
 * memcpy into a NULL buffer (-Wstringop-overflow). */
static struct sbuf *sbuf_with(const char *s, uint32_t cap)
{
    size_t n = strlen(s);
    struct sbuf *b = sbuf_new(cap);
    if (!b || n > cap)
        abort();
    memcpy(b->data, s, n);
    b->len = (uint32_t)n;
    return b;
}

static unsigned refs(struct sbuf *b)
{
    return atomic_load(&b->refs);
}

static void cleanup(struct outq *q)
{
    outq_release(q);
    outq_thread_cleanup();
    sbuf_thread_cleanup();
}

static void test_small_appends_coalesce(void **state)
{
    (void)state;
    struct outq q;
    outq_init(&q);
    char want[4000];
    size_t len = 0;
    for (int i = 0; i < 400; i++) {
        char piece[10];
        memset(piece, 'a' + i % 26, sizeof piece);
        assert_int_equal(outq_append2(&q, piece, 3, piece + 3, 7), 0);
        memcpy(want + len, piece, 10);
        len += 10;
    }
    assert_int_equal(q.bytes, len);
    assert_true(q.count <= 2); /* one 4 KiB chunk, maybe a second */
    uint8_t got[4000];
    assert_int_equal(gather(&q, got, sizeof got), len);
    assert_memory_equal(got, want, len);
    cleanup(&q);
}

static void test_shared_buffer_is_referenced_never_written(void **state)
{
    (void)state;
    struct sbuf *shared = sbuf_with("0123456789", 64);
    struct outq a, b;
    outq_init(&a);
    outq_init(&b);
    assert_int_equal(outq_append(&a, "<", 1), 0);
    assert_int_equal(outq_push_ref(&a, shared, 2, 5), 0);
    assert_int_equal(outq_push_ref(&b, shared, 0, 10), 0);
    assert_int_equal(refs(shared), 3);
    /* Appending after a shared slice starts a private buffer: the shared
     * one (room left, slice at its end for b) must not change. */
    assert_int_equal(outq_append(&a, ">", 1), 0);
    assert_int_equal(outq_append(&b, "!", 1), 0);
    assert_int_equal(shared->len, 10);
    assert_memory_equal(shared->data, "0123456789", 10);
    uint8_t got[64];
    size_t n = gather(&a, got, sizeof got);
    assert_int_equal(n, 7);
    assert_memory_equal(got, "<23456>", 7);
    n = gather(&b, got, sizeof got);
    assert_int_equal(n, 11);
    assert_memory_equal(got, "0123456789!", 11);
    /* Consuming drops each queue's reference once. */
    outq_consume(&a, 7);
    assert_int_equal(refs(shared), 2);
    assert_int_equal(a.count, 0);
    cleanup(&a);
    outq_release(&b);
    assert_int_equal(refs(shared), 1);
    sbuf_unref(shared);
    cleanup(&b);
}

/* References taken ahead for several queues (sbuf_ref_n) are each kept by
 * the queue that queues the slice, and dropped by a push that queues
 * nothing, so the count always ends where it began. */
static void test_owned_references_are_kept_or_dropped(void **state)
{
    (void)state;
    struct sbuf *shared = sbuf_with("0123456789", 64);
    struct outq q[3];
    for (int i = 0; i < 3; i++)
        outq_init(&q[i]);
    sbuf_ref_n(shared, 4); /* three receivers and one that queues nothing */
    assert_int_equal(refs(shared), 5);
    for (int i = 0; i < 3; i++)
        assert_int_equal(outq_push_owned(&q[i], shared, (uint32_t)i, 4), 0);
    assert_int_equal(refs(shared), 5);
    assert_int_equal(outq_push_owned(&q[0], shared, 0, 0), 0); /* empty: dropped */
    assert_int_equal(refs(shared), 4);
    assert_int_equal(q[0].count, 1);
    uint8_t got[16];
    assert_int_equal(gather(&q[2], got, sizeof got), 4);
    assert_memory_equal(got, "2345", 4);
    /* Written or released, each queue gives back its one reference. */
    outq_consume(&q[0], 4);
    assert_int_equal(refs(shared), 3);
    outq_release(&q[1]);
    outq_release(&q[2]);
    assert_int_equal(refs(shared), 1);
    /* Taken ahead and not used: given back together. */
    sbuf_ref_n(shared, 3);
    sbuf_unref_n(shared, 3);
    assert_int_equal(refs(shared), 1);
    sbuf_unref(shared);
    for (int i = 0; i < 3; i++)
        cleanup(&q[i]);
}

static void test_partial_writes_resume_mid_entry(void **state)
{
    (void)state;
    struct sbuf *f = sbuf_with("FRAME", 32);
    struct outq q;
    outq_init(&q);
    assert_int_equal(outq_append(&q, "head-", 5), 0);
    assert_int_equal(outq_push_ref(&q, f, 0, 5), 0);
    assert_int_equal(outq_append(&q, "-tail", 5), 0);
    uint8_t got[64];
    /* The kernel took 3 bytes, then 4 (across an entry), then the rest. */
    outq_consume(&q, 3);
    assert_int_equal(gather(&q, got, sizeof got), 12);
    assert_memory_equal(got, "d-FRAME-tail", 12);
    outq_consume(&q, 4);
    assert_int_equal(q.bytes, 8);
    assert_int_equal(gather(&q, got, sizeof got), 8);
    assert_memory_equal(got, "AME-tail", 8);
    outq_consume(&q, 8);
    assert_int_equal(q.bytes, 0);
    assert_int_equal(q.count, 0);
    assert_int_equal(refs(f), 1);
    sbuf_unref(f);
    cleanup(&q);
}

static void test_in_flight_entries_stay_unchanged(void **state)
{
    (void)state;
    struct outq q;
    outq_init(&q);
    assert_int_equal(outq_append(&q, "abc", 3), 0);
    struct iovec iov[8];
    size_t total;
    unsigned n = outq_iov(&q, iov, 8, &total);
    q.inflight = n; /* handed to a pending write, as conn.c does */
    const uint8_t *was = iov[0].iov_base;
    assert_int_equal(outq_append(&q, "def", 3), 0);
    /* The in-flight slice is exactly what was handed over. */
    assert_int_equal(q.count, 2);
    assert_memory_equal(was, "abc", 3);
    n = outq_iov(&q, iov, 8, &total);
    assert_int_equal(iov[0].iov_len, 3);
    /* A slow reader cut off: pending entries go, in-flight ones stay. */
    outq_drop_pending(&q);
    assert_int_equal(q.count, 1);
    assert_int_equal(q.bytes, 3);
    outq_consume(&q, 3);
    assert_int_equal(q.inflight, 0);
    assert_int_equal(q.count, 0);
    cleanup(&q);
}

static void test_large_append_and_ring_wraparound(void **state)
{
    (void)state;
    static uint8_t big[20000];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (uint8_t)(i * 7);
    struct sbuf *f = sbuf_with("12345678", 8);
    struct outq q;
    outq_init(&q);
    /* Larger than a chunk: one entry of exactly its size. */
    assert_int_equal(outq_append(&q, big, sizeof big), 0);
    assert_int_equal(q.count, 1);
    static uint8_t got[30000];
    assert_int_equal(gather(&q, got, sizeof got), sizeof big);
    assert_memory_equal(got, big, sizeof big);
    outq_consume(&q, sizeof big);
    /* References one byte each: the ring grows past its first size and its
     * head wraps while entries come and go; order holds throughout. */
    unsigned next_in = 0, next_out = 0;
    for (int round = 0; round < 50; round++) {
        for (int k = 0; k < 5; k++, next_in++)
            assert_int_equal(outq_push_ref(&q, f, next_in % 8, 1), 0);
        size_t n = gather(&q, got, sizeof got);
        assert_int_equal(n, next_in - next_out);
        for (size_t i = 0; i < n; i++)
            assert_int_equal(got[i], "12345678"[(next_out + i) % 8]);
        outq_consume(&q, 3);
        next_out += 3;
    }
    assert_int_equal(refs(f), 1 + (next_in - next_out));
    outq_release(&q);
    assert_int_equal(refs(f), 1);
    sbuf_unref(f);
    cleanup(&q);
}

/* A ring grown by a burst stays with the emptied queue, so the next burst
 * reuses it; a tick that finds it unused since the last one gives it back.
 * A ring of the smallest size goes back as soon as the queue empties. */
static void test_grown_ring_kept_until_a_tick_finds_it_unused(void **state)
{
    (void)state;
    struct sbuf *f = sbuf_with("x", 1);
    struct outq q;
    outq_init(&q);
    for (int i = 0; i < 20; i++)
        assert_int_equal(outq_push_ref(&q, f, 0, 1), 0);
    assert_int_equal(q._cap, 32);
    const struct outq_ent *ring = q._ents;
    outq_consume(&q, 20);
    assert_int_equal(q.count, 0);
    assert_ptr_equal(q._ents, ring); /* kept */
    outq_trim(&q);                    /* used since the last tick: kept */
    assert_ptr_equal(q._ents, ring);
    for (int i = 0; i < 30; i++)
        assert_int_equal(outq_push_ref(&q, f, 0, 1), 0);
    assert_ptr_equal(q._ents, ring); /* the next burst fits: no new ring */
    assert_int_equal(q._cap, 32);
    outq_trim(&q); /* not empty: untouched */
    assert_ptr_equal(q._ents, ring);
    outq_consume(&q, 30);
    outq_trim(&q); /* used since the last tick */
    assert_ptr_equal(q._ents, ring);
    outq_trim(&q); /* a whole tick unused: given back */
    assert_null(q._ents);
    assert_int_equal(q._cap, 0);
    /* Smallest size: back when emptied, no tick needed. */
    assert_int_equal(outq_push_ref(&q, f, 0, 1), 0);
    assert_int_equal(q._cap, 4);
    outq_consume(&q, 1);
    assert_null(q._ents);
    assert_int_equal(refs(f), 1);
    sbuf_unref(f);
    cleanup(&q);
}

/* Take n send chunks, then give them all back (to this thread's list). */
static void churn(unsigned n)
{
    struct sbuf *b[64];
    assert_true(n <= 64);
    for (unsigned i = 0; i < n; i++) {
        b[i] = sbuf_new_chunk();
        assert_non_null(b[i]);
        b[i]->data[SBUF_CACHED_CAP - 1] = (uint8_t)i; /* the whole chunk is usable */
    }
    for (unsigned i = 0; i < n; i++)
        sbuf_unref(b[i]);
}

/* The per-thread chunk list gives back what a whole interval left unused,
 * keeps a floor of 16, and keeps everything a busy interval dipped into. */
static void test_chunk_list_trims_what_stayed_unused(void **state)
{
    (void)state;
    sbuf_thread_cleanup();
    churn(60); /* a burst: 60 chunks made, all 60 cached afterwards */
    /* The burst's interval drew the list down to empty: nothing spare. */
    assert_int_equal(sbuf_thread_trim(), 0);
    /* An interval without any use: all but 16 go. */
    assert_int_equal(sbuf_thread_trim(), 60 - 16);
    assert_int_equal(sbuf_thread_trim(), 0);
    /* A busy interval that needed 26 at once (10 more than were kept)
     * keeps all 26; the next one needs 5: 21 stay unused, 5 of them go. */
    churn(26);
    assert_int_equal(sbuf_thread_trim(), 0);
    churn(5);
    assert_int_equal(sbuf_thread_trim(), 5); /* 21 spare, 16 kept */
    churn(5);
    assert_int_equal(sbuf_thread_trim(), 0); /* 21 -> 16 spare: at the floor */
    sbuf_thread_cleanup();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_small_appends_coalesce),
        cmocka_unit_test(test_shared_buffer_is_referenced_never_written),
        cmocka_unit_test(test_owned_references_are_kept_or_dropped),
        cmocka_unit_test(test_partial_writes_resume_mid_entry),
        cmocka_unit_test(test_in_flight_entries_stay_unchanged),
        cmocka_unit_test(test_large_append_and_ring_wraparound),
        cmocka_unit_test(test_grown_ring_kept_until_a_tick_finds_it_unused),
        cmocka_unit_test(test_chunk_list_trims_what_stayed_unused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
