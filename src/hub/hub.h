/*
 * hub: the chat layer's front door. Owns the JWT verifier, the registry of
 * online users, and the per-connection client state; routes the `/ws`
 * upgrade (authentication, origin check, device and connection limits) and
 * the `/api` requests; parses every client message and hands it to the
 * router by type.
 *
 * Threads: the struct hub is built by the main thread before the workers
 * start (hub_init, then main attaches the router) and is read-only
 * afterwards, except for the registry (its own striped locks), the error
 * counters (atomics) and the router's own state. Every
 * callback below runs on the worker thread that owns the connection; a
 * client (struct client) is owned by its connection's worker and touched by
 * no other thread. To reach a connection
 * on another worker, the hub posts to that worker's inbox with the
 * connection id.
 *
 * Router seam: when no router is attached (hub->router == NULL), every chat
 * message type is answered with `error` `unavailable` and the connection
 * stays open, so the connection layer can be tested alone.
 */
#ifndef CHATD_HUB_HUB_H
#define CHATD_HUB_HUB_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "auth/jwt.h"
#include "bus/bus.h"
#include "conf/config.h"
#include "hub/registry.h"
#include "net/conn.h"
#include "util/rate.h"
#include "util/sbuf.h"

struct server;
struct conn;
struct worker;

/* The chat message types a router handles (docs/protocol.md section 3; the hub
 * answers `refresh` itself). hub_chat_types[] holds their wire names. */
enum chat_type {
    CHAT_USER_MESSAGE = 0,
    CHAT_ADMIN_MESSAGE,
    CHAT_TYPING,
    CHAT_READ,
    CHAT_HELP,
    CHAT_MODEL,
    CHAT_JOIN,
    CHAT_LEAVE,
    CHAT_RESUME,
    CHAT_STOP,
    CHAT_RESOLVE,
    CHAT_TYPE_COUNT
};
extern const char *const hub_chat_types[CHAT_TYPE_COUNT];

/* The error codes of docs/protocol.md section 4 (and `unauthorized` for a
 * refused refresh); hub_error_codes[] holds their wire names. */
enum chat_error {
    ERR_BAD_JSON = 0,
    ERR_UNKNOWN_TYPE,
    ERR_INVALID_FIELD,
    ERR_CONTENT_TOO_LARGE,
    ERR_RATE_LIMITED,
    ERR_SESSION_NOT_FOUND,
    ERR_FORBIDDEN,
    ERR_UNAVAILABLE,
    ERR_ASSISTANT_TIMEOUT,
    ERR_ASSISTANT_ERROR,
    ERR_INTERNAL,
    ERR_UNAUTHORIZED,
    ERR_COUNT
};
extern const char *const hub_error_codes[ERR_COUNT];

/* Why a WebSocket upgrade was refused (for /metrics). */
enum hub_refusal {
    HUB_REFUSED_UNAUTHORIZED = 0, /* no token, or a bad one: 401 */
    HUB_REFUSED_DEVICE_LIMIT,     /* --max-devices: 429 */
    HUB_REFUSED_ORIGIN,           /* --allowed-origins: 403 */
    HUB_REFUSED_UNAVAILABLE,      /* chat off, shutting down: 503 */
    HUB_REFUSAL_COUNT
};
extern const char *const hub_refusal_names[HUB_REFUSAL_COUNT];
struct http_request;
struct hub;

/* One chat connection's identity and state. Owned by its conn (conn->data)
 * and its worker thread. */
struct client_refresh;

struct client {
    struct conn *conn; /* borrowed; valid while the client lives (client_hub) */
    int64_t exp;       /* token expiry, unix seconds */
    const char *name;  /* NUL-terminated: in the client's allocation (or its sub
                        * itself when the token names no one else), or in
                        * refresh->text after a refresh */
    const char *roles_json;         /* likewise (or a constant for the usual roles): the
                                     * roles as a JSON array text */
    struct client_refresh *refresh; /* owned; NULL until the first refresh message */
    void *router_state; /* owned by the router */
    uint64_t sub_hash;  /* the router's hash of sub */
    uint8_t sub_len;
    bool admin : 1;
    bool registered : 1;   /* holds a registry entry */
    bool counted : 1;      /* counted by the bus across nodes (bus_admit) */
    bool watching : 1;     /* the bus brings this node the user's events (bus_watch) */
    bool watching_all : 1; /* ... and every session's (an admin) */
    char sub[];            /* NUL-terminated; name and roles follow it when not shared */
};

/* The client's hub: the app of its connection's server (main attaches the
 * hub there), so that no client carries a pointer of its own. */
static inline struct hub *client_hub(const struct client *cl)
{
    return conn_worker(cl->conn)->srv->app;
}

/* What a router does with the messages of the types it knows. Called on the
 * client's worker thread with the parsed message (borrowed). */
struct router_ops {
    /* A client finished its upgrade (after connection_status was queued). */
    void (*client_opened)(void *router, struct client *cl);
    /* A message of a chat type; id is its validated "id" or NULL. */
    void (*handle)(void *router, struct client *cl, enum chat_type type, const char *id,
                   json_t *msg);
    /* A user_message (admin false) or admin_message the hub read without
     * parsing it into a tree (the common shape: string members type, id,
     * session_id and content, nothing else): id and sid are NULL when
     * absent, content (len bytes, NUL-terminated) is malloc'd and the
     * router's. May be NULL: then every message goes to handle. */
    void (*handle_message)(void *router, struct client *cl, bool admin, const char *id,
                           const char *sid, char *content, size_t len);
    /* The client's send queue became empty (may be NULL). */
    void (*client_drained)(void *router, struct client *cl);
    /* The client is closing (router_state must be released). */
    void (*client_closed)(void *router, struct client *cl);
    /* A refresh changed cl->admin (was_admin is the old value): a client
     * that lost the role leaves every session it joined. */
    void (*client_roles_changed)(void *router, struct client *cl, bool was_admin);
    /* A frame for every device of user, on every node (may be NULL). */
    void (*notify_user)(void *router, const char *user, struct sbuf *f, uint32_t off, uint32_t len);
};

struct hub {
    /* read-only once the workers start (hub_init fills them; main attaches
     * the router, router_ops and router, before server_start) */
    const struct config *cfg;
    struct server *srv;
    struct jwt_verifier *jwt;
    const struct router_ops *router_ops; /* NULL: no router attached */
    struct bus *bus;                     /* NULL, or one that counts devices across nodes */
    void *router;
    char *models_json; /* [{"id":..,"name":..}] of cfg->models, in order (owned) */
    size_t models_len;
    /* shared: atomics, any thread adds (hub_count_error), /metrics reads */
    atomic_uint_fast64_t errors[ERR_COUNT]; /* error replies by code */
    /* WebSocket upgrades refused, by reason (enum hub_refusal) */
    atomic_uint_fast64_t refused[HUB_REFUSAL_COUNT];
    /* shared, internally locked (stripe locks, see registry.h) */
    struct registry registry;
};

/* Authenticate an HTTP API request (Bearer token or ?token=); on failure the
 * 401/403 answer is queued and false returned. Worker thread. */
bool hub_api_auth(struct hub *h, struct conn *c, const struct http_request *req,
                  struct jwt_claims *claims, bool need_admin);

/* Count one error reply with this code (any thread). */
static inline void hub_count_error(struct hub *h, enum chat_error code)
{
    atomic_fetch_add_explicit(&h->errors[code], 1, memory_order_relaxed);
}

/* Is model_id one of the configured models? */
bool hub_model_known(const struct hub *h, const char *model_id);

/*
 * Build the hub from the configuration: reads the JWT key or secret file.
 * Returns 0, or -EINVAL with a one-line message in err (short secret,
 * unreadable key file, no key at all without --dev/--echo).
 * dev_secret: a random secret to use in --dev mode when no key is set (or
 * NULL).
 */
int hub_init(struct hub *h, const struct config *cfg, struct server *srv, const char *dev_secret,
             char *err, size_t errlen);
void hub_release(struct hub *h);

/* Is chat available (a JWT key is configured)? */
bool hub_enabled(const struct hub *h);

/* {prefix}/ws: validate, authenticate, admit, upgrade. Worker thread. */
void hub_route_ws(struct hub *h, struct conn *c, const struct http_request *req);
/* {prefix}/api/...: path/len is the request path after the prefix (the
 * router matched the prefix). Returns false when no API route matched (the
 * caller answers 404). Worker thread. */
bool hub_route_api(struct hub *h, struct conn *c, const struct http_request *req,
                   const char *path, size_t len);

/* Send a JSON object to a client (copied). Worker thread of the client. */
int client_send_json(struct client *cl, json_t *obj);
/* Send `{"type":"error",...}` (recoverable unless ERR_INTERNAL) and count
 * it; retry_after_ms < 0: none; id may be NULL. */
void client_send_error(struct client *cl, enum chat_error code, const char *message,
                       int64_t retry_after_ms, const char *id);

/* Send a shared frame to one connection anywhere (any worker). Takes a new
 * reference. close_code != 0: close the connection with it afterwards.
 * Any thread. */
void hub_send_to_conn(struct hub *h, uint32_t worker, uint64_t conn_id, struct sbuf *frame,
                      uint32_t off, uint32_t len, uint16_t close_code, const char *close_reason);

/* Another node evicted user's device conn_id of this node to make room
 * for a new one (--device-policy evict-oldest across nodes): tell it and
 * close it, if it is still here. Any thread. */
void hub_kick(struct hub *h, const char *user, uint64_t conn_id);
/* Close every chat connection of worker w with 1011 and reason (what it
 * missed comes back with a resume). w's thread. */
void hub_close_clients(struct hub *h, struct worker *w, const char *reason);

#endif
