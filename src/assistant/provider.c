/*
 * DESIGN: the two formats differ in where things are, not in what they
 * are: a system prompt, alternating turns, a token limit; then a stream of
 * text deltas, token counts and an end. Everything provider-specific is in
 * this file, so the assistant's streaming logic never looks at a field
 * name. Bodies are built and events read with jansson: these are small
 * JSON texts, and a malformed event must be refused, not guessed at.
 */
#include "assistant/provider.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/oom.h"

#define ANTHROPIC_VERSION "2023-06-01"
#define ANTHROPIC_DEFAULT_MAX_TOKENS 4096 /* as conf/config.h CONF_ANTHROPIC_MAX_TOKENS */

const char *provider_path(enum provider_kind kind)
{
    return kind == PROVIDER_ANTHROPIC ? "/messages" : "/chat/completions";
}

static int add_header(char out[][PROVIDER_HEADER_MAX], int cap, int *n, const char *name,
                      const char *value)
{
    if (*n >= cap)
        return -ENOSPC;
    int w = snprintf(out[*n], PROVIDER_HEADER_MAX, "%s: %s", name, value);
    if (w < 0 || w >= PROVIDER_HEADER_MAX)
        return -ENOSPC;
    (*n)++;
    return 0;
}

int provider_headers(enum provider_kind kind, const char *key,
                     char out[][PROVIDER_HEADER_MAX], int cap)
{
    int n = 0, rc = 0;
    rc |= add_header(out, cap, &n, "Content-Type", "application/json");
    rc |= add_header(out, cap, &n, "Accept", "text/event-stream");
    if (kind == PROVIDER_ANTHROPIC) {
        rc |= add_header(out, cap, &n, "anthropic-version", ANTHROPIC_VERSION);
        if (key)
            rc |= add_header(out, cap, &n, "x-api-key", key);
    } else if (key) {
        char bearer[PROVIDER_HEADER_MAX];
        int w = snprintf(bearer, sizeof bearer, "Bearer %s", key);
        if (w < 0 || (size_t)w >= sizeof bearer)
            return -ENOSPC;
        rc |= add_header(out, cap, &n, "Authorization", bearer);
        memset(bearer, 0, sizeof bearer);
    }
    return rc ? -ENOSPC : n;
}

/* The longest prefix of s[0..len) that is at most max bytes and ends on a
 * UTF-8 character boundary. */
static size_t utf8_cut(const char *s, size_t len, size_t max)
{
    if (len <= max)
        return len;
    size_t n = max;
    while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
        n--;
    return n;
}

size_t provider_context(struct provider_msg *msgs, size_t n, size_t max_msgs, size_t max_bytes)
{
    if (n == 0)
        return 0;
    size_t first = n - 1, bytes = msgs[n - 1].len;
    if (bytes > max_bytes) {
        /* The newest alone is over the budget: keep its beginning. */
        msgs[n - 1].len = utf8_cut(msgs[n - 1].text, msgs[n - 1].len, max_bytes);
        return first;
    }
    while (first > 0 && n - first < max_msgs && bytes + msgs[first - 1].len <= max_bytes) {
        first--;
        bytes += msgs[first].len;
    }
    return first;
}

/* Append the turns to arr, joining consecutive messages of one role and
 * dropping assistant turns before the first user turn. */
static int add_turns(json_t *arr, const struct provider_msg *m, size_t n)
{
    size_t i = 0;
    while (i < n && m[i].role != PROVIDER_USER)
        i++;
    while (i < n) {
        enum provider_role role = m[i].role;
        size_t j = i, total = 0;
        for (; j < n && m[j].role == role; j++)
            total += m[j].len + 2;
        char *text = malloc(total + 1);
        if (!text)
            return -ENOMEM;
        size_t off = 0;
        for (size_t k = i; k < j; k++) {
            if (k > i) {
                memcpy(text + off, "\n\n", 2);
                off += 2;
            }
            memcpy(text + off, m[k].text, m[k].len);
            off += m[k].len;
        }
        json_t *turn = json_pack("{s:s, s:s%}", "role",
                                 role == PROVIDER_USER ? "user" : "assistant", "content", text,
                                 off);
        free(text);
        if (!turn || json_array_append_new(arr, turn) != 0)
            return -ENOMEM;
        i = j;
    }
    return 0;
}

char *provider_body(const struct provider_request *r, size_t *len)
{
    json_t *o = json_object();
    json_t *msgs = json_array();
    char *text = NULL;
    if (!o || !msgs)
        goto done;
    json_object_set_new(o, "model", json_string(r->model));
    json_object_set_new(o, "stream", json_true());
    if (r->kind == PROVIDER_ANTHROPIC) {
        json_object_set_new(o, "max_tokens", json_integer(r->max_tokens
                                                              ? r->max_tokens
                                                              : ANTHROPIC_DEFAULT_MAX_TOKENS));
        if (r->system && *r->system)
            json_object_set_new(o, "system", json_string(r->system));
    } else {
        json_object_set_new(o, "stream_options", json_pack("{s:b}", "include_usage", 1));
        if (r->max_tokens)
            json_object_set_new(o, "max_tokens", json_integer(r->max_tokens));
        if (r->system && *r->system)
            json_array_append_new(msgs,
                                  json_pack("{s:s, s:s}", "role", "system", "content", r->system));
    }
    if (add_turns(msgs, r->msgs, r->nmsgs) != 0)
        goto done;
    json_object_set(o, "messages", msgs);
    text = json_dumps(o, JSON_COMPACT);
    if (text)
        *len = strlen(text);
done:
    json_decref(msgs);
    json_decref(o);
    return text;
}

static int malformed(struct provider_event *ev, const char *why)
{
    ev->type = PROVIDER_EV_ERROR;
    snprintf(ev->error, sizeof ev->error, "malformed event from the provider: %s", why);
    return -EPROTO;
}

static int set_delta(struct provider_event *ev, json_t *s)
{
    size_t n = json_string_length(s);
    if (n == 0)
        return 0; /* an empty delta says nothing */
    ev->text = malloc(n + 1);
    if (!ev->text)
        return -ENOMEM;
    memcpy(ev->text, json_string_value(s), n + 1);
    ev->len = n;
    ev->type = PROVIDER_EV_DELTA;
    return 0;
}

static void error_text(struct provider_event *ev, json_t *err)
{
    const char *m = json_string_value(json_object_get(err, "message"));
    ev->type = PROVIDER_EV_ERROR;
    snprintf(ev->error, sizeof ev->error, "the provider reported an error: %s",
             m ? m : "(no message)");
}

static uint64_t count(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_integer(v) && json_integer_value(v) > 0 ? (uint64_t)json_integer_value(v) : 0;
}

static int parse_openai(json_t *o, struct provider_event *ev)
{
    json_t *err = json_object_get(o, "error");
    if (err) {
        error_text(ev, err);
        return 0;
    }
    json_t *usage = json_object_get(o, "usage");
    if (json_is_object(usage)) {
        ev->input_tokens = count(usage, "prompt_tokens");
        ev->output_tokens = count(usage, "completion_tokens");
        ev->type = PROVIDER_EV_USAGE;
    }
    json_t *choices = json_object_get(o, "choices");
    if (!json_is_array(choices))
        return json_is_object(usage) ? 0 : malformed(ev, "no 'choices'");
    json_t *c = json_array_get(choices, 0);
    if (!c)
        return 0; /* the usage chunk has no choice */
    const char *fin = json_string_value(json_object_get(c, "finish_reason"));
    if (fin)
        snprintf(ev->stop_reason, sizeof ev->stop_reason, "%s", fin);
    json_t *delta = json_object_get(c, "delta");
    if (delta && !json_is_object(delta))
        return malformed(ev, "'delta' is not an object");
    json_t *content = json_object_get(delta, "content");
    if (content && !json_is_null(content)) {
        if (!json_is_string(content))
            return malformed(ev, "'content' is not a string");
        return set_delta(ev, content);
    }
    return 0;
}

static int parse_anthropic(const char *event, json_t *o, struct provider_event *ev)
{
    const char *type = event && *event ? event : json_string_value(json_object_get(o, "type"));
    if (!type)
        return malformed(ev, "no event type");
    if (strcmp(type, "content_block_delta") == 0) {
        json_t *d = json_object_get(o, "delta");
        const char *dt = json_string_value(json_object_get(d, "type"));
        if (!dt)
            return malformed(ev, "a delta without a type");
        if (strcmp(dt, "text_delta") != 0)
            return 0; /* not text (a tool call's JSON, thinking): not shown */
        json_t *t = json_object_get(d, "text");
        if (!json_is_string(t))
            return malformed(ev, "a text delta without text");
        return set_delta(ev, t);
    }
    if (strcmp(type, "message_start") == 0) {
        json_t *usage = json_object_get(json_object_get(o, "message"), "usage");
        ev->input_tokens = count(usage, "input_tokens");
        ev->output_tokens = count(usage, "output_tokens");
        ev->type = PROVIDER_EV_USAGE;
        return 0;
    }
    if (strcmp(type, "message_delta") == 0) {
        ev->output_tokens = count(json_object_get(o, "usage"), "output_tokens");
        const char *stop = json_string_value(json_object_get(json_object_get(o, "delta"),
                                                             "stop_reason"));
        if (stop)
            snprintf(ev->stop_reason, sizeof ev->stop_reason, "%s", stop);
        ev->type = PROVIDER_EV_USAGE;
        return 0;
    }
    if (strcmp(type, "message_stop") == 0) {
        ev->type = PROVIDER_EV_DONE;
        return 0;
    }
    if (strcmp(type, "error") == 0) {
        error_text(ev, json_object_get(o, "error"));
        return 0;
    }
    return 0; /* ping, content_block_start, content_block_stop, ... */
}

int provider_parse_event(enum provider_kind kind, const char *event, const char *data,
                         size_t len, struct provider_event *ev)
{
    memset(ev, 0, sizeof *ev);
    if (kind == PROVIDER_OPENAI && len == 6 && memcmp(data, "[DONE]", 6) == 0) {
        ev->type = PROVIDER_EV_DONE;
        return 0;
    }
    json_error_t jerr;
    oom_clear();
    json_t *o = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);
    if (oom_seen()) {
        /* chatd's memory, not the provider's event; and a parse that ran
         * out of memory is void even when it returned (util/oom.h) */
        json_decref(o);
        ev->type = PROVIDER_EV_ERROR;
        snprintf(ev->error, sizeof ev->error, "out of memory");
        return -ENOMEM;
    }
    if (!json_is_object(o)) {
        json_decref(o);
        return malformed(ev, "not a JSON object");
    }
    int rc = kind == PROVIDER_ANTHROPIC ? parse_anthropic(event, o, ev) : parse_openai(o, ev);
    json_decref(o);
    return rc;
}

void provider_event_release(struct provider_event *ev)
{
    free(ev->text);
    ev->text = NULL;
    ev->len = 0;
}

bool provider_error_message(enum provider_kind kind, int status, const char *body, size_t len,
                            char *msg, size_t msglen)
{
    const char *m = NULL;
    json_t *o = body && len ? json_loadb(body, len, 0, NULL) : NULL;
    json_t *err = json_object_get(o, "error");
    if (json_is_object(err))
        m = json_string_value(json_object_get(err, "message"));
    else if (json_is_string(err))
        m = json_string_value(err); /* some local servers answer {"error":"..."} */
    (void)kind;
    snprintf(msg, msglen, "the model provider answered %d%s%.200s", status, m ? ": " : "",
             m ? m : "");
    json_decref(o);
    return status == 408 || status == 429 || status >= 500;
}
