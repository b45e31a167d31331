/*
 * DESIGN: the reads. Each read borrows a connection of its own from a
 * small pool (opened on demand, at most PG_READ_POOL_MAX kept idle under
 * read_lock, closed at store close), so reads never share the writer's
 * connection nor wait for its batches; READ COMMITTED shows them only
 * committed rows. A connection is used by one thread at a time. One that
 * turns out broken (the server restarted) is closed, and the read is tried
 * once more on a new one. Reads run on the libuv thread pool, never on a
 * worker's loop. Results come as text; bytea columns in hex.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/postgres/internal.h"
#include "store/seal.h"
#include "util/log.h"
#include "util/vec.h"

static PGconn *read_get(struct store_postgres *s)
{
    uv_mutex_lock(&s->read_lock);
    struct pg_read_conn *rc = s->idle;
    if (rc) {
        s->idle = rc->next;
        s->nidle--;
    }
    uv_mutex_unlock(&s->read_lock);
    if (rc) {
        PGconn *c = rc->conn;
        free(rc);
        return c;
    }
    char err[256];
    return store_postgres__connect(s, err, sizeof err);
}

static void read_put(struct store_postgres *s, PGconn *c)
{
    struct pg_read_conn *rc = NULL;
    if (PQstatus(c) == CONNECTION_OK && PQtransactionStatus(c) == PQTRANS_IDLE)
        rc = malloc(sizeof *rc);
    if (rc) {
        uv_mutex_lock(&s->read_lock);
        if (s->nidle < PG_READ_POOL_MAX) {
            rc->conn = c;
            rc->next = s->idle;
            s->idle = rc;
            s->nidle++;
            c = NULL;
        }
        uv_mutex_unlock(&s->read_lock);
    }
    if (c) {
        free(rc);
        PQfinish(c);
    }
}

void store_postgres__read_pool_free(struct store_postgres *s)
{
    while (s->idle) {
        struct pg_read_conn *rc = s->idle;
        s->idle = rc->next;
        PQfinish(rc->conn);
        free(rc);
    }
    s->nidle = 0;
}

/* Run a read query (text parameters, text results) on *conn, or on a
 * connection borrowed from the pool when *conn is NULL; a connection found
 * broken is closed and the query tried once more on a new one. The result
 * (PGRES_TUPLES_OK) with *conn to reuse or give back with read_put, or
 * NULL with *conn given back already (NULL). */
static PGresult *query(struct store_postgres *s, PGconn **conn, const char *sql, int n,
                       const char *const *vals)
{
    PGconn *c = *conn;
    *conn = NULL;
    for (int attempt = 0; attempt < 2; attempt++) {
        if (!c && !(c = read_get(s)))
            return NULL;
        PGresult *r = PQexecParams(c, sql, n, NULL, vals, NULL, NULL, 0);
        if (PQresultStatus(r) == PGRES_TUPLES_OK) {
            *conn = c;
            return r;
        }
        PQclear(r);
        if (PQstatus(c) == CONNECTION_OK) {
            char m[256];
            struct log_quoted qm;
            store_postgres__error_line(c, m, sizeof m);
            log_error("store_read_failed", "engine=postgres error=%s", log_quotes(&qm, m));
            read_put(s, c);
            return NULL;
        }
        PQfinish(c);
        c = NULL;
    }
    return NULL;
}

char *store_postgres__unhex(const char *v, size_t *len)
{
    static const signed char val[256] = {
        ['0'] = 0,  ['1'] = 1,  ['2'] = 2,  ['3'] = 3,  ['4'] = 4,  ['5'] = 5,
        ['6'] = 6,  ['7'] = 7,  ['8'] = 8,  ['9'] = 9,  ['a'] = 10, ['b'] = 11,
        ['c'] = 12, ['d'] = 13, ['e'] = 14, ['f'] = 15, ['A'] = 10, ['B'] = 11,
        ['C'] = 12, ['D'] = 13, ['E'] = 14, ['F'] = 15};
    size_t n = strlen(v);
    if (n < 2 || v[0] != '\\' || v[1] != 'x')
        return NULL;
    n = (n - 2) / 2;
    char *out = malloc(n + 1);
    if (!out)
        return NULL;
    const unsigned char *h = (const unsigned char *)v + 2;
    for (size_t i = 0; i < n; i++)
        out[i] = (char)(val[h[2 * i]] << 4 | val[h[2 * i + 1]]);
    out[n] = '\0';
    *len = n;
    return out;
}

static int64_t col_i64(const PGresult *r, int row, int col)
{
    return strtoll(PQgetvalue(r, row, col), NULL, 10);
}

static bool col_bool(const PGresult *r, int row, int col)
{
    return PQgetvalue(r, row, col)[0] == 't';
}

static char *col_strdup(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? NULL : strdup(PQgetvalue(r, row, col));
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

#define SESSION_COLS                                                                               \
    "id, owner, created_at, updated_at, last_seq, help, COALESCE(model, ''),"                      \
    " COALESCE(owner_name, ''), COALESCE(waiting_since, 0), title, title_enc"

/* A row of SESSION_COLS into out; the title unsealed when it is. 0, or
 * -EIO when a sealed title cannot be opened, -ENOMEM. */
static int fill_session(struct store_postgres *s, const PGresult *r, int row,
                        struct store_session *out)
{
    memset(out, 0, sizeof *out);
    snprintf(out->id, sizeof out->id, "%s", PQgetvalue(r, row, 0));
    snprintf(out->owner, sizeof out->owner, "%s", PQgetvalue(r, row, 1));
    out->created_ms = col_i64(r, row, 2);
    out->updated_ms = col_i64(r, row, 3);
    out->last_seq = col_i64(r, row, 4);
    out->help = col_bool(r, row, 5);
    snprintf(out->model, sizeof out->model, "%s", PQgetvalue(r, row, 6));
    snprintf(out->owner_name, sizeof out->owner_name, "%s", PQgetvalue(r, row, 7));
    out->waiting_ms = col_i64(r, row, 8);
    if (PQgetisnull(r, row, 9))
        return 0;
    size_t tlen = 0;
    char *t = store_postgres__unhex(PQgetvalue(r, row, 9), &tlen);
    if (!t)
        return -ENOMEM;
    int ret = 0;
    if (tlen && col_bool(r, row, 10)) {
        char *plain;
        size_t plen;
        if (!s->encrypt ||
            store_unseal(s->key, out->id, 0, (unsigned char *)t, tlen, &plain, &plen) != 0) {
            struct log_quoted qs;
            log_error("store_decrypt_failed", "session=%s what=title", log_quotes(&qs, out->id));
            ret = -EIO;
        } else {
            copy_chars(out->title, plain, plen < STORE_TITLE_MAX ? plen : STORE_TITLE_MAX,
                       STORE_TITLE_MAX);
            free(plain);
        }
    } else if (tlen) {
        copy_chars(out->title, t, tlen < STORE_TITLE_MAX ? tlen : STORE_TITLE_MAX, STORE_TITLE_MAX);
    }
    free(t);
    return ret;
}

int store_postgres__get_session(void *e, const char *id, struct store_session *out)
{
    struct store_postgres *s = e;
    PGconn *c = NULL;
    const char *v[] = {id};
    PGresult *r = query(s, &c, "SELECT " SESSION_COLS " FROM sessions WHERE id = $1::text", 1, v);
    if (!r)
        return -EIO;
    int ret = PQntuples(r) ? fill_session(s, r, 0, out) : -ENOENT;
    PQclear(r);
    read_put(s, c);
    return ret;
}

int store_postgres__read_events(void *e, const char *id, int64_t after_seq, int64_t limit,
                                size_t max_bytes, struct store_event **out)
{
    struct store_postgres *s = e;
    *out = NULL;
    char after[24], lim[24];
    snprintf(after, sizeof after, "%lld", (long long)after_seq);
    snprintf(lim, sizeof lim, "%lld", (long long)limit);
    const char *v[] = {id, after, limit > 0 ? lim : NULL};
    PGconn *c = NULL;
    /* NULL: no limit. NEEDSWORK: a byte budget still fetches up to limit
     * rows; a cursor would stop at max_bytes. */
    PGresult *r = query(s, &c,
                        "SELECT seq, created_at, type, sender_type, sender_id, sender_name,"
                        " client_id, content, metadata, enc FROM events"
                        " WHERE session_id = $1::text AND seq > $2::bigint ORDER BY seq"
                        " LIMIT $3::bigint",
                        3, v);
    if (!r)
        return -EIO;
    struct store_event *ev = NULL;
    int n = 0, ret = 0, rows = PQntuples(r);
    size_t cap = 0, bytes = 0;
    for (int i = 0; i < rows && (!max_bytes || bytes < max_bytes); i++) {
        if (vec_grow(&ev, &cap, (size_t)n, 1, sizeof *ev) != 0) {
            ret = -ENOMEM;
            break;
        }
        struct store_event *cur = &ev[n++];
        memset(cur, 0, sizeof *cur);
        cur->seq = col_i64(r, i, 0);
        cur->ts_ms = col_i64(r, i, 1);
        snprintf(cur->type, sizeof cur->type, "%s", PQgetvalue(r, i, 2));
        snprintf(cur->sender_type, sizeof cur->sender_type, "%s", PQgetvalue(r, i, 3));
        cur->sender_id = col_strdup(r, i, 4);
        cur->sender_name = col_strdup(r, i, 5);
        cur->client_id = col_strdup(r, i, 6);
        cur->metadata = col_strdup(r, i, 8);
        /* A value must never turn into NULL for want of memory. */
        if ((!cur->sender_id && !PQgetisnull(r, i, 4)) ||
            (!cur->sender_name && !PQgetisnull(r, i, 5)) ||
            (!cur->client_id && !PQgetisnull(r, i, 6)) ||
            (!cur->metadata && !PQgetisnull(r, i, 8))) {
            ret = -ENOMEM;
            break;
        }
        size_t blen = 0;
        char *blob = store_postgres__unhex(PQgetvalue(r, i, 7), &blen);
        if (!blob) {
            ret = -ENOMEM;
            break;
        }
        if (col_bool(r, i, 9)) {
            if (!s->encrypt || store_unseal(s->key, id, cur->seq, (unsigned char *)blob, blen,
                                            &cur->content, &cur->content_len) != 0) {
                struct log_quoted qs;
                log_error("store_decrypt_failed", "session=%s seq=%lld", log_quotes(&qs, id),
                          (long long)cur->seq);
                free(blob);
                ret = -EIO;
                break;
            }
            free(blob);
        } else {
            cur->content = blob;
            cur->content_len = blen;
        }
        bytes += cur->content_len;
    }
    PQclear(r);
    read_put(s, c);
    if (ret < 0) {
        store_events_free(ev, n);
        return ret;
    }
    *out = ev;
    return n;
}

/* The session's last message, for a list. */
static int fill_preview(struct store_postgres *s, PGconn **c, struct store_session *v)
{
    const char *p[] = {v->id};
    PGresult *r = query(s, c,
                        "SELECT seq, type, COALESCE(sender_name, sender_id), content, enc"
                        " FROM events WHERE session_id = $1::text AND type IN"
                        " ('user_message', 'admin_message', 'ai_response')"
                        " ORDER BY seq DESC LIMIT 1",
                        1, p);
    if (!r)
        return -EIO;
    int ret = 0;
    if (PQntuples(r)) {
        int64_t seq = col_i64(r, 0, 0);
        snprintf(v->preview_type, sizeof v->preview_type, "%s", PQgetvalue(r, 0, 1));
        snprintf(v->preview_sender, sizeof v->preview_sender, "%s", PQgetvalue(r, 0, 2));
        size_t blen = 0;
        char *blob = store_postgres__unhex(PQgetvalue(r, 0, 3), &blen);
        if (!blob) {
            ret = -ENOMEM;
        } else if (col_bool(r, 0, 4)) {
            char *plain;
            size_t plen;
            if (!s->encrypt ||
                store_unseal(s->key, v->id, seq, (unsigned char *)blob, blen, &plain, &plen) != 0) {
                ret = -EIO;
            } else {
                copy_chars(v->preview, plain, plen, STORE_PREVIEW_CHARS);
                free(plain);
            }
        } else {
            copy_chars(v->preview, blob, blen, STORE_PREVIEW_CHARS);
        }
        free(blob);
    }
    PQclear(r);
    return ret;
}

int store_postgres__list_sessions(void *e, const char *owner, bool help_only, int limit,
                                  struct store_session **out)
{
    struct store_postgres *s = e;
    *out = NULL;
    /* The same orders as SQLite's (where NULL waits sort last too). */
    const char *sql = owner ? "SELECT " SESSION_COLS " FROM sessions WHERE owner = $2::text"
                              " ORDER BY updated_at DESC LIMIT $1::integer"
                      /* The admins' triage: help asked first, then the
                       * longest wait, then the latest activity. */
                      : help_only ? "SELECT " SESSION_COLS " FROM sessions WHERE help"
                                    " ORDER BY waiting_since ASC NULLS LAST,"
                                    " updated_at DESC LIMIT $1::integer"
                                  : "SELECT " SESSION_COLS " FROM sessions"
                                    " ORDER BY help DESC, waiting_since ASC NULLS LAST,"
                                    " updated_at DESC LIMIT $1::integer";
    char lim[16];
    snprintf(lim, sizeof lim, "%d", limit);
    const char *v[] = {lim, owner};
    PGconn *c = NULL;
    PGresult *r = query(s, &c, sql, owner ? 2 : 1, v);
    if (!r)
        return -EIO;
    struct store_session *list = NULL;
    int n = 0, ret = 0, rows = PQntuples(r);
    size_t cap = 0;
    for (int i = 0; i < rows; i++) {
        if (vec_grow(&list, &cap, (size_t)n, 1, sizeof *list) != 0) {
            ret = -ENOMEM;
            break;
        }
        if ((ret = fill_session(s, r, i, &list[n++])) != 0)
            break;
    }
    PQclear(r);
    for (int i = 0; ret == 0 && i < n; i++)
        ret = fill_preview(s, &c, &list[i]);
    if (c)
        read_put(s, c);
    if (ret < 0) {
        free(list);
        return ret;
    }
    *out = list;
    return n;
}

int store_postgres__get_reads(void *e, const char *id, struct store_read **out)
{
    struct store_postgres *s = e;
    *out = NULL;
    const char *p[] = {id};
    PGconn *c = NULL;
    /* Byte order, as SQLite sorts. */
    PGresult *r = query(s, &c,
                        "SELECT reader, seq FROM reads WHERE session_id = $1::text"
                        " ORDER BY reader COLLATE \"C\"",
                        1, p);
    if (!r)
        return -EIO;
    int n = PQntuples(r);
    struct store_read *v = n ? calloc((size_t)n, sizeof *v) : NULL;
    if (n && !v) {
        PQclear(r);
        read_put(s, c);
        return -ENOMEM;
    }
    for (int i = 0; i < n; i++) {
        snprintf(v[i].reader, sizeof v[i].reader, "%s", PQgetvalue(r, i, 0));
        v[i].seq = col_i64(r, i, 1);
    }
    PQclear(r);
    read_put(s, c);
    *out = v;
    return n;
}

int store_postgres__get_share(void *e, const char *token, char session[STORE_ID_LEN + 1],
                              int64_t *expires_ms)
{
    struct store_postgres *s = e;
    const char *p[] = {token};
    PGconn *c = NULL;
    PGresult *r =
        query(s, &c, "SELECT session_id, expires_at FROM shares WHERE token = $1::text", 1, p);
    if (!r)
        return -EIO;
    int ret = -ENOENT;
    if (PQntuples(r)) {
        snprintf(session, STORE_ID_LEN + 1, "%s", PQgetvalue(r, 0, 0));
        *expires_ms = col_i64(r, 0, 1);
        ret = 0;
    }
    PQclear(r);
    read_put(s, c);
    return ret;
}

int store_postgres__get_summary(void *e, struct store_summary *out)
{
    struct store_postgres *s = e;
    memset(out, 0, sizeof *out);
    static const char *const sql[] = {
        "SELECT COUNT(*), COUNT(*) FILTER (WHERE help) FROM sessions",
        "SELECT COUNT(*) FILTER (WHERE type = 'user_message'),"
        " COUNT(*) FILTER (WHERE type = 'admin_message'),"
        " COUNT(*) FILTER (WHERE type = 'ai_response') FROM events"
        " WHERE type IN ('user_message', 'admin_message', 'ai_response')",
        "SELECT trunc(COALESCE(SUM(chatd_json_number(metadata, 'input_tokens')), 0))::bigint,"
        " trunc(COALESCE(SUM(chatd_json_number(metadata, 'output_tokens')), 0))::bigint"
        " FROM events WHERE type = 'ai_response' AND metadata IS NOT NULL",
        /* each help request to the first admin message after it */
        "SELECT (SELECT MIN(a.created_at) FROM events a WHERE a.session_id = h.session_id"
        " AND a.seq > h.seq AND a.type = 'admin_message') - h.created_at"
        " FROM events h WHERE h.type = 'help_request'",
    };
    int ret = 0;
    size_t cap = 0;
    PGconn *c = NULL;
    for (size_t q = 0; q < sizeof sql / sizeof *sql && ret == 0; q++) {
        PGresult *r = query(s, &c, sql[q], 0, NULL);
        if (!r) {
            ret = -EIO;
            break;
        }
        int rows = PQntuples(r);
        if (q == 0 && rows) {
            out->sessions = col_i64(r, 0, 0);
            out->help_open = col_i64(r, 0, 1);
        } else if (q == 1 && rows) {
            out->messages_user = col_i64(r, 0, 0);
            out->messages_admin = col_i64(r, 0, 1);
            out->messages_ai = col_i64(r, 0, 2);
        } else if (q == 2 && rows) {
            out->tokens_in = col_i64(r, 0, 0);
            out->tokens_out = col_i64(r, 0, 1);
        } else if (q == 3) {
            for (int i = 0; i < rows && ret == 0; i++) {
                if (PQgetisnull(r, i, 0))
                    continue;
                if (vec_grow(&out->help_waits, &cap, out->nhelp_waits, 1,
                             sizeof *out->help_waits) != 0)
                    ret = -ENOMEM;
                else
                    out->help_waits[out->nhelp_waits++] = col_i64(r, i, 0);
            }
        }
        PQclear(r);
    }
    if (c)
        read_put(s, c);
    if (ret < 0) {
        free(out->help_waits);
        out->help_waits = NULL;
        out->nhelp_waits = 0;
        return ret;
    }
    return 0;
}
