/*
 * routes: which HTTP request goes where. net calls it (through
 * routes_net_ops) on the connection's worker thread with a parsed request
 * head; answers it (conn_http_*) or upgrades it
 * (conn_upgrade). Built-in routes: {prefix}/healthz, {prefix}/readyz and,
 * with --echo, the {prefix}/echo WebSocket. Everything else is 404 with
 * chatd's JSON error body.
 */
#ifndef CHATD_HUB_ROUTES_H
#define CHATD_HUB_ROUTES_H

#include "net/worker.h"

/* The table main registers with the server (server.ops); its `app` is the
 * struct hub. */
extern const struct net_ops routes_net_ops;

#endif
