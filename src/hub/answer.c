/*
 * DESIGN: the assistant's side of chat. The assistant (assistant/) decides
 * when to answer and streams; this file gives it its voice on the wire and
 * its place in storage, through the hooks it calls up with:
 *
 *   started   -> `loading` to the session's participants (bus, IT_RELAY);
 *   delta     -> `ai_response` {stream_id, offset, delta, done:false}:
 *                gathered until the HTTP client's turn ends (contiguous
 *                pieces of one answer joined into one), framed once and
 *                published (IT_DELTA); each worker then plans it
 *                per connection (chat__stream_catch_up and asst_plan), so a
 *                connection that came mid-answer first gets everything so
 *                far at offset 0, and no byte twice;
 *   failed    -> `error` assistant_error / assistant_timeout, with the
 *                session and stream, to the session's participants;
 *   finished  -> the answer as a stored event (STORE_APPEND, sender ai, the
 *                stream id as its client id, tokens in its metadata); the
 *                writer's batch callback frames it as the final
 *                `ai_response` (done:true, seq) and calls assistant_stored.
 *
 * And the other way: chat__assistant_ops runs, on the writer thread and in
 * commit order, what a batch asks of the assistant (answer this message,
 * an admin joined or left, an answer is stored), after the batch's events
 * are published, so `loading` follows the message it answers.
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hub/chat_int.h"
#include "hub/wire.h"
#include "net/conn.h"
#include "util/jw.h"
#include "util/log.h"
#include "util/vec.h"
#include "ws/frame.h"

/* Publish one frame (taking it) to the session's participants. */
static void publish(struct chat *ch, uint8_t kind, const char *type, const char *session,
                    const char *owner, struct jw *w, const char *stream, uint64_t soff,
                    uint32_t slen)
{
    struct bus_event e;
    memset(&e, 0, sizeof e);
    e.kind = kind;
    e.type = chat__out_index(type);
    snprintf(e.session, sizeof e.session, "%s", session);
    snprintf(e.owner, sizeof e.owner, "%s", owner);
    if (stream)
        snprintf(e.stream, sizeof e.stream, "%s", stream);
    e.stream_off = soff;
    e.stream_len = slen;
    e.frame = wire_frame_jw(w, &e.off, &e.len);
    if (!e.frame)
        return;
    if (bus_publish(ch->bus, &e, 1) != 0)
        log_warn("bus_publish_failed", "events=1 type=%s", type);
    sbuf_unref(e.frame);
}

#define LIT(s) s, sizeof s - 1

/* `{"type":"ai_response","session_id",..,"stream_id",..,"offset":N,
 * "delta":..,"done":false}` into w (initialised by the caller): every
 * delta of every answer, so the fixed text goes in whole pieces. */
static void write_piece(struct jw *w, const char *session, const char *stream, uint64_t off,
                        const char *text, size_t len)
{
    jw_raw(w, LIT("{\"type\":\"ai_response\",\"session_id\":"));
    jw_str(w, session, strlen(session));
    jw_raw(w, LIT(",\"stream_id\":"));
    jw_str(w, stream, strlen(stream));
    jw_raw(w, LIT(",\"offset\":"));
    jw_int(w, (int64_t)off);
    jw_raw(w, LIT(",\"delta\":"));
    jw_str(w, text, len);
    jw_raw(w, LIT(",\"done\":false}"));
}

/* Room for write_piece's text at its worst escape (6 bytes a byte), so
 * the buffer never grows (a realloc per delta otherwise), whatever the
 * text holds. */
static size_t piece_cap(const char *session, const char *stream, size_t len)
{
    return WS_MAX_HEADER + 112 + 6 * (strlen(session) + strlen(stream) + len);
}

/* The error that tells a session its answer failed or was refused. */
static void publish_error(struct chat *ch, const char *session, const char *owner,
                          enum chat_error code, const char *stream, const char *message,
                          bool recoverable, int64_t retry_after_ms)
{
    hub_count_error(ch->hub, code);
    struct jw w;
    jw_init(&w, 256, WS_MAX_HEADER);
    jw_open(&w);
    jw_kstr(&w, "type", "error");
    jw_kstr(&w, "code", hub_error_codes[code]);
    jw_kstr(&w, "message", message);
    jw_key(&w, "recoverable");
    jw_bool(&w, recoverable);
    if (retry_after_ms >= 0)
        jw_kint(&w, "retry_after", retry_after_ms);
    jw_kstr(&w, "session_id", session);
    if (stream && *stream)
        jw_kstr(&w, "stream_id", stream);
    jw_close(&w);
    publish(ch, IT_RELAY, "error", session, owner, &w, NULL, 0, 0);
}

static void hook_started(void *app, const char *session, const char *owner)
{
    struct chat *ch = app;
    struct jw w;
    jw_init(&w, 96, WS_MAX_HEADER);
    jw_open(&w);
    jw_kstr(&w, "type", "loading");
    jw_kstr(&w, "session_id", session);
    jw_close(&w);
    publish(ch, IT_RELAY, "loading", session, owner, &w, NULL, 0, 0);
}

#define DELTAS_MAX 256        /* deltas gathered before they go out anyway */
#define DTEXT_MAX (64 * 1024) /* bytes of their text gathered before they go out */
#define JOIN_MAX (16 * 1024)  /* contiguous deltas are joined up to this many bytes */

/* Frame the gathered deltas and publish them in one go: one post per
 * worker for all of them, not one per delta. HTTP client thread. */
static void hook_flush(void *app)
{
    struct chat *ch = app;
    if (!ch->ndeltas)
        return;
    bool keep_text = bus_keeps_streams(ch->bus);
    size_t n = 0, at = 0;
    for (size_t i = 0; i < ch->ndeltas; i++) {
        struct bus_event *e = &ch->deltas[i];
        const char *text = ch->dtext + at;
        at += e->stream_len;
        struct jw w;
        jw_init(&w, piece_cap(e->session, e->stream, e->stream_len), WS_MAX_HEADER);
        write_piece(&w, e->session, e->stream, e->stream_off, text, e->stream_len);
        e->frame = wire_frame_jw(&w, &e->off, &e->len);
        if (!e->frame)
            continue; /* lost here; the connections catch up at the next one */
        /* A bus that keeps the answers' text where every node reads it (a
         * device on another node may come mid-answer) borrows it. */
        e->text = keep_text ? text : NULL;
        if (n != i)
            ch->deltas[n] = *e;
        n++;
    }
    assert(at == ch->dtext_len);
    if (n && bus_publish(ch->bus, ch->deltas, n) != 0)
        log_warn("bus_publish_failed", "events=%zu type=ai_response", n);
    for (size_t i = 0; i < n; i++)
        sbuf_unref(ch->deltas[i].frame);
    ch->ndeltas = 0;
    ch->dtext_len = 0;
    if (ch->dtext_cap > 2 * DTEXT_MAX) { /* one huge delta: not kept for good */
        free(ch->dtext);
        ch->dtext = NULL;
        ch->dtext_cap = 0;
    }
}

/* A piece of an answer, gathered until the HTTP client's turn ends (the
 * flush hook). Joined to the piece gathered just before it when that one
 * is of the same answer and ends where it starts: the deltas a turn read
 * of one answer (a provider, or chatd, running ahead) become one event of
 * the same bytes, so a busy chatd frames, delivers and writes fewer. */
static void hook_delta(void *app, struct asst_stream *s, const char *owner, uint64_t off,
                       const char *text, size_t len)
{
    struct chat *ch = app;
    struct bus_event *last = ch->ndeltas ? &ch->deltas[ch->ndeltas - 1] : NULL;
    bool join = last && last->stream_off + last->stream_len == off &&
                last->stream_len + len <= JOIN_MAX && ch->dtext_len + len <= DTEXT_MAX &&
                strcmp(last->stream, s->id) == 0;
    if (!join && (ch->ndeltas >= DELTAS_MAX || ch->dtext_len + len > DTEXT_MAX))
        hook_flush(ch);
    if (vec_grow(&ch->dtext, &ch->dtext_cap, ch->dtext_len, len, 1) != 0 ||
        (!join && vec_grow(&ch->deltas, &ch->capdeltas, ch->ndeltas, 1, sizeof *ch->deltas) != 0))
        return; /* lost here; the connections catch up at the next one */
    memcpy(ch->dtext + ch->dtext_len, text, len);
    ch->dtext_len += len;
    if (join) {
        last->stream_len += (uint32_t)len;
        return;
    }
    struct bus_event *e = &ch->deltas[ch->ndeltas++];
    memset(e, 0, sizeof *e);
    e->kind = IT_DELTA;
    e->type = ch->out_ai_response;
    chat__copy_id(e->session, sizeof e->session, s->session);
    chat__copy_id(e->owner, sizeof e->owner, owner);
    chat__copy_id(e->stream, sizeof e->stream, s->id);
    e->stream_off = off;
    e->stream_len = (uint32_t)len;
}

static void hook_failed(void *app, const char *session, const char *owner, const char *stream_id,
                        enum asst_error kind, const char *message, bool recoverable,
                        int64_t retry_after_ms)
{
    publish_error(app, session, owner,
                  kind == ASST_ERR_TIMEOUT ? ERR_ASSISTANT_TIMEOUT : ERR_ASSISTANT_ERROR, stream_id,
                  message, recoverable, retry_after_ms);
}

/* An answer ended with nothing to store and no error (stopped before its
 * first word, or the model said nothing): the session's devices that
 * show "answering" since `loading` learn it is over. */
static void publish_idle(struct chat *ch, const struct asst_result *a)
{
    struct jw w;
    jw_init(&w, 256, WS_MAX_HEADER);
    jw_open(&w);
    jw_kstr(&w, "type", "notification");
    jw_kstr(&w, "code", "assistant_done");
    jw_kstr(&w, "message",
            strcmp(a->stop_reason, "stopped") == 0
                ? "the answer was stopped before it began; nothing was stored"
            : strcmp(a->stop_reason, "taken_over") == 0
                ? "an admin has taken over the session: the assistant does not answer"
                : "the assistant ended without an answer; nothing was stored");
    jw_kstr(&w, "session_id", a->session);
    jw_kstr(&w, "stream_id", a->stream_id);
    jw_kstr(&w, "stop_reason", a->stop_reason);
    jw_close(&w);
    publish(ch, IT_RELAY, "notification", a->session, a->owner, &w, NULL, 0, 0);
}

static int hook_claim(void *app, const char *session, const char *stream_id)
{
    struct chat *ch = app;
    int rc = bus_claim(ch->bus, session, stream_id);
    if (rc < 0) {
        /* Redis could not say: the answer goes ahead unclaimed (a person's
         * hold or another node's answer may be missed). */
        struct log_quoted q;
        log_warn("assistant_claim_failed", "session=%s rc=%d", log_quotes(&q, session), rc);
    }
    return rc == BUS_HELD ? ASST_CLAIM_HELD : rc == BUS_BUSY ? ASST_CLAIM_BUSY : rc;
}

static void hook_released(void *app, const char *session, const char *stream_id)
{
    struct chat *ch = app;
    bus_release(ch->bus, session, stream_id);
}

static int hook_finished(void *app, const struct asst_result *a)
{
    struct chat *ch = app;
    if (a->len == 0) {
        if (!a->failed && strcmp(a->stop_reason, "shutdown") != 0)
            publish_idle(ch, a);
        return 0;
    }
    struct store_req *r = calloc(1, sizeof *r);
    if (!r)
        return -ENOMEM;
    r->op = STORE_APPEND;
    r->kind = KIND_AI_ANSWER;
    r->any_session = true;
    snprintf(r->session_id, sizeof r->session_id, "%s", a->session);
    snprintf(r->user, sizeof r->user, "%s", a->model->id);
    snprintf(r->sender_type, sizeof r->sender_type, "ai");
    snprintf(r->client_id, sizeof r->client_id, "%s", a->stream_id);
    r->sender_name = strdup(a->model->name ? a->model->name : a->model->id);
    r->content = malloc(a->len + 1);
    json_t *meta = json_pack("{s:s, s:I, s:I, s:b, s:b, s:s, s:I}", "model", a->model->id,
                             "input_tokens", (json_int_t)a->input_tokens, "output_tokens",
                             (json_int_t)a->output_tokens, "tokens_estimated",
                             a->tokens_estimated, "partial", a->partial, "stop_reason",
                             a->stop_reason, "reply_to_seq", (json_int_t)a->reply_to_seq);
    r->metadata = meta ? json_dumps(meta, JSON_COMPACT) : NULL;
    json_decref(meta);
    if (!r->sender_name || !r->content || !r->metadata) {
        store_req_free(r);
        return -ENOMEM;
    }
    memcpy(r->content, a->text, a->len);
    r->content[a->len] = '\0';
    r->content_len = a->len;
    int rc = store_submit(ch->store, r);
    if (rc != 0) {
        struct log_quoted qs;
        log_warn("assistant_answer_lost", "session=%s bytes=%zu reason=\"storage is closing\"",
                 log_quotes(&qs, a->session), a->len);
        store_req_free(r);
    }
    return rc;
}

const struct assistant_hooks chat__assistant_hooks = {
    .started = hook_started,
    .delta = hook_delta,
    .flush = hook_flush,
    .failed = hook_failed,
    .finished = hook_finished,
    .claim = hook_claim,
    .released = hook_released,
};

void chat__assistant_ops(struct chat *ch, const struct chat_asst_op *ops, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const struct chat_asst_op *op = &ops[i];
        switch (op->what) {
        case ASST_OP_ASK: {
            int64_t retry = -1;
            int rc = assistant_ask(ch->asst, op->session, op->user, op->model, &retry);
            if (rc == -EDQUOT)
                publish_error(ch, op->session, op->user, ERR_RATE_LIMITED, NULL,
                              "too many questions to the assistant: this message is stored "
                              "but not answered; ask again later",
                              true, retry);
            else if (rc == -EBUSY)
                publish_error(ch, op->session, op->user, ERR_UNAVAILABLE, NULL,
                              "the assistant is answering too many sessions at once: this "
                              "message is stored but not answered; ask again shortly",
                              true, retry);
            else if (rc == -ENOMEM)
                publish_error(ch, op->session, op->user, ERR_INTERNAL, NULL,
                              "out of memory: this message is stored but not answered", false,
                              -1);
            break;
        }
        case ASST_OP_HOLD:
        case ASST_OP_UNHOLD:
            assistant_hold(ch->asst, op->session, op->conn_id, op->what == ASST_OP_HOLD);
            break;
        case ASST_OP_STORE_FAILED:
            publish_error(ch, op->session, op->user, ERR_ASSISTANT_ERROR, op->stream,
                          "the answer could not be stored; ask again later", true, 5000);
            assistant_stored(ch->asst, op->session, op->stream);
            break;
        case ASST_OP_STORED:
            assistant_stored(ch->asst, op->session, op->stream);
            break;
        }
    }
}

/* Send cl text[from..len) of stream id at offset from. */
static void send_piece(struct client *cl, const char *session, const char *id, size_t from,
                       const char *text, size_t len)
{
    struct jw w;
    jw_init(&w, piece_cap(session, id, len - from), WS_MAX_HEADER);
    write_piece(&w, session, id, from, text + from, len - from);
    uint32_t off, flen;
    struct sbuf *f = wire_frame_jw(&w, &off, &flen);
    if (!f)
        return;
    if (conn_send_shared(cl->conn, f, off, flen) == 0)
        chat__count_out(cl, ((struct chat *)client_hub(cl)->router)->out_ai_response);
    sbuf_unref(f);
}

bool chat__stream_catch_up(struct chat *ch, struct client *cl, struct sess_state *st,
                           const char *stream_id, bool only_live)
{
    assert(worker_current() == conn_worker(cl->conn));
    if (!ch->asst)
        return false;
    struct asst_stream *s = assistant_stream(ch->asst, st->id);
    if (!s)
        return false; /* ended and stored: the stored answer is (or will be) sent */
    if (stream_id && strcmp(s->id, stream_id) != 0) {
        asst_stream_unref(s);
        return true; /* a later answer already: this one's stored event comes */
    }
    if (strcmp(st->stream, s->id) != 0) {
        snprintf(st->stream, sizeof st->stream, "%s", s->id);
        st->stream_sent = -1;
    }
    size_t len;
    enum asst_stream_state state;
    char *text = asst_stream_snapshot(s, &len, &state);
    size_t from = st->stream_sent < 0 ? 0 : (size_t)st->stream_sent;
    if (text && (state == ASST_STREAMING || !only_live) && (len > from || st->stream_sent < 0)) {
        send_piece(cl, st->id, s->id, from, text, len);
        st->stream_sent = (int64_t)len;
    }
    free(text);
    asst_stream_unref(s);
    return true;
}

void chat__stream_catch_up_remote(struct chat *ch, struct client *cl, struct sess_state *st,
                                  const struct chat_item *it)
{
    assert(worker_current() == conn_worker(cl->conn));
    struct chat_local *loc = &ch->locals[conn_worker(cl->conn)->index];
    uint64_t need = it->stream_off + it->stream_len;
    if (strcmp(loc->rstream, it->stream) != 0 || loc->rlen < need) {
        /* A round trip on this worker, once per piece at most: the
         * connections after the first that need this piece use the copy. */
        char *text;
        size_t len;
        if (bus_stream_read(ch->bus, it->stream, &text, &len) != 0)
            return; /* the next piece tries again */
        free(loc->rtext);
        loc->rtext = text;
        loc->rlen = len;
        snprintf(loc->rstream, sizeof loc->rstream, "%s", it->stream);
    }
    if (loc->rlen >= need)
        chat__stream_send_text(cl, st, it->stream, loc->rtext, loc->rlen);
}

void chat__stream_send_text(struct client *cl, struct sess_state *st, const char *stream,
                            const char *text, size_t len)
{
    assert(worker_current() == conn_worker(cl->conn));
    if (strcmp(st->stream, stream) != 0) {
        snprintf(st->stream, sizeof st->stream, "%s", stream);
        st->stream_sent = -1;
    }
    size_t from = st->stream_sent < 0 ? 0 : (size_t)st->stream_sent;
    if (len <= from)
        return;
    send_piece(cl, st->id, stream, from, text, len);
    st->stream_sent = (int64_t)len;
}
