/*
 * jw: a small JSON writer for the few messages chatd builds on its hot path
 * (acks and chat events), into a caller's growable buffer. It writes exactly
 * what it is told, in order, with string escaping per RFC 8259; it does not
 * validate UTF-8 (callers pass text that was validated when it arrived).
 * Pure; a struct jw belongs to its caller.
 */
#ifndef CHATD_UTIL_JW_H
#define CHATD_UTIL_JW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct jw {
    char *buf;     /* owned, malloc'd */
    size_t len;
    size_t cap;
    bool first;    /* no member written yet in the current object */
    bool failed;   /* out of memory at some point: the text is incomplete */
};

/* Start with room for cap bytes, the first `reserve` left free (a frame
 * header goes there later). */
void jw_init(struct jw *w, size_t cap, size_t reserve);
void jw_release(struct jw *w);

void jw_open(struct jw *w);                   /* { */
void jw_close(struct jw *w);                  /* } */
void jw_key(struct jw *w, const char *key);   /* "key": (key is a plain literal) */
void jw_str(struct jw *w, const char *s, size_t n);
void jw_int(struct jw *w, int64_t v);
void jw_bool(struct jw *w, bool v);
void jw_raw(struct jw *w, const char *s, size_t n); /* already-JSON text */

/* Shorthands for "key": value members. */
void jw_kstr(struct jw *w, const char *key, const char *s);
void jw_kint(struct jw *w, const char *key, int64_t v);

#endif
