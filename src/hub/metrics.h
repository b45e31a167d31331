/*
 * metrics: {prefix}/metrics, the Prometheus text of every counter chatd
 * keeps. Worker thread of the connection (it reads counters that other
 * threads write, all atomics, and the registry under its stripe locks).
 */
#ifndef CHATD_HUB_METRICS_H
#define CHATD_HUB_METRICS_H

struct conn;
struct hub;
struct http_request;

/* Answer a GET/HEAD of /metrics. */
void metrics_respond(struct hub *hub, struct conn *c, const struct http_request *req);

#endif
