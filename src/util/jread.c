/*
 * DESIGN: one recursive descent over the text that checks everything the
 * header promises and records nothing but the outer object's members. A
 * string is checked in one pass, plain bytes a word at a time (values are
 * most of the text: an assistant's streamed chunks); a key is then hashed
 * for the duplicate check, a word at a time unless it holds an escape.
 * Text checked already (jr_members, jr_array_next) is walked, not checked
 * again: a string to its closing quote, a nested object or array to its
 * closing bracket. Decoding is redone on demand by a small iterator
 * (struct dec) that yields the decoded bytes of text already known to be
 * valid, so comparisons and copies need no buffer. Each object keeps its
 * keys' spans and hashes on the stack (JR_MAX_KEYS of them) for the
 * duplicate check.
 */
#include "util/jread.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "util/words.h"

struct rd {
    const char *p, *end;
    bool checked; /* the text was checked already: walk it, check nothing */
};

static void skip_ws(struct rd *r)
{
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r'))
        r->p++;
}

static int hex4(const char *p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = (unsigned char)p[i];
        unsigned d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return -1;
        v = v << 4 | d;
    }
    *out = v;
    return 0;
}

static int utf8_put(unsigned cp, unsigned char *o)
{
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | cp >> 6);
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | cp >> 12);
        o[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | cp >> 18);
    o[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* The code point of the escape at p (just after the backslash and 'u'),
 * with its low surrogate if it needs one; *used the bytes read from p.
 * -1 when it is \u0000, a lone surrogate or not hex. */
static long escape_u(const char *p, const char *end, size_t *used)
{
    unsigned hi, lo;
    if (end - p < 4 || hex4(p, &hi) != 0 || hi == 0)
        return -1;
    *used = 4;
    if (hi >= 0xDC00 && hi <= 0xDFFF)
        return -1;
    if (hi < 0xD800 || hi > 0xDBFF)
        return (long)hi;
    if (end - p < 10 || p[4] != '\\' || p[5] != 'u' || hex4(p + 6, &lo) != 0 || lo < 0xDC00 ||
        lo > 0xDFFF)
        return -1;
    *used = 10;
    return 0x10000L + ((long)(hi - 0xD800) << 10) + (long)(lo - 0xDC00);
}

/* The length of the UTF-8 sequence at p (its first byte >= 0x80), or 0
 * when it is not one (RFC 3629: no overlong form, no surrogate, nothing
 * past U+10FFFF). */
static size_t utf8_len(const unsigned char *p, const unsigned char *end)
{
    unsigned char b = p[0], lo = 0x80, hi = 0xBF;
    size_t more;
    if (b >= 0xC2 && b <= 0xDF) {
        more = 1;
    } else if (b >= 0xE0 && b <= 0xEF) {
        more = 2;
        if (b == 0xE0)
            lo = 0xA0;
        else if (b == 0xED)
            hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
        more = 3;
        if (b == 0xF0)
            lo = 0x90;
        else if (b == 0xF4)
            hi = 0x8F;
    } else {
        return 0;
    }
    if ((size_t)(end - p) <= more || p[1] < lo || p[1] > hi)
        return 0;
    for (size_t k = 2; k <= more; k++)
        if (p[k] < 0x80 || p[k] > 0xBF)
            return 0;
    return more + 1;
}

#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL

/* The high bits of the bytes of x that need a look of their own in a
 * string: a quote, a backslash, a control byte, or a byte of a multi-byte
 * character. Past the first such byte the bits say nothing. */
static inline uint64_t special(uint64_t x)
{
    uint64_t q = x ^ (WORD_ONES * '"'), b = x ^ (WORD_ONES * '\\');
    /* Up to the first byte with its high bit set, q and b have none. */
    return (x | (x - WORD_ONES * 0x20) | (q - WORD_ONES) | (b - WORD_ONES)) & WORD_HIGHS;
}

/* p moved on by whole words to the word holding the first quote or
 * backslash (or, when any, the first byte special() marks), at that byte;
 * fewer than 8 bytes before end, it stops. */
static inline const char *skip_words(const char *p, const char *end, bool any)
{
    while (end - p >= 8) {
        uint64_t x = word_at(p), m = any ? special(x) : quote_or_bs(x);
        if (m)
            return p + first_marked(m);
        p += 8;
    }
    return p;
}

/* The string at r->p (its opening quote), checked (or, in checked text,
 * walked); r->p ends after the closing quote. 1 when it holds an escape,
 * 0 when not, or -EINVAL. */
static int string(struct rd *r)
{
    const char *p = r->p + 1;
    int esc = 0;
    if (r->checked) {
        /* The closing quote is the first one not escaped; an escape is a
         * backslash and one more byte (the four hex digits of \u hold no
         * quote and no backslash). */
        for (;;) {
            p = skip_words(p, r->end, false);
            while (p < r->end && *p != '"' && *p != '\\')
                p++;
            if (p >= r->end)
                break;
            if (*p == '"') {
                r->p = p + 1;
                return esc;
            }
            esc = 1;
            p += 2;
        }
        return -EINVAL;
    }
    for (;;) {
        p = skip_words(p, r->end, true); /* plain bytes eight at a time */
        if (p >= r->end)
            return -EINVAL;
        unsigned char c = (unsigned char)*p;
        if (c == '"')
            break;
        if (c < 0x20)
            return -EINVAL;
        if (c < 0x80 && c != '\\') {
            p++;
            continue;
        }
        if (c >= 0x80) {
            size_t n = utf8_len((const unsigned char *)p, (const unsigned char *)r->end);
            if (!n)
                return -EINVAL;
            p += n;
            continue;
        }
        esc = 1;
        if (++p >= r->end)
            return -EINVAL;
        switch (*p) {
        case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
            p++;
            continue;
        case 'u': {
            size_t used;
            if (escape_u(p + 1, r->end, &used) < 0)
                return -EINVAL;
            p += 1 + used;
            continue;
        }
        default:
            return -EINVAL;
        }
    }
    r->p = p + 1;
    return esc;
}

/* The decoded bytes of a checked string's text (between its quotes). */
struct dec {
    const char *p, *end;
    unsigned char buf[4];
    int nbuf, ibuf;
};

static void dec_init(struct dec *d, const char *text, size_t n)
{
    d->p = text;
    d->end = text + n;
    d->nbuf = d->ibuf = 0;
}

/* The next decoded byte, or -1 at the end. */
static int dec_byte(struct dec *d)
{
    if (d->ibuf < d->nbuf)
        return d->buf[d->ibuf++];
    if (d->p >= d->end)
        return -1;
    unsigned char c = (unsigned char)*d->p++;
    if (c != '\\')
        return c;
    c = (unsigned char)*d->p++;
    switch (c) {
    case 'b': return '\b';
    case 'f': return '\f';
    case 'n': return '\n';
    case 'r': return '\r';
    case 't': return '\t';
    case 'u': {
        size_t used = 0;
        long cp = escape_u(d->p, d->end, &used);
        d->p += used;
        d->nbuf = utf8_put((unsigned)cp, d->buf);
        d->ibuf = 1;
        return d->buf[0];
    }
    default: return c; /* '"', '\\', '/' */
    }
}

/* Do the texts of two checked strings decode to the same bytes? */
static bool raw_equal(const char *a, size_t an, const char *b, size_t bn)
{
    if (an == bn && memcmp(a, b, an) == 0)
        return true;
    struct dec x, y;
    dec_init(&x, a, an);
    dec_init(&y, b, bn);
    for (;;) {
        int cx = dec_byte(&x), cy = dec_byte(&y);
        if (cx != cy)
            return false;
        if (cx < 0)
            return true;
    }
}

/* Does the text of a checked string decode to exactly s[0..n)? */
static bool raw_is(const char *raw, size_t rn, const char *s, size_t n)
{
    if (rn < n)
        return false; /* an escape is longer than the bytes it stands for */
    if (rn == n) /* no escape, or it decodes shorter than n */
        return memcmp(raw, s, n) == 0 && !memchr(s, '\\', n);
    if (!memchr(raw, '\\', rn))
        return false;
    struct dec d;
    dec_init(&d, raw, rn);
    size_t i = 0;
    for (int c; (c = dec_byte(&d)) >= 0; i++)
        if (i == n || (unsigned char)s[i] != c)
            return false;
    return i == n;
}

/* A hash of a checked key's decoded bytes, for the duplicate check: the
 * same for two spellings of one key. A key without a backslash is its own
 * bytes, taken a word at a time; one with is decoded byte by byte into the
 * same words. */
static uint64_t key_hash(const char *raw, size_t n, bool esc)
{
    uint64_t h = FNV_OFFSET, w = 0;
    size_t len = 0;
    if (!esc) {
        for (; n - len >= 8; len += 8)
            h = (h ^ word_at(raw + len)) * FNV_PRIME;
        for (unsigned i = 0; len < n; len++, i++)
            w |= (uint64_t)(unsigned char)raw[len] << (8 * i);
    } else {
        struct dec d;
        dec_init(&d, raw, n);
        unsigned i = 0;
        for (int c; (c = dec_byte(&d)) >= 0; len++) {
            w |= (uint64_t)c << (8 * i);
            if (++i == 8) {
                h = (h ^ w) * FNV_PRIME;
                w = 0;
                i = 0;
            }
        }
    }
    return (((h ^ w) * FNV_PRIME) ^ len) * FNV_PRIME;
}

static int value(struct rd *r, int depth, struct jr_value *v);

static int number(struct rd *r, struct jr_value *v)
{
    const char *p = r->p, *end = r->end;
    bool neg = p < end && *p == '-', integer = true;
    if (neg)
        p++;
    if (p >= end)
        return -EINVAL;
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    } else {
        return -EINVAL;
    }
    if (p < end && *p == '.') {
        integer = false;
        if (++p >= end || *p < '0' || *p > '9')
            return -EINVAL;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        integer = false;
        if (++p < end && (*p == '+' || *p == '-'))
            p++;
        if (p >= end || *p < '0' || *p > '9')
            return -EINVAL;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    }
    v->p = r->p;
    v->n = (size_t)(p - r->p);
    if (integer) {
        /* Summed as a negative number: INT64_MIN fits, INT64_MAX + 1
         * does not. */
        int64_t x = 0;
        for (const char *q = r->p + neg; q < p; q++) {
            int d = *q - '0';
            if (x < (INT64_MIN + d) / 10)
                return -EINVAL;
            x = x * 10 - d;
        }
        if (!neg && x == INT64_MIN)
            return -EINVAL;
        v->type = JR_INT;
        v->i = neg ? x : -x;
    } else {
        char buf[128];
        if (v->n >= sizeof buf)
            return -E2BIG;
        memcpy(buf, v->p, v->n);
        buf[v->n] = '\0';
        if (!isfinite(strtod(buf, NULL)))
            return -EINVAL;
        v->type = JR_REAL;
        v->i = 0;
    }
    r->p = p;
    return 0;
}

/* The object at r->p (its '{'); its members go to m[0..max) when m is
 * not NULL. */
static int object(struct rd *r, int depth, struct jr_member *m, size_t max, size_t *count)
{
    const char *key[JR_MAX_KEYS];
    size_t klen[JR_MAX_KEYS];
    uint64_t khash[JR_MAX_KEYS];
    size_t k = 0;
    if (depth > JR_MAX_DEPTH)
        return -E2BIG;
    r->p++;
    skip_ws(r);
    if (r->p < r->end && *r->p == '}') {
        r->p++;
        *count = 0;
        return 0;
    }
    for (;;) {
        if (r->p >= r->end || *r->p != '"')
            return -EINVAL;
        if (k == JR_MAX_KEYS || (m && k == max))
            return -E2BIG;
        const char *kp = r->p + 1;
        int esc = string(r);
        if (esc < 0)
            return esc;
        key[k] = kp;
        klen[k] = (size_t)(r->p - 1 - kp);
        if (!r->checked)
            khash[k] = key_hash(kp, klen[k], esc);
        for (size_t j = 0; j < k && !r->checked; j++)
            if (khash[j] == khash[k] && raw_equal(key[j], klen[j], key[k], klen[k]))
                return -EEXIST;
        skip_ws(r);
        if (r->p >= r->end || *r->p != ':')
            return -EINVAL;
        r->p++;
        skip_ws(r);
        /* The value goes straight to its member: copied from the stack, a
         * 16-byte load of fields just stored stalled on every member. */
        struct jr_value unused_v, *v = m ? &m[k].v : &unused_v;
        int rc = value(r, depth, v);
        if (rc)
            return rc;
        if (m) {
            m[k].key = key[k];
            m[k].key_len = klen[k];
            m[k].key_esc = esc;
        }
        k++;
        skip_ws(r);
        if (r->p < r->end && *r->p == ',') {
            r->p++;
            skip_ws(r);
            continue;
        }
        if (r->p < r->end && *r->p == '}') {
            r->p++;
            *count = k;
            return 0;
        }
        return -EINVAL;
    }
}

/* The object or array at r->p in checked text, passed over: to its
 * closing bracket, strings walked so that no bracket in one counts. */
static int skip_checked(struct rd *r)
{
    int depth = 0;
    while (r->p < r->end) {
        char c = *r->p;
        if (c == '"') {
            if (string(r) < 0)
                return -EINVAL;
            continue;
        }
        if (c == '{' || c == '[') {
            depth++;
        } else if ((c == '}' || c == ']') && --depth == 0) {
            r->p++;
            return 0;
        }
        r->p++;
    }
    return -EINVAL;
}

static int array(struct rd *r, int depth)
{
    if (depth > JR_MAX_DEPTH)
        return -E2BIG;
    r->p++;
    skip_ws(r);
    if (r->p < r->end && *r->p == ']') {
        r->p++;
        return 0;
    }
    for (;;) {
        struct jr_value v;
        int rc = value(r, depth, &v);
        if (rc)
            return rc;
        skip_ws(r);
        if (r->p < r->end && *r->p == ',') {
            r->p++;
            skip_ws(r);
            continue;
        }
        if (r->p < r->end && *r->p == ']') {
            r->p++;
            return 0;
        }
        return -EINVAL;
    }
}

static int literal(struct rd *r, const char *word, enum jr_type type, struct jr_value *v)
{
    size_t n = strlen(word);
    if ((size_t)(r->end - r->p) < n || memcmp(r->p, word, n) != 0)
        return -EINVAL;
    v->type = type;
    v->p = r->p;
    v->n = n;
    v->i = 0;
    r->p += n;
    return 0;
}

/* The value at r->p (white space already skipped), inside depth levels. */
static int value(struct rd *r, int depth, struct jr_value *v)
{
    if (r->p >= r->end)
        return -EINVAL;
    const char *start = r->p;
    int rc;
    size_t unused;
    switch (*r->p) {
    case '{':
        rc = r->checked ? skip_checked(r) : object(r, depth + 1, NULL, 0, &unused);
        v->type = JR_OBJECT;
        break;
    case '[':
        rc = r->checked ? skip_checked(r) : array(r, depth + 1);
        v->type = JR_ARRAY;
        break;
    case '"':
        rc = string(r) < 0 ? -EINVAL : 0;
        v->type = JR_STRING;
        break;
    case 't':
        return literal(r, "true", JR_TRUE, v);
    case 'f':
        return literal(r, "false", JR_FALSE, v);
    case 'n':
        return literal(r, "null", JR_NULL, v);
    default:
        return number(r, v);
    }
    v->p = start;
    v->n = (size_t)(r->p - start);
    v->i = 0;
    return rc;
}

int jr_object(const char *s, size_t n, struct jr_member *m, size_t max, size_t *count)
{
    struct rd r = {s, s + n, false};
    *count = 0;
    skip_ws(&r);
    if (r.p >= r.end || *r.p != '{')
        return -EINVAL;
    size_t k;
    int rc = object(&r, 1, m, max, &k);
    if (rc)
        return rc;
    skip_ws(&r);
    if (r.p != r.end)
        return -EINVAL;
    *count = k;
    return 0;
}

int jr_members(const struct jr_value *obj, struct jr_member *m, size_t max, size_t *count)
{
    *count = 0;
    if (obj->type != JR_OBJECT)
        return -EINVAL;
    struct rd r = {obj->p, obj->p + obj->n, true};
    size_t k;
    int rc = object(&r, 1, m, max, &k);
    if (rc == 0)
        *count = k;
    return rc;
}

const struct jr_value *jr_get(const struct jr_member *m, size_t count, const char *key)
{
    size_t n = strlen(key);
    for (size_t i = 0; i < count; i++) {
        /* A key without an escape is its own bytes. */
        if (m[i].key_esc ? raw_is(m[i].key, m[i].key_len, key, n)
                         : m[i].key_len == n && memcmp(m[i].key, key, n) == 0)
            return &m[i].v;
    }
    return NULL;
}

ssize_t jr_string(const struct jr_value *v, char *dst, size_t cap)
{
    if (v->type != JR_STRING || cap == 0)
        return v->type != JR_STRING ? -EINVAL : -ENOBUFS;
    size_t rn = v->n - 2;
    if (!memchr(v->p + 1, '\\', rn)) { /* no escape: the text is its bytes */
        if (rn >= cap)
            return -ENOBUFS;
        memcpy(dst, v->p + 1, rn);
        dst[rn] = '\0';
        return (ssize_t)rn;
    }
    struct dec d;
    dec_init(&d, v->p + 1, rn);
    size_t o = 0;
    for (int c; (c = dec_byte(&d)) >= 0;) {
        if (o + 1 >= cap)
            return -ENOBUFS;
        dst[o++] = (char)c;
    }
    dst[o] = '\0';
    return (ssize_t)o;
}

int jr_string_value(const char *s, size_t n, struct jr_value *v)
{
    struct rd r = {s, s + n, false};
    if (n < 2 || *s != '"' || string(&r) < 0 || r.p != r.end)
        return -EINVAL; /* not a string, or one that ends before s + n */
    v->type = JR_STRING;
    v->p = s;
    v->n = n;
    v->i = 0;
    return 0;
}

int jr_string_is(const struct jr_value *v, const char *s, size_t len)
{
    return v->type == JR_STRING && raw_is(v->p + 1, v->n - 2, s, len);
}

int jr_array_next(const struct jr_value *arr, size_t *pos, struct jr_value *el)
{
    if (arr->type != JR_ARRAY)
        return 0;
    struct rd r = {arr->p + (*pos ? *pos : 1), arr->p + arr->n, true};
    skip_ws(&r);
    if (r.p >= r.end || *r.p == ']')
        return 0;
    if (value(&r, 1, el) != 0) /* checked already: cannot fail */
        return 0;
    skip_ws(&r);
    if (r.p < r.end && *r.p == ',')
        r.p++;
    *pos = (size_t)(r.p - arr->p);
    return 1;
}
