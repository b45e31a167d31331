/*
 * DESIGN: event contents at rest are sealed with AES-256-GCM. Each sealed
 * content carries its own random 96-bit nonce and its 128-bit tag, and
 * authenticates its place (session id and seq) as additional data, so a
 * sealed content copied to another row, session or position fails to open
 * instead of showing up elsewhere. Pure functions: any thread.
 */
#include "store/seal.h"

#include <assert.h>
#include <errno.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>

#include "store/store.h"

/* AAD binds a ciphertext to its place: session id and seq (big-endian).
 * Returns the length of the id part (the AAD is 8 bytes longer). */
static size_t make_aad(unsigned char aad[STORE_ID_LEN + 8], const char *sid, int64_t seq)
{
    size_t sl = strlen(sid);
    /* The writer seals with a request's session_id (an array of that
     * size); a read unseals only rows whose session id equals its id. */
    assert(sl <= STORE_ID_LEN);
    memcpy(aad, sid, sl);
    for (int i = 0; i < 8; i++)
        aad[sl + i] = (unsigned char)(seq >> (56 - 8 * i));
    return sl;
}

int store_seal(const unsigned char *key, const char *sid, int64_t seq, const char *in,
                       size_t n, unsigned char **out, size_t *outlen)
{
    unsigned char *buf = malloc(12 + n + 16);
    if (!buf)
        return -ENOMEM;
    /* A nonce must never repeat under one key: without fresh random bytes
     * there is no nonce, and nothing is sealed. */
    if (RAND_bytes(buf, 12) != 1) {
        free(buf);
        return -EIO;
    }
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int len = 0, ok = ctx != NULL;
    unsigned char aad[STORE_ID_LEN + 8];
    size_t sl = make_aad(aad, sid, seq);
    ok = ok && EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, buf) == 1;
    ok = ok && EVP_EncryptUpdate(ctx, NULL, &len, aad, (int)(sl + 8)) == 1;
    ok = ok && EVP_EncryptUpdate(ctx, buf + 12, &len, (const unsigned char *)in, (int)n) == 1;
    ok = ok && EVP_EncryptFinal_ex(ctx, buf + 12 + len, &len) == 1;
    ok = ok && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, buf + 12 + n) == 1;
    EVP_CIPHER_CTX_free(ctx);
    if (!ok) {
        free(buf);
        return -EIO;
    }
    *out = buf;
    *outlen = 12 + n + 16;
    return 0;
}

int store_unseal(const unsigned char *key, const char *sid, int64_t seq,
                         const unsigned char *in, size_t n, char **out, size_t *outlen)
{
    if (n < STORE_SEAL_OVERHEAD)
        return -EIO;
    size_t plen = n - STORE_SEAL_OVERHEAD;
    char *buf = malloc(plen + 1);
    if (!buf)
        return -ENOMEM;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int len = 0, ok = ctx != NULL;
    unsigned char aad[STORE_ID_LEN + 8];
    size_t sl = make_aad(aad, sid, seq);
    ok = ok && EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, in) == 1;
    ok = ok && EVP_DecryptUpdate(ctx, NULL, &len, aad, (int)(sl + 8)) == 1;
    ok = ok && EVP_DecryptUpdate(ctx, (unsigned char *)buf, &len, in + 12, (int)plen) == 1;
    ok = ok && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16, (void *)(in + 12 + plen)) == 1;
    ok = ok && EVP_DecryptFinal_ex(ctx, (unsigned char *)buf + len, &len) == 1;
    EVP_CIPHER_CTX_free(ctx);
    if (!ok) {
        free(buf);
        return -EIO;
    }
    buf[plen] = '\0';
    *out = buf;
    *outlen = plen;
    return 0;
}
