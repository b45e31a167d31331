/*
 * store/sqlite internals: the engine's state and what its files share.
 * Only the files of src/store/sqlite/ include this; everyone else sees
 * the engine through store.h.
 *
 * Files: sqlite.c (schema, open, close, the checkpointer, the engine
 * table), writer.c (the queue, the writer thread, batches, fail-stop),
 * read.c (the read-connection pool and the reads). Contents and titles are
 * sealed by store/seal.c, shared with the other engines.
 *
 * Threads and locks (all locks are leaves):
 *   - the writer owns `db`, `stmt`, and the file watch (`db_fd`, `wal_fd`);
 *   - the request queue is a util/fifo with its own lock (a leaf);
 *   - `ckpt_lock` (+ `ckpt_cond`) guards the checkpoint request flags;
 *   - `read_lock` guards the pool of idle read connections;
 *   - health, fail-stop, the fault hook and the statistics are atomics;
 *   - the rest is set by open and read-only until close.
 */
#ifndef CHATD_STORE_SQLITE_INTERNAL_H
#define CHATD_STORE_SQLITE_INTERNAL_H

#include <sqlite3.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <uv.h>

#include "store/store.h"

/* The condition of the partial index events_by_kind (schema 3): every
 * event but the messages of users and admins. A query that may use the
 * index says it word for word (SQLite matches the text of the terms). */
#define EVENTS_BY_KIND "type <> 'user_message' AND type <> 'admin_message'"

/* The writer's prepared statements (SQL text in sqlite.c). */
enum {
    S_SESSION_GET = 0,
    S_SESSION_BY_ORIGIN,
    S_SESSION_INSERT,
    S_SESSION_HELP,
    S_SESSION_MODEL,
    S_SESSION_TITLE_INIT,
    S_SESSION_TITLE_GET,
    S_SESSION_RENAME,
    S_SESSION_FLUSH,
    S_SESSION_RESOLVE,
    S_READ_PUT,
    S_SHARE_PUT,
    S_SHARE_REVOKE,
    S_EVENT_BY_CLIENT,
    S_EVENT_INSERT,
    S_BEGIN,
    S_COMMIT,
    S_ROLLBACK,
    S_COUNT
};

/* A session as one batch sees it (writer thread only, valid for one
 * batch): loaded once, then each event of the batch takes its seq from here,
 * and the session row is written once, before COMMIT (flush_sessions). */
enum batch_wait {
    WAIT_KEEP = 0,  /* no message: waiting_since unchanged */
    WAIT_START,     /* a user message: start a wait unless one runs */
    WAIT_RESTART,   /* an answer, then a user message: a wait from now */
    WAIT_END,       /* an answer last: no wait */
};
struct batch_session {
    char id[STORE_ID_LEN + 1];
    char owner[STORE_MAX_USER + 1];
    char model[65];
    int64_t last_seq;
    bool untitled;
    bool bumped;          /* an event was stored: the row needs its update */
    enum batch_wait wait;
    int n_user, n_admin;  /* messages stored this batch, for the counters */
};
#define BATCH_SLOTS (2 * STORE_BATCH_MAX) /* open addressing, at most half full */

/* The reads' statements, prepared once per read connection (read.c). */
enum read_q {
    READ_Q_SESSION,
    READ_Q_EVENTS,
    READ_Q_PREVIEW,
    READ_Q_LIST_OWNER,
    READ_Q_LIST_HELP,
    READ_Q_LIST_ALL,
    READ_Q_READS,
    READ_Q_SHARE,
    READ_Q_N
};

/* A read-only connection of the pool: used by one thread at a time, the
 * one that took it (read_get); idle ones under read_lock. */
struct read_conn {
    struct read_conn *next;
    sqlite3 *db;                  /* owned */
    sqlite3_stmt *st[READ_Q_N];   /* owned: prepared on first use, reset after each */
};

struct store_sqlite {
    /* read-only after open */
    char *path; /* owned */
    bool sync_full;
    bool encrypt;
    unsigned char key[32]; /* wiped at close */
    void (*on_batch)(void *arg, struct store_req **reqs, size_t n);
    void *arg; /* borrowed: on_batch's */
    uv_thread_t thread;
    int ckpt_pages; /* the WAL pages that call for a checkpoint: CKPT_BYTES of the file's pages */

    /* writer thread only */
    sqlite3 *db;                 /* owned: the only write connection */
    sqlite3_stmt *stmt[S_COUNT]; /* owned */
    int64_t last_wall_ms;        /* the latest time a batch was given (0: none yet) */
    struct batch_session *bs;    /* owned: STORE_BATCH_MAX entries, the batch's sessions */
    uint16_t *bs_slot;           /* owned: BATCH_SLOTS, index + 1 into bs (0: free) */
    size_t nbs;                  /* entries of bs in use this batch */

    /* the request queue (its own lock): workers push, the writer takes;
     * requests are owned by the store until handed to on_batch. No count
     * limit: each connection has at most its input budget's worth of
     * requests in flight, and refusing one here could only answer it
     * 'unavailable'. */
    struct fifo queue;

    /* checkpointer: guarded by ckpt_lock */
    uv_thread_t ckpt_thread;
    uv_mutex_t ckpt_lock;
    uv_cond_t ckpt_cond;
    bool ckpt_wanted;
    bool ckpt_closing;
    bool ckpt_started;

    /* guarded by read_lock */
    uv_mutex_t read_lock;
    struct read_conn *idle; /* owned */

    /* writer thread only (and open before it starts): the files as opened,
     * to notice them removed or replaced (-1: not open yet) */
    int db_fd, wal_fd;
    struct stat db_st, wal_st;

    /* atomics */
    atomic_bool healthy;
    atomic_bool failed; /* fail-stop: set once, never cleared */
    atomic_uint fail_commits; /* tests: commits left to fail (store_fail_next_commits) */
    struct store__counters counters;
};

/* ---- writer.c: any thread unless said ---- */

/* The writer thread's body (arg: the store_sqlite). */
void store_sqlite__writer_main(void *arg);
/* Open the WAL file once it exists, to watch it. Open, then writer thread. */
void store_sqlite__watch_wal(struct store_sqlite *s);
int store_sqlite__submit(void *e, struct store_req *r);
bool store_sqlite__healthy(void *e);
bool store_sqlite__failed(void *e);
void store_sqlite__stats(void *e, struct store_stats *out);
void store_sqlite__fail_next_commits(void *e, unsigned n);

/* ---- walbuf.c: the writer's VFS (one write per commit into the WAL) ---- */

#define STORE_SQLITE_WALBUF_VFS "chatd-walbuf"
/* Register the VFS (not as the default). Once per process, before any
 * connection opens with it. SQLITE_OK or an SQLite code. */
int store_sqlite__walbuf_register(void);

/* ---- read.c: the reads (thread pool) and the pool's end (close) ---- */

int store_sqlite__get_session(void *e, const char *id, struct store_session *out);
int store_sqlite__read_events(void *e, const char *id, int64_t after_seq, int64_t limit,
                              size_t max_bytes, struct store_event **out);
int store_sqlite__list_sessions(void *e, const char *owner, bool help_only, int limit,
                                struct store_session **out);
int store_sqlite__get_reads(void *e, const char *id, struct store_read **out);
int store_sqlite__get_share(void *e, const char *token, char session[STORE_ID_LEN + 1],
                            int64_t *expires_ms);
int store_sqlite__get_summary(void *e, struct store_summary *out);
/* Close every idle read connection. Close, after the last read. */
void store_sqlite__read_pool_free(struct store_sqlite *s);

#endif
