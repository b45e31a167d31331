/*
 * libFuzzer driver for encryption at rest (src/store/seal.c), the decoder
 * of every sealed row the storage engines read back.
 *
 * DESIGN: the input is a row as storage might hold it: byte 0 and 1 pick
 * the seq and how long a session id to use, the rest is the stored value.
 *   1. Opened as it is, it must be refused with -EIO (a forgery), or
 *      opened to text of exactly n - STORE_SEAL_OVERHEAD bytes, NUL-
 *      terminated; never read outside it.
 *   2. The value sealed as plain text must open to itself for the same
 *      (session, seq), and must not open for another seq, another session
 *      or with any one byte changed (the input picks which and how).
 * A broken promise calls abort().
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

#include "store/seal.h"

static const unsigned char KEY[32] = "fuzz-key-0123456789abcdefghijklm";
static const char *const SIDS[] = {"s_000000000000000000000000", "s_ffffffffffffffffffffffff",
                                   "", "s_0123456789abcdef01234567"};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    int64_t seq = data[0];
    const char *sid = SIDS[data[1] % 4];
    const unsigned char *in = data + 2;
    size_t n = size - 2;

    char *text = NULL;
    size_t tlen = 0;
    int rc = store_unseal(KEY, sid, seq, in, n, &text, &tlen);
    if (rc == 0) {
        CHECK(n >= STORE_SEAL_OVERHEAD && tlen == n - STORE_SEAL_OVERHEAD && text[tlen] == '\0');
        free(text);
    } else {
        CHECK(rc == -EIO || rc == -ENOMEM);
    }

    unsigned char *sealed = NULL;
    size_t slen = 0;
    rc = store_seal(KEY, sid, seq, (const char *)in, n, &sealed, &slen);
    if (rc != 0) {
        CHECK(rc == -ENOMEM || rc == -EIO);
        return 0;
    }
    CHECK(slen == n + STORE_SEAL_OVERHEAD);
    CHECK(store_unseal(KEY, sid, seq, sealed, slen, &text, &tlen) == 0);
    CHECK(tlen == n && (n == 0 || memcmp(text, in, n) == 0) && text[tlen] == '\0');
    free(text);
    CHECK(store_unseal(KEY, sid, seq + 1, sealed, slen, &text, &tlen) == -EIO);
    CHECK(store_unseal(KEY, SIDS[(data[1] + 1) % 4], seq, sealed, slen, &text, &tlen) == -EIO);
    size_t at = (n ? in[0] * 131u + in[n - 1] : data[0]) % slen;
    sealed[at] ^= (unsigned char)(1u << (data[1] % 8));
    CHECK(store_unseal(KEY, sid, seq, sealed, slen, &text, &tlen) == -EIO);
    CHECK(store_unseal(KEY, sid, seq, sealed, at, &text, &tlen) == -EIO); /* cut short */
    free(sealed);
    return 0;
}
