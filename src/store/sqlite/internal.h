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

/* The writer's prepared statements (SQL text in sqlite.c). */
enum {
    S_SESSION_GET = 0,
    S_SESSION_BY_ORIGIN,
    S_SESSION_INSERT,
    S_SESSION_BUMP,
    S_SESSION_HELP,
    S_SESSION_MODEL,
    S_SESSION_TITLE_INIT,
    S_SESSION_TITLE_GET,
    S_SESSION_RENAME,
    S_SESSION_BUMP_USER,
    S_SESSION_BUMP_ANSWER,
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

/* An idle read-only connection in the pool. */
struct read_conn {
    struct read_conn *next;
    sqlite3 *db; /* owned */
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

    /* writer thread only */
    sqlite3 *db;                 /* owned: the only write connection */
    sqlite3_stmt *stmt[S_COUNT]; /* owned */
    int64_t last_wall_ms;        /* the latest time a batch was given (0: none yet) */

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
