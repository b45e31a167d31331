/*
 * DESIGN: chatd-bench is chatd's own load generator.
 *
 * One process, --threads worker threads, each with its own epoll loop and a
 * fixed share of the connections (connection i belongs to worker i % threads;
 * connections never move). Sockets are non-blocking; every connection speaks
 * a minimal WebSocket client written here: the HTTP upgrade, a parser for the
 * server's (unmasked) frames and masked client frames built with
 * ws_frame_header_masked/ws_mask from the project library. Output is appended
 * to a per-connection buffer and written once per epoll batch (a dirty list),
 * so one read that brings several answers costs one write.
 *
 * A run has four phases, driven by the main thread through g_phase:
 *   SETUP    connections open (at most --concurrency handshakes in flight per
 *            worker) and do their chat setup (create a session, admin_join);
 *            bounded by --setup-timeout;
 *   WARMUP   traffic runs, nothing is counted (--warmup seconds);
 *   MEASURE  traffic runs and is counted; the server's CPU time is read
 *            from its process CPU clock at both ends (--duration seconds);
 *   DONE     workers close everything (RST, so no TIME_WAIT eats ports).
 * So every run stops by itself after at most setup-timeout + warmup +
 * duration. Failed connections are counted, never retried, except in
 * `connect` mode, where each slot reconnects after a 10 ms pause.
 *
 * Latency: every message carries its send time, a CLOCK_MONOTONIC ns counter
 * written as 16 hex digits: at the start of the payload (echo, plain and
 * Socket.IO fan-out) or inside the chat message's client "id", which the
 * server echoes in the ack and in every delivered event. Latencies go into a
 * log-bucket histogram (32 sub-buckets per power of two, ~3% resolution),
 * one per worker, merged at the end.
 *
 * Server JSON is not parsed with a full parser: scan_top() picks the few
 * top-level members needed (type, id, session_id, code and, for the
 * assistant's ai_response, stream_id, offset, delta, done, content,
 * metadata), skipping nested values, so the generator stays cheaper than
 * the server it loads.
 *
 * `assistant` mode is not a steady load but one burst: every connection
 * (one user each) sends one user_message in a new session at the same
 * moment, and the run lasts until every answer has ended (or --duration
 * has passed). Each connection places the deltas it receives by offset and
 * checks the result against the final answer's content, and that against
 * the text the benchmark's provider (chatd-fake-provider, fake_answer.h)
 * streamed for the seed written in the question.
 *
 * `cross` mode drives several nodes of one cluster: a user's sending
 * devices connect to --port (node A) and behave as in `chat` (--rate paces
 * them the same way); the user has --remote-devices more devices on each
 * --remote-ports node (B, C...), which send nothing. The deliveries those
 * receive are the operations, timed like chat's from the send time in the
 * client id: the generator is one process with one clock, so no clocks
 * need agreeing. With a list of --server-pid (the nodes) the server
 * figures are sums; --backend-pids (Redis, PostgreSQL's postmaster, whose
 * backends are found among its children when the measured interval
 * starts) are reported apart.
 *
 * Usage errors exit 2; run-time failures exit 1; a run exits 0 even when some
 * connections failed (they are reported).
 */
#include "auth/jwt.h"
#include "fake_answer.h"
#include "ws/frame.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#define EXIT_USAGE 2
#define MAX_FRAME (64u << 20)      /* a server frame larger than this is a protocol error */
#define RBUF_INIT 4096u
#define RBUF_MAX (256u * 1024)
#define MAX_EVENTS 256
#define RETRY_NS 10000000ull       /* connect mode: pause after a failed attempt */

/* ---- options ------------------------------------------------------------ */

enum mode { M_ECHO, M_CHAT, M_FANOUT, M_IDLE, M_CONNECT, M_ASSISTANT, M_CROSS };
enum proto { P_CHATD, P_PLAIN, P_SOCKETIO };

static const char *const mode_names[] = {"echo", "chat", "fanout", "idle", "connect", "assistant", "cross"};
static const char *const proto_names[] = {"chatd", "plain", "socketio"};

#define MAX_REMOTE 8      /* cross: --remote-ports */
#define MAX_PIDS 128      /* --server-pid and --backend-pids, children included */

/* A list of process ids given as PID[,PID...]. */
struct pidlist {
    unsigned n;
    int pid[MAX_PIDS];
};

struct opts {
    enum mode mode;
    enum proto proto;
    const char *host;
    unsigned port;
    const char *path;          /* NULL: chosen by mode and proto */
    const char *label;         /* free text copied into the JSON line */
    const char *subprotocol;   /* Sec-WebSocket-Protocol, NULL for none */
    const char *secret;
    unsigned connections;      /* 0: mode default */
    unsigned inflight;         /* 0: mode default */
    unsigned rate;             /* chat, cross: messages/s sent in all (0: as fast as acks allow) */
    unsigned size;
    unsigned threads;
    unsigned users, devices, user_offset;
    unsigned watchers, max_devices;
    unsigned concurrency;
    double duration, warmup, setup_timeout;
    struct pidlist server;     /* empty: no server figures; several: summed (a cluster's nodes) */
    struct pidlist backend;    /* Redis, PostgreSQL...: CPU reported apart, children included */
    unsigned remote_ports[MAX_REMOTE]; /* cross: where the receiving devices connect */
    unsigned nremote;
    unsigned remote_devices;   /* cross: receiving devices per user on each remote node */
    int provider_pid;          /* assistant: the provider's CPU is reported too */
    unsigned answer_bytes;     /* assistant: the provider's answer size, 0: unknown */
    unsigned delta_bytes;      /* assistant: the provider's delta size, 0: unknown */
    bool json;
};

static struct opts o = {
    .mode = M_ECHO, .proto = P_CHATD, .host = "127.0.0.1", .port = 8080, .size = 64,
    .threads = 1, .users = 50, .devices = 2, .watchers = 1000, .max_devices = 10,
    .concurrency = 256, .duration = 10, .warmup = 2, .setup_timeout = 30, .remote_devices = 1,
};

static const char usage[] =
    "usage: chatd-bench MODE [options]\n"
    "Load generator for chatd (and other WebSocket servers). MODE is one of:\n"
    "  echo     --connections clients each keep --inflight messages of --size bytes\n"
    "           in flight against a plain echo endpoint: messages/s, round-trip latency\n"
    "  chat     --users x --devices chatd clients; every device creates a session and\n"
    "           keeps --inflight user_messages in flight in it: acknowledged messages/s,\n"
    "           send->ack and send->delivery latency\n"
    "  fanout   --watchers connections watch one session; one device sends: deliveries/s\n"
    "           and send->delivery latency\n"
    "  idle     --connections authenticated connections held open for --duration: the\n"
    "           server's RSS growth per connection (needs --server-pid), measured from\n"
    "           after one warm-up connection so that first-use costs are not counted\n"
    "  connect  --connections slots each open, authenticate and drop a connection in a\n"
    "           loop: handshakes/s and handshake latency\n"
    "  assistant --users connections (one user each) each send one user_message in a new\n"
    "           session at once and wait for the assistant's answer: ai_response deltas/s,\n"
    "           server CPU per delta, answers completed and time to the last one, answers\n"
    "           streaming at once (first to last delta) at the peak; every\n"
    "           answer is checked (deltas placed by offset == final content == the text\n"
    "           chatd-fake-provider streamed, when --answer-bytes is given)\n"
    "  cross    several chatd nodes as one (a cluster): every user has --devices sending\n"
    "           devices on --port, each keeping --inflight user_messages in flight in a\n"
    "           session of its own, and --remote-devices devices on each --remote-ports\n"
    "           node that only receive: deliveries on the other nodes per second (the\n"
    "           ops) and send->delivery latency there, beside acks and local deliveries\n"
    "\n"
    "Target:\n"
    "  --host H             server address (default 127.0.0.1)\n"
    "  --port P             server port (default 8080)\n"
    "  --remote-ports LIST  cross: comma-separated ports of the other nodes (same --host),\n"
    "                       at most 8\n"
    "  --remote-devices D   cross: receiving devices per user on each --remote-ports node\n"
    "                       (default 1, at most 64): every message is delivered D x (remote\n"
    "                       ports) times there. The server counts all of a user's devices,\n"
    "                       on every node, against its --max-devices\n"
    "  --path P             request path (default: /echo for echo, /ws for chatd,\n"
    "                       / for plain, /socket.io/?EIO=4&transport=websocket for socketio)\n"
    "  --proto P            chatd (JSON chat protocol, JWT in Authorization), plain (raw text\n"
    "                       broadcast: every message sent is relayed to every connection) or\n"
    "                       socketio (Engine.IO v4 / Socket.IO v5 over WebSocket; the server\n"
    "                       relays event \"msg\" to every socket). Default chatd; echo mode\n"
    "                       ignores it\n"
    "  --subprotocol S      send Sec-WebSocket-Protocol: S\n"
    "  --secret S           HS256 secret to mint tokens with (chatd: sub user-N or admin-N,\n"
    "                       roles [\"user\"] or [\"admin\"], exp in 1 h)\n"
    "\n"
    "Load:\n"
    "  --connections N      echo/idle: connections (default 100 echo, 1000 idle);\n"
    "                       connect: concurrent handshake loops (default 50)\n"
    "  --inflight N         echo: messages in flight per connection (default 8); chat and\n"
    "                       cross: unacked messages per sending device (default 1); fanout:\n"
    "                       messages sent and not yet delivered to every watcher (default 4)\n"
    "  --rate N             chat, cross: send N messages a second in all, spread evenly over\n"
    "                       the sending devices (each still at most --inflight unacked):\n"
    "                       latency at a given load rather than at the most the server\n"
    "                       takes (default: no pacing)\n"
    "  --size N             echo/plain payload bytes, chat content bytes (default 64; echo and\n"
    "                       plain fanout need at least 16)\n"
    "  --users U            chat, cross: users (default 50); assistant: users, one\n"
    "                       connection and one question each (default 500)\n"
    "  --answer-bytes N     assistant: chatd-fake-provider's --answer-bytes; answers are\n"
    "                       then checked against its text too (default 0: not checked)\n"
    "  --delta-bytes N      assistant: chatd-fake-provider's --delta-bytes (with\n"
    "                       --answer-bytes): the provider's deltas are counted, and the\n"
    "                       server's CPU reported per provider delta too (chatd sends the\n"
    "                       deltas it reads together as one piece)\n"
    "  --devices D          chat: devices per user (default 2); cross: sending devices per\n"
    "                       user (default 1); idle/connect: connections per user (default 1)\n"
    "  --user-offset N      number users from N (two generators against one server)\n"
    "  --watchers N         fanout: connections on the session, the sender included (default\n"
    "                       1000): 1 sender + half of the rest owner devices (at most\n"
    "                       --max-devices - 1) + admins that admin_join\n"
    "  --max-devices N      the server's --max-devices (default 10)\n"
    "  --threads N          worker threads, each with its own epoll loop (default 1)\n"
    "  --concurrency N      handshakes in progress at once per thread while connecting\n"
    "                       (default 256)\n"
    "\n"
    "Time (seconds, fractions allowed):\n"
    "  --warmup S           traffic before measuring (default 2; idle: settle time)\n"
    "  --duration S         measured interval (default 10; idle: how long to hold;\n"
    "                       assistant: the longest wait for the answers, default 60)\n"
    "  --setup-timeout S    longest wait for the connections to be ready (default 30)\n"
    "\n"
    "Report:\n"
    "  --server-pid PID     read the server's CPU time (its process CPU clock, all threads) and RSS\n"
    "                       (/proc/PID/status) around the measured interval; PID,PID,... for\n"
    "                       several servers (a cluster's nodes): the sums\n"
    "  --backend-pids LIST  processes the server relies on (Redis, PostgreSQL's postmaster),\n"
    "                       comma-separated: their CPU time over the measured interval, and\n"
    "                       that of their children found when it starts, reported apart\n"
    "  --provider-pid PID   assistant: report the provider's CPU time over the run too\n"
    "  --label TEXT         copied into the report (e.g. the server's name)\n"
    "  --json               print one JSON line on stdout (the human summary goes to stderr)\n"
    "  --help               show this help and exit\n"
    "\n"
    "The generator raises its open-file soft limit to the hard limit; each connection\n"
    "holds one descriptor. Bad options exit 2.\n";

/* ---- time, random ------------------------------------------------------- */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_s(double s)
{
    if (s <= 0)
        return;
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static const char hexdig[] = "0123456789abcdef";

/* Write v as exactly 16 lower-case hex digits. */
static void hex16(char *out, uint64_t v)
{
    for (int i = 15; i >= 0; i--) {
        out[i] = hexdig[v & 15];
        v >>= 4;
    }
}

/* Parse exactly 16 hex digits; 0 on success, -EINVAL otherwise. */
static int unhex16(const char *p, size_t n, uint64_t *out)
{
    if (n < 16)
        return -EINVAL;
    uint64_t v = 0;
    for (int i = 0; i < 16; i++) {
        char ch = p[i];
        unsigned d;
        if (ch >= '0' && ch <= '9')
            d = (unsigned)(ch - '0');
        else if (ch >= 'a' && ch <= 'f')
            d = (unsigned)(ch - 'a' + 10);
        else
            return -EINVAL;
        v = v << 4 | d;
    }
    *out = v;
    return 0;
}

/* ---- histogram ---------------------------------------------------------- */

/* HDR-like: values below 32 have a bucket each; above, each power of two is
 * split into 32 equal sub-buckets, so a reported value is within ~3%. */
#define HIST_SUB_BITS 5
#define HIST_SUB (1u << HIST_SUB_BITS)
#define HIST_BUCKETS ((64 - HIST_SUB_BITS + 1) * HIST_SUB)

struct hist {
    uint64_t count;
    uint64_t max;
    uint64_t b[HIST_BUCKETS];
};

static unsigned hist_index(uint64_t v)
{
    if (v < HIST_SUB)
        return (unsigned)v;
    unsigned e = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = e - HIST_SUB_BITS;
    return (shift + 1) * HIST_SUB + (unsigned)((v >> shift) & (HIST_SUB - 1));
}

static void hist_add(struct hist *h, uint64_t v)
{
    h->b[hist_index(v)]++;
    h->count++;
    if (v > h->max)
        h->max = v;
}

static void hist_merge(struct hist *into, const struct hist *from)
{
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        into->b[i] += from->b[i];
    into->count += from->count;
    if (from->max > into->max)
        into->max = from->max;
}

/* The value at quantile q (0..1): the middle of the bucket holding it. */
static uint64_t hist_quantile(const struct hist *h, double q)
{
    if (h->count == 0)
        return 0;
    uint64_t target = (uint64_t)(q * (double)h->count + 0.999999);
    if (target < 1)
        target = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += h->b[i];
        if (seen >= target) {
            if (i < HIST_SUB)
                return i;
            unsigned shift = i / HIST_SUB - 1;
            uint64_t low = (uint64_t)(HIST_SUB + i % HIST_SUB) << shift;
            uint64_t mid = low + ((1ull << shift) >> 1);
            return mid > h->max ? h->max : mid;
        }
    }
    return h->max;
}

/* ---- minimal JSON scanning ---------------------------------------------- */

struct jtop {
    const char *type, *id, *sid, *code;
    size_t type_len, id_len, sid_len, code_len;
    /* ai_response: string bodies (escapes kept), raw number and literal,
     * the metadata object with its braces */
    const char *stream_id, *delta, *content, *offset, *done, *meta;
    size_t stream_id_len, delta_len, content_len, meta_len;
};

static size_t skip_ws(const char *p, size_t n, size_t i)
{
    while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r'))
        i++;
    return i;
}

/* Index just past the closing quote of the string whose body starts at i,
 * or n + 1 when it does not close. */
static size_t skip_string(const char *p, size_t n, size_t i)
{
    size_t from = i;
    while (i < n) {
        const char *q = memchr(p + i, '"', n - i);
        if (q == NULL)
            break;
        size_t j = (size_t)(q - p), bs = 0;
        while (j - bs > from && p[j - bs - 1] == '\\')
            bs++;
        if (bs % 2 == 0)
            return j + 1; /* not escaped */
        i = j + 1;
    }
    return n + 1;
}

/* Scan the top level of one JSON object and pick the string members type,
 * id, session_id and code (escapes are not decoded: chatd never needs them
 * in these). Nested values are skipped. 0, or -EINVAL when malformed. */
static int scan_top(const char *p, size_t n, struct jtop *t)
{
    memset(t, 0, sizeof *t);
    size_t i = skip_ws(p, n, 0);
    if (i >= n || p[i] != '{')
        return -EINVAL;
    i++;
    for (;;) {
        i = skip_ws(p, n, i);
        if (i >= n)
            return -EINVAL;
        if (p[i] == '}')
            return 0;
        if (p[i] == ',') {
            i++;
            continue;
        }
        if (p[i] != '"')
            return -EINVAL;
        size_t ks = i + 1;
        i = skip_string(p, n, ks);
        if (i > n)
            return -EINVAL;
        size_t kl = i - 1 - ks;
        i = skip_ws(p, n, i);
        if (i >= n || p[i] != ':')
            return -EINVAL;
        i = skip_ws(p, n, i + 1);
        if (i >= n)
            return -EINVAL;
        if (p[i] == '"') {
            size_t vs = i + 1;
            i = skip_string(p, n, vs);
            if (i > n)
                return -EINVAL;
            size_t vl = i - 1 - vs;
            const char *k = p + ks, *v = p + vs;
            if (kl == 4 && memcmp(k, "type", 4) == 0)
                t->type = v, t->type_len = vl;
            else if (kl == 2 && memcmp(k, "id", 2) == 0)
                t->id = v, t->id_len = vl;
            else if (kl == 10 && memcmp(k, "session_id", 10) == 0)
                t->sid = v, t->sid_len = vl;
            else if (kl == 4 && memcmp(k, "code", 4) == 0)
                t->code = v, t->code_len = vl;
            else if (kl == 5 && memcmp(k, "delta", 5) == 0)
                t->delta = v, t->delta_len = vl;
            else if (kl == 7 && memcmp(k, "content", 7) == 0)
                t->content = v, t->content_len = vl;
            else if (kl == 9 && memcmp(k, "stream_id", 9) == 0)
                t->stream_id = v, t->stream_id_len = vl;
        } else if (p[i] == '{' || p[i] == '[') {
            int depth = 0;
            size_t vs = i;
            for (; i < n; i++) {
                char ch = p[i];
                if (ch == '"') {
                    i = skip_string(p, n, i + 1) - 1;
                } else if (ch == '{' || ch == '[') {
                    depth++;
                } else if (ch == '}' || ch == ']') {
                    if (--depth == 0) {
                        i++;
                        break;
                    }
                }
            }
            if (depth != 0)
                return -EINVAL;
            if (kl == 8 && memcmp(p + ks, "metadata", 8) == 0)
                t->meta = p + vs, t->meta_len = i - vs;
        } else {
            const char *v = p + i;
            while (i < n && p[i] != ',' && p[i] != '}')
                i++;
            if (kl == 6 && memcmp(p + ks, "offset", 6) == 0)
                t->offset = v;
            else if (kl == 4 && memcmp(p + ks, "done", 4) == 0)
                t->done = v;
        }
    }
}

static bool str_is(const char *p, size_t n, const char *lit)
{
    size_t l = strlen(lit);
    return p != NULL && n == l && memcmp(p, lit, l) == 0;
}

static unsigned hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return (unsigned)(ch - '0');
    if (ch >= 'a' && ch <= 'f')
        return (unsigned)(ch - 'a' + 10);
    if (ch >= 'A' && ch <= 'F')
        return (unsigned)(ch - 'A' + 10);
    return 16;
}

static int buf_reserve(uint8_t **buf, uint32_t *cap, uint32_t need);

/* Decode the body of a JSON string (p[0..n), escapes included, as
 * scan_top gives it) to UTF-8 in *buf, grown as needed: its length, or
 * -EINVAL (a bad escape or a lone surrogate) or -ENOMEM. */
static int64_t json_unescape(const char *p, size_t n, uint8_t **buf, uint32_t *cap)
{
    if (buf_reserve(buf, cap, (uint32_t)n + 1) != 0)
        return -ENOMEM;
    uint8_t *d = *buf;
    size_t i = 0;
    while (i < n) {
        const char *bs = memchr(p + i, '\\', n - i);
        size_t run = bs ? (size_t)(bs - (p + i)) : n - i;
        memcpy(d, p + i, run);
        d += run;
        i += run;
        if (i >= n)
            break;
        if (i + 1 >= n)
            return -EINVAL;
        char e = p[i + 1];
        i += 2;
        switch (e) {
        case '"': *d++ = '"'; break;
        case '\\': *d++ = '\\'; break;
        case '/': *d++ = '/'; break;
        case 'b': *d++ = '\b'; break;
        case 'f': *d++ = '\f'; break;
        case 'n': *d++ = '\n'; break;
        case 'r': *d++ = '\r'; break;
        case 't': *d++ = '\t'; break;
        case 'u': {
            /* \uXXXX is at most 3 bytes of UTF-8 for its 6, a surrogate
             * pair 4 for 12: the output never outgrows the input. */
            unsigned cp = 0;
            for (int k = 0; k < 4; k++) {
                unsigned h = i + (size_t)k < n ? hexval(p[i + (size_t)k]) : 16;
                if (h > 15)
                    return -EINVAL;
                cp = cp << 4 | h;
            }
            i += 4;
            if (cp >= 0xdc00 && cp <= 0xdfff)
                return -EINVAL;
            if (cp >= 0xd800 && cp <= 0xdbff) {
                unsigned lo = 0;
                if (i + 6 > n || p[i] != '\\' || p[i + 1] != 'u')
                    return -EINVAL;
                for (int k = 0; k < 4; k++) {
                    unsigned h = hexval(p[i + 2 + (size_t)k]);
                    if (h > 15)
                        return -EINVAL;
                    lo = lo << 4 | h;
                }
                if (lo < 0xdc00 || lo > 0xdfff)
                    return -EINVAL;
                i += 6;
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            }
            if (cp < 0x80) {
                *d++ = (uint8_t)cp;
            } else if (cp < 0x800) {
                *d++ = (uint8_t)(0xc0 | cp >> 6);
                *d++ = (uint8_t)(0x80 | (cp & 0x3f));
            } else if (cp < 0x10000) {
                *d++ = (uint8_t)(0xe0 | cp >> 12);
                *d++ = (uint8_t)(0x80 | (cp >> 6 & 0x3f));
                *d++ = (uint8_t)(0x80 | (cp & 0x3f));
            } else {
                *d++ = (uint8_t)(0xf0 | cp >> 18);
                *d++ = (uint8_t)(0x80 | (cp >> 12 & 0x3f));
                *d++ = (uint8_t)(0x80 | (cp >> 6 & 0x3f));
                *d++ = (uint8_t)(0x80 | (cp & 0x3f));
            }
            break;
        }
        default:
            return -EINVAL;
        }
    }
    return d - *buf;
}

/* ---- /proc -------------------------------------------------------------- */

/* The CPU time of pid (every thread's, live and exited) in microseconds;
 * 0 or a negative errno. The kernel keeps it in nanoseconds and gives it
 * whole through the process's CPU clock; /proc/PID/stat rounds it to clock
 * ticks (10 ms), up to 7% of an assistant burst of 0.3 s. The ticks are
 * the fallback where the clock cannot be read. */
static int proc_cpu_us(int pid, uint64_t *out)
{
    clockid_t clk;
    struct timespec ts;
    if (clock_getcpuclockid((pid_t)pid, &clk) == 0 && clock_gettime(clk, &ts) == 0) {
        *out = (uint64_t)ts.tv_sec * 1000000ull + (uint64_t)ts.tv_nsec / 1000u;
        return 0;
    }
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -EIO;
    buf[n] = '\0';
    char *p = strrchr(buf, ')');   /* comm may hold spaces and parentheses */
    if (p == NULL)
        return -EIO;
    p++;
    unsigned long long utime = 0, stime = 0;
    /* After ")": field 3 (state) ... field 14 utime, field 15 stime. */
    for (int field = 3; field <= 15; field++) {
        while (*p == ' ')
            p++;
        if (*p == '\0')
            return -EIO;
        if (field == 14)
            utime = strtoull(p, NULL, 10);
        else if (field == 15)
            stime = strtoull(p, NULL, 10);
        while (*p != ' ' && *p != '\0')
            p++;
    }
    long hz = sysconf(_SC_CLK_TCK);
    if (hz <= 0)
        hz = 100;
    *out = (uint64_t)((utime + stime) * 1000000ull / (unsigned long long)hz);
    return 0;
}

/* VmRSS of pid in kB, or -1. */
static long proc_rss_kb(int pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    long kb = -1;
    while (fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kb = strtol(line + 6, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kb;
}

/* Busy and total jiffies of the whole machine (first line of /proc/stat);
 * 0 or -EIO. Busy counts steal: time the VM did not get is lost too. */
static int proc_machine(uint64_t *busy, uint64_t *total)
{
    FILE *f = fopen("/proc/stat", "r");
    if (f == NULL)
        return -EIO;
    unsigned long long v[8] = {0};
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
                   &v[6], &v[7]);
    fclose(f);
    if (n < 4)
        return -EIO;
    *busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    *total = *busy + v[3] + v[4];
    return 0;
}

static uint64_t self_cpu_us(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000ull +
           (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

/* CPU time summed over the list (a cluster's nodes); 0 or the first
 * error. */
static int pids_cpu_us(const struct pidlist *l, uint64_t *out)
{
    uint64_t sum = 0;
    for (unsigned i = 0; i < l->n; i++) {
        uint64_t v = 0;
        int rc = proc_cpu_us(l->pid[i], &v);
        if (rc != 0)
            return rc;
        sum += v;
    }
    *out = sum;
    return 0;
}

/* VmRSS summed over the list in kB, or -1 when none could be read. */
static long pids_rss_kb(const struct pidlist *l)
{
    long sum = -1;
    for (unsigned i = 0; i < l->n; i++) {
        long r = proc_rss_kb(l->pid[i]);
        if (r >= 0)
            sum = sum < 0 ? r : sum + r;
    }
    return sum;
}

/* The parent of pid, or -1. */
static int proc_ppid(int pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    int ppid = -1;
    /* After ")": the state, then the parent. */
    if (p == NULL || sscanf(p + 1, " %*c %d", &ppid) != 1)
        return -1;
    return ppid;
}

/* Append the children of the processes in l (one level: PostgreSQL's
 * backends and helpers under its postmaster), as many as fit. */
static void pids_add_children(struct pidlist *l)
{
    DIR *d = opendir("/proc");
    if (d == NULL)
        return;
    unsigned parents = l->n;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && l->n < MAX_PIDS) {
        if (e->d_name[0] < '1' || e->d_name[0] > '9')
            continue;
        int pid = atoi(e->d_name), ppid = proc_ppid(pid);
        for (unsigned i = 0; i < parents; i++) {
            if (ppid == l->pid[i]) {
                l->pid[l->n++] = pid;
                break;
            }
        }
    }
    closedir(d);
}

/* Each process's CPU time; UINT64_MAX for one that cannot be read
 * (it exited). */
static void pids_cpu_each(const struct pidlist *l, uint64_t *each)
{
    for (unsigned i = 0; i < l->n; i++) {
        if (proc_cpu_us(l->pid[i], &each[i]) != 0)
            each[i] = UINT64_MAX;
    }
}

/* The CPU time used between two pids_cpu_each by the processes read at
 * both ends. */
static uint64_t pids_cpu_delta(unsigned n, const uint64_t *before, const uint64_t *after)
{
    uint64_t sum = 0;
    for (unsigned i = 0; i < n; i++) {
        if (before[i] != UINT64_MAX && after[i] != UINT64_MAX && after[i] >= before[i])
            sum += after[i] - before[i];
    }
    return sum;
}

/* ---- run state ---------------------------------------------------------- */

enum phase { PH_SETUP, PH_WARMUP, PH_MEASURE, PH_DONE };

/* What a connection does once open. */
enum role {
    R_ECHO,     /* echo: keep inflight messages in flight */
    R_DEVICE,   /* chat: create a session, then keep inflight messages in it */
    R_SENDER,   /* fanout: create the session, then send under the delivery window */
    R_WATCHER,  /* fanout: owner device (chatd) or any plain/socketio connection */
    R_ADMIN,    /* fanout: admin_join the session */
    R_IDLE,     /* idle: authenticate and stay */
    R_CONNECT,  /* connect: authenticate, drop, repeat */
    R_ASKER,    /* assistant: ask once in a new session, check the answer */
    R_REMOTE,   /* cross: a device on another node that only receives */
};

enum cstate { CS_IDLE, CS_CONNECTING, CS_HANDSHAKE, CS_OPEN, CS_DEAD };

struct worker;

struct conn {
    struct worker *w;          /* borrowed: the owning worker */
    int fd;
    uint32_t idx;              /* global index, names the user/device */
    uint8_t state;             /* enum cstate */
    uint8_t role;              /* enum role */
    bool ready;                /* setup finished: counted in g_ready */
    bool want_out;             /* EPOLLOUT is registered */
    bool dirty;                /* on the worker's dirty list */
    bool in_frag;              /* a fragmented message is being gathered */
    uint8_t frag_op;
    uint8_t session_len;
    uint8_t target;            /* 0: --port; 1..: --remote-ports (cross) */
    uint32_t gen;              /* bumped at every close: a reused slot is a new connection */
    const char *token;         /* borrowed from g_tokens; NULL for no auth */
    uint8_t *rbuf;             /* owned: bytes read, not yet parsed */
    uint32_t rlen, rcap;
    uint8_t *wbuf;             /* owned: bytes to write */
    uint32_t wlen, woff, wcap;
    uint8_t *mbuf;             /* owned: fragments of one message */
    uint32_t mlen, mcap;
    uint32_t inflight;         /* messages sent and not yet answered */
    uint64_t nsent;            /* traffic messages sent (fanout window) */
    uint64_t t_start;          /* when the current connection attempt began */
    uint64_t retry_at;         /* connect mode: next attempt not before */
    char session[80];          /* chatd session id (chat, fanout sender) */
};

struct worker {
    int id;
    int ep;                    /* owned: epoll instance */
    pthread_t th;
    struct conn *conns;        /* owned: this worker's connections, by rising idx */
    uint32_t n;
    uint32_t next_open;        /* setup pacing: next connection to open */
    uint32_t pending;          /* handshakes in progress */
    int phase_seen;
    bool started;              /* traffic was kicked off */
    uint64_t pace_t0;          /* --rate: when sending began (ns) */
    uint64_t paced;            /* --rate: messages this worker sent since pace_t0 */
    uint32_t pace_next;        /* --rate: the connection to offer the next send */
    uint32_t nsenders;         /* --rate: sending devices among conns */
    uint64_t rng;
    struct conn **dirty;       /* owned: connections with output to flush */
    uint32_t ndirty;
    char *scratch;             /* owned: message assembly */
    size_t scratch_cap;
    _Atomic uint64_t deliv_all; /* traffic deliveries in any phase (fanout window) */
    uint64_t fan_skipped;      /* fanout sender: messages refused by the server */
    /* counted during MEASURE only, read by main after join */
    uint64_t ops, sent, acks, deliveries, handshakes;
    uint64_t op_bytes; /* fan-out and cross: the delivered messages' payload bytes */
    struct hist h_main, h_aux;
    struct hist h_local;       /* cross: send->delivery on the sender's own node */
    /* counted always */
    uint64_t connect_errors, http_errors, closed, proto_errors, errors, rate_limited;
    int last_http_status;
    int last_errno;
    /* assistant, counted always (the whole run is measured) */
    uint64_t a_sent, a_deltas, a_delta_bytes, a_provider_deltas, a_loading, a_done, a_ok, a_mismatch, a_unexpected,
        a_partial, a_failed, a_gaps, a_dup_bytes, a_conflicts, a_snapshots, a_wrong_session,
        a_wrong_stream, a_late;
    uint64_t a_err_assistant, a_err_timeout, a_err_rate, a_err_unavailable, a_err_other;
    uint64_t a_last_ns;        /* when this worker's last answer ended */
    uint8_t *ubuf;             /* owned: a delta or a content, unescaped */
    uint32_t ucap;
    char *expect;              /* owned: the provider's text for one seed */
};

/* assistant: one question and its answer, per connection index. */
enum ask_state { ASK_IDLE = 0, ASK_WAIT, ASK_ENDED };

struct ask {
    uint8_t *text;             /* owned: the deltas placed by offset */
    uint32_t len, cap;
    uint32_t deltas;
    uint8_t state;             /* enum ask_state */
    uint8_t stream_id_len;
    char stream_id[30];
    uint64_t seed;             /* written in the question; names the provider's text */
    uint64_t t_sent;
    uint64_t t_first, t_last;  /* first and last delta received */
    uint64_t t_final;          /* the final answer received */
};

static _Atomic int g_phase = PH_SETUP;
static _Atomic uint32_t g_ready, g_failed;
static _Atomic int g_session_ready;
static char g_session[80];
static size_t g_session_len;
static uint32_t g_fan_expect = 1;   /* deliveries per fan-out message */
static struct worker *g_workers;
static struct sockaddr_storage g_addr[1 + MAX_REMOTE]; /* by conn target */
static socklen_t g_addrlen[1 + MAX_REMOTE];
static unsigned g_port[1 + MAX_REMOTE];
static char **g_tokens;             /* per connection index; entries may be shared */
static char g_nonce[9];             /* per run: makes client ids unique across runs */
static char *g_pad;                 /* o.size bytes of 'x' */
static uint32_t g_total;            /* connections (slots in connect mode) */
static uint32_t g_senders;          /* --rate: sending devices, all workers */
static uint32_t g_nsrc = 1;         /* loopback source addresses to spread over */
static struct ask *g_asks;          /* assistant: per connection index */
static _Atomic uint32_t g_answered; /* assistant: questions whose answer ended (or failed) */

static int phase_now(void)
{
    return atomic_load_explicit(&g_phase, memory_order_acquire);
}

/* ---- output ------------------------------------------------------------- */

static int buf_reserve(uint8_t **buf, uint32_t *cap, uint32_t need)
{
    if (need <= *cap)
        return 0;
    uint32_t nc = *cap ? *cap : 256;
    while (nc < need)
        nc *= 2;
    uint8_t *nb = realloc(*buf, nc);
    if (nb == NULL)
        return -ENOMEM;
    *buf = nb;
    *cap = nc;
    return 0;
}

static void mark_dirty(struct conn *c)
{
    if (!c->dirty) {
        c->dirty = true;
        c->w->dirty[c->w->ndirty++] = c;
    }
}

/* Append raw bytes (the upgrade request). */
static int out_raw(struct conn *c, const void *p, size_t n)
{
    if (buf_reserve(&c->wbuf, &c->wcap, c->wlen + (uint32_t)n) != 0)
        return -ENOMEM;
    memcpy(c->wbuf + c->wlen, p, n);
    c->wlen += (uint32_t)n;
    mark_dirty(c);
    return 0;
}

/* Append one masked client frame. */
static int ws_send(struct conn *c, unsigned op, const void *p, size_t n)
{
    if (buf_reserve(&c->wbuf, &c->wcap, c->wlen + WS_MAX_HEADER + (uint32_t)n) != 0)
        return -ENOMEM;
    uint64_t r = xorshift(&c->w->rng);
    uint8_t mask[4] = {(uint8_t)r, (uint8_t)(r >> 8), (uint8_t)(r >> 16), (uint8_t)(r >> 24)};
    uint8_t *dst = c->wbuf + c->wlen;
    size_t hl = ws_frame_header_masked(dst, op, true, n, mask);
    memcpy(dst + hl, p, n);
    ws_mask(dst + hl, n, mask, 0);
    c->wlen += (uint32_t)(hl + n);
    mark_dirty(c);
    return 0;
}

static int ws_send_text(struct conn *c, const char *p, size_t n)
{
    return ws_send(c, WS_OP_TEXT, p, n);
}

static void ep_mod(struct conn *c, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(c->w->ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void conn_fail(struct conn *c, int err);
static void ask_end(struct worker *w, struct ask *a);

/* Write what is buffered; keep EPOLLOUT only while the socket is full. */
static void conn_flush(struct conn *c)
{
    if (c->state == CS_DEAD || c->fd < 0 || c->state == CS_CONNECTING)
        return;
    while (c->woff < c->wlen) {
        ssize_t n = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);
        if (n > 0) {
            c->woff += (uint32_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!c->want_out) {
                c->want_out = true;
                ep_mod(c, EPOLLIN | EPOLLOUT);
            }
            return;
        }
        conn_fail(c, n < 0 ? errno : EPIPE);
        return;
    }
    c->woff = c->wlen = 0;
    if (c->want_out) {
        c->want_out = false;
        ep_mod(c, EPOLLIN);
    }
}

/* ---- connection life ---------------------------------------------------- */

/* Close the socket with RST (SO_LINGER 0): benchmarks open tens of thousands
 * of connections and TIME_WAIT would eat the ephemeral ports. */
static void conn_close_fd(struct conn *c)
{
    if (c->fd >= 0) {
        struct linger lg = {1, 0};
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        close(c->fd);   /* also removes it from the epoll set */
        c->fd = -1;
    }
    c->gen++;
    c->rlen = c->wlen = c->woff = c->mlen = 0;
    c->in_frag = false;
    c->want_out = false;
    c->inflight = 0;
}

static void mark_ready(struct conn *c)
{
    if (c->ready)
        return;
    c->ready = true;
    c->w->pending--;
    if (o.mode == M_IDLE)
        hist_add(&c->w->h_main, now_ns() - c->t_start);
    atomic_fetch_add_explicit(&g_ready, 1, memory_order_release);
}

/* A connection attempt or an open connection failed with err (an errno, or
 * 0 for a protocol-level refusal already counted). Never retried, except in
 * connect mode after RETRY_NS. */
static void conn_fail(struct conn *c, int err)
{
    struct worker *w = c->w;
    if (c->state == CS_DEAD || c->state == CS_IDLE)
        return;
    if (err != 0)
        w->last_errno = err;
    if (o.mode == M_CONNECT) {
        w->connect_errors++;
        conn_close_fd(c);
        c->state = CS_IDLE;
        c->retry_at = now_ns() + RETRY_NS;
        return;
    }
    if (c->ready) {
        w->closed++;
        if (o.mode == M_ASSISTANT && g_asks[c->idx].state == ASK_WAIT) {
            w->a_failed++;   /* the answer cannot arrive any more */
            ask_end(w, &g_asks[c->idx]);
        }
    } else {
        w->connect_errors++;
        w->pending--;
        atomic_fetch_add_explicit(&g_failed, 1, memory_order_release);
    }
    conn_close_fd(c);
    c->state = CS_DEAD;
}

/* connect mode: one handshake done; count it and start the next. */
static void conn_open(struct conn *c);

static void handshake_done(struct conn *c)
{
    struct worker *w = c->w;
    if (phase_now() == PH_MEASURE) {
        w->handshakes++;
        w->ops++;
        hist_add(&w->h_main, now_ns() - c->t_start);
    }
    conn_close_fd(c);
    c->state = CS_IDLE;
    c->retry_at = 0;
    if (phase_now() < PH_DONE)
        conn_open(c);
}

static void conn_open(struct conn *c)
{
    struct worker *w = c->w;
    c->t_start = now_ns();
    c->state = CS_CONNECTING;
    int fd = socket(g_addr[c->target].ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        c->fd = -1;
        conn_fail(c, errno);
        return;
    }
    c->fd = fd;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (g_nsrc > 1) {
        /* Linux hands connect() the even ephemeral ports first and then
         * searches linearly for a free one: past ~14,000 connections to one
         * address each connect() costs milliseconds of kernel time. A source
         * address per 8,000 connections (127.0.0.1, .2, ...), with the port
         * chosen at connect time, keeps the search short. */
        struct sockaddr_in src = {.sin_family = AF_INET};
        src.sin_addr.s_addr = htonl(0x7f000001u + c->idx % g_nsrc);
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(fd, (struct sockaddr *)&src, sizeof src) != 0) {
            conn_fail(c, errno);
            return;
        }
    }
    const struct sockaddr *to = (const struct sockaddr *)&g_addr[c->target];
    if (connect(fd, to, g_addrlen[c->target]) != 0 && errno != EINPROGRESS) {
        conn_fail(c, errno);
        return;
    }
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(w->ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
        conn_fail(c, errno);
        return;
    }
}

#define UPGRADE_MAX (JWT_MAX_TOKEN + 1024)

/* The upgrade request to server target with token (NULL: none) into req
 * (UPGRADE_MAX bytes); its length, or -ENOBUFS. */
static int format_upgrade(char *req, unsigned target, const char *token)
{
    int n = snprintf(req, UPGRADE_MAX,
                     "GET %s HTTP/1.1\r\nHost: %s:%u\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n%s%s%s%s%s%s\r\n",
                     o.path, o.host, g_port[target], token ? "Authorization: Bearer " : "",
                     token ? token : "", token ? "\r\n" : "",
                     o.subprotocol ? "Sec-WebSocket-Protocol: " : "",
                     o.subprotocol ? o.subprotocol : "", o.subprotocol ? "\r\n" : "");
    return n < 0 || n >= UPGRADE_MAX ? -ENOBUFS : n;
}

static int send_upgrade(struct conn *c)
{
    char req[UPGRADE_MAX];
    int n = format_upgrade(req, c->target, c->token);
    return n < 0 ? n : out_raw(c, req, (size_t)n);
}

/* idle: one connection opened, upgraded and closed before the first RSS
 * reading, so that what the server sets up once (the first HMAC's library
 * pages, buffers made on first use) is not counted per connection. The
 * server's answer is read until its first frame has begun, at most 5 s. */
static void warm_up_server(void)
{
    char req[UPGRADE_MAX];
    int n = format_upgrade(req, 0, g_tokens[0]);
    int fd = socket(g_addr[0].ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (n < 0 || fd < 0) {
        fputs("chatd-bench: warm-up connection: cannot start\n", stderr);
        if (fd >= 0)
            close(fd);
        return;
    }
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char in[4096];
    size_t got = 0;
    bool ok = connect(fd, (const struct sockaddr *)&g_addr[0], g_addrlen[0]) == 0 &&
              send(fd, req, (size_t)n, MSG_NOSIGNAL) == n;
    while (ok) {
        ssize_t r = recv(fd, in + got, sizeof in - 1 - got, 0);
        if (r <= 0)
            break;
        got += (size_t)r;
        in[got] = '\0';
        char *end = strstr(in, "\r\n\r\n");
        if (end && in + got > end + 4) /* the head and a first frame's bytes */
            break;
        if (got == sizeof in - 1)
            break;
    }
    if (!ok || strncmp(in, "HTTP/1.1 101", 12) != 0)
        fputs("chatd-bench: warm-up connection was not upgraded (figures include first-use costs)\n",
              stderr);
    close(fd);
    sleep_s(0.3); /* the server closes its end and frees what it held */
}

/* ---- traffic ------------------------------------------------------------ */

/* echo and plain fan-out payload: 16 hex digits of send time, then padding. */
static void send_stamped(struct conn *c)
{
    char *p = c->w->scratch;
    hex16(p, now_ns());
    memcpy(p + 16, g_pad, o.size - 16);
    ws_send_text(c, p, o.size);
}

static void send_socketio(struct conn *c)
{
    char *p = c->w->scratch;
    size_t n = 0;
    memcpy(p, "42[\"msg\",\"", 10);
    n = 10;
    hex16(p + n, now_ns());
    n += 16;
    memcpy(p + n, g_pad, o.size > 16 ? o.size - 16 : 0);
    n += o.size > 16 ? o.size - 16 : 0;
    memcpy(p + n, "\"]", 2);
    n += 2;
    ws_send_text(c, p, n);
}

/* A chatd user_message in the connection's session; the id carries the send
 * time: m<16 hex ns>.<run nonce>.<conn>.<n>. */
static void send_chat(struct conn *c)
{
    char *p = c->w->scratch;
    char ts[17];
    hex16(ts, now_ns());
    ts[16] = '\0';
    int n = snprintf(p, c->w->scratch_cap,
                     "{\"type\":\"user_message\",\"session_id\":\"%.*s\",\"id\":\"m%s.%s.%x.%" PRIx64
                     "\",\"content\":\"%s\"}",
                     (int)c->session_len, c->session, ts, g_nonce, c->idx, c->nsent, g_pad);
    if (n > 0 && (size_t)n < c->w->scratch_cap)
        ws_send_text(c, p, (size_t)n);
}

static void count_sent(struct conn *c)
{
    c->nsent++;
    c->inflight++;
    if (phase_now() == PH_MEASURE)
        c->w->sent++;
}

/* --rate: may this worker send one more now? Its share of the rate is its
 * share of the sending devices (in cross mode a thread may hold more of
 * them than another: a user's receivers sit between its senders), counted
 * from when sending began. */
static bool pace_allows(struct worker *w)
{
    if (!o.rate)
        return true;
    uint64_t elapsed = now_ns() - w->pace_t0;
    double due = (double)elapsed * o.rate * w->nsenders / g_senders / 1e9 + 1;
    return (double)w->paced < due;
}

/* Top the connection's window up (echo, chat). */
static void fill(struct conn *c)
{
    if (c->state != CS_OPEN || !c->ready || c->role == R_REMOTE)
        return;
    int ph = phase_now();
    if (ph != PH_WARMUP && ph != PH_MEASURE)
        return;
    while (c->inflight < o.inflight && pace_allows(c->w)) {
        c->w->paced++;
        if (o.mode == M_ECHO)
            send_stamped(c);
        else
            send_chat(c);
        count_sent(c);
    }
}

/* --rate: offer the sends now due to the connections in turn (a
 * connection with its window full, or a receiver, passes). */
static void pump_paced(struct worker *w)
{
    if (!o.rate || !w->started || w->nsenders == 0)
        return;
    for (uint32_t tried = 0; tried < w->n && pace_allows(w); tried++) {
        struct conn *c = &w->conns[w->pace_next];
        w->pace_next = (w->pace_next + 1) % w->n;
        fill(c);
    }
}

/* The fan-out sender may run at most inflight messages ahead of what every
 * watcher has received (deliveries / expected per message), so the server's
 * queues stay bounded whatever the generator's speed. */
static void pump_sender(struct worker *w)
{
    if (w->id != 0 || w->n == 0)
        return;
    struct conn *c = &w->conns[0];
    if (c->role != R_SENDER || c->state != CS_OPEN || !c->ready)
        return;
    int ph = phase_now();
    if (ph != PH_WARMUP && ph != PH_MEASURE)
        return;
    uint64_t deliv = 0;
    for (unsigned i = 0; i < o.threads; i++)
        deliv += atomic_load_explicit(&g_workers[i].deliv_all, memory_order_relaxed);
    uint64_t allowed = o.inflight + deliv / g_fan_expect + w->fan_skipped;
    while (c->nsent < allowed) {
        if (o.proto == P_CHATD)
            send_chat(c);
        else if (o.proto == P_SOCKETIO)
            send_socketio(c);
        else
            send_stamped(c);
        count_sent(c);
    }
}

/* A delivery of a message of n bytes (the frame's payload) sent at ts. */
static void on_delivery_ts(struct conn *c, uint64_t ts, size_t n)
{
    struct worker *w = c->w;
    atomic_store_explicit(&w->deliv_all, atomic_load_explicit(&w->deliv_all, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    if (phase_now() == PH_MEASURE) {
        w->deliveries++;
        uint64_t now = now_ns(), lat = now > ts ? now - ts : 0;
        if (o.mode == M_FANOUT || (o.mode == M_CROSS && c->role == R_REMOTE)) {
            w->ops++;
            w->op_bytes += n;
            hist_add(&w->h_main, lat);
        } else {
            hist_add(o.mode == M_CROSS ? &w->h_local : &w->h_aux, lat);
        }
    }
}

static void on_echo(struct conn *c, const uint8_t *p, size_t n)
{
    struct worker *w = c->w;
    uint64_t ts;
    if (n != o.size || unhex16((const char *)p, n, &ts) != 0) {
        w->proto_errors++;
        return;
    }
    if (c->inflight > 0)
        c->inflight--;
    if (phase_now() == PH_MEASURE) {
        w->ops++;
        uint64_t now = now_ns();
        hist_add(&w->h_main, now > ts ? now - ts : 0);
    }
    fill(c);
}

static void chatd_setup_send(struct conn *c)
{
    char buf[256];
    int n;
    if (c->role == R_ADMIN)
        n = snprintf(buf, sizeof buf, "{\"type\":\"admin_join\",\"session_id\":\"%s\",\"id\":\"j%s.%x\"}",
                     g_session, g_nonce, c->idx);
    else
        n = snprintf(buf, sizeof buf,
                     "{\"type\":\"user_message\",\"id\":\"c%s.%x\",\"content\":\"bench session\"}",
                     g_nonce, c->idx);
    ws_send_text(c, buf, (size_t)n);
}

/* ---- assistant ---------------------------------------------------------- */

/* One question in a new session; the id carries the send time like the
 * chat mode's, the content the seed of the provider's answer. */
static void send_question(struct conn *c)
{
    struct ask *a = &g_asks[c->idx];
    char buf[256], ts[17];
    hex16(ts, now_ns());
    ts[16] = '\0';
    int n = snprintf(buf, sizeof buf,
                     "{\"type\":\"user_message\",\"id\":\"a%s.%s.%x\",\"content\":\"" FAKE_SEED_TAG
                     "%016" PRIx64 " How does chatd stream answers?\"}",
                     ts, g_nonce, c->idx, a->seed);
    a->t_sent = now_ns();
    a->state = ASK_WAIT;
    c->w->a_sent++;
    ws_send_text(c, buf, (size_t)n);
}

static void ask_end(struct worker *w, struct ask *a)
{
    a->state = ASK_ENDED;
    w->a_last_ns = now_ns();
    atomic_fetch_add_explicit(&g_answered, 1, memory_order_release);
}

/* Place len bytes at off in the answer so far; count gaps (the server
 * skipped bytes), bytes received twice and bytes received twice that
 * differ. */
static int ask_place(struct worker *w, struct ask *a, uint64_t off, const uint8_t *p, uint32_t len)
{
    if (off > (uint64_t)MAX_FRAME)
        return -EINVAL;
    uint32_t o32 = (uint32_t)off;
    if (buf_reserve(&a->text, &a->cap, o32 + len) != 0)
        return -ENOMEM;
    if (o32 > a->len) {
        w->a_gaps++;
        memset(a->text + a->len, 0, o32 - a->len);
    } else if (o32 < a->len) {
        uint32_t dup = a->len - o32 < len ? a->len - o32 : len;
        w->a_dup_bytes += dup;
        if (memcmp(a->text + o32, p, dup) != 0)
            w->a_conflicts++;
    }
    memcpy(a->text + o32, p, len);
    if (o32 + len > a->len)
        a->len = o32 + len;
    return 0;
}

/* An ai_response: a delta, placed by offset, or the final answer, checked
 * against the deltas and the provider's text. */
static void on_ai_response(struct conn *c, const struct jtop *t)
{
    struct worker *w = c->w;
    struct ask *a = &g_asks[c->idx];
    if (a->state != ASK_WAIT) {
        w->a_late++;   /* after the answer ended (or before the question) */
        return;
    }
    if (c->session_len > 0 && !(t->sid_len == c->session_len && memcmp(t->sid, c->session, t->sid_len) == 0))
        w->a_wrong_session++;
    if (t->stream_id_len == 0 || t->stream_id_len >= sizeof a->stream_id) {
        w->proto_errors++;
        return;
    }
    if (a->stream_id_len == 0) {
        memcpy(a->stream_id, t->stream_id, t->stream_id_len);
        a->stream_id_len = (uint8_t)t->stream_id_len;
    } else if (a->stream_id_len != t->stream_id_len || memcmp(a->stream_id, t->stream_id, t->stream_id_len) != 0) {
        w->a_wrong_stream++;
    }
    uint64_t now = now_ns();
    bool done = t->done != NULL && strncmp(t->done, "true", 4) == 0;
    if (!done) {
        if (t->delta == NULL || t->offset == NULL || *t->offset < '0' || *t->offset > '9') {
            w->proto_errors++;
            return;
        }
        uint64_t off = strtoull(t->offset, NULL, 10);
        int64_t dl = json_unescape(t->delta, t->delta_len, &w->ubuf, &w->ucap);
        if (dl < 0 || ask_place(w, a, off, w->ubuf, (uint32_t)dl) != 0) {
            w->proto_errors++;
            return;
        }
        if (off == 0 && a->deltas > 0)
            w->a_snapshots++;
        if (a->deltas++ == 0) {
            hist_add(&w->h_main, now - a->t_sent);
            a->t_first = now;
        }
        a->t_last = now;
        w->a_deltas++;
        w->ops++;
        w->a_delta_bytes += (uint64_t)dl;
        return;
    }
    int64_t cl = t->content ? json_unescape(t->content, t->content_len, &w->ubuf, &w->ucap) : -EINVAL;
    if (cl < 0) {
        w->proto_errors++;
        return;
    }
    bool same = (uint64_t)cl == a->len && memcmp(w->ubuf, a->text, a->len) == 0;
    bool expected = true;
    if (o.answer_bytes > 0) {
        fake_answer(a->seed, w->expect, o.answer_bytes);
        expected = (uint64_t)cl == o.answer_bytes && memcmp(w->ubuf, w->expect, o.answer_bytes) == 0;
        /* The deltas the provider streamed for it: chatd may have sent
         * several of them as one piece (those it read together). */
        for (size_t off = 0; o.delta_bytes && off < o.answer_bytes; w->a_provider_deltas++)
            off += fake_delta_len(w->expect, o.answer_bytes, off, o.delta_bytes);
    }
    bool partial = t->meta != NULL && memmem(t->meta, t->meta_len, "\"partial\":true", 14) != NULL;
    w->a_done++;
    w->a_mismatch += !same;
    w->a_unexpected += !expected;
    w->a_partial += partial;
    w->a_ok += same && expected && !partial;
    hist_add(&w->h_aux, now - a->t_sent);
    a->t_final = now;
    ask_end(w, a);
}

/* An error in assistant mode: the question refused, or the answer failed.
 * A failed answer that had streamed text ends with its partial final
 * event; one that had not ends here. */
static void on_ask_error(struct conn *c, const struct jtop *t)
{
    struct worker *w = c->w;
    struct ask *a = &g_asks[c->idx];
    if (str_is(t->code, t->code_len, "assistant_error"))
        w->a_err_assistant++;
    else if (str_is(t->code, t->code_len, "assistant_timeout"))
        w->a_err_timeout++;
    else if (str_is(t->code, t->code_len, "rate_limited"))
        w->a_err_rate++;
    else if (str_is(t->code, t->code_len, "unavailable"))
        w->a_err_unavailable++;
    else
        w->a_err_other++;
    if (a->state == ASK_WAIT && a->deltas == 0) {
        w->a_failed++;
        ask_end(w, a);
    }
}

static void on_chatd(struct conn *c, const uint8_t *p, size_t n)
{
    struct worker *w = c->w;
    struct jtop t;
    if (scan_top((const char *)p, n, &t) != 0) {
        w->proto_errors++;
        return;
    }
    if (o.mode == M_ASSISTANT && str_is(t.type, t.type_len, "ai_response")) {
        on_ai_response(c, &t);
    } else if (o.mode == M_ASSISTANT && str_is(t.type, t.type_len, "loading")) {
        w->a_loading++;
    } else if (str_is(t.type, t.type_len, "user_message")) {
        uint64_t ts;
        if (t.id_len > 17 && t.id[0] == 'm' && unhex16(t.id + 1, t.id_len - 1, &ts) == 0)
            on_delivery_ts(c, ts, n);
    } else if (str_is(t.type, t.type_len, "ack")) {
        if (t.id_len == 0)
            return;
        if (t.id[0] == 'm') {
            uint64_t ts;
            if (unhex16(t.id + 1, t.id_len - 1, &ts) != 0) {
                w->proto_errors++;
                return;
            }
            if (c->inflight > 0)
                c->inflight--;
            if (phase_now() == PH_MEASURE) {
                w->acks++;
                if (o.mode == M_CHAT)
                    w->ops++;
                uint64_t now = now_ns();
                hist_add(o.mode == M_CHAT ? &w->h_main : &w->h_aux, now > ts ? now - ts : 0);
            }
            if (o.mode == M_CHAT || o.mode == M_CROSS)
                fill(c);
        } else if (t.id[0] == 'c') {
            if (t.sid_len == 0 || t.sid_len >= sizeof c->session) {
                w->proto_errors++;
                conn_fail(c, 0);
                return;
            }
            memcpy(c->session, t.sid, t.sid_len);
            c->session[t.sid_len] = '\0';
            c->session_len = (uint8_t)t.sid_len;
            if (c->role == R_SENDER) {
                memcpy(g_session, c->session, t.sid_len + 1);
                g_session_len = t.sid_len;
                atomic_store_explicit(&g_session_ready, 1, memory_order_release);
            }
            mark_ready(c);
            if (phase_now() >= PH_WARMUP && (o.mode == M_CHAT || o.mode == M_CROSS))
                fill(c);
        } else if (t.id[0] == 'j') {
            mark_ready(c);
        } else if (t.id[0] == 'a') {
            if (t.sid_len == 0 || t.sid_len >= sizeof c->session) {
                w->proto_errors++;
                return;
            }
            memcpy(c->session, t.sid, t.sid_len);
            c->session[t.sid_len] = '\0';
            c->session_len = (uint8_t)t.sid_len;
        }
    } else if (str_is(t.type, t.type_len, "connection_status")) {
        switch (c->role) {
        case R_CONNECT:
            handshake_done(c);
            break;
        case R_DEVICE:
        case R_SENDER:
        case R_ADMIN:
            chatd_setup_send(c);
            break;
        default:
            mark_ready(c);
            break;
        }
    } else if (str_is(t.type, t.type_len, "error")) {
        w->errors++;
        if (str_is(t.code, t.code_len, "rate_limited"))
            w->rate_limited++;
        if (o.mode == M_ASSISTANT) {
            on_ask_error(c, &t);
        } else if (t.id_len > 0 && t.id[0] == 'm') {
            if (c->inflight > 0)
                c->inflight--;
            if (c->role == R_SENDER)
                w->fan_skipped++;
            if (o.mode == M_CHAT || o.mode == M_CROSS)
                fill(c);
        } else if (t.id_len > 0 && (t.id[0] == 'c' || t.id[0] == 'j')) {
            conn_fail(c, 0);   /* setup refused */
        }
    }
}

static void on_socketio(struct conn *c, const uint8_t *p, size_t n)
{
    struct worker *w = c->w;
    if (n == 0) {
        w->proto_errors++;
        return;
    }
    if (p[0] == '0') {                      /* Engine.IO open: join namespace "/" */
        ws_send_text(c, "40", 2);
    } else if (p[0] == '2' && n == 1) {     /* Engine.IO ping */
        ws_send_text(c, "3", 1);
    } else if (n >= 2 && p[0] == '4' && p[1] == '0') {
        if (c->role == R_CONNECT)
            handshake_done(c);
        else
            mark_ready(c);
    } else if (n >= 2 && p[0] == '4' && p[1] == '2') {
        uint64_t ts;
        if (n >= 26 && memcmp(p + 2, "[\"msg\",\"", 8) == 0 && unhex16((const char *)p + 10, n - 10, &ts) == 0)
            on_delivery_ts(c, ts, n);
        else
            w->proto_errors++;
    } else if (n >= 2 && p[0] == '4' && (p[1] == '1' || p[1] == '4')) {
        w->errors++;
        conn_fail(c, 0);
    }
}

static void on_message(struct conn *c, uint8_t *p, size_t n)
{
    if (o.mode == M_ECHO) {
        on_echo(c, p, n);
    } else if (o.proto == P_CHATD) {
        on_chatd(c, p, n);
    } else if (o.proto == P_SOCKETIO) {
        on_socketio(c, p, n);
    } else {
        uint64_t ts;
        if (unhex16((const char *)p, n, &ts) == 0)
            on_delivery_ts(c, ts, n);
        else
            c->w->proto_errors++;
    }
}

/* The upgrade answered 101: what happens next depends on the protocol. */
static void on_upgraded(struct conn *c)
{
    c->state = CS_OPEN;
    if (o.mode == M_ECHO || o.proto == P_PLAIN) {
        if (c->role == R_CONNECT) {
            handshake_done(c);
            return;
        }
        mark_ready(c);
        fill(c);
    }
    /* chatd waits for connection_status, socketio for its open packet */
}

/* One whole frame from the server. */
static void on_frame(struct conn *c, bool fin, unsigned op, uint8_t *p, size_t n)
{
    struct worker *w = c->w;
    switch (op) {
    case WS_OP_PING:
        ws_send(c, WS_OP_PONG, p, n);
        return;
    case WS_OP_PONG:
        return;
    case WS_OP_CLOSE:
        conn_fail(c, 0);
        return;
    case WS_OP_TEXT:
    case WS_OP_BINARY:
        if (c->in_frag) {
            w->proto_errors++;
            conn_fail(c, 0);
            return;
        }
        if (fin) {
            on_message(c, p, n);
            return;
        }
        c->in_frag = true;
        c->frag_op = (uint8_t)op;
        c->mlen = 0;
        /* fall through: gather the first fragment */
        /* FALLTHRU */
    case WS_OP_CONT:
        if (!c->in_frag) {
            w->proto_errors++;
            conn_fail(c, 0);
            return;
        }
        if (buf_reserve(&c->mbuf, &c->mcap, c->mlen + (uint32_t)n) != 0 ||
            (uint64_t)c->mlen + n > MAX_FRAME) {
            conn_fail(c, ENOMEM);
            return;
        }
        memcpy(c->mbuf + c->mlen, p, n);
        c->mlen += (uint32_t)n;
        if (fin && op == WS_OP_CONT) {
            c->in_frag = false;
            on_message(c, c->mbuf, c->mlen);
        }
        return;
    default:
        w->proto_errors++;
        conn_fail(c, 0);
    }
}

/* Parse every whole frame in rbuf; keep the rest at the start of rbuf. */
static void parse_frames(struct conn *c)
{
    uint32_t off = 0;
    uint32_t gen = c->gen;
    while (c->state == CS_OPEN && c->rlen - off >= 2) {
        uint8_t *h = c->rbuf + off;
        uint32_t avail = c->rlen - off;
        bool fin = h[0] & 0x80;
        unsigned op = h[0] & 0x0f;
        bool masked = h[1] & 0x80;
        uint64_t len = h[1] & 0x7f;
        uint32_t hl = 2;
        if (len == 126)
            hl = 4;
        else if (len == 127)
            hl = 10;
        if (masked)
            hl += 4;
        if (avail < hl)
            break;
        if (len == 126) {
            len = (uint64_t)h[2] << 8 | h[3];
        } else if (len == 127) {
            len = 0;
            for (int i = 0; i < 8; i++)
                len = len << 8 | h[2 + i];
        }
        if (len > MAX_FRAME) {
            c->w->proto_errors++;
            conn_fail(c, 0);
            return;
        }
        if (avail < hl + len) {
            /* make room for the whole frame at the start of the buffer */
            if (buf_reserve(&c->rbuf, &c->rcap, hl + (uint32_t)len) != 0) {
                conn_fail(c, ENOMEM);
                return;
            }
            break;
        }
        uint8_t *pl = c->rbuf + off + hl;
        if (masked)
            ws_mask(pl, len, c->rbuf + off + hl - 4, 0);
        off += hl + (uint32_t)len;
        on_frame(c, fin, op, pl, len);
    }
    if (c->gen != gen)
        return;   /* closed (and maybe reopened) by a handler */
    if (off > 0) {
        memmove(c->rbuf, c->rbuf + off, c->rlen - off);
        c->rlen -= off;
    }
}

/* The HTTP answer to the upgrade: 101 or a counted failure. */
static void parse_http(struct conn *c)
{
    uint8_t *end = memmem(c->rbuf, c->rlen, "\r\n\r\n", 4);
    if (end == NULL) {
        if (c->rlen > 16384) {
            c->w->proto_errors++;
            conn_fail(c, 0);
        }
        return;
    }
    int status = 0;
    if (c->rlen >= 12 && memcmp(c->rbuf, "HTTP/1.1 ", 9) == 0)
        status = atoi((const char *)c->rbuf + 9);
    if (status != 101) {
        c->w->http_errors++;
        c->w->last_http_status = status;
        conn_fail(c, 0);
        return;
    }
    uint32_t hl = (uint32_t)(end + 4 - c->rbuf);
    memmove(c->rbuf, c->rbuf + hl, c->rlen - hl);
    c->rlen -= hl;
    uint32_t gen = c->gen;
    on_upgraded(c);
    if (c->gen == gen && c->state == CS_OPEN)
        parse_frames(c);
}

static void conn_read(struct conn *c)
{
    /* Up to 16 reads per readiness, the buffer doubling (to 256 KiB) each
     * time a read fills it: a connection that receives much more than the
     * others (the fan-out sender gets its acks and its own events) must not
     * fall behind for good by being read a little per loop iteration. */
    for (int round = 0; round < 16; round++) {
        bool grow = c->rcap - c->rlen < 1024 || (round > 0 && c->rcap < RBUF_MAX);
        if (grow && buf_reserve(&c->rbuf, &c->rcap, c->rcap * 2) != 0) {
            conn_fail(c, ENOMEM);
            return;
        }
        ssize_t n = recv(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen, 0);
        if (n == 0) {
            conn_fail(c, ECONNRESET);
            return;
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            conn_fail(c, errno);
            return;
        }
        bool full = (uint32_t)n == c->rcap - c->rlen;
        uint32_t gen = c->gen;
        c->rlen += (uint32_t)n;
        if (c->state == CS_HANDSHAKE)
            parse_http(c);
        else
            parse_frames(c);
        if (c->gen != gen || !full)
            return;
    }
}

static void conn_event(struct conn *c, uint32_t ev)
{
    if (c->state == CS_CONNECTING) {
        int err = 0;
        socklen_t el = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0)
            err = errno;
        if (err != 0) {
            conn_fail(c, err);
            return;
        }
        if ((ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)) == 0)
            return;
        c->state = CS_HANDSHAKE;
        ep_mod(c, EPOLLIN);
        if (send_upgrade(c) != 0)
            conn_fail(c, ENOBUFS);
        return;
    }
    if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP))
        conn_read(c);
    if (c->fd >= 0 && (ev & EPOLLOUT))
        conn_flush(c);
}

/* ---- worker ------------------------------------------------------------- */

/* Open connections during setup, at most o.concurrency handshakes at once;
 * fan-out admins wait until the sender has created the session. */
static void open_more(struct worker *w)
{
    while (w->next_open < w->n && w->pending < o.concurrency) {
        struct conn *c = &w->conns[w->next_open];
        if (c->role == R_ADMIN && !atomic_load_explicit(&g_session_ready, memory_order_acquire))
            return;
        if (o.mode == M_FANOUT && o.proto == P_CHATD && c->role != R_SENDER &&
            !atomic_load_explicit(&g_session_ready, memory_order_acquire))
            return;   /* the sender first, so its setup is not queued behind 999 handshakes */
        w->next_open++;
        w->pending++;
        conn_open(c);
    }
}

/* Traffic starts at the first phase seen past SETUP (with --warmup 0 a
 * worker may never see WARMUP itself). */
static void on_phase(struct worker *w, int ph)
{
    if ((ph == PH_WARMUP || ph == PH_MEASURE) && !w->started) {
        w->started = true;
        w->pace_t0 = now_ns();
        if (o.mode == M_CONNECT) {
            for (uint32_t i = 0; i < w->n; i++)
                conn_open(&w->conns[i]);
        } else if (o.mode == M_ECHO || o.mode == M_CHAT || o.mode == M_CROSS) {
            for (uint32_t i = 0; i < w->n; i++)
                fill(&w->conns[i]);
        }
    }
    if (ph == PH_MEASURE && o.mode == M_ASSISTANT) {
        for (uint32_t i = 0; i < w->n; i++) {
            struct conn *c = &w->conns[i];
            if (c->state == CS_OPEN && c->ready && g_asks[c->idx].state == ASK_IDLE)
                send_question(c);
        }
    }
}

static void flush_dirty(struct worker *w)
{
    for (uint32_t i = 0; i < w->ndirty; i++) {
        struct conn *c = w->dirty[i];
        c->dirty = false;
        conn_flush(c);
    }
    w->ndirty = 0;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct epoll_event evs[MAX_EVENTS];
    for (;;) {
        int ph = phase_now();
        if (ph != w->phase_seen) {
            w->phase_seen = ph;
            if (ph == PH_DONE)
                break;
            on_phase(w, ph);
        }
        if (o.mode != M_CONNECT) {
            open_more(w);
        } else if (ph == PH_WARMUP || ph == PH_MEASURE) {
            uint64_t now = now_ns();
            for (uint32_t i = 0; i < w->n; i++) {
                struct conn *c = &w->conns[i];
                if (c->state == CS_IDLE && c->retry_at != 0 && c->retry_at <= now)
                    conn_open(c);
            }
        }
        pump_sender(w);
        pump_paced(w);
        flush_dirty(w);
        int timeout = (o.mode == M_FANOUT && w->id == 0) || o.mode == M_CONNECT || o.rate ? 1 : 10;
        int n = epoll_wait(w->ep, evs, MAX_EVENTS, timeout);
        for (int i = 0; i < n; i++)
            conn_event(evs[i].data.ptr, evs[i].events);
        pump_sender(w);
        flush_dirty(w);
    }
    for (uint32_t i = 0; i < w->n; i++)
        conn_close_fd(&w->conns[i]);
    return NULL;
}

/* ---- setup -------------------------------------------------------------- */

static int parse_uint(const char *s, unsigned lo, unsigned hi, unsigned *out)
{
    char *end;
    errno = 0;
    if (*s == '-' || *s == '\0')
        return -EINVAL;
    unsigned long v = strtoul(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < lo || v > hi)
        return -EINVAL;
    *out = (unsigned)v;
    return 0;
}

/* A comma-separated list of at most max numbers in [lo, hi]; 0 or -EINVAL. */
static int parse_list(const char *s, unsigned lo, unsigned hi, unsigned max, unsigned *out, unsigned *n)
{
    *n = 0;
    for (;;) {
        char item[16];
        size_t len = strcspn(s, ",");
        if (len == 0 || len >= sizeof item || *n >= max)
            return -EINVAL;
        memcpy(item, s, len);
        item[len] = '\0';
        if (parse_uint(item, lo, hi, &out[*n]) != 0)
            return -EINVAL;
        (*n)++;
        if (s[len] == '\0')
            return 0;
        s += len + 1;
    }
}

/* PID[,PID...], at most 16 (children found later take the rest). */
static int parse_pids(const char *s, struct pidlist *l)
{
    unsigned v[16], n = 0;
    if (parse_list(s, 1, 1u << 30, 16, v, &n) != 0)
        return -EINVAL;
    for (unsigned i = 0; i < n; i++)
        l->pid[i] = (int)v[i];
    l->n = n;
    return 0;
}

static int parse_secs(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !(v >= 0) || v > 86400)
        return -EINVAL;
    *out = v;
    return 0;
}

static int usage_error(const char *what, const char *arg)
{
    fprintf(stderr, "chatd-bench: %s%s%s (see --help)\n", what, arg ? ": " : "", arg ? arg : "");
    return EXIT_USAGE;
}

/* Connections per user in chat and cross: the sending devices, then (cross)
 * --remote-devices receivers on each remote node. */
static uint32_t user_conns(void)
{
    return o.devices + o.nremote * o.remote_devices;
}

enum {
    OPT_HOST = 256, OPT_PORT, OPT_PATH, OPT_PROTO, OPT_SUBPROTO, OPT_SECRET, OPT_CONNS,
    OPT_INFLIGHT, OPT_RATE, OPT_SIZE, OPT_USERS, OPT_DEVICES, OPT_USER_OFFSET, OPT_WATCHERS,
    OPT_MAXDEV, OPT_THREADS, OPT_CONC, OPT_WARMUP, OPT_DURATION, OPT_SETUP, OPT_PID,
    OPT_LABEL, OPT_JSON, OPT_HELP, OPT_PPID, OPT_ANSWER, OPT_DELTA, OPT_REMOTE, OPT_BACKEND, OPT_REMOTE_DEV,
};

static int parse_args(int argc, char **argv)
{
    static const struct option lo[] = {
        {"host", required_argument, 0, OPT_HOST},
        {"port", required_argument, 0, OPT_PORT},
        {"path", required_argument, 0, OPT_PATH},
        {"proto", required_argument, 0, OPT_PROTO},
        {"subprotocol", required_argument, 0, OPT_SUBPROTO},
        {"secret", required_argument, 0, OPT_SECRET},
        {"connections", required_argument, 0, OPT_CONNS},
        {"inflight", required_argument, 0, OPT_INFLIGHT},
        {"rate", required_argument, 0, OPT_RATE},
        {"size", required_argument, 0, OPT_SIZE},
        {"users", required_argument, 0, OPT_USERS},
        {"devices", required_argument, 0, OPT_DEVICES},
        {"user-offset", required_argument, 0, OPT_USER_OFFSET},
        {"watchers", required_argument, 0, OPT_WATCHERS},
        {"max-devices", required_argument, 0, OPT_MAXDEV},
        {"threads", required_argument, 0, OPT_THREADS},
        {"concurrency", required_argument, 0, OPT_CONC},
        {"warmup", required_argument, 0, OPT_WARMUP},
        {"duration", required_argument, 0, OPT_DURATION},
        {"setup-timeout", required_argument, 0, OPT_SETUP},
        {"server-pid", required_argument, 0, OPT_PID},
        {"label", required_argument, 0, OPT_LABEL},
        {"json", no_argument, 0, OPT_JSON},
        {"help", no_argument, 0, OPT_HELP},
        {"provider-pid", required_argument, 0, OPT_PPID},
        {"answer-bytes", required_argument, 0, OPT_ANSWER},
        {"delta-bytes", required_argument, 0, OPT_DELTA},
        {"remote-ports", required_argument, 0, OPT_REMOTE},
        {"backend-pids", required_argument, 0, OPT_BACKEND},
        {"remote-devices", required_argument, 0, OPT_REMOTE_DEV},
        {0, 0, 0, 0},
    };
    bool devices_set = false, users_set = false, duration_set = false, remote_devices_set = false;
    unsigned pid = 0;
    opterr = 0;
    for (;;) {
        int ix = 0;
        int ch = getopt_long(argc, argv, ":", lo, &ix);
        if (ch == -1)
            break;
        const char *a = optarg;
        int rc = 0;
        switch (ch) {
        case OPT_HOST: o.host = a; break;
        case OPT_PORT: rc = parse_uint(a, 1, 65535, &o.port); break;
        case OPT_PATH:
            if (a[0] != '/' || strpbrk(a, " \r\n") != NULL)
                rc = -EINVAL;
            o.path = a;
            break;
        case OPT_PROTO:
            if (strcmp(a, "chatd") == 0)
                o.proto = P_CHATD;
            else if (strcmp(a, "plain") == 0)
                o.proto = P_PLAIN;
            else if (strcmp(a, "socketio") == 0)
                o.proto = P_SOCKETIO;
            else
                rc = -EINVAL;
            break;
        case OPT_SUBPROTO:
            if (strpbrk(a, "\r\n") != NULL)
                rc = -EINVAL;
            o.subprotocol = a;
            break;
        case OPT_SECRET:
            /* Keep a copy and overwrite the flag's value in argv, which
             * other local users can read as /proc/PID/cmdline (ps). */
            free((char *)o.secret);
            if ((o.secret = strdup(a)) == NULL)
                rc = -ENOMEM;
            else
                memset(optarg, 'x', strlen(optarg));
            break;
        case OPT_CONNS: rc = parse_uint(a, 1, 1000000, &o.connections); break;
        case OPT_INFLIGHT: rc = parse_uint(a, 1, 100000, &o.inflight); break;
        case OPT_RATE: rc = parse_uint(a, 1, 100000000, &o.rate); break;
        case OPT_SIZE: rc = parse_uint(a, 1, 16u << 20, &o.size); break;
        case OPT_USERS: rc = parse_uint(a, 1, 1000000, &o.users); users_set = true; break;
        case OPT_DEVICES: rc = parse_uint(a, 1, 100000, &o.devices); devices_set = true; break;
        case OPT_USER_OFFSET: rc = parse_uint(a, 0, 100000000, &o.user_offset); break;
        case OPT_WATCHERS: rc = parse_uint(a, 1, 1000000, &o.watchers); break;
        case OPT_MAXDEV: rc = parse_uint(a, 1, 1000000, &o.max_devices); break;
        case OPT_THREADS: rc = parse_uint(a, 1, 256, &o.threads); break;
        case OPT_CONC: rc = parse_uint(a, 1, 1000000, &o.concurrency); break;
        case OPT_WARMUP: rc = parse_secs(a, &o.warmup); break;
        case OPT_DURATION: rc = parse_secs(a, &o.duration); duration_set = true; break;
        case OPT_SETUP: rc = parse_secs(a, &o.setup_timeout); break;
        case OPT_PID: rc = parse_pids(a, &o.server); break;
        case OPT_BACKEND: rc = parse_pids(a, &o.backend); break;
        case OPT_REMOTE: rc = parse_list(a, 1, 65535, MAX_REMOTE, o.remote_ports, &o.nremote); break;
        case OPT_REMOTE_DEV:
            rc = parse_uint(a, 1, 64, &o.remote_devices);
            remote_devices_set = true;
            break;
        case OPT_LABEL: o.label = a; break;
        case OPT_PPID: rc = parse_uint(a, 1, 1u << 30, &pid); o.provider_pid = (int)pid; break;
        case OPT_ANSWER: rc = parse_uint(a, 0, 64u << 20, &o.answer_bytes); break;
        case OPT_DELTA: rc = parse_uint(a, 1, 64u << 20, &o.delta_bytes); break;
        case OPT_JSON: o.json = true; break;
        case OPT_HELP: fputs(usage, stdout); exit(0);
        case ':': return usage_error("option needs a value", argv[optind - 1]);
        default: return usage_error("unknown option", argv[optind - 1]);
        }
        if (rc != 0) {
            char what[64];
            snprintf(what, sizeof what, "bad value for --%s", lo[ix].name);
            return usage_error(what, a);
        }
    }
    if (optind != argc - 1)
        return usage_error(optind >= argc ? "missing MODE" : "one MODE expected", NULL);
    const char *m = argv[optind];
    bool found = false;
    for (unsigned i = 0; i < sizeof mode_names / sizeof mode_names[0]; i++) {
        if (strcmp(m, mode_names[i]) == 0) {
            o.mode = (enum mode)i;
            found = true;
        }
    }
    if (!found)
        return usage_error("unknown mode", m);
    if (o.mode == M_ECHO)
        o.proto = P_PLAIN;
    if ((o.mode == M_CHAT || o.mode == M_ASSISTANT || o.mode == M_CROSS) && o.proto != P_CHATD)
        return usage_error("chat, cross and assistant modes speak only --proto chatd", NULL);
    if (o.mode == M_CROSS && o.nremote == 0)
        return usage_error("cross mode needs --remote-ports", NULL);
    if (o.mode != M_CROSS && o.nremote > 0)
        return usage_error("--remote-ports is for cross mode", NULL);
    if (o.mode != M_CROSS && remote_devices_set)
        return usage_error("--remote-devices is for cross mode", NULL);
    if (o.rate && o.mode != M_CHAT && o.mode != M_CROSS)
        return usage_error("--rate is for chat and cross modes", NULL);
    if (o.mode == M_ASSISTANT) {
        if (!users_set)
            o.users = 500;
        if (!duration_set)
            o.duration = 60;
        o.devices = 1;
    }
    if (o.connections == 0)
        o.connections = o.mode == M_ECHO ? 100 : o.mode == M_CONNECT ? 50 : 1000;
    if (o.inflight == 0)
        o.inflight = o.mode == M_ECHO ? 8 : o.mode == M_FANOUT ? 4 : 1;
    if (!devices_set && (o.mode == M_IDLE || o.mode == M_CONNECT || o.mode == M_CROSS))
        o.devices = 1;
    if ((o.mode == M_ECHO || (o.mode == M_FANOUT && o.proto != P_CHATD)) && o.size < 16)
        return usage_error("--size must be at least 16 here (the send time is 16 hex digits)", NULL);
    if (o.proto == P_CHATD && o.mode != M_ECHO) {
        if (o.secret == NULL)
            return usage_error("--secret is required for the chatd protocol", NULL);
        if (strlen(o.secret) < 32)
            return usage_error("--secret must be at least 32 bytes", NULL);
    }
    if (o.mode == M_FANOUT && o.watchers < 1)
        return usage_error("--watchers must be at least 1", NULL);
    if ((o.mode == M_CHAT || o.mode == M_CROSS) && (uint64_t)o.users * user_conns() > 1000000)
        return usage_error("--users x devices per user is too large (at most 1000000 connections)", NULL);
    if (o.path == NULL) {
        if (o.mode == M_ECHO)
            o.path = "/echo";
        else if (o.proto == P_CHATD)
            o.path = "/ws";
        else if (o.proto == P_SOCKETIO)
            o.path = "/socket.io/?EIO=4&transport=websocket";
        else
            o.path = "/";
    }
    return 0;
}

/* Mint an HS256 token for sub, with the admin role or not; NULL on failure. */
static char *mint(const char *sub, bool admin, long long exp)
{
    char payload[256];
    int n = snprintf(payload, sizeof payload, "{\"sub\":\"%s\",\"exp\":%lld,\"roles\":[\"%s\"]}", sub, exp,
                     admin ? "admin" : "user");
    return jwt_sign_hs256((const unsigned char *)o.secret, strlen(o.secret), payload, (size_t)n);
}

/* Give every connection index its role and token. 0 or -ENOMEM. */
static int plan(enum role *roles)
{
    long long exp = (long long)time(NULL) + 3600;
    bool auth = o.proto == P_CHATD && o.mode != M_ECHO;
    uint32_t owner_devs = 0;
    if (o.mode == M_FANOUT && o.proto == P_CHATD) {
        owner_devs = (o.watchers - 1) / 2;
        if (owner_devs > o.max_devices - 1)
            owner_devs = o.max_devices - 1;
    }
    char *user_tok = NULL;
    uint32_t user_of_tok = UINT32_MAX;
    for (uint32_t i = 0; i < g_total; i++) {
        char sub[64];
        bool admin = false;
        uint32_t user = 0;
        switch (o.mode) {
        case M_ECHO: roles[i] = R_ECHO; break;
        case M_CHAT: roles[i] = R_DEVICE; user = i / o.devices; break;
        case M_IDLE: roles[i] = R_IDLE; user = i / o.devices; break;
        case M_CONNECT: roles[i] = R_CONNECT; user = i / o.devices; break;
        case M_ASSISTANT: roles[i] = R_ASKER; user = i; break;
        case M_CROSS:
            /* a user's senders, then its receivers, at adjacent indexes */
            user = i / user_conns();
            roles[i] = i % user_conns() < o.devices ? R_DEVICE : R_REMOTE;
            break;
        case M_FANOUT:
            if (i == 0) {
                roles[i] = R_SENDER;
            } else if (o.proto != P_CHATD || i <= owner_devs) {
                roles[i] = R_WATCHER;
            } else {
                roles[i] = R_ADMIN;
                admin = true;
                user = i;   /* one admin user per connection */
            }
            break;
        }
        if (!auth) {
            g_tokens[i] = NULL;
            continue;
        }
        uint32_t key = admin ? (1u << 31) | user : user;
        if (key != user_of_tok) {
            snprintf(sub, sizeof sub, "%s-%u", admin ? "admin" : "user", user + o.user_offset);
            user_tok = mint(sub, admin, exp);
            if (user_tok == NULL)
                return -ENOMEM;
            user_of_tok = key;
        }
        g_tokens[i] = user_tok;   /* shared by the user's devices (adjacent indexes) */
    }
    return 0;
}

/* The node a connection index talks to: 0 (--port), or in cross mode
 * 1 + n for a receiver on the n-th of --remote-ports (a user's receivers
 * are grouped by node). */
static uint8_t target_of(uint32_t idx)
{
    if (o.mode != M_CROSS)
        return 0;
    uint32_t k = idx % user_conns();
    return k < o.devices ? 0 : (uint8_t)(1 + (k - o.devices) / o.remote_devices);
}

static int resolve(void)
{
    g_port[0] = o.port;
    for (unsigned i = 0; i < o.nremote; i++)
        g_port[1 + i] = o.remote_ports[i];
    for (unsigned i = 0; i <= o.nremote; i++) {
        struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
        char port[16];
        snprintf(port, sizeof port, "%u", g_port[i]);
        int rc = getaddrinfo(o.host, port, &hints, &res);
        if (rc != 0 || res == NULL) {
            fprintf(stderr, "chatd-bench: cannot resolve %s: %s\n", o.host, gai_strerror(rc));
            return -EINVAL;
        }
        memcpy(&g_addr[i], res->ai_addr, res->ai_addrlen);
        g_addrlen[i] = res->ai_addrlen;
        freeaddrinfo(res);
    }
    if (g_addr[0].ss_family == AF_INET && o.mode != M_CONNECT) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&g_addr[0];
        if ((ntohl(a->sin_addr.s_addr) >> 24) == 127)
            g_nsrc = g_total / 8000 + 1;
    }
    return 0;
}

/* Raise the open-file soft limit to the hard limit; fail when even that is
 * too small for the connections asked for. */
static int raise_nofile(uint32_t need)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return -errno;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur != RLIM_INFINITY && (uint64_t)need + 32 > rl.rlim_cur) {
        fprintf(stderr,
                "chatd-bench: %u connections need %u descriptors but the hard limit is %llu; "
                "split the load over several generators (--user-offset)\n",
                need, need + 32, (unsigned long long)rl.rlim_cur);
        return -EMFILE;
    }
    return 0;
}

/* Free what main and plan allocated (the workers have closed their sockets). */
static void release_all(enum role *roles)
{
    for (unsigned t = 0; t < o.threads; t++) {
        struct worker *w = &g_workers[t];
        for (uint32_t k = 0; k < w->n; k++) {
            free(w->conns[k].rbuf);
            free(w->conns[k].wbuf);
            free(w->conns[k].mbuf);
        }
        free(w->conns);
        free(w->dirty);
        free(w->scratch);
        free(w->ubuf);
        free(w->expect);
        if (w->ep >= 0)
            close(w->ep);
    }
    free(g_workers);
    for (uint32_t i = 0; i < g_total; i++) {
        if (g_tokens[i] != NULL && (i == 0 || g_tokens[i] != g_tokens[i - 1]))
            free(g_tokens[i]);   /* a user's devices share one token, at adjacent indexes */
    }
    free(g_tokens);
    if (g_asks != NULL) {
        for (uint32_t i = 0; i < g_total; i++)
            free(g_asks[i].text);
        free(g_asks);
    }
    free(roles);
    free(g_pad);
}

/* The assistant's counters of every worker, summed into one. */
static void ask_totals(struct worker *a)
{
    memset(a, 0, sizeof *a);
    for (unsigned t = 0; t < o.threads; t++) {
        const struct worker *w = &g_workers[t];
#define SUM(f) a->f += w->f
        SUM(a_sent); SUM(a_deltas); SUM(a_delta_bytes); SUM(a_provider_deltas); SUM(a_loading); SUM(a_done); SUM(a_ok);
        SUM(a_mismatch); SUM(a_unexpected); SUM(a_partial); SUM(a_failed); SUM(a_gaps);
        SUM(a_dup_bytes); SUM(a_conflicts); SUM(a_snapshots); SUM(a_wrong_session);
        SUM(a_wrong_stream); SUM(a_late); SUM(a_err_assistant); SUM(a_err_timeout); SUM(a_err_rate);
        SUM(a_err_unavailable); SUM(a_err_other);
#undef SUM
        if (w->a_last_ns > a->a_last_ns)
            a->a_last_ns = w->a_last_ns;
    }
}

static int cmp_u64(const void *x, const void *y)
{
    uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
    return a < b ? -1 : a > b;
}

/* The most answers that streamed at once (between their first and last
 * delta), and into lag the time from each answer's last delta to its
 * final event (which chatd sends once the answer is stored). */
static uint32_t ask_overlap(struct hist *lag)
{
    uint64_t *ev = malloc(2 * (size_t)g_total * sizeof *ev);
    if (ev == NULL)
        return 0;
    size_t n = 0;
    for (uint32_t i = 0; i < g_total; i++) {
        const struct ask *a = &g_asks[i];
        if (a->deltas == 0)
            continue;
        /* starts sort before ends at the same instant: low bit 0 = start */
        ev[n++] = a->t_first << 1;
        ev[n++] = a->t_last << 1 | 1;
        if (a->t_final > a->t_last)
            hist_add(lag, a->t_final - a->t_last);
    }
    qsort(ev, n, sizeof *ev, cmp_u64);
    uint32_t cur = 0, peak = 0;
    for (size_t i = 0; i < n; i++) {
        if (ev[i] & 1) {
            cur--;
        } else if (++cur > peak) {
            peak = cur;
        }
    }
    free(ev);
    return peak;
}

static double r1(double v)
{
    return (double)(long long)(v * 10 + (v >= 0 ? 0.5 : -0.5)) / 10;
}

static double r3(double v)
{
    return (double)(long long)(v * 1000 + (v >= 0 ? 0.5 : -0.5)) / 1000;
}

static void set_lat(json_t *j, const char *prefix, const struct hist *h)
{
    char k[64];
    snprintf(k, sizeof k, "%s_p50_us", prefix);
    json_object_set_new(j, k, json_real(r1(hist_quantile(h, 0.50) / 1e3)));
    snprintf(k, sizeof k, "%s_p99_us", prefix);
    json_object_set_new(j, k, json_real(r1(hist_quantile(h, 0.99) / 1e3)));
    snprintf(k, sizeof k, "%s_p999_us", prefix);
    json_object_set_new(j, k, json_real(r1(hist_quantile(h, 0.999) / 1e3)));
}

int main(int argc, char **argv)
{
    int rc = parse_args(argc, argv);
    if (rc != 0)
        return rc;
    signal(SIGPIPE, SIG_IGN);

    g_total = o.mode == M_CHAT ? o.users * o.devices
              : o.mode == M_CROSS ? o.users * user_conns()
              : o.mode == M_FANOUT ? o.watchers
              : o.mode == M_ASSISTANT ? o.users
              : o.connections;
    if (raise_nofile(g_total) != 0 || resolve() != 0)
        return 1;

    uint64_t seed = now_ns() ^ (uint64_t)getpid() << 32;
    snprintf(g_nonce, sizeof g_nonce, "%08x", (unsigned)(xorshift(&seed) & 0xffffffffu));
    g_pad = malloc(o.size + 1);
    g_tokens = calloc(g_total, sizeof *g_tokens);
    enum role *roles = calloc(g_total, sizeof *roles);
    g_workers = calloc(o.threads, sizeof *g_workers);
    if (g_pad == NULL || g_tokens == NULL || roles == NULL || g_workers == NULL) {
        fputs("chatd-bench: out of memory\n", stderr);
        return 1;
    }
    memset(g_pad, 'x', o.size);
    g_pad[o.size] = '\0';
    if (o.mode == M_ASSISTANT) {
        g_asks = calloc(g_total, sizeof *g_asks);
        if (g_asks == NULL) {
            fputs("chatd-bench: out of memory\n", stderr);
            return 1;
        }
        uint64_t run = strtoull(g_nonce, NULL, 16) << 32;
        for (uint32_t i = 0; i < g_total; i++)
            g_asks[i].seed = run | (i + 1);
    }
    if (plan(roles) != 0) {
        fputs("chatd-bench: cannot mint tokens\n", stderr);
        return 1;
    }

    for (unsigned t = 0; t < o.threads; t++) {
        struct worker *w = &g_workers[t];
        w->id = (int)t;
        w->rng = seed ^ (0x9e3779b97f4a7c15ull * (t + 1));
        w->ep = epoll_create1(EPOLL_CLOEXEC);
        w->n = g_total / o.threads + (t < g_total % o.threads ? 1 : 0);
        w->conns = calloc(w->n ? w->n : 1, sizeof *w->conns);
        w->dirty = calloc(w->n ? w->n : 1, sizeof *w->dirty);
        w->scratch_cap = o.size + 512;
        w->scratch = malloc(w->scratch_cap);
        if (o.mode == M_ASSISTANT && (w->expect = malloc(o.answer_bytes + 1)) == NULL)
            w->scratch = NULL;
        if (w->ep < 0 || w->conns == NULL || w->dirty == NULL || w->scratch == NULL) {
            fputs("chatd-bench: out of memory\n", stderr);
            return 1;
        }
        for (uint32_t k = 0; k < w->n; k++) {
            struct conn *c = &w->conns[k];
            c->w = w;
            c->fd = -1;
            c->idx = k * o.threads + t;
            c->role = (uint8_t)roles[c->idx];
            c->target = target_of(c->idx);
            c->token = g_tokens[c->idx];
            if (c->role == R_DEVICE) {
                w->nsenders++;
                g_senders++;
            }
            c->rcap = RBUF_INIT;
            c->rbuf = malloc(c->rcap);
            if (c->rbuf == NULL) {
                fputs("chatd-bench: out of memory\n", stderr);
                return 1;
            }
        }
    }

    bool have_pid = o.server.n > 0;
    uint64_t cpu_setup0 = 0, cpu_setup1 = 0, cpu0 = 0, cpu1 = 0;
    long rss_before = -1, rss_after = -1;
    if (have_pid) {
        if (o.mode == M_IDLE)
            warm_up_server();
        if (pids_cpu_us(&o.server, &cpu_setup0) != 0) {
            fprintf(stderr, "chatd-bench: cannot read /proc/PID/stat of every --server-pid\n");
            return 1;
        }
        rss_before = pids_rss_kb(&o.server);
    }

    uint64_t t_setup = now_ns();
    for (unsigned t = 0; t < o.threads; t++) {
        if (pthread_create(&g_workers[t].th, NULL, worker_main, &g_workers[t]) != 0) {
            fputs("chatd-bench: cannot start threads\n", stderr);
            return 1;
        }
    }
    uint32_t expect = o.mode == M_CONNECT ? 0 : g_total;
    uint64_t deadline = t_setup + (uint64_t)(o.setup_timeout * 1e9);
    while (atomic_load(&g_ready) + atomic_load(&g_failed) < expect && now_ns() < deadline)
        sleep_s(0.005);
    double setup_s = (double)(now_ns() - t_setup) / 1e9;
    uint32_t ready = atomic_load(&g_ready);
    if (have_pid)
        pids_cpu_us(&o.server, &cpu_setup1);
    fprintf(stderr, "chatd-bench: %s: %u of %u connections ready in %.2f s, %u failed\n", mode_names[o.mode],
            ready, expect, setup_s, atomic_load(&g_failed));
    if (o.mode == M_FANOUT)
        g_fan_expect = ready ? ready : 1;

    /* assistant: no warm-up (each connection asks once); the run lasts
     * until every question sent has its answer, at most --duration. */
    if (o.mode != M_ASSISTANT) {
        atomic_store_explicit(&g_phase, PH_WARMUP, memory_order_release);
        sleep_s(o.warmup);
    }
    bool have_ppid = o.provider_pid > 0;
    uint64_t pcpu0 = 0, pcpu1 = 0;
    long rss_peak = -1;
    uint64_t self0 = self_cpu_us();
    uint64_t mbusy0 = 0, mtotal0 = 0, mbusy1 = 0, mtotal1 = 0;
    proc_machine(&mbusy0, &mtotal0);
    uint64_t *bcpu0 = NULL, *bcpu1 = NULL;
    if (o.backend.n > 0) {
        pids_add_children(&o.backend);
        bcpu0 = calloc(o.backend.n, sizeof *bcpu0);
        bcpu1 = calloc(o.backend.n, sizeof *bcpu1);
        if (bcpu0 == NULL || bcpu1 == NULL)
            return 1;
        pids_cpu_each(&o.backend, bcpu0);
    }
    if (have_pid)
        pids_cpu_us(&o.server, &cpu0);
    if (have_ppid && proc_cpu_us(o.provider_pid, &pcpu0) != 0)
        have_ppid = false;
    uint64_t t0 = now_ns();
    atomic_store_explicit(&g_phase, PH_MEASURE, memory_order_release);
    if (o.mode == M_ASSISTANT) {
        uint64_t limit = t0 + (uint64_t)(o.duration * 1e9), next_rss = 0;
        for (;;) {
            uint64_t now = now_ns();
            if (atomic_load_explicit(&g_answered, memory_order_acquire) >= ready || now >= limit)
                break;
            if (have_pid && now >= next_rss) {
                long r = pids_rss_kb(&o.server);
                if (r > rss_peak)
                    rss_peak = r;
                next_rss = now + 50000000ull;
            }
            sleep_s(0.001);
        }
    } else {
        sleep_s(o.duration);
    }
    uint64_t t1 = now_ns();
    if (have_pid && pids_cpu_us(&o.server, &cpu1) != 0) {
        /* a server (a cluster's node) died during the run */
        fputs("chatd-bench: a --server-pid process is gone: no server figures\n", stderr);
        have_pid = false;
    }
    if (have_pid) {
        rss_after = pids_rss_kb(&o.server);
        if (rss_after > rss_peak)
            rss_peak = rss_after;
    }
    if (have_ppid)
        proc_cpu_us(o.provider_pid, &pcpu1);
    if (o.backend.n > 0)
        pids_cpu_each(&o.backend, bcpu1);
    uint64_t self1 = self_cpu_us();
    proc_machine(&mbusy1, &mtotal1);
    atomic_store_explicit(&g_phase, PH_DONE, memory_order_release);
    for (unsigned t = 0; t < o.threads; t++)
        pthread_join(g_workers[t].th, NULL);

    /* merge */
    struct hist *hm = calloc(1, sizeof *hm), *ha = calloc(1, sizeof *ha), *hl = calloc(1, sizeof *hl);
    if (hm == NULL || ha == NULL || hl == NULL)
        return 1;
    uint64_t ops = 0, sent = 0, acks = 0, deliveries = 0, cerr = 0, herr = 0, closed = 0, perr = 0,
             errs = 0, rl = 0, op_bytes = 0;
    int last_status = 0, last_errno = 0;
    for (unsigned t = 0; t < o.threads; t++) {
        struct worker *w = &g_workers[t];
        ops += w->ops;
        op_bytes += w->op_bytes;
        sent += w->sent;
        acks += w->acks;
        deliveries += w->deliveries;
        cerr += w->connect_errors;
        herr += w->http_errors;
        closed += w->closed;
        perr += w->proto_errors;
        errs += w->errors;
        rl += w->rate_limited;
        if (w->last_http_status)
            last_status = w->last_http_status;
        if (w->last_errno)
            last_errno = w->last_errno;
        hist_merge(hm, &w->h_main);
        hist_merge(ha, &w->h_aux);
        hist_merge(hl, &w->h_local);
    }
    double secs = (double)(t1 - t0) / 1e9;
    struct worker asum;
    ask_totals(&asum);
    struct hist *hlag = calloc(1, sizeof *hlag);
    if (hlag == NULL)
        return 1;
    uint32_t streaming_peak = o.mode == M_ASSISTANT ? ask_overlap(hlag) : 0;
    if (o.mode == M_ASSISTANT && asum.a_last_ns > t0)
        secs = (double)(asum.a_last_ns - t0) / 1e9;   /* to the end of the last answer */
    if (o.mode == M_IDLE) {
        /* idle: the operation is an established connection; CPU is the setup's */
        ops = ready;
        secs = setup_s;
        cpu0 = cpu_setup0;
        cpu1 = cpu_setup1;
    }
    double ops_per_s = secs > 0 ? (double)ops / secs : 0;
    double cpu_us = have_pid ? (double)(cpu1 - cpu0) : 0;
    double cpu_per_op = have_pid && ops ? cpu_us / (double)ops : 0;
    double client_per_op = ops && o.mode != M_IDLE ? (double)(self1 - self0) / (double)ops : 0;

    json_t *j = json_object();
    json_object_set_new(j, "mode", json_string(mode_names[o.mode]));
    if (o.label)
        json_object_set_new(j, "label", json_string(o.label));
    json_object_set_new(j, "proto", json_string(proto_names[o.proto]));
    json_object_set_new(j, "host", json_string(o.host));
    json_object_set_new(j, "port", json_integer(o.port));
    json_object_set_new(j, "path", json_string(o.path));
    json_object_set_new(j, "threads", json_integer(o.threads));
    json_object_set_new(j, "connections", json_integer(g_total));
    if (o.mode == M_ECHO || o.mode == M_CHAT || o.mode == M_FANOUT || o.mode == M_CROSS) {
        json_object_set_new(j, "inflight", json_integer(o.inflight));
        if (o.rate)
            json_object_set_new(j, "rate", json_integer(o.rate));
        json_object_set_new(j, "size", json_integer(o.size));
    }
    if (o.mode == M_CHAT || o.mode == M_CROSS) {
        json_object_set_new(j, "users", json_integer(o.users));
        json_object_set_new(j, "devices", json_integer(o.devices));
    }
    if (o.mode == M_CROSS) {
        json_t *rp = json_array();
        for (unsigned i = 0; i < o.nremote; i++)
            json_array_append_new(rp, json_integer(o.remote_ports[i]));
        json_object_set_new(j, "remote_ports", rp);
        json_object_set_new(j, "remote_devices", json_integer(o.remote_devices));
    }
    if (o.mode == M_FANOUT) {
        json_object_set_new(j, "watchers", json_integer(o.watchers));
        json_object_set_new(j, "deliveries_per_msg", json_integer(g_fan_expect));
        /* What the server wrote per delivery, frame header aside: a floor
         * relaying messages of this size pays the kernel for the same bytes
         * (bench/peers.sh's rows "..., chatd's bytes"). */
        json_object_set_new(j, "bytes_per_delivery", json_real(r1(ops ? (double)op_bytes / (double)ops : 0)));
    }
    json_object_set_new(j, "duration_s", json_real(r3(o.mode == M_IDLE ? o.duration : secs)));
    json_object_set_new(j, "warmup_s", json_real(o.mode == M_ASSISTANT ? 0 : o.warmup));
    json_object_set_new(j, "setup_s", json_real(r3(setup_s)));
    json_object_set_new(j, "ready", json_integer(ready));
    json_object_set_new(j, "connect_errors", json_integer((json_int_t)cerr));
    json_object_set_new(j, "http_errors", json_integer((json_int_t)herr));
    if (last_status)
        json_object_set_new(j, "last_http_status", json_integer(last_status));
    if (last_errno)
        json_object_set_new(j, "last_error", json_string(strerror(last_errno)));
    json_object_set_new(j, "closed", json_integer((json_int_t)closed));
    json_object_set_new(j, "protocol_errors", json_integer((json_int_t)perr));
    json_object_set_new(j, "server_errors", json_integer((json_int_t)errs));
    if (rl)
        json_object_set_new(j, "rate_limited", json_integer((json_int_t)rl));
    json_object_set_new(j, "ops", json_integer((json_int_t)ops));
    json_object_set_new(j, "ops_per_s", json_real(r1(ops_per_s)));
    if (o.mode != M_IDLE && o.mode != M_CONNECT && o.mode != M_ASSISTANT)
        json_object_set_new(j, "sent", json_integer((json_int_t)sent));
    if (o.mode == M_CHAT || o.mode == M_FANOUT || o.mode == M_CROSS) {
        json_object_set_new(j, "acks", json_integer((json_int_t)acks));
        json_object_set_new(j, "deliveries", json_integer((json_int_t)deliveries));
        json_object_set_new(j, "deliveries_per_s", json_real(r1(secs > 0 ? (double)deliveries / secs : 0)));
    }
    if (o.mode == M_CROSS) {
        /* every acked message should reach each remote device once:
         * remote_deliveries_per_ack near nremote x remote_devices (the
         * interval's edges blur it) */
        json_object_set_new(j, "acks_per_s", json_real(r1(secs > 0 ? (double)acks / secs : 0)));
        json_object_set_new(j, "remote_deliveries", json_integer((json_int_t)ops));
        json_object_set_new(j, "local_deliveries", json_integer((json_int_t)(deliveries - ops)));
        json_object_set_new(j, "remote_deliveries_per_ack",
                            json_real(r3(acks ? (double)ops / (double)acks : 0)));
    }
    if (o.mode == M_ASSISTANT) {
        uint64_t unfinished = asum.a_sent - asum.a_done - asum.a_failed;
        json_object_set_new(j, "users", json_integer(o.users));
        json_object_set_new(j, "answer_bytes", json_integer(o.answer_bytes));
        json_object_set_new(j, "questions", json_integer((json_int_t)asum.a_sent));
        json_object_set_new(j, "loading", json_integer((json_int_t)asum.a_loading));
        json_object_set_new(j, "answers_done", json_integer((json_int_t)asum.a_done));
        json_object_set_new(j, "answers_ok", json_integer((json_int_t)asum.a_ok));
        json_object_set_new(j, "answers_failed", json_integer((json_int_t)asum.a_failed));
        json_object_set_new(j, "answers_unfinished", json_integer((json_int_t)unfinished));
        json_object_set_new(j, "answers_partial", json_integer((json_int_t)asum.a_partial));
        json_object_set_new(j, "answers_deltas_differ", json_integer((json_int_t)asum.a_mismatch));
        json_object_set_new(j, "answers_text_differs", json_integer((json_int_t)asum.a_unexpected));
        json_object_set_new(j, "answers_streaming_peak", json_integer(streaming_peak));
        json_object_set_new(j, "time_to_last_answer_s",
                            json_real(r3(asum.a_last_ns > t0 ? (double)(asum.a_last_ns - t0) / 1e9 : 0)));
        json_object_set_new(j, "deltas", json_integer((json_int_t)asum.a_deltas));
        json_object_set_new(j, "deltas_per_s", json_real(r1(secs > 0 ? (double)asum.a_deltas / secs : 0)));
        json_object_set_new(j, "delta_bytes", json_integer((json_int_t)asum.a_delta_bytes));
        if (asum.a_provider_deltas)
            json_object_set_new(j, "provider_deltas", json_integer((json_int_t)asum.a_provider_deltas));
        json_object_set_new(j, "deltas_per_answer",
                            json_real(r1(asum.a_done ? (double)asum.a_deltas / (double)asum.a_done : 0)));
        json_object_set_new(j, "offset_gaps", json_integer((json_int_t)asum.a_gaps));
        json_object_set_new(j, "bytes_received_twice", json_integer((json_int_t)asum.a_dup_bytes));
        json_object_set_new(j, "conflicting_bytes", json_integer((json_int_t)asum.a_conflicts));
        json_object_set_new(j, "snapshots", json_integer((json_int_t)asum.a_snapshots));
        json_object_set_new(j, "wrong_session", json_integer((json_int_t)asum.a_wrong_session));
        json_object_set_new(j, "wrong_stream", json_integer((json_int_t)asum.a_wrong_stream));
        json_object_set_new(j, "after_end", json_integer((json_int_t)asum.a_late));
        json_t *ec = json_object();
        json_object_set_new(ec, "assistant_error", json_integer((json_int_t)asum.a_err_assistant));
        json_object_set_new(ec, "assistant_timeout", json_integer((json_int_t)asum.a_err_timeout));
        json_object_set_new(ec, "rate_limited", json_integer((json_int_t)asum.a_err_rate));
        json_object_set_new(ec, "unavailable", json_integer((json_int_t)asum.a_err_unavailable));
        json_object_set_new(ec, "other", json_integer((json_int_t)asum.a_err_other));
        json_object_set_new(j, "error_codes", ec);
        set_lat(j, "latency", hm);   /* question -> first delta */
        set_lat(j, "answer", ha);    /* question -> final answer */
        set_lat(j, "final_lag", hlag); /* last delta -> final answer */
    } else {
        set_lat(j, "latency", hm);
    }
    if (o.mode == M_CHAT)
        set_lat(j, "delivery", ha);
    if ((o.mode == M_FANOUT && o.proto == P_CHATD) || o.mode == M_CROSS)
        set_lat(j, "ack", ha);
    if (o.mode == M_CROSS)
        set_lat(j, "local_delivery", hl);   /* latency_* is the remote delivery's */
    if (have_pid) {
        if (o.server.n == 1) {
            json_object_set_new(j, "server_pid", json_integer(o.server.pid[0]));
        } else {
            json_t *sp = json_array();
            for (unsigned i = 0; i < o.server.n; i++)
                json_array_append_new(sp, json_integer(o.server.pid[i]));
            json_object_set_new(j, "server_pids", sp);
        }
        json_object_set_new(j, "server_cpu_us", json_integer((json_int_t)cpu_us));
        json_object_set_new(j, "server_cpu_util", json_real(r3(secs > 0 ? cpu_us / 1e6 / secs : 0)));
        json_object_set_new(j, "server_cpu_us_per_op", json_real(r3(cpu_per_op)));
        if ((o.mode == M_CHAT || o.mode == M_CROSS) && deliveries)
            json_object_set_new(j, "server_cpu_us_per_delivery", json_real(r3(cpu_us / (double)deliveries)));
        if (o.mode == M_CROSS && acks)
            json_object_set_new(j, "server_cpu_us_per_ack", json_real(r3(cpu_us / (double)acks)));
        if (o.mode == M_FANOUT && sent)
            json_object_set_new(j, "server_cpu_us_per_msg", json_real(r3(cpu_us / (double)sent)));
        if (o.mode == M_ASSISTANT) {
            json_object_set_new(j, "server_cpu_us_per_delta", json_real(r3(cpu_per_op)));
            if (asum.a_provider_deltas)
                json_object_set_new(j, "server_cpu_us_per_provider_delta",
                                    json_real(r3(cpu_us / (double)asum.a_provider_deltas)));
            if (asum.a_done)
                json_object_set_new(j, "server_cpu_us_per_answer", json_real(r1(cpu_us / (double)asum.a_done)));
            json_object_set_new(j, "server_rss_kb_peak", json_integer(rss_peak));
        }
        json_object_set_new(j, "server_rss_kb_before", json_integer(rss_before));
        json_object_set_new(j, "server_rss_kb_after", json_integer(rss_after));
        if (o.mode == M_IDLE && ready)
            json_object_set_new(j, "rss_bytes_per_conn",
                                json_integer((json_int_t)((rss_after - rss_before) * 1024 / (long)ready)));
    }
    if (client_per_op > 0)
        json_object_set_new(j, "client_cpu_us_per_op", json_real(r3(client_per_op)));
    /* Machine-wide busy cores over the measured interval: much more than
     * server + generator means something else ran and the figures are noisy. */
    double msecs = (double)(t1 - t0) / 1e9;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    double provider_cores = 0, backend_cores = 0;
    if (o.backend.n > 0 && msecs > 0) {
        uint64_t bus = pids_cpu_delta(o.backend.n, bcpu0, bcpu1);
        backend_cores = (double)bus / 1e6 / msecs;
        json_object_set_new(j, "backend_processes", json_integer(o.backend.n));
        json_object_set_new(j, "backend_cpu_us", json_integer((json_int_t)bus));
        json_object_set_new(j, "backend_cpu_util", json_real(r3(backend_cores)));
        if (ops)
            json_object_set_new(j, "backend_cpu_us_per_op", json_real(r3((double)bus / (double)ops)));
    }
    if (have_ppid && msecs > 0) {
        provider_cores = (double)(pcpu1 - pcpu0) / 1e6 / msecs;
        json_object_set_new(j, "provider_cpu_us", json_integer((json_int_t)(pcpu1 - pcpu0)));
        json_object_set_new(j, "provider_cpu_util", json_real(r3(provider_cores)));
        if (ops)
            json_object_set_new(j, "provider_cpu_us_per_op", json_real(r3((double)(pcpu1 - pcpu0) / (double)ops)));
    }
    if (mtotal1 > mtotal0 && msecs > 0 && ncpu > 0) {
        double busy = (double)(mbusy1 - mbusy0) / (double)(mtotal1 - mtotal0) * (double)ncpu;
        double mine = (double)(self1 - self0) / 1e6 / msecs;
        json_object_set_new(j, "client_cpu_util", json_real(r3(mine)));
        json_object_set_new(j, "machine_busy_cores", json_real(r3(busy)));
        if (have_pid && o.mode != M_IDLE)
            json_object_set_new(j, "other_busy_cores",
                                json_real(r3(busy - mine - provider_cores - backend_cores -
                                             (double)(cpu1 - cpu0) / 1e6 / msecs)));
    }

    FILE *human = o.json ? stderr : stdout;
    fprintf(human, "%s%s%s: %" PRIu64 " ops in %.2f s = %.1f/s", mode_names[o.mode], o.label ? " " : "",
            o.label ? o.label : "", ops, secs, ops_per_s);
    if (hm->count)
        fprintf(human, ", latency p50 %.1f p99 %.1f p999 %.1f us", hist_quantile(hm, 0.5) / 1e3,
                hist_quantile(hm, 0.99) / 1e3, hist_quantile(hm, 0.999) / 1e3);
    if (have_pid)
        fprintf(human, ", server %.3f us/op (%.0f%% of a core)", cpu_per_op,
                secs > 0 ? cpu_us / 1e4 / secs : 0);
    if (o.mode == M_IDLE && have_pid && ready)
        fprintf(human, ", rss %ld -> %ld kB = %ld B/conn", rss_before, rss_after,
                (rss_after - rss_before) * 1024 / (long)ready);
    if (o.mode == M_CROSS)
        fprintf(human,
                "; %.1f acks/s (p50 %.1f p99 %.1f us), local delivery p50 %.1f p99 %.1f us, %.2f other-node "
                "deliveries per ack (%u when none is lost)",
                secs > 0 ? (double)acks / secs : 0, hist_quantile(ha, 0.5) / 1e3, hist_quantile(ha, 0.99) / 1e3,
                hist_quantile(hl, 0.5) / 1e3, hist_quantile(hl, 0.99) / 1e3,
                acks ? (double)ops / (double)acks : 0, o.nremote * o.remote_devices);
    if (o.mode == M_ASSISTANT) {
        fprintf(human, "; %" PRIu64 " questions, %" PRIu64 " answers (%" PRIu64 " ok, %" PRIu64 " failed, %" PRIu64
                       " partial), last at %.3f s, at most %u streaming at once",
                asum.a_sent, asum.a_done, asum.a_ok, asum.a_failed, asum.a_partial,
                asum.a_last_ns > t0 ? (double)(asum.a_last_ns - t0) / 1e9 : 0.0, streaming_peak);
        if (asum.a_mismatch || asum.a_unexpected || asum.a_gaps || asum.a_dup_bytes || asum.a_wrong_session ||
            asum.a_wrong_stream || asum.a_late || asum.a_snapshots)
            fprintf(human,
                    " [deltas differ %" PRIu64 ", text differs %" PRIu64 ", gaps %" PRIu64 ", bytes twice %" PRIu64
                    ", snapshots %" PRIu64 ", wrong session %" PRIu64 ", wrong stream %" PRIu64
                    ", after end %" PRIu64 "]",
                    asum.a_mismatch, asum.a_unexpected, asum.a_gaps, asum.a_dup_bytes, asum.a_snapshots,
                    asum.a_wrong_session, asum.a_wrong_stream, asum.a_late);
        if (have_pid)
            fprintf(human, ", rss peak %ld kB", rss_peak);
    }
    if (cerr || herr || closed || perr || errs)
        fprintf(human, " [connect errors %" PRIu64 ", http %" PRIu64 ", closed %" PRIu64 ", protocol %" PRIu64
                       ", server errors %" PRIu64 "]",
                cerr, herr, closed, perr, errs);
    fputc('\n', human);
    if (o.json) {
        char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(12));
        if (s != NULL) {
            puts(s);
            free(s);
        }
    }
    fflush(stdout);
    json_decref(j);
    free(hm);
    free(hl);
    free(bcpu0);
    free(bcpu1);
    free(ha);
    free(hlag);
    release_all(roles);
    return 0;
}
