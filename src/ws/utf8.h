/*
 * utf8: incremental UTF-8 validation (RFC 3629), pure, no allocation.
 *
 * A validator state carries a partial code point across calls, so a text
 * message can be checked chunk by chunk as it arrives and refused at the first
 * byte that cannot start or continue a valid sequence (overlong forms,
 * surrogates and code points above U+10FFFF included). Any thread; a state is
 * owned by whoever embeds it.
 */
#ifndef CHATD_WS_UTF8_H
#define CHATD_WS_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct utf8_state {
    uint8_t need; /* continuation bytes still expected */
    uint8_t lo;   /* allowed range of the next continuation byte */
    uint8_t hi;
};

static inline void utf8_init(struct utf8_state *s)
{
    s->need = 0;
    s->lo = 0x80;
    s->hi = 0xBF;
}

/* Feed n bytes. Returns 0 while the input is a valid prefix, -1 at the first
 * invalid byte (the state is then meaningless). */
int utf8_feed(struct utf8_state *s, const uint8_t *p, size_t n);

/* True when the bytes fed so far end on a code point boundary. */
static inline bool utf8_complete(const struct utf8_state *s) { return s->need == 0; }

/* Validate a whole buffer. */
bool utf8_valid(const uint8_t *p, size_t n);

#endif
