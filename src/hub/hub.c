/*
 * DESIGN: the order of checks on an upgrade is cheapest-first and never
 * leaks more than it must: a malformed upgrade (400/426) is refused before
 * the origin (403), the origin before the token (401), the token before any
 * shared state is touched (503 global cap, then 429 device limit). Only an
 * authenticated user can learn about limits.
 *
 * Cross-worker sends carry the target connection id, never a pointer: the
 * target worker looks the id up in its own map, and a connection that closed
 * meanwhile is simply not found.
 */
#include "hub/hub.h"
#include "hub/wire.h"

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "net/conn.h"
#include "http/request.h"
#include "net/upgrade.h"
#include "net/worker.h"
#include "util/clock.h"
#include "util/file.h"
#include "util/jread.h"
#include "util/log.h"
#include "util/oom.h"
#include "ws/frame.h"

#define LIMIT_RETRY_AFTER_MS 5000
/* refresh verifies a signature (costly with RS256): 5, then 6 a minute. */
#define REFRESH_PER_MIN 6
#define REFRESH_BURST 5

const char *const hub_chat_types[CHAT_TYPE_COUNT] = {
    [CHAT_USER_MESSAGE] = "user_message",
    [CHAT_ADMIN_MESSAGE] = "admin_message",
    [CHAT_TYPING] = "typing_indicator",
    [CHAT_READ] = "read",
    [CHAT_HELP] = "help_request",
    [CHAT_MODEL] = "model_select",
    [CHAT_JOIN] = "admin_join",
    [CHAT_LEAVE] = "admin_leave",
    [CHAT_RESUME] = "resume",
    [CHAT_STOP] = "stop_generation",
    [CHAT_RESOLVE] = "resolve_help",
};

const char *const hub_error_codes[ERR_COUNT] = {
    [ERR_BAD_JSON] = "bad_json",
    [ERR_UNKNOWN_TYPE] = "unknown_type",
    [ERR_INVALID_FIELD] = "invalid_field",
    [ERR_CONTENT_TOO_LARGE] = "content_too_large",
    [ERR_RATE_LIMITED] = "rate_limited",
    [ERR_SESSION_NOT_FOUND] = "session_not_found",
    [ERR_FORBIDDEN] = "forbidden",
    [ERR_UNAVAILABLE] = "unavailable",
    [ERR_ASSISTANT_TIMEOUT] = "assistant_timeout",
    [ERR_ASSISTANT_ERROR] = "assistant_error",
    [ERR_INTERNAL] = "internal",
    [ERR_UNAUTHORIZED] = "unauthorized",
};

/* ---- setup --------------------------------------------------------------- */

/* Read a key or secret file named by option `what`. */
static int read_key_file(const char *path, const char *what, char **out, size_t *len, char *err,
                         size_t errlen)
{
    int rc = file_read_small(path, 1u << 20, out, len);
    if (rc < 0) {
        snprintf(err, errlen, "%s: cannot read '%s': %s", what, path, strerror(-rc));
        return -EINVAL;
    }
    return 0;
}

int hub_init(struct hub *h, const struct config *cfg, struct server *srv, const char *dev_secret,
             char *err, size_t errlen)
{
    memset(h, 0, sizeof *h);
    h->cfg = cfg;
    h->srv = srv;
    if (registry_init(&h->registry) != 0) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    /* What connection_status offers: every model's id and display name, in
     * the configured order (--model or --models). */
    struct jw w;
    jw_init(&w, 64, 0);
    jw_raw(&w, "[", 1);
    for (unsigned i = 0; i < cfg->nmodels; i++) {
        const struct conf_model *cm = &cfg->models[i];
        if (i)
            jw_raw(&w, ",", 1);
        jw_open(&w);
        jw_kstr(&w, "id", cm->id);
        jw_kstr(&w, "name", cm->name);
        jw_close(&w);
    }
    jw_raw(&w, "]", 1);
    struct sbuf *mb = jw_take(&w);
    h->models_json = mb ? malloc(mb->len + 1) : NULL;
    if (!h->models_json) {
        if (mb)
            sbuf_unref(mb);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    memcpy(h->models_json, mb->data, mb->len);
    h->models_json[mb->len] = '\0';
    h->models_len = mb->len;
    sbuf_unref(mb);

    static const enum jwt_alg algs[] = {
        [CONF_JWT_HS256] = JWT_HS256, [CONF_JWT_RS256] = JWT_RS256, [CONF_JWT_ES256] = JWT_ES256};
    struct jwt_config jc = {.alg = algs[cfg->jwt_alg],
                            .issuer = cfg->jwt_issuer,
                            .audience = cfg->jwt_audience,
                            .leeway_s = 60};
    char *file = NULL;
    size_t file_len = 0;
    int rc;
    if (jc.alg == JWT_HS256) {
        if (cfg->jwt_secret_file) {
            if ((rc = read_key_file(cfg->jwt_secret_file, "--jwt-secret-file", &file, &file_len,
                                    err, errlen)) < 0)
                return rc;
            /* A file written by `echo` ends in a newline that is not part of
             * the secret. */
            if (file_len && file[file_len - 1] == '\n')
                file_len--;
            if (file_len && file[file_len - 1] == '\r')
                file_len--;
            jc.secret = (const unsigned char *)file;
            jc.secret_len = file_len;
        } else if (cfg->jwt_secret) {
            jc.secret = (const unsigned char *)cfg->jwt_secret;
            jc.secret_len = strlen(cfg->jwt_secret);
        } else if (dev_secret) {
            jc.secret = (const unsigned char *)dev_secret;
            jc.secret_len = strlen(dev_secret);
        }
        if (!jc.secret && (cfg->echo))
            return 0; /* echo-only server: chat disabled */
        if (!jc.secret) {
            snprintf(err, errlen,
                     "no JWT key configured: set --jwt-secret, --jwt-secret-file or "
                     "--jwt-public-key (or use --dev)");
            return -EINVAL;
        }
        if (jc.secret_len < 32) {
            file_free_secret(file, file_len);
            snprintf(err, errlen, "%s: the HS256 secret must be at least 32 bytes (got %zu)",
                     cfg->jwt_secret_file ? "--jwt-secret-file" : "--jwt-secret", jc.secret_len);
            return -EINVAL;
        }
    } else {
        if (!cfg->jwt_public_key) {
            snprintf(err, errlen, "--jwt-alg %s needs --jwt-public-key",
                     conf_jwt_alg_names[cfg->jwt_alg]);
            return -EINVAL;
        }
        if ((rc = read_key_file(cfg->jwt_public_key, "--jwt-public-key", &file, &file_len, err,
                                errlen)) < 0)
            return rc;
        jc.public_key_pem = file;
        jc.public_key_len = file_len;
    }
    char why[256] = "";
    rc = jwt_verifier_new(&h->jwt, &jc, why, sizeof why);
    file_free_secret(file, file_len);
    if (rc != 0) {
        snprintf(err, errlen, "%s: %s", jc.alg == JWT_HS256 ? "--jwt-secret" : "--jwt-public-key",
                 why);
        return -EINVAL;
    }
    return 0;
}

bool hub_model_known(const struct hub *h, const char *model_id)
{
    for (unsigned i = 0; i < h->cfg->nmodels; i++)
        if (strcmp(h->cfg->models[i].id, model_id) == 0)
            return true;
    return false;
}

void hub_release(struct hub *h)
{
    free(h->models_json);
    jwt_verifier_free(h->jwt);
    registry_release(&h->registry);
}

bool hub_enabled(const struct hub *h)
{
    return h->jwt != NULL;
}

/* ---- frames and sends ------------------------------------------------------ */

int client_send_json(struct client *cl, json_t *obj)
{
    assert(worker_current() == conn_worker(cl->conn)); /* a client belongs to its worker */
    char stack[2048];
    size_t n = json_dumpb(obj, stack, sizeof stack, JSON_COMPACT);
    if (n == 0) {
        /* Out of memory (chatd's objects always encode otherwise): a
         * frame skipped in silence would leave a gap, so the device is
         * closed and comes back with a resume. */
        conn_ws_close(cl->conn, WS_CLOSE_INTERNAL, "out of memory");
        return -ENOMEM;
    }
    if (n <= sizeof stack)
        return conn_send(cl->conn, WS_OP_TEXT, stack, n);
    char *heap = malloc(n);
    if (!heap) {
        conn_ws_close(cl->conn, WS_CLOSE_INTERNAL, "out of memory");
        return -ENOMEM;
    }
    json_dumpb(obj, heap, n, JSON_COMPACT);
    int rc = conn_send(cl->conn, WS_OP_TEXT, heap, n);
    free(heap);
    return rc;
}

void client_send_error(struct client *cl, enum chat_error code, const char *message,
                       int64_t retry_after_ms, const char *id)
{
    assert(worker_current() == conn_worker(cl->conn));
    hub_count_error(client_hub(cl), code);
    uint32_t off, len;
    struct sbuf *f = wire_error_frame(hub_error_codes[code], message, code != ERR_INTERNAL,
                                      retry_after_ms, id, &off, &len);
    if (f) {
        conn_send_shared(cl->conn, f, off, len);
        sbuf_unref(f);
    } else {
        /* No memory for the answer: the message must not go unanswered. */
        conn_ws_close(cl->conn, WS_CLOSE_INTERNAL, "out of memory");
    }
}

struct send_msg {
    struct inbox_msg base;
    uint64_t conn_id;
    struct sbuf *frame;
    uint32_t off, len;
    uint16_t close_code;
    char close_reason[64];
};

static void deliver(struct worker *w, uint64_t conn_id, struct sbuf *frame, uint32_t off,
                    uint32_t len, uint16_t close_code, const char *reason)
{
    struct conn *c = idmap_get(&w->by_id, conn_id);
    if (!c)
        return; /* closed meanwhile */
    if (frame)
        conn_send_shared(c, frame, off, len);
    if (close_code)
        conn_ws_close(c, close_code, reason);
}

static void send_msg_run(struct worker *w, struct inbox_msg *m)
{
    struct send_msg *sm = (struct send_msg *)m;
    deliver(w, sm->conn_id, sm->frame, sm->off, sm->len, sm->close_code, sm->close_reason);
    if (sm->frame)
        sbuf_unref(sm->frame);
    free(sm);
}

static void send_msg_drop(struct inbox_msg *m)
{
    struct send_msg *sm = (struct send_msg *)m;
    if (sm->frame)
        sbuf_unref(sm->frame);
    free(sm);
}

void hub_send_to_conn(struct hub *h, uint32_t worker, uint64_t conn_id, struct sbuf *frame,
                      uint32_t off, uint32_t len, uint16_t close_code, const char *close_reason)
{
    struct worker *target = &h->srv->workers[worker];
    if (worker_current() == target) {
        deliver(target, conn_id, frame, off, len, close_code, close_reason);
        return;
    }
    struct send_msg *sm = calloc(1, sizeof *sm);
    if (!sm)
        return;
    sm->base.run = send_msg_run;
    sm->base.drop = send_msg_drop;
    sm->conn_id = conn_id;
    sm->frame = frame ? sbuf_ref(frame) : NULL;
    sm->off = off;
    sm->len = len;
    sm->close_code = close_code;
    if (close_reason)
        snprintf(sm->close_reason, sizeof sm->close_reason, "%s", close_reason);
    worker_post(target, &sm->base);
}

static struct sbuf *notification(const char *code, const char *message, uint32_t *off,
                                 uint32_t *len)
{
    json_t *o =
        json_pack("{s:s, s:s, s:s}", "type", "notification", "code", code, "message", message);
    struct sbuf *b = o ? wire_frame_json(o, off, len) : NULL;
    json_decref(o);
    return b;
}

const char *const hub_refusal_names[HUB_REFUSAL_COUNT] = {
    [HUB_REFUSED_UNAUTHORIZED] = "unauthorized",
    [HUB_REFUSED_DEVICE_LIMIT] = "connection_limit",
    [HUB_REFUSED_ORIGIN] = "origin_not_allowed",
    [HUB_REFUSED_UNAVAILABLE] = "unavailable",
};

static void count_refusal(struct hub *h, enum hub_refusal why)
{
    atomic_fetch_add_explicit(&h->refused[why], 1, memory_order_relaxed);
}

/* ---- the chat connection ---------------------------------------------------- */

/* The roles as a JSON array text, in w (a token without roles is a
 * "user"). */
static void roles_to_json(const struct jwt_claims *cl, struct jw *w)
{
    jw_raw(w, "[", 1);
    if (cl->nroles == 0)
        jw_str(w, "user", 4);
    for (unsigned i = 0; i < cl->nroles; i++) {
        if (i)
            jw_raw(w, ",", 1);
        jw_str(w, cl->roles[i], strlen(cl->roles[i]));
    }
    jw_raw(w, "]", 1);
}

/* What a client keeps only once it has asked to refresh its token. */
struct client_refresh {
    struct rate_bucket budget; /* REFRESH_PER_MIN, REFRESH_BURST */
    char *text;                /* owned: name and roles of the last refreshed token */
};

/* The roles texts most tokens have, shared by every client that has them. */
static const char *const common_roles[] = {"[\"user\"]", "[\"admin\"]", "[\"admin\",\"user\"]",
                                           "[\"user\",\"admin\"]"};

static const char *common_roles_json(const char *roles, size_t len)
{
    for (size_t i = 0; i < sizeof common_roles / sizeof *common_roles; i++)
        if (strlen(common_roles[i]) == len && memcmp(common_roles[i], roles, len) == 0)
            return common_roles[i];
    return NULL;
}

/* One allocation holds the client and its strings (idle memory matters:
 * every open connection has one): the name only when it differs from sub,
 * the roles only when they are not one of the common texts. */
static struct client *client_new(const struct jwt_claims *claims, struct conn *c)
{
    struct jw w;
    jw_init(&w, 128, 0); /* grows for a long list */
    roles_to_json(claims, &w);
    if (w.failed) {
        jw_release(&w);
        return NULL;
    }
    const char *roles = common_roles_json(w.buf, w.len);
    size_t rl = roles ? 0 : w.len + 1;
    bool own_name = claims->name_len != claims->sub_len ||
                    memcmp(claims->name, claims->sub, claims->sub_len) != 0;
    size_t nl = own_name ? claims->name_len + 1 : 0;
    struct client *cl = calloc(1, offsetof(struct client, sub) + claims->sub_len + 1 + nl + rl);
    if (cl) {
        char *p = cl->sub;
        memcpy(p, claims->sub, claims->sub_len);
        p += claims->sub_len + 1;
        cl->name = cl->sub;
        if (own_name) {
            cl->name = memcpy(p, claims->name, claims->name_len);
            p += nl;
        }
        cl->roles_json = roles ? roles : memcpy(p, w.buf, w.len);
        cl->sub_len = (uint8_t)claims->sub_len;
        cl->admin = claims->is_admin;
        cl->exp = claims->exp;
        cl->conn = c;
    }
    jw_release(&w);
    return cl;
}

static void client_free(struct client *cl)
{
    if (cl->refresh) {
        free(cl->refresh->text);
        free(cl->refresh);
    }
    free(cl);
}

/* Take name and roles from a refreshed token (sub is unchanged); cl->refresh
 * exists (handle_refresh made it). */
static int client_rename(struct client *cl, const struct jwt_claims *claims)
{
    struct jw w;
    jw_init(&w, 128, 0); /* grows for a long list */
    roles_to_json(claims, &w);
    size_t rl = w.len;
    char *p = w.failed ? NULL : malloc(claims->name_len + rl + 2);
    if (!p) {
        jw_release(&w);
        return -ENOMEM;
    }
    memcpy(p, claims->name, claims->name_len);
    p[claims->name_len] = '\0';
    memcpy(p + claims->name_len + 1, w.buf, rl);
    p[claims->name_len + 1 + rl] = '\0';
    jw_release(&w);
    free(cl->refresh->text);
    cl->refresh->text = p;
    cl->name = p;
    cl->roles_json = p + claims->name_len + 1;
    return 0;
}

/* At once when the connection closes: the device leaves the registry now,
 * so a device that reconnects right after a clean close is not counted
 * twice (the client itself is freed later, in chat_on_close). */
static void chat_on_closing(struct conn *c)
{
    struct client *cl = c->data;
    assert(cl && cl->conn == c && worker_current() == conn_worker(c));
    if (cl->registered) {
        registry_remove(&client_hub(cl)->registry, cl->sub, cl->sub_len, c->id);
        cl->registered = false;
    }
    if (cl->counted) {
        bus_leave(client_hub(cl)->bus, cl->sub, c->id);
        cl->counted = false;
    }
    if (cl->watching) {
        bus_watch(client_hub(cl)->bus, cl->sub, -1);
        cl->watching = false;
    }
    if (cl->watching_all) {
        bus_watch(client_hub(cl)->bus, NULL, -1);
        cl->watching_all = false;
    }
}

static void chat_on_close(struct conn *c)
{
    struct client *cl = c->data;
    assert(cl && cl->conn == c && worker_current() == conn_worker(c));
    struct hub *h = client_hub(cl);
    if (h->router_ops && h->router_ops->client_closed)
        h->router_ops->client_closed(h->router, cl);
    assert(!cl->registered); /* chat_on_closing removed the device */
    idmap_del(&conn_worker(c)->by_id, c->id);
    struct log_quoted qu;
    log_info("ws_close", "conn=%llx user=%s", (unsigned long long)c->id,
             log_quote(&qu, cl->sub, cl->sub_len));
    c->data = NULL;
    client_free(cl);
}

static void chat_on_shutdown(struct conn *c)
{
    uint32_t off, len;
    struct sbuf *f =
        notification("shutdown", "the server is shutting down; reconnect shortly", &off, &len);
    if (f) {
        conn_send_shared(c, f, off, len);
        sbuf_unref(f);
    }
}

static void chat_on_tick(struct conn *c, int64_t now_ms, int64_t wall_ms)
{
    (void)now_ms;
    struct client *cl = c->data;
    if (wall_ms / 1000 >= cl->exp) {
        struct log_quoted qu;
        log_info("ws_token_expired", "conn=%llx user=%s", (unsigned long long)c->id,
                 log_quote(&qu, cl->sub, cl->sub_len));
        conn_ws_close(c, WS_CLOSE_POLICY, "token expired");
    }
}

static void handle_refresh(struct client *cl, json_t *msg, const char *id)
{
    if (!cl->refresh && !(cl->refresh = calloc(1, sizeof *cl->refresh))) {
        client_send_error(cl, ERR_INTERNAL, "out of memory", -1, id);
        return;
    }
    int64_t wait =
        rate_take(&cl->refresh->budget, clock_mono_ms(), REFRESH_PER_MIN, REFRESH_BURST, 1);
    if (wait) {
        client_send_error(cl, ERR_RATE_LIMITED, "too many 'refresh' messages; slow down", wait,
                          id);
        return;
    }
    const char *token = json_string_value(json_object_get(msg, "token"));
    if (!token) {
        client_send_error(cl, ERR_INVALID_FIELD, "refresh needs a string 'token'", -1, id);
        return;
    }
    struct jwt_claims claims;
    const char *why = "refused";
    int64_t now = clock_wall_ms() / 1000;
    int vrc = jwt_verify(client_hub(cl)->jwt, token, strlen(token), now, &claims, &why);
    if (vrc != 0) {
        client_send_error(cl, vrc == -ENOMEM ? ERR_INTERNAL : ERR_UNAUTHORIZED, why, -1, id);
        return;
    }
    if (claims.sub_len != cl->sub_len || memcmp(claims.sub, cl->sub, cl->sub_len) != 0) {
        client_send_error(cl, ERR_UNAUTHORIZED, "the token is for another user", -1, id);
        return;
    }
    /* The new token speaks for the connection from now on: its expiry, its
     * name and its roles. */
    if (client_rename(cl, &claims) != 0) {
        client_send_error(cl, ERR_INTERNAL, "out of memory", -1, id);
        return;
    }
    bool was_admin = cl->admin;
    cl->exp = claims.exp;
    cl->admin = claims.is_admin;
    if (cl->watching && cl->admin != cl->watching_all) {
        bus_watch(client_hub(cl)->bus, NULL, cl->admin ? 1 : -1);
        cl->watching_all = cl->admin;
    }
    json_t *o = json_pack("{s:s, s:I, s:s, s:o}", "type", "refreshed", "exp",
                          (json_int_t)claims.exp, "name", cl->name, "roles",
                          json_loads(cl->roles_json, 0, NULL));
    if (!o || (id && json_object_set_new(o, "id", json_string(id)) != 0)) {
        /* The refresh took effect: its answer must not go missing. */
        client_send_error(cl, ERR_INTERNAL, "out of memory (the token was refreshed)", -1, id);
    } else {
        client_send_json(cl, o);
    }
    json_decref(o);
    struct hub *h = client_hub(cl);
    if (was_admin != cl->admin && h->router_ops && h->router_ops->client_roles_changed)
        h->router_ops->client_roles_changed(h->router, cl, was_admin);
}

static bool valid_id(json_t *v)
{
    if (!json_is_string(v))
        return false;
    size_t n = json_string_length(v);
    return n >= 1 && n <= 64;
}

/* The message almost every client sends most: a user_message or
 * admin_message of string members type, id, session_id and content alone.
 * Read here with the strict reader (util/jread.h), which accepts exactly
 * the texts the general path's parser does, and handed to the router as
 * fields: no tree is built. True when it was handed on; false for anything
 * else (another type or member, a value of another kind, an id too long,
 * a key written with escapes, no memory...), which the general path then
 * reads and answers as always. */
static bool chat_read_message(struct client *cl, const uint8_t *data, size_t len)
{
    struct hub *h = client_hub(cl);
    if (!h->router_ops || !h->router_ops->handle_message)
        return false;
    struct jr_member m[4];
    size_t n;
    if (jr_object((const char *)data, len, m, 4, &n) != 0)
        return false;
    const struct jr_value *type = NULL, *idv = NULL, *sidv = NULL, *content = NULL;
    for (size_t i = 0; i < n; i++) {
        const struct jr_value **slot = NULL;
        if (m[i].key_len == 4 && memcmp(m[i].key, "type", 4) == 0)
            slot = &type;
        else if (m[i].key_len == 2 && memcmp(m[i].key, "id", 2) == 0)
            slot = &idv;
        else if (m[i].key_len == 10 && memcmp(m[i].key, "session_id", 10) == 0)
            slot = &sidv;
        else if (m[i].key_len == 7 && memcmp(m[i].key, "content", 7) == 0)
            slot = &content;
        if (!slot || m[i].v.type != JR_STRING)
            return false;
        *slot = &m[i].v; /* keys are unique: jr_object refuses duplicates */
    }
    bool admin;
    if (!type || !content)
        return false;
    if (jr_string_is(type, "user_message", 12))
        admin = false;
    else if (jr_string_is(type, "admin_message", 13))
        admin = true;
    else
        return false;
    char id[65], sid[32]; /* a session id has 26 bytes: longer is refused by the general path */
    if (idv && jr_string(idv, id, sizeof id) < 1) /* 1 to 64 bytes, as valid_id */
        return false;
    if (sidv && jr_string(sidv, sid, sizeof sid) < 0)
        return false;
    char *text = malloc(content->n); /* the quotes make room for the NUL */
    if (!text)
        return false;
    ssize_t tl = jr_string(content, text, content->n);
    assert(tl >= 0);
    h->router_ops->handle_message(h->router, cl, admin, idv ? id : NULL, sidv ? sid : NULL, text,
                                  (size_t)tl);
    return true;
}

static void chat_on_message(struct conn *c, unsigned opcode, uint8_t *data, size_t len)
{
    struct client *cl = c->data;
    assert(cl && cl->conn == c && worker_current() == conn_worker(c));
    struct hub *h = client_hub(cl);
    if (opcode != WS_OP_TEXT) {
        conn_ws_close(c, WS_CLOSE_UNSUPPORTED, "binary frames are not supported");
        return;
    }
    if (chat_read_message(cl, data, len))
        return;
    json_error_t jerr;
    oom_clear();
    json_t *msg = json_loadb((const char *)data, len, JSON_REJECT_DUPLICATES, &jerr);
    if (oom_seen()) {
        /* jansson calls a failed allocation a syntax error, and one while
         * it reads a string can even cut the string short and succeed:
         * a parse that ran out of memory is void (util/oom.h). */
        json_decref(msg);
        client_send_error(cl, ERR_INTERNAL, "out of memory; send it again", -1, NULL);
        return;
    }
    if (!msg || !json_is_object(msg)) {
        client_send_error(cl, ERR_BAD_JSON, msg ? "a message must be a JSON object" : jerr.text, -1,
                          NULL);
        json_decref(msg);
        return;
    }
    json_t *idv = json_object_get(msg, "id");
    const char *id = NULL;
    if (idv) {
        if (!valid_id(idv)) {
            client_send_error(cl, ERR_INVALID_FIELD, "'id' must be a string of 1 to 64 bytes", -1,
                              NULL);
            json_decref(msg);
            return;
        }
        id = json_string_value(idv);
    }
    const char *type = json_string_value(json_object_get(msg, "type"));
    if (!type) {
        client_send_error(cl, ERR_INVALID_FIELD, "missing string field 'type'", -1, id);
        json_decref(msg);
        return;
    }
    if (strcmp(type, "refresh") == 0) {
        handle_refresh(cl, msg, id);
        json_decref(msg);
        return;
    }
    unsigned t = 0;
    while (t < CHAT_TYPE_COUNT && strcmp(type, hub_chat_types[t]) != 0)
        t++;
    if (t == CHAT_TYPE_COUNT) {
        client_send_error(cl, ERR_UNKNOWN_TYPE, "unknown message type", -1, id);
    } else if (!h->router_ops) {
        client_send_error(cl, ERR_UNAVAILABLE, "chat is not available on this server", -1, id);
    } else {
        h->router_ops->handle(h->router, cl, (enum chat_type)t, id, msg);
    }
    json_decref(msg);
}

static void chat_on_drain(struct conn *c)
{
    struct client *cl = c->data;
    struct hub *h = client_hub(cl);
    if (h->router_ops && h->router_ops->client_drained)
        h->router_ops->client_drained(h->router, cl);
}

static const struct conn_handler chat_handler = {
    .name = "chat",
    .metered = true,
    .on_drain = chat_on_drain,
    .on_message = chat_on_message,
    .on_closing = chat_on_closing,
    .on_close = chat_on_close,
    .on_shutdown = chat_on_shutdown,
    .on_tick = chat_on_tick,
};

/* ---- the upgrade ---------------------------------------------------------- */

static bool origin_allowed(const struct config *cfg, const struct http_request *req)
{
    if (!cfg->allowed_origins || !*cfg->allowed_origins)
        return true;
    const struct http_header *o = http_request_header(req, "origin");
    if (!o)
        return true; /* not a browser: the Origin check protects browsers only */
    const char *p = cfg->allowed_origins;
    while (*p) {
        while (*p == ' ' || *p == ',')
            p++;
        const char *e = p;
        while (*e && *e != ',')
            e++;
        const char *t = e;
        while (t > p && t[-1] == ' ')
            t--;
        if ((size_t)(t - p) == o->value_len && strncasecmp(p, o->value, o->value_len) == 0)
            return true;
        p = e;
    }
    return false;
}

/* Find the token: Authorization: Bearer first, then ?token=. Returns its
 * length, 0 when absent, -1 when unusable (*why set). */
static int find_token(const struct http_request *req, char *buf, size_t cap, const char **tok,
                      const char **why)
{
    const struct http_header *a = http_request_header(req, "authorization");
    if (a) {
        if (a->value_len < 7 || strncasecmp(a->value, "Bearer ", 7) != 0) {
            *why = "the Authorization header must be 'Bearer <token>'";
            return -1;
        }
        size_t off = 7;
        while (off < a->value_len && a->value[off] == ' ')
            off++;
        if (a->value_len - off > JWT_MAX_TOKEN) {
            *why = "token too long";
            return -1;
        }
        *tok = a->value + off;
        return (int)(a->value_len - off);
    }
    int n = http_query_param(req, "token", buf, cap);
    if (n == -ENOENT)
        return 0;
    if (n < 0) {
        *why = n == -ENOSPC ? "token too long" : "malformed token parameter";
        return -1;
    }
    *tok = buf;
    return n;
}

static void send_connection_status(struct client *cl, unsigned devices)
{
    const struct config *cfg = client_hub(cl)->cfg;
    char id[32], ts[32];
    snprintf(id, sizeof id, "c-%llx", (unsigned long long)cl->conn->id);
    clock_format_rfc3339(ts, clock_wall_ms());
    /* Every connection gets one: written straight into its frame. */
    struct jw w;
    jw_init(&w,
            320 + cl->sub_len + strlen(cl->name) + strlen(cl->roles_json) +
                client_hub(cl)->models_len,
            WS_MAX_HEADER);
    jw_open(&w);
    jw_kstr(&w, "type", "connection_status");
    jw_kstr(&w, "connection_id", id);
    jw_kstr(&w, "user_id", cl->sub);
    jw_kstr(&w, "name", cl->name);
    jw_key(&w, "roles");
    jw_raw(&w, cl->roles_json, strlen(cl->roles_json));
    jw_kint(&w, "devices", devices);
    jw_kint(&w, "max_devices", cfg->max_devices);
    jw_kint(&w, "max_message_bytes", (int64_t)cfg->max_message_bytes);
    jw_kstr(&w, "server_time", ts);
    jw_key(&w, "models");
    jw_raw(&w, client_hub(cl)->models_json, client_hub(cl)->models_len);
    jw_close(&w);
    uint32_t off, len;
    struct sbuf *f = wire_frame_jw(&w, &off, &len);
    if (!f) {
        /* The first frame is always connection_status: with no memory to
         * build it, the connection is closed (1011) rather than left open
         * without it. */
        conn_ws_close(cl->conn, WS_CLOSE_INTERNAL, "out of memory");
        return;
    }
    conn_send_shared(cl->conn, f, off, len);
    sbuf_unref(f);
}

/* Tell every open device of a user that another one was refused. */
static void notify_limit(struct hub *h, const struct reg_device *devs, unsigned n, const char *sub)
{
    char msg[256];
    snprintf(msg, sizeof msg,
             "a new device was refused: this account already has %u open connections, the "
             "limit",
             h->cfg->max_devices);
    uint32_t off, len;
    struct sbuf *f = notification("connection_limit", msg, &off, &len);
    if (!f)
        return;
    if (bus_counts_devices(h->bus) && h->router_ops && h->router_ops->notify_user) {
        /* The user's devices on every node. */
        h->router_ops->notify_user(h->router, sub, f, off, len);
    } else {
        for (unsigned i = 0; i < n; i++)
            hub_send_to_conn(h, devs[i].worker, devs[i].conn_id, f, off, len, 0, NULL);
    }
    sbuf_unref(f);
    struct log_quoted qu;
    log_warn("device_limit", "user=%s devices=%u action=refused", log_quotes(&qu, sub), n);
}

/* The user's device conn_id on this node, if it is here. */
static bool device_here(struct hub *h, const char *sub, size_t len, uint64_t conn_id,
                        struct reg_device *out)
{
    unsigned cap = h->cfg->max_devices + 1;
    struct reg_device *devs = malloc(cap * sizeof *devs);
    if (!devs)
        return false;
    unsigned n = registry_devices(&h->registry, sub, len, devs, cap);
    bool found = false;
    for (unsigned i = 0; i < n && !found; i++) {
        if (devs[i].conn_id == conn_id) {
            *out = devs[i];
            found = true;
        }
    }
    free(devs);
    return found;
}

static void evict(struct hub *h, const struct reg_device *dev, const char *sub)
{
    uint32_t off, len;
    struct sbuf *f = notification("connection_limit",
                                  "this device was closed because the account opened a new one "
                                  "beyond its device limit",
                                  &off, &len);
    hub_send_to_conn(h, dev->worker, dev->conn_id, f, off, len, WS_CLOSE_POLICY,
                     "device limit: oldest connection evicted");
    if (f)
        sbuf_unref(f);
    struct log_quoted qu;
    log_info("device_limit", "user=%s action=evicted conn=%llx", log_quotes(&qu, sub),
             (unsigned long long)dev->conn_id);
}

void hub_close_clients(struct hub *h, struct worker *w, const char *reason)
{
    (void)h;
    conn_ws_close_all(w, &chat_handler, WS_CLOSE_INTERNAL, reason);
}

void hub_kick(struct hub *h, const char *user, uint64_t conn_id)
{
    struct reg_device dev;
    if (device_here(h, user, strlen(user), conn_id, &dev))
        evict(h, &dev, user); /* its close takes it out of the registry */
}

/* Find and verify the request's token. NULL and *claims filled when it is
 * valid; otherwise why it was refused, with *oom set when the reason is
 * chatd's own lack of memory rather than the token. */
static const char *authenticate(struct hub *h, const struct http_request *req,
                                struct jwt_claims *claims, bool *oom)
{
    *oom = false;
    char qbuf[JWT_MAX_TOKEN + 1];
    const char *tok = NULL, *why = NULL;
    int tlen = find_token(req, qbuf, sizeof qbuf, &tok, &why);
    if (tlen < 0)
        return why;
    if (tlen == 0)
        return "missing token: send 'Authorization: Bearer <token>' or ?token=";
    int rc = jwt_verify(h->jwt, tok, (size_t)tlen, clock_wall_ms() / 1000, claims, &why);
    if (rc != 0) {
        *oom = rc == -ENOMEM;
        return why;
    }
    return NULL;
}

void hub_route_ws(struct hub *h, struct conn *c, const struct http_request *req)
{
    if (!net_check_upgrade(c, req))
        return;
    if (!hub_enabled(h)) {
        count_refusal(h, HUB_REFUSED_UNAVAILABLE);
        conn_http_error(c, 503, "unavailable", "chat is disabled: no JWT key is configured", -1,
                        NULL, false);
        return;
    }
    if (!origin_allowed(h->cfg, req)) {
        count_refusal(h, HUB_REFUSED_ORIGIN);
        conn_http_error(c, 403, "origin_not_allowed", "this Origin is not allowed", -1, NULL,
                        false);
        return;
    }
    if (atomic_load(&h->srv->shutting_down)) {
        count_refusal(h, HUB_REFUSED_UNAVAILABLE);
        conn_http_error(c, 503, "unavailable", "server is shutting down", 1000, NULL, false);
        return;
    }
    struct jwt_claims claims;
    bool oom;
    const char *why = authenticate(h, req, &claims, &oom);
    if (why && oom) {
        /* A valid token may be behind it: not the client's fault. */
        count_refusal(h, HUB_REFUSED_UNAVAILABLE);
        conn_http_error(c, 503, "unavailable", "out of memory; retry later", 1000, NULL, false);
        return;
    }
    if (why) {
        struct log_quoted qr;
        log_info("auth_refused", "conn=%llx reason=%s", (unsigned long long)c->id,
                 log_quotes(&qr, why));
        count_refusal(h, HUB_REFUSED_UNAUTHORIZED);
        hub_count_error(h, ERR_UNAUTHORIZED);
        conn_http_error(c, 401, "unauthorized", why, -1, NULL, false);
        return;
    }
    if (!net_take_ws_slot(c))
        return;

    struct client *cl = client_new(&claims, c);
    if (!cl) {
        net_give_ws_slot(c);
        conn_http_error(c, 500, "internal", "out of memory", -1, NULL, false);
        return;
    }
    struct reg_device dev = {
        .conn_id = c->id, .worker = conn_worker(c)->index, .opened_at_ms = clock_wall_ms()};
    struct reg_device others[64], evicted;
    unsigned count = 0, nothers = 0;
    int r = registry_admit(&h->registry, cl->sub, cl->sub_len, &dev, h->cfg->max_devices,
                           (enum device_policy)h->cfg->device_policy, &count, others, 64, &nothers,
                           &evicted);
    if (r < 0 || r == REG_REFUSED) {
        if (r == REG_REFUSED) {
            char msg[160];
            snprintf(msg, sizeof msg, "this account already has %u open connections (the limit)",
                     count);
            count_refusal(h, HUB_REFUSED_DEVICE_LIMIT);
            conn_http_error(c, 429, "connection_limit", msg, LIMIT_RETRY_AFTER_MS, NULL, false);
            if (nothers < count) {
                /* More devices than the stack buffer holds (--max-devices
                 * over 64): look them all up so every one is told. */
                struct reg_device *all = malloc(count * sizeof *all);
                if (all) {
                    unsigned n = registry_devices(&h->registry, cl->sub, cl->sub_len, all, count);
                    notify_limit(h, all, n, cl->sub);
                    free(all);
                }
            } else {
                notify_limit(h, others, nothers, cl->sub);
            }
        } else {
            conn_http_error(c, 500, "internal", "out of memory", -1, NULL, false);
        }
        /* This connection never became a WebSocket. */
        net_give_ws_slot(c);
        client_free(cl);
        return;
    }
    cl->registered = true;
    if (bus_counts_devices(h->bus)) {
        /* The limit across nodes. A device this node evicted already gives
         * its slot to the new one, which is then counted whatever the
         * others hold; otherwise, with evict-oldest, a full count gives up
         * the user's oldest device wherever it is (closed here below, or
         * by its own node). */
        unsigned total = count;
        uint64_t victim;
        if (r == REG_EVICTED)
            bus_leave(h->bus, cl->sub, evicted.conn_id);
        int a = bus_admit(h->bus, cl->sub, c->id, dev.opened_at_ms,
                          r == REG_EVICTED ? UINT_MAX : h->cfg->max_devices,
                          h->cfg->device_policy == DEVICE_POLICY_EVICT_OLDEST, &total, &victim);
        if (a > 0 && victim && r != REG_EVICTED &&
            device_here(h, cl->sub, cl->sub_len, victim, &evicted)) {
            registry_remove(&h->registry, cl->sub, cl->sub_len, evicted.conn_id);
            r = REG_EVICTED;
        }
        if (a == 0) {
            registry_remove(&h->registry, cl->sub, cl->sub_len, c->id);
            char msg[160];
            snprintf(msg, sizeof msg, "this account already has %u open connections (the limit)",
                     total);
            count_refusal(h, HUB_REFUSED_DEVICE_LIMIT);
            conn_http_error(c, 429, "connection_limit", msg, LIMIT_RETRY_AFTER_MS, NULL, false);
            notify_limit(h, NULL, total, cl->sub);
            net_give_ws_slot(c);
            client_free(cl);
            return;
        }
        if (a > 0) {
            cl->counted = true;
            count = total;
        }
    }
    if (idmap_put(&conn_worker(c)->by_id, c->id, c) < 0 ||
        conn_upgrade(c, req, &chat_handler, cl) < 0) {
        if (cl->counted)
            bus_leave(h->bus, cl->sub, c->id);
        registry_remove(&h->registry, cl->sub, cl->sub_len, c->id);
        idmap_del(&conn_worker(c)->by_id, c->id);
        net_give_ws_slot(c);
        client_free(cl);
        conn_http_error(c, 500, "internal", "out of memory", -1, NULL, false);
        return;
    }
    /* Before connection_status: from then on this node receives the
     * events of the user's sessions (of all, for an admin). */
    if (h->bus) {
        bus_watch(h->bus, cl->sub, 1);
        cl->watching = true;
        if (cl->admin) {
            bus_watch(h->bus, NULL, 1);
            cl->watching_all = true;
        }
    }
    struct log_quoted qu;
    log_info("ws_open", "conn=%llx user=%s devices=%u admin=%s", (unsigned long long)c->id,
             log_quote(&qu, cl->sub, cl->sub_len),
             count, cl->admin ? "yes" : "no");
    send_connection_status(cl, count);
    if (h->router_ops && h->router_ops->client_opened)
        h->router_ops->client_opened(h->router, cl);
    if (r == REG_EVICTED)
        evict(h, &evicted, cl->sub);
}

/* ---- HTTP API -------------------------------------------------------------- */

struct conn_list_ctx {
    json_t *users;
    uint64_t total;
};

static void add_user(void *arg, const char *user, size_t len, unsigned n)
{
    struct conn_list_ctx *ctx = arg;
    json_t *u = json_object();
    json_object_set_new(u, "user_id", json_stringn(user, len));
    json_object_set_new(u, "devices", json_integer(n));
    json_array_append_new(ctx->users, u);
    ctx->total += n;
}

static void reply_json_obj(struct conn *c, const struct http_request *req, int status, json_t *o)
{
    char *s = json_dumps(o, JSON_COMPACT);
    if (!s) {
        conn_http_error(c, 500, "internal", "out of memory", -1, NULL, false);
        return;
    }
    conn_http_respond(c, status, "application/json", s, strlen(s), req->keep_alive,
                      http_request_is_head(req));
    free(s);
}

bool hub_api_auth(struct hub *h, struct conn *c, const struct http_request *req,
                  struct jwt_claims *claims, bool need_admin)
{
    bool oom = false;
    const char *why = hub_enabled(h) ? authenticate(h, req, claims, &oom)
                                     : "chat is disabled: no JWT key is configured";
    if (why && oom) {
        conn_http_error(c, 503, "unavailable", "out of memory; retry later", 1000, NULL,
                        req->keep_alive);
        return false;
    }
    if (why) {
        conn_http_error(c, 401, "unauthorized", why, -1, NULL, req->keep_alive);
        return false;
    }
    if (need_admin && !claims->is_admin) {
        conn_http_error(c, 403, "forbidden", "admin role required", -1, NULL, req->keep_alive);
        return false;
    }
    return true;
}

bool hub_route_api(struct hub *h, struct conn *c, const struct http_request *req,
                   const char *path, size_t len)
{
    struct jwt_claims claims;

    if (http_path_is(path, len, "/api/devices")) {
        /* The caller's devices: what a page whose WebSocket was refused
         * (a browser cannot read the 429) asks to explain it. */
        if (!http_request_is_get(req) && !http_request_is_head(req)) {
            conn_http_error(c, 405, "method_not_allowed", "use GET", -1, "Allow: GET, HEAD\r\n",
                            false);
            return true;
        }
        if (!hub_api_auth(h, c, req, &claims, false))
            return true;
        json_t *o = json_pack(
            "{s:s, s:I, s:I, s:s}", "user_id", claims.sub, "devices",
            (json_int_t)registry_count(&h->registry, claims.sub, claims.sub_len), "max_devices",
            (json_int_t)h->cfg->max_devices, "device_policy",
            h->cfg->device_policy == DEVICE_POLICY_EVICT_OLDEST ? "evict-oldest" : "refuse");
        reply_json_obj(c, req, 200, o);
        json_decref(o);
        return true;
    }

    if (http_path_is(path, len, "/api/admin/connections")) {
        if (!http_request_is_get(req) && !http_request_is_head(req)) {
            conn_http_error(c, 405, "method_not_allowed", "use GET", -1, "Allow: GET, HEAD\r\n",
                            false);
            return true;
        }
        if (!hub_api_auth(h, c, req, &claims, true))
            return true;
        /* Every node's devices when they are counted across nodes (a round
         * trip on this worker: an admin's page asks now and then); this
         * node's own otherwise, or when that count cannot be reached. */
        struct conn_list_ctx ctx = {.users = json_array()};
        bool all_nodes = bus_census(h->bus, add_user, &ctx) == 0;
        if (!all_nodes)
            registry_foreach(&h->registry, add_user, &ctx);
        json_t *o = json_pack("{s:o, s:I, s:I, s:s}", "users", ctx.users, "total_devices",
                              (json_int_t)ctx.total, "total_users",
                              (json_int_t)json_array_size(ctx.users), "scope",
                              all_nodes ? "cluster" : "node");
        reply_json_obj(c, req, 200, o);
        json_decref(o);
        return true;
    }
    return false;
}
