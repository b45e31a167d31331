/*
 * DESIGN: the router's entry points: each client message is checked
 * (validate.c) and turned into a storage request, or answered here.
 * See chat.h for the path of a message; the guarantees are kept by:
 *
 * Order. Only the writer thread produces session events, in commit order,
 * and it posts one message per worker per batch; inboxes are FIFO. So every
 * worker, and every connection on it, sees a session's events by rising seq.
 *
 * Resume without gap or duplicate. Each connection keeps, per session, the
 * set of seqs it has been sent, as sorted ranges (one range in the common
 * case; more when an admin left and joined again). A live event is sent only
 * if its seq is not in the set; a replay (resume after_seq=A) reads the
 * session from storage on the thread pool and sends every event above A that
 * is not in the set. Either way the seq is added to the set, so whatever
 * arrives while the read runs, nothing is missed and nothing is sent twice.
 */
#include "hub/chat.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hub/chat_int.h"
#include "net/conn.h"
#include "util/clock.h"
#include "util/log.h"

/*
 * What one connection may send of each type, beside the connection's input
 * budget (conn.c) and, for chat messages, the user's --rate-limit (which
 * all their devices share and which is the only budget of those two types).
 * Over it the message is answered rate_limited with retry_after and has no
 * other effect. Tokens a minute and burst.
 */
static const struct {
    uint32_t per_min, burst;
} type_budget[CHAT_TYPE_COUNT] = {
    [CHAT_TYPING] = {300, 20},  /* 5 a second: start/stop while typing */
    [CHAT_READ] = {600, 60},    /* 10 a second */
    [CHAT_HELP] = {30, 10},     /* also coalesced per session by the writer */
    [CHAT_MODEL] = {60, 10},
    [CHAT_JOIN] = {600, 200},   /* an admin page joins its open views again */
    [CHAT_LEAVE] = {600, 200},
    [CHAT_RESUME] = {600, 200}, /* a page resumes each of its sessions */
    [CHAT_STOP] = {60, 10},
    [CHAT_RESOLVE] = {60, 10},
};

/* The checks and the write of a user_message or admin_message whose
 * session and content were read and checked, however the message was read:
 * msg is the parsed message (its metadata is read here), or NULL for one
 * the hub read itself (hub.c, chat_read_message: no metadata). content is
 * msg's, copied, or else owned: a malloc'd buffer the request takes (freed
 * here when it does not). */
static void post_message(struct chat *ch, struct client *cl, const char *id, bool admin,
                         const char *sid, const char *content, size_t len, char *owned,
                         json_t *msg)
{
    char *meta_text = NULL;
    struct store_req *r = NULL;
    if (admin && !chat__admin_in(chat__state_get(cl, sid, false))) {
        client_send_error(cl, ERR_FORBIDDEN, "join the session (admin_join) first", -1, id);
        goto done;
    }
    if (msg && !chat__get_metadata(cl, msg, id, &meta_text))
        goto done;
    if (!chat__rate_ok(ch, cl, id))
        goto done;
    r = chat__new_req(cl, STORE_APPEND, admin ? CHAT_ADMIN_MESSAGE : CHAT_USER_MESSAGE, sid, id);
    if (r) {
        r->any_session = admin;
        snprintf(r->sender_type, sizeof r->sender_type, "%s", admin ? "admin" : "user");
        r->content = owned ? owned : malloc(len + 1);
        owned = NULL;
        if (r->content) {
            if (r->content != content)
                memcpy(r->content, content, len + 1);
            r->content_len = len;
        }
        r->metadata = meta_text;
        meta_text = NULL;
        if (!r->content) {
            store_req_free(r);
            r = NULL;
        }
    }
    chat__submit(ch, cl, r, id);
done:
    free(meta_text);
    free(owned);
}

static void handle_message(struct chat *ch, struct client *cl, json_t *msg, const char *id,
                           bool admin)
{
    const char *sid, *content;
    size_t len;
    if (admin && !cl->admin) {
        client_send_error(cl, ERR_FORBIDDEN, "admin role required", -1, id);
        return;
    }
    if (!chat__get_session(ch, cl, msg, admin, id, &sid) ||
        !chat__get_content(ch, cl, msg, id, &content, &len))
        return;
    post_message(ch, cl, id, admin, sid, content, len, NULL, msg);
}

/* router_ops.handle_message: the same checks as handle_message, in the
 * same order with the same answers, on fields the hub read. */
static void chat_handle_read_message(void *router, struct client *cl, bool admin, const char *id,
                                     const char *sid, char *content, size_t len)
{
    struct chat *ch = router;
    enum chat_type k = admin ? CHAT_ADMIN_MESSAGE : CHAT_USER_MESSAGE;
    assert(worker_current() == conn_worker(cl->conn));
    if (!chat__cstate(cl)) {
        client_send_error(cl, ERR_INTERNAL, "out of memory", -1, id);
        free(content);
        return;
    }
    atomic_fetch_add_explicit(&ch->in_by_kind[k], 1, memory_order_relaxed);
    assert(type_budget[k].per_min == 0); /* the user's --rate-limit is their budget */
    if (admin && !cl->admin) {
        client_send_error(cl, ERR_FORBIDDEN, "admin role required", -1, id);
    } else if (!sid && admin) {
        client_send_error(cl, ERR_INVALID_FIELD, "missing string field 'session_id'", -1, id);
    } else if ((!sid || chat__check_session_id(cl, sid, id)) &&
               chat__check_content_len(ch, cl, len, id)) {
        post_message(ch, cl, id, admin, sid, content, len, content, NULL);
        return;
    }
    free(content);
}

static void chat_client_opened(void *router, struct client *cl)
{
    struct chat *ch = router;
    cl->sub_hash = hash_str(cl->sub);
    struct chat_local *loc = &ch->locals[conn_worker(cl->conn)->index];
    if (cl->admin)
        chat__list_add(&loc->admins, cl);
}

/* The admin client leaves st's session through the writer, as if it had
 * sent admin_leave (no ack: see KIND_LEAVE_REVOKED): the others see it
 * go, and the assistant gets the session back. True when it was in. */
static bool leave_for_client(struct chat *ch, struct client *cl, struct sess_state *st)
{
    bool in = st->joined || (st->intent_pending && st->intent_joined);
    chat__unjoin(&ch->locals[conn_worker(cl->conn)->index], cl, st);
    if (!in)
        return false;
    struct store_req *r = chat__new_req(cl, STORE_EVENT, CHAT_LEAVE, st->id, NULL);
    if (r) {
        r->kind = KIND_LEAVE_REVOKED;
        r->any_session = true;
        snprintf(r->event_type, sizeof r->event_type, "admin_leave");
    }
    if (!chat__submit(ch, cl, r, NULL))
        return false;
    st->intent_joined = false;
    st->intent_pending++;
    return true;
}

static void chat_client_closed(void *router, struct client *cl)
{
    struct chat *ch = router;
    struct chat_local *loc = &ch->locals[conn_worker(cl->conn)->index];
    struct client_state *cs = cl->router_state;
    if (cl->admin)
        chat__list_del(NULL, &loc->admins, cl);
    /* An admin that goes away leaves what it joined. */
    for (size_t i = 0; cs && i < cs->n; i++)
        leave_for_client(ch, cl, chat__state_at(cs, i));
    if (cs)
        chat__resume_client_closed(cs);
    for (size_t i = 0; cs && i < cs->n; i++)
        seqset_release(&chat__state_at(cs, i)->sent);
    if (cs)
        free(cs->more);
    free(cs);
    cl->router_state = NULL;
}

/* A refresh changed the client's admin role. Gaining it makes the client
 * one of this worker's admins (help requests reach it). Losing it ends
 * every join at once, here on the worker, so no further event of another
 * user's session reaches it; each join also gets its admin_leave through
 * the writer, like one the client sent, so the others see it leave; and
 * the client is told which sessions it left. */
static void chat_client_roles_changed(void *router, struct client *cl, bool was_admin)
{
    struct chat *ch = router;
    struct chat_local *loc = &ch->locals[conn_worker(cl->conn)->index];
    assert(worker_current() == conn_worker(cl->conn));
    if (!was_admin) {
        chat__list_add(&loc->admins, cl);
        return;
    }
    chat__list_del(NULL, &loc->admins, cl);
    struct client_state *cs = cl->router_state;
    json_t *left = json_array();
    for (size_t i = 0; cs && i < cs->n; i++)
        if (leave_for_client(ch, cl, chat__state_at(cs, i)))
            json_array_append_new(left, json_string(chat__state_at(cs, i)->id));
    json_t *o = json_pack("{s:s, s:s, s:s, s:o}", "type", "notification", "code",
                          "roles_changed", "message",
                          "the refreshed token has no admin role: every joined session was left",
                          "sessions", left);
    if (o) {
        client_send_json(cl, o);
        json_decref(o);
    }
}

static void chat_handle(void *router, struct client *cl, enum chat_type k, const char *id,
                        json_t *msg)
{
    struct chat *ch = router;
    const char *sid;
    assert(worker_current() == conn_worker(cl->conn));
    if (!chat__cstate(cl)) {
        client_send_error(cl, ERR_INTERNAL, "out of memory", -1, id);
        return;
    }
    atomic_fetch_add_explicit(&ch->in_by_kind[k], 1, memory_order_relaxed);
    if (type_budget[k].per_min) {
        struct client_state *cs = cl->router_state;
        int64_t wait = rate_take(&cs->budget[k], clock_mono_ms(), type_budget[k].per_min,
                                 type_budget[k].burst, 1);
        if (wait) {
            char m[96];
            snprintf(m, sizeof m, "too many '%s' messages; slow down", hub_chat_types[k]);
            client_send_error(cl, ERR_RATE_LIMITED, m, wait, id);
            return;
        }
    }

    switch (k) {
    case CHAT_USER_MESSAGE:
        handle_message(ch, cl, msg, id, false);
        return;
    case CHAT_ADMIN_MESSAGE:
        handle_message(ch, cl, msg, id, true);
        return;
    case CHAT_RESUME:
        chat__handle_resume(ch, cl, msg, id);
        return;
    case CHAT_TYPING: {
        json_t *t = json_object_get(msg, "typing");
        if (!chat__get_session(ch, cl, msg, true, id, &sid))
            return;
        if (!json_is_boolean(t)) {
            client_send_error(cl, ERR_INVALID_FIELD, "'typing' must be true or false", -1, id);
            return;
        }
        struct store_req *r = chat__new_req(cl, STORE_CHECK, k, sid, id);
        struct sess_state *st = chat__state_get(cl, sid, false);
        if (r) {
            r->any_session = cl->admin && chat__admin_in(st);
            r->arg = strdup(json_is_true(t) ? "true" : "false");
        }
        chat__submit(ch, cl, r, id);
        return;
    }
    case CHAT_READ: {
        json_t *s = json_object_get(msg, "seq");
        if (!chat__get_session(ch, cl, msg, true, id, &sid))
            return;
        if (!json_is_integer(s) || json_integer_value(s) < 0) {
            client_send_error(cl, ERR_INVALID_FIELD, "'seq' must be an integer >= 0", -1, id);
            return;
        }
        /* An admin marks what it read in a session it joined; anyone
         * else in their own. */
        struct store_req *r = chat__new_req(cl, STORE_READ, k, sid, id);
        if (r) {
            r->num = json_integer_value(s);
            r->any_session = cl->admin && chat__admin_in(chat__state_get(cl, sid, false));
        }
        chat__submit(ch, cl, r, id);
        return;
    }
    case CHAT_STOP: {
        /* The owner, or an admin that joined: the writer checks which,
         * then stops the answer (fanout.c). */
        if (!chat__get_session(ch, cl, msg, true, id, &sid))
            return;
        struct store_req *r = chat__new_req(cl, STORE_CHECK, k, sid, id);
        if (r)
            r->any_session = cl->admin && chat__admin_in(chat__state_get(cl, sid, false));
        chat__submit(ch, cl, r, id);
        return;
    }
    case CHAT_HELP:
        if (chat__get_session(ch, cl, msg, true, id, &sid)) {
            struct store_req *r = chat__new_req(cl, STORE_HELP, k, sid, id);
            if (r) /* the owner asks: a user of the session, admin or not */
                snprintf(r->sender_type, sizeof r->sender_type, "user");
            chat__submit(ch, cl, r, id);
        }
        return;
    case CHAT_RESOLVE: {
        if (!cl->admin) {
            client_send_error(cl, ERR_FORBIDDEN, "admin role required", -1, id);
            return;
        }
        if (!chat__get_session(ch, cl, msg, true, id, &sid))
            return;
        struct store_req *r = chat__new_req(cl, STORE_RESOLVE, k, sid, id);
        if (r)
            r->any_session = true;
        chat__submit(ch, cl, r, id);
        return;
    }
    case CHAT_MODEL: {
        json_t *m = json_object_get(msg, "model_id");
        if (!chat__get_session(ch, cl, msg, true, id, &sid))
            return;
        if (!json_is_string(m) || !hub_model_known(ch->hub, json_string_value(m))) {
            client_send_error(cl, ERR_INVALID_FIELD, "'model_id' must be one of the offered models",
                              -1, id);
            return;
        }
        struct store_req *r = chat__new_req(cl, STORE_MODEL, k, sid, id);
        if (r)
            r->arg = strdup(json_string_value(m));
        chat__submit(ch, cl, r, id);
        return;
    }
    case CHAT_JOIN:
    case CHAT_LEAVE: {
        if (!cl->admin) {
            client_send_error(cl, ERR_FORBIDDEN, "admin role required", -1, id);
            return;
        }
        if (!chat__get_session(ch, cl, msg, true, id, &sid))
            return;
        /* Recorded before the writer sees it, so that the next message
         * is judged by it; settled when the writer's answer comes back. */
        struct sess_state *st = chat__state_get(cl, sid, true);
        struct store_req *r = chat__new_req(cl, STORE_EVENT, k, sid, id);
        if (r) {
            r->any_session = true;
            snprintf(r->event_type, sizeof r->event_type, "%s",
                     k == CHAT_JOIN ? "admin_join" : "admin_leave");
        }
        if (chat__submit(ch, cl, r, id) && st) {
            st->intent_joined = k == CHAT_JOIN;
            st->intent_pending++;
        }
        return;
    }
    default:
        return;
    }
}

/* A frame for every device of user on every node: through the bus, as a
 * relay to the owner of no session. */
static void chat_notify_user(void *router, const char *user, struct sbuf *f, uint32_t off,
                             uint32_t len)
{
    struct chat *ch = router;
    if (!ch->bus)
        return;
    struct bus_event e;
    memset(&e, 0, sizeof e);
    e.kind = IT_RELAY_OWNER;
    e.type = chat__out_index("notification");
    snprintf(e.owner, sizeof e.owner, "%s", user);
    e.frame = f;
    e.off = off;
    e.len = len;
    if (bus_publish(ch->bus, &e, 1) != 0)
        log_warn("bus_publish_failed", "events=1 type=notification");
}

const struct router_ops chat_router_ops = {
    .client_opened = chat_client_opened,
    .client_drained = chat__client_drained,
    .handle = chat_handle,
    .handle_message = chat_handle_read_message,
    .client_closed = chat_client_closed,
    .client_roles_changed = chat_client_roles_changed,
    .notify_user = chat_notify_user,
};

/* ---- deliveries lost for want of memory -------------------------------------- */

static void lost_run(struct worker *w, struct inbox_msg *m)
{
    struct chat_lost *l = (struct chat_lost *)m;
    /* Cleared first: a loss after this point posts the notice again. */
    atomic_store(&l->queued, false);
    log_warn("delivery_lost", "worker=%u reason=out_of_memory action=close_clients", w->index);
    hub_close_clients(l->ch->hub, w, "out of memory: reconnect and resume");
}

static void lost_drop(struct inbox_msg *m)
{
    (void)m; /* part of the chat: nothing to free */
}

void chat__delivery_lost(struct chat *ch, unsigned worker)
{
    for (unsigned w = 0; w < ch->nworkers; w++) {
        if (worker != CHAT_ALL_WORKERS && w != worker)
            continue;
        struct chat_lost *l = &ch->locals[w].lost;
        if (!atomic_exchange(&l->queued, true))
            worker_post(&ch->hub->srv->workers[w], &l->base);
    }
}

/* ---- setup ---------------------------------------------------------------- */

int chat_init(struct chat **out, struct hub *hub, unsigned nworkers, char *err, size_t errlen)
{
    struct chat *ch = calloc(1, sizeof *ch);
    if (!ch || !(ch->locals = calloc(nworkers, sizeof *ch->locals))) {
        free(ch);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    ch->hub = hub;
    ch->out_ai_response = chat__out_index("ai_response");
    ch->nworkers = nworkers;
    for (unsigned w = 0; w < nworkers; w++) {
        ch->locals[w].lost.ch = ch;
        ch->locals[w].lost.base.run = lost_run;
        ch->locals[w].lost.base.drop = lost_drop;
        atomic_init(&ch->locals[w].lost.queued, false);
    }
    uv_mutex_init(&ch->joined_lock);
    ch->devs_cap = hub->cfg->max_devices + 1;
    *out = ch;
    return 0;
}

void chat_set_store(struct chat *ch, struct store *st)
{
    ch->store = st;
}

void chat_set_bus(struct chat *ch, struct bus *bus)
{
    ch->bus = bus;
}

void chat_set_assistant(struct chat *ch, struct assistant *a)
{
    ch->asst = a;
}

void chat_set_webhook(struct chat *ch, struct webhook *w)
{
    ch->webhook = w;
}

const struct assistant_hooks *chat_assistant_hooks(void)
{
    return &chat__assistant_hooks;
}

void chat_free(struct chat *ch)
{
    if (!ch)
        return;
    for (unsigned w = 0; w < ch->nworkers; w++) {
        chat__free_table(ch->locals[w].joins);
        free(ch->locals[w].admins.v);
        free(ch->locals[w].rtext);
    }
    free(ch->locals);
    assert(ch->ndeltas == 0); /* flushed before each answer ended */
    chat__joined_free(ch);
    uv_mutex_destroy(&ch->joined_lock);
    free(ch->deltas);
    free(ch->dtext);
    free(ch);
}

struct store *chat_store(struct chat *ch)
{
    return ch->store;
}

struct hub *chat_hub(struct chat *ch)
{
    return ch->hub;
}
