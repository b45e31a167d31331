/*
 * DESIGN: the main thread binds every listening socket (so a port in use is
 * reported before anything starts), the first one alone on the address
 * before the others join it (open_listener), then each worker opens its
 * socket into its own loop. Shutdown is a message like any other: the main
 * thread posts it to every inbox; a worker that has drained its connections
 * closes its handles and lets its loop end; the forced variant closes what
 * is left.
 */
#include "net/server.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "net/conn.h"
#include "net/loop.h"
#include "util/log.h"
#include "util/outq.h"
#include "util/sbuf.h"

static void worker_maybe_finish(struct worker *w);

static void stop_listening(struct worker *w)
{
    if (w->listening) {
        uv_close((uv_handle_t *)&w->listener, NULL);
        w->listening = false;
    }
    /* The socket itself goes now (the poll handle no longer watches it):
     * new connections are refused at once, not left queued while this
     * worker drains. */
    if (w->listen_fd >= 0) {
        close(w->listen_fd);
        w->listen_fd = -1;
    }
    uv_timer_stop(&w->accept_retry);
}

static void on_wakeup(uv_async_t *a)
{
    struct worker *w = a->data;
    assert(worker_current() == w);
    for (struct fifo_node *n = fifo_take_all(&w->inbox, NULL), *next; n; n = next) {
        next = n->next;
        struct inbox_msg *m = FIFO_ENTRY(n, struct inbox_msg, node);
        m->run(w, m);
    }
    worker_maybe_finish(w);
}

/* Accepting. chatd accepts itself, on a poll handle over the listening
 * socket, rather than through a libuv TCP listener: with no descriptor
 * left, libuv's listener accepts every waiting connection into a spare
 * descriptor and closes it at once (the client gets no answer at all),
 * where chatd wants the connections to wait in the kernel's queue until a
 * descriptor is free. So on EMFILE or ENFILE (or the kernel out of memory
 * for a socket) the worker stops watching its socket, which keeps its
 * queue, and looks again every ACCEPT_RETRY_MS: no busy loop, and what
 * waited is served once accept works again. One line when a pause begins
 * (accept_paused), one when it ends (accept_resumed). */
#define ACCEPT_RETRY_MS 100
#define ACCEPT_PER_WAKE 128 /* then back to the loop: other work is not starved */

static void on_listen_readable(uv_poll_t *p, int status, int events);

/* Try at once, whether or not a connection waits: accept() runs out of
 * descriptors before it looks for a connection, so EAGAIN too says the
 * pause is over. */
static void on_accept_retry(uv_timer_t *t)
{
    struct worker *w = t->data;
    if (w->draining || !w->listening)
        return;
    uv_poll_start(&w->listener, UV_READABLE, on_listen_readable);
    on_listen_readable(&w->listener, 0, UV_READABLE);
}

static void accept_works(struct worker *w)
{
    if (w->accept_paused) {
        w->accept_paused = false;
        log_info("accept_resumed", "worker=%u open_connections=%u", w->index, w->nconns);
    }
}

static void accept_pause(struct worker *w, int err)
{
    uv_poll_stop(&w->listener);
    if (!w->accept_paused) {
        w->accept_paused = true;
        log_warn("accept_paused", "worker=%u reason=%s open_connections=%u", w->index,
                 uv_err_name(uv_translate_sys_error(err)), w->nconns);
    }
    uv_timer_start(&w->accept_retry, on_accept_retry, ACCEPT_RETRY_MS, 0);
}

static void on_listen_readable(uv_poll_t *p, int status, int events)
{
    struct worker *w = p->data;
    (void)events;
    if (status < 0) {
        log_warn("accept_failed", "worker=%u error=%s", w->index, uv_err_name(status));
        accept_pause(w, -status);
        return;
    }
    for (int i = 0; i < ACCEPT_PER_WAKE && w->listening; i++) {
        int fd = accept4(w->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            int e = errno;
            if (e == EAGAIN || e == EWOULDBLOCK) {
                accept_works(w);
                return;
            }
            if (e == EINTR || e == ECONNABORTED || e == EPROTO)
                continue; /* that one connection is gone: the next */
            if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) {
                accept_pause(w, e);
                return;
            }
            log_warn("accept_failed", "worker=%u error=%s", w->index,
                     uv_err_name(uv_translate_sys_error(e)));
            accept_pause(w, e); /* not in a loop either */
            return;
        }
        accept_works(w);
        conn_accept(w, fd);
    }
}

static void on_tick(uv_timer_t *t)
{
    struct worker *w = t->data;
    conn_sweep(w, (int64_t)uv_now(&w->loop));
    sbuf_thread_trim(); /* send chunks left over from a burst */
    worker_maybe_finish(w);
}

/* Before the loop may block: the log lines of this iteration go out. */
static void on_prepare(uv_prepare_t *h)
{
    (void)h;
    log_thread_flush();
}

static void on_more(uv_idle_t *h)
{
    (void)h; /* runs only so that the next poll does not block */
}

/* After each poll: write what was queued, at most FLUSH_PASS connections per
 * pass. A large fan-out (a thousand watchers of one session) is written over
 * several passes with a poll between them, so input keeps being read and
 * events committed meanwhile join the queues of watchers not yet written:
 * each watcher's write then carries more frames. */
static void on_check(uv_check_t *h)
{
    struct worker *w = h->data;
    if (conn_flush_dirty(w, FLUSH_PASS))
        uv_idle_stop(&w->more);
    else
        uv_idle_start(&w->more, on_more);
}

/* Once draining and no connection is left, close the loop's handles so
 * uv_run returns. */
static void worker_maybe_finish(struct worker *w)
{
    if (!w->draining || w->nconns > 0 || uv_is_closing((uv_handle_t *)&w->wakeup))
        return;
    worker_drop_msgs(fifo_close(&w->inbox, NULL));
    stop_listening(w);
    uv_close((uv_handle_t *)&w->wakeup, NULL);
    uv_close((uv_handle_t *)&w->tick, NULL);
    uv_close((uv_handle_t *)&w->flush, NULL);
    uv_close((uv_handle_t *)&w->logs, NULL);
    uv_close((uv_handle_t *)&w->more, NULL);
    uv_close((uv_handle_t *)&w->accept_retry, NULL);
}

static void msg_shutdown(struct worker *w, struct inbox_msg *m)
{
    free(m);
    if (w->draining)
        return;
    w->draining = true;
    stop_listening(w);
    conn_shutdown_all(w);
}

static void msg_force_close(struct worker *w, struct inbox_msg *m)
{
    free(m);
    w->draining = true;
    stop_listening(w);
    conn_close_all(w);
}

static void worker_main(void *arg)
{
    struct worker *w = arg;
    worker_set_current(w);
    int rc;
    /* open_listener made the socket listen already. */
    if ((rc = uv_poll_init_socket(&w->loop, &w->listener, w->listen_fd)) != 0 ||
        (rc = uv_poll_start(&w->listener, UV_READABLE, on_listen_readable)) != 0) {
        log_error("listen_failed", "worker=%u error=%s", w->index, uv_err_name(rc));
        exit(1);
    }
    w->listener.data = w;
    w->listening = true;
    log_thread_batch();
    uv_run(&w->loop, UV_RUN_DEFAULT);
    log_thread_unbatch();
    /* Closing callbacks of the last handles ran inside uv_run. */
    sbuf_thread_cleanup();
    outq_thread_cleanup();
    rc = uv_loop_close(&w->loop);
    if (rc != 0)
        log_error("loop_close_failed", "worker=%u error=%s", w->index, uv_err_name(rc));
    atomic_fetch_add(&w->srv->workers_done, 1);
}

/* The configured address with this port, or -EINVAL with a message. */
static int listen_addr(const struct config *cfg, int port, struct sockaddr_storage *ss,
                       socklen_t *len, char *err, size_t errlen)
{
    const char *host = cfg->listen_host;
    if (strcmp(host, "localhost") == 0)
        host = "127.0.0.1";
    memset(ss, 0, sizeof *ss);
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)ss) == 0) {
        *len = sizeof(struct sockaddr_in);
        return 0;
    }
    if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss) == 0) {
        *len = sizeof(struct sockaddr_in6);
        return 0;
    }
    snprintf(err, errlen, "--listen: '%s' is not a numeric IPv4 or IPv6 address", host);
    return -EINVAL;
}

/* Report a failed bind or listen, naming the address. */
static int listen_error(const struct config *cfg, int port, int e, char *err, size_t errlen)
{
    const char *h = cfg->listen_host;
    bool v6 = strchr(h, ':') != NULL;
    /* The words are fixed (not strerror) so that scripts can match them. */
    snprintf(err, errlen, "cannot listen on %s%s%s:%d: %s", v6 ? "[" : "", h, v6 ? "]" : "",
             port, e == EADDRINUSE ? "address already in use" : strerror(e));
    return -e;
}

/*
 * Create, bind and listen on one socket; every socket of this process shares
 * the port with SO_REUSEPORT. The first socket (`first`) also proves that the
 * address is ours alone: it is bound and put to listen WITHOUT SO_REUSEPORT,
 * which the kernel refuses (EADDRINUSE) while any other socket listens on
 * the address, with or without SO_REUSEPORT, and refuses to any other socket
 * that tries to listen there meanwhile. Only once it listens is SO_REUSEPORT
 * turned on, so that the other workers' sockets can join it. Two chatd
 * started at the same moment therefore cannot both get past this: the
 * second listen() fails, with no window between a probe and the real bind.
 * SO_REUSEADDR on every socket lets chatd restart while connections of a
 * previous run are in TIME_WAIT.
 */
static int open_listener(const struct config *cfg, int port, bool first, int *out_fd,
                         char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t len;
    int rc = listen_addr(cfg, port, &ss, &len, err, errlen);
    if (rc != 0)
        return rc;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, "socket: %s", strerror(e));
        return -e;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    /* Linux gives an accepted socket the listener's TCP_NODELAY: one call
     * here instead of one per connection (conn_start checks it in debug
     * builds). */
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) {
        int e = errno;
        close(fd);
        snprintf(err, errlen, "TCP_NODELAY: %s", strerror(e));
        return -e;
    }
    if (!first && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
        int e = errno;
        close(fd);
        snprintf(err, errlen, "SO_REUSEPORT: %s", strerror(e));
        return -e;
    }
    /* Listening from here on: connections queue in the backlog even before
     * the worker's loop runs, so the "listening" log line is true when
     * printed. */
    if (bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, 4096) != 0) {
        int e = errno;
        close(fd);
        return listen_error(cfg, port, e, err, errlen);
    }
    if (first && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
        int e = errno;
        close(fd);
        snprintf(err, errlen, "SO_REUSEPORT: %s", strerror(e));
        return -e;
    }
    *out_fd = fd;
    return 0;
}

static int bound_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
        return -1;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

/* Set up a worker's loop and handles; its listen_fd (from server_listen) is
 * kept. */
static int worker_init(struct server *srv, struct worker *w, unsigned index)
{
    int fd = w->listen_fd;
    memset(w, 0, sizeof *w);
    w->srv = srv;
    w->index = index;
    w->listen_fd = fd;
    list_init(&w->conns);
    list_init(&w->dirty);
    idmap_init(&w->by_id, offsetof(struct conn, id));
    w->read_buf = malloc(WORKER_READ_BUF);
    if (!w->read_buf)
        return -ENOMEM;
    int rc;
    if ((rc = net_loop_init(&w->loop)) != 0)
        return rc;
    if ((rc = fifo_init(&w->inbox, 0)) != 0)
        return rc;
    uv_async_init(&w->loop, &w->wakeup, on_wakeup);
    w->wakeup.data = w;
    uv_timer_init(&w->loop, &w->tick);
    w->tick.data = w;
    uv_timer_start(&w->tick, on_tick, CONN_SWEEP_MS, CONN_SWEEP_MS);
    uv_check_init(&w->loop, &w->flush);
    w->flush.data = w;
    uv_check_start(&w->flush, on_check);
    uv_prepare_init(&w->loop, &w->logs);
    uv_prepare_start(&w->logs, on_prepare);
    uv_idle_init(&w->loop, &w->more);
    w->more.data = w;
    uv_timer_init(&w->loop, &w->accept_retry);
    w->accept_retry.data = w;
    return 0;
}

int server_listen(struct server *srv, const struct config *cfg, char *err, size_t errlen)
{
    srv->cfg = cfg;
    srv->nworkers = cfg->workers;
    srv->workers = calloc(srv->nworkers, sizeof *srv->workers);
    if (!srv->workers) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    for (unsigned i = 0; i < srv->nworkers; i++)
        srv->workers[i].listen_fd = -1;
    int port = cfg->listen_port;
    int rc = 0;
    for (unsigned i = 0; i < srv->nworkers; i++) {
        if ((rc = open_listener(cfg, port, i == 0, &srv->workers[i].listen_fd, err, errlen)) != 0)
            goto close_fds;
        /* With port 0 the first socket picks the port, the others share it. */
        if (port == 0 && (port = bound_port(srv->workers[i].listen_fd)) <= 0) {
            snprintf(err, errlen, "getsockname: %s", strerror(errno));
            rc = -EIO;
            goto close_fds;
        }
    }
    srv->port = port;
    return 0;

close_fds:
    for (unsigned i = 0; i < srv->nworkers; i++)
        if (srv->workers[i].listen_fd >= 0)
            close(srv->workers[i].listen_fd);
    free(srv->workers);
    srv->workers = NULL;
    return rc;
}

int server_start(struct server *srv, char *err, size_t errlen)
{
    atomic_init(&srv->shutting_down, false);
    atomic_init(&srv->workers_done, 0);
    for (unsigned i = 0; i < srv->nworkers; i++) {
        struct worker *w = &srv->workers[i];
        int rc = worker_init(srv, w, i);
        if (rc != 0) {
            snprintf(err, errlen, "worker %u: %s", i, uv_strerror(rc));
            return rc;
        }
    }
    for (unsigned i = 0; i < srv->nworkers; i++) {
        int rc = uv_thread_create(&srv->workers[i].thread, worker_main, &srv->workers[i]);
        if (rc != 0) {
            snprintf(err, errlen, "cannot start worker thread: %s", uv_strerror(rc));
            return rc;
        }
    }
    return 0;
}

#ifdef CHATD_FUZZ
/* Fuzz builds only: set up every worker as server_start does but start no
 * thread: the calling thread becomes worker 0 and runs its loop itself
 * (fuzz/server_harness.h), feeding it connections with conn_fuzz_adopt.
 * Its listening socket is never watched. */
int server_fuzz_start(struct server *srv, char *err, size_t errlen)
{
    atomic_init(&srv->shutting_down, false);
    atomic_init(&srv->workers_done, 0);
    for (unsigned i = 0; i < srv->nworkers; i++) {
        int rc = worker_init(srv, &srv->workers[i], i);
        if (rc != 0) {
            snprintf(err, errlen, "worker %u: %s", i, uv_strerror(rc));
            return rc;
        }
    }
    worker_set_current(&srv->workers[0]);
    return 0;
}
#endif

static void post_all(struct server *srv, void (*run)(struct worker *, struct inbox_msg *))
{
    for (unsigned i = 0; i < srv->nworkers; i++) {
        struct inbox_msg *m = malloc(sizeof *m);
        if (!m)
            abort(); /* a few bytes at shutdown: nothing sensible to do without them */
        m->run = run;
        m->drop = NULL;
        worker_post(&srv->workers[i], m);
    }
}

void server_begin_shutdown(struct server *srv)
{
    if (atomic_exchange(&srv->shutting_down, true))
        return;
    post_all(srv, msg_shutdown);
}


void server_force_close(struct server *srv) { post_all(srv, msg_force_close); }

void server_join(struct server *srv)
{
    for (unsigned i = 0; i < srv->nworkers; i++)
        uv_thread_join(&srv->workers[i].thread);
}

void server_release(struct server *srv)
{
    for (unsigned i = 0; i < srv->nworkers; i++) {
        struct worker *w = &srv->workers[i];
        /* A worker closes its inbox before its loop ends; posts made after
         * that were dropped on the posting thread. */
        assert(fifo_take_all(&w->inbox, NULL) == NULL);
        fifo_release(&w->inbox);
        idmap_release(&w->by_id);
        free(w->read_buf);
    }
    free(srv->workers);
    srv->workers = NULL;
}
