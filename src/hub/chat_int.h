/*
 * chat_int: what the files of the chat router share (chat.c, validate.c,
 * deliver.c, fanout.c, resume.c, metrics.c). Not for use outside src/hub/.
 *
 * Ownership: struct chat is read-only once traffic starts (store, bus,
 * asst and webhook are set before) except: the counters (atomics); the
 * joined-admins table, guarded by joined_lock (joined.c: the writer writes,
 * the HTTP API reads); and `deltas` with their text `dtext`, which belong to
 * the assistant's HTTP client thread (answer.c). struct chat_local belongs
 * to one worker thread; struct client_state and struct sess_state belong to
 * their client's worker thread. Calls that cross threads: the writer calls
 * into the assistant (assistant_ask/hold/stop/stored, its own lock) and the
 * webhook (its own queue); workers call assistant_stream (its lock); the
 * registry lookups take the registry's stripe locks. joined_lock is a leaf.
 */
#ifndef CHATD_HUB_CHAT_INT_H
#define CHATD_HUB_CHAT_INT_H

#include <limits.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "assistant/assistant.h"
#include "bus/bus.h"
#include "hub/hub.h"
#include "hub/seqset.h"
#include "hub/webhook.h"
#include "store/store.h"
#include "net/worker.h"
#include "util/hash.h"
#include "util/rate.h"

#define LOCAL_BUCKETS 1024
#define JOINED_BUCKETS 256
/* store_req.kind of the admin_leave that a lost admin role makes (not a
 * client message: no ack is sent for it). */
#define KIND_LEAVE_REVOKED ((uint32_t)CHAT_TYPE_COUNT + 1)
/* store_req.kind of the assistant's answer (answer.c). */
#define KIND_AI_ANSWER ((uint32_t)CHAT_TYPE_COUNT + 2)
#define METADATA_MAX 16384
_Static_assert(BUS_STREAM_MAX == ASST_STREAM_ID_LEN, "a stream id crosses the bus whole");

/* Server-to-client message types counted in chatd_messages_out_total
 * (metrics.c). */
#define CHAT_OUT_COUNT 14
extern const char *const chat__out_names[CHAT_OUT_COUNT];
uint8_t chat__out_index(const char *type);

/* The size of a cache line on the machines chatd is built for (x86-64,
 * most arm64): struct client_state is allocated at the start of one. */
#define CHAT_LINE 64

/* A delivery to a connection reads sent, held and id (hub/deliver.c
 * send_event), and an admin's message its join flags (chat__admin_in):
 * they come first, 61 bytes, within the first cache line of the client's
 * router state (struct client_state). */
struct sess_state {
    struct seqset sent; /* seqs sent to this connection */
    /* The highest after_seq this connection resumed from (capped at the
     * session's last seq then): the client holds every event up to it, so
     * a live one up to it is not sent (one published late). */
    int64_t held;
    char id[STORE_ID_LEN + 1];
    bool joined; /* an admin subscribed with admin_join */
    /* The admin's latest admin_join (true) or admin_leave (false) and how
     * many of those are still with the writer: a message sent right after
     * admin_join is judged by what the client asked, as the writer will
     * have applied the join before it (one connection's requests are
     * processed in order). */
    bool intent_joined;
    uint32_t intent_pending;
    /* The assistant's answer streaming in this session, as far as this
     * connection has had it: its id and how many bytes (-1: none yet). */
    char stream[ASST_STREAM_ID_LEN + 1];
    int64_t stream_sent;
};
_Static_assert(offsetof(struct sess_state, intent_joined) < CHAT_LINE,
               "what a delivery reads of a session's state fits one cache line");

struct resume_job;

/* Allocated at a cache line's start (chat__cstate) with the first session's
 * state first: a delivery to a device in one session (the usual case) finds
 * all it reads of this in one line, a second session's state in `more`. */
struct client_state {
    struct sess_state first; /* when n >= 1 */
    size_t n;                /* states: first, then more[0 .. n - 2] */
    size_t cap;              /* of more */
    struct sess_state *more; /* owned */
    struct resume_job *jobs; /* replays running or waiting (see struct resume_job) */
    unsigned njobs;          /* on jobs */
    unsigned nrunning;       /* on jobs and not waiting for a slot */
    struct rate_bucket budget[CHAT_TYPE_COUNT]; /* see type_budget */
};

/* The client's i-th session state (i < cs->n). */
static inline struct sess_state *chat__state_at(struct client_state *cs, size_t i)
{
    return i == 0 ? &cs->first : &cs->more[i - 1];
}

/* Worker-local indexes, owned by one worker thread. */
struct local_list {
    struct local_list *next;
    char *key;
    size_t n, cap;
    struct client **v;
};

/* A worker's notice that a delivery meant for it was lost for want of
 * memory (chat__delivery_lost): allocated with the chat, posted at most
 * once at a time, so that telling the worker needs no memory. */
struct chat_lost {
    struct inbox_msg base;
    struct chat *ch;
    atomic_bool queued;
};

struct chat_local {
    struct chat_lost lost;
    struct local_list *joins[LOCAL_BUCKETS]; /* session id -> admins joined here */
    struct local_list admins;                /* every admin client here (key unused) */
    /* written by this worker only; atomics so /metrics may read them */
    atomic_uint_fast64_t out[CHAT_OUT_COUNT];
    /* The last answer streaming on another node read from the bus
     * (answer.c): its text so far, kept for the next connection of this
     * worker that must catch up with it. */
    char rstream[BUS_STREAM_MAX + 1];
    char *rtext;
    size_t rlen;
};

struct chat {
    struct hub *hub;
    struct store *store; /* set once by chat_set_store, before traffic */
    struct bus *bus;     /* set once by chat_set_bus, before traffic */
    struct assistant *asst; /* set once by chat_set_assistant, before traffic; NULL: none */
    struct webhook *webhook; /* set once before traffic; NULL: none */
    /* Who has joined which session now (joined.c): written by the storage
     * writer in commit order, read by the HTTP API. Guarded by joined_lock. */
    uv_mutex_t joined_lock;
    struct joined_admin *joined[JOINED_BUCKETS];
    /* Deltas gathered for the bus (answer.c): the assistant's HTTP client
     * thread only, framed and published at its flush hook. Their text, in
     * their order, is in dtext; contiguous deltas of one answer gathered
     * in one turn are joined into one. */
    struct bus_event *deltas;
    size_t ndeltas, capdeltas;
    char *dtext;
    size_t dtext_len, dtext_cap;
    uint8_t out_ai_response; /* chat__out_index("ai_response"), read-only after chat_new */
    unsigned nworkers;
    unsigned devs_cap; /* devices one user may hold, plus one */
    struct chat_local *locals; /* [nworkers], each owned by its worker */
    atomic_uint_fast64_t in_by_kind[CHAT_TYPE_COUNT];
};

/* ---- deliver.c: per-worker indexes, per-client state, delivery ---------- */

/* Delivery items, in commit order, one post per worker per batch. */
enum item_kind {
    IT_REPLY,       /* to one connection */
    IT_EVENT,       /* a stored event: the owner's devices and the joined admins */
    IT_RELAY,       /* not stored, same recipients, minus the sender */
    IT_RELAY_OWNER, /* not stored, the owner's devices only, minus the sender */
    IT_ADMINS,      /* every admin online */
    IT_JOIN,        /* an admin connection joins a session (its worker only) */
    IT_LEAVE,
    IT_DELTA, /* a piece of a streaming answer: as IT_EVENT, planned per
                 connection (assistant/stream.h asst_plan) */
};

struct chat_item {
    uint8_t kind;
    uint8_t out_type;   /* index in chat__out_names */
    bool failed;        /* JOIN/LEAVE: refused by the writer, only settles intent */
    bool remote;        /* DELTA: of an answer streaming on another node */
    uint64_t conn_id;   /* REPLY target; RELAY exclusion; JOIN/LEAVE subject */
    struct sbuf *frame; /* one reference, or NULL */
    uint32_t off, len;
    int64_t seq;
    uint32_t ids_off, ids_n; /* the owner's devices on this worker, in post->ids */
    uint64_t owner_hash;     /* hash_str(owner): admins that are the owner skip */
    uint64_t stream_off;     /* DELTA: where its text falls in the answer */
    uint32_t stream_len;
    char stream[ASST_STREAM_ID_LEN + 1];
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

/* Copy the string src into dst[cap], cut at cap - 1 bytes as
 * snprintf(dst, cap, "%s", src) would, for a fraction of its cost: the
 * ids an answer's every delta carries are copied this way. */
static inline void chat__copy_id(char *dst, size_t cap, const char *src)
{
    size_t n = strnlen(src, cap - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

struct local_list *chat__list_find(struct local_list **tab, const char *key, bool create);
int chat__list_add(struct local_list *l, struct client *cl);
void chat__list_del(struct local_list **tab, struct local_list *l, struct client *cl);
void chat__free_table(struct local_list **tab);
/* The client's router state, made on first use (idle clients have none). */
struct client_state *chat__cstate(struct client *cl);
struct sess_state *chat__state_get(struct client *cl, const char *sid, bool create);
/* This worker stops delivering st's session to cl (an admin that joined
 * it); nothing when it had not joined. */
void chat__unjoin(struct chat_local *loc, struct client *cl, struct sess_state *st);
/* Is the admin in the session, as far as its next message is concerned? */
bool chat__admin_in(const struct sess_state *st);
void chat__count_out(struct client *cl, uint8_t type);
/* The inbox callbacks of a struct chat_post. Worker thread. */
void chat__post_run(struct worker *w, struct inbox_msg *m);
void chat__post_drop(struct inbox_msg *m);
/* An ack, error or event for worker (every worker: CHAT_ALL_WORKERS) could
 * not be built or queued for want of memory. Delivery is never skipped in
 * silence: that worker closes its chat connections with 1011, and each
 * device comes back with a resume (and a retry of what it sent, whose id
 * finds it stored). Any thread. */
#define CHAT_ALL_WORKERS UINT_MAX
void chat__delivery_lost(struct chat *ch, unsigned worker);

/* ---- validate.c: the fields of client messages, requests to the writer -- */

bool chat__valid_session_id(const char *s);
/* session_id: required or optional; returns false after answering. */
bool chat__get_session(struct chat *ch, struct client *cl, json_t *msg, bool required,
                       const char *id, const char **out);
bool chat__get_content(struct chat *ch, struct client *cl, json_t *msg, const char *id,
                       const char **out, size_t *len);
/* The checks of those two on values already read (a session id that is
 * present; a content's length); false after answering. */
bool chat__check_session_id(struct client *cl, const char *sid, const char *id);
bool chat__check_content_len(struct chat *ch, struct client *cl, size_t len, const char *id);
/* 'metadata': absent/null (NULL), or an object of strings as compact text
 * (malloc'd, *out). Returns false after answering. */
bool chat__get_metadata(struct client *cl, json_t *msg, const char *id, char **out);
/* The user's chat rate limit (--rate-limit); false after answering. */
bool chat__rate_ok(struct chat *ch, struct client *cl, const char *id);
struct store_req *chat__new_req(struct client *cl, enum store_op op, enum chat_type kind,
                                const char *sid, const char *id);
/* Hand r to the writer; true when it took it (false: answered already). */
bool chat__submit(struct chat *ch, struct client *cl, struct store_req *r, const char *id);

/* ---- api.c: writes of the HTTP API ------------------------------------------ */

/* A request the HTTP API waits for on the thread pool: the writer's batch
 * callback (fanout.c) handles its effects, then signals instead of freeing
 * it; the waiter owns it again from then on. */
struct chat_wait {
    uv_mutex_t lock;
    uv_cond_t cond;
    bool done; /* guarded by lock */
};
/* The writer thread's side: r's result is in; wake its waiter. */
void chat__wait_done(struct store_req *r);

/* ---- joined.c: the admins joined to each session now -------------------- */

struct joined_admin {
    struct joined_admin *next;
    uint64_t conn_id;
    char session[STORE_ID_LEN + 1];
    char id[STORE_MAX_USER + 1];
    char name[STORE_MAX_USER + 1];
};

/* The admin connection conn_id (user id, name) joined (in) or left the
 * session. Writer thread, in commit order; idempotent per connection. */
void chat__joined_set(struct chat *ch, const char *session, uint64_t conn_id, const char *id,
                      const char *name, bool in);
/* [{"id","name"}] of the admins joined to the session now, one per admin
 * (an admin on two devices is listed once). Any thread. NULL on OOM. */
json_t *chat__joined_json(struct chat *ch, const char *session);
void chat__joined_free(struct chat *ch);

/* ---- answer.c: the assistant's hooks and its traffic -------------------- */

extern const struct assistant_hooks chat__assistant_hooks; /* app: struct chat */
/* Bring cl level with the answer streaming in st's session: send what it
 * has not had of it (from offset 0 when it has had nothing). only_live:
 * nothing once the answer has ended (its stored event follows). False
 * when no answer of the session streams on this node. Worker. */
bool chat__stream_catch_up(struct chat *ch, struct client *cl, struct sess_state *st,
                           const char *stream_id, bool only_live);
/* The same for a piece `it` of an answer that streams on another node:
 * its text so far comes from the bus (bus_stream_read). Worker. */
void chat__stream_catch_up_remote(struct chat *ch, struct client *cl, struct sess_state *st,
                                  const struct chat_item *it);
/* Send cl what it lacks of answer `stream`, whose text so far is text[0..
 * len) (from offset 0 when it has had nothing of it). Worker. */
void chat__stream_send_text(struct client *cl, struct sess_state *st, const char *stream,
                            const char *text, size_t len);
/* The assistant side of one committed batch, after its events are
 * published (fanout.c collects them in order). Writer thread. */
struct chat_asst_op {
    uint8_t what; /* ASK, HOLD, UNHOLD, STORED, STORE_FAILED */
    uint64_t conn_id;
    char session[STORE_ID_LEN + 1];
    char user[STORE_MAX_USER + 1];
    char model[65];
    char stream[ASST_STREAM_ID_LEN + 1];
};
enum { ASST_OP_ASK, ASST_OP_HOLD, ASST_OP_UNHOLD, ASST_OP_STORED, ASST_OP_STORE_FAILED };
void chat__assistant_ops(struct chat *ch, const struct chat_asst_op *ops, size_t n);

/* ---- resume.c ------------------------------------------------------------ */

void chat__handle_resume(struct chat *ch, struct client *cl, json_t *msg, const char *id);
/* The connection's send queue emptied: parked replays read on. */
void chat__client_drained(void *router, struct client *cl);
/* The client is closing: end its replays (those on the thread pool end
 * when they come back). */
void chat__resume_client_closed(struct client_state *cs);

#endif
