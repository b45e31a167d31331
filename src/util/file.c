/*
 * DESIGN: one read loop with a size cap, so a mistyped path pointing at a
 * huge file fails clearly instead of being read whole. The files hold
 * secrets, so no buffer is given back to the allocator unwiped.
 */
#include "util/file.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int file_read_small(const char *path, size_t max, char **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -errno;
    size_t cap = 4096, n = 0;
    char *buf = NULL;
    int rc = 0;
    for (;;) {
        /* Not realloc: it may leave a copy of the bytes read so far (a key)
         * in the block it frees. Growth copies, then wipes the old block. */
        char *nb = malloc(cap + 1);
        if (!nb) {
            rc = -ENOMEM;
            break;
        }
        if (buf)
            memcpy(nb, buf, n);
        file_free_secret(buf, n);
        buf = nb;
        n += fread(buf + n, 1, cap - n, f);
        if (ferror(f)) {
            rc = -EIO;
            break;
        }
        if (n < cap)
            break;
        if (cap > max) {
            rc = -EFBIG;
            break;
        }
        cap *= 2;
    }
    fclose(f);
    if (rc == 0 && n > max)
        rc = -EFBIG;
    if (rc < 0) {
        file_free_secret(buf, n);
        return rc;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

void file_free_secret(char *buf, size_t len)
{
    if (!buf)
        return;
    OPENSSL_cleanse(buf, len);
    free(buf);
}
