/*
 * DESIGN: the checks every client message goes through on its worker before
 * anything is queued to the writer. Each helper answers the client itself
 * (an error with the message's id) and returns false, so a handler reads as
 * a list of checks. A session id that does not even have the shape chatd
 * makes is session_not_found, like an unknown or foreign one: an answer
 * never hints that a session exists.
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hub/chat_int.h"
#include "net/conn.h"
#include "util/clock.h"

bool chat__valid_session_id(const char *s)
{
    if (strlen(s) != STORE_ID_LEN || s[0] != 's' || s[1] != '_')
        return false;
    for (int i = 2; i < STORE_ID_LEN; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

struct store_req *chat__new_req(struct client *cl, enum store_op op, enum chat_type kind,
                                 const char *sid, const char *id)
{
    struct store_req *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->op = op;
    r->kind = kind;
    r->worker = conn_worker(cl->conn)->index;
    r->conn_id = cl->conn->id;
    if (sid)
        snprintf(r->session_id, sizeof r->session_id, "%s", sid);
    snprintf(r->user, sizeof r->user, "%s", cl->sub);
    snprintf(r->sender_type, sizeof r->sender_type, "%s", cl->admin ? "admin" : "user");
    r->sender_name = strdup(cl->name);
    if (id)
        snprintf(r->client_id, sizeof r->client_id, "%s", id);
    return r;
}

/* Hand r to the writer; true when it took it (false: answered already). */
bool chat__submit(struct chat *ch, struct client *cl, struct store_req *r, const char *id)
{
    if (!r || !r->sender_name) {
        store_req_free(r);
        client_send_error(cl, ERR_INTERNAL, "out of memory", -1, id);
        return false;
    }
    if (store_submit(ch->store, r) != 0) {
        store_req_free(r);
        client_send_error(cl, ERR_UNAVAILABLE, "the server is shutting down", 1000, id);
        return false;
    }
    return true;
}

/* session_id: required or optional; returns false after answering. */
bool chat__get_session(struct chat *ch, struct client *cl, json_t *msg, bool required,
                        const char *id, const char **out)
{
    json_t *v = json_object_get(msg, "session_id");
    *out = NULL;
    if (!v || json_is_null(v)) {
        if (required) {
            client_send_error(cl, ERR_INVALID_FIELD, "missing string field 'session_id'", -1, id);
            return false;
        }
        return true;
    }
    if (!json_is_string(v)) {
        client_send_error(cl, ERR_INVALID_FIELD, "'session_id' must be a string", -1, id);
        return false;
    }
    if (!chat__check_session_id(cl, json_string_value(v), id))
        return false;
    *out = json_string_value(v);
    return true;
}

bool chat__check_session_id(struct client *cl, const char *sid, const char *id)
{
    if (chat__valid_session_id(sid))
        return true;
    /* Not even the shape of an id: it cannot exist. */
    client_send_error(cl, ERR_SESSION_NOT_FOUND, "no such session", -1, id);
    return false;
}

bool chat__get_content(struct chat *ch, struct client *cl, json_t *msg, const char *id,
                        const char **out, size_t *len)
{
    json_t *v = json_object_get(msg, "content");
    if (!json_is_string(v)) {
        client_send_error(cl, ERR_INVALID_FIELD, "'content' must be a string", -1, id);
        return false;
    }
    *len = json_string_length(v);
    *out = json_string_value(v);
    return chat__check_content_len(ch, cl, *len, id);
}

bool chat__check_content_len(struct chat *ch, struct client *cl, size_t len, const char *id)
{
    if (len == 0) {
        client_send_error(cl, ERR_INVALID_FIELD, "'content' must not be empty", -1, id);
        return false;
    }
    if (len > ch->hub->cfg->max_content_bytes) {
        char m[96];
        snprintf(m, sizeof m, "'content' is larger than %llu bytes",
                 (unsigned long long)ch->hub->cfg->max_content_bytes);
        client_send_error(cl, ERR_CONTENT_TOO_LARGE, m, -1, id);
        return false;
    }
    return true;
}

bool chat__get_metadata(struct client *cl, json_t *msg, const char *id, char **out)
{
    json_t *meta = json_object_get(msg, "metadata");
    *out = NULL;
    if (!meta || json_is_null(meta))
        return true;
    const char *k;
    json_t *v;
    bool ok = json_is_object(meta);
    if (ok)
        json_object_foreach(meta, k, v) if (!json_is_string(v)) ok = false;
    char *text = ok ? json_dumps(meta, JSON_COMPACT) : NULL;
    if (!ok || !text || strlen(text) > METADATA_MAX) {
        free(text);
        client_send_error(cl, ERR_INVALID_FIELD,
                          "'metadata' must be an object of string values, at most 16 KiB", -1, id);
        return false;
    }
    *out = text;
    return true;
}

bool chat__rate_ok(struct chat *ch, struct client *cl, const char *id)
{
    int64_t wait = registry_take_token(&ch->hub->registry, cl->sub, cl->sub_len,
                                       ch->hub->cfg->rate_limit, clock_mono_ms());
    if (wait == 0 && ch->hub->bus) /* the budget across nodes too */
        wait = bus_take_token(ch->hub->bus, cl->sub, ch->hub->cfg->rate_limit);
    if (wait <= 0)
        return true;
    client_send_error(cl, ERR_RATE_LIMITED, "too many messages; slow down", wait, id);
    return false;
}
