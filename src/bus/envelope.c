/*
 * DESIGN: one writer and one reader for every message of the Redis bus.
 * Decoding never trusts a length: each read checks what is left, strings
 * must fit their bus_event field, and the count is bounded by what the
 * smallest event takes, so a message cannot make chatd allocate more than
 * a small multiple of its own size.
 */
#include "bus/envelope.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util/vec.h"

#define EVENT_MIN 42 /* bytes of an event with empty strings and no frame */
#define COUNT_AT 11  /* where a batch message keeps its count */

void env_put(struct env_writer *w, const void *src, size_t n)
{
    if (w->oom || !n)
        return;
    if (vec_grow(&w->p, &w->cap, w->n, n, 1) != 0) {
        w->oom = true;
        return;
    }
    memcpy(w->p + w->n, src, n);
    w->n += n;
}

void env_put_u8(struct env_writer *w, uint8_t v)
{
    env_put(w, &v, 1);
}

void env_put_u32(struct env_writer *w, uint32_t v)
{
    uint8_t b[4];
    for (int i = 0; i < 4; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    env_put(w, b, 4);
}

void env_put_u64(struct env_writer *w, uint64_t v)
{
    uint8_t b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    env_put(w, b, 8);
}

void env_put_str(struct env_writer *w, const char *s)
{
    size_t n = strnlen(s, 255);
    env_put_u8(w, (uint8_t)n);
    env_put(w, s, n);
}

void env_begin(struct env_writer *w, uint64_t nonce)
{
    env_put(w, "CB1", 3);
    env_put_u64(w, nonce);
    env_put_u32(w, 0); /* the count, kept up by env_add */
}

void env_add(struct env_writer *w, const struct bus_event *e)
{
    env_put_u8(w, e->kind);
    env_put_u8(w, e->type);
    env_put_u8(w, (uint8_t)(e->failed | e->hint << 1));
    env_put_u32(w, e->worker);
    env_put_u64(w, e->conn_id);
    env_put_u64(w, (uint64_t)e->seq);
    env_put_str(w, e->session);
    env_put_str(w, e->owner);
    env_put_str(w, e->stream);
    env_put_u64(w, e->stream_off);
    env_put_u32(w, e->stream_len);
    uint32_t flen = e->frame ? e->len : 0;
    env_put_u32(w, flen);
    if (flen)
        env_put(w, e->frame->data + e->off, flen);
    if (w->oom || w->n < COUNT_AT + 4)
        return;
    uint32_t count = 0;
    for (int k = 0; k < 4; k++)
        count |= (uint32_t)w->p[COUNT_AT + k] << (8 * k);
    count++;
    for (int k = 0; k < 4; k++)
        w->p[COUNT_AT + k] = (uint8_t)(count >> (8 * k));
}

const uint8_t *env_take(struct env_reader *r, size_t n)
{
    if (r->bad || r->n - r->at < n) {
        r->bad = true;
        return NULL;
    }
    const uint8_t *p = r->p + r->at;
    r->at += n;
    return p;
}

uint64_t env_get_le(struct env_reader *r, int bytes)
{
    const uint8_t *p = env_take(r, (size_t)bytes);
    uint64_t v = 0;
    for (int i = 0; p && i < bytes; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

void env_get_str(struct env_reader *r, char *dst, size_t cap)
{
    size_t n = (size_t)env_get_le(r, 1);
    const uint8_t *p = env_take(r, n);
    if (!p || n >= cap) {
        r->bad = true;
        dst[0] = 0;
        return;
    }
    memcpy(dst, p, n);
    dst[n] = 0;
}

int env_decode(const void *data, size_t len, uint64_t *nonce, struct bus_event **out, uint32_t *n,
               struct sbuf **frames)
{
    struct env_reader rb = {.p = data, .n = len};
    const uint8_t *magic = env_take(&rb, 3);
    *nonce = env_get_le(&rb, 8);
    uint32_t count = (uint32_t)env_get_le(&rb, 4);
    if (rb.bad || memcmp(magic, "CB1", 3) != 0 || count == 0 || count > len / EVENT_MIN)
        return -EBADMSG;
    struct bus_event *ev = calloc(count, sizeof *ev);
    struct sbuf *copy = len <= UINT32_MAX ? sbuf_new((uint32_t)len) : NULL;
    if (!ev || !copy) {
        free(ev);
        if (copy)
            sbuf_unref(copy);
        return -ENOMEM;
    }
    memcpy(copy->data, data, len);
    copy->len = (uint32_t)len;
    bool framed = false;
    for (uint32_t i = 0; i < count && !rb.bad; i++) {
        struct bus_event *e = &ev[i];
        e->kind = (uint8_t)env_get_le(&rb, 1);
        e->type = (uint8_t)env_get_le(&rb, 1);
        uint8_t flags = (uint8_t)env_get_le(&rb, 1);
        e->failed = flags & 1;
        e->hint = (flags & 2) != 0;
        e->worker = (uint32_t)env_get_le(&rb, 4);
        e->conn_id = env_get_le(&rb, 8);
        e->seq = (int64_t)env_get_le(&rb, 8);
        env_get_str(&rb, e->session, sizeof e->session);
        env_get_str(&rb, e->owner, sizeof e->owner);
        env_get_str(&rb, e->stream, sizeof e->stream);
        e->stream_off = env_get_le(&rb, 8);
        e->stream_len = (uint32_t)env_get_le(&rb, 4);
        uint32_t flen = (uint32_t)env_get_le(&rb, 4);
        size_t at = rb.at;
        if (flen && env_take(&rb, flen)) {
            e->frame = copy;
            e->off = (uint32_t)at;
            e->len = flen;
            framed = true;
        }
    }
    if (rb.bad || rb.at != len) {
        free(ev);
        sbuf_unref(copy);
        return -EBADMSG;
    }
    if (!framed) {
        sbuf_unref(copy);
        copy = NULL;
        for (uint32_t i = 0; i < count; i++)
            ev[i].frame = NULL;
    }
    *out = ev;
    *n = count;
    *frames = copy;
    return 0;
}
