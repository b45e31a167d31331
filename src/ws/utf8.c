/*
 * DESIGN: a byte-at-a-time state machine that remembers how many continuation
 * bytes are due and the allowed range of the next one; the range is what rules
 * out overlong encodings (E0, F0), UTF-16 surrogates (ED) and values past
 * U+10FFFF (F4). ASCII, the common case in chat, is skipped eight bytes at a
 * time when no sequence is open.
 */
#include "ws/utf8.h"

#include <string.h>

int utf8_feed(struct utf8_state *s, const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (s->need == 0) {
            /* Fast path over runs of ASCII. */
            while (i + 8 <= n) {
                uint64_t w;
                memcpy(&w, p + i, 8);
                if (w & 0x8080808080808080ULL)
                    break;
                i += 8;
            }
            if (i >= n)
                break;
            uint8_t b = p[i++];
            if (b < 0x80)
                continue;
            if (b >= 0xC2 && b <= 0xDF) {
                s->need = 1;
                s->lo = 0x80, s->hi = 0xBF;
            } else if (b == 0xE0) {
                s->need = 2;
                s->lo = 0xA0, s->hi = 0xBF;
            } else if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) {
                s->need = 2;
                s->lo = 0x80, s->hi = 0xBF;
            } else if (b == 0xED) {
                s->need = 2;
                s->lo = 0x80, s->hi = 0x9F;
            } else if (b == 0xF0) {
                s->need = 3;
                s->lo = 0x90, s->hi = 0xBF;
            } else if (b >= 0xF1 && b <= 0xF3) {
                s->need = 3;
                s->lo = 0x80, s->hi = 0xBF;
            } else if (b == 0xF4) {
                s->need = 3;
                s->lo = 0x80, s->hi = 0x8F;
            } else {
                return -1;
            }
        } else {
            uint8_t b = p[i++];
            if (b < s->lo || b > s->hi)
                return -1;
            s->need--;
            s->lo = 0x80, s->hi = 0xBF;
        }
    }
    return 0;
}

bool utf8_valid(const uint8_t *p, size_t n)
{
    struct utf8_state s;
    utf8_init(&s);
    return utf8_feed(&s, p, n) == 0 && utf8_complete(&s);
}
