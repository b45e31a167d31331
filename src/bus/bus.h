/*
 * bus: how committed session events reach the connections that should get
 * them, on this node and (later) on the others.
 *
 * The hub publishes every event of a committed batch, in commit order, with
 * bus_publish(); the bus hands them, in the same order, to the handler the
 * hub registered (struct bus_handler), on every node, where the hub finds
 * its local recipients and delivers. The bus knows nothing of what the
 * events mean: kind and type are the hub's tags, carried as they are.
 *
 * Implementations are tables of operations behind this header:
 *   - local (bus/local.c): this process only; bus_publish calls the handler
 *     at once, on the publishing thread, so a batch's events keep their
 *     place after the replies the hub posted before publishing;
 *   - redis (bus/redis.c): the nodes sharing one Redis; every node, the
 *     publisher included, delivers what comes back from Redis, on a thread
 *     of the bus, in the order Redis received it.
 *
 * Two kinds of traffic cross the bus: committed session events, published
 * by the storage writer (which orders them), and the assistant's stream
 * pieces (deltas, `loading`, its errors), published by the assistant's
 * threads. Order is kept per publishing thread; across publishers the hub
 * needs none beyond causality, which every implementation keeps: a delta is
 * published before the final answer is even submitted to storage, so it
 * reaches every node before the stored answer does.
 *
 * Threads: bus_publish may be called from several threads at once (the
 * writer, the assistant's); each implementation keeps its publishers apart.
 * The handler runs on the thread the implementation delivers on (the
 * publisher's for `local`: the handler must be safe to run on several
 * threads at once). An event and its frame are borrowed for the call: a
 * handler that keeps the frame takes its own reference.
 */
#ifndef CHATD_BUS_BUS_H
#define CHATD_BUS_BUS_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/sbuf.h"

#define BUS_SESSION_MAX 64 /* bytes of a session id, NUL excluded */
#define BUS_USER_MAX 128
#define BUS_STREAM_MAX 19 /* bytes of a stream id, NUL excluded ("st_" + 16 hex) */

/* One event of session `session` for its participants. */
struct bus_event {
    uint8_t kind;     /* the hub's: what the event does */
    uint8_t type;     /* the hub's: its message type, for counters */
    bool failed;      /* the request behind it was refused (it settles state) */
    bool hint;        /* no event, only a fact: stored seq `seq` exists (a retry found
                       * it stored; its own event may never have been published). A
                       * bus that may lose events fills it where it is missing
                       * (fill); the handler ignores it */
    bool remote;      /* set by the bus on delivery: published by another node, whose
                       * worker and connection ids mean nothing here (conn_id is 0) */
    uint32_t worker;  /* the worker of the connection that caused it */
    uint64_t conn_id; /* that connection (0: none) */
    int64_t seq;      /* its seq in the session (0: not a stored event). Stored events
                       * are numbered gaplessly per session; the events of one stored
                       * request share its seq */
    char session[BUS_SESSION_MAX + 1];
    char owner[BUS_USER_MAX + 1]; /* the session's owner */
    struct sbuf *frame;           /* the framed message (borrowed), or NULL */
    uint32_t off, len;            /* the frame within it */
    /* a stream piece only: which answer, where its text falls in it */
    char stream[BUS_STREAM_MAX + 1];
    uint64_t stream_off;
    uint32_t stream_len;
    /* The piece's text (stream_len bytes, borrowed), for a bus that keeps
     * the answers streaming where every node can read them (stream_read);
     * NULL when the publisher has none at hand. Not carried to the others. */
    const char *text;
};

/* What the hub registers: called with every published event, in order. */
struct bus_handler {
    void (*deliver)(void *app, const struct bus_event *ev, size_t n);
    /* Optional: stored events of `session` (owned by `owner`) with
     * after < seq < before (before 0: every one after) did not reach this
     * node, or not yet: the hub reads them from storage and delivers them
     * through deliver, in order, before it returns (at most a page: the
     * bus asks again while it makes progress). Returns the highest seq
     * delivered (after: none), or a negative errno when storage could not
     * be read. Called on the delivering thread; it blocks on storage. */
    int64_t (*fill)(void *app, const char *session, const char *owner, int64_t after,
                    int64_t before);
    /* Optional: another node made room for a device of user by evicting
     * this node's connection conn_id (admit with evict). Called on the
     * delivering thread. */
    void (*kick)(void *app, const char *user, uint64_t conn_id);
    /* Optional: a stop_generation for session reached another node; stop
     * its answer if it runs here (bus_stop). Called on the delivering
     * thread. */
    void (*stop)(void *app, const char *session);
    void *app;
};

struct bus;

struct bus_ops {
    const char *name;
    /* Publish n events (in order). 0; -EIO when the other nodes could not
     * be reached (this node's handler still gets them, and the other nodes
     * fill stored events from storage when they see the gap); -ENOMEM when
     * nobody got them (the caller must not leave its connections waiting
     * for them). */
    int (*publish)(struct bus *b, const struct bus_event *ev, size_t n);
    void (*close)(struct bus *b);
    /* Optional: stop delivering: from its return the handler is called no
     * more (its handlers read storage and reach the assistant, which close
     * before the bus does); publishing and counting still work. Main
     * thread, before close. */
    void (*quiesce)(struct bus *b);
    /* Optional (NULL: devices are counted per node only). Count a device
     * of user across the nodes, at most max: 1 admitted (*count: the
     * user's devices with it), 0 refused (*count: theirs), negative errno
     * when the count could not be reached (the caller then admits on its
     * own count). With evict, a full count admits anyway and gives up the
     * user's oldest device on any node: one of this node's comes back in
     * *evicted (else 0) for the caller to close; another node's is closed
     * there (its handler's kick). opened_ms orders the devices by age.
     * Any thread; it blocks for a round trip. */
    int (*admit)(struct bus *b, const char *user, uint64_t conn_id, int64_t opened_ms,
                 unsigned max, bool evict, unsigned *count, uint64_t *evicted);
    /* The device admitted by admit left. Any thread. */
    void (*leave)(struct bus *b, const char *user, uint64_t conn_id);
    /* Optional (NULL: every node receives every event). This node holds
     * (delta 1) or no longer holds (-1) a connection that needs the events
     * of user's sessions (user NULL: of every session, an admin). With 1
     * it returns once such events are received here (or after a bounded
     * wait). Any thread. */
    void (*watch)(struct bus *b, const char *user, int delta);
    /* Optional (NULL: rate limits are per node). Take one message from
     * user's budget across nodes (per_minute, refilled continuously): 0,
     * the milliseconds until one is available, or negative when the budget
     * could not be reached (the caller then goes by its own). Any thread;
     * it blocks for a round trip. */
    int64_t (*take_token)(struct bus *b, const char *user, unsigned per_minute);
    /* Optional (NULL: the node's own registry is all there is). Call each
     * with every user that has a device on some node and their count,
     * then 0; negative errno when the count could not be reached. Any
     * thread; it blocks for a round trip. */
    int (*census)(struct bus *b, void (*each)(void *arg, const char *user, size_t len, unsigned n),
                  void *arg);
    /* Optional. This node's connection conn_id holds (on) or no longer
     * holds session for a person: the assistant of every node leaves it
     * alone meanwhile (held). Kept while the node lives. Any thread; it
     * blocks for a round trip. */
    void (*hold)(struct bus *b, const char *session, uint64_t conn_id, bool on);
    /* Optional: this node is about to request answer `stream` of
     * session. BUS_HELD when a connection on some node holds the session
     * (bus_hold), BUS_BUSY when another node is answering it, 0 when this
     * node may: it then answers it until bus_release; negative when that
     * could not be learnt. Any thread; it blocks for a round trip. */
    int (*claim)(struct bus *b, const char *session, const char *stream);
    /* Optional: the text streamed so far of answer `stream`, published
     * with its pieces' text by any node: 0 with *text (to free, NUL-
     * terminated) and *len, -ENOENT when none is kept, or a negative
     * errno. Any thread; it blocks for a round trip. */
    int (*stream_read)(struct bus *b, const char *stream, char **text, size_t *len);
    /* Optional: the answer of session some node is running now, if any:
     * 0 with its id in stream and its text so far in *text (to free) and
     * *len, -ENOENT when none runs, or a negative errno. Any thread; it
     * blocks for a round trip. */
    int (*stream_live)(struct bus *b, const char *session, char stream[BUS_STREAM_MAX + 1],
                       char **text, size_t *len);
    /* Optional: answer `stream` of session, claimed here, has ended. Does
     * not block (the bus records it on a thread of its own). Any thread. */
    void (*release)(struct bus *b, const char *session, const char *stream);
    /* Optional: a read of storage on this node just found session (of
     * owner) stored through seq (a resume's). A bus that orders what it
     * receives and has not begun to order the session starts there, so
     * that an event above seq + 1 waits for the ones between (filled from
     * storage when they do not come) instead of starting the order itself
     * and passing them. Does not block. Any thread. */
    void (*stored)(struct bus *b, const char *session, const char *owner, int64_t seq);
    /* Optional: ask the node answering session to stop (its handler's
     * stop): 1 when some node is answering it, 0 when none is, negative
     * when that could not be learnt. Any thread; it blocks for a round
     * trip. */
    int (*stop)(struct bus *b, const char *session);
};

struct bus {
    const struct bus_ops *ops; /* read-only after open */
    struct bus_handler handler; /* read-only after open */
};

/* The in-process bus. 0 or -ENOMEM. Main thread. */
int bus_local_open(struct bus **out, const struct bus_handler *handler);

static inline int bus_publish(struct bus *b, const struct bus_event *ev, size_t n)
{
    return b->ops->publish(b, ev, n);
}

/* Does this bus count devices across nodes (bus_admit)? */
static inline bool bus_counts_devices(const struct bus *b)
{
    return b && b->ops->admit;
}

static inline int bus_admit(struct bus *b, const char *user, uint64_t conn_id,
                            int64_t opened_ms, unsigned max, bool evict, unsigned *count,
                            uint64_t *evicted)
{
    *evicted = 0;
    return bus_counts_devices(b)
               ? b->ops->admit(b, user, conn_id, opened_ms, max, evict, count, evicted)
               : 1;
}

static inline void bus_leave(struct bus *b, const char *user, uint64_t conn_id)
{
    if (bus_counts_devices(b))
        b->ops->leave(b, user, conn_id);
}

static inline void bus_watch(struct bus *b, const char *user, int delta)
{
    if (b && b->ops->watch)
        b->ops->watch(b, user, delta);
}

static inline int64_t bus_take_token(struct bus *b, const char *user, unsigned per_minute)
{
    return b && b->ops->take_token ? b->ops->take_token(b, user, per_minute) : -1;
}

static inline int bus_census(struct bus *b,
                             void (*each)(void *arg, const char *user, size_t len, unsigned n),
                             void *arg)
{
    return b && b->ops->census ? b->ops->census(b, each, arg) : -ENOTSUP;
}

static inline void bus_hold(struct bus *b, const char *session, uint64_t conn_id, bool on)
{
    if (b && b->ops->hold)
        b->ops->hold(b, session, conn_id, on);
}

#define BUS_HELD 1
#define BUS_BUSY 2

static inline int bus_claim(struct bus *b, const char *session, const char *stream)
{
    return b && b->ops->claim ? b->ops->claim(b, session, stream) : 0;
}

static inline void bus_release(struct bus *b, const char *session, const char *stream)
{
    if (b && b->ops->release)
        b->ops->release(b, session, stream);
}

static inline void bus_stored(struct bus *b, const char *session, const char *owner,
                              int64_t seq)
{
    if (b && b->ops->stored)
        b->ops->stored(b, session, owner, seq);
}

/* Does this bus keep the answers streaming (bus_stream_read)? */
static inline bool bus_keeps_streams(const struct bus *b)
{
    return b && b->ops->stream_read;
}

static inline int bus_stream_read(struct bus *b, const char *stream, char **text, size_t *len)
{
    return bus_keeps_streams(b) ? b->ops->stream_read(b, stream, text, len) : -ENOENT;
}

static inline int bus_stream_live(struct bus *b, const char *session,
                                  char stream[BUS_STREAM_MAX + 1], char **text, size_t *len)
{
    return b && b->ops->stream_live ? b->ops->stream_live(b, session, stream, text, len)
                                    : -ENOENT;
}

static inline int bus_stop(struct bus *b, const char *session)
{
    return b && b->ops->stop ? b->ops->stop(b, session) : 0;
}

static inline void bus_quiesce(struct bus *b)
{
    if (b && b->ops->quiesce)
        b->ops->quiesce(b);
}

/* Stop and free the bus; nothing is delivered afterwards. Main thread. */
static inline void bus_close(struct bus *b)
{
    if (b)
        b->ops->close(b);
}

#endif
