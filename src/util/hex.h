/*
 * hex: the value of one hexadecimal digit, and bytes written as lower-case
 * hex digits. Pure.
 */
#ifndef CHATD_UTIL_HEX_H
#define CHATD_UTIL_HEX_H

#include <stddef.h>

/* 0..15, or -1 when c is not a hex digit (either case). */
static inline int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Write n bytes as 2 * n lower-case hex digits at out (no NUL). */
static inline void hex_encode(char *out, const unsigned char *in, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
}

#endif
