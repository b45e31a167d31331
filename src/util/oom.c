/*
 * DESIGN: one thread-local flag; the allocation itself is plain malloc, so
 * that memory from oom_malloc is released by free() as well as oom_free().
 */
#include "util/oom.h"

#include <stdlib.h>

static _Thread_local bool failed;

void *oom_malloc(size_t n)
{
    void *p = malloc(n);
    if (!p)
        failed = true;
    return p;
}

void oom_free(void *p) { free(p); }

void oom_clear(void) { failed = false; }

bool oom_seen(void) { return failed; }
