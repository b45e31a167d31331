/*
 * libFuzzer driver for the server-sent events parser (src/http/sse.c).
 *
 * DESIGN: the first four input bytes are settings, the rest is the event
 * stream a provider sent:
 *   byte 0  bits 0-1 split mode (fixed-size chunks, pseudo-random chunk sizes
 *           including empty feeds, one byte at a time, two halves);
 *           bits 2-4 stop after that many events (0: never), bit 5 stop
 *           with a negative errno rather than a positive value;
 *   byte 1  max_line = 1 + 2 * b1 (1..511), small so that bounds are hit;
 *   byte 2  max_event = 1 + 4 * b2 (1..1021);
 *   byte 3  split parameter (chunk size, seed or cut point).
 * The stream is parsed three ways: fed whole, fed in chunks (each copied
 * into a buffer of exactly its size so ASan sees any read outside it), and
 * by a reference model written straight from the standard's line-by-line
 * wording over the whole input, with the bounds as sse.h states them. All
 * three must report the same events, the same error (and the same events
 * before it) and, without error, the same sse_pending. Every event is also
 * checked against the contract in sse.h. A broken invariant calls abort().
 */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "chunks.h"

#include "http/sse.h"

#define MAX_LINE 511
#define MAX_EVENT 1021

/* What one parse of the stream reported, folded into a digest. */
struct fz_run {
    struct sse_parser p;
    size_t max_line, max_event;
    unsigned stop_after; /* stop at this event (1-based), 0: never */
    int stop_rc;         /* what the callback returns to stop */
    uint64_t digest;     /* FNV-1a over every event */
    unsigned events;
    int err;      /* sse_feed's first nonzero result */
    bool pending; /* sse_pending at the end, when err is 0 */
};

static void fold(struct fz_run *r, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        r->digest ^= b[i];
        r->digest *= 0x100000001b3ULL;
    }
}

/* Record one event; returns what the callback returns. */
static int record(struct fz_run *r, const char *name, size_t name_len, const char *data,
                  size_t data_len)
{
    uint64_t n = name_len, d = data_len;
    fold(r, &n, sizeof n);
    fold(r, name, name_len);
    fold(r, &d, sizeof d);
    fold(r, data, data_len);
    r->events++;
    if (r->stop_after && r->events == r->stop_after)
        return r->stop_rc;
    return 0;
}

static int on_event(void *arg, const struct sse_event *ev)
{
    struct fz_run *r = arg;
    CHECK(ev->name != NULL && ev->data != NULL);
    CHECK(ev->name[ev->name_len] == '\0' && ev->data[ev->data_len] == '\0');
    CHECK(ev->name_len <= r->max_line && ev->data_len <= r->max_event);
    /* Line ends never reach a value; data lines are joined with LF only. */
    CHECK(memchr(ev->name, '\r', ev->name_len) == NULL);
    CHECK(memchr(ev->name, '\n', ev->name_len) == NULL);
    CHECK(memchr(ev->data, '\r', ev->data_len) == NULL);
    /* No event after the one that stopped the parser. */
    CHECK(!r->stop_after || r->events < r->stop_after);
    return record(r, ev->name, ev->name_len, ev->data, ev->data_len);
}

static void run_init(struct fz_run *r, size_t max_line, size_t max_event, unsigned stop_after,
                     int stop_rc)
{
    memset(r, 0, sizeof *r);
    r->max_line = max_line;
    r->max_event = max_event;
    r->stop_after = stop_after;
    r->stop_rc = stop_rc;
    r->digest = 0xcbf29ce484222325ULL;
    CHECK(sse_init(&r->p, max_line, max_event) == 0);
}

/* Feed one chunk; returns false once the parser has failed. */
static bool run_feed(struct fz_run *r, const uint8_t *s, size_t n)
{
    if (r->err)
        return false;
    char *buf = malloc(n ? n : 1);
    CHECK(buf != NULL);
    if (n)
        memcpy(buf, s, n);
    r->err = sse_feed(&r->p, buf, n, on_event, r);
    CHECK(r->err <= 0);
    if (r->err) {
        /* Sticky, and nothing more is reported. */
        unsigned events = r->events;
        CHECK(sse_feed(&r->p, buf, n, on_event, r) == r->err);
        CHECK(sse_feed(&r->p, NULL, 0, on_event, r) == r->err);
        CHECK(r->events == events);
    }
    free(buf);
    return r->err == 0;
}

static void run_end(struct fz_run *r)
{
    if (!r->err)
        r->pending = sse_pending(&r->p);
    sse_release(&r->p);
}

/*
 * The reference model: split the whole input into lines first, then apply
 * the standard's rules to each line, with the bounds of sse.h. It keeps
 * what the incremental parser must agree with; it is slow and simple on
 * purpose. A last line with no terminator is only checked against the
 * bounds (sse.c fails on the byte that passes one, before the line ends).
 */
static void ref_run(struct fz_run *r, const uint8_t *s, size_t n)
{
    static const uint8_t bom[3] = {0xEF, 0xBB, 0xBF};
    static char data[MAX_EVENT + 1], name[MAX_LINE + 1];
    size_t dlen = 0, nlen = 0;
    bool has_data = false;

    if (n < 3 && memcmp(s, bom, n) == 0) {
        r->pending = n > 0; /* maybe a mark, not known yet */
        return;
    }
    if (n >= 3 && memcmp(s, bom, 3) == 0)
        s += 3, n -= 3;
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && s[j] != '\r' && s[j] != '\n')
            j++;
        const char *line = (const char *)s + i;
        size_t len = j - i;
        bool complete = j < n;
        if (len > r->max_line) {
            r->err = -EMSGSIZE;
            return;
        }
        const char *colon = memchr(line, ':', len);
        size_t flen = colon ? (size_t)(colon - line) : len;
        const char *value = colon ? colon + 1 : line + len;
        size_t vlen = colon ? len - flen - 1 : 0;
        if (vlen && value[0] == ' ')
            value++, vlen--;
        bool is_data = flen == 4 && memcmp(line, "data", 4) == 0;
        bool is_event = flen == 5 && memcmp(line, "event", 5) == 0;
        if (!complete) {
            /* The value of a data field streams in as it comes. */
            if (colon && is_data && dlen + has_data + vlen > r->max_event)
                r->err = -EMSGSIZE;
            else
                r->pending = len > 0 || has_data;
            return;
        }
        i = j + 1;
        if (s[j] == '\r' && i < n && s[i] == '\n')
            i++;
        if (len == 0) {
            if (!has_data) {
                nlen = 0;
                continue;
            }
            int rc = record(r, name, nlen, data, dlen);
            has_data = false;
            dlen = nlen = 0;
            if (rc) {
                r->err = rc < 0 ? rc : -ECANCELED;
                return;
            }
            continue;
        }
        if (is_data) {
            if (dlen + has_data + vlen > r->max_event) {
                r->err = -EMSGSIZE;
                return;
            }
            if (has_data)
                data[dlen++] = '\n';
            memcpy(data + dlen, value, vlen);
            dlen += vlen;
            has_data = true;
        } else if (is_event) {
            memcpy(name, value, vlen);
            nlen = vlen;
        }
    }
    r->pending = has_data;
}

static struct fz_run whole, chunked, ref;

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
    unsigned stop_after = (data[0] >> 2) & 7;
    int stop_rc = (data[0] & 0x20) ? -ECONNRESET : 1;
    size_t max_line = 1 + 2 * (size_t)data[1];
    size_t max_event = 1 + 4 * (size_t)data[2];
    unsigned param = data[3];
    const uint8_t *s = data + 4;
    size_t n = size - 4;

    run_init(&whole, max_line, max_event, stop_after, stop_rc);
    run_feed(&whole, s, n);
    run_end(&whole);

    run_init(&chunked, max_line, max_event, stop_after, stop_rc);
    fuzz_feed_chunked(mode, param, s, n, 32, feed_chunk, &chunked);
    run_end(&chunked);

    memset(&ref, 0, sizeof ref);
    ref.max_line = max_line;
    ref.max_event = max_event;
    ref.stop_after = stop_after;
    ref.stop_rc = stop_rc;
    ref.digest = 0xcbf29ce484222325ULL;
    ref_run(&ref, s, n);

    /* Differential: however the stream was split, and by the model, the
     * same events and the same outcome. */
    const struct fz_run *runs[2] = {&chunked, &ref};
    for (int k = 0; k < 2; k++) {
        CHECK(runs[k]->err == whole.err);
        CHECK(runs[k]->events == whole.events);
        CHECK(runs[k]->digest == whole.digest);
        if (!whole.err)
            CHECK(runs[k]->pending == whole.pending);
    }
    return 0;
}
