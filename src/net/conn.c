/*
 * DESIGN: one file for the life of a connection, in the order bytes meet it:
 * accept, HTTP heads (routing, upgrade), WebSocket frames (messages,
 * control frames, closing), output (queue, flush), timers. Handlers above
 * this layer see only whole messages and the conn_send/conn_ws_close API.
 *
 * Reading uses the worker's one read buffer; anything that must outlive the
 * read callback (a partial request head, a message split across reads) is
 * copied into the connection. Writing never happens inside a read: output is
 * queued and the connection put on the worker's dirty list, which the check
 * phase flushes with one gathered write per connection.
 */
#include "net/conn.h"

#include <assert.h>

#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http/request.h"
#include "http/response.h"
#include "util/clock.h"
#include "util/log.h"
#include "ws/handshake.h"

#define CONN_IOV_MAX 64

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void ws_feed(struct conn *c, uint8_t *p, size_t n);

static int64_t now_ms(struct conn *c)
{
    return (int64_t)uv_now(&conn_worker(c)->loop);
}

/* A time as a conn keeps it (struct conn): the low 32 bits of the loop's
 * time, never 0 (0 means none; a stamp may read 1 ms late). Timeouts are at
 * most a day (ping-interval, pong-timeout), far below the 24 days modular
 * comparison covers. */
static uint32_t stamp(int64_t t)
{
    return (uint32_t)t | 1;
}
/* now is at or past the stamped time t. */
static bool reached(int64_t now, uint32_t t)
{
    return (int32_t)((uint32_t)now - t) >= 0;
}

/* ---- accept ------------------------------------------------------------ */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct conn *c = (struct conn *)h;
    (void)suggested;
    /* The shared buffer is free again by the time the next read is made:
     * on_read consumes or copies every byte before it returns. */
    buf->base = (char *)conn_worker(c)->read_buf;
    buf->len = WORKER_READ_BUF;
}

static void conn_start(struct worker *w, struct conn *c);

void conn_accept(struct worker *w, int fd)
{
    struct conn *c = calloc(1, sizeof *c);
    if (!c) {
        log_error("accept_failed", "reason=out_of_memory");
        close(fd);
        return;
    }
    uv_tcp_init(&w->loop, &c->tcp);
    if (uv_tcp_open(&c->tcp, fd) != 0) {
        close(fd);
        uv_close((uv_handle_t *)&c->tcp, (uv_close_cb)free);
        return;
    }
    conn_start(w, c);
}

#ifdef CHATD_FUZZ
/* Fuzz builds only: a connected stream socket the caller made (one end of
 * a socketpair) becomes a connection of w as if accepted. 0 or -errno. */
int conn_fuzz_adopt(struct worker *w, int fd)
{
    struct conn *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    uv_tcp_init(&w->loop, &c->tcp);
    int rc = uv_tcp_open(&c->tcp, fd);
    if (rc != 0) {
        uv_close((uv_handle_t *)&c->tcp, (uv_close_cb)free);
        return rc;
    }
    conn_start(w, c);
    return 0;
}
#endif

/* A connection w now holds (accepted): count it and start reading. */
static void conn_start(struct worker *w, struct conn *c)
{
    c->id = ((uint64_t)w->index << 48) | ++w->next_conn_seq;
    list_init(&c->dirty);
    list_append(&w->conns, &c->node);
    w->nconns++;
    outq_init(&c->out);
    c->state = CONN_HTTP;
    c->deadline_ms = stamp(now_ms(c) + CONN_HEAD_TIMEOUT_MS);
#ifndef NDEBUG
    /* TCP_NODELAY comes from the listener (open_listener): small frames
     * leave at once. A fuzz build's socketpair is no TCP socket. */
    int nodelay = 0;
    socklen_t optlen = sizeof nodelay;
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0 &&
        getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &nodelay, &optlen) == 0)
        assert(nodelay == 1);
#endif
    atomic_fetch_add(&w->srv->stats.conns_open, 1);
    atomic_fetch_add(&w->srv->stats.conns_total, 1);
    int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (rc != 0)
        conn_close(c);
}

/* ---- closing ----------------------------------------------------------- */

static void conn_free(struct conn *c)
{
    outq_release(&c->out);
    free(c->in);
    free(c->msg);
    free(c->dec);
    free(c->wreq);
    free(c->sreq);
    free(c);
}

/* The close callback: a later phase of the loop than the conn_close()
 * call, so nothing up that call's stack still uses what on_close frees
 * (the handler's per-connection state). */
static void on_closed(uv_handle_t *h)
{
    struct conn *c = (struct conn *)h;
    assert(worker_current() == conn_worker(c));
    assert(c->state == CONN_CLOSED);
    c->handle_closed = true;
    if (c->notify_close) {
        c->notify_close = false;
        c->handler->on_close(c);
    }
    if (c->holds == 0)
        conn_free(c);
}

void conn_hold(struct conn *c)
{
    assert(worker_current() == conn_worker(c));
    c->holds++;
}

void conn_release(struct conn *c)
{
    assert(worker_current() == conn_worker(c));
    assert(c->holds > 0);
    if (--c->holds == 0 && c->handle_closed)
        conn_free(c);
}

/* Close at once, but tell the handler later: marked here, on_close runs in
 * the close callback (see on_closed). */
void conn_close(struct conn *c)
{
    assert(worker_current() == conn_worker(c));
    if (c->state == CONN_CLOSED)
        return;
    struct worker *w = conn_worker(c);
    bool was_ws = c->state == CONN_WS;
    c->state = CONN_CLOSED;
    if (was_ws && c->handler && c->handler->on_closing)
        c->handler->on_closing(c);
    c->notify_close = was_ws && c->handler && c->handler->on_close;
    if (c->counted_ws) {
        atomic_fetch_sub(&w->srv->stats.ws_open, 1);
        c->counted_ws = false; /* a later net_give_ws_slot gives nothing back */
    }
    atomic_fetch_sub(&w->srv->stats.conns_open, 1);
    if (list_linked(&c->dirty))
        list_remove(&c->dirty);
    list_remove(&c->node);
    w->nconns--;
    uv_read_stop((uv_stream_t *)&c->tcp);
    uv_close((uv_handle_t *)&c->tcp, on_closed);
}

static void mark_dirty(struct conn *c)
{
    if (!list_linked(&c->dirty))
        list_append(&conn_worker(c)->dirty, &c->dirty);
}

/* ---- output ------------------------------------------------------------ */

static void flush(struct conn *c);

static void on_shutdown_done(uv_shutdown_t *req, int status)
{
    struct conn *c = req->data;
    if (c->state != CONN_CLOSED && (c->close_received || status < 0))
        conn_close(c);
}

/* Everything queued has been written. */
static void drained(struct conn *c)
{
    if (c->state == CONN_WS && !c->close_sent && c->handler && c->handler->on_drain) {
        c->handler->on_drain(c);
        if (c->out.count > 0 || c->state == CONN_CLOSED)
            return; /* it queued more: flushed on the next pass */
    }
    if (c->close_after_flush && c->state == CONN_HTTP) {
        /* Half-close and read on for a moment rather than close at once: a
         * client still sending (a refused body, a long head) would otherwise
         * get a reset that can destroy the answer before it is read. */
        if (c->shut_down)
            return;
        c->discard_input = true;
        c->deadline_ms = stamp(now_ms(c) + 2000);
        goto shut;
    }
    if (!c->close_sent || c->shut_down)
        return;
    if (c->close_received) {
        /* Handshake complete on both sides: the server closes TCP first. */
        conn_close(c);
        return;
    }
shut:
    c->sreq = malloc(sizeof *c->sreq);
    if (!c->sreq || uv_shutdown(c->sreq, (uv_stream_t *)&c->tcp, on_shutdown_done) != 0) {
        conn_close(c);
        return;
    }
    c->sreq->data = c;
    c->shut_down = true;
}

static void on_write_done(uv_write_t *req, int status)
{
    struct conn *c = req->data;
    struct conn_write *cw = (struct conn_write *)req;
    size_t bytes = cw->bytes;
    c->wreq = NULL;
    free(cw);
    outq_consume(&c->out, bytes);
    if (c->state == CONN_CLOSED)
        return;
    if (status < 0) {
        log_debug("conn_write_failed", "conn=%llx error=%s", (unsigned long long)c->id,
                  uv_err_name(status));
        conn_close(c);
        return;
    }
    flush(c);
}

/* Write what is queued: try at once, and leave the rest to a uv_write. */
static void flush(struct conn *c)
{
    if (c->state == CONN_CLOSED || c->wreq)
        return;
    log_thread_flush(); /* what this thread logged reaches the log before the peer */
    while (c->out.count > 0) {
        uv_buf_t iov[CONN_IOV_MAX];
        size_t total;
        unsigned n = outq_iov(&c->out, (struct iovec *)iov, CONN_IOV_MAX, &total);
        int r = uv_try_write((uv_stream_t *)&c->tcp, iov, n);
        if (r == UV_EAGAIN || r == UV_ENOSYS)
            r = 0;
        if (r < 0) {
            log_debug("conn_write_failed", "conn=%llx error=%s", (unsigned long long)c->id,
                      uv_err_name(r));
            conn_close(c);
            return;
        }
        outq_consume(&c->out, (size_t)r);
        if ((size_t)r == total)
            continue;
        /* The kernel buffer is full: hand the rest to libuv, which writes it
         * when the socket is writable again. */
        n = outq_iov(&c->out, (struct iovec *)iov, CONN_IOV_MAX, &total);
        c->wreq = malloc(sizeof *c->wreq);
        if (!c->wreq) {
            conn_close(c);
            return;
        }
        c->wreq->req.data = c;
        c->wreq->bytes = total;
        c->out.inflight = n;
        if (uv_write(&c->wreq->req, (uv_stream_t *)&c->tcp, iov, n, on_write_done) != 0) {
            free(c->wreq);
            c->wreq = NULL;
            c->out.inflight = 0;
            conn_close(c);
        }
        return;
    }
    drained(c);
}

bool conn_flush_dirty(struct worker *w, unsigned max)
{
    while (!list_empty(&w->dirty) && max-- > 0) {
        struct conn *c = LIST_ENTRY(w->dirty.next, struct conn, dirty);
        list_remove(&c->dirty);
        flush(c);
    }
    return list_empty(&w->dirty);
}

/* The send queue passed its limit: the client is not reading. */
static void overflow(struct conn *c)
{
    stat_inc(&conn_worker(c)->stats.send_queue_drops);
    log_warn("send_queue_full", "conn=%llx queued=%llu limit=%llu", (unsigned long long)c->id,
             (unsigned long long)c->out.bytes,
             (unsigned long long)conn_worker(c)->srv->cfg->send_queue_bytes);
    outq_drop_pending(&c->out);
    conn_ws_close(c, WS_CLOSE_TRY_AGAIN, "send queue full");
    c->discard_input = true;
}

/* Queue raw bytes (two pieces); checks the limit. */
static int queue2(struct conn *c, const void *a, size_t alen, const void *b, size_t blen)
{
    if (c->state == CONN_CLOSED)
        return -EPIPE;
    if (outq_append2(&c->out, a, alen, b, blen) < 0) {
        conn_close(c);
        return -ENOMEM;
    }
    mark_dirty(c);
    return 0;
}

/* Cut off a WebSocket whose unsent output passed the limit. A close frame
 * (close_sent already set) never counts against it. */
static int check_limit(struct conn *c)
{
    if (c->state == CONN_WS && !c->close_sent &&
        c->out.bytes > conn_worker(c)->srv->cfg->send_queue_bytes) {
        overflow(c);
        return -ENOBUFS;
    }
    return 0;
}

static int queue_frame(struct conn *c, unsigned opcode, const void *data, size_t len)
{
    uint8_t hdr[WS_MAX_HEADER];
    size_t hlen = ws_frame_header(hdr, opcode, true, len);
    int rc = queue2(c, hdr, hlen, data, len);
    return rc == 0 ? check_limit(c) : rc;
}

int conn_send(struct conn *c, unsigned opcode, const void *data, size_t len)
{
    assert(worker_current() == conn_worker(c)); /* only its own worker touches a conn */
    if (c->state != CONN_WS || c->close_sent)
        return -EPIPE;
    stat_inc(&conn_worker(c)->stats.ws_messages_out);
    return queue_frame(c, opcode, data, len);
}

int conn_send_shared(struct conn *c, struct sbuf *frame, uint32_t off, uint32_t len)
{
    return conn_send_owned(c, sbuf_ref(frame), off, len);
}

int conn_send_owned(struct conn *c, struct sbuf *frame, uint32_t off, uint32_t len)
{
    assert(worker_current() == conn_worker(c)); /* only its own worker touches a conn */
    if (c->state != CONN_WS || c->close_sent) {
        sbuf_unref(frame);
        return -EPIPE;
    }
    if (outq_push_owned(&c->out, frame, off, len) < 0) {
        conn_close(c);
        return -ENOMEM;
    }
    mark_dirty(c);
    stat_inc(&conn_worker(c)->stats.ws_messages_out);
    return check_limit(c);
}

void conn_ws_close(struct conn *c, uint16_t code, const char *reason)
{
    assert(worker_current() == conn_worker(c)); /* only its own worker touches a conn */
    if (c->state != CONN_WS || c->close_sent)
        return;
    uint8_t payload[WS_MAX_CONTROL];
    size_t n = code == WS_CLOSE_NO_STATUS ? 0 : ws_close_payload(payload, code, reason);
    /* Marked first: a close frame never counts against the queue limit. */
    c->close_sent = true;
    queue_frame(c, WS_OP_CLOSE, payload, n);
    c->deadline_ms = stamp(now_ms(c) + CONN_LINGER_MS);
    log_debug("ws_close_sent", "conn=%llx code=%u", (unsigned long long)c->id, code);
}

void conn_ws_close_all(struct worker *w, const struct conn_handler *handler, uint16_t code,
                       const char *reason)
{
    assert(worker_current() == w);
    /* conn_ws_close queues a frame, or (no memory for it) closes the
     * connection, which leaves the list: the next node is taken first. */
    for (struct list_node *n = w->conns.next, *next; n != &w->conns; n = next) {
        next = n->next;
        struct conn *c = LIST_ENTRY(n, struct conn, node);
        if (c->state == CONN_WS && c->handler == handler)
            conn_ws_close(c, code, reason);
    }
}

/* ---- HTTP -------------------------------------------------------------- */

void conn_http_send(struct conn *c, int status, const char *content_type, const void *body,
                    size_t len, bool keep_alive, bool head_only, const char *cache_control,
                    const char *extra_headers)
{
    assert(worker_current() == conn_worker(c));
    char head[2048];
    size_t hlen = http_format_head(head, sizeof head, status, content_type, len, keep_alive,
                                   cache_control, extra_headers);
    if (hlen == 0) { /* extra headers too long: a bug in the caller */
        log_error("http_head_too_long", "conn=%llx status=%d", (unsigned long long)c->id, status);
        conn_close(c);
        return;
    }
    queue2(c, head, hlen, body, head_only ? 0 : len);
    if (!keep_alive)
        c->close_after_flush = true;
}

void conn_http_error(struct conn *c, int status, const char *code, const char *message,
                     int64_t retry_after_ms, const char *extra_headers, bool keep_alive)
{
    char body[768];
    size_t n = http_error_body(body, sizeof body, code, message, retry_after_ms);
    conn_http_send(c, status, "application/json", body, n, keep_alive, false, NULL, extra_headers);
}

void conn_http_respond(struct conn *c, int status, const char *content_type, const char *body,
                       size_t len, bool keep_alive, bool head_only)
{
    conn_http_send(c, status, content_type, body, len, keep_alive, head_only, NULL, NULL);
}

/* Answer an HTTP error and close: the rest of the stream cannot be trusted. */
static void http_fail(struct conn *c, int status, const char *code, const char *message)
{
    conn_http_error(c, status, code, message, -1, NULL, false);
    c->discard_input = true;
}

int conn_upgrade(struct conn *c, const struct http_request *req,
                 const struct conn_handler *handler, void *data)
{
    assert(worker_current() == conn_worker(c)); /* only its own worker touches a conn */
    const struct config *cfg = conn_worker(c)->srv->cfg;
    const struct http_header *key = http_request_header(req, "sec-websocket-key");
    char accept[WS_ACCEPT_LEN + 1];
    if (!key || ws_accept_key(key->value, key->value_len, accept) < 0)
        return -EINVAL; /* callers validated the request first */
    char resp[256];
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 101 Switching Protocols\r\n"
                     "Upgrade: websocket\r\n"
                     "Connection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n"
                     "\r\n",
                     accept);
    /* Out of memory closes the connection (still in the HTTP state: no
     * handler callback runs); it must not become a WebSocket after that. */
    if (queue2(c, resp, (size_t)n, NULL, 0) < 0)
        return -ENOMEM;
    c->state = CONN_WS;
    c->handler = handler;
    c->data = data;
    int64_t now = now_ms(c);
    c->ping_wait_ms = 0;
    c->next_ping_ms = stamp(now + (int64_t)cfg->ping_interval_s * 1000);
    c->ping_window_ms = (uint32_t)now;
    c->deadline_ms = 0;
    c->dec = NULL;
    return 0;
}

/*
 * Parse and answer every complete head in buf[0..len) (the worker's read
 * buffer, or c->in when a head came in pieces); scanned: bytes already
 * searched for the end of the head. Returns how many bytes were used up;
 * the caller keeps the rest in c->in.
 */
static size_t http_process(struct conn *c, const char *buf, size_t len, size_t scanned)
{
    size_t used = 0;
    while (c->state == CONN_HTTP && !c->discard_input && !c->http_busy) {
        const char *p = buf + used;
        size_t n = len - used;
        size_t end = http_head_end(p, n, scanned);
        if (end == 0) {
            if (n > HTTP_MAX_HEAD)
                http_fail(c, 431, "bad_request", "request head larger than 16 KiB");
            return used;
        }
        scanned = 0;
        if (end > HTTP_MAX_HEAD) {
            http_fail(c, 431, "bad_request", "request head larger than 16 KiB");
            return len;
        }
        struct http_request req;
        int status = http_request_parse(&req, p, end);
        if (status == 431) {
            http_fail(c, 431, "bad_request", "more than 100 header lines");
            return len;
        }
        if (status != 0) {
            http_fail(c, status, "bad_request", "malformed HTTP request");
            return len;
        }
        /* A small body (Content-Length, at most HTTP_MAX_BODY: the API's
         * JSON) is read whole before the request is handled. */
        size_t body_len = 0;
        if (req.has_body) {
            if (req.has_transfer_encoding || req.content_length < 0) {
                http_fail(c, 400, "bad_request",
                          "chunked request bodies are not accepted: send Content-Length");
                return len;
            }
            if (req.content_length > HTTP_MAX_BODY) {
                http_fail(c, 413, "too_large", "request body larger than 8 KiB");
                return len;
            }
            body_len = (size_t)req.content_length;
            if (n - end < body_len) {
                c->http_body_wait = true;
                return used;
            }
            req.body = p + end;
            req.body_len = body_len;
        }
        c->http_body_wait = false;
        stat_inc(&conn_worker(c)->stats.http_requests);
        conn_worker(c)->srv->ops->on_request(conn_worker(c)->srv->app, c, &req);
        used += end + body_len;
        if (c->state == CONN_CLOSED)
            return len;
        if (c->state == CONN_WS) {
            /* Frames that came in the same segment as the upgrade. */
            if (used < len)
                ws_feed(c, (uint8_t *)buf + used, len - used);
            return len;
        }
        if (c->close_after_flush) {
            c->discard_input = true;
            return len;
        }
        c->deadline_ms = stamp(now_ms(c) + CONN_HEAD_TIMEOUT_MS);
    }
    return used;
}

/* Bytes kept in c->in. */
static uint32_t in_len(const struct conn *c)
{
    return c->in ? c->in->len : 0;
}

static void in_free(struct conn *c)
{
    free(c->in);
    c->in = NULL;
}

/* Make room for n bytes in c->in (kept bytes stay). 0 or -ENOMEM. */
static int in_reserve(struct conn *c, size_t n)
{
    size_t old = c->in ? c->in->cap : 0;
    if (n <= old)
        return 0;
    size_t cap = old ? old : 1024;
    while (cap < n)
        cap *= 2;
    struct conn_in *in = realloc(c->in, sizeof *in + cap);
    if (!in)
        return -ENOMEM;
    if (!c->in)
        in->len = in->scanned = 0;
    in->cap = (uint32_t)cap;
    c->in = in;
    return 0;
}

/* Keep buf[0..n) in c->in (replacing what was there; buf may lie in it). */
static int http_keep(struct conn *c, const char *buf, size_t n)
{
    if (n == 0) {
        /* Idle keep-alive connections hold no buffer. */
        in_free(c);
        return 0;
    }
    if (c->in && buf >= c->in->data && buf < c->in->data + c->in->cap) {
        memmove(c->in->data, buf, n); /* n <= what was kept: it fits */
    } else {
        if (in_reserve(c, n) < 0)
            return -ENOMEM;
        memcpy(c->in->data, buf, n);
    }
    c->in->len = (uint32_t)n;
    return 0;
}

/* Run http_process over c->in and keep what is left. */
static void http_process_kept(struct conn *c)
{
    size_t used = http_process(c, c->in->data, c->in->len, c->in->scanned);
    if (c->state != CONN_HTTP || c->discard_input) {
        in_free(c);
        return;
    }
    size_t left = c->in->len - used;
    if (http_keep(c, c->in->data + used, left) < 0) {
        conn_close(c);
        return;
    }
    if (c->in)
        c->in->scanned = left > 3 && used == 0 && !c->http_body_wait ? (uint32_t)left - 3 : 0;
}

void conn_http_async_begin(struct conn *c)
{
    assert(worker_current() == conn_worker(c)); /* only its own worker touches a conn */
    c->http_busy = true;
    conn_hold(c);
}

void conn_http_async_end(struct conn *c)
{
    assert(worker_current() == conn_worker(c)); /* only its own worker touches a conn */
    c->http_busy = false;
    if (c->state == CONN_HTTP && !c->discard_input) {
        c->deadline_ms = stamp(now_ms(c) + CONN_HEAD_TIMEOUT_MS);
        if (in_len(c))
            http_process_kept(c);
    }
    conn_release(c);
}

static void http_feed(struct conn *c, const char *p, size_t n)
{
    if (in_len(c) == 0 && !c->http_busy) {
        /* The common case: whole heads in this read. Parse them where they
         * lie and copy only an unfinished tail. */
        size_t used = http_process(c, p, n, 0);
        if (c->state != CONN_HTTP || c->discard_input || used == n)
            return;
        if (http_keep(c, p + used, n - used) < 0) {
            conn_close(c);
            return;
        }
        c->in->scanned = n - used > 3 && !c->http_body_wait ? (uint32_t)(n - used) - 3 : 0;
        return;
    }
    size_t kept = in_len(c);
    if (kept + n > HTTP_MAX_HEAD * 2 + WORKER_READ_BUF) {
        conn_close(c); /* a client pipelining without limit */
        return;
    }
    if (in_reserve(c, kept + n) < 0) {
        conn_close(c);
        return;
    }
    memcpy(c->in->data + kept, p, n);
    c->in->len = (uint32_t)(kept + n);
    if (!c->http_busy)
        http_process_kept(c);
}

/* ---- WebSocket --------------------------------------------------------- */

/* Past its input budget a connection is closed: one client must not be
 * able to keep its worker busy at the others' expense. */
static void over_budget(struct conn *c, const char *what)
{
    log_warn("input_budget_exceeded", "conn=%llx budget=%s", (unsigned long long)c->id, what);
    stat_inc(&conn_worker(c)->stats.input_budget_closes);
    conn_ws_close(c, WS_CLOSE_POLICY, "input rate exceeded");
    c->discard_input = true;
}

/* Charge the input budget: one message (bytes false) or cost bytes read;
 * true when within it. Both buckets are brought up to now first so that
 * they keep one time (refilling in two steps adds what one step would, up
 * to the burst), which is what lets struct conn keep a single in_t_ms. */
static bool charge_input(struct conn *c, bool bytes, uint64_t cost)
{
    const struct config *cfg = conn_worker(c)->srv->cfg;
    int64_t now = now_ms(c);
    uint64_t msg_per_min = (uint64_t)cfg->input_rate * 60;
    uint64_t msg_burst = (uint64_t)cfg->input_rate * 4;
    uint64_t byte_per_min = cfg->input_byte_rate * 60;
    uint64_t byte_burst = 2 * cfg->max_message_bytes + cfg->input_byte_rate;
    struct rate_bucket m = {c->in_msgs_level, c->in_t_ms};
    struct rate_bucket b = {c->in_bytes_level, c->in_t_ms};
    rate_refill(&m, now, msg_per_min, msg_burst);
    rate_refill(&b, now, byte_per_min, byte_burst);
    bool ok = bytes ? rate_charge(&b, now, byte_per_min, byte_burst, cost)
                    : rate_charge(&m, now, msg_per_min, msg_burst, cost);
    c->in_msgs_level = m.level;
    c->in_bytes_level = b.level;
    c->in_t_ms = m.t_ms; /* == b.t_ms */
    return ok;
}

static void ws_message(struct conn *c, unsigned opcode, uint8_t *data, size_t len)
{
    stat_inc(&conn_worker(c)->stats.ws_messages_in);
    if (c->handler && c->handler->metered) {
        if (!charge_input(c, false, 1)) {
            over_budget(c, "messages");
            return;
        }
    }
    if (c->handler && c->handler->on_message)
        c->handler->on_message(c, opcode, data, len);
}

static void ws_data(struct conn *c, const struct ws_event *ev)
{
    if (c->close_sent)
        return; /* after our close, data frames are read and dropped */
    if (ev->first && ev->last) {
        ws_message(c, ev->opcode, ev->data, ev->len);
        return;
    }
    size_t have = c->msg ? c->msg->len : 0;
    if (!c->msg || have + ev->len > c->msg->cap) {
        size_t cap = c->msg ? c->msg->cap : 4096;
        while (cap < have + ev->len)
            cap *= 2;
        struct conn_msg *m = realloc(c->msg, sizeof *m + cap);
        if (!m) {
            conn_close(c);
            return;
        }
        m->len = (uint32_t)have;
        m->cap = (uint32_t)cap;
        c->msg = m;
    }
    if (ev->len) {
        memcpy(c->msg->data + have, ev->data, ev->len);
        c->msg->len += (uint32_t)ev->len;
    }
    if (!ev->last)
        return;
    /* Whole: no buffer stays on a connection that may now go idle. */
    struct conn_msg *m = c->msg;
    c->msg = NULL;
    ws_message(c, ev->opcode, m->data, m->len);
    free(m);
}

static void ws_control(struct conn *c, const struct ws_event *ev)
{
    switch (ev->opcode) {
    case WS_OP_PING: {
        int64_t now = now_ms(c);
        if ((uint32_t)now - c->ping_window_ms >= 1000) {
            c->ping_window_ms = (uint32_t)now;
            c->pings_in_window = 0;
        }
        if (++c->pings_in_window > CONN_PING_FLOOD) {
            log_warn("ws_ping_flood", "conn=%llx", (unsigned long long)c->id);
            conn_ws_close(c, WS_CLOSE_POLICY, "too many pings");
            c->discard_input = true;
            return;
        }
        if (!c->close_sent)
            queue_frame(c, WS_OP_PONG, ev->data, ev->len);
        return;
    }
    case WS_OP_PONG:
        return; /* any byte received already counts as liveness */
    case WS_OP_CLOSE:
        c->close_received = true;
        if (!c->close_sent) {
            /* Echo the peer's code, as RFC 6455 section 5.5.1 suggests. */
            conn_ws_close(c, ev->close_code, NULL);
        } else if (c->out.count == 0) {
            conn_close(c);
            return;
        }
        c->discard_input = true;
        return;
    }
}

static void ws_run(struct conn *c, struct ws_decoder *d, uint8_t *p, size_t n)
{
    while (c->state == CONN_WS && !c->discard_input) {
        struct ws_event ev;
        size_t used = ws_decode(d, p, n, &ev);
        p += used;
        n -= used;
        switch (ev.type) {
        case WS_EV_NONE:
            return;
        case WS_EV_DATA:
            ws_data(c, &ev);
            break;
        case WS_EV_CONTROL:
            ws_control(c, &ev);
            break;
        case WS_EV_ERROR:
            log_info("ws_protocol_error", "conn=%llx code=%u reason=\"%s\"",
                     (unsigned long long)c->id, ev.close_code, ev.reason);
            conn_ws_close(c, ev.close_code, ev.reason);
            c->discard_input = true;
            return;
        }
    }
}

/*
 * A connection between frames needs no decoder of its own: the worker's
 * scratch decoder, freshly initialized, decodes its read. Only a read that
 * ends inside a frame or a fragmented message leaves state worth keeping,
 * and only then does the connection get (and later give back) a decoder.
 * Idle connections, the vast majority, hold none.
 */
static void ws_feed(struct conn *c, uint8_t *p, size_t n)
{
    struct ws_decoder *d = c->dec;
    if (!d) {
        d = &conn_worker(c)->scratch_dec;
        ws_decoder_init(d, conn_worker(c)->srv->cfg->max_message_bytes, true);
    }
    ws_run(c, d, p, n);
    if (c->state != CONN_WS || c->discard_input) {
        free(c->dec);
        c->dec = NULL;
        return;
    }
    bool rest = ws_decoder_at_rest(d);
    if (d != c->dec && !rest) {
        c->dec = malloc(sizeof *c->dec);
        if (!c->dec) {
            conn_close(c);
            return;
        }
        *c->dec = *d;
    } else if (d == c->dec && rest) {
        free(c->dec);
        c->dec = NULL;
    }
}

/* ---- reading ----------------------------------------------------------- */

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = (struct conn *)s;
    if (nread == 0 || c->state == CONN_CLOSED)
        return;
    if (nread < 0) {
        if (nread != UV_EOF)
            log_debug("conn_read_failed", "conn=%llx error=%s", (unsigned long long)c->id,
                      uv_err_name((int)nread));
        conn_close(c);
        return;
    }
    c->ping_wait_ms = 0; /* any byte from the peer answers our pings */
    if (c->discard_input)
        return;
    if (c->state == CONN_HTTP) {
        http_feed(c, buf->base, (size_t)nread);
        return;
    }
    if (c->handler && c->handler->metered && !c->close_sent) {
        if (!charge_input(c, true, (uint64_t)nread)) {
            over_budget(c, "bytes");
            return;
        }
    }
    ws_feed(c, (uint8_t *)buf->base, (size_t)nread);
}

/* ---- timers and shutdown ------------------------------------------------ */

static void sweep_one(struct conn *c, int64_t now, int64_t wall)
{
    const struct config *cfg = conn_worker(c)->srv->cfg;
    outq_trim(&c->out);
    if (c->state == CONN_HTTP) {
        if (reached(now, c->deadline_ms) && !c->http_busy) {
            log_debug("http_head_timeout", "conn=%llx", (unsigned long long)c->id);
            conn_close(c);
        }
        return;
    }
    if (c->close_sent || c->discard_input) {
        if (c->deadline_ms && reached(now, c->deadline_ms))
            conn_close(c);
        return;
    }
    /* The deadline runs from the first unanswered ping, so however late the
     * once-a-second sweep sends it, the peer has the whole pong timeout. */
    int32_t waited = (int32_t)((uint32_t)now - c->ping_wait_ms); /* -1 just after stamp() */
    if (c->ping_wait_ms && waited >= (int32_t)cfg->pong_timeout_s * 1000) {
        log_info("ws_pong_timeout", "conn=%llx waited_ms=%ld", (unsigned long long)c->id,
                 (long)waited);
        conn_close(c);
        return;
    }
    /* Pings go out on the sweep nearest their due time (half a tick early
     * at most), so they are at most half a second off either way. */
    if (reached(now + CONN_SWEEP_MS / 2, c->next_ping_ms)) {
        queue_frame(c, WS_OP_PING, NULL, 0);
        if (!c->ping_wait_ms)
            c->ping_wait_ms = stamp(now);
        c->next_ping_ms = stamp(now + (int64_t)cfg->ping_interval_s * 1000);
    }
    if (c->state == CONN_WS && c->handler && c->handler->on_tick)
        c->handler->on_tick(c, now, wall);
}

void conn_sweep(struct worker *w, int64_t now)
{
    int64_t wall = clock_wall_ms();
    struct list_node *n = w->conns.next;
    while (n != &w->conns) {
        struct conn *c = LIST_ENTRY(n, struct conn, node);
        n = n->next; /* c may be unlinked below */
        sweep_one(c, now, wall);
    }
    conn_flush_dirty(w, UINT_MAX);
}

void conn_shutdown_all(struct worker *w)
{
    struct list_node *n = w->conns.next;
    while (n != &w->conns) {
        struct conn *c = LIST_ENTRY(n, struct conn, node);
        n = n->next;
        if (c->state == CONN_HTTP) {
            conn_close(c);
        } else if (c->state == CONN_WS) {
            if (c->handler && c->handler->on_shutdown && !c->close_sent)
                c->handler->on_shutdown(c);
            conn_ws_close(c, WS_CLOSE_GOING_AWAY, "server shutting down");
        }
    }
    conn_flush_dirty(w, UINT_MAX);
}

void conn_close_all(struct worker *w)
{
    while (!list_empty(&w->conns))
        conn_close(LIST_ENTRY(w->conns.next, struct conn, node));
}
