/*
 * DESIGN: the writer side of chat. chat_on_batch runs on the storage
 * writer thread with a committed batch, in commit order. It frames each
 * result once (a shared sbuf), looks up the session owner's devices in the
 * registry once per event, and builds one post per worker: the acks and
 * errors for that worker's senders and every event of the batch with the
 * ids of the owner's devices there. Then it posts them; deliver.c takes
 * over on each worker.
 */
#include "hub/chat.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hub/chat_int.h"
#include "bus/bus.h"
#include "hub/wire.h"
#include "util/log.h"
#include "util/vec.h"
#include "util/clock.h"
#include "util/jw.h"
#include "ws/frame.h"

static json_t *sender_json(const char *type, const char *id, const char *name)
{
    return json_pack("{s:s, s:s, s:s}", "type", type, "id", id, "name", name ? name : id);
}

/* What one batch (or one delivery from the bus) turns into: a post per
 * worker, and the events to publish. */
struct batch_out {
    struct chat *ch;
    struct chat_post **posts; /* [nworkers], created on demand */
    struct bus_event *ev;     /* events to publish, each holding a frame reference */
    size_t nev, capev;
    struct chat_asst_op *ops; /* for the assistant, after publishing */
    size_t nops, capops;
};

/* Queue something for the assistant (see chat__assistant_ops). */
static void add_op(struct batch_out *bo, uint8_t what, const struct store_req *r,
                   const char *user, const char *stream)
{
    if (!bo->ch->asst)
        return;
    struct chat_asst_op now;
    struct chat_asst_op *op = &now;
    bool queued = vec_grow(&bo->ops, &bo->capops, bo->nops, 1, sizeof *bo->ops) == 0;
    if (queued)
        op = &bo->ops[bo->nops++];
    memset(op, 0, sizeof *op);
    op->what = what;
    op->conn_id = r->conn_id;
    snprintf(op->session, sizeof op->session, "%s", r->session_id);
    snprintf(op->user, sizeof op->user, "%s", user);
    snprintf(op->model, sizeof op->model, "%s", r->model);
    snprintf(op->stream, sizeof op->stream, "%.*s", ASST_STREAM_ID_LEN, stream ? stream : "");
    if (!queued) {
        /* No memory to queue it: run it now, before the batch's events are
         * published, rather than lose it (a lost ASK would leave an
         * acknowledged message unanswered in silence, a lost STORED the
         * session's assistant busy for good). Only the order suffers: a
         * `loading` may reach a device before the message it answers. */
        log_warn("assistant_op_early", "what=%u reason=out_of_memory", what);
        chat__assistant_ops(bo->ch, op, 1);
    }
}

/* Append an item to the worker's post; returns it, or NULL when out of
 * memory (the item is then lost, never confused with another). */
static struct chat_item *add_item(struct batch_out *bo, unsigned worker, uint8_t kind,
                                  uint8_t type, uint64_t conn_id, struct sbuf *frame,
                                  uint32_t off, uint32_t len, int64_t seq, const char *session,
                                  const char *owner)
{
    struct chat_post *p = bo->posts[worker];
    if (!p) {
        p = calloc(1, sizeof *p);
        if (!p) {
            chat__delivery_lost(bo->ch, worker);
            return NULL;
        }
        p->base.run = chat__post_run;
        p->base.drop = chat__post_drop;
        p->ch = bo->ch;
        bo->posts[worker] = p;
    }
    if (vec_grow(&p->items, &p->cap, p->n, 1, sizeof *p->items) != 0) {
        chat__delivery_lost(bo->ch, worker);
        return NULL;
    }
    struct chat_item *it = &p->items[p->n++];
    memset(it, 0, offsetof(struct chat_item, session));
    it->kind = kind;
    it->out_type = type;
    it->conn_id = conn_id;
    it->frame = frame ? sbuf_ref(frame) : NULL;
    it->off = off;
    it->len = len;
    it->seq = seq;
    chat__copy_id(it->session, sizeof it->session, session);
    it->owner_hash = hash_str(owner);
    return it;
}

/* Attach the connection ids of the owner's devices on `worker` to item it
 * (just added to that worker's post). */
static void set_ids(struct batch_out *bo, unsigned worker, struct chat_item *it,
                    const struct reg_device *devs, unsigned ndevs)
{
    struct chat_post *p = bo->posts[worker];
    it->ids_off = (uint32_t)p->nids;
    for (unsigned i = 0; i < ndevs; i++) {
        if (devs[i].worker != worker)
            continue;
        if (vec_grow(&p->ids, &p->capids, p->nids, 1, sizeof *p->ids) != 0) {
            chat__delivery_lost(bo->ch, worker);
            return;
        }
        p->ids[p->nids++] = devs[i].conn_id;
        it->ids_n++;
    }
}

/* Queue an event of r's session for the bus (taking a reference on f). */
static struct bus_event *add_event(struct batch_out *bo, uint8_t kind, uint8_t type,
                                   uint64_t conn_id, struct sbuf *f, uint32_t off, uint32_t len,
                                   const struct store_req *r)
{
    if (vec_grow(&bo->ev, &bo->capev, bo->nev, 1, sizeof *bo->ev) != 0) {
        /* lost, never confused with another: the devices that missed it
         * are closed, and their resume finds it */
        chat__delivery_lost(bo->ch, CHAT_ALL_WORKERS);
        return NULL;
    }
    struct bus_event *e = &bo->ev[bo->nev++];
    memset(e, 0, sizeof *e);
    e->kind = kind;
    e->type = type;
    e->worker = r->worker;
    e->conn_id = conn_id;
    e->seq = r->seq;
    snprintf(e->session, sizeof e->session, "%s", r->session_id);
    snprintf(e->owner, sizeof e->owner, "%s", r->owner);
    e->frame = f ? sbuf_ref(f) : NULL;
    e->off = off;
    e->len = len;
    return e;
}

/* Frame a JSON object (taking it) and tell its message type; NULL on OOM. */
static struct sbuf *frame_obj(json_t *obj, uint8_t *type, uint32_t *off, uint32_t *len)
{
    if (!obj)
        return NULL;
    *type = chat__out_index(json_string_value(json_object_get(obj, "type")));
    struct sbuf *f = wire_frame_json(obj, off, len);
    json_decref(obj);
    return f;
}

static void add_everywhere(struct batch_out *bo, uint8_t kind, uint64_t conn_id, json_t *obj,
                           const struct store_req *r)
{
    uint8_t type;
    uint32_t off, len;
    struct sbuf *f = frame_obj(obj, &type, &off, &len);
    if (f) {
        struct bus_event *e = add_event(bo, kind, type, conn_id, f, off, len, r);
        if (e)
            e->seq = 0; /* not stored: no place in the session's order */
        sbuf_unref(f);
    }
}

/* Queue a framed answer (taking the frame) for r's connection. */
static void add_reply_frame(struct batch_out *bo, const struct store_req *r, struct sbuf *f,
                            uint32_t off, uint32_t len, uint8_t type)
{
    if (!f) {
        chat__delivery_lost(bo->ch, r->worker); /* never leave a message unanswered */
        return;
    }
    add_item(bo, r->worker, IT_REPLY, type, r->conn_id, f, off, len, r->seq, r->session_id,
             r->owner);
    sbuf_unref(f);
}

/* Queue the ack of r for its connection; extra_key/extra_val add one
 * string member (model_select echoes model_id). */
static void add_ack(struct batch_out *bo, const struct store_req *r, bool with_seq,
                    const char *extra_key, const char *extra_val, const char *bool_key,
                    bool bool_val)
{
    char ts[32];
    clock_format_rfc3339(ts, r->ts_ms);
    struct jw w;
    jw_init(&w, 256, WS_MAX_HEADER);
    jw_open(&w);
    jw_kstr(&w, "type", "ack");
    jw_kstr(&w, "session_id", r->session_id);
    if (with_seq)
        jw_kint(&w, "seq", r->seq);
    jw_kstr(&w, "timestamp", ts);
    if (r->client_id[0])
        jw_kstr(&w, "id", r->client_id);
    if ((r->op == STORE_APPEND || r->op == STORE_HELP || r->op == STORE_RESOLVE) && r->duplicate) {
        jw_key(&w, "duplicate");
        jw_bool(&w, true);
    }
    if (extra_key)
        jw_kstr(&w, extra_key, extra_val ? extra_val : "");
    if (bool_key) {
        jw_key(&w, bool_key);
        jw_bool(&w, bool_val);
    }
    jw_close(&w);
    uint32_t off, len;
    struct sbuf *f = wire_frame_jw(&w, &off, &len);
    add_reply_frame(bo, r, f, off, len, chat__out_index("ack"));
}

/* Queue an error answering r for its connection. */
static void add_error(struct batch_out *bo, const struct store_req *r, enum chat_error code,
                      const char *message, int64_t retry_after)
{
    hub_count_error(bo->ch->hub, code);
    uint32_t off, len;
    struct sbuf *f = wire_error_frame(hub_error_codes[code], message, code != ERR_INTERNAL,
                                      retry_after, r->client_id, &off, &len);
    add_reply_frame(bo, r, f, off, len, chat__out_index("error"));
}

/* A refused admin_join/admin_leave still settles the intent its worker
 * recorded (see struct sess_state). */
static void settle_refused(struct batch_out *bo, const struct store_req *r)
{
    if (r->kind != CHAT_JOIN && r->kind != CHAT_LEAVE && r->kind != KIND_LEAVE_REVOKED)
        return;
    struct chat_item *it = add_item(bo, r->worker, r->kind == CHAT_JOIN ? IT_JOIN : IT_LEAVE, 0,
                                    r->conn_id, NULL, 0, 0, r->seq, r->session_id, r->owner);
    if (it)
        it->failed = true;
}

/* A stored session event of r's session (help_request, help_resolved,
 * admin_join, admin_leave) to its participants, and to every admin online
 * when admins is set. */
static void add_session_event(struct batch_out *bo, const struct store_req *r, const char *type,
                              const char *stype, bool admins)
{
    uint32_t off, len;
    struct sbuf *f = wire_event_frame(type, r->session_id, r->seq, NULL, stype, r->user,
                                      r->sender_name, NULL, 0, NULL, r->ts_ms, &off, &len);
    if (!f) {
        chat__delivery_lost(bo->ch, CHAT_ALL_WORKERS);
        return;
    }
    add_event(bo, IT_EVENT, chat__out_index(type), r->conn_id, f, off, len, r);
    if (admins)
        add_event(bo, IT_ADMINS, chat__out_index(type), 0, f, off, len, r);
    sbuf_unref(f);
}

/* The assistant's answer came back from storage: the final ai_response
 * to the session, and the slot freed (chat__assistant_ops). */
static void batch_answer(struct batch_out *bo, struct store_req *r)
{
    if (r->status != STORE_OK) {
        struct log_quoted qs;
        log_warn("assistant_answer_not_stored", "session=%s bytes=%zu status=%d",
                 log_quotes(&qs, r->session_id), r->content_len, (int)r->status);
        add_op(bo, ASST_OP_STORE_FAILED, r, r->owner, r->client_id);
        return;
    }
    if (!r->duplicate) {
        uint32_t off, len;
        struct sbuf *f = wire_event_frame("ai_response", r->session_id, r->seq, r->client_id, "ai",
                                          r->user, r->sender_name, r->content, r->content_len,
                                          r->metadata, r->ts_ms, &off, &len);
        if (f) {
            add_event(bo, IT_EVENT, chat__out_index("ai_response"), 0, f, off, len, r);
            sbuf_unref(f);
        } else {
            chat__delivery_lost(bo->ch, CHAT_ALL_WORKERS);
        }
    }
    add_op(bo, ASST_OP_STORED, r, r->owner, r->client_id);
}

static void batch_one(struct batch_out *bo, struct store_req *r)
{
    if (r->kind == KIND_AI_ANSWER) {
        batch_answer(bo, r);
        return;
    }
    if (r->status == STORE_UNAVAILABLE) {
        add_error(bo, r, ERR_UNAVAILABLE, "storage is unavailable; nothing was stored, retry later",
                  1000);
        settle_refused(bo, r);
        return;
    }
    if (r->status == STORE_UNKNOWN) {
        /* Never claim "nothing was stored" when that is not known: the
         * client's retry with the same id is answered from what is on
         * disk, once chatd runs again. */
        add_error(bo, r, ERR_UNAVAILABLE,
                  "storage failed while committing: this may have been stored; "
                  "retry later with the same id",
                  5000);
        settle_refused(bo, r);
        return;
    }
    if (r->status == STORE_NOT_FOUND) {
        add_error(bo, r, ERR_SESSION_NOT_FOUND, "no such session", -1);
        settle_refused(bo, r);
        return;
    }
    /* Someone acting in a session they do not own is there as an admin. */
    const char *stype = r->any_session && strcmp(r->owner, r->user) != 0 ? "admin" : "user";
    switch (r->kind) {
    case CHAT_USER_MESSAGE:
    case CHAT_ADMIN_MESSAGE:
        add_ack(bo, r, true, NULL, NULL, NULL, false);
        if (!r->duplicate) {
            const char *type = r->kind == CHAT_ADMIN_MESSAGE ? "admin_message" : "user_message";
            uint32_t off, len;
            struct sbuf *f = wire_event_frame(type, r->session_id, r->seq, r->client_id, r->sender_type,
                                         r->user, r->sender_name, r->content, r->content_len,
                                         r->metadata, r->ts_ms, &off, &len);
            if (f) {
                add_event(bo, IT_EVENT, chat__out_index(type), r->conn_id, f, off, len, r);
                sbuf_unref(f);
            } else {
                chat__delivery_lost(bo->ch, CHAT_ALL_WORKERS);
            }
            if (r->kind == CHAT_USER_MESSAGE)
                add_op(bo, ASST_OP_ASK, r, r->owner, NULL);
        } else {
            /* A retry found it stored. Its event may never have gone out
             * (a commit whose outcome was not known): a hint, which a bus
             * that may lose events fills where it is missing. */
            struct bus_event *e = add_event(bo, IT_EVENT, 0, r->conn_id, NULL, 0, 0, r);
            if (e)
                e->hint = true;
        }
        break;
    case CHAT_TYPING: {
        json_t *o = json_pack("{s:s, s:s, s:o, s:b}", "type", "typing_indicator", "session_id",
                              r->session_id, "sender", sender_json(stype, r->user, r->sender_name),
                              "typing", r->arg && strcmp(r->arg, "true") == 0);
        add_everywhere(bo, IT_RELAY, r->conn_id, o, r);
        break;
    }
    case CHAT_READ: {
        /* Kept per reader (the writer), relayed to the others in the
         * session: the owner's devices and the joined admins. */
        json_t *o = json_pack("{s:s, s:s, s:I, s:o}", "type", "read", "session_id", r->session_id,
                              "seq", (json_int_t)(r->num < r->seq ? r->num : r->seq), "sender",
                              sender_json(stype, r->user, r->sender_name));
        add_everywhere(bo, IT_RELAY, r->conn_id, o, r);
        break;
    }
    case CHAT_HELP:
    case CHAT_RESOLVE:
        add_ack(bo, r, !r->duplicate, NULL, NULL, NULL, false);
        if (r->duplicate)
            break; /* nothing changed: asked already, or nothing to resolve */
        if (r->kind == CHAT_HELP && bo->ch->webhook)
            webhook_help_request(bo->ch->webhook, r->session_id, r->user, r->sender_name, r->arg,
                                 r->ts_ms);
        /* Stored: to the session, and to every admin online (the support
         * list), each at most once (seq). */
        add_session_event(bo, r, r->kind == CHAT_HELP ? "help_request" : "help_resolved", stype,
                          true);
        break;
    case CHAT_MODEL: {
        add_ack(bo, r, false, "model_id", r->arg, NULL, false);
        break;
    }
    case CHAT_STOP: {
        /* The writer has checked the session is the sender's (or that the
         * admin joined it): now stop its answer, if one runs. */
        bool stopped = bo->ch->asst && assistant_stop(bo->ch->asst, r->session_id);
        if (!stopped) /* perhaps another node answers it (a round trip, stops only) */
            stopped = bus_stop(bo->ch->bus, r->session_id) > 0;
        add_ack(bo, r, false, NULL, NULL, "stopped", stopped);
        break;
    }
    case CHAT_JOIN:
    case CHAT_LEAVE:
    case KIND_LEAVE_REVOKED: {
        bool join = r->kind == CHAT_JOIN;
        /* The subscription changes where the admin's connection is, in line
         * with the events around it: an event of its own. A join comes
         * before its stored event, a leave after it, so the admin's own
         * connection sees both. */
        if (join)
            add_event(bo, IT_JOIN, 0, r->conn_id, NULL, 0, 0, r);
        add_session_event(bo, r, join ? "admin_join" : "admin_leave", "admin", false);
        if (!join)
            add_event(bo, IT_LEAVE, 0, r->conn_id, NULL, 0, 0, r);
        if (r->kind != KIND_LEAVE_REVOKED)
            add_ack(bo, r, true, NULL, NULL, NULL, false);
        chat__joined_set(bo->ch, r->session_id, r->conn_id, r->user, r->sender_name, join);
        /* The assistant of every node leaves the session alone from the
         * join's ack on (a round trip, before the ack is posted): the one
         * here through the op below, the others through the bus. */
        bus_hold(bo->ch->bus, r->session_id, r->conn_id, join);
        add_op(bo, join ? ASST_OP_HOLD : ASST_OP_UNHOLD, r, r->user, NULL);
        break;
    }
    default:
        break;
    }
}

/* A write of the HTTP API (api.c): what the others should learn of it,
 * then its waiter is woken (r belongs to it from then on). */
static void batch_api(struct batch_out *bo, struct store_req *r)
{
    if (r->status == STORE_OK && r->op == STORE_RENAME) {
        /* Every device of the owner shows the new title. */
        json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s}", "type", "notification", "code",
                              "session_renamed", "message", "the session was renamed",
                              "session_id", r->session_id, "title", r->arg ? r->arg : "");
        add_everywhere(bo, IT_RELAY_OWNER, 0, o, r);
    }
    chat__wait_done(r);
}

static void post_all(struct batch_out *bo)
{
    struct chat *ch = bo->ch;
    for (unsigned w = 0; w < ch->nworkers; w++)
        if (bo->posts[w])
            worker_post(&ch->hub->srv->workers[w], &bo->posts[w]->base);
}

/* The replies (acks, errors) go straight to their workers, before the
 * batch's events are published: a sender's worker gets its ack before its
 * own event, as both inboxes are FIFO and the local bus delivers at once. */
void chat_on_batch(void *arg, struct store_req **reqs, size_t n)
{
    struct chat *ch = arg;
    struct chat_post *posts[ch->nworkers];
    memset(posts, 0, sizeof posts);
    struct batch_out bo = {.ch = ch, .posts = posts};
    for (size_t i = 0; i < n; i++) {
        if (reqs[i]->waiter) {
            batch_api(&bo, reqs[i]); /* the waiter frees it */
            continue;
        }
        batch_one(&bo, reqs[i]);
        store_req_free(reqs[i]);
    }
    post_all(&bo);
    int prc = bo.nev ? bus_publish(ch->bus, bo.ev, bo.nev) : 0;
    if (prc != 0) {
        log_warn("bus_publish_failed", "events=%zu rc=%d", bo.nev, prc);
        /* -EIO: this node's connections got them all the same. */
        if (prc == -ENOMEM)
            chat__delivery_lost(ch, CHAT_ALL_WORKERS);
    }
    for (size_t i = 0; i < bo.nev; i++)
        if (bo.ev[i].frame)
            sbuf_unref(bo.ev[i].frame);
    free(bo.ev);
    if (bo.nops)
        chat__assistant_ops(ch, bo.ops, bo.nops);
    free(bo.ops);
}

/* Events from the bus: each goes to every worker, which delivers it to the
 * owner's devices it holds (looked up here, once, in the registry) and,
 * unless the kind is for the owner alone, to the admins there that joined
 * the session. A join or leave goes to the admin's own worker. */
void chat_bus_deliver(void *app, const struct bus_event *ev, size_t n)
{
    struct chat *ch = app;
    struct chat_post *posts[ch->nworkers];
    memset(posts, 0, sizeof posts);
    struct batch_out bo = {.ch = ch, .posts = posts};
    struct reg_device *devs = malloc(ch->devs_cap * sizeof *devs);
    if (!devs)
        chat__delivery_lost(ch, CHAT_ALL_WORKERS); /* the owners' devices would miss them */
    for (size_t i = 0; i < n; i++) {
        const struct bus_event *e = &ev[i];
        if (e->hint)
            continue; /* the bus has filled what this node lacked */
        if (e->kind == IT_JOIN || e->kind == IT_LEAVE || e->kind == IT_REPLY) {
            /* About a connection of the publishing node: nothing to do here. */
            if (!e->remote && e->kind != IT_REPLY && e->worker < ch->nworkers) {
                struct chat_item *it = add_item(&bo, e->worker, e->kind, 0, e->conn_id, NULL, 0,
                                                0, e->seq, e->session, e->owner);
                if (it)
                    it->failed = e->failed;
            }
            continue;
        }
        unsigned nd = 0;
        if (e->kind != IT_ADMINS && devs)
            nd = registry_devices(&ch->hub->registry, e->owner, strlen(e->owner), devs,
                                  ch->devs_cap);
        for (unsigned w = 0; w < ch->nworkers; w++) {
            struct chat_item *it = add_item(&bo, w, e->kind, e->type, e->conn_id, e->frame,
                                            e->off, e->len, e->seq, e->session, e->owner);
            if (!it)
                continue;
            set_ids(&bo, w, it, devs, nd);
            if (e->kind == IT_DELTA) {
                it->remote = e->remote;
                chat__copy_id(it->stream, sizeof it->stream, e->stream);
                it->stream_off = e->stream_off;
                it->stream_len = e->stream_len;
            }
        }
    }
    free(devs);
    post_all(&bo);
}

void chat_bus_stop(void *app, const char *session)
{
    struct chat *ch = app;
    if (ch->asst)
        assistant_stop(ch->asst, session);
}

void chat_bus_kick(void *app, const char *user, uint64_t conn_id)
{
    struct chat *ch = app;
    hub_kick(ch->hub, user, conn_id);
}

#define FILL_PAGE 512 /* events read from storage for a gap, at most at once */

/* Stored events the bus did not bring (a message Redis lost, one published
 * late, or a retry's hint): read from storage on the bus's thread and
 * delivered before what follows them, so each connection still gets the
 * session's events in order. */
int64_t chat_bus_fill(void *app, const char *session, const char *owner, int64_t after,
                      int64_t before)
{
    struct chat *ch = app;
    if (!ch->store)
        return -ENOTSUP;
    int64_t limit = before > 0 ? before - after - 1 : FILL_PAGE;
    if (limit <= 0)
        return after;
    struct store_event *ev = NULL;
    int n = store_read_events(ch->store, session, after, limit < FILL_PAGE ? limit : FILL_PAGE, 0,
                              &ev);
    if (n <= 0)
        return n < 0 ? n : after;
    struct bus_event *be = calloc((size_t)n, sizeof *be);
    size_t nb = 0;
    for (int i = 0; be && i < n; i++) {
        const struct store_event *e = &ev[i];
        struct bus_event *b = &be[nb];
        b->frame = wire_event_frame(e->type, session, e->seq, e->client_id, e->sender_type,
                                    e->sender_id, e->sender_name, e->content, e->content_len,
                                    e->metadata, e->ts_ms, &b->off, &b->len);
        if (!b->frame)
            break; /* out of memory: what was framed goes; the rest waits */
        b->kind = IT_EVENT;
        b->type = chat__out_index(e->type);
        b->remote = true;
        b->worker = UINT32_MAX;
        b->seq = e->seq;
        snprintf(b->session, sizeof b->session, "%s", session);
        snprintf(b->owner, sizeof b->owner, "%s", owner);
        nb++;
    }
    int64_t got = nb ? be[nb - 1].seq : -ENOMEM;
    if (nb)
        chat_bus_deliver(ch, be, nb);
    for (size_t i = 0; i < nb; i++)
        sbuf_unref(be[i].frame);
    free(be);
    store_events_free(ev, n);
    return got;
}
