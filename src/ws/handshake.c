/*
 * DESIGN: the accept value is base64(SHA-1(key + fixed GUID)), computed with
 * OpenSSL. A key is valid only if it is 24 base64 characters that decode to
 * 16 bytes (the last two characters being "==").
 */
#include "ws/handshake.h"

#include <errno.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <string.h>

static const char ws_guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

static bool b64_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '+' || c == '/';
}

bool ws_key_valid(const char *key, size_t len)
{
    if (len != 24 || key[22] != '=' || key[23] != '=')
        return false;
    for (size_t i = 0; i < 22; i++)
        if (!b64_char(key[i]))
            return false;
    /* 16 bytes leave 4 spare bits in the 22nd character: they must be 0. */
    static const char tail[] = "AQgw";
    return memchr(tail, key[21], 4) != NULL;
}

int ws_accept_key(const char *key, size_t len, char out[WS_ACCEPT_LEN + 1])
{
    if (!ws_key_valid(key, len))
        return -EINVAL;
    unsigned char buf[24 + sizeof ws_guid];
    memcpy(buf, key, 24);
    memcpy(buf + 24, ws_guid, sizeof ws_guid - 1);
    unsigned char digest[SHA_DIGEST_LENGTH];
    SHA1(buf, 24 + sizeof ws_guid - 1, digest);
    EVP_EncodeBlock((unsigned char *)out, digest, SHA_DIGEST_LENGTH);
    out[WS_ACCEPT_LEN] = '\0';
    return 0;
}
