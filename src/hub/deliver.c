/*
 * DESIGN: the worker side of chat. The writer thread posts one message per
 * worker per batch (struct chat_post, fanout.c); each worker walks it in
 * order and delivers every item to its own connections: the devices of the
 * session's owner listed in the item and the admins here that joined the
 * session. Order: only the writer produces session events and inboxes are
 * FIFO, so every connection sees a session's events in rising seq.
 *
 * Resume without gap or duplicate: each connection keeps, per session, the
 * set of seqs it has been sent (seqset.h). A live event is sent only if its
 * seq is not in the set, nor at or below the highest after_seq the client
 * resumed from (it holds those); a replay (resume.c) only if not in the
 * set; either adds it.
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hub/chat_int.h"
#include "net/conn.h"
#include "util/hash.h"
#include "util/vec.h"

struct local_list *chat__list_find(struct local_list **tab, const char *key, bool create)
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

int chat__list_add(struct local_list *l, struct client *cl)
{
    if (vec_grow(&l->v, &l->cap, l->n, 1, sizeof *l->v) != 0)
        return -ENOMEM;
    l->v[l->n++] = cl;
    return 0;
}

void chat__list_del(struct local_list **tab, struct local_list *l, struct client *cl)
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

void chat__free_table(struct local_list **tab)
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

/* The client's router state, made on first use (idle clients have none),
 * at a cache line's start (struct client_state). */
struct client_state *chat__cstate(struct client *cl)
{
    if (!cl->router_state) {
        /* aligned_alloc takes a multiple of the alignment. */
        size_t size = (sizeof(struct client_state) + CHAT_LINE - 1) / CHAT_LINE * CHAT_LINE;
        struct client_state *cs = aligned_alloc(CHAT_LINE, size);
        if (cs)
            memset(cs, 0, sizeof *cs);
        cl->router_state = cs;
    }
    return cl->router_state;
}

struct sess_state *chat__state_get(struct client *cl, const char *sid, bool create)
{
    struct client_state *cs = create ? chat__cstate(cl) : cl->router_state;
    if (!cs)
        return NULL;
    for (size_t i = 0; i < cs->n; i++) {
        struct sess_state *st = chat__state_at(cs, i);
        if (strcmp(st->id, sid) == 0)
            return st;
    }
    if (!create)
        return NULL;
    if (cs->n > 0 && vec_grow(&cs->more, &cs->cap, cs->n - 1, 1, sizeof *cs->more) != 0)
        return NULL;
    struct sess_state *st = chat__state_at(cs, cs->n++);
    memset(st, 0, sizeof *st);
    snprintf(st->id, sizeof st->id, "%s", sid);
    return st;
}

/* Is the admin in the session, as far as its next message is concerned? */
void chat__unjoin(struct chat_local *loc, struct client *cl, struct sess_state *st)
{
    if (!st->joined)
        return;
    struct local_list *l = chat__list_find(loc->joins, st->id, false);
    if (l)
        chat__list_del(loc->joins, l, cl);
    st->joined = false;
}

bool chat__admin_in(const struct sess_state *st)
{
    return st && (st->intent_pending ? st->intent_joined : st->joined);
}

/* Per delivery: the worker's own counter, written by no other thread, so a
 * plain increment (stat_inc) rather than a locked add. */
void chat__count_out(struct client *cl, uint8_t type)
{
    struct chat *ch = client_hub(cl)->router;
    struct worker *w = conn_worker(cl->conn);
    assert(worker_current() == w); /* the counter's only writer */
    stat_inc(&ch->locals[w->index].out[type]);
}

/* References to an item's frame taken for all of its receivers on this
 * worker with one atomic add (and the unused ones given back with another),
 * rather than an atomic add per receiver. With a thousand receivers those
 * adds were ~4% of a fan-out's CPU: a locked instruction also waits for
 * the stores before it, here the receiver's queue, often not in cache. */
struct lease {
    struct sbuf *frame;
    uint32_t left; /* references held for receivers still to come */
};

static void lease_take(struct lease *ls, struct sbuf *frame, uint32_t receivers)
{
    ls->frame = frame;
    ls->left = frame ? receivers : 0;
    if (ls->left)
        sbuf_ref_n(frame, ls->left);
}

static void lease_end(struct lease *ls)
{
    if (ls->left)
        sbuf_unref_n(ls->frame, ls->left); /* never the last: the post holds one */
    ls->left = 0;
}

/* it's frame to one client, with a reference from ls when it has one. */
static void send_frame(struct client *cl, const struct chat_item *it, struct lease *ls)
{
    int rc;
    if (ls && ls->left) {
        assert(ls->frame == it->frame);
        ls->left--;
        rc = conn_send_owned(cl->conn, it->frame, it->off, it->len);
    } else {
        rc = conn_send_shared(cl->conn, it->frame, it->off, it->len);
    }
    if (rc == 0)
        chat__count_out(cl, it->out_type);
}

/* Send a stored event to one client unless it already has it. */
static void send_event(struct client *cl, const struct chat_item *it, struct lease *ls)
{
    struct sess_state *st = chat__state_get(cl, it->session, true);
    if (st && seqset_has(&st->sent, it->seq))
        return; /* already sent by a replay */
    if (st && it->seq <= st->held)
        return; /* the client resumed past it: it has it (resume.c) */
    if (!st || seqset_add(&st->sent, it->seq) != 0) {
        /* No memory to track it: skipped it would be a gap, sent untracked
         * a replay could send it twice. The device comes back and resumes. */
        conn_ws_close(cl->conn, WS_CLOSE_INTERNAL, "out of memory: reconnect and resume");
        return;
    }
    send_frame(cl, it, ls);
}

/* A piece of a streaming answer to one client: as much of it as the
 * client lacks (assistant/stream.h asst_plan); a client that lacks what
 * came before it first catches up from the stream itself. */
static void send_delta(struct chat *ch, struct client *cl, const struct chat_item *it,
                       struct lease *ls)
{
    struct sess_state *st = chat__state_get(cl, it->session, true);
    if (!st) {
        conn_ws_close(cl->conn, WS_CLOSE_INTERNAL, "out of memory: reconnect and resume");
        return;
    }
    if (strcmp(st->stream, it->stream) != 0) {
        snprintf(st->stream, sizeof st->stream, "%s", it->stream);
        st->stream_sent = -1;
    }
    struct asst_plan plan = asst_plan(st->stream_sent, it->stream_off, it->stream_len);
    if (plan.action == ASST_SKIP)
        return;
    if (plan.action == ASST_SEND && plan.skip == 0) {
        send_frame(cl, it, ls);
        st->stream_sent = (int64_t)(it->stream_off + it->stream_len);
        return;
    }
    if (!chat__stream_catch_up(ch, cl, st, it->stream, false) && it->remote)
        chat__stream_catch_up_remote(ch, cl, st, it);
}

enum send_mode { SEND_RELAY, SEND_STORED, SEND_DELTA };

static void send_one(struct chat *ch, struct client *cl, const struct chat_item *it,
                     enum send_mode mode, struct lease *ls)
{
    if (mode == SEND_STORED)
        send_event(cl, it, ls);
    else if (mode == SEND_DELTA)
        send_delta(ch, cl, it, ls);
    else
        send_frame(cl, it, ls);
}

static void for_participants(struct chat *ch, struct worker *w, struct chat_local *loc,
                             const struct chat_post *p, const struct chat_item *it,
                             enum send_mode mode, bool owner_only)
{
    bool stored = mode != SEND_RELAY;
    /* A post for no owner device has no ids array: NULL + 0 is undefined
     * in C, so only index into one that exists (ids_n is 0 then). */
    const uint64_t *ids = p->ids ? p->ids + it->ids_off : NULL;
    struct local_list *admins = owner_only ? NULL : chat__list_find(loc->joins, it->session, false);
    struct lease ls;
    lease_take(&ls, it->frame, it->ids_n + (admins ? admins->n : 0));
    for (uint32_t i = 0; i < it->ids_n; i++) {
        struct conn *c = idmap_get(&w->by_id, ids[i]);
        if (!c || !c->data)
            continue; /* closed meanwhile */
        if (it->conn_id && ids[i] == it->conn_id && !stored)
            continue;
        send_one(ch, c->data, it, mode, &ls);
    }
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
        send_one(ch, cl, it, mode, &ls);
    }
    lease_end(&ls);
}

static void apply_item(struct chat *ch, struct worker *w, const struct chat_post *p,
                       const struct chat_item *it)
{
    struct chat_local *loc = &ch->locals[w->index];
    struct conn *c;
    switch (it->kind) {
    case IT_REPLY:
        if ((c = idmap_get(&w->by_id, it->conn_id)) && c->data)
            send_frame(c->data, it, NULL);
        break;
    case IT_EVENT:
        for_participants(ch, w, loc, p, it, SEND_STORED, false);
        break;
    case IT_DELTA:
        for_participants(ch, w, loc, p, it, SEND_DELTA, false);
        break;
    case IT_RELAY:
        for_participants(ch, w, loc, p, it, SEND_RELAY, false);
        break;
    case IT_RELAY_OWNER:
        for_participants(ch, w, loc, p, it, SEND_RELAY, true);
        break;
    case IT_ADMINS: {
        /* A stored event (seq): each admin gets it once, whether it also
         * joined the session or owns it. */
        struct lease ls;
        lease_take(&ls, it->frame, (uint32_t)loc->admins.n);
        for (unsigned i = 0; i < loc->admins.n; i++)
            it->seq ? send_event(loc->admins.v[i], it, &ls) : send_frame(loc->admins.v[i], it, &ls);
        lease_end(&ls);
        break;
    }
    case IT_JOIN:
    case IT_LEAVE: {
        if (!(c = idmap_get(&w->by_id, it->conn_id)) || !c->data)
            break;
        struct client *cl = c->data;
        struct sess_state *st = chat__state_get(cl, it->session, it->kind == IT_JOIN && !it->failed);
        if (!st)
            break;
        if (st->intent_pending > 0)
            st->intent_pending--;
        if (it->failed)
            break;
        if (it->kind == IT_JOIN && !st->joined && cl->admin) {
            struct local_list *l = chat__list_find(loc->joins, it->session, true);
            if (l && chat__list_add(l, cl) == 0)
                st->joined = true;
        } else if (it->kind == IT_LEAVE) {
            chat__unjoin(loc, cl, st);
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

void chat__post_run(struct worker *w, struct inbox_msg *m)
{
    assert(worker_current() == w);
    struct chat_post *p = (struct chat_post *)m;
    for (size_t i = 0; i < p->n; i++)
        apply_item(p->ch, w, p, &p->items[i]);
    post_free(p);
}

void chat__post_drop(struct inbox_msg *m)
{
    post_free((struct chat_post *)m);
}
