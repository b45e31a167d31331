/*
 * DESIGN: a sorted array of ranges, searched from the top: live events come
 * in rising order, so the common add extends the last range in O(1).
 */
#include "hub/seqset.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util/vec.h"

bool seqset_has(const struct seqset *s, int64_t seq)
{
    for (size_t i = s->n; i-- > 0;) {
        if (seq > s->r[i].hi)
            return false; /* above this range, and the ranges below are lower */
        if (seq >= s->r[i].lo)
            return true;
    }
    return false;
}

int64_t seqset_max(const struct seqset *s)
{
    return s->n ? s->r[s->n - 1].hi : 0;
}

int seqset_add(struct seqset *s, int64_t seq)
{
    size_t i = s->n;
    while (i > 0 && s->r[i - 1].lo > seq)
        i--;
    /* Here r[i - 1].lo <= seq < r[i].lo. */
    bool join_prev = i > 0 && s->r[i - 1].hi + 1 >= seq;
    bool join_next = i < s->n && s->r[i].lo - 1 == seq;
    if (join_prev && join_next) {
        s->r[i - 1].hi = s->r[i].hi;
        memmove(&s->r[i], &s->r[i + 1], (s->n - i - 1) * sizeof *s->r);
        s->n--;
    } else if (join_prev) {
        if (s->r[i - 1].hi < seq)
            s->r[i - 1].hi = seq;
    } else if (join_next) {
        s->r[i].lo = seq;
    } else {
        if (vec_grow(&s->r, &s->cap, s->n, 1, sizeof *s->r) != 0)
            return -ENOMEM;
        memmove(&s->r[i + 1], &s->r[i], (s->n - i) * sizeof *s->r);
        s->r[i].lo = s->r[i].hi = seq;
        s->n++;
    }
#ifndef NDEBUG
    for (size_t k = 1; k < s->n; k++)
        assert(s->r[k - 1].hi + 1 < s->r[k].lo); /* sorted, disjoint, not touching */
#endif
    return 0;
}

void seqset_release(struct seqset *s)
{
    free(s->r);
    s->r = NULL;
    s->n = s->cap = 0;
}
