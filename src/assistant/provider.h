/*
 * provider: what chatd says to a model provider and how it reads the
 * answer, for the two wire formats it speaks:
 *   - openai:    chat completions (POST BASE_URL/chat/completions), which
 *                also covers llama.cpp's server, Ollama, vLLM and most
 *                gateways;
 *   - anthropic: the Messages API (POST BASE_URL/messages).
 * Both stream their answer as server-sent events; provider_parse_event
 * reads one event's data (the SSE framing is http/sse.h's job).
 *
 * Pure functions, no I/O, any thread. Everything returned is owned by the
 * caller (free()), or lives in a caller's struct.
 */
#ifndef CHATD_ASSISTANT_PROVIDER_H
#define CHATD_ASSISTANT_PROVIDER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum provider_kind { PROVIDER_OPENAI = 0, PROVIDER_ANTHROPIC };

/* One message of the conversation, as the model sees it. */
enum provider_role { PROVIDER_USER = 0, PROVIDER_ASSISTANT };

struct provider_msg {
    enum provider_role role;
    const char *text; /* borrowed, valid UTF-8 */
    size_t len;
};

/* What to ask. msgs are oldest first (see provider_context). */
struct provider_request {
    enum provider_kind kind;
    const char *model;  /* the provider's model name */
    const char *system; /* system prompt or NULL */
    unsigned max_tokens; /* 0: the provider's default (anthropic needs one: 4096) */
    const struct provider_msg *msgs;
    size_t nmsgs;
};

/* The path to POST under the model's base URL ("/chat/completions" or
 * "/messages"). */
const char *provider_path(enum provider_kind kind);

/*
 * Write the HTTP headers the provider expects for this key into out (an
 * array of cap NUL-terminated "Name: value" lines, each at most
 * PROVIDER_HEADER_MAX bytes). Returns how many, or -ENOSPC. key may be
 * NULL (a local server without authentication). The lines hold the key:
 * the caller wipes them once sent and never logs them.
 */
#define PROVIDER_HEADER_MAX 1024
int provider_headers(enum provider_kind kind, const char *key,
                     char out[][PROVIDER_HEADER_MAX], int cap);

/*
 * The request body (JSON text, streaming on, usage asked for), malloc'd,
 * *len set; NULL when out of memory. Consecutive messages of the same role
 * are joined (with a blank line), and a conversation that does not start
 * with the user gets its leading assistant messages dropped: the Messages
 * API requires turns that alternate and start with the user.
 */
char *provider_body(const struct provider_request *r, size_t *len);

/*
 * Choose the context: given a session's messages oldest first, the newest
 * ones that fit in max_msgs messages and max_bytes bytes of text (the
 * newest is always kept, cut to max_bytes if it alone is larger). Returns
 * the index of the first message to send; msgs[first..n) go out. The cut
 * one, if any, has its len reduced in place (never inside a UTF-8
 * character).
 */
size_t provider_context(struct provider_msg *msgs, size_t n, size_t max_msgs, size_t max_bytes);

/* What one streamed event means. */
enum provider_event_type {
    PROVIDER_EV_NONE = 0, /* nothing for chatd (a ping, a role header, ...) */
    PROVIDER_EV_DELTA,    /* text to append: text/len */
    PROVIDER_EV_USAGE,    /* token counts only */
    PROVIDER_EV_DONE,     /* the answer is complete */
    PROVIDER_EV_ERROR,    /* the provider reported an error in the stream */
};

#define PROVIDER_INLINE_TEXT 192 /* a delta this long or shorter (quoted) stays in the event */

struct provider_event {
    enum provider_event_type type;
    char *text; /* DELTA: the text, NUL-terminated: inline_text, or malloc'd
                 * when longer (owned by the event), else NULL */
    size_t len;
    char inline_text[PROVIDER_INLINE_TEXT];
    /* token counts seen in this event, 0 when absent */
    uint64_t input_tokens, output_tokens;
    char stop_reason[32]; /* DONE: why the model stopped ("stop", "end_turn", "max_tokens", ...) */
    char error[256];      /* ERROR, or a malformed event: what was wrong */
};

#define PROVIDER_SHAPE_MAX 512 /* bytes around a delta's text that a shape keeps */
#define PROVIDER_SHAPE_NAME 32 /* an event name this long or longer is not kept */

/*
 * How the last delta of a stream was sent, but for its text: the event's
 * name, its bytes up to the text's opening quote and from its closing
 * quote on. A provider sends every delta of an answer alike (the same id,
 * model and fields; only the text differs), so an event with the same
 * name and bytes around a valid JSON string is that same object with
 * another string in it: it reads as the delta it carries, with nothing
 * else in it, and only that string needs checking. Any event the shape
 * does not fit is read whole, so a shape changes what reading costs, never
 * what an event means. Owned by the caller, one per stream (answers may
 * differ), zeroed to start; written by provider_parse_event only.
 */
struct provider_shape {
    uint16_t pre, post; /* bytes before the text (through its quote) and after
                         * (from its quote); pre 0: nothing kept yet */
    char name[PROVIDER_SHAPE_NAME];
    char bytes[PROVIDER_SHAPE_MAX]; /* pre bytes, then post bytes */
};

/*
 * Read one SSE event (its `event:` name, "" when none, and its data).
 * Returns 0 with *ev filled, or -EPROTO for an event that is not what the
 * provider sends (invalid JSON, a wrong shape), or -ENOMEM when chatd
 * had no memory to read it: ev->error says why. Release the text with
 * provider_event_release (ev must not be copied while it holds text: the
 * text may point into it). Objects nested deeper than JR_MAX_DEPTH or of
 * more than JR_MAX_KEYS members are refused (util/jread.h). shape, when
 * not NULL, is the stream's: tried first, and kept from each delta read
 * whole.
 */
int provider_parse_event(enum provider_kind kind, struct provider_shape *shape,
                         const char *event, const char *data, size_t len,
                         struct provider_event *ev);
void provider_event_release(struct provider_event *ev);

/*
 * Read a provider's error answer (the body of a 4xx/5xx) into a short
 * message for the client (never the request, never a key). status is the
 * HTTP status. Returns whether the failure is worth retrying later (429,
 * 503, 529 and other 5xx), and writes the message into msg.
 */
bool provider_error_message(enum provider_kind kind, int status, const char *body, size_t len,
                            char *msg, size_t msglen);

#endif
