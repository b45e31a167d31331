/*
 * sse: an incremental parser for server-sent events (the text/event-stream
 * format of the WHATWG HTML standard, "Server-sent events"). Pure: no I/O,
 * no globals.
 *
 * The assistant's providers answer with event streams: OpenAI-compatible
 * chat completions send `data: {json}` events and end with `data: [DONE]`;
 * Anthropic's Messages API sends `event: NAME` + `data: {json}` pairs. The
 * outbound HTTP client hands the response body over in whatever pieces the
 * network delivers; sse_feed takes those pieces as they come (a line, or the
 * CR and LF of one line end, may be split across calls) and calls back once
 * per complete event.
 *
 * What an event is, per the standard:
 *   - Lines end with LF, CRLF or a lone CR. A blank line ends an event.
 *   - `data: VALUE` lines are joined with "\n" (no trailing newline). An
 *     event that had no data line at all is not reported (the standard
 *     drops it), but `data:` with an empty value makes an event with empty
 *     data.
 *   - `event: NAME` names the event (the last one in the event wins); the
 *     name is empty when there was none. The standard's default name
 *     ("message") is left to the caller.
 *   - After the colon one optional space is dropped (`data:x` and `data: x`
 *     are the same; `data:  x` keeps one space). A line with no colon is a
 *     field with an empty value (`data` alone is an empty data line).
 *   - Lines starting with `:` are comments (keep-alives), ignored.
 *   - `id:` and `retry:` exist so that a browser can reconnect a GET; chatd
 *     never reconnects a stream (a model answer is a POST and cannot be
 *     resumed), so both are parsed and ignored, as are unknown fields.
 *     Field names are case-sensitive (`Data:` is an unknown field).
 *   - One UTF-8 byte order mark at the very start of the stream is skipped.
 * Bytes are passed through as they are: UTF-8 is not checked here (the
 * JSON decoder that reads each event's data does that) and data may even
 * contain NUL bytes, so use the lengths.
 *
 * End of stream. An event is reported only when its blank line arrives. A
 * stream that stops without one (the provider closed early, or a server that
 * omits the last blank line) leaves its last event unreported, as the
 * standard says; sse_pending tells the caller that such a remainder exists,
 * so it can tell a cut stream from a clean end.
 *
 * Bounds. max_line caps the bytes of any one line, the terminator not
 * counted (comments and ignored fields included); max_event caps an event's
 * joined data, the "\n" separators counted. A line or event of exactly the
 * bound is accepted; one byte more fails with -EMSGSIZE as soon as that byte
 * is fed, without waiting for the line's end. Memory: two buffers the parser
 * owns, for the data and the name, grown by doubling as events need them
 * (never past the bounds plus one byte each) and kept for the next events,
 * so a stream of similar events allocates nothing after its first ones.
 *
 * Errors are sticky: after -EMSGSIZE, -ENOMEM, or a callback's request to
 * stop, every later sse_feed returns the same value and reports nothing.
 *
 * Threads: any thread. A parser belongs to one stream and is used by one
 * thread at a time; parsers share nothing.
 */
#ifndef CHATD_HTTP_SSE_H
#define CHATD_HTTP_SSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SSE_MAX_BOUND ((size_t)1 << 30) /* largest max_line or max_event accepted */

/* One complete event, as the callback sees it. Both strings point into the
 * parser (borrowed), are valid only during the callback, and are followed
 * by a NUL that len does not count. */
struct sse_event {
    const char *name; /* the `event:` field, "" if none */
    size_t name_len;
    const char *data; /* the `data:` lines joined with "\n" */
    size_t data_len;
};

/*
 * Called once per event. Return 0 to go on; anything else stops the parser
 * for good: sse_feed returns at once with the value if it is negative, or
 * -ECANCELED if it is positive. The callback must not feed or release its
 * own parser; to be done with a stream, return nonzero, then release the
 * parser once sse_feed has returned.
 */
typedef int (*sse_event_cb)(void *arg, const struct sse_event *ev);

struct sse_parser {
    /* read-only: set by sse_init */
    size_t max_line;  /* longest line, in bytes, terminator not counted */
    size_t max_event; /* longest joined data of one event, in bytes */

    /* private */
    int _err;           /* 0, or the sticky error every later feed returns */
    uint8_t _state;     /* where in a line the next byte falls (sse.c) */
    uint8_t _field;     /* what the current line's value is for (sse.c) */
    uint8_t _bom;       /* BOM bytes matched at the stream's start; 3 once past it */
    bool _after_cr;     /* the last byte ended a line with CR: an LF next is its pair */
    bool _has_data;     /* the event has had a data line */
    uint8_t _fname_len; /* bytes of the field name so far, saturating */
    char _fname[6];     /* the field name, enough to tell "data" and "event" */
    size_t _line_len;   /* bytes of the current line so far */
    char *_data;        /* owned: the event's data so far, _data_cap bytes */
    size_t _data_len;
    size_t _data_cap;
    char *_name; /* owned: the event's name so far, _name_cap bytes */
    size_t _name_len;
    size_t _name_cap;
};

/*
 * Make p ready for a new stream, with the two bounds above (each 1 to
 * SSE_MAX_BOUND). Allocates nothing, so there is nothing to undo if it
 * fails. Returns 0, or -EINVAL for a bound out of range (p is then left
 * unset: do not feed or release it).
 */
int sse_init(struct sse_parser *p, size_t max_line, size_t max_event);

/* Free what the parser owns. p may be initialized again afterwards. */
void sse_release(struct sse_parser *p);

/*
 * Feed the next len bytes of the stream (buf may be NULL when len is 0),
 * calling cb(arg, event) for each event they complete, in order. Returns 0
 * when every byte was consumed, or the sticky error: -EMSGSIZE (a bound was
 * passed), -ENOMEM (a buffer could not grow), or what stopped the callback.
 */
int sse_feed(struct sse_parser *p, const void *buf, size_t len, sse_event_cb cb, void *arg);

/* True when the bytes fed so far end inside a line, or inside an event that
 * has data but no blank line yet: a stream that ended here lost its end. */
bool sse_pending(const struct sse_parser *p);

#endif
