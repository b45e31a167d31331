/*
 * DESIGN: the libwebsockets peer for bench/peers.sh. Debian's
 * libwebsockets-test-server has no echo protocol, so this is a small lws
 * server written the way lws's minimal examples are: one service thread,
 * one lws_write per WRITEABLE callback.
 *
 *   /echo    every message is queued on its connection and written back;
 *            reading pauses (lws_rx_flow_control) while the queue is full.
 *   /fanout  every message goes into one shared ring and every /fanout
 *            connection (the sender included) is asked to become writeable;
 *            each connection keeps its own position in the ring. A
 *            connection that falls a whole ring behind is closed.
 *
 * No extensions (no permessage-deflate), like chatd. Not part of the chatd
 * build (CMake compiles only the .c files directly in bench/): bench/peers.sh
 * compiles it with
 *   cc -O2 lws_echo.c $(pkg-config --cflags --libs libwebsockets)
 * usage: lws-echo PORT
 */
#include <libwebsockets.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ECHO_QUEUE 64          /* messages queued per echo connection */
#define RING 1024              /* fan-out messages kept */
#define MAX_MSG (1 << 20)

struct msg {
    unsigned char *buf;        /* owned: LWS_PRE bytes of headroom, then the payload */
    size_t len;
    int binary;
};

struct pss {
    struct lws *wsi;
    int fanout;
    struct pss *next;          /* fan-out connections list */
    /* echo */
    struct msg q[ECHO_QUEUE];
    unsigned head, tail;       /* q[tail % N] .. q[head % N] */
    int paused;
    /* fan-out: next ring index to write */
    unsigned long long pos;
    /* message being gathered from fragments */
    unsigned char *acc;
    size_t acc_len;
};

static struct msg ring[RING];
static unsigned long long ring_head;    /* messages ever put in the ring */
static struct pss *fan_list;
static volatile int interrupted;

static int take_message(struct pss *p, void *in, size_t len, struct msg *out, struct lws *wsi)
{
    int first = lws_is_first_fragment(wsi), last = lws_is_final_fragment(wsi);
    if (first && last && lws_remaining_packet_payload(wsi) == 0) {
        out->buf = malloc(LWS_PRE + len);
        if (out->buf == NULL)
            return -1;
        memcpy(out->buf + LWS_PRE, in, len);
        out->len = len;
    } else {
        if (first)
            p->acc_len = 0;
        if (p->acc_len + len > MAX_MSG)
            return -1;
        unsigned char *nb = realloc(p->acc, LWS_PRE + p->acc_len + len);
        if (nb == NULL)
            return -1;
        p->acc = nb;
        memcpy(p->acc + LWS_PRE + p->acc_len, in, len);
        p->acc_len += len;
        if (!last || lws_remaining_packet_payload(wsi) != 0)
            return 0;
        out->buf = p->acc;
        out->len = p->acc_len;
        p->acc = NULL;
        p->acc_len = 0;
    }
    out->binary = lws_frame_is_binary(wsi);
    return 1;
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    struct pss *p = user;
    switch (reason) {
    case LWS_CALLBACK_ESTABLISHED: {
        char uri[64];
        memset(p, 0, sizeof *p);
        p->wsi = wsi;
        if (lws_hdr_copy(wsi, uri, sizeof uri, WSI_TOKEN_GET_URI) > 0 && strncmp(uri, "/fanout", 7) == 0) {
            p->fanout = 1;
            p->pos = ring_head;
            p->next = fan_list;
            fan_list = p;
        }
        break;
    }
    case LWS_CALLBACK_CLOSED:
        if (p->fanout) {
            for (struct pss **pp = &fan_list; *pp; pp = &(*pp)->next) {
                if (*pp == p) {
                    *pp = p->next;
                    break;
                }
            }
        }
        while (p->tail != p->head)
            free(p->q[p->tail++ % ECHO_QUEUE].buf);
        free(p->acc);
        break;
    case LWS_CALLBACK_RECEIVE: {
        struct msg m;
        int rc = take_message(p, in, len, &m, wsi);
        if (rc < 0)
            return -1;
        if (rc == 0)
            break;
        if (p->fanout) {
            struct msg *slot = &ring[ring_head % RING];
            free(slot->buf);
            *slot = m;
            ring_head++;
            for (struct pss *f = fan_list; f; f = f->next)
                lws_callback_on_writable(f->wsi);
        } else {
            p->q[p->head++ % ECHO_QUEUE] = m;
            if (p->head - p->tail == ECHO_QUEUE) {
                lws_rx_flow_control(wsi, 0);
                p->paused = 1;
            }
            lws_callback_on_writable(wsi);
        }
        break;
    }
    case LWS_CALLBACK_SERVER_WRITEABLE: {
        struct msg *m;
        if (p->fanout) {
            if (p->pos == ring_head)
                break;
            if (ring_head - p->pos > RING)
                return -1;   /* fell a whole ring behind */
            m = &ring[p->pos++ % RING];
        } else {
            if (p->tail == p->head)
                break;
            m = &p->q[p->tail % ECHO_QUEUE];
        }
        int n = lws_write(wsi, m->buf + LWS_PRE, m->len, m->binary ? LWS_WRITE_BINARY : LWS_WRITE_TEXT);
        if (n < (int)m->len)
            return -1;
        if (!p->fanout) {
            free(m->buf);
            m->buf = NULL;
            p->tail++;
            if (p->paused) {
                p->paused = 0;
                lws_rx_flow_control(wsi, 1);
            }
            if (p->tail != p->head)
                lws_callback_on_writable(wsi);
        } else if (p->pos != ring_head) {
            lws_callback_on_writable(wsi);
        }
        break;
    }
    default:
        break;
    }
    return 0;
}

static const struct lws_protocols protocols[] = {
    {"bench", callback, sizeof(struct pss), 65536, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

int main(int argc, char **argv)
{
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = argc > 1 ? atoi(argv[1]) : 8084;
    info.iface = "127.0.0.1";
    info.protocols = protocols;
    info.options = LWS_SERVER_OPTION_DISABLE_IPV6;
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    lws_set_log_level(LLL_ERR, NULL);
    struct lws_context *ctx = lws_create_context(&info);
    if (ctx == NULL) {
        fprintf(stderr, "lws-echo: cannot create the context\n");
        return 1;
    }
    fprintf(stderr, "event=listening addr=127.0.0.1:%d peer=libwebsockets-%s\n", info.port, lws_get_library_version());
    while (!interrupted && lws_service(ctx, 0) >= 0) {
    }
    lws_context_destroy(ctx);
    return 0;
}
