/*
 * DESIGN: the reads. Each read borrows a read-only connection from a small
 * pool (opened on demand, kept idle under read_lock, closed at store
 * close); WAL lets readers run beside the writer, so a read never waits
 * for a commit and sees only committed transactions. A connection is used
 * by one thread at a time. Reads run on the libuv thread pool, never on a
 * worker's loop. Each connection keeps its statements prepared (the
 * admins' summary, rare, excepted); a statement is reset as soon as its
 * read is done, so that no idle connection holds a read transaction (a
 * snapshot the next read would see, and a WAL the checkpoint could not
 * reset).
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/seal.h"
#include "store/sqlite/internal.h"
#include "util/vec.h"
#include "util/log.h"

/* fill_session reads these, in this order */
#define SESSION_COLS                                                                               \
    "id, owner, created_at, updated_at, last_seq, help, model, owner_name,"                       \
    " COALESCE(waiting_since, 0), title, title_enc"

static const char *const read_sql[READ_Q_N] = {
    [READ_Q_SESSION] = "SELECT " SESSION_COLS " FROM sessions WHERE id = ?1",
    [READ_Q_EVENTS] = "SELECT seq, created_at, type, sender_type, sender_id, sender_name,"
                      " client_id, content, metadata, enc FROM events"
                      " WHERE session_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    [READ_Q_PREVIEW] = "SELECT seq, type, COALESCE(sender_name, sender_id), content, enc"
                       " FROM events WHERE session_id = ?1 AND type IN"
                       " ('user_message', 'admin_message', 'ai_response')"
                       " ORDER BY seq DESC LIMIT 1",
    [READ_Q_LIST_OWNER] = "SELECT " SESSION_COLS " FROM sessions WHERE owner = ?1"
                          " ORDER BY updated_at DESC LIMIT ?2",
    /* The admins' triage: help asked first, then the longest wait, then
     * the latest activity. */
    [READ_Q_LIST_HELP] = "SELECT " SESSION_COLS " FROM sessions WHERE help = 1"
                         " ORDER BY waiting_since IS NULL, waiting_since,"
                         " updated_at DESC LIMIT ?2",
    [READ_Q_LIST_ALL] = "SELECT " SESSION_COLS " FROM sessions"
                        " ORDER BY help DESC, waiting_since IS NULL, waiting_since,"
                        " updated_at DESC LIMIT ?2",
    [READ_Q_READS] = "SELECT reader, seq FROM reads WHERE session_id = ?1 ORDER BY reader",
    [READ_Q_SHARE] = "SELECT session_id, expires_at FROM shares WHERE token = ?1",
};

static struct read_conn *read_get(struct store_sqlite *s)
{
    uv_mutex_lock(&s->read_lock);
    struct read_conn *rc = s->idle;
    if (rc)
        s->idle = rc->next;
    uv_mutex_unlock(&s->read_lock);
    if (rc)
        return rc;
    rc = calloc(1, sizeof *rc);
    if (!rc)
        return NULL;
    if (sqlite3_open_v2(s->path, &rc->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        sqlite3_close(rc->db);
        free(rc);
        return NULL;
    }
    sqlite3_busy_timeout(rc->db, 5000);
    return rc;
}

static void read_put(struct store_sqlite *s, struct read_conn *rc)
{
    /* Every statement was reset: none holds a read transaction open, so
     * the connection's next read sees what was committed meanwhile. */
    for (int q = 0; q < READ_Q_N; q++)
        assert(!rc->st[q] || !sqlite3_stmt_busy(rc->st[q]));
    uv_mutex_lock(&s->read_lock);
    rc->next = s->idle;
    s->idle = rc;
    uv_mutex_unlock(&s->read_lock);
}

/* rc's statement for q, prepared on its first use and kept with the
 * connection (a read prepared each time spent as long preparing as
 * running); NULL if it cannot be prepared. Give it back with stmt_done. */
static sqlite3_stmt *stmt(struct read_conn *rc, enum read_q q)
{
    /* A failed prepare leaves rc->st[q] NULL: tried again next time. */
    if (!rc->st[q])
        sqlite3_prepare_v3(rc->db, read_sql[q], -1, SQLITE_PREPARE_PERSISTENT, &rc->st[q], NULL);
    return rc->st[q];
}

/* Done with a statement, whether or not it ran to its end: reset, it holds
 * no read transaction, and no binding points at the caller's memory. */
static void stmt_done(sqlite3_stmt *st)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

void store_sqlite__read_pool_free(struct store_sqlite *s)
{
    while (s->idle) {
        struct read_conn *rc = s->idle;
        s->idle = rc->next;
        for (int q = 0; q < READ_Q_N; q++)
            sqlite3_finalize(rc->st[q]);
        sqlite3_close(rc->db);
        free(rc);
    }
}

/* Copy at most max characters of UTF-8 text into out (max * 4 + 1 bytes). */
static void copy_chars(char *out, const char *text, size_t len, size_t max)
{
    size_t i = 0, chars = 0;
    while (i < len && chars < max) {
        unsigned char c = (unsigned char)text[i];
        size_t n = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
        if (i + n > len)
            break;
        i += n;
        chars++;
    }
    memcpy(out, text, i);
    out[i] = '\0';
}

/* The session row (SESSION_COLS) into out; the title unsealed when it is.
 * 0, or -EIO when a sealed title cannot be opened. */
static int fill_session(struct store_sqlite *s, sqlite3_stmt *st, struct store_session *out)
{
    memset(out, 0, sizeof *out);
    snprintf(out->id, sizeof out->id, "%s", (const char *)sqlite3_column_text(st, 0));
    store__copy_field(out->owner, sizeof out->owner, (const char *)sqlite3_column_text(st, 1));
    out->created_ms = sqlite3_column_int64(st, 2);
    out->updated_ms = sqlite3_column_int64(st, 3);
    out->last_seq = sqlite3_column_int64(st, 4);
    out->help = sqlite3_column_int(st, 5) != 0;
    const char *model = (const char *)sqlite3_column_text(st, 6);
    store__copy_field(out->model, sizeof out->model, model);
    const char *oname = (const char *)sqlite3_column_text(st, 7);
    store__copy_field(out->owner_name, sizeof out->owner_name, oname);
    out->waiting_ms = sqlite3_column_int64(st, 8);
    const void *t = sqlite3_column_blob(st, 9);
    size_t tlen = (size_t)sqlite3_column_bytes(st, 9);
    if (!t || !tlen)
        return 0;
    if (sqlite3_column_int(st, 10)) {
        char *plain;
        size_t plen;
        if (!s->encrypt || store_unseal(s->key, out->id, 0, t, tlen, &plain, &plen) != 0) {
            struct log_quoted qs;
            log_error("store_decrypt_failed", "session=%s what=title", log_quotes(&qs, out->id));
            return -EIO;
        }
        copy_chars(out->title, plain, plen < STORE_TITLE_MAX ? plen : STORE_TITLE_MAX,
                   STORE_TITLE_MAX);
        free(plain);
    } else {
        copy_chars(out->title, t, tlen < STORE_TITLE_MAX ? tlen : STORE_TITLE_MAX,
                   STORE_TITLE_MAX);
    }
    return 0;
}

int store_sqlite__get_session(void *e, const char *id, struct store_session *out)
{
    struct store_sqlite *s = e;
    struct read_conn *rc = read_get(s);
    if (!rc)
        return -EIO;
    sqlite3_stmt *st = stmt(rc, READ_Q_SESSION);
    int ret = -EIO;
    if (st) {
        sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
        int r = sqlite3_step(st);
        if (r == SQLITE_ROW) {
            ret = fill_session(s, st, out);
        } else if (r == SQLITE_DONE) {
            ret = -ENOENT;
        }
        stmt_done(st);
    }
    read_put(s, rc);
    return ret;
}

/* A copy of text column i into *out (NULL for SQL NULL). 0, or -ENOMEM:
 * a value must never turn into NULL for want of memory. */
static int col_strdup(sqlite3_stmt *st, int i, char **out)
{
    const char *v = (const char *)sqlite3_column_text(st, i);
    *out = v ? strdup(v) : NULL;
    return v && !*out ? -ENOMEM : 0;
}

int store_sqlite__read_events(void *e, const char *id, int64_t after_seq, int64_t limit,
                              size_t max_bytes, struct store_event **out)
{
    struct store_sqlite *s = e;
    struct read_conn *rc = read_get(s);
    *out = NULL;
    if (!rc)
        return -EIO;
    sqlite3_stmt *st = stmt(rc, READ_Q_EVENTS);
    if (!st) {
        read_put(s, rc);
        return -EIO;
    }
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, after_seq);
    sqlite3_bind_int64(st, 3, limit > 0 ? limit : -1);
    struct store_event *ev = NULL;
    int n = 0, r = SQLITE_DONE, ret = 0;
    size_t cap = 0;
    size_t bytes = 0;
    while ((!max_bytes || bytes < max_bytes) && (r = sqlite3_step(st)) == SQLITE_ROW) {
        if (vec_grow(&ev, &cap, (size_t)n, 1, sizeof *ev) != 0) {
            ret = -ENOMEM;
            break;
        }
        struct store_event *cur = &ev[n];
        memset(cur, 0, sizeof *cur);
        cur->seq = sqlite3_column_int64(st, 0);
        cur->ts_ms = sqlite3_column_int64(st, 1);
        store__copy_field(cur->type, sizeof cur->type,
                          (const char *)sqlite3_column_text(st, 2));
        store__copy_field(cur->sender_type, sizeof cur->sender_type,
                          (const char *)sqlite3_column_text(st, 3));
        int cr = col_strdup(st, 4, &cur->sender_id);
        cr = cr ? cr : col_strdup(st, 5, &cur->sender_name);
        cr = cr ? cr : col_strdup(st, 6, &cur->client_id);
        cr = cr ? cr : col_strdup(st, 8, &cur->metadata);
        const void *blob = sqlite3_column_blob(st, 7);
        size_t blen = (size_t)sqlite3_column_bytes(st, 7);
        n++;
        if (cr != 0) {
            ret = cr;
            break;
        }
        if (sqlite3_column_int(st, 9)) {
            int ur = s->encrypt ? store_unseal(s->key, id, cur->seq, blob, blen, &cur->content,
                                               &cur->content_len)
                                : -EIO;
            if (ur == -ENOMEM) {
                ret = ur;
                break;
            }
            if (ur != 0) {
                struct log_quoted qs;
                log_error("store_decrypt_failed", "session=%s seq=%lld", log_quotes(&qs, id),
                          (long long)cur->seq);
                ret = -EIO;
                break;
            }
        } else {
            cur->content = malloc(blen + 1);
            if (!cur->content) {
                ret = -ENOMEM;
                break;
            }
            if (blen) /* a session event's empty content is a NULL blob */
                memcpy(cur->content, blob, blen);
            cur->content[blen] = '\0';
            cur->content_len = blen;
        }
        bytes += cur->content_len;
    }
    if (ret == 0 && r != SQLITE_DONE && r != SQLITE_ROW)
        ret = -EIO;
    stmt_done(st);
    read_put(s, rc);
    if (ret < 0) {
        store_events_free(ev, n);
        return ret;
    }
    *out = ev;
    return n;
}

/* The session's last message, for a list. */
static int fill_preview(struct store_sqlite *s, struct read_conn *rc, struct store_session *v)
{
    sqlite3_stmt *st = stmt(rc, READ_Q_PREVIEW);
    if (!st)
        return -EIO;
    sqlite3_bind_text(st, 1, v->id, -1, SQLITE_STATIC);
    int r = sqlite3_step(st), ret = 0;
    if (r == SQLITE_ROW) {
        int64_t seq = sqlite3_column_int64(st, 0);
        store__copy_field(v->preview_type, sizeof v->preview_type,
                          (const char *)sqlite3_column_text(st, 1));
        store__copy_field(v->preview_sender, sizeof v->preview_sender,
                          (const char *)sqlite3_column_text(st, 2));
        const void *blob = sqlite3_column_blob(st, 3);
        size_t blen = (size_t)sqlite3_column_bytes(st, 3);
        if (sqlite3_column_int(st, 4)) {
            char *plain;
            size_t plen;
            if (!s->encrypt ||
                store_unseal(s->key, v->id, seq, blob, blen, &plain, &plen) != 0) {
                ret = -EIO;
            } else {
                copy_chars(v->preview, plain, plen, STORE_PREVIEW_CHARS);
                free(plain);
            }
        } else if (blob) {
            copy_chars(v->preview, blob, blen, STORE_PREVIEW_CHARS);
        }
    } else if (r != SQLITE_DONE) {
        ret = -EIO;
    }
    stmt_done(st);
    return ret;
}

int store_sqlite__list_sessions(void *e, const char *owner, bool help_only, int limit,
                                struct store_session **out)
{
    struct store_sqlite *s = e;
    struct read_conn *rc = read_get(s);
    *out = NULL;
    if (!rc)
        return -EIO;
    sqlite3_stmt *st =
        stmt(rc, owner ? READ_Q_LIST_OWNER : help_only ? READ_Q_LIST_HELP : READ_Q_LIST_ALL);
    if (!st) {
        read_put(s, rc);
        return -EIO;
    }
    if (owner)
        sqlite3_bind_text(st, 1, owner, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, limit);
    struct store_session *v = NULL;
    int n = 0, r, ret = 0;
    size_t cap = 0;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        if (vec_grow(&v, &cap, (size_t)n, 1, sizeof *v) != 0) {
            ret = -ENOMEM;
            break;
        }
        if ((ret = fill_session(s, st, &v[n++])) != 0)
            break;
    }
    if (ret == 0 && r != SQLITE_DONE && r != SQLITE_ROW)
        ret = -EIO;
    stmt_done(st);
    for (int i = 0; ret == 0 && i < n; i++)
        ret = fill_preview(s, rc, &v[i]);
    read_put(s, rc);
    if (ret < 0) {
        free(v);
        return ret;
    }
    *out = v;
    return n;
}


int store_sqlite__get_reads(void *e, const char *id, struct store_read **out)
{
    struct store_sqlite *s = e;
    struct read_conn *rc = read_get(s);
    *out = NULL;
    if (!rc)
        return -EIO;
    sqlite3_stmt *st = stmt(rc, READ_Q_READS);
    if (!st) {
        read_put(s, rc);
        return -EIO;
    }
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    struct store_read *v = NULL;
    size_t cap = 0;
    int n = 0, r, ret = 0;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        if (vec_grow(&v, &cap, (size_t)n, 1, sizeof *v) != 0) {
            ret = -ENOMEM;
            break;
        }
        store__copy_field(v[n].reader, sizeof v[n].reader,
                          (const char *)sqlite3_column_text(st, 0));
        v[n].seq = sqlite3_column_int64(st, 1);
        n++;
    }
    if (ret == 0 && r != SQLITE_DONE)
        ret = -EIO;
    stmt_done(st);
    read_put(s, rc);
    if (ret < 0) {
        free(v);
        return ret;
    }
    *out = v;
    return n;
}

int store_sqlite__get_share(void *e, const char *token, char session[STORE_ID_LEN + 1],
                            int64_t *expires_ms)
{
    struct store_sqlite *s = e;
    struct read_conn *rc = read_get(s);
    if (!rc)
        return -EIO;
    sqlite3_stmt *st = stmt(rc, READ_Q_SHARE);
    int ret = -EIO;
    if (st) {
        sqlite3_bind_text(st, 1, token, -1, SQLITE_STATIC);
        int r = sqlite3_step(st);
        if (r == SQLITE_ROW) {
            snprintf(session, STORE_ID_LEN + 1, "%s", (const char *)sqlite3_column_text(st, 0));
            *expires_ms = sqlite3_column_int64(st, 1);
            ret = 0;
        } else if (r == SQLITE_DONE) {
            ret = -ENOENT;
        }
        stmt_done(st);
    }
    read_put(s, rc);
    return ret;
}

int store_sqlite__get_summary(void *e, struct store_summary *out)
{
    struct store_sqlite *s = e;
    memset(out, 0, sizeof *out);
    struct read_conn *rc = read_get(s);
    if (!rc)
        return -EIO;
    static const char *const sql[] = {
        "SELECT COUNT(*), COALESCE(SUM(help), 0) FROM sessions",
        /* messages are counted on their session (schema 3); answers are
         * in the partial index, whose condition the queries repeat */
        "SELECT COALESCE(SUM(n_user), 0), COALESCE(SUM(n_admin), 0),"
        " (SELECT COUNT(*) FROM events WHERE type = 'ai_response' AND " EVENTS_BY_KIND ")"
        " FROM sessions",
        "SELECT COALESCE(SUM(json_extract(metadata, '$.input_tokens')), 0),"
        " COALESCE(SUM(json_extract(metadata, '$.output_tokens')), 0) FROM events"
        " WHERE type = 'ai_response' AND " EVENTS_BY_KIND " AND json_valid(metadata)",
        /* each help request to the first admin message after it */
        "SELECT (SELECT MIN(a.created_at) FROM events a WHERE a.session_id = h.session_id"
        " AND a.seq > h.seq AND a.type = 'admin_message') - h.created_at"
        " FROM events h WHERE h.type = 'help_request' AND " EVENTS_BY_KIND,
    };
    int ret = 0;
    size_t cap = 0;
    for (size_t q = 0; q < sizeof sql / sizeof *sql && ret == 0; q++) {
        sqlite3_stmt *st;
        if (sqlite3_prepare_v2(rc->db, sql[q], -1, &st, NULL) != SQLITE_OK) {
            ret = -EIO;
            break;
        }
        int r;
        while ((r = sqlite3_step(st)) == SQLITE_ROW) {
            if (q == 0) {
                out->sessions = sqlite3_column_int64(st, 0);
                out->help_open = sqlite3_column_int64(st, 1);
            } else if (q == 1) {
                out->messages_user = sqlite3_column_int64(st, 0);
                out->messages_admin = sqlite3_column_int64(st, 1);
                out->messages_ai = sqlite3_column_int64(st, 2);
            } else if (q == 2) {
                out->tokens_in = sqlite3_column_int64(st, 0);
                out->tokens_out = sqlite3_column_int64(st, 1);
            } else if (sqlite3_column_type(st, 0) != SQLITE_NULL) {
                if (vec_grow(&out->help_waits, &cap, out->nhelp_waits, 1,
                             sizeof *out->help_waits) != 0) {
                    ret = -ENOMEM;
                    break;
                }
                out->help_waits[out->nhelp_waits++] = sqlite3_column_int64(st, 0);
            }
        }
        if (ret == 0 && r != SQLITE_DONE)
            ret = -EIO;
        sqlite3_finalize(st);
    }
    read_put(s, rc);
    if (ret < 0) {
        free(out->help_waits);
        out->help_waits = NULL;
        out->nhelp_waits = 0;
        return ret;
    }
    return 0;
}
