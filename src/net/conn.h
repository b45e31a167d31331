/*
 * conn: one client connection, from its first HTTP byte to its close.
 *
 * A connection starts in the HTTP state: request heads are gathered (at most
 * HTTP_MAX_HEAD bytes, within the head timeout), answered, and kept alive. A
 * valid upgrade on a WebSocket route switches it to the WebSocket state,
 * where the frame decoder runs over the worker's shared read buffer and whole
 * messages go to the connection's handler. Output of every kind is appended
 * to the connection's outq and written once per loop iteration (the worker's
 * check phase), so a burst of messages costs one writev.
 *
 * Ownership and threads: a struct conn belongs to the worker that accepted
 * it; only that worker's thread reads or writes any field. Other threads
 * reach a connection only by posting to the worker's inbox with the
 * connection's id. The memory is freed in the libuv close callback, never
 * earlier, so a conn pointer stays valid for the rest of any callback that
 * holds it even after conn_close().
 *
 * Closing. conn_ws_close() queues a close frame; once it is written the
 * write side is shut down and the connection waits (at most CONN_LINGER_MS)
 * for the peer's close frame or EOF, then closes the socket. conn_close()
 * closes at once: the connection is marked closed (sends fail with -EPIPE,
 * reading stops) and the handler's on_close runs later, in libuv's close
 * callback, never inside the call that closed it, so state the handler
 * frees there stays valid for everything up that call's stack. Either way
 * on_close runs exactly once.
 */
#ifndef CHATD_CONN_H
#define CHATD_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "net/worker.h"
#include "util/list.h"
#include "util/outq.h"
#include "util/rate.h"
#include "ws/frame.h"

#define CONN_HEAD_TIMEOUT_MS 10000 /* a request head must arrive within this */
#define CONN_LINGER_MS 5000        /* wait for the peer's close after ours */
#define CONN_PING_FLOOD 64         /* pings per second answered before 1008 */
#define CONN_SWEEP_MS 1000         /* period of conn_sweep (the worker's tick) */

struct conn;
struct http_request;

/* HTTP: bytes of a request head that came in pieces (or of pipelined
 * requests held while an answer is pending); owned by the conn. */
struct conn_in {
    uint32_t len, cap;
    uint32_t scanned; /* bytes already searched for the end of the head */
    char data[];      /* cap bytes */
};

/* WebSocket: a fragmented message being assembled; owned by the conn, made
 * at its first fragment and freed once it is whole. */
struct conn_msg {
    uint32_t len, cap; /* messages are at most 1 GiB (config limit) */
    uint8_t data[];    /* cap bytes */
};

/* A pending write: the libuv request and how many queued bytes it covers. */
struct conn_write {
    uv_write_t req;
    size_t bytes;
};

/* What a WebSocket route does with its connections. All callbacks run on the
 * connection's worker thread. */
struct conn_handler {
    const char *name; /* for logs: "echo", "chat" */
    /* Meter the input (--input-rate, --input-byte-rate): every message and
     * every byte read counts, whatever becomes of it; past the budget the
     * connection is closed with 1008. Off for the echo route, which exists
     * for conformance suites and benchmarks. */
    bool metered;
    /* A whole message: opcode WS_OP_TEXT or WS_OP_BINARY; data is only valid
     * during the call (it may lie in the shared read buffer). */
    void (*on_message)(struct conn *c, unsigned opcode, uint8_t *data, size_t len);
    /* The connection is closing: called at once, inside conn_close(), so
     * that what others see (the user's device count) is true before the
     * peer can reconnect. It must free nothing: callers up the stack may
     * still use the handler's state. May be NULL. */
    void (*on_closing)(struct conn *c);
    /* The connection is gone (called exactly once, from the close callback:
     * a later loop phase than the conn_close() that closed it): free the
     * handler's state here. */
    void (*on_close)(struct conn *c);
    /* Server shutdown, before the 1001 close (may queue a last message). */
    void (*on_shutdown)(struct conn *c);
    /* The send queue became empty (output all written). */
    void (*on_drain)(struct conn *c);
    /* Once a second while the WebSocket is open: the loop's monotonic time
     * and the wall clock (Unix ms), both read once per sweep. */
    void (*on_tick)(struct conn *c, int64_t now_ms, int64_t wall_ms);
};

enum conn_state { CONN_HTTP = 0, CONN_WS, CONN_CLOSED };

/* Fields are ordered (and flags packed) for size: every open connection
 * holds one, idle or not (a 432-byte allocation, 248 of them libuv's); and
 * those a delivery touches are kept together (below). */
struct conn {
    uv_tcp_t tcp; /* first member: handle pointers cast back to conn;
                   * tcp.loop is the owning worker's (conn_worker) */
    /* From here to data: what a delivery to this connection touches (the
     * worker's idmap confirms the id, the handler's data is looked up, and
     * conn_send_owned reads the state, queues the frame and marks the
     * connection dirty), 72 bytes together: two cache lines wherever
     * malloc puts the conn, where they lay across three or four. A fan-out
     * does this for every receiver of every event. */
    uint64_t id; /* read-only after accept: unique in the process, worker index << 48 | sequence */
    /* Private to the worker thread from here on. */
    struct list_node dirty;     /* on w->dirty while output waits to be flushed */
    uint8_t state;              /* enum conn_state */
    bool close_sent : 1;        /* our close frame is queued */
    bool close_received : 1;    /* the peer's close frame arrived */
    bool discard_input : 1;     /* the stream is broken: read and drop */
    bool shut_down : 1;         /* write side shut down (FIN sent) */
    bool close_after_flush : 1; /* HTTP: answered with Connection: close */
    bool counted_ws : 1;        /* holds a slot in stats.ws_open */
    bool http_busy : 1;         /* an async HTTP answer is pending: hold later heads */
    bool http_body_wait : 1;    /* a whole head is in c->in, its body is not yet */
    bool handle_closed : 1;     /* the libuv close callback ran */
    bool notify_close : 1;      /* closed: the handler's on_close is still to run */
    uint8_t pings_in_window;    /* at most CONN_PING_FLOOD + 1 (here, it fills a hole) */
    uint16_t holds;             /* async work that will come back to this conn */
    struct outq out;
    void *data; /* the handler's per-connection state (handler-owned) */
    /* The rest. */
    struct list_node node; /* on w->conns */
    struct conn_in *in;    /* HTTP: a request head kept between reads (owned),
                            * NULL when none */
    struct conn_msg *msg;  /* WebSocket: a message being assembled (owned),
                            * NULL between messages */
    /* Times are the low 32 bits of the loop's time in ms, compared modulo
     * 2^32 (every one lies within a day of now; see conn.c's stamp()); a set
     * one is never 0, which means none. */
    uint32_t deadline_ms;  /* HTTP: head deadline; closing: linger deadline */
    uint32_t ping_wait_ms; /* when the oldest unanswered ping went out */
    uint32_t next_ping_ms;
    uint32_t ping_window_ms;            /* start of the current ping-flood window */
    struct conn_write *wreq;            /* pending write (owned), NULL when none */
    uv_shutdown_t *sreq;                /* pending shutdown (owned) */
    const struct conn_handler *handler; /* WebSocket route, NULL in HTTP */
    struct ws_decoder *dec;             /* owned; NULL while the stream is between frames (the
                                         * worker's scratch decoder serves then) */
    /* Input budget (metered handlers): two token buckets, messages and
     * bytes, as struct rate_bucket's level, refilled together to one time
     * (in_t_ms; 0: never used); see charge_input in conn.c. */
    uint64_t in_msgs_level;
    uint64_t in_bytes_level;
    int64_t in_t_ms;
};
_Static_assert(offsetof(struct conn, data) + sizeof(void *) - offsetof(struct conn, id) <= 72,
               "what a delivery touches of a connection stays together");

/* The worker that owns c (it accepted it): the one whose loop c's handle
 * is on. Read-only after accept, like the id. */
static inline struct worker *conn_worker(const struct conn *c)
{
    return (struct worker *)((char *)c->tcp.loop - offsetof(struct worker, loop));
}

/* Take on a connection the worker accepted (fd: owned from here on, closed
 * on failure). Worker thread. */
void conn_accept(struct worker *w, int fd);

#ifdef CHATD_FUZZ
/* Fuzz builds only (fuzz/server_harness.h): take a connected stream socket
 * (one end of a socketpair) as an accepted connection. 0 or -errno. */
int conn_fuzz_adopt(struct worker *w, int fd);
#endif

/* Queue a text or binary message as one frame (copied). 0 or -errno. */
int conn_send(struct conn *c, unsigned opcode, const void *data, size_t len);
/* Queue a slice of a shared, already framed buffer (a broadcast). */
int conn_send_shared(struct conn *c, struct sbuf *frame, uint32_t off, uint32_t len);
/* The same with a reference to frame the caller took for it (sbuf_ref_n):
 * always taken over, and dropped when the frame is not queued. */
int conn_send_owned(struct conn *c, struct sbuf *frame, uint32_t off, uint32_t len);
/* Start the closing handshake with code and a short reason. */
void conn_ws_close(struct conn *c, uint16_t code, const char *reason);
/* conn_ws_close every WebSocket of worker w that handler serves. Worker
 * thread (w's). */
void conn_ws_close_all(struct worker *w, const struct conn_handler *handler, uint16_t code,
                       const char *reason);
/* Close the socket now (on_close runs). */
void conn_close(struct conn *c);
/* Keep the struct alive across async work (thread pool jobs); the memory is
 * freed once it is closed and every hold is released. Check
 * c->state != CONN_CLOSED before using it after the work. Worker thread. */
void conn_hold(struct conn *c);
void conn_release(struct conn *c);

/* For routes (HTTP state only). */
/* Queue a JSON error response ({"error":{...}}); retry_after_ms < 0: none. */
void conn_http_error(struct conn *c, int status, const char *code, const char *message,
                     int64_t retry_after_ms, const char *extra_headers, bool keep_alive);
/* Queue a response: cache_control NULL means no-store; extra_headers NULL or
 * whole "Name: value\r\n" lines; head_only (HEAD) leaves the body out. */
void conn_http_send(struct conn *c, int status, const char *content_type, const void *body,
                    size_t len, bool keep_alive, bool head_only, const char *cache_control,
                    const char *extra_headers);
/* Queue a response with a body (head_only: HEAD request, body left out). */
void conn_http_respond(struct conn *c, int status, const char *content_type, const char *body,
                       size_t len, bool keep_alive, bool head_only);
/* Answer 101 and switch to the WebSocket state with this handler. The
 * request must have passed net_check_upgrade. 0, -EINVAL, or -ENOMEM (the
 * 101 could not be queued: the connection is closed, and no handler
 * callback runs for it). */
int conn_upgrade(struct conn *c, const struct http_request *req,
                 const struct conn_handler *handler, void *data);

/* An HTTP answer will come later (thread-pool work): hold the connection
 * and stop reading further pipelined requests until conn_http_async_end,
 * which must be called once the answer is queued (or the conn closed). */
void conn_http_async_begin(struct conn *c);
void conn_http_async_end(struct conn *c);

/* Worker-level hooks, called by server.c on the worker thread. */
/* Write what is queued for at most max connections, oldest first; true when
 * none is left waiting. */
bool conn_flush_dirty(struct worker *w, unsigned max);
void conn_sweep(struct worker *w, int64_t now_ms); /* timers, once a second */
void conn_shutdown_all(struct worker *w);    /* graceful: 1001 to all */
void conn_close_all(struct worker *w);       /* forced */

#endif
