/*
 * oom: allocation functions that note, per thread, that an allocation
 * failed. For libraries that report running out of memory as something
 * else: jansson's parser answers most failed allocations with a syntax
 * error (chatd would tell a client its valid JSON or token is malformed),
 * and one that fails while it collects a string's bytes cuts the string
 * short and the parse succeeds. So a parse during which this thread's
 * note was set is void, whatever it returned. main() hands oom_malloc/oom_free to jansson; a caller that
 * must tell the two apart calls oom_clear() before the library call and
 * oom_seen() after it. Any thread (the note is thread-local).
 */
#ifndef CHATD_UTIL_OOM_H
#define CHATD_UTIL_OOM_H

#include <stdbool.h>
#include <stddef.h>

/* malloc, noting a failure in this thread. */
void *oom_malloc(size_t n);
/* free (for the same library's allocator table). */
void oom_free(void *p);
/* Forget this thread's note. */
void oom_clear(void);
/* true when an oom_malloc of this thread failed since the last oom_clear. */
bool oom_seen(void);

#endif
