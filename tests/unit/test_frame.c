/*
 * Unit tests for src/ws/frame: the RFC 6455 decoder and encoder.
 *
 * Most decoder tests build a client byte stream (masked frames, see
 * struct bytes), then run a fresh decoder over it split at chosen points
 * (struct run), re-assembling DATA chunks into whole messages and recording
 * control frames and the error. Two runs of the same stream must record the
 * same thing however it was split; a run fed one byte at a time also tells at
 * which byte an error was first reported, which is how the "fail at the
 * earliest byte" promises of frame.h are checked.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ws/frame.h"
#include "ws/utf8.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define BIG 1000000u /* a max_message no test message reaches */

/* ---- stream builder ---------------------------------------------------- */

/* A growable byte string holding a client stream. */
struct bytes {
    uint8_t *p; /* owned */
    size_t len;
    size_t cap;
    unsigned frames; /* frames added, used to vary the mask */
};

static void bytes_add(struct bytes *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        assert_non_null(b->p);
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, p, n);
    b->len += n;
}

/* Append a header written by the codec. It is never longer than
 * WS_MAX_HEADER, but the compiler cannot see into frame.c: without the bound
 * stated here GCC at -O3 finds a path where memcpy would read past the end of
 * the header buffer and warns (-Warray-bounds, -Wstringop-overread). */
static void bytes_add_header(struct bytes *b, const uint8_t *hdr, size_t hl)
{
    if (hl > WS_MAX_HEADER)
        abort();
    bytes_add(b, hdr, hl);
}

static void bytes_free(struct bytes *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* Append a masked client frame; the mask changes from frame to frame and
 * never is all zeroes, so a decoder that forgot to unmask is caught.
 * Returns the offset of the frame's first byte. */
static size_t add_frame(struct bytes *b, unsigned op, bool fin, const void *payload, size_t n)
{
    uint8_t mask[4] = {(uint8_t)(0x37 + 17 * b->frames), 0xFA, (uint8_t)(0x21 ^ b->frames),
                       (uint8_t)(0x3D + b->frames)};
    uint8_t hdr[WS_MAX_HEADER];
    size_t start = b->len;
    size_t hl = ws_frame_header_masked(hdr, op, fin, n, mask);
    bytes_add_header(b, hdr, hl);
    size_t at = b->len;
    bytes_add(b, payload, n);
    ws_mask(b->p + at, n, mask, 0);
    b->frames++;
    return start;
}

/* Append an unmasked (server-style) frame. */
static size_t add_frame_unmasked(struct bytes *b, unsigned op, bool fin, const void *payload,
                                 size_t n)
{
    uint8_t hdr[WS_MAX_HEADER];
    size_t start = b->len;
    size_t hl = ws_frame_header(hdr, op, fin, n);
    bytes_add_header(b, hdr, hl);
    bytes_add(b, payload, n);
    b->frames++;
    return start;
}

static size_t add_str(struct bytes *b, unsigned op, bool fin, const char *s)
{
    return add_frame(b, op, fin, s, strlen(s));
}

/* Fill p with valid UTF-8 text mixing one- to four-byte characters. */
static void fill_text(uint8_t *p, size_t n, unsigned seed)
{
    static const char *chars[] = {"a", "\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9F\x98\x80", "Z",
                                  " ", "\xDF\xBF", "\xF4\x8F\xBF\xBF"};
    size_t i = 0;
    while (i < n) {
        const char *c = chars[seed++ % ARRAY_LEN(chars)];
        size_t cl = strlen(c);
        if (i + cl > n)
            c = "x", cl = 1;
        memcpy(p + i, c, cl);
        i += cl;
    }
}

/* Fill p with arbitrary bytes (not UTF-8). */
static void fill_binary(uint8_t *p, size_t n, uint32_t seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        p[i] = (uint8_t)(seed >> 16);
    }
}

/* ---- decoder runner ---------------------------------------------------- */

enum { R_MSG = 1, R_CTRL, R_ERR };

/* One thing the decoder reported: a whole message, a control frame or an
 * error. */
struct rec {
    int kind;
    uint8_t opcode;
    uint16_t code;  /* close code (CONTROL close) or code to send (ERROR) */
    uint8_t *data;  /* owned copy of the message or control payload */
    size_t len;
};

#define MAX_RECS 64

struct run {
    struct ws_decoder d;
    struct rec rec[MAX_RECS];
    size_t n;
    /* message being re-assembled */
    bool in_msg;
    uint8_t msg_op;
    uint8_t *msg; /* owned */
    size_t msg_len;
    size_t msg_cap;
    /* counters */
    size_t chunks;   /* DATA events */
    size_t feeds;    /* writes fed so far */
    long err_feed;   /* index of the write that reported the error, -1 if none */
    bool failed;
};

static void run_init(struct run *r, uint64_t max_message, bool require_mask)
{
    memset(r, 0, sizeof *r);
    ws_decoder_init(&r->d, max_message, require_mask);
    r->err_feed = -1;
}

static void run_free(struct run *r)
{
    for (size_t i = 0; i < r->n; i++)
        free(r->rec[i].data);
    free(r->msg);
    memset(r, 0, sizeof *r);
}

static void run_push(struct run *r, int kind, uint8_t op, uint16_t code, const uint8_t *p,
                     size_t n)
{
    assert_true(r->n < MAX_RECS);
    struct rec *rc = &r->rec[r->n++];
    rc->kind = kind;
    rc->opcode = op;
    rc->code = code;
    rc->len = n;
    rc->data = malloc(n ? n : 1);
    assert_non_null(rc->data);
    if (n)
        memcpy(rc->data, p, n);
}

/* Feed one write, as a connection does after a read. The bytes are copied
 * into a buffer of exactly that size so that ASan catches any access outside
 * it, and every event is checked against the contract in frame.h. */
static void run_feed(struct run *r, const uint8_t *p, size_t n)
{
    if (r->failed)
        return;
    uint8_t *buf = malloc(n ? n : 1);
    assert_non_null(buf);
    if (n)
        memcpy(buf, p, n);
    size_t off = 0;
    for (unsigned guard = 0;; guard++) {
        assert_true(guard < 1000000);
        struct ws_event ev;
        size_t used = ws_decode(&r->d, buf + off, n - off, &ev);
        assert_true(used <= n - off);
        off += used;
        if (ev.type == WS_EV_NONE) {
            assert_int_equal(off, n);
            break;
        }
        if (ev.type == WS_EV_ERROR) {
            assert_non_null(ev.reason);
            assert_int_equal(ev.reason_len, strlen(ev.reason));
            run_push(r, R_ERR, 0, ev.close_code, NULL, 0);
            r->err_feed = (long)r->feeds;
            r->failed = true;
            break;
        }
        if (ev.type == WS_EV_CONTROL) {
            assert_true(ev.opcode == WS_OP_CLOSE || ev.opcode == WS_OP_PING ||
                        ev.opcode == WS_OP_PONG);
            assert_true(ev.len <= WS_MAX_CONTROL);
            uint16_t code = 0;
            if (ev.opcode == WS_OP_CLOSE) {
                code = ev.close_code;
                if (ev.len == 0) {
                    assert_int_equal(code, WS_CLOSE_NO_STATUS);
                } else {
                    assert_true(ev.len >= 2);
                    assert_int_equal(code, (ev.data[0] << 8) | ev.data[1]);
                    assert_ptr_equal(ev.reason, (const char *)ev.data + 2);
                    assert_int_equal(ev.reason_len, ev.len - 2);
                }
            }
            run_push(r, R_CTRL, ev.opcode, code, ev.data, ev.len);
            continue;
        }
        assert_int_equal(ev.type, WS_EV_DATA);
        assert_true(ev.opcode == WS_OP_TEXT || ev.opcode == WS_OP_BINARY);
        /* The chunk lies in the bytes just consumed. */
        assert_true(ev.data >= buf && ev.data + ev.len <= buf + off);
        assert_int_equal(ev.first, !r->in_msg);
        if (ev.first) {
            r->in_msg = true;
            r->msg_op = ev.opcode;
            r->msg_len = 0;
        }
        assert_int_equal(ev.opcode, r->msg_op);
        if (r->msg_len + ev.len > r->msg_cap) {
            size_t cap = r->msg_cap ? r->msg_cap : 256;
            while (cap < r->msg_len + ev.len)
                cap *= 2;
            r->msg = realloc(r->msg, cap);
            assert_non_null(r->msg);
            r->msg_cap = cap;
        }
        if (ev.len)
            memcpy(r->msg + r->msg_len, ev.data, ev.len);
        r->msg_len += ev.len;
        r->chunks++;
        assert_int_equal(ws_decoder_in_message(&r->d), !ev.last);
        if (ev.last) {
            r->in_msg = false;
            run_push(r, R_MSG, r->msg_op, 0, r->msg, r->msg_len);
        }
    }
    free(buf);
    r->feeds++;
}

/* Feed s split at the ascending offsets cuts[0..ncuts). */
static void run_split(struct run *r, const uint8_t *s, size_t n, const size_t *cuts, size_t ncuts)
{
    size_t prev = 0;
    for (size_t i = 0; i < ncuts; i++) {
        assert_true(cuts[i] >= prev && cuts[i] <= n);
        run_feed(r, s + prev, cuts[i] - prev);
        prev = cuts[i];
    }
    run_feed(r, s + prev, n - prev);
}

static void run_bytewise(struct run *r, const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        run_feed(r, s + i, 1);
}

static void assert_runs_equal(const struct run *a, const struct run *b)
{
    assert_int_equal(a->n, b->n);
    for (size_t i = 0; i < a->n; i++) {
        assert_int_equal(a->rec[i].kind, b->rec[i].kind);
        assert_int_equal(a->rec[i].opcode, b->rec[i].opcode);
        assert_int_equal(a->rec[i].code, b->rec[i].code);
        assert_int_equal(a->rec[i].len, b->rec[i].len);
        if (a->rec[i].len)
            assert_memory_equal(a->rec[i].data, b->rec[i].data, a->rec[i].len);
    }
    /* After an error, how much of the broken message was delivered before it
     * depends on the split; otherwise both runs stop at the same point. */
    if (!a->failed)
        assert_int_equal(a->in_msg, b->in_msg);
}

/* Run s whole with the given settings, then split at every point into two
 * writes, and one byte at a time: all must record the same. The whole run is
 * left in *whole for the caller to inspect (run_free it). */
static void run_all_splits(struct run *whole, const uint8_t *s, size_t n, uint64_t max,
                           bool require_mask)
{
    run_init(whole, max, require_mask);
    run_feed(whole, s, n);
    for (size_t cut = 0; cut <= n; cut++) {
        struct run r;
        run_init(&r, max, require_mask);
        run_split(&r, s, n, &cut, 1);
        assert_runs_equal(whole, &r);
        run_free(&r);
    }
    struct run r;
    run_init(&r, max, require_mask);
    run_bytewise(&r, s, n);
    assert_runs_equal(whole, &r);
    run_free(&r);
}

static void assert_rec(const struct run *r, size_t i, int kind, uint8_t op, const void *data,
                       size_t len)
{
    assert_true(i < r->n);
    assert_int_equal(r->rec[i].kind, kind);
    assert_int_equal(r->rec[i].opcode, op);
    assert_int_equal(r->rec[i].len, len);
    if (len)
        assert_memory_equal(r->rec[i].data, data, len);
}

static void assert_msg(const struct run *r, size_t i, uint8_t op, const char *s)
{
    assert_rec(r, i, R_MSG, op, s, strlen(s));
}

static void assert_ctrl(const struct run *r, size_t i, uint8_t op, const char *s)
{
    assert_rec(r, i, R_CTRL, op, s, strlen(s));
}

/* The run ended with exactly this error (and nothing after it). */
static void assert_error(const struct run *r, uint16_t code)
{
    assert_true(r->n > 0);
    assert_int_equal(r->rec[r->n - 1].kind, R_ERR);
    assert_int_equal(r->rec[r->n - 1].code, code);
}

static void assert_no_error(const struct run *r)
{
    assert_int_equal(r->err_feed, -1);
    for (size_t i = 0; i < r->n; i++)
        assert_int_not_equal(r->rec[i].kind, R_ERR);
}

/* The stream fails with code, all splits agree, and fed one byte at a time
 * the error is reported by byte at_byte (the earliest byte that reveals it). */
static void expect_error_at(const struct bytes *b, uint64_t max, bool require_mask,
                            uint16_t code, size_t at_byte)
{
    struct run whole;
    run_all_splits(&whole, b->p, b->len, max, require_mask);
    assert_error(&whole, code);
    run_free(&whole);

    struct run r;
    run_init(&r, max, require_mask);
    run_bytewise(&r, b->p, b->len);
    assert_error(&r, code);
    assert_int_equal(r.err_feed, (long)at_byte);
    run_free(&r);
}

/* ---- round trips --------------------------------------------------------- */

static void roundtrip(unsigned op, size_t size, bool masked)
{
    uint8_t *payload = malloc(size ? size : 1);
    assert_non_null(payload);
    if (op == WS_OP_TEXT)
        fill_text(payload, size, (unsigned)size);
    else
        fill_binary(payload, size, (uint32_t)size);

    struct bytes b = {0};
    if (masked)
        add_frame(&b, op, true, payload, size);
    else
        add_frame_unmasked(&b, op, true, payload, size);
    size_t hl = (size < 126 ? 2 : size <= 0xFFFF ? 4 : 10) + (masked ? 4 : 0);
    assert_int_equal(b.len, hl + size);

    /* Whole: one DATA event carrying the whole message. */
    struct run r;
    run_init(&r, BIG, masked);
    run_feed(&r, b.p, b.len);
    assert_no_error(&r);
    assert_int_equal(r.n, 1);
    assert_rec(&r, 0, R_MSG, (uint8_t)op, payload, size);
    assert_int_equal(r.chunks, 1);
    run_free(&r);

    /* Split in the header, at the header's end and in the payload. */
    size_t cutsets[][3] = {{1, 2, hl}, {hl - 1, hl, hl + size / 2}, {0, hl + 1, b.len - 1}};
    for (size_t i = 0; i < ARRAY_LEN(cutsets); i++) {
        size_t cuts[3];
        for (size_t j = 0; j < 3; j++)
            cuts[j] = cutsets[i][j] > b.len ? b.len : cutsets[i][j];
        if (cuts[1] < cuts[0] || cuts[2] < cuts[1])
            continue;
        run_init(&r, BIG, masked);
        run_split(&r, b.p, b.len, cuts, 3);
        assert_no_error(&r);
        assert_int_equal(r.n, 1);
        assert_rec(&r, 0, R_MSG, (uint8_t)op, payload, size);
        run_free(&r);
    }

    /* One byte at a time: one DATA event per payload byte (or a single empty
     * one for an empty message). */
    run_init(&r, BIG, masked);
    run_bytewise(&r, b.p, b.len);
    assert_no_error(&r);
    assert_int_equal(r.n, 1);
    assert_rec(&r, 0, R_MSG, (uint8_t)op, payload, size);
    assert_int_equal(r.chunks, size ? size : 1);
    run_free(&r);

    bytes_free(&b);
    free(payload);
}

static const size_t sizes[] = {0, 1, 125, 126, 127, 65535, 65536, 100000};

static void test_roundtrip_text(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(sizes); i++)
        roundtrip(WS_OP_TEXT, sizes[i], true);
}

static void test_roundtrip_binary(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(sizes); i++)
        roundtrip(WS_OP_BINARY, sizes[i], true);
}

/* require_mask off: unmasked frames (what a client decoder sees) work too,
 * and masked ones are still unmasked. */
static void test_roundtrip_unmasked(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(sizes); i++) {
        roundtrip(WS_OP_TEXT, sizes[i], false);
        roundtrip(WS_OP_BINARY, sizes[i], false);
    }
    struct bytes b = {0};
    add_str(&b, WS_OP_TEXT, true, "masked");
    add_frame_unmasked(&b, WS_OP_TEXT, true, "plain", 5);
    struct run r;
    run_all_splits(&r, b.p, b.len, BIG, false);
    assert_no_error(&r);
    assert_int_equal(r.n, 2);
    assert_msg(&r, 0, WS_OP_TEXT, "masked");
    assert_msg(&r, 1, WS_OP_TEXT, "plain");
    run_free(&r);
    bytes_free(&b);
}

/* RFC 6455 section 5.7 examples, byte for byte. */
static void test_rfc_examples(void **state)
{
    (void)state;
    static const uint8_t masked_hello[] = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d,
                                           0x7f, 0x9f, 0x4d, 0x51, 0x58};
    static const uint8_t unmasked_hello[] = {0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f};
    static const uint8_t fragmented[] = {0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f};
    static const uint8_t ping[] = {0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f};
    static const uint8_t masked_pong[] = {0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d,
                                          0x7f, 0x9f, 0x4d, 0x51, 0x58};
    const uint8_t mask[4] = {0x37, 0xfa, 0x21, 0x3d};

    /* Encoder produces the masked example. */
    uint8_t out[32];
    size_t hl = ws_frame_header_masked(out, WS_OP_TEXT, true, 5, mask);
    assert_int_equal(hl, 6);
    memcpy(out + hl, "Hello", 5);
    ws_mask(out + hl, 5, mask, 0);
    assert_memory_equal(out, masked_hello, sizeof masked_hello);
    hl = ws_frame_header(out, WS_OP_TEXT, true, 5);
    assert_int_equal(hl, 2);
    assert_memory_equal(out, unmasked_hello, 2);

    struct run r;
    run_all_splits(&r, masked_hello, sizeof masked_hello, BIG, true);
    assert_no_error(&r);
    assert_int_equal(r.n, 1);
    assert_msg(&r, 0, WS_OP_TEXT, "Hello");
    run_free(&r);

    run_all_splits(&r, masked_pong, sizeof masked_pong, BIG, true);
    assert_int_equal(r.n, 1);
    assert_ctrl(&r, 0, WS_OP_PONG, "Hello");
    run_free(&r);

    run_all_splits(&r, unmasked_hello, sizeof unmasked_hello, BIG, false);
    assert_int_equal(r.n, 1);
    assert_msg(&r, 0, WS_OP_TEXT, "Hello");
    run_free(&r);

    run_all_splits(&r, fragmented, sizeof fragmented, BIG, false);
    assert_int_equal(r.n, 1);
    assert_msg(&r, 0, WS_OP_TEXT, "Hello");
    run_free(&r);

    run_all_splits(&r, ping, sizeof ping, BIG, false);
    assert_int_equal(r.n, 1);
    assert_ctrl(&r, 0, WS_OP_PING, "Hello");
    run_free(&r);

    /* 256 bytes and 64 KiB binary headers from 5.7. */
    static const uint8_t h256[] = {0x82, 0x7E, 0x01, 0x00};
    static const uint8_t h64k[] = {0x82, 0x7F, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00};
    assert_int_equal(ws_frame_header(out, WS_OP_BINARY, true, 256), 4);
    assert_memory_equal(out, h256, 4);
    assert_int_equal(ws_frame_header(out, WS_OP_BINARY, true, 65536), 10);
    assert_memory_equal(out, h64k, 10);
}

/* ---- splits --------------------------------------------------------------- */

static void test_every_split_one_frame(void **state)
{
    (void)state;
    size_t lens[] = {0, 20, 125, 126, 300};
    for (size_t i = 0; i < ARRAY_LEN(lens); i++) {
        uint8_t payload[300];
        fill_text(payload, lens[i], 3);
        struct bytes b = {0};
        add_frame(&b, WS_OP_TEXT, true, payload, lens[i]);
        struct run r;
        run_all_splits(&r, b.p, b.len, BIG, true);
        assert_no_error(&r);
        assert_int_equal(r.n, 1);
        assert_rec(&r, 0, R_MSG, WS_OP_TEXT, payload, lens[i]);
        run_free(&r);
        bytes_free(&b);
    }
}

static void test_every_split_two_frames(void **state)
{
    (void)state;
    uint8_t text[200], bin[130];
    fill_text(text, sizeof text, 1);
    fill_binary(bin, sizeof bin, 7);
    struct bytes b = {0};
    add_frame(&b, WS_OP_TEXT, true, text, sizeof text);
    add_frame(&b, WS_OP_BINARY, true, bin, sizeof bin);
    struct run r;
    run_all_splits(&r, b.p, b.len, BIG, true);
    assert_no_error(&r);
    assert_int_equal(r.n, 2);
    assert_rec(&r, 0, R_MSG, WS_OP_TEXT, text, sizeof text);
    assert_rec(&r, 1, R_MSG, WS_OP_BINARY, bin, sizeof bin);
    run_free(&r);
    bytes_free(&b);

    /* A small message and a ping: every pair of cut points (three writes). */
    add_str(&b, WS_OP_TEXT, true, "h\xC3\xA9llo");
    add_str(&b, WS_OP_PING, true, "pi");
    run_init(&r, BIG, true);
    run_feed(&r, b.p, b.len);
    assert_int_equal(r.n, 2);
    assert_msg(&r, 0, WS_OP_TEXT, "h\xC3\xA9llo");
    assert_ctrl(&r, 1, WS_OP_PING, "pi");
    for (size_t c1 = 0; c1 <= b.len; c1++)
        for (size_t c2 = c1; c2 <= b.len; c2++) {
            size_t cuts[2] = {c1, c2};
            struct run s;
            run_init(&s, BIG, true);
            run_split(&s, b.p, b.len, cuts, 2);
            assert_runs_equal(&r, &s);
            run_free(&s);
        }
    run_free(&r);
    bytes_free(&b);
}

/* A 64-bit length frame: every cut in and around the header, near the end,
 * and a stride through the payload. */
static void test_splits_64bit_frame(void **state)
{
    (void)state;
    size_t size = 70000;
    uint8_t *payload = malloc(size);
    assert_non_null(payload);
    fill_text(payload, size, 5);
    struct bytes b = {0};
    add_frame(&b, WS_OP_TEXT, true, payload, size);
    add_str(&b, WS_OP_PONG, true, "after");
    assert_int_equal(b.len, 14 + size + 6 + 5);

    struct run whole;
    run_init(&whole, BIG, true);
    run_feed(&whole, b.p, b.len);
    assert_no_error(&whole);
    assert_int_equal(whole.n, 2);
    assert_rec(&whole, 0, R_MSG, WS_OP_TEXT, payload, size);
    assert_ctrl(&whole, 1, WS_OP_PONG, "after");
    for (size_t cut = 0; cut <= b.len; cut += (cut < 40 || cut + 40 > b.len) ? 1 : 997) {
        struct run r;
        run_init(&r, BIG, true);
        run_split(&r, b.p, b.len, &cut, 1);
        assert_runs_equal(&whole, &r);
        run_free(&r);
    }
    run_free(&whole);
    bytes_free(&b);
    free(payload);
}

/* ---- fragmentation ------------------------------------------------------- */

static void test_fragmented_with_controls(void **state)
{
    (void)state;
    struct bytes b = {0};
    add_str(&b, WS_OP_TEXT, false, "Hel");
    add_str(&b, WS_OP_PING, true, "p1");
    add_str(&b, WS_OP_CONT, false, "lo, ");
    add_str(&b, WS_OP_PONG, true, "");
    add_str(&b, WS_OP_CONT, true, "w\xC3\xB6rld");
    add_str(&b, WS_OP_BINARY, true, "next");
    struct run r;
    run_all_splits(&r, b.p, b.len, BIG, true);
    assert_no_error(&r);
    assert_int_equal(r.n, 4);
    assert_ctrl(&r, 0, WS_OP_PING, "p1");
    assert_ctrl(&r, 1, WS_OP_PONG, "");
    assert_msg(&r, 2, WS_OP_TEXT, "Hello, w\xC3\xB6rld");
    assert_msg(&r, 3, WS_OP_BINARY, "next");
    /* Fed whole, each fragment is one chunk: three for the text, one for
     * the binary message. */
    assert_int_equal(r.chunks, 4);
    run_free(&r);

    /* ws_decoder_in_message between the fragments, around the controls. */
    struct ws_decoder d;
    ws_decoder_init(&d, BIG, true);
    uint8_t *copy = malloc(b.len);
    assert_non_null(copy);
    memcpy(copy, b.p, b.len);
    struct ws_event ev;
    size_t off = 0;
    assert_false(ws_decoder_in_message(&d));
    off += ws_decode(&d, copy + off, b.len - off, &ev);
    assert_int_equal(ev.type, WS_EV_DATA);
    assert_true(ev.first);
    assert_false(ev.last);
    assert_true(ws_decoder_in_message(&d));
    off += ws_decode(&d, copy + off, b.len - off, &ev);
    assert_int_equal(ev.type, WS_EV_CONTROL);
    assert_true(ws_decoder_in_message(&d));
    off += ws_decode(&d, copy + off, b.len - off, &ev);
    assert_int_equal(ev.type, WS_EV_DATA);
    assert_false(ev.first);
    assert_false(ev.last);
    off += ws_decode(&d, copy + off, b.len - off, &ev);
    assert_int_equal(ev.type, WS_EV_CONTROL);
    off += ws_decode(&d, copy + off, b.len - off, &ev);
    assert_int_equal(ev.type, WS_EV_DATA);
    assert_false(ev.first);
    assert_true(ev.last);
    assert_false(ws_decoder_in_message(&d));
    off += ws_decode(&d, copy + off, b.len - off, &ev);
    assert_int_equal(ev.type, WS_EV_DATA);
    assert_true(ev.first);
    assert_true(ev.last);
    off += ws_decode(&d, copy + off, b.len - off, &ev);
    assert_int_equal(ev.type, WS_EV_NONE);
    assert_int_equal(off, b.len);
    free(copy);
    bytes_free(&b);
}

static void test_empty_fragments(void **state)
{
    (void)state;
    struct bytes b = {0};
    /* An empty message in three empty frames. */
    add_str(&b, WS_OP_TEXT, false, "");
    add_str(&b, WS_OP_CONT, false, "");
    add_str(&b, WS_OP_CONT, true, "");
    /* Data, then empty fragments, one with a ping in between. */
    add_str(&b, WS_OP_BINARY, false, "ab");
    add_str(&b, WS_OP_CONT, false, "");
    add_str(&b, WS_OP_PING, true, "");
    add_str(&b, WS_OP_CONT, true, "");
    /* Empty first fragment, data later. */
    add_str(&b, WS_OP_TEXT, false, "");
    add_str(&b, WS_OP_CONT, true, "cd");
    /* An unfragmented empty message. */
    add_str(&b, WS_OP_BINARY, true, "");
    struct run r;
    run_all_splits(&r, b.p, b.len, BIG, true);
    assert_no_error(&r);
    assert_int_equal(r.n, 5);
    assert_msg(&r, 0, WS_OP_TEXT, "");
    assert_ctrl(&r, 1, WS_OP_PING, "");
    assert_msg(&r, 2, WS_OP_BINARY, "ab");
    assert_msg(&r, 3, WS_OP_TEXT, "cd");
    assert_msg(&r, 4, WS_OP_BINARY, "");
    assert_false(r.in_msg);
    run_free(&r);
    bytes_free(&b);
}

/* A whole message in one DATA event, a message split over reads in several;
 * first/last flags mark its ends (checked by run_feed). */
static void test_chunk_flags(void **state)
{
    (void)state;
    struct bytes b = {0};
    add_str(&b, WS_OP_TEXT, true, "abcdefgh");
    struct run r;
    run_init(&r, BIG, true);
    size_t cuts[] = {6 + 2, 6 + 5};
    run_split(&r, b.p, b.len, cuts, 2);
    assert_int_equal(r.chunks, 3);
    assert_int_equal(r.n, 1);
    assert_msg(&r, 0, WS_OP_TEXT, "abcdefgh");
    run_free(&r);
    bytes_free(&b);
}

/* ---- protocol errors ----------------------------------------------------- */

static void test_rsv_bits(void **state)
{
    (void)state;
    uint8_t bits[] = {0x40, 0x20, 0x10, 0x70};
    unsigned ops[] = {WS_OP_TEXT, WS_OP_BINARY, WS_OP_CONT, WS_OP_PING, WS_OP_CLOSE};
    for (size_t i = 0; i < ARRAY_LEN(bits); i++)
        for (size_t j = 0; j < ARRAY_LEN(ops); j++) {
            struct bytes b = {0};
            add_str(&b, WS_OP_TEXT, true, "ok");
            size_t at = add_str(&b, ops[j], true, "x");
            b.p[at] |= bits[i];
            expect_error_at(&b, BIG, true, WS_CLOSE_PROTOCOL, at);
            /* The good message before it was delivered. */
            struct run r;
            run_init(&r, BIG, true);
            run_feed(&r, b.p, b.len);
            assert_int_equal(r.n, 2);
            assert_msg(&r, 0, WS_OP_TEXT, "ok");
            run_free(&r);
            bytes_free(&b);
        }
}

static void test_reserved_opcodes(void **state)
{
    (void)state;
    for (unsigned op = 0; op < 16; op++) {
        if (op <= 2 || (op >= 8 && op <= 10))
            continue;
        struct bytes b = {0};
        add_str(&b, op, true, "x");
        expect_error_at(&b, BIG, true, WS_CLOSE_PROTOCOL, 0);
        /* Also inside a fragmented message. */
        bytes_free(&b);
        add_str(&b, WS_OP_TEXT, false, "a");
        size_t at = add_str(&b, op, true, "x");
        expect_error_at(&b, BIG, true, WS_CLOSE_PROTOCOL, at);
        bytes_free(&b);
    }
}

static void test_control_not_final(void **state)
{
    (void)state;
    unsigned ops[] = {WS_OP_CLOSE, WS_OP_PING, WS_OP_PONG};
    for (size_t i = 0; i < ARRAY_LEN(ops); i++) {
        struct bytes b = {0};
        add_str(&b, ops[i], false, "");
        expect_error_at(&b, BIG, true, WS_CLOSE_PROTOCOL, 0);
        bytes_free(&b);
    }
}

static void test_control_too_long(void **state)
{
    (void)state;
    uint8_t payload[200];
    fill_binary(payload, sizeof payload, 9);
    unsigned ops[] = {WS_OP_CLOSE, WS_OP_PING, WS_OP_PONG};
    size_t bad[] = {126, 127, 200};
    for (size_t i = 0; i < ARRAY_LEN(ops); i++) {
        for (size_t j = 0; j < ARRAY_LEN(bad); j++) {
            struct bytes b = {0};
            add_frame(&b, ops[i], true, payload, bad[j]);
            /* Refused on byte 1, before the extended length or payload. */
            expect_error_at(&b, BIG, true, WS_CLOSE_PROTOCOL, 1);
            bytes_free(&b);
        }
        /* 125 is fine (a close payload needs a valid code and UTF-8). */
        uint8_t ok[125];
        ok[0] = 0x03, ok[1] = 0xE8; /* 1000 */
        fill_text(ok + 2, sizeof ok - 2, 0);
        struct bytes b = {0};
        add_frame(&b, ops[i], true, ok, sizeof ok);
        struct run r;
        run_all_splits(&r, b.p, b.len, BIG, true);
        assert_no_error(&r);
        assert_int_equal(r.n, 1);
        assert_rec(&r, 0, R_CTRL, (uint8_t)ops[i], ok, sizeof ok);
        run_free(&r);
        bytes_free(&b);
    }
}

static void test_unmasked_refused(void **state)
{
    (void)state;
    unsigned ops[] = {WS_OP_TEXT, WS_OP_BINARY, WS_OP_PING, WS_OP_CLOSE};
    for (size_t i = 0; i < ARRAY_LEN(ops); i++) {
        struct bytes b = {0};
        add_frame_unmasked(&b, ops[i], true, "", 0);
        expect_error_at(&b, BIG, true, WS_CLOSE_PROTOCOL, 1);
        bytes_free(&b);
        /* Also after a good masked frame. */
        add_str(&b, WS_OP_TEXT, true, "fine");
        size_t at = add_frame_unmasked(&b, ops[i], true, "\x03\xE8", 2);
        expect_error_at(&b, BIG, true, WS_CLOSE_PROTOCOL, at + 1);
        bytes_free(&b);
    }
}

static void test_continuation_outside_message(void **state)
{
    (void)state;
    struct bytes b = {0};
    add_str(&b, WS_OP_CONT, true, "x");
    /* Detected once the header is complete (6 bytes, masked). */
    expect_error_at(&b, BIG, true, WS_CLOSE_PROTOCOL, 5);
    bytes_free(&b);

    /* After a finished message, and after a finished fragmented one. */
    add_str(&b, WS_OP_TEXT, true, "done");
    size_t at = add_str(&b, WS_OP_CONT, false, "x");
    expect_error_at(&b, BIG, true, WS_CLOSE_PROTOCOL, at + 5);
    bytes_free(&b);
    add_str(&b, WS_OP_TEXT, false, "a");
    add_str(&b, WS_OP_CONT, true, "b");
    at = add_str(&b, WS_OP_CONT, true, "");
    expect_error_at(&b, BIG, true, WS_CLOSE_PROTOCOL, at + 5);
    bytes_free(&b);
}

static void test_new_message_inside_fragmented(void **state)
{
    (void)state;
    unsigned first[] = {WS_OP_TEXT, WS_OP_BINARY};
    unsigned second[] = {WS_OP_TEXT, WS_OP_BINARY};
    for (size_t i = 0; i < 2; i++)
        for (size_t j = 0; j < 2; j++) {
            struct bytes b = {0};
            add_str(&b, first[i], false, "a");
            add_str(&b, WS_OP_PING, true, "");
            size_t at = add_str(&b, second[j], true, "b");
            expect_error_at(&b, BIG, true, WS_CLOSE_PROTOCOL, at + 5);
            bytes_free(&b);
        }
}

static void test_length_top_bit(void **state)
{
    (void)state;
    /* 127 + 8-byte length 0x8000000000000000, masked. */
    uint8_t f[] = {0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 'x'};
    struct bytes b = {0};
    bytes_add(&b, f, sizeof f);
    expect_error_at(&b, UINT64_MAX, true, WS_CLOSE_PROTOCOL, 13);
    /* Even with a small limit, it is a protocol error, not "too big". */
    expect_error_at(&b, 100, true, WS_CLOSE_PROTOCOL, 13);
    bytes_free(&b);
    f[2] = 0xFF;
    bytes_add(&b, f, sizeof f);
    expect_error_at(&b, UINT64_MAX, true, WS_CLOSE_PROTOCOL, 13);
    bytes_free(&b);

    /* 2^63 - 1 is a legal length: the header is accepted with no limit. */
    uint8_t g[] = {0x82, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4};
    struct run r;
    run_init(&r, UINT64_MAX, true);
    run_feed(&r, g, sizeof g);
    assert_no_error(&r);
    assert_int_equal(r.n, 0);
    assert_true(ws_decoder_in_message(&r.d));
    run_free(&r);
}

/* ---- limits -------------------------------------------------------------- */

static void test_max_message_single(void **state)
{
    (void)state;
    size_t maxes[] = {0, 1, 100, 125, 126, 65535, 65536, 70000};
    uint8_t *payload = malloc(70001);
    assert_non_null(payload);
    fill_binary(payload, 70001, 1);
    for (size_t i = 0; i < ARRAY_LEN(maxes); i++) {
        size_t max = maxes[i];
        /* Exactly max: accepted. */
        struct bytes b = {0};
        add_frame(&b, WS_OP_BINARY, true, payload, max);
        struct run r;
        run_init(&r, max, true);
        run_feed(&r, b.p, b.len);
        assert_no_error(&r);
        assert_int_equal(r.n, 1);
        assert_rec(&r, 0, R_MSG, WS_OP_BINARY, payload, max);
        run_free(&r);
        bytes_free(&b);

        /* One more: 1009 once the header is complete, with only the header
         * fed (no payload byte given). */
        add_frame(&b, WS_OP_BINARY, true, payload, max + 1);
        size_t hl = b.len - (max + 1);
        run_init(&r, max, true);
        run_feed(&r, b.p, hl);
        assert_error(&r, WS_CLOSE_TOO_BIG);
        assert_int_equal(r.n, 1);
        run_free(&r);
        /* ...and not a byte earlier. */
        run_init(&r, max, true);
        run_feed(&r, b.p, hl - 1);
        assert_no_error(&r);
        run_free(&r);
        run_init(&r, max, true);
        run_bytewise(&r, b.p, b.len);
        assert_error(&r, WS_CLOSE_TOO_BIG);
        assert_int_equal(r.err_feed, (long)hl - 1);
        run_free(&r);
        bytes_free(&b);
    }
    free(payload);

    /* A huge announced length is refused from its header alone. */
    uint8_t h[WS_MAX_HEADER];
    const uint8_t mask[4] = {1, 2, 3, 4};
    size_t hl = ws_frame_header_masked(h, WS_OP_TEXT, true, (uint64_t)1 << 40, mask);
    struct run r;
    run_init(&r, 1 << 20, true);
    run_feed(&r, h, hl);
    assert_error(&r, WS_CLOSE_TOO_BIG);
    run_free(&r);
}

static void test_max_message_fragments(void **state)
{
    (void)state;
    uint8_t payload[100];
    fill_text(payload, sizeof payload, 2);
    /* 60 + 40 = 100 = max: accepted. */
    struct bytes b = {0};
    add_frame(&b, WS_OP_TEXT, false, payload, 60);
    add_str(&b, WS_OP_PING, true, "control frames do not count");
    add_frame(&b, WS_OP_CONT, true, payload + 60, 40);
    struct run r;
    run_all_splits(&r, b.p, b.len, 100, true);
    assert_no_error(&r);
    assert_int_equal(r.n, 2);
    assert_rec(&r, 1, R_MSG, WS_OP_TEXT, payload, 100);
    run_free(&r);
    bytes_free(&b);

    /* 60 + 30 + 11 = 101: refused at the third header, after the first two
     * fragments were delivered. */
    uint8_t more[101];
    fill_text(more, sizeof more, 4);
    add_frame(&b, WS_OP_TEXT, false, more, 60);
    add_frame(&b, WS_OP_CONT, false, more + 60, 30);
    size_t at = add_frame(&b, WS_OP_CONT, true, more + 90, 11);
    expect_error_at(&b, 100, true, WS_CLOSE_TOO_BIG, at + 5);
    run_init(&r, 100, true);
    run_feed(&r, b.p, at + 6); /* only the third header */
    assert_error(&r, WS_CLOSE_TOO_BIG);
    assert_int_equal(r.chunks, 2);
    run_free(&r);
    bytes_free(&b);

    /* The limit applies per message: two messages of max each are fine. */
    add_frame(&b, WS_OP_BINARY, false, payload, 50);
    add_frame(&b, WS_OP_CONT, true, payload, 50);
    add_frame(&b, WS_OP_BINARY, true, payload, 100);
    run_all_splits(&r, b.p, b.len, 100, true);
    assert_no_error(&r);
    assert_int_equal(r.n, 2);
    run_free(&r);
    bytes_free(&b);

    /* Control frames are not held to max_message (only to 125). */
    uint8_t ping[WS_MAX_CONTROL];
    fill_binary(ping, sizeof ping, 3);
    add_frame(&b, WS_OP_PING, true, ping, sizeof ping);
    run_all_splits(&r, b.p, b.len, 4, true);
    assert_no_error(&r);
    assert_int_equal(r.n, 1);
    run_free(&r);
    bytes_free(&b);
}

static void fragments_stream(struct bytes *b, unsigned frames)
{
    for (unsigned i = 0; i < frames; i++)
        add_frame(b, i == 0 ? WS_OP_TEXT : WS_OP_CONT, i + 1 == frames, "f", 1);
}

/* The fragment rule with a small allowance set after init, as frame.h
 * allows: n frames are fine while n <= allowance + payload / 16. */
static void test_fragment_rule(void **state)
{
    (void)state;
    struct bytes b = {0};
    struct run r;

    /* Four 1-byte frames: within an allowance of 4. */
    fragments_stream(&b, 4);
    run_init(&r, BIG, true);
    r.d.fragment_allowance = 4;
    run_feed(&r, b.p, b.len);
    assert_no_error(&r);
    assert_msg(&r, 0, WS_OP_TEXT, "ffff");
    /* The count restarts with each message. */
    run_feed(&r, b.p, b.len);
    assert_no_error(&r);
    assert_msg(&r, 1, WS_OP_TEXT, "ffff");
    run_free(&r);
    bytes_free(&b);

    /* A fifth: 5 > 4 + 5 / 16, refused with 1008 on its header. */
    fragments_stream(&b, 5);
    run_init(&r, BIG, true);
    r.d.fragment_allowance = 4;
    run_bytewise(&r, b.p, b.len);
    assert_error(&r, WS_CLOSE_POLICY);
    assert_int_equal(r.err_feed, 4 * 7 + 5); /* last byte of the fifth header */
    assert_int_equal(r.chunks, 4);
    run_free(&r);
    bytes_free(&b);

    /* Every 16 payload bytes pay for one more frame: with an allowance of
     * 1, any number of 16-byte fragments. */
    uint8_t p16[16];
    fill_binary(p16, sizeof p16, 9);
    for (unsigned i = 0; i < 200; i++)
        add_frame(&b, i == 0 ? WS_OP_BINARY : WS_OP_CONT, i == 199, p16, sizeof p16);
    run_init(&r, BIG, true);
    r.d.fragment_allowance = 1;
    run_feed(&r, b.p, b.len);
    assert_no_error(&r);
    assert_int_equal(r.n, 1);
    assert_int_equal(r.rec[0].len, 200 * 16);
    run_free(&r);
    bytes_free(&b);

    /* 32 bytes pay for two frames beyond the allowance of 1: two empty
     * fragments after them are fine (3 <= 1 + 2), the third is not. */
    uint8_t p32[32];
    fill_binary(p32, sizeof p32, 10);
    add_frame(&b, WS_OP_BINARY, false, p32, sizeof p32);
    add_frame(&b, WS_OP_CONT, false, "", 0);
    add_frame(&b, WS_OP_CONT, false, "", 0);
    size_t at = add_frame(&b, WS_OP_CONT, true, "", 0);
    run_init(&r, BIG, true);
    r.d.fragment_allowance = 1;
    run_bytewise(&r, b.p, b.len);
    assert_error(&r, WS_CLOSE_POLICY);
    assert_int_equal(r.err_feed, (long)at + 5); /* last byte of the fourth header */
    run_free(&r);
    bytes_free(&b);

    /* A frame's own payload counts: after two 1-byte frames (allowance 2),
     * a third frame of 14 bytes is paid for (3 <= 2 + 16 / 16), one of 13
     * is not (3 > 2 + 15 / 16). */
    for (size_t third = 13; third <= 14; third++) {
        uint8_t p[14];
        fill_binary(p, sizeof p, 11);
        add_frame(&b, WS_OP_BINARY, false, "a", 1);
        add_frame(&b, WS_OP_CONT, false, "b", 1);
        add_frame(&b, WS_OP_CONT, true, p, third);
        run_init(&r, BIG, true);
        r.d.fragment_allowance = 2;
        run_feed(&r, b.p, b.len);
        if (third == 14) {
            assert_no_error(&r);
            assert_int_equal(r.rec[0].len, 16);
        } else {
            assert_error(&r, WS_CLOSE_POLICY);
        }
        run_free(&r);
        bytes_free(&b);
    }

    /* Interleaved control frames do not count as fragments. */
    add_str(&b, WS_OP_BINARY, false, "a");
    add_str(&b, WS_OP_PING, true, "");
    add_str(&b, WS_OP_PING, true, "");
    add_str(&b, WS_OP_CONT, true, "b");
    run_init(&r, BIG, true);
    r.d.fragment_allowance = 2;
    run_feed(&r, b.p, b.len);
    assert_no_error(&r);
    assert_msg(&r, 2, WS_OP_BINARY, "ab");
    run_free(&r);
    bytes_free(&b);

    /* The default allowance. */
    run_init(&r, BIG, true);
    assert_int_equal(r.d.fragment_allowance, WS_FRAGMENT_ALLOWANCE);
    run_free(&r);
}

/* A message of `total` bytes of opcode op in fragments of `size` bytes
 * (the last one shorter), masked. The payload is left in *payload (owned). */
static void fragmented_message(struct bytes *b, unsigned op, size_t total, size_t size,
                               uint8_t **payload)
{
    uint8_t *p = malloc(total ? total : 1);
    assert_non_null(p);
    if (op == WS_OP_TEXT)
        fill_text(p, total, 5);
    else
        fill_binary(p, total, 5);
    size_t off = 0;
    do {
        size_t n = total - off < size ? total - off : size;
        add_frame(b, off == 0 ? op : WS_OP_CONT, off + n == total, p + off, n);
        off += n;
    } while (off < total);
    *payload = p;
}

/* Feed a stream in writes of an odd size, as reads of a socket cut it. */
static void run_chunked(struct run *r, const uint8_t *s, size_t n, size_t chunk)
{
    for (size_t off = 0; off < n; off += chunk)
        run_feed(r, s + off, n - off < chunk ? n - off : chunk);
}

/* The Autobahn cases 9.3.1 and 9.4.1 at chatd's default limit: 1 MiB of
 * text and of binary in 64-byte fragments (16,384 frames) are accepted;
 * one byte more is refused as too big, not for its fragments. */
static void test_fragment_rule_large_messages(void **state)
{
    (void)state;
    const size_t mib = 1 << 20;
    static const unsigned ops[] = {WS_OP_TEXT, WS_OP_BINARY};
    for (size_t i = 0; i < ARRAY_LEN(ops); i++) {
        /* 64-byte fragments, and 16-byte ones: the smallest average the
         * rule always pays for (65,536 frames). */
        static const size_t frag_sizes[] = {64, 16};
        for (size_t k = 0; k < ARRAY_LEN(frag_sizes); k++) {
            struct bytes b = {0};
            uint8_t *payload;
            fragmented_message(&b, ops[i], mib, frag_sizes[k], &payload);
            assert_int_equal(b.frames, mib / frag_sizes[k]);
            struct run r;
            run_init(&r, mib, true);
            run_feed(&r, b.p, b.len);
            assert_no_error(&r);
            assert_int_equal(r.n, 1);
            assert_rec(&r, 0, R_MSG, (uint8_t)ops[i], payload, mib);
            run_free(&r);
            /* Cut by reads at points that fall anywhere in the frames. */
            run_init(&r, mib, true);
            run_chunked(&r, b.p, b.len, 4093);
            assert_no_error(&r);
            assert_int_equal(r.n, 1);
            assert_rec(&r, 0, R_MSG, (uint8_t)ops[i], payload, mib);
            run_free(&r);
            free(payload);
            bytes_free(&b);
        }

        /* 1 MiB + 1 in 64-byte fragments: 1009 on the last header. */
        struct bytes b = {0};
        uint8_t *payload;
        fragmented_message(&b, ops[i], mib + 1, 64, &payload);
        struct run r;
        run_init(&r, mib, true);
        run_feed(&r, b.p, b.len);
        assert_error(&r, WS_CLOSE_TOO_BIG);
        assert_int_equal(r.chunks, mib / 64);
        run_free(&r);
        free(payload);
        bytes_free(&b);

        /* 1 MiB in 15-byte fragments (69,906 frames) is cut too fine:
         * 1008 once the frames outrun 4096 + payload / 16. */
        fragmented_message(&b, ops[i], mib, 15, &payload);
        run_init(&r, mib, true);
        run_feed(&r, b.p, b.len);
        assert_error(&r, WS_CLOSE_POLICY);
        assert_true(r.chunks < b.frames);
        assert_true(r.chunks <= WS_FRAGMENT_ALLOWANCE + mib / WS_FRAGMENT_COST);
        run_free(&r);
        free(payload);
        bytes_free(&b);
    }
}

/* Floods of empty and 1-byte continuation frames are refused after a
 * bounded number of frames, whatever max_message allows. */
static void test_fragment_flood(void **state)
{
    (void)state;
    const size_t mib = 1 << 20;
    const uint8_t byte = 'x';
    for (size_t len = 0; len <= 1; len++) {
        /* Frame n is refused when n > 4096 + n * len / 16: empty frames at
         * 4097, 1-byte frames at 4370 (4369 <= 4096 + 273). */
        size_t limit = len == 0 ? 4096 : 4369;
        struct bytes b = {0};
        add_frame(&b, WS_OP_BINARY, false, &byte, len);
        for (size_t i = 1; i < limit + 1000; i++)
            add_frame(&b, WS_OP_CONT, false, &byte, len);
        struct run r;
        run_init(&r, mib, true);
        run_feed(&r, b.p, b.len);
        assert_error(&r, WS_CLOSE_POLICY);
        assert_int_equal(r.chunks, limit);
        run_free(&r);
        /* Exactly `limit` frames make a message. */
        bytes_free(&b);
        for (size_t i = 0; i < limit; i++)
            add_frame(&b, i == 0 ? WS_OP_TEXT : WS_OP_CONT, i + 1 == limit, &byte, len);
        run_init(&r, mib, true);
        run_chunked(&r, b.p, b.len, 1000);
        assert_no_error(&r);
        assert_int_equal(r.n, 1);
        assert_int_equal(r.rec[0].len, limit * len);
        run_free(&r);
        bytes_free(&b);
    }

    /* A first fragment of the whole max_message pays for 65,536 more
     * frames, and no more: the flood after it still ends. */
    struct bytes b = {0};
    uint8_t *big = calloc(1, mib);
    assert_non_null(big);
    add_frame(&b, WS_OP_BINARY, false, big, mib);
    size_t cap = WS_FRAGMENT_ALLOWANCE + mib / WS_FRAGMENT_COST;
    for (size_t i = 1; i < cap + 10; i++)
        add_frame(&b, WS_OP_CONT, false, "", 0);
    struct run r;
    run_init(&r, mib, true);
    run_feed(&r, b.p, b.len);
    assert_error(&r, WS_CLOSE_POLICY);
    assert_int_equal(r.chunks, cap);
    run_free(&r);
    bytes_free(&b);
    free(big);
}

/* ---- UTF-8 ----------------------------------------------------------------- */

static void test_invalid_utf8(void **state)
{
    (void)state;
    const char *bad[] = {"\xFF", "ab\xC0\x80", "\xED\xA0\x80", "x\xF4\x90\x80\x80",
                         "\xE0\x80\x80", "\x80", ("a\xC3" "a"), "\xF5\x80\x80\x80"};
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        struct bytes b = {0};
        add_str(&b, WS_OP_TEXT, true, bad[i]);
        struct run r;
        run_all_splits(&r, b.p, b.len, BIG, true);
        assert_error(&r, WS_CLOSE_BAD_DATA);
        assert_int_equal(r.n, 1);
        run_free(&r);
        bytes_free(&b);
        /* The same bytes in a binary message are fine. */
        add_str(&b, WS_OP_BINARY, true, bad[i]);
        run_all_splits(&r, b.p, b.len, BIG, true);
        assert_no_error(&r);
        assert_msg(&r, 0, WS_OP_BINARY, bad[i]);
        run_free(&r);
        bytes_free(&b);
    }
}

/* The bad byte is reported by the read that carries it: before the rest of
 * its frame and before the next fragment. */
static void test_utf8_fail_fast(void **state)
{
    (void)state;
    struct bytes b = {0};
    add_str(&b, WS_OP_TEXT, false, "good \xC3\xA9 then \xFF bad");
    size_t f2 = add_str(&b, WS_OP_CONT, true, "more");
    size_t bad_at = 6 + strlen("good \xC3\xA9 then ");

    /* Fragment 1 alone, in one write: error in that write. */
    struct run r;
    run_init(&r, BIG, true);
    run_feed(&r, b.p, f2);
    assert_error(&r, WS_CLOSE_BAD_DATA);
    assert_int_equal(r.err_feed, 0);
    run_free(&r);

    /* Fed up to and including the bad byte: error; one byte less: none. */
    run_init(&r, BIG, true);
    run_feed(&r, b.p, bad_at + 1);
    assert_error(&r, WS_CLOSE_BAD_DATA);
    run_free(&r);
    run_init(&r, BIG, true);
    run_feed(&r, b.p, bad_at);
    assert_no_error(&r);
    run_free(&r);

    expect_error_at(&b, BIG, true, WS_CLOSE_BAD_DATA, bad_at);
    bytes_free(&b);

    /* A bad continuation byte in the second fragment of a character that
     * started in the first: reported on that byte. */
    add_str(&b, WS_OP_TEXT, false, "a\xE2");
    size_t at = add_str(&b, WS_OP_CONT, true, "\x82" "A");
    expect_error_at(&b, BIG, true, WS_CLOSE_BAD_DATA, at + 6 + 1);
    bytes_free(&b);
}

static void test_utf8_split_across_fragments(void **state)
{
    (void)state;
    struct bytes b = {0};
    add_str(&b, WS_OP_TEXT, false, "a\xE2\x82");
    add_str(&b, WS_OP_CONT, true, "\xAC" "b");
    /* A four-byte character one byte per fragment, with a ping inside. */
    add_str(&b, WS_OP_TEXT, false, "\xF0");
    add_str(&b, WS_OP_CONT, false, "\x9F");
    add_str(&b, WS_OP_PING, true, "\xFF not text");
    add_str(&b, WS_OP_CONT, false, "\x98");
    add_str(&b, WS_OP_CONT, true, "\x80");
    struct run r;
    run_all_splits(&r, b.p, b.len, BIG, true);
    assert_no_error(&r);
    assert_int_equal(r.n, 3);
    assert_msg(&r, 0, WS_OP_TEXT, "a\xE2\x82\xAC" "b");
    assert_ctrl(&r, 1, WS_OP_PING, "\xFF not text");
    assert_msg(&r, 2, WS_OP_TEXT, "\xF0\x9F\x98\x80");
    run_free(&r);
    bytes_free(&b);
}

static void test_utf8_truncated_at_end(void **state)
{
    (void)state;
    struct bytes b = {0};
    add_str(&b, WS_OP_TEXT, true, "abc\xC3");
    expect_error_at(&b, BIG, true, WS_CLOSE_BAD_DATA, b.len - 1);
    bytes_free(&b);

    add_str(&b, WS_OP_TEXT, false, "abc\xF0\x9F");
    add_str(&b, WS_OP_CONT, true, "\x98");
    expect_error_at(&b, BIG, true, WS_CLOSE_BAD_DATA, b.len - 1);
    bytes_free(&b);

    /* The final fragment is empty: the verdict comes with its header. */
    add_str(&b, WS_OP_TEXT, false, "\xE2\x82");
    add_str(&b, WS_OP_CONT, true, "");
    expect_error_at(&b, BIG, true, WS_CLOSE_BAD_DATA, b.len - 1);
    bytes_free(&b);

    /* A text message's UTF-8 state does not leak into the next one. */
    add_str(&b, WS_OP_BINARY, true, "\xE2\x82");
    add_str(&b, WS_OP_TEXT, true, "ok");
    struct run r;
    run_all_splits(&r, b.p, b.len, BIG, true);
    assert_no_error(&r);
    assert_msg(&r, 1, WS_OP_TEXT, "ok");
    run_free(&r);
    bytes_free(&b);
}

/* ---- close frames -------------------------------------------------------- */

static void close_frame(struct bytes *b, unsigned code, const char *reason, size_t rlen)
{
    uint8_t p[WS_MAX_CONTROL];
    p[0] = (uint8_t)(code >> 8);
    p[1] = (uint8_t)code;
    memcpy(p + 2, reason, rlen);
    add_frame(b, WS_OP_CLOSE, true, p, 2 + rlen);
}

static void test_close_frames(void **state)
{
    (void)state;
    struct bytes b = {0};
    struct run r;

    /* Empty: reported with 1005. */
    add_str(&b, WS_OP_CLOSE, true, "");
    run_all_splits(&r, b.p, b.len, BIG, true);
    assert_no_error(&r);
    assert_int_equal(r.n, 1);
    assert_ctrl(&r, 0, WS_OP_CLOSE, "");
    assert_int_equal(r.rec[0].code, WS_CLOSE_NO_STATUS);
    run_free(&r);
    bytes_free(&b);

    /* Code and reason (checked in detail by run_feed). */
    close_frame(&b, 1000, "bye \xF0\x9F\x91\x8B", 8);
    run_all_splits(&r, b.p, b.len, BIG, true);
    assert_no_error(&r);
    assert_int_equal(r.n, 1);
    assert_int_equal(r.rec[0].code, 1000);
    assert_ctrl(&r, 0, WS_OP_CLOSE, "\x03\xE8" "bye \xF0\x9F\x91\x8B");
    run_free(&r);
    bytes_free(&b);

    /* Look at the event itself once. */
    close_frame(&b, 4321, "why", 3);
    struct ws_decoder d;
    ws_decoder_init(&d, BIG, true);
    struct ws_event ev;
    assert_int_equal(ws_decode(&d, b.p, b.len, &ev), b.len);
    assert_int_equal(ev.type, WS_EV_CONTROL);
    assert_int_equal(ev.opcode, WS_OP_CLOSE);
    assert_int_equal(ev.close_code, 4321);
    assert_int_equal(ev.reason_len, 3);
    assert_memory_equal(ev.reason, "why", 3);
    bytes_free(&b);

    /* One-byte payload, also right after a control frame that left a
     * valid code's second byte in the decoder's buffer. */
    add_frame(&b, WS_OP_CLOSE, true, "\x03", 1);
    expect_error_at(&b, BIG, true, WS_CLOSE_PROTOCOL, b.len - 1);
    bytes_free(&b);
    add_str(&b, WS_OP_PING, true, "\x03\xE8");
    add_frame(&b, WS_OP_CLOSE, true, "\x03", 1);
    expect_error_at(&b, BIG, true, WS_CLOSE_PROTOCOL, b.len - 1);
    bytes_free(&b);

    /* Codes a peer may not send. */
    unsigned bad[] = {0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535};
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        close_frame(&b, bad[i], "", 0);
        expect_error_at(&b, BIG, true, WS_CLOSE_PROTOCOL, b.len - 1);
        bytes_free(&b);
        close_frame(&b, bad[i], "reason", 6);
        expect_error_at(&b, BIG, true, WS_CLOSE_PROTOCOL, b.len - 1);
        bytes_free(&b);
    }

    /* Codes a peer may send. */
    unsigned good[] = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
                       3000, 3999, 4000, 4999};
    for (size_t i = 0; i < ARRAY_LEN(good); i++) {
        close_frame(&b, good[i], "r", 1);
        run_all_splits(&r, b.p, b.len, BIG, true);
        assert_no_error(&r);
        assert_int_equal(r.n, 1);
        assert_int_equal(r.rec[0].code, good[i]);
        run_free(&r);
        bytes_free(&b);
    }

    /* A reason that is not UTF-8. */
    const char *badr[] = {"\xFF", "ok\xC3", "\xED\xA0\x80", "\xC0\x80"};
    for (size_t i = 0; i < ARRAY_LEN(badr); i++) {
        close_frame(&b, 1000, badr[i], strlen(badr[i]));
        expect_error_at(&b, BIG, true, WS_CLOSE_BAD_DATA, b.len - 1);
        bytes_free(&b);
    }

    /* A close frame in the middle of a fragmented message is allowed. */
    add_str(&b, WS_OP_TEXT, false, "a");
    close_frame(&b, 1001, "", 0);
    run_all_splits(&r, b.p, b.len, BIG, true);
    assert_no_error(&r);
    assert_int_equal(r.n, 1);
    assert_int_equal(r.rec[0].code, 1001);
    assert_true(r.in_msg);
    run_free(&r);
    bytes_free(&b);
}

static void test_close_code_valid(void **state)
{
    (void)state;
    for (unsigned c = 0; c < 70000; c++) {
        bool want = (c >= 1000 && c <= 1003) || (c >= 1007 && c <= 1014) ||
                    (c >= 3000 && c <= 4999);
        assert_int_equal(ws_close_code_valid(c), want);
    }
}

/* ---- errors are sticky --------------------------------------------------- */

static void test_errors_sticky(void **state)
{
    (void)state;
    struct bytes bad = {0}, good = {0};
    add_str(&bad, WS_OP_CONT, true, "x");
    add_str(&good, WS_OP_TEXT, true, "hello");
    add_str(&good, WS_OP_PING, true, "");

    struct ws_decoder d;
    ws_decoder_init(&d, BIG, true);
    struct ws_event ev;
    uint8_t *buf = malloc(256);
    assert_non_null(buf);
    memcpy(buf, bad.p, bad.len);
    memcpy(buf + bad.len, good.p, good.len);
    size_t used = ws_decode(&d, buf, bad.len + good.len, &ev);
    assert_int_equal(ev.type, WS_EV_ERROR);
    assert_int_equal(ev.close_code, WS_CLOSE_PROTOCOL);
    assert_true(used <= bad.len);
    const char *reason = ev.reason;

    /* Whatever comes next, including nothing, the same error; all the
     * bytes are swallowed. */
    for (int i = 0; i < 3; i++) {
        size_t n = i == 0 ? 0 : good.len;
        memcpy(buf, good.p, good.len);
        assert_int_equal(ws_decode(&d, buf, n, &ev), n);
        assert_int_equal(ev.type, WS_EV_ERROR);
        assert_int_equal(ev.close_code, WS_CLOSE_PROTOCOL);
        assert_string_equal(ev.reason, reason);
        assert_int_equal(ev.reason_len, strlen(reason));
    }
    /* The rest of the first buffer too. */
    assert_int_equal(ws_decode(&d, buf + used, bad.len + good.len - used, &ev),
                     bad.len + good.len - used);
    assert_int_equal(ev.type, WS_EV_ERROR);

    /* Each kind of error is sticky with its own code. */
    struct bytes kinds[3] = {{0}, {0}, {0}};
    add_str(&kinds[0], WS_OP_TEXT, true, "\xFF");
    add_frame(&kinds[1], WS_OP_BINARY, true, "0123456789", 10);
    fragments_stream(&kinds[2], 3);
    uint16_t codes[3] = {WS_CLOSE_BAD_DATA, WS_CLOSE_TOO_BIG, WS_CLOSE_POLICY};
    for (int k = 0; k < 3; k++) {
        ws_decoder_init(&d, 5, true);
        d.fragment_allowance = 2;
        memcpy(buf, kinds[k].p, kinds[k].len);
        size_t off = 0;
        do {
            off += ws_decode(&d, buf + off, kinds[k].len - off, &ev);
        } while (ev.type != WS_EV_ERROR && ev.type != WS_EV_NONE);
        assert_int_equal(ev.type, WS_EV_ERROR);
        assert_int_equal(ev.close_code, codes[k]);
        memcpy(buf, good.p, good.len);
        assert_int_equal(ws_decode(&d, buf, good.len, &ev), good.len);
        assert_int_equal(ev.type, WS_EV_ERROR);
        assert_int_equal(ev.close_code, codes[k]);
        bytes_free(&kinds[k]);
    }
    free(buf);
    bytes_free(&bad);
    bytes_free(&good);
}

/* ---- encoder ------------------------------------------------------------- */

static void test_frame_header(void **state)
{
    (void)state;
    uint8_t out[WS_MAX_HEADER];
    struct {
        uint64_t len;
        size_t hl;
    } cases[] = {{0, 2}, {1, 2}, {125, 2}, {126, 4}, {127, 4}, {65535, 4}, {65536, 10},
                 {100000, 10}, {UINT64_MAX >> 1, 10}};
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        assert_int_equal(ws_frame_header(out, WS_OP_TEXT, true, cases[i].len), cases[i].hl);
        const uint8_t mask[4] = {0xA1, 0xB2, 0xC3, 0xD4};
        assert_int_equal(ws_frame_header_masked(out, WS_OP_TEXT, true, cases[i].len, mask),
                         cases[i].hl + 4);
        assert_memory_equal(out + cases[i].hl, mask, 4);
        assert_int_equal(out[1] & 0x80, 0x80);
    }

    static const uint8_t e0[] = {0x81, 0x00};
    static const uint8_t e125[] = {0x82, 0x7D};
    static const uint8_t e126[] = {0x81, 0x7E, 0x00, 0x7E};
    static const uint8_t e65535[] = {0x01, 0x7E, 0xFF, 0xFF};
    static const uint8_t e65536[] = {0x00, 0x7F, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00};
    static const uint8_t ebig[] = {0x80, 0x7F, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08};
    static const uint8_t eping[] = {0x89, 0x04};
    static const uint8_t eclose[] = {0x88, 0x02};
    static const uint8_t epong[] = {0x8A, 0x7D};

    assert_int_equal(ws_frame_header(out, WS_OP_TEXT, true, 0), 2);
    assert_memory_equal(out, e0, 2);
    assert_int_equal(ws_frame_header(out, WS_OP_BINARY, true, 125), 2);
    assert_memory_equal(out, e125, 2);
    assert_int_equal(ws_frame_header(out, WS_OP_TEXT, true, 126), 4);
    assert_memory_equal(out, e126, 4);
    assert_int_equal(ws_frame_header(out, WS_OP_TEXT, false, 65535), 4);
    assert_memory_equal(out, e65535, 4);
    assert_int_equal(ws_frame_header(out, WS_OP_CONT, false, 65536), 10);
    assert_memory_equal(out, e65536, 10);
    assert_int_equal(ws_frame_header(out, WS_OP_CONT, true, 0x0102030405060708ULL), 10);
    assert_memory_equal(out, ebig, 10);
    assert_int_equal(ws_frame_header(out, WS_OP_PING, true, 4), 2);
    assert_memory_equal(out, eping, 2);
    assert_int_equal(ws_frame_header(out, WS_OP_CLOSE, true, 2), 2);
    assert_memory_equal(out, eclose, 2);
    assert_int_equal(ws_frame_header(out, WS_OP_PONG, true, 125), 2);
    assert_memory_equal(out, epong, 2);

    const uint8_t mask[4] = {0xDE, 0xAD, 0xBE, 0xEF};
    static const uint8_t m126[] = {0x82, 0xFE, 0x00, 0x7E, 0xDE, 0xAD, 0xBE, 0xEF};
    static const uint8_t m65536[] = {0x81, 0xFF, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00,
                                     0xDE, 0xAD, 0xBE, 0xEF};
    static const uint8_t m5[] = {0x89, 0x85, 0xDE, 0xAD, 0xBE, 0xEF};
    assert_int_equal(ws_frame_header_masked(out, WS_OP_BINARY, true, 126, mask), 8);
    assert_memory_equal(out, m126, 8);
    assert_int_equal(ws_frame_header_masked(out, WS_OP_TEXT, true, 65536, mask), 14);
    assert_memory_equal(out, m65536, 14);
    assert_int_equal(ws_frame_header_masked(out, WS_OP_PING, true, 5, mask), 6);
    assert_memory_equal(out, m5, 6);
}

/* An unmasked server frame decodes back (require_mask off, as a client). */
static void test_frame_header_decodes(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(sizes); i++) {
        uint8_t h[WS_MAX_HEADER];
        size_t hl = ws_frame_header(h, WS_OP_BINARY, true, sizes[i]);
        struct ws_decoder d;
        ws_decoder_init(&d, BIG, false);
        struct ws_event ev;
        assert_int_equal(ws_decode(&d, h, hl, &ev), hl);
        if (sizes[i] == 0) {
            assert_int_equal(ev.type, WS_EV_DATA);
            assert_true(ev.first && ev.last);
        } else {
            assert_int_equal(ev.type, WS_EV_NONE);
            assert_true(ws_decoder_in_message(&d));
        }
    }
}

static void test_close_payload(void **state)
{
    (void)state;
    uint8_t out[WS_MAX_CONTROL];
    assert_int_equal(ws_close_payload(out, 1000, ""), 2);
    assert_int_equal(out[0], 0x03);
    assert_int_equal(out[1], 0xE8);
    assert_int_equal(ws_close_payload(out, 4999, "bye"), 5);
    assert_memory_equal(out, "\x13\x87" "bye", 5);

    char reason[400];
    struct {
        const char *unit;
        size_t prefix; /* ASCII bytes before the repeated unit */
        size_t want;   /* reason bytes kept */
    } cases[] = {
        {"a", 0, 123},             /* plain ASCII: cut at 123 */
        {"\xC3\xA9", 0, 122},      /* 2-byte chars: 123 is odd, keep 61 */
        {"\xE2\x82\xAC", 0, 123},  /* 3-byte chars: 41 fit exactly */
        {"\xF0\x9F\x98\x80", 0, 120},
        {"\xC3\xA9", 122, 122},    /* a 2-byte char straddles 123 */
        {"\xE2\x82\xAC", 121, 121},
        {"\xE2\x82\xAC", 122, 122},
        {"\xE2\x82\xAC", 120, 123},
        {"\xF0\x9F\x98\x80", 121, 121},
        {"\xF0\x9F\x98\x80", 119, 123},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        size_t n = 0;
        memset(reason, 'r', cases[i].prefix);
        n = cases[i].prefix;
        size_t ul = strlen(cases[i].unit);
        while (n + ul < sizeof reason - 1) {
            memcpy(reason + n, cases[i].unit, ul);
            n += ul;
        }
        reason[n] = 0;
        memset(out, 0xEE, sizeof out);
        size_t got = ws_close_payload(out, 1001, reason);
        assert_int_equal(got, 2 + cases[i].want);
        assert_true(got <= WS_MAX_CONTROL);
        assert_memory_equal(out + 2, reason, cases[i].want);
        assert_true(utf8_valid(out + 2, got - 2));

        /* The payload makes a valid close frame. */
        struct bytes b = {0};
        add_frame(&b, WS_OP_CLOSE, true, out, got);
        struct run r;
        run_init(&r, BIG, true);
        run_feed(&r, b.p, b.len);
        assert_no_error(&r);
        assert_int_equal(r.rec[0].code, 1001);
        assert_rec(&r, 0, R_CTRL, WS_OP_CLOSE, out, got);
        run_free(&r);
        bytes_free(&b);
    }

    /* Exactly 123 bytes fit untouched; a short reason is copied as is. */
    memset(reason, 'q', 123);
    reason[123] = 0;
    assert_int_equal(ws_close_payload(out, 1000, reason), 125);
    assert_memory_equal(out + 2, reason, 123);
    assert_int_equal(ws_close_payload(out, 1011, "\xC3\xA9"), 4);
    assert_memory_equal(out, "\x03\xF3\xC3\xA9", 4);
}

/* at_rest: true only between frames and outside fragmented messages. */
static void test_decoder_at_rest(void **state)
{
    (void)state;
    struct ws_decoder d;
    struct ws_event ev;
    ws_decoder_init(&d, 1000, true);
    assert_true(ws_decoder_at_rest(&d));
    const uint8_t mask[4] = {1, 2, 3, 4};
    uint8_t f[32];
    size_t h = ws_frame_header_masked(f, WS_OP_TEXT, true, 3, mask);
    memcpy(f + h, "abc", 3);
    ws_mask(f + h, 3, mask, 0);
    /* Half a header, then the rest. */
    assert_int_equal(ws_decode(&d, f, 1, &ev), 1);
    assert_false(ws_decoder_at_rest(&d));
    size_t used = ws_decode(&d, f + 1, h + 3 - 1, &ev);
    assert_int_equal(ev.type, WS_EV_DATA);
    assert_true(ev.last);
    assert_int_equal(ws_decode(&d, f + 1 + used, h + 3 - 1 - used, &ev), 0);
    assert_true(ws_decoder_at_rest(&d));
    /* Inside a fragmented message. */
    h = ws_frame_header_masked(f, WS_OP_TEXT, false, 0, mask);
    ws_decode(&d, f, h, &ev);
    assert_false(ws_decoder_at_rest(&d));
}

/* A close with a code and no reason (NULL) is just the two code bytes. */
static void test_close_payload_null_reason(void **state)
{
    (void)state;
    uint8_t out[WS_MAX_CONTROL];
    assert_int_equal(ws_close_payload(out, 1000, NULL), 2);
    assert_int_equal(out[0], 0x03);
    assert_int_equal(out[1], 0xE8);
}
/* ---- masking ------------------------------------------------------------- */

static void test_mask(void **state)
{
    (void)state;
    const uint8_t mask[4] = {0x12, 0x9A, 0xFE, 0x01};
    uint8_t buf[40], ref[40], orig[40];
    for (unsigned align = 0; align < 8; align++)
        for (unsigned off = 0; off < 4; off++)
            for (size_t n = 0; n <= 20; n++) {
                fill_binary(orig, sizeof orig, (uint32_t)(n * 31 + off));
                memcpy(buf, orig, sizeof buf);
                memcpy(ref, orig, sizeof ref);
                for (size_t i = 0; i < n; i++)
                    ref[align + i] ^= mask[(off + i) % 4];
                ws_mask(buf + align, n, mask, off);
                /* Bytes outside [align, align + n) are untouched. */
                assert_memory_equal(buf, ref, sizeof buf);
                /* Masking twice restores the input. */
                ws_mask(buf + align, n, mask, off);
                assert_memory_equal(buf, orig, sizeof buf);
            }

    /* Unmasking in pieces, carrying the offset, equals unmasking at once. */
    uint8_t whole[37], parts[37];
    fill_binary(whole, sizeof whole, 77);
    memcpy(parts, whole, sizeof parts);
    ws_mask(whole, sizeof whole, mask, 0);
    size_t pos = 0;
    size_t steps[] = {1, 2, 3, 5, 7, 11, 8};
    for (size_t i = 0; i < ARRAY_LEN(steps); i++) {
        ws_mask(parts + pos, steps[i], mask, (unsigned)(pos & 3));
        pos += steps[i];
    }
    assert_int_equal(pos, sizeof whole);
    assert_memory_equal(whole, parts, sizeof whole);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_text),
        cmocka_unit_test(test_roundtrip_binary),
        cmocka_unit_test(test_roundtrip_unmasked),
        cmocka_unit_test(test_rfc_examples),
        cmocka_unit_test(test_every_split_one_frame),
        cmocka_unit_test(test_every_split_two_frames),
        cmocka_unit_test(test_splits_64bit_frame),
        cmocka_unit_test(test_fragmented_with_controls),
        cmocka_unit_test(test_empty_fragments),
        cmocka_unit_test(test_chunk_flags),
        cmocka_unit_test(test_rsv_bits),
        cmocka_unit_test(test_reserved_opcodes),
        cmocka_unit_test(test_control_not_final),
        cmocka_unit_test(test_control_too_long),
        cmocka_unit_test(test_unmasked_refused),
        cmocka_unit_test(test_continuation_outside_message),
        cmocka_unit_test(test_new_message_inside_fragmented),
        cmocka_unit_test(test_length_top_bit),
        cmocka_unit_test(test_max_message_single),
        cmocka_unit_test(test_max_message_fragments),
        cmocka_unit_test(test_fragment_rule),
        cmocka_unit_test(test_fragment_rule_large_messages),
        cmocka_unit_test(test_fragment_flood),
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_utf8_fail_fast),
        cmocka_unit_test(test_utf8_split_across_fragments),
        cmocka_unit_test(test_utf8_truncated_at_end),
        cmocka_unit_test(test_close_frames),
        cmocka_unit_test(test_close_code_valid),
        cmocka_unit_test(test_errors_sticky),
        cmocka_unit_test(test_frame_header),
        cmocka_unit_test(test_frame_header_decodes),
        cmocka_unit_test(test_close_payload),
        cmocka_unit_test(test_close_payload_null_reason),
        cmocka_unit_test(test_decoder_at_rest),
        cmocka_unit_test(test_mask),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
