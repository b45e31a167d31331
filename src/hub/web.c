/*
 * DESIGN: the pages are immutable for the life of the process, so each
 * answer carries a strong ETag (from the file's hash at build time) and
 * "Cache-Control: no-cache": browsers keep a copy and revalidate it, and an
 * unchanged page costs a 304 with no body. Every answer also carries a
 * Content-Security-Policy that allows only chatd's own scripts, styles and
 * WebSocket: a message that smuggled markup into the page could not run
 * code or send the token anywhere else.
 */
#include "hub/web.h"

#include <stdio.h>
#include <string.h>

#include "net/conn.h"
#include "http/request.h"

#define CSP                                                                                        \
    "Content-Security-Policy: default-src 'self'; script-src 'self'; style-src 'self'; "           \
    "img-src 'self' data:; connect-src 'self' ws: wss:; frame-ancestors 'none'; "                  \
    "base-uri 'none'; form-action 'none'\r\n"

/* The asset called name (len bytes), or NULL. */
static const struct web_asset *web_find(const char *name, size_t len)
{
    for (const struct web_asset *a = web_assets; a->name; a++)
        if (strlen(a->name) == len && memcmp(a->name, name, len) == 0)
            return a;
    return NULL;
}

static const char *content_type(const char *name)
{
    static const struct {
        const char *ext, *type;
    } types[] = {
        {".html", "text/html; charset=utf-8"},
        {".js", "text/javascript; charset=utf-8"},
        {".css", "text/css; charset=utf-8"},
        {".svg", "image/svg+xml"},
        {".png", "image/png"},
        {".ico", "image/x-icon"},
        {".json", "application/json"},
    };
    const char *dot = strrchr(name, '.');
    for (size_t i = 0; dot && i < sizeof types / sizeof types[0]; i++)
        if (strcmp(dot, types[i].ext) == 0)
            return types[i].type;
    return "application/octet-stream";
}

/* Does If-None-Match name this ETag (or "*")? */
static bool not_modified(const struct http_request *req, const char *etag)
{
    const struct http_header *h = http_request_header(req, "if-none-match");
    if (!h)
        return false;
    if (h->value_len == 1 && h->value[0] == '*')
        return true;
    size_t el = strlen(etag);
    for (size_t i = 0; i + el <= h->value_len; i++)
        if (memcmp(h->value + i, etag, el) == 0)
            return true;
    return false;
}

static void serve(struct conn *c, const struct http_request *req, const struct web_asset *a)
{
    bool keep = req->keep_alive && !req->has_body;
    if (!http_request_is_get(req) && !http_request_is_head(req)) {
        conn_http_error(c, 405, "method_not_allowed", "use GET", -1, "Allow: GET, HEAD\r\n", keep);
        return;
    }
    char extra[640];
    snprintf(extra, sizeof extra,
             "ETag: %s\r\n" CSP
             "X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n",
             a->etag);
    if (not_modified(req, a->etag))
        conn_http_send(c, 304, content_type(a->name), NULL, a->len, keep, true, "no-cache", extra);
    else
        conn_http_send(c, 200, content_type(a->name), a->data, a->len, keep,
                       http_request_is_head(req), "no-cache", extra);
}

bool web_route(struct conn *c, const struct http_request *req, const char *prefix,
               const char *rest, size_t rl)
{
    size_t pl = strlen(prefix);
    const char *name = NULL;
    size_t nl = 0;
    if (rl == 0 && pl > 0) {
        /* The pages load their assets relative to {prefix}/. */
        char loc[1024];
        int n = snprintf(loc, sizeof loc, "Location: %s/%s%.*s\r\n", prefix, req->query ? "?" : "",
                         req->query ? (int)req->query_len : 0, req->query ? req->query : "");
        if (n < 0 || (size_t)n >= sizeof loc)
            snprintf(loc, sizeof loc, "Location: %s/\r\n", prefix); /* query too long: drop it */
        conn_http_send(c, 308, "text/plain; charset=utf-8", NULL, 0,
                       req->keep_alive && !req->has_body, true, NULL, loc);
        return true;
    }
    if (rl == 1 && rest[0] == '/') {
        name = "chat.html";
        nl = strlen(name);
    } else if (rl == 6 && memcmp(rest, "/admin", 6) == 0) {
        name = "admin.html";
        nl = strlen(name);
    } else if (rl > 8 && memcmp(rest, "/shared/", 8) == 0 && !memchr(rest + 8, '/', rl - 8)) {
        /* A share link: the one read-only page, whatever the token (the
         * page asks {prefix}/api/shared/<token>, which judges it). */
        name = "shared.html";
        nl = strlen(name);
    } else if (rl > 8 && memcmp(rest, "/assets/", 8) == 0) {
        name = rest + 8;
        nl = rl - 8;
        if (memchr(name, '/', nl) || name[0] == '.')
            name = NULL;
    } else {
        return false;
    }
    const struct web_asset *a = name ? web_find(name, nl) : NULL;
    if (!a) {
        conn_http_error(c, 404, "not_found", "no such page", -1, NULL,
                        req->keep_alive && !req->has_body);
        return true;
    }
    serve(c, req, a);
    return true;
}
