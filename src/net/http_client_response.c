/*
 * DESIGN: the response side of a request, inside libcurl's header and
 * write callbacks on the client's thread: the final head is gathered and
 * handed to on_head once, body bytes go to on_body as they arrive, and a
 * refusal (a cap, a callback's error) is recorded on the request for
 * http_client__end_curl to report. See http_client.c for the rest.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "net/http_client.h"
#include "net/http_client_int.h"

/* Refuse more data: curl ends the transfer with a write error, and
 * http_client__end_curl reports `rc` and the text instead. Returns what the
 * callback returns to curl to refuse. */
static size_t fail(struct req *r, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static size_t fail(struct req *r, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->why, sizeof r->why, fmt, ap);
    va_end(ap);
    r->fail = rc;
    return 0;
}

static bool is_ws(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n';
}

/* Hand the gathered head to on_head as (name, value) slices. */
static int deliver_head(struct req *r)
{
    if (!r->cb->on_head)
        return 0;
    size_t max = 0;
    for (size_t i = 0; i < r->head_len; i++)
        max += r->head[i] == '\n';
    struct http_client_header *hv = NULL;
    if (max && !(hv = malloc(max * sizeof *hv)))
        return -ENOMEM;
    size_t n = 0;
    const char *p = r->head, *end = r->head + r->head_len;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *next = eol ? eol + 1 : end;
        const char *colon = memchr(p, ':', (size_t)(next - p));
        /* A line folded onto the one before (obsolete) or without a colon
         * is not a header of its own: skipped. */
        if (colon && colon > p && !is_ws(*p)) {
            const char *v = colon + 1, *ve = next;
            while (v < ve && is_ws(*v))
                v++;
            while (ve > v && is_ws(ve[-1]))
                ve--;
            const char *ne = colon;
            while (ne > p && is_ws(ne[-1]))
                ne--;
            hv[n++] = (struct http_client_header){p, (size_t)(ne - p), v, (size_t)(ve - v)};
        }
        p = next;
    }
    int rc = r->cb->on_head(r->arg, r->id, r->status, hv, n);
    free(hv);
    return rc < 0 ? rc : 0;
}

/* CURLOPT_HEADERFUNCTION: one whole header line per call (HTTP/1 and
 * HTTP/2 alike), status lines included, for every head (1xx, the final
 * one, trailers). */
size_t http_client__on_header(char *p, size_t size, size_t nitems, void *rp)
{
    struct req *r = rp;
    size_t len = size * nitems;
    r->got_byte = true;
    if (r->head_done)
        return len; /* trailers: not reported */
    if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) {
        const char *sp = memchr(p, ' ', len);
        int st = 0;
        if (sp && (size_t)(p + len - sp) >= 4)
            for (int i = 1; i <= 3 && sp[i] >= '0' && sp[i] <= '9'; i++)
                st = st * 10 + (sp[i] - '0');
        r->head_status = st;
        r->head_len = 0;
        return len;
    }
    if (len <= 2 && (len == 0 || p[0] == '\r' || p[0] == '\n')) { /* end of a head */
        if (r->head_status >= 100 && r->head_status < 200) {
            r->head_len = 0; /* 100 Continue, 103 Early Hints: not the response */
            return len;
        }
        r->head_done = true;
        r->status = r->head_status;
        int rc = deliver_head(r);
        free(r->head);
        r->head = NULL;
        r->head_len = r->head_cap = 0;
        return rc < 0 ? fail(r, rc, "%s", rc == -ENOMEM ? "out of memory" : "stopped by on_head")
                      : len;
    }
    if (len > HTTP_CLIENT_MAX_HEAD - r->head_len)
        return fail(r, -EMSGSIZE, "response head over %d bytes", HTTP_CLIENT_MAX_HEAD);
    if (r->head_len + len > r->head_cap) {
        size_t cap = r->head_cap ? r->head_cap * 2 : 1024;
        while (cap < r->head_len + len)
            cap *= 2;
        char *h = realloc(r->head, cap);
        if (!h)
            return fail(r, -ENOMEM, "%s", "out of memory");
        r->head = h;
        r->head_cap = cap;
    }
    memcpy(r->head + r->head_len, p, len);
    r->head_len += len;
    return len;
}

/* CURLOPT_WRITEFUNCTION: body bytes, as they arrive. */
size_t http_client__on_body(char *p, size_t size, size_t nitems, void *rp)
{
    struct req *r = rp;
    size_t len = size * nitems;
    r->got_byte = true;
    if (len == 0)
        return 0;
    if (len > r->max_body - r->received)
        return fail(r, -EMSGSIZE, "response body over %zu bytes", r->max_body);
    r->received += len;
    if (r->cb->on_body) {
        int rc = r->cb->on_body(r->arg, r->id, p, len);
        if (rc < 0)
            return fail(r, rc, "%s", "stopped by on_body");
    }
    return len;
}
