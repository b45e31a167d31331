/*
 * request: HTTP/1.1 request heads, parsed with http-parser. Pure: no I/O.
 *
 * The connection layer gathers bytes until http_head_end finds the blank line
 * that ends a head (refusing heads over HTTP_MAX_HEAD bytes), then calls
 * http_request_parse on exactly those bytes. The parsed request points into
 * the caller's buffer (nothing is copied), so it is valid as long as that
 * buffer is. Any thread; a request belongs to its caller.
 */
#ifndef CHATD_HTTP_REQUEST_H
#define CHATD_HTTP_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>
#include <stdint.h>

#define HTTP_MAX_HEAD 16384  /* bytes of request line + headers; more: 431 */
#define HTTP_MAX_BODY 8192   /* bytes of a request body (Content-Length only); more: 413 */
#define HTTP_MAX_HEADERS 100 /* header lines; more: 431 */

struct http_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};

struct http_request {
    int method;              /* enum http_method */
    unsigned short major, minor;
    const char *url;         /* request target as sent */
    size_t url_len;
    const char *path;        /* url up to '?' */
    size_t path_len;
    const char *query;       /* after '?', NULL if none */
    size_t query_len;
    bool keep_alive;         /* HTTP/1.1 default or Connection: keep-alive */
    bool has_body;           /* Content-Length > 0 or Transfer-Encoding */
    bool has_transfer_encoding;
    int64_t content_length;  /* -1 when absent */
    const char *body;        /* the body (set by the connection layer), NULL when none */
    size_t body_len;
    unsigned nheaders;
    struct http_header headers[HTTP_MAX_HEADERS];
};

/*
 * Find the end of a request head in buf[0..len): returns the offset just past
 * the blank line ("\r\n\r\n", or bare "\n\n"), or 0 if it has not arrived.
 * from: where to resume scanning (bytes before it were already scanned and
 * held no blank line). The blank line may straddle two calls: resume at
 * most 3 bytes before the old end (from = old_len > 3 ? old_len - 3 : 0),
 * as the connection layer does, or a "\r\n\r\n" split across reads is
 * missed.
 */
size_t http_head_end(const char *buf, size_t len, size_t from);

/*
 * Parse one complete head of len bytes. Returns 0 on success, or the HTTP
 * status to answer with: 400 (malformed), 431 (too many header lines), 505
 * (not HTTP/1.x).
 */
int http_request_parse(struct http_request *req, const char *buf, size_t len);

/* First header of that name (ASCII case-insensitive), or NULL. */
const struct http_header *http_request_header(const struct http_request *req, const char *name);

/* How many headers have that name. */
unsigned http_request_header_count(const struct http_request *req, const char *name);

/* Does a comma-separated header value contain token (case-insensitive)? */
bool http_token_list_has(const char *value, size_t len, const char *token);

/*
 * Look up a query parameter and percent-decode its value into out (cap bytes
 * including the NUL). Returns the decoded length, -ENOENT when absent,
 * -ENOSPC when it does not fit, -EINVAL on a bad escape.
 */
int http_query_param(const struct http_request *req, const char *name, char *out, size_t cap);

/* Is the method GET? HEAD? (http-parser numbering kept out of callers). */
bool http_request_is_get(const struct http_request *req);
bool http_request_is_head(const struct http_request *req);
const char *http_request_method_name(const struct http_request *req);

/* An RFC 9110 token character (header names, methods). */
static inline bool http_is_tchar(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* Is path[0..len) exactly the literal route? (Routes compare the path
 * after the prefix with this.) */
static inline bool http_path_is(const char *path, size_t len, const char *route)
{
    size_t rl = strlen(route);
    return len == rl && memcmp(path, route, rl) == 0;
}

#endif
