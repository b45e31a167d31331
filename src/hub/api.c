/*
 * DESIGN: the storage-backed HTTP API. Each request is authenticated on the
 * worker, then its read runs on the libuv thread pool (never on the loop);
 * the answer is queued back on the worker in the after-work callback. The
 * connection is held meanwhile (conn_http_async_begin), so pipelined
 * requests are answered in order and the memory outlives a client that hangs
 * up early.
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net/conn.h"
#include "http/request.h"
#include "hub/chat.h"
#include "hub/wire.h"
#include "util/clock.h"
#include "util/jw.h"

enum api_kind { API_SESSIONS, API_MESSAGES, API_ADMIN_SESSIONS };

struct api_job {
    uv_work_t req;
    struct chat *ch;
    struct conn *conn;
    enum api_kind kind;
    bool keep_alive, head_only;
    char user[STORE_MAX_USER + 1];
    bool admin, help_only;
    char session[STORE_ID_LEN + 1];
    int64_t after, limit;
    /* results: a body (200), or an error answer with this code */
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

static json_t *session_json(const struct store_session *s)
{
    char c[32], u[32];
    clock_format_rfc3339(c, s->created_ms);
    clock_format_rfc3339(u, s->updated_ms);
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:I, s:b}", "id", s->id, "owner", s->owner,
                          "created_at", c, "updated_at", u, "last_seq", (json_int_t)s->last_seq,
                          "help_requested", s->help);
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
    }
    jw_release(&w);
    return j->body != NULL;
}

static void api_work(uv_work_t *req)
{
    struct api_job *j = req->data;
    assert(worker_current() == NULL); /* storage reads never run on a worker loop */
    struct store *st = chat_store(j->ch);
    json_t *out = NULL;
    if (j->kind == API_MESSAGES) {
        struct store_session sess;
        int rc = store_get_session(st, j->session, &sess);
        if (rc == 0 && !j->admin && strcmp(sess.owner, j->user) != 0)
            rc = -ENOENT;
        if (rc == -ENOENT) {
            fail(j, 404, "session_not_found", "no such session");
            return;
        }
        struct store_event *ev = NULL;
        int n = rc == 0 ? store_read_events(st, j->session, j->after, j->limit, 0, &ev) : rc;
        if (n < 0) {
            fail(j, 503, "unavailable", "storage is unavailable");
            return;
        }
        bool ok = messages_body(j, ev, n, sess.last_seq);
        store_events_free(ev, n);
        if (!ok)
            fail(j, 500, "internal", "out of memory");
        else
            j->status = 200;
        return;
    } else {
        struct store_session *v = NULL;
        int n = store_list_sessions(st, j->kind == API_SESSIONS ? j->user : NULL, j->help_only,
                                    (int)j->limit, &v);
        if (n < 0) {
            fail(j, 503, "unavailable", "storage is unavailable");
            return;
        }
        json_t *arr = json_array();
        for (int i = 0; i < n; i++)
            json_array_append_new(arr, session_json(&v[i]));
        free(v);
        out = json_pack("{s:o}", "sessions", arr);
    }
    j->body = out ? json_dumps(out, JSON_COMPACT) : NULL;
    json_decref(out);
    if (!j->body) {
        fail(j, 500, "internal", "out of memory");
        return;
    }
    j->status = 200;
    j->body_len = strlen(j->body);
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
        else
            conn_http_respond(c, j->status, "application/json", j->body, j->body_len,
                              j->keep_alive, j->head_only);
    }
    free(j->body);
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

bool chat_route_api(struct chat *ch, struct conn *c, const struct http_request *req,
                    const char *path, size_t len)
{
    struct hub *h = chat_hub(ch);
    enum api_kind kind;
    char sid[STORE_ID_LEN + 1] = "";

    if (http_path_is(path, len, "/api/sessions")) {
        kind = API_SESSIONS;
    } else if (http_path_is(path, len, "/api/admin/sessions")) {
        kind = API_ADMIN_SESSIONS;
    } else if (len > 14 && memcmp(path, "/api/sessions/", 14) == 0 && len > 23 &&
               http_path_is(path + len - 9, 9, "/messages")) {
        size_t idlen = len - 14 - 9;
        if (idlen > STORE_ID_LEN) {
            conn_http_error(c, 404, "session_not_found", "no such session", -1, NULL,
                            req->keep_alive);
            return true;
        }
        memcpy(sid, path + 14, idlen);
        sid[idlen] = '\0';
        kind = API_MESSAGES;
    } else {
        return false;
    }
    if (!http_request_is_get(req) && !http_request_is_head(req)) {
        conn_http_error(c, 405, "method_not_allowed", "use GET", -1, "Allow: GET, HEAD\r\n",
                        false);
        return true;
    }
    struct jwt_claims claims;
    if (!hub_api_auth(h, c, req, &claims, kind == API_ADMIN_SESSIONS))
        return true;

    struct api_job *j = calloc(1, sizeof *j);
    if (!j) {
        conn_http_error(c, 500, "internal", "out of memory", -1, NULL, false);
        return true;
    }
    j->req.data = j;
    j->ch = ch;
    j->conn = c;
    j->kind = kind;
    j->keep_alive = req->keep_alive;
    j->head_only = http_request_is_head(req);
    snprintf(j->user, sizeof j->user, "%s", claims.sub);
    j->admin = claims.is_admin;
    snprintf(j->session, sizeof j->session, "%s", sid);
    int64_t help = 0;
    bool ok = query_int(req, "after_seq", 0, INT64_MAX / 2, &j->after) &&
              query_int(req, "limit", kind == API_MESSAGES ? 100 : 200, 1000, &j->limit) &&
              query_int(req, "help", 0, 1, &help);
    if (!ok || j->limit == 0) {
        free(j);
        conn_http_error(c, 400, "bad_request",
                        "after_seq must be an integer >= 0, limit 1..1000, help 0 or 1", -1, NULL,
                        req->keep_alive);
        return true;
    }
    j->help_only = help == 1;
    conn_http_async_begin(c);
    if (uv_queue_work(&c->w->loop, &j->req, api_work, api_done) != 0) {
        free(j);
        conn_http_error(c, 500, "internal", "cannot schedule the read", -1, NULL, false);
        conn_http_async_end(c);
    }
    return true;
}
