/*
 * webhook tests, against a receiver that runs in this process (a thread,
 * plain sockets on 127.0.0.1, poll()) and answers each POST with the next
 * status of a script: the body is the exact compact JSON, signed with
 * HMAC-SHA256 when there is a secret and not otherwise; 2xx is delivered;
 * 408, 429, 5xx, refused connections and timeouts are retried with a
 * growing wait (Retry-After obeyed); other answers fail at once; attempts
 * stop at max_attempts; past max_pending a help request is dropped; at
 * shutdown what is pending is dropped; every case is counted in the stats
 * and /metrics text; the logs hold neither the secret nor the URL's
 * userinfo or query.
 *
 * Waits are bounded (WAIT_MS) and time is checked only as a lower bound
 * (a retry comes no sooner than its wait), never as an upper one.
 */
#include <arpa/inet.h>
#include <errno.h>
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
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "hub/webhook.h"
#include "net/http_client.h"
#include "util/log.h"
#include "util/text.h"

#define WAIT_MS 20000
#define MAX_CONNS 64
#define MAX_REQS 64
#define IN_MAX 65536

static int64_t mono_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* ---- the receiver ------------------------------------------------------ */

/* One request as received. */
struct got {
    char method[16];
    char path[256];
    char content_type[128];
    char signature[128];
    bool has_signature;
    char *body;
    size_t body_len;
    int64_t at_ms;
};

struct rconn {
    int fd;
    char in[IN_MAX];
    size_t len;
};

static struct {
    int lfd, port;
    int stop_pipe[2];
    pthread_t thread;
    struct rconn *conns[MAX_CONNS];
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* guarded by mu */
    struct got reqs[MAX_REQS];
    int nreqs;
    int script[16];  /* status of request i; 0: never answer; past the end: dflt */
    int nscript;
    int dflt;
    int retry_after; /* seconds sent with a 429; -1: none */
} rcv;

static void header_value(const char *head, const char *end, const char *name, char *out,
                         size_t cap, bool *found)
{
    size_t nl = strlen(name);
    out[0] = '\0';
    for (const char *p = head; p < end;) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol)
            eol = end;
        if ((size_t)(eol - p) > nl && strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (v < eol && *v == ' ')
                v++;
            size_t vl = (size_t)(eol - v);
            if (vl && v[vl - 1] == '\r')
                vl--;
            snprintf(out, cap, "%.*s", (int)vl, v);
            if (found)
                *found = true;
        }
        p = eol + 1;
    }
}

/* A whole request at the start of k->in: handle it and return true. */
static bool take_request(struct rconn *k)
{
    char *end = memmem(k->in, k->len, "\r\n\r\n", 4);
    if (!end)
        return false;
    size_t head = (size_t)(end - k->in) + 4;
    char cl[32];
    header_value(k->in, end, "Content-Length", cl, sizeof cl, NULL);
    size_t body = (size_t)strtoul(cl, NULL, 10);
    if (head + body > k->len)
        return false;
    struct got g = {0};
    sscanf(k->in, "%15s %255s", g.method, g.path);
    header_value(k->in, end, "Content-Type", g.content_type, sizeof g.content_type, NULL);
    header_value(k->in, end, "X-Chatd-Signature", g.signature, sizeof g.signature,
                 &g.has_signature);
    g.body = malloc(body + 1);
    if (!g.body)
        abort();
    memcpy(g.body, k->in + head, body);
    g.body[body] = '\0';
    g.body_len = body;
    g.at_ms = mono_ms();
    memmove(k->in, k->in + head + body, k->len - head - body);
    k->len -= head + body;

    pthread_mutex_lock(&rcv.mu);
    int i = rcv.nreqs;
    int status = i < rcv.nscript ? rcv.script[i] : rcv.dflt;
    int ra = rcv.retry_after;
    if (i < MAX_REQS)
        rcv.reqs[rcv.nreqs++] = g;
    else
        free(g.body);
    pthread_cond_broadcast(&rcv.cv);
    pthread_mutex_unlock(&rcv.mu);
    if (status == 0)
        return true; /* never answered */
    char resp[256];
    int n = snprintf(resp, sizeof resp, "HTTP/1.1 %d Whatever\r\nContent-Length: 2\r\n", status);
    if (status == 429 && ra >= 0)
        n += snprintf(resp + n, sizeof resp - (size_t)n, "Retry-After: %d\r\n", ra);
    n += snprintf(resp + n, sizeof resp - (size_t)n, "\r\nok");
    if (send(k->fd, resp, (size_t)n, MSG_NOSIGNAL) != n)
        return true; /* the client went away: its problem */
    return true;
}

static void *receiver_main(void *arg)
{
    (void)arg;
    struct pollfd pf[MAX_CONNS + 2];
    int idx[MAX_CONNS + 2];
    for (;;) {
        nfds_t n = 0;
        pf[n++] = (struct pollfd){.fd = rcv.stop_pipe[0], .events = POLLIN};
        pf[n++] = (struct pollfd){.fd = rcv.lfd, .events = POLLIN};
        for (int i = 0; i < MAX_CONNS; i++)
            if (rcv.conns[i]) {
                idx[n] = i;
                pf[n++] = (struct pollfd){.fd = rcv.conns[i]->fd, .events = POLLIN};
            }
        if (poll(pf, n, 1000) < 0 && errno != EINTR)
            abort();
        if (pf[0].revents)
            break;
        if (pf[1].revents & POLLIN) {
            int fd;
            while ((fd = accept4(rcv.lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                int i = 0;
                while (i < MAX_CONNS && rcv.conns[i])
                    i++;
                struct rconn *k = i < MAX_CONNS ? calloc(1, sizeof *k) : NULL;
                if (!k) {
                    close(fd);
                    continue;
                }
                k->fd = fd;
                rcv.conns[i] = k;
            }
        }
        for (nfds_t j = 2; j < n; j++) {
            if (!(pf[j].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            struct rconn *k = rcv.conns[idx[j]];
            bool keep = true;
            for (;;) {
                if (k->len == IN_MAX) {
                    keep = false;
                    break;
                }
                ssize_t r = recv(k->fd, k->in + k->len, IN_MAX - k->len, 0);
                if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK))
                    keep = false;
                if (r <= 0)
                    break;
                k->len += (size_t)r;
            }
            while (keep && take_request(k)) {
            }
            if (!keep) {
                close(k->fd);
                free(k);
                rcv.conns[idx[j]] = NULL;
            }
        }
    }
    for (int i = 0; i < MAX_CONNS; i++)
        if (rcv.conns[i]) {
            close(rcv.conns[i]->fd);
            free(rcv.conns[i]);
            rcv.conns[i] = NULL;
        }
    return NULL;
}

static int receiver_setup(void **state)
{
    (void)state;
    pthread_mutex_init(&rcv.mu, NULL);
    pthread_cond_init(&rcv.cv, NULL);
    rcv.lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (rcv.lfd < 0 || bind(rcv.lfd, (struct sockaddr *)&a, sizeof a) != 0 ||
        listen(rcv.lfd, 128) != 0 || getsockname(rcv.lfd, (struct sockaddr *)&a, &al) != 0 ||
        pipe(rcv.stop_pipe) != 0)
        return -1;
    rcv.port = ntohs(a.sin_port);
    return pthread_create(&rcv.thread, NULL, receiver_main, NULL) == 0 ? 0 : -1;
}

static int receiver_teardown(void **state)
{
    (void)state;
    if (write(rcv.stop_pipe[1], "x", 1) != 1)
        return -1;
    pthread_join(rcv.thread, NULL);
    close(rcv.lfd);
    close(rcv.stop_pipe[0]);
    close(rcv.stop_pipe[1]);
    return 0;
}

/* Forget what was received and answer with `script` (n statuses), then
 * dflt. */
static void receiver_reset(const int *script, int n, int dflt)
{
    pthread_mutex_lock(&rcv.mu);
    for (int i = 0; i < rcv.nreqs; i++)
        free(rcv.reqs[i].body);
    rcv.nreqs = 0;
    if (n)
        memcpy(rcv.script, script, (size_t)n * sizeof *script);
    rcv.nscript = n;
    rcv.dflt = dflt;
    rcv.retry_after = -1;
    pthread_mutex_unlock(&rcv.mu);
}

/* Wait until n requests arrived; false after WAIT_MS. */
static bool wait_requests(int n)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += WAIT_MS / 1000;
    pthread_mutex_lock(&rcv.mu);
    while (rcv.nreqs < n)
        if (pthread_cond_timedwait(&rcv.cv, &rcv.mu, &dl) != 0)
            break;
    bool ok = rcv.nreqs >= n;
    pthread_mutex_unlock(&rcv.mu);
    return ok;
}

static int nrequests(void)
{
    pthread_mutex_lock(&rcv.mu);
    int n = rcv.nreqs;
    pthread_mutex_unlock(&rcv.mu);
    return n;
}

/* A copy of request i (its body still owned by the receiver until the
 * next reset; the receiver appends, never changes, earlier entries). */
static struct got request(int i)
{
    pthread_mutex_lock(&rcv.mu);
    struct got g = rcv.reqs[i];
    pthread_mutex_unlock(&rcv.mu);
    return g;
}

/* ---- helpers ------------------------------------------------------------- */

static char url_buf[256];
static const char *hook_url(void)
{
    snprintf(url_buf, sizeof url_buf, "http://127.0.0.1:%d/hook", rcv.port);
    return url_buf;
}

/* Wait until the webhook has no pending delivery; false after WAIT_MS. */
static bool wait_settled(struct webhook *w, struct webhook_stats *st)
{
    int64_t end = mono_ms() + WAIT_MS;
    do {
        webhook_get_stats(w, st);
        if (st->pending == 0)
            return true;
        usleep(5000);
    } while (mono_ms() < end);
    return false;
}

static void expect_stats(const struct webhook_stats *st, uint64_t delivered, uint64_t failed,
                         uint64_t dropped, uint64_t attempts)
{
    assert_int_equal(st->delivered, delivered);
    assert_int_equal(st->failed, failed);
    assert_int_equal(st->dropped, dropped);
    assert_int_equal(st->attempts, attempts);
}

static struct webhook *new_webhook(const struct webhook_options *o)
{
    struct webhook *w = NULL;
    assert_int_equal(webhook_new(&w, o), 0);
    assert_non_null(w);
    return w;
}

static void hmac_hex(const char *key, size_t klen, const char *data, size_t n, char out[72])
{
    unsigned char mac[32];
    unsigned int ml = 0;
    assert_non_null(HMAC(EVP_sha256(), key, (int)klen, (const unsigned char *)data, n, mac, &ml));
    assert_int_equal(ml, 32);
    strcpy(out, "sha256=");
    for (int i = 0; i < 32; i++)
        sprintf(out + 7 + 2 * i, "%02x", mac[i]);
}

/* 2026-11-26T10:00:00.123Z */
#define TS_MS 1795687200123LL
#define TS_TEXT "2026-11-26T10:00:00.123Z"

/* ---- tests --------------------------------------------------------------- */

static void test_signed_body_is_exact(void **state)
{
    (void)state;
    receiver_reset(NULL, 0, 200);
    static const char secret[] = "s3cret\0with a NUL and \xff bytes";
    struct webhook_options o = {.url = hook_url(),
                                .secret = (const unsigned char *)secret,
                                .secret_len = sizeof secret - 1};
    struct webhook *w = new_webhook(&o);
    assert_int_equal(webhook_help_request(w, "s_0123456789abcdef01234567", "alice", "Alice \"A\"",
                                          "Printer \xc3\xa9t\xc3\xa9 \\ down", TS_MS),
                     0);
    assert_true(wait_requests(1));
    struct webhook_stats st;
    assert_true(wait_settled(w, &st));
    expect_stats(&st, 1, 0, 0, 1);
    struct got g = request(0);
    assert_string_equal(g.method, "POST");
    assert_string_equal(g.path, "/hook");
    assert_string_equal(g.content_type, "application/json");
    assert_string_equal(g.body,
                        "{\"event\":\"help_request\",\"session_id\":\"s_0123456789abcdef01234567\","
                        "\"user\":{\"id\":\"alice\",\"name\":\"Alice \\\"A\\\"\"},"
                        "\"title\":\"Printer \xc3\xa9t\xc3\xa9 \\\\ down\","
                        "\"timestamp\":\"" TS_TEXT "\"}");
    char want[72];
    hmac_hex(secret, sizeof secret - 1, g.body, g.body_len, want);
    assert_true(g.has_signature);
    assert_string_equal(g.signature, want);
    webhook_free(w);
}

/* Without a secret: no signature header. A missing name is the id, a
 * missing title is "". */
static void test_unsigned_and_defaults(void **state)
{
    (void)state;
    receiver_reset(NULL, 0, 204);
    struct webhook_options o = {.url = hook_url()};
    struct webhook *w = new_webhook(&o);
    assert_int_equal(webhook_help_request(w, "s_1", "bob", NULL, NULL, TS_MS), 0);
    assert_true(wait_requests(1));
    struct webhook_stats st;
    assert_true(wait_settled(w, &st));
    expect_stats(&st, 1, 0, 0, 1);
    struct got g = request(0);
    assert_false(g.has_signature);
    assert_string_equal(g.body, "{\"event\":\"help_request\",\"session_id\":\"s_1\","
                                "\"user\":{\"id\":\"bob\",\"name\":\"bob\"},\"title\":\"\","
                                "\"timestamp\":\"" TS_TEXT "\"}");
    webhook_free(w);
}

/* 500 and 503 are retried, each retry after a longer wait; the same bytes
 * and signature each time. */
static void test_retried_until_delivered(void **state)
{
    (void)state;
    static const int script[] = {500, 503, 408, 200};
    receiver_reset(script, 4, 200);
    struct webhook_options o = {.url = hook_url(),
                                .secret = (const unsigned char *)"k",
                                .secret_len = 1,
                                .first_retry_ms = 100};
    struct webhook *w = new_webhook(&o);
    assert_int_equal(webhook_help_request(w, "s_2", "carol", "Carol", "t", TS_MS), 0);
    assert_true(wait_requests(4));
    struct webhook_stats st;
    assert_true(wait_settled(w, &st));
    expect_stats(&st, 1, 0, 0, 4);
    struct got g[4];
    for (int i = 0; i < 4; i++)
        g[i] = request(i);
    for (int i = 1; i < 4; i++) {
        assert_string_equal(g[i].body, g[0].body);
        assert_string_equal(g[i].signature, g[0].signature);
    }
    /* 100, 200, 400 ms, each at least three quarters of that. */
    assert_true(g[1].at_ms - g[0].at_ms >= 75);
    assert_true(g[2].at_ms - g[1].at_ms >= 150);
    assert_true(g[3].at_ms - g[2].at_ms >= 300);
    webhook_free(w);
}

/* A 429's Retry-After longer than the back-off is obeyed. */
static void test_retry_after(void **state)
{
    (void)state;
    static const int script[] = {429};
    receiver_reset(script, 1, 200);
    pthread_mutex_lock(&rcv.mu);
    rcv.retry_after = 1;
    pthread_mutex_unlock(&rcv.mu);
    struct webhook_options o = {.url = hook_url(), .first_retry_ms = 10};
    struct webhook *w = new_webhook(&o);
    assert_int_equal(webhook_help_request(w, "s_3", "dan", NULL, NULL, TS_MS), 0);
    assert_true(wait_requests(2));
    struct webhook_stats st;
    assert_true(wait_settled(w, &st));
    expect_stats(&st, 1, 0, 0, 2);
    assert_true(request(1).at_ms - request(0).at_ms >= 1000);
    webhook_free(w);
}

/* Other answers fail at once: one attempt each. */
static void test_refusals_are_not_retried(void **state)
{
    (void)state;
    static const int script[] = {404, 400, 301, 401};
    receiver_reset(script, 4, 200);
    struct webhook_options o = {.url = hook_url(), .first_retry_ms = 10};
    struct webhook *w = new_webhook(&o);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(webhook_help_request(w, "s_4", "erin", NULL, NULL, TS_MS), 0);
        assert_true(wait_requests(i + 1));
        struct webhook_stats st;
        assert_true(wait_settled(w, &st));
    }
    struct webhook_stats st;
    webhook_get_stats(w, &st);
    expect_stats(&st, 0, 4, 0, 4);
    webhook_free(w);
    assert_int_equal(nrequests(), 4);
}

/* Attempts stop at max_attempts: answers of 500 forever, a port nobody
 * listens on, and a receiver that never answers (the attempt's timeout). */
static void test_out_of_attempts(void **state)
{
    (void)state;
    receiver_reset(NULL, 0, 500);
    struct webhook_options o = {.url = hook_url(), .max_attempts = 3, .first_retry_ms = 10};
    struct webhook *w = new_webhook(&o);
    assert_int_equal(webhook_help_request(w, "s_5", "fay", NULL, NULL, TS_MS), 0);
    struct webhook_stats st;
    assert_true(wait_settled(w, &st));
    expect_stats(&st, 0, 1, 0, 3);
    assert_int_equal(nrequests(), 3);
    webhook_free(w);

    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &al), 0);
    close(fd);
    char refused[64];
    snprintf(refused, sizeof refused, "http://127.0.0.1:%d/hook", ntohs(a.sin_port));
    struct webhook_options r = {.url = refused, .max_attempts = 2, .first_retry_ms = 10};
    w = new_webhook(&r);
    assert_int_equal(webhook_help_request(w, "s_5", "fay", NULL, NULL, TS_MS), 0);
    assert_true(wait_settled(w, &st));
    expect_stats(&st, 0, 1, 0, 2);
    webhook_free(w);

    receiver_reset(NULL, 0, 0); /* never answers */
    struct webhook_options t = {
        .url = hook_url(), .max_attempts = 2, .first_retry_ms = 10, .timeout_ms = 200};
    w = new_webhook(&t);
    assert_int_equal(webhook_help_request(w, "s_5", "fay", NULL, NULL, TS_MS), 0);
    assert_true(wait_settled(w, &st));
    expect_stats(&st, 0, 1, 0, 2);
    assert_int_equal(nrequests(), 2);
    webhook_free(w);
}

/* Past max_pending a help request is dropped and counted; at shutdown the
 * pending ones (in flight, and waiting for a retry) are dropped and
 * counted; after it, every help request is. */
static void test_bounded_and_dropped_at_shutdown(void **state)
{
    (void)state;
    static const int script[] = {500};
    receiver_reset(script, 1, 0); /* the first gets 500, the rest no answer */
    struct webhook_options o = {.url = hook_url(), .max_pending = 3, .first_retry_ms = 60000};
    struct webhook *w = new_webhook(&o);
    assert_int_equal(webhook_help_request(w, "s_6", "gus", NULL, NULL, TS_MS), 0);
    assert_true(wait_requests(1));
    /* The first now waits a minute for its retry. */
    struct webhook_stats st;
    for (int i = 0; i < 400; i++) {
        webhook_get_stats(w, &st);
        if (st.attempts == 1)
            break;
        usleep(5000);
    }
    assert_int_equal(st.attempts, 1);
    assert_int_equal(webhook_help_request(w, "s_7", "gus", NULL, NULL, TS_MS), 0);
    assert_int_equal(webhook_help_request(w, "s_8", "gus", NULL, NULL, TS_MS), 0);
    assert_int_equal(webhook_help_request(w, "s_9", "gus", NULL, NULL, TS_MS), -EBUSY);
    assert_int_equal(webhook_help_request(w, "s_9", "gus", NULL, NULL, TS_MS), -EBUSY);
    assert_true(wait_requests(3));
    webhook_get_stats(w, &st);
    assert_int_equal(st.pending, 3);
    assert_int_equal(st.dropped, 2);
    int64_t t0 = mono_ms();
    webhook_shutdown(w);
    assert_true(mono_ms() - t0 < WAIT_MS);
    webhook_get_stats(w, &st);
    expect_stats(&st, 0, 0, 5, 1);
    assert_int_equal(st.pending, 0);
    assert_int_equal(webhook_help_request(w, "s_10", "gus", NULL, NULL, TS_MS), -ESHUTDOWN);
    webhook_get_stats(w, &st);
    assert_int_equal(st.dropped, 6);
    webhook_shutdown(w); /* again: nothing */
    webhook_free(w);
}

static void test_metrics_text(void **state)
{
    (void)state;
    static const int script[] = {500, 200};
    receiver_reset(script, 2, 200);
    struct webhook_options o = {.url = hook_url(), .first_retry_ms = 10};
    struct webhook *w = new_webhook(&o);
    assert_int_equal(webhook_help_request(w, "s_11", "hal", NULL, NULL, TS_MS), 0);
    struct webhook_stats st;
    assert_true(wait_settled(w, &st));
    struct text t = TEXT_INIT;
    webhook_write_metrics(w, &t);
    assert_false(t.failed);
    assert_non_null(strstr(t.buf, "# TYPE chatd_webhook_deliveries_total counter\n"));
    assert_non_null(strstr(t.buf, "\nchatd_webhook_deliveries_total{result=\"delivered\"} 1\n"));
    assert_non_null(strstr(t.buf, "\nchatd_webhook_deliveries_total{result=\"failed\"} 0\n"));
    assert_non_null(strstr(t.buf, "\nchatd_webhook_deliveries_total{result=\"dropped\"} 0\n"));
    assert_non_null(strstr(t.buf, "# TYPE chatd_webhook_attempts_total counter\n"));
    assert_non_null(strstr(t.buf, "\nchatd_webhook_attempts_total 2\n"));
    assert_non_null(strstr(t.buf, "# TYPE chatd_webhook_pending gauge\n"));
    assert_non_null(strstr(t.buf, "\nchatd_webhook_pending 0\n"));
    text_release(&t);
    webhook_free(w);
}

static void test_invalid(void **state)
{
    (void)state;
    receiver_reset(NULL, 0, 200);
    struct webhook *w = NULL;
    struct webhook_options bad[] = {
        {.url = NULL},
        {.url = "ftp://127.0.0.1/hook"},
        {.url = "127.0.0.1/hook"},
        {.url = "http://127.0.0.1/hook", .secret = (const unsigned char *)"", .secret_len = 0},
        {.url = "http://127.0.0.1/hook",
         .secret = (const unsigned char *)"x",
         .secret_len = WEBHOOK_SECRET_MAX + 1},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(webhook_new(&w, &bad[i]), -EINVAL);
        assert_null(w);
    }
    struct webhook_options o = {.url = hook_url()};
    w = new_webhook(&o);
    assert_int_equal(webhook_help_request(w, "s_12", "ivy", "bad \xff name", NULL, TS_MS),
                     -EINVAL);
    assert_int_equal(webhook_help_request(w, NULL, "ivy", NULL, NULL, TS_MS), -EINVAL);
    assert_int_equal(webhook_help_request(w, "s_12", NULL, NULL, NULL, TS_MS), -EINVAL);
    assert_int_equal(webhook_help_request(NULL, "s_12", "ivy", NULL, NULL, TS_MS), -EINVAL);
    struct webhook_stats st;
    webhook_get_stats(w, &st);
    expect_stats(&st, 0, 0, 0, 0);
    webhook_free(w);
    assert_int_equal(nrequests(), 0);
    webhook_free(NULL);
    webhook_shutdown(NULL);
}

/* The URL is logged without its userinfo and query; the secret, the body
 * and the signature never are. */
static void test_logs_hold_no_secret(void **state)
{
    (void)state;
    static const int script[] = {500, 404};
    receiver_reset(script, 2, 200);
    char path[] = "/tmp/chatd-webhook-log-XXXXXX";
    int lfd = mkstemp(path);
    assert_true(lfd >= 0);
    unlink(path);
    int saved = dup(2);
    assert_true(saved >= 0);
    log_set_level(LOG_DEBUG); /* no other thread of chatd runs now */
    assert_int_equal(dup2(lfd, 2), 2);

    char u[160];
    snprintf(u, sizeof u, "http://user:pw-secret@127.0.0.1:%d/hook?token=q-secret#frag", rcv.port);
    struct webhook_options o = {.url = u,
                                .secret = (const unsigned char *)"k-secret",
                                .secret_len = 8,
                                .first_retry_ms = 10};
    struct webhook *w = NULL;
    int rc = webhook_new(&w, &o);
    if (rc == 0)
        rc = webhook_help_request(w, "s_13", "jo", "Jo\nevent=forged", "b-secret", TS_MS);
    struct webhook_stats st = {0};
    bool settled = rc == 0 && wait_settled(w, &st);
    webhook_free(w);

    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    log_set_level(LOG_INFO);
    assert_int_equal(rc, 0);
    assert_true(settled);
    expect_stats(&st, 0, 1, 0, 2);
    char text[32768];
    ssize_t n = pread(lfd, text, sizeof text - 1, 0);
    close(lfd);
    assert_true(n > 0);
    text[n] = '\0';
    assert_non_null(strstr(text, "event=webhook url=\"http://127.0.0.1:"));
    assert_non_null(strstr(text, "event=webhook_retry"));
    assert_non_null(strstr(text, "event=webhook_failed"));
    assert_non_null(strstr(text, "/hook\""));
    assert_null(strstr(text, "secret"));
    assert_null(strstr(text, "user:"));
    assert_null(strstr(text, "sha256="));
    assert_null(strstr(text, "\nevent=forged"));
    /* The receiver did get the userinfo as Basic credentials and the query. */
    struct got g = request(0);
    assert_string_equal(g.path, "/hook?token=q-secret");
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    log_set_level(LOG_WARN);
    if (http_client_global_init() != 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_signed_body_is_exact),
        cmocka_unit_test(test_unsigned_and_defaults),
        cmocka_unit_test(test_retried_until_delivered),
        cmocka_unit_test(test_retry_after),
        cmocka_unit_test(test_refusals_are_not_retried),
        cmocka_unit_test(test_out_of_attempts),
        cmocka_unit_test(test_bounded_and_dropped_at_shutdown),
        cmocka_unit_test(test_metrics_text),
        cmocka_unit_test(test_invalid),
        cmocka_unit_test(test_logs_hold_no_secret),
    };
    int rc = cmocka_run_group_tests(tests, receiver_setup, receiver_teardown);
    receiver_reset(NULL, 0, 200); /* frees the bodies kept */
    http_client_global_cleanup();
    return rc;
}
