/*
 * DESIGN: one thread, one uv loop, one curl multi handle. libcurl tells the
 * client which sockets to watch (on_curl_socket: a uv_poll_t per socket,
 * closed when curl says it is done with the socket) and when to call it
 * back (on_curl_timer: the one uv_timer_t); the loop's callbacks hand the
 * events back with curl_multi_socket_action, after which finished transfers
 * are collected (collect_done). Nothing here ever blocks or polls on its own.
 *
 * Other threads reach the client only through its inbox (a util/fifo plus
 * the uv_async_t `wakeup`, pushed with fifo_push_notify so that a push never
 * wakes a closed handle): submits, cancels and the one stop message.
 *
 * A request is ended in one place, req_end, which calls on_done and is
 * reached exactly once per accepted request: from collect_done (curl
 * finished it), from its own timer (a timeout), from a cancel, or from the
 * stop. req_end is never called from inside a libcurl callback (the header
 * and write callbacks only record why they refuse more data, `fail`, and
 * curl then finishes the transfer with a write error that collect_done
 * maps back): curl forbids removing a handle from inside its own callbacks.
 * Each request's memory is freed in the close callback of its timer.
 *
 * A request with a delay (a retry's back-off) first waits on that same
 * timer, on the `waiting` list and in `by_id` but not yet in curl; when the
 * delay is over it starts as any other (req_begin), and its deadlines count
 * from then. A cancel or the stop ends it in its wait like a running one.
 */
#include "net/http_client.h"
#include "net/http_client_int.h"
#include "net/loop.h"

#include <assert.h>
#include <curl/curl.h>
#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <uv.h>

#include "http/request.h"
#include "util/fifo.h"
#include "util/idmap.h"
#include "util/list.h"
#include "util/log.h"

#define MAX_METHOD 16

static _Thread_local struct http_client *current_client;

/* ---- logging ---------------------------------------------------------- */

size_t http_client_url_for_logs(const char *url, char *out, size_t cap)
{
    const char *auth = strstr(url, "://");
    auth = auth ? auth + 3 : url;
    size_t auth_len = strcspn(auth, "/?#");
    const char *host = auth;
    for (const char *p = auth; p < auth + auth_len; p++)
        if (*p == '@')
            host = p + 1;
    const char *path = auth + auth_len;
    const struct {
        const char *p;
        size_t len;
    } parts[] = {{url, (size_t)(auth - url)},
                 {host, (size_t)(path - host)},
                 {path, strcspn(path, "?#")}};
    size_t n = 0;
    for (size_t i = 0; cap && i < sizeof parts / sizeof parts[0]; i++) {
        size_t k = parts[i].len < cap - 1 - n ? parts[i].len : cap - 1 - n;
        memcpy(out + n, parts[i].p, k);
        n += k;
    }
    if (cap)
        out[n] = '\0';
    return n;
}

/* The URL as logs may show it, quoted. */
static const char *log_url(struct log_quoted *q, const char *url)
{
    char buf[LOG_QUOTE_MAX + 1];
    return log_quote(q, buf, http_client_url_for_logs(url, buf, sizeof buf));
}

static void set_why(struct req *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_why(struct req *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->why, sizeof r->why, fmt, ap);
    va_end(ap);
}

/* ---- ending a request ------------------------------------------------- */

static void req_free(uv_handle_t *h)
{
    struct req *r = h->data;
    free(r);
}

/*
 * The one end of every accepted request: take it out of curl, call on_done,
 * free it (in its timer's close callback, or at once when it never had
 * one). Never inside a libcurl callback.
 */
static void req_end(struct req *r, int result, const char *error)
{
    struct http_client *c = r->c;
    assert(current_client == c);
    assert(!r->ended);
    assert(!c->in_curl);
    r->ended = true;
    if (r->in_multi) {
        curl_multi_remove_handle(c->multi, r->easy);
        idmap_del(&c->by_id, r->id);
        list_remove(&r->link);
        r->in_multi = false;
    } else if (r->waiting) {
        idmap_del(&c->by_id, r->id);
        list_remove(&r->link);
        r->waiting = false;
    }
    if (r->easy)
        curl_easy_cleanup(r->easy);
    r->easy = NULL;
    curl_slist_free_all(r->hdrs);
    r->hdrs = NULL;
    free(r->head);
    r->head = NULL;
    /* Counted out before on_done: a callback that submits a follow-up (a
     * retry) is not refused for the request that is ending. */
    atomic_fetch_sub(&c->inflight, 1);

    struct log_quoted qu;
    char name[32] = "ok";
    if (result < 0)
        uv_err_name_r(result, name, sizeof name); /* uv_err_name leaks on unknown codes */
    uint64_t ms = r->timer_open ? uv_now(&c->loop) - r->started_ms : 0;
    if (result == 0 || result == -ECANCELED)
        log_debug("http_client_done", "id=%llu url=%s status=%d result=%s bytes=%zu ms=%llu",
                  (unsigned long long)r->id, log_url(&qu, r->url), r->status, name, r->received,
                  (unsigned long long)ms);
    else
        log_info("http_client_failed", "id=%llu url=%s status=%d result=%s bytes=%zu ms=%llu",
                 (unsigned long long)r->id, log_url(&qu, r->url), r->status, name, r->received,
                 (unsigned long long)ms);

    r->cb->on_done(r->arg, r->id, result, r->status, error ? error : "");

    if (r->timer_open)
        uv_close((uv_handle_t *)&r->timer, req_free);
    else
        free(r);
}

/* libcurl's result as a negative errno. */
static int curl_errno(CURLcode code)
{
    switch (code) {
    case CURLE_OK:
        return 0;
    case CURLE_COULDNT_CONNECT:
        return -ECONNREFUSED;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return -EHOSTUNREACH;
    case CURLE_OPERATION_TIMEDOUT:
        return -ETIMEDOUT;
    case CURLE_PARTIAL_FILE:
    case CURLE_GOT_NOTHING:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_HTTP2_STREAM:
        return -ECONNRESET;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_HTTP2:
    case CURLE_TOO_MANY_REDIRECTS:
    case CURLE_BAD_CONTENT_ENCODING:
        return -EPROTO;
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_BAD_FUNCTION_ARGUMENT:
    case CURLE_UNKNOWN_OPTION:
    case CURLE_NOT_BUILT_IN:
        return -EINVAL;
    case CURLE_OUT_OF_MEMORY:
        return -ENOMEM;
    case CURLE_FILESIZE_EXCEEDED:
        return -EMSGSIZE;
    default:
        return -EIO;
    }
}

/* curl finished a transfer: a whole response, or curl's error, or the
 * refusal a callback of ours recorded. */
void http_client__end_curl(struct req *r, CURLcode code)
{
    if (r->fail) {
        req_end(r, r->fail, r->why);
        return;
    }
    if (code == CURLE_FILESIZE_EXCEEDED) { /* Content-Length over the cap */
        set_why(r, "response body over %zu bytes", r->max_body);
        req_end(r, -EMSGSIZE, r->why);
        return;
    }
    if (code == CURLE_OK && !r->head_done) { /* curl would not: a proof */
        req_end(r, -EPROTO, "no response head");
        return;
    }
    req_end(r, curl_errno(code),
            code == CURLE_OK ? ""
            : r->ebuf[0]     ? r->ebuf
                             : curl_easy_strerror(code));
}

/* Take every finished transfer off the multi handle. */
static void collect_done(struct http_client *c)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(c->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE)
            continue;
        char *priv = NULL;
        CURLcode code = m->data.result; /* m dies with the handle's removal */
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &priv);
        struct req *r = (struct req *)priv;
        assert(r && !r->ended);
        http_client__end_curl(r, code);
    }
}

static void socket_action(struct http_client *c, curl_socket_t fd, int flags)
{
    int running;
    c->in_curl = true;
    curl_multi_socket_action(c->multi, fd, flags, &running);
    c->in_curl = false;
    collect_done(c);
}

/* ---- libcurl's sockets and timer on the loop --------------------------- */

static void on_poll(uv_poll_t *h, int status, int events)
{
    struct sock *k = h->data;
    struct http_client *c = h->loop->data;
    int flags = 0;
    if (status < 0)
        flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    socket_action(c, k->fd, flags);
}

static void sock_free(uv_handle_t *h)
{
    free(h->data);
}

static void sock_close(struct sock *k)
{
    list_remove(&k->link);
    uv_close((uv_handle_t *)&k->poll, sock_free);
}

/* CURLMOPT_SOCKETFUNCTION: watch fd for what curl asks, or stop. On
 * CURL_POLL_REMOVE curl forgets `sockp` itself, and closes the socket only
 * after this returns, so the poll handle leaves epoll first. */
static int on_curl_socket(CURL *easy, curl_socket_t fd, int what, void *cp, void *sockp)
{
    struct http_client *c = cp;
    struct sock *k = sockp;
    assert(current_client == c);
    if (what == CURL_POLL_REMOVE) {
        if (k)
            sock_close(k);
        return 0;
    }
    if (!k) {
        k = calloc(1, sizeof *k);
        if (!k)
            return -1;
        if (uv_poll_init_socket(&c->loop, &k->poll, fd) != 0) {
            free(k);
            return -1;
        }
        k->fd = fd;
        k->poll.data = k;
        list_append(&c->socks, &k->link);
        curl_multi_assign(c->multi, fd, k);
    }
    int events = 0;
    if (what & CURL_POLL_IN)
        events |= UV_READABLE;
    if (what & CURL_POLL_OUT)
        events |= UV_WRITABLE;
    return uv_poll_start(&k->poll, events, on_poll) == 0 ? 0 : -1;
}

static void on_timer(uv_timer_t *t)
{
    struct http_client *c = t->data;
    socket_action(c, CURL_SOCKET_TIMEOUT, 0);
}

/* CURLMOPT_TIMERFUNCTION: call curl back in timeout_ms (-1: never). Even a
 * 0 goes through the loop: curl must not be re-entered from here. */
static int on_curl_timer(CURLM *multi, long timeout_ms, void *cp)
{
    struct http_client *c = cp;
    if (timeout_ms < 0)
        uv_timer_stop(&c->timer);
    else
        uv_timer_start(&c->timer, on_timer, (uint64_t)timeout_ms, 0);
    return 0;
}

/* ---- a request's own deadlines ---------------------------------------- */

static void on_req_timer(uv_timer_t *t);

/* Arm the request's timer for its next deadline: the first byte's while no
 * byte has come, then the total one. */
static void req_arm(struct req *r)
{
    uint64_t next = 0;
    if (!r->got_byte && r->fb_deadline)
        next = r->fb_deadline;
    if (r->total_deadline && (!next || r->total_deadline < next))
        next = r->total_deadline;
    if (!next) {
        uv_timer_stop(&r->timer);
        return;
    }
    uint64_t now = uv_now(&r->c->loop);
    uv_timer_start(&r->timer, on_req_timer, next > now ? next - now : 0, 0);
}

static void on_req_timer(uv_timer_t *t)
{
    struct req *r = t->data;
    uint64_t now = uv_now(&r->c->loop);
    if (!r->got_byte && r->fb_deadline && now >= r->fb_deadline) {
        set_why(r, "first-byte timeout (%u ms): no response", r->first_byte_ms);
        req_end(r, -ETIMEDOUT, r->why);
    } else if (r->total_deadline && now >= r->total_deadline) {
        set_why(r, "total timeout (%u ms): response not complete", r->total_ms);
        req_end(r, -ETIMEDOUT, r->why);
    } else {
        req_arm(r); /* the first byte came: on to the total deadline */
    }
}

/* ---- starting a request (client thread) -------------------------------- */

/* Set up r's easy handle; 0, or -ENOMEM / -EINVAL with r->why set. */
static int req_setup(struct http_client *c, struct req *r)
{
    CURL *e = r->easy = curl_easy_init();
    if (!e) {
        set_why(r, "out of memory");
        return -ENOMEM;
    }
    const char *ln = r->lines;
    for (size_t i = 0; i < r->nlines; i++, ln += strlen(ln) + 1) {
        struct curl_slist *s = curl_slist_append(r->hdrs, ln);
        if (!s)
            goto nomem;
        r->hdrs = s;
    }
    /* No "Expect: 100-continue" wait before a large body; no made-up form
     * Content-Type on a body the caller did not type. */
    static const char *const extra[] = {"Expect:", "Content-Type:"};
    bool fields = r->body || strcmp(r->method, "POST") == 0; /* POSTFIELDS below */
    for (size_t i = 0; i < (fields && !r->has_content_type ? 2u : 1u); i++) {
        struct curl_slist *s = curl_slist_append(r->hdrs, extra[i]);
        if (!s)
            goto nomem;
        r->hdrs = s;
    }

    CURLcode rc = CURLE_OK;
#define SET(opt, val)                                                                              \
    do {                                                                                           \
        if (rc == CURLE_OK)                                                                        \
            rc = curl_easy_setopt(e, opt, val);                                                    \
    } while (0)
    SET(CURLOPT_PRIVATE, (char *)r);
    SET(CURLOPT_URL, r->url);
    SET(CURLOPT_ERRORBUFFER, r->ebuf);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_FOLLOWLOCATION, 0L);
    SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    /* HTTPS: a new request waits for a connection being set up to the same
     * host, to multiplex on it if ALPN picks HTTP/2, rather than open
     * another. Only there: over plain http:// curl learns that a connection
     * cannot multiplex only from its first response head, so every new
     * request would queue behind a slow first answer. */
    if (strncasecmp(r->url, "https:", 6) == 0)
        SET(CURLOPT_PIPEWAIT, 1L);
    SET(CURLOPT_SSL_VERIFYPEER, 1L);
    SET(CURLOPT_SSL_VERIFYHOST, 2L);
    SET(CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
    if (c->ca_file)
        SET(CURLOPT_CAINFO, c->ca_file);
    SET(CURLOPT_PROXY, c->proxy); /* "" also ignores the environment's */
    SET(CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L);
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    SET(CURLOPT_USERAGENT, "chatd/" CHATD_VERSION);
    SET(CURLOPT_HTTPHEADER, r->hdrs);
    SET(CURLOPT_HEADERFUNCTION, http_client__on_header);
    SET(CURLOPT_HEADERDATA, r);
    SET(CURLOPT_WRITEFUNCTION, http_client__on_body);
    SET(CURLOPT_WRITEDATA, r);
    if (strcmp(r->method, "HEAD") == 0) {
        SET(CURLOPT_NOBODY, 1L);
    } else if (strcmp(r->method, "GET") == 0 && !r->body) {
        SET(CURLOPT_HTTPGET, 1L);
        SET(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)r->max_body);
    } else {
        /* A POST always gets its fields, even empty: without them curl
         * would read the body from stdin. */
        if (r->body || strcmp(r->method, "POST") == 0) {
            SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body_len);
            SET(CURLOPT_POSTFIELDS, r->body ? r->body : "");
        }
        if (strcmp(r->method, "POST") != 0)
            SET(CURLOPT_CUSTOMREQUEST, r->method);
        /* A Content-Length over the cap is refused before the body comes. */
        SET(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)r->max_body);
    }
#undef SET
    if (rc != CURLE_OK) {
        set_why(r, "libcurl refused an option: %s", curl_easy_strerror(rc));
        return rc == CURLE_OUT_OF_MEMORY ? -ENOMEM : -EINVAL;
    }
    return 0;

nomem:
    set_why(r, "out of memory");
    return -ENOMEM;
}

/* Start r now: deadlines, the easy handle, into the multi handle. */
static void req_begin(struct http_client *c, struct req *r)
{
    r->started_ms = uv_now(&c->loop);
    /* Deadlines count from submit: take off the time spent on the inbox. A
     * delayed request's count from now, the end of its delay. */
    uint64_t waited = r->delay_ms ? 0 : (uv_hrtime() - r->submitted_ns) / 1000000;
    if (r->first_byte_ms)
        r->fb_deadline =
            r->started_ms + (r->first_byte_ms > waited ? r->first_byte_ms - waited : 0);
    if (r->total_ms)
        r->total_deadline = r->started_ms + (r->total_ms > waited ? r->total_ms - waited : 0);
    /* A deadline of exactly 0 would read as "none". */
    r->fb_deadline += r->first_byte_ms && !r->fb_deadline;
    r->total_deadline += r->total_ms && !r->total_deadline;

    int rc = req_setup(c, r);
    if (rc != 0) {
        req_end(r, rc, r->why);
        return;
    }
    if (idmap_put(&c->by_id, r->id, r) != 0) {
        req_end(r, -ENOMEM, "out of memory");
        return;
    }
    CURLMcode mrc = curl_multi_add_handle(c->multi, r->easy);
    if (mrc != CURLM_OK) {
        idmap_del(&c->by_id, r->id);
        req_end(r, mrc == CURLM_OUT_OF_MEMORY ? -ENOMEM : -EIO, curl_multi_strerror(mrc));
        return;
    }
    r->in_multi = true;
    list_append(&c->running, &r->link);
    req_arm(r);
    struct log_quoted qu;
    log_debug("http_client_start", "id=%llu method=%s url=%s", (unsigned long long)r->id, r->method,
              log_url(&qu, r->url));
}

/* A delayed request's timer: its delay is over. */
static void on_delay_over(uv_timer_t *t)
{
    struct req *r = t->data;
    struct http_client *c = r->c;
    idmap_del(&c->by_id, r->id);
    list_remove(&r->link);
    r->waiting = false;
    req_begin(c, r);
}

/* The client's thread took r off the inbox: start it, or first wait its
 * delay (in c->by_id, so that a cancel finds it; on c->waiting, so that
 * the stop ends it). */
static void req_start(struct http_client *c, struct req *r)
{
    uv_timer_init(&c->loop, &r->timer);
    r->timer.data = r;
    r->timer_open = true;
    r->started_ms = uv_now(&c->loop);
    if (c->stopping) {
        req_end(r, -ECANCELED, "client closed");
        return;
    }
    if (!r->delay_ms) {
        req_begin(c, r);
        return;
    }
    if (idmap_put(&c->by_id, r->id, r) != 0) {
        req_end(r, -ENOMEM, "out of memory");
        return;
    }
    r->waiting = true;
    list_append(&c->waiting, &r->link);
    uv_timer_start(&r->timer, on_delay_over, r->delay_ms, 0);
    struct log_quoted qu;
    log_debug("http_client_delay", "id=%llu url=%s delay_ms=%u", (unsigned long long)r->id,
              log_url(&qu, r->url), r->delay_ms);
}

static void req_cancel(struct http_client *c, uint64_t id)
{
    struct req *r = idmap_get(&c->by_id, id);
    if (r)
        req_end(r, -ECANCELED, "cancelled");
}

/* ---- the client's thread --------------------------------------------- */

static void close_noop(uv_handle_t *h)
{
    (void)h;
}

/* The stop message: end everything, then close every handle so that the
 * loop returns. Submits from callbacks run here are refused (the inbox is
 * closed first). */
static void client_stop(struct http_client *c)
{
    c->stopping = true;
    for (struct fifo_node *n = fifo_close(&c->inbox, NULL), *next; n; n = next) {
        next = n->next;
        struct msg *m = FIFO_ENTRY(n, struct msg, node);
        if (m->kind == MSG_SUBMIT) {
            req_end((struct req *)m, -ECANCELED, "client closed");
        } else if (m->kind == MSG_CANCEL) {
            atomic_fetch_sub(&c->cancels, 1);
            free(m);
        }
    }
    while (!list_empty(&c->waiting))
        req_end(LIST_ENTRY(c->waiting.next, struct req, link), -ECANCELED, "client closed");
    while (!list_empty(&c->running))
        req_end(LIST_ENTRY(c->running.next, struct req, link), -ECANCELED, "client closed");
    /* Closing the pooled connections tells on_curl_socket to forget them. */
    curl_multi_cleanup(c->multi);
    c->multi = NULL;
    while (!list_empty(&c->socks))
        sock_close(LIST_ENTRY(c->socks.next, struct sock, link));
    uv_close((uv_handle_t *)&c->timer, close_noop);
    uv_close((uv_handle_t *)&c->wakeup, close_noop);
    uv_close((uv_handle_t *)&c->after, close_noop);
}

static void on_after(uv_check_t *h)
{
    struct http_client *c = h->data;
    c->after_callbacks(c->after_arg);
}

static void on_wakeup(uv_async_t *a)
{
    struct http_client *c = a->data;
    bool stop = false;
    for (struct fifo_node *n = fifo_take_all(&c->inbox, NULL), *next; n; n = next) {
        next = n->next;
        struct msg *m = FIFO_ENTRY(n, struct msg, node);
        switch (m->kind) {
        case MSG_SUBMIT:
            req_start(c, (struct req *)m); /* ends it at once after a stop */
            break;
        case MSG_CANCEL:
            req_cancel(c, ((struct cancel_msg *)m)->id);
            atomic_fetch_sub(&c->cancels, 1);
            free(m);
            break;
        case MSG_STOP:
            stop = c->stopping = true;
            break;
        }
    }
    if (stop)
        client_stop(c);
}

static void client_main(void *arg)
{
    struct http_client *c = arg;
    current_client = c;
    uv_run(&c->loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(&c->loop);
    if (rc != 0)
        log_error("http_client_loop_close_failed", "error=%s", uv_err_name(rc));
    assert(rc == 0);
}

/* ---- the API ---------------------------------------------------------- */

int http_client_global_init(void)
{
    return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -EIO;
}

void http_client_global_cleanup(void)
{
    curl_global_cleanup();
}

int http_client_new(struct http_client **out, const struct http_client_options *opts)
{
    static const struct http_client_options none;
    if (!opts)
        opts = &none;
    if (opts->ca_file && access(opts->ca_file, R_OK) != 0)
        return -errno;
    int rc = -ENOMEM;
    struct http_client *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    c->max_requests = opts->max_requests ? opts->max_requests : HTTP_CLIENT_DEFAULT_MAX_REQUESTS;
    c->max_host_conns = opts->max_host_connections ? opts->max_host_connections
                                                   : HTTP_CLIENT_DEFAULT_MAX_HOST_CONNS;
    c->max_total_conns = opts->max_total_connections ? opts->max_total_connections
                                                     : HTTP_CLIENT_DEFAULT_MAX_TOTAL_CONNS;
    if (opts->ca_file && !(c->ca_file = strdup(opts->ca_file)))
        goto free_c;
    if (!(c->proxy = strdup(opts->proxy ? opts->proxy : "")))
        goto free_strings;
    atomic_init(&c->inflight, 0);
    atomic_init(&c->cancels, 0);
    atomic_init(&c->next_id, 1);
    c->stop_msg.kind = MSG_STOP;
    idmap_init(&c->by_id, offsetof(struct req, id));
    list_init(&c->running);
    list_init(&c->waiting);
    list_init(&c->socks);
    /* Bounded elsewhere: submits by max_requests, cancels by the same
     * number (http_client_cancel), and one stop. */
    if ((rc = fifo_init(&c->inbox, 0)) != 0)
        goto free_strings;
    if ((rc = net_loop_init(&c->loop)) != 0)
        goto release_fifo;
    c->loop.data = c;
    rc = -EIO;
    if (!(c->multi = curl_multi_init()))
        goto close_loop;
    CURLMcode mrc = CURLM_OK;
#define MSET(opt, val)                                                                             \
    do {                                                                                           \
        if (mrc == CURLM_OK)                                                                       \
            mrc = curl_multi_setopt(c->multi, opt, val);                                           \
    } while (0)
    MSET(CURLMOPT_SOCKETFUNCTION, on_curl_socket);
    MSET(CURLMOPT_SOCKETDATA, c);
    MSET(CURLMOPT_TIMERFUNCTION, on_curl_timer);
    MSET(CURLMOPT_TIMERDATA, c);
    MSET(CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
    MSET(CURLMOPT_MAX_HOST_CONNECTIONS, (long)c->max_host_conns);
    MSET(CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)c->max_total_conns);
    MSET(CURLMOPT_MAXCONNECTS, (long)c->max_total_conns); /* idle ones kept for reuse */
#undef MSET
    if (mrc != CURLM_OK)
        goto cleanup_multi;
    uv_async_init(&c->loop, &c->wakeup, on_wakeup);
    c->wakeup.data = c;
    uv_timer_init(&c->loop, &c->timer);
    c->timer.data = c;
    uv_check_init(&c->loop, &c->after);
    c->after.data = c;
    c->after_callbacks = opts->after_callbacks;
    c->after_arg = opts->after_arg;
    if (c->after_callbacks)
        uv_check_start(&c->after, on_after);
    if ((rc = uv_thread_create(&c->thread, client_main, c)) != 0)
        goto close_handles;
    *out = c;
    return 0;

close_handles:
    uv_close((uv_handle_t *)&c->wakeup, NULL);
    uv_close((uv_handle_t *)&c->timer, NULL);
    uv_close((uv_handle_t *)&c->after, NULL);
    uv_run(&c->loop, UV_RUN_DEFAULT);
cleanup_multi:
    curl_multi_cleanup(c->multi);
close_loop:
    uv_loop_close(&c->loop);
release_fifo:
    fifo_release(&c->inbox);
free_strings:
    free(c->ca_file);
    free(c->proxy);
free_c:
    free(c);
    return rc;
}

static void wake(void *async)
{
    uv_async_send(async);
}

void http_client_free(struct http_client *c)
{
    if (!c)
        return;
    assert(current_client != c);
    /* The inbox is open until the client's thread takes this very message:
     * the push cannot be refused. */
    int rc = fifo_push_notify(&c->inbox, &c->stop_msg.node, wake, &c->wakeup);
    assert(rc >= 0);
    (void)rc;
    uv_thread_join(&c->thread);
    assert(atomic_load(&c->inflight) == 0);
    assert(fifo_take_all(&c->inbox, NULL) == NULL);
    fifo_release(&c->inbox);
    idmap_release(&c->by_id);
    free(c->ca_file);
    free(c->proxy);
    free(c);
}

static bool is_token(const char *s, size_t max)
{
    size_t n = 0;
    for (; s[n]; n++)
        if (n >= max || !http_is_tchar((unsigned char)s[n]))
            return false;
    return n > 0;
}

/* Visible bytes, space and tab only: no CR, LF or other control byte. */
static bool is_field_value(const char *s)
{
    for (; *s; s++)
        if (((unsigned char)*s < 0x20 && *s != '\t') || *s == 0x7f)
            return false;
    return true;
}

static bool valid_url(const char *url)
{
    size_t n = strnlen(url, HTTP_CLIENT_MAX_URL + 1);
    if (n > HTTP_CLIENT_MAX_URL)
        return false;
    if (strncasecmp(url, "http://", 7) != 0 && strncasecmp(url, "https://", 8) != 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)url[i] <= 0x20 || (unsigned char)url[i] == 0x7f)
            return false;
    return n > (size_t)(url[4] == ':' ? 7 : 8); /* a host after the scheme */
}

int http_client_submit(struct http_client *c, const struct http_client_request *q, uint64_t *id)
{
    if (!c || !q || !q->url || !q->cb || !q->cb->on_done || (!q->body && q->body_len) ||
        q->nheaders > HTTP_CLIENT_MAX_HEADERS || (q->nheaders && !q->headers) || !valid_url(q->url))
        return -EINVAL;
    const char *method = q->method ? q->method : q->body ? "POST" : "GET";
    if (!is_token(method, MAX_METHOD))
        return -EINVAL;
    size_t method_len = strlen(method), url_len = strlen(q->url);
    size_t lines_len = 0;
    bool has_ct = false;
    for (size_t i = 0; i < q->nheaders; i++) {
        const struct http_client_field *f = &q->headers[i];
        if (!f->name || !f->value || !is_token(f->name, HTTP_CLIENT_MAX_HEADER_LINE) ||
            !is_field_value(f->value))
            return -EINVAL;
        /* The body's framing is the client's to write. */
        if (strcasecmp(f->name, "Content-Length") == 0 ||
            strcasecmp(f->name, "Transfer-Encoding") == 0)
            return -EINVAL;
        has_ct |= strcasecmp(f->name, "Content-Type") == 0;
        size_t len = strlen(f->name) + 2 + strlen(f->value);
        if (len > HTTP_CLIENT_MAX_HEADER_LINE)
            return -EINVAL;
        lines_len += len + 1;
    }
    if (q->body_len > SIZE_MAX / 2)
        return -EINVAL;

    if (atomic_fetch_add(&c->inflight, 1) >= c->max_requests) {
        atomic_fetch_sub(&c->inflight, 1);
        return -EBUSY;
    }
    size_t tail = method_len + 1 + url_len + 1 + lines_len + q->body_len;
    struct req *r = calloc(1, sizeof *r + tail);
    if (!r) {
        atomic_fetch_sub(&c->inflight, 1);
        return -ENOMEM;
    }
    char *p = (char *)(r + 1);
    r->m.kind = MSG_SUBMIT;
    r->c = c;
    r->cb = q->cb;
    r->arg = q->arg;
    r->method = memcpy(p, method, method_len + 1);
    p += method_len + 1;
    r->url = memcpy(p, q->url, url_len + 1);
    p += url_len + 1;
    r->lines = p;
    r->nlines = q->nheaders;
    for (size_t i = 0; i < q->nheaders; i++) {
        const struct http_client_field *f = &q->headers[i];
        /* curl reads "Name:" as "remove Name"; "Name;" sends it empty. */
        size_t nl = strlen(f->name), vl = strlen(f->value);
        memcpy(p, f->name, nl);
        p += nl;
        if (vl) {
            memcpy(p, ": ", 2);
            memcpy(p + 2, f->value, vl);
            p += 2 + vl;
        } else {
            *p++ = ';';
        }
        *p++ = '\0';
    }
    if (q->body) {
        r->body = memcpy(p, q->body, q->body_len);
        r->body_len = q->body_len;
    }
    r->has_content_type = has_ct;
    r->first_byte_ms = q->first_byte_timeout_ms;
    r->total_ms = q->total_timeout_ms;
    r->delay_ms = q->delay_ms;
    r->max_body = q->max_response_bytes ? q->max_response_bytes : HTTP_CLIENT_DEFAULT_MAX_RESPONSE;
    r->submitted_ns = uv_hrtime();
    r->id = atomic_fetch_add(&c->next_id, 1);
    uint64_t rid = r->id; /* r is the client's once pushed */
    int rc = fifo_push_notify(&c->inbox, &r->m.node, wake, &c->wakeup);
    if (rc < 0) {
        free(r);
        atomic_fetch_sub(&c->inflight, 1);
        return rc;
    }
    if (id)
        *id = rid;
    return 0;
}

int http_client_cancel(struct http_client *c, uint64_t id)
{
    if (atomic_fetch_add(&c->cancels, 1) >= c->max_requests) {
        atomic_fetch_sub(&c->cancels, 1);
        return -EBUSY;
    }
    struct cancel_msg *m = malloc(sizeof *m);
    if (!m) {
        atomic_fetch_sub(&c->cancels, 1);
        return -ENOMEM;
    }
    m->m.kind = MSG_CANCEL;
    m->id = id;
    int rc = fifo_push_notify(&c->inbox, &m->m.node, wake, &c->wakeup);
    if (rc < 0) {
        free(m);
        atomic_fetch_sub(&c->cancels, 1);
        return rc;
    }
    return 0;
}

unsigned http_client_inflight(struct http_client *c)
{
    return atomic_load(&c->inflight);
}

const struct http_client_header *http_client_header_find(const struct http_client_header *h,
                                                         size_t n, const char *name)
{
    size_t len = strlen(name);
    for (size_t i = 0; i < n; i++)
        if (h[i].name_len == len && strncasecmp(h[i].name, name, len) == 0)
            return &h[i];
    return NULL;
}
