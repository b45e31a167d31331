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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "net/conn.h"
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
    /* The socket itself goes now: new connections are refused at once,
     * not left queued while this worker drains. */
    w->relisten = false;
    if (w->listen_keep >= 0) {
        close(w->listen_keep);
        w->listen_keep = -1;
    }
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

/* Accepting with no descriptor left. accept() fails at once, so the
 * listener stays readable, and libuv tries again at once, in a loop on the
 * worker's thread. So the worker first gives up its reserve descriptor:
 * libuv's next try accepts one connection into it, which on_connection
 * leaves pending, and libuv stops watching the listener while one is
 * pending. When even that fails (another worker took the descriptor), the
 * worker closes its listener handle, which ends libuv's loop; the socket
 * lives on in listen_keep, its queue kept. Every ACCEPT_RETRY_MS the
 * worker tries to take a reserve again; once it can, it listens again (on
 * a copy of listen_keep) or accepts the pending connection. */
#define ACCEPT_RETRY_MS 100

static int open_reserve(void)
{
    return open("/dev/null", O_RDONLY | O_CLOEXEC);
}

static void on_connection(uv_stream_t *l, int status);

static void on_listener_closed(uv_handle_t *h)
{
    struct worker *w = h->data;
    w->listener_closed = true;
}

static void on_accept_retry(uv_timer_t *t)
{
    struct worker *w = t->data;
    if (w->draining) {
        uv_timer_stop(&w->accept_retry);
        return;
    }
    if (w->relisten && w->listener_closed) {
        /* F_DUPFD: a new descriptor as dup() makes (and one ThreadSanitizer
         * does not take for a write racing the other workers' accept). */
        int lfd = fcntl(w->listen_keep, F_DUPFD_CLOEXEC, 0);
        if (lfd < 0)
            return; /* still none: the next tick */
        int rc;
        if ((rc = uv_tcp_init(&w->loop, &w->listener)) != 0 ||
            (rc = uv_tcp_open(&w->listener, lfd)) != 0 ||
            (rc = uv_listen((uv_stream_t *)&w->listener, 4096, on_connection)) != 0) {
            log_error("listen_failed", "worker=%u error=%s", w->index, uv_err_name(rc));
            return;
        }
        w->listener.data = w;
        w->listening = true;
        w->relisten = false;
        w->listener_closed = false;
    }
    int fd = open_reserve();
    if (fd < 0)
        return;
    w->reserve_fd = fd;
    w->accept_paused = false;
    uv_timer_stop(&w->accept_retry);
    log_info("accept_resumed", "worker=%u open_connections=%u", w->index, w->nconns);
    if (w->listening)
        conn_accept(w); /* the pending one, if any; watching the listener again */
}

static void on_connection(uv_stream_t *l, int status)
{
    struct worker *w = l->data;
    if (status == UV_EMFILE || status == UV_ENFILE) {
        if (w->reserve_fd >= 0) {
            close(w->reserve_fd);
            w->reserve_fd = -1;
        } else if (w->listening && w->listen_keep >= 0) {
            /* No reserve left and still none free: end libuv's retry loop. */
            uv_close((uv_handle_t *)&w->listener, on_listener_closed);
            w->listening = false;
            w->relisten = true;
        }
        if (!w->accept_paused) {
            w->accept_paused = true;
            log_warn("accept_paused", "worker=%u reason=%s open_connections=%u", w->index,
                     uv_err_name(status), w->nconns);
            uv_timer_start(&w->accept_retry, on_accept_retry, ACCEPT_RETRY_MS, ACCEPT_RETRY_MS);
        }
        return;
    }
    if (status < 0) {
        log_warn("accept_failed", "worker=%u error=%s", w->index, uv_err_name(status));
        return;
    }
    if (w->accept_paused)
        return; /* left pending: libuv stops watching the listener */
    conn_accept(w);
}

static void on_tick(uv_timer_t *t)
{
    struct worker *w = t->data;
    conn_sweep(w, (int64_t)uv_now(&w->loop));
    worker_maybe_finish(w);
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
    uv_close((uv_handle_t *)&w->more, NULL);
    uv_close((uv_handle_t *)&w->accept_retry, NULL);
    if (w->reserve_fd >= 0) {
        close(w->reserve_fd);
        w->reserve_fd = -1;
    }
    if (w->listen_keep >= 0) {
        close(w->listen_keep);
        w->listen_keep = -1;
    }
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
    if ((rc = uv_tcp_init(&w->loop, &w->listener)) != 0 ||
        (rc = uv_tcp_open(&w->listener, w->listen_fd)) != 0 ||
        (rc = uv_listen((uv_stream_t *)&w->listener, 4096, on_connection)) != 0) {
        log_error("listen_failed", "worker=%u error=%s", w->index, uv_err_name(rc));
        exit(1);
    }
    w->listener.data = w;
    w->listening = true;
    uv_run(&w->loop, UV_RUN_DEFAULT);
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
    w->reserve_fd = -1;
    w->listen_keep = -1;
    list_init(&w->conns);
    list_init(&w->dirty);
    idmap_init(&w->by_id);
    w->read_buf = malloc(WORKER_READ_BUF);
    if (!w->read_buf)
        return -ENOMEM;
    int rc;
    if ((rc = uv_loop_init(&w->loop)) != 0)
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
    uv_idle_init(&w->loop, &w->more);
    w->more.data = w;
    uv_timer_init(&w->loop, &w->accept_retry);
    w->accept_retry.data = w;
    w->reserve_fd = open_reserve();
    if (w->reserve_fd < 0)
        return -errno;
    w->listen_keep = fcntl(w->listen_fd, F_DUPFD_CLOEXEC, 0);
    if (w->listen_keep < 0)
        return -errno;
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
