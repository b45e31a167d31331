/*
 * DESIGN: written with jw straight into a buffer that has room for the
 * WebSocket header in front, so a frame is built once and queued as it is
 * on every connection that gets it.
 */
#include "hub/wire.h"

#include <string.h>

#include <jansson.h>

#include "util/clock.h"
#include "ws/frame.h"

/* Frame a JSON text built with jw (WS_MAX_HEADER bytes reserved at its
 * front) as one text frame, taking the writer's buffer; NULL on OOM. */
struct sbuf *wire_frame_jw(struct jw *w, uint32_t *off, uint32_t *len)
{
    /* The text was written after WS_MAX_HEADER free bytes: the header goes
     * right before it and the frame is queued from there, uncopied. */
    size_t n = w->len - WS_MAX_HEADER;
    struct sbuf *b = jw_take(w);
    if (!b)
        return NULL;
    uint8_t hdr[WS_MAX_HEADER];
    size_t hl = ws_frame_header(hdr, WS_OP_TEXT, true, n);
    memcpy(b->data + WS_MAX_HEADER - hl, hdr, hl);
    *off = (uint32_t)(WS_MAX_HEADER - hl);
    *len = (uint32_t)(hl + n);
    return b;
}

bool wire_is_message(const char *type)
{
    return strcmp(type, "user_message") == 0 || strcmp(type, "admin_message") == 0 ||
           strcmp(type, "ai_response") == 0;
}

/* The one shape of a stored event, live, replayed or read over HTTP. This
 * is the hot path of chat: written directly, not through a JSON tree. */
void wire_event_write(struct jw *w, const struct wire_event *e)
{
    char ts[32];
    clock_format_rfc3339(ts, e->ts_ms);
    jw_open(w);
    jw_kstr(w, "type", e->type);
    jw_kstr(w, "session_id", e->session_id);
    jw_kint(w, "seq", e->seq);
    jw_key(w, "sender");
    jw_open(w);
    jw_kstr(w, "type", e->sender_type);
    jw_kstr(w, "id", e->sender_id);
    jw_kstr(w, "name", e->sender_name ? e->sender_name : e->sender_id);
    jw_close(w);
    if (!wire_is_message(e->type)) {
        /* A session event (help_request, admin_join, ...): who and when. */
        jw_kstr(w, "timestamp", ts);
        jw_close(w);
        return;
    }
    jw_key(w, "content");
    jw_str(w, e->content, e->content_len);
    jw_kstr(w, "timestamp", ts);
    if (strcmp(e->type, "ai_response") == 0) {
        /* An answer's client id is the stream it was streamed as. */
        if (e->client_id && *e->client_id)
            jw_kstr(w, "stream_id", e->client_id);
        jw_key(w, "done");
        jw_bool(w, true);
    } else if (e->client_id && *e->client_id) {
        jw_kstr(w, "id", e->client_id);
    }
    if (e->metadata) {
        /* Stored as the compact JSON object it was checked to be. */
        jw_key(w, "metadata");
        jw_raw(w, e->metadata, strlen(e->metadata));
    }
    jw_close(w);
}

struct sbuf *wire_event_frame(const char *type, const char *sid, int64_t seq,
                              const char *client_id, const char *sender_type,
                              const char *sender_id, const char *sender_name, const char *content,
                              size_t content_len, const char *metadata, int64_t ts_ms,
                              uint32_t *off, uint32_t *len)
{
    struct wire_event e = {.type = type,
                           .session_id = sid,
                           .seq = seq,
                           .client_id = client_id,
                           .sender_type = sender_type,
                           .sender_id = sender_id,
                           .sender_name = sender_name,
                           .content = content,
                           .content_len = content_len,
                           .metadata = metadata,
                           .ts_ms = ts_ms};
    struct jw w;
    jw_init(&w, 256 + content_len + (metadata ? strlen(metadata) : 0), WS_MAX_HEADER);
    wire_event_write(&w, &e);
    return wire_frame_jw(&w, off, len);
}

struct sbuf *wire_error_frame(const char *code, const char *message, bool recoverable,
                              int64_t retry_after_ms, const char *id, uint32_t *off,
                              uint32_t *len)
{
    struct jw w;
    jw_init(&w, 256 + strlen(message), WS_MAX_HEADER);
    jw_open(&w);
    jw_kstr(&w, "type", "error");
    jw_kstr(&w, "code", code);
    jw_kstr(&w, "message", message);
    jw_key(&w, "recoverable");
    jw_bool(&w, recoverable);
    if (retry_after_ms >= 0)
        jw_kint(&w, "retry_after", retry_after_ms);
    if (id && *id)
        jw_kstr(&w, "id", id);
    jw_close(&w);
    return wire_frame_jw(&w, off, len);
}

struct sbuf *wire_frame_json(json_t *obj, uint32_t *off, uint32_t *len)
{
    /* Serialize once into a guess-sized buffer; only a large object is
     * serialized a second time, into a buffer of its exact size. */
    size_t guess = 1024;
    struct sbuf *b = sbuf_new((uint32_t)(guess + WS_MAX_HEADER));
    if (!b)
        return NULL;
    size_t n = json_dumpb(obj, (char *)b->data + WS_MAX_HEADER, guess, JSON_COMPACT);
    if (n == 0) {
        sbuf_unref(b);
        return NULL;
    }
    if (n > guess) {
        sbuf_unref(b);
        b = sbuf_new((uint32_t)(n + WS_MAX_HEADER));
        if (!b)
            return NULL;
        json_dumpb(obj, (char *)b->data + WS_MAX_HEADER, n, JSON_COMPACT);
    }
    uint8_t hdr[WS_MAX_HEADER];
    size_t hl = ws_frame_header(hdr, WS_OP_TEXT, true, n);
    /* The header goes right before the payload. */
    memcpy(b->data + WS_MAX_HEADER - hl, hdr, hl);
    b->len = (uint32_t)(n + WS_MAX_HEADER);
    *off = (uint32_t)(WS_MAX_HEADER - hl);
    *len = (uint32_t)(n + hl);
    return b;
}
