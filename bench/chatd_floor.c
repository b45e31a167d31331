/*
 * DESIGN: chatd-floor, the cheapest WebSocket server this benchmark can
 * drive: the floor under every server's figure on this machine, measured by
 * the same generator in the same run (bench/peers.sh).
 *
 * It does only what the echo and fan-out scenarios need and nothing a real
 * server must: one thread, raw epoll, no authentication, no storage, no
 * limits, no UTF-8 check, no fragments, no timers. Per loop iteration it
 * reads each ready socket once, answers every complete frame, and writes
 * each connection's output with one write(2), which is the least a server
 * can do per message with the kernel's socket API. What it costs per
 * operation is therefore almost all kernel time, and the distance between
 * its figure and chatd's is everything chatd's features cost.
 *
 *   GET /echo    every text or binary message comes back to its sender
 *   GET /fanout  every message goes to every /fanout connection, the sender
 *                included (as bench/peers/lws_echo.c does)
 *
 * Pings are answered, a close is echoed, then the socket is closed.
 *
 * usage: chatd-floor PORT        (listens on 127.0.0.1)
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ws/frame.h"
#include "ws/handshake.h"

#define MAX_FRAME (1u << 20) /* larger frames close the connection */
#define READ_BUF (64 * 1024)

struct fconn {
    int fd;
    bool upgraded;
    bool fanout;
    bool closing; /* close queued: drop the socket once written */
    bool dirty;   /* on the dirty list */
    uint8_t *in;  /* owned: bytes not yet parsed */
    size_t in_len, in_cap;
    uint8_t *out; /* owned: bytes not yet written */
    size_t out_off, out_len, out_cap;
    struct fconn *next_fan, *prev_fan; /* /fanout connections */
    struct fconn *next_dirty;
    struct fconn *next_gone;
};

static struct fconn *fan_head;
static struct fconn *dirty_head;
static struct fconn *gone; /* dropped this iteration, freed at its end */
static int ep;
static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static int reserve(uint8_t **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 4096;
    while (n < need)
        n *= 2;
    uint8_t *b = realloc(*buf, n);
    if (!b)
        return -1;
    *buf = b;
    *cap = n;
    return 0;
}

static void mark_dirty(struct fconn *c)
{
    if (!c->dirty) {
        c->dirty = true;
        c->next_dirty = dirty_head;
        dirty_head = c;
    }
}

static int out_put(struct fconn *c, const void *a, size_t alen, const void *b, size_t blen)
{
    if (reserve(&c->out, &c->out_cap, c->out_len + alen + blen) < 0)
        return -1;
    memcpy(c->out + c->out_len, a, alen);
    if (blen)
        memcpy(c->out + c->out_len + alen, b, blen);
    c->out_len += alen + blen;
    mark_dirty(c);
    return 0;
}

/* An unmasked server frame header for len payload bytes; returns its size. */
static size_t frame_header(uint8_t *h, unsigned opcode, size_t len)
{
    h[0] = (uint8_t)(0x80 | opcode);
    if (len < 126) {
        h[1] = (uint8_t)len;
        return 2;
    }
    if (len <= 0xffff) {
        h[1] = 126;
        h[2] = (uint8_t)(len >> 8);
        h[3] = (uint8_t)len;
        return 4;
    }
    h[1] = 127;
    for (int i = 0; i < 8; i++)
        h[2 + i] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
    return 10;
}

static void drop(struct fconn *c)
{
    if (c->fanout) {
        if (c->prev_fan)
            c->prev_fan->next_fan = c->next_fan;
        else
            fan_head = c->next_fan;
        if (c->next_fan)
            c->next_fan->prev_fan = c->prev_fan;
    }
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1; /* freed after the iteration: it may still be on the dirty list */
}

static void bury(struct fconn *c)
{
    c->next_gone = gone;
    gone = c;
}

static void message(struct fconn *c, unsigned opcode, const uint8_t *p, size_t n)
{
    uint8_t h[10];
    size_t hl = frame_header(h, opcode, n);
    if (!c->fanout) {
        out_put(c, h, hl, p, n);
        return;
    }
    for (struct fconn *f = fan_head; f; f = f->next_fan)
        if (!f->closing)
            out_put(f, h, hl, p, n);
}

/* Parse complete frames from c->in; returns -1 to drop the connection. */
static int frames(struct fconn *c)
{
    size_t off = 0;
    while (c->in_len - off >= 2 && !c->closing) {
        const uint8_t *f = c->in + off;
        unsigned opcode = f[0] & 0x0f;
        uint64_t len = f[1] & 0x7f;
        size_t hl = 2;
        if (!(f[1] & 0x80) || !(f[0] & 0x80))
            return -1; /* unmasked or fragmented: not served here */
        if (len == 126) {
            if (c->in_len - off < 4)
                break;
            len = (uint64_t)f[2] << 8 | f[3];
            hl = 4;
        } else if (len == 127) {
            if (c->in_len - off < 10)
                break;
            len = 0;
            for (int i = 0; i < 8; i++)
                len = len << 8 | f[2 + i];
            hl = 10;
        }
        if (len > MAX_FRAME)
            return -1;
        if (c->in_len - off < hl + 4 + len)
            break;
        uint8_t *p = c->in + off + hl + 4;
        ws_mask(p, (size_t)len, f + hl, 0);
        switch (opcode) {
        case 0x1:
        case 0x2:
            message(c, opcode, p, (size_t)len);
            break;
        case 0x9: {
            uint8_t h[10];
            out_put(c, h, frame_header(h, 0xA, (size_t)len), p, (size_t)len);
            break;
        }
        case 0x8: {
            uint8_t h[10];
            out_put(c, h, frame_header(h, 0x8, len >= 2 ? 2 : 0), p, len >= 2 ? 2 : 0);
            c->closing = true;
            break;
        }
        case 0xA:
            break;
        default:
            return -1;
        }
        off += hl + 4 + (size_t)len;
    }
    memmove(c->in, c->in + off, c->in_len - off);
    c->in_len -= off;
    return 0;
}

/* The opening handshake; returns 1 when done, 0 for more bytes, -1 on error. */
static int handshake(struct fconn *c)
{
    uint8_t *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
    if (!end)
        return c->in_len > 16384 ? -1 : 0;
    size_t head = (size_t)(end - c->in) + 4;
    const char *key = NULL;
    size_t klen = 0;
    for (char *line = (char *)c->in; line < (char *)end;) {
        char *eol = memmem(line, (size_t)((char *)end - line) + 2, "\r\n", 2);
        if (strncasecmp(line, "sec-websocket-key:", 18) == 0) {
            key = line + 18;
            while (*key == ' ')
                key++;
            klen = (size_t)(eol - key);
            while (klen && key[klen - 1] == ' ')
                klen--;
        }
        line = eol + 2;
    }
    char accept[WS_ACCEPT_LEN + 1];
    if (!key || ws_accept_key(key, klen, accept) != 0)
        return -1;
    c->fanout = strncmp((const char *)c->in, "GET /fanout", 11) == 0;
    if (c->fanout) {
        c->next_fan = fan_head;
        if (fan_head)
            fan_head->prev_fan = c;
        fan_head = c;
    }
    char resp[256];
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                     accept);
    out_put(c, resp, (size_t)n, NULL, 0);
    memmove(c->in, c->in + head, c->in_len - head);
    c->in_len -= head;
    c->upgraded = true;
    return 1;
}

static void on_readable(struct fconn *c, uint8_t *rbuf)
{
    ssize_t n = read(c->fd, rbuf, READ_BUF);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        drop(c);
        return;
    }
    if (n < 0)
        return;
    if (reserve(&c->in, &c->in_cap, c->in_len + (size_t)n) < 0) {
        drop(c);
        return;
    }
    memcpy(c->in + c->in_len, rbuf, (size_t)n);
    c->in_len += (size_t)n;
    if (!c->upgraded) {
        int r = handshake(c);
        if (r < 0) {
            drop(c);
            return;
        }
        if (r == 0)
            return;
    }
    if (frames(c) < 0)
        drop(c);
}

/* One write per connection with output; what the kernel does not take now
 * waits for EPOLLOUT. */
static void flush(struct fconn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                return;
            }
            drop(c);
            return;
        }
        c->out_off += (size_t)n;
        if (c->out_off < c->out_len) {
            struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
            epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
            return;
        }
    }
    c->out_off = c->out_len = 0;
    if (c->closing)
        drop(c);
}

int main(int argc, char **argv)
{
    if (argc != 2 || atoi(argv[1]) <= 0 || atoi(argv[1]) > 65535) {
        fprintf(stderr, "usage: chatd-floor PORT\n"
                        "the bare-epoll WebSocket echo (/echo) and broadcast (/fanout) server\n"
                        "that bench/peers.sh measures as the floor; listens on 127.0.0.1\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)atoi(argv[1])),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 4096) < 0) {
        perror("chatd-floor: listen");
        return 1;
    }
    ep = epoll_create1(0);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &lev);
    uint8_t *rbuf = malloc(READ_BUF);
    struct epoll_event evs[256];
    while (!stop) {
        int n = epoll_wait(ep, evs, 256, 1000);
        for (int i = 0; i < n; i++) {
            struct fconn *c = evs[i].data.ptr;
            if (!c) {
                int fd;
                while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct fconn *nc = calloc(1, sizeof *nc);
                    nc->fd = fd;
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = nc};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
                }
                continue;
            }
            if (c->fd < 0)
                continue;
            if (evs[i].events & EPOLLOUT) {
                struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                mark_dirty(c);
            }
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
                on_readable(c, rbuf);
            if (c->fd < 0)
                bury(c);
        }
        while (dirty_head) {
            struct fconn *c = dirty_head;
            dirty_head = c->next_dirty;
            c->dirty = false;
            if (c->fd >= 0) {
                flush(c);
                if (c->fd < 0)
                    bury(c);
            }
        }
        while (gone) {
            struct fconn *c = gone;
            gone = c->next_gone;
            free(c->in);
            free(c->out);
            free(c);
        }
    }
    return 0;
}
