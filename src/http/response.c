/*
 * DESIGN: responses are small and built with snprintf into a caller's buffer;
 * the error body goes through jansson so that any message text is escaped
 * correctly.
 */
#include "http/response.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>

const char *http_status_text(int status)
{
    switch (status) {
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 304: return "Not Modified";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}

size_t http_format_head(char *out, size_t cap, int status, const char *content_type,
                        size_t content_length, bool keep_alive, const char *cache_control,
                        const char *extra_headers)
{
    int n = snprintf(out, cap,
                     "HTTP/1.1 %d %s\r\n"
                     "Server: chatd\r\n"
                     "Content-Type: %s\r\n"
                     "Content-Length: %zu\r\n"
                     "Connection: %s\r\n"
                     "Cache-Control: %s\r\n"
                     "%s\r\n",
                     status, http_status_text(status), content_type, content_length,
                     keep_alive ? "keep-alive" : "close", cache_control ? cache_control : "no-store",
                     extra_headers ? extra_headers : "");
    if (n < 0 || (size_t)n >= cap)
        return 0;
    return (size_t)n;
}

size_t http_error_body(char *out, size_t cap, const char *code, const char *message,
                       int64_t retry_after_ms)
{
    json_t *err = json_object();
    json_object_set_new(err, "code", json_string(code));
    json_object_set_new(err, "message", json_string(message));
    if (retry_after_ms >= 0)
        json_object_set_new(err, "retry_after", json_integer(retry_after_ms));
    json_t *root = json_object();
    json_object_set_new(root, "error", err);
    size_t n = json_dumpb(root, out, cap, JSON_COMPACT);
    json_decref(root);
    return n <= cap ? n : 0;
}
