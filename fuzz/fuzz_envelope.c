/*
 * libFuzzer driver for the Redis bus's message decoder (src/bus/envelope.c).
 *
 * DESIGN: the input is what Redis hands a node as one PUBLISH payload. A
 * refused message must be refused whole (no event out); an accepted one
 * must describe only bytes inside it: every frame within the decoded copy,
 * every string terminated inside its field, at least one event and no more
 * than the message could hold. Then the events are written again with the
 * encoder and read back: the second reading must give the same events,
 * field by field and byte by byte (the encoder and decoder agree). The
 * same bytes also go through the control-message reader (env_reader),
 * which must never read outside them. A broken invariant calls abort().
 */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

#include "bus/envelope.h"

static void check_event(const struct bus_event *e, const struct sbuf *frames)
{
    CHECK(strnlen(e->session, sizeof e->session) < sizeof e->session);
    CHECK(strnlen(e->owner, sizeof e->owner) < sizeof e->owner);
    CHECK(strnlen(e->stream, sizeof e->stream) < sizeof e->stream);
    if (e->frame) {
        CHECK(e->frame == frames);
        CHECK(e->len > 0 && (uint64_t)e->off + e->len <= frames->len);
    }
}

static bool same(const struct bus_event *a, const struct bus_event *b)
{
    if (a->kind != b->kind || a->type != b->type || a->failed != b->failed || a->hint != b->hint ||
        a->worker != b->worker || a->conn_id != b->conn_id || a->seq != b->seq ||
        a->stream_off != b->stream_off || a->stream_len != b->stream_len ||
        strcmp(a->session, b->session) != 0 || strcmp(a->owner, b->owner) != 0 ||
        strcmp(a->stream, b->stream) != 0 || !a->frame != !b->frame)
        return false;
    return !a->frame || (a->len == b->len &&
                         memcmp(a->frame->data + a->off, b->frame->data + b->off, a->len) == 0);
}

/* The control messages' shape, read as redis.c reads them. */
static void read_control(const uint8_t *data, size_t size)
{
    struct env_reader r = {.p = data, .n = size};
    const uint8_t *magic = env_take(&r, 3);
    char user[BUS_USER_MAX + 1], session[BUS_SESSION_MAX + 1];
    if (magic && memcmp(magic, "CK1", 3) == 0) {
        env_get_le(&r, 8);
        env_get_le(&r, 8);
        env_get_str(&r, user, sizeof user);
        CHECK(r.bad || strnlen(user, sizeof user) < sizeof user);
    } else if (magic) {
        env_get_str(&r, session, sizeof session);
        CHECK(r.bad || strnlen(session, sizeof session) < sizeof session);
    }
    CHECK(r.at <= size);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    read_control(data, size);
    uint64_t nonce = 0;
    struct bus_event *ev = NULL;
    uint32_t n = 0;
    struct sbuf *frames = NULL;
    int rc = env_decode(data, size, &nonce, &ev, &n, &frames);
    if (rc != 0) {
        CHECK(rc == -EBADMSG || rc == -ENOMEM);
        return 0;
    }
    CHECK(ev && n >= 1 && n <= size / 42);
    if (frames)
        CHECK(frames->len == size && memcmp(frames->data, data, size) == 0);
    for (uint32_t i = 0; i < n; i++)
        check_event(&ev[i], frames);

    struct env_writer w = {0};
    env_begin(&w, nonce);
    for (uint32_t i = 0; i < n; i++)
        env_add(&w, &ev[i]);
    CHECK(!w.oom);
    uint64_t nonce2 = 0;
    struct bus_event *ev2 = NULL;
    uint32_t n2 = 0;
    struct sbuf *frames2 = NULL;
    CHECK(env_decode(w.p, w.n, &nonce2, &ev2, &n2, &frames2) == 0);
    CHECK(nonce2 == nonce && n2 == n);
    for (uint32_t i = 0; i < n; i++)
        CHECK(same(&ev[i], &ev2[i]));
    free(w.p);
    free(ev2);
    if (frames2)
        sbuf_unref(frames2);
    free(ev);
    if (frames)
        sbuf_unref(frames);
    return 0;
}
