/*
 * store/postgres internals: the engine's state and what its files share.
 * Only the files of src/store/postgres/ include this; everyone else sees
 * the engine through store.h.
 *
 * Files: postgres.c (connecting, schema migrations, open, close, the engine
 * table), writer.c (the queue, the writer thread, batches, reconnection,
 * commits of unknown outcome), read.c (the read-connection pool and the
 * reads). Contents and titles are sealed by store/seal.c, as SQLite does.
 *
 * Threads and locks (all locks are leaves):
 *   - the writer owns `conn` and everything under "writer thread only";
 *   - the request queue is a util/fifo with its own lock (a leaf);
 *   - `read_lock` guards the pool of idle read connections;
 *   - health, the fault hook and the statistics are atomics;
 *   - the rest is set by open and read-only until close.
 */
#ifndef CHATD_STORE_POSTGRES_INTERNAL_H
#define CHATD_STORE_POSTGRES_INTERNAL_H

#include <libpq-fe.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "store/store.h"

#define PG_READ_POOL_MAX 8 /* idle read connections kept; more are opened and closed */
#define PG_BACKOFF_MIN_MS 100
#define PG_BACKOFF_MAX_MS 5000
#define PG_PROBE_MS 1000         /* an idle writer checks its connection this often */
#define PG_OUTCOME_WAIT_MS 10000 /* how long a commit of unknown outcome is asked after */
#define PG_BATCH_RETRIES 3       /* a batch chosen as a deadlock victim is run again */
#define PG_IDLE_TX_MS 5000       /* the server ends a transaction of ours idle this long */

/* An idle read connection in the pool. */
struct pg_read_conn {
    struct pg_read_conn *next;
    PGconn *conn; /* owned */
};

struct store_postgres {
    /* read-only after open */
    char *dsn;      /* owned: never logged (it may hold a password) */
    char *redacted; /* owned: the DSN fit for logs */
    bool encrypt;
    unsigned char key[32]; /* wiped at close */
    void (*on_batch)(void *arg, struct store_req **reqs, size_t n);
    void *arg; /* borrowed: on_batch's */
    uv_thread_t thread;

    /* writer thread only (and open before it starts) */
    PGconn *conn;        /* owned: the write connection; NULL while the server is unreachable */
    int64_t retry_at_us; /* while conn is NULL: the next attempt (monotonic) */
    int64_t backoff_ms;  /* the wait after the next failed attempt */
    int64_t idle_since_us;
    struct pg_batch *batch; /* the batch being run: what its first statements read */

    /* the request queue (its own lock): workers push, the writer takes */
    struct fifo queue;

    /* guarded by read_lock */
    uv_mutex_t read_lock;
    struct pg_read_conn *idle; /* owned */
    unsigned nidle;

    /* atomics: healthy is connected && writes_ok (see writer.c) */
    atomic_bool connected;
    atomic_bool writes_ok;
    atomic_uint fail_commits; /* tests: commits left to fail (store_fail_next_commits) */
    struct store__counters counters;
};

/* ---- postgres.c ---- */

/* A new connection to the server, set up for chatd (UTC, no notices), or
 * NULL with the reason in err (never holding the password). Any thread. */
PGconn *store_postgres__connect(struct store_postgres *s, char *err, size_t errlen);

/* The first line of c's last error message (c may be NULL). Any thread. */
void store_postgres__error_line(PGconn *c, char *out, size_t len);

/* ---- writer.c: any thread unless said ---- */

/* The writer thread's body (arg: the store_postgres). */
void store_postgres__writer_main(void *arg);
int store_postgres__submit(void *e, struct store_req *r);
bool store_postgres__healthy(void *e);
bool store_postgres__failed(void *e);
void store_postgres__stats(void *e, struct store_stats *out);
void store_postgres__fail_next_commits(void *e, unsigned n);

/* ---- read.c: the reads (thread pool) and the pool's end (close) ---- */

int store_postgres__get_session(void *e, const char *id, struct store_session *out);
int store_postgres__read_events(void *e, const char *id, int64_t after_seq, int64_t limit,
                                size_t max_bytes, struct store_event **out);
int store_postgres__list_sessions(void *e, const char *owner, bool help_only, int limit,
                                  struct store_session **out);
int store_postgres__get_reads(void *e, const char *id, struct store_read **out);
int store_postgres__get_share(void *e, const char *token, char session[STORE_ID_LEN + 1],
                              int64_t *expires_ms);
int store_postgres__get_summary(void *e, struct store_summary *out);
/* A bytea value in hex output ("\\x..."), decoded: malloc'd,
 * NUL-terminated (*len excludes the NUL), or NULL (out of memory, or not
 * hex output). Any thread. */
char *store_postgres__unhex(const char *v, size_t *len);
/* Close every idle read connection. Close, after the last read. */
void store_postgres__read_pool_free(struct store_postgres *s);

#endif
