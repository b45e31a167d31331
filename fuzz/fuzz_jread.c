/*
 * libFuzzer driver for the JSON reader (src/util/jread.c), checked against
 * jansson on the same bytes.
 *
 * DESIGN: the input is the text. jr_object and json_loadb (duplicate keys
 * refused, as the JWT verifier asks) must agree on whether it is a JSON
 * object, except where the reader's bounds refuse it first (-E2BIG: depth,
 * member count, a real number's length). When both accept, every member
 * must match, at every depth: same keys in the same order (each found by
 * jr_get with its decoded text), same types, same integers, the same
 * decoded strings, the same array lengths and elements. A disagreement
 * calls abort(). Text with a NUL byte is refused by the reader and not
 * given to jansson, which reads past some NULs as if they were not there.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "check.h"

#include "util/jread.h"

static char buf[1 << 16];

static void same_value(const struct jr_value *v, json_t *j)
{
    switch (v->type) {
    case JR_NULL: CHECK(json_is_null(j)); break;
    case JR_TRUE: CHECK(json_is_true(j)); break;
    case JR_FALSE: CHECK(json_is_false(j)); break;
    case JR_INT: CHECK(json_is_integer(j) && json_integer_value(j) == v->i); break;
    case JR_REAL: CHECK(json_is_real(j)); break;
    case JR_OBJECT: {
        /* Its members, walked as the checked text they are. */
        CHECK(json_is_object(j));
        struct jr_member m[JR_MAX_KEYS];
        size_t n;
        CHECK(jr_members(v, m, JR_MAX_KEYS, &n) == 0);
        CHECK(n == json_object_size(j));
        for (size_t i = 0; i < n; i++) {
            struct jr_value kv = {.type = JR_STRING, .p = m[i].key - 1, .n = m[i].key_len + 2};
            char *key = malloc(kv.n);
            CHECK(key != NULL);
            ssize_t kl = jr_string(&kv, key, kv.n);
            CHECK(kl >= 0);
            CHECK(jr_get(m, n, key) == &m[i].v); /* found by its decoded key */
            json_t *mj = json_object_getn(j, key, (size_t)kl);
            free(key);
            CHECK(mj != NULL);
            same_value(&m[i].v, mj);
        }
        break;
    }
    case JR_STRING: {
        CHECK(json_is_string(j));
        ssize_t n = jr_string(v, buf, sizeof buf);
        CHECK(n >= 0 && (size_t)n == json_string_length(j));
        CHECK(memcmp(buf, json_string_value(j), (size_t)n) == 0);
        CHECK(jr_string_is(v, json_string_value(j), json_string_length(j)));
        break;
    }
    case JR_ARRAY: {
        CHECK(json_is_array(j));
        size_t pos = 0, i = 0;
        struct jr_value el;
        while (jr_array_next(v, &pos, &el)) {
            CHECK(i < json_array_size(j));
            same_value(&el, json_array_get(j, i++));
        }
        CHECK(i == json_array_size(j));
        break;
    }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct jr_member m[JR_MAX_KEYS];
    size_t n = 99;
    int rc = jr_object((const char *)data, size, m, JR_MAX_KEYS, &n);
    if (memchr(data, '\0', size)) {
        CHECK(rc != 0); /* whatever it meets first */
        return 0;
    }
    json_error_t err;
    json_t *j = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &err);
    if (rc == -E2BIG) {
        CHECK(n == 0);
    } else if (rc != 0) {
        CHECK(rc == -EINVAL || rc == -EEXIST);
        CHECK(n == 0);
        CHECK(j == NULL || !json_is_object(j));
        if (rc == -EEXIST)
            CHECK(j == NULL && json_error_code(&err) == json_error_duplicate_key);
    } else {
        CHECK(j != NULL && json_is_object(j));
        CHECK(n == json_object_size(j));
        /* jansson keeps insertion order: the members come in text order. */
        size_t i = 0;
        const char *key;
        size_t klen;
        json_t *val;
        json_object_keylen_foreach(j, key, klen, val)
        {
            CHECK(i < n);
            struct jr_value kv = {.type = JR_STRING, .p = m[i].key - 1, .n = m[i].key_len + 2};
            CHECK(jr_string_is(&kv, key, klen));
            same_value(&m[i].v, val);
            /* jr_get finds the first member with the key; keys are unique,
             * so that is this one (for keys without a NUL). */
            if (klen < sizeof buf && !memchr(key, '\0', klen)) {
                memcpy(buf, key, klen);
                buf[klen] = '\0';
                CHECK(jr_get(m, n, buf) == &m[i].v);
            }
            i++;
        }
        CHECK(i == n);
    }
    json_decref(j);
    return 0;
}
