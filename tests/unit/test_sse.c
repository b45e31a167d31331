/*
 * Server-sent events parser tests (src/http/sse): the two stream shapes the
 * assistant reads (OpenAI chat completions, Anthropic Messages), the field
 * rules (data joining, the optional space, comments, ignored and unknown
 * fields, lines without a colon), the three line ends, the byte order mark,
 * the bounds (exactly at them accepted, one byte over refused, sticky), a
 * stream that stops before its blank line, the callback's stop, and the
 * incremental contract: a sample stream fed whole, one byte at a time, in
 * every two-chunk split and in pseudo-random chunks reports the same events.
 *
 * Events are recorded as "name|data\n" in one log, so a test compares a
 * whole stream's outcome with one string.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "http/sse.h"

#define L(s) (s), (sizeof(s) - 1)

struct rec {
    char log[16384];
    size_t len;
    int events;
    int stop_at; /* return stop_rc from this event on (1-based), 0: never */
    int stop_rc;
};

static int on_event(void *arg, const struct sse_event *ev)
{
    struct rec *r = arg;
    assert_non_null(ev->name);
    assert_non_null(ev->data);
    assert_int_equal(ev->name[ev->name_len], '\0');
    assert_int_equal(ev->data[ev->data_len], '\0');
    assert_true(r->len + ev->name_len + ev->data_len + 2 <= sizeof r->log);
    memcpy(r->log + r->len, ev->name, ev->name_len);
    r->len += ev->name_len;
    r->log[r->len++] = '|';
    memcpy(r->log + r->len, ev->data, ev->data_len);
    r->len += ev->data_len;
    r->log[r->len++] = '\n';
    r->events++;
    if (r->stop_at && r->events >= r->stop_at)
        return r->stop_rc;
    return 0;
}

static void rec_init(struct rec *r)
{
    memset(r, 0, sizeof *r);
}

static void assert_log(const struct rec *r, const char *want, size_t want_len)
{
    if (r->len != want_len || memcmp(r->log, want, want_len) != 0) {
        print_error("log:\n%.*s\nwanted:\n%.*s\n", (int)r->len, r->log, (int)want_len, want);
        fail();
    }
}

#define ASSERT_LOG(r, lit) assert_log((r), (lit), sizeof(lit) - 1)

/* Feed s whole into a fresh parser; return sse_feed's result. */
static int parse_whole(const char *s, size_t n, size_t max_line, size_t max_event, struct rec *r,
                       bool *pending)
{
    struct sse_parser p;
    assert_int_equal(sse_init(&p, max_line, max_event), 0);
    int rc = sse_feed(&p, s, n, on_event, r);
    if (pending)
        *pending = sse_pending(&p);
    sse_release(&p);
    return rc;
}

/* Feed s in the given pieces (sizes summing to n), each copied into a buffer
 * of exactly its size so that ASan sees any read outside it. Returns the
 * first nonzero result, after checking that the parser stays failed. */
static int parse_pieces(const char *s, size_t n, const size_t *sizes, size_t nsizes,
                        size_t max_line, size_t max_event, struct rec *r)
{
    size_t total = 0;
    for (size_t k = 0; k < nsizes; k++)
        total += sizes[k];
    assert_int_equal(total, n);
    struct sse_parser p;
    assert_int_equal(sse_init(&p, max_line, max_event), 0);
    size_t off = 0;
    int rc = 0;
    for (size_t k = 0; k < nsizes && rc == 0; k++) {
        char *piece = malloc(sizes[k] ? sizes[k] : 1);
        assert_non_null(piece);
        memcpy(piece, s + off, sizes[k]);
        rc = sse_feed(&p, piece, sizes[k], on_event, r);
        free(piece);
        off += sizes[k];
    }
    if (rc) {
        int events = r->events;
        assert_int_equal(sse_feed(&p, L("\n\ndata: more\n\n"), on_event, r), rc);
        assert_int_equal(sse_feed(&p, NULL, 0, on_event, r), rc);
        assert_int_equal(r->events, events);
    } else {
        assert_int_equal(off, n);
    }
    sse_release(&p);
    return rc;
}

static void test_init_bounds(void **state)
{
    (void)state;
    struct sse_parser p;
    assert_int_equal(sse_init(&p, 0, 10), -EINVAL);
    assert_int_equal(sse_init(&p, 10, 0), -EINVAL);
    assert_int_equal(sse_init(&p, SSE_MAX_BOUND + 1, 10), -EINVAL);
    assert_int_equal(sse_init(&p, 10, SSE_MAX_BOUND + 1), -EINVAL);
    assert_int_equal(sse_init(&p, SSE_MAX_BOUND, SSE_MAX_BOUND), 0);
    assert_false(sse_pending(&p));
    assert_int_equal(sse_feed(&p, NULL, 0, on_event, NULL), 0);
    sse_release(&p);
    /* Released twice, and initialized again after a release: both fine. */
    sse_release(&p);
    assert_int_equal(sse_init(&p, 1, 1), 0);
    sse_release(&p);
}

/* What an OpenAI-compatible endpoint sends for "Hi there" with usage. */
static const char OPENAI[] =
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,"
    "\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n"
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,"
    "\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n"
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,"
    "\"delta\":{\"content\":\" th\xC3\xA9re\"},\"finish_reason\":null}]}\n\n"
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,"
    "\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n"
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],"
    "\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n"
    "data: [DONE]\n\n";

static void test_openai_stream(void **state)
{
    (void)state;
    struct rec r;
    rec_init(&r);
    bool pending = true;
    assert_int_equal(parse_whole(L(OPENAI), 4096, 65536, &r, &pending), 0);
    assert_false(pending);
    assert_int_equal(r.events, 6);
    ASSERT_LOG(&r, "|{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,"
                   "\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n"
                   "|{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,"
                   "\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n"
                   "|{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,"
                   "\"delta\":{\"content\":\" th\xC3\xA9re\"},\"finish_reason\":null}]}\n"
                   "|{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,"
                   "\"delta\":{},\"finish_reason\":\"stop\"}]}\n"
                   "|{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],"
                   "\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n"
                   "|[DONE]\n");
}

/* The shape of Anthropic's Messages stream, ping included. */
static const char ANTHROPIC[] =
    "event: message_start\n"
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"role\":\"assistant\","
    "\"content\":[],\"usage\":{\"input_tokens\":7,\"output_tokens\":1}}}\n\n"
    "event: content_block_start\n"
    "data: {\"type\":\"content_block_start\",\"index\":0,"
    "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n"
    "event: ping\n"
    "data: {\"type\": \"ping\"}\n\n"
    "event: content_block_delta\n"
    "data: {\"type\":\"content_block_delta\",\"index\":0,"
    "\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\"}}\n\n"
    "event: content_block_delta\n"
    "data: {\"type\":\"content_block_delta\",\"index\":0,"
    "\"delta\":{\"type\":\"text_delta\",\"text\":\"lo \xF0\x9F\x99\x82\"}}\n\n"
    "event: content_block_stop\n"
    "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n"
    "event: message_delta\n"
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\","
    "\"stop_sequence\":null},\"usage\":{\"output_tokens\":2}}\n\n"
    "event: message_stop\n"
    "data: {\"type\":\"message_stop\"}\n\n";

static void test_anthropic_stream(void **state)
{
    (void)state;
    struct rec r;
    rec_init(&r);
    assert_int_equal(parse_whole(L(ANTHROPIC), 4096, 65536, &r, NULL), 0);
    assert_int_equal(r.events, 8);
    ASSERT_LOG(&r, "message_start|{\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\","
                   "\"role\":\"assistant\",\"content\":[],\"usage\":{\"input_tokens\":7,"
                   "\"output_tokens\":1}}}\n"
                   "content_block_start|{\"type\":\"content_block_start\",\"index\":0,"
                   "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n"
                   "ping|{\"type\": \"ping\"}\n"
                   "content_block_delta|{\"type\":\"content_block_delta\",\"index\":0,"
                   "\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\"}}\n"
                   "content_block_delta|{\"type\":\"content_block_delta\",\"index\":0,"
                   "\"delta\":{\"type\":\"text_delta\",\"text\":\"lo \xF0\x9F\x99\x82\"}}\n"
                   "content_block_stop|{\"type\":\"content_block_stop\",\"index\":0}\n"
                   "message_delta|{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":"
                   "\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":2}}\n"
                   "message_stop|{\"type\":\"message_stop\"}\n");
}

/* A stream with a bit of everything, for the split tests: a byte order
 * mark, all three line ends (a CRLF right where a split may fall between
 * CR and LF), comments, multi-line and empty data, fields that are
 * ignored, lines without a colon, a NUL byte in data. */
static const char SAMPLE[] = "\xEF\xBB\xBF"
                             ": welcome\r\n"
                             "event: first\r\n"
                             "data: one\r\n"
                             "\r\n"
                             "data:two\rdata:  three\r\r"
                             "id: 42\n"
                             "retry: 3000\n"
                             "event: x\n"
                             "event: second\n"
                             "unknown: field\n"
                             "data\n"
                             "data: a\x00z\n"
                             ":\n"
                             "\n"
                             "event: nodata\n"
                             "\n"
                             "data: {\"k\":\"\xE2\x82\xAC\"}\r\n"
                             "\r\n"
                             "data: tail-no-blank-line\n";

static const char SAMPLE_LOG[] = "first|one\n"
                                 "|two\n three\n"
                                 "second|\na\x00z\n"
                                 "|{\"k\":\"\xE2\x82\xAC\"}\n";

static void test_sample_whole(void **state)
{
    (void)state;
    struct rec r;
    rec_init(&r);
    bool pending = false;
    assert_int_equal(parse_whole(L(SAMPLE), 64, 64, &r, &pending), 0);
    assert_int_equal(r.events, 4);
    ASSERT_LOG(&r, SAMPLE_LOG);
    /* The last data line has no blank line after it: held, not reported. */
    assert_true(pending);
}

static void test_sample_bytewise(void **state)
{
    (void)state;
    size_t n = sizeof SAMPLE - 1;
    size_t sizes[sizeof SAMPLE];
    for (size_t i = 0; i < n; i++)
        sizes[i] = 1;
    struct rec r;
    rec_init(&r);
    assert_int_equal(parse_pieces(SAMPLE, n, sizes, n, 64, 64, &r), 0);
    ASSERT_LOG(&r, SAMPLE_LOG);
}

static void test_sample_two_chunks(void **state)
{
    (void)state;
    size_t n = sizeof SAMPLE - 1;
    for (size_t cut = 0; cut <= n; cut++) {
        size_t sizes[2] = {cut, n - cut};
        struct rec r;
        rec_init(&r);
        assert_int_equal(parse_pieces(SAMPLE, n, sizes, 2, 64, 64, &r), 0);
        ASSERT_LOG(&r, SAMPLE_LOG);
    }
}

static void test_sample_three_chunks(void **state)
{
    (void)state;
    size_t n = sizeof SAMPLE - 1;
    for (size_t a = 0; a <= n; a++)
        for (size_t b = a; b <= n; b++) {
            size_t sizes[3] = {a, b - a, n - b};
            struct rec r;
            rec_init(&r);
            assert_int_equal(parse_pieces(SAMPLE, n, sizes, 3, 64, 64, &r), 0);
            ASSERT_LOG(&r, SAMPLE_LOG);
        }
}

/* Both provider streams in pseudo-random pieces (empty ones included). */
static void test_streams_random_chunks(void **state)
{
    (void)state;
    const char *streams[2] = {OPENAI, ANTHROPIC};
    size_t lens[2] = {sizeof OPENAI - 1, sizeof ANTHROPIC - 1};
    for (int s = 0; s < 2; s++) {
        struct rec whole;
        rec_init(&whole);
        assert_int_equal(parse_whole(streams[s], lens[s], 4096, 65536, &whole, NULL), 0);
        uint32_t seed = 12345;
        for (int round = 0; round < 200; round++) {
            size_t sizes[2048], k = 0, left = lens[s];
            while (left) {
                seed = seed * 1103515245u + 12345u;
                size_t z = (seed >> 16) % 24;
                if (z > left)
                    z = left;
                sizes[k++] = z;
                left -= z;
            }
            struct rec r;
            rec_init(&r);
            assert_int_equal(parse_pieces(streams[s], lens[s], sizes, k, 4096, 65536, &r), 0);
            assert_log(&r, whole.log, whole.len);
        }
    }
}

static void test_line_ends(void **state)
{
    (void)state;
    const char *forms[3][2] = {
        {"event: e\ndata: 1\ndata: 2\n\ndata: 3\n\n", "LF"},
        {"event: e\r\ndata: 1\r\ndata: 2\r\n\r\ndata: 3\r\n\r\n", "CRLF"},
        {"event: e\rdata: 1\rdata: 2\r\rdata: 3\r\r", "CR"},
    };
    for (int i = 0; i < 3; i++) {
        struct rec r;
        rec_init(&r);
        assert_int_equal(parse_whole(forms[i][0], strlen(forms[i][0]), 64, 64, &r, NULL), 0);
        ASSERT_LOG(&r, "e|1\n2\n|3\n");
    }
    /* Mixed: LF then CR is a blank line; CR LF is one line end, not two;
     * LF CR LF is a line end then a blank line. */
    struct rec r;
    rec_init(&r);
    assert_int_equal(parse_whole(L("data: a\n\rdata: b\r\ndata: c\n\r\n"), 64, 64, &r, NULL), 0);
    ASSERT_LOG(&r, "|a\n|b\nc\n");
    /* A CR at the end of one feed and an LF at the start of the next. */
    struct sse_parser p;
    rec_init(&r);
    assert_int_equal(sse_init(&p, 64, 64), 0);
    assert_int_equal(sse_feed(&p, L("data: x\r"), on_event, &r), 0);
    assert_int_equal(sse_feed(&p, L("\n"), on_event, &r), 0);
    assert_int_equal(r.events, 0); /* not a blank line */
    assert_int_equal(sse_feed(&p, L("\r"), on_event, &r), 0);
    assert_int_equal(r.events, 1);
    assert_int_equal(sse_feed(&p, L("\n"), on_event, &r), 0); /* the CR's pair */
    assert_int_equal(sse_feed(&p, L("data: y\r\r"), on_event, &r), 0);
    sse_release(&p);
    ASSERT_LOG(&r, "|x\n|y\n");
}

static void test_comments(void **state)
{
    (void)state;
    struct rec r;
    rec_init(&r);
    /* Comments alone, between data lines and as keep-alives between events;
     * a comment does not end an event, and an event of comments only is
     * not reported. */
    assert_int_equal(parse_whole(L(": keep-alive\n\n"
                                   ":\n\n"
                                   "data: a\n"
                                   ": in the middle data: no\n"
                                   "data: b\n"
                                   "\n"
                                   ": OPENROUTER PROCESSING\n\n"),
                                 64, 64, &r, NULL),
                     0);
    ASSERT_LOG(&r, "|a\nb\n");
}

static void test_fields(void **state)
{
    (void)state;
    struct rec r;
    rec_init(&r);
    assert_int_equal(parse_whole(L("data:nospace\n\n"
                                   "data:  two spaces\n\n"
                                   "data:\tab\n\n"
                                   "data: colon: inside\n\n"
                                   "data\n\n"
                                   "data:\n\n"
                                   "data:\ndata:\n\n"
                                   "data: \n\n"),
                                 64, 64, &r, NULL),
                     0);
    ASSERT_LOG(&r, "|nospace\n"
                   "| two spaces\n"
                   "|\tab\n"
                   "|colon: inside\n"
                   "|\n"
                   "|\n"
                   "|\n\n"
                   "|\n");
    assert_int_equal(r.events, 8);

    rec_init(&r);
    /* Names: the last `event:` wins, `event` alone clears it, and the name
     * does not carry over to the next event. An event without data is
     * dropped, name and all. Field names are case-sensitive and exact. */
    assert_int_equal(parse_whole(L("event: a\nevent: b\ndata: 1\n\n"
                                   "data: 2\n\n"
                                   "event: c\nevent\ndata: 3\n\n"
                                   "event: lost\n\n"
                                   "data: 4\n\n"
                                   "Data: no\nDATA: no\ndata : no\n datax: no\n\n"
                                   "datum: no\ndat: no\nevents: no\neventx: no\ndata: 5\n\n"
                                   "id\nid: 7\nretry: x\nretry\n\n"
                                   "event:\xE2\x82\xAC\ndata: 6\n\n"),
                                 64, 64, &r, NULL),
                     0);
    ASSERT_LOG(&r, "b|1\n|2\n|3\n|4\n|5\n\xE2\x82\xAC|6\n");
}

static void test_bom(void **state)
{
    (void)state;
    struct rec r;
    rec_init(&r);
    assert_int_equal(parse_whole(L("\xEF\xBB\xBF"
                                   "data: a\n\n"),
                                 64, 64, &r, NULL),
                     0);
    ASSERT_LOG(&r, "|a\n");
    /* Only one, only at the start: a second one is part of the field name,
     * which then names no known field. */
    rec_init(&r);
    assert_int_equal(parse_whole(L("\xEF\xBB\xBF\xEF\xBB\xBF"
                                   "data: a\n\n"
                                   "data: \xEF\xBB\xBF"
                                   "b\n\n"),
                                 64, 64, &r, NULL),
                     0);
    ASSERT_LOG(&r, "|\xEF\xBB\xBF"
                   "b\n");
    /* A partial mark is replayed as input: here the line "\xEF\xBB" then a
     * data line, and a "\xEF" glued to a field name. */
    rec_init(&r);
    assert_int_equal(parse_whole(L("\xEF\xBB\n"
                                   "data: c\n\n"),
                                 64, 64, &r, NULL),
                     0);
    ASSERT_LOG(&r, "|c\n");
    rec_init(&r);
    assert_int_equal(parse_whole(L("\xEF"
                                   "data: d\n\n"
                                   "data: e\n\n"),
                                 64, 64, &r, NULL),
                     0);
    ASSERT_LOG(&r, "|e\n");
    /* A mark split across feeds, and a partial mark counts as pending. */
    struct sse_parser p;
    rec_init(&r);
    assert_int_equal(sse_init(&p, 64, 64), 0);
    assert_int_equal(sse_feed(&p, L("\xEF"), on_event, &r), 0);
    assert_true(sse_pending(&p));
    assert_int_equal(sse_feed(&p, L("\xBB"), on_event, &r), 0);
    assert_int_equal(sse_feed(&p, L("\xBF"), on_event, &r), 0);
    assert_false(sse_pending(&p));
    assert_int_equal(sse_feed(&p, L("data: f\n\n"), on_event, &r), 0);
    sse_release(&p);
    ASSERT_LOG(&r, "|f\n");
    /* The partial mark's replay counts against the line bound. */
    rec_init(&r);
    assert_int_equal(parse_whole(L("\xEF\xBB"
                                   "x\n"),
                                 2, 64, &r, NULL),
                     -EMSGSIZE);
}

static void test_unterminated(void **state)
{
    (void)state;
    struct sse_parser p;
    struct rec r;
    rec_init(&r);
    assert_int_equal(sse_init(&p, 64, 64), 0);
    assert_false(sse_pending(&p));
    /* A line in progress, then a complete line: both pending, no event. */
    assert_int_equal(sse_feed(&p, L("data: par"), on_event, &r), 0);
    assert_true(sse_pending(&p));
    assert_int_equal(sse_feed(&p, L("tial\n"), on_event, &r), 0);
    assert_true(sse_pending(&p));
    assert_int_equal(r.events, 0);
    /* The blank line reports it. */
    assert_int_equal(sse_feed(&p, L("\n"), on_event, &r), 0);
    assert_false(sse_pending(&p));
    ASSERT_LOG(&r, "|partial\n");
    /* A name, a comment, an id without data: nothing that would be lost. */
    assert_int_equal(sse_feed(&p, L("event: e\n: c\nid: 1\n"), on_event, &r), 0);
    assert_false(sse_pending(&p));
    /* A CR ends a line even before the LF that may pair with it. */
    assert_int_equal(sse_feed(&p, L(": c\r"), on_event, &r), 0);
    assert_false(sse_pending(&p));
    sse_release(&p);
    assert_int_equal(r.events, 1);
}

static void test_line_bound(void **state)
{
    (void)state;
    struct rec r;
    /* 8 bytes per line is fine, terminators not counted, whatever the field;
     * 9 is not, and fails on its ninth byte, before any line end. */
    rec_init(&r);
    assert_int_equal(parse_whole(L("data: 12\r\n"
                                   ":comment\n"
                                   "event: e\n"
                                   "retry: 1\r"
                                   "\r"),
                                 8, 64, &r, NULL),
                     0);
    ASSERT_LOG(&r, "e|12\n");
    const char *over[] = {"data: 123", "data:    ", ":comment!",         "event: ev",
                          "dataxxxxx", "123456789", "data:\n\ndata: 123"};
    for (size_t i = 0; i < sizeof over / sizeof *over; i++) {
        rec_init(&r);
        assert_int_equal(parse_whole(over[i], strlen(over[i]), 8, 64, &r, NULL), -EMSGSIZE);
        /* One byte fewer is fine. */
        assert_int_equal(parse_whole(over[i], strlen(over[i]) - 1, 8, 64, &r, NULL), 0);
    }
    /* Across feeds, empty ones too, the same. */
    rec_init(&r);
    size_t sizes[] = {3, 0, 3, 1, 1, 1, 1};
    assert_int_equal(parse_pieces(L("data: 123\n"), sizes, 7, 8, 64, &r), -EMSGSIZE);
}

struct big_seen {
    size_t len;
    int n;
};

/* Checks the big event of test_event_bound: the letters, in order. */
static int on_big(void *arg, const struct sse_event *ev)
{
    struct big_seen *seen = arg;
    for (size_t i = 0; i < ev->data_len; i++)
        if (ev->data[i] != (char)('a' + (i + 6) % 26))
            return -EPROTO;
    seen->len = ev->data_len;
    seen->n++;
    return 0;
}

static void test_event_bound(void **state)
{
    (void)state;
    struct rec r;
    /* Data of exactly 8 bytes, the joining newlines counted. */
    rec_init(&r);
    assert_int_equal(parse_whole(L("data: 12345678\n\n"
                                   "data: 123\ndata: 1234\n\n"
                                   "data\ndata\ndata\ndata\ndata\ndata\ndata\ndata\ndata\n\n"
                                   "data: 1234567\n\n"),
                                 64, 8, &r, NULL),
                     0);
    ASSERT_LOG(&r, "|12345678\n|123\n1234\n|\n\n\n\n\n\n\n\n\n|1234567\n");
    /* One more byte anywhere, and it fails at that byte. */
    const char *over[] = {"data: 123456789", "data: 123\ndata: 12345",
                          "data\ndata\ndata\ndata\ndata\ndata\ndata\ndata\ndata\ndata\n",
                          "data: 1234\ndata: 1234"};
    for (size_t i = 0; i < sizeof over / sizeof *over; i++) {
        rec_init(&r);
        assert_int_equal(parse_whole(over[i], strlen(over[i]), 64, 8, &r, NULL), -EMSGSIZE);
        assert_int_equal(r.events, 0);
    }
    /* The bound is per event: events before the failing one were reported,
     * and the parser stays failed. */
    rec_init(&r);
    size_t sizes[] = {10, 10, 14};
    assert_int_equal(
        parse_pieces(L("data: 1\n\ndata: 2\n\ndata: 123456789\n"), sizes, 3, 64, 8, &r), -EMSGSIZE);
    ASSERT_LOG(&r, "|1\n|2\n");
    /* A large event within a large bound, built over many feeds: the
     * buffer grows as it goes and ends up holding all of it. */
    struct sse_parser p;
    rec_init(&r);
    assert_int_equal(sse_init(&p, 1 << 20, 1 << 20), 0);
    char *big = malloc(1 << 20);
    assert_non_null(big);
    memcpy(big, "data: ", 6);
    for (size_t i = 6; i < (1 << 20); i++)
        big[i] = (char)('a' + i % 26);
    for (size_t off = 0; off < (1 << 20); off += 1000) {
        size_t n = (1 << 20) - off < 1000 ? (1 << 20) - off : 1000;
        assert_int_equal(sse_feed(&p, big + off, n, on_event, &r), 0);
    }
    struct big_seen seen = {0, 0};
    assert_int_equal(sse_feed(&p, L("\n\n"), on_big, &seen), 0);
    assert_int_equal(seen.n, 1);
    assert_int_equal(seen.len, (1 << 20) - 6);
    sse_release(&p);
    free(big);
}

/* A callback stops the parser from its second event on: a positive value
 * comes back as -ECANCELED, a negative one as itself. */
static void test_callback_stop(void **state)
{
    (void)state;
    const char s[] = "data: 1\n\ndata: 2\n\ndata: 3\n\n";
    int asks[] = {1, 7, -ECONNRESET};
    int want[] = {-ECANCELED, -ECANCELED, -ECONNRESET};
    for (int i = 0; i < 3; i++) {
        struct rec r;
        rec_init(&r);
        r.stop_at = 2;
        r.stop_rc = asks[i];
        size_t sizes[] = {sizeof s - 1};
        assert_int_equal(parse_pieces(s, sizeof s - 1, sizes, 1, 64, 64, &r), want[i]);
        ASSERT_LOG(&r, "|1\n|2\n");
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init_bounds),
        cmocka_unit_test(test_openai_stream),
        cmocka_unit_test(test_anthropic_stream),
        cmocka_unit_test(test_sample_whole),
        cmocka_unit_test(test_sample_bytewise),
        cmocka_unit_test(test_sample_two_chunks),
        cmocka_unit_test(test_sample_three_chunks),
        cmocka_unit_test(test_streams_random_chunks),
        cmocka_unit_test(test_line_ends),
        cmocka_unit_test(test_comments),
        cmocka_unit_test(test_fields),
        cmocka_unit_test(test_bom),
        cmocka_unit_test(test_unterminated),
        cmocka_unit_test(test_line_bound),
        cmocka_unit_test(test_event_bound),
        cmocka_unit_test(test_callback_stop),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
