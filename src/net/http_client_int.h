/*
 * http_client_int: what http_client.c and http_client_response.c share:
 * the client's and a request's private state. Not for use outside
 * src/net/. Everything here belongs to the client's thread unless a field
 * says otherwise (see http_client.h for the threads).
 */
#ifndef CHATD_NET_HTTP_CLIENT_INT_H
#define CHATD_NET_HTTP_CLIENT_INT_H

#include <curl/curl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "util/fifo.h"
#include "util/idmap.h"
#include "util/list.h"

struct http_client_callbacks;

enum msg_kind { MSG_SUBMIT, MSG_CANCEL, MSG_STOP };

/* What travels on the inbox; the first member of each message. */
struct msg {
    struct fifo_node node;
    enum msg_kind kind;
};

struct cancel_msg {
    struct msg m;
    uint64_t id;
};

/* One watched socket: curl's socket and our poll handle on it. Freed in the
 * poll handle's close callback. */
struct sock {
    uv_poll_t poll;
    struct list_node link; /* on c->socks until closed */
    curl_socket_t fd;
};

/* One request, from submit to the close callback of its timer. Everything
 * after `m` is touched by the client's thread only, once it took the
 * request off the inbox (the fifo's lock orders the submitter's writes
 * before). */
struct req {
    struct msg m; /* MSG_SUBMIT on the inbox */
    struct http_client *c;
    uint64_t id;
    const struct http_client_callbacks *cb; /* borrowed */
    void *arg;                              /* borrowed */

    /* the copy made by submit: all point into this allocation's tail */
    const char *method; /* validated token */
    const char *url;
    char *lines; /* nlines "Name: value" strings, back to back */
    size_t nlines;
    const char *body; /* NULL: no body */
    size_t body_len;
    bool has_content_type; /* among the caller's headers */
    unsigned first_byte_ms, total_ms;
    unsigned delay_ms; /* wait this long on the client's thread before starting */
    size_t max_body;
    uint64_t submitted_ns; /* uv_hrtime at submit */

    /* client thread */
    CURL *easy;              /* owned; NULL until started */
    struct curl_slist *hdrs; /* owned */
    struct list_node link;   /* on c->running while in the multi handle, on
                                c->waiting while delayed */
    uv_timer_t timer;        /* the delay, then the deadlines; closing it frees
                                the request */
    bool timer_open;         /* timer initialised (it must be closed) */
    bool in_multi;           /* added to c->multi, and in c->by_id */
    bool waiting;            /* delayed: on c->waiting and in c->by_id, not
                                yet in the multi handle */
    bool ended;              /* on_done was called */
    bool got_byte;           /* a byte of the response arrived */
    bool head_done;          /* the final head was seen */
    uint64_t started_ms;     /* loop time when started */
    uint64_t fb_deadline;    /* loop time; 0: none */
    uint64_t total_deadline; /* loop time; 0: none */
    size_t received;         /* body bytes so far */
    int status;              /* final status; 0 until the head is done */
    int head_status;         /* status of the head being read */
    char *head;              /* header lines of the head being read, owned */
    size_t head_len, head_cap;
    int fail;                   /* why a callback refused more data; 0: none */
    char why[160];              /* the text that goes with `fail` or a timeout */
    char ebuf[CURL_ERROR_SIZE]; /* libcurl's error text */
};

struct http_client {
    /* read-only after http_client_new */
    unsigned max_requests;
    unsigned max_host_conns;
    unsigned max_total_conns;
    char *ca_file; /* owned; NULL: system store */
    char *proxy;   /* owned; "" disables proxies */

    /* shared */
    struct fifo inbox;    /* struct msg, from any thread; own lock */
    atomic_uint inflight; /* accepted and not yet ended */
    atomic_uint cancels;  /* cancel messages on the inbox */
    atomic_uint_fast64_t next_id;
    struct msg stop_msg; /* pushed once by http_client_free */

    /* the client's thread */
    uv_thread_t thread; /* joined by http_client_free */
    uv_loop_t loop;
    uv_async_t wakeup;        /* inbox pushes */
    uv_timer_t timer;         /* libcurl's timeout */
    uv_check_t after;         /* runs after_callbacks once per loop turn */
    void (*after_callbacks)(void *arg); /* read-only after new; NULL: none */
    void *after_arg;
    CURLM *multi;             /* owned; NULL once cleaned up */
    struct idmap by_id;       /* id -> struct req *, requests in the multi
                                 or waiting */
    struct list_node running; /* struct req.link */
    struct list_node waiting; /* struct req.link, requests in their delay */
    struct list_node socks;   /* struct sock.link, watched sockets */
    bool stopping;            /* the stop message was taken */
    bool in_curl;             /* inside curl_multi_socket_action */
};

/* End r after libcurl finished it with code (client thread). */
void http_client__end_curl(struct req *r, CURLcode code);
/* libcurl's CURLOPT_HEADERFUNCTION and CURLOPT_WRITEFUNCTION for a request
 * (client thread). */
size_t http_client__on_header(char *p, size_t size, size_t nitems, void *rp);
size_t http_client__on_body(char *p, size_t size, size_t nitems, void *rp);

#endif
