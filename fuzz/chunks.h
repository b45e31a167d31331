/*
 * chunks: feed one fuzz input to a stream decoder in pieces, the way a
 * network would, so a driver can check that the pieces decode exactly as
 * the whole does. Shared by the stream decoders' fuzz drivers.
 */
#ifndef CHATD_FUZZ_CHUNKS_H
#define CHATD_FUZZ_CHUNKS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Feed s[0..n) to feed(arg, piece, len) in pieces chosen by mode (0: fixed
 * size param + 1; 1: pseudo-random sizes below max_random, empty ones
 * included; 2: one byte at a time; else two halves cut at param/255), until
 * feed returns false. */
static inline void fuzz_feed_chunked(unsigned mode, unsigned param, const uint8_t *s, size_t n,
                                     size_t max_random,
                                     bool (*feed)(void *arg, const uint8_t *p, size_t len),
                                     void *arg)
{
    size_t pos = 0;
    uint32_t seed = param * 2654435761u + 1;
    switch (mode) {
    case 0:
        while (pos < n && feed(arg, s + pos, n - pos < param + 1 ? n - pos : param + 1))
            pos += param + 1;
        break;
    case 1:
        while (pos < n) {
            seed = seed * 1103515245u + 12345u;
            size_t k = (seed >> 16) % max_random;
            if (k > n - pos)
                k = n - pos;
            if (!feed(arg, s + pos, k))
                break;
            pos += k;
        }
        break;
    case 2:
        while (pos < n && feed(arg, s + pos, 1))
            pos++;
        break;
    default: {
        size_t cut = n * param / 255;
        if (feed(arg, s, cut))
            feed(arg, s + cut, n - cut);
        break;
    }
    }
}

#endif
