/*
 * DESIGN: a flat match on the path after the prefix. WebSocket routes share
 * one validation (net_check_upgrade) so every endpoint refuses a broken
 * upgrade the same way, before any authentication work is done.
 */
#include "hub/routes.h"

#include <string.h>

#include "http/request.h"
#include "hub/chat.h"
#include "hub/hub.h"
#include "hub/metrics.h"
#include "hub/web.h"
#include "net/conn.h"
#include "net/upgrade.h"
#include "store/store.h"
#include "util/log.h"

/* ---- echo -------------------------------------------------------------- */

static void echo_message(struct conn *c, unsigned opcode, uint8_t *data, size_t len)
{
    conn_send(c, opcode, data, len);
}

static const struct conn_handler echo_handler = {
    .name = "echo",
    .on_message = echo_message,
};

static void route_echo(struct conn *c, const struct http_request *req)
{
    if (!net_check_upgrade(c, req))
        return;
    if (atomic_load(&conn_worker(c)->srv->shutting_down)) {
        conn_http_error(c, 503, "unavailable", "server is shutting down", -1, NULL, false);
        return;
    }
    if (!net_take_ws_slot(c))
        return;
    conn_upgrade(c, req, &echo_handler, NULL);
}

/* ---- plain HTTP -------------------------------------------------------- */

static void reply_json(struct conn *c, const struct http_request *req, int status, const char *body)
{
    conn_http_respond(c, status, "application/json", body, strlen(body), req->keep_alive,
                      http_request_is_head(req));
}

static void routes_dispatch(void *app, struct conn *c, const struct http_request *req)
{
    struct server *srv = conn_worker(c)->srv;
    const char *prefix = srv->cfg->prefix;
    size_t pl = strlen(prefix);
    bool get = http_request_is_get(req) || http_request_is_head(req);

    /* The one place where the prefix is matched: every route below sees
     * only the path after it. */
    if (req->path_len < pl || memcmp(req->path, prefix, pl) != 0) {
        conn_http_error(c, 404, "not_found", "no such route", -1, NULL,
                        req->keep_alive && !req->has_body);
        return;
    }
    const char *path = req->path + pl;
    size_t len = req->path_len - pl;

    struct hub *hub = app;
    if (hub && http_path_is(path, len, "/ws")) {
        hub_route_ws(hub, c, req);
        return;
    }
    if (hub && hub_route_api(hub, c, req, path, len))
        return;
    if (hub && hub->router && chat_route_api(hub->router, c, req, path, len))
        return;
    if (http_path_is(path, len, "/metrics")) {
        metrics_respond(hub, c, req);
        return;
    }
    if (srv->cfg->echo && http_path_is(path, len, "/echo")) {
        route_echo(c, req);
        return;
    }
    if (http_path_is(path, len, "/healthz") || http_path_is(path, len, "/readyz")) {
        if (!get) {
            conn_http_error(c, 405, "method_not_allowed", "use GET", -1, "Allow: GET, HEAD\r\n",
                            req->keep_alive && !req->has_body);
            return;
        }
        if (http_path_is(path, len, "/healthz"))
            reply_json(c, req, 200, "{\"status\":\"ok\"}");
        else if (atomic_load(&srv->shutting_down) ||
                 (hub && hub->router && !store_healthy(chat_store(hub->router))))
            reply_json(c, req, 503,
                       "{\"status\":\"unavailable\",\"error\":{\"code\":\"unavailable\","
                       "\"message\":\"shutting down or storage unavailable\"}}");
        else
            reply_json(c, req, 200, "{\"status\":\"ready\"}");
        return;
    }
    if (web_route(c, req, prefix, path, len))
        return;
    conn_http_error(c, 404, "not_found", "no such route", -1, NULL,
                    req->keep_alive && !req->has_body);
}

const struct net_ops routes_net_ops = {
    .on_request = routes_dispatch,
};
