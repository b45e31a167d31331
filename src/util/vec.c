/*
 * DESIGN: one out-of-line function behind the typed macros, so the growth
 * rule and its overflow checks exist once. The caller's array pointer is
 * read and written through memcpy rather than through a `void **`, which
 * would alias a `T **` under another type: the function works for any T
 * without breaking C's aliasing rules. It does assume that a T * and a
 * void * share one representation, as on every platform chatd builds for.
 */
#include "util/vec.h"

#include <assert.h>
#include <stdint.h>
#include <string.h>

int vec_grow(void *itemsp, size_t *cap, size_t len, size_t n, size_t elem_size)
{
    assert(elem_size > 0);
    assert(len <= *cap);
    if (n > SIZE_MAX - len)
        return -ENOMEM;
    size_t need = len + n;
    if (need <= *cap)
        return 0;
    size_t ncap = *cap ? *cap : VEC_MIN_CAP;
    while (ncap < need)
        ncap = ncap > SIZE_MAX / 2 ? need : ncap * 2;
    /* Doubling past what size_t can count in bytes: settle for exactly
     * what is needed, which may still fit. */
    if (ncap > SIZE_MAX / elem_size)
        ncap = need;
    if (ncap > SIZE_MAX / elem_size)
        return -ENOMEM;
    void *old;
    memcpy(&old, itemsp, sizeof old);
    void *p = realloc(old, ncap * elem_size);
    if (!p)
        return -ENOMEM;
    memcpy(itemsp, &p, sizeof p);
    *cap = ncap;
    return 0;
}
