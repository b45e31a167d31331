/*
 * DESIGN: linear probing at a load of at most 3/4 (ids are mixed well, so
 * probe runs stay short), and deletion by shifting
 * later entries of the same probe run back, so there are no tombstones and
 * lookups stay short however many connections come and go.
 */
#include "util/idmap.h"

#include <errno.h>
#include <stdlib.h>

#include "util/hash.h"

static size_t slot_of(uint64_t key, size_t mask)
{
    /* Mix the bits: ids are sequential within a worker. */
    return (size_t)hash_mix64(key) & mask;
}

static int resize(struct idmap *m, size_t cap)
{
    struct idmap_slot *slots = calloc(cap, sizeof *slots);
    if (!slots)
        return -ENOMEM;
    size_t mask = cap - 1;
    if (m->slots) {
        for (size_t i = 0; i <= m->mask; i++) {
            if (!m->slots[i].key)
                continue;
            size_t j = slot_of(m->slots[i].key, mask);
            while (slots[j].key)
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
    if (!m->slots || (m->count + 1) * 4 > (m->mask + 1) * 3) {
        int rc = resize(m, m->slots ? (m->mask + 1) * 2 : 16);
        if (rc)
            return rc;
    }
    size_t i = slot_of(key, m->mask);
    while (m->slots[i].key && m->slots[i].key != key)
        i = (i + 1) & m->mask;
    if (!m->slots[i].key)
        m->count++;
    m->slots[i].key = key;
    m->slots[i].val = val;
    return 0;
}

void *idmap_get(const struct idmap *m, uint64_t key)
{
    if (!m->slots)
        return NULL;
    size_t i = slot_of(key, m->mask);
    while (m->slots[i].key) {
        if (m->slots[i].key == key)
            return m->slots[i].val;
        i = (i + 1) & m->mask;
    }
    return NULL;
}

void *idmap_del(struct idmap *m, uint64_t key)
{
    if (!m->slots)
        return NULL;
    size_t i = slot_of(key, m->mask);
    while (m->slots[i].key && m->slots[i].key != key)
        i = (i + 1) & m->mask;
    if (!m->slots[i].key)
        return NULL;
    void *val = m->slots[i].val;
    /* Shift back every later entry whose home slot is not between the hole
     * and its position. */
    size_t hole = i;
    size_t j = i;
    for (;;) {
        j = (j + 1) & m->mask;
        if (!m->slots[j].key)
            break;
        size_t home = slot_of(m->slots[j].key, m->mask);
        int between = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (between)
            continue;
        m->slots[hole] = m->slots[j];
        hole = j;
    }
    m->slots[hole].key = 0;
    m->slots[hole].val = NULL;
    m->count--;
    return val;
}

void idmap_release(struct idmap *m)
{
    free(m->slots);
    idmap_init(m);
}
