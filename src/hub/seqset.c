/*
 * DESIGN: a sorted array of ranges, searched from the top: live events come
 * in rising order, so the common add extends the last range in O(1). A
 * single range is kept inside the set (seqset.h); the array exists only
 * while there are two or more.
 */
#include "hub/seqset.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util/vec.h"

bool seqset_has(const struct seqset *s, int64_t seq)
{
    const struct seq_range *r = seqset_ranges(s);
    for (size_t i = s->n; i-- > 0;) {
        if (seq > r[i].hi)
            return false; /* above this range, and the ranges below are lower */
        if (seq >= r[i].lo)
            return true;
    }
    return false;
}

int64_t seqset_max(const struct seqset *s)
{
    return s->n ? seqset_ranges(s)[s->n - 1].hi : 0;
}

/* The ranges, to change them (seqset_ranges is the reading side). */
static struct seq_range *ranges(struct seqset *s)
{
    return s->n <= 1 ? &s->u.one : s->u.heap.r;
}

/* Make room for one more range, moving the inside one out to an array
 * when it is the first to be joined by a second. */
static int make_room(struct seqset *s)
{
    if (s->n == 0)
        return 0;
    if (s->n == 1) {
        struct seq_range *r = NULL;
        size_t cap = 0;
        if (vec_grow(&r, &cap, 0, 2, sizeof *r) != 0)
            return -ENOMEM;
        r[0] = s->u.one;
        s->u.heap.r = r;
        s->u.heap.cap = cap;
        return 0;
    }
    return vec_grow(&s->u.heap.r, &s->u.heap.cap, s->n, 1, sizeof *s->u.heap.r);
}

int seqset_add(struct seqset *s, int64_t seq)
{
    struct seq_range *r = ranges(s);
    size_t i = s->n;
    while (i > 0 && r[i - 1].lo > seq)
        i--;
    /* Here r[i - 1].lo <= seq < r[i].lo. */
    bool join_prev = i > 0 && r[i - 1].hi + 1 >= seq;
    bool join_next = i < s->n && r[i].lo - 1 == seq;
    if (join_prev && join_next) {
        r[i - 1].hi = r[i].hi;
        memmove(&r[i], &r[i + 1], (s->n - i - 1) * sizeof *r);
        if (--s->n == 1) { /* one range again: back inside */
            struct seq_range one = r[0];
            free(r);
            s->u.one = one;
        }
    } else if (join_prev) {
        if (r[i - 1].hi < seq)
            r[i - 1].hi = seq;
    } else if (join_next) {
        r[i].lo = seq;
    } else {
        if (make_room(s) != 0)
            return -ENOMEM;
        s->n++;
        r = ranges(s);
        memmove(&r[i + 1], &r[i], (s->n - 1 - i) * sizeof *r);
        r[i].lo = r[i].hi = seq;
    }
#ifndef NDEBUG
    const struct seq_range *c = seqset_ranges(s);
    for (size_t k = 1; k < s->n; k++)
        assert(c[k - 1].hi + 1 < c[k].lo); /* sorted, disjoint, not touching */
#endif
    return 0;
}

void seqset_release(struct seqset *s)
{
    if (s->n >= 2)
        free(s->u.heap.r);
    memset(s, 0, sizeof *s);
}
