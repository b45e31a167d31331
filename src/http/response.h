/*
 * response: HTTP/1.1 response heads and chatd's JSON error bodies. Pure,
 * any thread.
 *
 * Every error chatd answers over HTTP has the body
 *   {"error":{"code":"...","message":"...","retry_after":ms}}
 * (retry_after only when known), as docs/protocol.md section 1 fixes.
 */
#ifndef CHATD_HTTP_RESPONSE_H
#define CHATD_HTTP_RESPONSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Reason phrase of a status ("Not Found"); "Unknown" when not listed. */
const char *http_status_text(int status);

/*
 * Write a response head into out (cap bytes). cache_control is the value of
 * Cache-Control (NULL: "no-store", right for every API answer). extra_headers
 * is NULL or complete "Name: value\r\n" lines. Returns the length, or 0 if it
 * does not fit.
 */
size_t http_format_head(char *out, size_t cap, int status, const char *content_type,
                        size_t content_length, bool keep_alive, const char *cache_control,
                        const char *extra_headers);

/*
 * Write the JSON error body into out. retry_after_ms < 0 leaves it out.
 * message is escaped as needed. Returns the length, or 0 if it does not fit.
 */
size_t http_error_body(char *out, size_t cap, const char *code, const char *message,
                       int64_t retry_after_ms);

#endif
