/*
 * clock: wall and monotonic time helpers. Pure functions, any thread.
 */
#ifndef CHATD_UTIL_CLOCK_H
#define CHATD_UTIL_CLOCK_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* Milliseconds since the Unix epoch (CLOCK_REALTIME). */
int64_t clock_wall_ms(void);
/* Milliseconds from an arbitrary fixed point (CLOCK_MONOTONIC). */
int64_t clock_mono_ms(void);
/* Initialise a condition variable whose timed waits run on CLOCK_MONOTONIC,
 * so that setting the wall clock back does not stretch a wait by as much.
 * 0 or a positive error number, as pthread_cond_init. */
int clock_cond_init(pthread_cond_t *cond);
/* The CLOCK_MONOTONIC deadline ms from now, for pthread_cond_timedwait on a
 * condition variable made by clock_cond_init. */
struct timespec clock_cond_deadline(int64_t ms);
/* Format ms since the epoch as "2026-11-26T10:00:00.000Z" (24 chars + NUL).
 * out must hold at least 25 bytes. Returns the length written (24). Any
 * thread: the date to the second is cached per thread (thread-local). */
size_t clock_format_rfc3339(char *out, int64_t wall_ms);

#endif
