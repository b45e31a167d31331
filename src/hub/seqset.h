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

/* One range, the common case, lives in the set itself: checking a live
 * event then reads no memory beyond the connection's session state (one
 * cache line with the fields beside it, hub/chat_int.h struct sess_state),
 * where a separate array was one more cache miss per delivery. Two or more
 * live in an owned array, and the set comes back inside when they merge
 * into one again. Zeroed is empty. */
struct seqset {
    union {
        struct seq_range one; /* n <= 1 */
        struct {
            struct seq_range *r; /* n >= 2: owned; sorted by lo, no two ranges touch */
            size_t cap;
        } heap;
    } u;
    size_t n;
};

/* The ranges, sorted by lo (n of them). Valid until the next add. */
static inline const struct seq_range *seqset_ranges(const struct seqset *s)
{
    return s->n <= 1 ? &s->u.one : s->u.heap.r;
}

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
