/*
 * text: a growable text buffer filled with printf-style appends, for
 * answers built from many pieces (/metrics). Pure; owned by its caller.
 */
#ifndef CHATD_UTIL_TEXT_H
#define CHATD_UTIL_TEXT_H

#include <stdbool.h>
#include <stddef.h>

struct text {
    char *buf;   /* owned; NUL-terminated while len > 0 */
    size_t len;
    size_t cap;
    bool failed; /* an allocation failed: the text is incomplete */
};

#define TEXT_INIT {NULL, 0, 0, false}

void text_printf(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void text_release(struct text *t);

#endif
