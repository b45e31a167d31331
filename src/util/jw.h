/*
 * jw: a small JSON writer for the few messages chatd builds on its hot path
 * (acks and chat events), into a growable shared buffer (util/sbuf.h) that
 * can be queued to sockets as it is, without a copy. It writes exactly
 * what it is told, in order, with string escaping per RFC 8259; it does not
 * validate UTF-8 (callers pass text that was validated when it arrived).
 * Pure; a struct jw belongs to its caller.
 */
#ifndef CHATD_UTIL_JW_H
#define CHATD_UTIL_JW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sbuf;

struct jw {
    char *buf;          /* the text: data of sb */
    struct sbuf *sb;    /* owned until jw_take */
    size_t len;
    size_t cap;
    bool first;    /* no member written yet in the current object */
    bool failed;   /* out of memory at some point: the text is incomplete */
};

/* Start with room for cap bytes, the first `reserve` left free (a frame
 * header goes there later). */
void jw_init(struct jw *w, size_t cap, size_t reserve);
/* Hand the text over as a buffer (len = bytes written, reserve included)
 * that the caller then owns with one reference; NULL when writing failed.
 * The writer is left empty. */
struct sbuf *jw_take(struct jw *w);
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
