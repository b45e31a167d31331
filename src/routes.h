/*
 * routes: which HTTP request goes where. Called by conn on the worker thread
 * with a parsed request head; answers it (conn_http_*) or upgrades it
 * (conn_upgrade). Built-in routes: {prefix}/healthz, {prefix}/readyz and,
 * with --echo, the {prefix}/echo WebSocket. Everything else is 404 with
 * chatd's JSON error body.
 */
#ifndef CHATD_ROUTES_H
#define CHATD_ROUTES_H

#include <stdbool.h>

struct conn;
struct http_request;

void routes_dispatch(struct conn *c, const struct http_request *req);

/*
 * Validate a WebSocket upgrade request (RFC 6455 section 4.2.1): GET,
 * HTTP/1.1, Host, Upgrade: websocket, Connection: upgrade, a valid
 * Sec-WebSocket-Key, Sec-WebSocket-Version 13, no body. Returns true when
 * valid; otherwise the refusal (400 or 426) has been queued.
 */
bool routes_check_upgrade(struct conn *c, const struct http_request *req);

/* The global connection cap: take a slot (true) or answer 503 (false). */
bool routes_take_ws_slot(struct conn *c);
/* Give a slot back when the upgrade fails after routes_take_ws_slot. */
void routes_give_ws_slot(struct conn *c);

#endif
