/*
 * store: durable storage of sessions and their events, behind one interface.
 *
 * A `struct store` is a handle on one storage engine (SQLite in
 * src/store/sqlite/, the default; PostgreSQL in src/store/postgres/),
 * chosen by name at store_open. Every store_* function dispatches
 * through the engine's table of operations
 * (`struct store_engine`, at the end of this file), so callers never know
 * which engine runs. The store owns the engine and its state; callers own
 * nothing inside it.
 *
 * Writes: callers queue requests with store_submit() from any thread. The
 * engine's writer takes everything queued (up to STORE_BATCH_MAX), runs it
 * as one transaction (group commit), and hands the whole batch, in commit
 * order, to the on_batch callback on the writer thread, which takes
 * ownership of the requests. Reads (history, resume, session lists) are
 * synchronous calls for the libuv thread pool.
 *
 * The guarantees every engine keeps (tests/unit/test_store.c checks them on
 * each engine; the numbers are referred to below):
 *
 *  G1 Group commit: requests queued together share one transaction; under
 *     steady load a small batch may linger (STORE_LINGER_US) for company.
 *  G2 Ack only after commit: on_batch sees a request's results only once
 *     its transaction has committed, or failed. Every request that
 *     store_submit took reaches on_batch exactly once, also those still
 *     queued when store_close begins (close drains the queue).
 *  G3 Gapless seq in commit order: each session's events carry seq 1, 2,
 *     3... with no gap and no repeat, assigned inside the transaction, so
 *     per session the seqs that on_batch sees rise by one in the order it
 *     sees them.
 *  G4 A failed commit consumes no seq and leaves nothing visible: when a
 *     batch is known not committed (a refused write, a busy database),
 *     every request in it is answered STORE_UNAVAILABLE, none of it can be
 *     read, a later request gets the seq the failed one would have had, and
 *     a retry with the same client id is stored anew. The store is
 *     unhealthy until a later batch writes, but has not failed.
 *  G5 Dedup by client id: an APPEND with the same (session, user, client
 *     id) as a stored event is not stored again; it is answered STORE_OK
 *     with duplicate set and the original seq and timestamp. A retried
 *     session-creating APPEND (no session id, same user and client id)
 *     finds the session the first one made.
 *  G6 Encryption at rest: with a key, event contents are sealed (AES-256-GCM,
 *     bound to session and seq) before they reach the engine's files or
 *     server; reads unseal them, and a content that cannot be unsealed fails
 *     the read (-EIO) rather than return ciphertext.
 *  G7 Never an ack of what is not known committed: when the engine can no
 *     longer tell whether a commit is durable, it answers that batch
 *     STORE_UNKNOWN (STORE_UNAVAILABLE when it knows nothing of it was
 *     written). An engine that keeps its own files (SQLite) then fails for
 *     good (store_failed) and refuses every later write with
 *     STORE_UNAVAILABLE; a restart recovers from what is durable. An engine
 *     whose server keeps durability (PostgreSQL) first asks the server,
 *     once it can reach it again, what became of the transaction and
 *     answers by that; it never fails for good, and while the server is
 *     unreachable it answers writes STORE_UNAVAILABLE and is unhealthy.
 *     Either way dedup (G5) makes the clients' retries safe.
 *  G8 Reads never on a worker loop: the read functions block (disk,
 *     network) and are called from the thread pool; they never wait for
 *     the writer, and see only committed data.
 *
 * Threads: store_open and store_close on the main thread, with no other
 * call in flight or to come; store_submit, store_healthy, store_failed,
 * store_get_stats and store_fail_next_commits on any thread; the reads on
 * any thread but a worker's loop; on_batch on the engine's writer thread.
 * Which threads and locks an engine has inside is its own business, said in
 * its DESIGN note.
 *
 * Errors are negative errno values; engines map their own codes once,
 * inside the engine.
 */
#ifndef CHATD_STORE_STORE_H
#define CHATD_STORE_STORE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/fifo.h"

#define STORE_BATCH_MAX 1024
#define STORE_LINGER_US 300   /* under load, a small batch waits this long for more */
#define STORE_ID_LEN 26       /* "s_" + 24 hex digits */
#define STORE_MAX_USER 128
#define STORE_ENGINE_DEFAULT "sqlite"

/* The engines built in (store/engines.c), the default first. */
struct store_engine;
extern const struct store_engine *const store_engines[];
extern const size_t store_nengines;

enum store_op {
    STORE_APPEND = 0,  /* store a user, admin or ai message (new session if no id); the
                        * session's first user message gives it its title (util/title.h)
                        * unless it has one */
    STORE_CHECK,       /* authorize only: does the user own the session? */
    STORE_HELP,        /* mark help requested and store a help_request event (arg: set to
                        * the session's title, for the help webhook); when it was
                        * already requested: duplicate, nothing written */
    STORE_MODEL,       /* set the session's model */
    STORE_EVENT,       /* store the session event event_type (admin_join, admin_leave) */
    STORE_RESOLVE,     /* clear help and store a help_resolved event; none open: duplicate */
    STORE_READ,        /* user has read up to num: kept when higher than before (at most the
                        * session's last seq) */
    STORE_RENAME,      /* set the title to arg (chosen by the owner: kept from then on) */
    STORE_SHARE,       /* a read-only link: token arg, valid until num (ms since epoch) */
    STORE_UNSHARE,     /* revoke every link of the session */
};

enum store_status {
    STORE_OK = 0,
    STORE_NOT_FOUND,   /* no such session, or not the requester's */
    STORE_UNAVAILABLE, /* not stored: the database refused the write (disk full, busy), or
                        * the store has failed (see store_failed) */
    STORE_UNKNOWN,     /* the commit failed in a way that leaves unknown whether it is
                        * durable (SQLite: a failed fsync, and the store has failed;
                        * PostgreSQL: the connection was lost during COMMIT and the server
                        * could not be asked in time); a retry with the same client id is
                        * safe (dedup) */
};

/* One request, allocated by the caller, owned by the store from submit
 * until on_batch hands it back. */
struct store_req {
    struct fifo_node node;          /* private: the engine's queue link */
    enum store_op op;
    /* who asked (opaque to the store, used by on_batch) */
    uint32_t worker;
    uint64_t conn_id;
    uint32_t kind;                  /* caller's own tag (message type) */
    /* input */
    char session_id[STORE_ID_LEN + 1]; /* empty: create a session (APPEND only) */
    char user[STORE_MAX_USER + 1];  /* requester */
    bool any_session;               /* requester may use sessions of others (admin) */
    char sender_type[8];            /* "user", "admin", "ai", "system" */
    char *sender_name;              /* owned */
    char client_id[65];             /* "" when none */
    char *content;                  /* owned */
    size_t content_len;
    char *metadata;                 /* owned JSON object text, or NULL */
    char *arg;                      /* owned: op-specific (model id, title, share token,
                                     * relay payload) */
    char event_type[16];            /* EVENT: the event's type */
    int64_t num;                    /* READ: the seq read; SHARE: the link's expiry (ms) */
    void *waiter;                   /* the caller's, untouched by the store */
    /* result */
    enum store_status status;
    bool created;                   /* APPEND made a new session */
    bool duplicate;                 /* APPEND matched an earlier client id; HELP: the
                                     * session already asked (nothing written) */
    int64_t seq;                    /* APPEND: the event's; other ops: the session's last */
    int64_t ts_ms;
    char owner[STORE_MAX_USER + 1]; /* the session's owner */
    char model[65];                 /* the session's model ("" when none was set) */
};

/* A stored event as read back. Strings are owned by the event. */
struct store_event {
    int64_t seq;
    int64_t ts_ms;
    char type[16];                  /* "user_message", "admin_message", "ai_response" */
    char sender_type[8];
    char *sender_id;
    char *sender_name;              /* NULL when none was given */
    char *client_id;                /* NULL when none was given */
    char *content;                  /* NUL-terminated beyond content_len */
    size_t content_len;
    char *metadata;                 /* NULL when none was given */
};

#define STORE_TITLE_MAX 255   /* bytes of a title (derived: util/title.h; renamed: 100) */
#define STORE_PREVIEW_CHARS 140 /* characters of a session's last message in a list */

struct store_session {
    char id[STORE_ID_LEN + 1];
    char owner[STORE_MAX_USER + 1];
    char owner_name[STORE_MAX_USER + 1]; /* the name the owner had at creation ("": none) */
    char title[STORE_TITLE_MAX + 1];     /* "" until the first user message */
    int64_t created_ms, updated_ms; /* updated: the last stored event */
    int64_t last_seq;
    int64_t waiting_ms;             /* since when the oldest user message not yet followed
                                     * by an admin or ai message waits (0: none waits) */
    bool help;
    char model[65];                 /* "" when none was set */
    /* store_list_sessions only: the last message ("" type: none) */
    char preview_type[16];
    char preview_sender[STORE_MAX_USER + 1];
    char preview[STORE_PREVIEW_CHARS * 4 + 1]; /* at most STORE_PREVIEW_CHARS characters */
};

/* One reader's latest read marker in a session. */
struct store_read {
    char reader[STORE_MAX_USER + 1];
    int64_t seq;
};

/* Counts over every session, for the admins' statistics. */
struct store_summary {
    int64_t sessions, help_open;
    int64_t messages_user, messages_admin, messages_ai;
    int64_t tokens_in, tokens_out; /* from the ai answers' metadata */
    /* from each help request to the first admin message after it, in
     * milliseconds, sorted; n of them (malloc'd: free) */
    int64_t *help_waits;
    size_t nhelp_waits;
};

struct store;

/* When the SQLite engine reads every page of its file at start. */
enum store_check {
    STORE_CHECK_AUTO = 0, /* after an unclean stop, or while the file is small */
    STORE_CHECK_ALWAYS,
    STORE_CHECK_NEVER,
};

struct store_options {
    const char *engine;             /* engine name; NULL: STORE_ENGINE_DEFAULT */
    const char *path;               /* where the engine keeps its data (SQLite: a file;
                                     * PostgreSQL: a libpq connection string, which may
                                     * hold a password: engines never log it) */
    bool sync_full;                 /* SQLite: synchronous=FULL, else NORMAL */
    enum store_check check;         /* SQLite: the page check at start */
    const unsigned char *key;       /* 32-byte AES-256-GCM key or NULL (copied) */
    /* Called on the writer thread with each finished batch in commit order;
     * takes ownership of the requests (free each with store_req_free). It
     * may call store_submit, never store_close. */
    void (*on_batch)(void *arg, struct store_req **reqs, size_t n);
    void *arg;
};

/* Open the engine opt->engine names (creating and migrating its data as
 * needed) and start its writer. 0, or a negative errno (-EINVAL for an
 * unknown engine) with a one-line message in err. Main thread. */
int store_open(struct store **out, const struct store_options *opt, char *err, size_t errlen);
/* Finish the queued writes (each reaches on_batch), stop the writer, close
 * everything and free s. Main thread, once every other caller is done: a
 * call racing with it may touch freed memory. */
void store_close(struct store *s);

/* Queue a write (takes ownership; on_batch hands it back). Any thread.
 * 0, or -ESHUTDOWN once close began (the caller keeps r). */
int store_submit(struct store *s, struct store_req *r);
/* Free a request and what it owns. NULL is fine. Any thread. */
void store_req_free(struct store_req *r);

/* Is the store taking writes (for /readyz)? False after a failed write
 * attempt until one succeeds, and for good once it has failed. Any thread. */
bool store_healthy(struct store *s);
/*
 * Has the store failed for good (fail-stop, G7)? It fails when it can no
 * longer tell whether a commit is durable (SQLite: a commit whose sync
 * reported an I/O error, or a database or WAL file that was removed or
 * replaced while open, checked before and after every batch; PostgreSQL
 * never fails for good: see G7). From then on
 * every write is answered STORE_UNAVAILABLE and nothing more is
 * acknowledged; a restart recovers from what is on disk. Never true in
 * normal operation. Any thread.
 */
bool store_failed(struct store *s);
/* Statistics for /metrics. Any thread. */
struct store_stats {
    uint64_t commits, commit_failures, batched_requests;
    uint64_t commit_us_bucket[12];  /* histogram counts (cumulative not applied) */
    uint64_t commit_us_sum;
    uint64_t batch_bucket[8];
};
void store_get_stats(struct store *s, struct store_stats *out);
/* Upper bounds of the histogram buckets (the same for every engine). */
extern const double store_commit_bounds_ms[12];
extern const unsigned store_batch_bounds[8];

/*
 * For tests: the next n batches that reach their commit fail there as if the
 * disk refused the write (SQLite's SQLITE_FULL): the transaction is rolled
 * back, known not committed, every request in it is answered
 * STORE_UNAVAILABLE, the store turns unhealthy until a later batch writes,
 * and it does NOT fail (store_failed stays false). n replaces any count
 * still pending; 0 cancels. One atomic read per batch when unused. Any
 * thread.
 */
void store_fail_next_commits(struct store *s, unsigned n);

/* ---- synchronous reads (G8: thread pool; any thread but not a worker loop) ---- */

/* The session, if it exists. 0, -ENOENT, or -EIO. */
int store_get_session(struct store *s, const char *id, struct store_session *out);
/* Events with seq > after_seq in order, at most limit (0: no limit), and
 * no more once their contents reach max_bytes (0: no limit; the event that
 * crosses it is included, so a page is never empty while events remain).
 * Returns the count (>= 0) with *out a malloc'd array (free with
 * store_events_free; NULL when the count is 0), or -EIO / -ENOMEM. */
int store_read_events(struct store *s, const char *id, int64_t after_seq, int64_t limit,
                      size_t max_bytes, struct store_event **out);
/* Free what store_read_events returned (n: its count). NULL is fine. */
void store_events_free(struct store_event *ev, int n);
/* Sessions of one owner (owner != NULL: most recently updated first) or
 * all (help_only filters; the sessions asking for help first, then those
 * whose user waits longest, then the most recently updated), at most
 * limit, each with its preview. Count or -EIO / -ENOMEM; free
 * *out with free(). */
int store_list_sessions(struct store *s, const char *owner, bool help_only, int limit,
                        struct store_session **out);

/* The session's read markers, one per reader. Count (>= 0) with *out
 * malloc'd (free()), or -EIO / -ENOMEM. */
int store_get_reads(struct store *s, const char *id, struct store_read **out);
/* The session a share token opens, and until when (ms). 0, -ENOENT (no
 * such link, or revoked), or -EIO. Expiry is the caller's to judge. */
int store_get_share(struct store *s, const char *token, char session[STORE_ID_LEN + 1],
                    int64_t *expires_ms);
/* Counts over every session (see struct store_summary; engines fill
 * help_waits in any order, this sorts them). 0 or -EIO / -ENOMEM; free
 * out->help_waits. */
int store_get_summary(struct store *s, struct store_summary *out);

/* Make a new random session id. 0, or -EIO when the system's random source
 * fails (out is then ""). Any thread. */
int store_new_session_id(char out[STORE_ID_LEN + 1]);

/* ---- for engines only ------------------------------------------------------
 *
 * An engine is a table of operations on its own state (`e`, which open
 * allocates and close frees). Each operation implements the store_*
 * function of the same name, with that function's contract, threads and
 * errors, and keeps G1-G8; fail_next_commits is the hook of
 * store_fail_next_commits, for tests. The engine runs on_batch on its
 * writer thread and calls sbuf_thread_cleanup() (util/sbuf.h) before that
 * thread ends, since on_batch may drop shared frames there. An engine
 * registers by being listed in store.c.
 */
struct store_engine {
    const char *name;               /* as given in store_options.engine */
    int (*open)(void **e, const struct store_options *opt, char *err, size_t errlen);
    void (*close)(void *e);
    int (*submit)(void *e, struct store_req *r);
    bool (*healthy)(void *e);
    bool (*failed)(void *e);
    void (*stats)(void *e, struct store_stats *out);
    void (*fail_next_commits)(void *e, unsigned n);
    int (*get_session)(void *e, const char *id, struct store_session *out);
    int (*read_events)(void *e, const char *id, int64_t after_seq, int64_t limit,
                       size_t max_bytes, struct store_event **out);
    int (*list_sessions)(void *e, const char *owner, bool help_only, int limit,
                         struct store_session **out);
    int (*get_reads)(void *e, const char *id, struct store_read **out);
    int (*get_share)(void *e, const char *token, char session[STORE_ID_LEN + 1],
                     int64_t *expires_ms);
    int (*get_summary)(void *e, struct store_summary *out);
};

/* The statistics every engine keeps, so that /metrics means the same
 * whatever runs. Atomics: any thread. */
struct store__counters {
    atomic_uint_fast64_t commits, failures, batched, commit_us_sum;
    atomic_uint_fast64_t commit_hist[12], batch_hist[8];
};
/* The writer's side of group commit (G1), the same in every engine: wait
 * for nothing more (the caller has had fifo_wait say a request is there),
 * take what is queued, up to STORE_BATCH_MAX into batch; under steady load
 * (the last commit ended less than 2 ms before, at last_end_us) a small
 * batch lingers STORE_LINGER_US for company. Returns the count (> 0 when
 * fifo_wait said a request was there). Writer thread. */
size_t store__take_batch(struct fifo *queue, struct store_req **batch, int64_t last_end_us);
/* Queue r for the writer (an engine's submit). 0 or -ESHUTDOWN. */
int store__push(struct fifo *queue, struct store_req *r);
/* Monotonic microseconds, for commit times and lingering. */
int64_t store__now_us(void);

/* A batch of n requests committed in us microseconds. */
void store__count_commit(struct store__counters *c, int64_t us, size_t n);
/* A batch was refused or its commit failed. */
void store__count_failure(struct store__counters *c);
/* Copy the counters out for store_get_stats. */
void store__counters_read(struct store__counters *c, struct store_stats *out);

#endif
