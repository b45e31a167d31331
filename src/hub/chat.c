/*
 * DESIGN: see chat.h for the path of a message. Two details carry the
 * delivery guarantees:
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

#include "net/conn.h"
#include "http/request.h"
#include "net/server.h"
#include "util/clock.h"
#include "util/jw.h"
#include "util/text.h"
#include "util/log.h"
#include "util/rate.h"
#include "ws/frame.h"

#define LOCAL_BUCKETS 1024
/* store_req.kind of the admin_leave that a lost admin role makes (not a
 * client message: no ack is sent for it). */
#define KIND_LEAVE_REVOKED ((uint32_t)CHAT_TYPE_COUNT + 1)
#define METADATA_MAX 16384

/* Server-to-client message types counted in chatd_messages_out_total. */
static const char *const out_names[] = {
    "ack",          "user_message", "admin_message", "typing_indicator", "read",
    "help_request", "admin_join",   "admin_leave",   "resumed",          "error",
};
#define OUT_COUNT (sizeof out_names / sizeof out_names[0])

static uint8_t out_index(const char *type)
{
    for (uint8_t i = 0; i < OUT_COUNT; i++)
        if (strcmp(type, out_names[i]) == 0)
            return i;
    return OUT_COUNT - 1;
}

/* Per connection, per session: what it has been sent and whether it is
 * joined. Owned by the connection's worker thread (client->router_state). */
struct seq_range {
    int64_t lo, hi;
};

struct sess_state {
    char id[STORE_ID_LEN + 1];
    bool joined; /* an admin subscribed with admin_join */
    /* The admin's latest admin_join (true) or admin_leave (false) and how
     * many of those are still with the writer: a message sent right after
     * admin_join is judged by what the client asked, as the writer will
     * have applied the join before it (one connection's requests are
     * processed in order). */
    bool intent_joined;
    uint32_t intent_pending;
    unsigned nr, cap;
    struct seq_range *sent; /* seqs sent, sorted, merged (owned) */
};

struct resume_job;

struct client_state {
    unsigned n, cap;
    struct sess_state *v;
    struct resume_job *jobs; /* replays running or waiting (see struct resume_job) */
    unsigned njobs;          /* on jobs */
    unsigned nrunning;       /* on jobs and not waiting for a slot */
    struct rate_bucket budget[CHAT_TYPE_COUNT]; /* see type_budget */
};

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
};

/* Worker-local indexes, owned by one worker thread. */
struct local_list {
    struct local_list *next;
    char *key;
    unsigned n, cap;
    struct client **v;
};

struct chat_local {
    struct local_list *joins[LOCAL_BUCKETS]; /* session id -> admins joined here */
    struct local_list admins;                /* every admin client here (key unused) */
    /* written by this worker only; atomics so /metrics may read them */
    atomic_uint_fast64_t out[OUT_COUNT];
};

struct chat {
    struct hub *hub;
    struct store *store;
    unsigned nworkers;
    /* writer thread only: scratch for the owner's devices of one event */
    struct reg_device *devs;
    unsigned devs_cap;
    struct chat_local *locals; /* [nworkers], each owned by its worker */
    atomic_uint_fast64_t in_by_kind[CHAT_TYPE_COUNT];
};

/* ---- small helpers ---------------------------------------------------------- */

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    while (*s) {
        h ^= (unsigned char)*s++;
        h *= 1099511628211ULL;
    }
    return h ^ (h >> 31);
}

static struct local_list *list_find(struct local_list **tab, const char *key, bool create)
{
    struct local_list **p = &tab[hash_str(key) % LOCAL_BUCKETS];
    for (; *p; p = &(*p)->next)
        if (strcmp((*p)->key, key) == 0)
            return *p;
    if (!create)
        return NULL;
    struct local_list *l = calloc(1, sizeof *l);
    if (!l || !(l->key = strdup(key))) {
        free(l);
        return NULL;
    }
    *p = l;
    return l;
}

static int list_add(struct local_list *l, struct client *cl)
{
    if (l->n == l->cap) {
        unsigned cap = l->cap ? l->cap * 2 : 4;
        struct client **v = realloc(l->v, cap * sizeof *v);
        if (!v)
            return -ENOMEM;
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = cl;
    return 0;
}

static void list_del(struct local_list **tab, struct local_list *l, struct client *cl)
{
    for (unsigned i = 0; i < l->n; i++) {
        if (l->v[i] == cl) {
            l->v[i] = l->v[--l->n];
            break;
        }
    }
    if (l->n || !tab)
        return;
    struct local_list **p = &tab[hash_str(l->key) % LOCAL_BUCKETS];
    while (*p != l)
        p = &(*p)->next;
    *p = l->next;
    free(l->key);
    free(l->v);
    free(l);
}

/* The client's router state, made on first use (idle clients have none). */
static struct client_state *cstate(struct client *cl)
{
    if (!cl->router_state)
        cl->router_state = calloc(1, sizeof(struct client_state));
    return cl->router_state;
}

static struct sess_state *state_get(struct client *cl, const char *sid, bool create)
{
    struct client_state *cs = create ? cstate(cl) : cl->router_state;
    if (!cs)
        return NULL;
    for (unsigned i = 0; i < cs->n; i++)
        if (strcmp(cs->v[i].id, sid) == 0)
            return &cs->v[i];
    if (!create)
        return NULL;
    if (cs->n == cs->cap) {
        unsigned cap = cs->cap ? cs->cap * 2 : 2;
        struct sess_state *v = realloc(cs->v, cap * sizeof *v);
        if (!v)
            return NULL;
        cs->v = v;
        cs->cap = cap;
    }
    struct sess_state *st = &cs->v[cs->n++];
    memset(st, 0, sizeof *st);
    snprintf(st->id, sizeof st->id, "%s", sid);
    return st;
}

/* Is the admin in the session, as far as its next message is concerned? */
static bool admin_in(const struct sess_state *st)
{
    return st && (st->intent_pending ? st->intent_joined : st->joined);
}

static bool sent_has(const struct sess_state *st, int64_t seq)
{
    for (unsigned i = st->nr; i-- > 0;)
        if (seq >= st->sent[i].lo && seq <= st->sent[i].hi)
            return true;
    return false;
}

static int64_t sent_max(const struct sess_state *st)
{
    return st->nr ? st->sent[st->nr - 1].hi : 0;
}

/* Record seq as sent, keeping the ranges sorted and merged. */
static void sent_add(struct sess_state *st, int64_t seq)
{
    unsigned i = st->nr;
    while (i > 0 && st->sent[i - 1].lo > seq)
        i--;
    /* st->sent[i - 1].lo <= seq < st->sent[i].lo */
    bool join_prev = i > 0 && st->sent[i - 1].hi + 1 >= seq;
    bool join_next = i < st->nr && st->sent[i].lo - 1 == seq;
    if (join_prev && join_next) {
        st->sent[i - 1].hi = st->sent[i].hi;
        memmove(&st->sent[i], &st->sent[i + 1], (st->nr - i - 1) * sizeof *st->sent);
        st->nr--;
    } else if (join_prev) {
        if (st->sent[i - 1].hi < seq)
            st->sent[i - 1].hi = seq;
    } else if (join_next) {
        st->sent[i].lo = seq;
    } else {
        if (st->nr == st->cap) {
            unsigned cap = st->cap ? st->cap * 2 : 2;
            struct seq_range *v = realloc(st->sent, cap * sizeof *v);
            if (!v)
                return; /* worst case: a later resume sends this seq again */
            st->sent = v;
            st->cap = cap;
        }
        memmove(&st->sent[i + 1], &st->sent[i], (st->nr - i) * sizeof *st->sent);
        st->sent[i].lo = st->sent[i].hi = seq;
        st->nr++;
    }
}

static bool valid_session_id(const char *s)
{
    if (strlen(s) != STORE_ID_LEN || s[0] != 's' || s[1] != '_')
        return false;
    for (int i = 2; i < STORE_ID_LEN; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

static json_t *sender_json(const char *type, const char *id, const char *name)
{
    return json_pack("{s:s, s:s, s:s}", "type", type, "id", id, "name", name ? name : id);
}

/* Frame a JSON text built with jw (WS_MAX_HEADER bytes reserved at its
 * front) as one text frame, taking the writer's buffer; NULL on OOM. */
static struct sbuf *frame_jw(struct jw *w, uint32_t *off, uint32_t *len)
{
    /* The text was written after WS_MAX_HEADER free bytes: the header goes
     * right before it and the frame is queued from there, uncopied. */
    size_t n = w->len - WS_MAX_HEADER;
    struct sbuf *b = jw_take(w);
    if (!b)
        return NULL;
    uint8_t hdr[WS_MAX_HEADER];
    size_t hl = ws_frame_header(hdr, WS_OP_TEXT, true, n);
    memcpy(b->data + WS_MAX_HEADER - hl, hdr, hl);
    *off = (uint32_t)(WS_MAX_HEADER - hl);
    *len = (uint32_t)(hl + n);
    return b;
}

/* The one shape of a stored event, live or replayed, framed once. This is
 * the hot path of chat: written directly, not through a JSON tree. */
static struct sbuf *event_frame(const char *type, const char *sid, int64_t seq,
                                const char *client_id, const char *sender_type,
                                const char *sender_id, const char *sender_name, const char *content,
                                size_t content_len, const char *metadata, int64_t ts_ms,
                                uint32_t *off, uint32_t *len)
{
    char ts[32];
    clock_format_rfc3339(ts, ts_ms);
    struct jw w;
    jw_init(&w, 256 + content_len + (metadata ? strlen(metadata) : 0), WS_MAX_HEADER);
    jw_open(&w);
    jw_kstr(&w, "type", type);
    jw_kstr(&w, "session_id", sid);
    jw_kint(&w, "seq", seq);
    jw_key(&w, "sender");
    jw_open(&w);
    jw_kstr(&w, "type", sender_type);
    jw_kstr(&w, "id", sender_id);
    jw_kstr(&w, "name", sender_name ? sender_name : sender_id);
    jw_close(&w);
    jw_key(&w, "content");
    jw_str(&w, content, content_len);
    jw_kstr(&w, "timestamp", ts);
    if (client_id && *client_id)
        jw_kstr(&w, "id", client_id);
    if (metadata) {
        /* Stored as the compact JSON object it was checked to be. */
        jw_key(&w, "metadata");
        jw_raw(&w, metadata, strlen(metadata));
    }
    jw_close(&w);
    return frame_jw(&w, off, len);
}

/* ---- worker side: messages from the writer ----------------------------------- */

enum item_kind { IT_REPLY, IT_EVENT, IT_RELAY, IT_RELAY_OWNER, IT_ADMINS, IT_JOIN, IT_LEAVE };

struct chat_item {
    uint8_t kind;
    uint8_t out_type;   /* index in out_names */
    bool failed;        /* JOIN/LEAVE: refused by the writer, only settles intent */
    uint64_t conn_id;   /* REPLY target; RELAY exclusion; JOIN/LEAVE subject */
    struct sbuf *frame; /* one reference, or NULL */
    uint32_t off, len;
    int64_t seq;
    uint32_t ids_off, ids_n; /* the owner's devices on this worker, in post->ids */
    uint64_t owner_hash;     /* hash_str(owner): admins that are the owner skip */
    char session[STORE_ID_LEN + 1];
};

struct chat_post {
    struct inbox_msg base;
    struct chat *ch;
    size_t n, cap;
    struct chat_item *items;
    size_t nids, capids;
    uint64_t *ids; /* connection ids referenced by items */
};

static void count_out(struct client *cl, uint8_t type)
{
    struct chat *ch = cl->hub->router;
    atomic_fetch_add_explicit(&ch->locals[cl->conn->w->index].out[type], 1, memory_order_relaxed);
}

static void send_frame(struct client *cl, const struct chat_item *it)
{
    if (conn_send_shared(cl->conn, it->frame, it->off, it->len) == 0)
        count_out(cl, it->out_type);
}

/* Send a stored event to one client unless it already has it. */
static void send_event(struct client *cl, const struct chat_item *it)
{
    struct sess_state *st = state_get(cl, it->session, true);
    if (!st || sent_has(st, it->seq))
        return; /* already sent by a replay */
    sent_add(st, it->seq);
    send_frame(cl, it);
}

static void for_participants(struct worker *w, struct chat_local *loc, const struct chat_post *p,
                             const struct chat_item *it, bool stored, bool owner_only)
{
    const uint64_t *ids = p->ids + it->ids_off;
    for (uint32_t i = 0; i < it->ids_n; i++) {
        struct conn *c = idmap_get(&w->by_id, ids[i]);
        if (!c || !c->data)
            continue; /* closed meanwhile */
        if (it->conn_id && ids[i] == it->conn_id && !stored)
            continue;
        stored ? send_event(c->data, it) : send_frame(c->data, it);
    }
    if (owner_only)
        return;
    struct local_list *admins = list_find(loc->joins, it->session, false);
    for (unsigned i = 0; admins && i < admins->n; i++) {
        struct client *cl = admins->v[i];
        if (cl->sub_hash == it->owner_hash) {
            /* Perhaps the owner's own device: then it got it above. */
            bool owner_device = false;
            for (uint32_t k = 0; k < it->ids_n && !owner_device; k++)
                owner_device = ids[k] == cl->conn->id;
            if (owner_device)
                continue;
        }
        if (it->conn_id && cl->conn->id == it->conn_id && !stored)
            continue;
        stored ? send_event(cl, it) : send_frame(cl, it);
    }
}

static void apply_item(struct chat *ch, struct worker *w, const struct chat_post *p,
                       const struct chat_item *it)
{
    struct chat_local *loc = &ch->locals[w->index];
    struct conn *c;
    switch (it->kind) {
    case IT_REPLY:
        if ((c = idmap_get(&w->by_id, it->conn_id)) && c->data)
            send_frame(c->data, it);
        break;
    case IT_EVENT:
        for_participants(w, loc, p, it, true, false);
        break;
    case IT_RELAY:
        for_participants(w, loc, p, it, false, false);
        break;
    case IT_RELAY_OWNER:
        for_participants(w, loc, p, it, false, true);
        break;
    case IT_ADMINS:
        for (unsigned i = 0; i < loc->admins.n; i++)
            send_frame(loc->admins.v[i], it);
        break;
    case IT_JOIN:
    case IT_LEAVE: {
        if (!(c = idmap_get(&w->by_id, it->conn_id)) || !c->data)
            break;
        struct client *cl = c->data;
        struct sess_state *st = state_get(cl, it->session, it->kind == IT_JOIN && !it->failed);
        if (!st)
            break;
        if (st->intent_pending > 0)
            st->intent_pending--;
        if (it->failed)
            break;
        if (it->kind == IT_JOIN && !st->joined && cl->admin) {
            struct local_list *l = list_find(loc->joins, it->session, true);
            if (l && list_add(l, cl) == 0)
                st->joined = true;
        } else if (it->kind == IT_LEAVE && st->joined) {
            struct local_list *l = list_find(loc->joins, it->session, false);
            if (l)
                list_del(loc->joins, l, cl);
            st->joined = false;
        }
        break;
    }
    }
}

static void post_free(struct chat_post *p)
{
    for (size_t i = 0; i < p->n; i++)
        if (p->items[i].frame)
            sbuf_unref(p->items[i].frame);
    free(p->items);
    free(p->ids);
    free(p);
}

static void post_run(struct worker *w, struct inbox_msg *m)
{
    struct chat_post *p = (struct chat_post *)m;
    for (size_t i = 0; i < p->n; i++)
        apply_item(p->ch, w, p, &p->items[i]);
    post_free(p);
}

static void post_drop(struct inbox_msg *m)
{
    post_free((struct chat_post *)m);
}

/* ---- writer side: turning a committed batch into posts ------------------------ */

struct batch_out {
    struct chat *ch;
    struct chat_post **posts; /* [nworkers], created on demand */
};

/* Append an item to the worker's post; returns it, or NULL when out of
 * memory (the item is then lost, never confused with another). */
static struct chat_item *add_item(struct batch_out *bo, unsigned worker, uint8_t kind,
                                  uint8_t type, uint64_t conn_id, struct sbuf *frame,
                                  uint32_t off, uint32_t len, const struct store_req *r)
{
    struct chat_post *p = bo->posts[worker];
    if (!p) {
        p = calloc(1, sizeof *p);
        if (!p)
            return NULL;
        p->base.run = post_run;
        p->base.drop = post_drop;
        p->ch = bo->ch;
        bo->posts[worker] = p;
    }
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 16;
        struct chat_item *v = realloc(p->items, cap * sizeof *v);
        if (!v)
            return NULL;
        p->items = v;
        p->cap = cap;
    }
    struct chat_item *it = &p->items[p->n++];
    memset(it, 0, offsetof(struct chat_item, session));
    it->kind = kind;
    it->out_type = type;
    it->conn_id = conn_id;
    it->frame = frame ? sbuf_ref(frame) : NULL;
    it->off = off;
    it->len = len;
    it->seq = r->seq;
    memcpy(it->session, r->session_id, sizeof it->session);
    it->owner_hash = hash_str(r->owner);
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
        if (p->nids == p->capids) {
            size_t cap = p->capids ? p->capids * 2 : 16;
            uint64_t *v = realloc(p->ids, cap * sizeof *v);
            if (!v)
                return;
            p->ids = v;
            p->capids = cap;
        }
        p->ids[p->nids++] = devs[i].conn_id;
        it->ids_n++;
    }
}

/* Post a frame to every worker: each delivers it to the owner's devices it
 * holds (looked up here, once, in the registry) and, unless the kind is for
 * the owner alone, to the admins there that joined the session. */
static void add_frame_everywhere(struct batch_out *bo, uint8_t kind, uint64_t conn_id,
                                 struct sbuf *f, uint32_t off, uint32_t len, uint8_t type,
                                 const struct store_req *r)
{
    struct chat *ch = bo->ch;
    unsigned nd = 0;
    if (kind != IT_ADMINS)
        nd = registry_devices(&ch->hub->registry, r->owner, strlen(r->owner), ch->devs,
                              ch->devs_cap);
    for (unsigned w = 0; w < ch->nworkers; w++) {
        struct chat_item *it = add_item(bo, w, kind, type, conn_id, f, off, len, r);
        if (it)
            set_ids(bo, w, it, ch->devs, nd);
    }
}

/* Frame a JSON object (taking it) and tell its message type; NULL on OOM. */
static struct sbuf *frame_obj(json_t *obj, uint8_t *type, uint32_t *off, uint32_t *len)
{
    if (!obj)
        return NULL;
    *type = out_index(json_string_value(json_object_get(obj, "type")));
    struct sbuf *f = hub_frame_json(obj, off, len);
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
        add_frame_everywhere(bo, kind, conn_id, f, off, len, type, r);
        sbuf_unref(f);
    }
}

/* Queue a framed answer (taking the frame) for r's connection. */
static void add_reply_frame(struct batch_out *bo, const struct store_req *r, struct sbuf *f,
                            uint32_t off, uint32_t len, uint8_t type)
{
    if (!f)
        return;
    add_item(bo, r->worker, IT_REPLY, type, r->conn_id, f, off, len, r);
    sbuf_unref(f);
}

static void add_reply(struct batch_out *bo, const struct store_req *r, json_t *obj)
{
    uint8_t type;
    uint32_t off, len;
    struct sbuf *f = frame_obj(obj, &type, &off, &len);
    add_reply_frame(bo, r, f, off, len, type);
}

/* Queue the ack of r for its connection; extra_key/extra_val add one
 * string member (model_select echoes model_id). */
static void add_ack(struct batch_out *bo, const struct store_req *r, bool with_seq,
                    const char *extra_key, const char *extra_val)
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
    if ((r->op == STORE_APPEND || r->op == STORE_HELP) && r->duplicate) {
        jw_key(&w, "duplicate");
        jw_bool(&w, true);
    }
    if (extra_key)
        jw_kstr(&w, extra_key, extra_val ? extra_val : "");
    jw_close(&w);
    uint32_t off, len;
    struct sbuf *f = frame_jw(&w, &off, &len);
    add_reply_frame(bo, r, f, off, len, out_index("ack"));
}

static json_t *error_json(struct chat *ch, const struct store_req *r, enum chat_error code,
                          const char *message, int64_t retry_after)
{
    hub_count_error(ch->hub, code);
    json_t *o = json_pack("{s:s, s:s, s:s, s:b}", "type", "error", "code", hub_error_codes[code],
                          "message", message, "recoverable", code != ERR_INTERNAL);
    if (o && retry_after >= 0)
        json_object_set_new(o, "retry_after", json_integer(retry_after));
    if (o && r->client_id[0])
        json_object_set_new(o, "id", json_string(r->client_id));
    return o;
}

/* A refused admin_join/admin_leave still settles the intent its worker
 * recorded (see struct sess_state). */
static void settle_refused(struct batch_out *bo, const struct store_req *r)
{
    if (r->kind != CHAT_JOIN && r->kind != CHAT_LEAVE && r->kind != KIND_LEAVE_REVOKED)
        return;
    struct chat_item *it = add_item(bo, r->worker, r->kind == CHAT_JOIN ? IT_JOIN : IT_LEAVE, 0,
                                    r->conn_id, NULL, 0, 0, r);
    if (it)
        it->failed = true;
}

static void batch_one(struct batch_out *bo, struct store_req *r)
{
    struct chat *ch = bo->ch;
    if (r->status == STORE_UNAVAILABLE) {
        add_reply(bo, r,
                  error_json(ch, r, ERR_UNAVAILABLE,
                             "storage is unavailable; nothing was stored, retry later", 1000));
        settle_refused(bo, r);
        return;
    }
    if (r->status == STORE_UNKNOWN) {
        /* Never claim "nothing was stored" when that is not known: the
         * client's retry with the same id is answered from what is on
         * disk, once chatd runs again. */
        add_reply(bo, r,
                  error_json(ch, r, ERR_UNAVAILABLE,
                             "storage failed while committing: this may have been stored; "
                             "retry later with the same id",
                             5000));
        settle_refused(bo, r);
        return;
    }
    if (r->status == STORE_NOT_FOUND) {
        add_reply(bo, r, error_json(ch, r, ERR_SESSION_NOT_FOUND, "no such session", -1));
        settle_refused(bo, r);
        return;
    }
    /* Someone acting in a session they do not own is there as an admin. */
    const char *stype = r->any_session && strcmp(r->owner, r->user) != 0 ? "admin" : "user";
    switch (r->kind) {
    case CHAT_USER_MESSAGE:
    case CHAT_ADMIN_MESSAGE:
        add_ack(bo, r, true, NULL, NULL);
        if (!r->duplicate) {
            const char *type = r->kind == CHAT_ADMIN_MESSAGE ? "admin_message" : "user_message";
            uint32_t off, len;
            struct sbuf *f = event_frame(type, r->session_id, r->seq, r->client_id, r->sender_type,
                                         r->user, r->sender_name, r->content, r->content_len,
                                         r->metadata, r->ts_ms, &off, &len);
            if (f) {
                add_frame_everywhere(bo, IT_EVENT, r->conn_id, f, off, len, out_index(type), r);
                sbuf_unref(f);
            }
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
        json_t *o = json_pack("{s:s, s:s, s:I}", "type", "read", "session_id", r->session_id, "seq",
                              (json_int_t)strtoll(r->arg ? r->arg : "0", NULL, 10));
        add_everywhere(bo, IT_RELAY_OWNER, r->conn_id, o, r);
        break;
    }
    case CHAT_HELP: {
        add_ack(bo, r, false, NULL, NULL);
        if (r->duplicate)
            break; /* already waiting for a person: the admins know */
        json_t *o = json_pack("{s:s, s:s, s:o}", "type", "help_request", "session_id",
                              r->session_id, "sender", sender_json(stype, r->user, r->sender_name));
        add_everywhere(bo, IT_ADMINS, 0, o, r);
        break;
    }
    case CHAT_MODEL: {
        add_ack(bo, r, false, "model_id", r->arg);
        break;
    }
    case CHAT_JOIN:
    case CHAT_LEAVE:
    case KIND_LEAVE_REVOKED: {
        bool join = r->kind == CHAT_JOIN;
        /* The subscription changes on the admin's own worker first, in line
         * with the events around it. */
        add_item(bo, r->worker, join ? IT_JOIN : IT_LEAVE, 0, r->conn_id, NULL, 0, 0, r);
        json_t *o =
            json_pack("{s:s, s:s, s:o}", "type", join ? "admin_join" : "admin_leave", "session_id",
                      r->session_id, "sender", sender_json("admin", r->user, r->sender_name));
        add_everywhere(bo, IT_RELAY, r->conn_id, o, r);
        if (r->kind != KIND_LEAVE_REVOKED)
            add_ack(bo, r, false, NULL, NULL);
        break;
    }
    default:
        break;
    }
}

void chat_on_batch(void *arg, struct store_req **reqs, size_t n)
{
    struct chat *ch = arg;
    struct chat_post *posts[ch->nworkers];
    memset(posts, 0, sizeof posts);
    struct batch_out bo = {.ch = ch, .posts = posts};
    for (size_t i = 0; i < n; i++) {
        batch_one(&bo, reqs[i]);
        store_req_free(reqs[i]);
    }
    for (unsigned w = 0; w < ch->nworkers; w++)
        if (posts[w])
            worker_post(&ch->hub->srv->workers[w], &posts[w]->base);
}

/* ---- worker side: client messages ------------------------------------------- */

static struct store_req *new_req(struct client *cl, enum store_op op, enum chat_type kind,
                                 const char *sid, const char *id)
{
    struct store_req *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->op = op;
    r->kind = kind;
    r->worker = cl->conn->w->index;
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
static bool submit(struct chat *ch, struct client *cl, struct store_req *r, const char *id)
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
static bool get_session(struct chat *ch, struct client *cl, json_t *msg, bool required,
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
    if (!valid_session_id(json_string_value(v))) {
        /* Not even the shape of an id: it cannot exist. */
        client_send_error(cl, ERR_SESSION_NOT_FOUND, "no such session", -1, id);
        return false;
    }
    *out = json_string_value(v);
    return true;
}

static bool get_content(struct chat *ch, struct client *cl, json_t *msg, const char *id,
                        const char **out, size_t *len)
{
    json_t *v = json_object_get(msg, "content");
    if (!json_is_string(v)) {
        client_send_error(cl, ERR_INVALID_FIELD, "'content' must be a string", -1, id);
        return false;
    }
    *len = json_string_length(v);
    *out = json_string_value(v);
    if (*len == 0) {
        client_send_error(cl, ERR_INVALID_FIELD, "'content' must not be empty", -1, id);
        return false;
    }
    if (*len > ch->hub->cfg->max_content_bytes) {
        char m[96];
        snprintf(m, sizeof m, "'content' is larger than %llu bytes",
                 (unsigned long long)ch->hub->cfg->max_content_bytes);
        client_send_error(cl, ERR_CONTENT_TOO_LARGE, m, -1, id);
        return false;
    }
    return true;
}

static bool rate_ok(struct chat *ch, struct client *cl, const char *id)
{
    int64_t wait = registry_take_token(&ch->hub->registry, cl->sub, cl->sub_len,
                                       ch->hub->cfg->rate_limit, clock_mono_ms());
    if (wait == 0)
        return true;
    client_send_error(cl, ERR_RATE_LIMITED, "too many messages; slow down", wait, id);
    return false;
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
    if (!get_session(ch, cl, msg, admin, id, &sid) || !get_content(ch, cl, msg, id, &content, &len))
        return;
    if (admin) {
        if (!admin_in(state_get(cl, sid, false))) {
            client_send_error(cl, ERR_FORBIDDEN, "join the session (admin_join) first", -1, id);
            return;
        }
    }
    json_t *meta = json_object_get(msg, "metadata");
    char *meta_text = NULL;
    if (meta && !json_is_null(meta)) {
        const char *k;
        json_t *v;
        bool ok = json_is_object(meta);
        if (ok)
            json_object_foreach(meta, k, v) if (!json_is_string(v)) ok = false;
        if (ok)
            meta_text = json_dumps(meta, JSON_COMPACT);
        if (!ok || !meta_text || strlen(meta_text) > METADATA_MAX) {
            free(meta_text);
            client_send_error(cl, ERR_INVALID_FIELD,
                              "'metadata' must be an object of string values, at most 16 KiB", -1,
                              id);
            return;
        }
    }
    if (!rate_ok(ch, cl, id)) {
        free(meta_text);
        return;
    }
    struct store_req *r =
        new_req(cl, STORE_APPEND, admin ? CHAT_ADMIN_MESSAGE : CHAT_USER_MESSAGE, sid, id);
    if (r) {
        r->any_session = admin;
        snprintf(r->sender_type, sizeof r->sender_type, "%s", admin ? "admin" : "user");
        r->content = malloc(len + 1);
        if (r->content) {
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
    free(meta_text);
    submit(ch, cl, r, id);
}

/* ---- resume ------------------------------------------------------------------- */

#define RESUME_PAGE 256             /* events read from storage at a time */
#define RESUME_PAGE_BYTES (1 << 20) /* ... or about this much content */
#define RESUME_RUNNING 4            /* replays running at once on one connection */
#define RESUME_QUEUED 64            /* ... and running or waiting for a slot */

/* A replay in progress. It reads a page on the thread pool, then sends it on
 * the worker while the connection's send queue stays under half its limit.
 * When the queue is fuller it parks until the queue drains (on_drain). A
 * parked replay keeps only its cursor: the rest of the page is freed and
 * read again when it goes on, so a client that does not read holds at most
 * its send queue, not pages of history.
 *
 * Bounds: one replay per connection and session; RESUME_RUNNING run at once
 * on one connection and the next ones wait for a slot (holding only their
 * cursor), RESUME_QUEUED in all; others are refused with rate_limited.
 * Owned by the client's worker; listed on the client's `jobs` until it
 * finishes or the client closes (a job on the thread pool then finds the
 * connection closed). */
struct resume_job {
    uv_work_t req;
    struct chat *ch;
    struct conn *conn;       /* held (conn_hold) for the job's whole life */
    struct resume_job *next; /* on the client's jobs list */
    char session[STORE_ID_LEN + 1];
    char user[STORE_MAX_USER + 1];
    char id[65];
    bool admin;
    bool parked;   /* waiting for the send queue to drain */
    bool waiting;  /* waiting for a running slot (never read yet) */
    bool listed;   /* on the client's jobs list */
    int64_t after; /* cursor: the next read starts above this seq */
    /* the current page */
    int rc;
    bool more; /* the page was cut: more may follow */
    struct store_session sess;
    struct store_event *ev;
    int n, next_ev;
};

static void resume_work(uv_work_t *req)
{
    struct resume_job *j = req->data;
    assert(worker_current() == NULL); /* storage reads never run on a worker loop */
    j->rc = store_get_session(j->ch->store, j->session, &j->sess);
    if (j->rc == 0 && !j->admin && strcmp(j->sess.owner, j->user) != 0)
        j->rc = -ENOENT;
    j->more = false;
    if (j->rc == 0) {
        j->n = store_read_events(j->ch->store, j->session, j->after, RESUME_PAGE,
                                 RESUME_PAGE_BYTES, &j->ev);
        if (j->n < 0)
            j->rc = j->n;
        size_t bytes = 0;
        for (int i = 0; i < j->n; i++)
            bytes += j->ev[i].content_len;
        j->more = j->n == RESUME_PAGE || bytes >= RESUME_PAGE_BYTES;
    }
    j->next_ev = 0;
}

static void resume_done(uv_work_t *req, int status);

static void drop_page(struct resume_job *j)
{
    store_events_free(j->ev, j->n > 0 ? j->n : 0);
    j->ev = NULL;
    j->n = 0;
    j->next_ev = 0;
}

static bool resume_read(struct resume_job *j);

static void resume_finish(struct resume_job *j)
{
    struct client *cl = j->conn->data;
    struct client_state *cs = cl ? cl->router_state : NULL;
    bool freed_slot = false;
    if (j->listed && cs) {
        struct resume_job **p = &cs->jobs;
        while (*p != j)
            p = &(*p)->next;
        *p = j->next;
        assert(cs->njobs > 0);
        cs->njobs--;
        if (!j->waiting) {
            assert(cs->nrunning > 0);
            cs->nrunning--;
            freed_slot = true;
        }
    }
    drop_page(j);
    conn_release(j->conn);
    free(j);
    if (!freed_slot)
        return;
    /* A slot is free: the oldest waiting replay starts (the list is newest
     * first, so it is the last waiting one). */
    struct resume_job *next = NULL;
    for (struct resume_job *w = cs->jobs; w; w = w->next)
        if (w->waiting)
            next = w;
    if (!next)
        return;
    next->waiting = false;
    cs->nrunning++;
    if (!resume_read(next)) {
        client_send_error(cl, ERR_INTERNAL, "cannot schedule the read", -1,
                          next->id[0] ? next->id : NULL);
        resume_finish(next);
    }
}

/* Read the page above the cursor on the thread pool. */
static bool resume_read(struct resume_job *j)
{
    drop_page(j);
    return uv_queue_work(&j->conn->w->loop, &j->req, resume_work, resume_done) == 0;
}

/* Send what the page still holds; read the next page, park, or finish. */
static void resume_pump(struct resume_job *j)
{
    struct conn *c = j->conn;
    struct client *cl = c->state == CONN_WS && !c->close_sent ? c->data : NULL;
    if (!cl || !cl->router_state) {
        resume_finish(j);
        return;
    }
    assert(worker_current() == c->w);
    const char *id = j->id[0] ? j->id : NULL;
    if (j->admin && !cl->admin && strcmp(j->sess.owner, cl->sub) != 0) {
        /* A refresh took the admin role away while this replay ran. */
        client_send_error(cl, ERR_SESSION_NOT_FOUND, "no such session", -1, id);
        resume_finish(j);
        return;
    }
    struct sess_state *st = state_get(cl, j->session, true);
    uint64_t high_water = c->w->srv->cfg->send_queue_bytes / 2;
    while (st && j->next_ev < j->n) {
        if (c->out.bytes > high_water) {
            /* Park with the cursor only: what is left of the page is read
             * again when the queue has drained. */
            j->more = true;
            drop_page(j);
            j->parked = true;
            return;
        }
        struct store_event *e = &j->ev[j->next_ev++];
        j->after = e->seq;
        if (sent_has(st, e->seq))
            continue;
        sent_add(st, e->seq);
        uint32_t off, len;
        struct sbuf *f = event_frame(e->type, j->session, e->seq, e->client_id, e->sender_type,
                                     e->sender_id, e->sender_name, e->content, e->content_len,
                                     e->metadata, e->ts_ms, &off, &len);
        if (f) {
            conn_send_shared(c, f, off, len);
            sbuf_unref(f);
        }
    }
    if (j->more) {
        if (resume_read(j))
            return;
        client_send_error(cl, ERR_INTERNAL, "cannot schedule the read", -1, id);
        resume_finish(j);
        return;
    }
    int64_t last_seq = j->sess.last_seq;
    if (st && sent_max(st) > last_seq)
        last_seq = sent_max(st);
    json_t *o = json_pack("{s:s, s:s, s:I}", "type", "resumed", "session_id", j->session,
                          "last_seq", (json_int_t)last_seq);
    if (o && id)
        json_object_set_new(o, "id", json_string(id));
    if (o) {
        client_send_json(cl, o);
        json_decref(o);
    }
    resume_finish(j);
}

static void resume_done(uv_work_t *req, int status)
{
    struct resume_job *j = req->data;
    struct conn *c = j->conn;
    struct client *cl = c->state == CONN_WS ? c->data : NULL;
    const char *id = j->id[0] ? j->id : NULL;
    if (!cl || status != 0) {
        resume_finish(j);
    } else if (j->rc == -ENOENT) {
        client_send_error(cl, ERR_SESSION_NOT_FOUND, "no such session", -1, id);
        resume_finish(j);
    } else if (j->rc < 0) {
        client_send_error(cl, ERR_UNAVAILABLE, "storage is unavailable; retry later", 1000, id);
        resume_finish(j);
    } else {
        resume_pump(j);
    }
}

/* The connection's send queue emptied: parked replays read on. */
static void chat_client_drained(void *router, struct client *cl)
{
    (void)router;
    struct client_state *cs = cl->router_state;
    for (struct resume_job *j = cs ? cs->jobs : NULL, *next; j; j = next) {
        next = j->next;
        if (!j->parked)
            continue;
        j->parked = false;
        if (!resume_read(j)) {
            client_send_error(cl, ERR_INTERNAL, "cannot schedule the read", -1,
                              j->id[0] ? j->id : NULL);
            resume_finish(j);
        }
    }
}

static void handle_resume(struct chat *ch, struct client *cl, json_t *msg, const char *id)
{
    const char *sid;
    if (!get_session(ch, cl, msg, true, id, &sid))
        return;
    json_t *a = json_object_get(msg, "after_seq");
    if (!json_is_integer(a) || json_integer_value(a) < 0) {
        client_send_error(cl, ERR_INVALID_FIELD, "'after_seq' must be an integer >= 0", -1, id);
        return;
    }
    struct client_state *cs = cl->router_state;
    for (struct resume_job *r = cs->jobs; r; r = r->next) {
        if (strcmp(r->session, sid) == 0) {
            client_send_error(cl, ERR_RATE_LIMITED,
                              "a resume of this session is still running on this connection; "
                              "wait for its 'resumed'",
                              1000, id);
            return;
        }
    }
    if (cs->njobs >= RESUME_QUEUED) {
        client_send_error(cl, ERR_RATE_LIMITED, "too many resumes waiting on this connection",
                          1000, id);
        return;
    }
    struct resume_job *j = calloc(1, sizeof *j);
    if (!j) {
        client_send_error(cl, ERR_INTERNAL, "out of memory", -1, id);
        return;
    }
    j->req.data = j;
    j->ch = ch;
    j->conn = cl->conn;
    snprintf(j->session, sizeof j->session, "%s", sid);
    snprintf(j->user, sizeof j->user, "%s", cl->sub);
    if (id)
        snprintf(j->id, sizeof j->id, "%s", id);
    j->admin = cl->admin;
    j->after = json_integer_value(a);
    j->waiting = cs->nrunning >= RESUME_RUNNING;
    conn_hold(cl->conn);
    if (!j->waiting &&
        uv_queue_work(&cl->conn->w->loop, &j->req, resume_work, resume_done) != 0) {
        conn_release(cl->conn);
        free(j);
        client_send_error(cl, ERR_INTERNAL, "cannot schedule the read", -1, id);
        return;
    }
    j->listed = true;
    j->next = cs->jobs;
    cs->jobs = j;
    cs->njobs++;
    if (!j->waiting)
        cs->nrunning++;
}

/* ---- router entry points -------------------------------------------------------- */

static void chat_client_opened(void *router, struct client *cl)
{
    struct chat *ch = router;
    cl->sub_hash = hash_str(cl->sub);
    struct chat_local *loc = &ch->locals[cl->conn->w->index];
    if (cl->admin)
        list_add(&loc->admins, cl);
}

static void chat_client_closed(void *router, struct client *cl)
{
    struct chat *ch = router;
    struct chat_local *loc = &ch->locals[cl->conn->w->index];
    struct client_state *cs = cl->router_state;
    if (cl->admin)
        list_del(NULL, &loc->admins, cl);
    for (unsigned i = 0; cs && i < cs->n; i++) {
        if (!cs->v[i].joined)
            continue;
        struct local_list *j = list_find(loc->joins, cs->v[i].id, false);
        if (j)
            list_del(loc->joins, j, cl);
    }
    /* Parked replays end here; one on the thread pool ends when it comes
     * back and finds the connection closed. Either way it leaves the list
     * that is freed below. */
    while (cs && cs->jobs) {
        struct resume_job *j = cs->jobs;
        cs->jobs = j->next;
        j->listed = false;
        if (j->parked || j->waiting)
            resume_finish(j);
    }
    for (unsigned i = 0; cs && i < cs->n; i++)
        free(cs->v[i].sent);
    if (cs)
        free(cs->v);
    free(cs);
    cl->router_state = NULL;
}

/* Hand r to the writer; true when it took it (false: answered already). */
static bool submit(struct chat *ch, struct client *cl, struct store_req *r, const char *id);
static struct store_req *new_req(struct client *cl, enum store_op op, enum chat_type kind,
                                 const char *sid, const char *id);

/* A refresh changed the client's admin role. Gaining it makes the client
 * one of this worker's admins (help requests reach it). Losing it ends
 * every join at once, here on the worker, so no further event of another
 * user's session reaches it; each join also gets its admin_leave through
 * the writer, like one the client sent, so the others see it leave; and
 * the client is told which sessions it left. */
static void chat_client_roles_changed(void *router, struct client *cl, bool was_admin)
{
    struct chat *ch = router;
    struct chat_local *loc = &ch->locals[cl->conn->w->index];
    assert(worker_current() == cl->conn->w);
    if (!was_admin) {
        list_add(&loc->admins, cl);
        return;
    }
    list_del(NULL, &loc->admins, cl);
    struct client_state *cs = cl->router_state;
    json_t *left = json_array();
    for (unsigned i = 0; cs && i < cs->n; i++) {
        struct sess_state *st = &cs->v[i];
        bool in = st->joined || (st->intent_pending && st->intent_joined);
        if (st->joined) {
            struct local_list *l = list_find(loc->joins, st->id, false);
            if (l)
                list_del(loc->joins, l, cl);
            st->joined = false;
        }
        if (!in)
            continue;
        json_array_append_new(left, json_string(st->id));
        struct store_req *r = new_req(cl, STORE_CHECK, CHAT_LEAVE, st->id, NULL);
        if (r) {
            r->kind = KIND_LEAVE_REVOKED;
            r->any_session = true;
        }
        if (submit(ch, cl, r, NULL)) {
            st->intent_joined = false;
            st->intent_pending++;
        }
    }
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
    if (!cstate(cl)) {
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
        handle_resume(ch, cl, msg, id);
        return;
    case CHAT_TYPING: {
        json_t *t = json_object_get(msg, "typing");
        if (!get_session(ch, cl, msg, true, id, &sid))
            return;
        if (!json_is_boolean(t)) {
            client_send_error(cl, ERR_INVALID_FIELD, "'typing' must be true or false", -1, id);
            return;
        }
        struct store_req *r = new_req(cl, STORE_CHECK, k, sid, id);
        struct sess_state *st = state_get(cl, sid, false);
        if (r) {
            r->any_session = cl->admin && admin_in(st);
            r->arg = strdup(json_is_true(t) ? "true" : "false");
        }
        submit(ch, cl, r, id);
        return;
    }
    case CHAT_READ: {
        json_t *s = json_object_get(msg, "seq");
        if (!get_session(ch, cl, msg, true, id, &sid))
            return;
        if (!json_is_integer(s) || json_integer_value(s) < 0) {
            client_send_error(cl, ERR_INVALID_FIELD, "'seq' must be an integer >= 0", -1, id);
            return;
        }
        struct store_req *r = new_req(cl, STORE_CHECK, k, sid, id);
        if (r) {
            char buf[32];
            snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(s));
            r->arg = strdup(buf);
        }
        submit(ch, cl, r, id);
        return;
    }
    case CHAT_HELP:
        if (get_session(ch, cl, msg, true, id, &sid))
            submit(ch, cl, new_req(cl, STORE_HELP, k, sid, id), id);
        return;
    case CHAT_MODEL: {
        json_t *m = json_object_get(msg, "model_id");
        if (!get_session(ch, cl, msg, true, id, &sid))
            return;
        if (!json_is_string(m) || !hub_model_known(ch->hub, json_string_value(m))) {
            client_send_error(cl, ERR_INVALID_FIELD, "'model_id' must be one of the offered models",
                              -1, id);
            return;
        }
        struct store_req *r = new_req(cl, STORE_MODEL, k, sid, id);
        if (r)
            r->arg = strdup(json_string_value(m));
        submit(ch, cl, r, id);
        return;
    }
    case CHAT_JOIN:
    case CHAT_LEAVE: {
        if (!cl->admin) {
            client_send_error(cl, ERR_FORBIDDEN, "admin role required", -1, id);
            return;
        }
        if (!get_session(ch, cl, msg, true, id, &sid))
            return;
        /* Recorded before the writer sees it, so that the next message
         * is judged by it; settled when the writer's answer comes back. */
        struct sess_state *st = state_get(cl, sid, true);
        struct store_req *r = new_req(cl, STORE_CHECK, k, sid, id);
        if (r)
            r->any_session = true;
        if (submit(ch, cl, r, id) && st) {
            st->intent_joined = k == CHAT_JOIN;
            st->intent_pending++;
        }
        return;
    }
    default:
        return;
    }
}

const struct router_ops chat_router_ops = {
    .client_opened = chat_client_opened,
    .client_drained = chat_client_drained,
    .handle = chat_handle,
    .client_closed = chat_client_closed,
    .client_roles_changed = chat_client_roles_changed,
};

/* ---- setup -------------------------------------------------------------------------- */

int chat_init(struct chat **out, struct hub *hub, unsigned nworkers, char *err, size_t errlen)
{
    struct chat *ch = calloc(1, sizeof *ch);
    if (!ch || !(ch->locals = calloc(nworkers, sizeof *ch->locals))) {
        free(ch);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    ch->hub = hub;
    ch->nworkers = nworkers;
    ch->devs_cap = hub->cfg->max_devices + 1;
    ch->devs = calloc(ch->devs_cap, sizeof *ch->devs);
    if (!ch->devs) {
        free(ch->locals);
        free(ch);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    *out = ch;
    return 0;
}

void chat_set_store(struct chat *ch, struct store *st)
{
    ch->store = st;
}

static void free_table(struct local_list **tab)
{
    for (int i = 0; i < LOCAL_BUCKETS; i++) {
        struct local_list *l = tab[i];
        while (l) {
            struct local_list *next = l->next;
            free(l->key);
            free(l->v);
            free(l);
            l = next;
        }
    }
}

void chat_free(struct chat *ch)
{
    if (!ch)
        return;
    for (unsigned w = 0; w < ch->nworkers; w++) {
        free_table(ch->locals[w].joins);
        free(ch->locals[w].admins.v);
    }
    free(ch->locals);
    free(ch->devs);
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

/* ---- metrics ------------------------------------------------------------------------ */

void chat_write_metrics(struct chat *ch, struct text *t)
{
    text_printf(t,
            "# HELP chatd_messages_in_total Chat messages received, by type.\n"
            "# TYPE chatd_messages_in_total counter\n");
    for (int i = 0; i < CHAT_TYPE_COUNT; i++)
        text_printf(t, "chatd_messages_in_total{type=\"%s\"} %llu\n", hub_chat_types[i],
                (unsigned long long)atomic_load(&ch->in_by_kind[i]));
    text_printf(t,
            "# HELP chatd_messages_out_total Chat messages sent to connections, by type.\n"
            "# TYPE chatd_messages_out_total counter\n");
    for (size_t i = 0; i < OUT_COUNT; i++) {
        uint64_t sum = 0;
        for (unsigned w = 0; w < ch->nworkers; w++)
            sum += atomic_load(&ch->locals[w].out[i]);
        text_printf(t, "chatd_messages_out_total{type=\"%s\"} %llu\n", out_names[i],
                (unsigned long long)sum);
    }
    text_printf(t,
            "# HELP chatd_errors_total Error replies sent, by code.\n"
            "# TYPE chatd_errors_total counter\n");
    for (unsigned i = 0; i < ERR_COUNT; i++)
        text_printf(t, "chatd_errors_total{code=\"%s\"} %llu\n", hub_error_codes[i],
                (unsigned long long)atomic_load(&ch->hub->errors[i]));
    if (!ch->store)
        return;
    struct store_stats ss;
    store_get_stats(ch->store, &ss);
    text_printf(t,
            "# HELP chatd_store_commit_seconds Time to commit one batch.\n"
            "# TYPE chatd_store_commit_seconds histogram\n");
    uint64_t cum = 0;
    for (int i = 0; i < 12; i++) {
        cum += ss.commit_us_bucket[i];
        text_printf(t, "chatd_store_commit_seconds_bucket{le=\"%g\"} %llu\n",
                store_commit_bounds_ms[i] / 1000.0, (unsigned long long)cum);
    }
    text_printf(t,
            "chatd_store_commit_seconds_bucket{le=\"+Inf\"} %llu\n"
            "chatd_store_commit_seconds_sum %.6f\n"
            "chatd_store_commit_seconds_count %llu\n",
            (unsigned long long)ss.commits, ss.commit_us_sum / 1e6, (unsigned long long)ss.commits);
    text_printf(t,
            "# HELP chatd_store_batch_size Requests per committed batch.\n"
            "# TYPE chatd_store_batch_size histogram\n");
    cum = 0;
    for (int i = 0; i < 8; i++) {
        cum += ss.batch_bucket[i];
        text_printf(t, "chatd_store_batch_size_bucket{le=\"%u\"} %llu\n",
                store_batch_bounds[i], (unsigned long long)cum);
    }
    text_printf(t,
            "chatd_store_batch_size_bucket{le=\"+Inf\"} %llu\n"
            "chatd_store_batch_size_sum %llu\n"
            "chatd_store_batch_size_count %llu\n"
            "# HELP chatd_store_commit_failures_total Batches rolled back by a storage error.\n"
            "# TYPE chatd_store_commit_failures_total counter\n"
            "chatd_store_commit_failures_total %llu\n",
            (unsigned long long)ss.commits, (unsigned long long)ss.batched_requests,
            (unsigned long long)ss.commits, (unsigned long long)ss.commit_failures);
}
