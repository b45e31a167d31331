/*
 * DESIGN: chatd-fake-provider, the model provider of chatd's assistant
 * benchmark: an OpenAI-compatible chat completions endpoint that streams
 * answers to hundreds of requests at once for almost no CPU, so that what
 * the benchmark measures is chatd and not the provider.
 *
 * POST {any prefix}/chat/completions answers 200 with a chunked
 * text/event-stream, the way the OpenAI API and tests/fake_provider.py do:
 * `data: {chunk}` with delta {"role":"assistant","content":""}, one chunk
 * per delta of the answer, one with finish_reason "stop", the usage chunk
 * when the request asks for stream_options.include_usage (and then
 * "usage":null in every chunk before it), `data: [DONE]`, and the last
 * HTTP chunk. The answer is fake_answer(seed, --answer-bytes) of
 * fake_answer.h, the seed read from "bench-q-<16 hex>" in the request
 * body, cut into deltas of --delta-bytes (extended to a character's end).
 * Anything else is a 404. No key is checked. Connections are kept alive.
 *
 * Pacing: with --interval-ms I > 0 every stream sends one delta each I ms
 * (the first --first-ms after the request), as a model does: each delta is
 * its own HTTP chunk, written by its own send(), so chatd reads deltas one
 * at a time. The streams wait in a min-heap on their next due time; a
 * timerfd wakes the loop for the earliest. A stream whose socket is full
 * keeps queueing its deltas in memory (a provider does not wait either).
 * With --interval-ms 0 the streams are written as fast as chatd reads them,
 * up to 64 KiB per stream per loop iteration: many deltas per read.
 *
 * One thread, one epoll loop. It prints "listening PORT" on stdout first
 * and, at SIGTERM or SIGINT, one line of counts on stderr, then exits 0.
 */
#include "fake_answer.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define EXIT_USAGE 2
#define MAX_REQUEST (4u << 20)   /* a request larger than this is refused */
#define HOT_BUDGET (64u * 1024)  /* unpaced: bytes queued per stream per iteration */
#define MAX_EVENTS 256
#define SLACK_NS 200000ull       /* deltas due this close to now go out in the same pass */

static const char usage[] =
    "usage: chatd-fake-provider [options]\n"
    "An OpenAI-compatible streaming provider for chatd's assistant benchmark.\n"
    "  --host H             address to listen on (default 127.0.0.1)\n"
    "  --port P             port (default 0: any free one; printed as \"listening PORT\")\n"
    "  --answer-bytes N     bytes of each answer (default 4096)\n"
    "  --delta-bytes N      bytes per delta, extended to a character's end (default 8)\n"
    "  --interval-ms MS     pause between two deltas of a stream (default 10; fractions\n"
    "                       allowed; 0: as fast as the client reads)\n"
    "  --first-ms MS        pause before the first delta (default: --interval-ms)\n"
    "  --help               show this help and exit\n"
    "At SIGTERM or SIGINT it prints its counts on stderr and exits 0.\n";

static struct {
    const char *host;
    unsigned port;
    size_t answer_bytes, delta_bytes;
    uint64_t interval_ns, first_ns;
    bool first_set;
} o = {.host = "127.0.0.1", .answer_bytes = 4096, .delta_bytes = 8, .interval_ns = 10000000ull};

enum fstate { FC_REQUEST, FC_STREAM, FC_CLOSING, FC_DEAD };

struct fconn {
    int fd;
    uint8_t state;           /* enum fstate */
    bool want_out;           /* EPOLLOUT registered */
    bool close_after;        /* the request said Connection: close */
    bool continued;          /* 100 Continue sent for the current request */
    bool usage;              /* the request asked for the usage chunk */
    char *rbuf;              /* owned: request bytes not yet handled */
    size_t rlen, rcap;
    char *wbuf;              /* owned: response bytes not yet sent */
    size_t wlen, woff, wcap;
    char *text;              /* owned: the answer being streamed (o.answer_bytes) */
    size_t tpos;             /* bytes of it sent so far */
    char model[72];
    unsigned serial;
    uint64_t due;            /* paced: when the next delta is due */
    int heap_idx;            /* paced: position in the heap, -1 when not in it */
    int hot_idx;             /* unpaced: position in the hot list, -1 when not in it */
    struct fconn *next_dead; /* closed, freed at the end of the loop iteration */
};

static int g_ep = -1, g_tfd = -1, g_lfd = -1;
static volatile sig_atomic_t g_stop;
static struct fconn **g_heap, **g_hot;
static size_t g_nheap, g_nhot, g_capheap, g_caphot;
static char *g_ev;          /* scratch: one event's text */
static size_t g_evcap;
static unsigned g_serial;
static uint64_t g_armed;    /* the timerfd's due time, 0 when disarmed */
static struct fconn *g_dead; /* closed connections, freed after the events in hand */
static struct {
    uint64_t accepted, requests, streams, done, deltas, aborted, not_found, bad;
} st;
static const int LISTEN_TAG = 1, TIMER_TAG = 2;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int reserve(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t nc = *cap ? *cap : 1024;
    while (nc < need)
        nc *= 2;
    char *nb = realloc(*buf, nc);
    if (nb == NULL)
        return -ENOMEM;
    *buf = nb;
    *cap = nc;
    return 0;
}

static int out_append(struct fconn *c, const char *p, size_t n)
{
    if (c->woff == c->wlen) {
        c->woff = c->wlen = 0;
    } else if (c->woff > c->wcap / 2) {
        memmove(c->wbuf, c->wbuf + c->woff, c->wlen - c->woff);
        c->wlen -= c->woff;
        c->woff = 0;
    }
    if (reserve(&c->wbuf, &c->wcap, c->wlen + n) != 0)
        return -ENOMEM;
    memcpy(c->wbuf + c->wlen, p, n);
    c->wlen += n;
    return 0;
}

/* One HTTP chunk holding p[0..n). */
static int out_chunk(struct fconn *c, const char *p, size_t n)
{
    char head[24];
    int hl = snprintf(head, sizeof head, "%zx\r\n", n);
    if (out_append(c, head, (size_t)hl) != 0 || out_append(c, p, n) != 0 || out_append(c, "\r\n", 2) != 0)
        return -ENOMEM;
    return 0;
}

/* ---- the heap of paced streams -------------------------------------------- */

static void heap_set(size_t i, struct fconn *c)
{
    g_heap[i] = c;
    c->heap_idx = (int)i;
}

static void heap_up(size_t i)
{
    struct fconn *c = g_heap[i];
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (g_heap[p]->due <= c->due)
            break;
        heap_set(i, g_heap[p]);
        i = p;
    }
    heap_set(i, c);
}

static void heap_down(size_t i)
{
    struct fconn *c = g_heap[i];
    for (;;) {
        size_t l = 2 * i + 1, m = i;
        uint64_t best = c->due;
        if (l < g_nheap && g_heap[l]->due < best)
            m = l, best = g_heap[l]->due;
        if (l + 1 < g_nheap && g_heap[l + 1]->due < best)
            m = l + 1;
        if (m == i)
            break;
        heap_set(i, g_heap[m]);
        i = m;
    }
    heap_set(i, c);
}

static int heap_push(struct fconn *c)
{
    if (g_nheap == g_capheap) {
        size_t nc = g_capheap ? g_capheap * 2 : 256;
        struct fconn **nh = realloc(g_heap, nc * sizeof *nh);
        if (nh == NULL)
            return -ENOMEM;
        g_heap = nh;
        g_capheap = nc;
    }
    heap_set(g_nheap++, c);
    heap_up(g_nheap - 1);
    return 0;
}

static void heap_remove(struct fconn *c)
{
    if (c->heap_idx < 0)
        return;
    size_t i = (size_t)c->heap_idx;
    c->heap_idx = -1;
    struct fconn *last = g_heap[--g_nheap];
    if (i == g_nheap)
        return;
    heap_set(i, last);
    heap_down(i);
    heap_up((size_t)last->heap_idx);
}

/* Arm the timerfd for the earliest due stream (or disarm it). */
static void timer_arm(void)
{
    uint64_t due = g_nheap ? g_heap[0]->due : 0;
    if (due == g_armed)
        return;
    struct itimerspec its = {0};
    if (due != 0) {
        its.it_value.tv_sec = (time_t)(due / 1000000000ull);
        its.it_value.tv_nsec = (long)(due % 1000000000ull);
        if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0)
            its.it_value.tv_nsec = 1;
    }
    timerfd_settime(g_tfd, TFD_TIMER_ABSTIME, &its, NULL);
    g_armed = due;
}

/* ---- the unpaced list ------------------------------------------------------- */

static int hot_add(struct fconn *c)
{
    if (c->hot_idx >= 0)
        return 0;
    if (g_nhot == g_caphot) {
        size_t nc = g_caphot ? g_caphot * 2 : 256;
        struct fconn **nh = realloc(g_hot, nc * sizeof *nh);
        if (nh == NULL)
            return -ENOMEM;
        g_hot = nh;
        g_caphot = nc;
    }
    c->hot_idx = (int)g_nhot;
    g_hot[g_nhot++] = c;
    return 0;
}

static void hot_remove(struct fconn *c)
{
    if (c->hot_idx < 0)
        return;
    size_t i = (size_t)c->hot_idx;
    c->hot_idx = -1;
    struct fconn *last = g_hot[--g_nhot];
    if (i != g_nhot) {
        g_hot[i] = last;
        last->hot_idx = (int)i;
    }
}

/* ---- connections -------------------------------------------------------------- */

/* Close the connection; its memory lives until the events already taken
 * from epoll have been looked at (free_dead). */
static void conn_close(struct fconn *c)
{
    if (c->state == FC_DEAD)
        return;
    if (c->state == FC_STREAM)
        st.aborted++;
    heap_remove(c);
    hot_remove(c);
    close(c->fd);   /* also leaves the epoll set */
    c->fd = -1;
    c->state = FC_DEAD;
    c->next_dead = g_dead;
    g_dead = c;
}

static void free_dead(void)
{
    while (g_dead != NULL) {
        struct fconn *c = g_dead;
        g_dead = c->next_dead;
        free(c->rbuf);
        free(c->wbuf);
        free(c->text);
        free(c);
    }
}

static void set_out(struct fconn *c, bool on)
{
    if (c->want_out == on)
        return;
    c->want_out = on;
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(g_ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Send what is queued. 0 (all sent or the socket is full: EPOLLOUT armed)
 * or -1 (the connection is gone: closed here). */
static int conn_flush(struct fconn *c)
{
    while (c->woff < c->wlen) {
        ssize_t n = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);
        if (n > 0) {
            c->woff += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            set_out(c, true);
            return 0;
        }
        conn_close(c);
        return -1;
    }
    c->woff = c->wlen = 0;
    set_out(c, false);
    if (c->state == FC_CLOSING) {
        conn_close(c);
        return -1;
    }
    return 0;
}

/* Append a JSON string body (no quotes) for p[0..n) to g_ev at *len. */
static int json_escape(size_t *len, const char *p, size_t n)
{
    if (reserve(&g_ev, &g_evcap, *len + n * 6 + 1) != 0)
        return -ENOMEM;
    char *d = g_ev + *len;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        switch (ch) {
        case '"': *d++ = '\\'; *d++ = '"'; break;
        case '\\': *d++ = '\\'; *d++ = '\\'; break;
        case '\n': *d++ = '\\'; *d++ = 'n'; break;
        case '\r': *d++ = '\\'; *d++ = 'r'; break;
        case '\t': *d++ = '\\'; *d++ = 't'; break;
        default:
            if (ch < 0x20)
                d += sprintf(d, "\\u%04x", ch);
            else
                *d++ = (char)ch;
        }
    }
    *len = (size_t)(d - g_ev);
    return 0;
}

/* Append formatted text to g_ev at *len. */
static int ev_printf(size_t *len, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int ev_printf(size_t *len, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(g_ev + *len, g_evcap - *len, fmt, ap);
        va_end(ap);
        if (n < 0)
            return -EINVAL;
        if ((size_t)n < g_evcap - *len) {
            *len += (size_t)n;
            return 0;
        }
        if (reserve(&g_ev, &g_evcap, *len + (size_t)n + 1) != 0)
            return -ENOMEM;
    }
}

/* The start of every chunk object, up to and including `"choices":`. */
static int chunk_head(struct fconn *c, size_t *len)
{
    return ev_printf(len,
                     "data: {\"id\":\"chatcmpl-fake%u\",\"object\":\"chat.completion.chunk\",\"created\":%lld,"
                     "\"model\":\"%s\",\"system_fingerprint\":\"fp_fake\",\"choices\":",
                     c->serial, (long long)time(NULL), c->model);
}

static int chunk_tail(struct fconn *c, size_t *len)
{
    return ev_printf(len, "%s}\n\n", c->usage ? ",\"usage\":null" : "");
}

/* Queue the event with delta content[0..n) (role: the first, empty one). */
static int emit_content(struct fconn *c, const char *p, size_t n, bool role)
{
    size_t len = 0;
    if (chunk_head(c, &len) != 0 ||
        ev_printf(&len, "[{\"index\":0,\"delta\":{%s\"content\":\"", role ? "\"role\":\"assistant\"," : "") != 0 ||
        json_escape(&len, p, n) != 0 ||
        ev_printf(&len, "\"},\"logprobs\":null,\"finish_reason\":null}]") != 0 || chunk_tail(c, &len) != 0)
        return -ENOMEM;
    return out_chunk(c, g_ev, len);
}

/* Queue the end of the stream: finish_reason, usage, [DONE], last chunk. */
static int emit_end(struct fconn *c, unsigned ndeltas)
{
    size_t len = 0;
    if (chunk_head(c, &len) != 0 ||
        ev_printf(&len, "[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}]") != 0 ||
        chunk_tail(c, &len) != 0 || out_chunk(c, g_ev, len) != 0)
        return -ENOMEM;
    if (c->usage) {
        len = 0;
        if (chunk_head(c, &len) != 0 ||
            ev_printf(&len, "[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":%u,\"total_tokens\":%u}}\n\n",
                      ndeltas, ndeltas + 3) != 0 ||
            out_chunk(c, g_ev, len) != 0)
            return -ENOMEM;
    }
    static const char done[] = "data: [DONE]\n\n";
    if (out_chunk(c, done, sizeof done - 1) != 0 || out_append(c, "0\r\n\r\n", 5) != 0)
        return -ENOMEM;
    return 0;
}

static unsigned ndeltas_of(const struct fconn *c)
{
    unsigned n = 0;
    for (size_t off = 0; off < o.answer_bytes; n++)
        off += fake_delta_len(c->text, o.answer_bytes, off, o.delta_bytes);
    return n;
}

static void handle_requests(struct fconn *c);

/* Queue the next delta (and, after the last, the end). The stream then
 * waits for the next request on the connection. -ENOMEM or 0. */
static int emit_delta(struct fconn *c)
{
    size_t dl = fake_delta_len(c->text, o.answer_bytes, c->tpos, o.delta_bytes);
    if (emit_content(c, c->text + c->tpos, dl, false) != 0)
        return -ENOMEM;
    c->tpos += dl;
    st.deltas++;
    if (c->tpos < o.answer_bytes)
        return 0;
    if (emit_end(c, ndeltas_of(c)) != 0)
        return -ENOMEM;
    st.done++;
    c->state = c->close_after ? FC_CLOSING : FC_REQUEST;
    return 0;
}

static int begin_stream(struct fconn *c, const char *body, size_t blen)
{
    uint64_t seed = fake_find_seed(body, blen);
    if (seed == 0) {
        seed = 1469598103934665603ull;   /* FNV-1a of the body */
        for (size_t i = 0; i < blen; i++)
            seed = (seed ^ (unsigned char)body[i]) * 1099511628211ull;
    }
    if (c->text == NULL && (c->text = malloc(o.answer_bytes ? o.answer_bytes : 1)) == NULL)
        return -ENOMEM;
    fake_answer(seed, c->text, o.answer_bytes);
    c->tpos = 0;
    c->serial = ++g_serial;
    c->usage = memmem(body, blen, "\"include_usage\":true", 20) != NULL;
    strcpy(c->model, "fake");
    const char *m = memmem(body, blen, "\"model\":\"", 9);
    if (m != NULL) {
        m += 9;
        size_t k = 0;
        while ((size_t)(m - body) + k < blen && m[k] != '"' && m[k] != '\\' && k < sizeof c->model - 1 &&
               (unsigned char)m[k] >= 0x20)
            k++;
        memcpy(c->model, m, k);
        c->model[k] = '\0';
    }
    char head[256];
    int hl = snprintf(head, sizeof head,
                      "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
                      "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\nx-request-id: req_fake%u\r\n\r\n",
                      c->serial);
    if (out_append(c, head, (size_t)hl) != 0 || emit_content(c, "", 0, true) != 0)
        return -ENOMEM;
    st.streams++;
    c->state = FC_STREAM;
    if (o.answer_bytes == 0) {
        if (emit_end(c, 0) != 0)
            return -ENOMEM;
        st.done++;
        c->state = c->close_after ? FC_CLOSING : FC_REQUEST;
        return 0;
    }
    if (o.interval_ns > 0) {
        c->due = now_ns() + o.first_ns;
        return heap_push(c);
    }
    return hot_add(c);
}

static int simple_answer(struct fconn *c, int status, const char *reason, const char *json)
{
    char head[256];
    int hl = snprintf(head, sizeof head, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                      status, reason, strlen(json));
    if (out_append(c, head, (size_t)hl) != 0 || out_append(c, json, strlen(json)) != 0)
        return -ENOMEM;
    return 0;
}

static bool header_is(const char *line, size_t n, const char *name, const char **val, size_t *vlen)
{
    size_t nl = strlen(name);
    if (n <= nl || line[nl] != ':' || strncasecmp(line, name, nl) != 0)
        return false;
    size_t i = nl + 1;
    while (i < n && (line[i] == ' ' || line[i] == '\t'))
        i++;
    *val = line + i;
    *vlen = n - i;
    while (*vlen > 0 && (line[i + *vlen - 1] == ' ' || line[i + *vlen - 1] == '\t'))
        (*vlen)--;
    return true;
}

/* Handle every whole request in rbuf while the connection waits for one.
 * A malformed request or one too large ends the connection after a 400. */
static void handle_requests(struct fconn *c)
{
    while (c->state == FC_REQUEST) {
        char *end = memmem(c->rbuf, c->rlen, "\r\n\r\n", 4);
        if (end == NULL) {
            if (c->rlen > 65536)
                goto bad;
            return;
        }
        size_t hl = (size_t)(end + 4 - c->rbuf);
        char *eol = memmem(c->rbuf, hl, "\r\n", 2);
        size_t ll = (size_t)(eol - c->rbuf);
        const char *sp1 = memchr(c->rbuf, ' ', ll);
        const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', ll - (size_t)(sp1 + 1 - c->rbuf)) : NULL;
        if (sp2 == NULL)
            goto bad;
        bool post = sp1 - c->rbuf == 4 && memcmp(c->rbuf, "POST", 4) == 0;
        const char *path = sp1 + 1;
        size_t plen = (size_t)(sp2 - path);
        const char *q = memchr(path, '?', plen);
        if (q != NULL)
            plen = (size_t)(q - path);
        bool http10 = memmem(sp2, ll - (size_t)(sp2 - c->rbuf), "HTTP/1.0", 8) != NULL;
        size_t clen = 0;
        bool chunked = false, expect = false;
        c->close_after = http10;
        for (char *p = eol + 2; p < end;) {
            char *e = memmem(p, (size_t)(end + 2 - p), "\r\n", 2);
            size_t n = (size_t)(e - p);
            const char *v;
            size_t vl;
            if (header_is(p, n, "content-length", &v, &vl)) {
                clen = strtoul(v, NULL, 10);
            } else if (header_is(p, n, "transfer-encoding", &v, &vl)) {
                chunked = vl >= 7 && strncasecmp(v + vl - 7, "chunked", 7) == 0;
            } else if (header_is(p, n, "connection", &v, &vl)) {
                if (vl == 5 && strncasecmp(v, "close", 5) == 0)
                    c->close_after = true;
                else if (vl == 10 && strncasecmp(v, "keep-alive", 10) == 0)
                    c->close_after = false;
            } else if (header_is(p, n, "expect", &v, &vl)) {
                expect = vl == 12 && strncasecmp(v, "100-continue", 12) == 0;
            }
            p = e + 2;
        }
        if (clen > MAX_REQUEST)
            goto bad;
        size_t blen = clen, total = hl + clen;
        if (chunked) {
            /* The body is not decoded: the seed and the flags are found in
             * it all the same. It ends with the last, empty chunk. */
            char *z = c->rlen > hl ? memmem(c->rbuf + hl, c->rlen - hl, "0\r\n\r\n", 5) : NULL;
            if (z == NULL || (z > c->rbuf + hl && z[-1] != '\n')) {
                if (c->rlen - hl > MAX_REQUEST)
                    goto bad;
                z = NULL;
            }
            if (z == NULL) {
                if (expect && !c->continued) {
                    c->continued = true;
                    out_append(c, "HTTP/1.1 100 Continue\r\n\r\n", 25);
                }
                return;
            }
            total = (size_t)(z + 5 - c->rbuf);
            blen = total - hl;
        } else if (c->rlen < total) {
            if (expect && !c->continued) {
                c->continued = true;
                out_append(c, "HTTP/1.1 100 Continue\r\n\r\n", 25);
            }
            return;
        }
        c->continued = false;
        st.requests++;
        int rc;
        if (post && plen >= 17 && memcmp(path + plen - 17, "/chat/completions", 17) == 0) {
            rc = begin_stream(c, c->rbuf + hl, blen);
        } else {
            st.not_found++;
            rc = simple_answer(c, 404, "Not Found",
                               "{\"error\":{\"message\":\"no such path\",\"type\":\"invalid_request_error\"}}");
            if (c->close_after)
                c->state = FC_CLOSING;
        }
        memmove(c->rbuf, c->rbuf + total, c->rlen - total);
        c->rlen -= total;
        if (rc != 0)
            goto bad;
    }
    return;
bad:
    st.bad++;
    c->rlen = 0;
    simple_answer(c, 400, "Bad Request", "{\"error\":{\"message\":\"bad request\",\"type\":\"invalid_request_error\"}}");
    c->state = FC_CLOSING;
}

static void conn_read(struct fconn *c)
{
    for (;;) {
        if (reserve(&c->rbuf, &c->rcap, c->rlen + 16384) != 0) {
            conn_close(c);
            return;
        }
        ssize_t n = recv(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen, 0);
        if (n == 0) {
            conn_close(c);
            return;
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            conn_close(c);
            return;
        }
        c->rlen += (size_t)n;
        if (c->rlen > MAX_REQUEST + 65536)
            break;
    }
    if (c->state == FC_REQUEST)
        handle_requests(c);
    else if (c->state == FC_CLOSING)
        c->rlen = 0;
    conn_flush(c);
}

static void on_accept(void)
{
    for (;;) {
        int fd = accept4(g_lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        struct fconn *c = calloc(1, sizeof *c);
        if (c == NULL) {
            close(fd);
            continue;
        }
        c->fd = fd;
        c->heap_idx = c->hot_idx = -1;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(g_ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
            close(fd);
            free(c);
            continue;
        }
        st.accepted++;
    }
}

/* Paced: send every delta due by now (plus a little slack, so deltas due
 * together leave in one pass), each stream due again one interval later. */
static void on_timer(void)
{
    uint64_t expirations;
    if (read(g_tfd, &expirations, sizeof expirations) < 0) {
        /* EAGAIN: already handled */
    }
    g_armed = 0;
    uint64_t limit = now_ns() + SLACK_NS;
    while (g_nheap > 0 && g_heap[0]->due <= limit) {
        struct fconn *c = g_heap[0];
        if (emit_delta(c) != 0) {
            conn_close(c);
            continue;
        }
        if (c->state == FC_STREAM) {
            c->due += o.interval_ns;
            heap_down(0);
        } else {
            heap_remove(c);
        }
        if (conn_flush(c) == 0 && c->state == FC_REQUEST && c->rlen > 0) {
            handle_requests(c);   /* the next request, sent before this answer ended */
            conn_flush(c);
        }
    }
}

/* Unpaced: top every hot stream's queue up to HOT_BUDGET and send it; a
 * stream whose socket is full leaves the list until EPOLLOUT. */
static void pump_hot(void)
{
    size_t i = 0;
    while (i < g_nhot) {
        struct fconn *c = g_hot[i];
        while (c->state == FC_STREAM && c->wlen - c->woff < HOT_BUDGET) {
            if (emit_delta(c) != 0) {
                conn_close(c);
                break;
            }
        }
        if (c->state == FC_DEAD || conn_flush(c) != 0)
            continue;   /* closed: the last entry took its place */
        if (c->state != FC_STREAM || c->want_out) {
            hot_remove(c);
            if (c->state == FC_REQUEST && c->rlen > 0) {
                handle_requests(c);
                conn_flush(c);
            }
            continue;
        }
        i++;
    }
}

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static int parse_ms(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !(v >= 0) || v > 3600000)
        return -EINVAL;
    *out = (uint64_t)(v * 1e6 + 0.5);
    return 0;
}

static int parse_size(const char *s, size_t lo, size_t hi, size_t *out)
{
    char *end;
    errno = 0;
    if (*s == '-' || *s == '\0')
        return -EINVAL;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < lo || v > hi)
        return -EINVAL;
    *out = (size_t)v;
    return 0;
}

static int parse_args(int argc, char **argv)
{
    enum { O_HOST = 256, O_PORT, O_ANSWER, O_DELTA, O_INTERVAL, O_FIRST, O_HELP };
    static const struct option lo[] = {
        {"host", required_argument, 0, O_HOST},         {"port", required_argument, 0, O_PORT},
        {"answer-bytes", required_argument, 0, O_ANSWER}, {"delta-bytes", required_argument, 0, O_DELTA},
        {"interval-ms", required_argument, 0, O_INTERVAL}, {"first-ms", required_argument, 0, O_FIRST},
        {"help", no_argument, 0, O_HELP},               {0, 0, 0, 0},
    };
    opterr = 0;
    for (;;) {
        int ix = 0;
        int ch = getopt_long(argc, argv, ":", lo, &ix);
        if (ch == -1)
            break;
        int rc = 0;
        size_t v = 0;
        switch (ch) {
        case O_HOST: o.host = optarg; break;
        case O_PORT: rc = parse_size(optarg, 0, 65535, &v); o.port = (unsigned)v; break;
        case O_ANSWER: rc = parse_size(optarg, 0, 64u << 20, &o.answer_bytes); break;
        case O_DELTA: rc = parse_size(optarg, 1, 1u << 20, &o.delta_bytes); break;
        case O_INTERVAL: rc = parse_ms(optarg, &o.interval_ns); break;
        case O_FIRST: rc = parse_ms(optarg, &o.first_ns); o.first_set = true; break;
        case O_HELP: fputs(usage, stdout); exit(0);
        default:
            fprintf(stderr, "chatd-fake-provider: %s: %s (see --help)\n",
                    ch == ':' ? "option needs a value" : "unknown option", argv[optind - 1]);
            return EXIT_USAGE;
        }
        if (rc != 0) {
            fprintf(stderr, "chatd-fake-provider: bad value for --%s: %s (see --help)\n", lo[ix].name, optarg);
            return EXIT_USAGE;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "chatd-fake-provider: unexpected argument %s (see --help)\n", argv[optind]);
        return EXIT_USAGE;
    }
    if (!o.first_set)
        o.first_ns = o.interval_ns;
    return 0;
}

int main(int argc, char **argv)
{
    int rc = parse_args(argc, argv);
    if (rc != 0)
        return rc;
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)o.port)};
    if (inet_pton(AF_INET, o.host, &addr.sin_addr) != 1) {
        fprintf(stderr, "chatd-fake-provider: --host must be an IPv4 address: %s\n", o.host);
        return EXIT_USAGE;
    }
    g_lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(g_lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    socklen_t al = sizeof addr;
    if (g_lfd < 0 || bind(g_lfd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(g_lfd, 4096) != 0 ||
        getsockname(g_lfd, (struct sockaddr *)&addr, &al) != 0) {
        fprintf(stderr, "chatd-fake-provider: cannot listen on %s:%u: %s\n", o.host, o.port, strerror(errno));
        return 1;
    }
    g_ep = epoll_create1(EPOLL_CLOEXEC);
    g_tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = (void *)&LISTEN_TAG};
    struct epoll_event tev = {.events = EPOLLIN, .data.ptr = (void *)&TIMER_TAG};
    if (g_ep < 0 || g_tfd < 0 || epoll_ctl(g_ep, EPOLL_CTL_ADD, g_lfd, &lev) != 0 ||
        epoll_ctl(g_ep, EPOLL_CTL_ADD, g_tfd, &tev) != 0) {
        fprintf(stderr, "chatd-fake-provider: epoll: %s\n", strerror(errno));
        return 1;
    }
    printf("listening %u\n", (unsigned)ntohs(addr.sin_port));
    fflush(stdout);

    struct epoll_event evs[MAX_EVENTS];
    while (!g_stop) {
        timer_arm();
        int n = epoll_wait(g_ep, evs, MAX_EVENTS, g_nhot ? 0 : -1);
        for (int i = 0; i < n; i++) {
            void *p = evs[i].data.ptr;
            if (p == &LISTEN_TAG) {
                on_accept();
            } else if (p == &TIMER_TAG) {
                on_timer();
            } else {
                struct fconn *c = p;
                if (c->state == FC_DEAD)
                    continue;
                if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
                    conn_read(c);
                else if (evs[i].events & EPOLLOUT)
                    conn_flush(c);
                if (c->state == FC_STREAM && !c->want_out && o.interval_ns == 0)
                    hot_add(c);
            }
        }
        pump_hot();
        free_dead();
    }
    fprintf(stderr,
            "chatd-fake-provider: accepted %" PRIu64 ", requests %" PRIu64 ", streams %" PRIu64 " (done %" PRIu64
            ", aborted %" PRIu64 "), deltas %" PRIu64 ", not found %" PRIu64 ", bad %" PRIu64 "\n",
            st.accepted, st.requests, st.streams, st.done, st.aborted, st.deltas, st.not_found, st.bad);
    return 0;
}
