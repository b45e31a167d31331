/*
 * server_harness: a whole chatd worker for the fuzz drivers that talk to it
 * as a client would (fuzz_chat, fuzz_worker).
 *
 * DESIGN: one process-wide chatd is built at start as main() builds it:
 * the configuration (config_load), the hub with a fixed HS256 secret, the
 * router, the in-process bus, and SQLite storage on a scratch file (with an
 * encryption key, so every row is sealed). The only differences are at two
 * fuzz-only seams of src/net: server_fuzz_start sets up worker 0 without a
 * thread, so its libuv loop runs on the fuzzer's thread, and
 * conn_fuzz_adopt hands it one end of a socketpair as an accepted
 * connection. Everything behind that socket is the production code: the
 * HTTP head parser, the upgrade and JWT check, the frame decoder, the hub's
 * JSON decoding, validation, the router, the storage writer thread and the
 * replies it posts back to the worker's inbox.
 *
 * One input is one connection: the driver writes its bytes in pieces
 * (harness_write, each piece followed by loop turns, so the server reads
 * the pieces as separate reads), waits until the server is idle
 * (harness_settle: nothing queued to storage, no thread-pool work, nothing
 * left to read), then half-closes and waits until the connection is gone.
 * A connection that outlives its client's EOF by HARNESS_SETTLE_MS is a
 * broken promise (abort). What the server wrote is collected in h_out.
 *
 * Idle needs to know when the storage writer is done: the drivers link
 * with -Wl,--wrap=store_submit, so every request submitted is counted
 * here, and the batch callback uncounts it after the router has posted its
 * replies. Nothing is left between inputs but the database rows and the
 * registry's rate-limit buckets: LeakSanitizer sees the connection's
 * memory freed each time.
 *
 * The session placeholder: the 26 bytes "s_" followed by 24 '@' in an
 * input are replaced by the id of a session the harness made at start for
 * the user "fuzz-user" (HARNESS_SID_PLACEHOLDER; a new one every
 * HARNESS_RENEW inputs), so seeds can name a session that exists (masked
 * frames of the seeds use the zero mask, so the placeholder is visible in
 * the raw bytes too).
 */
#ifndef CHATD_FUZZ_SERVER_HARNESS_H
#define CHATD_FUZZ_SERVER_HARNESS_H

#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "auth/jwt.h"
#include "bus/bus.h"
#include "conf/config.h"
#include "hub/chat.h"
#include "hub/hub.h"
#include "hub/routes.h"
#include "net/conn.h"
#include "net/server.h"
#include "store/store.h"
#include "util/clock.h"
#include "util/log.h"

#define HCHECK(cond)                                                                               \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "broken promise at %s:%d: %s\n", __FILE__, __LINE__, #cond);           \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define HARNESS_SECRET "fuzz-secret-0123456789abcdef-0123456789abcdef"
#define HARNESS_SID_PLACEHOLDER "s_@@@@@@@@@@@@@@@@@@@@@@@@"
#define HARNESS_MAX_CONTENT 2048 /* --max-content-bytes */
#define HARNESS_MAX_MESSAGE 8192 /* --max-message-bytes */
#define HARNESS_SETTLE_MS 30000  /* longest wait for the server to be idle */
#define HARNESS_OUT_MAX (1u << 22)

static struct config h_cfg;
static struct server h_srv;
static struct hub h_hub;
static struct chat *h_chat;
static struct bus *h_bus;
static struct store *h_store;
static struct worker *h_w;
static char h_db[128];
static char h_sid[STORE_ID_LEN + 1];
static char *h_user_token, *h_admin_token;
static atomic_long h_pending; /* store requests submitted, not yet through on_batch */

/* What the server wrote on the current connection (HARNESS_OUT_MAX at most
 * kept; the rest read and dropped). */
static uint8_t *h_out;
static size_t h_out_len;
static int h_fd = -1;
static bool h_eof;

int __real_store_submit(struct store *s, struct store_req *r);
int __wrap_store_submit(struct store *s, struct store_req *r);
int __wrap_store_submit(struct store *s, struct store_req *r)
{
    atomic_fetch_add(&h_pending, 1);
    int rc = __real_store_submit(s, r);
    if (rc != 0)
        atomic_fetch_sub(&h_pending, 1);
    return rc;
}

static void harness_on_batch(void *arg, struct store_req **reqs, size_t n)
{
    chat_on_batch(arg, reqs, n);
    atomic_fetch_sub(&h_pending, (long)n);
}

static void harness_drain(void)
{
    for (;;) {
        uint8_t buf[16384];
        ssize_t k = read(h_fd, buf, sizeof buf);
        if (k > 0) {
            size_t keep =
                h_out_len + (size_t)k <= HARNESS_OUT_MAX ? (size_t)k : HARNESS_OUT_MAX - h_out_len;
            memcpy(h_out + h_out_len, buf, keep);
            h_out_len += keep;
            continue;
        }
        if (k == 0)
            h_eof = true;
        return;
    }
}

/* A turn of the worker's loop, then read what it wrote. */
static void harness_turn(void)
{
    uv_run(&h_w->loop, UV_RUN_NOWAIT);
    harness_drain();
}

static bool harness_busy(void)
{
    return atomic_load(&h_pending) > 0 || h_w->loop.active_reqs.count > 0 ||
           fifo_count(&h_w->inbox) > 0;
}

/* Turn the loop until nothing is left to do: storage idle, no thread-pool
 * work or write pending, and (gone) the connection closed. */
static void harness_settle(bool gone)
{
    int64_t deadline = clock_mono_ms() + HARNESS_SETTLE_MS;
    for (;;) {
        harness_turn();
        if (!harness_busy() && (!gone || h_w->nconns == 0)) {
            /* One more pass: a reply posted just now is run by it. */
            harness_turn();
            if (!harness_busy() && (!gone || h_w->nconns == 0))
                return;
        }
        if (clock_mono_ms() > deadline) {
            fprintf(stderr, "server not idle after %d ms (pending=%ld reqs=%u conns=%u)\n",
                    HARNESS_SETTLE_MS, (long)atomic_load(&h_pending), h_w->loop.active_reqs.count,
                    h_w->nconns);
            abort();
        }
        if (atomic_load(&h_pending) > 0 || h_w->loop.active_reqs.count > 0) {
            struct timespec ts = {0, 20000};
            nanosleep(&ts, NULL);
        }
    }
}

/* Replace the session placeholder by the harness's session id. */
static void harness_subst(uint8_t *p, size_t n)
{
    size_t L = STORE_ID_LEN;
    for (size_t i = 0; i + L <= n; i++)
        if (p[i] == 's' && memcmp(p + i, HARNESS_SID_PLACEHOLDER, L) == 0) {
            memcpy(p + i, h_sid, L);
            i += L - 1;
        }
}

static void harness_make_session(void);

/* Open a new connection to the worker. Every HARNESS_RENEW connections
 * the placeholder session is replaced by a new one, so that it does not
 * grow without end over a long run: a resume replays all of it. */
#define HARNESS_RENEW 100
static void harness_connect(void)
{
    static unsigned count;
    if (h_sid[0] && ++count % HARNESS_RENEW == 0)
        harness_make_session();
    int sv[2];
    HCHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
    HCHECK(conn_fuzz_adopt(h_w, sv[0]) == 0);
    h_fd = sv[1];
    h_out_len = 0;
    h_eof = false;
}

static bool harness_write(const uint8_t *p, size_t n);

/* harness_write in the shape fuzz_feed_chunked (chunks.h) calls. */
static bool harness_feed(void *arg, const uint8_t *p, size_t len)
{
    (void)arg;
    return harness_write(p, len);
}

/* Write p[0..n) as the client; false once the server has closed. */
static bool harness_write(const uint8_t *p, size_t n)
{
    size_t off = 0;
    int spins = 0;
    while (off < n) {
        ssize_t k = send(h_fd, p + off, n - off, MSG_NOSIGNAL);
        if (k > 0) {
            off += (size_t)k;
            continue;
        }
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            harness_turn();
            /* The server stopped reading (its input is paused or it is
             * closing): give up on the rest after a while. */
            if (++spins > 20000)
                return false;
            continue;
        }
        return false; /* EPIPE, ECONNRESET: the server closed */
    }
    harness_turn();
    return true;
}

/* Half-close, wait until the server has closed the connection, close. */
static void harness_finish(void)
{
    shutdown(h_fd, SHUT_WR);
    harness_settle(true);
    harness_drain();
    if (getenv("CHATD_FUZZ_DUMP")) /* to see what a seed does */
        fwrite(h_out, 1, h_out_len, stderr);
    close(h_fd);
    h_fd = -1;
}

static char *harness_token(const char *sub, const char *roles)
{
    char payload[256];
    snprintf(payload, sizeof payload,
             "{\"sub\":\"%s\",\"name\":\"Fuzz %s\",\"roles\":%s,\"exp\":4102444800}", sub, sub,
             roles);
    char *t = jwt_sign_hs256((const unsigned char *)HARNESS_SECRET, strlen(HARNESS_SECRET), payload,
                             strlen(payload));
    HCHECK(t);
    return t;
}

/* A masked text frame of p[0..n) into out (n + 14 bytes at most);
 * returns its length. */
static size_t harness_frame(uint8_t *out, unsigned opcode, bool fin, const uint8_t *p, size_t n,
                            const uint8_t mask[4])
{
    size_t h = 0;
    out[h++] = (uint8_t)((fin ? 0x80 : 0) | opcode);
    if (n < 126) {
        out[h++] = (uint8_t)(0x80 | n);
    } else if (n <= 0xFFFF) {
        out[h++] = 0x80 | 126;
        out[h++] = (uint8_t)(n >> 8);
        out[h++] = (uint8_t)n;
    } else {
        out[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            out[h++] = (uint8_t)((uint64_t)n >> (8 * i));
    }
    memcpy(out + h, mask, 4);
    h += 4;
    for (size_t i = 0; i < n; i++)
        out[h + i] = p[i] ^ mask[i % 4];
    return h + n;
}

/* The upgrade request with token (in the header, or the query). */
static size_t harness_upgrade(char *out, size_t cap, const char *token, bool in_query)
{
    int n = snprintf(out, cap,
                     "GET /ws%s%s HTTP/1.1\r\nHost: fuzz\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n%s%s%s\r\n",
                     in_query ? "?token=" : "", in_query ? token : "",
                     in_query ? "" : "Authorization: Bearer ", in_query ? "" : token,
                     in_query ? "" : "\r\n");
    HCHECK(n > 0 && (size_t)n < cap);
    return (size_t)n;
}

/* One server frame at out[*pos]: opcode, payload; false at the end (or a
 * cut frame). The server never masks and never sets RSV bits. */
static bool harness_next_frame(size_t *pos, unsigned *opcode, bool *fin, const uint8_t **payload,
                               size_t *len)
{
    const uint8_t *p = h_out + *pos;
    size_t left = h_out_len - *pos;
    if (left < 2)
        return false;
    HCHECK((p[0] & 0x70) == 0 && (p[1] & 0x80) == 0);
    size_t h = 2;
    uint64_t n = p[1] & 0x7F;
    if (n == 126) {
        if (left < 4)
            return false;
        n = (uint64_t)p[2] << 8 | p[3];
        h = 4;
    } else if (n == 127) {
        if (left < 10)
            return false;
        n = 0;
        for (int i = 0; i < 8; i++)
            n = n << 8 | p[2 + i];
        h = 10;
    }
    if (left - h < n)
        return false;
    *opcode = p[0] & 0x0F;
    *fin = (p[0] & 0x80) != 0;
    *payload = p + h;
    *len = (size_t)n;
    *pos += h + (size_t)n;
    return true;
}

/* Where the frames start: after the 101 head; 0 when there is none. */
static size_t harness_frames_start(void)
{
    static const char ok[] = "HTTP/1.1 101 ";
    if (h_out_len < sizeof ok - 1 || memcmp(h_out, ok, sizeof ok - 1) != 0)
        return 0;
    for (size_t i = 0; i + 4 <= h_out_len; i++)
        if (memcmp(h_out + i, "\r\n\r\n", 4) == 0)
            return i + 4;
    return 0;
}

/* The harness's own session: a user_message from fuzz-user, its id taken
 * from the ack. */
static void harness_make_session(void)
{
    harness_connect();
    char req[2048];
    size_t n = harness_upgrade(req, sizeof req, h_user_token, false);
    HCHECK(harness_write((const uint8_t *)req, n));
    /* A new id each time: the same one would find the same session. */
    static unsigned made;
    char msg[160];
    int mlen = snprintf(msg, sizeof msg,
                        "{\"type\":\"user_message\",\"id\":\"harness-setup-%u-%d\","
                        "\"content\":\"the fuzz harness's session\"}",
                        made++, (int)getpid());
    uint8_t f[256];
    static const uint8_t mask[4] = {1, 2, 3, 4};
    n = harness_frame(f, 1, true, (const uint8_t *)msg, (size_t)mlen, mask);
    HCHECK(harness_write(f, n));
    harness_settle(false);
    size_t pos = harness_frames_start();
    HCHECK(pos > 0);
    unsigned op;
    bool fin;
    const uint8_t *pl;
    size_t len;
    while (harness_next_frame(&pos, &op, &fin, &pl, &len)) {
        json_t *o = json_loadb((const char *)pl, len, 0, NULL);
        const char *t = json_string_value(json_object_get(o, "type"));
        if (t && strcmp(t, "ack") == 0)
            snprintf(h_sid, sizeof h_sid, "%s",
                     json_string_value(json_object_get(o, "session_id")));
        json_decref(o);
    }
    HCHECK(strlen(h_sid) == STORE_ID_LEN);
    harness_finish();
    h_out_len = 0;
}

static void harness_cleanup(void)
{
    char p[160];
    unlink(h_db);
    snprintf(p, sizeof p, "%s-wal", h_db);
    unlink(p);
    snprintf(p, sizeof p, "%s-shm", h_db);
    unlink(p);
}

/* A run that failed (abort) left its database behind: remove those of
 * processes that are gone. */
static void harness_remove_stale(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        int pid;
        char rest[16] = "";
        if (sscanf(e->d_name, "chatd-fuzz-%d.db%15s", &pid, rest) >= 1 && pid > 0 &&
            kill(pid, 0) != 0 && errno == ESRCH) {
            char p[512];
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            unlink(p);
        }
    }
    closedir(d);
}

static void harness_init(void)
{
    signal(SIGPIPE, SIG_IGN);
    json_object_seed(1); /* the same hash order every run */
    snprintf(h_db, sizeof h_db, "%s/chatd-fuzz-%d.db",
             access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp", (int)getpid());
    harness_remove_stale(access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    harness_cleanup();
    atexit(harness_cleanup);
    /* config_load wipes the secret in argv, as it does chatd's own. */
    static char secret[] = HARNESS_SECRET;
    /* clang-format off */
    char *argv[] = {"chatd",
                    "--listen", "127.0.0.1:0",
                    "--workers", "1",
                    "--jwt-secret", secret,
                    "--db", h_db,
                    "--rate-limit", "1000000000",
                    "--input-rate", "1000000000",
                    "--input-byte-rate", "1099511627776",
                    "--max-content-bytes", "2048",
                    "--max-message-bytes", "8192",
                    "--log-level", "error",
                    NULL};
    /* clang-format on */
    char err[512];
    FILE *devnull = fopen("/dev/null", "w");
    HCHECK(devnull);
    int rc = config_load(&h_cfg, (int)(sizeof argv / sizeof argv[0]) - 1, argv, NULL, devnull, err,
                         sizeof err);
    fclose(devnull);
    if (rc != 0) {
        fprintf(stderr, "harness config: %s\n", err);
        abort();
    }
    log_set_level(h_cfg.log_level);
    HCHECK(hub_init(&h_hub, &h_cfg, &h_srv, NULL, err, sizeof err) == 0);
    h_srv.ops = &routes_net_ops;
    h_srv.app = &h_hub;
    HCHECK(server_listen(&h_srv, &h_cfg, err, sizeof err) == 0);
    HCHECK(chat_init(&h_chat, &h_hub, 1, err, sizeof err) == 0);
    struct bus_handler bh = {.deliver = chat_bus_deliver,
                             .fill = chat_bus_fill,
                             .kick = chat_bus_kick,
                             .stop = chat_bus_stop,
                             .app = h_chat};
    HCHECK(bus_local_open(&h_bus, &bh) == 0);
    chat_set_bus(h_chat, h_bus);
    static const unsigned char key[32] = "fuzz-key-0123456789abcdefghijklm";
    struct store_options so = {
        .engine = "sqlite", .path = h_db, .key = key, .on_batch = harness_on_batch, .arg = h_chat};
    if (store_open(&h_store, &so, err, sizeof err) != 0) {
        fprintf(stderr, "harness store: %s\n", err);
        abort();
    }
    chat_set_store(h_chat, h_store);
    h_hub.router_ops = &chat_router_ops;
    h_hub.router = h_chat;
    HCHECK(server_fuzz_start(&h_srv, err, sizeof err) == 0);
    h_w = &h_srv.workers[0];
    h_out = malloc(HARNESS_OUT_MAX);
    HCHECK(h_out);
    h_user_token = harness_token("fuzz-user", "[\"user\"]");
    h_admin_token = harness_token("fuzz-admin", "[\"user\",\"admin\"]");
    harness_make_session();
}

/* Both whole-worker drivers start the same chatd once. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    harness_init();
    return 0;
}

#endif
