/*
 * envelope: the bytes the Redis bus puts in one PUBLISH, and reads back.
 *
 * A batch message carries events of one shard, in order (binary,
 * little-endian):
 *   "CB1" | node nonce u64 | count u32 | count x event
 *   event: kind u8 | type u8 | flags u8 (1 failed, 2 hint) | worker u32
 *          | conn_id u64 | seq i64
 *          | session (u8 len, bytes) | owner (u8 len, bytes)
 *          | stream (u8 len, bytes) | stream_off u64 | stream_len u32
 *          | frame (u32 len, bytes)
 * Control messages (bus/redis.c) use the same writer and reader.
 *
 * Pure functions over memory: any thread. What Redis hands back is read
 * with every length checked against what is left, so a damaged or hostile
 * message is refused whole (fuzz/fuzz_envelope.c).
 */
#ifndef CHATD_BUS_ENVELOPE_H
#define CHATD_BUS_ENVELOPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bus/bus.h"
#include "util/sbuf.h"

/* A growing message. oom: a write failed (the message is unusable). */
struct env_writer {
    uint8_t *p; /* owned: free() */
    size_t n, cap;
    bool oom;
};

void env_put(struct env_writer *w, const void *src, size_t n);
void env_put_u8(struct env_writer *w, uint8_t v);
void env_put_u32(struct env_writer *w, uint32_t v);
void env_put_u64(struct env_writer *w, uint64_t v);
/* A string of at most 255 bytes (longer is cut). */
void env_put_str(struct env_writer *w, const char *s);

/* Start a batch message from node `nonce`; then env_add each event. */
void env_begin(struct env_writer *w, uint64_t nonce);
void env_add(struct env_writer *w, const struct bus_event *e);

/* Reading: every read past the end, or a string too long for its field,
 * sets bad (and yields zeros): check bad once at the end. */
struct env_reader {
    const uint8_t *p;
    size_t n, at;
    bool bad;
};

const uint8_t *env_take(struct env_reader *r, size_t n);
uint64_t env_get_le(struct env_reader *r, int bytes);
void env_get_str(struct env_reader *r, char *dst, size_t cap);

/* Read a batch message: 0 with its node's nonce, *ev (calloc'd, *n events,
 * at least one) and *frames (one reference to a copy of the message that
 * the events' frames point into, or NULL when none has a frame); -EBADMSG
 * when it is not one (a wrong tag, a length past the end, bytes left
 * over); -ENOMEM. The events' remote, worker and conn_id are as sent. */
int env_decode(const void *data, size_t len, uint64_t *nonce, struct bus_event **ev, uint32_t *n,
               struct sbuf **frames);

#endif
