/*
 * DESIGN: the writer. One thread owns the only write connection and its
 * prepared statements; it drains the request queue into batches and runs
 * each batch in one IMMEDIATE transaction, so N messages cost one commit
 * (one fsync with synchronous=FULL). Any SQLite error inside a batch rolls
 * the whole batch back and answers every request in it with
 * STORE_UNAVAILABLE: nothing is acknowledged that was not committed, and no
 * seq is consumed (seqs are read and bumped inside the transaction).
 * Under steady load a small batch lingers (STORE_LINGER_US) for company.
 *
 * A help request updates only a session not yet asking (help = 0), and
 * sqlite3_changes() tells whether it did: the second one is answered as a
 * duplicate and writes nothing. Health: a failed write makes the store
 * unhealthy, and only a batch that wrote makes it healthy again (a batch of
 * checks commits fine on a full disk). The tests' fault hook fails a COMMIT
 * as SQLITE_FULL would, through the same path.
 *
 * Fail-stop: a COMMIT whose outcome is unknown (a failed fsync, any I/O
 * error), or a database or WAL file removed or replaced under the open
 * connection (checked before and after every batch), answers the batch
 * STORE_UNKNOWN or STORE_UNAVAILABLE and fails the store for good.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "store/seal.h"
#include "store/sqlite/internal.h"
#include "util/clock.h"
#include "util/hash.h"
#include "util/log.h"
#include "util/sbuf.h"
#include "util/title.h"

static int step_done(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : rc;
}

/* The batch's entry for session id: found, or loaded from the database
 * (the first request of the batch to name it). 1 found, 0 no such
 * session, <0 SQLite error. */
static int batch_session(struct store_sqlite *s, const char *id, struct batch_session **out)
{
    size_t mask = BATCH_SLOTS - 1, i = (size_t)hash_str(id) & mask;
    for (; s->bs_slot[i]; i = (i + 1) & mask) {
        struct batch_session *b = &s->bs[s->bs_slot[i] - 1];
        if (strcmp(b->id, id) == 0) {
            *out = b;
            return 1;
        }
    }
    assert(s->nbs < STORE_BATCH_MAX); /* one entry per request at most */
    sqlite3_stmt *st = s->stmt[S_SESSION_GET];
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        sqlite3_reset(st);
        return rc == SQLITE_DONE ? 0 : -rc;
    }
    struct batch_session *b = &s->bs[s->nbs];
    memset(b, 0, sizeof *b);
    snprintf(b->id, sizeof b->id, "%s", id);
    const char *owner = (const char *)sqlite3_column_text(st, 0);
    snprintf(b->owner, sizeof b->owner, "%s", owner ? owner : "");
    b->last_seq = sqlite3_column_int64(st, 1);
    const char *model = (const char *)sqlite3_column_text(st, 2);
    snprintf(b->model, sizeof b->model, "%s", model ? model : "");
    b->untitled = sqlite3_column_int(st, 3) != 0;
    sqlite3_reset(st);
    s->bs_slot[i] = (uint16_t)(++s->nbs);
    *out = b;
    return 1;
}

/* Write each session the batch stored events in: once per session, however
 * many events. Before COMMIT. 0 or -(SQLite code). */
static int flush_sessions(struct store_sqlite *s, int64_t now)
{
    sqlite3_stmt *st = s->stmt[S_SESSION_FLUSH];
    for (size_t i = 0; i < s->nbs; i++) {
        struct batch_session *b = &s->bs[i];
        if (!b->bumped)
            continue;
        sqlite3_bind_text(st, 1, b->id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, b->last_seq);
        sqlite3_bind_int64(st, 3, now);
        sqlite3_bind_int(st, 4, (int)b->wait);
        sqlite3_bind_int(st, 5, b->n_user);
        sqlite3_bind_int(st, 6, b->n_admin);
        int rc = step_done(st);
        if (rc != 0)
            return -rc;
    }
    return 0;
}

/* Forget the batch's sessions (at the start of each batch). */
static void batch_sessions_reset(struct store_sqlite *s)
{
    if (s->nbs)
        memset(s->bs_slot, 0, BATCH_SLOTS * sizeof *s->bs_slot);
    s->nbs = 0;
}

/* Load r's session and check the requester may use it. 1 found+allowed,
 * 0 not found/not allowed, <0 SQLite error. */
static int load_session(struct store_sqlite *s, struct store_req *r, struct batch_session **out)
{
    struct batch_session *b = NULL;
    int rc = batch_session(s, r->session_id, &b);
    if (rc <= 0)
        return rc;
    snprintf(r->owner, sizeof r->owner, "%s", b->owner);
    snprintf(r->model, sizeof r->model, "%s", b->model);
    *out = b;
    if (!r->any_session && strcmp(b->owner, r->user) != 0)
        return 0;
    return 1;
}

/* What a failed seal (or a failed draw of random bytes) makes of the
 * batch: refused, with the file untouched. Not an I/O error: that would
 * stop the store for good (fail_stop) over a passing shortage of memory
 * or of random bytes. */
static int seal_error(int rc)
{
    return rc == -ENOMEM ? -SQLITE_NOMEM : -SQLITE_ERROR;
}

/* Is r's client id stored in its session already? 1 (r then carries the
 * stored seq and time, as a duplicate), 0, or -(SQLite code). */
static int find_retry(struct store_sqlite *s, struct store_req *r)
{
    sqlite3_stmt *st = s->stmt[S_EVENT_BY_CLIENT];
    sqlite3_bind_text(st, 1, r->session_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, r->user, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, r->client_id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        r->seq = sqlite3_column_int64(st, 0);
        r->ts_ms = sqlite3_column_int64(st, 1);
        r->duplicate = true;
        r->created = false;
    }
    sqlite3_reset(st);
    return rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : -rc;
}

/* Store one event of r's session at the next seq (the session's row is
 * written once per batch, by flush_sessions). content may be empty
 * (session events). An append whose client id is stored already writes
 * nothing and is answered as the duplicate it is. Sets r->seq and
 * r->ts_ms. 0 or -(SQLite code). */
static int put_event(struct store_sqlite *s, struct store_req *r, struct batch_session *b,
                     const char *type, const char *content, size_t len, int64_t now)
{
    int64_t seq = b->last_seq + 1;
    unsigned char *sealed = NULL;
    size_t sealed_len = 0;
    int src = s->encrypt && len ? store_seal(s->key, r->session_id, seq, content, len, &sealed,
                                             &sealed_len)
                                : 0;
    if (src != 0) {
        struct log_quoted qs;
        log_error("store_seal_failed", "session=%s seq=%lld", log_quotes(&qs, r->session_id),
                  (long long)seq);
        return seal_error(src);
    }
    bool with_client_id = r->client_id[0] && r->op == STORE_APPEND;
    sqlite3_stmt *st = s->stmt[S_EVENT_INSERT];
    sqlite3_bind_text(st, 1, r->session_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, seq);
    sqlite3_bind_text(st, 3, type, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, r->sender_type, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, r->user, -1, SQLITE_STATIC);
    if (r->sender_name)
        sqlite3_bind_text(st, 6, r->sender_name, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 6);
    if (with_client_id)
        sqlite3_bind_text(st, 7, r->client_id, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 7);
    if (sealed)
        sqlite3_bind_blob(st, 8, sealed, (int)sealed_len, SQLITE_STATIC);
    else
        sqlite3_bind_blob(st, 8, len ? content : "", (int)len, SQLITE_STATIC);
    if (r->metadata && r->op == STORE_APPEND)
        sqlite3_bind_text(st, 9, r->metadata, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 9);
    sqlite3_bind_int(st, 10, sealed ? 1 : 0);
    sqlite3_bind_int64(st, 11, now);
    int rc = step_done(st);
    sqlite3_clear_bindings(st);
    free(sealed);
    if (rc != 0)
        return -rc;
    if (sqlite3_changes(s->db) == 0) {
        /* ON CONFLICT DO NOTHING: the client id (or, in a damaged file
         * only, the seq) is taken. */
        rc = with_client_id ? find_retry(s, r) : 0;
        if (rc < 0)
            return rc;
        return rc == 1 ? 0 : -SQLITE_CONSTRAINT;
    }
    b->last_seq = seq;
    b->bumped = true;
    r->seq = seq;
    r->ts_ms = now;
    return 0;
}

/* Bind a title (sealed when the store encrypts: seq 0 of the session is
 * never an event's) at index i, its enc flag at i + 1. The sealed copy, to
 * free after the step, in *sealed. */
static int bind_title(struct store_sqlite *s, sqlite3_stmt *st, int i, const char *sid,
                      const char *title, size_t len, unsigned char **sealed)
{
    size_t n = 0;
    *sealed = NULL;
    int src = s->encrypt ? store_seal(s->key, sid, 0, title, len, sealed, &n) : 0;
    if (src != 0)
        return seal_error(src);
    if (*sealed)
        sqlite3_bind_blob(st, i, *sealed, (int)n, SQLITE_STATIC);
    else
        sqlite3_bind_text(st, i, title, (int)len, SQLITE_STATIC);
    sqlite3_bind_int(st, i + 1, *sealed ? 1 : 0);
    return 0;
}

/* Run a statement bound to the session id alone. */
static int run_on_session(struct store_sqlite *s, int which, const char *sid)
{
    sqlite3_stmt *st = s->stmt[which];
    sqlite3_bind_text(st, 1, sid, -1, SQLITE_STATIC);
    return step_done(st);
}

/* The session's first user message gives it its title. */
static int set_first_title(struct store_sqlite *s, struct store_req *r)
{
    char title[TITLE_MAX_BYTES + 1];
    size_t tlen = title_from_text(r->content, r->content_len, title);
    if (!tlen)
        return 0;
    sqlite3_stmt *st = s->stmt[S_SESSION_TITLE_INIT];
    unsigned char *sealed;
    sqlite3_bind_text(st, 1, r->session_id, -1, SQLITE_STATIC);
    int rc = bind_title(s, st, 2, r->session_id, title, tlen, &sealed);
    if (rc != 0)
        return rc;
    rc = step_done(st);
    sqlite3_clear_bindings(st);
    free(sealed);
    return rc;
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
            if (store_new_session_id(r->session_id) != 0) {
                log_error("store_random_failed", "what=\"session id\"");
                return seal_error(-EIO);
            }
            st = s->stmt[S_SESSION_INSERT];
            sqlite3_bind_text(st, 1, r->session_id, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 2, r->user, -1, SQLITE_STATIC);
            sqlite3_bind_int64(st, 3, now);
            if (r->client_id[0])
                sqlite3_bind_text(st, 4, r->client_id, -1, SQLITE_STATIC);
            else
                sqlite3_bind_null(st, 4);
            if (r->sender_name)
                sqlite3_bind_text(st, 5, r->sender_name, -1, SQLITE_STATIC);
            else
                sqlite3_bind_null(st, 5);
            rc = step_done(st);
            sqlite3_clear_bindings(st);
            if (rc != 0)
                return -rc;
            r->created = true;
        }
    }
    struct batch_session *b;
    rc = load_session(s, r, &b);
    if (rc <= 0) {
        r->status = STORE_NOT_FOUND;
        return rc;
    }
    const char *type = strcmp(r->sender_type, "admin") == 0 ? "admin_message"
                       : strcmp(r->sender_type, "ai") == 0  ? "ai_response"
                                                            : "user_message";
    bool user = strcmp(r->sender_type, "user") == 0;
    if ((rc = put_event(s, r, b, type, r->content, r->content_len, now)) != 0)
        return rc;
    r->status = STORE_OK;
    if (r->duplicate)
        return 0;
    if (user) {
        b->n_user++;
        b->wait = b->wait == WAIT_END || b->wait == WAIT_RESTART ? WAIT_RESTART : WAIT_START;
    } else {
        b->n_admin += strcmp(r->sender_type, "admin") == 0;
        b->wait = WAIT_END;
    }
    if (user && b->untitled) {
        if ((rc = set_first_title(s, r)) != 0)
            return -rc;
        b->untitled = false;
    }
    return 0;
}

/* The session's title into r->arg (a help request tells it to the
 * webhook); "" when none. 0 or -(SQLite code). */
static int fetch_title(struct store_sqlite *s, struct store_req *r)
{
    sqlite3_stmt *st = s->stmt[S_SESSION_TITLE_GET];
    sqlite3_bind_text(st, 1, r->session_id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    char *t = NULL;
    size_t len = 0;
    if (rc == SQLITE_ROW) {
        const void *v = sqlite3_column_blob(st, 0);
        size_t n = (size_t)sqlite3_column_bytes(st, 0);
        if (v && n && sqlite3_column_int(st, 1)) {
            if (!s->encrypt || store_unseal(s->key, r->session_id, 0, v, n, &t, &len))
                t = NULL; /* not readable: the webhook goes without it */
        } else if (v && n && (t = malloc(n + 1))) {
            memcpy(t, v, n);
            t[n] = '\0';
        }
    }
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return rc;
    free(r->arg);
    r->arg = t ? t : strdup("");
    return 0;
}

/* The ops that change the session without a message. r's session is
 * loaded (b; its last seq in r->seq). */
static int do_session_op(struct store_sqlite *s, struct store_req *r, struct batch_session *b,
                         int64_t now)
{
    int64_t last_seq = b->last_seq;
    sqlite3_stmt *st;
    int rc;
    switch (r->op) {
    case STORE_HELP:
    case STORE_RESOLVE:
        /* Only a change is stored: asking again while asked, or resolving
         * what is not open, is a duplicate and writes nothing. */
        st = s->stmt[r->op == STORE_HELP ? S_SESSION_HELP : S_SESSION_RESOLVE];
        sqlite3_bind_text(st, 1, r->session_id, -1, SQLITE_STATIC);
        if ((rc = step_done(st)) != 0)
            return -rc;
        r->duplicate = sqlite3_changes(s->db) == 0;
        if (r->duplicate)
            return 0;
        if (r->op == STORE_HELP && (rc = fetch_title(s, r)) != 0)
            return -rc;
        return put_event(s, r, b, r->op == STORE_HELP ? "help_request" : "help_resolved", NULL,
                         0, now);
    case STORE_EVENT:
        return put_event(s, r, b, r->event_type, NULL, 0, now);
    case STORE_MODEL:
        st = s->stmt[S_SESSION_MODEL];
        sqlite3_bind_text(st, 1, r->session_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, r->arg ? r->arg : "", -1, SQLITE_STATIC);
        if ((rc = step_done(st)) != 0)
            return -rc;
        snprintf(b->model, sizeof b->model, "%s", r->arg ? r->arg : ""); /* later requests */
        return 0;
    case STORE_READ:
        st = s->stmt[S_READ_PUT];
        sqlite3_bind_text(st, 1, r->session_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, r->user, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, r->num < last_seq ? r->num : last_seq);
        return (rc = step_done(st)) ? -rc : 0;
    case STORE_RENAME: {
        unsigned char *sealed;
        const char *t = r->arg ? r->arg : "";
        st = s->stmt[S_SESSION_RENAME];
        sqlite3_bind_text(st, 1, r->session_id, -1, SQLITE_STATIC);
        if ((rc = bind_title(s, st, 2, r->session_id, t, strlen(t), &sealed)) != 0)
            return rc;
        sqlite3_bind_int64(st, 4, now);
        rc = step_done(st);
        sqlite3_clear_bindings(st);
        free(sealed);
        b->untitled = false;
        return rc ? -rc : 0;
    }
    case STORE_SHARE:
        st = s->stmt[S_SHARE_PUT];
        sqlite3_bind_text(st, 1, r->arg ? r->arg : "", -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, r->session_id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, r->num);
        return (rc = step_done(st)) ? -rc : 0;
    case STORE_UNSHARE:
        return (rc = run_on_session(s, S_SHARE_REVOKE, r->session_id)) ? -rc : 0;
    default:
        return 0;
    }
}

static int do_request(struct store_sqlite *s, struct store_req *r, int64_t now)
{
    r->status = STORE_OK;
    r->ts_ms = now;
    if (r->op == STORE_APPEND)
        return do_append(s, r, now);
    struct batch_session *b;
    int rc = load_session(s, r, &b);
    if (rc <= 0) {
        r->status = STORE_NOT_FOUND;
        return rc;
    }
    r->seq = b->last_seq;
    return do_session_op(s, r, b, now);
}

/* Is the file behind fd (opened as path) still the one at path? NULL, or
 * why not. One stat of the path answers both ways a file goes: removed
 * (no file there, or another: "replaced"), since the inode chatd holds open
 * cannot be freed and given to a new file meanwhile. fd itself is not
 * looked at beyond being open: an unlinked file's link count adds nothing
 * the path does not tell, and this runs twice a batch. */
static const char *file_gone(int fd, const struct stat *was, const char *path)
{
    struct stat now;
    if (fd < 0)
        return NULL;
    if (stat(path, &now) != 0)
        return errno == ENOENT ? "removed" : NULL;
    if (now.st_dev != was->st_dev || now.st_ino != was->st_ino)
        return "replaced";
    return NULL;
}

/* WAL mode creates the WAL file on first use: watch it from then on. */
void store_sqlite__watch_wal(struct store_sqlite *s)
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

/* The tests' fault hook (store_fail_next_commits): is this commit one of
 * those to fail as if the disk refused it? One relaxed load when unused. */
static bool injected_commit_failure(struct store_sqlite *s)
{
    unsigned left = atomic_load_explicit(&s->fail_commits, memory_order_relaxed);
    while (left > 0)
        if (atomic_compare_exchange_weak(&s->fail_commits, &left, left - 1)) {
            log_info("store_fault_injected", "at=commit left=%u", left - 1);
            return true;
        }
    return false;
}

static void run_batch(struct store_sqlite *s, struct store_req **reqs, size_t n)
{
    struct log_quoted qp;
    int64_t t0 = store__now_us();
    /* The wall clock may be set back (by hours, by hand or by a time
     * service): event times never go back with it, so that seq order and
     * time order agree. They hold at the latest one given until the clock
     * catches up, or until a restart. A forward jump is taken as it is. */
    int64_t now = clock_wall_ms();
    if (now < s->last_wall_ms)
        now = s->last_wall_ms;
    s->last_wall_ms = now;
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
    batch_sessions_reset(s);
    if (rc == 0) {
        for (size_t i = 0; i < n; i++)
            if ((rc = do_request(s, reqs[i], now)) != 0)
                break;
        if (rc == 0)
            rc = flush_sessions(s, now);
        if (rc == 0) {
            at_commit = true;
            rc = injected_commit_failure(s) ? SQLITE_FULL : step_done(s->stmt[S_COMMIT]);
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
        store__count_commit(&s->counters, store__now_us() - t0, n);
        store_sqlite__watch_wal(s);
    }
    s->on_batch(s->arg, reqs, n);
}

/* Move up to max - n queued requests into batch. */
void store_sqlite__writer_main(void *arg)
{
    struct store_sqlite *s = arg;
    struct store_req *batch[STORE_BATCH_MAX];
    int64_t last_end_us = 0;
    static_assert(STORE_BATCH_MAX <= UINT16_MAX && (BATCH_SLOTS & (BATCH_SLOTS - 1)) == 0,
                  "bs_slot holds an index + 1 in 16 bits, and is a power of two");
    /* fifo_wait returns -ESHUTDOWN only once the queue is shut and every
     * accepted request has been taken: close finishes queued writes. */
    while (fifo_wait(&s->queue, FIFO_FOREVER) == 0) {
        size_t n = store__take_batch(&s->queue, batch, last_end_us); /* group commit */
        assert(n > 0); /* one consumer: a 0 from fifo_wait means a node to take */
        run_batch(s, batch, n);
        last_end_us = store__now_us();
    }
    sbuf_thread_cleanup(); /* on_batch may have dropped frames here */
}

int store_sqlite__submit(void *e, struct store_req *r)
{
    struct store_sqlite *s = e;
    return store__push(&s->queue, r);
}

bool store_sqlite__healthy(void *e)
{
    struct store_sqlite *s = e;
    return atomic_load(&s->healthy) && !atomic_load(&s->failed);
}

bool store_sqlite__failed(void *e)
{
    struct store_sqlite *s = e;
    return atomic_load(&s->failed);
}

void store_sqlite__stats(void *e, struct store_stats *out)
{
    struct store_sqlite *s = e;
    store__counters_read(&s->counters, out);
}


void store_sqlite__fail_next_commits(void *e, unsigned n)
{
    struct store_sqlite *s = e;
    atomic_store(&s->fail_commits, n);
}
