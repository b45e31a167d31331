/*
 * DESIGN: resume reads history on the libuv thread pool, never on a worker
 * loop, and sends it on the worker at the pace the connection reads (see
 * struct resume_job). What makes it exact is the per-session seqset: a
 * replayed event is sent only if the connection has not had it live.
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#include "hub/chat_int.h"
#include "hub/wire.h"
#include "net/conn.h"
#include "util/log.h"

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
    int64_t from;  /* the client's after_seq: it holds every event up to it */
    bool claimed;  /* the session's `held` covers from */
    /* the current page */
    int rc;
    bool more; /* the page was cut: more may follow */
    struct store_session sess;
    struct store_event *ev;
    int n, next_ev;
    /* read with the last page: an answer another node is streaming now */
    char rstream[BUS_STREAM_MAX + 1];
    char *rtext;
    size_t rlen;
};

static void resume_work(uv_work_t *req)
{
    struct resume_job *j = req->data;
    assert(worker_current() == NULL); /* storage reads never run on a worker loop */
    j->rc = store_get_session(j->ch->store, j->session, &j->sess);
    if (j->rc == 0 && !j->admin && strcmp(j->sess.owner, j->user) != 0)
        j->rc = -ENOENT;
    if (j->rc == 0 && !j->claimed) {
        /* The first read (the first page's pump claims): the live events
         * above it that this node has not begun to order wait for the
         * seqs between (bus.h stored), else one published late by another
         * node would reach the connection after them. */
        bus_stored(j->ch->bus, j->session, j->sess.owner, j->sess.last_seq);
    }
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
    if (j->rc == 0 && !j->more && bus_keeps_streams(j->ch->bus) && !j->rtext) {
        struct asst_stream *s = j->ch->asst ? assistant_stream(j->ch->asst, j->session) : NULL;
        if (s)
            asst_stream_unref(s); /* it streams here: the worker catches up from it */
        else if (bus_stream_live(j->ch->bus, j->session, j->rstream, &j->rtext, &j->rlen) != 0)
            j->rtext = NULL;
    }
}

/* Is answer `stream` among the events of the page (stored: it is sent)? */
static bool page_has_answer(const struct resume_job *j, const char *stream)
{
    for (int i = 0; i < j->n; i++)
        if (j->ev[i].client_id && strcmp(j->ev[i].type, "ai_response") == 0 &&
            strcmp(j->ev[i].client_id, stream) == 0)
            return true;
    return false;
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
static int start_job(struct chat *ch, struct client *cl, const char *sid, int64_t after,
                     const char *id);

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
    free(j->rtext);
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
    return uv_queue_work(&conn_worker(j->conn)->loop, &j->req, resume_work, resume_done) == 0;
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
    assert(worker_current() == conn_worker(c));
    const char *id = j->id[0] ? j->id : NULL;
    if (j->admin && !cl->admin && strcmp(j->sess.owner, cl->sub) != 0) {
        /* A refresh took the admin role away while this replay ran. */
        client_send_error(cl, ERR_SESSION_NOT_FOUND, "no such session", -1, id);
        resume_finish(j);
        return;
    }
    struct sess_state *st = chat__state_get(cl, j->session, true);
    if (!st) {
        /* Without it, `resumed` would claim events that were not sent. */
        client_send_error(cl, ERR_INTERNAL, "out of memory", -1, id);
        resume_finish(j);
        return;
    }
    if (!j->claimed) {
        /* The client holds every event up to its after_seq: no live event
         * up to it goes to this connection any more (deliver.c). One can
         * still come: published late, or filled from storage by a node
         * that restarted when a retry's hint names it; it would arrive
         * after later seqs, out of order, and twice for the device. A
         * later resume from lower down still replays them (the seqset is
         * untouched). Capped at the session's last seq, read with the
         * first page. */
        j->claimed = true;
        int64_t upto = j->from < j->sess.last_seq ? j->from : j->sess.last_seq;
        if (upto > st->held)
            st->held = upto;
    }
    uint64_t high_water = conn_worker(c)->srv->cfg->send_queue_bytes / 2;
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
        if (strcmp(e->type, "ai_response") == 0 && e->client_id &&
            (st->stream[0] == '\0' || strcmp(st->stream, e->client_id) == 0)) {
            /* A stored answer is whole. A piece of it published before it
             * was stored may still wait in this worker's inbox (a replay
             * read on the thread pool can overtake it): marked as had in
             * full, that piece is skipped instead of following the answer
             * it belongs to. */
            snprintf(st->stream, sizeof st->stream, "%s", e->client_id);
            st->stream_sent = INT64_MAX;
        }
        if (seqset_has(&st->sent, e->seq))
            continue;
        uint32_t off, len;
        struct sbuf *f = wire_event_frame(e->type, j->session, e->seq, e->client_id, e->sender_type,
                                     e->sender_id, e->sender_name, e->content, e->content_len,
                                     e->metadata, e->ts_ms, &off, &len);
        if (!f || seqset_add(&st->sent, e->seq) != 0) {
            /* Out of memory part way: a gap or a later duplicate otherwise.
             * The device comes back and resumes again. */
            if (f)
                sbuf_unref(f);
            conn_ws_close(c, WS_CLOSE_INTERNAL, "out of memory: reconnect and resume");
            resume_finish(j);
            return;
        }
        conn_send_shared(c, f, off, len);
        sbuf_unref(f);
    }
    if (j->more) {
        if (resume_read(j))
            return;
        client_send_error(cl, ERR_INTERNAL, "cannot schedule the read", -1, id);
        resume_finish(j);
        return;
    }
    /* An answer streaming now: what the connection lacks of it, before
     * `resumed` (a reloaded page shows it at once). */
    if (st && !chat__stream_catch_up(client_hub(cl)->router, cl, st, NULL, true) && j->rtext &&
        !page_has_answer(j, j->rstream))
        chat__stream_send_text(cl, st, j->rstream, j->rtext, j->rlen); /* another node's */
    int64_t last_seq = j->sess.last_seq;
    if (st && seqset_max(&st->sent) > last_seq)
        last_seq = seqset_max(&st->sent);
    json_t *o = json_pack("{s:s, s:s, s:I}", "type", "resumed", "session_id", j->session,
                          "last_seq", (json_int_t)last_seq);
    if (!o || (id && json_object_set_new(o, "id", json_string(id)) != 0))
        client_send_error(cl, ERR_INTERNAL, "out of memory", -1, id); /* never unanswered */
    else
        client_send_json(cl, o); /* closes the connection itself when it fails */
    json_decref(o);
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
void chat__client_drained(void *router, struct client *cl)
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

void chat__handle_resume(struct chat *ch, struct client *cl, json_t *msg, const char *id)
{
    const char *sid;
    if (!chat__get_session(ch, cl, msg, true, id, &sid))
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
    int rc = start_job(ch, cl, sid, json_integer_value(a), id);
    if (rc != 0)
        client_send_error(cl, ERR_INTERNAL,
                          rc == -ENOMEM ? "out of memory" : "cannot schedule the read", -1, id);
}

static int start_job(struct chat *ch, struct client *cl, const char *sid, int64_t after,
                     const char *id)
{
    struct client_state *cs = cl->router_state;
    struct resume_job *j = calloc(1, sizeof *j);
    if (!j)
        return -ENOMEM;
    j->req.data = j;
    j->ch = ch;
    j->conn = cl->conn;
    snprintf(j->session, sizeof j->session, "%s", sid);
    snprintf(j->user, sizeof j->user, "%s", cl->sub);
    if (id)
        snprintf(j->id, sizeof j->id, "%s", id);
    j->admin = cl->admin;
    j->after = j->from = after;
    j->waiting = cs->nrunning >= RESUME_RUNNING;
    conn_hold(cl->conn);
    if (!j->waiting &&
        uv_queue_work(&conn_worker(cl->conn)->loop, &j->req, resume_work, resume_done) != 0) {
        conn_release(cl->conn);
        free(j);
        return -EAGAIN;
    }
    j->listed = true;
    j->next = cs->jobs;
    cs->jobs = j;
    cs->njobs++;
    if (!j->waiting)
        cs->nrunning++;
    return 0;
}

void chat__resume_client_closed(struct client_state *cs)
{
    /* Parked and waiting replays end here; one on the thread pool ends
     * when it comes back and finds the connection closed. Either way it
     * leaves the list, which the caller frees. */
    while (cs->jobs) {
        struct resume_job *j = cs->jobs;
        cs->jobs = j->next;
        j->listed = false;
        if (j->parked || j->waiting)
            resume_finish(j);
    }
}
