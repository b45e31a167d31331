/*
 * file: reading the small files chatd's configuration points at (secrets,
 * keys). Any thread; no shared state.
 */
#ifndef CHATD_UTIL_FILE_H
#define CHATD_UTIL_FILE_H

#include <stddef.h>

/*
 * Read a whole file of at most max bytes into a malloc'd buffer with a NUL
 * after the last byte. 0 with *out and *len set, or a negative errno
 * (-EFBIG when the file is larger than max).
 */
int file_read_small(const char *path, size_t max, char **out, size_t *len);

/* Overwrite then free a buffer that held a secret (NULL is fine). */
void file_free_secret(char *buf, size_t len);

#endif
