/*
 * libFuzzer driver for the RFC 6455 frame decoder (src/ws/frame.c).
 *
 * DESIGN: the first four input bytes are settings, the rest is the client
 * byte stream:
 *   byte 0  bits 0-1 split mode (fixed-size chunks, pseudo-random chunk sizes
 *           including empty writes, one byte at a time, two halves),
 *           bit 2 require_mask, bit 3 a small fragment_allowance (1..8), so
 *           that the fragment rule's payload credit decides;
 *   byte 1-2  max_message = (b1 | b2 << 8) % 4097, small so limits are hit;
 *   byte 3  split parameter (chunk size, seed or cut point).
 * The stream is decoded twice, fed whole and fed in chunks, each write copied
 * into a buffer of exactly its size so ASan sees any access outside it. Every
 * event is checked against the contract in frame.h, and the two runs must
 * report the same messages, control frames and error (differential check).
 * A broken invariant calls abort().
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "chunks.h"

#include "ws/frame.h"
#include "ws/utf8.h"

#define MAX_MSG 4096 /* largest max_message the settings can choose */

/* What one decoding of the stream reported, folded into a digest. */
struct fz_run {
    struct ws_decoder d;
    uint64_t digest;   /* FNV-1a over messages, controls and the error */
    size_t items;      /* messages + control frames reported */
    uint16_t err;      /* close code of the error, 0 if none */
    size_t events;     /* events of any kind */
    size_t bytes;      /* bytes fed */
    size_t feeds;      /* writes fed */
    bool in_msg;       /* a data message is being re-assembled */
    uint8_t msg_op;
    size_t msg_len;
    uint8_t msg[MAX_MSG]; /* the message so far (bounded by max_message) */
};

static void fold(struct fz_run *r, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        r->digest ^= b[i];
        r->digest *= 0x100000001b3ULL;
    }
}

static void fold_item(struct fz_run *r, uint8_t kind, uint8_t op, uint16_t code,
                      const uint8_t *p, size_t n)
{
    uint64_t len = n;
    fold(r, &kind, 1);
    fold(r, &op, 1);
    fold(r, &code, sizeof code);
    fold(r, &len, sizeof len);
    fold(r, p, n);
    r->items++;
}

static void run_init(struct fz_run *r, uint64_t max_message, bool require_mask,
                     uint32_t allowance)
{
    memset(r, 0, sizeof *r);
    ws_decoder_init(&r->d, max_message, require_mask);
    if (allowance)
        r->d.fragment_allowance = allowance;
    r->digest = 0xcbf29ce484222325ULL;
}

static bool is_protocol_error(uint16_t code)
{
    return code == WS_CLOSE_PROTOCOL || code == WS_CLOSE_BAD_DATA || code == WS_CLOSE_POLICY ||
           code == WS_CLOSE_TOO_BIG;
}

static void on_data(struct fz_run *r, const struct ws_event *ev, const uint8_t *buf,
                    size_t off)
{
    CHECK(ev->opcode == WS_OP_TEXT || ev->opcode == WS_OP_BINARY);
    /* The chunk lies in the bytes just consumed. */
    CHECK(ev->data != NULL);
    CHECK(ev->data >= buf && ev->len <= off && ev->data + ev->len <= buf + off);
    CHECK(ev->first == !r->in_msg);
    if (ev->first) {
        r->in_msg = true;
        r->msg_op = ev->opcode;
        r->msg_len = 0;
    }
    CHECK(ev->opcode == r->msg_op);
    CHECK(r->msg_len + ev->len <= r->d.max_message);
    CHECK(r->msg_len + ev->len <= MAX_MSG);
    memcpy(r->msg + r->msg_len, ev->data, ev->len);
    r->msg_len += ev->len;
    CHECK(ws_decoder_in_message(&r->d) == !ev->last);
    if (!ev->last)
        return;
    if (r->msg_op == WS_OP_TEXT)
        CHECK(utf8_valid(r->msg, r->msg_len));
    fold_item(r, 'M', r->msg_op, 0, r->msg, r->msg_len);
    r->in_msg = false;
}

static void on_control(struct fz_run *r, const struct ws_event *ev)
{
    CHECK(ev->opcode == WS_OP_CLOSE || ev->opcode == WS_OP_PING || ev->opcode == WS_OP_PONG);
    CHECK(ev->len <= WS_MAX_CONTROL);
    CHECK(ev->len == 0 || ev->data != NULL);
    uint16_t code = 0;
    if (ev->opcode == WS_OP_CLOSE) {
        code = ev->close_code;
        if (ev->len == 0) {
            CHECK(code == WS_CLOSE_NO_STATUS);
        } else {
            CHECK(ev->len >= 2);
            CHECK(code == ((ev->data[0] << 8) | ev->data[1]));
            CHECK(ws_close_code_valid(code));
            CHECK(ev->reason == (const char *)ev->data + 2);
            CHECK(ev->reason_len == ev->len - 2);
            CHECK(utf8_valid(ev->data + 2, ev->len - 2));
        }
    }
    fold_item(r, 'C', ev->opcode, code, ev->data, ev->len);
}

/* Feed one write; returns false once the decoder has reported an error. */
static bool run_feed(struct fz_run *r, const uint8_t *p, size_t n)
{
    if (r->err)
        return false;
    uint8_t *buf = malloc(n ? n : 1);
    CHECK(buf != NULL);
    if (n)
        memcpy(buf, p, n);
    r->feeds++;
    r->bytes += n;
    size_t off = 0;
    for (;;) {
        struct ws_event ev;
        size_t used = ws_decode(&r->d, buf + off, n - off, &ev);
        CHECK(used <= n - off);
        off += used;
        /* Every event but the last of a write consumes a byte, so a caller
         * looping until NONE always ends. */
        CHECK(++r->events <= r->bytes + r->feeds);
        if (ev.type == WS_EV_NONE) {
            CHECK(off == n);
            break;
        }
        if (ev.type == WS_EV_ERROR) {
            CHECK(is_protocol_error(ev.close_code));
            CHECK(ev.reason != NULL && ev.reason_len == strlen(ev.reason));
            r->err = ev.close_code;
            fold_item(r, 'E', 0, ev.close_code, NULL, 0);
            /* Sticky: the rest of this write and anything after it. */
            struct ws_event again;
            CHECK(ws_decode(&r->d, buf + off, n - off, &again) == n - off);
            CHECK(again.type == WS_EV_ERROR && again.close_code == ev.close_code);
            CHECK(ws_decode(&r->d, buf, 0, &again) == 0);
            CHECK(again.type == WS_EV_ERROR && again.close_code == ev.close_code);
            break;
        }
        if (ev.type == WS_EV_CONTROL) {
            on_control(r, &ev);
            continue;
        }
        CHECK(ev.type == WS_EV_DATA);
        on_data(r, &ev, buf, off);
    }
    free(buf);
    return r->err == 0;
}

static struct fz_run whole, chunked;

/* fuzz_feed_chunked's callback: one piece to the chunked run. */
static bool feed_chunk(void *arg, const uint8_t *p, size_t len)
{
    return run_feed(arg, p, len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4)
        return 0;
    unsigned mode = data[0] & 3;
    bool require_mask = data[0] & 4;
    uint32_t allowance = (data[0] & 8) ? 1 + (data[3] & 7) : 0;
    uint64_t max_message = (uint64_t)(data[1] | (data[2] << 8)) % (MAX_MSG + 1);
    unsigned param = data[3];
    const uint8_t *s = data + 4;
    size_t n = size - 4;

    run_init(&whole, max_message, require_mask, allowance);
    run_feed(&whole, s, n);

    run_init(&chunked, max_message, require_mask, allowance);
    fuzz_feed_chunked(mode, param, s, n, 64, feed_chunk, &chunked);

    /* Differential: however the stream was split, the same report. */
    CHECK(whole.err == chunked.err);
    CHECK(whole.items == chunked.items);
    CHECK(whole.digest == chunked.digest);
    if (!whole.err)
        CHECK(whole.in_msg == chunked.in_msg);
    return 0;
}
