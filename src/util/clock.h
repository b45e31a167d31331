/*
 * clock: wall and monotonic time helpers. Pure functions, any thread.
 */
#ifndef CHATD_UTIL_CLOCK_H
#define CHATD_UTIL_CLOCK_H

#include <stddef.h>
#include <stdint.h>

/* Milliseconds since the Unix epoch (CLOCK_REALTIME). */
int64_t clock_wall_ms(void);
/* Milliseconds from an arbitrary fixed point (CLOCK_MONOTONIC). */
int64_t clock_mono_ms(void);
/* Format ms since the epoch as "2026-11-26T10:00:00.000Z" (24 chars + NUL).
 * out must hold at least 25 bytes. Returns the length written (24). */
size_t clock_format_rfc3339(char *out, int64_t wall_ms);

#endif
