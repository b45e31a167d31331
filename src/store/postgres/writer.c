/*
 * DESIGN: the writer. One thread owns the write connection and its
 * prepared statements; it drains the request queue into batches and runs
 * each batch in one transaction: BEGIN (recording the transaction id), lock
 * the batch's session rows in id order, every request, COMMIT. N messages
 * cost one commit. An error inside a batch rolls the whole batch back and
 * answers every request in it STORE_UNAVAILABLE, except a deadlock or
 * serialization failure (another node's batch), which runs the batch again
 * up to PG_BATCH_RETRIES times. A COMMIT whose answer was lost with the
 * connection is settled by asking pg_xact_status() after reconnecting (see
 * postgres.c's DESIGN note for the rule). Under steady load a small batch
 * lingers (STORE_LINGER_US) for company, as with SQLite.
 *
 * Semantics are SQLite's, statement for statement: titles from the first
 * user message (util/title.h), owner names, waiting times (a user message
 * starts a wait unless one runs, an admin or ai message ends it), read
 * markers that only move forward, share links, help requests that write
 * only a change.
 *
 * Round trips. A batch's first statements read for all its requests at
 * once (struct pg_batch): the lock of its sessions returns their rows (the
 * owner, the counter, the model, whether untitled), which the batch then
 * keeps up to date itself, and one look-up finds which of its messages
 * with a client id are stored already (a message of the batch is added as
 * it is stored: a retry in the same batch is a duplicate too). A message
 * to an existing session then costs one statement (the event), where it
 * cost three. BEGIN, the transaction id, the lock and the look-up go in
 * one pipeline (begin_batch): one wait.
 *
 * Pipelined events. An event's statement needs no answer before the next
 * statement: its seq is known (the row is locked, the batch keeps the
 * counter), and any failure rolls the whole batch back. So put_event sends
 * it in libpq's pipeline mode and goes on; the answers are read by
 * pipe_drain before anything that needs an answer (another statement), at
 * most PG_PIPE_MAX events later, and the COMMIT goes behind the last ones
 * (pipe_finish). Each event statement checks its own seq (its $12: the
 * seq the writer expects and sealed the content for), so that a wrong one
 * fails the statement, and the COMMIT after it, before anything commits.
 * A batch of N messages to existing sessions then waits for the server
 * about N / PG_PIPE_MAX + 2 times (it was N + 3, then N / PG_PIPE_MAX +
 * 4), and the server reads the events as a stream. A connection lost after
 * the COMMIT was queued is settled (settle_commit) whatever statement it
 * was lost in: the server may have reached the COMMIT.
 *
 * Health is `connected && writes_ok`: a refused write (a server error, the
 * tests' fault hook) clears writes_ok until a batch that wrote; a lost
 * connection clears connected until the writer reconnects.
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "store/postgres/internal.h"
#include "store/seal.h"
#include "util/clock.h"
#include "util/log.h"
#include "util/sbuf.h"
#include "util/title.h"
#include "util/vec.h"

/* The writer's statements, prepared on each new write connection. */
enum {
    W_LOCK = 0,
    W_DEDUP,
    W_SESSION_GET,
    W_SESSION_BY_ORIGIN,
    W_SESSION_INSERT,
    W_EVENT_BY_CLIENT,
    W_EVENT_PUT,
    W_TITLE_INIT,
    W_TITLE_GET,
    W_RENAME,
    W_HELP,
    W_RESOLVE,
    W_MODEL,
    W_READ_PUT,
    W_SHARE_PUT,
    W_SHARE_REVOKE,
    W_COUNT
};

static const char *const stmt_sql[W_COUNT] = {
    /* The batch's sessions, locked in one order on every node, with what
     * their requests need of them (the batch keeps it up to date). */
    [W_LOCK] = "SELECT id, owner, last_seq, model, title IS NULL FROM sessions"
               " WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE",
    /* Of the batch's messages with a client id, those already stored: one
     * look-up in events_by_client for each. The LIMIT keeps the subquery
     * from being merged into a join, which the generic plan of a prepared
     * statement makes a scan of every event. Planned afresh each time
     * (stmt_replanned). */
    [W_DEDUP] = "SELECT k.s, k.u, k.c, e.seq, e.created_at"
                " FROM unnest($1::text[], $2::text[], $3::text[]) AS k(s, u, c)"
                " CROSS JOIN LATERAL (SELECT seq, created_at FROM events"
                " WHERE session_id = k.s AND sender_id = k.u AND client_id = k.c LIMIT 1) AS e",
    [W_SESSION_GET] = "SELECT owner, last_seq, model, title IS NULL FROM sessions"
                      " WHERE id = $1::text FOR UPDATE",
    [W_SESSION_BY_ORIGIN] = "SELECT id FROM sessions WHERE owner = $1::text"
                            " AND origin_client_id = $2::text",
    /* Another node may have made the same session meanwhile: no row back. */
    [W_SESSION_INSERT] = "INSERT INTO sessions (id, owner, created_at, updated_at,"
                         " origin_client_id, owner_name)"
                         " VALUES ($1::text, $2::text, $3::bigint, $3::bigint, $4::text, $5::text)"
                         " ON CONFLICT (owner, origin_client_id)"
                         " WHERE origin_client_id IS NOT NULL DO NOTHING RETURNING id",
    [W_EVENT_BY_CLIENT] = "SELECT seq, created_at FROM events WHERE session_id = $1::text"
                          " AND sender_id = $2::text AND client_id = $3::text",
    /* The session row is the seq counter: its UPDATE ... RETURNING gives
     * the event its seq under the row lock. $4: 1 a user message (a wait
     * starts unless one runs), 2 an answer (the wait ends), 0 neither. */
    /* $12 is the seq the writer expects (and sealed the content for):
     * any other, and the event's seq is NULL, which the table refuses
     * (23502), so the batch fails before its COMMIT, which is sent behind
     * the events without waiting for their answers (pipe_finish). */
    [W_EVENT_PUT] = "WITH s AS (UPDATE sessions SET last_seq = last_seq + 1,"
                    " updated_at = $3::bigint, waiting_since = CASE $4::integer"
                    " WHEN 1 THEN COALESCE(waiting_since, $3::bigint) WHEN 2 THEN NULL"
                    " ELSE waiting_since END WHERE id = $1::text RETURNING last_seq)"
                    " INSERT INTO events (session_id, seq, type, sender_type, sender_id,"
                    " sender_name, client_id, content, metadata, enc, created_at)"
                    " VALUES ($1::text, (SELECT last_seq FROM s WHERE last_seq = $12::bigint),"
                    " $2::text, $5::text, $6::text, $7::text,"
                    " $8::text, $9::bytea, $10::text, $11::boolean, $3::bigint)"
                    " RETURNING seq",
    [W_TITLE_INIT] = "UPDATE sessions SET title = $2::bytea, title_enc = $3::boolean"
                     " WHERE id = $1::text AND title IS NULL",
    [W_TITLE_GET] = "SELECT title, title_enc FROM sessions WHERE id = $1::text",
    [W_RENAME] = "UPDATE sessions SET title = $2::bytea, title_enc = $3::boolean,"
                 " title_set = true, updated_at = $4::bigint WHERE id = $1::text",
    [W_HELP] = "UPDATE sessions SET help = true WHERE id = $1::text AND NOT help",
    [W_RESOLVE] = "UPDATE sessions SET help = false WHERE id = $1::text AND help",
    [W_MODEL] = "UPDATE sessions SET model = $2::text WHERE id = $1::text",
    [W_READ_PUT] = "INSERT INTO reads (session_id, reader, seq)"
                   " VALUES ($1::text, $2::text, $3::bigint)"
                   " ON CONFLICT (session_id, reader) DO UPDATE SET seq = excluded.seq"
                   " WHERE excluded.seq > reads.seq",
    [W_SHARE_PUT] = "INSERT INTO shares (token, session_id, expires_at)"
                    " VALUES ($1::text, $2::text, $3::bigint)",
    [W_SHARE_REVOKE] = "DELETE FROM shares WHERE session_id = $1::text",
};

/* Statements sent unprepared, so that each run is planned with the table
 * as it is then. A look-up by client id may use events_by_client, or the
 * primary key (session_id, seq) and then filter the session's events; a
 * plan kept from when the table was nearly empty (a new database) took the
 * primary key, and each look-up then read every event of its session: the
 * dedup of a batch went from well under 1 ms to 15-60 ms as sessions grew
 * (6,250 messages a second over 100 sessions, within 10 s). Planning once
 * a batch costs less than that by far. */
static const bool stmt_replanned[W_COUNT] = {[W_DEDUP] = true, [W_EVENT_BY_CLIENT] = true};

/* The name statement `which` is prepared under on the write connection. */
static const char *stmt_name(int which, char name[8])
{
    snprintf(name, 8, "w%d", which);
    return name;
}

/* Why a batch stopped (writer thread only). */
enum batch_error {
    B_OK = 0,
    B_SERVER,   /* the server refused a statement: rolled back, known not committed */
    B_RETRY,    /* a deadlock or serialization failure: run the batch again */
    B_LOST,     /* the connection is gone before COMMIT: the server rolls back */
    B_INTERNAL, /* chatd could not build the statement (sealing, memory) */
};

#define MAXP 12

/* Events sent ahead of their answers at most (pipelined). The answers wait
 * in the socket and in libpq's buffer meanwhile: ~100 bytes each. */
#define PG_PIPE_MAX 256

/* A statement's parameters: text, or binary (bytea), NULL for SQL NULL. */
struct params {
    int n;
    const char *v[MAXP];
    int len[MAXP];
    int fmt[MAXP];
    char num[MAXP][24];
};

static void p_text(struct params *p, const char *v)
{
    assert(p->n < MAXP);
    p->v[p->n] = v;
    p->len[p->n] = 0;
    p->fmt[p->n] = 0;
    p->n++;
}

static void p_int(struct params *p, int64_t x)
{
    assert(p->n < MAXP);
    snprintf(p->num[p->n], sizeof p->num[0], "%lld", (long long)x);
    p_text(p, p->num[p->n]);
}

static void p_bytes(struct params *p, const void *b, size_t n)
{
    assert(p->n < MAXP);
    p->v[p->n] = b ? b : "";
    p->len[p->n] = (int)n;
    p->fmt[p->n] = 1;
    p->n++;
}

static void sleep_ms(int64_t ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* ---- the connection ------------------------------------------------------ */

/* Give up the write connection: the next attempt after the back-off. */
static void drop_conn(struct store_postgres *s, const char *why)
{
    struct log_quoted qd, qw;
    PQfinish(s->conn);
    s->conn = NULL;
    s->retry_at_us = store__now_us() + s->backoff_ms * 1000;
    if (atomic_exchange(&s->connected, false))
        log_warn("store_unhealthy", "engine=postgres dsn=%s reason=%s",
                 log_quotes(&qd, s->redacted), log_quotes(&qw, why));
}

/* Connect and prepare the statements. true when connected. */
static bool writer_connect(struct store_postgres *s)
{
    char err[256];
    PGconn *c = store_postgres__connect(s, err, sizeof err);
    /* Every statement here finds its rows by key. On a small table the
     * planner reckons a scan cheaper than probing an index (a batch that
     * locks 12 of 100 sessions), but the session rows, each updated by
     * every message, keep many versions in their pages until pruned, and
     * a scan reads them all: at 6,250 messages a second over 100 sessions
     * the server process of this connection used 70% of a core, 39%
     * without scans. And a plan made while a table was small is kept by a
     * prepared statement until the next ANALYZE. So: no scans. */
    if (c) {
        PGresult *r = PQexec(c, "SET enable_seqscan = off");
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            store_postgres__error_line(c, err, sizeof err);
            PQfinish(c);
            c = NULL;
        }
        PQclear(r);
    }
    for (int i = 0; c && i < W_COUNT; i++) {
        if (stmt_replanned[i])
            continue;
        char name[8];
        PGresult *r = PQprepare(c, stmt_name(i, name), stmt_sql[i], 0, NULL);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            store_postgres__error_line(c, err, sizeof err);
            PQfinish(c);
            c = NULL;
        }
        PQclear(r);
    }
    struct log_quoted qd, qe;
    if (!c) {
        s->retry_at_us = store__now_us() + s->backoff_ms * 1000;
        if (atomic_exchange(&s->connected, false))
            log_warn("store_unhealthy", "engine=postgres dsn=%s reason=%s",
                     log_quotes(&qd, s->redacted), log_quotes(&qe, err));
        log_debug("store_connect_failed", "engine=postgres dsn=%s error=%s retry_ms=%lld",
                  log_quotes(&qd, s->redacted), log_quotes(&qe, err), (long long)s->backoff_ms);
        s->backoff_ms =
            s->backoff_ms * 2 > PG_BACKOFF_MAX_MS ? PG_BACKOFF_MAX_MS : s->backoff_ms * 2;
        return false;
    }
    PQfinish(s->conn);
    s->conn = c;
    s->backoff_ms = PG_BACKOFF_MIN_MS;
    if (!atomic_exchange(&s->connected, true))
        log_info("store_healthy", "engine=postgres dsn=%s", log_quotes(&qd, s->redacted));
    return true;
}

/* Why statement result r (NULL: none came) failed, into *err; logged
 * unless the batch is to run again. */
static void failed_result(struct store_postgres *s, const PGresult *r, enum batch_error *err)
{
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    if (PQstatus(s->conn) != CONNECTION_OK)
        *err = B_LOST;
    else if (state && (strcmp(state, "40P01") == 0 || strcmp(state, "40001") == 0))
        *err = B_RETRY;
    else
        *err = B_SERVER;
    const char *table = r ? PQresultErrorField(r, PG_DIAG_TABLE_NAME) : NULL;
    const char *column = r ? PQresultErrorField(r, PG_DIAG_COLUMN_NAME) : NULL;
    if (*err == B_SERVER && strcmp(state ? state : "", "23502") == 0 &&
        strcmp(table ? table : "", "events") == 0 && strcmp(column ? column : "", "seq") == 0) {
        /* W_EVENT_PUT's own check: the counter gave another seq. */
        log_error("store_seq_mismatch", "engine=postgres action=\"batch refused\"");
        *err = B_INTERNAL;
        return;
    }
    if (*err != B_RETRY) {
        char m[256];
        struct log_quoted qm;
        store_postgres__error_line(s->conn, m, sizeof m);
        log_error("store_write_failed", "engine=postgres sqlstate=%s error=%s", state ? state : "-",
                  log_quotes(&qm, m));
    }
}

static int pipe_drain(struct store_postgres *s, enum batch_error *err);

/* Run prepared statement `which` (after the answers of any events sent
 * ahead). The result, or NULL with *err set (the transaction is then
 * aborted, or the connection gone). */
static PGresult *run(struct store_postgres *s, int which, const struct params *p,
                     enum batch_error *err)
{
    if (pipe_drain(s, err) != 0)
        return NULL;
    char name[8];
    PGresult *r = stmt_replanned[which]
                      ? PQexecParams(s->conn, stmt_sql[which], p->n, NULL, p->v, p->len, p->fmt, 0)
                      : PQexecPrepared(s->conn, stmt_name(which, name), p->n, p->v, p->len,
                                       p->fmt, 0);
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
        return r;
    failed_result(s, r, err);
    PQclear(r);
    return NULL;
}

/* Run a statement whose rows do not matter: 0 or -1 (*err set). */
static int run_done(struct store_postgres *s, int which, const struct params *p,
                    enum batch_error *err)
{
    PGresult *r = run(s, which, p, err);
    PQclear(r);
    return r ? 0 : -1;
}

/* ---- what a batch reads first --------------------------------------------- */

/* A session the batch locked: its row as the batch has left it so far. */
struct pg_sess {
    char id[STORE_ID_LEN + 1];
    char owner[STORE_MAX_USER + 1];
    char model[sizeof ((struct store_req *)0)->model];
    int64_t last_seq;
    bool untitled;
};

/* A message of the batch already stored (or stored by the batch). */
struct pg_dup {
    char session[STORE_ID_LEN + 1];
    char *sender, *client_id; /* owned */
    int64_t seq, ts_ms;
};

/* What the batch's first two statements read, so that each message costs
 * one statement more, not three: the locked sessions and the dedup hits.
 * The writer thread's, for one run of a batch. */
struct pg_batch {
    struct pg_sess *sess;
    size_t nsess, capsess;
    struct pg_dup *dups;
    size_t ndups, capdups;
    bool dedup_read; /* the dedup look-up covered every request with a session and a client id */
    /* Events sent and not yet answered (pipeline mode is on while npend >
     * 0): the seq each must answer, in the order sent. */
    int64_t pend[PG_PIPE_MAX];
    unsigned npend;
    bool commit_sent; /* the COMMIT is queued: a lost answer is settled, not retried */
};

static void batch_free(struct pg_batch *b)
{
    for (size_t i = 0; i < b->ndups; i++) {
        free(b->dups[i].sender);
        free(b->dups[i].client_id);
    }
    free(b->dups);
    free(b->sess);
    memset(b, 0, sizeof *b);
}

static struct pg_sess *batch_sess(struct pg_batch *b, const char *id)
{
    for (size_t i = 0; b && i < b->nsess; i++)
        if (strcmp(b->sess[i].id, id) == 0)
            return &b->sess[i];
    return NULL;
}

static struct pg_sess *batch_add_sess(struct pg_batch *b, const char *id, const char *owner,
                                      int64_t last_seq, const char *model, bool untitled)
{
    if (!b || vec_grow(&b->sess, &b->capsess, b->nsess, 1, sizeof *b->sess) != 0)
        return NULL; /* asked of the server each time instead */
    struct pg_sess *x = &b->sess[b->nsess++];
    snprintf(x->id, sizeof x->id, "%s", id);
    snprintf(x->owner, sizeof x->owner, "%s", owner);
    snprintf(x->model, sizeof x->model, "%s", model);
    x->last_seq = last_seq;
    x->untitled = untitled;
    return x;
}

/* Remember a stored message; false when out of memory. */
static bool batch_add_dup(struct pg_batch *b, const char *session, const char *sender,
                          const char *client_id, int64_t seq, int64_t ts_ms)
{
    if (vec_grow(&b->dups, &b->capdups, b->ndups, 1, sizeof *b->dups) != 0)
        return false;
    struct pg_dup *d = &b->dups[b->ndups];
    snprintf(d->session, sizeof d->session, "%s", session);
    d->sender = strdup(sender);
    d->client_id = strdup(client_id);
    if (!d->sender || !d->client_id) {
        free(d->sender);
        free(d->client_id);
        return false;
    }
    d->seq = seq;
    d->ts_ms = ts_ms;
    b->ndups++;
    return true;
}

static const struct pg_dup *batch_dup(const struct pg_batch *b, const char *session,
                                      const char *sender, const char *client_id)
{
    for (size_t i = 0; i < b->ndups; i++)
        if (strcmp(b->dups[i].client_id, client_id) == 0 &&
            strcmp(b->dups[i].session, session) == 0 && strcmp(b->dups[i].sender, sender) == 0)
            return &b->dups[i];
    return NULL;
}

/* ---- events sent ahead ---------------------------------------------------- */

/* Send one event statement without waiting for its answer, expected to
 * give seq. 0, or -1 with *err set. */
static int pipe_send(struct store_postgres *s, const struct params *p, int64_t seq,
                     enum batch_error *err)
{
    struct pg_batch *b = s->batch;
    assert(b); /* events are written by batches only */
    if (b->npend == PG_PIPE_MAX && pipe_drain(s, err) != 0)
        return -1;
    if (b->npend == 0 && PQenterPipelineMode(s->conn) != 1) {
        *err = PQstatus(s->conn) != CONNECTION_OK ? B_LOST : B_INTERNAL;
        return -1;
    }
    char name[8];
    if (PQsendQueryPrepared(s->conn, stmt_name(W_EVENT_PUT, name), p->n, p->v, p->len, p->fmt,
                            0) != 1) {
        /* Nothing of this one was queued; what was is read by the drain
         * of the failure path. */
        *err = PQstatus(s->conn) != CONNECTION_OK ? B_LOST : B_INTERNAL;
        if (b->npend == 0)
            PQexitPipelineMode(s->conn);
        return -1;
    }
    b->pend[b->npend++] = seq;
    return 0;
}

/* One statement's answer in pipeline mode: its result when it succeeded
 * (to PQclear), else NULL with *e set by the first failure, or B_LOST
 * when the connection is gone. The server skips every statement after a
 * failed one up to the sync (PGRES_PIPELINE_ABORTED): NULL, *e kept. */
static PGresult *pipe_result(struct store_postgres *s, enum batch_error *e)
{
    PGresult *r = PQgetResult(s->conn);
    if (!r) {
        *e = B_LOST; /* no answer at all: the connection is gone */
        return NULL;
    }
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
        /* Each statement's answers end with a NULL. */
        PGresult *end = PQgetResult(s->conn);
        if (end) {
            PQclear(end); /* more than one answer: out of step */
            PQclear(r);
            *e = B_LOST;
            return NULL;
        }
        return r;
    }
    if (st != PGRES_PIPELINE_ABORTED && *e == B_OK)
        failed_result(s, r, e);
    PQclear(r);
    if (PQstatus(s->conn) != CONNECTION_OK) {
        *e = B_LOST;
        return NULL;
    }
    while ((r = PQgetResult(s->conn)) != NULL) {
        PQclear(r);
        if (PQstatus(s->conn) != CONNECTION_OK) {
            *e = B_LOST;
            break;
        }
    }
    return NULL;
}

/* After a pipeline's last answer: its sync, then out of pipeline mode.
 * B_LOST in *e when anything else came (out of step with the server: the
 * connection is started afresh). */
static void pipe_end(struct store_postgres *s, enum batch_error *e)
{
    if (*e == B_LOST)
        return;
    PGresult *r = PQgetResult(s->conn);
    if (PQresultStatus(r) != PGRES_PIPELINE_SYNC)
        *e = B_LOST;
    PQclear(r);
    if (*e != B_LOST && PQexitPipelineMode(s->conn) != 1)
        *e = B_LOST;
    if (*e == B_LOST && PQstatus(s->conn) == CONNECTION_OK)
        log_error("store_write_failed", "engine=postgres error=\"pipeline out of step\"");
}

/* Read the answers of the events sent ahead (each must give its seq) and
 * leave pipeline mode; with commit, send the COMMIT behind them first and
 * read its answer too (b->commit_sent is then set: a lost connection
 * leaves the outcome to settle_commit). 0, or -1 with *err set (the
 * first failure). Also the failure path's way out of pipeline mode: it
 * then reads and drops. */
static int pipe_finish(struct store_postgres *s, bool commit, enum batch_error *err)
{
    struct pg_batch *b = s->batch;
    if (!b || (b->npend == 0 && !commit))
        return 0;
    enum batch_error e = B_OK;
    unsigned n = b->npend;
    b->npend = 0;
    if (n == 0 && PQenterPipelineMode(s->conn) != 1) {
        *err = PQstatus(s->conn) != CONNECTION_OK ? B_LOST : B_INTERNAL;
        return -1;
    }
    assert(PQpipelineStatus(s->conn) != PQ_PIPELINE_OFF);
    if (commit) {
        if (PQsendQueryParams(s->conn, "COMMIT", 0, NULL, NULL, NULL, NULL, 0) == 1)
            b->commit_sent = true;
        else
            e = B_LOST; /* not queued: the server rolls back with the connection */
    }
    if (e == B_OK && PQpipelineSync(s->conn) != 1)
        e = B_LOST;
    for (unsigned i = 0; i < n && e != B_LOST; i++) {
        PGresult *r = pipe_result(s, &e);
        int64_t got = r && PQntuples(r) == 1 ? strtoll(PQgetvalue(r, 0, 0), NULL, 10) : -1;
        if (r && got != b->pend[i] && e == B_OK) {
            /* The statement's $12 refuses any other seq, so this does not
             * happen; were it to, the COMMIT behind may have stored the
             * batch, which is then answered as refused: nothing is acked
             * at a seq it was not sealed for, and retries find what was
             * stored. */
            log_error("store_seq_mismatch", "expected=%lld got=%lld", (long long)b->pend[i],
                      (long long)got);
            e = B_INTERNAL;
        }
        PQclear(r);
    }
    if (commit && e != B_LOST) {
        PGresult *r = pipe_result(s, &e);
        if (r && strcmp(PQcmdStatus(r), "COMMIT") != 0 && e == B_OK)
            e = B_SERVER; /* rolled back */
        PQclear(r);
    }
    pipe_end(s, &e);
    if (e == B_OK)
        return 0;
    if (*err == B_OK || e == B_LOST)
        *err = e;
    return -1;
}

static int pipe_drain(struct store_postgres *s, enum batch_error *err)
{
    return pipe_finish(s, false, err);
}

/* ---- the requests --------------------------------------------------------- */

/* Load r's session (locking its row) and check the requester may use it.
 * 1 found+allowed, 0 not found/not allowed, -1 error. */
static int load_session(struct store_postgres *s, struct store_req *r, int64_t *last_seq,
                        bool *untitled, enum batch_error *err)
{
    const struct pg_sess *x = batch_sess(s->batch, r->session_id);
    if (x) { /* locked by this batch: read then, kept up to date since */
        snprintf(r->owner, sizeof r->owner, "%s", x->owner);
        snprintf(r->model, sizeof r->model, "%s", x->model);
        *last_seq = x->last_seq;
        if (untitled)
            *untitled = x->untitled;
        return r->any_session || strcmp(r->owner, r->user) == 0 ? 1 : 0;
    }
    struct params p = {0};
    p_text(&p, r->session_id);
    PGresult *res = run(s, W_SESSION_GET, &p, err);
    if (!res)
        return -1;
    if (PQntuples(res) == 0) {
        PQclear(res);
        return 0;
    }
    snprintf(r->owner, sizeof r->owner, "%s", PQgetvalue(res, 0, 0));
    *last_seq = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
    snprintf(r->model, sizeof r->model, "%s", PQgetvalue(res, 0, 2)); /* "" when NULL */
    bool no_title = PQgetvalue(res, 0, 3)[0] == 't';
    if (untitled)
        *untitled = no_title;
    PQclear(res);
    /* Locked now (FOR UPDATE): the batch's later requests read it here. */
    batch_add_sess(s->batch, r->session_id, r->owner, *last_seq, r->model, no_title);
    return r->any_session || strcmp(r->owner, r->user) == 0 ? 1 : 0;
}

/* Store one event of r's session at the next seq (the session row's
 * counter) and bump the session. Sets r->seq and r->ts_ms. wait: 1 a user
 * message, 2 an answer, 0 a session event. 0 or -1. */
static int put_event(struct store_postgres *s, struct store_req *r, int64_t last_seq,
                     const char *type, const char *content, size_t len, int64_t now, int wait,
                     enum batch_error *err)
{
    int64_t seq = last_seq + 1; /* the row is locked: the counter gives exactly this */
    unsigned char *sealed = NULL;
    size_t sealed_len = 0;
    if (s->encrypt && len &&
        store_seal(s->key, r->session_id, seq, content, len, &sealed, &sealed_len) != 0) {
        struct log_quoted qs;
        log_error("store_seal_failed", "session=%s seq=%lld", log_quotes(&qs, r->session_id),
                  (long long)seq);
        *err = B_INTERNAL;
        return -1;
    }
    struct params p = {0};
    p_text(&p, r->session_id);
    p_text(&p, type);
    p_int(&p, now);
    p_int(&p, wait);
    p_text(&p, r->sender_type);
    p_text(&p, r->user);
    p_text(&p, r->sender_name);
    p_text(&p, r->client_id[0] && r->op == STORE_APPEND ? r->client_id : NULL);
    if (sealed)
        p_bytes(&p, sealed, sealed_len);
    else
        p_bytes(&p, content, len);
    p_text(&p, r->op == STORE_APPEND ? r->metadata : NULL);
    p_text(&p, sealed ? "true" : "false");
    p_int(&p, seq);
    /* Sent ahead (pipe_send): libpq has copied the parameters once the
     * statement is queued; its answer is checked by pipe_drain before the
     * COMMIT, and a failure there refuses the whole batch. */
    int rc = pipe_send(s, &p, seq, err);
    free(sealed);
    if (rc != 0)
        return -1;
    r->seq = seq;
    r->ts_ms = now;
    struct pg_sess *x = batch_sess(s->batch, r->session_id);
    if (x)
        x->last_seq = seq;
    return 0;
}

/* A title parameter (sealed with seq 0 when the store encrypts) and its
 * enc flag. The sealed copy, to free after the statement, in *sealed. */
static int p_title(struct store_postgres *s, struct params *p, const char *sid, const char *title,
                   size_t len, unsigned char **sealed)
{
    size_t n = 0;
    *sealed = NULL;
    if (s->encrypt && store_seal(s->key, sid, 0, title, len, sealed, &n) != 0)
        return -1;
    if (*sealed)
        p_bytes(p, *sealed, n);
    else
        p_bytes(p, title, len);
    p_text(p, *sealed ? "true" : "false");
    return 0;
}

/* The session's first user message gives it its title. */
static int set_first_title(struct store_postgres *s, struct store_req *r, enum batch_error *err)
{
    char title[TITLE_MAX_BYTES + 1];
    size_t tlen = title_from_text(r->content, r->content_len, title);
    if (!tlen)
        return 0;
    struct params p = {0};
    unsigned char *sealed;
    p_text(&p, r->session_id);
    if (p_title(s, &p, r->session_id, title, tlen, &sealed) != 0) {
        *err = B_INTERNAL;
        return -1;
    }
    int rc = run_done(s, W_TITLE_INIT, &p, err);
    free(sealed);
    struct pg_sess *x = batch_sess(s->batch, r->session_id);
    if (rc == 0 && x)
        x->untitled = false;
    return rc;
}

static int do_append(struct store_postgres *s, struct store_req *r, int64_t now,
                     enum batch_error *err)
{
    PGresult *res;
    struct params p;
    assert(s->batch);
    bool looked_up = s->batch->dedup_read && r->session_id[0]; /* by the batch's W_DEDUP */
    if (!r->session_id[0] && r->client_id[0]) {
        /* A retry of a message that created a session finds that session. */
        p = (struct params){0};
        p_text(&p, r->user);
        p_text(&p, r->client_id);
        if (!(res = run(s, W_SESSION_BY_ORIGIN, &p, err)))
            return -1;
        if (PQntuples(res))
            snprintf(r->session_id, sizeof r->session_id, "%s", PQgetvalue(res, 0, 0));
        PQclear(res);
    }
    if (!r->session_id[0]) {
        if (store_new_session_id(r->session_id) != 0) {
            log_error("store_random_failed", "what=\"session id\"");
            *err = B_INTERNAL;
            return -1;
        }
        p = (struct params){0};
        p_text(&p, r->session_id);
        p_text(&p, r->user);
        p_int(&p, now);
        p_text(&p, r->client_id[0] ? r->client_id : NULL);
        p_text(&p, r->sender_name);
        if (!(res = run(s, W_SESSION_INSERT, &p, err)))
            return -1;
        bool made = PQntuples(res) == 1;
        PQclear(res);
        if (made) {
            r->created = true;
        } else {
            /* Another node made it first (same user and client id). */
            r->session_id[0] = '\0';
            p = (struct params){0};
            p_text(&p, r->user);
            p_text(&p, r->client_id);
            if (!(res = run(s, W_SESSION_BY_ORIGIN, &p, err)))
                return -1;
            if (PQntuples(res))
                snprintf(r->session_id, sizeof r->session_id, "%s", PQgetvalue(res, 0, 0));
            PQclear(res);
        }
    }
    int64_t last_seq = 0;
    bool untitled = false;
    int rc = load_session(s, r, &last_seq, &untitled, err);
    if (rc <= 0) {
        r->status = STORE_NOT_FOUND;
        return rc;
    }
    if (r->client_id[0]) {
        const struct pg_dup *d = batch_dup(s->batch, r->session_id, r->user, r->client_id);
        if (d) {
            r->seq = d->seq;
            r->ts_ms = d->ts_ms;
            r->duplicate = true;
            r->created = false;
            r->status = STORE_OK;
            return 0;
        }
    }
    if (r->client_id[0] && !looked_up) {
        /* Not covered by the batch's look-up (a session found or made
         * just now): asked alone. */
        p = (struct params){0};
        p_text(&p, r->session_id);
        p_text(&p, r->user);
        p_text(&p, r->client_id);
        if (!(res = run(s, W_EVENT_BY_CLIENT, &p, err)))
            return -1;
        if (PQntuples(res)) {
            r->seq = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
            r->ts_ms = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
            r->duplicate = true;
            r->created = false;
            r->status = STORE_OK;
            PQclear(res);
            return 0;
        }
        PQclear(res);
    }
    const char *type = strcmp(r->sender_type, "admin") == 0 ? "admin_message"
                       : strcmp(r->sender_type, "ai") == 0  ? "ai_response"
                                                            : "user_message";
    bool user = strcmp(r->sender_type, "user") == 0;
    if (put_event(s, r, last_seq, type, r->content, r->content_len, now, user ? 1 : 2, err) != 0)
        return -1;
    /* A later request of the batch with the same id is its retry. */
    if (r->client_id[0] &&
        !batch_add_dup(s->batch, r->session_id, r->user, r->client_id, r->seq, r->ts_ms)) {
        *err = B_INTERNAL;
        return -1;
    }
    if (user && untitled && set_first_title(s, r, err) != 0)
        return -1;
    r->status = STORE_OK;
    return 0;
}

/* The session's title into r->arg (a help request tells it to the
 * webhook); "" when none or not readable. 0 or -1. */
static int fetch_title(struct store_postgres *s, struct store_req *r, enum batch_error *err)
{
    struct params p = {0};
    p_text(&p, r->session_id);
    PGresult *res = run(s, W_TITLE_GET, &p, err);
    if (!res)
        return -1;
    char *t = NULL;
    if (PQntuples(res) && !PQgetisnull(res, 0, 0)) {
        size_t n = 0, len;
        char *raw = store_postgres__unhex(PQgetvalue(res, 0, 0), &n);
        if (raw && n && PQgetvalue(res, 0, 1)[0] == 't') {
            if (!s->encrypt ||
                store_unseal(s->key, r->session_id, 0, (unsigned char *)raw, n, &t, &len) != 0)
                t = NULL; /* not readable: the webhook goes without it */
            free(raw);
        } else {
            t = raw;
        }
    }
    PQclear(res);
    free(r->arg);
    r->arg = t ? t : strdup("");
    return 0;
}

/* The ops that change the session without a message; the session is
 * loaded and locked (its last seq in last_seq). */
static int do_session_op(struct store_postgres *s, struct store_req *r, int64_t last_seq,
                         int64_t now, enum batch_error *err)
{
    struct params p = {0};
    PGresult *res;
    switch (r->op) {
    case STORE_HELP:
    case STORE_RESOLVE:
        /* Only a change is stored: asking again while asked, or resolving
         * what is not open, is a duplicate and writes nothing. */
        p_text(&p, r->session_id);
        if (!(res = run(s, r->op == STORE_HELP ? W_HELP : W_RESOLVE, &p, err)))
            return -1;
        r->duplicate = strcmp(PQcmdTuples(res), "0") == 0;
        PQclear(res);
        if (r->duplicate)
            return 0;
        if (r->op == STORE_HELP && fetch_title(s, r, err) != 0)
            return -1;
        return put_event(s, r, last_seq, r->op == STORE_HELP ? "help_request" : "help_resolved",
                         NULL, 0, now, 0, err);
    case STORE_EVENT:
        return put_event(s, r, last_seq, r->event_type, NULL, 0, now, 0, err);
    case STORE_MODEL:
        p_text(&p, r->session_id);
        p_text(&p, r->arg ? r->arg : "");
        if (run_done(s, W_MODEL, &p, err) != 0)
            return -1;
        /* later requests of the batch read the session from the batch */
        struct pg_sess *x = batch_sess(s->batch, r->session_id);
        if (x)
            snprintf(x->model, sizeof x->model, "%s", r->arg ? r->arg : "");
        return 0;
    case STORE_READ:
        p_text(&p, r->session_id);
        p_text(&p, r->user);
        p_int(&p, r->num < last_seq ? r->num : last_seq);
        return run_done(s, W_READ_PUT, &p, err);
    case STORE_RENAME: {
        unsigned char *sealed;
        const char *t = r->arg ? r->arg : "";
        p_text(&p, r->session_id);
        if (p_title(s, &p, r->session_id, t, strlen(t), &sealed) != 0) {
            *err = B_INTERNAL;
            return -1;
        }
        p_int(&p, now);
        int rc = run_done(s, W_RENAME, &p, err);
        free(sealed);
        return rc;
    }
    case STORE_SHARE:
        p_text(&p, r->arg ? r->arg : "");
        p_text(&p, r->session_id);
        p_int(&p, r->num);
        return run_done(s, W_SHARE_PUT, &p, err);
    case STORE_UNSHARE:
        p_text(&p, r->session_id);
        return run_done(s, W_SHARE_REVOKE, &p, err);
    default:
        return 0;
    }
}

static int do_request(struct store_postgres *s, struct store_req *r, int64_t now,
                      enum batch_error *err)
{
    r->status = STORE_OK;
    r->ts_ms = now;
    if (r->op == STORE_APPEND)
        return do_append(s, r, now, err);
    int64_t last_seq = 0;
    int rc = load_session(s, r, &last_seq, NULL, err);
    if (rc <= 0) {
        r->status = STORE_NOT_FOUND;
        return rc;
    }
    r->seq = last_seq;
    return do_session_op(s, r, last_seq, now, err);
}

/* An array literal of v[0..n): every element quoted, '"' and '\\'
 * escaped. NULL when out of memory. */
static char *text_array(const char *const *v, size_t n)
{
    size_t cap = 3, len = 0;
    for (size_t i = 0; i < n; i++)
        cap += 2 * strlen(v[i]) + 3;
    char *a = malloc(cap);
    if (!a)
        return NULL;
    a[len++] = '{';
    for (size_t i = 0; i < n; i++) {
        if (i)
            a[len++] = ',';
        a[len++] = '"';
        for (const char *c = v[i]; *c; c++) {
            if (*c == '"' || *c == '\\')
                a[len++] = '\\';
            a[len++] = *c;
        }
        a[len++] = '"';
    }
    a[len++] = '}';
    a[len] = '\0';
    return a;
}

/* Queue statement `which` in pipeline mode: 1, or 0 when libpq could not. */
static int pipe_queue(struct store_postgres *s, int which, const struct params *p)
{
    char name[8];
    return stmt_replanned[which]
               ? PQsendQueryParams(s->conn, stmt_sql[which], p->n, NULL, p->v, p->len, p->fmt, 0)
               : PQsendQueryPrepared(s->conn, stmt_name(which, name), p->n, p->v, p->len, p->fmt,
                                     0);
}

/* Open the batch's transaction (its id into xid), lock the rows of every
 * existing session the batch names, in id order (see the DESIGN note of
 * postgres.c), keeping what the requests need of them, and look up which
 * of the batch's messages are stored already: four statements sent at
 * once, one wait for the server. The look-up runs after the lock, so it
 * sees any message another node stored in these sessions before. 0 or
 * -1. */
static int begin_batch(struct store_postgres *s, struct store_req **reqs, size_t n, char xid[32],
                       enum batch_error *err)
{
    const char **ids = malloc(3 * n * sizeof *ids + 1);
    if (!ids) {
        *err = B_INTERNAL;
        return -1;
    }
    const char **users = ids + n, **cids = ids + 2 * n;
    size_t nids = 0, nkeys = 0;
    for (size_t i = 0; i < n; i++)
        if (reqs[i]->session_id[0])
            ids[nids++] = reqs[i]->session_id;
    char *a = nids ? text_array(ids, nids) : NULL;
    for (size_t i = 0; i < n; i++) {
        const struct store_req *r = reqs[i];
        if (r->op == STORE_APPEND && r->session_id[0] && r->client_id[0]) {
            ids[nkeys] = r->session_id;
            users[nkeys] = r->user;
            cids[nkeys++] = r->client_id;
        }
    }
    char *k[3] = {NULL, NULL, NULL};
    if (nkeys) {
        k[0] = text_array(ids, nkeys);
        k[1] = text_array(users, nkeys);
        k[2] = text_array(cids, nkeys);
    }
    free(ids);
    enum batch_error e = B_OK;
    if ((nids && !a) || (nkeys && (!k[0] || !k[1] || !k[2]))) {
        e = B_INTERNAL;
        goto out;
    }
    if (PQenterPipelineMode(s->conn) != 1) {
        e = PQstatus(s->conn) != CONNECTION_OK ? B_LOST : B_INTERNAL;
        goto out;
    }
    struct params lock = {0}, keys = {0};
    p_text(&lock, a);
    for (int i = 0; i < 3; i++)
        p_text(&keys, k[i]);
    if (PQsendQueryParams(s->conn, "BEGIN", 0, NULL, NULL, NULL, NULL, 0) != 1 ||
        PQsendQueryParams(s->conn, "SELECT pg_current_xact_id()", 0, NULL, NULL, NULL, NULL, 0) !=
            1 ||
        (nids && pipe_queue(s, W_LOCK, &lock) != 1) ||
        (nkeys && pipe_queue(s, W_DEDUP, &keys) != 1) || PQpipelineSync(s->conn) != 1) {
        e = B_LOST; /* libpq refuses only when the connection is gone */
        goto out;
    }
    PGresult *r = pipe_result(s, &e); /* BEGIN */
    PQclear(r);
    if (e != B_LOST && (r = pipe_result(s, &e)) != NULL) {
        if (PQntuples(r) == 1)
            snprintf(xid, 32, "%s", PQgetvalue(r, 0, 0));
        PQclear(r);
    }
    if (nids && e != B_LOST && (r = pipe_result(s, &e)) != NULL) {
        for (int i = 0; i < PQntuples(r); i++)
            batch_add_sess(s->batch, PQgetvalue(r, i, 0), PQgetvalue(r, i, 1),
                           strtoll(PQgetvalue(r, i, 2), NULL, 10), PQgetvalue(r, i, 3),
                           PQgetvalue(r, i, 4)[0] == 't');
        PQclear(r);
    }
    if (nkeys && e != B_LOST && (r = pipe_result(s, &e)) != NULL) {
        for (int i = 0; i < PQntuples(r) && e == B_OK; i++)
            if (!batch_add_dup(s->batch, PQgetvalue(r, i, 0), PQgetvalue(r, i, 1),
                               PQgetvalue(r, i, 2), strtoll(PQgetvalue(r, i, 3), NULL, 10),
                               strtoll(PQgetvalue(r, i, 4), NULL, 10)))
                e = B_INTERNAL;
        PQclear(r);
    }
    pipe_end(s, &e);
    if (e == B_OK && !xid[0])
        e = B_SERVER;
out:
    free(a);
    for (int i = 0; i < 3; i++)
        free(k[i]);
    s->batch->dedup_read = e == B_OK;
    if (e == B_OK)
        return 0;
    *err = e;
    return -1;
}

/* Answer every request of a batch that was not (or may not have been)
 * stored. */
static void batch_refused(struct store_req **reqs, size_t n, enum store_status status)
{
    for (size_t j = 0; j < n; j++) {
        reqs[j]->status = status;
        reqs[j]->created = false;
        reqs[j]->duplicate = false;
        reqs[j]->seq = 0;
    }
}

/* The tests' fault hook (store_fail_next_commits). */
static bool injected_commit_failure(struct store_postgres *s)
{
    unsigned left = atomic_load_explicit(&s->fail_commits, memory_order_relaxed);
    while (left > 0)
        if (atomic_compare_exchange_weak(&s->fail_commits, &left, left - 1)) {
            log_info("store_fault_injected", "at=commit left=%u", left - 1);
            return true;
        }
    return false;
}

/* A simple command on the write connection: 0, or -1 (error logged by the
 * caller's path). */
static int simple(struct store_postgres *s, const char *sql)
{
    PGresult *r = PQexec(s->conn, sql);
    int rc = PQresultStatus(r) == PGRES_COMMAND_OK ? 0 : -1;
    PQclear(r);
    return rc;
}

/* pg_xact_status said the batch's transaction committed: check it on an
 * event the batch wrote. After a crash the server may hand an id again
 * that a transaction had used without its WAL reaching the disk (nothing
 * of that transaction survives), so "committed" may be another node's
 * transaction under the same id. 1 the batch's first new event is there
 * (or it wrote none to check), 0 it is not, -1 the question failed. */
static int batch_is_stored(struct store_postgres *s, struct store_req **reqs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const struct store_req *r = reqs[i];
        if (r->op != STORE_APPEND || r->status != STORE_OK || r->duplicate || r->seq <= 0)
            continue;
        struct params p = {0};
        p_text(&p, r->session_id);
        p_int(&p, r->seq);
        p_text(&p, r->user);
        p_int(&p, r->ts_ms);
        PGresult *res = PQexecParams(s->conn,
                                     "SELECT 1 FROM events WHERE session_id = $1 AND seq = $2 "
                                     "AND sender_id = $3 AND created_at = $4",
                                     p.n, NULL, p.v, p.len, p.fmt, 0);
        int found = PQresultStatus(res) == PGRES_TUPLES_OK ? PQntuples(res) == 1 : -1;
        PQclear(res);
        return found;
    }
    return 1;
}

/* The COMMIT's answer was lost with the connection: reconnect and ask the
 * server what became of transaction xid (and, when it says committed,
 * whether the batch's first new event is there: batch_is_stored).
 * STORE_OK (committed), STORE_UNAVAILABLE (rolled back) or STORE_UNKNOWN
 * (could not tell in PG_OUTCOME_WAIT_MS). */
static enum store_status settle_commit(struct store_postgres *s, const char *xid,
                                       struct store_req **reqs, size_t n)
{
    int64_t deadline = store__now_us() + (int64_t)PG_OUTCOME_WAIT_MS * 1000;
    drop_conn(s, "connection lost during COMMIT");
    for (;;) {
        if (s->conn || writer_connect(s)) {
            struct params p = {0};
            p_text(&p, xid);
            PGresult *r = PQexecParams(s->conn, "SELECT pg_xact_status($1::xid8)", 1, NULL, p.v,
                                       p.len, p.fmt, 0);
            char outcome[32] = "";
            if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 && !PQgetisnull(r, 0, 0))
                snprintf(outcome, sizeof outcome, "%s", PQgetvalue(r, 0, 0));
            bool conn_ok = PQstatus(s->conn) == CONNECTION_OK;
            PQclear(r);
            /* "in progress": the server is still finishing it; ask again. */
            bool settled = strcmp(outcome, "committed") == 0 || strcmp(outcome, "aborted") == 0;
            if (conn_ok && strcmp(outcome, "committed") == 0) {
                int stored = batch_is_stored(s, reqs, n);
                if (stored == 0) {
                    log_warn("store_commit_settled", "engine=postgres xid=%s "
                             "outcome=\"committed under a reused id: this batch is not stored\"",
                             xid);
                    return STORE_UNAVAILABLE;
                }
                if (stored < 0) {
                    conn_ok = PQstatus(s->conn) == CONNECTION_OK;
                    settled = false; /* ask again */
                    outcome[0] = '\0';
                    if (conn_ok)
                        strcpy(outcome, "in progress");
                }
            }
            if (settled || (conn_ok && strcmp(outcome, "in progress") != 0)) {
                /* no answer on a good connection: too old to tell */
                enum store_status st = strcmp(outcome, "committed") == 0 ? STORE_OK
                                       : strcmp(outcome, "aborted") == 0 ? STORE_UNAVAILABLE
                                                                         : STORE_UNKNOWN;
                log_warn("store_commit_settled", "engine=postgres xid=%s outcome=%s", xid,
                         outcome[0] ? outcome : "unknown");
                return st;
            }
            if (!conn_ok)
                drop_conn(s, "connection lost");
        }
        if (store__now_us() >= deadline)
            break;
        sleep_ms(100);
    }
    log_error("store_commit_unknown",
              "engine=postgres xid=%s action=\"answered unknown; "
              "clients retry with the same id\"",
              xid);
    return STORE_UNKNOWN;
}

/* Run the batch once (try_batch). */
static enum batch_error try_batch_once(struct store_postgres *s, struct store_req **reqs, size_t n,
                                       int64_t now, enum store_status *status)
{
    enum batch_error err = B_OK;
    char xid[32] = "";
    if (begin_batch(s, reqs, n, xid, &err) != 0)
        goto failed;
    for (size_t i = 0; i < n; i++)
        if (do_request(s, reqs[i], now, &err) != 0)
            goto failed;
    if (injected_commit_failure(s)) {
        /* As if the server refused the COMMIT: rolled back, known. */
        if (pipe_drain(s, &err) == 0) {
            simple(s, "ROLLBACK");
            err = B_SERVER;
        }
        goto failed;
    }
    /* The COMMIT goes behind the events still unanswered: one wait. */
    if (pipe_finish(s, true, &err) == 0) {
        *status = STORE_OK;
        return B_OK;
    }
    if (err == B_LOST && s->batch->commit_sent) {
        /* Sent, but no answer: it may or may not have committed. */
        *status = settle_commit(s, xid, reqs, n);
        return B_OK;
    }
failed:
    /* Out of pipeline mode (the answers are dropped: err stands) before
     * ROLLBACK, which libpq refuses in it. */
    if (err != B_LOST && s->batch->npend) {
        enum batch_error ignored = B_OK;
        if (pipe_drain(s, &ignored) != 0 && ignored == B_LOST)
            err = B_LOST;
    }
    if (err == B_LOST) {
        drop_conn(s, "connection lost");
    } else if (s->conn && PQtransactionStatus(s->conn) != PQTRANS_IDLE && simple(s, "ROLLBACK")) {
        drop_conn(s, "ROLLBACK failed");
    }
    return err;
}

/* Run the batch once. B_OK with *status the batch's answer (STORE_OK:
 * committed, each request's own status stands), or why it stopped. */
static enum batch_error try_batch(struct store_postgres *s, struct store_req **reqs, size_t n,
                                  int64_t now, enum store_status *status)
{
    struct pg_batch b = {0};
    s->batch = &b;
    enum batch_error err = try_batch_once(s, reqs, n, now, status);
    s->batch = NULL;
    batch_free(&b);
    return err;
}

static void run_batch(struct store_postgres *s, struct store_req **reqs, size_t n)
{
    struct log_quoted qd;
    int64_t t0 = store__now_us();
    int64_t now = clock_wall_ms();
    enum store_status status = STORE_UNAVAILABLE;
    bool made[STORE_BATCH_MAX];
    for (size_t i = 0; i < n; i++)
        made[i] = !reqs[i]->session_id[0];
    enum batch_error err = B_LOST;
    for (int attempt = 0; attempt <= PG_BATCH_RETRIES; attempt++) {
        if (!s->conn && (store__now_us() < s->retry_at_us || !writer_connect(s))) {
            err = B_LOST; /* unreachable: answered at once, nothing written */
            break;
        }
        for (size_t i = 0; i < n; i++) {
            /* A batch run again starts from the requests as submitted. */
            if (made[i])
                reqs[i]->session_id[0] = '\0';
            reqs[i]->created = reqs[i]->duplicate = false;
            reqs[i]->seq = 0;
        }
        err = try_batch(s, reqs, n, now, &status);
        /* Lost before COMMIT: nothing was written. A connection that died
         * while idle (the server restarted) is only found out by the next
         * batch: try a new one at once rather than refuse the batch. */
        if (err == B_LOST && attempt == 0 && writer_connect(s)) {
            log_info("store_batch_retried", "engine=postgres reason=reconnected batch=%zu", n);
            continue;
        }
        if (err != B_RETRY)
            break;
        log_info("store_batch_retried", "engine=postgres attempt=%d batch=%zu", attempt + 1, n);
    }
    if (err == B_OK && status == STORE_OK) {
        /* Only a batch that wrote proves the server takes writes again. */
        bool wrote = false;
        for (size_t j = 0; j < n && !wrote; j++)
            wrote =
                reqs[j]->status == STORE_OK &&
                ((reqs[j]->op == STORE_APPEND && !reqs[j]->duplicate) ||
                 (reqs[j]->op == STORE_HELP && !reqs[j]->duplicate) || reqs[j]->op == STORE_MODEL);
        if (wrote && !atomic_exchange(&s->writes_ok, true))
            log_info("store_healthy", "engine=postgres dsn=%s", log_quotes(&qd, s->redacted));
        store__count_commit(&s->counters, store__now_us() - t0, n);
    } else {
        if (err != B_OK)
            status = STORE_UNAVAILABLE;
        batch_refused(reqs, n, status);
        if (err == B_SERVER || err == B_INTERNAL || err == B_RETRY) {
            if (atomic_exchange(&s->writes_ok, false))
                log_warn("store_unhealthy", "engine=postgres dsn=%s reason=\"write refused\"",
                         log_quotes(&qd, s->redacted));
        }
        store__count_failure(&s->counters);
    }
    s->on_batch(s->arg, reqs, n);
}

/* Move up to max - n queued requests into batch. */
/* Nothing to write for a while: keep the connection known good, or try
 * again to get one, so that health follows the server. */
static void idle_check(struct store_postgres *s)
{
    int64_t t = store__now_us();
    if (!s->conn) {
        if (t >= s->retry_at_us)
            writer_connect(s);
    } else if (t - s->idle_since_us >= (int64_t)PG_PROBE_MS * 1000) {
        if (simple(s, "") != 0 && PQstatus(s->conn) != CONNECTION_OK)
            drop_conn(s, "connection lost");
        s->idle_since_us = store__now_us();
    }
}

void store_postgres__writer_main(void *arg)
{
    struct store_postgres *s = arg;
    struct store_req *batch[STORE_BATCH_MAX];
    int64_t last_end_us = 0;
    s->idle_since_us = store__now_us();
    writer_connect(s);
    for (;;) {
        int64_t wait_ms = PG_PROBE_MS;
        if (!s->conn) {
            wait_ms = (s->retry_at_us - store__now_us()) / 1000;
            wait_ms = wait_ms < 10 ? 10 : wait_ms;
        }
        int rc = fifo_wait(&s->queue, wait_ms * 1000000);
        if (rc == -ESHUTDOWN)
            break;
        if (rc == -ETIMEDOUT) {
            idle_check(s);
            continue;
        }
        size_t n = store__take_batch(&s->queue, batch, last_end_us); /* group commit */
        assert(n > 0);
        run_batch(s, batch, n);
        last_end_us = s->idle_since_us = store__now_us();
    }
    sbuf_thread_cleanup(); /* on_batch may have dropped frames here */
}

int store_postgres__submit(void *e, struct store_req *r)
{
    struct store_postgres *s = e;
    return store__push(&s->queue, r);
}

bool store_postgres__healthy(void *e)
{
    struct store_postgres *s = e;
    return atomic_load(&s->connected) && atomic_load(&s->writes_ok);
}

bool store_postgres__failed(void *e)
{
    (void)e;
    return false; /* never for good: the server holds durability (see postgres.c) */
}

void store_postgres__stats(void *e, struct store_stats *out)
{
    struct store_postgres *s = e;
    store__counters_read(&s->counters, out);
}

void store_postgres__fail_next_commits(void *e, unsigned n)
{
    struct store_postgres *s = e;
    atomic_store(&s->fail_commits, n);
}
