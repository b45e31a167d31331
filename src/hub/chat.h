/*
 * chat: the router behind the hub. Turns client messages into storage
 * requests and storage results into acknowledgements and deliveries.
 *
 * The path of a message:
 *   1. a worker calls the router with a parsed message (chat_handle);
 *   2. validation, rate limit, role checks happen there, on the worker;
 *   3. anything that needs the session (ownership, seq, flags) is queued to
 *      the store's writer thread;
 *   4. the writer commits a batch and calls chat_on_batch on its own thread,
 *      which frames each result once and posts, in commit order, one message
 *      per worker holding that worker's acks and the batch's events;
 *   5. each worker delivers the events to its own connections: the devices
 *      of the session's owner and the admins that joined it.
 * Because one thread (the writer) orders every event and each worker's inbox
 * is FIFO, every connection sees a session's events in seq order.
 *
 * Per-worker state (struct chat_local: the admins online on this worker and
 * which sessions they joined) is owned by that worker's thread and touched by
 * no other, except its `out` counters: atomics written by that worker only
 * and read by /metrics from any thread. Per-client state (router_state) is
 * owned by the client's worker. struct chat's shared parts and the locks
 * they take are listed in chat_int.h ("Ownership"): the joined-admins table
 * (joined_lock), the assistant's delta batch (its HTTP client thread), and
 * the registry's stripe locks for the lookups in chat_bus_deliver.
 */
#ifndef CHATD_HUB_CHAT_H
#define CHATD_HUB_CHAT_H

#include "bus/bus.h"
#include "hub/hub.h"
#include "store/store.h"
#include "util/text.h"

struct chat;

/* Create the router for a hub and a store; attach with hub->router. */
int chat_init(struct chat **out, struct hub *hub, unsigned nworkers, char *err, size_t errlen);
void chat_free(struct chat *ch);
/* Give the router its store (after store_open, which needs chat_on_batch). */
void chat_set_store(struct chat *ch, struct store *st);

/* Give the router its bus (after bus_*_open, which needs chat_bus_deliver). */
void chat_set_bus(struct chat *ch, struct bus *bus);

/* Give the router its assistant (NULL: none), before traffic; the
 * assistant is made with chat_assistant_hooks() and the router as app. */
struct assistant;
void chat_set_assistant(struct chat *ch, struct assistant *a);
const struct assistant_hooks *chat_assistant_hooks(void);

/* Give the router its help webhook (hub/webhook.h; NULL: none), before
 * traffic: each new help request, once committed, is handed to it from
 * the storage writer's thread (chat_on_batch), and /metrics shows its
 * counters. The router never frees it. */
struct webhook;
void chat_set_webhook(struct chat *ch, struct webhook *w);

/* The store's batch callback (writer thread): replies go to their
 * workers, the batch's events to the bus. */
void chat_on_batch(void *arg, struct store_req **reqs, size_t n);
/* The bus's handler: events to deliver to this node's connections (the
 * thread the bus delivers on). */
void chat_bus_deliver(void *app, const struct bus_event *ev, size_t n);
/* The bus's fill handler (bus_handler.fill): the stored events of session
 * between after and before, read from storage and delivered as if they
 * had come. */
int64_t chat_bus_fill(void *app, const char *session, const char *owner, int64_t after,
                      int64_t before);
/* The bus's kick handler (bus_handler.kick): see hub_kick. */
void chat_bus_kick(void *app, const char *user, uint64_t conn_id);
/* The bus's stop handler (bus_handler.stop): the answer of session stops
 * if it runs here. */
void chat_bus_stop(void *app, const char *session);

extern const struct router_ops chat_router_ops;

/* HTTP API routes that need storage ({prefix}/api/sessions...); path/len is
 * the request path after the prefix. Returns false when the path is not one
 * of them. Worker thread. */
bool chat_route_api(struct chat *ch, struct conn *c, const struct http_request *req,
                    const char *path, size_t len);

/* Accessors for the HTTP API (api.c). */
struct store *chat_store(struct chat *ch);
struct hub *chat_hub(struct chat *ch);

/* For /metrics: counters by message type and error code. */
void chat_write_metrics(struct chat *ch, struct text *t);

#endif
