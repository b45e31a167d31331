/*
 * frame: the RFC 6455 frame codec. Pure: no I/O, no allocation, no globals.
 *
 * Decoder. A struct ws_decoder consumes a byte stream split at any points and
 * yields one event per call:
 *   WS_EV_DATA     a chunk of a text or binary message's payload, unmasked in
 *                  place inside the caller's buffer (first/last mark the
 *                  message's first and final chunk; a chunk may be empty);
 *   WS_EV_CONTROL  a whole ping, pong or close frame (payload held by the
 *                  decoder, valid until the next call);
 *   WS_EV_ERROR    the stream broke a rule: close_code says which close code
 *                  to send (1002 protocol, 1007 bad UTF-8, 1008 policy, 1009
 *                  too big) and reason says why. Errors are sticky.
 *   WS_EV_NONE     every byte given was consumed; feed more.
 * Rules enforced: RSV bits must be 0 (no extension is negotiated), opcodes
 * 3-7 and 11-15 are refused, control frames are final and carry at most 125
 * bytes, client frames must be masked (when require_mask), the 64-bit length's
 * top bit must be 0, continuation only inside a message and a new message
 * never inside one, a message's total size is checked against max_message as
 * soon as each frame header announces its length (before any payload is
 * read), a message's frames must carry enough payload for their number (the
 * fragment rule below), text is validated as UTF-8 chunk by chunk (failing
 * at the first bad byte), close frames carry either nothing or a valid code
 * plus UTF-8 reason.
 *
 * Fragment rule. Each frame costs the server a fixed amount of work (an
 * event, a copy) whatever its size, so a message may not be cut finer than
 * its payload pays for: it may have fragment_allowance frames (default
 * WS_FRAGMENT_ALLOWANCE, 4096) whatever their size, plus one more frame for
 * every WS_FRAGMENT_COST (16) bytes of its payload. The n-th data frame of a
 * message is refused with 1008 ("too many fragments") on its header when
 * n > fragment_allowance + L / 16, L being the payload announced so far
 * including that frame's (after the max_message check, so an oversized
 * frame gets 1009). Fragments of 16 bytes or more on average are therefore
 * always accepted (a 1 MiB message in 64-byte fragments: 16,384 frames),
 * while a stream of empty fragments is stopped at frame 4097 and one of
 * 1-byte fragments at frame 4370; in all, a message of at most
 * max_message bytes never has more than 4096 + max_message / 16 frames.
 * Control frames in between do not count.
 *
 * Encoder. ws_frame_header writes a server (unmasked) frame header, so one
 * payload can be framed once and the same bytes sent to many sockets.
 * ws_frame_header_masked and ws_mask serve clients (tests, load generator).
 *
 * Any thread; a decoder belongs to one connection and is used by its thread.
 */
#ifndef CHATD_WS_FRAME_H
#define CHATD_WS_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ws/utf8.h"

enum ws_opcode {
    WS_OP_CONT = 0x0,
    WS_OP_TEXT = 0x1,
    WS_OP_BINARY = 0x2,
    WS_OP_CLOSE = 0x8,
    WS_OP_PING = 0x9,
    WS_OP_PONG = 0xA,
};

enum ws_close_code {
    WS_CLOSE_NORMAL = 1000,
    WS_CLOSE_GOING_AWAY = 1001,
    WS_CLOSE_PROTOCOL = 1002,
    WS_CLOSE_UNSUPPORTED = 1003,
    WS_CLOSE_NO_STATUS = 1005,   /* never sent: "close frame had no code" */
    WS_CLOSE_BAD_DATA = 1007,
    WS_CLOSE_POLICY = 1008,
    WS_CLOSE_TOO_BIG = 1009,
    WS_CLOSE_INTERNAL = 1011,
    WS_CLOSE_TRY_AGAIN = 1013,
};

#define WS_MAX_HEADER 14        /* 2 + 8 length + 4 mask */
#define WS_MAX_CONTROL 125
#define WS_FRAGMENT_ALLOWANCE 4096 /* frames any message may have (fragment rule) */
#define WS_FRAGMENT_COST 16         /* payload bytes that pay for one more frame */

enum ws_event_type { WS_EV_NONE = 0, WS_EV_DATA, WS_EV_CONTROL, WS_EV_ERROR };

struct ws_event {
    enum ws_event_type type;
    uint8_t opcode;       /* DATA: message opcode (TEXT/BINARY); CONTROL: frame opcode */
    bool first;           /* DATA: first chunk of the message */
    bool last;            /* DATA: final chunk of the message */
    uint8_t *data;        /* DATA: in the caller's buffer; CONTROL: in the decoder */
    size_t len;
    uint16_t close_code;  /* CONTROL close: received code (1005 if none); ERROR: code to send */
    const char *reason;   /* ERROR: static text. CONTROL close: reason bytes (len - 2 of them) */
    size_t reason_len;
};

struct ws_decoder {
    /* public: set by ws_decoder_init, may be changed between calls */
    uint64_t max_message;   /* largest message (sum of its frames) accepted */
    uint32_t fragment_allowance; /* frames any message may have (fragment rule above) */
    bool require_mask;      /* refuse unmasked frames (server side) */

    /* private */
    uint8_t _state;
    uint8_t _hdr_len;        /* header bytes gathered so far */
    uint8_t _hdr_need;       /* header size once known (2 until byte 1 is seen) */
    uint8_t _opcode;         /* current frame */
    bool _fin;
    bool _masked;
    bool _emitted;           /* a chunk of the current message was reported */
    uint8_t _mask_off;       /* position in the mask of the next payload byte */
    uint8_t _msg_opcode;     /* data message in progress, 0 if none */
    uint8_t _ctrl_len;
    uint8_t _mask[4];
    uint8_t _hdr[WS_MAX_HEADER];
    uint64_t _frags;         /* data frames of the message in progress */
    uint64_t _remaining;     /* payload bytes of the current frame not yet seen */
    uint64_t _msg_len;       /* bytes of the message in progress announced so far */
    struct utf8_state _utf8;
    const char *_err_reason;
    uint16_t _err_code;
    uint8_t _ctrl[WS_MAX_CONTROL];
};

void ws_decoder_init(struct ws_decoder *d, uint64_t max_message, bool require_mask);

/* Consume up to len bytes of buf (payload bytes are unmasked in place) and
 * report one event. Returns the number of bytes consumed; when the event is
 * WS_EV_NONE that is all of them. Call again with the rest until NONE. */
size_t ws_decode(struct ws_decoder *d, uint8_t *buf, size_t len, struct ws_event *ev);

/* True between the frames of a fragmented message. */
static inline bool ws_decoder_in_message(const struct ws_decoder *d)
{
    return d->_msg_opcode != 0;
}

/* True when the decoder holds no state a fresh decoder would not: between
 * frames, outside any fragmented message, no error. A caller may then drop
 * it and start again with ws_decoder_init (idle connections keep none). */
bool ws_decoder_at_rest(const struct ws_decoder *d);

/* Is this a close code a peer may send (1000-1003, 1007-1014, 3000-4999)? */
bool ws_close_code_valid(unsigned code);

/* Write the header of an unmasked frame carrying len payload bytes.
 * Returns the header length (2, 4 or 10). */
size_t ws_frame_header(uint8_t out[WS_MAX_HEADER], unsigned opcode, bool fin, uint64_t len);

/* Write a masked (client) frame header. Returns its length (6, 8 or 14). */
size_t ws_frame_header_masked(uint8_t out[WS_MAX_HEADER], unsigned opcode, bool fin,
                              uint64_t len, const uint8_t mask[4]);

/* XOR n bytes with the mask, starting at mask position off (0..3), a machine
 * word at a time. Masking and unmasking are the same operation. */
void ws_mask(uint8_t *p, size_t n, const uint8_t mask[4], unsigned off);

/* Write a close frame payload (code + reason, reason cut to fit 123 bytes on
 * a UTF-8 boundary). Returns the payload length. */
size_t ws_close_payload(uint8_t out[WS_MAX_CONTROL], uint16_t code, const char *reason);

#endif
