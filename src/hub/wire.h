/*
 * wire: the shapes of what chatd sends, each written in one place. A stored
 * event (user_message, admin_message, ...) looks the same live, replayed by
 * resume and read over HTTP; acks and errors likewise. Pure functions: any
 * thread.
 */
#ifndef CHATD_HUB_WIRE_H
#define CHATD_HUB_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "util/jw.h"
#include "util/sbuf.h"

/* One stored event's fields (borrowed). sender_name NULL: sender_id;
 * client_id NULL or "": none; metadata NULL or compact JSON object text. */
struct wire_event {
    const char *type, *session_id;
    int64_t seq;
    const char *client_id;
    const char *sender_type, *sender_id, *sender_name;
    const char *content;
    size_t content_len;
    const char *metadata;
    int64_t ts_ms;
};

/* Is a stored event of this type a message (user_message, admin_message,
 * ai_response: with content) rather than a session event (help_request,
 * help_resolved, admin_join, admin_leave: who and when only)? */
bool wire_is_message(const char *type);

/* Write the event object into w (an open value position). */
void wire_event_write(struct jw *w, const struct wire_event *e);

/* Frame a JSON text built with jw (WS_MAX_HEADER bytes reserved at its
 * front) as one text frame, taking the writer's buffer; NULL on OOM. *off
 * and *len give the frame inside the buffer. */
struct sbuf *wire_frame_jw(struct jw *w, uint32_t *off, uint32_t *len);

/* The event as one WebSocket text frame, framed once for any number of
 * connections; NULL on OOM. */
struct sbuf *wire_event_frame(const char *type, const char *sid, int64_t seq,
                              const char *client_id, const char *sender_type,
                              const char *sender_id, const char *sender_name, const char *content,
                              size_t content_len, const char *metadata, int64_t ts_ms,
                              uint32_t *off, uint32_t *len);

/* `{"type":"error","code":..,"message":..,"recoverable":..[,"retry_after"][,"id"]}`
 * as a text frame; retry_after_ms < 0: none; id NULL or "": none. NULL on
 * OOM. */
struct sbuf *wire_error_frame(const char *code, const char *message, bool recoverable,
                              int64_t retry_after_ms, const char *id, uint32_t *off,
                              uint32_t *len);

/* A JSON object (a relay: typing, read, admin_join, ...) framed once as a
 * text frame in a shared buffer; NULL on OOM. The caller owns the one
 * reference. */
struct sbuf *wire_frame_json(json_t *obj, uint32_t *off, uint32_t *len);

#endif
