/*
 * store: durable storage of sessions and their events.
 *
 * Writes go through one writer thread that owns the write connection: callers
 * queue requests with store_submit() from any thread; the writer takes
 * everything queued (up to STORE_BATCH_MAX), runs it in one transaction (group
 * commit), commits, and hands the whole batch, in commit order, to the
 * on_batch callback on the writer thread. A request's result fields are set
 * by then; the callback takes ownership of the requests. Per-session `seq`
 * values are assigned inside the transaction, so they follow commit order and
 * a failed commit consumes none.
 *
 * Reads (history, resume, session lists) are synchronous functions for the
 * libuv thread pool: each borrows one of a small pool of read-only
 * connections (guarded by `read_lock`), so reads never wait for the writer
 * and never run on a worker's loop.
 *
 * Threads: the writer; a checkpointer that copies the WAL into the database
 * (PASSIVE checkpoints, its own connection) when the writer's WAL hook says
 * the WAL has grown; the callers of the read functions.
 *
 * Locks, all leaves: `queue_lock` (+ `queue_cond`) guards the request queue;
 * `ckpt_lock` (+ `ckpt_cond`) guards the checkpoint request flag; `read_lock`
 * guards the pool of read connections. The writer's connection and
 * statements are touched only by the writer thread. Statistics and the
 * health flag are atomics.
 */
#ifndef CHATD_STORE_STORE_H
#define CHATD_STORE_STORE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define STORE_BATCH_MAX 1024
#define STORE_LINGER_US 300   /* under load, a small batch waits this long for more */
#define STORE_ID_LEN 26       /* "s_" + 24 hex digits */
#define STORE_MAX_USER 128

enum store_op {
    STORE_APPEND = 0,  /* store a user or admin message (new session if no id) */
    STORE_CHECK,       /* authorize only: does the user own the session? */
    STORE_HELP,        /* mark help requested */
    STORE_MODEL,       /* set the session's model */
};

enum store_status {
    STORE_OK = 0,
    STORE_NOT_FOUND,   /* no such session, or not the requester's */
    STORE_UNAVAILABLE, /* not stored: the database refused the write (disk full, busy), or
                        * the store has failed (see store_failed) */
    STORE_UNKNOWN,     /* the commit failed in a way that leaves unknown whether it is on
                        * disk (a failed fsync): the store has failed; a retry with the
                        * same client id after a restart is safe (dedup) */
};

/* One request, allocated by the caller, owned by the store from submit
 * until on_batch hands it back. */
struct store_req {
    struct store_req *next;         /* private: queue link */
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
    char *arg;                      /* owned: op-specific (model id, relay payload) */
    /* result */
    enum store_status status;
    bool created;                   /* APPEND made a new session */
    bool duplicate;                 /* APPEND matched an earlier client id; HELP: the
                                     * session already asked (nothing written) */
    int64_t seq;
    int64_t ts_ms;
    char owner[STORE_MAX_USER + 1]; /* the session's owner */
};

/* A stored event as read back. Strings are owned by the event. */
struct store_event {
    int64_t seq;
    int64_t ts_ms;
    char type[16];
    char sender_type[8];
    char *sender_id;
    char *sender_name;
    char *client_id;
    char *content;
    size_t content_len;
    char *metadata;
};

struct store_session {
    char id[STORE_ID_LEN + 1];
    char owner[STORE_MAX_USER + 1];
    int64_t created_ms, updated_ms;
    int64_t last_seq;
    bool help;
    char model[65];
};

struct store;

struct store_options {
    const char *path;
    bool sync_full;                 /* synchronous=FULL, else NORMAL */
    const unsigned char *key;       /* 32-byte AES-256-GCM key or NULL */
    void (*on_batch)(void *arg, struct store_req **reqs, size_t n);
    void *arg;
};

/* Open (creating and migrating as needed) and start the writer thread.
 * 0, or a negative errno with a one-line message in err. Main thread. */
int store_open(struct store **out, const struct store_options *opt, char *err, size_t errlen);
/* Finish queued writes, stop the writer, close everything. Main thread. */
void store_close(struct store *s);

/* Queue a write (takes ownership). Any thread. -ESHUTDOWN after close began. */
int store_submit(struct store *s, struct store_req *r);
/* Free a request and what it owns. */
void store_req_free(struct store_req *r);

/* Is the store taking writes (for /readyz)? False after a failed write
 * attempt until one succeeds, and for good once it has failed. Any thread. */
bool store_healthy(struct store *s);
/*
 * Has the store failed for good (fail-stop)? It fails when it can no longer
 * tell whether a commit is on disk: a commit whose sync reported an I/O
 * error, or a database or WAL file that was removed or replaced while open
 * (checked before and after every batch). From then on every write is
 * answered STORE_UNAVAILABLE and nothing more is acknowledged; a restart
 * recovers from what is on disk. Any thread.
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
extern const double store_commit_bounds_ms[12];
extern const unsigned store_batch_bounds[8];

/* ---- synchronous reads (thread pool; any thread but not a worker loop) ---- */

/* The session, if it exists. 0, -ENOENT, or -EIO. */
int store_get_session(struct store *s, const char *id, struct store_session *out);
/* Events with seq > after_seq in order, at most limit (0: no limit), and
 * no more once their contents reach max_bytes (0: no limit; the event that
 * crosses it is included, so a page is never empty while events remain).
 * Returns the count (>= 0) with *out a malloc'd array (free with
 * store_events_free), or -EIO. */
int store_read_events(struct store *s, const char *id, int64_t after_seq, int64_t limit,
                      size_t max_bytes, struct store_event **out);
void store_events_free(struct store_event *ev, int n);
/* Sessions of one owner (owner != NULL) or all (help_only filters),
 * newest first, at most limit. Count or -EIO; free *out with free(). */
int store_list_sessions(struct store *s, const char *owner, bool help_only, int limit,
                        struct store_session **out);

/* Make a new random session id. */
void store_new_session_id(char out[STORE_ID_LEN + 1]);

#endif
