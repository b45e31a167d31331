/*
 * words: tests of 8 bytes at a time, for scanning text (JSON strings, the
 * JSON reader's and writer's hot loops).
 *
 * A byte below k (k <= 0x80) sets its high bit in x - k * WORD_ONES; a borrow
 * only ever comes from a byte that matched and goes to the more significant
 * ones, so the least significant byte whose high bit is set in a result is
 * the first that matched, and a word with none that matches gives 0. Past
 * the first marked byte the bits say nothing.
 */
#ifndef CHATD_UTIL_WORDS_H
#define CHATD_UTIL_WORDS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define WORD_ONES 0x0101010101010101ULL
#define WORD_HIGHS 0x8080808080808080ULL

/* The 8 bytes at p, the first the least significant. */
static inline uint64_t word_at(const void *p)
{
    uint64_t x;
    memcpy(&x, p, sizeof x);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    x = __builtin_bswap64(x);
#endif
    return x;
}

/* The high bits of the quotes and backslashes in x. */
static inline uint64_t quote_or_bs(uint64_t x)
{
    uint64_t q = x ^ (WORD_ONES * '"'), b = x ^ (WORD_ONES * '\\');
    return (((q - WORD_ONES) & ~q) | ((b - WORD_ONES) & ~b)) & WORD_HIGHS;
}

/* The high bits of the bytes of x a JSON string must escape: a quote, a
 * backslash, a control byte (below 0x20). Bytes from 0x80 up go as they
 * are. */
static inline uint64_t json_escapes(uint64_t x)
{
    return quote_or_bs(x) | ((x - WORD_ONES * 0x20) & ~x & WORD_HIGHS);
}

/* Where the first byte a non-zero mask marks is, in bytes from the word's
 * first (the lowest address). */
static inline size_t first_marked(uint64_t m)
{
    return (size_t)__builtin_ctzll(m) / 8;
}

#endif
