/*
 * DESIGN: the Redis bus joins the nodes that share one Redis (--redis).
 *
 * Channels. An event goes to channel "chatd:<db>:u:<shard>", where shard is
 * hash_str(owner) % BUS_REDIS_SHARDS: the session owner's canonical user id
 * (the token's subject), hashed, never the string itself. All the events of
 * one session (and of one user) share a channel, and Redis hands the
 * messages of one channel to every subscriber in the order it received
 * them, so every node sees a session's events in one and the same order.
 * <db> keeps apart clusters sharing one Redis on different databases (pub/
 * sub ignores SELECT).
 *
 * Subscriptions. A node subscribes only to the shards its connections need
 * (bus_watch, reference-counted per shard): the shard of each user with a
 * device here, and every shard while an admin is connected here (admins get
 * every help request and may join any session). So a node receives the
 * events of the users it serves, and Redis traffic grows with deliveries,
 * not with the number of nodes. A watch that makes a shard wanted returns
 * once Redis confirmed the subscription, so a device's node receives the
 * events committed after its connection_status. Sharding (64 channels)
 * rather than a channel per user keeps the subscriptions bounded; a node
 * may receive the events of another user of the same shard, which its hub
 * finds no recipient for.
 * A shard's messages that come before its last SUBSCRIBE is confirmed or
 * after its UNSUBSCRIBE was sent are dropped (subs_out): they were
 * published while this node was not watching, and the orders below never
 * start from a seq whose predecessors this node may not have seen.
 *
 * Envelope. One PUBLISH carries the events of one published batch that
 * fall in one shard, in order (bus/envelope.h has the layout). The nonce is drawn at start: a node knows its own events when they come
 * back, and marks the others' as remote (their worker and connection ids
 * are another node's: the hub must not use them).
 *
 * Delivery. The publisher delivers nothing itself: every node, this one
 * included, delivers only what comes back from Redis, through the one
 * handler, in channel order. So a session's events are delivered once per
 * node and in the same order on every node; a device's own ack (posted to
 * its worker before publishing) still comes before its event.
 *
 * Order. Two nodes may commit seqs 5 and 6 of one session and publish them
 * in the other order. The subscriber thread keeps, per session, the
 * highest seq it handed on; a stored event (seq > 0) above the next one is
 * held until the ones below it arrive, or HOLD_MS pass (a message Redis
 * lost, or one published late: the hub reads the missing seqs from storage
 * on this thread and delivers them, then the held event goes: bus_handler.
 * fill). Storage being unreadable, the event waits on, up to GIVE_UP_MS;
 * then it goes, and the gap is counted and logged. A seq later than every
 * seq a node holds is committed after them (the session row is locked for
 * the commit), so storage always has what a gap lacks. A hint (bus.h) is
 * filled at once when its seq is new here. The first events seen of a
 * session wait START_MS (a lower seq published later moves the start down),
 * so that two nodes publishing seqs 5 and 6 in the other order just as
 * this node starts the order still reach its connections as 5, 6 (seq 1
 * does not wait: nothing comes below it). A resume's read of storage on
 * this node begins an order not yet begun where storage stood
 * (bus_stored, order_notes), so the window is not all a resumed device
 * relies on. Events of seq 0 (relays, the assistant's deltas) and seqs already passed
 * go on at once; a connection drops a stored event it already has (by
 * session and seq). The first event a node sees of a session starts its
 * order; a session idle for ORDER_IDLE_MS (10 minutes; 1 minute while
 * more than ORDER_MAX orders are kept) is forgotten, and the first event
 * after that waits the start window again. When the
 * subscription is made again after the connection to Redis broke, what
 * was stored after each session's last seq is read and the order goes on
 * from there (forgotten, the next event seen would start it afresh, and
 * a lower seq another node published later would pass it); a session
 * whose fill failed is forgotten.
 *
 * Devices. With --redis the device limit holds across nodes: each user has
 * a sorted set "chatd:<db>:dev:<hash of the user id>" of
 * "<node nonce>:<conn>:<opened ms>" members scored by their expiry (Redis
 * time + 30 s). A Lua script drops the expired members, counts, and adds
 * the new one only under the limit, in one atomic step; with evict-oldest
 * a full count gives up the member opened first, wherever it is: one of
 * this node's is returned to the hub to close, another node's is named on
 * the control channel "chatd:<db>:ctl" ("CK1" | nonce | conn | user),
 * which every node subscribes to and the named node acts on (the kick
 * handler). Each node refreshes its own devices every 10 s from the
 * subscriber thread (one pipelined round trip) and removes a device when
 * it closes, so a node that dies gives its slots back within 30 s. The
 * hash "chatd:<db>:online" maps each user id (a value, never a key or a
 * channel) to their set, so /api/admin/connections can count every node's
 * devices in one script (census), dropping users with none left. A count
 * that cannot be reached (Redis away) admits on the node's own count.
 * Calls block their thread (a worker) for a round trip, on a third
 * connection under a mutex.
 *
 * Holds. An admin's join marks the session held, in a sorted set
 * "chatd:<db>:hold:<hash of the session id>" of "<nonce>:<conn>" members
 * kept like devices (refreshed by the heartbeat, gone 30 s after their
 * node dies, removed at leave). The writer sets it before the join is
 * acknowledged; the assistant of any node asks (held) before it requests
 * an answer, so from a join's ack on no node's assistant starts answering
 * that session.
 *
 * Answers streaming. A piece of an answer published with its text is also
 * written at its offset into "chatd:<db>:st:<stream id>" (SETRANGE, in the
 * same pipeline, before the PUBLISH; kept 10 minutes after the last
 * piece), so a node whose device comes mid-answer reads the text so far
 * (stream_read) and the device catches up from offset 0 there too. Stream
 * ids are chatd's own ("st_" and 16 hex digits).
 *
 * One answer at a time; stopping. Before a node requests an answer of a
 * session, its assistant thread claims it (claim, one script): held (a
 * person is there: the answer ends, taken over), busy (another node's
 * mark "chatd:<db>:ans:<hash of the session id>" = "<nonce>:<stream>" is
 * there: the answer waits and asks again), or free (the mark is now this
 * node's). The mark goes when the answer ends (release, recorded by the
 * subscriber thread so that the assistant's threads never wait for it; a
 * compare-and-delete, so a late release never removes a newer answer's
 * mark) or 15 minutes after its node died. A stop_generation on a node
 * that does not run the answer itself asks a script that publishes
 * "CS1" | session on the control channel when the mark exists: the node
 * answering it stops it, and the ack says stopped.
 *
 * Rate limits. Each user's message budget is one token bucket across nodes,
 * a hash "chatd:<db>:rate:<hash of the user id>" (level, time) that a Lua
 * script refills by Redis time and takes from, for each chat message that
 * the node's own bucket allowed (a round trip on the presence connection).
 * A budget above 1,200 a minute is taken in leases: up to budget/600
 * tokens (at most 32) at once, the rest kept by the node for that user's
 * next messages for a second, so that a busy user costs a round trip per
 * lease, not per message. Tokens are taken before they are used: the
 * shared budget is never exceeded, and a lease left unused is lost.
 *
 * Threads. Publishing is a blocking hiredis connection under a mutex: the
 * writer and the assistant's threads take turns, and a PUBLISH is answered
 * before bus_publish returns, so a delta published before the final answer
 * is submitted reaches Redis first (the causality bus.h promises). The
 * events of one batch are pipelined (one round trip). Receiving is a thread
 * of its own running a libuv loop, where hiredis's asynchronous API and its
 * libuv adapter drive a second connection in SUBSCRIBE mode; other threads
 * reach the loop through two uv_async handles (the subscriptions wanted
 * changed, or an answer ended; stop), and a 50 ms timer releases the held
 * events whose time came and runs the beats below. The handler runs on
 * that thread as bus.h allows. When the connection breaks (or is not made
 * within 2 s) it connects again after a back-off (100 ms doubling to 2 s)
 * and subscribes again;
 * then, for every session it had seen, the hub reads and delivers what was
 * stored after the last seq handed on (bus_handler.fill). A publish that fails
 * (Redis unreachable) is ordered here as if Redis had sent it (keep_unsent),
 * so this node's connections keep working and keep the seq order; the
 * others fill it from storage when they see the gap.
 */
#include "bus/redis.h"

#include <errno.h>
#include <hiredis/adapters/libuv.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bus/envelope.h"
#include "net/loop.h"
#include "util/clock.h"
#include "util/hash.h"
#include "util/log.h"
#include "util/sbuf.h"
#include "util/vec.h"

#define CONNECT_TIMEOUT_MS 2000
#define START_WAIT_MS 5000
#define ORDER_BUCKETS 1024
#define HOLD_MS 500         /* an event waits this long for the seqs below it */
#define START_MS 20         /* the first events of an order wait this long for lower ones */
#define GIVE_UP_MS 30000    /* storage unreadable this long: a gap is handed on, lost */
/* A session's order is forgotten when idle this long: a conversation's
 * pauses are often minutes, and the first event after a forgotten order
 * waits the start window (40-57 ms measured across two nodes, against
 * 3 ms), so orders outlive them. An order is ~300 bytes: past ORDER_MAX
 * kept, the sweep also forgets those idle ORDER_IDLE_MIN_MS. */
#define ORDER_IDLE_MS 600000
#define ORDER_IDLE_MIN_MS 60000
#define ORDER_MAX 16384
#define ORDER_SWEEP_MS 15000 /* how often idle orders are looked for */
#define DEVICE_TTL_MS 30000 /* a device not refreshed this long gives its slot back */
#define HEARTBEAT_MS 10000  /* how often a node refreshes its devices */
#define WATCH_WAIT_MS 2000  /* the longest a new watch waits for its subscription */
#define RETRY_MS 1000       /* publishing or counting waits this long after a failed connect */
#define TICK_MS 50          /* the subscriber thread's timer: held events, beats */
#define LEASES 1024         /* users with message tokens taken ahead, at most */
#define LEASE_MAX 32        /* tokens taken ahead at once, at most */
#define LEASE_MS 1000       /* tokens taken ahead and unused this long are dropped */
#define STREAM_TTL_MS 600000 /* an answer's text is kept this long after its last piece */
#define MARK_TTL_MS 10000    /* an answer's mark, refreshed while it runs: a dead node's */
#define MARK_BEAT_MS 2000    /* answers free their sessions within MARK_TTL_MS */
#define MARKS_MAX 4096       /* marks waiting for the thread; past it they are dropped */
#define NOTES_MAX 1024       /* bus_stored notes waiting for the thread; past it dropped */

/* A held event: its own copy, holding a frame reference. */
struct held {
    struct bus_event ev;
    int64_t until_ms; /* when the seqs below it are read from storage */
    int64_t since_ms; /* held since */
};

/* A device this node counted in Redis, or a session one of its connections
 * holds: the key and member it keeps there. */
struct pres_dev {
    char key[64];
    char member[64];
    char user[BUS_USER_MAX + 1]; /* a device's user ("" for a hold) */
    uint64_t conn_id;
};

/* Message tokens this node took ahead from a user's shared bucket. */
struct lease {
    uint64_t user; /* hash of the user id */
    unsigned left;
    int64_t until_ms; /* unused past this, they are dropped */
};

/* An envelope whose publish failed, left for this node's own order. */
struct unsent {
    struct unsent *next;
    uint8_t *p; /* owned: the envelope */
    size_t n;
};

/* A read of storage found session stored through seq (bus_stored). */
struct seq_note {
    char session[BUS_SESSION_MAX + 1];
    char owner[BUS_USER_MAX + 1];
    int64_t seq;
    int64_t at_ms; /* when it was noted */
};

/* The order of one session's stored events on this node. */
struct order_sess {
    struct order_sess *next;
    char session[BUS_SESSION_MAX + 1];
    char owner[BUS_USER_MAX + 1];
    int64_t last;      /* the highest seq handed on */
    int64_t used_ms;   /* when it last saw an event */
    int64_t start_ms;  /* until then the order may still start lower */
    bool started;      /* something was handed on: the start is fixed */
    struct held *held; /* sorted by seq */
    size_t nheld, capheld;
};

struct rbus {
    struct bus base;
    char host[256];
    int port;
    char user[128];
    char password[256];
    int db;
    uint64_t nonce;
    char node_id[128];
    char prefix[48]; /* "chatd:<db>:u:" */

    pthread_mutex_t pub_mu;
    redisContext *pub;    /* under pub_mu */
    int64_t pub_retry_ms; /* under pub_mu: no connect before */

    pthread_t sub_thread;
    bool sub_started;
    /* The subscriber thread's loop. The handles are made before the
     * thread starts (loop_ready); wake and stop are how other threads
     * reach it (uv_async_send), the rest is the thread's own. */
    uv_loop_t loop;
    bool loop_ready;
    uv_async_t wake; /* the subscriptions wanted changed, or an answer ended */
    uv_async_t stop;
    uv_timer_t tick, retry, conn_timer;
    redisAsyncContext *ac; /* the subscribing connection, NULL between connections */
    bool ac_connected;
    bool stopping;
    int backoff; /* ms before the next connection attempt */
    /* What this node's connections need (bus_watch), and what is
     * subscribed, under mu; cv signals confirmations. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool connected;
    unsigned want[BUS_REDIS_SHARDS];
    unsigned want_all;
    bool confirmed[BUS_REDIS_SHARDS];
    /* Envelopes a failed publish left to this node (also under mu): the
     * subscriber thread passes them through the order as if Redis had sent
     * them. unsent_closed: the thread is stopping, deliver at once. */
    struct unsent *unsent, **unsent_tail;
    bool unsent_closed;
    /* Notes of bus_stored for the subscriber thread (also under mu). */
    struct seq_note *notes;
    size_t nnotes, capnotes;
    /* the subscriber thread's own */
    bool requested[BUS_REDIS_SHARDS];
    /* SUBSCRIBEs sent per shard and not yet confirmed. A shard's messages
     * are handed on only while it is requested and none is out: Redis
     * answers in order, so a message that comes before the confirmation of
     * the last SUBSCRIBE was published before it, or while an UNSUBSCRIBE
     * was on its way, when this node was not watching the shard. Handed
     * on, it would start the order of its session at a seq this node's
     * connections never get the rest after, and the next event would have
     * the whole gap filled from storage into them (seqs below a resume's
     * after_seq reached a device that way). */
    unsigned subs_out[BUS_REDIS_SHARDS];
    bool ctl_requested;
    unsigned pending; /* confirmations awaited since the connection was made */
    bool resync;      /* after them, every session's order starts again */
    atomic_ullong received, published, lost;
    atomic_ullong unwatched; /* messages of shards not watched (subs_out), dropped */
    atomic_ullong noted;     /* bus_stored notes that started an order */
    bool opened; /* bus_redis_open succeeded */
    /* Devices counted across nodes: this node's, refreshed by heartbeat. */
    pthread_mutex_t pres_mu;
    redisContext *pres;    /* under pres_mu */
    int64_t pres_retry_ms; /* under pres_mu: no connect before */
    struct pres_dev *devs; /* under pres_mu */
    size_t ndevs, capdevs;
    struct pres_dev *holds; /* under pres_mu: sessions held here (bus_hold) */
    size_t nholds, capholds;
    struct pres_dev *marks; /* under pres_mu: answers ended, whose marks the thread removes */
    struct pres_dev *claims; /* under pres_mu: answers running here (key: mark, member: value) */
    size_t nclaims, capclaims;
    int64_t next_markbeat_ms; /* the subscriber thread's */
    pthread_mutex_t lease_mu;
    struct lease leases[LEASES]; /* under lease_mu: by user hash, a newer one replaces */
    size_t nmarks, capmarks;
    char ctl[48];           /* "chatd:<db>:ctl": every node's, always subscribed */
    int64_t next_heartbeat_ms; /* the subscriber thread's */
    size_t nheld_now;
    /* The subscriber thread's own: sessions' order (see "Order" above). */
    struct order_sess *order[ORDER_BUCKETS];
    size_t norder;
    int64_t next_sweep_ms;
    atomic_ullong held, filled, gaps;
};

/* ---- the URL ---- */

static int parse_url(struct rbus *r, const char *url, char *err, size_t errlen)
{
    const char *p = url;
    if (strncmp(p, "redis://", 8) != 0) {
        snprintf(err, errlen, "--redis: expected redis://[:password@]host:port[/db]");
        return -EINVAL;
    }
    p += 8;
    const char *at = strrchr(p, '@');
    const char *slash = strchr(at ? at : p, '/');
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        size_t ulen = colon ? (size_t)(colon - p) : 0;
        const char *pw = colon ? colon + 1 : p;
        size_t pwlen = (size_t)(at - pw);
        if (ulen >= sizeof r->user || pwlen >= sizeof r->password) {
            snprintf(err, errlen, "--redis: user or password too long");
            return -EINVAL;
        }
        memcpy(r->user, p, ulen);
        r->user[ulen] = 0;
        memcpy(r->password, pw, pwlen);
        r->password[pwlen] = 0;
        p = at + 1;
    }
    const char *hend = slash ? slash : p + strlen(p);
    const char *portp = NULL;
    const char *hs = p, *he;
    if (*p == '[') { /* [v6]:port */
        const char *rb = memchr(p, ']', (size_t)(hend - p));
        if (!rb) {
            snprintf(err, errlen, "--redis: bad host");
            return -EINVAL;
        }
        hs = p + 1;
        he = rb;
        if (rb + 1 < hend && rb[1] == ':')
            portp = rb + 2;
    } else {
        const char *colon = memchr(p, ':', (size_t)(hend - p));
        he = colon ? colon : hend;
        if (colon)
            portp = colon + 1;
    }
    if (he == hs || (size_t)(he - hs) >= sizeof r->host) {
        snprintf(err, errlen, "--redis: bad host");
        return -EINVAL;
    }
    memcpy(r->host, hs, (size_t)(he - hs));
    r->host[he - hs] = 0;
    r->port = 6379;
    if (portp) {
        char *end;
        long v = strtol(portp, &end, 10);
        if (end != hend || v < 1 || v > 65535) {
            snprintf(err, errlen, "--redis: bad port");
            return -EINVAL;
        }
        r->port = (int)v;
    }
    r->db = 0;
    if (slash && slash[1]) {
        char *end;
        long v = strtol(slash + 1, &end, 10);
        if (*end || v < 0 || v > 1000000) {
            snprintf(err, errlen, "--redis: bad database number");
            return -EINVAL;
        }
        r->db = (int)v;
    }
    return 0;
}

/* ---- connections ---- */

static redisContext *connect_one(struct rbus *r, char *err, size_t errlen)
{
    struct timeval tv = {CONNECT_TIMEOUT_MS / 1000, (CONNECT_TIMEOUT_MS % 1000) * 1000};
    redisContext *c = redisConnectWithTimeout(r->host, r->port, tv);
    if (!c || c->err) {
        snprintf(err, errlen, "--redis: cannot reach %s:%d: %s", r->host, r->port,
                 c ? c->errstr : "out of memory");
        if (c)
            redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    if (r->password[0]) {
        redisReply *rep = r->user[0] ? redisCommand(c, "AUTH %s %s", r->user, r->password)
                                     : redisCommand(c, "AUTH %s", r->password);
        bool ok = rep && rep->type != REDIS_REPLY_ERROR;
        if (!ok)
            snprintf(err, errlen, "--redis: %s:%d refused the password", r->host, r->port);
        if (rep)
            freeReplyObject(rep);
        if (!ok) {
            redisFree(c);
            return NULL;
        }
    }
    redisReply *rep = redisCommand(c, "PING");
    bool ok = rep && rep->type != REDIS_REPLY_ERROR;
    if (!ok)
        snprintf(err, errlen, "--redis: %s:%d does not answer: %s", r->host, r->port,
                 rep && rep->str ? rep->str : c->errstr);
    if (rep)
        freeReplyObject(rep);
    if (!ok) {
        redisFree(c);
        return NULL;
    }
    return c;
}

static int64_t now_ms(void);
static bool keep_unsent(struct rbus *r, struct env_writer *msgs, size_t nmsgs);

/* Connect *c again, unless the last attempt failed less than RETRY_MS ago
 * (the caller then goes on without Redis at once rather than wait for a
 * connect timeout each time). Under the connection's mutex. */
static bool reconnect(struct rbus *r, redisContext **c, int64_t *retry_at, const char *what)
{
    int64_t now = now_ms();
    if (now < *retry_at)
        return false;
    char err[256];
    *c = connect_one(r, err, sizeof err);
    if (*c)
        return true;
    *retry_at = now + RETRY_MS;
    struct log_quoted q;
    log_warn("redis_unreachable", "what=%s err=%s", what, log_quotes(&q, err));
    return false;
}

/* ---- publishing ---- */

static unsigned shard_of(const char *owner)
{
    return (unsigned)(hash_str(owner) % BUS_REDIS_SHARDS);
}

static void stream_key(const struct rbus *r, const char *stream, char *key, size_t cap)
{
    snprintf(key, cap, "chatd:%d:st:%s", r->db, stream);
}

/* Send the stream pieces' text, then the messages (pipelined), and read
 * their answers: 0, or -EIO. */
static int send_all(struct rbus *r, redisContext *c, const unsigned *shards,
                    struct env_writer *msgs,
                    size_t nmsgs, const struct bus_event *ev, size_t n)
{
    size_t sent = 0;
    for (size_t i = 0; i < n; i++) {
        if (!ev[i].stream[0] || !ev[i].text || !ev[i].stream_len)
            continue;
        char key[96];
        stream_key(r, ev[i].stream, key, sizeof key);
        if (redisAppendCommand(c, "SETRANGE %s %llu %b", key, (unsigned long long)ev[i].stream_off,
                               ev[i].text, (size_t)ev[i].stream_len) != REDIS_OK ||
            redisAppendCommand(c, "PEXPIRE %s %u", key, (unsigned)STREAM_TTL_MS) != REDIS_OK)
            return -EIO;
        sent += 2;
    }
    for (size_t i = 0; i < nmsgs; i++) {
        char ch[64];
        int chlen = snprintf(ch, sizeof ch, "%s%u", r->prefix, shards[i]);
        if (redisAppendCommand(c, "PUBLISH %b %b", ch, (size_t)chlen, msgs[i].p, msgs[i].n) !=
            REDIS_OK)
            return -EIO;
        sent++;
    }
    int rc = 0;
    for (size_t i = 0; i < sent; i++) {
        void *rep = NULL;
        if (redisGetReply(c, &rep) != REDIS_OK)
            return -EIO;
        if (((redisReply *)rep)->type == REDIS_REPLY_ERROR)
            rc = -EIO;
        freeReplyObject(rep);
    }
    return rc;
}

static int redis_publish(struct bus *b, const struct bus_event *ev, size_t n)
{
    struct rbus *r = (struct rbus *)b;
    if (!n)
        return 0;
    /* One message per shard, each keeping the batch's order. */
    unsigned *evshard = malloc(n * sizeof *evshard);
    unsigned *shards = malloc(n * sizeof *shards);
    struct env_writer *msgs = calloc(n, sizeof *msgs);
    size_t nmsgs = 0;
    int rc = 0;
    if (!evshard || !shards || !msgs) {
        rc = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        evshard[i] = shard_of(ev[i].owner);
        size_t m = 0;
        while (m < nmsgs && shards[m] != evshard[i])
            m++;
        if (m == nmsgs) {
            shards[nmsgs++] = evshard[i];
            env_begin(&msgs[m], r->nonce);
        }
        env_add(&msgs[m], &ev[i]);
    }
    for (size_t m = 0; m < nmsgs; m++) {
        if (msgs[m].oom) {
            rc = -ENOMEM;
            goto out;
        }
    }
    pthread_mutex_lock(&r->pub_mu);
    for (int attempt = 0; attempt < 2; attempt++) {
        if (!r->pub && !reconnect(r, &r->pub, &r->pub_retry_ms, "publish")) {
            rc = -EIO;
            break;
        }
        rc = send_all(r, r->pub, shards, msgs, nmsgs, ev, n);
        if (rc == 0 || !r->pub->err)
            break;
        /* The connection broke: once more on a new one. A message that had
         * gone through is then published twice; the hub drops a stored
         * event it has already sent by its (session, seq). */
        redisFree(r->pub);
        r->pub = NULL;
    }
    pthread_mutex_unlock(&r->pub_mu);
    if (rc == 0) {
        atomic_fetch_add(&r->published, n);
    } else {
        /* Lost to the other nodes (they fill it from storage when they see
         * the gap); this node's connections still get it, through the
         * subscriber thread's order like what Redis sends: another node's
         * event below it may be missing here too (its publish failed as
         * well), and delivering at once would pass it. */
        atomic_fetch_add(&r->lost, n);
        if (!keep_unsent(r, msgs, nmsgs))
            r->base.handler.deliver(r->base.handler.app, ev, n);
    }
out:
    for (size_t m = 0; msgs && m < nmsgs; m++)
        free(msgs[m].p);
    free(msgs);
    free(shards);
    free(evshard);
    return rc;
}

/* Hand the envelopes of a failed publish to the subscriber thread (taking
 * their buffers), unless it is stopping or memory is short: false, and
 * the caller delivers them at once. */
static bool keep_unsent(struct rbus *r, struct env_writer *msgs, size_t nmsgs)
{
    struct unsent *head = NULL, **tail = &head;
    for (size_t m = 0; m < nmsgs; m++) {
        struct unsent *u = malloc(sizeof *u);
        if (!u)
            break;
        *u = (struct unsent){.p = msgs[m].p, .n = msgs[m].n};
        *tail = u;
        tail = &u->next;
    }
    bool ok = false;
    size_t made = 0;
    for (struct unsent *u = head; u; u = u->next)
        made++;
    pthread_mutex_lock(&r->mu);
    if (made == nmsgs && nmsgs && !r->unsent_closed) {
        *r->unsent_tail = head;
        r->unsent_tail = tail;
        for (size_t m = 0; m < nmsgs; m++)
            msgs[m].p = NULL;
        uv_async_send(&r->wake); /* under mu: quiesce closes the handle after */
        ok = true;
    }
    pthread_mutex_unlock(&r->mu);
    if (!ok) /* the buffers are still the caller's */
        while (head) {
            struct unsent *next = head->next;
            free(head);
            head = next;
        }
    return ok;
}

/* ---- order ---- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Events to hand on, each holding a frame reference. */
struct outv {
    struct bus_event *ev;
    size_t n, cap;
};

static void out_add(struct outv *o, const struct bus_event *e)
{
    if (vec_grow(&o->ev, &o->cap, o->n, 1, sizeof *o->ev) != 0) {
        log_warn("redis_event_lost", "reason=oom");
        return;
    }
    o->ev[o->n] = *e;
    if (e->frame)
        sbuf_ref(e->frame);
    o->n++;
}

static void out_flush(struct rbus *r, struct outv *o)
{
    if (o->n)
        r->base.handler.deliver(r->base.handler.app, o->ev, o->n);
    for (size_t i = 0; i < o->n; i++)
        if (o->ev[i].frame)
            sbuf_unref(o->ev[i].frame);
    o->n = 0;
}

static struct order_sess *order_get(struct rbus *r, const char *session, const char *owner)
{
    struct order_sess **p = &r->order[hash_str(session) % ORDER_BUCKETS];
    for (; *p; p = &(*p)->next)
        if (strcmp((*p)->session, session) == 0)
            return *p;
    struct order_sess *os = calloc(1, sizeof *os);
    if (!os)
        return NULL;
    snprintf(os->session, sizeof os->session, "%s", session);
    snprintf(os->owner, sizeof os->owner, "%s", owner);
    *p = os;
    r->norder++;
    return os;
}

/* Hand on the held events that come next (seq <= last + 1), in order. */
static void release_next(struct rbus *r, struct order_sess *os, struct outv *o)
{
    size_t i = 0;
    for (; i < os->nheld && os->held[i].ev.seq <= os->last + 1; i++) {
        struct bus_event *e = &os->held[i].ev;
        if (e->seq > os->last)
            os->last = e->seq;
        out_add(o, e);
        os->started = true;
        if (e->frame)
            sbuf_unref(e->frame);
    }
    if (i) {
        memmove(os->held, os->held + i, (os->nheld - i) * sizeof *os->held);
        os->nheld -= i;
        r->nheld_now -= i;
    }
}

/* Read the stored events after os->last and below `before` (0: all of
 * them) from storage and deliver them, after what was handed on so far.
 * True when nothing below `before` is missing any more. */
static bool fill_to(struct rbus *r, struct order_sess *os, struct outv *o, int64_t before)
{
    if (!r->base.handler.fill)
        return false;
    out_flush(r, o);
    int64_t from = os->last + 1;
    for (;;) {
        if (before && os->last >= before - 1)
            break;
        int64_t got =
            r->base.handler.fill(r->base.handler.app, os->session, os->owner, os->last, before);
        if (got < 0)
            return false;
        if (got <= os->last) {
            if (before)
                return false; /* not stored (yet): cannot be, as a later seq is */
            break;
        }
        os->last = got;
    }
    if (os->last >= from) {
        os->started = true;
        atomic_fetch_add(&r->filled, 1);
        struct log_quoted q;
        log_info("redis_gap_filled", "session=%s from=%lld to=%lld", log_quotes(&q, os->session),
                 (long long)from, (long long)os->last);
    }
    return true;
}

/* Keep a copy of e among the session's held events (sorted by seq) until
 * `until`. False when out of memory: the caller hands it on at once. One
 * seq may be held more than once (its event for the owner's devices and for
 * the admins, or one published twice): each goes on. */
static bool hold_event(struct rbus *r, struct order_sess *os, const struct bus_event *e,
                       int64_t now, int64_t until)
{
    size_t at = os->nheld;
    while (at > 0 && os->held[at - 1].ev.seq > e->seq)
        at--;
    if (vec_grow(&os->held, &os->capheld, os->nheld, 1, sizeof *os->held) != 0)
        return false;
    memmove(os->held + at + 1, os->held + at, (os->nheld - at) * sizeof *os->held);
    os->held[at].ev = *e;
    os->held[at].until_ms = until;
    os->held[at].since_ms = now;
    if (e->frame)
        sbuf_ref(e->frame);
    os->nheld++;
    r->nheld_now++;
    atomic_fetch_add(&r->held, 1);
    return true;
}

/* The start window of the order has passed: hand on what waited in it,
 * filling from storage a gap between those events, without waiting for the
 * tick (an event arriving after the window releases the ones before it).
 * Storage unreadable: the tick takes over, and gives up in time. */
static void start_due(struct rbus *r, struct order_sess *os, struct outv *o, int64_t now)
{
    while (os->nheld && os->held[0].until_ms <= now) {
        if (!fill_to(r, os, o, os->held[0].ev.seq)) {
            os->held[0].until_ms = now + HOLD_MS;
            return;
        }
        release_next(r, os, o);
    }
}

static void order_event(struct rbus *r, const struct bus_event *e, int64_t now, struct outv *o)
{
    struct order_sess *os = e->seq > 0 ? order_get(r, e->session, e->owner) : NULL;
    if (!os) { /* not stored (or out of memory): at once */
        if (!e->hint)
            out_add(o, e);
        return;
    }
    os->used_ms = now;
    if (!os->started && os->nheld && now >= os->start_ms)
        start_due(r, os, o, now);
    if (os->last == 0 && os->nheld == 0 && !os->started) {
        os->last = e->seq - 1; /* the first seen here starts the order */
        os->start_ms = now + START_MS;
        /* Nothing comes below seq 1: a new session's first event does not
         * wait out the window (it waited 20 ms to the next tick, 50 ms). */
        os->started = e->seq == 1;
    }
    if (!os->started && !e->hint && now < os->start_ms) {
        /* The order's first moments: another node may publish a lower seq
         * after this one (both committed just before this node started
         * watching the session, or just before a node restarted). Until
         * START_MS passed and nothing was handed on, a lower seq moves the
         * start down and the events wait, so the first ones too go out in
         * seq order (before, 1160 then 1159 reached a connection). */
        if (e->seq <= os->last)
            os->last = e->seq - 1;
        if (!hold_event(r, os, e, now, os->start_ms)) { /* out of memory: at once */
            os->started = true;
            if (e->seq > os->last)
                os->last = e->seq;
            out_add(o, e);
        }
        return;
    }
    if (e->hint) {
        /* seq is stored, and its own event may never come. */
        if (e->seq > os->last && !fill_to(r, os, o, e->seq + 1)) {
            struct log_quoted q;
            log_warn("redis_fill_failed", "session=%s seq=%lld", log_quotes(&q, e->session),
                     (long long)e->seq);
        }
        release_next(r, os, o);
        return;
    }
    if (e->seq <= os->last + 1) {
        if (e->seq > os->last)
            os->last = e->seq;
        out_add(o, e);
        release_next(r, os, o);
        return;
    }
    if (!hold_event(r, os, e, now, now + HOLD_MS))
        out_add(o, e);
}

static void order_free(struct rbus *r, struct order_sess *os)
{
    for (size_t i = 0; i < os->nheld; i++)
        if (os->held[i].ev.frame)
            sbuf_unref(os->held[i].ev.frame);
    r->nheld_now -= os->nheld;
    r->norder--;
    free(os->held);
    free(os);
}

/* What waited too long for the seqs below it: they are read from storage
 * and delivered first (a message Redis lost, or one published late); when
 * storage cannot be read the event waits on, up to GIVE_UP_MS, then goes
 * with the gap before it lost to this node's connections (their own
 * resume finds it). Idle sessions are forgotten. With all (subscribed
 * again after a break): everything stored after what was handed on is
 * read, and the order goes on from there; a session that could not be
 * read is forgotten. */
static void order_tick(struct rbus *r, int64_t now, bool all)
{
    bool sweep = all || now >= r->next_sweep_ms;
    if (!sweep && !r->nheld_now)
        return;
    int64_t idle_ms = r->norder > ORDER_MAX ? ORDER_IDLE_MIN_MS : ORDER_IDLE_MS;
    struct outv o = {0};
    for (unsigned b = 0; b < ORDER_BUCKETS; b++) {
        struct order_sess **p = &r->order[b];
        while (*p) {
            struct order_sess *os = *p;
            while (os->nheld && (all || os->held[0].until_ms <= now)) {
                int64_t next = os->held[0].ev.seq;
                if (!fill_to(r, os, &o, next)) {
                    if (!all && now - os->held[0].since_ms < GIVE_UP_MS) {
                        os->held[0].until_ms = now + HOLD_MS;
                        break;
                    }
                    struct log_quoted q;
                    log_warn("redis_gap", "session=%s from=%lld to=%lld reason=%s",
                             log_quotes(&q, os->session), (long long)os->last + 1,
                             (long long)next - 1, "\"storage could not be read\"");
                    atomic_fetch_add(&r->gaps, 1);
                    os->last = next - 1;
                }
                release_next(r, os, &o);
            }
            bool lost = false;
            if (all && !fill_to(r, os, &o, 0)) {
                struct log_quoted q;
                log_warn("redis_gap", "session=%s from=%lld reason=%s",
                         log_quotes(&q, os->session), (long long)os->last + 1,
                         "\"storage could not be read after Redis came back\"");
                atomic_fetch_add(&r->gaps, 1);
                lost = true;
            }
            if (lost || (sweep && !os->nheld && now - os->used_ms > idle_ms)) {
                out_flush(r, &o); /* its held events hold frame references */
                *p = os->next;
                order_free(r, os);
                continue;
            }
            p = &os->next;
        }
    }
    if (sweep)
        r->next_sweep_ms = now + ORDER_SWEEP_MS;
    out_flush(r, &o);
    free(o.ev);
}

/* ---- devices across nodes ---- */

/* KEYS[1] the user's devices, KEYS[2] the users online; ARGV: member,
 * max, ttl, evict (1/0), user. Members are "<nonce>:<conn>:<opened ms>":
 * with evict, a full count gives up the member opened first. */
static const char admit_lua[] =
    "local t = redis.call('TIME') "
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "
    "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) "
    "local n = redis.call('ZCARD', KEYS[1]) "
    "local victim = '' "
    "if n >= tonumber(ARGV[2]) then "
    "  if ARGV[4] ~= '1' then return {0, n, ''} end "
    "  local best, bt = nil, nil "
    "  for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do "
    "    local o = tonumber(string.match(m, ':(%d+)$')) or 0 "
    "    if best == nil or o < bt then best, bt = m, o end "
    "  end "
    "  redis.call('ZREM', KEYS[1], best) "
    "  victim = best "
    "  n = n - 1 "
    "end "
    "redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1]) "
    "redis.call('PEXPIRE', KEYS[1], ARGV[3]) "
    "redis.call('HSET', KEYS[2], ARGV[5], KEYS[1]) "
    "return {1, n + 1, victim}";

/* KEYS[1] a sorted set of members scored by expiry; ARGV: member, ttl. */
static const char refresh_lua[] =
    "local t = redis.call('TIME') "
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "
    "redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1]) "
    "redis.call('PEXPIRE', KEYS[1], ARGV[2])";

/* KEYS[1] the users online (user -> their devices' key): each user with a
 * live device and their count; the others are dropped from it. */
static const char census_lua[] =
    "local t = redis.call('TIME') "
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "
    "local all = redis.call('HGETALL', KEYS[1]) "
    "local out = {} "
    "for i = 1, #all, 2 do "
    "  redis.call('ZREMRANGEBYSCORE', all[i + 1], '-inf', now) "
    "  local n = redis.call('ZCARD', all[i + 1]) "
    "  if n == 0 then redis.call('HDEL', KEYS[1], all[i]) "
    "  else out[#out + 1] = all[i]; out[#out + 1] = n end "
    "end "
    "return out";

/* KEYS[1] the session's holds, KEYS[2] its answer's mark; ARGV: this
 * node's nonce with a colon, the mark ("<nonce>:<stream>"), its ttl.
 * 1 held; 2 another node's answer runs; 0 this node's mark is set. */
static const char claim_lua[] =
    "local t = redis.call('TIME') "
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "
    "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) "
    "if redis.call('ZCARD', KEYS[1]) > 0 then return 1 end "
    "local v = redis.call('GET', KEYS[2]) "
    "if v and string.sub(v, 1, #ARGV[1]) ~= ARGV[1] then return 2 end "
    "redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3]) "
    "return 0";

/* KEYS[1] an answer's mark; ARGV[1] the value it was set to. */
static const char release_lua[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end";

/* KEYS[1] an answer's mark; ARGV: the value it was set to, its ttl. */
static const char mark_refresh_lua[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end";

static void dev_key(const struct rbus *r, const char *user, char *key, size_t cap)
{
    snprintf(key, cap, "chatd:%d:dev:%016llx", r->db, (unsigned long long)hash_str(user));
}

static void hold_key(const struct rbus *r, const char *session, char *key, size_t cap)
{
    snprintf(key, cap, "chatd:%d:hold:%016llx", r->db, (unsigned long long)hash_str(session));
}

/* Read (and drop) the answers to n pipelined commands; stops at a broken
 * connection. */
static bool read_replies(redisContext *c, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        void *rep = NULL;
        if (redisGetReply(c, &rep) != REDIS_OK)
            return false;
        freeReplyObject(rep);
    }
    return true;
}

/* The presence connection, made if needed (under pres_mu). */
static redisContext *pres_conn(struct rbus *r)
{
    if (r->pres && r->pres->err) {
        redisFree(r->pres);
        r->pres = NULL;
    }
    if (!r->pres)
        reconnect(r, &r->pres, &r->pres_retry_ms, "devices");
    return r->pres;
}

/* One command on the presence connection: its reply (to free), or NULL
 * when Redis could not be reached. Takes pres_mu. */
static redisReply *pres_cmd(struct rbus *r, const char *fmt, ...)
{
    pthread_mutex_lock(&r->pres_mu);
    redisContext *c = pres_conn(r);
    redisReply *rep = NULL;
    if (c) {
        va_list ap;
        va_start(ap, fmt);
        rep = redisvCommand(c, fmt, ap);
        va_end(ap);
    }
    pthread_mutex_unlock(&r->pres_mu);
    return rep;
}

/* Remember (key, member) of conn_id in *v. Under pres_mu. */
static void pres_add(struct pres_dev **v, size_t *n, size_t *cap, const char *key,
                     const char *member, const char *user, uint64_t conn_id)
{
    if (vec_grow(v, cap, *n, 1, sizeof **v) != 0)
        return; /* not refreshed: it expires, as if its node had died */
    snprintf((*v)[*n].key, sizeof (*v)[*n].key, "%s", key);
    snprintf((*v)[*n].user, sizeof (*v)[*n].user, "%s", user);
    snprintf((*v)[*n].member, sizeof (*v)[*n].member, "%s", member);
    (*v)[(*n)++].conn_id = conn_id;
}

/* Forget the entry of (key, conn_id) in *v, copying its member out. Under
 * pres_mu. False when there is none. */
static bool pres_del(struct pres_dev *v, size_t *n, const char *key, uint64_t conn_id,
                     char *member, size_t cap)
{
    for (size_t i = 0; i < *n; i++) {
        if (v[i].conn_id == conn_id && strcmp(v[i].key, key) == 0) {
            snprintf(member, cap, "%s", v[i].member);
            v[i] = v[--*n];
            return true;
        }
    }
    return false;
}

/* Close another node's device: on the control channel, which every node
 * hears; its node kicks it. */
static void kick_remote(struct rbus *r, const char *user, uint64_t nonce, uint64_t conn_id)
{
    struct env_writer w = {0};
    env_put(&w, "CK1", 3);
    env_put_u64(&w, nonce);
    env_put_u64(&w, conn_id);
    env_put_str(&w, user);
    redisReply *rep = w.oom ? NULL : pres_cmd(r, "PUBLISH %s %b", r->ctl, w.p, w.n);
    if (rep)
        freeReplyObject(rep);
    free(w.p);
}

static int redis_admit(struct bus *b, const char *user, uint64_t conn_id, int64_t opened_ms,
                       unsigned max, bool evict, unsigned *count, uint64_t *evicted)
{
    struct rbus *r = (struct rbus *)b;
    char key[64], member[64], online[48];
    dev_key(r, user, key, sizeof key);
    snprintf(member, sizeof member, "%016llx:%llx:%lld", (unsigned long long)r->nonce,
             (unsigned long long)conn_id, (long long)opened_ms);
    snprintf(online, sizeof online, "chatd:%d:online", r->db);
    int rc = -EIO;
    redisReply *rep = pres_cmd(r, "EVAL %s 2 %s %s %s %u %u %d %s", admit_lua, key, online, member,
                               max, (unsigned)DEVICE_TTL_MS, evict ? 1 : 0, user);
    if (rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == 3 &&
        rep->element[0]->type == REDIS_REPLY_INTEGER &&
        rep->element[1]->type == REDIS_REPLY_INTEGER &&
        rep->element[2]->type == REDIS_REPLY_STRING) {
        rc = rep->element[0]->integer ? 1 : 0;
        *count = (unsigned)rep->element[1]->integer;
        unsigned long long vn = 0, vc = 0;
        bool victim =
            rep->element[2]->len && sscanf(rep->element[2]->str, "%16llx:%llx", &vn, &vc) == 2;
        pthread_mutex_lock(&r->pres_mu);
        if (rc == 1)
            pres_add(&r->devs, &r->ndevs, &r->capdevs, key, member, user, conn_id);
        char gone[64];
        if (victim && vn == r->nonce)
            pres_del(r->devs, &r->ndevs, key, vc, gone, sizeof gone);
        pthread_mutex_unlock(&r->pres_mu);
        if (victim && vn == r->nonce)
            *evicted = vc;
        else if (victim)
            kick_remote(r, user, vn, vc);
    } else if (rep) {
        log_warn("redis_device_count_failed", "type=%d", rep->type);
    }
    if (rep)
        freeReplyObject(rep);
    return rc;
}

static void redis_leave(struct bus *b, const char *user, uint64_t conn_id)
{
    struct rbus *r = (struct rbus *)b;
    char key[64], member[64];
    dev_key(r, user, key, sizeof key);
    pthread_mutex_lock(&r->pres_mu);
    bool had = pres_del(r->devs, &r->ndevs, key, conn_id, member, sizeof member);
    pthread_mutex_unlock(&r->pres_mu);
    redisReply *rep = had ? pres_cmd(r, "ZREM %s %s", key, member) : NULL;
    if (rep)
        freeReplyObject(rep);
}

static int redis_census(struct bus *b, void (*each)(void *arg, const char *user, size_t len,
                                                     unsigned n),
                        void *arg)
{
    struct rbus *r = (struct rbus *)b;
    char online[48];
    snprintf(online, sizeof online, "chatd:%d:online", r->db);
    int rc = -EIO;
    redisReply *rep = pres_cmd(r, "EVAL %s 1 %s", census_lua, online);
    if (rep && rep->type == REDIS_REPLY_ARRAY) {
        rc = 0;
        for (size_t i = 0; i + 1 < rep->elements; i += 2)
            if (rep->element[i]->type == REDIS_REPLY_STRING &&
                rep->element[i + 1]->type == REDIS_REPLY_INTEGER)
                each(arg, rep->element[i]->str, rep->element[i]->len,
                     (unsigned)rep->element[i + 1]->integer);
    } else if (rep) {
        log_warn("redis_census_failed", "type=%d", rep->type);
    }
    if (rep)
        freeReplyObject(rep);
    return rc;
}

static void redis_hold(struct bus *b, const char *session, uint64_t conn_id, bool on)
{
    struct rbus *r = (struct rbus *)b;
    char key[64], member[64];
    hold_key(r, session, key, sizeof key);
    pthread_mutex_lock(&r->pres_mu);
    bool had = pres_del(r->holds, &r->nholds, key, conn_id, member, sizeof member);
    if (on) {
        snprintf(member, sizeof member, "%016llx:%llx", (unsigned long long)r->nonce,
                 (unsigned long long)conn_id);
        pres_add(&r->holds, &r->nholds, &r->capholds, key, member, "", conn_id);
    }
    pthread_mutex_unlock(&r->pres_mu);
    redisReply *rep = NULL;
    if (on)
        rep = pres_cmd(r, "EVAL %s 1 %s %s %u", refresh_lua, key, member, (unsigned)DEVICE_TTL_MS);
    else if (had)
        rep = pres_cmd(r, "ZREM %s %s", key, member);
    if (rep)
        freeReplyObject(rep);
}


static void answer_key(const struct rbus *r, const char *session, char *key, size_t cap)
{
    snprintf(key, cap, "chatd:%d:ans:%016llx", r->db, (unsigned long long)hash_str(session));
}

static void mark_value(const struct rbus *r, const char *stream, char *v, size_t cap)
{
    snprintf(v, cap, "%016llx:%s", (unsigned long long)r->nonce, stream);
}

static int redis_claim(struct bus *b, const char *session, const char *stream)
{
    struct rbus *r = (struct rbus *)b;
    char holds[64], key[64], value[64], mine[24];
    hold_key(r, session, holds, sizeof holds);
    answer_key(r, session, key, sizeof key);
    mark_value(r, stream, value, sizeof value);
    snprintf(mine, sizeof mine, "%016llx:", (unsigned long long)r->nonce);
    int rc = -EIO;
    redisReply *rep = pres_cmd(r, "EVAL %s 2 %s %s %s %s %u", claim_lua, holds, key, mine, value,
                               (unsigned)MARK_TTL_MS);
    if (rep && rep->type == REDIS_REPLY_INTEGER)
        rc = rep->integer == 1 ? BUS_HELD : rep->integer == 2 ? BUS_BUSY : 0;
    if (rep)
        freeReplyObject(rep);
    if (rc == 0) { /* kept alive by the subscriber thread until released */
        pthread_mutex_lock(&r->pres_mu);
        pres_add(&r->claims, &r->nclaims, &r->capclaims, key, value, "", 0);
        pthread_mutex_unlock(&r->pres_mu);
    }
    return rc;
}

static void redis_release(struct bus *b, const char *session, const char *stream)
{
    struct rbus *r = (struct rbus *)b;
    char value[64];
    mark_value(r, stream, value, sizeof value);
    pthread_mutex_lock(&r->pres_mu);
    for (size_t i = 0; i < r->nclaims; i++) {
        if (strcmp(r->claims[i].member, value) == 0) {
            r->claims[i] = r->claims[--r->nclaims];
            break;
        }
    }
    bool added = r->nmarks < MARKS_MAX &&
                 vec_grow(&r->marks, &r->capmarks, r->nmarks, 1, sizeof *r->marks) == 0;
    if (added) {
        struct pres_dev *m = &r->marks[r->nmarks++];
        memset(m, 0, sizeof *m);
        answer_key(r, session, m->key, sizeof m->key);
        mark_value(r, stream, m->member, sizeof m->member);
    }
    pthread_mutex_unlock(&r->pres_mu);
    if (added)
        uv_async_send(&r->wake);
    /* Dropped: the mark expires (MARK_TTL_MS), and until then other
     * nodes wait for an answer that has ended, up to their timeout. */
}

/* Run script over each (key, member) of v[0..n), in one pipeline, with
 * ttl_ms as its last argument unless 0; the replies are read and dropped.
 * Under pres_mu, or at the close once the thread is gone (c is the
 * presence connection). */
static void eval_each(redisContext *c, const char *script, const struct pres_dev *v, size_t n,
                      unsigned ttl_ms)
{
    size_t sent = 0;
    for (size_t i = 0; c && i < n; i++) {
        int rc = ttl_ms ? redisAppendCommand(c, "EVAL %s 1 %s %s %u", script, v[i].key,
                                             v[i].member, ttl_ms)
                        : redisAppendCommand(c, "EVAL %s 1 %s %s", script, v[i].key, v[i].member);
        if (rc != REDIS_OK)
            break;
        sent++;
    }
    if (c)
        read_replies(c, sent);
}

/* Keep the marks of the answers running here alive (the subscriber
 * thread, every MARK_BEAT_MS). */
static void mark_beat(struct rbus *r)
{
    pthread_mutex_lock(&r->pres_mu);
    if (r->nclaims)
        eval_each(pres_conn(r), mark_refresh_lua, r->claims, r->nclaims, MARK_TTL_MS);
    pthread_mutex_unlock(&r->pres_mu);
}

/* Remove the marks of the answers that ended (the subscriber thread).
 * Unreachable Redis: they expire (MARK_TTL_MS). */
static void record_marks(struct rbus *r)
{
    pthread_mutex_lock(&r->pres_mu);
    if (r->nmarks)
        eval_each(pres_conn(r), release_lua, r->marks, r->nmarks, 0);
    r->nmarks = 0;
    pthread_mutex_unlock(&r->pres_mu);
}

/* KEYS[1] the session's answer mark; ARGV: the control channel, the stop
 * message. */
static const char stop_lua[] =
    "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end "
    "redis.call('PUBLISH', ARGV[1], ARGV[2]) "
    "return 1";

static int redis_stop(struct bus *b, const char *session)
{
    struct rbus *r = (struct rbus *)b;
    char key[64];
    answer_key(r, session, key, sizeof key);
    struct env_writer w = {0};
    env_put(&w, "CS1", 3);
    env_put_str(&w, session);
    int rc = -ENOMEM;
    redisReply *rep = w.oom ? NULL
                            : pres_cmd(r, "EVAL %s 1 %s %s %b", stop_lua, key, r->ctl, w.p, w.n);
    if (!w.oom)
        rc = rep && rep->type == REDIS_REPLY_INTEGER ? rep->integer > 0 : -EIO;
    if (rep)
        freeReplyObject(rep);
    free(w.p);
    return rc;
}

/* KEYS[1] the session's answer mark; ARGV[1] the prefix of stream keys.
 * {stream id, its text so far} of the answer running, or nil. */
static const char live_lua[] =
    "local v = redis.call('GET', KEYS[1]) "
    "if not v then return nil end "
    "local s = string.match(v, ':(.*)$') "
    "if not s then return nil end "
    "return {s, redis.call('GET', ARGV[1] .. s) or ''}";

/* A string reply as a NUL-terminated copy, cut at a NUL (a piece Redis
 * missed leaves zeros: the text is what precedes them). */
static int copy_text(const redisReply *rep, char **text, size_t *len)
{
    size_t n = strnlen(rep->str, rep->len);
    *text = malloc(n + 1);
    if (!*text)
        return -ENOMEM;
    memcpy(*text, rep->str, n);
    (*text)[n] = '\0';
    *len = n;
    return 0;
}

static int redis_stream_live(struct bus *b, const char *session, char stream[BUS_STREAM_MAX + 1],
                             char **text, size_t *len)
{
    struct rbus *r = (struct rbus *)b;
    char key[64], prefix[48];
    answer_key(r, session, key, sizeof key);
    snprintf(prefix, sizeof prefix, "chatd:%d:st:", r->db);
    int rc = -EIO;
    redisReply *rep = pres_cmd(r, "EVAL %s 1 %s %s", live_lua, key, prefix);
    if (rep && rep->type == REDIS_REPLY_NIL) {
        rc = -ENOENT;
    } else if (rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
               rep->element[0]->type == REDIS_REPLY_STRING &&
               rep->element[1]->type == REDIS_REPLY_STRING &&
               rep->element[0]->len <= BUS_STREAM_MAX) {
        memcpy(stream, rep->element[0]->str, rep->element[0]->len);
        stream[rep->element[0]->len] = '\0';
        rc = copy_text(rep->element[1], text, len);
    }
    if (rep)
        freeReplyObject(rep);
    return rc;
}

static int redis_stream_read(struct bus *b, const char *stream, char **text, size_t *len)
{
    struct rbus *r = (struct rbus *)b;
    char key[96];
    stream_key(r, stream, key, sizeof key);
    int rc = -EIO;
    redisReply *rep = pres_cmd(r, "GET %s", key);
    if (rep && rep->type == REDIS_REPLY_NIL) {
        rc = -ENOENT;
    } else if (rep && rep->type == REDIS_REPLY_STRING) {
        rc = copy_text(rep, text, len);
    }
    if (rep)
        freeReplyObject(rep);
    return rc;
}

/* KEYS[1] the user's bucket; ARGV: its size a minute, the tokens wanted.
 * {tokens taken (1 to wanted, as many as there are), 0} or {0, ms until
 * one is there}. */
static const char rate_lua[] =
    "local t = redis.call('TIME') "
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "
    "local cap = tonumber(ARGV[1]) "
    "local b = redis.call('HMGET', KEYS[1], 'l', 't') "
    "local level = tonumber(b[1]) or cap "
    "local last = tonumber(b[2]) or now "
    "level = math.min(cap, level + math.max(0, now - last) * cap / 60000) "
    "local got, wait = 0, 0 "
    "if level >= 1 then got = math.min(tonumber(ARGV[2]), math.floor(level)) level = level - got "
    "else wait = math.ceil((1 - level) * 60000 / cap) end "
    "redis.call('HSET', KEYS[1], 'l', tostring(level), 't', now) "
    "redis.call('PEXPIRE', KEYS[1], 120000) "
    "return {got, wait}";

/* Tokens to take from Redis at once for a budget of per_minute: one for
 * the budgets people have (exact), up to LEASE_MAX for high ones, so that
 * a busy user's messages do not each cost a round trip. The tokens taken
 * ahead are gone from the shared bucket: the budget is never exceeded,
 * though a user may find fewer on another node for LEASE_MS. */
static unsigned lease_size(unsigned per_minute)
{
    unsigned k = per_minute / 600;
    return k < 1 ? 1 : k > LEASE_MAX ? LEASE_MAX : k;
}

static int64_t redis_take_token(struct bus *b, const char *user, unsigned per_minute)
{
    struct rbus *r = (struct rbus *)b;
    uint64_t h = hash_str(user);
    int64_t now = now_ms();
    struct lease *l = &r->leases[h % LEASES];
    pthread_mutex_lock(&r->lease_mu);
    bool leased = l->user == h && l->left > 0 && now < l->until_ms;
    if (leased)
        l->left--;
    pthread_mutex_unlock(&r->lease_mu);
    if (leased)
        return 0;
    char key[64];
    snprintf(key, sizeof key, "chatd:%d:rate:%016llx", r->db, (unsigned long long)h);
    int64_t wait = -1;
    unsigned want = lease_size(per_minute);
    redisReply *rep = pres_cmd(r, "EVAL %s 1 %s %u %u", rate_lua, key, per_minute, want);
    if (rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
        rep->element[0]->type == REDIS_REPLY_INTEGER &&
        rep->element[1]->type == REDIS_REPLY_INTEGER) {
        long long got = rep->element[0]->integer;
        wait = got > 0 ? 0 : rep->element[1]->integer < 0 ? 0 : rep->element[1]->integer;
        if (got > 1) {
            pthread_mutex_lock(&r->lease_mu);
            *l = (struct lease){.user = h, .left = (unsigned)(got - 1), .until_ms = now + LEASE_MS};
            pthread_mutex_unlock(&r->lease_mu);
        }
    } else if (rep) {
        log_warn("redis_rate_failed", "type=%d", rep->type);
    }
    if (rep)
        freeReplyObject(rep);
    return wait;
}

/* Refresh this node's devices and holds (the subscriber thread, every
 * HEARTBEAT_MS); after a Redis restart this counts them again. */
static void heartbeat(struct rbus *r)
{
    char online[48];
    snprintf(online, sizeof online, "chatd:%d:online", r->db);
    pthread_mutex_lock(&r->pres_mu);
    /* A connection that broke with a Redis restart is found broken on
     * first use: made again at once, not at the next beat. */
    for (int attempt = 0; attempt < 2 && r->ndevs + r->nholds; attempt++) {
        redisContext *c = pres_conn(r);
        if (!c)
            break;
        size_t sent = 0;
        bool ok = true;
        for (size_t i = 0; ok && i < r->ndevs + r->nholds; i++) {
            const struct pres_dev *d = i < r->ndevs ? &r->devs[i] : &r->holds[i - r->ndevs];
            ok = redisAppendCommand(c, "EVAL %s 1 %s %s %u", refresh_lua, d->key, d->member,
                                    (unsigned)DEVICE_TTL_MS) == REDIS_OK &&
                 (i >= r->ndevs ||
                  redisAppendCommand(c, "HSET %s %s %s", online, d->user, d->key) == REDIS_OK);
            sent += i < r->ndevs ? 2 : 1;
        }
        if (ok && read_replies(c, sent))
            break;
    }
    pthread_mutex_unlock(&r->pres_mu);
}

/* ---- receiving ---- */

static void on_message(struct rbus *r, const char *data, size_t len, bool from_redis)
{
    uint64_t nonce;
    struct bus_event *ev;
    uint32_t count;
    struct sbuf *frames;
    int rc = env_decode(data, len, &nonce, &ev, &count, &frames);
    if (rc != 0) {
        log_warn(rc == -ENOMEM ? "redis_message_lost" : "redis_bad_message", "bytes=%zu", len);
        return;
    }
    bool remote = nonce != r->nonce;
    for (uint32_t i = 0; i < count; i++) {
        ev[i].remote = remote;
        if (remote) { /* another node's connection and worker */
            ev[i].conn_id = 0;
            ev[i].worker = UINT32_MAX;
        }
    }
    if (from_redis)
        atomic_fetch_add(&r->received, count);
    struct outv o = {0};
    int64_t now = now_ms();
    for (uint32_t i = 0; i < count; i++)
        order_event(r, &ev[i], now, &o);
    out_flush(r, &o);
    free(o.ev);
    if (frames)
        sbuf_unref(frames);
    free(ev);
}

/* Are the shard's messages handed on (subs_out)? The subscriber thread's. */
static bool shard_live(const struct rbus *r, unsigned shard)
{
    return shard < BUS_REDIS_SHARDS && r->requested[shard] && !r->subs_out[shard];
}

/* Forget the order of the sessions of shard `shard` (no longer received). */
static void order_forget_shard(struct rbus *r, unsigned shard)
{
    for (unsigned b = 0; b < ORDER_BUCKETS; b++) {
        struct order_sess **p = &r->order[b];
        while (*p) {
            struct order_sess *os = *p;
            if (shard_of(os->owner) == shard) {
                *p = os->next;
                order_free(r, os);
            } else {
                p = &os->next;
            }
        }
    }
}

/* A message of the control channel, one of
 *   "CK1" | node nonce u64 | conn u64 | user (u8 len, bytes): that node
 *          closes that device of the user (evict-oldest);
 *   "CS1" | session (u8 len, bytes): the node answering the session stops
 *          (stop_generation on another node). */
static void on_ctl(struct rbus *r, const char *data, size_t len)
{
    struct env_reader rb = {.p = (const uint8_t *)data, .n = len};
    const uint8_t *magic = env_take(&rb, 3);
    if (magic && memcmp(magic, "CK1", 3) == 0) {
        uint64_t nonce = env_get_le(&rb, 8), conn_id = env_get_le(&rb, 8);
        char user[BUS_USER_MAX + 1];
        env_get_str(&rb, user, sizeof user);
        if (!rb.bad && nonce == r->nonce && r->base.handler.kick)
            r->base.handler.kick(r->base.handler.app, user, conn_id);
    } else if (magic && memcmp(magic, "CS1", 3) == 0) {
        char session[BUS_SESSION_MAX + 1];
        env_get_str(&rb, session, sizeof session);
        if (!rb.bad && r->base.handler.stop)
            r->base.handler.stop(r->base.handler.app, session);
    } else {
        rb.bad = true;
    }
    if (rb.bad)
        log_warn("redis_bad_message", "channel=control bytes=%zu", len);
}

static void on_reply(struct rbus *r, redisReply *rep)
{
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 3 ||
        rep->element[0]->type != REDIS_REPLY_STRING ||
        rep->element[1]->type != REDIS_REPLY_STRING)
        return;
    const char *what = rep->element[0]->str;
    const char *ch = rep->element[1]->str;
    bool ctl = strcmp(ch, r->ctl) == 0;
    size_t plen = strlen(r->prefix);
    unsigned shard = BUS_REDIS_SHARDS;
    if (!ctl && strncmp(ch, r->prefix, plen) == 0)
        shard = (unsigned)strtoul(ch + plen, NULL, 10);
    if (strcmp(what, "message") == 0 && rep->element[2]->type == REDIS_REPLY_STRING) {
        if (ctl)
            on_ctl(r, rep->element[2]->str, rep->element[2]->len);
        else if (shard_live(r, shard))
            on_message(r, rep->element[2]->str, rep->element[2]->len, true);
        else
            atomic_fetch_add(&r->unwatched, 1); /* see subs_out */
        return;
    }
    if (strcmp(what, "subscribe") != 0)
        return;
    if (!ctl) {
        if (shard >= BUS_REDIS_SHARDS)
            return;
        if (r->subs_out[shard])
            r->subs_out[shard]--;
        pthread_mutex_lock(&r->mu);
        if (shard_live(r, shard))
            r->confirmed[shard] = true;
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
    }
    if (r->pending && --r->pending == 0 && r->resync) {
        /* Subscribed again after a break: what was published meanwhile is
         * lost to this node; the order of every session starts again and
         * the hub fills what came after it. */
        r->resync = false;
        order_tick(r, now_ms(), true);
    }
}

/* ---- receiving: the subscriber thread's loop ---- */

static void sub_connect(struct rbus *r);

/* Replies on the subscribing connection: confirmations, then the
 * channels' messages. NULL when the connection went. */
static void on_sub_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct rbus *r = privdata;
    if (reply && ac == r->ac)
        on_reply(r, reply);
}

/* Send one SUBSCRIBE or UNSUBSCRIBE for the shards listed; false when the
 * connection failed. */
static bool send_subs(struct rbus *r, const char *cmd, const unsigned *shards, unsigned n)
{
    if (!n)
        return true;
    const char *argv[BUS_REDIS_SHARDS + 1];
    size_t argl[BUS_REDIS_SHARDS + 1];
    char names[BUS_REDIS_SHARDS][64];
    argv[0] = cmd;
    argl[0] = strlen(cmd);
    for (unsigned i = 0; i < n; i++) {
        argl[i + 1] = (size_t)snprintf(names[i], sizeof names[i], "%s%u", r->prefix, shards[i]);
        argv[i + 1] = names[i];
    }
    return redisAsyncCommandArgv(r->ac, on_sub_reply, r, (int)n + 1, argv, argl) == REDIS_OK;
}

/* Subscribe to the shards wanted and not yet asked for, unsubscribe from
 * those no longer wanted. False when the connection failed. */
static bool reconcile(struct rbus *r)
{
    unsigned sub[BUS_REDIS_SHARDS], unsub[BUS_REDIS_SHARDS], nsub = 0, nunsub = 0;
    pthread_mutex_lock(&r->mu);
    for (unsigned i = 0; i < BUS_REDIS_SHARDS; i++) {
        bool want = r->want_all || r->want[i];
        if (want && !r->requested[i]) {
            sub[nsub++] = i;
            r->requested[i] = true;
        } else if (!want && r->requested[i]) {
            unsub[nunsub++] = i;
            r->requested[i] = false;
            r->confirmed[i] = false;
        }
    }
    pthread_mutex_unlock(&r->mu);
    for (unsigned i = 0; i < nunsub; i++)
        order_forget_shard(r, unsub[i]);
    for (unsigned i = 0; i < nsub; i++)
        r->subs_out[sub[i]]++;
    r->pending += nsub;
    if (!r->ctl_requested) {
        /* The control channel, before the shards (its confirmation counts
         * among theirs). */
        const char *argv[2] = {"SUBSCRIBE", r->ctl};
        size_t argl[2] = {9, strlen(r->ctl)};
        if (redisAsyncCommandArgv(r->ac, on_sub_reply, r, 2, argv, argl) != REDIS_OK)
            return false;
        r->ctl_requested = true;
        r->pending++;
    }
    if (!r->pending && r->resync) {
        r->resync = false;
        order_tick(r, now_ms(), true);
    }
    return send_subs(r, "SUBSCRIBE", sub, nsub) && send_subs(r, "UNSUBSCRIBE", unsub, nunsub);
}

static void set_connected(struct rbus *r, bool on)
{
    pthread_mutex_lock(&r->mu);
    r->connected = on;
    for (unsigned i = 0; i < BUS_REDIS_SHARDS; i++) {
        r->requested[i] = false;
        r->confirmed[i] = false;
        r->subs_out[i] = 0; /* a new connection: nothing sent on it yet */
    }
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* Connect again after the back-off (100 ms doubling to 2 s). */
static void on_retry(uv_timer_t *t)
{
    sub_connect(t->data);
}

static void sub_retry_later(struct rbus *r)
{
    if (r->stopping)
        return;
    uv_timer_start(&r->retry, on_retry, (uint64_t)r->backoff, 0);
    r->backoff = r->backoff * 2 > 2000 ? 2000 : r->backoff * 2;
}

static void on_auth(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct rbus *r = privdata;
    redisReply *rep = reply;
    if (ac != r->ac || (rep && rep->type != REDIS_REPLY_ERROR))
        return;
    struct log_quoted q;
    log_warn("redis_unreachable", "what=subscribe err=%s",
             log_quotes(&q, rep ? "the password was refused" : ac->errstr));
    redisAsyncDisconnect(r->ac);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct rbus *r = ac->data;
    if (ac != r->ac)
        return;
    uv_timer_stop(&r->conn_timer);
    if (status != REDIS_OK) {
        struct log_quoted q;
        log_warn("redis_unreachable", "what=subscribe err=%s", log_quotes(&q, ac->errstr));
        r->ac = NULL; /* hiredis frees it */
        sub_retry_later(r);
        return;
    }
    r->ac_connected = true;
    r->backoff = 100;
    /* This connection only receives: a Redis cut off (a partition) would
     * go unnoticed, the subscriptions dead, for as long as the kernel
     * keeps the socket. Keepalives find it out in about 30 s; the
     * connection is then made again and what was missed filled. */
    redisEnableKeepAlive(&r->ac->c);
    if (r->password[0] &&
        (r->user[0] ? redisAsyncCommand(r->ac, on_auth, r, "AUTH %s %s", r->user, r->password)
                    : redisAsyncCommand(r->ac, on_auth, r, "AUTH %s", r->password)) != REDIS_OK) {
        redisAsyncDisconnect(r->ac);
        return;
    }
    /* Subscribed afresh: what was published meanwhile is filled once
     * every subscription is confirmed (on_reply), and what this node
     * counts is written again at once (Redis may have restarted empty). */
    r->pending = 0;
    r->resync = true;
    r->ctl_requested = false;
    r->next_heartbeat_ms = 0;
    set_connected(r, true);
    if (!reconcile(r))
        redisAsyncDisconnect(r->ac);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct rbus *r = ac->data;
    if (ac != r->ac)
        return;
    r->ac = NULL; /* hiredis frees it */
    r->ac_connected = false;
    if (status != REDIS_OK) {
        struct log_quoted qn, qe;
        log_warn("redis_connection_lost", "node=%s err=%s", log_quotes(&qn, r->node_id),
                 log_quotes(&qe, ac->errstr));
    }
    set_connected(r, false);
    sub_retry_later(r);
}

/* hiredis has no connect timeout of its own here: a connection not made
 * in CONNECT_TIMEOUT_MS is given up and made again later. */
static void on_conn_timeout(uv_timer_t *t)
{
    struct rbus *r = t->data;
    if (!r->ac || r->ac_connected)
        return;
    redisAsyncContext *ac = r->ac;
    r->ac = NULL;
    log_warn("redis_unreachable", "what=subscribe err=\"connect timed out\"");
    redisAsyncFree(ac);
    sub_retry_later(r);
}

static void sub_connect(struct rbus *r)
{
    if (r->stopping)
        return;
    redisAsyncContext *ac = redisAsyncConnect(r->host, r->port);
    if (!ac || ac->err || redisLibuvAttach(ac, &r->loop) != REDIS_OK) {
        struct log_quoted q;
        log_warn("redis_unreachable", "what=subscribe err=%s",
                 log_quotes(&q, ac ? ac->errstr : "out of memory"));
        if (ac)
            redisAsyncFree(ac);
        sub_retry_later(r);
        return;
    }
    ac->data = r;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    r->ac = ac;
    r->ac_connected = false;
    uv_timer_start(&r->conn_timer, on_conn_timeout, CONNECT_TIMEOUT_MS, 0);
}

/* A subscribing connection that broke with an error (its keepalives found
 * Redis silent, a reset) is not told to hiredis: its libuv adapter drops a
 * poll error, and the connection would stay open and dead, the node
 * receiving nothing. The socket's error is checked every tick instead;
 * such a connection is given up and made again, and what was missed is
 * filled, as after any break. */
static void sub_check(struct rbus *r)
{
    if (!r->ac || !r->ac_connected)
        return;
    int e = 0;
    socklen_t len = sizeof e;
    if (getsockopt(r->ac->c.fd, SOL_SOCKET, SO_ERROR, &e, &len) != 0 || e == 0)
        return;
    redisAsyncContext *ac = r->ac;
    r->ac = NULL; /* its callbacks, called by the free, see it is gone */
    r->ac_connected = false;
    struct log_quoted qn, qe;
    log_warn("redis_connection_lost", "node=%s err=%s", log_quotes(&qn, r->node_id),
             log_quotes(&qe, strerror(e)));
    redisAsyncFree(ac);
    set_connected(r, false);
    sub_retry_later(r);
}

/* Every TICK_MS: held events whose time came, the heartbeat, the marks. */
static void on_tick(uv_timer_t *t)
{
    struct rbus *r = t->data;
    sub_check(r);
    int64_t now = now_ms();
    order_tick(r, now, false);
    if (now >= r->next_heartbeat_ms) {
        r->next_heartbeat_ms = now + HEARTBEAT_MS;
        heartbeat(r);
    }
    if (now >= r->next_markbeat_ms) {
        r->next_markbeat_ms = now + MARK_BEAT_MS;
        mark_beat(r);
    }
}

/* What failed to publish, through this node's order (keep_unsent). */
static void order_unsent(struct rbus *r)
{
    pthread_mutex_lock(&r->mu);
    struct unsent *u = r->unsent;
    r->unsent = NULL;
    r->unsent_tail = &r->unsent;
    pthread_mutex_unlock(&r->mu);
    while (u) {
        struct unsent *next = u->next;
        on_message(r, (const char *)u->p, u->n, false);
        free(u->p);
        free(u);
        u = next;
    }
}

/* A session this node has begun no order of starts where a read of
 * storage here found it (bus_stored): the first event seen then no longer
 * starts it. Another node may commit seqs 2..6 and publish them after a
 * third commits and publishes 7 (its writer paused between its commit and
 * its publish, or killed there); a node that began with 7 passed 2..6,
 * and a device that had resumed up to 1 there got 7 after 1, then 2..6
 * late. Begun at 1, the order holds 7 until 2..6 come or are read from
 * storage. An order in its first moments (START_MS) moves its start down
 * to the seq noted; one that has handed events on is left alone, as is a
 * shard not watched (nothing of it is received here) and a note older
 * than HOLD_MS (an order begun since is newer than it). */
static void order_notes(struct rbus *r)
{
    pthread_mutex_lock(&r->mu);
    struct seq_note *notes = r->notes;
    size_t n = r->nnotes;
    r->notes = NULL;
    r->nnotes = r->capnotes = 0;
    pthread_mutex_unlock(&r->mu);
    int64_t now = now_ms();
    for (size_t i = 0; i < n; i++) {
        const struct seq_note *nt = &notes[i];
        if (!shard_live(r, shard_of(nt->owner)) || now - nt->at_ms > HOLD_MS)
            continue;
        struct order_sess *os = order_get(r, nt->session, nt->owner);
        if (!os || os->started)
            continue;
        os->used_ms = now;
        if (!os->nheld) { /* made just now */
            os->last = nt->seq;
            os->started = true;
            atomic_fetch_add(&r->noted, 1);
        } else if (nt->seq < os->last) {
            os->last = nt->seq; /* start_due fills up to the first held */
            atomic_fetch_add(&r->noted, 1);
        }
    }
    free(notes);
}

static void redis_stored(struct bus *b, const char *session, const char *owner, int64_t seq)
{
    struct rbus *r = (struct rbus *)b;
    if (seq < 0 || strlen(session) > BUS_SESSION_MAX || strlen(owner) > BUS_USER_MAX)
        return;
    pthread_mutex_lock(&r->mu);
    bool added = !r->unsent_closed && r->nnotes < NOTES_MAX &&
                 vec_grow(&r->notes, &r->capnotes, r->nnotes, 1, sizeof *r->notes) == 0;
    if (added) {
        struct seq_note *nt = &r->notes[r->nnotes++];
        snprintf(nt->session, sizeof nt->session, "%s", session);
        snprintf(nt->owner, sizeof nt->owner, "%s", owner);
        nt->seq = seq;
        nt->at_ms = now_ms();
        uv_async_send(&r->wake); /* under mu: quiesce closes the handle after */
    }
    pthread_mutex_unlock(&r->mu);
}

/* Another thread changed what is wanted (bus_watch), ended an answer, left
 * a failed publish to this node, or noted a session's stored seq. */
static void on_wake(uv_async_t *a)
{
    struct rbus *r = a->data;
    order_unsent(r);
    order_notes(r);
    record_marks(r);
    if (r->ac && r->ac_connected && !reconcile(r))
        redisAsyncDisconnect(r->ac);
}

static void close_handle(uv_handle_t *h)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* Close the loop's handles (and the connection): uv_run then returns. */
static void sub_shutdown(struct rbus *r)
{
    r->stopping = true;
    if (r->ac) {
        redisAsyncContext *ac = r->ac;
        r->ac = NULL;
        redisAsyncFree(ac);
    }
    close_handle((uv_handle_t *)&r->tick);
    close_handle((uv_handle_t *)&r->retry);
    close_handle((uv_handle_t *)&r->conn_timer);
    close_handle((uv_handle_t *)&r->wake);
    close_handle((uv_handle_t *)&r->stop);
    set_connected(r, false);
}

static void on_stop(uv_async_t *a)
{
    sub_shutdown(a->data);
}

/* This node needs (delta 1) or no longer needs (-1) the events of user's
 * sessions (user NULL: of every session). Needing, it returns once they
 * are received here, or after WATCH_WAIT_MS. */
static void redis_watch(struct bus *b, const char *user, int delta)
{
    struct rbus *r = (struct rbus *)b;
    unsigned shard = user ? shard_of(user) : 0;
    pthread_mutex_lock(&r->mu);
    unsigned *n = user ? &r->want[shard] : &r->want_all;
    unsigned old = *n;
    if (delta < 0 && *n == 0) {
        pthread_mutex_unlock(&r->mu);
        return;
    }
    *n = delta > 0 ? *n + 1 : *n - 1;
    if ((old == 0) != (*n == 0))
        uv_async_send(&r->wake);
    if (delta > 0) {
        struct timespec until = clock_cond_deadline(WATCH_WAIT_MS);
        for (;;) {
            bool ok = true;
            for (unsigned i = user ? shard : 0; i < (user ? shard + 1 : BUS_REDIS_SHARDS); i++)
                ok = ok && r->confirmed[i];
            if (ok || !r->connected || pthread_cond_timedwait(&r->cv, &r->mu, &until) != 0)
                break;
        }
    }
    pthread_mutex_unlock(&r->mu);
}

/* The subscriber thread: a libuv loop of its own, where hiredis's libuv
 * adapter drives the subscribing connection. */
static void *sub_main(void *arg)
{
    struct rbus *r = arg;
    sub_connect(r);
    uv_timer_start(&r->tick, on_tick, TICK_MS, TICK_MS);
    uv_run(&r->loop, UV_RUN_DEFAULT);
    uv_loop_close(&r->loop);
    sbuf_thread_cleanup();
    return NULL;
}

/* ---- open, close ---- */

static void redis_quiesce(struct bus *b)
{
    struct rbus *r = (struct rbus *)b;
    pthread_mutex_lock(&r->mu);
    r->unsent_closed = true; /* failed publishes are delivered at once from now */
    pthread_mutex_unlock(&r->mu);
    if (r->sub_started) {
        uv_async_send(&r->stop);
        pthread_join(r->sub_thread, NULL); /* it closed the loop */
        r->sub_started = false;
        r->loop_ready = false;
    }
}

static void redis_close(struct bus *b)
{
    struct rbus *r = (struct rbus *)b;
    redis_quiesce(b);
    if (r->loop_ready) { /* made, but its thread never ran */
        sub_shutdown(r);
        uv_run(&r->loop, UV_RUN_DEFAULT);
        uv_loop_close(&r->loop);
    }
    record_marks(r); /* the answers that ended since the thread stopped */
    free(r->notes);
    if (r->pub)
        redisFree(r->pub);
    if (r->pres && !r->pres->err) {
        /* What this node still counts or holds goes now, not at expiry. */
        size_t sent = 0;
        for (size_t i = 0; i < r->ndevs + r->nholds; i++) {
            const struct pres_dev *d = i < r->ndevs ? &r->devs[i] : &r->holds[i - r->ndevs];
            if (redisAppendCommand(r->pres, "ZREM %s %s", d->key, d->member) == REDIS_OK)
                sent++;
        }
        read_replies(r->pres, sent);
        eval_each(r->pres, release_lua, r->claims, r->nclaims, 0);
    }
    if (r->pres)
        redisFree(r->pres);
    free(r->devs);
    free(r->holds);
    free(r->marks);
    free(r->claims);
    while (r->unsent) { /* left when the thread stopped: no one to deliver to */
        struct unsent *u = r->unsent;
        r->unsent = u->next;
        free(u->p);
        free(u);
    }
    for (unsigned k = 0; k < ORDER_BUCKETS; k++)
        while (r->order[k]) {
            struct order_sess *os = r->order[k];
            r->order[k] = os->next;
            order_free(r, os);
        }
    struct log_quoted q;
    if (r->opened)
        log_info("redis_bus_closed",
                 "node=%s published=%llu received=%llu unwatched=%llu lost=%llu held=%llu "
                 "filled=%llu gaps=%llu noted=%llu",
                 log_quotes(&q, r->node_id), (unsigned long long)atomic_load(&r->published),
                 (unsigned long long)atomic_load(&r->received),
                 (unsigned long long)atomic_load(&r->unwatched),
                 (unsigned long long)atomic_load(&r->lost),
                 (unsigned long long)atomic_load(&r->held),
                 (unsigned long long)atomic_load(&r->filled),
                 (unsigned long long)atomic_load(&r->gaps),
                 (unsigned long long)atomic_load(&r->noted));
    pthread_mutex_destroy(&r->pub_mu);
    pthread_mutex_destroy(&r->pres_mu);
    pthread_mutex_destroy(&r->lease_mu);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    memset(r->password, 0, sizeof r->password);
    free(r);
}

static const struct bus_ops redis_ops = {
    .name = "redis",
    .publish = redis_publish,
    .close = redis_close,
    .quiesce = redis_quiesce,
    .admit = redis_admit,
    .leave = redis_leave,
    .watch = redis_watch,
    .take_token = redis_take_token,
    .census = redis_census,
    .hold = redis_hold,
    .claim = redis_claim,
    .stream_read = redis_stream_read,
    .stream_live = redis_stream_live,
    .release = redis_release,
    .stored = redis_stored,
    .stop = redis_stop,
};

int bus_redis_open(struct bus **out, const struct bus_handler *handler, const char *url,
                   const char *node_id, char *err, size_t errlen)
{
    struct rbus *r = calloc(1, sizeof *r);
    if (!r) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    r->base.ops = &redis_ops;
    r->base.handler = *handler;
    r->backoff = 100;
    r->unsent_tail = &r->unsent;
    pthread_mutex_init(&r->pub_mu, NULL);
    pthread_mutex_init(&r->pres_mu, NULL);
    pthread_mutex_init(&r->lease_mu, NULL);
    pthread_mutex_init(&r->mu, NULL);
    /* Timed waits on the monotonic clock: the wall clock set back must
     * not hold a worker waiting for Redis for as long. */
    if (clock_cond_init(&r->cv) != 0)
        pthread_cond_init(&r->cv, NULL);
    snprintf(r->node_id, sizeof r->node_id, "%s", node_id);
    int rc = parse_url(r, url, err, errlen);
    if (rc != 0)
        goto fail;
    snprintf(r->prefix, sizeof r->prefix, "chatd:%d:u:", r->db);
    snprintf(r->ctl, sizeof r->ctl, "chatd:%d:ctl", r->db);
    if (getrandom(&r->nonce, sizeof r->nonce, 0) != sizeof r->nonce)
        r->nonce = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    r->pub = connect_one(r, err, errlen);
    if (!r->pub) {
        rc = -EHOSTUNREACH;
        goto fail;
    }
    if ((rc = net_loop_init(&r->loop)) != 0) {
        snprintf(err, errlen, "cannot start the Redis bus: %s", uv_strerror(rc));
        goto fail;
    }
    uv_async_init(&r->loop, &r->wake, on_wake);
    uv_async_init(&r->loop, &r->stop, on_stop);
    uv_timer_init(&r->loop, &r->tick);
    uv_timer_init(&r->loop, &r->retry);
    uv_timer_init(&r->loop, &r->conn_timer);
    r->wake.data = r->stop.data = r->tick.data = r->retry.data = r->conn_timer.data = r;
    r->loop_ready = true;
    if ((rc = pthread_create(&r->sub_thread, NULL, sub_main, r)) != 0) {
        snprintf(err, errlen, "cannot start the Redis bus: %s", strerror(rc));
        rc = -rc;
        goto fail;
    }
    r->sub_started = true;
    /* Connected for receiving before the first connection is admitted. */
    struct timespec until = clock_cond_deadline(START_WAIT_MS);
    pthread_mutex_lock(&r->mu);
    while (!r->connected && pthread_cond_timedwait(&r->cv, &r->mu, &until) == 0)
        ;
    bool ok = r->connected;
    pthread_mutex_unlock(&r->mu);
    if (!ok) {
        snprintf(err, errlen, "--redis: cannot subscribe on %s:%d", r->host, r->port);
        rc = -ETIMEDOUT;
        goto fail;
    }
    struct log_quoted qn, qh;
    log_info("redis_bus_open", "node=%s redis=%s:%d db=%d shards=%u", log_quotes(&qn, r->node_id),
             log_quotes(&qh, r->host), r->port, r->db, BUS_REDIS_SHARDS);
    r->opened = true;
    *out = &r->base;
    return 0;
fail:
    redis_close(&r->base);
    return rc;
}
