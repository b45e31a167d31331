/*
 * DESIGN: the storage-backed HTTP API. Each request is authenticated on the
 * worker, then its work runs on the libuv thread pool (never on the loop);
 * the answer is queued back on the worker in the after-work callback. The
 * connection is held meanwhile (conn_http_async_begin), so pipelined
 * requests are answered in order and the memory outlives a client that hangs
 * up early.
 *
 * Reads go to the store directly. Writes (rename, share links) go through
 * the storage writer like every other write, and the pool thread waits for
 * the batch that carries them (struct chat_wait): they are rare, small, and
 * keep the one-writer rule.
 *
 * Routes (after the prefix):
 *   GET    /api/sessions                    the caller's sessions
 *   GET    /api/sessions/{id}               one session (owner or admin)
 *   PATCH  /api/sessions/{id}               rename (owner)
 *   GET    /api/sessions/{id}/messages      its events (owner or admin)
 *   POST   /api/sessions/{id}/share         a read-only link (owner)
 *   DELETE /api/sessions/{id}/share         revoke every link (owner)
 *   GET    /api/shared/{token}              what a link shows (the link itself)
 *   GET    /api/admin/sessions[?help=1]     every session, for triage (admin)
 *   GET    /api/admin/stats                 counts and help response times (admin)
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "hub/chat.h"
#include "hub/chat_int.h"
#include "hub/wire.h"
#include "http/request.h"
#include "net/conn.h"
#include "util/clock.h"
#include "util/jw.h"
#include "util/oom.h"

#define SHARE_TTL_DEFAULT_S (7 * 86400)
#define SHARE_TTL_MAX_S (30 * 86400)
#define SHARE_TOKEN_BYTES 24                   /* 192 random bits */
#define SHARE_TOKEN_LEN (SHARE_TOKEN_BYTES * 4 / 3) /* base64url, no padding */
#define SHARED_MAX_EVENTS 5000                 /* a shared page shows at most these */
#define TITLE_RENAME_MAX 100                   /* bytes of a title the owner gives */

enum api_kind {
    API_SESSIONS,
    API_MESSAGES,
    API_ADMIN_SESSIONS,
    API_SESSION,
    API_RENAME,
    API_SHARE,
    API_UNSHARE,
    API_SHARED,
    API_STATS,
};

struct api_job {
    uv_work_t req;
    struct chat *ch;
    struct conn *conn;
    enum api_kind kind;
    bool keep_alive, head_only;
    char user[STORE_MAX_USER + 1];
    char user_name[STORE_MAX_USER + 1];
    bool admin, help_only;
    char session[STORE_ID_LEN + 1];
    char token[SHARE_TOKEN_LEN + 1];
    int64_t after, limit;
    char *title;       /* API_RENAME: the new title (owned) */
    int64_t ttl_s;     /* API_SHARE */
    char prefix[256];  /* for the share URL */
    /* results: a body (status), or an error answer with this code */
    int status;
    const char *err_code, *err_message; /* static strings */
    char *body; /* JSON text (owned) */
    size_t body_len;
};

static void fail(struct api_job *j, int status, const char *code, const char *message)
{
    j->status = status;
    j->err_code = code;
    j->err_message = message;
}

/* The body from a JSON object (taking it). */
static void reply_obj(struct api_job *j, int status, json_t *o)
{
    j->body = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!j->body) {
        fail(j, 500, "internal", "out of memory");
        return;
    }
    j->status = status;
    j->body_len = strlen(j->body);
}

static json_t *time_json(int64_t ms)
{
    char t[32];
    clock_format_rfc3339(t, ms);
    return json_string(t);
}

/* One session in a list. admin: the triage fields too. */
static json_t *session_json(struct chat *ch, const struct store_session *s, bool admin)
{
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:o, s:o, s:I, s:b}", "id", s->id, "title",
                          s->title, "owner", s->owner, "owner_name",
                          s->owner_name[0] ? s->owner_name : s->owner, "created_at",
                          time_json(s->created_ms), "updated_at", time_json(s->updated_ms),
                          "last_seq", (json_int_t)s->last_seq, "help_requested", s->help);
    if (!o)
        return NULL;
    json_object_set_new(o, "model", s->model[0] ? json_string(s->model) : json_null());
    if (!admin)
        return o;
    json_object_set_new(o, "help", json_boolean(s->help)); /* the triage's word for it */
    json_object_set_new(o, "preview",
                        s->preview_type[0]
                            ? json_pack("{s:s, s:s, s:s}", "type", s->preview_type, "sender_name",
                                        s->preview_sender, "content", s->preview)
                            : json_null());
    if (s->waiting_ms) {
        int64_t now = clock_wall_ms();
        json_object_set_new(o, "waiting_since", time_json(s->waiting_ms));
        json_object_set_new(o, "waiting_ms",
                            json_integer(now > s->waiting_ms ? now - s->waiting_ms : 0));
    } else {
        json_object_set_new(o, "waiting_since", json_null());
        json_object_set_new(o, "waiting_ms", json_null());
    }
    json_object_set_new(o, "admins", chat__joined_json(ch, s->id));
    return o;
}

/* One session in full (GET /api/sessions/{id}). */
static json_t *session_detail(struct api_job *j, const struct store_session *s)
{
    struct store_read *reads = NULL;
    int n = store_get_reads(j->ch->store, s->id, &reads);
    if (n < 0)
        return NULL;
    json_t *r = json_object();
    for (int i = 0; r && i < n; i++)
        json_object_set_new(r, reads[i].reader, json_integer(reads[i].seq));
    free(reads);
    json_t *o = json_pack("{s:s, s:s, s:{s:s, s:s}, s:o, s:o, s:I, s:b, s:o, s:o}", "id", s->id,
                          "title", s->title, "owner", "id", s->owner, "name",
                          s->owner_name[0] ? s->owner_name : s->owner, "created",
                          time_json(s->created_ms), "updated", time_json(s->updated_ms),
                          "last_seq", (json_int_t)s->last_seq, "help", s->help, "admins",
                          chat__joined_json(j->ch, s->id), "read", r);
    if (o)
        json_object_set_new(o, "model", s->model[0] ? json_string(s->model) : json_null());
    return o;
}

/* {"session_id":..,"messages":[events],"last_seq":N}, each event in the
 * one shape of wire.h. */
static bool messages_body(struct api_job *j, const struct store_event *ev, int n,
                          int64_t last_seq)
{
    size_t cap = 256;
    for (int i = 0; i < n; i++)
        cap += 256 + ev[i].content_len + (ev[i].metadata ? strlen(ev[i].metadata) : 0);
    struct jw w;
    jw_init(&w, cap, 0);
    jw_open(&w);
    jw_kstr(&w, "session_id", j->session);
    jw_key(&w, "messages");
    jw_raw(&w, "[", 1);
    for (int i = 0; i < n; i++) {
        const struct store_event *e = &ev[i];
        struct wire_event we = {.type = e->type,
                                .session_id = j->session,
                                .seq = e->seq,
                                .client_id = e->client_id,
                                .sender_type = e->sender_type,
                                .sender_id = e->sender_id,
                                .sender_name = e->sender_name,
                                .content = e->content,
                                .content_len = e->content_len,
                                .metadata = e->metadata,
                                .ts_ms = e->ts_ms};
        if (i > 0)
            jw_raw(&w, ",", 1);
        wire_event_write(&w, &we);
    }
    jw_raw(&w, "]", 1);
    jw_kint(&w, "last_seq", last_seq);
    jw_close(&w);
    if (!w.failed && (j->body = malloc(w.len + 1)) != NULL) {
        memcpy(j->body, w.buf, w.len);
        j->body[w.len] = '\0';
        j->body_len = w.len;
        j->status = 200;
    }
    jw_release(&w);
    return j->body != NULL;
}

/* The session j names, if j's user may see it (its owner, or an admin).
 * false after failing j. */
static bool load_visible(struct api_job *j, struct store_session *s)
{
    int rc = store_get_session(j->ch->store, j->session, s);
    if (rc == 0 && !j->admin && strcmp(s->owner, j->user) != 0)
        rc = -ENOENT;
    if (rc == -ENOENT)
        fail(j, 404, "session_not_found", "no such session");
    else if (rc < 0)
        fail(j, 503, "unavailable", "storage is unavailable");
    return rc == 0;
}

/* The owner's own session, for a change: an admin who is not the owner is
 * told it may not (403); anyone else does not learn it exists (404). */
static bool load_owned(struct api_job *j, struct store_session *s)
{
    if (!load_visible(j, s))
        return false;
    if (strcmp(s->owner, j->user) != 0) {
        fail(j, 403, "forbidden", "only the session's owner may change it");
        return false;
    }
    return true;
}

void chat__wait_done(struct store_req *r)
{
    struct chat_wait *w = r->waiter;
    uv_mutex_lock(&w->lock);
    w->done = true;
    uv_cond_signal(&w->cond);
    uv_mutex_unlock(&w->lock);
}

/* Run a write through the storage writer and wait for it (thread pool).
 * Takes r; returns its status, or -1 when the store is closing. */
static int write_wait(struct api_job *j, struct store_req *r)
{
    struct chat_wait w = {.done = false};
    uv_mutex_init(&w.lock);
    uv_cond_init(&w.cond);
    r->waiter = &w;
    int status = -1;
    if (store_submit(j->ch->store, r) == 0) {
        uv_mutex_lock(&w.lock);
        while (!w.done)
            uv_cond_wait(&w.cond, &w.lock);
        uv_mutex_unlock(&w.lock);
        status = (int)r->status;
    }
    store_req_free(r);
    uv_cond_destroy(&w.cond);
    uv_mutex_destroy(&w.lock);
    return status;
}

static struct store_req *new_write(struct api_job *j, enum store_op op)
{
    struct store_req *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->op = op;
    r->worker = UINT32_MAX; /* no connection to answer: the waiter does */
    snprintf(r->session_id, sizeof r->session_id, "%s", j->session);
    snprintf(r->user, sizeof r->user, "%s", j->user);
    snprintf(r->sender_type, sizeof r->sender_type, "user");
    r->sender_name = strdup(j->user_name);
    return r;
}

/* Run a write of the session's owner; false after failing j. */
static bool owner_write(struct api_job *j, struct store_req *r)
{
    if (!r || !r->sender_name) {
        store_req_free(r);
        fail(j, 500, "internal", "out of memory");
        return false;
    }
    int st = write_wait(j, r);
    if (st == STORE_OK)
        return true;
    if (st == STORE_NOT_FOUND)
        fail(j, 404, "session_not_found", "no such session");
    else if (st == STORE_UNKNOWN)
        fail(j, 503, "unavailable",
             "storage failed while committing: this may have been changed; check, then retry "
             "later");
    else
        fail(j, 503, "unavailable", "storage is unavailable; nothing was changed, retry later");
    return false;
}

static void base64url(char *out, const unsigned char *in, size_t n)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    for (size_t i = 0; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = a[v >> 18 & 63];
        out[o++] = a[v >> 12 & 63];
        out[o++] = a[v >> 6 & 63];
        out[o++] = a[v & 63];
    }
    out[o] = '\0';
}

static void do_share(struct api_job *j)
{
    struct store_session s;
    if (!load_owned(j, &s))
        return;
    unsigned char raw[SHARE_TOKEN_BYTES];
    if (RAND_bytes(raw, sizeof raw) != 1) {
        fail(j, 503, "unavailable", "no random bytes for a link; retry later");
        return;
    }
    base64url(j->token, raw, sizeof raw);
    int64_t expires = clock_wall_ms() + j->ttl_s * 1000;
    struct store_req *r = new_write(j, STORE_SHARE);
    if (r) {
        r->arg = strdup(j->token);
        r->num = expires;
    }
    if (r && !r->arg) {
        store_req_free(r);
        r = NULL;
    }
    if (!owner_write(j, r))
        return;
    char url[600];
    snprintf(url, sizeof url, "%s/shared/%s", j->prefix, j->token);
    reply_obj(j, 201, json_pack("{s:s, s:s, s:o}", "url", url, "token", j->token, "expires",
                                time_json(expires)));
}

/* What a share link shows: the title and the messages, with sender types
 * and names only (no ids, no metadata). */
static void do_shared(struct api_job *j)
{
    struct store *st = j->ch->store;
    int64_t expires;
    int rc = store_get_share(st, j->token, j->session, &expires);
    if (rc == 0 && expires <= clock_wall_ms())
        rc = -ENOENT;
    struct store_session s;
    if (rc == 0)
        rc = store_get_session(st, j->session, &s);
    if (rc == -ENOENT) {
        fail(j, 404, "not_found", "this link is unknown, expired or revoked");
        return;
    }
    struct store_event *ev = NULL;
    int n = rc == 0 ? store_read_events(st, j->session, 0, SHARED_MAX_EVENTS, 0, &ev) : rc;
    if (n < 0) {
        fail(j, 503, "unavailable", "storage is unavailable");
        return;
    }
    json_t *msgs = json_array();
    for (int i = 0; msgs && i < n; i++) {
        const struct store_event *e = &ev[i];
        if (!wire_is_message(e->type))
            continue;
        json_array_append_new(
            msgs, json_pack("{s:s, s:I, s:{s:s, s:s}, s:s%, s:o}", "type", e->type, "seq",
                            (json_int_t)e->seq, "sender", "type", e->sender_type, "name",
                            e->sender_name ? e->sender_name : e->sender_id, "content", e->content,
                            e->content_len, "timestamp", time_json(e->ts_ms)));
    }
    store_events_free(ev, n);
    reply_obj(j, 200, json_pack("{s:s, s:o, s:o}", "title", s.title, "expires",
                                time_json(expires), "messages", msgs));
}

static json_t *percentile(const int64_t *v, size_t n, unsigned pct)
{
    if (!n)
        return json_null();
    size_t i = (n * pct + 99) / 100;
    return json_integer(v[i ? i - 1 : 0]);
}

static void do_stats(struct api_job *j)
{
    struct store_summary sum;
    if (store_get_summary(j->ch->store, &sum) != 0) {
        fail(j, 503, "unavailable", "storage is unavailable");
        return;
    }
    json_t *o = json_pack(
        "{s:I, s:{s:I, s:I, s:I}, s:I, s:{s:I, s:I}, s:{s:I, s:o, s:o}}", "sessions",
        (json_int_t)sum.sessions, "messages", "user", (json_int_t)sum.messages_user, "admin",
        (json_int_t)sum.messages_admin, "ai", (json_int_t)sum.messages_ai, "help_open",
        (json_int_t)sum.help_open, "assistant_tokens", "input", (json_int_t)sum.tokens_in,
        "output", (json_int_t)sum.tokens_out, "help_to_first_admin_ms", "count",
        (json_int_t)sum.nhelp_waits, "median", percentile(sum.help_waits, sum.nhelp_waits, 50),
        "p90", percentile(sum.help_waits, sum.nhelp_waits, 90));
    free(sum.help_waits);
    reply_obj(j, 200, o);
}

static void api_work(uv_work_t *req)
{
    struct api_job *j = req->data;
    assert(worker_current() == NULL); /* storage never runs on a worker loop */
    struct store *st = j->ch->store;
    struct store_session s;
    switch (j->kind) {
    case API_MESSAGES: {
        if (!load_visible(j, &s))
            return;
        struct store_event *ev = NULL;
        int n = store_read_events(st, j->session, j->after, j->limit, 0, &ev);
        if (n < 0) {
            fail(j, 503, "unavailable", "storage is unavailable");
            return;
        }
        bool ok = messages_body(j, ev, n, s.last_seq);
        store_events_free(ev, n);
        if (!ok)
            fail(j, 500, "internal", "out of memory");
        return;
    }
    case API_SESSION:
        if (load_visible(j, &s))
            reply_obj(j, 200, session_detail(j, &s));
        return;
    case API_RENAME: {
        if (!load_owned(j, &s))
            return;
        struct store_req *r = new_write(j, STORE_RENAME);
        if (r)
            r->arg = j->title;
        j->title = NULL;
        if (!owner_write(j, r))
            return;
        if (load_visible(j, &s))
            reply_obj(j, 200, session_detail(j, &s));
        return;
    }
    case API_SHARE:
        do_share(j);
        return;
    case API_UNSHARE:
        if (load_owned(j, &s) && owner_write(j, new_write(j, STORE_UNSHARE)))
            j->status = 204;
        return;
    case API_SHARED:
        do_shared(j);
        return;
    case API_STATS:
        do_stats(j);
        return;
    case API_SESSIONS:
    case API_ADMIN_SESSIONS: {
        struct store_session *v = NULL;
        bool admin = j->kind == API_ADMIN_SESSIONS;
        int n = store_list_sessions(st, admin ? NULL : j->user, j->help_only, (int)j->limit, &v);
        if (n < 0) {
            fail(j, 503, "unavailable", "storage is unavailable");
            return;
        }
        json_t *arr = json_array();
        for (int i = 0; arr && i < n; i++)
            json_array_append_new(arr, session_json(j->ch, &v[i], admin));
        free(v);
        reply_obj(j, 200, json_pack("{s:o}", "sessions", arr));
        return;
    }
    }
}

static void api_done(uv_work_t *req, int status)
{
    struct api_job *j = req->data;
    struct conn *c = j->conn;
    if (c->state == CONN_HTTP) {
        if (status != 0)
            conn_http_error(c, 500, "internal", "the request could not be served", -1, NULL,
                            false);
        else if (j->err_code)
            conn_http_error(c, j->status, j->err_code, j->err_message, -1, NULL, j->keep_alive);
        else if (j->status == 204)
            conn_http_send(c, 204, NULL, NULL, 0, j->keep_alive, true, NULL, NULL);
        else
            conn_http_respond(c, j->status, "application/json", j->body, j->body_len,
                              j->keep_alive, j->head_only);
    }
    free(j->body);
    free(j->title);
    conn_http_async_end(c);
    free(j);
}

/* Parse an optional non-negative integer query parameter. */
static bool query_int(const struct http_request *req, const char *name, int64_t def,
                      int64_t max, int64_t *out)
{
    char buf[32];
    int n = http_query_param(req, name, buf, sizeof buf);
    if (n == -ENOENT) {
        *out = def;
        return true;
    }
    if (n <= 0)
        return false;
    char *end;
    long long v = strtoll(buf, &end, 10);
    if (*end || v < 0 || v > max)
        return false;
    *out = v;
    return true;
}

static bool method_is(const struct http_request *req, const char *name)
{
    return strcmp(http_request_method_name(req), name) == 0;
}

/* Which route, and its parameters (session id or token); 0 when none
 * matches, -1 after answering (a bad id, a wrong method). */
static int route_of(struct conn *c, const struct http_request *req, const char *path, size_t len,
                    struct api_job *j)
{
    bool get = http_request_is_get(req) || http_request_is_head(req);
    const char *allow;
    size_t idlen = 0;
    const char *id = NULL, *rest = NULL;
    size_t restlen = 0;
    if (http_path_is(path, len, "/api/sessions")) {
        j->kind = API_SESSIONS;
        allow = "GET, HEAD";
    } else if (http_path_is(path, len, "/api/admin/sessions")) {
        j->kind = API_ADMIN_SESSIONS;
        allow = "GET, HEAD";
    } else if (http_path_is(path, len, "/api/admin/stats")) {
        j->kind = API_STATS;
        allow = "GET, HEAD";
    } else if (len > 12 && memcmp(path, "/api/shared/", 12) == 0) {
        id = path + 12;
        idlen = len - 12;
        if (idlen != SHARE_TOKEN_LEN || memchr(id, '/', idlen)) {
            conn_http_error(c, 404, "not_found", "this link is unknown, expired or revoked", -1,
                            NULL, req->keep_alive);
            return -1;
        }
        memcpy(j->token, id, idlen);
        j->token[idlen] = '\0';
        j->kind = API_SHARED;
        allow = "GET, HEAD";
    } else if (len > 14 && memcmp(path, "/api/sessions/", 14) == 0) {
        id = path + 14;
        const char *slash = memchr(id, '/', len - 14);
        idlen = slash ? (size_t)(slash - id) : len - 14;
        rest = slash;
        restlen = slash ? len - 14 - idlen : 0;
        if (idlen == 0 || idlen > STORE_ID_LEN) {
            conn_http_error(c, 404, "session_not_found", "no such session", -1, NULL,
                            req->keep_alive);
            return -1;
        }
        memcpy(j->session, id, idlen);
        j->session[idlen] = '\0';
        if (!rest) {
            j->kind = method_is(req, "PATCH") ? API_RENAME : API_SESSION;
            allow = "GET, HEAD, PATCH";
            if (j->kind == API_RENAME)
                return 1;
        } else if (http_path_is(rest, restlen, "/messages")) {
            j->kind = API_MESSAGES;
            allow = "GET, HEAD";
        } else if (http_path_is(rest, restlen, "/share")) {
            j->kind = method_is(req, "DELETE") ? API_UNSHARE : API_SHARE;
            if (method_is(req, "POST") || method_is(req, "DELETE"))
                return 1;
            conn_http_error(c, 405, "method_not_allowed", "use POST or DELETE", -1,
                            "Allow: POST, DELETE\r\n", false);
            return -1;
        } else {
            return 0;
        }
    } else {
        return 0;
    }
    if (!get) {
        char hdr[64];
        snprintf(hdr, sizeof hdr, "Allow: %s\r\n", allow);
        conn_http_error(c, 405, "method_not_allowed", "method not allowed here", -1, hdr, false);
        return -1;
    }
    return 1;
}

/* The JSON body of a write: an object (or, for a share, nothing). NULL
 * after answering. */
static json_t *body_object(struct conn *c, const struct http_request *req, bool optional)
{
    if (!req->body_len && optional)
        return json_object();
    oom_clear();
    json_t *o = req->body_len ? json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, NULL)
                              : NULL;
    if (oom_seen()) {
        /* A parse that ran out of memory is void, even one that returned
         * an object (util/oom.h). */
        json_decref(o);
        conn_http_error(c, 503, "unavailable", "out of memory; retry later", 1000, NULL,
                        req->keep_alive);
        return NULL;
    }
    if (!json_is_object(o)) {
        json_decref(o);
        conn_http_error(c, 400, "bad_json", "the body must be a JSON object", -1, NULL,
                        req->keep_alive);
        return NULL;
    }
    return o;
}

/* The fields of a write, checked on the worker; false after answering. */
static bool read_write_body(struct conn *c, const struct http_request *req, struct api_job *j)
{
    if (j->kind != API_RENAME && j->kind != API_SHARE)
        return true;
    json_t *o = body_object(c, req, j->kind == API_SHARE);
    if (!o)
        return false;
    bool ok = true;
    if (j->kind == API_RENAME) {
        json_t *t = json_object_get(o, "title");
        const char *v = json_string_value(t);
        size_t n = v ? json_string_length(t) : 0;
        bool clean = v && n >= 1 && n <= TITLE_RENAME_MAX;
        for (size_t i = 0; clean && i < n; i++) {
            const unsigned char *u = (const unsigned char *)v + i;
            /* No C0 or C1 control character, no line or paragraph separator. */
            clean = u[0] >= 0x20 && u[0] != 0x7f &&
                    !(u[0] == 0xc2 && i + 1 < n && u[1] >= 0x80 && u[1] <= 0x9f) &&
                    !(u[0] == 0xe2 && i + 2 < n && u[1] == 0x80 && (u[2] == 0xa8 || u[2] == 0xa9));
        }
        if (!clean) {
            conn_http_error(c, 400, "invalid_field",
                            "'title' must be a string of 1 to 100 bytes without control "
                            "characters",
                            -1, NULL, req->keep_alive);
            ok = false;
        } else if (!(j->title = strdup(v))) {
            conn_http_error(c, 500, "internal", "out of memory", -1, NULL, false);
            ok = false;
        }
    } else {
        json_t *t = json_object_get(o, "ttl_seconds");
        j->ttl_s = SHARE_TTL_DEFAULT_S;
        if (t && (!json_is_integer(t) || json_integer_value(t) < 60 ||
                  json_integer_value(t) > SHARE_TTL_MAX_S)) {
            conn_http_error(c, 400, "invalid_field",
                            "'ttl_seconds' must be an integer from 60 to 2592000", -1, NULL,
                            req->keep_alive);
            ok = false;
        } else if (t) {
            j->ttl_s = json_integer_value(t);
        }
    }
    json_decref(o);
    return ok;
}

bool chat_route_api(struct chat *ch, struct conn *c, const struct http_request *req,
                    const char *path, size_t len)
{
    struct hub *h = chat_hub(ch);
    struct api_job *j = calloc(1, sizeof *j);
    if (!j) {
        conn_http_error(c, 500, "internal", "out of memory", -1, NULL, false);
        return true;
    }
    int rc = route_of(c, req, path, len, j);
    if (rc <= 0) {
        free(j);
        return rc < 0;
    }
    struct jwt_claims claims;
    if (j->kind != API_SHARED &&
        !hub_api_auth(h, c, req, &claims, j->kind == API_ADMIN_SESSIONS || j->kind == API_STATS)) {
        free(j);
        return true;
    }
    if (!read_write_body(c, req, j)) {
        free(j);
        return true;
    }
    j->req.data = j;
    j->ch = ch;
    j->conn = c;
    j->keep_alive = req->keep_alive;
    j->head_only = http_request_is_head(req);
    snprintf(j->prefix, sizeof j->prefix, "%s", h->cfg->prefix);
    if (j->kind != API_SHARED) {
        snprintf(j->user, sizeof j->user, "%s", claims.sub);
        snprintf(j->user_name, sizeof j->user_name, "%s", claims.name);
        j->admin = claims.is_admin;
    }
    int64_t help = 0;
    bool ok = query_int(req, "after_seq", 0, INT64_MAX / 2, &j->after) &&
              query_int(req, "limit", j->kind == API_MESSAGES ? 100 : 200, 1000, &j->limit) &&
              query_int(req, "help", 0, 1, &help);
    if (!ok || j->limit == 0) {
        free(j->title);
        free(j);
        conn_http_error(c, 400, "bad_request",
                        "after_seq must be an integer >= 0, limit 1..1000, help 0 or 1", -1, NULL,
                        req->keep_alive);
        return true;
    }
    j->help_only = help == 1;
    conn_http_async_begin(c);
    if (uv_queue_work(&conn_worker(c)->loop, &j->req, api_work, api_done) != 0) {
        free(j->title);
        free(j);
        conn_http_error(c, 500, "internal", "cannot schedule the work", -1, NULL, false);
        conn_http_async_end(c);
    }
    return true;
}
