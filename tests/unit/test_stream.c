/*
 * Unit tests for an assistant stream (src/assistant/stream.c): appends and
 * snapshots, and the per-connection rule (asst_plan) under a real producer
 * thread and consumer threads fed through FIFO inboxes, the way the HTTP
 * client's thread and the workers will use them. Consumers forget what
 * they had now and then (a device reconnecting) and must still end with
 * exactly the whole answer.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "assistant/stream.h"
#include "util/fifo.h"

static void test_append_and_snapshot(void **state)
{
    (void)state;
    struct asst_stream *s;
    assert_int_equal(asst_stream_new(&s, "s_0123", 0xabc, 10), 0);
    assert_string_equal(s->id, "st_0000000000000abc");
    assert_int_equal(asst_stream_append(s, "Hel", 3), 0);
    assert_int_equal(asst_stream_append(s, "lo ", 3), 3);
    size_t len;
    enum asst_stream_state st;
    char *snap = asst_stream_snapshot(s, &len, &st);
    assert_string_equal(snap, "Hello ");
    assert_int_equal(len, 6);
    assert_int_equal(st, ASST_STREAMING);
    free(snap);
    assert_int_equal(asst_stream_append(s, "world", 5), -EMSGSIZE); /* 11 > 10 */
    assert_int_equal(asst_stream_append(s, "wor", 3), 6);
    asst_stream_finish(s, ASST_CUT);
    assert_int_equal(asst_stream_append(s, "x", 1), -EPIPE);
    snap = asst_stream_snapshot(s, &len, &st);
    assert_string_equal(snap, "Hello wor");
    assert_int_equal(st, ASST_CUT);
    free(snap);
    struct asst_stream *r = asst_stream_ref(s);
    asst_stream_unref(s);
    asst_stream_unref(r);
    char long_id[80];
    memset(long_id, 'x', sizeof long_id - 1);
    long_id[sizeof long_id - 1] = '\0';
    assert_int_equal(asst_stream_new(&s, long_id, 1, 10), -EINVAL);
}

static void test_plan(void **state)
{
    (void)state;
    struct asst_plan p = asst_plan(-1, 0, 5);
    assert_int_equal(p.action, ASST_SEND); /* the first delta, from the start */
    assert_int_equal(p.skip, 0);
    assert_int_equal(asst_plan(-1, 5, 5).action, ASST_SNAPSHOT); /* joined mid-answer */
    p = asst_plan(5, 5, 3);
    assert_int_equal(p.action, ASST_SEND);
    assert_int_equal(p.skip, 0);
    assert_int_equal(asst_plan(8, 5, 3).action, ASST_SKIP); /* in its snapshot already */
    p = asst_plan(7, 5, 3);                                 /* half of it */
    assert_int_equal(p.action, ASST_SEND);
    assert_int_equal(p.skip, 2);
    assert_int_equal(asst_plan(4, 5, 3).action, ASST_SNAPSHOT); /* a gap */
}

/* ---- a producer and workers ------------------------------------------------ */

#define CONSUMERS 3
#define DELTAS 3000

struct delta_msg {
    struct fifo_node node;
    int64_t off; /* -1: the end */
    size_t len;
    char text[24];
};

struct consumer {
    pthread_t thread;
    struct fifo inbox;
    struct asst_stream *stream;
    unsigned seed;
    char *buf; /* what this connection shows */
    int64_t sent;
    unsigned snapshots, resets;
    int failed;
};

static void *consume(void *arg)
{
    struct consumer *c = arg;
    c->sent = -1;
    for (;;) {
        if (fifo_wait(&c->inbox, FIFO_FOREVER) != 0)
            break;
        struct fifo_node *n = fifo_take_all(&c->inbox, NULL);
        while (n) {
            struct fifo_node *next = n->next;
            struct delta_msg *m = FIFO_ENTRY(n, struct delta_msg, node);
            if (m->off < 0) {
                free(m);
                return NULL; /* the end: checked by the test */
            }
            c->seed = c->seed * 1103515245u + 12345u;
            if ((c->seed >> 16) % 97 == 0) {
                /* The device reconnects: it knows nothing of the stream. */
                free(c->buf);
                c->buf = NULL;
                c->sent = -1;
                c->resets++;
            }
            struct asst_plan p = asst_plan(c->sent, (uint64_t)m->off, m->len);
            if (p.action == ASST_SNAPSHOT) {
                size_t len;
                char *snap = asst_stream_snapshot(c->stream, &len, NULL);
                /* The delta was appended before it was published. */
                if (!snap || len < (size_t)m->off + m->len)
                    c->failed = 1;
                free(c->buf);
                c->buf = snap;
                c->sent = (int64_t)len;
                c->snapshots++;
            } else if (p.action == ASST_SEND) {
                size_t from = (size_t)m->off + p.skip;
                if ((int64_t)from != (c->sent < 0 ? 0 : c->sent))
                    c->failed = 1;
                char *b = realloc(c->buf, from + (m->len - p.skip) + 1);
                if (!b) {
                    c->failed = 1;
                } else {
                    memcpy(b + from, m->text + p.skip, m->len - p.skip);
                    b[from + m->len - p.skip] = '\0';
                    c->buf = b;
                    c->sent = (int64_t)(from + m->len - p.skip);
                }
            }
            free(m);
            n = next;
        }
    }
    return NULL;
}

static void test_snapshot_and_deltas_meet_exactly(void **state)
{
    (void)state;
    struct asst_stream *s;
    assert_int_equal(asst_stream_new(&s, "s_race", 7, 1 << 20), 0);
    struct consumer cs[CONSUMERS];
    memset(cs, 0, sizeof cs);
    for (int i = 0; i < CONSUMERS; i++) {
        assert_int_equal(fifo_init(&cs[i].inbox, 0), 0);
        cs[i].stream = s;
        cs[i].seed = 1000u + (unsigned)i;
        assert_int_equal(pthread_create(&cs[i].thread, NULL, consume, &cs[i]), 0);
    }
    unsigned seed = 42;
    for (int k = 0; k < DELTAS; k++) {
        char d[24];
        seed = seed * 1103515245u + 12345u;
        size_t len = 1 + (seed >> 16) % 20;
        for (size_t j = 0; j < len; j++)
            d[j] = (char)('a' + (k + j) % 26);
        int64_t off = asst_stream_append(s, d, len);
        assert_true(off >= 0);
        /* Published to every worker after the append. */
        for (int i = 0; i < CONSUMERS; i++) {
            struct delta_msg *m = calloc(1, sizeof *m);
            assert_non_null(m);
            m->off = off;
            m->len = len;
            memcpy(m->text, d, len);
            assert_true(fifo_push(&cs[i].inbox, &m->node) >= 0);
        }
    }
    asst_stream_finish(s, ASST_DONE);
    size_t total;
    char *all = asst_stream_snapshot(s, &total, NULL);
    assert_non_null(all);
    for (int i = 0; i < CONSUMERS; i++) {
        struct delta_msg *end = calloc(1, sizeof *end);
        assert_non_null(end);
        end->off = -1;
        assert_true(fifo_push(&cs[i].inbox, &end->node) >= 0);
    }
    for (int i = 0; i < CONSUMERS; i++) {
        pthread_join(cs[i].thread, NULL);
        assert_false(cs[i].failed);
        assert_non_null(cs[i].buf);
        assert_int_equal(cs[i].sent, (int64_t)total);
        assert_memory_equal(cs[i].buf, all, total);
        assert_true(cs[i].resets > 0); /* the test did exercise reconnects */
        free(cs[i].buf);
        fifo_release(&cs[i].inbox);
    }
    free(all);
    asst_stream_unref(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_append_and_snapshot),
        cmocka_unit_test(test_plan),
        cmocka_unit_test(test_snapshot_and_deltas_meet_exactly),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
