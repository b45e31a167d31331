/*
 * store/seal: encryption at rest of what the engines keep (event contents,
 * titles), shared by every engine so that a sealed value means the same
 * wherever it is stored.
 *
 * AES-256-GCM with a fresh random 96-bit nonce per value; the session id
 * and seq are authenticated as additional data, so a sealed value moved to
 * another row, session or position fails to open. Layout: nonce (12) |
 * ciphertext (n) | tag (16). Pure functions: any thread. Errors: -ENOMEM,
 * -EIO.
 */
#ifndef CHATD_STORE_SEAL_H
#define CHATD_STORE_SEAL_H

#include <stddef.h>
#include <stdint.h>

#define STORE_SEAL_OVERHEAD 28 /* bytes a sealed value has beyond its plain text */

/* Seal n bytes of content for (session sid, seq) with a 32-byte key into
 * a malloc'd *out of n + STORE_SEAL_OVERHEAD bytes. 0, -ENOMEM, or -EIO
 * (the random source or the cipher failed). */
int store_seal(const unsigned char *key, const char *sid, int64_t seq, const char *in, size_t n,
               unsigned char **out, size_t *outlen);
/* Open what store_seal made for the same (sid, seq) and key: a malloc'd,
 * NUL-terminated *out. 0, -ENOMEM, or -EIO (too short, tampered, moved, or
 * another key). */
int store_unseal(const unsigned char *key, const char *sid, int64_t seq, const unsigned char *in,
                 size_t n, char **out, size_t *outlen);

#endif
