/*
 * Storage conformance tests: the guarantees store.h promises (G1-G8),
 * checked through that interface alone, so that every engine runs the same
 * cases unchanged. `engines` below lists the engines to run and how to give
 * each one a fresh, empty place for its data; a new engine adds a row.
 *
 * on_batch runs on the engine's writer thread: it records each result
 * under a mutex and wakes the test thread, which waits with a deadline. It
 * can also hold the writer at a gate, so that a test decides which requests
 * are queued together (and must then share one batch). Only the test thread
 * calls cmocka's asserts; the writer and the submitter threads count what
 * they saw for the test thread to check. Every case closes its store and
 * ends leak-free under ASan and race-free under TSan.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include <glob.h>
#include <libpq-fe.h>
#include <stdarg.h>
#include <sys/stat.h>

#include "store/store.h"

#define WAIT_MS 60000 /* generous: TSan runs many times slower */
#define MAX_SESSIONS 64

/* ---- the engines under test ----------------------------------------------- */

struct engine_fixture {
    const char *name;
    /* Start and stop what the engine needs for the whole group (a server),
     * or NULL. 0 or -1: a start that fails fails every case, loudly. */
    int (*start)(void **state);
    int (*stop)(void **state);
    /* Make an empty place for a store and put its store_options.path in
     * path (scratch may hold what clean needs). 0 or -1. */
    int (*make)(char *path, size_t len, char *scratch, size_t scratch_len);
    /* Remove everything make made and the store wrote there. */
    void (*clean)(const char *path, const char *scratch);
};

/* SQLite: a database file in a new temporary folder. */
static int sqlite_make(char *path, size_t len, char *scratch, size_t scratch_len)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(scratch, scratch_len, "%s/chatd-store-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(scratch))
        return -1;
    snprintf(path, len, "%s/chat.db", scratch);
    return 0;
}

static void sqlite_clean(const char *path, const char *scratch)
{
    (void)path;
    DIR *d = opendir(scratch);
    if (!d)
        return;
    struct dirent *de;
    char f[512];
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        snprintf(f, sizeof f, "%s/%s", scratch, de->d_name);
        unlink(f);
    }
    closedir(d);
    rmdir(scratch);
}

/*
 * PostgreSQL: one server for the whole group, started here in a temporary
 * folder with initdb and pg_ctl (Debian's postgresql package, which `make
 * test` installs: missing binaries fail the group, they never skip it),
 * listening on a Unix socket in that folder only, and stopped at the end;
 * each case gets a new database. PostgreSQL refuses to run as root: as
 * root the server runs as user nobody (setpriv), in a folder it owns.
 * fsync is off: the cases check chatd's guarantees, not the disk's.
 */
static char pg_dir[128];  /* data in pg_dir/data, the socket in pg_dir */
static char pg_bin[256];  /* the folder of initdb, pg_ctl, postgres */
static unsigned pg_cases;

static int shell(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int rc = system(cmd);
    return rc == 0 ? 0 : -1;
}

static const char *pg_as_server_user(void)
{
    return geteuid() == 0 ? "setpriv --reuid=65534 --regid=65534 --clear-groups " : "";
}

static int pg_start(void **state)
{
    (void)state;
    const char *bindir = getenv("CHATD_PG_BINDIR");
    if (bindir && *bindir) {
        snprintf(pg_bin, sizeof pg_bin, "%s", bindir);
    } else {
        glob_t g;
        if (glob("/usr/lib/postgresql/*/bin/initdb", 0, NULL, &g) != 0 || g.gl_pathc == 0) {
            fprintf(stderr, "test_store: PostgreSQL's initdb is not installed (Debian package "
                            "postgresql; `make test` installs it, or set CHATD_PG_BINDIR)\n");
            return -1;
        }
        snprintf(pg_bin, sizeof pg_bin, "%.*s", (int)(strlen(g.gl_pathv[g.gl_pathc - 1]) - 7),
                 g.gl_pathv[g.gl_pathc - 1]);
        globfree(&g);
    }
    snprintf(pg_dir, sizeof pg_dir, "/tmp/chatd-pg-XXXXXX");
    if (!mkdtemp(pg_dir))
        return -1;
    if (geteuid() == 0 && chown(pg_dir, 65534, 65534) != 0)
        return -1;
    const char *as = pg_as_server_user();
    if (shell("%s%s/initdb -D %s/data -U postgres -A trust -E UTF8 --no-locale >%s/initdb.log "
              "2>&1",
              as, pg_bin, pg_dir, pg_dir) != 0 ||
        shell("%s%s/pg_ctl -D %s/data -l %s/server.log -w -t 120 -o \"-k %s -c "
              "listen_addresses= -c fsync=off -c max_connections=200\" start >/dev/null 2>&1",
              as, pg_bin, pg_dir, pg_dir, pg_dir) != 0) {
        fprintf(stderr, "test_store: cannot start PostgreSQL in %s:\n", pg_dir);
        shell("cat %s/initdb.log %s/server.log >&2 2>/dev/null", pg_dir, pg_dir);
        return -1;
    }
    return 0;
}

static int pg_stop(void **state)
{
    (void)state;
    if (!pg_dir[0] || !pg_bin[0])
        return 0;
    shell("%s%s/pg_ctl -D %s/data -m immediate -w stop >/dev/null 2>&1", pg_as_server_user(),
          pg_bin, pg_dir);
    shell("rm -rf %s", pg_dir);
    return 0;
}

/* Run one command on the server's maintenance database. 0 or -1. */
static int pg_admin(const char *sql)
{
    char dsn[256];
    snprintf(dsn, sizeof dsn, "host=%s user=postgres dbname=postgres", pg_dir);
    PGconn *c = PQconnectdb(dsn);
    PGresult *r = PQstatus(c) == CONNECTION_OK ? PQexec(c, sql) : NULL;
    int rc = PQresultStatus(r) == PGRES_COMMAND_OK ? 0 : -1;
    if (rc != 0)
        fprintf(stderr, "test_store: %s: %s", sql, PQerrorMessage(c));
    PQclear(r);
    PQfinish(c);
    return rc;
}

static int pg_make(char *path, size_t len, char *scratch, size_t scratch_len)
{
    snprintf(scratch, scratch_len, "chatd_case_%u", ++pg_cases);
    char sql[128];
    snprintf(sql, sizeof sql, "CREATE DATABASE %s", scratch);
    if (pg_admin(sql) != 0)
        return -1;
    snprintf(path, len, "host=%s user=postgres dbname=%s", pg_dir, scratch);
    return 0;
}

static void pg_clean(const char *path, const char *scratch)
{
    (void)path;
    char sql[128];
    snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", scratch);
    pg_admin(sql);
}

static const struct engine_fixture engines[] = {
    {"sqlite", NULL, NULL, sqlite_make, sqlite_clean},
    {"postgres", pg_start, pg_stop, pg_make, pg_clean},
};

/* ---- what the writer reports ---------------------------------------------- */

/* One request's answer as on_batch saw it. */
struct result {
    uint64_t tag; /* the request's conn_id */
    enum store_op op;
    enum store_status status;
    bool created, duplicate;
    int64_t seq, ts_ms;
    char session_id[STORE_ID_LEN + 1];
    char user[STORE_MAX_USER + 1];
    char owner[STORE_MAX_USER + 1];
    char model[65];
    char client_id[65];
    unsigned batch;   /* which on_batch call (from 1) */
    size_t batch_len; /* how many requests that call had */
};

enum gate { GATE_OPEN = 0, GATE_ARMED, GATE_HELD };

struct t {
    const struct engine_fixture *eng;
    char path[512], scratch[256];
    struct store *st;
    atomic_uint_fast64_t next_tag;
    size_t submitted; /* test thread only */

    /* guarded by lock (cond: any change) */
    uv_mutex_t lock;
    uv_cond_t cond;
    struct result *res;
    size_t nres, cap;
    unsigned batches;
    enum gate gate;
    unsigned order_errors;  /* an event seq that was not its session's last + 1 */
    unsigned record_errors; /* out of memory while recording */
    struct {
        char id[STORE_ID_LEN + 1];
        int64_t last;
    } seen[MAX_SESSIONS];
    size_t nseen;
};

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* G3 as on_batch sees it: per session, each stored event's seq is the last
 * one plus one, in the order the batches arrive. Called with t->lock. */
static void check_order(struct t *t, const struct store_req *r)
{
    /* The ops that store an event: a message, or a session event. */
    bool stores = r->op == STORE_APPEND || r->op == STORE_HELP || r->op == STORE_RESOLVE ||
                  r->op == STORE_EVENT;
    if (!stores || r->status != STORE_OK || r->duplicate)
        return;
    for (size_t i = 0; i < t->nseen; i++)
        if (strcmp(t->seen[i].id, r->session_id) == 0) {
            if (r->seq != t->seen[i].last + 1)
                t->order_errors++;
            t->seen[i].last = r->seq;
            return;
        }
    /* A session this store has not reported yet: the test creates every
     * session it writes to through this store, so it starts at 1. */
    if (r->seq != 1 || t->nseen == MAX_SESSIONS) {
        t->order_errors++;
        return;
    }
    snprintf(t->seen[t->nseen].id, sizeof t->seen[t->nseen].id, "%s", r->session_id);
    t->seen[t->nseen++].last = r->seq;
}

static void on_batch(void *arg, struct store_req **reqs, size_t n)
{
    struct t *t = arg;
    uv_mutex_lock(&t->lock);
    if (t->gate == GATE_ARMED) {
        t->gate = GATE_HELD;
        uv_cond_broadcast(&t->cond);
        while (t->gate == GATE_HELD)
            uv_cond_wait(&t->cond, &t->lock);
    }
    t->batches++;
    for (size_t i = 0; i < n; i++) {
        const struct store_req *r = reqs[i];
        if (t->nres == t->cap) {
            size_t ncap = t->cap ? t->cap * 2 : 256;
            struct result *v = realloc(t->res, ncap * sizeof *v);
            if (!v) {
                t->record_errors++;
                continue;
            }
            t->res = v;
            t->cap = ncap;
        }
        struct result *o = &t->res[t->nres++];
        memset(o, 0, sizeof *o);
        o->tag = r->conn_id;
        o->op = r->op;
        o->status = r->status;
        o->created = r->created;
        o->duplicate = r->duplicate;
        o->seq = r->seq;
        o->ts_ms = r->ts_ms;
        memcpy(o->session_id, r->session_id, sizeof o->session_id);
        memcpy(o->user, r->user, sizeof o->user);
        memcpy(o->owner, r->owner, sizeof o->owner);
        memcpy(o->model, r->model, sizeof o->model);
        memcpy(o->client_id, r->client_id, sizeof o->client_id);
        o->batch = t->batches;
        o->batch_len = n;
        check_order(t, r);
    }
    uv_cond_broadcast(&t->cond);
    uv_mutex_unlock(&t->lock);
    for (size_t i = 0; i < n; i++)
        store_req_free(reqs[i]);
}

/* ---- fixture -------------------------------------------------------------- */

static void gate_open(struct t *t);

static int setup(void **state)
{
    const struct engine_fixture *eng = *state;
    struct t *t = calloc(1, sizeof *t);
    if (!t)
        return -1;
    t->eng = eng;
    if (eng->make(t->path, sizeof t->path, t->scratch, sizeof t->scratch) != 0) {
        free(t);
        return -1;
    }
    uv_mutex_init(&t->lock);
    uv_cond_init(&t->cond);
    atomic_init(&t->next_tag, 1);
    *state = t;
    return 0;
}

static int teardown(void **state)
{
    struct t *t = *state;
    if (t->st) { /* a test that failed half-way */
        gate_open(t);
        store_close(t->st);
    }
    t->eng->clean(t->path, t->scratch);
    uv_mutex_destroy(&t->lock);
    uv_cond_destroy(&t->cond);
    free(t->res);
    free(t);
    return 0;
}

static void open_store(struct t *t, const unsigned char *key)
{
    char err[256] = "";
    struct store_options o = {
        .engine = t->eng->name, .path = t->path, .key = key, .on_batch = on_batch, .arg = t};
    int rc = store_open(&t->st, &o, err, sizeof err);
    if (rc != 0)
        fail_msg("store_open(%s): %d %s", t->eng->name, rc, err);
    assert_true(store_healthy(t->st));
    assert_false(store_failed(t->st));
}

/* Close the store; in normal operation it never failed (G7). Everything
 * submitted was answered by the time close returns (G2). */
static void close_store(struct t *t)
{
    assert_false(store_failed(t->st));
    store_close(t->st);
    t->st = NULL;
    uv_mutex_lock(&t->lock);
    size_t nres = t->nres;
    unsigned order = t->order_errors, rec = t->record_errors;
    uv_mutex_unlock(&t->lock);
    assert_int_equal(nres, t->submitted);
    assert_int_equal(order, 0);
    assert_int_equal(rec, 0);
}

/* A request as the hub makes one. content NULL: none (non-APPEND ops). */
static struct store_req *req(struct t *t, enum store_op op, const char *sid, const char *user,
                             const char *client_id, const char *content)
{
    struct store_req *r = calloc(1, sizeof *r);
    if (!r)
        abort();
    r->op = op;
    r->conn_id = atomic_fetch_add(&t->next_tag, 1);
    snprintf(r->session_id, sizeof r->session_id, "%s", sid ? sid : "");
    snprintf(r->user, sizeof r->user, "%s", user);
    snprintf(r->sender_type, sizeof r->sender_type, "user");
    r->sender_name = strdup(user);
    snprintf(r->client_id, sizeof r->client_id, "%s", client_id ? client_id : "");
    if (content) {
        r->content = strdup(content);
        r->content_len = strlen(content);
    }
    if (!r->sender_name || (content && !r->content))
        abort();
    return r;
}

static uint64_t submit(struct t *t, struct store_req *r)
{
    uint64_t tag = r->conn_id;
    assert_int_equal(store_submit(t->st, r), 0);
    t->submitted++;
    return tag;
}

/* Wait until n results in all have come back. */
static void wait_results(struct t *t, size_t n)
{
    int64_t deadline = wall_ms() + WAIT_MS;
    uv_mutex_lock(&t->lock);
    while (t->nres < n && wall_ms() < deadline)
        uv_cond_timedwait(&t->cond, &t->lock, 100 * 1000000ull);
    size_t got = t->nres;
    uv_mutex_unlock(&t->lock);
    if (got < n)
        fail_msg("waited %d ms for %zu results, got %zu", WAIT_MS, n, got);
}

/* The result of the request tagged tag (which has come back). */
static struct result get(struct t *t, uint64_t tag)
{
    struct result out;
    bool found = false;
    uv_mutex_lock(&t->lock);
    for (size_t i = 0; i < t->nres && !found; i++)
        if (t->res[i].tag == tag) {
            out = t->res[i];
            found = true;
        }
    uv_mutex_unlock(&t->lock);
    if (!found)
        fail_msg("no result for request %llu", (unsigned long long)tag);
    return out;
}

/* Submit one request and wait for its answer. */
static struct result run(struct t *t, struct store_req *r)
{
    uint64_t tag = submit(t, r);
    wait_results(t, t->submitted);
    return get(t, tag);
}

static struct result append(struct t *t, const char *sid, const char *user, const char *cid,
                            const char *content)
{
    return run(t, req(t, STORE_APPEND, sid, user, cid, content));
}

/* Hold the writer in its next on_batch (after that batch committed), so
 * that what the test submits meanwhile is queued together. The request
 * that takes the writer there is a CHECK on sid. */
static void gate_hold(struct t *t, const char *sid, const char *user)
{
    uv_mutex_lock(&t->lock);
    t->gate = GATE_ARMED;
    uv_mutex_unlock(&t->lock);
    submit(t, req(t, STORE_CHECK, sid, user, NULL, NULL));
    int64_t deadline = wall_ms() + WAIT_MS;
    uv_mutex_lock(&t->lock);
    while (t->gate != GATE_HELD && wall_ms() < deadline)
        uv_cond_timedwait(&t->cond, &t->lock, 100 * 1000000ull);
    enum gate g = t->gate;
    uv_mutex_unlock(&t->lock);
    if (g != GATE_HELD)
        fail_msg("the writer never reached the gate");
}

static void gate_open(struct t *t)
{
    uv_mutex_lock(&t->lock);
    t->gate = GATE_OPEN;
    uv_cond_broadcast(&t->cond);
    uv_mutex_unlock(&t->lock);
}

/* Every event of a session (count, and *ev to free). */
static int read_all(struct t *t, const char *sid, struct store_event **ev)
{
    int n = store_read_events(t->st, sid, 0, 0, 0, ev);
    assert_true(n >= 0);
    return n;
}

static void assert_events_gapless(const struct store_event *ev, int n)
{
    for (int i = 0; i < n; i++)
        assert_int_equal(ev[i].seq, i + 1);
}

static void sleep_ms(unsigned ms)
{
    usleep(ms * 1000);
}

/* ---- G3: gapless seq in commit order under concurrent submitters ------------ */

#define SUBMITTERS 4
#define PER_SUBMITTER 150
#define NSESS 3

struct submitter {
    struct t *t;
    int index;
    char (*sid)[STORE_ID_LEN + 1];
    const char *const *owner;
    atomic_uint *errors;
    atomic_uint *submitted;
};

static void submitter_main(void *arg)
{
    struct submitter *sb = arg;
    for (int k = 0; k < PER_SUBMITTER; k++) {
        int s = (sb->index + k) % NSESS;
        char cid[64], content[96];
        snprintf(cid, sizeof cid, "t%d-%d", sb->index, k);
        snprintf(content, sizeof content, "msg %s", cid);
        /* Every tenth message is sent twice in a row, as a client retries
         * before its ack: the second must be answered as a duplicate. */
        for (int copy = 0; copy < (k % 10 == 0 ? 2 : 1); copy++) {
            struct store_req *r = req(sb->t, STORE_APPEND, sb->sid[s], sb->owner[s], cid, content);
            if (store_submit(sb->t->st, r) != 0) {
                store_req_free(r);
                atomic_fetch_add(sb->errors, 1);
            } else {
                atomic_fetch_add(sb->submitted, 1);
            }
        }
    }
}

static void test_seq_gapless_under_concurrent_submitters(void **state)
{
    struct t *t = *state;
    open_store(t, NULL);
    static const char *const owner[NSESS] = {"alice", "bob", "carol"};
    char sid[NSESS][STORE_ID_LEN + 1];
    for (int s = 0; s < NSESS; s++) {
        struct result r = append(t, NULL, owner[s], NULL, "hello");
        assert_int_equal(r.status, STORE_OK);
        assert_true(r.created);
        assert_int_equal(r.seq, 1);
        memcpy(sid[s], r.session_id, sizeof sid[s]);
    }

    atomic_uint errors, submitted;
    atomic_init(&errors, 0);
    atomic_init(&submitted, 0);
    struct submitter sb[SUBMITTERS];
    uv_thread_t th[SUBMITTERS];
    for (int i = 0; i < SUBMITTERS; i++) {
        sb[i] = (struct submitter){t, i, sid, owner, &errors, &submitted};
        assert_int_equal(uv_thread_create(&th[i], submitter_main, &sb[i]), 0);
    }
    for (int i = 0; i < SUBMITTERS; i++)
        uv_thread_join(&th[i]);
    assert_int_equal(atomic_load(&errors), 0);
    t->submitted += atomic_load(&submitted);
    wait_results(t, t->submitted);

    /* Every answer: stored once, or a duplicate carrying the first one's seq. */
    size_t stored[NSESS] = {1, 1, 1};
    uv_mutex_lock(&t->lock);
    size_t nres = t->nres;
    struct result *res = malloc(nres * sizeof *res);
    if (res)
        memcpy(res, t->res, nres * sizeof *res);
    unsigned order_errors = t->order_errors;
    uv_mutex_unlock(&t->lock);
    assert_non_null(res);
    assert_int_equal(order_errors, 0);
    unsigned dups = 0;
    struct store_event *ev[NSESS];
    int nev[NSESS];
    for (int s = 0; s < NSESS; s++)
        nev[s] = read_all(t, sid[s], &ev[s]);
    for (size_t i = NSESS; i < nres; i++) {
        const struct result *r = &res[i];
        assert_int_equal(r->status, STORE_OK);
        assert_false(r->created);
        int s = 0;
        while (s < NSESS && strcmp(sid[s], r->session_id) != 0)
            s++;
        assert_true(s < NSESS);
        assert_string_equal(r->owner, owner[s]);
        if (r->duplicate)
            dups++;
        else
            stored[s]++;
        /* The stored event at the acked seq is this request's. */
        assert_true(r->seq >= 1 && r->seq <= nev[s]);
        const struct store_event *e = &ev[s][r->seq - 1];
        assert_int_equal(e->seq, r->seq);
        assert_int_equal(e->ts_ms, r->ts_ms);
        assert_non_null(e->client_id);
        assert_string_equal(e->client_id, r->client_id);
        assert_string_equal(e->sender_id, owner[s]);
    }
    assert_int_equal(dups, SUBMITTERS * (PER_SUBMITTER / 10));
    for (int s = 0; s < NSESS; s++) {
        assert_int_equal(nev[s], stored[s]);
        assert_events_gapless(ev[s], nev[s]);
        for (int i = 1; i < nev[s]; i++) {
            char want[96];
            snprintf(want, sizeof want, "msg %s", ev[s][i].client_id);
            assert_string_equal(ev[s][i].content, want);
        }
        struct store_session ss;
        assert_int_equal(store_get_session(t->st, sid[s], &ss), 0);
        assert_int_equal(ss.last_seq, nev[s]);
        store_events_free(ev[s], nev[s]);
    }
    free(res);

    /* Nothing failed, and every request was in a committed batch. */
    struct store_stats st;
    store_get_stats(t->st, &st);
    assert_int_equal(st.commit_failures, 0);
    assert_int_equal(st.batched_requests, t->submitted);
    uint64_t in_buckets = 0;
    for (int i = 0; i < 8; i++)
        in_buckets += st.batch_bucket[i];
    assert_int_equal(in_buckets, st.commits);
    close_store(t);
}

/* ---- G1: requests queued together share one batch --------------------------- */

static void test_queued_requests_share_one_batch(void **state)
{
    struct t *t = *state;
    open_store(t, NULL);
    struct result first = append(t, NULL, "alice", "c0", "first");
    struct store_stats before;
    store_get_stats(t->st, &before);
    gate_hold(t, first.session_id, "alice");
    uint64_t tags[50];
    for (int i = 0; i < 50; i++) {
        char cid[16];
        snprintf(cid, sizeof cid, "c%d", i + 1);
        tags[i] = submit(t, req(t, STORE_APPEND, first.session_id, "alice", cid, "more"));
    }
    gate_open(t);
    wait_results(t, t->submitted);
    struct result r0 = get(t, tags[0]);
    assert_int_equal(r0.batch_len, 50);
    for (int i = 0; i < 50; i++) {
        struct result r = get(t, tags[i]);
        assert_int_equal(r.batch, r0.batch);
        assert_int_equal(r.seq, i + 2); /* in submission order */
    }
    struct store_stats after;
    store_get_stats(t->st, &after);
    assert_true(after.commits - before.commits <= 2); /* the gate's batch and this one */
    close_store(t);
}

/* ---- G5: dedup by client id -------------------------------------------------- */

static void test_dedup_by_client_id(void **state)
{
    struct t *t = *state;
    open_store(t, NULL);
    struct result a = append(t, NULL, "alice", "c1", "original");
    assert_int_equal(a.status, STORE_OK);
    assert_true(a.created);
    const char *sid = a.session_id;

    sleep_ms(2); /* a re-ack must carry the first timestamp, not a new one */
    struct result again = append(t, sid, "alice", "c1", "changed");
    assert_int_equal(again.status, STORE_OK);
    assert_true(again.duplicate);
    assert_false(again.created);
    assert_int_equal(again.seq, a.seq);
    assert_int_equal(again.ts_ms, a.ts_ms);

    assert_int_equal(append(t, sid, "alice", "c2", "second").seq, 2);
    /* The same id from another sender is another message. */
    struct store_req *adm = req(t, STORE_APPEND, sid, "root", "c1", "from an admin");
    adm->any_session = true;
    snprintf(adm->sender_type, sizeof adm->sender_type, "admin");
    struct result ra = run(t, adm);
    assert_int_equal(ra.status, STORE_OK);
    assert_false(ra.duplicate);
    assert_int_equal(ra.seq, 3);
    /* Without an id there is nothing to match. */
    assert_int_equal(append(t, sid, "alice", NULL, "no id").seq, 4);
    assert_int_equal(append(t, sid, "alice", NULL, "no id").seq, 5);

    /* A retried session-creating message finds the session the first made,
     * whether it comes later... */
    struct result c = append(t, NULL, "bob", "first", "new session");
    assert_true(c.created);
    struct result c2 = append(t, NULL, "bob", "first", "new session");
    assert_int_equal(c2.status, STORE_OK);
    assert_false(c2.created);
    assert_true(c2.duplicate);
    assert_string_equal(c2.session_id, c.session_id);
    assert_int_equal(c2.seq, 1);
    /* ...or in the same batch. */
    gate_hold(t, c.session_id, "bob");
    uint64_t t1 = submit(t, req(t, STORE_APPEND, NULL, "bob", "both", "twice"));
    uint64_t t2 = submit(t, req(t, STORE_APPEND, NULL, "bob", "both", "twice"));
    gate_open(t);
    wait_results(t, t->submitted);
    struct result b1 = get(t, t1), b2 = get(t, t2);
    assert_int_equal(b1.batch, b2.batch);
    assert_true(b1.created);
    assert_false(b1.duplicate);
    assert_false(b2.created);
    assert_true(b2.duplicate);
    assert_string_equal(b2.session_id, b1.session_id);
    /* Another user's same id is that user's own session. */
    struct result d = append(t, NULL, "carol", "first", "hers");
    assert_true(d.created);
    assert_string_not_equal(d.session_id, c.session_id);

    struct store_event *ev;
    int n = read_all(t, sid, &ev);
    assert_int_equal(n, 5);
    assert_events_gapless(ev, n);
    assert_string_equal(ev[0].content, "original");
    assert_string_equal(ev[0].client_id, "c1");
    assert_string_equal(ev[2].sender_id, "root");
    assert_string_equal(ev[2].client_id, "c1");
    assert_null(ev[3].client_id);
    store_events_free(ev, n);
    n = read_all(t, c.session_id, &ev);
    assert_int_equal(n, 1);
    store_events_free(ev, n);
    struct store_session *v;
    n = store_list_sessions(t->st, "bob", false, 10, &v);
    assert_int_equal(n, 2); /* "first" and "both", once each */
    free(v);
    close_store(t);
}

/* ---- G4: a failed commit consumes no seq and leaves nothing ------------------ */

static void test_failed_commit_consumes_no_seq(void **state)
{
    struct t *t = *state;
    open_store(t, NULL);
    struct result a = append(t, NULL, "alice", "c1", "one");
    const char *sid = a.session_id;
    assert_int_equal(append(t, sid, "alice", "c2", "two").seq, 2);
    struct store_stats before, after;
    store_get_stats(t->st, &before);

    store_fail_next_commits(t->st, 1);
    struct result lost = append(t, sid, "alice", "lost", "lost");
    assert_int_equal(lost.status, STORE_UNAVAILABLE);
    assert_int_equal(lost.seq, 0);
    assert_false(lost.duplicate);
    assert_false(lost.created);
    assert_false(store_healthy(t->st)); /* a refused write... */
    assert_false(store_failed(t->st));  /* ...is not a failed store */
    store_get_stats(t->st, &after);
    assert_int_equal(after.commit_failures, before.commit_failures + 1);
    assert_int_equal(after.commits, before.commits);

    struct store_event *ev;
    int n = read_all(t, sid, &ev);
    assert_int_equal(n, 2);
    for (int i = 0; i < n; i++)
        assert_string_not_equal(ev[i].content, "lost");
    store_events_free(ev, n);
    struct store_session ss;
    assert_int_equal(store_get_session(t->st, sid, &ss), 0);
    assert_int_equal(ss.last_seq, 2);

    /* A session-creating message in a failed commit leaves no session. */
    store_fail_next_commits(t->st, 1);
    struct result nc = append(t, NULL, "alice", "new", "new session");
    assert_int_equal(nc.status, STORE_UNAVAILABLE);
    assert_false(nc.created);
    if (nc.session_id[0])
        assert_int_equal(store_get_session(t->st, nc.session_id, &ss), -ENOENT);
    struct store_session *v;
    n = store_list_sessions(t->st, "alice", false, 10, &v);
    assert_int_equal(n, 1);
    free(v);

    /* A whole batch of different requests fails together (the fault is
     * set once the gate's own batch has committed). */
    gate_hold(t, sid, "alice");
    store_fail_next_commits(t->st, 1);
    uint64_t tags[4];
    tags[0] = submit(t, req(t, STORE_APPEND, sid, "alice", "b1", "b1"));
    tags[1] = submit(t, req(t, STORE_APPEND, sid, "alice", "b2", "b2"));
    tags[2] = submit(t, req(t, STORE_HELP, sid, "alice", NULL, NULL));
    struct store_req *m = req(t, STORE_MODEL, sid, "alice", NULL, NULL);
    m->arg = strdup("model-x");
    tags[3] = submit(t, m);
    gate_open(t);
    wait_results(t, t->submitted);
    for (int i = 0; i < 4; i++) {
        struct result r = get(t, tags[i]);
        assert_int_equal(r.status, STORE_UNAVAILABLE);
        assert_int_equal(r.batch_len, 4);
    }
    assert_int_equal(store_get_session(t->st, sid, &ss), 0);
    assert_int_equal(ss.last_seq, 2);
    assert_false(ss.help);
    assert_string_equal(ss.model, "");

    /* The retry takes the seq the failed one would have had, as new. */
    struct result retry = append(t, sid, "alice", "lost", "lost");
    assert_int_equal(retry.status, STORE_OK);
    assert_false(retry.duplicate);
    assert_int_equal(retry.seq, 3);
    assert_true(store_healthy(t->st));

    /* 0 cancels what is pending. */
    store_fail_next_commits(t->st, 5);
    store_fail_next_commits(t->st, 0);
    assert_int_equal(append(t, sid, "alice", "b1", "b1").seq, 4);

    n = read_all(t, sid, &ev);
    assert_int_equal(n, 4);
    assert_events_gapless(ev, n);
    assert_string_equal(ev[2].content, "lost");
    store_events_free(ev, n);
    close_store(t);
}

/* ---- reads see exactly what was committed ------------------------------------ */

static void check_event(const struct store_event *e, int64_t seq, const struct result *ack,
                        const char *type, const char *stype, const char *sender, const char *name,
                        const char *cid, const char *content, const char *meta)
{
    assert_int_equal(e->seq, seq);
    assert_int_equal(e->ts_ms, ack->ts_ms);
    assert_string_equal(e->type, type);
    assert_string_equal(e->sender_type, stype);
    assert_string_equal(e->sender_id, sender);
    if (name)
        assert_string_equal(e->sender_name, name);
    else
        assert_null(e->sender_name);
    if (cid)
        assert_string_equal(e->client_id, cid);
    else
        assert_null(e->client_id);
    assert_int_equal(e->content_len, strlen(content));
    assert_memory_equal(e->content, content, e->content_len);
    assert_int_equal(e->content[e->content_len], '\0');
    if (meta)
        assert_string_equal(e->metadata, meta);
    else
        assert_null(e->metadata);
}

static void assert_same_session(const struct store_session *a, const struct store_session *b)
{
    assert_string_equal(a->id, b->id);
    assert_string_equal(a->owner, b->owner);
    assert_int_equal(a->created_ms, b->created_ms);
    assert_int_equal(a->updated_ms, b->updated_ms);
    assert_int_equal(a->last_seq, b->last_seq);
    assert_int_equal(a->help, b->help);
    assert_string_equal(a->model, b->model);
}

static void test_reads_see_what_was_committed(void **state)
{
    struct t *t = *state;
    open_store(t, NULL);
    const char *text = "h\xc3\xa9llo w\xc3\xb6rld \xe2\x9c\x93 \"quoted\" \\ done";
    int64_t t0 = wall_ms();
    struct store_req *r = req(t, STORE_APPEND, NULL, "alice", "a1", text);
    free(r->sender_name);
    r->sender_name = strdup("Alice A.");
    r->metadata = strdup("{\"k\":\"v\",\"n\":[1,2]}");
    struct result a1 = run(t, r);
    int64_t t1 = wall_ms();
    assert_int_equal(a1.status, STORE_OK);
    assert_true(a1.created);
    assert_string_equal(a1.owner, "alice");
    assert_true(a1.ts_ms >= t0 && a1.ts_ms <= t1);
    char sid[STORE_ID_LEN + 1];
    memcpy(sid, a1.session_id, sizeof sid);
    assert_int_equal(strlen(sid), STORE_ID_LEN);

    sleep_ms(3);
    r = req(t, STORE_APPEND, sid, "root", NULL, "an admin speaks");
    r->any_session = true;
    snprintf(r->sender_type, sizeof r->sender_type, "admin");
    free(r->sender_name);
    r->sender_name = NULL;
    struct result a2 = run(t, r);
    assert_int_equal(a2.status, STORE_OK);
    assert_string_equal(a2.owner, "alice");
    sleep_ms(3);
    r = req(t, STORE_APPEND, sid, "assistant", "ai-1", "an answer");
    r->any_session = true;
    snprintf(r->sender_type, sizeof r->sender_type, "ai");
    struct result a3 = run(t, r);
    assert_int_equal(a3.seq, 3);

    struct store_event *ev;
    int n = read_all(t, sid, &ev);
    assert_int_equal(n, 3);
    check_event(&ev[0], 1, &a1, "user_message", "user", "alice", "Alice A.", "a1", text,
                "{\"k\":\"v\",\"n\":[1,2]}");
    check_event(&ev[1], 2, &a2, "admin_message", "admin", "root", NULL, NULL, "an admin speaks",
                NULL);
    check_event(&ev[2], 3, &a3, "ai_response", "ai", "assistant", "assistant", "ai-1", "an answer",
                NULL);
    store_events_free(ev, n);

    struct store_session ss;
    assert_int_equal(store_get_session(t->st, sid, &ss), 0);
    assert_string_equal(ss.id, sid);
    assert_string_equal(ss.owner, "alice");
    assert_int_equal(ss.created_ms, a1.ts_ms);
    assert_int_equal(ss.updated_ms, a3.ts_ms);
    assert_int_equal(ss.last_seq, 3);
    assert_false(ss.help);
    assert_string_equal(ss.model, "");

    /* Other ops answer with the session's owner and last seq. */
    r = req(t, STORE_MODEL, sid, "alice", NULL, NULL);
    r->arg = strdup("model-x");
    struct result m = run(t, r);
    assert_int_equal(m.status, STORE_OK);
    assert_int_equal(m.seq, 3);
    assert_string_equal(m.owner, "alice");
    assert_int_equal(store_get_session(t->st, sid, &ss), 0);
    assert_string_equal(ss.model, "model-x");
    assert_int_equal(ss.last_seq, 3);
    struct result ck = run(t, req(t, STORE_CHECK, sid, "alice", NULL, NULL));
    assert_int_equal(ck.status, STORE_OK);
    assert_int_equal(ck.seq, 3);
    /* Only the owner, or someone who may use any session. */
    assert_int_equal(run(t, req(t, STORE_CHECK, sid, "bob", NULL, NULL)).status, STORE_NOT_FOUND);
    assert_int_equal(append(t, sid, "bob", "b1", "not mine").status, STORE_NOT_FOUND);
    r = req(t, STORE_CHECK, sid, "root", NULL, NULL);
    r->any_session = true;
    struct result rk = run(t, r);
    assert_int_equal(rk.status, STORE_OK);
    assert_string_equal(rk.owner, "alice");
    assert_int_equal(
        run(t, req(t, STORE_CHECK, "s_000000000000000000000000", "alice", NULL, NULL)).status,
        STORE_NOT_FOUND);
    assert_int_equal(append(t, "s_000000000000000000000000", "alice", "x", "x").status,
                     STORE_NOT_FOUND);
    assert_int_equal(store_get_session(t->st, "s_000000000000000000000000", &ss), -ENOENT);
    struct store_event sentinel;
    ev = &sentinel; /* an empty read sets *out to NULL */
    assert_int_equal(store_read_events(t->st, "s_000000000000000000000000", 0, 0, 0, &ev), 0);
    assert_null(ev);

    /* Paging: by count, by bytes (the event that crosses is included), or both. */
    char body[101];
    memset(body, 'x', 100);
    body[100] = '\0';
    for (int i = 0; i < 10; i++)
        assert_int_equal(append(t, sid, "alice", NULL, body).seq, 4 + i);
    n = store_read_events(t->st, sid, 3, 4, 0, &ev);
    assert_int_equal(n, 4);
    for (int i = 0; i < n; i++)
        assert_int_equal(ev[i].seq, 4 + i);
    store_events_free(ev, n);
    n = store_read_events(t->st, sid, 7, 0, 250, &ev);
    assert_int_equal(n, 3);
    assert_int_equal(ev[0].seq, 8);
    assert_int_equal(ev[2].seq, 10);
    store_events_free(ev, n);
    n = store_read_events(t->st, sid, 7, 0, 1, &ev);
    assert_int_equal(n, 1);
    store_events_free(ev, n);
    n = store_read_events(t->st, sid, 3, 4, 150, &ev);
    assert_int_equal(n, 2);
    store_events_free(ev, n);
    n = store_read_events(t->st, sid, 13, 0, 0, &ev);
    assert_int_equal(n, 0);
    store_events_free(ev, n);

    /* Lists: newest update first; by owner, all, or waiting for help. */
    sleep_ms(3);
    struct result s2 = append(t, NULL, "alice", NULL, "second session");
    sleep_ms(3);
    struct result b = append(t, NULL, "bob", NULL, "bob's");
    struct store_session *v;
    n = store_list_sessions(t->st, "alice", false, 10, &v);
    assert_int_equal(n, 2);
    assert_string_equal(v[0].id, s2.session_id);
    assert_string_equal(v[1].id, sid);
    assert_int_equal(store_get_session(t->st, sid, &ss), 0);
    assert_same_session(&v[1], &ss);
    free(v);
    sleep_ms(3);
    append(t, sid, "alice", NULL, "back to the first");
    n = store_list_sessions(t->st, "alice", false, 1, &v);
    assert_int_equal(n, 1);
    assert_string_equal(v[0].id, sid);
    free(v);
    /* Every session: the triage order, the longest wait first (each
     * waits since its first user message: nobody answered). */
    n = store_list_sessions(t->st, NULL, false, 10, &v);
    assert_int_equal(n, 3);
    for (int i = 0; i < 3; i++)
        assert_true(v[i].waiting_ms > 0);
    assert_true(v[0].waiting_ms <= v[1].waiting_ms && v[1].waiting_ms <= v[2].waiting_ms);
    assert_string_equal(v[0].id, sid); /* the first message of all */
    assert_string_equal(v[0].preview, "back to the first");
    assert_string_equal(v[1].id, s2.session_id);
    assert_string_equal(v[2].id, b.session_id);
    free(v);
    n = store_list_sessions(t->st, NULL, true, 10, &v);
    assert_int_equal(n, 0);
    free(v);
    n = store_list_sessions(t->st, "nobody", false, 10, &v);
    assert_int_equal(n, 0);
    free(v);
    close_store(t);
}

/* ---- G6: encryption at rest ------------------------------------------------- */

/* Reads that stop before their statement's last row (a page cut by
 * bytes, one session looked up) leave nothing open: the next reads of the
 * same connection see what was committed after them, again and again. */
static void test_reads_after_an_unfinished_read(void **state)
{
    struct t *t = *state;
    open_store(t, NULL);
    struct result a = append(t, NULL, "alice", "u0", "zero");
    char sid[STORE_ID_LEN + 1];
    memcpy(sid, a.session_id, sizeof sid);
    append(t, sid, "alice", "u1", "one");
    append(t, sid, "alice", "u2", "two");
    for (int round = 0; round < 3; round++) {
        struct store_event *ev;
        int n = store_read_events(t->st, sid, 0, 0, 1, &ev); /* one of several rows */
        assert_int_equal(n, 1);
        store_events_free(ev, n);
        struct store_session ss;
        assert_int_equal(store_get_session(t->st, sid, &ss), 0);
        assert_int_equal(ss.last_seq, 3 + round);
        struct store_session *v;
        n = store_list_sessions(t->st, "alice", false, 10, &v);
        assert_int_equal(n, 1);
        free(v);

        char cid[16], text[16];
        snprintf(cid, sizeof cid, "v%d", round);
        snprintf(text, sizeof text, "after %d", round);
        assert_int_equal(append(t, sid, "alice", cid, text).seq, 4 + round);
        n = store_read_events(t->st, sid, 0, 0, 0, &ev);
        assert_int_equal(n, 4 + round);
        assert_string_equal(ev[n - 1].content, text);
        store_events_free(ev, n);
        assert_int_equal(store_get_session(t->st, sid, &ss), 0);
        assert_int_equal(ss.last_seq, 4 + round);
        n = store_list_sessions(t->st, "alice", false, 10, &v);
        assert_int_equal(n, 1);
        assert_string_equal(v[0].preview, text);
        free(v);
    }
    close_store(t);
}

static void test_encryption_round_trips(void **state)
{
    struct t *t = *state;
    unsigned char key[32], other[32];
    for (int i = 0; i < 32; i++) {
        key[i] = (unsigned char)(i * 7 + 1);
        other[i] = (unsigned char)(i * 7 + 2);
    }
    static char big[10001];
    for (int i = 0; i < 10000; i++)
        big[i] = (char)('a' + i % 26);
    const char *contents[] = {"x", "sealed \xe2\x9c\x93", big};

    open_store(t, key);
    struct result a = append(t, NULL, "alice", "e0", contents[0]);
    char sid[STORE_ID_LEN + 1];
    memcpy(sid, a.session_id, sizeof sid);
    assert_int_equal(append(t, sid, "alice", "e1", contents[1]).seq, 2);
    assert_int_equal(append(t, sid, "alice", "e2", contents[2]).seq, 3);
    assert_true(append(t, sid, "alice", "e1", "again").duplicate);
    for (int round = 0; round < 2; round++) {
        struct store_event *ev;
        int n = read_all(t, sid, &ev);
        assert_int_equal(n, 3);
        for (int i = 0; i < n; i++) {
            assert_int_equal(ev[i].content_len, strlen(contents[i]));
            assert_memory_equal(ev[i].content, contents[i], ev[i].content_len);
        }
        store_events_free(ev, n);
        if (round == 0) { /* and again from a fresh open with the same key */
            close_store(t);
            open_store(t, key);
        }
    }
    close_store(t);

    /* Without the key, or with another, a read fails; it never returns
     * the sealed bytes as content. */
    for (int k = 0; k < 2; k++) {
        open_store(t, k == 0 ? NULL : other);
        struct store_event *ev = NULL;
        assert_int_equal(store_read_events(t->st, sid, 0, 0, 0, &ev), -EIO);
        assert_null(ev);
        close_store(t);
    }
}

/* ---- help requests coalesce ------------------------------------------------- */



static void test_help_is_coalesced(void **state)
{
    struct t *t = *state;
    open_store(t, NULL);
    struct result a = append(t, NULL, "alice", NULL, "I need a person");
    const char *sid = a.session_id;
    sleep_ms(3);
    struct result h1 = run(t, req(t, STORE_HELP, sid, "alice", NULL, NULL));
    assert_int_equal(h1.status, STORE_OK);
    assert_false(h1.duplicate);
    assert_int_equal(h1.seq, 2); /* a stored event, numbered with the messages */
    struct store_session ss;
    assert_int_equal(store_get_session(t->st, sid, &ss), 0);
    assert_true(ss.help);
    assert_int_equal(ss.updated_ms, h1.ts_ms);
    assert_int_equal(ss.last_seq, 2);
    struct store_event *ev = NULL;
    assert_int_equal(store_read_events(t->st, sid, 1, 0, 0, &ev), 1);
    assert_string_equal(ev[0].type, "help_request");
    assert_int_equal(ev[0].content_len, 0);
    assert_string_equal(ev[0].sender_id, "alice");
    store_events_free(ev, 1);

    struct result h2 = run(t, req(t, STORE_HELP, sid, "alice", NULL, NULL));
    assert_int_equal(h2.status, STORE_OK);
    assert_true(h2.duplicate);
    struct store_req *r = req(t, STORE_HELP, sid, "root", NULL, NULL);
    r->any_session = true;
    assert_true(run(t, r).duplicate);
    assert_int_equal(run(t, req(t, STORE_HELP, sid, "bob", NULL, NULL)).status, STORE_NOT_FOUND);
    assert_int_equal(
        run(t, req(t, STORE_HELP, "s_000000000000000000000000", "alice", NULL, NULL)).status,
        STORE_NOT_FOUND);

    struct store_session *v;
    int n = store_list_sessions(t->st, NULL, true, 10, &v);
    assert_int_equal(n, 1);
    assert_string_equal(v[0].id, sid);
    assert_true(v[0].help);
    free(v);
    assert_int_equal(store_get_session(t->st, sid, &ss), 0);
    assert_int_equal(ss.last_seq, 2); /* the duplicates wrote nothing */

    /* Resolving: an event when help was open, a duplicate otherwise. */
    struct result r1 = run(t, req(t, STORE_RESOLVE, sid, "alice", NULL, NULL));
    assert_int_equal(r1.status, STORE_OK);
    assert_false(r1.duplicate);
    assert_int_equal(r1.seq, 3);
    assert_true(run(t, req(t, STORE_RESOLVE, sid, "alice", NULL, NULL)).duplicate);
    assert_int_equal(store_get_session(t->st, sid, &ss), 0);
    assert_false(ss.help);
    assert_int_equal(ss.last_seq, 3);
    /* Asked again after it was resolved: a new request. */
    struct result h3 = run(t, req(t, STORE_HELP, sid, "alice", NULL, NULL));
    assert_false(h3.duplicate);
    assert_int_equal(h3.seq, 4);
    close_store(t);
}

/* ---- session events, read markers, titles, share links, the summary -------- */

static void test_session_state(void **state)
{
    struct t *t = *state;
    open_store(t, NULL);
    struct result a = append(t, NULL, "alice", "m1",
                             "  Where is my parcel? It was due on Monday and nobody answers the "
                             "phone\nsecond line");
    const char *sid = a.session_id;
    struct store_session ss;
    assert_int_equal(store_get_session(t->st, sid, &ss), 0);
    /* The first line, trimmed, cut at a word to at most 60 characters. */
    assert_string_equal(ss.title, "Where is my parcel? It was due on Monday and nobody answers");
    assert_string_equal(ss.owner_name, "alice");
    assert_int_equal(ss.waiting_ms, a.ts_ms);
    append(t, sid, "alice", NULL, "a later message does not change it");
    assert_int_equal(store_get_session(t->st, sid, &ss), 0);
    assert_string_equal(ss.title, "Where is my parcel? It was due on Monday and nobody answers");
    assert_int_equal(ss.waiting_ms, a.ts_ms); /* still the oldest unanswered */

    /* A session event: an admin joins; its reply ends the wait. */
    struct store_req *j = req(t, STORE_EVENT, sid, "sam", NULL, NULL);
    j->any_session = true;
    snprintf(j->event_type, sizeof j->event_type, "admin_join");
    snprintf(j->sender_type, sizeof j->sender_type, "admin");
    struct result jr = run(t, j);
    assert_int_equal(jr.status, STORE_OK);
    assert_int_equal(jr.seq, 3);
    struct store_req *m = req(t, STORE_APPEND, sid, "sam", NULL, "here to help");
    m->any_session = true;
    snprintf(m->sender_type, sizeof m->sender_type, "admin");
    assert_int_equal(run(t, m).seq, 4);
    assert_int_equal(store_get_session(t->st, sid, &ss), 0);
    assert_int_equal(ss.waiting_ms, 0);

    /* Read markers: per reader, never back, at most the last seq. */
    struct store_req *rd = req(t, STORE_READ, sid, "alice", NULL, NULL);
    rd->num = 3;
    assert_int_equal(run(t, rd).status, STORE_OK);
    rd = req(t, STORE_READ, sid, "alice", NULL, NULL);
    rd->num = 2;
    run(t, rd);
    rd = req(t, STORE_READ, sid, "sam", NULL, NULL);
    rd->any_session = true;
    rd->num = 99;
    run(t, rd);
    struct store_read *reads = NULL;
    assert_int_equal(store_get_reads(t->st, sid, &reads), 2);
    assert_string_equal(reads[0].reader, "alice");
    assert_int_equal(reads[0].seq, 3);
    assert_string_equal(reads[1].reader, "sam");
    assert_int_equal(reads[1].seq, 4);
    free(reads);
    rd = req(t, STORE_READ, sid, "eve", NULL, NULL);
    rd->num = 1;
    assert_int_equal(run(t, rd).status, STORE_NOT_FOUND);

    /* Renaming: the owner only; kept over later messages. */
    struct store_req *rn = req(t, STORE_RENAME, sid, "alice", NULL, NULL);
    rn->arg = strdup("Parcel");
    assert_int_equal(run(t, rn).status, STORE_OK);
    rn = req(t, STORE_RENAME, sid, "eve", NULL, NULL);
    rn->arg = strdup("Mine now");
    assert_int_equal(run(t, rn).status, STORE_NOT_FOUND);
    assert_int_equal(store_get_session(t->st, sid, &ss), 0);
    assert_string_equal(ss.title, "Parcel");

    /* Share links: found until revoked; the expiry is the caller's. */
    struct store_req *sh = req(t, STORE_SHARE, sid, "alice", NULL, NULL);
    sh->arg = strdup("tok-1");
    sh->num = 123456;
    assert_int_equal(run(t, sh).status, STORE_OK);
    char found[STORE_ID_LEN + 1];
    int64_t exp = 0;
    assert_int_equal(store_get_share(t->st, "tok-1", found, &exp), 0);
    assert_string_equal(found, sid);
    assert_int_equal(exp, 123456);
    assert_int_equal(store_get_share(t->st, "tok-2", found, &exp), -ENOENT);
    assert_int_equal(run(t, req(t, STORE_UNSHARE, sid, "alice", NULL, NULL)).status, STORE_OK);
    assert_int_equal(store_get_share(t->st, "tok-1", found, &exp), -ENOENT);

    /* The summary: counts, and help answered by a person. */
    struct result h = run(t, req(t, STORE_HELP, sid, "alice", NULL, NULL));
    sleep_ms(5);
    m = req(t, STORE_APPEND, sid, "sam", NULL, "on it");
    m->any_session = true;
    snprintf(m->sender_type, sizeof m->sender_type, "admin");
    struct result ans = run(t, m);
    struct store_summary sum;
    assert_int_equal(store_get_summary(t->st, &sum), 0);
    assert_int_equal(sum.sessions, 1);
    assert_int_equal(sum.help_open, 1);
    assert_int_equal(sum.messages_user, 2);
    assert_int_equal(sum.messages_admin, 2);
    assert_int_equal(sum.nhelp_waits, 1);
    assert_int_equal(sum.help_waits[0], ans.ts_ms - h.ts_ms);
    free(sum.help_waits);
    close_store(t);

    /* Across a restart, as it was. */
    open_store(t, NULL);
    assert_int_equal(store_get_session(t->st, sid, &ss), 0);
    assert_string_equal(ss.title, "Parcel");
    assert_true(ss.help);
    close_store(t);
}

/* ---- one batch, many events of one session ------------------------------------
 * The writer loads a session once per batch and writes its row once, before
 * COMMIT: every request in the batch must still see what the ones before it
 * did (seqs, a model set, a title given, a wait started and ended), and the
 * row must end as if each had been written alone. */
static void test_one_batch_one_session(void **state)
{
    struct t *t = *state;
    open_store(t, NULL);
    struct result a = append(t, NULL, "alice", "c1", "Opening question");
    const char *sid = a.session_id;
    struct store_session ss;
    assert_int_equal(store_get_session(t->st, sid, &ss), 0);
    assert_int_equal(ss.waiting_ms, a.ts_ms);

    sleep_ms(3); /* the batch's time differs from the first message's */
    gate_hold(t, sid, "alice");
    uint64_t tags[8];
    tags[0] = submit(t, req(t, STORE_APPEND, sid, "alice", "c2", "two"));
    tags[1] = submit(t, req(t, STORE_APPEND, sid, "alice", "c2", "two, again"));
    struct store_req *m = req(t, STORE_APPEND, sid, "sam", "s1", "an answer");
    m->any_session = true;
    snprintf(m->sender_type, sizeof m->sender_type, "admin");
    tags[2] = submit(t, m);
    tags[3] = submit(t, req(t, STORE_APPEND, sid, "alice", "c3", "after the answer"));
    struct store_req *md = req(t, STORE_MODEL, sid, "alice", NULL, NULL);
    md->arg = strdup("model-b");
    tags[4] = submit(t, md);
    tags[5] = submit(t, req(t, STORE_APPEND, sid, "alice", "c4", "four"));
    tags[6] = submit(t, req(t, STORE_APPEND, sid, "eve", "e1", "not hers"));
    tags[7] = submit(t, req(t, STORE_HELP, sid, "alice", NULL, NULL));
    gate_open(t);
    wait_results(t, t->submitted);

    struct result r[8];
    for (int i = 0; i < 8; i++) {
        r[i] = get(t, tags[i]);
        assert_int_equal(r[i].batch, get(t, tags[0]).batch);
    }
    assert_int_equal(r[0].seq, 2);
    assert_false(r[0].duplicate);
    assert_true(r[1].duplicate); /* the retry within the batch */
    assert_int_equal(r[1].seq, 2);
    assert_int_equal(r[1].ts_ms, r[0].ts_ms);
    assert_int_equal(r[2].seq, 3);
    assert_int_equal(r[3].seq, 4);
    assert_int_equal(r[4].status, STORE_OK);
    assert_int_equal(r[4].seq, 4); /* other ops answer with the last seq */
    assert_string_equal(r[3].model, "");
    assert_string_equal(r[5].model, "model-b"); /* set earlier in the batch */
    assert_int_equal(r[5].seq, 5);
    assert_int_equal(r[6].status, STORE_NOT_FOUND);
    assert_int_equal(r[7].status, STORE_OK);
    assert_int_equal(r[7].seq, 6);

    struct store_event *ev;
    int n = read_all(t, sid, &ev);
    assert_int_equal(n, 6);
    assert_events_gapless(ev, n);
    assert_string_equal(ev[1].content, "two");
    assert_string_equal(ev[2].sender_id, "sam");
    assert_string_equal(ev[5].type, "help_request");
    store_events_free(ev, n);

    /* The row as if written request by request: the answer ended the
     * first wait, the message after it started another, at the batch's
     * time; the title is the first message's; the last seq and model are
     * the batch's last. */
    assert_int_equal(store_get_session(t->st, sid, &ss), 0);
    assert_int_equal(ss.last_seq, 6);
    assert_int_equal(ss.waiting_ms, r[3].ts_ms);
    assert_true(ss.waiting_ms > a.ts_ms);
    assert_string_equal(ss.model, "model-b");
    assert_string_equal(ss.title, "Opening question");
    assert_true(ss.help);

    /* A new session's first message titles it, once, in the same batch
     * as its next. */
    struct result b = append(t, NULL, "bob", "b0", "");
    gate_hold(t, b.session_id, "bob");
    uint64_t t1 = submit(t, req(t, STORE_APPEND, b.session_id, "bob", "b1", "First words"));
    uint64_t t2 = submit(t, req(t, STORE_APPEND, b.session_id, "bob", "b2", "Second words"));
    gate_open(t);
    wait_results(t, t->submitted);
    assert_int_equal(get(t, t2).seq, get(t, t1).seq + 1);
    assert_int_equal(store_get_session(t->st, b.session_id, &ss), 0);
    assert_string_equal(ss.title, "First words");

    /* The summary counts each message once (the retry is not one). */
    struct store_summary sum;
    assert_int_equal(store_get_summary(t->st, &sum), 0);
    assert_int_equal(sum.messages_user, 4 + 3);
    assert_int_equal(sum.messages_admin, 1);
    free(sum.help_waits);
    close_store(t);
}

/* A database of schema 2 (messages counted from a type index over every
 * event) opened by this chatd: the counts move onto the sessions, the
 * index becomes the partial one, and nothing else changes. The old file is
 * made from a new one by undoing migration 3 by hand. */
static void test_schema_2_upgrades(void **state)
{
    struct t *t = *state;
    if (strcmp(t->eng->name, "sqlite") != 0)
        skip();
    open_store(t, NULL);
    struct result a = append(t, NULL, "alice", "a1", "one");
    append(t, a.session_id, "alice", "a2", "two");
    struct store_req *m = req(t, STORE_APPEND, a.session_id, "sam", "s1", "answer");
    m->any_session = true;
    snprintf(m->sender_type, sizeof m->sender_type, "admin");
    run(t, m);
    struct result b = append(t, NULL, "bob", "b1", "bob's");
    (void)b;
    close_store(t);

    sqlite3 *db;
    assert_int_equal(sqlite3_open(t->path, &db), SQLITE_OK);
    char *e = NULL;
    int rc = sqlite3_exec(db,
                          "BEGIN; DROP INDEX events_by_kind;"
                          "CREATE INDEX events_by_type ON events(type, session_id);"
                          "ALTER TABLE sessions DROP COLUMN n_user;"
                          "ALTER TABLE sessions DROP COLUMN n_admin;"
                          "PRAGMA user_version = 2; COMMIT;",
                          NULL, NULL, &e);
    if (rc != SQLITE_OK)
        fail_msg("making a schema 2 file: %s", e ? e : "?");
    sqlite3_close(db);

    open_store(t, NULL);
    struct store_summary sum;
    assert_int_equal(store_get_summary(t->st, &sum), 0);
    assert_int_equal(sum.sessions, 2);
    assert_int_equal(sum.messages_user, 3);
    assert_int_equal(sum.messages_admin, 1);
    free(sum.help_waits);
    append(t, a.session_id, "alice", "a3", "three");
    assert_int_equal(store_get_summary(t->st, &sum), 0);
    assert_int_equal(sum.messages_user, 4);
    free(sum.help_waits);
    close_store(t);

    assert_int_equal(sqlite3_open(t->path, &db), SQLITE_OK);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "SELECT (SELECT user_version FROM pragma_user_version),"
                                        " (SELECT COUNT(*) FROM sqlite_master WHERE name ="
                                        " 'events_by_type'), (SELECT COUNT(*) FROM sqlite_master"
                                        " WHERE name = 'events_by_kind')",
                                        -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 3);
    assert_int_equal(sqlite3_column_int(st, 1), 0);
    assert_int_equal(sqlite3_column_int(st, 2), 1);
    sqlite3_finalize(st);
    sqlite3_close(db);
}

/* ---- G2: close drains the queue --------------------------------------------- */

#define DRAIN 500

static void test_close_drains_queued_writes(void **state)
{
    struct t *t = *state;
    open_store(t, NULL);
    struct result a = append(t, NULL, "alice", "d0", "first");
    char sid[STORE_ID_LEN + 1];
    memcpy(sid, a.session_id, sizeof sid);
    /* Hold the writer so that all of these are still queued when close
     * begins, then let it go and close at once. */
    gate_hold(t, sid, "alice");
    for (int i = 1; i <= DRAIN; i++) {
        char cid[16], content[32];
        snprintf(cid, sizeof cid, "d%d", i);
        snprintf(content, sizeof content, "queued %d", i);
        submit(t, req(t, STORE_APPEND, sid, "alice", cid, content));
    }
    gate_open(t);
    close_store(t); /* checks that every request was answered */

    open_store(t, NULL);
    struct store_event *ev;
    int n = read_all(t, sid, &ev);
    assert_int_equal(n, DRAIN + 1);
    assert_events_gapless(ev, n);
    for (int i = 1; i <= DRAIN; i++) {
        char content[32];
        snprintf(content, sizeof content, "queued %d", i);
        assert_string_equal(ev[i].content, content);
    }
    store_events_free(ev, n);
    /* Every ack carried the seq that is stored. */
    uv_mutex_lock(&t->lock);
    size_t nres = t->nres, bad = 0;
    for (size_t i = 0; i < nres; i++)
        if (t->res[i].op == STORE_APPEND &&
            (t->res[i].status != STORE_OK || t->res[i].seq != atoll(t->res[i].client_id + 1) + 1))
            bad++;
    uv_mutex_unlock(&t->lock);
    assert_int_equal(bad, 0);
    close_store(t);
}

/* ---- the engine choice -------------------------------------------------------- */

static void test_unknown_engine_is_refused(void **state)
{
    struct t *t = *state;
    struct store *st = NULL;
    char err[256] = "";
    struct store_options o = {
        .engine = "no-such-engine", .path = t->path, .on_batch = on_batch, .arg = t};
    assert_int_equal(store_open(&st, &o, err, sizeof err), -EINVAL);
    assert_null(st);
    assert_non_null(strstr(err, "no-such-engine"));
    assert_non_null(strstr(err, "sqlite"));
}

/* ---- reading a damaged row -------------------------------------------------- */

/* A column's text too long for its field (only a damaged or outside-written
 * row holds one) is cut before the character that does not fit whole, so
 * the wire never sends half a character (found by fuzz/fuzz_row.c). */
static void test_long_field_cut_at_character(void **state)
{
    (void)state;
    char out[8];
    store__copy_field(out, sizeof out, "fuzz-u\xc3\xa9r");
    assert_string_equal(out, "fuzz-u");
    store__copy_field(out, sizeof out, "abcdefg");
    assert_string_equal(out, "abcdefg");
    store__copy_field(out, sizeof out, "\xf0\x9f\x98\x80\xf0\x9f\x98\x80");
    assert_string_equal(out, "\xf0\x9f\x98\x80");
    store__copy_field(out, sizeof out, NULL);
    assert_string_equal(out, "");
}

/* ---- SQLite: the WAL is checkpointed into the database ------------------------
 *
 * The checkpointer copies the WAL into the database beside the writer once
 * it passes its threshold (4 MiB of pages), and makes the writer wait for a
 * checkpoint that restarts the WAL past four times that, so the WAL is
 * reused instead of growing with everything ever written, even when the
 * writer never pauses, as here; the file is cut back when the WAL starts
 * over. It fails when the checkpointer copies nothing (its connection had
 * never read the database: the WAL grew for ever, the database file kept
 * its first page) and when only PASSIVE checkpoints run (the WAL never
 * starts over under this load: 67 MB of WAL for 40 MB of messages). */

static long file_size(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 ? (long)sb.st_size : -1;
}

/* The page size in a database file's header (1 stands for 65536). */
static int file_page_size(const char *path)
{
    unsigned char h[100];
    FILE *f = fopen(path, "rb");
    size_t n = f ? fread(h, 1, sizeof h, f) : 0;
    if (f)
        fclose(f);
    if (n != sizeof h)
        return -1;
    int v = h[16] << 8 | h[17];
    return v == 1 ? 65536 : v;
}

/* A database file made with pages of size bytes, before chatd opens it:
 * a file from a chatd that made its databases so. */
static void make_file_with_pages(struct t *t, int size)
{
    sqlite3 *db;
    assert_int_equal(sqlite3_open(t->path, &db), SQLITE_OK);
    char sql[128];
    snprintf(sql, sizeof sql, "PRAGMA page_size = %d; CREATE TABLE made(x); DROP TABLE made;",
             size);
    char *e = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &e) != SQLITE_OK)
        fail_msg("making a file of %d-byte pages: %s", size, e ? e : "?");
    sqlite3_close(db);
    assert_int_equal(file_page_size(t->path), size);
}

/* page_size: 0 for a new file (chatd's own pages), or the pages of a file
 * made before chatd opens it. The thresholds are in bytes of pages, so
 * the WAL is bounded the same either way. */
static void wal_is_checkpointed(struct t *t, int page_size)
{
    if (strcmp(t->eng->name, "sqlite") != 0)
        skip();
    if (page_size)
        make_file_with_pages(t, page_size);
    open_store(t, NULL);
    struct result first = append(t, NULL, "alice", "c0", "first");
    char content[801];
    memset(content, 'x', sizeof content - 1);
    content[sizeof content - 1] = '\0';
    long written = 0;
    for (int round = 0; round < 50; round++) {
        for (int i = 0; i < 1000; i++) {
            char cid[32];
            snprintf(cid, sizeof cid, "w%d-%d", round, i);
            submit(t, req(t, STORE_APPEND, first.session_id, "alice", cid, content));
        }
        wait_results(t, t->submitted);
        written += 1000 * (long)(sizeof content - 1);
    }
    char wal[sizeof t->path + 8];
    snprintf(wal, sizeof wal, "%s-wal", t->path);
    /* The checkpointer runs on its own thread: give it time to copy. */
    long db = file_size(t->path);
    for (int i = 0; i < 600 && db < written / 2; i++) {
        usleep(50 * 1000);
        db = file_size(t->path);
    }
    /* A commit that finds the WAL copied starts it over, cut back to its
     * size limit: one more message now and then until one does (a busy
     * machine may need a few checkpoints). */
    long wal_size = file_size(wal);
    for (int i = 0; i < 300 && wal_size >= written / 2; i++) {
        char cid[32];
        snprintf(cid, sizeof cid, "after-%d", i);
        append(t, first.session_id, "alice", cid, "one more");
        wal_size = file_size(wal);
        if (wal_size >= written / 2)
            usleep(100 * 1000);
    }
    if (db < written / 2 || wal_size >= written / 2)
        fail_msg("after %ld bytes of messages: database %ld bytes, WAL %ld bytes", written, db,
                 wal_size);
    close_store(t);
    /* A new file has chatd's pages; one made before keeps its own. */
    assert_int_equal(file_page_size(t->path), page_size ? page_size : 2048);
}

static void test_wal_is_checkpointed(void **state)
{
    wal_is_checkpointed(*state, 0);
}

static void test_wal_of_1k_pages_is_checkpointed(void **state)
{
    wal_is_checkpointed(*state, 1024);
}

#define CASE(f, eng) cmocka_unit_test_prestate_setup_teardown(f, setup, teardown, (void *)(eng))

int main(void)
{
    int failed = 0;
    for (size_t i = 0; i < sizeof engines / sizeof engines[0]; i++) {
        const struct engine_fixture *e = &engines[i];
        const struct CMUnitTest tests[] = {
            CASE(test_seq_gapless_under_concurrent_submitters, e),
            CASE(test_queued_requests_share_one_batch, e),
            CASE(test_dedup_by_client_id, e),
            CASE(test_failed_commit_consumes_no_seq, e),
            CASE(test_reads_see_what_was_committed, e),
            CASE(test_reads_after_an_unfinished_read, e),
            CASE(test_encryption_round_trips, e),
            CASE(test_help_is_coalesced, e),
            CASE(test_session_state, e),
            CASE(test_one_batch_one_session, e),
            CASE(test_schema_2_upgrades, e),
            CASE(test_close_drains_queued_writes, e),
            CASE(test_unknown_engine_is_refused, e),
            CASE(test_long_field_cut_at_character, e),
            CASE(test_wal_is_checkpointed, e),
            CASE(test_wal_of_1k_pages_is_checkpointed, e),
        };
        failed += cmocka_run_group_tests_name(e->name, tests, e->start, e->stop);
    }
    return failed;
}
