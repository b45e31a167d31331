/*
 * registry: who is online. Maps a user (the token's `sub`) to the devices
 * (open WebSocket connections) they hold, with each device's worker,
 * connection id and opening time.
 *
 * This is shared state: every worker thread admits and removes devices.
 * Locking: users are spread over REGISTRY_STRIPES stripes by a hash of their
 * id; each stripe has its own mutex (`struct registry_stripe.lock`) that
 * guards every field of the stripe and of the users in it. A call locks
 * exactly one stripe and holds no other lock meanwhile (leaf lock), except
 * registry_foreach, which takes the stripes one at a time in index order.
 *
 * Admission is one atomic step: the count check and the insertion happen
 * under the same stripe lock, so concurrent upgrades of one user can never
 * exceed the limit. Removal is idempotent: the first registry_remove of a
 * device returns 0, any later one -ENOENT, so a connection that ends several
 * ways at once is removed exactly once. Any thread may call any function.
 */
#ifndef CHATD_HUB_REGISTRY_H
#define CHATD_HUB_REGISTRY_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "conf/config.h"
#include "util/rate.h"

#define REGISTRY_STRIPES 64

struct reg_device {
    uint64_t conn_id;
    uint32_t worker;
    int64_t opened_at_ms;
};

struct reg_user;

struct registry_stripe {
    uv_mutex_t lock;
    /* guarded by lock */
    struct reg_user **buckets;
    size_t nbuckets;  /* power of two */
    size_t nusers;
};

struct registry {
    struct registry_stripe stripes[REGISTRY_STRIPES];
    atomic_uint_fast64_t devices; /* total over all users (statistics) */
    atomic_uint_fast64_t users;   /* users with at least one device */
    uint64_t seed;                /* of the user-id hash; read-only after init */
};

enum reg_result {
    REG_ADMITTED = 0, /* the device was added */
    REG_REFUSED,      /* at the limit (refuse policy): nothing changed */
    REG_EVICTED,      /* at the limit (evict-oldest): the oldest left, the new one is in */
};

int registry_init(struct registry *r);
void registry_release(struct registry *r);

/*
 * Admit dev for user (len bytes) under limit max. Returns an enum
 * reg_result, or -ENOMEM. *count is the user's device count afterwards.
 * On REG_REFUSED the user's current devices are copied to others (at most
 * max_others; *nothers says how many), so the caller can notify them. On
 * REG_EVICTED *evicted is the device removed (its later registry_remove
 * returns -ENOENT).
 */
int registry_admit(struct registry *r, const char *user, size_t len, const struct reg_device *dev,
                   unsigned max, enum device_policy policy, unsigned *count,
                   struct reg_device *others, unsigned max_others, unsigned *nothers,
                   struct reg_device *evicted);

/* Remove a device. 0, or -ENOENT if it is not (any longer) registered. */
int registry_remove(struct registry *r, const char *user, size_t len, uint64_t conn_id);

/* How many devices the user has open. */
unsigned registry_count(struct registry *r, const char *user, size_t len);

/* Copy up to cap of the user's devices to out; returns how many copied. */
unsigned registry_devices(struct registry *r, const char *user, size_t len, struct reg_device *out,
                          unsigned cap);

/*
 * Rate limit: take one token from the user's bucket (capacity per_minute,
 * refilled at per_minute per 60 s; full the first time, and kept across
 * reconnects until it is full again). now_ms is clock_mono_ms(). Returns
 * 0 when allowed, or the milliseconds until a token is available. A user who
 * is not online is allowed (nothing to charge).
 */
int64_t registry_take_token(struct registry *r, const char *user, size_t len, unsigned per_minute,
                            int64_t now_ms);

/* Free users with no device whose rate-limit bucket has refilled (they are
 * kept meanwhile so that reconnecting does not reset the limit). Call now and
 * then (now_ms: clock_mono_ms). */
void registry_gc(struct registry *r, int64_t now_ms);

/* Call fn for every online user with their device count. The stripe lock is
 * held during fn: it must not call the registry. */
void registry_foreach(struct registry *r,
                      void (*fn)(void *arg, const char *user, size_t len, unsigned ndevices),
                      void *arg);

#endif
