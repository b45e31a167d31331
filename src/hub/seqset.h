/*
 * seqset: the set of seqs of one session that one connection has been sent,
 * kept as sorted, merged, disjoint ranges. One range in the common case
 * (live events in order); more when a replay fills a hole below live events
 * already sent, or an admin left and joined again.
 *
 * It is what makes resume exact: a live event is sent only if its seq is
 * not in the set, a replayed one likewise, and either adds it. Owned by the
 * connection's worker thread (inside the client's per-session state); no
 * lock.
 */
#ifndef CHATD_HUB_SEQSET_H
#define CHATD_HUB_SEQSET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct seq_range {
    int64_t lo, hi; /* inclusive */
};

struct seqset {
    size_t n, cap;
    struct seq_range *r; /* owned; sorted by lo, no two ranges touch */
};

/* Is seq in the set? */
bool seqset_has(const struct seqset *s, int64_t seq);
/* The highest seq in the set, 0 when empty. */
int64_t seqset_max(const struct seqset *s);
/* Add seq (merging ranges that come to touch). 0, or -ENOMEM with the set
 * unchanged: the caller may then send the event again later, never skip
 * one. */
int seqset_add(struct seqset *s, int64_t seq);
/* Free the ranges; the set is empty and usable again. */
void seqset_release(struct seqset *s);

#endif
