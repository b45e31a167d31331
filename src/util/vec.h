/*
 * vec: growable arrays, written once.
 *
 * Two ways in:
 *   - A typed vector, VEC(type), for new code:
 *         VEC(struct client *) subs = VEC_INIT;
 *         if (vec_push(&subs, cl) != 0)
 *             return -ENOMEM;
 *         for (size_t i = 0; i < subs.len; i++) ... subs.items[i] ...
 *         vec_release(&subs);
 *   - vec_grow on an array the caller already keeps as (pointer, length,
 *     capacity), which is how the hand-written growth blocks of chatd look
 *     today ("if (n == cap) { cap = cap ? cap * 2 : K; realloc ... }"):
 *         if ((rc = vec_grow(&l->v, &l->cap, l->n, 1, sizeof *l->v)) != 0)
 *             return rc;
 *         l->v[l->n++] = cl;
 *     The capacity must then be a size_t (adopting means changing an
 *     `unsigned cap` field to size_t); the length may be any unsigned type
 *     that the caller keeps in range.
 *
 * Growth doubles the capacity (as many times as it takes to hold what is
 * asked), starting at VEC_MIN_CAP elements, so n pushes cost O(n) copies in
 * all. Every size computation is checked: a request whose byte count would
 * not fit in size_t fails with -ENOMEM like an allocation that fails, and in
 * both cases the old array, its length and its capacity are left exactly as
 * they were (realloc's failure keeps the old block; we keep the pointer).
 *
 * Not thread-safe: a vector belongs to one thread, or is guarded by its
 * owner's lock, as the owner's header says. Growth moves the elements, so a
 * pointer into the array is valid only until the next growth.
 */
#ifndef CHATD_UTIL_VEC_H
#define CHATD_UTIL_VEC_H

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>

#define VEC_MIN_CAP 4 /* elements of the first allocation, unless more are asked */

/* A typed vector: items (owned, NULL when cap is 0), len used of cap. Each
 * use spells a new anonymous struct type, so a vector that is passed between
 * functions gets a name once: typedef VEC(struct client *) client_vec; */
#define VEC(type)                                                                                  \
    struct {                                                                                       \
        type *items;                                                                               \
        size_t len;                                                                                \
        size_t cap;                                                                                \
    }

#define VEC_INIT                                                                                   \
    {                                                                                              \
        NULL, 0, 0                                                                                 \
    }

/*
 * Make room for n more elements after the first len in the array *itemsp of
 * *cap elements of elem_size bytes each: afterwards *cap >= len + n.
 * itemsp is the address of the caller's array pointer (a `T **` passed as
 * void *, so that any element type fits without a cast). Returns 0 (also
 * when there was room already), or -ENOMEM with *itemsp and *cap unchanged.
 */
int vec_grow(void *itemsp, size_t *cap, size_t len, size_t n, size_t elem_size);

/* Make room for n more elements in a VEC. 0 or -ENOMEM (v unchanged).
 * v is evaluated more than once. */
#define vec_reserve(v, n) vec_grow(&(v)->items, &(v)->cap, (v)->len, (n), sizeof *(v)->items)

/* Append x to a VEC. 0 or -ENOMEM (v unchanged). v is evaluated more than
 * once, x once and only on success. */
#define vec_push(v, x) (vec_reserve((v), 1) != 0 ? -ENOMEM : ((v)->items[(v)->len++] = (x), 0))

/* Free a VEC's array and leave it empty and reusable. Takes no element's
 * ownership: free what the elements own first. */
#define vec_release(v) (free((v)->items), (v)->items = NULL, (v)->len = (v)->cap = 0)

#endif
