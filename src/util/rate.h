/*
 * rate: a token bucket, the one rate limiter of chatd.
 *
 * A bucket holds up to `burst` tokens and gains `per_min` tokens a minute
 * (a rate per second is 60 times that); an action costs some tokens and is
 * allowed only when the bucket holds them. Levels are kept in units of
 * 1/60000 token, so that a rate of N a minute adds exactly N units a
 * millisecond: no rounding at any rate. A zeroed bucket is full at its first
 * use. Not thread-safe: a bucket belongs to one thread (a connection's
 * worker) or is guarded by its owner's lock (the registry's stripes).
 */
#ifndef CHATD_UTIL_RATE_H
#define CHATD_UTIL_RATE_H

#include <assert.h>
#include <stdbool.h>
#include <stdint.h>

#define RATE_UNIT 60000u /* units in one token */

struct rate_bucket {
    uint64_t level; /* 1/60000 tokens */
    int64_t t_ms;   /* when level was last brought up to date; 0: never used */
};

/* Bring the bucket up to now_ms. */
static inline void rate_refill(struct rate_bucket *b, int64_t now_ms, uint64_t per_min,
                               uint64_t burst)
{
    uint64_t cap = burst * RATE_UNIT;
    assert(now_ms > 0); /* 0 marks a bucket never used */
    if (b->t_ms == 0) {
        b->level = cap;
        b->t_ms = now_ms;
        return;
    }
    if (now_ms <= b->t_ms)
        return;
    uint64_t dt = (uint64_t)(now_ms - b->t_ms);
    /* per_min tokens a minute is per_min units a millisecond. */
    uint64_t room = cap - (b->level < cap ? b->level : cap);
    if (per_min == 0 || dt >= room / per_min + 1)
        b->level = per_min ? cap : b->level;
    else
        b->level += dt * per_min;
    b->t_ms = now_ms;
}

/*
 * Take cost tokens at now_ms. Returns 0 when allowed, else how many
 * milliseconds until the bucket would hold them (nothing is taken then).
 */
static inline int64_t rate_take(struct rate_bucket *b, int64_t now_ms, uint64_t per_min,
                                uint64_t burst, uint64_t cost)
{
    rate_refill(b, now_ms, per_min, burst);
    uint64_t need = cost * RATE_UNIT;
    if (b->level >= need) {
        b->level -= need;
        return 0;
    }
    if (per_min == 0)
        return INT64_MAX;
    return (int64_t)((need - b->level + per_min - 1) / per_min);
}

/* Take cost tokens even when the bucket holds fewer (it empties); true when
 * it held enough. For budgets that count what already happened (bytes
 * read). */
static inline bool rate_charge(struct rate_bucket *b, int64_t now_ms, uint64_t per_min,
                               uint64_t burst, uint64_t cost)
{
    if (rate_take(b, now_ms, per_min, burst, cost) == 0)
        return true;
    b->level = 0;
    return false;
}

#endif
