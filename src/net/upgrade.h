/*
 * upgrade: what every WebSocket route shares before conn_upgrade: the
 * validation of the upgrade request and the global connection cap
 * (--max-connections, counted in server.stats.ws_open). Worker thread of
 * the connection.
 */
#ifndef CHATD_NET_UPGRADE_H
#define CHATD_NET_UPGRADE_H

#include <stdbool.h>

struct conn;
struct http_request;

/*
 * Validate a WebSocket upgrade request (RFC 6455 section 4.2.1): GET,
 * HTTP/1.1, Host, Upgrade: websocket, Connection: upgrade, a valid
 * Sec-WebSocket-Key, Sec-WebSocket-Version 13, no body. Returns true when
 * valid; otherwise the refusal (400 or 426) has been queued.
 */
bool net_check_upgrade(struct conn *c, const struct http_request *req);

/* The global connection cap: take a slot (true) or answer 503 (false). */
bool net_take_ws_slot(struct conn *c);
/* Give a slot back when the upgrade fails after net_take_ws_slot. */
void net_give_ws_slot(struct conn *c);

#endif
