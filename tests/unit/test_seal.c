/*
 * Random bytes that fail: sealing refuses (never a zero or repeated GCM
 * nonce), a session id is refused (never a guessable one), and an encrypted
 * SQLite store refuses that one write (status unavailable) yet goes on
 * storing once random bytes come back: no fail-stop over it.
 *
 * RAND_bytes is interposed below: the executable's definition is the one
 * chatd's static library binds to. While `rand_fail` is set it fails;
 * otherwise it hands over to OpenSSL's.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "store/seal.h"
#include "store/store.h"
#include "util/clock.h"

static atomic_bool rand_fail;
static atomic_int rand_calls;

int RAND_bytes(unsigned char *buf, int num);
int RAND_bytes(unsigned char *buf, int num)
{
    static int (*real)(unsigned char *, int);
    atomic_fetch_add(&rand_calls, 1);
    if (atomic_load(&rand_fail))
        return 0;
    if (!real)
        real = (int (*)(unsigned char *, int))dlsym(RTLD_NEXT, "RAND_bytes");
    return real ? real(buf, num) : 0;
}

static const unsigned char KEY[32] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                                      17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30,
                                      31, 32};

static void seal_refuses_without_random_bytes(void **state)
{
    (void)state;
    unsigned char *out = NULL;
    size_t n = 0;
    atomic_store(&rand_fail, true);
    int before = atomic_load(&rand_calls);
    assert_int_equal(store_seal(KEY, "s_1", 1, "hello", 5, &out, &n), -EIO);
    assert_true(atomic_load(&rand_calls) > before); /* the nonce was asked for */
    assert_null(out);
    atomic_store(&rand_fail, false);

    /* With random bytes: it seals and opens, and two seals of the same
     * text at the same place carry different nonces. */
    unsigned char *a = NULL, *b = NULL;
    size_t an = 0, bn = 0;
    assert_int_equal(store_seal(KEY, "s_1", 1, "hello", 5, &a, &an), 0);
    assert_int_equal(store_seal(KEY, "s_1", 1, "hello", 5, &b, &bn), 0);
    assert_int_equal(an, 5 + STORE_SEAL_OVERHEAD);
    assert_memory_not_equal(a, b, 12);
    char *plain = NULL;
    size_t pn = 0;
    assert_int_equal(store_unseal(KEY, "s_1", 1, a, an, &plain, &pn), 0);
    assert_int_equal(pn, 5);
    assert_memory_equal(plain, "hello", 5);
    free(plain);
    free(a);
    free(b);
}

static void session_id_refused_without_random_bytes(void **state)
{
    (void)state;
    char id[STORE_ID_LEN + 1];
    atomic_store(&rand_fail, true);
    assert_int_equal(store_new_session_id(id), -EIO);
    assert_string_equal(id, "");
    atomic_store(&rand_fail, false);
    assert_int_equal(store_new_session_id(id), 0);
    assert_int_equal(strncmp(id, "s_", 2), 0);
}

/* A session id is "s_", the second it was made (8 hex digits) and 64
 * random bits (16 hex digits): ids sort by the second they were made, and
 * two made in the same second still differ. */
static void session_id_leads_with_its_second(void **state)
{
    (void)state;
    enum { N = 1000 };
    static char ids[N][STORE_ID_LEN + 1];
    uint32_t before = (uint32_t)(clock_wall_ms() / 1000);
    for (int i = 0; i < N; i++)
        assert_int_equal(store_new_session_id(ids[i]), 0);
    uint32_t after = (uint32_t)(clock_wall_ms() / 1000);
    for (int i = 0; i < N; i++) {
        assert_int_equal(strlen(ids[i]), STORE_ID_LEN);
        assert_int_equal(strncmp(ids[i], "s_", 2), 0);
        assert_int_equal(strspn(ids[i] + 2, "0123456789abcdef"), STORE_ID_LEN - 2);
        char secs[9];
        memcpy(secs, ids[i] + 2, 8);
        secs[8] = '\0';
        uint32_t made = (uint32_t)strtoul(secs, NULL, 16);
        assert_true(made >= before && made <= after);
        if (i > 0 && strncmp(ids[i - 1] + 2, ids[i] + 2, 8) != 0)
            assert_true(strcmp(ids[i - 1], ids[i]) < 0); /* a later second sorts after */
        for (int j = 0; j < i; j++)
            assert_string_not_equal(ids[j], ids[i]);
    }
}

/* ---- through an encrypted SQLite store -------------------------------------- */

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static struct store_req *done_req;

static void on_batch(void *arg, struct store_req **reqs, size_t n)
{
    (void)arg;
    pthread_mutex_lock(&mu);
    for (size_t i = 0; i < n; i++) {
        if (done_req)
            store_req_free(done_req);
        done_req = reqs[i];
    }
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
}

/* Append content to session sid (created when empty); the finished
 * request (the caller frees it). */
static struct store_req *append(struct store *st, const char *sid, const char *content)
{
    struct store_req *r = calloc(1, sizeof *r);
    assert_non_null(r);
    r->op = STORE_APPEND;
    snprintf(r->session_id, sizeof r->session_id, "%s", sid);
    snprintf(r->user, sizeof r->user, "u1");
    snprintf(r->sender_type, sizeof r->sender_type, "user");
    r->sender_name = strdup("U1");
    r->content = strdup(content);
    r->content_len = strlen(content);
    assert_int_equal(store_submit(st, r), 0);
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 60; /* generous: sanitizers run slowly on a loaded machine */
    pthread_mutex_lock(&mu);
    while (done_req != r)
        assert_int_equal(pthread_cond_timedwait(&cv, &mu, &dl), 0);
    done_req = NULL;
    pthread_mutex_unlock(&mu);
    return r;
}

static void encrypted_store_refuses_one_write_and_goes_on(void **state)
{
    (void)state;
    char dir[] = "/tmp/chatd-seal-XXXXXX", path[64], err[256];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/db", dir);
    struct store_options so = {.engine = "sqlite", .path = path, .key = KEY, .on_batch = on_batch};
    struct store *st = NULL;
    assert_int_equal(store_open(&st, &so, err, sizeof err), 0);

    struct store_req *r = append(st, "", "first");
    assert_int_equal(r->status, STORE_OK);
    char sid[STORE_ID_LEN + 1];
    snprintf(sid, sizeof sid, "%s", r->session_id);
    store_req_free(r);

    /* No random bytes: the sealed write is refused, nothing stored. */
    atomic_store(&rand_fail, true);
    r = append(st, sid, "second");
    atomic_store(&rand_fail, false);
    assert_int_equal(r->status, STORE_UNAVAILABLE);
    store_req_free(r);
    /* A new session needs a random id too: refused the same way. */
    atomic_store(&rand_fail, true);
    r = append(st, "", "a new session");
    atomic_store(&rand_fail, false);
    assert_int_equal(r->status, STORE_UNAVAILABLE);
    store_req_free(r);
    assert_false(store_failed(st));

    /* Random bytes are back: the store takes writes, at the next seq. */
    r = append(st, sid, "third");
    assert_int_equal(r->status, STORE_OK);
    assert_int_equal(r->seq, 2);
    store_req_free(r);
    struct store_event *ev = NULL;
    int n = store_read_events(st, sid, 0, 10, 0, &ev);
    assert_int_equal(n, 2);
    assert_string_equal(ev[0].content, "first");
    assert_string_equal(ev[1].content, "third");
    store_events_free(ev, n);
    store_close(st);

    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(seal_refuses_without_random_bytes),
        cmocka_unit_test(session_id_refused_without_random_bytes),
        cmocka_unit_test(session_id_leads_with_its_second),
        cmocka_unit_test(encrypted_store_refuses_one_write_and_goes_on),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
