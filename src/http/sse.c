/*
 * DESIGN: a state machine over bytes that never holds a whole line. The
 * field name (only its first few bytes matter: "data" and "event" are the
 * fields kept) is gathered into a small array; once the colon is seen, the
 * value streams straight into its destination, the event's data or name
 * buffer, or nowhere for ignored fields. A field takes effect when its
 * value starts rather than when its line ends, which is equivalent because
 * nothing can be reported before that line ends: an event is reported only
 * at a blank line. Values are copied a run at a time (up to the next CR or
 * LF), so a long data line costs one memcpy per chunk, not one per byte.
 *
 * Data lines are joined by putting "\n" before every data line but the
 * first (rather than after each, as the standard words it, then dropping
 * the last), so the buffer always holds exactly what will be reported and
 * the max_event check is exact. A CR that ends a line sets _after_cr, so
 * the LF of a CRLF split across two feeds is still recognized as the same
 * line end. A partial byte order mark is held in _bom; if the stream turns
 * out not to start with one, the bytes matched so far are replayed through
 * the machine as ordinary input.
 */
#include "http/sse.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

enum {
    ST_FIELD, /* reading the field name, up to the colon */
    ST_SPACE, /* just after the colon: one space may follow, and is dropped */
    ST_VALUE, /* reading the value, up to the line end */
};

enum {
    F_IGNORE, /* comments, id, retry, unknown fields */
    F_DATA,
    F_EVENT,
};

#define BOM_LEN 3
static const char BOM[BOM_LEN] = {'\xEF', '\xBB', '\xBF'};
#define FIRST_CAP 64 /* first allocation of a buffer, in bytes */

int sse_init(struct sse_parser *p, size_t max_line, size_t max_event)
{
    if (max_line == 0 || max_line > SSE_MAX_BOUND || max_event == 0 || max_event > SSE_MAX_BOUND)
        return -EINVAL;
    memset(p, 0, sizeof *p);
    p->max_line = max_line;
    p->max_event = max_event;
    p->_state = ST_FIELD;
    p->_field = F_IGNORE;
    return 0;
}

void sse_release(struct sse_parser *p)
{
    free(p->_data);
    free(p->_name);
    p->_data = p->_name = NULL;
    p->_data_cap = p->_name_cap = 0;
    p->_data_len = p->_name_len = 0;
}

bool sse_pending(const struct sse_parser *p)
{
    return p->_line_len > 0 || p->_has_data || (p->_bom > 0 && p->_bom < BOM_LEN);
}

static int fail(struct sse_parser *p, int err)
{
    p->_err = err;
    return err;
}

/*
 * Append n bytes to a buffer of *len bytes used out of *cap, keeping room
 * for the NUL that follows a reported string. limit is the bound on *len.
 * Bounds are at most SSE_MAX_BOUND, so limit + 1 and the doubling cannot
 * overflow.
 */
static int append(char **buf, size_t *len, size_t *cap, size_t limit, const char *s, size_t n)
{
    if (n > limit - *len)
        return -EMSGSIZE;
    if (n == 0)
        return 0;
    if (*len + n + 1 > *cap) {
        size_t want = *cap ? *cap : FIRST_CAP;
        while (want < *len + n + 1)
            want *= 2;
        if (want > limit + 1)
            want = limit + 1;
        char *nb = realloc(*buf, want);
        if (!nb)
            return -ENOMEM;
        *buf = nb;
        *cap = want;
    }
    memcpy(*buf + *len, s, n);
    *len += n;
    return 0;
}

/* The colon was seen (or the line ended without one): the field named by
 * _fname starts its value. */
static int start_value(struct sse_parser *p)
{
    p->_field = F_IGNORE;
    if (p->_fname_len == 4 && memcmp(p->_fname, "data", 4) == 0) {
        p->_field = F_DATA;
        if (p->_has_data) {
            int rc = append(&p->_data, &p->_data_len, &p->_data_cap, p->max_event, "\n", 1);
            if (rc)
                return fail(p, rc);
        }
        p->_has_data = true;
    } else if (p->_fname_len == 5 && memcmp(p->_fname, "event", 5) == 0) {
        p->_field = F_EVENT;
        p->_name_len = 0; /* the last `event:` of an event wins */
    }
    return 0;
}

/* A run of value bytes, none of them CR or LF, already counted in the line. */
static int add_value(struct sse_parser *p, const char *s, size_t n)
{
    int rc = 0;
    if (p->_field == F_DATA)
        rc = append(&p->_data, &p->_data_len, &p->_data_cap, p->max_event, s, n);
    else if (p->_field == F_EVENT)
        rc = append(&p->_name, &p->_name_len, &p->_name_cap, p->max_line, s, n);
    return rc ? fail(p, rc) : 0;
}

/* A blank line: report the event if it had data, then start the next. */
static int dispatch(struct sse_parser *p, sse_event_cb cb, void *arg)
{
    if (!p->_has_data) {
        p->_name_len = 0;
        return 0;
    }
    struct sse_event ev = {"", 0, "", 0};
    if (p->_data_len) {
        p->_data[p->_data_len] = '\0';
        ev.data = p->_data;
        ev.data_len = p->_data_len;
    }
    if (p->_name_len) {
        p->_name[p->_name_len] = '\0';
        ev.name = p->_name;
        ev.name_len = p->_name_len;
    }
    p->_has_data = false;
    p->_data_len = 0;
    p->_name_len = 0;
    int rc = cb(arg, &ev);
    if (rc)
        return fail(p, rc < 0 ? rc : -ECANCELED);
    return 0;
}

static int end_line(struct sse_parser *p, sse_event_cb cb, void *arg)
{
    if (p->_line_len == 0)
        return dispatch(p, cb, arg);
    if (p->_state == ST_FIELD) {
        /* No colon: the whole line names a field whose value is empty. */
        int rc = start_value(p);
        if (rc)
            return rc;
    }
    p->_state = ST_FIELD;
    p->_field = F_IGNORE;
    p->_fname_len = 0;
    p->_line_len = 0;
    return 0;
}

/* Run bytes through the machine (the byte order mark already dealt with). */
static int scan(struct sse_parser *p, const char *s, size_t n, sse_event_cb cb, void *arg)
{
    size_t i = 0;
    while (i < n) {
        char c = s[i];
        if (p->_after_cr) {
            p->_after_cr = false;
            if (c == '\n') {
                i++;
                continue;
            }
        }
        if (c == '\r' || c == '\n') {
            i++;
            p->_after_cr = c == '\r';
            int rc = end_line(p, cb, arg);
            if (rc)
                return rc;
            continue;
        }
        if (p->_state == ST_VALUE) {
            /* The value runs to the first CR or LF: two vectorised
             * searches rather than a test per byte. */
            const char *lf = memchr(s + i, '\n', n - i);
            size_t j = lf ? (size_t)(lf - s) : n;
            const char *cr = memchr(s + i, '\r', j - i);
            if (cr)
                j = (size_t)(cr - s);
            if (j - i > p->max_line - p->_line_len)
                return fail(p, -EMSGSIZE);
            p->_line_len += j - i;
            int rc = add_value(p, s + i, j - i);
            if (rc)
                return rc;
            i = j;
            continue;
        }
        if (p->_line_len == p->max_line)
            return fail(p, -EMSGSIZE);
        if (p->_state == ST_SPACE) {
            p->_state = ST_VALUE;
            if (c == ' ') {
                p->_line_len++;
                i++;
            }
            continue;
        }
        /* ST_FIELD */
        p->_line_len++;
        i++;
        if (c == ':') {
            int rc = start_value(p);
            if (rc)
                return rc;
            p->_state = ST_SPACE;
        } else if (p->_fname_len < sizeof p->_fname) {
            /* Past the array's size the name is longer than any field
             * kept, and the saturated length says so. */
            p->_fname[p->_fname_len++] = c;
        }
    }
    return 0;
}

int sse_feed(struct sse_parser *p, const void *buf, size_t len, sse_event_cb cb, void *arg)
{
    if (p->_err)
        return p->_err;
    const char *s = buf;
    while (p->_bom < BOM_LEN && len > 0) {
        if (*s == BOM[p->_bom]) {
            p->_bom++;
            s++;
            len--;
            continue;
        }
        /* Not a byte order mark after all: what matched is ordinary input. */
        size_t matched = p->_bom;
        p->_bom = BOM_LEN;
        int rc = scan(p, BOM, matched, cb, arg);
        if (rc)
            return rc;
    }
    if (len == 0)
        return 0;
    return scan(p, s, len, cb, arg);
}
