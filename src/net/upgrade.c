/*
 * DESIGN: every WebSocket route refuses a broken upgrade the same way,
 * before any authentication work is done, and takes its place under the
 * global connection cap in one atomic step (an add that is undone when it
 * went over), so the cap holds however many workers upgrade at once.
 */
#include "net/upgrade.h"

#include <string.h>

#include "http/request.h"
#include "net/conn.h"
#include "util/log.h"
#include "ws/handshake.h"

bool net_check_upgrade(struct conn *c, const struct http_request *req)
{
    const struct http_header *upgrade = http_request_header(req, "upgrade");
    const struct http_header *connection = http_request_header(req, "connection");
    const struct http_header *version = http_request_header(req, "sec-websocket-version");
    const struct http_header *key = http_request_header(req, "sec-websocket-key");
    const char *why = NULL;

    if (!upgrade || !http_token_list_has(upgrade->value, upgrade->value_len, "websocket")) {
        conn_http_error(c, 426, "upgrade_required",
                        "this endpoint speaks WebSocket: send an upgrade request", -1,
                        "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
                        req->keep_alive && !req->has_body);
        return false;
    }
    if (!http_request_is_get(req))
        why = "a WebSocket upgrade must use GET";
    else if (req->minor < 1)
        why = "a WebSocket upgrade needs HTTP/1.1";
    else if (req->has_body)
        why = "a WebSocket upgrade must not have a body";
    else if (!http_request_header(req, "host"))
        why = "missing Host header";
    else if (!connection ||
             !http_token_list_has(connection->value, connection->value_len, "upgrade"))
        why = "missing 'Connection: Upgrade'";
    else if (!key || http_request_header_count(req, "sec-websocket-key") != 1 ||
             !ws_key_valid(key->value, key->value_len))
        why = "missing or invalid Sec-WebSocket-Key";
    if (why) {
        conn_http_error(c, 400, "bad_request", why, -1, NULL, false);
        return false;
    }
    if (!version || version->value_len != 2 || memcmp(version->value, "13", 2) != 0) {
        conn_http_error(c, 426, "upgrade_required", "Sec-WebSocket-Version must be 13", -1,
                        "Sec-WebSocket-Version: 13\r\n", false);
        return false;
    }
    return true;
}

bool net_take_ws_slot(struct conn *c)
{
    struct server *srv = conn_worker(c)->srv;
    uint64_t n = atomic_fetch_add(&srv->stats.ws_open, 1) + 1;
    if (n > srv->cfg->max_connections) {
        atomic_fetch_sub(&srv->stats.ws_open, 1);
        log_warn("connection_refused", "reason=max_connections limit=%u",
                 srv->cfg->max_connections);
        conn_http_error(c, 503, "unavailable", "server is at its connection limit", 1000, NULL,
                        false);
        return false;
    }
    c->counted_ws = true;
    return true;
}

void net_give_ws_slot(struct conn *c)
{
    if (c->counted_ws) {
        atomic_fetch_sub(&conn_worker(c)->srv->stats.ws_open, 1);
        c->counted_ws = false;
    }
}
