/*
 * DESIGN: linear probing at a load of at most 3/4 (ids are mixed well, so
 * probe runs stay short), and deletion by shifting later entries of the
 * same probe run back, so there are no tombstones and lookups stay short
 * however many connections come and go.
 *
 * A slot is one word: the object's address, whose top 16 bits are zero in
 * user space on the 64-bit targets chatd runs on (47- or 48-bit addresses;
 * idmap_put checks), carrying 16 bits of the id's hash there. A probe
 * compares the tag first and reads the id from the object only when the
 * tags match, so a probe past other entries touches only the slot array
 * (one in 65,536 mismatches reads an object). Half the bytes of a slot that
 * keeps the id beside the pointer: 8 bytes per connection at 10,000.
 */
#include "util/idmap.h"

#include <assert.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util/hash.h"

_Static_assert(sizeof(uintptr_t) == 8, "idmap keeps a tag in a pointer's top 16 bits");

#define TAG_SHIFT 48
#define ADDR_MASK (((uintptr_t)1 << TAG_SHIFT) - 1)

/* Mixed bits of key: the slot from the low bits, the tag from the top. */
static inline uint64_t mix(uint64_t key)
{
    return hash_mix64(key); /* ids are sequential within a worker */
}

static inline uintptr_t tag_of(uint64_t h)
{
    return (uintptr_t)(h >> TAG_SHIFT) << TAG_SHIFT;
}

static inline void *obj_of(uintptr_t slot)
{
    return (void *)(slot & ADDR_MASK);
}

static inline uint64_t key_of(const struct idmap *m, uintptr_t slot)
{
    uint64_t k;
    memcpy(&k, (const char *)obj_of(slot) + m->key_off, sizeof k);
    return k;
}

/* The slot holding key, or the empty slot ending its probe run. */
static size_t find(const struct idmap *m, uint64_t key, uint64_t h)
{
    uintptr_t tag = tag_of(h);
    size_t i = (size_t)h & m->mask;
    for (;;) {
        uintptr_t s = m->slots[i];
        if (!s || ((s & ~ADDR_MASK) == tag && key_of(m, s) == key))
            return i;
        i = (i + 1) & m->mask;
    }
}

static int resize(struct idmap *m, size_t cap)
{
    uintptr_t *slots = calloc(cap, sizeof *slots);
    if (!slots)
        return -ENOMEM;
    size_t mask = cap - 1;
    if (m->slots) {
        for (size_t i = 0; i <= m->mask; i++) {
            if (!m->slots[i])
                continue;
            size_t j = (size_t)mix(key_of(m, m->slots[i])) & mask;
            while (slots[j])
                j = (j + 1) & mask;
            slots[j] = m->slots[i];
        }
        free(m->slots);
    }
    m->slots = slots;
    m->mask = mask;
    return 0;
}

int idmap_put(struct idmap *m, uint64_t key, void *val)
{
    assert(key != 0 && val != NULL);
    /* the address must leave the tag's bits free, and the object hold key */
    assert(((uintptr_t)val & ~ADDR_MASK) == 0);
    assert(memcmp((const char *)val + m->key_off, &key, sizeof key) == 0);
    if (((uintptr_t)val & ~ADDR_MASK) != 0)
        return -EINVAL;
    if (!m->slots || (m->count + 1) * 4 > (m->mask + 1) * 3) {
        int rc = resize(m, m->slots ? (m->mask + 1) * 2 : 16);
        if (rc)
            return rc;
    }
    uint64_t h = mix(key);
    size_t i = find(m, key, h);
    if (!m->slots[i])
        m->count++;
    m->slots[i] = tag_of(h) | (uintptr_t)val;
    return 0;
}

void *idmap_get(const struct idmap *m, uint64_t key)
{
    if (!m->slots)
        return NULL;
    uintptr_t s = m->slots[find(m, key, mix(key))];
    return s ? obj_of(s) : NULL;
}

void *idmap_del(struct idmap *m, uint64_t key)
{
    if (!m->slots)
        return NULL;
    size_t i = find(m, key, mix(key));
    if (!m->slots[i])
        return NULL;
    void *val = obj_of(m->slots[i]);
    /* Shift back every later entry whose home slot is not between the hole
     * and its position. */
    size_t hole = i;
    size_t j = i;
    for (;;) {
        j = (j + 1) & m->mask;
        if (!m->slots[j])
            break;
        size_t home = (size_t)mix(key_of(m, m->slots[j])) & m->mask;
        int between = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (between)
            continue;
        m->slots[hole] = m->slots[j];
        hole = j;
    }
    m->slots[hole] = 0;
    m->count--;
    return val;
}

void idmap_release(struct idmap *m)
{
    free(m->slots);
    idmap_init(m, m->key_off);
}
