/*
 * http_client: chatd's outbound HTTP client, for the assistant's model
 * providers (streamed answers) and the help webhook (JSON POSTs).
 *
 * One client is one thread with its own uv loop and one libcurl multi
 * handle driven by that loop (a uv_poll_t per socket, one uv_timer_t for
 * curl's timeouts), so thousands of concurrent requests and their
 * connections share one thread, and no worker ever blocks on the network.
 * The multi handle keeps a pool of connections: requests to the same host
 * reuse them, and HTTPS endpoints that offer HTTP/2 multiplex many requests
 * over one connection.
 *
 * Threads.
 *   - http_client_new and http_client_free: the owner (main), never the
 *     client's own thread.
 *   - http_client_submit and http_client_cancel: any thread, including the
 *     client's own (from inside a callback).
 *   - Every callback of a request (on_head, on_body, on_done) runs on the
 *     client's thread, one at a time, never on the thread that submitted.
 *     A caller that lives on a worker must hand what it learns to that
 *     worker through the worker's inbox (net/worker.h worker_post), and
 *     must not touch worker state from a callback. Callbacks must not
 *     block: every other request of the client waits while one runs.
 *
 * Submitting. http_client_submit copies everything the request needs
 * (method, URL, headers, body) and puts it on the client's inbox (a
 * util/fifo with a uv_async_t, like a worker's); the client's thread starts
 * it. The caller may free its own copies as soon as submit returns; `arg`
 * is borrowed and must stay valid until on_done has returned.
 *
 * The one rule of ending: on_done is called exactly once for every request
 * that http_client_submit accepted (returned 0), on the client's thread, as
 * the request's last callback; after it returns, the client never uses that
 * request's `arg` again. A submit that fails calls no callback at all. This
 * holds for every way a request ends: complete, failed, timed out,
 * cancelled, stopped by a callback, or cut short by http_client_free.
 *
 * Cancelling. http_client_cancel(c, id) asks the client's thread to end the
 * request; it does not wait. If the request is still running when the
 * client's thread gets to it, it ends with on_done(-ECANCELED); if it had
 * already ended (or ends first), the cancel does nothing and the request
 * keeps the result it had. So on_done may run before, during or after
 * cancel returns, and its result may not be -ECANCELED: a caller that
 * cancels still waits for on_done before it frees `arg`.
 *
 * Results (on_done's `result`):
 *   0            a whole response arrived: look at `status` (any HTTP
 *                status, 3xx included: redirects are never followed, so a
 *                webhook redirect is not obeyed, and the caller treats it
 *                as the failure it is).
 *   -ECANCELED   http_client_cancel, or http_client_free while it ran.
 *   -ETIMEDOUT   a timeout expired; `error` says which ("first-byte
 *                timeout" or "total timeout") and its value in ms.
 *   -EMSGSIZE    the body is larger than max_response_bytes, or the head
 *                larger than HTTP_CLIENT_MAX_HEAD.
 *   -ECONNREFUSED, -EHOSTUNREACH (name not resolved or host not reached),
 *   -ECONNRESET (the peer closed or reset the connection before the
 *                response was complete), -EPROTO (TLS failure, certificate
 *                not verified, or HTTP the client could not parse),
 *   -EINVAL (a URL or option libcurl refused), -ENOMEM, -EIO (anything
 *                else).
 *   Any negative errno a callback returned (see on_head and on_body).
 * `error` is a short English text for logs and for the people reading them
 * ("" on success); libcurl's own words when libcurl failed. It never holds
 * a header value or a body byte.
 *
 * Delayed requests. A request with delay_ms waits that long on the client's
 * thread (a timer, no connection, no libcurl handle) before it starts, as a
 * retry's back-off does. Neither timeout counts while it waits: both count
 * from the moment it starts. A waiting request is accepted like any other:
 * it counts against max_requests, http_client_cancel ends it with
 * -ECANCELED, http_client_free ends it with -ECANCELED, and on_done is
 * called exactly once, as always.
 *
 * Limits. Each client accepts at most max_requests requests at once,
 * counting those queued, waiting (delay_ms) and running, until their
 * on_done has been called: past it http_client_submit returns -EBUSY at
 * once. That is the clear error past the global cap that callers turn into
 * "busy, try later"; nothing queues behind the cap. Connections are
 * limited per host and in total (options below); a request that waits for
 * a free connection counts against its timeouts.
 *
 * Security. TLS peer and host verification is always on (there is no option
 * to turn it off); ca_file adds a private authority for private endpoints.
 * Only http:// and https:// URLs are accepted. No proxy is taken from the
 * environment (http_proxy and friends are ignored) unless `proxy` is
 * given. Request bodies and header values are never logged; URLs are
 * logged without their userinfo and query (which may hold keys).
 */
#ifndef CHATD_NET_HTTP_CLIENT_H
#define CHATD_NET_HTTP_CLIENT_H

#include <stddef.h>
#include <stdint.h>

/* A response head larger than this fails the request with -EMSGSIZE. */
#define HTTP_CLIENT_MAX_HEAD (64 * 1024)
/* The URL and each request header line are at most this long (-EINVAL). */
#define HTTP_CLIENT_MAX_URL 8192
#define HTTP_CLIENT_MAX_HEADER_LINE 8192
/* Request headers per request, at most (-EINVAL). */
#define HTTP_CLIENT_MAX_HEADERS 64
/* Defaults of struct http_client_options (used for a 0 field). */
#define HTTP_CLIENT_DEFAULT_MAX_REQUESTS 1024
#define HTTP_CLIENT_DEFAULT_MAX_HOST_CONNS 256
#define HTTP_CLIENT_DEFAULT_MAX_TOTAL_CONNS 1024
/* Default max_response_bytes (a 0 field). */
#define HTTP_CLIENT_DEFAULT_MAX_RESPONSE (8u * 1024 * 1024)

struct http_client;

/* Per-client settings; http_client_new copies the strings. */
struct http_client_options {
    const char *ca_file;            /* PEM file of authorities to trust, for private
                                       endpoints: it replaces the system's bundle
                                       (Debian's libcurl still looks in
                                       /etc/ssl/certs); NULL: the system's store.
                                       Must be readable at http_client_new. */
    const char *proxy;              /* proxy URL; NULL or "": none, whatever the
                                       environment says */
    unsigned max_requests;          /* accepted at once (queued + running); past it
                                       submit returns -EBUSY; 0: the default */
    unsigned max_host_connections;  /* open connections per host; requests
                                       past it wait for one; 0: default */
    unsigned max_total_connections; /* open connections in all; 0: default */
    /* Called on the client's thread once per turn of its loop, after the
     * callbacks of that turn (and on turns without any): a caller that
     * gathers what its callbacks learn can hand it on in one batch here.
     * Must not block. NULL: none. */
    void (*after_callbacks)(void *arg);
    void *after_arg;
};

/* A request header: two NUL-terminated strings, sent as "name: value".
 * Neither may hold CR or LF (submit returns -EINVAL). */
struct http_client_field {
    const char *name;
    const char *value;
};

/* A response header, as slices into the client's buffer: valid only during
 * the on_head call that passes it. Names keep the server's case; the value
 * has no leading or trailing white space. */
struct http_client_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};

/* What one request does with its response; every callback runs on the
 * client's thread (see "Threads" above). */
struct http_client_callbacks {
    /* The final response head (1xx heads are skipped): status and headers,
     * such as Retry-After. Called at most once, before any on_body; not
     * called when the request fails before a head arrives. Return 0 to go
     * on, or a negative errno to end the request: on_done then gets that
     * errno. NULL: ignore heads. */
    int (*on_head)(void *arg, uint64_t id, int status, const struct http_client_header *headers,
                   size_t nheaders);
    /* Body bytes as they arrive (chunked framing removed, nothing
     * decompressed), in order: an event stream is parsed as it comes. The
     * bytes are valid only during the call. Together the calls never pass
     * more than max_response_bytes. Return 0 to go on, or a negative errno
     * to end the request with it. NULL: ignore the body. */
    int (*on_body)(void *arg, uint64_t id, const char *data, size_t len);
    /* The end, exactly once per accepted request (see "The one rule of
     * ending" above). status: the final response's HTTP status, 0 when no
     * head arrived; error: "" on success, else a short text. Both strings
     * are valid only during the call. Required. */
    void (*on_done)(void *arg, uint64_t id, int result, int status, const char *error);
};

/* One request; http_client_submit copies every byte it points at. */
struct http_client_request {
    const char *method;                      /* "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD";
                                                NULL: POST with a body, else GET */
    const char *url;                         /* http:// or https://, at most HTTP_CLIENT_MAX_URL */
    const struct http_client_field *headers; /* nheaders entries (copied) */
    size_t nheaders;
    const void *body; /* sent as is (copied); NULL with body_len 0: none.
                         Set Content-Type among the headers: none is
                         added. */
    size_t body_len;
    unsigned first_byte_timeout_ms;         /* from submit (or from the end of
                                               delay_ms) to the first byte of the
                                               response (head included); 0: none */
    unsigned total_timeout_ms;              /* from submit (or from the end of
                                               delay_ms) to the last byte; 0: none.
                                               A stream that stalls is ended by this
                                               one only. */
    unsigned delay_ms;                      /* start the request this long after the
                                               client's thread takes it (a retry's
                                               back-off); 0: at once. See "Delayed
                                               requests" above. */
    size_t max_response_bytes;              /* body bytes; 0: the default */
    const struct http_client_callbacks *cb; /* borrowed: lives until on_done */
    void *arg;                              /* borrowed, first argument of each */
};

/* Initialise libcurl for the process: once, in main, before any thread
 * exists (curl's global state is not thread-safe to set up). 0, or -EIO. */
int http_client_global_init(void);
/* Undo http_client_global_init, at exit, after every client is freed. */
void http_client_global_cleanup(void);

/* Make a client and start its thread. opts may be NULL (all defaults).
 * Owner thread. 0 and *out, or a negative errno: the ca_file's access(2)
 * error (-ENOENT, -EACCES: a bad configuration is told at start, not at
 * the first request), -ENOMEM, or -EIO when libuv's or libcurl's setup
 * fails; nothing to free then. */
int http_client_new(struct http_client **out, const struct http_client_options *opts);

/* Stop the client and free it: every request not yet ended (queued or
 * running) ends with on_done(-ECANCELED) on the client's thread, connections
 * close, the thread is joined, then memory is freed. When it returns, no
 * callback runs any more. Owner thread only, never from a callback; no
 * other thread may call into c once this starts. NULL is a no-op. */
void http_client_free(struct http_client *c);

/*
 * Start a request (see "Submitting"). Any thread. On success returns 0 and
 * sets *id (nonzero, unique for this client; id may be NULL) and on_done
 * will be called exactly once. On failure no callback is ever called:
 *   -EINVAL     no URL, not http(s), too long, a CR/LF/control byte in the
 *               URL, method or a header, a method or header name that is
 *               not a token, Content-Length or Transfer-Encoding among the
 *               headers (the client frames the body), more than
 *               HTTP_CLIENT_MAX_HEADERS headers, body NULL with body_len > 0, no cb or on_done;
 *   -EBUSY      max_requests requests are already accepted (the cap);
 *   -ENOMEM     the copy could not be made;
 *   -ESHUTDOWN  http_client_free has begun.
 */
int http_client_submit(struct http_client *c, const struct http_client_request *req, uint64_t *id);

/* Ask for request `id` to end with -ECANCELED (see "Cancelling": no wait,
 * no promise about a request that has already ended). Any thread. 0: the
 * cancel is queued; the client's thread ends the request if it is still
 * running then, and does nothing otherwise (ended, or never submitted).
 * -ESHUTDOWN once http_client_free has begun (it ends every request
 * itself); -EBUSY when max_requests cancels already wait on the inbox;
 * -ENOMEM. On an error the request goes on as if cancel was not called. */
int http_client_cancel(struct http_client *c, uint64_t id);

/* Requests accepted and not yet ended: a snapshot for metrics and tests. */
unsigned http_client_inflight(struct http_client *c);

/* The first header named `name` (ASCII case-insensitive) in an on_head
 * list, or NULL. A helper for callbacks (Retry-After, Content-Type). */
const struct http_client_header *http_client_header_find(const struct http_client_header *h,
                                                         size_t n, const char *name);

#endif
