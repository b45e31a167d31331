/*
 * DESIGN: a flat match on the path after the prefix. WebSocket routes share
 * one validation (net_check_upgrade) so every endpoint refuses a broken
 * upgrade the same way, before any authentication work is done.
 */
#include "hub/routes.h"

#include <string.h>

#include "net/conn.h"
#include "http/request.h"
#include "hub/chat.h"
#include "hub/hub.h"
#include "store/store.h"
#include "util/log.h"
#include "hub/web.h"
#include "net/upgrade.h"

/* Is the path after the prefix exactly this route? */
static bool path_is(const char *path, size_t len, const char *route)
{
    size_t rl = strlen(route);
    return len == rl && memcmp(path, route, rl) == 0;
}

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
    if (atomic_load(&c->w->srv->shutting_down)) {
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

/* ---- /metrics ---------------------------------------------------------- */

struct dev_hist {
    uint64_t buckets[7]; /* devices per user: 1, 2, 3, 5, 10, 20, +Inf */
    uint64_t sum, count;
};

static void dev_hist_add(void *arg, const char *user, size_t len, unsigned n)
{
    static const unsigned bounds[6] = {1, 2, 3, 5, 10, 20};
    struct dev_hist *h = arg;
    (void)user;
    (void)len;
    int i = 0;
    while (i < 6 && n > bounds[i])
        i++;
    h->buckets[i]++;
    h->sum += n;
    h->count++;
}

static void metrics_respond(struct conn *c, const struct http_request *req)
{
    struct server *srv = c->w->srv;
    struct hub *hub = srv->app;
    struct server_stats *st = &srv->stats;
    struct worker_stats ws;
    server_sum_stats(srv, &ws);
    struct text t = TEXT_INIT;
    text_printf(
        &t,
        "# HELP chatd_connections_open Open WebSocket connections.\n"
        "# TYPE chatd_connections_open gauge\n"
        "chatd_connections_open %llu\n"
        "# HELP chatd_tcp_connections_open Open TCP connections (HTTP and WebSocket).\n"
        "# TYPE chatd_tcp_connections_open gauge\n"
        "chatd_tcp_connections_open %llu\n"
        "# HELP chatd_tcp_connections_total Accepted TCP connections.\n"
        "# TYPE chatd_tcp_connections_total counter\n"
        "chatd_tcp_connections_total %llu\n"
        "# HELP chatd_http_requests_total HTTP request heads parsed.\n"
        "# TYPE chatd_http_requests_total counter\n"
        "chatd_http_requests_total %llu\n"
        "# HELP chatd_ws_messages_in_total WebSocket messages received.\n"
        "# TYPE chatd_ws_messages_in_total counter\n"
        "chatd_ws_messages_in_total %llu\n"
        "# HELP chatd_ws_messages_out_total WebSocket messages queued for sending.\n"
        "# TYPE chatd_ws_messages_out_total counter\n"
        "chatd_ws_messages_out_total %llu\n"
        "# HELP chatd_send_queue_drops_total Connections closed because they read too slowly.\n"
        "# TYPE chatd_send_queue_drops_total counter\n"
        "chatd_send_queue_drops_total %llu\n"
        "# HELP chatd_input_budget_closes_total Connections closed for sending past their input "
        "budget.\n"
        "# TYPE chatd_input_budget_closes_total counter\n"
        "chatd_input_budget_closes_total %llu\n",
        (unsigned long long)atomic_load(&st->ws_open),
        (unsigned long long)atomic_load(&st->conns_open),
        (unsigned long long)atomic_load(&st->conns_total),
        (unsigned long long)atomic_load(&ws.http_requests),
        (unsigned long long)atomic_load(&ws.ws_messages_in),
        (unsigned long long)atomic_load(&ws.ws_messages_out),
        (unsigned long long)atomic_load(&ws.send_queue_drops),
        (unsigned long long)atomic_load(&ws.input_budget_closes));
    if (hub) {
        struct dev_hist h = {{0}, 0, 0};
        registry_foreach(&hub->registry, dev_hist_add, &h);
        static const char *const le[7] = {"1", "2", "3", "5", "10", "20", "+Inf"};
        uint64_t cum = 0;
        text_printf(&t, "# HELP chatd_user_devices Open devices per online user.\n"
                        "# TYPE chatd_user_devices histogram\n");
        for (int i = 0; i < 7; i++) {
            cum += h.buckets[i];
            text_printf(&t, "chatd_user_devices_bucket{le=\"%s\"} %llu\n", le[i],
                        (unsigned long long)cum);
        }
        text_printf(&t, "chatd_user_devices_sum %llu\nchatd_user_devices_count %llu\n",
                    (unsigned long long)h.sum, (unsigned long long)h.count);
        if (hub->router)
            chat_write_metrics(hub->router, &t);
    }
    if (t.failed)
        conn_http_error(c, 500, "internal", "out of memory", -1, NULL, false);
    else
        conn_http_respond(c, 200, "text/plain; version=0.0.4", t.buf, t.len, req->keep_alive,
                          http_request_is_head(req));
    text_release(&t);
}

static void routes_dispatch(void *app, struct conn *c, const struct http_request *req)
{
    struct server *srv = c->w->srv;
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
    if (hub && path_is(path, len, "/ws")) {
        hub_route_ws(hub, c, req);
        return;
    }
    if (hub && hub_route_api(hub, c, req, path, len))
        return;
    if (hub && hub->router && chat_route_api(hub->router, c, req, path, len))
        return;
    if (path_is(path, len, "/metrics")) {
        metrics_respond(c, req);
        return;
    }
    if (srv->cfg->echo && path_is(path, len, "/echo")) {
        route_echo(c, req);
        return;
    }
    if (path_is(path, len, "/healthz") || path_is(path, len, "/readyz")) {
        if (!get) {
            conn_http_error(c, 405, "method_not_allowed", "use GET", -1, "Allow: GET, HEAD\r\n",
                            req->keep_alive && !req->has_body);
            return;
        }
        if (path_is(path, len, "/healthz"))
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
