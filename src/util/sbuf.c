/*
 * DESIGN: the last unref frees; acquire/release ordering on the count makes
 * every write a thread did to the bytes before dropping its reference visible
 * to the thread that frees them.
 */
#include "util/sbuf.h"

#include <stdlib.h>

struct sbuf *sbuf_new(uint32_t cap)
{
    struct sbuf *b = malloc(sizeof *b + cap);
    if (!b)
        return NULL;
    atomic_init(&b->refs, 1);
    b->len = 0;
    b->cap = cap;
    return b;
}

void sbuf_unref(struct sbuf *b)
{
    if (atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) == 1)
        free(b);
}
