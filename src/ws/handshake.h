/*
 * handshake: the RFC 6455 opening handshake's key arithmetic. Pure, any thread.
 */
#ifndef CHATD_WS_HANDSHAKE_H
#define CHATD_WS_HANDSHAKE_H

#include <stdbool.h>
#include <stddef.h>

#define WS_ACCEPT_LEN 28 /* base64 of a 20-byte SHA-1 */

/* Is key (len bytes) a valid Sec-WebSocket-Key: base64 of exactly 16 bytes? */
bool ws_key_valid(const char *key, size_t len);

/* Write Sec-WebSocket-Accept for key into out (WS_ACCEPT_LEN chars + NUL).
 * Returns 0, or -EINVAL when the key is not valid. */
int ws_accept_key(const char *key, size_t len, char out[WS_ACCEPT_LEN + 1]);

#endif
