/*
 * DESIGN: a line is formatted in a stack buffer and leaves in one write(2).
 * A thread that batches (a worker) appends its lines to a per-thread
 * buffer of at most LOG_BATCH_MAX bytes instead, written in one write(2)
 * by log_thread_flush, when the next line would not fit, or at once after a
 * line of level warn or above: one write for a loop iteration's lines
 * (ws_open/ws_close cost two system calls per handshake before). Whole
 * lines only, and at most PIPE_BUF bytes per write, so lines from different
 * threads never interleave even on a pipe. The level is a plain int written
 * once before threads start and only read afterwards, so it needs no lock.
 * Lines longer than the buffer are cut and end with "...".
 */
#include "util/log.h"

#include <assert.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/clock.h"
#include "util/hex.h"

#define LOG_BATCH_MAX 4096 /* PIPE_BUF on Linux: a write of it is never split */
#define LOG_LINE_MAX 1024

_Static_assert(LOG_LINE_MAX <= LOG_BATCH_MAX, "a line fits a batch");

static int min_level = LOG_INFO;

/* The batching thread's pending lines (LOG_BATCH_MAX bytes, made by
 * log_thread_batch, so threads that never batch hold no buffer): only
 * that thread touches them. NULL: this thread writes each line at once. */
static _Thread_local char *batch;
static _Thread_local size_t batch_len;

static void out(const char *b, size_t n)
{
    ssize_t w = write(STDERR_FILENO, b, n);
    (void)w; /* nowhere to report a failing stderr */
}

void log_thread_batch(void)
{
    if (!batch)
        batch = malloc(LOG_BATCH_MAX); /* without it, lines go out one by one */
}

void log_thread_flush(void)
{
    if (batch_len > 0) {
        out(batch, batch_len);
        batch_len = 0;
    }
}

void log_thread_unbatch(void)
{
    log_thread_flush();
    free(batch);
    batch = NULL;
}
static const char *const level_names[] = {"debug", "info", "warn", "error"};

int log_level_parse(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(s, level_names[i]) == 0)
            return i;
    return -1;
}

void log_set_level(enum log_level lvl) { min_level = (int)lvl; }

int log_enabled(enum log_level lvl) { return (int)lvl >= min_level; }

static void log_write(enum log_level lvl, const char *event, const char *fmt, va_list ap);

const char *log_quote(struct log_quoted *q, const char *s, size_t n)
{
    char *o = q->s;
    bool cut = n > LOG_QUOTE_MAX;
    if (cut)
        n = LOG_QUOTE_MAX;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') {
            *o++ = '\\';
            *o++ = (char)ch;
        } else if (ch == '\n') {
            *o++ = '\\';
            *o++ = 'n';
        } else if (ch == '\t') {
            *o++ = '\\';
            *o++ = 't';
        } else if (ch < 0x20 || ch == 0x7f) {
            *o++ = '\\';
            *o++ = 'x';
            hex_encode(o, &ch, 1);
            o += 2;
        } else {
            *o++ = (char)ch;
        }
    }
    if (cut) {
        memcpy(o, "...", 3);
        o += 3;
    }
    *o++ = '"';
    *o = '\0';
    assert((size_t)(o - q->s) < sizeof q->s);
    return q->s;
}

const char *log_quotes(struct log_quoted *q, const char *s)
{
    return log_quote(q, s ? s : "", s ? strlen(s) : 0);
}

void log_event(enum log_level lvl, const char *event, const char *fmt, ...)
{
    if (!log_enabled(lvl))
        return;
    va_list ap;
    va_start(ap, fmt);
    log_write(lvl, event, fmt, ap);
    va_end(ap);
}

void log_event_always(enum log_level lvl, const char *event, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_write(lvl, event, fmt, ap);
    va_end(ap);
}

static void log_write(enum log_level lvl, const char *event, const char *fmt, va_list ap)
{
    char line[LOG_LINE_MAX];
    char ts[32];
    clock_format_rfc3339(ts, clock_wall_ms());
    int n = snprintf(line, sizeof line, "ts=%s level=%s event=%s", ts, level_names[lvl], event);
    if (n < 0)
        return;
    size_t len = (size_t)n;
    if (fmt && *fmt && len + 1 < sizeof line) {
        line[len++] = ' ';
        int m = vsnprintf(line + len, sizeof line - len, fmt, ap);
        if (m > 0)
            len += (size_t)m;
    }
    if (len >= sizeof line - 1) {
        len = sizeof line - 1;
        memcpy(line + len - 3, "...", 3);
    }
    line[len++] = '\n';
    if (!batch) {
        out(line, len);
        return;
    }
    if (batch_len + len > LOG_BATCH_MAX)
        log_thread_flush();
    memcpy(batch + batch_len, line, len);
    batch_len += len;
    if (lvl >= LOG_WARN)
        log_thread_flush();
}
