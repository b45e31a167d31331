/*
 * DESIGN: the two formats differ in where things are, not in what they
 * are: a system prompt, alternating turns, a token limit; then a stream of
 * text deltas, token counts and an end. Everything provider-specific is in
 * this file, so the assistant's streaming logic never looks at a field
 * name. Bodies are built with jansson. Events are read with util/jread.h,
 * which checks each one whole as strictly (a malformed event is refused,
 * not guessed at) and allocates nothing: an answer is hundreds of events,
 * each read once on the HTTP client's thread, and building a tree of
 * values per event was most of what a delta cost chatd. A delta's text is
 * decoded into the event itself when it is short, as deltas are. A
 * provider sends the deltas of an answer alike but for their text, so the
 * bytes around the last delta's text are kept (struct provider_shape): an
 * event with the same bytes there is read by checking its string alone.
 * That reads as reading it whole would (fuzz_provider compares the two): a
 * quote or an escape that would change the object's structure fails the
 * string check, and the event is then read whole.
 */
#include "assistant/provider.h"

#include <errno.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/jread.h"

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

/* The members of an object value nested in the event (checked already
 * with the whole: this cannot fail but for a value that is not an object,
 * which lists none). Room for JR_MAX_KEYS, as jr_object allows. */
struct members {
    struct jr_member m[JR_MAX_KEYS];
    size_t n;
};

static void members_of(const struct jr_value *v, struct members *o)
{
    o->n = 0;
    if (v && jr_members(v, o->m, JR_MAX_KEYS, &o->n) != 0)
        o->n = 0;
}

static const struct jr_value *get(const struct members *o, const char *key)
{
    return jr_get(o->m, o->n, key);
}

/* Decode a string value into dst[0..cap), cut (at a byte) when it is
 * longer, as the fixed fields of an event are. */
static void copy_string(const struct jr_value *v, char *dst, size_t cap)
{
    dst[0] = '\0';
    if (v->type != JR_STRING || jr_string(v, dst, cap) >= 0)
        return;
    char *all = malloc(v->n); /* the decoded text is shorter than its quoted form */
    if (all && jr_string(v, all, v->n) >= 0)
        snprintf(dst, cap, "%s", all);
    free(all);
}

static int set_delta(struct provider_event *ev, const struct jr_value *s)
{
    /* A string decodes to fewer bytes than its quoted text: s->n is room
     * for it and its NUL. Short ones (a model's deltas are a few tokens)
     * stay in the event. */
    char *dst = ev->inline_text;
    if (s->n > sizeof ev->inline_text) {
        dst = malloc(s->n);
        if (!dst)
            return -ENOMEM;
    }
    ssize_t n = jr_string(s, dst, s->n > sizeof ev->inline_text ? s->n : sizeof ev->inline_text);
    if (n <= 0) {
        if (dst != ev->inline_text)
            free(dst);
        return 0; /* an empty delta says nothing (and a string always decodes) */
    }
    ev->text = dst;
    ev->len = (size_t)n;
    ev->type = PROVIDER_EV_DELTA;
    return 0;
}

static void error_text(struct provider_event *ev, const struct jr_value *err)
{
    struct members e;
    members_of(err, &e);
    const struct jr_value *m = get(&e, "message");
    char msg[sizeof ev->error - sizeof "the provider reported an error: " + 1];
    if (m && m->type == JR_STRING)
        copy_string(m, msg, sizeof msg);
    else
        snprintf(msg, sizeof msg, "(no message)");
    ev->type = PROVIDER_EV_ERROR;
    snprintf(ev->error, sizeof ev->error, "the provider reported an error: %s", msg);
}

static uint64_t count(const struct jr_value *obj, const char *key)
{
    struct members o;
    members_of(obj, &o);
    const struct jr_value *v = get(&o, key);
    return v && v->type == JR_INT && v->i > 0 ? (uint64_t)v->i : 0;
}

static int parse_openai(const struct members *o, struct provider_event *ev, struct jr_value *text)
{
    const struct jr_value *err = get(o, "error");
    if (err) {
        error_text(ev, err);
        return 0;
    }
    const struct jr_value *usage = get(o, "usage");
    bool has_usage = usage && usage->type == JR_OBJECT;
    if (has_usage) {
        ev->input_tokens = count(usage, "prompt_tokens");
        ev->output_tokens = count(usage, "completion_tokens");
        ev->type = PROVIDER_EV_USAGE;
    }
    const struct jr_value *choices = get(o, "choices");
    if (!choices || choices->type != JR_ARRAY)
        return has_usage ? 0 : malformed(ev, "no 'choices'");
    struct jr_value c;
    size_t pos = 0;
    if (!jr_array_next(choices, &pos, &c))
        return 0; /* the usage chunk has no choice */
    struct members cm;
    members_of(&c, &cm);
    const struct jr_value *fin = get(&cm, "finish_reason");
    if (fin && fin->type == JR_STRING)
        copy_string(fin, ev->stop_reason, sizeof ev->stop_reason);
    const struct jr_value *delta = get(&cm, "delta");
    if (delta && delta->type != JR_OBJECT)
        return malformed(ev, "'delta' is not an object");
    struct members dm;
    members_of(delta, &dm);
    const struct jr_value *content = get(&dm, "content");
    if (content && content->type != JR_NULL) {
        if (content->type != JR_STRING)
            return malformed(ev, "'content' is not a string");
        *text = *content; /* copied: content is in a frame of this call */
        return set_delta(ev, content);
    }
    return 0;
}

/* Is the event's type lit? The SSE event name when there is one (event is
 * "" when not), else the data's "type". */
static bool type_is(const char *event, const struct jr_value *type, const char *lit)
{
    if (*event)
        return strcmp(event, lit) == 0;
    return jr_string_is(type, lit, strlen(lit));
}

static int parse_anthropic(const char *event, const struct members *o, struct provider_event *ev,
                           struct jr_value *text)
{
    const struct jr_value *type = get(o, "type");
    if (!*event && !(type && type->type == JR_STRING))
        return malformed(ev, "no event type");
    if (type_is(event, type, "content_block_delta")) {
        struct members d;
        members_of(get(o, "delta"), &d);
        const struct jr_value *dt = get(&d, "type");
        if (!dt || dt->type != JR_STRING)
            return malformed(ev, "a delta without a type");
        if (!jr_string_is(dt, "text_delta", 10))
            return 0; /* not text (a tool call's JSON, thinking): not shown */
        const struct jr_value *t = get(&d, "text");
        if (!t || t->type != JR_STRING)
            return malformed(ev, "a text delta without text");
        *text = *t;
        return set_delta(ev, t);
    }
    if (type_is(event, type, "message_start")) {
        struct members m;
        members_of(get(o, "message"), &m);
        const struct jr_value *usage = get(&m, "usage");
        ev->input_tokens = count(usage, "input_tokens");
        ev->output_tokens = count(usage, "output_tokens");
        ev->type = PROVIDER_EV_USAGE;
        return 0;
    }
    if (type_is(event, type, "message_delta")) {
        ev->output_tokens = count(get(o, "usage"), "output_tokens");
        struct members d;
        members_of(get(o, "delta"), &d);
        const struct jr_value *stop = get(&d, "stop_reason");
        if (stop && stop->type == JR_STRING)
            copy_string(stop, ev->stop_reason, sizeof ev->stop_reason);
        ev->type = PROVIDER_EV_USAGE;
        return 0;
    }
    if (type_is(event, type, "message_stop")) {
        ev->type = PROVIDER_EV_DONE;
        return 0;
    }
    if (type_is(event, type, "error")) {
        error_text(ev, get(o, "error"));
        return 0;
    }
    return 0; /* ping, content_block_start, content_block_stop, ... */
}

/* Read data by its stream's shape: 1 when the shape fits (*ev is what
 * reading it whole would have made of it, a delta or nothing when its text
 * is empty), 0 when it does not (read it whole), or -ENOMEM. */
static int read_shaped(const struct provider_shape *sh, const char *event, const char *data,
                       size_t len, struct provider_event *ev)
{
    if (!sh || sh->pre == 0 || len < (size_t)sh->pre + sh->post)
        return 0;
    if (strcmp(event, sh->name) != 0 || memcmp(data, sh->bytes, sh->pre) != 0 ||
        memcmp(data + len - sh->post, sh->bytes + sh->pre, sh->post) != 0)
        return 0;
    /* From the text's opening quote (the last byte of pre) to its closing
     * one (the first of post): one whole string, or the event is not this
     * shape (a quote inside it ends it early, an escape eats the last). */
    struct jr_value s;
    if (jr_string_value(data + sh->pre - 1, len - sh->pre - sh->post + 2, &s) != 0)
        return 0;
    return set_delta(ev, &s) == 0 ? 1 : -ENOMEM;
}

/* Keep the shape of a delta read whole, text its string in data. Only a
 * delta that carries nothing else (no count, no stop reason) is kept: a
 * fitting event reads as the text alone. */
static void keep_shape(struct provider_shape *sh, const char *event, const char *data, size_t len,
                       const struct provider_event *ev, const struct jr_value *text)
{
    if (!sh || text->type != JR_STRING || ev->type != PROVIDER_EV_DELTA || ev->input_tokens ||
        ev->output_tokens || ev->stop_reason[0])
        return;
    size_t name = strlen(event);
    size_t pre = (size_t)(text->p - data) + 1, post = len - (size_t)(text->p + text->n - 1 - data);
    if (name >= sizeof sh->name || pre + post > sizeof sh->bytes)
        return;
    memcpy(sh->name, event, name + 1);
    memcpy(sh->bytes, data, pre);
    memcpy(sh->bytes + pre, data + len - post, post);
    sh->pre = (uint16_t)pre;
    sh->post = (uint16_t)post;
}

int provider_parse_event(enum provider_kind kind, struct provider_shape *shape,
                         const char *event, const char *data, size_t len,
                         struct provider_event *ev)
{
    /* Not a memset: the event's inline text need not be cleared. */
    ev->type = PROVIDER_EV_NONE;
    ev->text = NULL;
    ev->len = 0;
    ev->input_tokens = ev->output_tokens = 0;
    ev->stop_reason[0] = '\0';
    ev->error[0] = '\0';
    if (!event)
        event = "";
    if (kind == PROVIDER_OPENAI && len == 6 && memcmp(data, "[DONE]", 6) == 0) {
        ev->type = PROVIDER_EV_DONE;
        return 0;
    }
    int rc = read_shaped(shape, event, data, len, ev);
    if (rc != 0)
        return rc < 0 ? rc : 0;
    struct members o;
    rc = jr_object(data, len, o.m, JR_MAX_KEYS, &o.n);
    if (rc == -E2BIG)
        return malformed(ev, "a JSON object nested too deep or with too many members");
    if (rc != 0)
        return malformed(ev, "not a JSON object");
    struct jr_value text = {.type = JR_NULL};
    rc = kind == PROVIDER_ANTHROPIC ? parse_anthropic(event, &o, ev, &text)
                                    : parse_openai(&o, ev, &text);
    if (rc == 0)
        keep_shape(shape, event, data, len, ev, &text);
    return rc;
}

void provider_event_release(struct provider_event *ev)
{
    if (ev->text != ev->inline_text)
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
