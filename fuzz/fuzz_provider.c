/*
 * libFuzzer driver for reading a model provider's streamed events by their
 * stream's shape (src/assistant/provider.c, struct provider_shape).
 *
 * DESIGN: a shape must change what reading an event costs, never what it
 * means. So every event is read twice, with the stream's shape and with
 * none, and the two readings must agree in everything: the result, the
 * type, the text byte for byte, the token counts, the stop reason and the
 * error. The input:
 *   byte 0  bit 0 the provider (OpenAI, Anthropic); bit 1 splice: the
 *           second event is the first one's shape around the rest of the
 *           input (what a provider's next delta looks like, so the
 *           string check is what gets exercised); bits 2-3 and 4-5 the
 *           event names of the two events ("", "content_block_delta",
 *           "message_delta", "ping");
 *   byte 1  the first event's length (the rest, if longer);
 *   then the first event's data and the second's (or, spliced, the text).
 * A third reading runs the first event again through the shape the second
 * left. A shape kept must hold a quote at each end of the text. A broken
 * invariant calls abort().
 */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

#include "assistant/provider.h"

static const char *const names[4] = {"", "content_block_delta", "message_delta", "ping"};

static void check_shape(const struct provider_shape *sh)
{
    if (sh->pre == 0)
        return;
    CHECK(sh->post >= 1 && (size_t)sh->pre + sh->post <= sizeof sh->bytes);
    CHECK(sh->bytes[sh->pre - 1] == '"' && sh->bytes[sh->pre] == '"');
    CHECK(memchr(sh->name, '\0', sizeof sh->name) != NULL);
}

/* Read data with the shape and without one: the same reading. */
static void read_both(enum provider_kind kind, struct provider_shape *sh, const char *name,
                      const char *data, size_t len)
{
    struct provider_event a, b;
    int ra = provider_parse_event(kind, sh, name, data, len, &a);
    int rb = provider_parse_event(kind, NULL, name, data, len, &b);
    CHECK(ra == rb);
    CHECK(a.type == b.type && a.len == b.len);
    CHECK((a.text == NULL) == (b.text == NULL));
    if (a.len)
        CHECK(memcmp(a.text, b.text, a.len) == 0 && a.text[a.len] == '\0');
    CHECK(a.input_tokens == b.input_tokens && a.output_tokens == b.output_tokens);
    CHECK(strcmp(a.stop_reason, b.stop_reason) == 0);
    CHECK(strcmp(a.error, b.error) == 0);
    provider_event_release(&a);
    provider_event_release(&b);
    check_shape(sh);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    enum provider_kind kind = (data[0] & 1) ? PROVIDER_ANTHROPIC : PROVIDER_OPENAI;
    bool splice = data[0] & 2;
    const char *name1 = names[(data[0] >> 2) & 3], *name2 = names[(data[0] >> 4) & 3];
    size_t n1 = data[1];
    data += 2;
    size -= 2;
    if (n1 > size)
        n1 = size;
    /* Each event in a buffer of exactly its size, so ASan sees any read
     * outside it. */
    char *first = malloc(n1 ? n1 : 1);
    CHECK(first);
    memcpy(first, data, n1);
    struct provider_shape sh;
    memset(&sh, 0, sizeof sh);
    read_both(kind, &sh, name1, first, n1);

    size_t rest = size - n1;
    size_t n2 = rest;
    if (splice && sh.pre)
        n2 = sh.pre + rest + sh.post;
    char *second = malloc(n2 ? n2 : 1);
    CHECK(second);
    if (splice && sh.pre) {
        memcpy(second, sh.bytes, sh.pre);
        memcpy(second + sh.pre, data + n1, rest);
        memcpy(second + sh.pre + rest, sh.bytes + sh.pre, sh.post);
    } else {
        memcpy(second, data + n1, rest);
    }
    read_both(kind, &sh, name2, second, n2);
    read_both(kind, &sh, name1, first, n1);
    free(second);
    free(first);
    return 0;
}
