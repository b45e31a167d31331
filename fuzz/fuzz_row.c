/*
 * libFuzzer driver for the storage row decoder: what the SQLite engine
 * makes of the rows it reads back (src/store/sqlite/read.c: the session
 * row, the event rows into struct store_event, sealed contents and titles,
 * the preview of a session list), and what the wire makes of the events
 * it read (src/hub/wire.c, as resume and history send them).
 *
 * DESIGN: a real store (the engine's schema, an encryption key) on a
 * scratch file; each input rewrites its tables through a second SQLite
 * connection, as an outside writer or a damaged file could leave them,
 * then reads them through the store:
 *   - one session row of id SID: every column a value the input picks (a
 *     NULL, an integer, a real, text or a blob of any bytes), the title
 *     plain, sealed for (SID, 0), or garbage marked sealed;
 *   - up to 16 event rows: seq and time from the input, every text column
 *     such a value, the content plain, sealed for (SID, seq), sealed for
 *     another seq, or garbage marked sealed (enc = 1).
 * Rows the schema refuses (NOT NULL, a repeated seq) are simply not there.
 * Then, with after_seq, limit and max_bytes from the input:
 *   1. store_read_events returns a count, or -EIO only when a row it had
 *      to open is not a valid seal for its (session, seq); never
 *      ciphertext: every event returned has seq > after_seq, rising, at
 *      most limit of them, NUL-terminated type and sender type, a content
 *      NUL-terminated at content_len and equal to what was written (the
 *      plain text of a sealed one);
 *   2. each event written by wire_event_write is valid JSON when its row
 *      held valid UTF-8 and metadata that is NULL or a JSON object;
 *   3. store_get_session and store_list_sessions answer 0 / a count,
 *      -ENOENT or -EIO, with every string field NUL-terminated inside its
 *      array, a title of at most STORE_TITLE_MAX bytes and a preview of at
 *      most STORE_PREVIEW_CHARS characters (when it is valid UTF-8);
 *   4. the PostgreSQL engine's row decoder reads bytea contents in hex
 *      output (store_postgres__unhex; the rest of its row decoding is the
 *      same as SQLite's, over text columns): each row's content bytes,
 *      hex-encoded in lower or upper case, decodes to itself; any text
 *      decodes to (length - 2) / 2 bytes when it starts with \x, else is
 *      refused (NULL);
 *   5. no memory error, no leak.
 * A broken promise calls abort().
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <sqlite3.h>

#include "hub/wire.h"
#include "store/postgres/internal.h" /* store_postgres__unhex */
#include "store/seal.h"
#include "store/store.h"
#include "util/jw.h"
#include "util/log.h"
#include "ws/utf8.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "broken promise at %s:%d: %s\n", __FILE__, __LINE__, #cond);           \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define SID "s_0123456789abcdef01234567"
#define MAX_EVENTS 16

static const unsigned char KEY[32] = "fuzz-row-key-0123456789abcdefghi";
static struct store *st;
static sqlite3 *db;
static char path[128];

static void no_batch(void *arg, struct store_req **reqs, size_t n)
{
    (void)arg;
    for (size_t i = 0; i < n; i++)
        store_req_free(reqs[i]);
}

static void cleanup(void)
{
    char p[160];
    unlink(path);
    snprintf(p, sizeof p, "%s-wal", path);
    unlink(p);
    snprintf(p, sizeof p, "%s-shm", path);
    unlink(p);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    log_set_level((enum log_level)(LOG_ERROR + 1)); /* the decrypt failures are expected here */
    snprintf(path, sizeof path, "%s/chatd-fuzz-row-%d.db",
             access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp", (int)getpid());
    cleanup();
    atexit(cleanup);
    char err[256];
    struct store_options so = {.engine = "sqlite", .path = path, .key = KEY, .on_batch = no_batch};
    if (store_open(&st, &so, err, sizeof err) != 0) {
        fprintf(stderr, "fuzz_row: %s\n", err);
        abort();
    }
    CHECK(sqlite3_open(path, &db) == SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    return 0;
}

/* The input, read from the front. */
struct in {
    const uint8_t *p;
    size_t n;
};

static unsigned take(struct in *in)
{
    if (!in->n)
        return 0;
    in->n--;
    return *in->p++;
}

static size_t take_bytes(struct in *in, const uint8_t **out, size_t max)
{
    size_t k = take(in);
    k = (k | (size_t)take(in) << 8) % (max + 1); /* two bytes, little-endian */
    if (k > in->n)
        k = in->n;
    *out = in->p;
    in->p += k;
    in->n -= k;
    return k;
}

/* Bind a value the input picks; what it is, for the checks. */
enum kind { V_NULL, V_INT, V_REAL, V_TEXT, V_BLOB };

static enum kind bind_value(sqlite3_stmt *s, int col, struct in *in, const uint8_t **bytes,
                            size_t *len)
{
    enum kind k = (enum kind)(take(in) % 5);
    *bytes = NULL;
    *len = 0;
    switch (k) {
    case V_NULL:
        sqlite3_bind_null(s, col);
        break;
    case V_INT: {
        /* small values as they are (flags, seqs), others spread wide */
        int64_t v = (int8_t)take(in);
        sqlite3_bind_int64(s, col, v >= -16 && v <= 16 ? v : v * 1000003);
    } break;
    case V_REAL:
        sqlite3_bind_double(s, col, (double)(int8_t)take(in) / 7.0);
        break;
    case V_TEXT:
        *len = take_bytes(in, bytes, 200);
        sqlite3_bind_text(s, col, (const char *)*bytes, (int)*len, SQLITE_TRANSIENT);
        break;
    case V_BLOB:
        *len = take_bytes(in, bytes, 200);
        sqlite3_bind_blob(s, col, *bytes, (int)*len, SQLITE_TRANSIENT);
        break;
    }
    return k;
}

struct row {
    bool present;
    int64_t seq;
    bool bad;     /* marked sealed but no valid seal for (SID, seq) */
    bool json_ok; /* UTF-8 text columns, metadata NULL or an object */
    const uint8_t *plain;
    size_t plain_len;
};

static bool utf8_ok(const uint8_t *p, size_t n)
{
    if (memchr(p, 0, n))
        return false;
    return utf8_valid(p, n);
}

static bool text_ok(enum kind k, const uint8_t *p, size_t n)
{
    return k == V_INT || k == V_REAL || ((k == V_TEXT || k == V_BLOB) && utf8_ok(p, n));
}

static void write_session(struct in *in)
{
    sqlite3_stmt *s;
    CHECK(sqlite3_prepare_v2(db,
                             "INSERT INTO sessions (id, owner, created_at, updated_at, last_seq,"
                             " help, model, owner_name, waiting_since, title, title_enc)"
                             " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                             -1, &s, NULL) == SQLITE_OK);
    const uint8_t *b;
    size_t n;
    sqlite3_bind_text(s, 1, SID, -1, SQLITE_STATIC);
    for (int col = 2; col <= 9; col++)
        bind_value(s, col, in, &b, &n);
    unsigned how = take(in) % 3;
    n = take_bytes(in, &b, 400);
    unsigned char *sealed = NULL;
    size_t slen = 0;
    if (how == 1 && store_seal(KEY, SID, 0, (const char *)b, n, &sealed, &slen) == 0)
        sqlite3_bind_blob(s, 10, sealed, (int)slen, SQLITE_TRANSIENT);
    else
        sqlite3_bind_blob(s, 10, b, (int)n, SQLITE_TRANSIENT);
    sqlite3_bind_int(s, 11, how != 0);
    sqlite3_step(s); /* refused by the schema: no session row */
    sqlite3_finalize(s);
    free(sealed);
}

static void write_event(struct in *in, struct row *r)
{
    sqlite3_stmt *s;
    CHECK(sqlite3_prepare_v2(db,
                             "INSERT INTO events (session_id, seq, created_at, type, sender_type,"
                             " sender_id, sender_name, client_id, metadata, content, enc)"
                             " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                             -1, &s, NULL) == SQLITE_OK);
    memset(r, 0, sizeof *r);
    r->seq = (int64_t)(take(in) % 40) - 2;
    sqlite3_bind_text(s, 1, SID, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, r->seq);
    sqlite3_bind_int64(s, 3, (int64_t)take(in) << 32);
    r->json_ok = true;
    const uint8_t *b;
    size_t n;
    for (int col = 4; col <= 8; col++) {
        enum kind k = bind_value(s, col, in, &b, &n);
        r->json_ok &= k == V_NULL ? col >= 7 : text_ok(k, b, n);
    }
    enum kind mk = bind_value(s, 9, in, &b, &n);
    if (mk != V_NULL) {
        json_t *m = (mk == V_TEXT || mk == V_BLOB) && utf8_ok(b, n)
                        ? json_loadb((const char *)b, n, 0, NULL)
                        : NULL;
        r->json_ok &= json_is_object(m);
        json_decref(m);
    }
    unsigned how = take(in) % 4;
    r->plain_len = take_bytes(in, &r->plain, 1000);
    r->json_ok &= utf8_ok(r->plain, r->plain_len);
    unsigned char *sealed = NULL;
    size_t slen = 0;
    if (how == 1 || how == 2) {
        /* sealed for this seq, or for another one (a row moved) */
        int64_t seq = how == 1 ? r->seq : r->seq + 1;
        CHECK(store_seal(KEY, SID, seq, (const char *)r->plain, r->plain_len, &sealed, &slen) == 0);
        sqlite3_bind_blob(s, 10, sealed, (int)slen, SQLITE_TRANSIENT);
    } else {
        sqlite3_bind_blob(s, 10, r->plain, (int)r->plain_len, SQLITE_TRANSIENT);
    }
    sqlite3_bind_int(s, 11, how != 0);
    r->bad = how >= 2;
    if (how == 3 && r->plain_len >= STORE_SEAL_OVERHEAD) {
        /* Garbage that might be a valid seal only by forging it: no. */
        char *t = NULL;
        size_t tl;
        if (store_unseal(KEY, SID, r->seq, r->plain, r->plain_len, &t, &tl) == 0)
            r->bad = false, r->plain = (const uint8_t *)t, r->plain_len = tl; /* never */
        free(t);
    }
    r->present = sqlite3_step(s) == SQLITE_DONE;
    sqlite3_finalize(s);
    free(sealed);
}

static void check_session(const struct store_session *v)
{
    CHECK(strnlen(v->id, sizeof v->id) < sizeof v->id);
    CHECK(strnlen(v->owner, sizeof v->owner) < sizeof v->owner);
    CHECK(strnlen(v->owner_name, sizeof v->owner_name) < sizeof v->owner_name);
    CHECK(strnlen(v->title, sizeof v->title) <= STORE_TITLE_MAX);
    CHECK(strnlen(v->model, sizeof v->model) < sizeof v->model);
    CHECK(strnlen(v->preview_type, sizeof v->preview_type) < sizeof v->preview_type);
    CHECK(strnlen(v->preview_sender, sizeof v->preview_sender) < sizeof v->preview_sender);
    size_t pl = strnlen(v->preview, sizeof v->preview);
    CHECK(pl < sizeof v->preview);
    /* Characters of UTF-8 text (a damaged row's bytes are only bounded by
     * the array: 4 bytes a character at most). */
    if (utf8_valid((const uint8_t *)v->preview, pl)) {
        size_t chars = 0;
        for (size_t i = 0; i < pl; i++)
            chars += ((unsigned char)v->preview[i] & 0xC0) != 0x80;
        CHECK(chars <= STORE_PREVIEW_CHARS);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4 || size > 16384)
        return 0;
    struct in in = {data, size};
    int64_t after = (int64_t)(take(&in) % 40) - 2;
    int64_t limit = take(&in) % 20;
    size_t max_bytes = (size_t)take(&in) * 8;
    bool help_only = take(&in) & 1;

    CHECK(sqlite3_exec(db, "BEGIN; DELETE FROM events; DELETE FROM sessions;", NULL, NULL, NULL) ==
          SQLITE_OK);
    if (take(&in) & 1)
        write_session(&in);
    static struct row rows[MAX_EVENTS];
    unsigned nrows = 0;
    while (in.n > 0 && nrows < MAX_EVENTS)
        write_event(&in, &rows[nrows++]);
    CHECK(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) == SQLITE_OK);

    /* 1. The events. */
    struct store_event *ev = NULL;
    int n = store_read_events(st, SID, after, limit, max_bytes, &ev);
    CHECK(n >= 0 || n == -EIO || n == -ENOMEM);
    if (n == -EIO) {
        bool any_bad = false;
        for (unsigned i = 0; i < nrows; i++)
            any_bad |= rows[i].present && rows[i].bad && rows[i].seq > after;
        CHECK(any_bad);
    }
    CHECK(n <= 0 || ev);
    if (limit > 0)
        CHECK(n <= limit);
    int64_t prev = after;
    for (int i = 0; i < n; i++) {
        const struct store_event *e = &ev[i];
        CHECK(e->seq > prev);
        prev = e->seq;
        CHECK(strnlen(e->type, sizeof e->type) < sizeof e->type);
        CHECK(strnlen(e->sender_type, sizeof e->sender_type) < sizeof e->sender_type);
        CHECK(e->content && e->content[e->content_len] == '\0');
        const struct row *r = NULL;
        for (unsigned k = 0; k < nrows && !r; k++)
            if (rows[k].present && rows[k].seq == e->seq)
                r = &rows[k];
        CHECK(r && !r->bad);
        CHECK(e->content_len == r->plain_len &&
              (r->plain_len == 0 || memcmp(e->content, r->plain, r->plain_len) == 0));
        /* 2. As the wire sends it. */
        struct jw w;
        jw_init(&w, 256, 0);
        struct wire_event we = {.type = e->type,
                                .session_id = SID,
                                .seq = e->seq,
                                .client_id = e->client_id,
                                .sender_type = e->sender_type,
                                .sender_id = e->sender_id ? e->sender_id : "",
                                .sender_name = e->sender_name,
                                .content = e->content,
                                .content_len = e->content_len,
                                .metadata = e->metadata,
                                .ts_ms = e->ts_ms};
        wire_event_write(&w, &we);
        struct sbuf *b = jw_take(&w);
        if (b && r->json_ok) {
            json_error_t jerr;
            json_t *o = json_loadb((const char *)b->data, b->len, 0, &jerr);
            if (!json_is_object(o)) {
                fprintf(stderr, "invalid JSON (%s): %.*s\n", jerr.text, (int)b->len,
                        (const char *)b->data);
                abort();
            }
            json_decref(o);
        }
        sbuf_unref(b);
    }
    store_events_free(ev, n > 0 ? n : 0);

    /* 3. The session, alone and in lists. */
    struct store_session one;
    int rc = store_get_session(st, SID, &one);
    CHECK(rc == 0 || rc == -ENOENT || rc == -EIO);
    if (rc == 0)
        check_session(&one);
    struct store_session *list = NULL;
    int k = store_list_sessions(st, NULL, help_only, 10, &list);
    CHECK(k >= 0 || k == -EIO || k == -ENOMEM);
    for (int i = 0; i < k; i++)
        check_session(&list[i]);
    free(list);
    /* 4. bytea in hex output. */
    for (unsigned i = 0; i < nrows; i++) {
        const struct row *r = &rows[i];
        size_t hn = 2 + 2 * r->plain_len;
        char *hex = malloc(hn + 1);
        CHECK(hex);
        const char *digits = (r->seq & 1) ? "0123456789ABCDEF" : "0123456789abcdef";
        hex[0] = '\\';
        hex[1] = 'x';
        for (size_t j = 0; j < r->plain_len; j++) {
            hex[2 + 2 * j] = digits[r->plain[j] >> 4];
            hex[3 + 2 * j] = digits[r->plain[j] & 15];
        }
        hex[hn] = '\0';
        size_t bl = 0;
        char *back = store_postgres__unhex(hex, &bl);
        CHECK(back && bl == r->plain_len && back[bl] == '\0' &&
              (bl == 0 || memcmp(back, r->plain, bl) == 0));
        free(back);
        /* The same bytes as the text of a column, whatever they are. */
        memcpy(hex, r->plain, r->plain_len);
        hex[r->plain_len] = '\0';
        size_t tn = strlen(hex);
        back = store_postgres__unhex(hex, &bl);
        if (tn >= 2 && hex[0] == '\\' && hex[1] == 'x')
            CHECK(back && bl == (tn - 2) / 2 && back[bl] == '\0');
        else
            CHECK(!back);
        free(back);
        free(hex);
    }
    if (getenv("CHATD_FUZZ_DUMP")) /* to see what a seed does */
        fprintf(stderr, "rows=%u events=%d session=%d list=%d\n", nrows, n, rc, k);
    return 0;
}
