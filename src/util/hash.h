/*
 * hash: the one string and byte hash of chatd, and the one integer mix.
 *
 * hash_bytes is 64-bit FNV-1a followed by a final mix (the MurmurHash3
 * 64-bit finaliser), so every output bit depends on every input bit and a
 * table may take its bucket from the low bits and its lock stripe from any
 * other bits (the registry does both). FNV-1a alone leaves the low bits of
 * short, similar keys ("user-1", "user-2", ...) poorly spread. The final mix
 * is a bijection: it never merges two FNV values, so it adds no collision.
 * hash_mix64 is that finaliser alone, for integer keys such as connection ids
 * that are sequential within a worker (idmap).
 *
 * Choosing: a table keyed by strings that a client chooses (user ids from a
 * token's `sub`, session ids, client message ids) can be fed keys that all
 * land in one bucket, and then every lookup walks one long chain. Such a
 * table must either hash with a per-process seed (hash_bytes_seeded with a
 * seed drawn once at start, for instance from getrandom(2)), so that
 * collisions cannot be computed ahead of time, or bound what a chain or the
 * table may hold, or both. A seed defeats collision lists made offline; it is
 * not a keyed MAC (FNV is not SipHash), so a table that holds many entries of
 * one client's choosing still needs its bound. Keys chatd makes itself
 * (sequential ids) need neither.
 *
 * The values are stable: the same bytes and seed give the same hash on every
 * run and build (tests pin them), so a hash may appear in logs or tests but
 * must not be stored across versions as a format.
 *
 * Pure and inline: any thread.
 */
#ifndef CHATD_UTIL_HASH_H
#define CHATD_UTIL_HASH_H

#include <stddef.h>
#include <stdint.h>

#define HASH_FNV64_OFFSET 0xcbf29ce484222325ULL /* 14695981039346656037 */
#define HASH_FNV64_PRIME 0x100000001b3ULL       /* 1099511628211 */

/* Plain 64-bit FNV-1a of n bytes, unmixed: the reference values of FNV. Use
 * hash_bytes for tables; this is here for it and for its tests. */
static inline uint64_t hash_fnv1a(const void *p, size_t n, uint64_t h)
{
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= HASH_FNV64_PRIME;
    }
    return h;
}

/* Spread the bits of x over the whole word (MurmurHash3 fmix64). A
 * bijection: distinct inputs give distinct outputs; 0 maps to 0. */
static inline uint64_t hash_mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

/* Hash n bytes with a seed (see "Choosing" above). Seed 0 gives hash_bytes. */
static inline uint64_t hash_bytes_seeded(const void *p, size_t n, uint64_t seed)
{
    return hash_mix64(hash_fnv1a(p, n, HASH_FNV64_OFFSET ^ seed));
}

/* Hash n bytes: wire data as (ptr, len), embedded NULs included. */
static inline uint64_t hash_bytes(const void *p, size_t n)
{
    return hash_bytes_seeded(p, n, 0);
}

/* Hash a NUL-terminated string (the NUL excluded): equal to
 * hash_bytes(s, strlen(s)), so a table may mix both forms of one key. */
static inline uint64_t hash_str(const char *s)
{
    uint64_t h = HASH_FNV64_OFFSET;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= HASH_FNV64_PRIME;
    }
    return hash_mix64(h);
}

#endif
