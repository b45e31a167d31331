/*
 * DESIGN: one read loop with a size cap, so a mistyped path pointing at a
 * huge file fails clearly instead of being read whole.
 */
#include "util/file.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>

int file_read_small(const char *path, size_t max, char **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -errno;
    size_t cap = 4096, n = 0;
    char *buf = NULL;
    int rc = 0;
    for (;;) {
        char *nb = realloc(buf, cap + 1);
        if (!nb) {
            rc = -ENOMEM;
            break;
        }
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
