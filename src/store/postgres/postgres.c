/*
 * DESIGN: the PostgreSQL engine ("postgres"), for several chatd nodes on
 * one database. It keeps store.h's guarantees G1-G8 with the same results
 * as the SQLite engine; what differs is how.
 *
 * Threads: the writer (writer.c) owns one connection and runs every write
 * in batches, one transaction each (group commit, G1), and hands a batch to
 * on_batch only after its COMMIT answered (G2). Readers (read.c, on the
 * libuv thread pool) borrow connections of their own from a small locked
 * pool; READ COMMITTED shows them only committed rows and they never wait
 * for the writer (G8). internal.h lists the locks.
 *
 * Seq (G3) with writers on other nodes: the session row is the counter.
 * A batch first locks the rows of the sessions it touches, in id order
 * (SELECT ... ORDER BY id FOR UPDATE: two nodes' batches then never lock
 * in opposite orders, so they queue instead of deadlocking), and each
 * event takes its seq from `UPDATE sessions SET last_seq = last_seq + 1
 * ... RETURNING last_seq` inside the statement that inserts it. The row
 * lock is held to COMMIT, so a second node's batch on the same session
 * waits and then reads the first one's committed last_seq: seqs are
 * gapless and in commit order across nodes, and a rolled-back batch
 * consumes none (G4). Dedup (G5) reads the unique index on (session,
 * sender, client id) under that lock, so a retry that reaches another node
 * finds the first copy once it committed.
 *
 * Commits of unknown outcome (G7): the writer records the transaction id
 * (pg_current_xact_id()) at BEGIN. A connection lost before COMMIT was
 * sent leaves nothing (the server rolls back): STORE_UNAVAILABLE. A
 * connection lost once COMMIT was sent (it goes behind the batch's last
 * events, unanswered yet: writer.c) leaves the outcome unknown;
 * the writer then reconnects (for up to PG_OUTCOME_WAIT_MS) and asks
 * pg_xact_status(): "committed" answers the batch with its results as
 * computed, "aborted" answers STORE_UNAVAILABLE, and when the server stays
 * unreachable, or the answer is still "in progress" or gone, the batch is
 * answered STORE_UNKNOWN. Unlike SQLite's failed fsync this is not
 * fail-stop: the server, not chatd, holds durability, so the store never
 * fails for good (store_failed stays false) and goes on once the server is
 * back; nothing is ever acknowledged that is not known committed.
 *
 * Reconnection: while the server is unreachable the writer answers every
 * batch STORE_UNAVAILABLE at once and tries to connect again with
 * exponential back-off (PG_BACKOFF_MIN_MS to PG_BACKOFF_MAX_MS); an idle
 * writer checks its connection every PG_PROBE_MS, so store_healthy (and
 * /readyz) turns false while the server is down and true again when it is
 * back, without waiting for a write. Read connections found broken are
 * dropped and the read is tried once more on a new one.
 *
 * Schema: versioned migrations, run at open inside one transaction that
 * first takes pg_advisory_xact_lock(MIGRATION_LOCK): two nodes starting at
 * once migrate one after the other, and the second finds the work done.
 * The version lives in the one-row table chatd_schema.
 *
 * The connection string may hold a password: it is never logged, and the
 * messages show store_postgres_redact's form of it.
 */
#include "store/postgres/postgres.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/postgres/internal.h"
#include "util/log.h"

/* The key of the advisory lock held while migrating ("chatd" in ASCII). */
#define MIGRATION_LOCK "427016454244"

static const char *const migrations[] = {
    /* 0 -> 1: what SQLite's schema version 2 holds */
    "CREATE TABLE sessions ("
    "  id text PRIMARY KEY,"
    "  owner text NOT NULL,"
    "  created_at bigint NOT NULL,"
    "  updated_at bigint NOT NULL,"
    "  last_seq bigint NOT NULL DEFAULT 0," /* the seq counter (see DESIGN) */
    "  help boolean NOT NULL DEFAULT false,"
    "  model text,"
    "  origin_client_id text,"
    "  title bytea," /* UTF-8 text, or sealed (title_enc) */
    "  title_enc boolean NOT NULL DEFAULT false,"
    "  title_set boolean NOT NULL DEFAULT false,"
    "  owner_name text,"
    "  waiting_since bigint"
    ");"
    "CREATE INDEX sessions_by_owner ON sessions(owner, updated_at);"
    "CREATE INDEX sessions_by_updated ON sessions(updated_at);"
    "CREATE UNIQUE INDEX sessions_by_origin ON sessions(owner, origin_client_id)"
    "  WHERE origin_client_id IS NOT NULL;"
    "CREATE TABLE events ("
    "  session_id text NOT NULL REFERENCES sessions(id),"
    "  seq bigint NOT NULL,"
    "  type text NOT NULL,"
    "  sender_type text NOT NULL,"
    "  sender_id text NOT NULL,"
    "  sender_name text,"
    "  client_id text,"
    "  content bytea NOT NULL,"
    "  metadata text," /* the client's JSON text, byte for byte */
    "  enc boolean NOT NULL DEFAULT false,"
    "  created_at bigint NOT NULL,"
    "  PRIMARY KEY (session_id, seq)"
    ");"
    "CREATE UNIQUE INDEX events_by_client ON events(session_id, sender_id, client_id)"
    "  WHERE client_id IS NOT NULL;"
    "CREATE INDEX events_by_type ON events(type, session_id);"
    "CREATE TABLE reads ("
    "  session_id text NOT NULL,"
    "  reader text NOT NULL,"
    "  seq bigint NOT NULL,"
    "  PRIMARY KEY (session_id, reader)"
    ");"
    "CREATE TABLE shares ("
    "  token text PRIMARY KEY,"
    "  session_id text NOT NULL,"
    "  expires_at bigint NOT NULL"
    ");"
    "CREATE INDEX shares_by_session ON shares(session_id);"
    /* The summary's token counts: a number field of a metadata text that
     * may not be JSON at all (SQLite's json_valid + json_extract). */
    "CREATE FUNCTION chatd_json_number(doc text, field text) RETURNS numeric"
    "  LANGUAGE plpgsql IMMUTABLE AS $$"
    "  BEGIN"
    "    IF jsonb_typeof(doc::jsonb -> field) = 'number' THEN"
    "      RETURN (doc::jsonb ->> field)::numeric;"
    "    END IF;"
    "    RETURN NULL;"
    "  EXCEPTION WHEN others THEN"
    "    RETURN NULL;"
    "  END $$;",
    /* 1 -> 2: every message updates its session row (the seq counter,
     * updated_at, waiting_since). With updated_at in two indexes each
     * update was a new row version with new entries in every index of the
     * table, and a busy session's look-ups by id went through the dead
     * ones until a vacuum: at 6,250 messages a second over 100 sessions
     * a batch's commit went from 1.4 to 35 ms in 8 s. With no index on a
     * column a message changes, the update is heap-only (HOT): no index
     * entry, the old version pruned within its page, for which pages keep
     * room (fillfactor). No query used sessions_by_updated (the admins'
     * lists sort by help and wait first); an owner's list now sorts the
     * owner's sessions itself. */
    "DROP INDEX sessions_by_updated;"
    "DROP INDEX sessions_by_owner;"
    "CREATE INDEX sessions_by_owner ON sessions(owner);"
    "ALTER TABLE sessions SET (fillfactor = 70);",
};
#define SCHEMA_VERSION ((int)(sizeof migrations / sizeof migrations[0]))

void store_postgres__error_line(PGconn *c, char *out, size_t len)
{
    const char *m = c ? PQerrorMessage(c) : "out of memory";
    size_t n = strcspn(m, "\n");
    snprintf(out, len, "%.*s", (int)n, m);
}

static void no_notices(void *arg, const char *msg)
{
    (void)arg;
    (void)msg;
}

PGconn *store_postgres__connect(struct store_postgres *s, char *err, size_t errlen)
{
    /* Defaults first: what the connection string says wins (the expanded
     * dbname's settings override earlier keywords). */
    static const char *const defaults[][2] = {
        {"connect_timeout", "5"},     {"application_name", "chatd"},
        {"keepalives_idle", "15"}, /* a server gone silent is found out in about 30 s */
        {"keepalives_interval", "5"}, {"keepalives_count", "3"},
        /* Keepalives wait for an idle line: a round trip whose bytes go
         * unanswered (a partition mid-write) is given up after 30 s too,
         * not after the kernel's many minutes of retransmissions. */
        {"tcp_user_timeout", "30000"},
        {"client_encoding", "UTF8"},
    };
    enum { NDEF = sizeof defaults / sizeof defaults[0] };
    const char *keys[NDEF + 2], *vals[NDEF + 2];
    for (int i = 0; i < NDEF; i++) {
        keys[i] = defaults[i][0];
        vals[i] = defaults[i][1];
    }
    keys[NDEF] = "dbname";
    vals[NDEF] = s->dsn;
    keys[NDEF + 1] = vals[NDEF + 1] = NULL;
    PGconn *c = PQconnectdbParams(keys, vals, 1);
    if (!c || PQstatus(c) != CONNECTION_OK) {
        store_postgres__error_line(c, err, errlen);
        PQfinish(c);
        return NULL;
    }
    PQsetNoticeProcessor(c, no_notices, NULL);
    /* The reads decode bytea in hex output, whatever the server's default
     * or the DSN's options say. chatd never waits between the statements
     * of a transaction: one left idle PG_IDLE_TX_MS is a node cut off
     * mid-batch, whose row locks would stall every node's writes to those
     * sessions until the server noticed the connection gone (its
     * keepalives: hours). The server ends it; the node, back, finds its
     * connection gone and runs the batch again on a new one (cut during
     * COMMIT: it asks pg_xact_status, writer.c). */
    char sql[128];
    snprintf(sql, sizeof sql,
             "SET bytea_output = 'hex'; SET idle_in_transaction_session_timeout = %d",
             PG_IDLE_TX_MS);
    PGresult *r = PQexec(c, sql);
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (!ok) {
        store_postgres__error_line(c, err, errlen);
        PQfinish(c);
        return NULL;
    }
    return c;
}

void store_postgres_redact(const char *dsn, char *out, size_t len)
{
    char *msg = NULL;
    PQconninfoOption *opts = PQconninfoParse(dsn, &msg);
    PQfreemem(msg);
    if (!opts) {
        snprintf(out, len, "***");
        return;
    }
    size_t n = 0;
    out[0] = '\0';
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (!o->val || n >= len)
            continue;
        bool secret = strcmp(o->keyword, "password") == 0;
        int w = snprintf(out + n, len - n, "%s%s=%s", n ? " " : "", o->keyword,
                         secret ? "***" : o->val);
        n = w < 0 ? len : n + (size_t)w;
    }
    PQconninfoFree(opts);
}

/* Run one command; 0, or -1 with the first line of the error in err. */
static int exec(PGconn *c, const char *sql, char *err, size_t errlen)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    int rc = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK ? 0 : -1;
    if (rc != 0) {
        const char *m = r ? PQresultErrorMessage(r) : "";
        if (!*m)
            m = PQerrorMessage(c);
        snprintf(err, errlen, "%.*s", (int)strcspn(m, "\n"), m);
    }
    PQclear(r);
    return rc;
}

/* Bring the schema to SCHEMA_VERSION under the migration lock: one
 * transaction, so a node that dies half-way leaves the old version. */
static int migrate(PGconn *c, char *err, size_t errlen)
{
    if (exec(c, "BEGIN", err, errlen) != 0)
        return -EIO;
    if (exec(c, "SELECT pg_advisory_xact_lock(" MIGRATION_LOCK ")", err, errlen) != 0 ||
        exec(c, "CREATE TABLE IF NOT EXISTS chatd_schema (version integer NOT NULL)", err,
             errlen) != 0)
        goto rollback;
    PGresult *r = PQexec(c, "SELECT version FROM chatd_schema");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        store_postgres__error_line(c, err, errlen);
        PQclear(r);
        goto rollback;
    }
    int version = PQntuples(r) ? atoi(PQgetvalue(r, 0, 0)) : -1;
    PQclear(r);
    if (version < 0) {
        if (exec(c, "INSERT INTO chatd_schema (version) VALUES (0)", err, errlen) != 0)
            goto rollback;
        version = 0;
    }
    if (version > SCHEMA_VERSION) {
        snprintf(err, errlen, "database schema version %d is newer than this chatd (%d)", version,
                 SCHEMA_VERSION);
        exec(c, "ROLLBACK", err + strlen(err), 0);
        return -EINVAL;
    }
    for (int v = version; v < SCHEMA_VERSION; v++) {
        char sql[64];
        snprintf(sql, sizeof sql, "UPDATE chatd_schema SET version = %d", v + 1);
        if (exec(c, migrations[v], err, errlen) != 0 || exec(c, sql, err, errlen) != 0)
            goto rollback;
    }
    if (exec(c, "COMMIT", err, errlen) != 0)
        return -EIO;
    for (int v = version; v < SCHEMA_VERSION; v++)
        log_info("store_migrated", "engine=postgres version=%d", v + 1);
    return 0;
rollback:
    exec(c, "ROLLBACK", err + strlen(err), 0);
    return -EIO;
}

static int pg_open(void **out, const struct store_options *opt, char *err, size_t errlen)
{
    struct store_postgres *s = calloc(1, sizeof *s);
    if (!s || !opt->path || !(s->dsn = strdup(opt->path)) ||
        !(s->redacted = malloc(strlen(opt->path) + 256))) {
        snprintf(err, errlen, "%s", opt->path ? "out of memory" : "--postgres: no DSN");
        if (s)
            free(s->dsn);
        free(s);
        return opt->path ? -ENOMEM : -EINVAL;
    }
    store_postgres_redact(s->dsn, s->redacted, strlen(opt->path) + 256);
    /* libpq's own complaint about a malformed string quotes the string's
     * words, a password among them: check it here and say only that. */
    char *perr = NULL;
    PQconninfoOption *parsed = PQconninfoParse(s->dsn, &perr);
    PQfreemem(perr);
    if (!parsed) {
        snprintf(err, errlen,
                 "--postgres: not a valid connection string (key=value pairs or a "
                 "postgresql:// URI)");
        OPENSSL_cleanse(s->dsn, strlen(s->dsn));
        free(s->dsn);
        free(s->redacted);
        free(s);
        return -EINVAL;
    }
    PQconninfoFree(parsed);
    s->on_batch = opt->on_batch;
    s->arg = opt->arg;
    if (opt->key) {
        s->encrypt = true;
        memcpy(s->key, opt->key, 32);
    }
    if (fifo_init(&s->queue, 0) != 0) {
        snprintf(err, errlen, "out of memory");
        free(s->redacted);
        free(s->dsn);
        free(s);
        return -ENOMEM;
    }
    uv_mutex_init(&s->read_lock);
    atomic_init(&s->connected, true);
    atomic_init(&s->writes_ok, true);
    atomic_init(&s->fail_commits, 0);
    s->backoff_ms = PG_BACKOFF_MIN_MS;

    char e[256] = "";
    int rc = -EIO;
    s->conn = store_postgres__connect(s, e, sizeof e);
    if (!s->conn) {
        snprintf(err, errlen, "--postgres: cannot connect to '%s': %s", s->redacted, e);
        goto fail;
    }
    if ((rc = migrate(s->conn, e, sizeof e)) != 0) {
        snprintf(err, errlen, "--postgres: '%s': cannot migrate the schema: %s", s->redacted, e);
        goto fail;
    }
    /* The writer makes its own connection (and prepares its statements). */
    PQfinish(s->conn);
    s->conn = NULL;
    if (uv_thread_create(&s->thread, store_postgres__writer_main, s) != 0) {
        snprintf(err, errlen, "cannot start the storage thread");
        rc = -EAGAIN;
        goto fail;
    }
    *out = s;
    return 0;
fail:
    PQfinish(s->conn);
    fifo_release(&s->queue);
    uv_mutex_destroy(&s->read_lock);
    OPENSSL_cleanse(s->key, sizeof s->key);
    OPENSSL_cleanse(s->dsn, strlen(s->dsn));
    free(s->dsn);
    free(s->redacted);
    free(s);
    return rc;
}

static void pg_close(void *e)
{
    struct store_postgres *s = e;
    fifo_shut(&s->queue); /* the writer finishes what was accepted, then ends */
    uv_thread_join(&s->thread);
    PQfinish(s->conn);
    store_postgres__read_pool_free(s);
    fifo_release(&s->queue);
    uv_mutex_destroy(&s->read_lock);
    OPENSSL_cleanse(s->key, sizeof s->key);
    OPENSSL_cleanse(s->dsn, strlen(s->dsn));
    free(s->dsn);
    free(s->redacted);
    free(s);
}

const struct store_engine store_postgres_engine = {
    .name = "postgres",
    .open = pg_open,
    .close = pg_close,
    .submit = store_postgres__submit,
    .healthy = store_postgres__healthy,
    .failed = store_postgres__failed,
    .stats = store_postgres__stats,
    .fail_next_commits = store_postgres__fail_next_commits,
    .get_session = store_postgres__get_session,
    .read_events = store_postgres__read_events,
    .list_sessions = store_postgres__list_sessions,
    .get_reads = store_postgres__get_reads,
    .get_share = store_postgres__get_share,
    .get_summary = store_postgres__get_summary,
};
