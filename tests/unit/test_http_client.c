/*
 * http_client tests, against a small HTTP/1.1 server that runs in this
 * process (a thread, plain sockets on 127.0.0.1, poll()): what a request
 * sends arrives as sent, responses of every shape come back whole and in
 * order, streams arrive chunk by chunk, every way a request can end calls
 * on_done exactly once (timeouts, cancel from another thread, the size cap,
 * a callback's refusal, the client's free with requests in flight), the
 * per-client cap answers -EBUSY, and 200 slow streams run at once on the
 * client's one thread, and a delayed request (delay_ms) waits without
 * connecting or counting toward its timeouts and ends like any other.
 * ASan checks that nothing leaks, TSan that nothing races.
 *
 * cmocka's asserts are not thread-safe: the callbacks (client thread) only
 * record into a struct sink, and the test thread asserts once the records
 * are handed over (under the waiter's lock, or after http_client_free has
 * joined the client's thread). Nothing here measures time: deadlines are
 * generous bounds on waiting, never expectations.
 *
 * The server's paths (queries give numbers):
 *   /body               200, Content-Length, "hello, chatd", X-Test: yes
 *   /echo               200 whose body is the request as received
 *   /stream?n=N&ms=M    200 chunked: N events "data: i\n\n", M ms apart,
 *                       each chunk in three writes
 *   /stream?...&gate=G  the same, but no event is sent before G such
 *                       requests have arrived (all of them open at once)
 *   /lockstep?n=N       200 chunked: event i is sent only once the client
 *                       has delivered event i-1 (counted by the test)
 *   /429                429 with Retry-After: 7
 *   /500                500
 *   /cut                Content-Length 100, 10 bytes, then close
 *   /hang               reads the request, never answers
 *   /big?n=N            200 chunked, N bytes (no Content-Length)
 *   /bigcl?n=N          200, Content-Length N, N bytes
 *   /redirect           302 to /body
 * Bytes that are not an HTTP request (a TLS hello) get a 400 and a close.
 * A second port serves the same behind TLS, with a self-signed certificate
 * for 127.0.0.1 made at start (OpenSSL) and written out for ca_file.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "net/http_client.h"
#include "util/log.h"

#define WAIT_MS 20000 /* the longest any wait may take before the test fails */

static int64_t mono_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* ---- the test server ---------------------------------------------------- */

#define SRV_MAX_CONNS 512
#define SRV_IN_MAX (64 * 1024)

/* One write of a response, due `delay_ms` after the one before and, when
 * wait_on is set, once *wait_on reaches wait_for. */
struct step {
    int delay_ms;
    atomic_int *wait_on;
    int wait_for;
    char *buf;
    size_t len;
};

struct sconn {
    int fd;
    SSL *ssl; /* on the TLS port; NULL on the plain one */
    char in[SRV_IN_MAX];
    size_t in_len;
    bool busy;        /* a response is being written (or withheld: /hang) */
    bool close_after; /* close once the steps are written */
    struct step *steps;
    size_t nsteps, pos, off;
    int64_t due; /* when steps[pos] may go */
};

struct server {
    int lfd;
    int port;
    int tls_lfd; /* the same server behind TLS */
    int tls_port;
    SSL_CTX *tls;     /* its certificate: self-signed, for IP 127.0.0.1 */
    char ca_path[64]; /* that certificate, PEM, for ca_file */
    int stop_pipe[2];
    pthread_t thread;
    struct sconn *conns[SRV_MAX_CONNS];
    atomic_int accepted; /* connections accepted so far */
    atomic_int seen;     /* lockstep events the client delivered */
    atomic_int gate;     /* /stream?gate= requests received */
};

static struct server srv;

static void add_step(struct sconn *k, int delay_ms, atomic_int *wait_on, int wait_for,
                     const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void add_step(struct sconn *k, int delay_ms, atomic_int *wait_on, int wait_for,
                     const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (n < 0)
        abort();
    k->steps = realloc(k->steps, (k->nsteps + 1) * sizeof *k->steps);
    if (!k->steps)
        abort();
    k->steps[k->nsteps++] = (struct step){delay_ms, wait_on, wait_for, s, (size_t)n};
}

/* A step of raw bytes (may hold anything). */
static void add_bytes(struct sconn *k, char ch, size_t len)
{
    char *s = malloc(len ? len : 1);
    if (!s)
        abort();
    memset(s, ch, len);
    k->steps = realloc(k->steps, (k->nsteps + 1) * sizeof *k->steps);
    if (!k->steps)
        abort();
    k->steps[k->nsteps++] = (struct step){0, NULL, 0, s, len};
}

static void clear_steps(struct sconn *k)
{
    for (size_t i = 0; i < k->nsteps; i++)
        free(k->steps[i].buf);
    free(k->steps);
    k->steps = NULL;
    k->nsteps = k->pos = k->off = 0;
}

static long query_num(const char *target, const char *key, long dflt)
{
    const char *q = strchr(target, '?');
    size_t kl = strlen(key);
    for (const char *p = q; p; p = strchr(p + 1, '&'))
        if (strncmp(p + 1, key, kl) == 0 && p[1 + kl] == '=')
            return strtol(p + 2 + kl, NULL, 10);
    return dflt;
}

/* Plan the answer to one whole request (head + body, `len` bytes). */
static void plan(struct sconn *k, const char *req, size_t len)
{
    char method[16] = "", target[512] = "";
    sscanf(req, "%15s %511s", method, target);
    const char *path = target;
    k->busy = true;
    k->due = mono_ms();
    if (strncmp(path, "/body", 5) == 0) {
        add_step(k, 0, NULL, 0,
                 "HTTP/1.1 200 OK\r\nContent-Length: 12\r\nX-Test: yes\r\n\r\nhello, chatd");
    } else if (strncmp(path, "/echo", 5) == 0) {
        add_step(k, 0, NULL, 0,
                 "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n\r\n", len);
        add_step(k, 0, NULL, 0, "%.*s", (int)len, req);
        if (memchr(req, '\0', len)) /* %.*s stops at a NUL: keep it exact */
            abort();
    } else if (strncmp(path, "/stream", 7) == 0) {
        long n = query_num(target, "n", 10), ms = query_num(target, "ms", 10);
        long gate = query_num(target, "gate", 0);
        if (gate)
            atomic_fetch_add(&srv.gate, 1);
        add_step(k, 0, NULL, 0,
                 "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n");
        for (long i = 0; i < n; i++) {
            char ev[32];
            int el = snprintf(ev, sizeof ev, "data: %ld\n\n", i);
            /* With gate=G the first event waits for G such requests. */
            add_step(k, (int)ms, i == 0 && gate ? &srv.gate : NULL, (int)gate, "%x\r\n", el);
            add_step(k, 0, NULL, 0, "%s", ev);
            add_step(k, 0, NULL, 0, "\r\n");
        }
        add_step(k, 0, NULL, 0, "0\r\n\r\n");
    } else if (strncmp(path, "/lockstep", 9) == 0) {
        long n = query_num(target, "n", 5);
        add_step(k, 0, NULL, 0, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        for (long i = 0; i < n; i++) {
            char ev[32];
            int el = snprintf(ev, sizeof ev, "data: %ld\n\n", i);
            add_step(k, 0, &srv.seen, (int)i, "%x\r\n%s\r\n", el, ev);
        }
        add_step(k, 0, &srv.seen, (int)n, "0\r\n\r\n");
    } else if (strncmp(path, "/429", 4) == 0) {
        add_step(k, 0, NULL, 0,
                 "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\n"
                 "Content-Length: 9\r\n\r\nslow down");
    } else if (strncmp(path, "/500", 4) == 0) {
        add_step(k, 0, NULL, 0,
                 "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops");
    } else if (strncmp(path, "/cut", 4) == 0) {
        add_step(k, 0, NULL, 0, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789");
        k->close_after = true;
    } else if (strncmp(path, "/hang", 5) == 0) {
        /* no steps: busy until the client goes away */
    } else if (strncmp(path, "/bigcl", 6) == 0) {
        long n = query_num(target, "n", 1000);
        add_step(k, 0, NULL, 0, "HTTP/1.1 200 OK\r\nContent-Length: %ld\r\n\r\n", n);
        add_bytes(k, 'x', (size_t)n);
    } else if (strncmp(path, "/big", 4) == 0) {
        long n = query_num(target, "n", 1000);
        add_step(k, 0, NULL, 0, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        for (long done = 0; done < n; done += 4096) {
            long c = n - done < 4096 ? n - done : 4096;
            add_step(k, 0, NULL, 0, "%lx\r\n", c);
            add_bytes(k, 'x', (size_t)c);
            add_step(k, 0, NULL, 0, "\r\n");
        }
        add_step(k, 0, NULL, 0, "0\r\n\r\n");
    } else if (strncmp(path, "/redirect", 9) == 0) {
        add_step(k, 0, NULL, 0,
                 "HTTP/1.1 302 Found\r\nLocation: /body\r\nContent-Length: 5\r\n\r\nmoved");
    } else {
        add_step(k, 0, NULL, 0, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    }
}

/* A whole request at the start of k->in: its length, or 0 while incomplete.
 * -1: not HTTP at all. */
static long whole_request(struct sconn *k)
{
    if (k->in_len > 0 && !(k->in[0] >= 'A' && k->in[0] <= 'Z'))
        return -1;
    char *end = memmem(k->in, k->in_len, "\r\n\r\n", 4);
    if (!end)
        return 0;
    size_t head = (size_t)(end - k->in) + 4;
    size_t body = 0;
    for (const char *p = k->in; p < end;) {
        if (strncasecmp(p, "Content-Length:", 15) == 0)
            body = strtoul(p + 15, NULL, 10);
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl)
            break;
        p = nl + 1;
    }
    return head + body <= k->in_len ? (long)(head + body) : 0;
}

static void sconn_free(struct sconn *k)
{
    SSL_free(k->ssl);
    close(k->fd);
    clear_steps(k);
    free(k);
}

static void maybe_plan(struct sconn *k)
{
    if (k->busy)
        return;
    long n = whole_request(k);
    if (n < 0) {
        add_step(k, 0, NULL, 0, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        k->busy = k->close_after = true;
        k->due = mono_ms();
        k->in_len = 0;
        return;
    }
    if (n == 0)
        return;
    char *req = malloc((size_t)n + 1);
    if (!req)
        abort();
    memcpy(req, k->in, (size_t)n);
    req[n] = '\0';
    memmove(k->in, k->in + n, k->in_len - (size_t)n);
    k->in_len -= (size_t)n;
    plan(k, req, (size_t)n);
    free(req);
}

/* recv and send, through TLS on the TLS port: the same results, with
 * EAGAIN while OpenSSL waits for the socket (the handshake included). */
static ssize_t tls_result(struct sconn *k, int r)
{
    int e = SSL_get_error(k->ssl, r);
    ERR_clear_error();
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        errno = EAGAIN;
        return -1;
    }
    if (e == SSL_ERROR_ZERO_RETURN)
        return 0;
    errno = EPROTO; /* a client that refused our certificate ends here */
    return -1;
}

static ssize_t sc_recv(struct sconn *k, char *buf, size_t n)
{
    if (!k->ssl)
        return recv(k->fd, buf, n, 0);
    if (!SSL_is_init_finished(k->ssl)) {
        int r = SSL_do_handshake(k->ssl);
        if (r != 1)
            return tls_result(k, r);
    }
    int r = SSL_read(k->ssl, buf, (int)n);
    return r > 0 ? r : tls_result(k, r);
}

static ssize_t sc_send(struct sconn *k, const char *buf, size_t n)
{
    if (!k->ssl)
        return send(k->fd, buf, n, MSG_NOSIGNAL);
    if (!SSL_is_init_finished(k->ssl)) {
        errno = EAGAIN;
        return -1;
    }
    int r = SSL_write(k->ssl, buf, (int)n);
    return r > 0 ? r : tls_result(k, r);
}

/* Write what is due; false when the connection is to be closed. */
static bool run_steps(struct sconn *k, int64_t now)
{
    while (k->busy && k->pos < k->nsteps) {
        struct step *s = &k->steps[k->pos];
        if (k->off == 0 && (now < k->due || (s->wait_on && atomic_load(s->wait_on) < s->wait_for)))
            return true;
        ssize_t w = sc_send(k, s->buf + k->off, s->len - k->off);
        if (w < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK;
        k->off += (size_t)w;
        if (k->off < s->len)
            return true;
        k->off = 0;
        k->pos++;
        if (k->pos < k->nsteps)
            k->due = now + k->steps[k->pos].delay_ms;
    }
    if (k->busy && k->nsteps > 0 && k->pos == k->nsteps) { /* answered */
        if (k->close_after)
            return false;
        clear_steps(k);
        k->busy = false;
        maybe_plan(k); /* the next request on this connection */
    }
    return true;
}

/* Take every waiting connection of listener lfd. */
static void accept_all(int lfd, bool tls)
{
    int fd;
    while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
        int i = 0;
        while (i < SRV_MAX_CONNS && srv.conns[i])
            i++;
        struct sconn *k = i < SRV_MAX_CONNS ? calloc(1, sizeof *k) : NULL;
        if (k && tls && (!(k->ssl = SSL_new(srv.tls)) || SSL_set_fd(k->ssl, fd) != 1)) {
            SSL_free(k->ssl);
            free(k);
            k = NULL;
        }
        if (!k) {
            close(fd);
            continue;
        }
        if (tls)
            SSL_set_accept_state(k->ssl);
        k->fd = fd;
        srv.conns[i] = k;
        atomic_fetch_add(&srv.accepted, 1);
    }
}

/* Read all there is; false when the connection is to be closed. */
static bool read_all(struct sconn *k)
{
    for (;;) {
        if (k->in_len == SRV_IN_MAX)
            return false;
        ssize_t r = sc_recv(k, k->in + k->in_len, SRV_IN_MAX - k->in_len);
        if (r == 0)
            return false;
        if (r < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK;
        k->in_len += (size_t)r;
    }
}

static void *server_main(void *arg)
{
    (void)arg;
    enum { FIRST = 3 }; /* pf[]: stop pipe, listener, TLS listener, conns */
    struct pollfd pf[SRV_MAX_CONNS + FIRST];
    int idx[SRV_MAX_CONNS + FIRST];
    for (;;) {
        int64_t now = mono_ms();
        int timeout = 1000;
        nfds_t n = 0;
        pf[n++] = (struct pollfd){.fd = srv.stop_pipe[0], .events = POLLIN};
        pf[n++] = (struct pollfd){.fd = srv.lfd, .events = POLLIN};
        pf[n++] = (struct pollfd){.fd = srv.tls_lfd, .events = POLLIN};
        for (int i = 0; i < SRV_MAX_CONNS; i++) {
            struct sconn *k = srv.conns[i];
            if (!k)
                continue;
            short ev = POLLIN;
            if (k->busy && k->pos < k->nsteps) {
                if (k->off > 0) {
                    ev |= POLLOUT;
                } else if (k->steps[k->pos].wait_on) {
                    timeout = timeout > 2 ? 2 : timeout; /* watch the counter */
                } else {
                    int64_t d = k->due - now;
                    d = d < 0 ? 0 : d;
                    timeout = d < timeout ? (int)d : timeout;
                }
            }
            idx[n] = i;
            pf[n++] = (struct pollfd){.fd = k->fd, .events = ev};
        }
        if (poll(pf, n, timeout) < 0 && errno != EINTR)
            abort();
        if (pf[0].revents)
            break;
        if (pf[1].revents & POLLIN)
            accept_all(srv.lfd, false);
        if (pf[2].revents & POLLIN)
            accept_all(srv.tls_lfd, true);
        now = mono_ms();
        for (nfds_t j = FIRST; j < n; j++) {
            struct sconn *k = srv.conns[idx[j]];
            bool keep = true;
            if (pf[j].revents & (POLLIN | POLLHUP | POLLERR)) {
                keep = read_all(k);
                if (keep)
                    maybe_plan(k);
            }
            if (keep)
                keep = run_steps(k, now);
            if (!keep) {
                sconn_free(k);
                srv.conns[idx[j]] = NULL;
            }
        }
    }
    for (int i = 0; i < SRV_MAX_CONNS; i++)
        if (srv.conns[i]) {
            sconn_free(srv.conns[i]);
            srv.conns[i] = NULL;
        }
    return NULL;
}

/* A listening socket on 127.0.0.1 and a port the kernel picks. */
static int listen_any(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 1024) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &al) != 0)
        return -1;
    *port = ntohs(a.sin_port);
    return fd;
}

/* A fresh P-256 key and a self-signed certificate for IP 127.0.0.1 (and no
 * name), served on the TLS port and written to srv.ca_path for ca_file. */
static int make_tls(void)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    int ok = key && x;
    X509_EXTENSION *san = NULL;
    if (ok) {
        X509_set_version(x, 2);
        ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
        X509_gmtime_adj(X509_getm_notBefore(x), -3600);
        X509_gmtime_adj(X509_getm_notAfter(x), 3600);
        X509_set_pubkey(x, key);
        X509_NAME *nm = X509_get_subject_name(x);
        X509_NAME_add_entry_by_txt(nm, "CN", MBSTRING_ASC, (const unsigned char *)"chatd test", -1,
                                   -1, 0);
        X509_set_issuer_name(x, nm);
        X509V3_CTX v3;
        X509V3_set_ctx_nodb(&v3);
        X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
        san = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, "IP:127.0.0.1");
        ok = san && X509_add_ext(x, san, -1) && X509_sign(x, key, EVP_sha256()) > 0;
    }
    snprintf(srv.ca_path, sizeof srv.ca_path, "/tmp/chatd-http-client-ca-XXXXXX");
    int fd = ok ? mkstemp(srv.ca_path) : -1;
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    ok = f && PEM_write_X509(f, x);
    if (f)
        fclose(f);
    srv.tls = ok ? SSL_CTX_new(TLS_server_method()) : NULL;
    ok = srv.tls && SSL_CTX_use_certificate(srv.tls, x) == 1 &&
         SSL_CTX_use_PrivateKey(srv.tls, key) == 1;
    X509_EXTENSION_free(san);
    X509_free(x);
    EVP_PKEY_free(key);
    return ok ? 0 : -1;
}

static int server_setup(void **state)
{
    (void)state;
    memset(&srv, 0, sizeof srv);
    if ((srv.lfd = listen_any(&srv.port)) < 0 || (srv.tls_lfd = listen_any(&srv.tls_port)) < 0 ||
        pipe(srv.stop_pipe) != 0 || make_tls() != 0)
        return -1;
    return pthread_create(&srv.thread, NULL, server_main, NULL) == 0 ? 0 : -1;
}

static int server_teardown(void **state)
{
    (void)state;
    if (write(srv.stop_pipe[1], "x", 1) != 1)
        return -1;
    pthread_join(srv.thread, NULL);
    SSL_CTX_free(srv.tls);
    unlink(srv.ca_path);
    close(srv.tls_lfd);
    close(srv.lfd);
    close(srv.stop_pipe[0]);
    close(srv.stop_pipe[1]);
    return 0;
}

/* ---- what a request saw -------------------------------------------------- */

/* Counts on_done across sinks, for the test thread to wait on. */
struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
};

static struct waiter waiter = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};

struct sink {
    int head_calls, body_calls, done_calls;
    int late_calls; /* callbacks after on_done, or a body before the head */
    int head_status;
    char retry_after[32];
    char x_test[32];
    char *body;
    size_t len, cap;
    int result, status;
    char error[256];
    uint64_t id; /* as passed to the callbacks */
    bool id_mismatch;
    pthread_t thread;    /* the first callback's thread */
    bool thread_changed; /* a later callback ran on another thread */
    int stop_body_with;  /* on_body returns this (when nonzero) */
    bool lockstep;       /* count events for the server's /lockstep */
};

static void note(struct sink *s, uint64_t id)
{
    if (s->head_calls + s->body_calls + s->done_calls == 0)
        s->thread = pthread_self();
    else if (!pthread_equal(s->thread, pthread_self()))
        s->thread_changed = true;
    if (s->done_calls)
        s->late_calls++;
    if (s->id && s->id != id)
        s->id_mismatch = true;
    s->id = id;
}

static void copy_value(char *dst, size_t cap, const struct http_client_header *h)
{
    snprintf(dst, cap, "%.*s", h ? (int)h->value_len : 0, h ? h->value : "");
}

static int sink_head(void *arg, uint64_t id, int status, const struct http_client_header *hv,
                     size_t n)
{
    struct sink *s = arg;
    note(s, id);
    s->head_calls++;
    s->head_status = status;
    copy_value(s->retry_after, sizeof s->retry_after,
               http_client_header_find(hv, n, "retry-after"));
    copy_value(s->x_test, sizeof s->x_test, http_client_header_find(hv, n, "X-TEST"));
    return 0;
}

static int sink_body(void *arg, uint64_t id, const char *data, size_t len)
{
    struct sink *s = arg;
    note(s, id);
    if (s->head_calls == 0)
        s->late_calls++;
    s->body_calls++;
    if (s->len + len + 1 > s->cap) {
        s->cap = (s->len + len + 1) * 2;
        s->body = realloc(s->body, s->cap);
        if (!s->body)
            abort();
    }
    memcpy(s->body + s->len, data, len);
    s->len += len;
    s->body[s->len] = '\0';
    if (s->lockstep)
        atomic_fetch_add(&srv.seen, 1);
    return s->stop_body_with;
}

static void sink_done(void *arg, uint64_t id, int result, int status, const char *error)
{
    struct sink *s = arg;
    note(s, id);
    s->done_calls++;
    s->result = result;
    s->status = status;
    snprintf(s->error, sizeof s->error, "%s", error);
    pthread_mutex_lock(&waiter.mu);
    waiter.done++;
    pthread_cond_broadcast(&waiter.cv);
    pthread_mutex_unlock(&waiter.mu);
}

static const struct http_client_callbacks sink_cb = {sink_head, sink_body, sink_done};

static void sink_release(struct sink *s)
{
    free(s->body);
}

/* Wait until `n` on_done calls were counted since the last reset; false
 * after WAIT_MS. */
static bool wait_done(int n)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += WAIT_MS / 1000;
    pthread_mutex_lock(&waiter.mu);
    while (waiter.done < n)
        if (pthread_cond_timedwait(&waiter.cv, &waiter.mu, &dl) != 0)
            break;
    bool ok = waiter.done >= n;
    pthread_mutex_unlock(&waiter.mu);
    return ok;
}

static void reset_waiter(void)
{
    pthread_mutex_lock(&waiter.mu);
    waiter.done = 0;
    pthread_mutex_unlock(&waiter.mu);
}

static char url_buf[512];
static const char *url(const char *path)
{
    snprintf(url_buf, sizeof url_buf, "http://127.0.0.1:%d%s", srv.port, path);
    return url_buf;
}

static struct http_client *new_client(const struct http_client_options *o)
{
    reset_waiter();
    struct http_client *c = NULL;
    assert_int_equal(http_client_new(&c, o), 0);
    assert_non_null(c);
    return c;
}

/* Submit a GET of `path` into s; returns the id. */
static uint64_t get(struct http_client *c, const char *path, struct sink *s)
{
    struct http_client_request q = {.url = url(path), .cb = &sink_cb, .arg = s};
    uint64_t id = 0;
    assert_int_equal(http_client_submit(c, &q, &id), 0);
    assert_true(id != 0);
    return id;
}

static bool starts_with(const char *s, const char *prefix)
{
    return s && strncmp(s, prefix, strlen(prefix)) == 0;
}

/* A sink that ended once, normally, with nothing odd on the way. */
static void assert_clean(const struct sink *s)
{
    assert_int_equal(s->done_calls, 1);
    assert_int_equal(s->late_calls, 0);
    assert_false(s->thread_changed);
    assert_false(s->id_mismatch);
    assert_false(pthread_equal(s->thread, pthread_self()));
}

/* ---- tests -------------------------------------------------------------- */

static void test_get_and_post_arrive_as_sent(void **state)
{
    (void)state;
    struct http_client *c = new_client(NULL);
    struct sink s[4] = {0};

    struct http_client_field gh[] = {{"X-A", "1"}, {"X-Empty", ""}};
    struct http_client_request g = {
        .url = url("/echo?q=1"), .headers = gh, .nheaders = 2, .cb = &sink_cb, .arg = &s[0]};
    assert_int_equal(http_client_submit(c, &g, NULL), 0);

    static const char json[] = "{\"text\":\"hi\"}";
    struct http_client_field ph[] = {{"Content-Type", "application/json"},
                                     {"Authorization", "Bearer k"}};
    struct http_client_request p = {.url = url("/echo"),
                                    .headers = ph,
                                    .nheaders = 2,
                                    .body = json,
                                    .body_len = strlen(json),
                                    .cb = &sink_cb,
                                    .arg = &s[1]};
    assert_int_equal(http_client_submit(c, &p, NULL), 0);

    /* A body without a Content-Type gets none (not curl's form type). */
    struct http_client_request p2 = {.method = "PUT",
                                     .url = url("/echo"),
                                     .body = "abc",
                                     .body_len = 3,
                                     .cb = &sink_cb,
                                     .arg = &s[2]};
    assert_int_equal(http_client_submit(c, &p2, NULL), 0);
    /* An empty POST sends Content-Length: 0. */
    struct http_client_request p3 = {
        .method = "POST", .url = url("/echo"), .cb = &sink_cb, .arg = &s[3]};
    assert_int_equal(http_client_submit(c, &p3, NULL), 0);

    assert_true(wait_done(4));
    http_client_free(c);
    for (int i = 0; i < 4; i++) {
        assert_clean(&s[i]);
        assert_int_equal(s[i].result, 0);
        assert_int_equal(s[i].status, 200);
        assert_string_equal(s[i].error, "");
        assert_non_null(s[i].body);
        assert_non_null(strstr(s[i].body, "User-Agent: chatd/"));
        assert_null(strstr(s[i].body, "Expect:"));
    }
    assert_true(starts_with(s[0].body, "GET /echo?q=1 HTTP/1.1\r\n"));
    assert_non_null(strstr(s[0].body, "\r\nX-A: 1\r\n"));
    assert_non_null(strstr(s[0].body, "\r\nX-Empty:"));

    assert_true(starts_with(s[1].body, "POST /echo HTTP/1.1\r\n"));
    assert_non_null(strstr(s[1].body, "\r\nContent-Type: application/json\r\n"));
    assert_non_null(strstr(s[1].body, "\r\nAuthorization: Bearer k\r\n"));
    assert_non_null(strstr(s[1].body, "\r\nContent-Length: 13\r\n"));
    size_t bl = strlen(json);
    assert_true(s[1].len > bl && memcmp(s[1].body + s[1].len - bl, json, bl) == 0);

    assert_true(starts_with(s[2].body, "PUT /echo HTTP/1.1\r\n"));
    assert_null(strcasestr(s[2].body, "Content-Type"));
    assert_true(memcmp(s[2].body + s[2].len - 3, "abc", 3) == 0);

    assert_true(starts_with(s[3].body, "POST /echo HTTP/1.1\r\n"));
    assert_non_null(strstr(s[3].body, "\r\nContent-Length: 0\r\n"));
    assert_null(strcasestr(s[3].body, "Content-Type"));
    for (int i = 0; i < 4; i++)
        sink_release(&s[i]);
}

static void test_status_and_headers(void **state)
{
    (void)state;
    struct http_client *c = new_client(NULL);
    struct sink s[4] = {0};
    get(c, "/body", &s[0]);
    get(c, "/429", &s[1]);
    get(c, "/500", &s[2]);
    get(c, "/redirect", &s[3]);
    assert_true(wait_done(4));
    http_client_free(c);
    for (int i = 0; i < 4; i++) {
        assert_clean(&s[i]);
        assert_int_equal(s[i].result, 0);
        assert_int_equal(s[i].head_calls, 1);
        assert_int_equal(s[i].head_status, s[i].status);
    }
    assert_int_equal(s[0].status, 200);
    assert_string_equal(s[0].x_test, "yes");
    assert_string_equal(s[0].body, "hello, chatd");
    assert_int_equal(s[1].status, 429);
    assert_string_equal(s[1].retry_after, "7");
    assert_string_equal(s[1].body, "slow down");
    assert_int_equal(s[2].status, 500);
    assert_string_equal(s[2].body, "oops");
    /* Redirects are reported, never followed. */
    assert_int_equal(s[3].status, 302);
    assert_string_equal(s[3].body, "moved");
    for (int i = 0; i < 4; i++)
        sink_release(&s[i]);
}

/* One after the other, two requests to one host use one connection. */
static void test_connection_reuse(void **state)
{
    (void)state;
    struct http_client *c = new_client(NULL);
    struct sink s[2] = {0};
    int before = atomic_load(&srv.accepted);
    get(c, "/body", &s[0]);
    assert_true(wait_done(1));
    get(c, "/body", &s[1]);
    assert_true(wait_done(2));
    int after = atomic_load(&srv.accepted);
    http_client_free(c);
    assert_int_equal(after - before, 1);
    for (int i = 0; i < 2; i++) {
        assert_clean(&s[i]);
        assert_string_equal(s[i].body, "hello, chatd");
        sink_release(&s[i]);
    }
}

/* What the after_callbacks hook saw. */
struct after_probe {
    atomic_int calls;
    atomic_int other_thread; /* calls not on the thread of the callbacks */
    pthread_t thread;        /* the callbacks' thread, once known */
    atomic_bool thread_known;
};

static void on_after_turn(void *arg)
{
    struct after_probe *p = arg;
    atomic_fetch_add(&p->calls, 1);
    if (atomic_load(&p->thread_known) && !pthread_equal(p->thread, pthread_self()))
        atomic_fetch_add(&p->other_thread, 1);
}

static void test_after_callbacks_hook(void **state)
{
    (void)state;
    struct after_probe p = {0};
    struct http_client_options o = {.after_callbacks = on_after_turn, .after_arg = &p};
    struct http_client *c = new_client(&o);
    struct sink s = {0};
    get(c, "/body", &s);
    assert_true(wait_done(1));
    p.thread = s.thread;
    atomic_store(&p.thread_known, true);
    /* The turn that ran on_done ends with a call; so does the next one. */
    int seen = atomic_load(&p.calls);
    assert_true(seen >= 1);
    struct sink s2 = {0};
    get(c, "/body", &s2);
    assert_true(wait_done(2));
    for (int i = 0; i < 200 && atomic_load(&p.calls) <= seen; i++)
        usleep(5000);
    assert_true(atomic_load(&p.calls) > seen);
    http_client_free(c);
    int at_free = atomic_load(&p.calls);
    usleep(20000);
    assert_int_equal(atomic_load(&p.calls), at_free); /* none once freed */
    assert_int_equal(atomic_load(&p.other_thread), 0);
    assert_clean(&s);
    assert_clean(&s2);
    sink_release(&s);
    sink_release(&s2);
}

static void expect_events(const struct sink *s, int n)
{
    char want[4096];
    size_t len = 0;
    for (int i = 0; i < n; i++)
        len += (size_t)snprintf(want + len, sizeof want - len, "data: %d\n\n", i);
    assert_int_equal(s->len, len);
    assert_memory_equal(s->body, want, len);
}

static void test_stream_in_order(void **state)
{
    (void)state;
    struct http_client *c = new_client(NULL);
    struct sink s[2] = {0};
    get(c, "/stream?n=20&ms=5", &s[0]);
    /* Event i is sent only after the client delivered event i-1: each one
     * reaches on_body before the next exists, so they come one by one. */
    s[1].lockstep = true;
    atomic_store(&srv.seen, 0);
    get(c, "/lockstep?n=6", &s[1]);
    assert_true(wait_done(2));
    http_client_free(c);
    for (int i = 0; i < 2; i++) {
        assert_clean(&s[i]);
        assert_int_equal(s[i].result, 0);
        assert_int_equal(s[i].status, 200);
    }
    expect_events(&s[0], 20);
    expect_events(&s[1], 6);
    assert_true(s[1].body_calls >= 6);
    for (int i = 0; i < 2; i++)
        sink_release(&s[i]);
}

static void test_timeouts(void **state)
{
    (void)state;
    struct http_client *c = new_client(NULL);
    struct sink s[2] = {0};
    struct http_client_request fb = {.url = url("/hang"),
                                     .first_byte_timeout_ms = 150,
                                     .total_timeout_ms = 60000,
                                     .cb = &sink_cb,
                                     .arg = &s[0]};
    assert_int_equal(http_client_submit(c, &fb, NULL), 0);
    /* Bytes keep coming, but not all of them in time. */
    struct http_client_request tot = {.url = url("/stream?n=1000&ms=10"),
                                      .first_byte_timeout_ms = 10000,
                                      .total_timeout_ms = 300,
                                      .cb = &sink_cb,
                                      .arg = &s[1]};
    assert_int_equal(http_client_submit(c, &tot, NULL), 0);
    assert_true(wait_done(2));
    http_client_free(c);
    assert_clean(&s[0]);
    assert_int_equal(s[0].result, -ETIMEDOUT);
    assert_int_equal(s[0].status, 0);
    assert_int_equal(s[0].head_calls, 0);
    assert_non_null(strstr(s[0].error, "first-byte timeout (150 ms)"));
    /* (Whether the head came within the 300 ms depends on the machine's
     * load: not checked.) */
    assert_clean(&s[1]);
    assert_int_equal(s[1].result, -ETIMEDOUT);
    assert_non_null(strstr(s[1].error, "total timeout (300 ms)"));
    for (int i = 0; i < 2; i++)
        sink_release(&s[i]);
}

struct canceller {
    struct http_client *c;
    uint64_t id;
    int rc;
};

static void *cancel_main(void *arg)
{
    struct canceller *k = arg;
    k->rc = http_client_cancel(k->c, k->id);
    return NULL;
}

static void test_cancel_from_another_thread(void **state)
{
    (void)state;
    struct http_client *c = new_client(NULL);
    struct sink s[2] = {0};
    struct canceller k[2] = {{c, get(c, "/hang", &s[0]), -1},
                             {c, get(c, "/stream?n=1000&ms=10", &s[1]), -1}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&t[i], NULL, cancel_main, &k[i]), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    assert_true(wait_done(2));
    /* Cancelling what has ended does nothing. */
    assert_int_equal(http_client_cancel(c, k[0].id), 0);
    assert_int_equal(http_client_cancel(c, 987654321), 0);
    http_client_free(c);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(k[i].rc, 0);
        assert_clean(&s[i]);
        assert_int_equal(s[i].result, -ECANCELED);
        assert_int_equal(s[i].id, k[i].id);
        sink_release(&s[i]);
    }
}

static void test_size_cap(void **state)
{
    (void)state;
    struct http_client *c = new_client(NULL);
    struct sink s[4] = {0};
    const char *paths[] = {"/big?n=20000", "/bigcl?n=20000", "/big?n=10000", "/bigcl?n=10000"};
    for (int i = 0; i < 4; i++) {
        struct http_client_request q = {
            .url = url(paths[i]), .max_response_bytes = 10000, .cb = &sink_cb, .arg = &s[i]};
        assert_int_equal(http_client_submit(c, &q, NULL), 0);
    }
    assert_true(wait_done(4));
    http_client_free(c);
    for (int i = 0; i < 4; i++)
        assert_clean(&s[i]);
    /* Over the cap, streamed or announced: refused, never past the cap. */
    for (int i = 0; i < 2; i++) {
        assert_int_equal(s[i].result, -EMSGSIZE);
        assert_true(s[i].len <= 10000);
        assert_non_null(strstr(s[i].error, "over 10000 bytes"));
    }
    /* Exactly the cap: accepted. */
    for (int i = 2; i < 4; i++) {
        assert_int_equal(s[i].result, 0);
        assert_int_equal(s[i].len, 10000);
    }
    for (int i = 0; i < 4; i++)
        sink_release(&s[i]);
}

static void test_failures(void **state)
{
    (void)state;
    /* A port nobody listens on: bind one, note it, close it. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &al), 0);
    close(fd);
    char refused[64];
    snprintf(refused, sizeof refused, "http://127.0.0.1:%d/", ntohs(a.sin_port));
    char tls[64];
    snprintf(tls, sizeof tls, "https://127.0.0.1:%d/body", srv.port);

    struct http_client *c = new_client(NULL);
    struct sink s[4] = {0};
    get(c, "/cut", &s[0]);
    struct http_client_request q = {.url = refused, .cb = &sink_cb, .arg = &s[1]};
    assert_int_equal(http_client_submit(c, &q, NULL), 0);
    /* TLS against a plain HTTP server: the handshake fails. */
    struct http_client_request t = {
        .url = tls, .first_byte_timeout_ms = 10000, .cb = &sink_cb, .arg = &s[2]};
    assert_int_equal(http_client_submit(c, &t, NULL), 0);
    /* A callback's refusal ends the request with its errno. */
    s[3].stop_body_with = -EPIPE;
    get(c, "/stream?n=50&ms=5", &s[3]);
    assert_true(wait_done(4));
    http_client_free(c);
    for (int i = 0; i < 4; i++)
        assert_clean(&s[i]);
    assert_int_equal(s[0].result, -ECONNRESET);
    assert_int_equal(s[0].status, 200);
    assert_string_equal(s[0].body, "0123456789");
    assert_true(s[0].error[0] != '\0');
    assert_int_equal(s[1].result, -ECONNREFUSED);
    assert_int_equal(s[1].status, 0);
    assert_int_equal(s[2].result, -EPROTO);
    assert_int_equal(s[3].result, -EPIPE);
    assert_int_equal(s[3].body_calls, 1);
    assert_string_equal(s[3].error, "stopped by on_body");
    for (int i = 0; i < 4; i++)
        sink_release(&s[i]);
}

static void test_invalid_submits(void **state)
{
    (void)state;
    struct http_client *c = new_client(NULL);
    struct sink s = {0};
    const char *bad_urls[] = {"ftp://127.0.0.1/", "http://", "http://a b/", "127.0.0.1/x",
                              "http://x/\r\nX-Evil: 1"};
    for (size_t i = 0; i < sizeof bad_urls / sizeof bad_urls[0]; i++) {
        struct http_client_request q = {.url = bad_urls[i], .cb = &sink_cb, .arg = &s};
        assert_int_equal(http_client_submit(c, &q, NULL), -EINVAL);
    }
    struct http_client_field bad_headers[][1] = {{{"X-A", "1\r\nX-Evil: 1"}},
                                                 {{"X A", "1"}},
                                                 {{"", "1"}},
                                                 {{"content-length", "5"}},
                                                 {{"Transfer-Encoding", "chunked"}}};
    for (size_t i = 0; i < sizeof bad_headers / sizeof bad_headers[0]; i++) {
        struct http_client_request q = {.url = url("/body"),
                                        .headers = bad_headers[i],
                                        .nheaders = 1,
                                        .cb = &sink_cb,
                                        .arg = &s};
        assert_int_equal(http_client_submit(c, &q, NULL), -EINVAL);
    }
    struct http_client_request q = {.url = url("/body"), .method = "GE T", .cb = &sink_cb};
    assert_int_equal(http_client_submit(c, &q, NULL), -EINVAL);
    q.method = NULL;
    q.body_len = 3; /* with no body */
    assert_int_equal(http_client_submit(c, &q, NULL), -EINVAL);
    q.body_len = 0;
    static const struct http_client_callbacks no_done = {sink_head, sink_body, NULL};
    q.cb = &no_done;
    assert_int_equal(http_client_submit(c, &q, NULL), -EINVAL);
    assert_int_equal(http_client_inflight(c), 0);
    http_client_free(c);
    /* A refused submit never calls back. */
    assert_int_equal(s.head_calls + s.body_calls + s.done_calls, 0);
}

static void test_busy_past_the_cap(void **state)
{
    (void)state;
    struct http_client_options o = {.max_requests = 3};
    struct http_client *c = new_client(&o);
    struct sink s[5] = {0};
    uint64_t ids[3];
    for (int i = 0; i < 3; i++)
        ids[i] = get(c, "/hang", &s[i]);
    struct http_client_request q = {.url = url("/body"), .cb = &sink_cb, .arg = &s[3]};
    assert_int_equal(http_client_submit(c, &q, NULL), -EBUSY);
    assert_int_equal(http_client_inflight(c), 3);
    /* One ends: there is room again. */
    assert_int_equal(http_client_cancel(c, ids[0]), 0);
    assert_true(wait_done(1));
    assert_int_equal(http_client_inflight(c), 2);
    q.arg = &s[4];
    assert_int_equal(http_client_submit(c, &q, NULL), 0);
    assert_true(wait_done(2));
    http_client_free(c);
    assert_int_equal(s[0].result, -ECANCELED);
    assert_int_equal(s[4].result, 0);
    assert_int_equal(s[3].done_calls, 0);
    /* The others were still running when the client was freed. */
    for (int i = 1; i < 3; i++)
        assert_int_equal(s[i].result, -ECANCELED);
    for (int i = 0; i < 5; i++) {
        if (i != 3)
            assert_clean(&s[i]);
        sink_release(&s[i]);
    }
}

/* Free with requests queued, connecting, hanging and streaming: each ends
 * exactly once with -ECANCELED, and nothing is left behind (ASan). */
static void test_free_with_requests_in_flight(void **state)
{
    (void)state;
    enum { N = 40 };
    struct http_client *c = new_client(NULL);
    struct sink *s = calloc(N, sizeof *s);
    assert_non_null(s);
    for (int i = 0; i < N; i++)
        get(c, i % 2 ? "/hang" : "/stream?n=1000&ms=10", &s[i]);
    /* Some of these have started by now, maybe none: either way. */
    http_client_free(c);
    for (int i = 0; i < N; i++) {
        assert_clean(&s[i]);
        assert_int_equal(s[i].result, -ECANCELED);
        sink_release(&s[i]);
    }
    free(s);
}

/* 200 slow streams at once, all on the client's one thread. The server
 * sends no event before all 200 requests have arrived, so each finished
 * stream proves that all of them were open together. */
static void test_many_concurrent_streams(void **state)
{
    (void)state;
    enum { N = 200, EVENTS = 8 };
    struct http_client *c = new_client(NULL);
    struct sink *s = calloc(N, sizeof *s);
    assert_non_null(s);
    atomic_store(&srv.gate, 0);
    for (int i = 0; i < N; i++)
        get(c, "/stream?n=8&ms=25&gate=200", &s[i]);
    assert_true(wait_done(N));
    http_client_free(c);
    for (int i = 0; i < N; i++) {
        assert_clean(&s[i]);
        assert_int_equal(s[i].result, 0);
        assert_int_equal(s[i].status, 200);
        expect_events(&s[i], EVENTS);
        assert_true(pthread_equal(s[i].thread, s[0].thread));
        sink_release(&s[i]);
    }
    free(s);
}

/* HTTPS: verification is always on. The server's self-signed certificate
 * is trusted only through ca_file, and only for the address it names. */
static void test_tls_verification(void **state)
{
    (void)state;
    char ip[64], name[64];
    snprintf(ip, sizeof ip, "https://127.0.0.1:%d/body", srv.tls_port);
    snprintf(name, sizeof name, "https://localhost:%d/body", srv.tls_port);
    struct sink s[4] = {0};

    struct http_client_options trusted = {.ca_file = srv.ca_path};
    struct http_client *c = new_client(&trusted);
    struct http_client_request q = {
        .url = ip, .first_byte_timeout_ms = 10000, .cb = &sink_cb, .arg = &s[0]};
    assert_int_equal(http_client_submit(c, &q, NULL), 0);
    /* The certificate names 127.0.0.1, not localhost: the host check. */
    q.url = name;
    q.arg = &s[1];
    assert_int_equal(http_client_submit(c, &q, NULL), 0);
    assert_true(wait_done(2));
    http_client_free(c);

    /* The system's authorities do not know the certificate. */
    c = new_client(NULL);
    q.url = ip;
    q.arg = &s[2];
    assert_int_equal(http_client_submit(c, &q, NULL), 0);
    assert_true(wait_done(1));
    http_client_free(c);

    /* A CA file that is not there is a bad configuration, told at once. */
    struct http_client_options missing = {.ca_file = "/nonexistent/chatd-ca.pem"};
    c = NULL;
    assert_int_equal(http_client_new(&c, &missing), -ENOENT);
    assert_null(c);

    /* A file that is not PEM fails each request instead. */
    struct http_client_options garbage = {.ca_file = "/dev/null"};
    c = new_client(&garbage);
    q.arg = &s[3];
    assert_int_equal(http_client_submit(c, &q, NULL), 0);
    assert_true(wait_done(1));
    http_client_free(c);

    for (int i = 0; i < 4; i++)
        assert_clean(&s[i]);
    assert_int_equal(s[0].result, 0);
    assert_int_equal(s[0].status, 200);
    assert_string_equal(s[0].body, "hello, chatd");
    for (int i = 1; i < 4; i++) {
        assert_int_equal(s[i].result, -EPROTO);
        assert_int_equal(s[i].status, 0);
        assert_null(s[i].body);
        assert_true(s[i].error[0] != '\0');
    }
    for (int i = 0; i < 4; i++)
        sink_release(&s[i]);
}

/* ---- delayed requests --------------------------------------------------- */

/* A delayed request connects only once its delay is over: nothing reaches
 * the server while it waits, and it ends no sooner than its delay. (Lower
 * bounds only: a slow machine makes them longer, never shorter.) */
static void test_delay_starts_later(void **state)
{
    (void)state;
    struct http_client *c = new_client(NULL);
    struct sink s = {0};
    int before = atomic_load(&srv.accepted);
    int64_t t0 = mono_ms();
    struct http_client_request q = {
        .url = url("/body"), .delay_ms = 600, .cb = &sink_cb, .arg = &s};
    assert_int_equal(http_client_submit(c, &q, NULL), 0);
    usleep(150 * 1000);
    /* Still waiting: accepted, counted, and not connected. */
    assert_int_equal(atomic_load(&srv.accepted), before);
    assert_int_equal(http_client_inflight(c), 1);
    assert_true(wait_done(1));
    int64_t took = mono_ms() - t0;
    http_client_free(c);
    assert_clean(&s);
    assert_int_equal(s.result, 0);
    assert_int_equal(s.status, 200);
    assert_string_equal(s.body, "hello, chatd");
    assert_true(took >= 600);
    assert_int_equal(atomic_load(&srv.accepted), before + 1);
    sink_release(&s);
}

/* Neither timeout counts during the delay: a request delayed longer than
 * its timeouts still gets its whole time once started, and a request
 * that times out does so its timeout after the delay. */
static void test_delay_does_not_count_toward_timeouts(void **state)
{
    (void)state;
    struct http_client *c = new_client(NULL);
    struct sink s[2] = {0};
    int64_t t0 = mono_ms();
    struct http_client_request ok = {.url = url("/body"),
                                     .delay_ms = 1500,
                                     .first_byte_timeout_ms = 1000,
                                     .total_timeout_ms = 1000,
                                     .cb = &sink_cb,
                                     .arg = &s[0]};
    assert_int_equal(http_client_submit(c, &ok, NULL), 0);
    struct http_client_request hang = {.url = url("/hang"),
                                       .delay_ms = 300,
                                       .first_byte_timeout_ms = 200,
                                       .total_timeout_ms = 60000,
                                       .cb = &sink_cb,
                                       .arg = &s[1]};
    assert_int_equal(http_client_submit(c, &hang, NULL), 0);
    assert_true(wait_done(2));
    int64_t took = mono_ms() - t0;
    http_client_free(c);
    for (int i = 0; i < 2; i++)
        assert_clean(&s[i]);
    assert_int_equal(s[0].result, 0);
    assert_int_equal(s[0].status, 200);
    assert_int_equal(s[1].result, -ETIMEDOUT);
    assert_non_null(strstr(s[1].error, "first-byte timeout (200 ms)"));
    assert_true(took >= 1500);
    for (int i = 0; i < 2; i++)
        sink_release(&s[i]);
}

/* A delayed request ends like any other: cancelled in its wait (from
 * another thread), or by the client's free; on_done exactly once, and the
 * server never sees it. Waiting requests count against max_requests. */
static void test_delay_cancel_and_free(void **state)
{
    (void)state;
    struct http_client_options o = {.max_requests = 4};
    struct http_client *c = new_client(&o);
    struct sink s[5] = {0};
    int before = atomic_load(&srv.accepted);
    uint64_t ids[4];
    for (int i = 0; i < 4; i++) {
        struct http_client_request q = {
            .url = url("/body"), .delay_ms = 60000, .cb = &sink_cb, .arg = &s[i]};
        assert_int_equal(http_client_submit(c, &q, &ids[i]), 0);
    }
    struct http_client_request more = {
        .url = url("/body"), .delay_ms = 10, .cb = &sink_cb, .arg = &s[4]};
    assert_int_equal(http_client_submit(c, &more, NULL), -EBUSY);
    struct canceller k = {c, ids[0], -1};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, cancel_main, &k), 0);
    pthread_join(t, NULL);
    assert_int_equal(k.rc, 0);
    assert_true(wait_done(1));
    assert_int_equal(http_client_inflight(c), 3);
    /* The other three are still in their delay when the client goes. */
    http_client_free(c);
    for (int i = 0; i < 4; i++) {
        assert_clean(&s[i]);
        assert_int_equal(s[i].result, -ECANCELED);
        assert_int_equal(s[i].status, 0);
        assert_int_equal(s[i].head_calls + s[i].body_calls, 0);
        sink_release(&s[i]);
    }
    assert_string_equal(s[0].error, "cancelled");
    assert_int_equal(s[4].done_calls, 0);
    assert_int_equal(atomic_load(&srv.accepted), before);
}

/* A retry as a caller makes it: on_done of a failed request submits the
 * next attempt, delayed, from the client's own thread. */
struct retrier {
    struct http_client *c;
    char next_url[512]; /* the second attempt's */
    struct sink first, second;
    int submit_rc;
};

static void retry_done(void *arg, uint64_t id, int result, int status, const char *error)
{
    struct retrier *r = arg;
    if (status == 500) {
        struct http_client_request q = {
            .url = r->next_url, .delay_ms = 200, .cb = &sink_cb, .arg = &r->second};
        r->submit_rc = http_client_submit(r->c, &q, NULL);
    }
    sink_done(&r->first, id, result, status, error);
}

static void test_delayed_retry_from_on_done(void **state)
{
    (void)state;
    struct http_client *c = new_client(NULL);
    static const struct http_client_callbacks retry_cb = {NULL, NULL, retry_done};
    struct retrier r = {.c = c, .submit_rc = -1};
    snprintf(r.next_url, sizeof r.next_url, "%s", url("/body"));
    struct http_client_request q = {.url = url("/500"), .cb = &retry_cb, .arg = &r};
    assert_int_equal(http_client_submit(c, &q, NULL), 0);
    assert_true(wait_done(2));
    http_client_free(c);
    assert_int_equal(r.submit_rc, 0);
    assert_clean(&r.first);
    assert_int_equal(r.first.status, 500);
    assert_clean(&r.second);
    assert_int_equal(r.second.result, 0);
    assert_string_equal(r.second.body, "hello, chatd");
    sink_release(&r.first);
    sink_release(&r.second);
}

/* Log lines name the URL without userinfo or query, and never carry a
 * header value or a body. */
static void test_logs_hold_no_secret(void **state)
{
    (void)state;
    char path[] = "/tmp/chatd-http-client-log-XXXXXX";
    int lfd = mkstemp(path);
    assert_true(lfd >= 0);
    unlink(path);
    int saved = dup(2);
    assert_true(saved >= 0);
    log_set_level(LOG_DEBUG); /* no other thread of chatd runs now */
    assert_int_equal(dup2(lfd, 2), 2);

    struct http_client *c = new_client(NULL);
    struct sink s[2] = {0};
    char u[128];
    snprintf(u, sizeof u, "http://user:pw-secret@127.0.0.1:%d/echo?key=q-secret#frag", srv.port);
    struct http_client_field h[] = {{"Authorization", "Bearer h-secret"},
                                    {"x-api-key", "k-secret"}};
    struct http_client_request q = {.url = u,
                                    .headers = h,
                                    .nheaders = 2,
                                    .body = "b-secret",
                                    .body_len = 8,
                                    .cb = &sink_cb,
                                    .arg = &s[0]};
    assert_int_equal(http_client_submit(c, &q, NULL), 0);
    snprintf(u, sizeof u, "http://user:pw-secret@127.0.0.1:%d/cut?key=q-secret", srv.port);
    q.arg = &s[1];
    assert_int_equal(http_client_submit(c, &q, NULL), 0); /* a failure: logged at info */
    bool done = wait_done(2);
    http_client_free(c);

    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    log_set_level(LOG_INFO);
    assert_true(done);
    char text[16384];
    ssize_t n = pread(lfd, text, sizeof text - 1, 0);
    close(lfd);
    assert_true(n > 0);
    text[n] = '\0';
    assert_non_null(strstr(text, "event=http_client_start"));
    assert_non_null(strstr(text, "event=http_client_failed"));
    assert_non_null(strstr(text, "url=\"http://127.0.0.1:"));
    assert_non_null(strstr(text, "/echo\""));
    assert_null(strstr(text, "secret"));
    assert_null(strstr(text, "user:"));
    /* The server did get the credentials: they were sent, just not logged. */
    assert_non_null(s[0].body);
    assert_non_null(strstr(s[0].body, "Bearer h-secret"));
    for (int i = 0; i < 2; i++) {
        assert_clean(&s[i]);
        sink_release(&s[i]);
    }
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    log_set_level(LOG_INFO);
    if (http_client_global_init() != 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_and_post_arrive_as_sent),
        cmocka_unit_test(test_status_and_headers),
        cmocka_unit_test(test_connection_reuse),
        cmocka_unit_test(test_after_callbacks_hook),
        cmocka_unit_test(test_stream_in_order),
        cmocka_unit_test(test_timeouts),
        cmocka_unit_test(test_cancel_from_another_thread),
        cmocka_unit_test(test_size_cap),
        cmocka_unit_test(test_failures),
        cmocka_unit_test(test_tls_verification),
        cmocka_unit_test(test_invalid_submits),
        cmocka_unit_test(test_busy_past_the_cap),
        cmocka_unit_test(test_free_with_requests_in_flight),
        cmocka_unit_test(test_many_concurrent_streams),
        cmocka_unit_test(test_logs_hold_no_secret),
        cmocka_unit_test(test_delay_starts_later),
        cmocka_unit_test(test_delay_does_not_count_toward_timeouts),
        cmocka_unit_test(test_delay_cancel_and_free),
        cmocka_unit_test(test_delayed_retry_from_on_done),
    };
    int rc = cmocka_run_group_tests(tests, server_setup, server_teardown);
    http_client_global_cleanup();
    return rc;
}
