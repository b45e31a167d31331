/*
 * DESIGN: the decoder is a two-state machine (gathering a header, then
 * passing payload through). Header bytes are copied into the decoder so a
 * header split across reads costs nothing special; payload bytes of data
 * frames are never copied, only unmasked in place and handed back as a chunk,
 * so the caller decides whether to copy (a message split across reads) or use
 * them where they lie (a whole message in one read, the common case). Control
 * payloads are at most 125 bytes and are gathered into the decoder so their
 * events always carry the whole frame. Every limit is checked at the earliest
 * byte that reveals it: reserved bits and opcodes on byte 0, the control
 * length on byte 1, the message size and the fragment rule once the header
 * is complete, UTF-8 on each chunk.
 */
#include "ws/frame.h"

#include <string.h>

enum { ST_HEADER = 0, ST_PAYLOAD, ST_ERROR };

void ws_decoder_init(struct ws_decoder *d, uint64_t max_message, bool require_mask)
{
    memset(d, 0, sizeof *d);
    d->max_message = max_message;
    d->fragment_allowance = WS_FRAGMENT_ALLOWANCE;
    d->require_mask = require_mask;
    d->_hdr_need = 2;
    utf8_init(&d->_utf8);
}

bool ws_decoder_at_rest(const struct ws_decoder *d)
{
    return d->_state == ST_HEADER && d->_hdr_len == 0 && d->_msg_opcode == 0;
}

bool ws_close_code_valid(unsigned code)
{
    if (code >= 1000 && code <= 1003)
        return true;
    if (code >= 1007 && code <= 1014)
        return true;
    return code >= 3000 && code <= 4999;
}

static size_t fail(struct ws_decoder *d, struct ws_event *ev, uint16_t code, const char *why,
                   size_t consumed)
{
    d->_state = ST_ERROR;
    d->_err_code = code;
    d->_err_reason = why;
    ev->type = WS_EV_ERROR;
    ev->close_code = code;
    ev->reason = why;
    ev->reason_len = strlen(why);
    return consumed;
}

void ws_mask(uint8_t *p, size_t n, const uint8_t mask[4], unsigned off)
{
    uint8_t m[8];
    for (unsigned i = 0; i < 8; i++)
        m[i] = mask[(off + i) & 3];
    uint64_t mw;
    memcpy(&mw, m, 8);
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        v ^= mw;
        memcpy(p, &v, 8);
        p += 8;
        n -= 8;
    }
    for (size_t i = 0; i < n; i++)
        p[i] ^= m[i];
}

/* Byte 0 and 1 checks, done as soon as those bytes are in. */
static int check_first_bytes(struct ws_decoder *d, struct ws_event *ev)
{
    uint8_t b0 = d->_hdr[0];
    if (b0 & 0x70)
        return fail(d, ev, WS_CLOSE_PROTOCOL, "reserved bits set", 0), -1;
    uint8_t op = b0 & 0x0F;
    bool control = op & 0x8;
    if (op != WS_OP_CONT && op != WS_OP_TEXT && op != WS_OP_BINARY && op != WS_OP_CLOSE &&
        op != WS_OP_PING && op != WS_OP_PONG)
        return fail(d, ev, WS_CLOSE_PROTOCOL, "reserved opcode", 0), -1;
    if (control && !(b0 & 0x80))
        return fail(d, ev, WS_CLOSE_PROTOCOL, "fragmented control frame", 0), -1;
    if (d->_hdr_len < 2)
        return 0;
    uint8_t b1 = d->_hdr[1];
    bool masked = b1 & 0x80;
    uint8_t len7 = b1 & 0x7F;
    if (control && len7 > WS_MAX_CONTROL)
        return fail(d, ev, WS_CLOSE_PROTOCOL, "control frame too long", 0), -1;
    if (d->require_mask && !masked)
        return fail(d, ev, WS_CLOSE_PROTOCOL, "unmasked client frame", 0), -1;
    d->_hdr_need = (uint8_t)(2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + (masked ? 4 : 0));
    return 0;
}

/* The header is complete: decode it and apply the message-level rules. */
static int header_done(struct ws_decoder *d, struct ws_event *ev)
{
    uint8_t *h = d->_hdr;
    d->_fin = h[0] & 0x80;
    d->_opcode = h[0] & 0x0F;
    d->_masked = h[1] & 0x80;
    uint64_t len = h[1] & 0x7F;
    size_t pos = 2;
    if (len == 126) {
        len = ((uint64_t)h[2] << 8) | h[3];
        pos = 4;
    } else if (len == 127) {
        len = 0;
        for (int i = 0; i < 8; i++)
            len = (len << 8) | h[2 + i];
        pos = 10;
        if (len >> 63)
            return fail(d, ev, WS_CLOSE_PROTOCOL, "frame length has top bit set", 0), -1;
    }
    if (d->_masked)
        memcpy(d->_mask, h + pos, 4);
    d->_mask_off = 0;
    d->_remaining = len;

    uint8_t op = d->_opcode;
    if (op & 0x8) {
        d->_ctrl_len = 0;
        return 0;
    }
    if (op == WS_OP_CONT) {
        if (!d->_msg_opcode)
            return fail(d, ev, WS_CLOSE_PROTOCOL, "continuation outside a message", 0), -1;
    } else {
        if (d->_msg_opcode)
            return fail(d, ev, WS_CLOSE_PROTOCOL, "new message inside a fragmented one", 0), -1;
        d->_msg_opcode = op;
        d->_msg_len = 0;
        d->_frags = 0;
        d->_emitted = false;
        utf8_init(&d->_utf8);
    }
    /* Checked against the announced length, before any payload is read. */
    if (len > d->max_message || d->_msg_len + len > d->max_message)
        return fail(d, ev, WS_CLOSE_TOO_BIG, "message too big", 0), -1;
    d->_msg_len += len;
    /* The fragment rule (frame.h): this frame's own payload counts, so a
     * large fragment is never refused for the small ones before it. */
    if (++d->_frags > d->fragment_allowance + d->_msg_len / WS_FRAGMENT_COST)
        return fail(d, ev, WS_CLOSE_POLICY, "too many fragments", 0), -1;
    return 0;
}

/* A whole control frame is in _ctrl: validate it and report it. */
static void control_event(struct ws_decoder *d, struct ws_event *ev)
{
    ev->type = WS_EV_CONTROL;
    ev->opcode = d->_opcode;
    ev->data = d->_ctrl;
    ev->len = d->_ctrl_len;
    ev->close_code = 0;
    ev->reason = NULL;
    ev->reason_len = 0;
    if (d->_opcode != WS_OP_CLOSE)
        return;
    if (d->_ctrl_len == 0) {
        ev->close_code = WS_CLOSE_NO_STATUS;
        return;
    }
    if (d->_ctrl_len == 1) {
        fail(d, ev, WS_CLOSE_PROTOCOL, "close payload of one byte", 0);
        return;
    }
    unsigned code = ((unsigned)d->_ctrl[0] << 8) | d->_ctrl[1];
    if (!ws_close_code_valid(code)) {
        fail(d, ev, WS_CLOSE_PROTOCOL, "invalid close code", 0);
        return;
    }
    if (!utf8_valid(d->_ctrl + 2, d->_ctrl_len - 2u)) {
        fail(d, ev, WS_CLOSE_BAD_DATA, "close reason is not UTF-8", 0);
        return;
    }
    ev->close_code = (uint16_t)code;
    ev->reason = (const char *)d->_ctrl + 2;
    ev->reason_len = d->_ctrl_len - 2u;
}

/* The frame's last payload byte has been seen (or it had none). */
static void frame_done(struct ws_decoder *d)
{
    d->_state = ST_HEADER;
    d->_hdr_len = 0;
    d->_hdr_need = 2;
}

size_t ws_decode(struct ws_decoder *d, uint8_t *buf, size_t len, struct ws_event *ev)
{
    size_t used = 0;
    memset(ev, 0, sizeof *ev);

    if (d->_state == ST_ERROR) {
        ev->type = WS_EV_ERROR;
        ev->close_code = d->_err_code;
        ev->reason = d->_err_reason;
        ev->reason_len = strlen(d->_err_reason);
        return len;
    }

    while (used < len || (d->_state == ST_PAYLOAD && d->_remaining == 0)) {
        if (d->_state == ST_HEADER) {
            while (used < len && d->_hdr_len < d->_hdr_need) {
                d->_hdr[d->_hdr_len++] = buf[used++];
                if (d->_hdr_len <= 2 && check_first_bytes(d, ev) < 0)
                    return used;
            }
            if (d->_hdr_len < d->_hdr_need)
                break; /* need more header bytes */
            if (header_done(d, ev) < 0)
                return used;
            d->_state = ST_PAYLOAD;
            continue;
        }

        /* ST_PAYLOAD */
        size_t avail = len - used;
        size_t n = d->_remaining < avail ? (size_t)d->_remaining : avail;
        uint8_t *p = buf + used;
        if (d->_masked && n) {
            ws_mask(p, n, d->_mask, d->_mask_off);
            d->_mask_off = (uint8_t)((d->_mask_off + n) & 3);
        }
        used += n;
        d->_remaining -= n;

        if (d->_opcode & 0x8) {
            memcpy(d->_ctrl + d->_ctrl_len, p, n);
            d->_ctrl_len = (uint8_t)(d->_ctrl_len + n);
            if (d->_remaining)
                continue; /* only possible when used == len */
            frame_done(d);
            control_event(d, ev);
            return used;
        }

        uint8_t mop = d->_msg_opcode;
        if (mop == WS_OP_TEXT && utf8_feed(&d->_utf8, p, n) < 0)
            return fail(d, ev, WS_CLOSE_BAD_DATA, "invalid UTF-8 in text message", used);
        bool frame_end = d->_remaining == 0;
        bool msg_end = frame_end && d->_fin;
        /* Skip empty chunks unless they end a frame (so that an empty message
         * still produces its one event). */
        if (n == 0 && !frame_end)
            continue;
        if (msg_end && mop == WS_OP_TEXT && !utf8_complete(&d->_utf8))
            return fail(d, ev, WS_CLOSE_BAD_DATA, "text message ends inside a character", used);
        ev->type = WS_EV_DATA;
        ev->opcode = mop;
        ev->first = !d->_emitted;
        d->_emitted = true;
        ev->data = p;
        ev->len = n;
        ev->last = msg_end;
        if (frame_end)
            frame_done(d);
        if (msg_end)
            d->_msg_opcode = 0;
        return used;
    }
    ev->type = WS_EV_NONE;
    return used;
}

static size_t put_len(uint8_t *out, uint8_t b1, uint64_t len)
{
    if (len < 126) {
        out[1] = (uint8_t)(b1 | len);
        return 2;
    }
    if (len <= 0xFFFF) {
        out[1] = b1 | 126;
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        return 4;
    }
    out[1] = b1 | 127;
    for (int i = 0; i < 8; i++)
        out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
    return 10;
}

size_t ws_frame_header(uint8_t out[WS_MAX_HEADER], unsigned opcode, bool fin, uint64_t len)
{
    out[0] = (uint8_t)((fin ? 0x80 : 0) | (opcode & 0x0F));
    return put_len(out, 0, len);
}

size_t ws_frame_header_masked(uint8_t out[WS_MAX_HEADER], unsigned opcode, bool fin,
                              uint64_t len, const uint8_t mask[4])
{
    out[0] = (uint8_t)((fin ? 0x80 : 0) | (opcode & 0x0F));
    size_t n = put_len(out, 0x80, len);
    memcpy(out + n, mask, 4);
    return n + 4;
}

size_t ws_close_payload(uint8_t out[WS_MAX_CONTROL], uint16_t code, const char *reason)
{
    out[0] = (uint8_t)(code >> 8);
    out[1] = (uint8_t)code;
    size_t n = reason ? strlen(reason) : 0;
    if (n > WS_MAX_CONTROL - 2) {
        n = WS_MAX_CONTROL - 2;
        /* Do not cut a multi-byte character in half. */
        while (n > 0 && ((uint8_t)reason[n] & 0xC0) == 0x80)
            n--;
    }
    if (n)
        memcpy(out + 2, reason, n);
    return n + 2;
}
