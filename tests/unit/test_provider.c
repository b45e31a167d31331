/* Unit tests for the model providers' wire formats (src/assistant/provider.c). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "assistant/provider.h"

#define MSG(r, s) {(r), (s), sizeof(s) - 1}

static json_t *body_json(const struct provider_request *r)
{
    size_t len = 0;
    char *text = provider_body(r, &len);
    assert_non_null(text);
    assert_int_equal(len, strlen(text));
    json_t *o = json_loads(text, 0, NULL);
    free(text);
    assert_non_null(o);
    return o;
}

static void test_paths_and_headers(void **state)
{
    (void)state;
    assert_string_equal(provider_path(PROVIDER_OPENAI), "/chat/completions");
    assert_string_equal(provider_path(PROVIDER_ANTHROPIC), "/messages");
    char h[8][PROVIDER_HEADER_MAX];
    int n = provider_headers(PROVIDER_OPENAI, "sk-test", h, 8);
    assert_int_equal(n, 3);
    assert_string_equal(h[2], "Authorization: Bearer sk-test");
    n = provider_headers(PROVIDER_ANTHROPIC, "ak-test", h, 8);
    assert_int_equal(n, 4);
    assert_string_equal(h[2], "anthropic-version: 2023-06-01");
    assert_string_equal(h[3], "x-api-key: ak-test");
    n = provider_headers(PROVIDER_OPENAI, NULL, h, 8); /* a local server, no key */
    assert_int_equal(n, 2);
    assert_int_equal(provider_headers(PROVIDER_ANTHROPIC, "k", h, 3), -ENOSPC);
}

static void test_openai_body(void **state)
{
    (void)state;
    struct provider_msg m[] = {MSG(PROVIDER_USER, "hello"), MSG(PROVIDER_ASSISTANT, "hi!"),
                               MSG(PROVIDER_USER, "what is 2+2?"),
                               MSG(PROVIDER_USER, "and \"3+3\"?")};
    struct provider_request r = {.kind = PROVIDER_OPENAI, .model = "llama-3",
                                 .system = "Be brief.", .max_tokens = 200, .msgs = m, .nmsgs = 4};
    json_t *o = body_json(&r);
    assert_string_equal(json_string_value(json_object_get(o, "model")), "llama-3");
    assert_true(json_is_true(json_object_get(o, "stream")));
    assert_true(json_is_true(json_object_get(json_object_get(o, "stream_options"),
                                             "include_usage")));
    assert_int_equal(json_integer_value(json_object_get(o, "max_tokens")), 200);
    json_t *msgs = json_object_get(o, "messages");
    assert_int_equal(json_array_size(msgs), 4); /* system + 3 turns (two users joined) */
    assert_string_equal(json_string_value(json_object_get(json_array_get(msgs, 0), "role")),
                        "system");
    assert_string_equal(json_string_value(json_object_get(json_array_get(msgs, 0), "content")),
                        "Be brief.");
    assert_string_equal(json_string_value(json_object_get(json_array_get(msgs, 2), "role")),
                        "assistant");
    assert_string_equal(json_string_value(json_object_get(json_array_get(msgs, 3), "content")),
                        "what is 2+2?\n\nand \"3+3\"?");
    json_decref(o);
}

static void test_anthropic_body(void **state)
{
    (void)state;
    /* Leading assistant turns are dropped: the Messages API starts with the user. */
    struct provider_msg m[] = {MSG(PROVIDER_ASSISTANT, "earlier answer"),
                               MSG(PROVIDER_USER, "question")};
    struct provider_request r = {.kind = PROVIDER_ANTHROPIC, .model = "claude",
                                 .system = "S", .msgs = m, .nmsgs = 2};
    json_t *o = body_json(&r);
    assert_int_equal(json_integer_value(json_object_get(o, "max_tokens")), 4096);
    assert_string_equal(json_string_value(json_object_get(o, "system")), "S");
    assert_null(json_object_get(o, "stream_options"));
    json_t *msgs = json_object_get(o, "messages");
    assert_int_equal(json_array_size(msgs), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(msgs, 0), "role")),
                        "user");
    json_decref(o);
}

static void test_context_budget(void **state)
{
    (void)state;
    struct provider_msg m[] = {MSG(PROVIDER_USER, "aaaa"), MSG(PROVIDER_ASSISTANT, "bbbb"),
                               MSG(PROVIDER_USER, "cccc"), MSG(PROVIDER_ASSISTANT, "dddd"),
                               MSG(PROVIDER_USER, "eeee")};
    assert_int_equal(provider_context(m, 5, 50, 1000), 0);  /* everything fits */
    assert_int_equal(provider_context(m, 5, 2, 1000), 3);   /* the 2 newest */
    assert_int_equal(provider_context(m, 5, 50, 12), 2);    /* 12 bytes: 3 messages */
    assert_int_equal(provider_context(m, 5, 50, 11), 3);    /* the oldest dropped first */
    assert_int_equal(provider_context(m, 0, 50, 11), 0);
    /* The newest alone over the budget: kept, cut on a character boundary. */
    struct provider_msg big[] = {MSG(PROVIDER_USER, "x"), MSG(PROVIDER_USER, "ab\xc3\xa9" "cd")};
    assert_int_equal(provider_context(big, 2, 50, 3), 1);
    assert_int_equal(big[1].len, 2); /* "ab": the 2-byte é does not fit whole */
}

static void parse(enum provider_kind k, const char *event, const char *data,
                  struct provider_event *ev, int want_rc)
{
    assert_int_equal(provider_parse_event(k, NULL, event, data, strlen(data), ev), want_rc);
}

static void test_openai_events(void **state)
{
    (void)state;
    struct provider_event ev;
    parse(PROVIDER_OPENAI, "",
          "{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,"
          "\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\"},\"finish_reason\":null}]}",
          &ev, 0);
    assert_int_equal(ev.type, PROVIDER_EV_DELTA);
    assert_int_equal(ev.len, 3);
    assert_memory_equal(ev.text, "Hel", 3);
    provider_event_release(&ev);
    parse(PROVIDER_OPENAI, "", "{\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}", &ev, 0);
    assert_int_equal(ev.type, PROVIDER_EV_NONE);
    parse(PROVIDER_OPENAI, "", "{\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}", &ev,
          0);
    assert_int_equal(ev.type, PROVIDER_EV_NONE);
    assert_string_equal(ev.stop_reason, "stop");
    parse(PROVIDER_OPENAI, "",
          "{\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":34}}", &ev, 0);
    assert_int_equal(ev.type, PROVIDER_EV_USAGE);
    assert_int_equal(ev.input_tokens, 12);
    assert_int_equal(ev.output_tokens, 34);
    parse(PROVIDER_OPENAI, "", "[DONE]", &ev, 0);
    assert_int_equal(ev.type, PROVIDER_EV_DONE);
    parse(PROVIDER_OPENAI, "", "{\"error\":{\"message\":\"overloaded\"}}", &ev, 0);
    assert_int_equal(ev.type, PROVIDER_EV_ERROR);
    assert_non_null(strstr(ev.error, "overloaded"));
    parse(PROVIDER_OPENAI, "", "{\"choices\":[{\"delta\":{\"content\":7}}]}", &ev, -EPROTO);
    assert_int_equal(ev.type, PROVIDER_EV_ERROR);
    parse(PROVIDER_OPENAI, "", "{not json", &ev, -EPROTO);
    assert_non_null(strstr(ev.error, "malformed"));
    parse(PROVIDER_OPENAI, "", "{\"object\":\"x\"}", &ev, -EPROTO);
    /* Escapes decoded; a duplicate key, a bad escape or bad UTF-8 refused. */
    parse(PROVIDER_OPENAI, "",
          "{\"choices\":[{\"delta\":{\"content\":\"a\\\"b\\\\c\\n\\u00e9\\ud83d\\ude00\"}}]}", &ev, 0);
    assert_int_equal(ev.type, PROVIDER_EV_DELTA);
    assert_string_equal(ev.text, "a\"b\\c\n\xc3\xa9\xf0\x9f\x98\x80");
    provider_event_release(&ev);
    parse(PROVIDER_OPENAI, "", "{\"choices\":[{\"delta\":{\"content\":\"a\",\"content\":\"b\"}}]}",
          &ev, -EPROTO);
    parse(PROVIDER_OPENAI, "", "{\"choices\":[{\"delta\":{\"content\":\"\\u0000\"}}]}", &ev,
          -EPROTO);
    parse(PROVIDER_OPENAI, "", "{\"choices\":[{\"delta\":{\"content\":\"\xc3\"}}]}", &ev, -EPROTO);
    parse(PROVIDER_OPENAI, "", "{\"choices\":[{\"delta\":{\"content\":\"x\"}}]} x", &ev, -EPROTO);
    /* An empty delta is nothing; a null one too; a non-object choice too. */
    parse(PROVIDER_OPENAI, "", "{\"choices\":[{\"delta\":{\"content\":\"\"}}]}", &ev, 0);
    assert_int_equal(ev.type, PROVIDER_EV_NONE);
    parse(PROVIDER_OPENAI, "", "{\"choices\":[{\"delta\":{\"content\":null}}]}", &ev, 0);
    assert_int_equal(ev.type, PROVIDER_EV_NONE);
    parse(PROVIDER_OPENAI, "", "{\"choices\":[7]}", &ev, 0);
    assert_int_equal(ev.type, PROVIDER_EV_NONE);
    parse(PROVIDER_OPENAI, "", "{\"choices\":[{\"delta\":[]}]}", &ev, -EPROTO);
    /* A long delta (past what the event holds inline), whole. */
    char big[4200], want[4100];
    memset(want, 'w', 4096);
    want[4096] = '\0';
    snprintf(big, sizeof big, "{\"choices\":[{\"delta\":{\"content\":\"%s\"}}]}", want);
    parse(PROVIDER_OPENAI, "", big, &ev, 0);
    assert_int_equal(ev.type, PROVIDER_EV_DELTA);
    assert_int_equal(ev.len, 4096);
    assert_string_equal(ev.text, want);
    provider_event_release(&ev);
    /* A long finish reason and error message are cut, not refused. */
    snprintf(big, sizeof big, "{\"choices\":[{\"delta\":{},\"finish_reason\":\"%.100s\"}]}",
             want);
    parse(PROVIDER_OPENAI, "", big, &ev, 0);
    assert_int_equal(strlen(ev.stop_reason), sizeof ev.stop_reason - 1);
    snprintf(big, sizeof big, "{\"error\":{\"message\":\"%.1000s\"}}", want);
    parse(PROVIDER_OPENAI, "", big, &ev, 0);
    assert_int_equal(ev.type, PROVIDER_EV_ERROR);
    assert_int_equal(strlen(ev.error), sizeof ev.error - 1);
    parse(PROVIDER_OPENAI, "", "{\"error\":\"x\"}", &ev, 0);
    assert_int_equal(ev.type, PROVIDER_EV_ERROR);
    assert_non_null(strstr(ev.error, "(no message)"));
    /* Deeper than the reader goes: refused. */
    parse(PROVIDER_OPENAI, "",
          "{\"choices\":[],\"x\":[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]}", &ev, -EPROTO);
    assert_non_null(strstr(ev.error, "malformed"));
}

static void test_anthropic_events(void **state)
{
    (void)state;
    struct provider_event ev;
    parse(PROVIDER_ANTHROPIC, "message_start",
          "{\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":25,"
          "\"output_tokens\":1}}}",
          &ev, 0);
    assert_int_equal(ev.type, PROVIDER_EV_USAGE);
    assert_int_equal(ev.input_tokens, 25);
    parse(PROVIDER_ANTHROPIC, "content_block_start",
          "{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\","
          "\"text\":\"\"}}",
          &ev, 0);
    assert_int_equal(ev.type, PROVIDER_EV_NONE);
    parse(PROVIDER_ANTHROPIC, "ping", "{\"type\":\"ping\"}", &ev, 0);
    assert_int_equal(ev.type, PROVIDER_EV_NONE);
    parse(PROVIDER_ANTHROPIC, "content_block_delta",
          "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\","
          "\"text\":\"Bonjour \xc3\xa0 tous\"}}",
          &ev, 0);
    assert_int_equal(ev.type, PROVIDER_EV_DELTA);
    assert_string_equal(ev.text, "Bonjour \xc3\xa0 tous");
    provider_event_release(&ev);
    /* The event name may be absent: the data's type says it. */
    parse(PROVIDER_ANTHROPIC, "",
          "{\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}}",
          &ev, 0);
    assert_int_equal(ev.type, PROVIDER_EV_DELTA);
    provider_event_release(&ev);
    parse(PROVIDER_ANTHROPIC, "content_block_delta",
          "{\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\"}}", &ev, 0);
    assert_int_equal(ev.type, PROVIDER_EV_NONE);
    parse(PROVIDER_ANTHROPIC, "message_delta",
          "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},"
          "\"usage\":{\"output_tokens\":15}}",
          &ev, 0);
    assert_int_equal(ev.type, PROVIDER_EV_USAGE);
    assert_int_equal(ev.output_tokens, 15);
    assert_string_equal(ev.stop_reason, "end_turn");
    parse(PROVIDER_ANTHROPIC, "message_stop", "{\"type\":\"message_stop\"}", &ev, 0);
    assert_int_equal(ev.type, PROVIDER_EV_DONE);
    parse(PROVIDER_ANTHROPIC, "error",
          "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}",
          &ev, 0);
    assert_int_equal(ev.type, PROVIDER_EV_ERROR);
    assert_non_null(strstr(ev.error, "Overloaded"));
    parse(PROVIDER_ANTHROPIC, "content_block_delta", "{\"delta\":{\"type\":\"text_delta\"}}", &ev,
          -EPROTO);
    parse(PROVIDER_ANTHROPIC, "", "[1,2]", &ev, -EPROTO);
}

/* Read data (named name2) after a stream's shape was taken from prime
 * (named name1), and again without a shape: both must read the same. */
static void same_with_shape(enum provider_kind k, const char *name1, const char *prime,
                            const char *name2, const char *data)
{
    struct provider_shape sh = {0};
    struct provider_event a, b;
    assert_int_equal(provider_parse_event(k, &sh, name1, prime, strlen(prime), &a), 0);
    assert_int_equal(a.type, PROVIDER_EV_DELTA);
    provider_event_release(&a);
    assert_true(sh.pre > 0);
    int ra = provider_parse_event(k, &sh, name2, data, strlen(data), &a);
    int rb = provider_parse_event(k, NULL, name2, data, strlen(data), &b);
    assert_int_equal(ra, rb);
    assert_int_equal(a.type, b.type);
    assert_int_equal(a.len, b.len);
    if (a.len)
        assert_memory_equal(a.text, b.text, a.len);
    assert_int_equal(a.input_tokens, b.input_tokens);
    assert_int_equal(a.output_tokens, b.output_tokens);
    assert_string_equal(a.stop_reason, b.stop_reason);
    assert_string_equal(a.error, b.error);
    provider_event_release(&a);
    provider_event_release(&b);
}

#define OA_PRE                                                                                     \
    "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\","                                \
    "\"choices\":[{\"index\":0,\"delta\":{\"content\":\""
#define OA_POST "\"},\"finish_reason\":null}],\"usage\":null}"
#define AN_PRE                                                                                     \
    "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\","            \
    "\"text\":\""
#define AN_POST "\"}}"

static void test_shaped_events(void **state)
{
    (void)state;
    /* The shape is the bytes around the text of the last delta read whole. */
    struct provider_shape sh = {0};
    struct provider_event ev;
    const char *first = OA_PRE "Hel" OA_POST;
    assert_int_equal(provider_parse_event(PROVIDER_OPENAI, &sh, "", first, strlen(first), &ev), 0);
    provider_event_release(&ev);
    assert_int_equal(sh.pre, strlen(OA_PRE));
    assert_int_equal(sh.post, strlen(OA_POST));
    assert_memory_equal(sh.bytes, OA_PRE, sh.pre);
    assert_memory_equal(sh.bytes + sh.pre, OA_POST, sh.post);
    /* A fitting event reads as its text. */
    const char *next = OA_PRE "lo \\\"w\\u00e9rld\\\"\\n" OA_POST;
    assert_int_equal(provider_parse_event(PROVIDER_OPENAI, &sh, "", next, strlen(next), &ev), 0);
    assert_int_equal(ev.type, PROVIDER_EV_DELTA);
    assert_string_equal(ev.text, "lo \"w\xc3\xa9rld\"\n");
    provider_event_release(&ev);
    /* A delta carrying a stop reason is not kept as a shape. */
    const char *stop = OA_PRE "!" "\"},\"finish_reason\":\"stop\"}]}";
    assert_int_equal(provider_parse_event(PROVIDER_OPENAI, &sh, "", stop, strlen(stop), &ev), 0);
    assert_string_equal(ev.stop_reason, "stop");
    provider_event_release(&ev);
    assert_int_equal(sh.post, strlen(OA_POST));

    /* Whatever follows, the shape reads it as reading it whole does. */
    const char *oa[] = {
        OA_PRE "plain" OA_POST,
        OA_PRE "" OA_POST,                         /* empty: nothing */
        OA_PRE "\xe2\x82\xac \\ud83d\\ude00" OA_POST, /* UTF-8 and a surrogate pair */
        OA_PRE "a\",\"content\":\"b" OA_POST,       /* a quote ends the text: a duplicate key */
        OA_PRE "a\",\"role\":\"b" OA_POST,          /* ... or another member */
        OA_PRE "a\\" OA_POST,                       /* the closing quote escaped */
        OA_PRE "a\\\\" OA_POST,                     /* an escaped backslash before it */
        OA_PRE "a\\q" OA_POST,                      /* no such escape */
        OA_PRE "a\\u0000" OA_POST,                  /* \u0000 */
        OA_PRE "a\\ud800" OA_POST,                  /* a lone surrogate */
        OA_PRE "a\x01" OA_POST,                     /* a control byte */
        OA_PRE "a\xc0\xaf" OA_POST,                 /* an overlong form */
        OA_PRE "a\xed\xa0\x80" OA_POST,             /* an encoded surrogate */
        OA_PRE "a\xe2\x82" OA_POST,                 /* a character cut short */
        OA_PRE "a" "\"},\"finish_reason\":\"stop\"}],\"usage\":null}", /* another end */
        OA_PRE "a" OA_POST " ",                     /* white space after it */
        OA_PRE "a" OA_POST "}",                     /* text after the object */
        OA_PRE "a" "\"},\"finish_reason\":null}],\"usage\":{\"prompt_tokens\":3}}",
        "{\"id\":\"chatcmpl-2\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,"
        "\"delta\":{\"content\":\"a" OA_POST,           /* another id */
        OA_POST,                                    /* shorter than the shape */
        "\"" OA_POST,
        "[DONE]",
    };
    for (size_t i = 0; i < sizeof oa / sizeof oa[0]; i++)
        same_with_shape(PROVIDER_OPENAI, "", first, "", oa[i]);
    const char *an_first = AN_PRE "Bon" AN_POST;
    const char *an[] = {
        AN_PRE "jour" AN_POST,
        AN_PRE "x\",\"text\":\"y" AN_POST,
        AN_PRE "x\",\"type\":\"y" AN_POST,
        AN_PRE "\\" AN_POST,
        AN_PRE "x\xff" AN_POST,
    };
    for (size_t i = 0; i < sizeof an / sizeof an[0]; i++) {
        same_with_shape(PROVIDER_ANTHROPIC, "content_block_delta", an_first, "content_block_delta",
                        an[i]);
        /* Another event name is another shape: the name says the type. */
        same_with_shape(PROVIDER_ANTHROPIC, "content_block_delta", an_first, "message_stop",
                        an[i]);
        same_with_shape(PROVIDER_ANTHROPIC, "content_block_delta", an_first, "", an[i]);
    }
}

static void test_error_answers(void **state)
{
    (void)state;
    char m[300];
    const char *oa = "{\"error\":{\"message\":\"Rate limit reached\",\"type\":\"requests\"}}";
    assert_true(provider_error_message(PROVIDER_OPENAI, 429, oa, strlen(oa), m, sizeof m));
    assert_string_equal(m, "the model provider answered 429: Rate limit reached");
    const char *an = "{\"type\":\"error\",\"error\":{\"type\":\"authentication_error\","
                     "\"message\":\"invalid x-api-key\"}}";
    assert_false(provider_error_message(PROVIDER_ANTHROPIC, 401, an, strlen(an), m, sizeof m));
    assert_non_null(strstr(m, "401: invalid x-api-key"));
    assert_true(provider_error_message(PROVIDER_ANTHROPIC, 529, "", 0, m, sizeof m));
    assert_string_equal(m, "the model provider answered 529");
    assert_true(provider_error_message(PROVIDER_OPENAI, 503, "<html>", 6, m, sizeof m));
    assert_false(provider_error_message(PROVIDER_OPENAI, 400, "{\"error\":\"bad model\"}", 21, m,
                                        sizeof m));
    assert_non_null(strstr(m, "bad model"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_paths_and_headers), cmocka_unit_test(test_openai_body),
        cmocka_unit_test(test_anthropic_body),    cmocka_unit_test(test_context_budget),
        cmocka_unit_test(test_openai_events),     cmocka_unit_test(test_anthropic_events),
        cmocka_unit_test(test_error_answers),     cmocka_unit_test(test_shaped_events),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
