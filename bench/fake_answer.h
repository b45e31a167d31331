/*
 * fake_answer.h: the answer text of chatd-fake-provider, shared with
 * chatd-bench so that the generator can check every answer it receives
 * against the one the provider streamed.
 *
 * An answer is a function of a 64-bit seed and a size in bytes: words
 * drawn from a fixed list with xorshift, separated by spaces, exactly
 * `size` bytes of valid UTF-8. The list holds what a model's answers hold
 * and what costs chatd work to relay: two-, three- and four-byte
 * characters, quotes and backslashes (escaped in JSON), newlines and tabs.
 * The seed is written in the user's message as "bench-q-" and 16 hex
 * digits; the provider finds it in the request body.
 *
 * Header only (static inline functions): each bench program is built from one
 * source file.
 */
#ifndef CHATD_BENCH_FAKE_ANSWER_H
#define CHATD_BENCH_FAKE_ANSWER_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define FAKE_SEED_TAG "bench-q-"
#define FAKE_SEED_TAG_LEN 8

static const char *const fake_words[] = {
    "the",    "stream",  "answer", "chatd",     "delta",      "offset", "session", "model",
    "of",     "and",     "to",     "a",         "is",         "in",     "byte",    "socket",
    "naïve",  "café",    "—",      "«quoted»",  "\"quoted\"", "C:\\tmp\\x", "\n",  "\n\n- ",
    "tab\tx", "😀",      "中文",   "Ελληνικά",  "<b>bold</b>", "&amp;", "1.5e3",  "/path/to",
};
#define FAKE_NWORDS (sizeof fake_words / sizeof fake_words[0])

static inline uint64_t fake_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* Write the answer for seed, exactly size bytes, into out (size bytes of
 * room; no NUL is added). Words that do not fit whole are replaced by
 * ASCII letters, so the text ends on a character boundary. */
static inline void fake_answer(uint64_t seed, char *out, size_t size)
{
    uint64_t s = seed ^ 0x9e3779b97f4a7c15ull;
    if (s == 0)
        s = 1;
    size_t n = 0;
    while (n < size) {
        const char *w = fake_words[fake_next(&s) % FAKE_NWORDS];
        size_t wl = strlen(w);
        if (n > 0) {
            out[n++] = ' ';
            if (n == size)
                break;
        }
        if (wl > size - n) {
            while (n < size)
                out[n++] = 'z';
            break;
        }
        memcpy(out + n, w, wl);
        n += wl;
    }
}

/* The length of the delta that starts at off: at least want bytes (the
 * rest of the text when shorter), extended to the end of a character. */
static inline size_t fake_delta_len(const char *text, size_t len, size_t off, size_t want)
{
    size_t end = off + want;
    if (end >= len)
        return len - off;
    while (end < len && ((unsigned char)text[end] & 0xc0) == 0x80)
        end++;
    return end - off;
}

/* The seed written after the last FAKE_SEED_TAG in p[0..n), or 0 when there
 * is none. */
static inline uint64_t fake_find_seed(const char *p, size_t n)
{
    const char *last = NULL;
    for (const char *q = p; q != NULL && (size_t)(q - p) < n;) {
        q = memmem(q, n - (size_t)(q - p), FAKE_SEED_TAG, FAKE_SEED_TAG_LEN);
        if (q != NULL) {
            last = q;
            q += FAKE_SEED_TAG_LEN;
        }
    }
    if (last == NULL || (size_t)(last - p) + FAKE_SEED_TAG_LEN + 16 > n)
        return 0;
    uint64_t v = 0;
    for (int i = 0; i < 16; i++) {
        char c = last[FAKE_SEED_TAG_LEN + i];
        unsigned d;
        if (c >= '0' && c <= '9')
            d = (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            d = (unsigned)(c - 'a' + 10);
        else
            return 0;
        v = v << 4 | d;
    }
    return v;
}

#endif
