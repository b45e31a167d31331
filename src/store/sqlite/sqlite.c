/*
 * DESIGN: the SQLite engine ("sqlite"), one database file in WAL mode.
 *
 * Threads: the writer (writer.c) owns the only write connection and runs
 * every write in batches, one IMMEDIATE transaction each (group commit);
 * the checkpointer (here) copies the WAL into the database with PASSIVE
 * checkpoints on its own connection when the writer's WAL hook says the WAL
 * has grown, so commits never wait for a checkpoint; readers (read.c, on
 * the libuv thread pool) borrow read-only connections from a pool, which
 * WAL lets run beside the writer. Contents are sealed (store/seal.c) before they
 * are bound into a statement. internal.h lists the locks.
 *
 * Open refuses a database it cannot write (read-only check, then a write
 * probe) or whose pages are damaged (PRAGMA quick_check), migrates the schema, and keeps the database and WAL files open
 * so that the writer notices them removed or replaced (fail-stop). Schema
 * versions live in PRAGMA user_version; migrations[i] moves a database from
 * version i to i+1 inside a transaction.
 */
#include "store/sqlite/sqlite.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store/sqlite/internal.h"
#include "util/clock.h"
#include "util/log.h"

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
    /* 1 -> 2: titles, owner names, waiting times, read markers, share links */
    "ALTER TABLE sessions ADD COLUMN title BLOB;"  /* text, or sealed (title_enc) */
    "ALTER TABLE sessions ADD COLUMN title_enc INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE sessions ADD COLUMN title_set INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE sessions ADD COLUMN owner_name TEXT;"
    "ALTER TABLE sessions ADD COLUMN waiting_since INTEGER;"
    "CREATE INDEX sessions_by_updated ON sessions(updated_at);"
    "CREATE TABLE reads ("
    "  session_id TEXT NOT NULL,"
    "  reader TEXT NOT NULL,"
    "  seq INTEGER NOT NULL,"
    "  PRIMARY KEY (session_id, reader)"
    ") WITHOUT ROWID;"
    "CREATE TABLE shares ("
    "  token TEXT PRIMARY KEY,"
    "  session_id TEXT NOT NULL,"
    "  expires_at INTEGER NOT NULL"
    ");"
    "CREATE INDEX shares_by_session ON shares(session_id);"
    "CREATE INDEX events_by_type ON events(type, session_id);",
    /* 2 -> 3: messages are counted on their session, and the type index
     * leaves them out: it was a third b-tree written for every message,
     * kept only for the summary's counts. The summary's queries repeat
     * the index's condition word for word, which is how SQLite knows it
     * may use a partial index. */
    "ALTER TABLE sessions ADD COLUMN n_user INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE sessions ADD COLUMN n_admin INTEGER NOT NULL DEFAULT 0;"
    "UPDATE sessions SET"
    "  n_user = (SELECT COUNT(*) FROM events e WHERE e.session_id = sessions.id"
    "            AND e.type = 'user_message'),"
    "  n_admin = (SELECT COUNT(*) FROM events e WHERE e.session_id = sessions.id"
    "             AND e.type = 'admin_message');"
    "DROP INDEX events_by_type;"
    "CREATE INDEX events_by_kind ON events(type, session_id)"
    "  WHERE " EVENTS_BY_KIND ";",
};
#define SCHEMA_VERSION ((int)(sizeof migrations / sizeof migrations[0]))
#define SCHEMA_VERSION_TEXT "3" /* the same, for SQL text */
_Static_assert(sizeof migrations / sizeof migrations[0] == 3, "update SCHEMA_VERSION_TEXT");


/* The writer's statements, prepared once at open (see internal.h). */
static const char *const stmt_sql[S_COUNT] = {
    [S_SESSION_GET] = "SELECT owner, last_seq, model, title IS NULL FROM sessions WHERE id = ?1",
    [S_SESSION_BY_ORIGIN] = "SELECT id FROM sessions WHERE owner = ?1 AND origin_client_id = ?2",
    [S_SESSION_INSERT] = "INSERT INTO sessions (id, owner, created_at, updated_at, origin_client_id,"
                         " owner_name) VALUES (?1, ?2, ?3, ?3, ?4, ?5)",
    [S_SESSION_TITLE_INIT] = "UPDATE sessions SET title = ?2, title_enc = ?3"
                             " WHERE id = ?1 AND title IS NULL",
    [S_SESSION_TITLE_GET] = "SELECT title, title_enc FROM sessions WHERE id = ?1",
    [S_SESSION_RENAME] = "UPDATE sessions SET title = ?2, title_enc = ?3, title_set = 1,"
                         " updated_at = ?4 WHERE id = ?1",
    /* A batch's events of one session, written once (writer.c,
     * flush_sessions): its last seq and time, the wait a user message
     * starts and an answer ends (?4, enum batch_wait), and the message
     * counters the summary adds up. */
    [S_SESSION_FLUSH] = "UPDATE sessions SET last_seq = ?2, updated_at = ?3,"
                        " waiting_since = CASE ?4 WHEN 0 THEN waiting_since"
                        " WHEN 1 THEN COALESCE(waiting_since, ?3) WHEN 2 THEN ?3 ELSE NULL END,"
                        " n_user = n_user + ?5, n_admin = n_admin + ?6 WHERE id = ?1",
    [S_SESSION_RESOLVE] = "UPDATE sessions SET help = 0 WHERE id = ?1 AND help = 1",
    [S_READ_PUT] = "INSERT INTO reads (session_id, reader, seq) VALUES (?1, ?2, ?3)"
                   " ON CONFLICT (session_id, reader) DO UPDATE SET seq = excluded.seq"
                   " WHERE excluded.seq > reads.seq",
    [S_SHARE_PUT] = "INSERT INTO shares (token, session_id, expires_at) VALUES (?1, ?2, ?3)",
    [S_SHARE_REVOKE] = "DELETE FROM shares WHERE session_id = ?1",
    [S_SESSION_HELP] = "UPDATE sessions SET help = 1 WHERE id = ?1 AND help = 0",
    [S_SESSION_MODEL] = "UPDATE sessions SET model = ?2 WHERE id = ?1",
    [S_EVENT_BY_CLIENT] = "SELECT seq, created_at FROM events"
                          " WHERE session_id = ?1 AND sender_id = ?2 AND client_id = ?3",
    /* A retry's client id is already stored: nothing is written, and
     * sqlite3_changes() says so (writer.c, put_event). */
    [S_EVENT_INSERT] = "INSERT INTO events (session_id, seq, type, sender_type, sender_id,"
                       " sender_name, client_id, content, metadata, enc, created_at)"
                       " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
                       " ON CONFLICT DO NOTHING",
    [S_BEGIN] = "BEGIN IMMEDIATE",
    [S_COMMIT] = "COMMIT",
    [S_ROLLBACK] = "ROLLBACK",
};

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

/* ---- checkpoints ----------------------------------------------------------
 *
 * The writer never checkpoints (that would stall commits for as long as the
 * copy takes). After each commit SQLite reports the WAL's size through the
 * WAL hook; past CKPT_BYTES of pages the checkpointer thread is woken, and
 * copies the WAL into the database with a PASSIVE checkpoint on its own
 * connection, beside the writer. The WAL starts over from its beginning
 * only when a commit finds every frame of it copied, which a writer that
 * never pauses does not let happen: past CKPT_RESTART_TIMES that the
 * checkpointer follows with a RESTART checkpoint, which makes the writer
 * wait while it copies what the PASSIVE one left (a short wait: most is
 * copied already; bounded by CKPT_RESTART_BUSY_MS when a reader holds it
 * up), so that the WAL, and its index mapped in memory, stay bounded under
 * any load. A burst may still grow the file before the first checkpoint
 * ends: when the WAL starts over, SQLite cuts the file back to
 * WAL_KEEP_BYTES_TEXT (journal_size_limit, below). */

#define CKPT_BYTES (4 << 20)
#define CKPT_RESTART_TIMES 4
/* The page size of a new database. 2 KiB against 1 KiB, measured in
 * interleaved pairs: pipelined chat x0.90 server CPU per message with
 * --sync normal and x0.92 with --sync full (medians), the assistant's
 * 4 KiB answers x0.91-0.93 per delta, the fan-out unchanged
 * (docs/benchmarks.md, "Pages of 2 KiB"). A database keeps the page size
 * it was made with; the checkpoint's thresholds are in bytes of pages, the
 * same for either. */
#define PAGE_SIZE_TEXT "2048"
/* The writer's page cache, in KiB (SQLite's default is 2,000 KiB; each
 * connection has its own). A commit touches, for each session in the
 * batch, the last leaf of the events b-tree and of its client-id index,
 * the neighbours a split rebalances and the interior pages above them:
 * some 8 pages, 16 KiB, per active session. At 2,000 KiB a pipelined chat
 * of 100 sessions read ~1.2 KB back from the file per message (pages
 * pushed out of the cache and needed again); at 4 MiB ~0.1 KB, and the
 * writer's CPU per message fell x0.80 (docs/benchmarks.md, "The writer's
 * cache"). Not more: the cache fills as the database grows and is never
 * given back, so it counts in the memory a long run settles at (the
 * soak's 5 % drift check, tests/integration/test_soak.py, saw 16 MiB still
 * filling after its warm-up). Readers keep SQLite's default: each read is
 * short and starts from a cache the writer's commits have made stale. */
#define WRITER_CACHE_KIB_TEXT "4096"
/* A RESTART checkpoint holds new writers back while it waits for the
 * current one and for readers of older snapshots: it gives up after
 * CKPT_RESTART_BUSY_MS (an outside program holding a read transaction
 * would otherwise stall every commit for the checkpointer's whole busy
 * timeout) and is not tried again for CKPT_RESTART_BACKOFF_MS. */
#define CKPT_RESTART_BUSY_MS 50
#define CKPT_RESTART_BACKOFF_MS 1000

/* When the WAL starts over (a checkpoint copied all of it and no reader
 * still needs it), SQLite cuts the file back to this size: a WAL that grew
 * while an outside program held a long read transaction does not keep its
 * peak size on disk for good. Twice the checkpoint threshold (CKPT_BYTES),
 * so the ordinary cycle never truncates. */
#define WAL_KEEP_BYTES_TEXT "8388608"
_Static_assert(2 * CKPT_BYTES == 8388608, "update WAL_KEEP_BYTES_TEXT");

static int wal_hook(void *arg, sqlite3 *db, const char *name, int pages)
{
    struct store_sqlite *s = arg;
    (void)db;
    (void)name;
    if (pages >= s->ckpt_pages) {
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
    int64_t restart_after_ms = 0;
    for (;;) {
        uv_mutex_lock(&s->ckpt_lock);
        while (!s->ckpt_wanted && !s->ckpt_closing)
            uv_cond_wait(&s->ckpt_cond, &s->ckpt_lock);
        bool closing = s->ckpt_closing;
        s->ckpt_wanted = false;
        uv_mutex_unlock(&s->ckpt_lock);
        if (closing)
            break;
        /* A connection opens the WAL only when it first reads, and until
         * then SQLite (before 3.42) answers a checkpoint SQLITE_OK having
         * done nothing (-1 pages): without this read the WAL was never
         * copied back and grew with every message until chatd stopped. */
        char e[256];
        if (exec(db, "SELECT 1 FROM sqlite_master LIMIT 1", e, sizeof e) != 0) {
            log_warn("store_checkpoint_failed", "error=\"%s\"", e);
            continue;
        }
        int log_pages = 0, done = 0;
        int rc = sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log_pages, &done);
        if (rc == SQLITE_OK && log_pages >= CKPT_RESTART_TIMES * s->ckpt_pages &&
            clock_mono_ms() >= restart_after_ms) {
            sqlite3_busy_timeout(db, CKPT_RESTART_BUSY_MS);
            rc = sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_RESTART, &log_pages, &done);
            sqlite3_busy_timeout(db, 1000);
            if (rc == SQLITE_BUSY)
                restart_after_ms = clock_mono_ms() + CKPT_RESTART_BACKOFF_MS;
        }
        /* SQLITE_BUSY is no failure: another connection held the
         * checkpoint lock, or the writer was midway through updating the
         * WAL's shared header when this one read it (the two copies
         * differed and the writer's lock was taken). SQLite then answers
         * -1 pages, having copied nothing; the writer's next commit asks
         * again. Only a checkpoint that answered SQLITE_OK with -1 pages
         * ran on a connection without its WAL. */
        if (rc != SQLITE_OK && rc != SQLITE_BUSY)
            log_warn("store_checkpoint_failed", "error=\"%s\"", sqlite3_errstr(rc));
        else if (rc == SQLITE_OK && log_pages < 0)
            log_warn("store_checkpoint_failed", "error=\"WAL not open\"");
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

#define CHECK_AUTO_MAX_BYTES (256LL << 20) /* --db-check auto: always checked up to this */

/* Whether to check the file's pages at start (before it is opened). auto:
 * after an unclean stop (a clean close checkpoints and removes the WAL, so
 * a WAL left behind means chatd, the machine or the disk stopped mid-way,
 * when damage is likeliest), or while the file is small enough for the
 * check to cost well under a second. *why says which. */
static bool check_wanted(const char *path, enum store_check mode, const char **why)
{
    if (mode != STORE_CHECK_AUTO) {
        *why = mode == STORE_CHECK_ALWAYS ? "always" : "never";
        return mode == STORE_CHECK_ALWAYS;
    }
    char wal[4096];
    struct stat st;
    if (snprintf(wal, sizeof wal, "%s-wal", path) < (int)sizeof wal && stat(wal, &st) == 0) {
        *why = "unclean stop";
        return true;
    }
    if (stat(path, &st) != 0 || st.st_size <= CHECK_AUTO_MAX_BYTES) {
        *why = "small file";
        return true;
    }
    *why = "large file, clean stop";
    return false;
}

/* A damaged file is refused at start, naming it, rather than found by the
 * reader or the commit that meets the damaged page (which would answer its
 * client `unavailable` for ever). quick_check reads every page once: its
 * time grows with the file (it is logged); --db-check says when. */
static int check_file(sqlite3 *db, const char *why, char *err, size_t errlen)
{
    int64_t t0 = clock_mono_ms();
    sqlite3_stmt *st = NULL;
    const char *what = NULL;
    int rc = sqlite3_prepare_v2(db, "PRAGMA quick_check(1)", -1, &st, NULL);
    if (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW)
        what = (const char *)sqlite3_column_text(st, 0);
    bool ok = what && strcmp(what, "ok") == 0;
    if (!ok) {
        snprintf(err, errlen, "the file is damaged (%s); restore it from a backup",
                 what ? what : sqlite3_errmsg(db));
        for (char *c = err; *c; c++) /* SQLite's report may span lines */
            if ((unsigned char)*c < 0x20)
                *c = ' ';
    }
    sqlite3_finalize(st);
    if (ok)
        log_info("store_checked", "ms=%lld why=\"%s\"", (long long)(clock_mono_ms() - t0), why);
    return ok ? 0 : -1;
}

/* The integer a one-value statement (a PRAGMA) gives; 0 if none. */
static int pragma_int(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st;
    int v = 0;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
        if (sqlite3_step(st) == SQLITE_ROW)
            v = sqlite3_column_int(st, 0);
        sqlite3_finalize(st);
    }
    return v;
}

static int migrate(sqlite3 *db, char *err, size_t errlen)
{
    int version = pragma_int(db, "PRAGMA user_version");
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

/* SQLite keeps allocation statistics under a global lock by default:
 * every allocation of every connection took it. chatd reads none of them.
 * Once per process, before SQLite first starts (later it is refused, and
 * harmless). */
static uv_once_t sqlite_setup_once = UV_ONCE_INIT;
static bool walbuf_ok; /* written once, in sqlite_setup */
static void sqlite_setup(void)
{
    sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
    walbuf_ok = store_sqlite__walbuf_register() == SQLITE_OK;
    if (!walbuf_ok)
        log_warn("store_walbuf_unavailable", "action=\"writing the WAL frame by frame\"");
}

static int sq_open(void **out, const struct store_options *opt, char *err, size_t errlen)
{
    uv_once(&sqlite_setup_once, sqlite_setup);
    struct store_sqlite *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    s->path = strdup(opt->path);
    if (!s->path) {
        free(s);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    s->sync_full = opt->sync_full;
    s->on_batch = opt->on_batch;
    s->arg = opt->arg;
    if (opt->key) {
        s->encrypt = true;
        memcpy(s->key, opt->key, 32);
    }
    if (fifo_init(&s->queue, 0) != 0) {
        free(s->path);
        free(s);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    uv_mutex_init(&s->read_lock);
    uv_mutex_init(&s->ckpt_lock);
    uv_cond_init(&s->ckpt_cond);
    atomic_init(&s->healthy, true);
    atomic_init(&s->failed, false);
    atomic_init(&s->fail_commits, 0);
    s->db_fd = s->wal_fd = -1;

    const char *why;
    bool check = check_wanted(opt->path, opt->check, &why);
    int rc = sqlite3_open_v2(opt->path, &s->db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                             walbuf_ok ? STORE_SQLITE_WALBUF_VFS : NULL);
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
    if (exec(s->db, "PRAGMA page_size = " PAGE_SIZE_TEXT, e, sizeof e) ||
        exec(s->db, "PRAGMA journal_mode = WAL", e, sizeof e) ||
        exec(s->db, s->sync_full ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL",
             e, sizeof e) ||
        exec(s->db, "PRAGMA foreign_keys = ON", e, sizeof e) ||
        exec(s->db, "PRAGMA wal_autocheckpoint = 0", e, sizeof e) ||
        exec(s->db, "PRAGMA cache_size = -" WRITER_CACHE_KIB_TEXT, e, sizeof e) ||
        exec(s->db, "PRAGMA journal_size_limit = " WAL_KEEP_BYTES_TEXT, e, sizeof e)) {
        snprintf(err, errlen, "--db: '%s': %s", opt->path, e);
        goto fail;
    }
    /* The size the file has: set above if it is new, its own otherwise
     * (512 to 65536 bytes; 0 only if the pragma could not run). */
    int page_size = pragma_int(s->db, "PRAGMA page_size");
    s->ckpt_pages = CKPT_BYTES / (page_size > 0 ? page_size : 1024);
    if (!check)
        log_info("store_check_skipped", "why=\"%s\"", why);
    if ((check && check_file(s->db, why, e, sizeof e) != 0) || migrate(s->db, e, sizeof e) != 0) {
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
    store_sqlite__watch_wal(s);
    for (int i = 0; i < S_COUNT; i++) {
        if (sqlite3_prepare_v3(s->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->stmt[i],
                               NULL) != SQLITE_OK) {
            snprintf(err, errlen, "--db: '%s': %s", opt->path, sqlite3_errmsg(s->db));
            goto fail;
        }
    }
    if (uv_thread_create(&s->ckpt_thread, checkpointer_main, s) != 0) {
        snprintf(err, errlen, "cannot start the checkpoint thread");
        goto fail;
    }
    s->ckpt_started = true;
    sqlite3_wal_hook(s->db, wal_hook, s);
    s->bs = malloc(STORE_BATCH_MAX * sizeof *s->bs);
    s->bs_slot = calloc(BATCH_SLOTS, sizeof *s->bs_slot);
    if (!s->bs || !s->bs_slot) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (uv_thread_create(&s->thread, store_sqlite__writer_main, s) != 0) {
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
    fifo_release(&s->queue);
    uv_mutex_destroy(&s->read_lock);
    uv_mutex_destroy(&s->ckpt_lock);
    uv_cond_destroy(&s->ckpt_cond);
    OPENSSL_cleanse(s->key, sizeof s->key);
    free(s->bs);
    free(s->bs_slot);
    free(s->path);
    free(s);
    return -EINVAL;
}

static void sq_close(void *e)
{
    struct store_sqlite *s = e;
    fifo_shut(&s->queue); /* the writer finishes what was accepted, then ends */
    uv_thread_join(&s->thread);
    stop_checkpointer(s);
    uv_mutex_destroy(&s->ckpt_lock);
    uv_cond_destroy(&s->ckpt_cond);
    for (int i = 0; i < S_COUNT; i++)
        sqlite3_finalize(s->stmt[i]);
    /* The last connection to close checkpoints and removes the WAL. */
    sqlite3_close(s->db);
    store_sqlite__read_pool_free(s);
    if (s->db_fd >= 0)
        close(s->db_fd);
    if (s->wal_fd >= 0)
        close(s->wal_fd);
    assert(fifo_take_all(&s->queue, NULL) == NULL);
    fifo_release(&s->queue);
    uv_mutex_destroy(&s->read_lock);
    OPENSSL_cleanse(s->key, sizeof s->key);
    free(s->bs);
    free(s->bs_slot);
    free(s->path);
    free(s);
}

const struct store_engine store_sqlite_engine = {
    .name = "sqlite",
    .open = sq_open,
    .close = sq_close,
    .submit = store_sqlite__submit,
    .healthy = store_sqlite__healthy,
    .failed = store_sqlite__failed,
    .stats = store_sqlite__stats,
    .fail_next_commits = store_sqlite__fail_next_commits,
    .get_session = store_sqlite__get_session,
    .read_events = store_sqlite__read_events,
    .list_sessions = store_sqlite__list_sessions,
    .get_reads = store_sqlite__get_reads,
    .get_share = store_sqlite__get_share,
    .get_summary = store_sqlite__get_summary,
};
