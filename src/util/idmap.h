/*
 * idmap: a hash map from a nonzero 64-bit id to the object that holds it,
 * open addressing.
 *
 * Each worker keeps one to find its connections by id when a message for a
 * connection arrives in its inbox (a slot per connection: 8 bytes at a load
 * of at most 3/4). The id is not stored in the map: every object keeps its
 * own as a uint64_t at the offset given to idmap_init, and the map reads it
 * there. Not thread-safe: owned and used by one thread.
 */
#ifndef CHATD_UTIL_IDMAP_H
#define CHATD_UTIL_IDMAP_H

#include <stddef.h>
#include <stdint.h>

struct idmap {
    size_t count;
    size_t mask;     /* capacity - 1; capacity is a power of two, 0 when empty */
    uintptr_t *slots; /* 0: empty; else the object's address, tag in the top 16 bits */
    size_t key_off;  /* where an object keeps its id */
};

/* key_off: offsetof the object's uint64_t id. */
static inline void idmap_init(struct idmap *m, size_t key_off)
{
    m->count = 0;
    m->mask = 0;
    m->slots = NULL;
    m->key_off = key_off;
}
/* Insert val, whose id (at key_off) is key, or replace the object with
 * that id. 0, -ENOMEM, or -EINVAL for an address using the top 16 bits
 * (never on Linux's 47/48-bit user space). key must not be 0. */
int idmap_put(struct idmap *m, uint64_t key, void *val);
/* The object with id key, or NULL. */
void *idmap_get(const struct idmap *m, uint64_t key);
/* Remove key; returns its object or NULL. */
void *idmap_del(struct idmap *m, uint64_t key);
void idmap_release(struct idmap *m);

#endif
