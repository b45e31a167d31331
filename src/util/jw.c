/*
 * DESIGN: append-only into one sbuf that doubles as needed (the writer holds
 * its only reference, so growing it by realloc is safe); an allocation
 * failure sets `failed` and turns every later call into a no-op, so callers
 * check once at the end. Escaping handles the two characters JSON requires
 * (quote, backslash) and every control character, with the short forms for
 * the common ones.
 */
#include "util/jw.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "util/hex.h"
#include "util/sbuf.h"
#include "util/words.h"

void jw_init(struct jw *w, size_t cap, size_t reserve)
{
    if (cap < reserve + 64)
        cap = reserve + 64;
    w->sb = cap <= UINT32_MAX ? sbuf_new((uint32_t)cap) : NULL;
    w->buf = w->sb ? (char *)w->sb->data : NULL;
    w->cap = w->sb ? cap : 0;
    w->len = reserve;
    w->first = true;
    w->failed = w->sb == NULL;
}

struct sbuf *jw_take(struct jw *w)
{
    struct sbuf *b = w->failed ? NULL : w->sb;
    if (b) {
        b->len = (uint32_t)w->len;
        w->sb = NULL; /* now the caller's */
    }
    jw_release(w);
    return b;
}

void jw_release(struct jw *w)
{
    if (w->sb)
        sbuf_unref(w->sb);
    w->sb = NULL;
    w->buf = NULL;
    w->len = w->cap = 0;
}

static bool room(struct jw *w, size_t n)
{
    if (w->failed)
        return false;
    if (w->len + n <= w->cap)
        return true;
    size_t cap = w->cap * 2;
    while (cap < w->len + n)
        cap *= 2;
    struct sbuf *b = cap <= UINT32_MAX ? realloc(w->sb, sizeof *b + cap) : NULL;
    if (!b) {
        w->failed = true;
        return false;
    }
    b->cap = (uint32_t)cap;
    w->sb = b;
    w->buf = (char *)b->data;
    w->cap = cap;
    return true;
}

static void put(struct jw *w, const char *s, size_t n)
{
    if (room(w, n)) {
        memcpy(w->buf + w->len, s, n);
        w->len += n;
    }
}

void jw_open(struct jw *w)
{
    put(w, "{", 1);
    w->first = true;
}

void jw_close(struct jw *w)
{
    put(w, "}", 1);
    w->first = false;
}

void jw_key(struct jw *w, const char *key)
{
    if (!w->first)
        put(w, ",", 1);
    w->first = false;
    put(w, "\"", 1);
    put(w, key, strlen(key));
    put(w, "\":", 2);
}

/* How c goes into a JSON string: 0 as itself, a letter for a two-byte
 * escape (\n, \" ...), 'u' for \u00XX (the other control bytes). */
static char escape_of(unsigned char c)
{
    if (c >= 0x20 && c != '"' && c != '\\')
        return 0;
    switch (c) {
    case '"': return '"';
    case '\\': return '\\';
    case '\n': return 'n';
    case '\r': return 'r';
    case '\t': return 't';
    case '\b': return 'b';
    case '\f': return 'f';
    default: return 'u';
    }
}

/* The first byte at or after i that needs an escape, or n: whole words
 * while at least 8 bytes are left, then byte by byte. Text is mostly plain,
 * so a string is mostly copied as it is. */
static size_t next_escape(const unsigned char *u, size_t i, size_t n)
{
    for (; n - i >= 8; i += 8) {
        uint64_t m = json_escapes(word_at(u + i));
        if (m)
            return i + first_marked(m);
    }
    while (i < n && escape_of(u[i]) == 0)
        i++;
    return i;
}

void jw_str(struct jw *w, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    /* Reserved exactly: a frame sized for its content (wire.c) then never
     * grows. */
    size_t m = n;
    for (size_t i = next_escape(u, 0, n); i < n; i = next_escape(u, i + 1, n))
        m += escape_of(u[i]) == 'u' ? 5 : 1;
    if (!room(w, m + 2))
        return;
    char *o = w->buf + w->len;
    *o++ = '"';
    for (size_t i = 0;;) {
        size_t e = m == n ? n : next_escape(u, i, n);
        if (e > i) { /* the plain run before it (s may be NULL when n is 0) */
            memcpy(o, s + i, e - i);
            o += e - i;
        }
        if (e == n)
            break;
        char c = escape_of(u[e]);
        *o++ = '\\';
        *o++ = c;
        if (c == 'u') {
            *o++ = '0';
            *o++ = '0';
            hex_encode(o, &u[e], 1);
            o += 2;
        }
        i = e + 1;
    }
    *o++ = '"';
    assert((size_t)(o - w->buf) == w->len + m + 2);
    w->len = (size_t)(o - w->buf);
}

void jw_int(struct jw *w, int64_t v)
{
    /* Digits from the right, without printf (every event and ack carries
     * a seq, every answer delta its offset). The magnitude as unsigned:
     * INT64_MIN has no positive. */
    char b[24], *e = b + sizeof b, *p = e;
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        *--p = '-';
    put(w, p, (size_t)(e - p));
}

void jw_bool(struct jw *w, bool v) { put(w, v ? "true" : "false", v ? 4 : 5); }

void jw_raw(struct jw *w, const char *s, size_t n) { put(w, s, n); }

void jw_kstr(struct jw *w, const char *key, const char *s)
{
    jw_key(w, key);
    jw_str(w, s, strlen(s));
}

void jw_kint(struct jw *w, const char *key, int64_t v)
{
    jw_key(w, key);
    jw_int(w, v);
}
