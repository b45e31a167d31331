/*
 * libFuzzer driver for the decoding and validation of client messages:
 * every type of PROTOCOL.md section 3, through the real path (the frame
 * decoder, the hub's JSON decoding in hub.c, the checks of
 * src/hub/validate.c and the handlers of the router, storage included), on
 * a whole worker (fuzz/server_harness.h).
 *
 * DESIGN: byte 0 picks the client (bit 0: fuzz-admin, else fuzz-user; bit
 * 1: the token in the query, else in Authorization) and, with byte 1, how
 * the stream is cut into reads (bits 2-3, fuzz/chunks.h). The rest is up
 * to 64 client messages separated by NUL bytes, each sent as one masked
 * text frame after a valid upgrade. The server's answers are read back
 * and checked against what was sent:
 *   1. the upgrade is accepted (101) and the first frame is
 *      connection_status for that user;
 *   2. every frame is a text frame holding one JSON object whose "type"
 *      is one of section 4's, or a close frame;
 *   3. an `error` has a code of section 4 (or unauthorized), a message and
 *      a boolean recoverable, and an "id" only of a message that was sent;
 *      an `ack` has seq >= 1, a session id of chatd's shape and an id that
 *      was sent;
 *   4. unless the server closed the connection (a frame over the limit,
 *      invalid UTF-8), each message that is not a JSON object gets exactly
 *      one bad_json error, each of an unknown type exactly one
 *      unknown_type error, and each message with an id used once in the
 *      input as many answers with its id (ack, resumed, refreshed or
 *      error) as docs/protocol.md says: one, or for typing_indicator and
 *      read none unless refused; an acknowledged user_message or
 *      admin_message has a seq and had content of 1..max-content-bytes
 *      bytes and metadata, if any, an object of strings;
 *   5. no memory error, no leak, and the connection closes after EOF.
 * A broken promise calls abort().
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "chunks.h"
#include "server_harness.h"

#define MAX_MSGS 64

/* What one sent message must get. */
struct sent {
    bool bad_json, unknown_type;
    const char *id;   /* valid id, or NULL (borrowed from msg) */
    bool track;       /* answered exactly once (an id used once in the input) */
    bool at_most_one; /* answered only when refused */
    bool message;     /* user_message or admin_message */
    bool content_ok;  /* content within bounds, metadata of strings */
    unsigned answers; /* acks and errors carrying its id */
    json_t *msg;
};

static const char *const server_types[] = {
    "connection_status", "ack",          "user_message",  "admin_message", "ai_response", "loading",
    "typing_indicator",  "help_request", "help_resolved", "admin_join",    "admin_leave", "read",
    "notification",      "refreshed",    "resumed",       "error"};

static bool in_list(const char *s, const char *const *list, size_t n)
{
    for (size_t i = 0; s && i < n; i++)
        if (strcmp(s, list[i]) == 0)
            return true;
    return false;
}

static bool sid_shape(const char *s)
{
    if (!s || strlen(s) != STORE_ID_LEN || s[0] != 's' || s[1] != '_')
        return false;
    for (int i = 2; i < STORE_ID_LEN; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

static void classify(struct sent *m)
{
    json_t *o = m->msg;
    if (!json_is_object(o)) {
        m->bad_json = true;
        return;
    }
    json_t *idv = json_object_get(o, "id");
    if (idv) {
        if (!json_is_string(idv) || json_string_length(idv) < 1 || json_string_length(idv) > 64)
            return; /* invalid_field, without an id */
        m->id = json_string_value(idv);
    }
    const char *type = json_string_value(json_object_get(o, "type"));
    if (!type)
        return;
    if (strcmp(type, "refresh") != 0 && !in_list(type, hub_chat_types, CHAT_TYPE_COUNT))
        m->unknown_type = true;
    /* docs/protocol.md, "The messages": the types answered once (ack,
     * resumed, refreshed or error); typing_indicator and read are answered
     * only when refused. */
    static const char *const answered[] = {
        "user_message", "admin_message", "help_request", "model_select",    "resume",
        "admin_join",   "admin_leave",   "resolve_help", "stop_generation", "refresh"};
    if (m->id && (in_list(type, answered, sizeof answered / sizeof *answered) || m->unknown_type))
        m->track = true;
    else if (m->id)
        m->at_most_one = true;
    if (strcmp(type, "user_message") == 0 || strcmp(type, "admin_message") == 0) {
        m->message = true;
        json_t *c = json_object_get(o, "content");
        m->content_ok = json_is_string(c) && json_string_length(c) >= 1 &&
                        json_string_length(c) <= HARNESS_MAX_CONTENT;
        json_t *meta = json_object_get(o, "metadata");
        if (meta && !json_is_null(meta)) {
            const char *k;
            json_t *v;
            if (!json_is_object(meta))
                m->content_ok = false;
            else
                json_object_foreach(meta, k, v) if (!json_is_string(v)) m->content_ok = false;
        }
    }
}

/* The sent message whose id is id (NULL: none). */
static struct sent *by_id(struct sent *v, unsigned n, const char *id)
{
    for (unsigned i = 0; id && i < n; i++)
        if (v[i].id && strcmp(v[i].id, id) == 0)
            return &v[i];
    return NULL;
}

static bool id_sent(struct sent *v, unsigned n, const char *id)
{
    return by_id(v, n, id) != NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2 || size > 65536)
        return 0;
    bool admin = data[0] & 1, in_query = data[0] & 2;
    unsigned mode = (data[0] >> 2) & 3;

    /* The messages, the placeholder session replaced. */
    uint8_t *body = malloc(size - 2 + 1);
    HCHECK(body);
    memcpy(body, data + 2, size - 2);
    harness_subst(body, size - 2);
    size_t blen = size - 2;

    static struct sent sent[MAX_MSGS];
    unsigned nsent = 0;
    uint8_t *stream = malloc(4096 + blen + 14 * MAX_MSGS);
    HCHECK(stream);
    size_t slen =
        harness_upgrade((char *)stream, 4096, admin ? h_admin_token : h_user_token, in_query);
    static const uint8_t mask[4] = {0x37, 0xfa, 0x21, 0x3d};
    size_t start = 0;
    for (size_t i = 0; i <= blen && nsent < MAX_MSGS; i++) {
        if (i < blen && body[i] != 0)
            continue;
        const uint8_t *p = body + start;
        size_t n = i - start;
        start = i + 1;
        struct sent *m = &sent[nsent++];
        memset(m, 0, sizeof *m);
        m->msg = json_loadb((const char *)p, n, JSON_REJECT_DUPLICATES, NULL);
        classify(m);
        slen += harness_frame(stream + slen, 1, true, p, n, mask);
    }
    /* An id used twice: its answers cannot be told apart. */
    for (unsigned i = 0; i < nsent; i++)
        for (unsigned j = 0; j < nsent; j++)
            if (i != j && sent[i].id && sent[j].id && strcmp(sent[i].id, sent[j].id) == 0)
                sent[i].track = sent[i].at_most_one = false;

    harness_connect();
    fuzz_feed_chunked(mode, data[1], stream, slen, 700, harness_feed, NULL);
    harness_settle(false);
    size_t end_before_eof = h_out_len;
    harness_finish();

    /* 1. Accepted, connection_status first. */
    size_t pos = harness_frames_start();
    HCHECK(pos > 0);
    unsigned op;
    bool fin, first = true, closed = false;
    const uint8_t *pl;
    size_t len;
    unsigned bad_json = 0, unknown_type = 0;
    while (harness_next_frame(&pos, &op, &fin, &pl, &len)) {
        HCHECK(fin);
        if (op == 8) {
            closed = true;
            continue;
        }
        if (op == 9 || op == 10)
            continue;
        HCHECK(op == 1 && !closed);
        json_t *o = json_loadb((const char *)pl, len, 0, NULL);
        HCHECK(json_is_object(o));
        const char *type = json_string_value(json_object_get(o, "type"));
        HCHECK(in_list(type, server_types, sizeof server_types / sizeof *server_types));
        if (first) {
            HCHECK(strcmp(type, "connection_status") == 0);
            const char *u = json_string_value(json_object_get(o, "user_id"));
            HCHECK(u && strcmp(u, admin ? "fuzz-admin" : "fuzz-user") == 0);
            first = false;
        }
        json_t *idv = json_object_get(o, "id");
        const char *id = json_string_value(idv);
        if (strcmp(type, "error") == 0) {
            const char *code = json_string_value(json_object_get(o, "code"));
            const char *text = json_string_value(json_object_get(o, "message"));
            HCHECK(in_list(code, hub_error_codes, ERR_COUNT));
            HCHECK(text && text[0]);
            HCHECK(json_is_boolean(json_object_get(o, "recoverable")));
            HCHECK(!idv || (id && id_sent(sent, nsent, id)));
            if (strcmp(code, "bad_json") == 0) {
                HCHECK(!idv);
                bad_json++;
            }
            if (strcmp(code, "unknown_type") == 0)
                unknown_type++;
            struct sent *m = by_id(sent, nsent, id);
            if (m)
                m->answers++;
        } else if (strcmp(type, "ack") == 0) {
            json_t *seq = json_object_get(o, "seq");
            HCHECK(!seq || (json_is_integer(seq) && json_integer_value(seq) >= 1));
            HCHECK(sid_shape(json_string_value(json_object_get(o, "session_id"))));
            HCHECK(!idv || (id && id_sent(sent, nsent, id)));
            struct sent *m = by_id(sent, nsent, id);
            if (m)
                m->answers++;
            if (m && m->message && (m->track || m->at_most_one)) {
                /* 4. stored: within bounds, and numbered */
                HCHECK(m->content_ok && seq);
            }
        } else if ((strcmp(type, "resumed") == 0 || strcmp(type, "refreshed") == 0) && idv) {
            HCHECK(id && id_sent(sent, nsent, id));
            by_id(sent, nsent, id)->answers++;
        }
        json_decref(o);
    }
    (void)end_before_eof;

    /* 4. Exactly one answer each, when the server kept the connection. */
    if (!closed && h_out_len < HARNESS_OUT_MAX) {
        unsigned want_bad = 0, want_unknown = 0;
        for (unsigned i = 0; i < nsent; i++) {
            want_bad += sent[i].bad_json;
            want_unknown += sent[i].unknown_type;
            if ((sent[i].track && sent[i].answers != 1) ||
                (sent[i].at_most_one && sent[i].answers > 1)) {
                fprintf(stderr, "message %u (id %s) got %u answers\n", i, sent[i].id,
                        sent[i].answers);
                abort();
            }
        }
        HCHECK(bad_json == want_bad);
        HCHECK(unknown_type == want_unknown);
    }
    for (unsigned i = 0; i < nsent; i++)
        json_decref(sent[i].msg);
    free(stream);
    free(body);
    return 0;
}
