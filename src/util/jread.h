/*
 * jread: a strict JSON reader that allocates nothing.
 *
 * jr_object checks that a buffer is exactly one JSON object (RFC 8259)
 * and lists its members as spans of the buffer, which must outlive them.
 * Nested values are checked as strictly and skipped. Values are decoded
 * only when asked (jr_string, jr_array_next), so a reader that looks at
 * three members of a payload pays for parsing it once and decoding three.
 *
 * Strict means: UTF-8 only (no overlong form, no surrogate, nothing past
 * U+10FFFF), no control character inside a string, no \u0000, no lone
 * surrogate escape, no duplicate key in any object (keys compared after
 * their escapes are decoded), integers that fit int64_t, finite reals,
 * nothing after the value but white space. Bounded: at most JR_MAX_DEPTH
 * levels of nesting and JR_MAX_KEYS members per object, past which the
 * text is refused (-E2BIG) however valid it is.
 *
 * Thread-safe: no state outside the caller's arguments.
 */
#ifndef CHATD_UTIL_JREAD_H
#define CHATD_UTIL_JREAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define JR_MAX_DEPTH 16 /* nesting of arrays and objects, the outer object included */
#define JR_MAX_KEYS 64  /* members of any one object */

enum jr_type { JR_NULL, JR_FALSE, JR_TRUE, JR_INT, JR_REAL, JR_STRING, JR_ARRAY, JR_OBJECT };

struct jr_value {
    enum jr_type type;
    const char *p; /* the value's text (a string's with its quotes) */
    size_t n;
    int64_t i; /* JR_INT: the value */
};

struct jr_member {
    const char *key; /* the key's text between its quotes, escapes not decoded */
    size_t key_len;
    bool key_esc; /* the key's text holds an escape */
    struct jr_value v;
};

/* Check that s[0..n) is one JSON object under the rules above and list
 * its members in m[0..max) (in text order; *count of them). 0, or -EINVAL
 * (not JSON, or a rule broken), -EEXIST (a duplicate key), -E2BIG (past
 * JR_MAX_DEPTH, JR_MAX_KEYS or max members). */
int jr_object(const char *s, size_t n, struct jr_member *m, size_t max, size_t *count);

/* The members of an object value that jr_object, jr_members or
 * jr_array_next returned (its text is checked already, so it is only
 * walked: a fraction of jr_object's cost), as jr_object lists them. 0, or
 * -EINVAL (v is not an object), -E2BIG (more than max members). */
int jr_members(const struct jr_value *obj, struct jr_member *m, size_t max, size_t *count);

/* The member whose decoded key is key (NUL-terminated), or NULL. */
const struct jr_value *jr_get(const struct jr_member *m, size_t count, const char *key);

/* Decode a JR_STRING value into dst[0..cap) with a NUL after it: its
 * length, or -ENOBUFS when it needs cap bytes or more, -EINVAL when v is
 * not a string. The text may hold no NUL (\u0000 is refused). */
ssize_t jr_string(const struct jr_value *v, char *dst, size_t cap);

/* Check that s[0..n) is exactly one JSON string, its quotes included and
 * no white space around it, under the rules above, and make *v of it (a
 * JR_STRING for jr_string and jr_string_is). 0, or -EINVAL. */
int jr_string_value(const char *s, size_t n, struct jr_value *v);

/* Does a JR_STRING value decode to exactly s[0..len)? */
int jr_string_is(const struct jr_value *v, const char *s, size_t len);

/* The elements of a JR_ARRAY value, one per call: start with *pos = 0;
 * 1 with *el set, 0 after the last (or when arr is not an array). */
int jr_array_next(const struct jr_value *arr, size_t *pos, struct jr_value *el);

#endif
