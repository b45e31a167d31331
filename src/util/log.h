/*
 * log: structured, leveled log lines on stderr.
 *
 * Every line is one event: `ts=<RFC 3339 UTC ms> level=<lvl> event=<name>`
 * followed by the caller's `key=value` pairs. A line is assembled in a local
 * buffer and written with a single write(2), so lines from different threads
 * never interleave. Any thread may call these functions; the level is set once
 * at start (log_set_level) before threads exist.
 *
 * A thread that runs a loop may batch its lines (log_thread_batch): they
 * are then written together when it calls log_thread_flush (before it
 * blocks, and before it writes to a peer, so a line never comes after
 * what it led to), when the batch is full, and at once from level warn up.
 *
 * Never pass a credential (token, secret, key) to these functions.
 */
#ifndef CHATD_UTIL_LOG_H
#define CHATD_UTIL_LOG_H

#include <stddef.h>
#include <stdint.h>

enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR };

/* This thread's lines wait in its batch until log_thread_flush (see
 * above); log_thread_unbatch writes what waits and ends batching. */
void log_thread_batch(void);
void log_thread_flush(void);
void log_thread_unbatch(void);
/* Parse "debug", "info", "warn", "error"; returns the level or -1. */
int log_level_parse(const char *s);
/* Set the lowest level written. Call before starting threads. */
void log_set_level(enum log_level lvl);
/* Is a line at this level written? Lets callers skip costly formatting. */
int log_enabled(enum log_level lvl);

/* Write one event line. fmt (may be NULL) formats the key=value pairs. */
void log_event(enum log_level lvl, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The same, written whatever the level: for the few lines an operator (or a
 * test harness) always needs, such as the address chatd listens on. */
void log_event_always(enum log_level lvl, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * Quote a value for a log line: the result is `"..."` with `"`, `\` and
 * every control byte escaped (\n, \t, \xNN), so a value cannot end its
 * field or start another one or a new line. Every value that comes from a
 * peer (user ids, names, origins, paths) or from a file goes through this.
 * Values longer than LOG_QUOTE_MAX bytes are cut and end in `...`. Returns
 * q->s. Any thread (the buffer is the caller's).
 */
#define LOG_QUOTE_MAX 200
struct log_quoted {
    char s[LOG_QUOTE_MAX * 4 + 8];
};
const char *log_quote(struct log_quoted *q, const char *s, size_t n);
/* The same for a NUL-terminated string (NULL quotes as ""). */
const char *log_quotes(struct log_quoted *q, const char *s);

#define log_debug(ev, ...) \
    do { if (log_enabled(LOG_DEBUG)) log_event(LOG_DEBUG, ev, __VA_ARGS__); } while (0)
/* Each checks the level before its arguments are evaluated: a value
 * quoted or formatted for a line that is not written costs nothing. */
#define log_info(ev, ...) \
    do { if (log_enabled(LOG_INFO)) log_event(LOG_INFO, ev, __VA_ARGS__); } while (0)
#define log_warn(ev, ...) \
    do { if (log_enabled(LOG_WARN)) log_event(LOG_WARN, ev, __VA_ARGS__); } while (0)
#define log_error(ev, ...) \
    do { if (log_enabled(LOG_ERROR)) log_event(LOG_ERROR, ev, __VA_ARGS__); } while (0)

#endif
