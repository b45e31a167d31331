/*
 * DESIGN: the reads. Each read borrows a read-only connection from a small
 * pool (opened on demand, kept idle under read_lock, closed at store
 * close); WAL lets readers run beside the writer, so a read never waits
 * for a commit and sees only committed transactions. A connection is used
 * by one thread at a time. Reads run on the libuv thread pool, never on a
 * worker's loop.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/sqlite/internal.h"
#include "util/vec.h"
#include "util/log.h"

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
    uv_mutex_lock(&s->read_lock);
    rc->next = s->idle;
    s->idle = rc;
    uv_mutex_unlock(&s->read_lock);
}

void store_sqlite__read_pool_free(struct store_sqlite *s)
{
    while (s->idle) {
        struct read_conn *rc = s->idle;
        s->idle = rc->next;
        sqlite3_close(rc->db);
        free(rc);
    }
}


static void fill_session(sqlite3_stmt *st, struct store_session *out)
{
    memset(out, 0, sizeof *out);
    snprintf(out->id, sizeof out->id, "%s", (const char *)sqlite3_column_text(st, 0));
    snprintf(out->owner, sizeof out->owner, "%s", (const char *)sqlite3_column_text(st, 1));
    out->created_ms = sqlite3_column_int64(st, 2);
    out->updated_ms = sqlite3_column_int64(st, 3);
    out->last_seq = sqlite3_column_int64(st, 4);
    out->help = sqlite3_column_int(st, 5) != 0;
    const char *model = (const char *)sqlite3_column_text(st, 6);
    snprintf(out->model, sizeof out->model, "%s", model ? model : "");
}

#define SESSION_COLS "id, owner, created_at, updated_at, last_seq, help, model"

int store_sqlite__get_session(void *e, const char *id, struct store_session *out)
{
    struct store_sqlite *s = e;
    struct read_conn *rc = read_get(s);
    if (!rc)
        return -EIO;
    sqlite3_stmt *st;
    int ret = -EIO;
    if (sqlite3_prepare_v2(rc->db, "SELECT " SESSION_COLS " FROM sessions WHERE id = ?1", -1,
                           &st, NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
        int r = sqlite3_step(st);
        if (r == SQLITE_ROW) {
            fill_session(st, out);
            ret = 0;
        } else if (r == SQLITE_DONE) {
            ret = -ENOENT;
        }
        sqlite3_finalize(st);
    }
    read_put(s, rc);
    return ret;
}

static char *col_strdup(sqlite3_stmt *st, int i)
{
    const char *v = (const char *)sqlite3_column_text(st, i);
    return v ? strdup(v) : NULL;
}

int store_sqlite__read_events(void *e, const char *id, int64_t after_seq, int64_t limit,
                              size_t max_bytes, struct store_event **out)
{
    struct store_sqlite *s = e;
    struct read_conn *rc = read_get(s);
    *out = NULL;
    if (!rc)
        return -EIO;
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(rc->db,
                           "SELECT seq, created_at, type, sender_type, sender_id, sender_name,"
                           " client_id, content, metadata, enc FROM events"
                           " WHERE session_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                           -1, &st, NULL) != SQLITE_OK) {
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
        snprintf(cur->type, sizeof cur->type, "%s", (const char *)sqlite3_column_text(st, 2));
        snprintf(cur->sender_type, sizeof cur->sender_type, "%s",
                 (const char *)sqlite3_column_text(st, 3));
        cur->sender_id = col_strdup(st, 4);
        cur->sender_name = col_strdup(st, 5);
        cur->client_id = col_strdup(st, 6);
        cur->metadata = col_strdup(st, 8);
        const void *blob = sqlite3_column_blob(st, 7);
        size_t blen = (size_t)sqlite3_column_bytes(st, 7);
        n++;
        if (sqlite3_column_int(st, 9)) {
            if (!s->encrypt || store_sqlite__unseal(s->key, id, cur->seq, blob, blen,
                                                    &cur->content, &cur->content_len) != 0) {
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
            memcpy(cur->content, blob, blen);
            cur->content[blen] = '\0';
            cur->content_len = blen;
        }
        bytes += cur->content_len;
    }
    if (ret == 0 && r != SQLITE_DONE && r != SQLITE_ROW)
        ret = -EIO;
    sqlite3_finalize(st);
    read_put(s, rc);
    if (ret < 0) {
        store_events_free(ev, n);
        return ret;
    }
    *out = ev;
    return n;
}

int store_sqlite__list_sessions(void *e, const char *owner, bool help_only, int limit,
                                struct store_session **out)
{
    struct store_sqlite *s = e;
    struct read_conn *rc = read_get(s);
    *out = NULL;
    if (!rc)
        return -EIO;
    const char *sql = owner ? "SELECT " SESSION_COLS " FROM sessions WHERE owner = ?1"
                              " ORDER BY updated_at DESC LIMIT ?2"
                    : help_only ? "SELECT " SESSION_COLS " FROM sessions WHERE help = 1"
                                  " ORDER BY updated_at DESC LIMIT ?2"
                                : "SELECT " SESSION_COLS " FROM sessions"
                                  " ORDER BY updated_at DESC LIMIT ?2";
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(rc->db, sql, -1, &st, NULL) != SQLITE_OK) {
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
        fill_session(st, &v[n++]);
    }
    if (ret == 0 && r != SQLITE_DONE)
        ret = -EIO;
    sqlite3_finalize(st);
    read_put(s, rc);
    if (ret < 0) {
        free(v);
        return ret;
    }
    *out = v;
    return n;
}

