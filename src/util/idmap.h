/*
 * idmap: a hash map from a nonzero 64-bit id to a pointer, open addressing.
 *
 * Each worker keeps one to find its connections by id when a message for a
 * connection arrives in its inbox. Not thread-safe: owned and used by one
 * thread.
 */
#ifndef CHATD_UTIL_IDMAP_H
#define CHATD_UTIL_IDMAP_H

#include <stddef.h>
#include <stdint.h>

struct idmap_slot {
    uint64_t key; /* 0: empty */
    void *val;
};

struct idmap {
    size_t count;
    size_t mask; /* capacity - 1; capacity is a power of two, 0 when empty */
    struct idmap_slot *slots;
};

static inline void idmap_init(struct idmap *m)
{
    m->count = 0;
    m->mask = 0;
    m->slots = NULL;
}
/* Insert or replace. 0 or -ENOMEM. key must not be 0. */
int idmap_put(struct idmap *m, uint64_t key, void *val);
/* The value for key, or NULL. */
void *idmap_get(const struct idmap *m, uint64_t key);
/* Remove key; returns its value or NULL. */
void *idmap_del(struct idmap *m, uint64_t key);
void idmap_release(struct idmap *m);

#endif
