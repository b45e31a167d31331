/*
 * DESIGN: a striped hash table. A user's record holds a small array of
 * devices kept in admission order, so the oldest device is always devs[0]
 * (what evict-oldest removes). A user whose last device leaves is freed at
 * once if their rate-limit bucket was never used; otherwise the record stays
 * (with no device) until the bucket is full again, so that reconnecting
 * does not refill it, and registry_gc frees it then. The table holds who is
 * online and who left with a partly used bucket.
 */
#include "hub/registry.h"

#include <errno.h>
#include <sys/random.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#include "util/hash.h"

/* One per user online (or with a partly used bucket): idle memory matters,
 * so the record is packed and allocated at the exact size of its id (at most
 * USER_ID_MAX bytes): with an id of up to 10 bytes it is an 80-byte chunk.
 * The hash is not kept: chains are short and ids are compared directly, and
 * maybe_grow hashes the ids again. */
struct reg_user {
    struct reg_user *next; /* bucket chain */
    union {
        struct reg_device one;   /* cap_log2 == 0: the only room (most users have one) */
        struct reg_device *many; /* cap_log2 > 0: an array of 1 << cap_log2 (owned) */
    } d;                         /* oldest first: use devs_of */
    struct rate_bucket bucket; /* chat rate limit; t_ms == 0: never used */
    int64_t full_at_ms;      /* when the bucket will be full again */
    uint32_t ndevs;
    uint8_t cap_log2;
    uint8_t len;
    char id[];
};

#define USER_ID_MAX UINT8_MAX
#define USER_SIZE(len) (offsetof(struct reg_user, id) + (len))

/* User ids come from tokens, so the hash is seeded per process: nobody can
 * choose ids that all land in one bucket. */
static uint64_t hash_id(const struct registry *r, const char *s, size_t len)
{
    return hash_bytes_seeded(s, len, r->seed);
}

int registry_init(struct registry *r)
{
    memset(r, 0, sizeof *r);
    if (getrandom(&r->seed, sizeof r->seed, 0) != (ssize_t)sizeof r->seed)
        r->seed = (uint64_t)(uintptr_t)r ^ (uint64_t)time(NULL) * HASH_FNV64_PRIME;
    for (int i = 0; i < REGISTRY_STRIPES; i++) {
        struct registry_stripe *s = &r->stripes[i];
        if (uv_mutex_init(&s->lock) != 0)
            return -ENOMEM;
        s->nbuckets = 16;
        s->buckets = calloc(s->nbuckets, sizeof *s->buckets);
        if (!s->buckets)
            return -ENOMEM;
    }
    atomic_init(&r->devices, 0);
    atomic_init(&r->users, 0);
    return 0;
}

static struct reg_device *devs_of(struct reg_user *u)
{
    return u->cap_log2 ? u->d.many : &u->d.one;
}

static void free_user(struct reg_user *u)
{
    if (u->cap_log2)
        free(u->d.many);
    free(u);
}

void registry_release(struct registry *r)
{
    for (int i = 0; i < REGISTRY_STRIPES; i++) {
        struct registry_stripe *s = &r->stripes[i];
        for (size_t b = 0; b < s->nbuckets; b++) {
            struct reg_user *u = s->buckets[b];
            while (u) {
                struct reg_user *next = u->next;
                free_user(u);
                u = next;
            }
        }
        free(s->buckets);
        uv_mutex_destroy(&s->lock);
    }
}

static struct registry_stripe *stripe_of(struct registry *r, uint64_t h)
{
    return &r->stripes[h % REGISTRY_STRIPES];
}

/* Bucket index inside a stripe: the stripe used the low bits, use higher. */
static size_t bucket_of(const struct registry_stripe *s, uint64_t h)
{
    return (size_t)(h >> 8) & (s->nbuckets - 1);
}

static struct reg_user **find(struct registry_stripe *s, uint64_t h, const char *id, size_t len)
{
    struct reg_user **p = &s->buckets[bucket_of(s, h)];
    for (; *p; p = &(*p)->next)
        if ((*p)->len == len && memcmp((*p)->id, id, len) == 0)
            return p;
    return p;
}

static void maybe_grow(const struct registry *r, struct registry_stripe *s)
{
    if (s->nusers < s->nbuckets * 2)
        return;
    size_t n = s->nbuckets * 2;
    struct reg_user **b = calloc(n, sizeof *b);
    if (!b)
        return; /* keep the longer chains; still correct */
    for (size_t i = 0; i < s->nbuckets; i++) {
        struct reg_user *u = s->buckets[i];
        while (u) {
            struct reg_user *next = u->next;
            size_t j = (size_t)(hash_id(r, u->id, u->len) >> 8) & (n - 1);
            u->next = b[j];
            b[j] = u;
            u = next;
        }
    }
    free(s->buckets);
    s->buckets = b;
    s->nbuckets = n;
}

static int push_device(struct reg_user *u, const struct reg_device *dev)
{
    if (u->ndevs == 1u << u->cap_log2) {
        /* max_devices is at most 100,000: cap_log2 stays under 18 */
        struct reg_device *d = malloc(((size_t)2 << u->cap_log2) * sizeof *d);
        if (!d)
            return -ENOMEM;
        memcpy(d, devs_of(u), u->ndevs * sizeof *d);
        if (u->cap_log2)
            free(u->d.many);
        u->d.many = d;
        u->cap_log2++;
    }
    devs_of(u)[u->ndevs++] = *dev;
    return 0;
}

int registry_admit(struct registry *r, const char *user, size_t len, const struct reg_device *dev,
                   unsigned max, enum device_policy policy, unsigned *count,
                   struct reg_device *others, unsigned max_others, unsigned *nothers,
                   struct reg_device *evicted)
{
    uint64_t h = hash_id(r, user, len);
    struct registry_stripe *s = stripe_of(r, h);
    int result = REG_ADMITTED;
    *nothers = 0;

    uv_mutex_lock(&s->lock);
    struct reg_user **slot = find(s, h, user, len);
    struct reg_user *u = *slot;
    if (!u) {
        u = len <= USER_ID_MAX ? calloc(1, USER_SIZE(len)) : NULL;
        if (!u) {
            uv_mutex_unlock(&s->lock);
            return -ENOMEM;
        }
        u->len = (uint8_t)len;
        memcpy(u->id, user, len);
        *slot = u;
        s->nusers++;
    }
    if (u->ndevs >= max) {
        if (policy == DEVICE_POLICY_REFUSE || u->ndevs == 0) {
            unsigned n = u->ndevs < max_others ? u->ndevs : max_others;
            memcpy(others, devs_of(u), n * sizeof *others);
            *nothers = n;
            *count = u->ndevs;
            uv_mutex_unlock(&s->lock);
            return REG_REFUSED;
        }
        /* Evict the oldest: shift the rest down, keeping admission order. */
        struct reg_device *devs = devs_of(u);
        *evicted = devs[0];
        memmove(devs, devs + 1, (u->ndevs - 1) * sizeof *devs);
        u->ndevs--;
        atomic_fetch_sub(&r->devices, 1);
        result = REG_EVICTED;
    }
    if (push_device(u, dev) < 0) {
        /* Only possible for a growing array; nothing was evicted then, since
         * eviction frees a slot first. An empty record is left for gc. */
        uv_mutex_unlock(&s->lock);
        return -ENOMEM;
    }
    if (u->ndevs == 1)
        atomic_fetch_add(&r->users, 1);
    atomic_fetch_add(&r->devices, 1);
    *count = u->ndevs;
    maybe_grow(r, s);
    uv_mutex_unlock(&s->lock);
    return result;
}

int registry_remove(struct registry *r, const char *user, size_t len, uint64_t conn_id)
{
    uint64_t h = hash_id(r, user, len);
    struct registry_stripe *s = stripe_of(r, h);
    int rc = -ENOENT;
    uv_mutex_lock(&s->lock);
    struct reg_user **slot = find(s, h, user, len);
    struct reg_user *u = *slot;
    if (u) {
        struct reg_device *devs = devs_of(u);
        for (unsigned i = 0; i < u->ndevs; i++) {
            if (devs[i].conn_id != conn_id)
                continue;
            memmove(devs + i, devs + i + 1, (u->ndevs - i - 1) * sizeof *devs);
            u->ndevs--;
            atomic_fetch_sub(&r->devices, 1);
            rc = 0;
            break;
        }
        if (rc == 0 && u->ndevs == 0) {
            atomic_fetch_sub(&r->users, 1);
            /* Keep a user whose rate-limit bucket is not full yet, so that
             * reconnecting does not refill it; registry_gc frees it later. */
            if (u->bucket.t_ms == 0) {
                *slot = u->next;
                s->nusers--;
                free_user(u);
            }
        }
    }
    uv_mutex_unlock(&s->lock);
    return rc;
}

void registry_gc(struct registry *r, int64_t now_ms)
{
    for (int i = 0; i < REGISTRY_STRIPES; i++) {
        struct registry_stripe *s = &r->stripes[i];
        uv_mutex_lock(&s->lock);
        for (size_t b = 0; b < s->nbuckets; b++) {
            struct reg_user **p = &s->buckets[b];
            while (*p) {
                struct reg_user *u = *p;
                if (u->ndevs == 0 && now_ms >= u->full_at_ms) {
                    *p = u->next;
                    s->nusers--;
                    free_user(u);
                } else {
                    p = &u->next;
                }
            }
        }
        uv_mutex_unlock(&s->lock);
    }
}

unsigned registry_count(struct registry *r, const char *user, size_t len)
{
    uint64_t h = hash_id(r, user, len);
    struct registry_stripe *s = stripe_of(r, h);
    uv_mutex_lock(&s->lock);
    struct reg_user *u = *find(s, h, user, len);
    unsigned n = u ? u->ndevs : 0;
    uv_mutex_unlock(&s->lock);
    return n;
}

unsigned registry_devices(struct registry *r, const char *user, size_t len, struct reg_device *out,
                          unsigned cap)
{
    uint64_t h = hash_id(r, user, len);
    struct registry_stripe *s = stripe_of(r, h);
    uv_mutex_lock(&s->lock);
    struct reg_user *u = *find(s, h, user, len);
    unsigned n = 0;
    if (u) {
        n = u->ndevs < cap ? u->ndevs : cap;
        memcpy(out, devs_of(u), n * sizeof *out);
    }
    uv_mutex_unlock(&s->lock);
    return n;
}

int64_t registry_take_token(struct registry *r, const char *user, size_t len, unsigned per_minute,
                            int64_t now_ms)
{
    uint64_t h = hash_id(r, user, len);
    struct registry_stripe *s = stripe_of(r, h);
    int64_t wait = 0;
    uv_mutex_lock(&s->lock);
    struct reg_user *u = *find(s, h, user, len);
    if (u) {
        wait = rate_take(&u->bucket, now_ms, per_minute, per_minute, 1);
        /* per_minute units (1/60000 token) come back each millisecond. */
        uint64_t missing = (uint64_t)per_minute * RATE_UNIT - u->bucket.level;
        u->full_at_ms = now_ms + (int64_t)(missing / (per_minute ? per_minute : 1)) + 1;
    }
    uv_mutex_unlock(&s->lock);
    return wait;
}

void registry_foreach(struct registry *r,
                      void (*fn)(void *arg, const char *user, size_t len, unsigned ndevices),
                      void *arg)
{
    for (int i = 0; i < REGISTRY_STRIPES; i++) {
        struct registry_stripe *s = &r->stripes[i];
        uv_mutex_lock(&s->lock);
        for (size_t b = 0; b < s->nbuckets; b++)
            for (struct reg_user *u = s->buckets[b]; u; u = u->next)
                if (u->ndevs)
                    fn(arg, u->id, u->len, u->ndevs);
        uv_mutex_unlock(&s->lock);
    }
}
