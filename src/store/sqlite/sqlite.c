/*
 * DESIGN: SQLite in WAL mode. One writer thread owns the only write
 * connection and its prepared statements; it drains the request queue into
 * batches and runs each batch in one IMMEDIATE transaction, so N messages
 * cost one commit (one fsync with synchronous=FULL). Any SQLite error inside
 * a batch rolls the whole batch back and answers every request in it with
 * STORE_UNAVAILABLE: nothing is acknowledged that was not committed, and no
 * seq is consumed. Readers use their own read-only connections, which WAL
 * lets run beside the writer.
 *
 * Schema versions live in PRAGMA user_version; migrations[i] moves a
 * database from version i to i+1 inside a transaction.
 */
#include "store/sqlite/sqlite.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "util/clock.h"
#include "util/log.h"
#include "util/sbuf.h"

static const char *const migrations[] = {
    /* 0 -> 1 */
    "CREATE TABLE sessions ("
    "  id TEXT PRIMARY KEY,"
    "  owner TEXT NOT NULL,"
    "  created_at INTEGER NOT NULL,"
    "  updated_at INTEGER NOT NULL,"
    "  last_seq INTEGER NOT NULL DEFAULT 0,"
    "  help INTEGER NOT NULL DEFAULT 0,"
    "  model TEXT,"
    "  origin_client_id TEXT"
    ");"
    "CREATE INDEX sessions_by_owner ON sessions(owner);"
    "CREATE UNIQUE INDEX sessions_by_origin ON sessions(owner, origin_client_id)"
    "  WHERE origin_client_id IS NOT NULL;"
    "CREATE TABLE events ("
    "  session_id TEXT NOT NULL,"
    "  seq INTEGER NOT NULL,"
    "  type TEXT NOT NULL,"
    "  sender_type TEXT NOT NULL,"
    "  sender_id TEXT NOT NULL,"
    "  sender_name TEXT,"
    "  client_id TEXT,"
    "  content BLOB NOT NULL,"
    "  metadata TEXT,"
    "  enc INTEGER NOT NULL DEFAULT 0,"
    "  created_at INTEGER NOT NULL,"
    "  PRIMARY KEY (session_id, seq)"
    ") WITHOUT ROWID;"
    "CREATE UNIQUE INDEX events_by_client ON events(session_id, sender_id, client_id)"
    "  WHERE client_id IS NOT NULL;",
};
#define SCHEMA_VERSION ((int)(sizeof migrations / sizeof migrations[0]))
#define SCHEMA_VERSION_TEXT "1" /* the same, for SQL text */
_Static_assert(sizeof migrations / sizeof migrations[0] == 1, "update SCHEMA_VERSION_TEXT");

enum {
    S_SESSION_GET = 0,
    S_SESSION_BY_ORIGIN,
    S_SESSION_INSERT,
    S_SESSION_BUMP,
    S_SESSION_HELP,
    S_SESSION_MODEL,
    S_EVENT_BY_CLIENT,
    S_EVENT_INSERT,
    S_BEGIN,
    S_COMMIT,
    S_ROLLBACK,
    S_COUNT
};

static const char *const stmt_sql[S_COUNT] = {
    [S_SESSION_GET] = "SELECT owner, last_seq FROM sessions WHERE id = ?1",
    [S_SESSION_BY_ORIGIN] = "SELECT id FROM sessions WHERE owner = ?1 AND origin_client_id = ?2",
    [S_SESSION_INSERT] = "INSERT INTO sessions (id, owner, created_at, updated_at, origin_client_id)"
                         " VALUES (?1, ?2, ?3, ?3, ?4)",
    [S_SESSION_BUMP] = "UPDATE sessions SET last_seq = ?2, updated_at = ?3 WHERE id = ?1",
    [S_SESSION_HELP] = "UPDATE sessions SET help = 1, updated_at = ?2 WHERE id = ?1 AND help = 0",
    [S_SESSION_MODEL] = "UPDATE sessions SET model = ?2 WHERE id = ?1",
    [S_EVENT_BY_CLIENT] = "SELECT seq, created_at FROM events"
                          " WHERE session_id = ?1 AND sender_id = ?2 AND client_id = ?3",
    [S_EVENT_INSERT] = "INSERT INTO events (session_id, seq, type, sender_type, sender_id,"
                       " sender_name, client_id, content, metadata, enc, created_at)"
                       " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    [S_BEGIN] = "BEGIN IMMEDIATE",
    [S_COMMIT] = "COMMIT",
    [S_ROLLBACK] = "ROLLBACK",
};

struct read_conn {
    struct read_conn *next;
    sqlite3 *db;
};

struct store_sqlite {
    /* read-only after open */
    char *path;
    bool sync_full;
    bool encrypt;
    unsigned char key[32];
    void (*on_batch)(void *arg, struct store_req **reqs, size_t n);
    void *arg;
    uv_thread_t thread;

    /* writer thread only */
    sqlite3 *db;
    sqlite3_stmt *stmt[S_COUNT];

    /* guarded by queue_lock */
    uv_mutex_t queue_lock;
    uv_cond_t queue_cond;
    struct store_req *head, *tail;
    bool closing;

    /* checkpointer: guarded by ckpt_lock */
    uv_thread_t ckpt_thread;
    uv_mutex_t ckpt_lock;
    uv_cond_t ckpt_cond;
    bool ckpt_wanted;
    bool ckpt_closing;
    bool ckpt_started;

    /* guarded by read_lock */
    uv_mutex_t read_lock;
    struct read_conn *idle;

    /* writer thread only: the files as opened, to notice them removed or
     * replaced (-1: not open yet) */
    int db_fd, wal_fd;
    struct stat db_st, wal_st;

    /* statistics (atomics) */
    atomic_bool healthy;
    atomic_bool failed; /* fail-stop: set once, never cleared */
    struct store__counters counters;
};

/* ---- helpers ------------------------------------------------------------ */

static int exec(sqlite3 *db, const char *sql, char *err, size_t errlen)
{
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "%s", msg ? msg : sqlite3_errstr(rc));
        sqlite3_free(msg);
        return -EIO;
    }
    return 0;
}

/* AAD binds a ciphertext to its place: session id and seq (big-endian).
 * Returns the length of the id part (the AAD is 8 bytes longer). */
static size_t make_aad(unsigned char aad[STORE_ID_LEN + 8], const char *sid, int64_t seq)
{
    size_t sl = strlen(sid);
    memcpy(aad, sid, sl);
    for (int i = 0; i < 8; i++)
        aad[sl + i] = (unsigned char)(seq >> (56 - 8 * i));
    return sl;
}

static int seal(struct store_sqlite *s, const char *sid, int64_t seq, const char *in, size_t n,
                unsigned char **out, size_t *outlen)
{
    unsigned char *buf = malloc(12 + n + 16);
    if (!buf)
        return -ENOMEM;
    RAND_bytes(buf, 12);
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int len = 0, ok = ctx != NULL;
    unsigned char aad[STORE_ID_LEN + 8];
    size_t sl = make_aad(aad, sid, seq);
    ok = ok && EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, s->key, buf) == 1;
    ok = ok && EVP_EncryptUpdate(ctx, NULL, &len, aad, (int)(sl + 8)) == 1;
    ok = ok && EVP_EncryptUpdate(ctx, buf + 12, &len, (const unsigned char *)in, (int)n) == 1;
    ok = ok && EVP_EncryptFinal_ex(ctx, buf + 12 + len, &len) == 1;
    ok = ok && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, buf + 12 + n) == 1;
    EVP_CIPHER_CTX_free(ctx);
    if (!ok) {
        free(buf);
        return -EIO;
    }
    *out = buf;
    *outlen = 12 + n + 16;
    return 0;
}

static int unseal(const struct store_sqlite *s, const char *sid, int64_t seq, const unsigned char *in,
                  size_t n, char **out, size_t *outlen)
{
    if (n < 28)
        return -EIO;
    size_t plen = n - 28;
    char *buf = malloc(plen + 1);
    if (!buf)
        return -ENOMEM;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int len = 0, ok = ctx != NULL;
    unsigned char aad[STORE_ID_LEN + 8];
    size_t sl = make_aad(aad, sid, seq);
    ok = ok && EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, s->key, in) == 1;
    ok = ok && EVP_DecryptUpdate(ctx, NULL, &len, aad, (int)(sl + 8)) == 1;
    ok = ok && EVP_DecryptUpdate(ctx, (unsigned char *)buf, &len, in + 12, (int)plen) == 1;
    ok = ok && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16, (void *)(in + 12 + plen)) == 1;
    ok = ok && EVP_DecryptFinal_ex(ctx, (unsigned char *)buf + len, &len) == 1;
    EVP_CIPHER_CTX_free(ctx);
    if (!ok) {
        free(buf);
        return -EIO;
    }
    buf[plen] = '\0';
    *out = buf;
    *outlen = plen;
    return 0;
}

/* ---- the writer ------------------------------------------------------------ */

static int step_done(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : rc;
}

/* Load a session and check the requester may use it. 1 found+allowed,
 * 0 not found/not allowed, <0 SQLite error. */
static int load_session(struct store_sqlite *s, struct store_req *r, int64_t *last_seq)
{
    sqlite3_stmt *st = s->stmt[S_SESSION_GET];
    sqlite3_bind_text(st, 1, r->session_id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const char *owner = (const char *)sqlite3_column_text(st, 0);
        snprintf(r->owner, sizeof r->owner, "%s", owner ? owner : "");
        *last_seq = sqlite3_column_int64(st, 1);
        sqlite3_reset(st);
        if (!r->any_session && strcmp(r->owner, r->user) != 0)
            return 0;
        return 1;
    }
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : -rc;
}

static int do_append(struct store_sqlite *s, struct store_req *r, int64_t now)
{
    sqlite3_stmt *st;
    int rc;
    if (!r->session_id[0]) {
        if (r->client_id[0]) {
            /* A retry of a message that created a session finds that session. */
            st = s->stmt[S_SESSION_BY_ORIGIN];
            sqlite3_bind_text(st, 1, r->user, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 2, r->client_id, -1, SQLITE_STATIC);
            rc = sqlite3_step(st);
            if (rc == SQLITE_ROW)
                snprintf(r->session_id, sizeof r->session_id, "%s",
                         (const char *)sqlite3_column_text(st, 0));
            sqlite3_reset(st);
            if (rc != SQLITE_ROW && rc != SQLITE_DONE)
                return -rc;
        }
        if (!r->session_id[0]) {
            store_new_session_id(r->session_id);
            st = s->stmt[S_SESSION_INSERT];
            sqlite3_bind_text(st, 1, r->session_id, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 2, r->user, -1, SQLITE_STATIC);
            sqlite3_bind_int64(st, 3, now);
            if (r->client_id[0])
                sqlite3_bind_text(st, 4, r->client_id, -1, SQLITE_STATIC);
            else
                sqlite3_bind_null(st, 4);
            if ((rc = step_done(st)) != 0)
                return -rc;
            r->created = true;
        }
    }
    int64_t last_seq;
    rc = load_session(s, r, &last_seq);
    if (rc <= 0) {
        r->status = STORE_NOT_FOUND;
        return rc;
    }
    const char *sender_id = r->user;
    if (r->client_id[0]) {
        st = s->stmt[S_EVENT_BY_CLIENT];
        sqlite3_bind_text(st, 1, r->session_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, sender_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, r->client_id, -1, SQLITE_STATIC);
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            r->seq = sqlite3_column_int64(st, 0);
            r->ts_ms = sqlite3_column_int64(st, 1);
            r->duplicate = true;
            r->created = false;
            sqlite3_reset(st);
            r->status = STORE_OK;
            return 0;
        }
        sqlite3_reset(st);
        if (rc != SQLITE_DONE)
            return -rc;
    }
    int64_t seq = last_seq + 1;
    unsigned char *sealed = NULL;
    size_t sealed_len = 0;
    if (s->encrypt && seal(s, r->session_id, seq, r->content, r->content_len, &sealed,
                           &sealed_len) != 0)
        return -SQLITE_IOERR;
    st = s->stmt[S_EVENT_INSERT];
    sqlite3_bind_text(st, 1, r->session_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, seq);
    sqlite3_bind_text(st, 3, strcmp(r->sender_type, "admin") == 0 ? "admin_message"
                             : strcmp(r->sender_type, "ai") == 0  ? "ai_response"
                                                                  : "user_message",
                      -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, r->sender_type, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, sender_id, -1, SQLITE_STATIC);
    if (r->sender_name)
        sqlite3_bind_text(st, 6, r->sender_name, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 6);
    if (r->client_id[0])
        sqlite3_bind_text(st, 7, r->client_id, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 7);
    if (sealed)
        sqlite3_bind_blob(st, 8, sealed, (int)sealed_len, SQLITE_STATIC);
    else
        sqlite3_bind_blob(st, 8, r->content, (int)r->content_len, SQLITE_STATIC);
    if (r->metadata)
        sqlite3_bind_text(st, 9, r->metadata, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 9);
    sqlite3_bind_int(st, 10, sealed ? 1 : 0);
    sqlite3_bind_int64(st, 11, now);
    rc = step_done(st);
    sqlite3_clear_bindings(st);
    free(sealed);
    if (rc != 0)
        return -rc;
    st = s->stmt[S_SESSION_BUMP];
    sqlite3_bind_text(st, 1, r->session_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, seq);
    sqlite3_bind_int64(st, 3, now);
    if ((rc = step_done(st)) != 0)
        return -rc;
    r->seq = seq;
    r->ts_ms = now;
    r->status = STORE_OK;
    return 0;
}

static int do_request(struct store_sqlite *s, struct store_req *r, int64_t now)
{
    r->status = STORE_OK;
    r->ts_ms = now;
    if (r->op == STORE_APPEND)
        return do_append(s, r, now);
    int64_t last_seq;
    int rc = load_session(s, r, &last_seq);
    if (rc <= 0) {
        r->status = STORE_NOT_FOUND;
        return rc;
    }
    r->seq = last_seq;
    sqlite3_stmt *st;
    switch (r->op) {
    case STORE_HELP:
        /* A session that already asked for help is not asked again: the
         * request is coalesced (r->duplicate) and nothing is written. */
        st = s->stmt[S_SESSION_HELP];
        sqlite3_bind_text(st, 1, r->session_id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, now);
        if ((rc = step_done(st)) != 0)
            return -rc;
        r->duplicate = sqlite3_changes(s->db) == 0;
        return 0;
    case STORE_MODEL:
        st = s->stmt[S_SESSION_MODEL];
        sqlite3_bind_text(st, 1, r->session_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, r->arg ? r->arg : "", -1, SQLITE_STATIC);
        return (rc = step_done(st)) ? -rc : 0;
    default:
        return 0;
    }
}

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Is the file behind fd (opened as path) still the one at path, and linked?
 * NULL, or why not. */
static const char *file_gone(int fd, const struct stat *was, const char *path)
{
    struct stat now;
    if (fd < 0)
        return NULL;
    if (fstat(fd, &now) == 0 && now.st_nlink == 0)
        return "removed";
    if (stat(path, &now) != 0)
        return errno == ENOENT ? "removed" : NULL;
    if (now.st_dev != was->st_dev || now.st_ino != was->st_ino)
        return "replaced";
    return NULL;
}

/* Open the WAL file once it exists (WAL mode creates it on first use). */
static void watch_wal(struct store_sqlite *s)
{
    if (s->wal_fd >= 0)
        return;
    char wal[4096];
    snprintf(wal, sizeof wal, "%s-wal", s->path);
    s->wal_fd = open(wal, O_RDONLY | O_CLOEXEC);
    if (s->wal_fd >= 0 && fstat(s->wal_fd, &s->wal_st) != 0) {
        close(s->wal_fd);
        s->wal_fd = -1;
    }
}

/* Are the database and its WAL still the files chatd opened? NULL or why
 * not ("database removed", ...). Writer thread. */
static const char *files_gone(struct store_sqlite *s)
{
    char wal[4096];
    const char *why = file_gone(s->db_fd, &s->db_st, s->path);
    if (why)
        return strcmp(why, "removed") == 0 ? "database file removed" : "database file replaced";
    snprintf(wal, sizeof wal, "%s-wal", s->path);
    why = file_gone(s->wal_fd, &s->wal_st, wal);
    if (why)
        return strcmp(why, "removed") == 0 ? "WAL file removed" : "WAL file replaced";
    return NULL;
}

/* Fail-stop: from now on nothing is acknowledged (see store_failed). */
static void fail_stop(struct store_sqlite *s, const char *why)
{
    struct log_quoted qp, qw;
    if (!atomic_exchange(&s->failed, true))
        log_error("store_failed", "path=%s reason=%s action=\"refusing every write; restart "
                  "chatd once the storage is sound\"",
                  log_quotes(&qp, s->path), log_quotes(&qw, why));
    atomic_store(&s->healthy, false);
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

/* A failed commit: was it on disk? SQLITE_FULL (a write refused) and BUSY
 * leave the transaction uncommitted; any other failure of COMMIT (an I/O
 * error, most of all a failed fsync) leaves it unknown. */
static bool commit_outcome_unknown(int rc)
{
    int primary = rc & 0xff;
    return primary != SQLITE_FULL && primary != SQLITE_BUSY && primary != SQLITE_NOMEM;
}

static void run_batch(struct store_sqlite *s, struct store_req **reqs, size_t n)
{
    struct log_quoted qp;
    int64_t t0 = now_us();
    int64_t now = clock_wall_ms();
    const char *gone = atomic_load(&s->failed) ? "the store has failed" : files_gone(s);
    if (gone) {
        /* Nothing of this batch was written. */
        fail_stop(s, gone);
        batch_refused(reqs, n, STORE_UNAVAILABLE);
        store__count_failure(&s->counters);
        s->on_batch(s->arg, reqs, n);
        return;
    }
    int rc = step_done(s->stmt[S_BEGIN]);
    bool at_commit = false;
    size_t i = 0;
    if (rc == 0) {
        for (; i < n; i++)
            if ((rc = do_request(s, reqs[i], now)) != 0)
                break;
        if (rc == 0) {
            at_commit = true;
            rc = step_done(s->stmt[S_COMMIT]);
        }
    }
    if (rc == 0 && (gone = files_gone(s)) != NULL) {
        /* Committed into a file that is no longer the database: it will
         * not be there after a restart. */
        fail_stop(s, gone);
        batch_refused(reqs, n, STORE_UNKNOWN);
        store__count_failure(&s->counters);
    } else if (rc != 0) {
        int code = rc < 0 ? -rc : rc;
        bool unknown = at_commit && commit_outcome_unknown(code);
        log_error("store_write_failed", "error=\"%s\" code=%d batch=%zu at=%s",
                  sqlite3_errstr(code), code, n, at_commit ? "commit" : "write");
        if (!sqlite3_get_autocommit(s->db))
            step_done(s->stmt[S_ROLLBACK]);
        batch_refused(reqs, n, unknown ? STORE_UNKNOWN : STORE_UNAVAILABLE);
        if (unknown || (code & 0xff) == SQLITE_IOERR || (code & 0xff) == SQLITE_CORRUPT ||
            (code & 0xff) == SQLITE_NOTADB) {
            /* After an I/O error the file's state is unknown: stop. */
            fail_stop(s, sqlite3_errstr(code));
        } else if (atomic_exchange(&s->healthy, false)) {
            log_warn("store_unhealthy", "path=%s", log_quotes(&qp, s->path));
        }
        store__count_failure(&s->counters);
    } else {
        /* Only a batch that wrote proves the disk takes writes again: a
         * read-only batch commits fine on a full disk. */
        bool wrote = false;
        for (size_t j = 0; j < n && !wrote; j++)
            wrote = reqs[j]->status == STORE_OK &&
                    ((reqs[j]->op == STORE_APPEND && !reqs[j]->duplicate) ||
                     (reqs[j]->op == STORE_HELP && !reqs[j]->duplicate) ||
                     reqs[j]->op == STORE_MODEL);
        if (wrote && !atomic_exchange(&s->healthy, true))
            log_info("store_healthy", "path=%s", log_quotes(&qp, s->path));
        store__count_commit(&s->counters, now_us() - t0, n);
        watch_wal(s);
    }
    s->on_batch(s->arg, reqs, n);
}

/* Move up to max - n queued requests into batch. Called with queue_lock. */
static size_t take(struct store_sqlite *s, struct store_req **batch, size_t n, size_t max)
{
    while (s->head && n < max) {
        batch[n++] = s->head;
        s->head = s->head->next;
    }
    if (!s->head)
        s->tail = NULL;
    return n;
}

static void writer_main(void *arg)
{
    struct store_sqlite *s = arg;
    struct store_req *batch[STORE_BATCH_MAX];
    int64_t last_end_us = 0;
    for (;;) {
        uv_mutex_lock(&s->queue_lock);
        while (!s->head && !s->closing)
            uv_cond_wait(&s->queue_cond, &s->queue_lock);
        if (!s->head && s->closing) {
            uv_mutex_unlock(&s->queue_lock);
            break;
        }
        /* Group commit: everything that queued up meanwhile goes in one
         * transaction, up to STORE_BATCH_MAX. Under steady load (the last
         * commit ended moments ago) a small batch waits up to
         * STORE_LINGER_US for company: the batch closes by size or by that
         * short deadline, so many messages share one commit and their
         * events reach each connection in one write. An idle server
         * commits at once. */
        size_t n = take(s, batch, 0, STORE_BATCH_MAX);
        if (n < STORE_BATCH_MAX / 4 && !s->closing && now_us() - last_end_us < 2000) {
            uv_cond_timedwait(&s->queue_cond, &s->queue_lock, (uint64_t)STORE_LINGER_US * 1000);
            n = take(s, batch, n, STORE_BATCH_MAX);
        }
        uv_mutex_unlock(&s->queue_lock);
        run_batch(s, batch, n);
        last_end_us = now_us();
    }
    sbuf_thread_cleanup(); /* on_batch may have dropped frames here */
}

static int sq_submit(void *e, struct store_req *r)
{
    struct store_sqlite *s = e;
    r->next = NULL;
    uv_mutex_lock(&s->queue_lock);
    if (s->closing) {
        uv_mutex_unlock(&s->queue_lock);
        return -ESHUTDOWN;
    }
    if (s->tail)
        s->tail->next = r;
    else
        s->head = r;
    s->tail = r;
    uv_cond_signal(&s->queue_cond);
    uv_mutex_unlock(&s->queue_lock);
    return 0;
}

static bool sq_healthy(void *e)
{
    struct store_sqlite *s = e;
    return atomic_load(&s->healthy) && !atomic_load(&s->failed);
}

static bool sq_failed(void *e)
{
    struct store_sqlite *s = e;
    return atomic_load(&s->failed);
}

static void sq_stats(void *e, struct store_stats *out)
{
    struct store_sqlite *s = e;
    store__counters_read(&s->counters, out);
}

/* ---- checkpoints ----------------------------------------------------------
 *
 * The writer never checkpoints (that would stall commits for as long as the
 * copy takes). After each commit SQLite reports the WAL's size through the
 * WAL hook; past CKPT_PAGES the checkpointer thread is woken, and copies the
 * WAL into the database with a PASSIVE checkpoint on its own connection,
 * beside the writer. */

#define CKPT_PAGES 4096

static int wal_hook(void *arg, sqlite3 *db, const char *name, int pages)
{
    struct store_sqlite *s = arg;
    (void)db;
    (void)name;
    if (pages >= CKPT_PAGES) {
        uv_mutex_lock(&s->ckpt_lock);
        if (!s->ckpt_wanted) {
            s->ckpt_wanted = true;
            uv_cond_signal(&s->ckpt_cond);
        }
        uv_mutex_unlock(&s->ckpt_lock);
    }
    return SQLITE_OK;
}

static void checkpointer_main(void *arg)
{
    struct store_sqlite *s = arg;
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(s->path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        log_error("store_checkpointer_failed", "error=\"%s\"", db ? sqlite3_errmsg(db) : "?");
        sqlite3_close(db);
        return;
    }
    sqlite3_busy_timeout(db, 1000);
    for (;;) {
        uv_mutex_lock(&s->ckpt_lock);
        while (!s->ckpt_wanted && !s->ckpt_closing)
            uv_cond_wait(&s->ckpt_cond, &s->ckpt_lock);
        bool closing = s->ckpt_closing;
        s->ckpt_wanted = false;
        uv_mutex_unlock(&s->ckpt_lock);
        if (closing)
            break;
        int log_pages = 0, done = 0;
        int rc = sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log_pages, &done);
        if (rc != SQLITE_OK && rc != SQLITE_BUSY)
            log_warn("store_checkpoint_failed", "error=\"%s\"", sqlite3_errstr(rc));
    }
    sqlite3_close(db);
}

static void stop_checkpointer(struct store_sqlite *s)
{
    uv_mutex_lock(&s->ckpt_lock);
    s->ckpt_closing = true;
    uv_cond_signal(&s->ckpt_cond);
    uv_mutex_unlock(&s->ckpt_lock);
    uv_thread_join(&s->ckpt_thread);
}

/* ---- open / close ----------------------------------------------------------- */

static int migrate(sqlite3 *db, char *err, size_t errlen)
{
    sqlite3_stmt *st;
    int version = 0;
    if (sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL) == SQLITE_OK) {
        if (sqlite3_step(st) == SQLITE_ROW)
            version = sqlite3_column_int(st, 0);
        sqlite3_finalize(st);
    }
    if (version > SCHEMA_VERSION) {
        snprintf(err, errlen, "database schema version %d is newer than this chatd (%d)",
                 version, SCHEMA_VERSION);
        return -EINVAL;
    }
    for (int v = version; v < SCHEMA_VERSION; v++) {
        char sql[64];
        snprintf(sql, sizeof sql, "PRAGMA user_version = %d", v + 1);
        if (exec(db, "BEGIN IMMEDIATE", err, errlen) || exec(db, migrations[v], err, errlen) ||
            exec(db, sql, err, errlen) || exec(db, "COMMIT", err, errlen)) {
            exec(db, "ROLLBACK", err + strlen(err), 0);
            return -EIO;
        }
        log_info("store_migrated", "version=%d", v + 1);
    }
    return 0;
}

static int sq_open(void **out, const struct store_options *opt, char *err, size_t errlen)
{
    struct store_sqlite *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    s->path = strdup(opt->path);
    s->sync_full = opt->sync_full;
    s->on_batch = opt->on_batch;
    s->arg = opt->arg;
    if (opt->key) {
        s->encrypt = true;
        memcpy(s->key, opt->key, 32);
    }
    uv_mutex_init(&s->queue_lock);
    uv_cond_init(&s->queue_cond);
    uv_mutex_init(&s->read_lock);
    atomic_init(&s->healthy, true);
    atomic_init(&s->failed, false);
    s->db_fd = s->wal_fd = -1;

    int rc = sqlite3_open_v2(opt->path, &s->db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                             NULL);
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "--db: cannot open '%s': %s", opt->path,
                 s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
        goto fail;
    }
    sqlite3_busy_timeout(s->db, 5000);
    sqlite3_extended_result_codes(s->db, 1);
    /* A database chatd cannot write must stop it at start, not at the
     * first message (SQLite falls back to read-only without a word). */
    if (sqlite3_db_readonly(s->db, "main") == 1) {
        snprintf(err, errlen,
                 "--db: '%s' cannot be written (read-only file or folder; check its permissions)",
                 opt->path);
        goto fail;
    }
    char e[256] = "";
    if (exec(s->db, "PRAGMA page_size = 1024", e, sizeof e) ||
        exec(s->db, "PRAGMA journal_mode = WAL", e, sizeof e) ||
        exec(s->db, s->sync_full ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL",
             e, sizeof e) ||
        exec(s->db, "PRAGMA foreign_keys = ON", e, sizeof e) ||
        exec(s->db, "PRAGMA wal_autocheckpoint = 0", e, sizeof e)) {
        snprintf(err, errlen, "--db: '%s': %s", opt->path, e);
        goto fail;
    }
    if (migrate(s->db, e, sizeof e) != 0) {
        snprintf(err, errlen, "--db: '%s': %s", opt->path, e);
        goto fail;
    }
    /* Prove that a write goes through (a folder that is not writable, a
     * file that is read-only for this user), then keep the files open to
     * notice them removed or replaced later. */
    if (exec(s->db, "BEGIN IMMEDIATE", e, sizeof e) ||
        exec(s->db, "PRAGMA user_version = " SCHEMA_VERSION_TEXT, e, sizeof e) ||
        exec(s->db, "COMMIT", e, sizeof e)) {
        snprintf(err, errlen, "--db: '%s' cannot be written: %s", opt->path, e);
        goto fail;
    }
    s->db_fd = strcmp(opt->path, ":memory:") == 0 ? -2 : open(opt->path, O_RDONLY | O_CLOEXEC);
    if (s->db_fd == -2) {
        s->db_fd = -1; /* an in-memory database has no file to watch */
    } else if (s->db_fd < 0 || fstat(s->db_fd, &s->db_st) != 0) {
        snprintf(err, errlen, "--db: '%s': %s", opt->path, strerror(errno));
        goto fail;
    }
    watch_wal(s);
    for (int i = 0; i < S_COUNT; i++) {
        if (sqlite3_prepare_v3(s->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->stmt[i],
                               NULL) != SQLITE_OK) {
            snprintf(err, errlen, "--db: '%s': %s", opt->path, sqlite3_errmsg(s->db));
            goto fail;
        }
    }
    uv_mutex_init(&s->ckpt_lock);
    uv_cond_init(&s->ckpt_cond);
    if (uv_thread_create(&s->ckpt_thread, checkpointer_main, s) != 0) {
        snprintf(err, errlen, "cannot start the checkpoint thread");
        goto fail;
    }
    s->ckpt_started = true;
    sqlite3_wal_hook(s->db, wal_hook, s);
    if (uv_thread_create(&s->thread, writer_main, s) != 0) {
        snprintf(err, errlen, "cannot start the storage thread");
        goto fail;
    }
    *out = s;
    return 0;
fail:
    if (s->ckpt_started)
        stop_checkpointer(s);
    if (s->db_fd >= 0)
        close(s->db_fd);
    if (s->wal_fd >= 0)
        close(s->wal_fd);
    for (int i = 0; i < S_COUNT; i++)
        sqlite3_finalize(s->stmt[i]);
    sqlite3_close(s->db);
    free(s->path);
    free(s);
    return -EINVAL;
}

static void sq_close(void *e)
{
    struct store_sqlite *s = e;
    uv_mutex_lock(&s->queue_lock);
    s->closing = true;
    uv_cond_signal(&s->queue_cond);
    uv_mutex_unlock(&s->queue_lock);
    uv_thread_join(&s->thread);
    stop_checkpointer(s);
    uv_mutex_destroy(&s->ckpt_lock);
    uv_cond_destroy(&s->ckpt_cond);
    for (int i = 0; i < S_COUNT; i++)
        sqlite3_finalize(s->stmt[i]);
    /* The last connection to close checkpoints and removes the WAL. */
    sqlite3_close(s->db);
    while (s->idle) {
        struct read_conn *rc = s->idle;
        s->idle = rc->next;
        sqlite3_close(rc->db);
        free(rc);
    }
    if (s->db_fd >= 0)
        close(s->db_fd);
    if (s->wal_fd >= 0)
        close(s->wal_fd);
    uv_mutex_destroy(&s->queue_lock);
    uv_cond_destroy(&s->queue_cond);
    uv_mutex_destroy(&s->read_lock);
    OPENSSL_cleanse(s->key, sizeof s->key);
    free(s->path);
    free(s);
}

/* ---- reads ------------------------------------------------------------------ */

static struct read_conn *read_get(struct store_sqlite *s)
{
    uv_mutex_lock(&s->read_lock);
    struct read_conn *rc = s->idle;
    if (rc)
        s->idle = rc->next;
    uv_mutex_unlock(&s->read_lock);
    if (rc)
        return rc;
    rc = calloc(1, sizeof *rc);
    if (!rc)
        return NULL;
    if (sqlite3_open_v2(s->path, &rc->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        sqlite3_close(rc->db);
        free(rc);
        return NULL;
    }
    sqlite3_busy_timeout(rc->db, 5000);
    return rc;
}

static void read_put(struct store_sqlite *s, struct read_conn *rc)
{
    uv_mutex_lock(&s->read_lock);
    rc->next = s->idle;
    s->idle = rc;
    uv_mutex_unlock(&s->read_lock);
}

/* Double a result array (16 elements to start). 0 or -ENOMEM. */
static int grow_array(void **v, int *cap, size_t elem)
{
    int ncap = *cap ? *cap * 2 : 16;
    void *nv = realloc(*v, (size_t)ncap * elem);
    if (!nv)
        return -ENOMEM;
    *v = nv;
    *cap = ncap;
    return 0;
}

static void fill_session(sqlite3_stmt *st, struct store_session *out)
{
    memset(out, 0, sizeof *out);
    snprintf(out->id, sizeof out->id, "%s", (const char *)sqlite3_column_text(st, 0));
    snprintf(out->owner, sizeof out->owner, "%s", (const char *)sqlite3_column_text(st, 1));
    out->created_ms = sqlite3_column_int64(st, 2);
    out->updated_ms = sqlite3_column_int64(st, 3);
    out->last_seq = sqlite3_column_int64(st, 4);
    out->help = sqlite3_column_int(st, 5) != 0;
    const char *model = (const char *)sqlite3_column_text(st, 6);
    snprintf(out->model, sizeof out->model, "%s", model ? model : "");
}

#define SESSION_COLS "id, owner, created_at, updated_at, last_seq, help, model"

static int sq_get_session(void *e, const char *id, struct store_session *out)
{
    struct store_sqlite *s = e;
    struct read_conn *rc = read_get(s);
    if (!rc)
        return -EIO;
    sqlite3_stmt *st;
    int ret = -EIO;
    if (sqlite3_prepare_v2(rc->db, "SELECT " SESSION_COLS " FROM sessions WHERE id = ?1", -1,
                           &st, NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
        int r = sqlite3_step(st);
        if (r == SQLITE_ROW) {
            fill_session(st, out);
            ret = 0;
        } else if (r == SQLITE_DONE) {
            ret = -ENOENT;
        }
        sqlite3_finalize(st);
    }
    read_put(s, rc);
    return ret;
}

static char *col_strdup(sqlite3_stmt *st, int i)
{
    const char *v = (const char *)sqlite3_column_text(st, i);
    return v ? strdup(v) : NULL;
}

static int sq_read_events(void *e, const char *id, int64_t after_seq, int64_t limit,
                          size_t max_bytes, struct store_event **out)
{
    struct store_sqlite *s = e;
    struct read_conn *rc = read_get(s);
    *out = NULL;
    if (!rc)
        return -EIO;
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(rc->db,
                           "SELECT seq, created_at, type, sender_type, sender_id, sender_name,"
                           " client_id, content, metadata, enc FROM events"
                           " WHERE session_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                           -1, &st, NULL) != SQLITE_OK) {
        read_put(s, rc);
        return -EIO;
    }
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, after_seq);
    sqlite3_bind_int64(st, 3, limit > 0 ? limit : -1);
    struct store_event *ev = NULL;
    int n = 0, cap = 0, r = SQLITE_DONE, ret = 0;
    size_t bytes = 0;
    while ((!max_bytes || bytes < max_bytes) && (r = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap && grow_array((void **)&ev, &cap, sizeof *ev) < 0) {
            ret = -ENOMEM;
            break;
        }
        struct store_event *cur = &ev[n];
        memset(cur, 0, sizeof *cur);
        cur->seq = sqlite3_column_int64(st, 0);
        cur->ts_ms = sqlite3_column_int64(st, 1);
        snprintf(cur->type, sizeof cur->type, "%s", (const char *)sqlite3_column_text(st, 2));
        snprintf(cur->sender_type, sizeof cur->sender_type, "%s",
                 (const char *)sqlite3_column_text(st, 3));
        cur->sender_id = col_strdup(st, 4);
        cur->sender_name = col_strdup(st, 5);
        cur->client_id = col_strdup(st, 6);
        cur->metadata = col_strdup(st, 8);
        const void *blob = sqlite3_column_blob(st, 7);
        size_t blen = (size_t)sqlite3_column_bytes(st, 7);
        n++;
        if (sqlite3_column_int(st, 9)) {
            if (!s->encrypt || unseal(s, id, cur->seq, blob, blen, &cur->content,
                                      &cur->content_len) != 0) {
                struct log_quoted qs;
                log_error("store_decrypt_failed", "session=%s seq=%lld", log_quotes(&qs, id),
                          (long long)cur->seq);
                ret = -EIO;
                break;
            }
        } else {
            cur->content = malloc(blen + 1);
            if (!cur->content) {
                ret = -ENOMEM;
                break;
            }
            memcpy(cur->content, blob, blen);
            cur->content[blen] = '\0';
            cur->content_len = blen;
        }
        bytes += cur->content_len;
    }
    if (ret == 0 && r != SQLITE_DONE && r != SQLITE_ROW)
        ret = -EIO;
    sqlite3_finalize(st);
    read_put(s, rc);
    if (ret < 0) {
        store_events_free(ev, n);
        return ret;
    }
    *out = ev;
    return n;
}

static int sq_list_sessions(void *e, const char *owner, bool help_only, int limit,
                            struct store_session **out)
{
    struct store_sqlite *s = e;
    struct read_conn *rc = read_get(s);
    *out = NULL;
    if (!rc)
        return -EIO;
    const char *sql = owner ? "SELECT " SESSION_COLS " FROM sessions WHERE owner = ?1"
                              " ORDER BY updated_at DESC LIMIT ?2"
                    : help_only ? "SELECT " SESSION_COLS " FROM sessions WHERE help = 1"
                                  " ORDER BY updated_at DESC LIMIT ?2"
                                : "SELECT " SESSION_COLS " FROM sessions"
                                  " ORDER BY updated_at DESC LIMIT ?2";
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(rc->db, sql, -1, &st, NULL) != SQLITE_OK) {
        read_put(s, rc);
        return -EIO;
    }
    if (owner)
        sqlite3_bind_text(st, 1, owner, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, limit);
    struct store_session *v = NULL;
    int n = 0, cap = 0, r, ret = 0;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap && grow_array((void **)&v, &cap, sizeof *v) < 0) {
            ret = -ENOMEM;
            break;
        }
        fill_session(st, &v[n++]);
    }
    if (ret == 0 && r != SQLITE_DONE)
        ret = -EIO;
    sqlite3_finalize(st);
    read_put(s, rc);
    if (ret < 0) {
        free(v);
        return ret;
    }
    *out = v;
    return n;
}

const struct store_engine store_sqlite_engine = {
    .name = "sqlite",
    .open = sq_open,
    .close = sq_close,
    .submit = sq_submit,
    .healthy = sq_healthy,
    .failed = sq_failed,
    .stats = sq_stats,
    .get_session = sq_get_session,
    .read_events = sq_read_events,
    .list_sessions = sq_list_sessions,
};
