/*
 * web: the chat and admin pages and their assets, compiled into the binary
 * from web/ (cmake/embed_web.cmake), and the routes that serve them:
 *   {prefix}/          web/chat.html
 *   {prefix}/admin     web/admin.html
 *   {prefix}/assets/N  web/N (flat: no folders)
 * Read-only data; any thread.
 */
#ifndef CHATD_WEB_H
#define CHATD_WEB_H

#include <stdbool.h>
#include <stddef.h>

struct conn;
struct http_request;

struct web_asset {
    const char *name; /* file name in web/; NULL ends the table */
    const unsigned char *data;
    size_t len;
    const char *etag; /* quoted, from the content's SHA-256 */
};

/* Generated into the build folder from web/ (cmake/embed_web.cmake). */
extern const struct web_asset web_assets[];

/* Answer the request if rest (the path after the prefix, which the caller
 * matched) is one of the web routes; false when it is not (the caller goes
 * on matching). prefix is used for the bare-prefix redirect. */
bool web_route(struct conn *c, const struct http_request *req, const char *prefix,
               const char *rest, size_t rest_len);

#endif
