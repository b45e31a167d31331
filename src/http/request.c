/*
 * DESIGN: http-parser is incremental, but chatd hands it whole heads: the
 * connection buffers bytes until the blank line (bounded by HTTP_MAX_HEAD), so
 * every header name and value arrives in one piece and can be recorded as a
 * pointer into that buffer. Bodies are never parsed here; a caller that sees
 * has_body answers and closes, since no route of chatd takes a body.
 */
#include "http/request.h"

#include <errno.h>
#include <http_parser.h>
#include <string.h>
#include <strings.h>

#include "util/hex.h"

size_t http_head_end(const char *buf, size_t len, size_t from)
{
    /* From line end to line end (memchr: a head is a few hundred bytes,
     * a dozen lines). */
    const char *p = from < len ? memchr(buf + from, '\n', len - from) : NULL;
    while (p) {
        size_t i = (size_t)(p - buf);
        if (i + 1 < len && buf[i + 1] == '\n')
            return i + 2;
        if (i + 2 < len && buf[i + 1] == '\r' && buf[i + 2] == '\n')
            return i + 3;
        p = memchr(p + 1, '\n', len - i - 1);
    }
    return 0;
}

struct parse_ctx {
    struct http_request *req;
    bool last_was_value;
    bool too_many;
};

static int on_url(http_parser *p, const char *at, size_t len)
{
    struct parse_ctx *ctx = p->data;
    struct http_request *req = ctx->req;
    if (!req->url)
        req->url = at;
    req->url_len = (size_t)(at + len - req->url);
    return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    struct parse_ctx *ctx = p->data;
    struct http_request *req = ctx->req;
    if (req->nheaders == 0 || ctx->last_was_value) {
        if (req->nheaders == HTTP_MAX_HEADERS) {
            ctx->too_many = true;
            return 1;
        }
        struct http_header *h = &req->headers[req->nheaders++];
        h->name = at;
        h->name_len = 0;
        h->value = NULL;
        h->value_len = 0;
        ctx->last_was_value = false;
    }
    struct http_header *h = &req->headers[req->nheaders - 1];
    h->name_len = (size_t)(at + len - h->name);
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    struct parse_ctx *ctx = p->data;
    struct http_request *req = ctx->req;
    if (req->nheaders == 0)
        return 1;
    struct http_header *h = &req->headers[req->nheaders - 1];
    if (!h->value)
        h->value = at;
    h->value_len = (size_t)(at + len - h->value);
    ctx->last_was_value = true;
    return 0;
}

static int on_headers_complete(http_parser *p)
{
    struct parse_ctx *ctx = p->data;
    struct http_request *req = ctx->req;
    req->method = (int)p->method;
    req->major = p->http_major;
    req->minor = p->http_minor;
    req->keep_alive = http_should_keep_alive(p) != 0;
    req->has_transfer_encoding = p->uses_transfer_encoding || (p->flags & F_CHUNKED);
    req->content_length = (p->flags & F_CONTENTLENGTH) ? (int64_t)p->content_length : -1;
    req->has_body = req->has_transfer_encoding || req->content_length > 0;
    /* Tell the parser there is no body to read: the head is all we gave it. */
    return 1;
}

int http_request_parse(struct http_request *req, const char *buf, size_t len)
{
    memset(req, 0, sizeof *req);
    req->content_length = -1;
    if (len > HTTP_MAX_HEAD)
        return 431;

    /* Built per call: a few stores, and no shared mutable state at all. */
    http_parser_settings settings;
    http_parser_settings_init(&settings);
    settings.on_url = on_url;
    settings.on_header_field = on_header_field;
    settings.on_header_value = on_header_value;
    settings.on_headers_complete = on_headers_complete;

    http_parser parser;
    struct parse_ctx ctx = {.req = req};
    http_parser_init(&parser, HTTP_REQUEST);
    parser.data = &ctx;
    http_parser_execute(&parser, &settings, buf, len);
    if (ctx.too_many)
        return 431;
    enum http_errno err = HTTP_PARSER_ERRNO(&parser);
    if (err != HPE_OK && err != HPE_CB_headers_complete)
        return 400;
    if (!req->url)
        return 400;
    if (req->major != 1)
        return 505;
    /* Both framings at once is how request smuggling starts. */
    if (req->has_transfer_encoding && http_request_header(req, "content-length"))
        return 400;
    /* The parser is lenient where chatd is not: a header name must be a
     * token, and a value holds no control character (a NUL, a folded line's
     * CR LF); the spaces around a value are not part of it. */
    for (unsigned i = 0; i < req->nheaders; i++) {
        struct http_header *h = &req->headers[i];
        if (h->name_len == 0)
            return 400;
        for (size_t k = 0; k < h->name_len; k++)
            if (!http_is_tchar((unsigned char)h->name[k]))
                return 400;
        while (h->value_len > 0 && (h->value[0] == ' ' || h->value[0] == '\t')) {
            h->value++;
            h->value_len--;
        }
        while (h->value_len > 0 &&
               (h->value[h->value_len - 1] == ' ' || h->value[h->value_len - 1] == '\t'))
            h->value_len--;
        for (size_t k = 0; k < h->value_len; k++) {
            unsigned char c = (unsigned char)h->value[k];
            if ((c < 0x20 && c != '\t') || c == 0x7f)
                return 400;
        }
        if (!h->value)
            h->value = h->name + h->name_len; /* an empty value: a valid, empty slice */
    }

    const char *q = memchr(req->url, '?', req->url_len);
    req->path = req->url;
    if (q) {
        req->path_len = (size_t)(q - req->url);
        req->query = q + 1;
        req->query_len = req->url_len - req->path_len - 1;
    } else {
        req->path_len = req->url_len;
    }
    /* Drop a fragment, should a client send one. */
    const char *frag = memchr(req->path, '#', req->path_len);
    if (frag) {
        req->path_len = (size_t)(frag - req->path);
        req->query = NULL;
        req->query_len = 0;
    } else if (req->query && (frag = memchr(req->query, '#', req->query_len)) != NULL) {
        req->query_len = (size_t)(frag - req->query);
    }
    return 0;
}

const struct http_header *http_request_header(const struct http_request *req, const char *name)
{
    size_t n = strlen(name);
    for (unsigned i = 0; i < req->nheaders; i++) {
        const struct http_header *h = &req->headers[i];
        if (h->name_len == n && strncasecmp(h->name, name, n) == 0)
            return h;
    }
    return NULL;
}

unsigned http_request_header_count(const struct http_request *req, const char *name)
{
    size_t n = strlen(name);
    unsigned count = 0;
    for (unsigned i = 0; i < req->nheaders; i++) {
        const struct http_header *h = &req->headers[i];
        if (h->name_len == n && strncasecmp(h->name, name, n) == 0)
            count++;
    }
    return count;
}

bool http_token_list_has(const char *value, size_t len, const char *token)
{
    size_t tlen = strlen(token);
    size_t i = 0;
    while (i < len) {
        while (i < len && (value[i] == ' ' || value[i] == '\t' || value[i] == ','))
            i++;
        size_t start = i;
        while (i < len && value[i] != ',')
            i++;
        size_t end = i;
        while (end > start && (value[end - 1] == ' ' || value[end - 1] == '\t'))
            end--;
        if (end - start == tlen && strncasecmp(value + start, token, tlen) == 0)
            return true;
    }
    return false;
}

int http_query_param(const struct http_request *req, const char *name, char *out, size_t cap)
{
    if (!req->query)
        return -ENOENT;
    if (cap == 0)
        return -ENOSPC; /* not even room for the terminating NUL */
    size_t nlen = strlen(name);
    const char *p = req->query, *end = req->query + req->query_len;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *pe = amp ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(pe - p));
        const char *ke = eq ? eq : pe;
        if ((size_t)(ke - p) == nlen && memcmp(p, name, nlen) == 0) {
            const char *v = eq ? eq + 1 : pe;
            size_t o = 0;
            while (v < pe) {
                char c = *v++;
                if (c == '%') {
                    if (pe - v < 2)
                        return -EINVAL;
                    int hi = hex_value(v[0]), lo = hex_value(v[1]);
                    if (hi < 0 || lo < 0)
                        return -EINVAL;
                    c = (char)(hi << 4 | lo);
                    v += 2;
                } else if (c == '+') {
                    c = ' ';
                }
                if (o + 1 >= cap)
                    return -ENOSPC;
                out[o++] = c;
            }
            out[o] = '\0';
            return (int)o;
        }
        p = pe + 1;
    }
    return -ENOENT;
}

bool http_request_is_get(const struct http_request *req) { return req->method == HTTP_GET; }
bool http_request_is_head(const struct http_request *req) { return req->method == HTTP_HEAD; }

const char *http_request_method_name(const struct http_request *req)
{
    return http_method_str((enum http_method)req->method);
}
