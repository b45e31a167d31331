"""Faults between the nodes (issue 15): what a cluster of chatd nodes does
while the Redis or the PostgreSQL they share hangs, dies or is cut off from
one node, measured under traffic.

- Redis paused (SIGSTOP, then SIGCONT): the nodes' round trips to it end
  at their 2 s timeout, so every write is still answered within a bound
  (the worst answer is measured); afterwards every acked event has reached
  every device once, in seq order.
- Redis killed (SIGKILL) and a new, empty one started on its port: the
  nodes count their devices, `online` entries and admins' holds in it
  again, delivery across nodes resumes, nothing acked is lost.
- PostgreSQL paused (every process of the server stopped): no write is
  acked while it cannot commit; once it goes on, the held writes are
  acked, each stored once at its acked seq.
- PostgreSQL killed (SIGKILL of every process of the server, as a crash
  of its machine) and started again: writes are refused `unavailable`
  (never acked) and /readyz says 503 until the nodes reconnect by
  themselves; the clients' retries with the same id are acked once.
- A network partition: node C in a network namespace of its own reaches
  Redis and PostgreSQL through a veth pair, which the test cuts (nft drops
  what each side receives: packets vanish) while C's batch holds a session
  row locked, and heals. C acks nothing meanwhile, node B carries on, node
  A waits at most 5 s for that row (the server ends C's idle transaction);
  after healing every device has every event once, in order. A 45 s
  partition (CHATD_FAULTS_LONG=1, out of `make test`) shows C finding the
  silence out within about 30 s on both its PostgreSQL and its Redis
  subscription.

The clusters come from test_cluster.py and test_cluster_recovery.py
(imported, not copied). Needs redis-server and PostgreSQL like those; the
partition also needs `ip` (iproute2), `nft` (nftables) and the right to
make namespaces: when one is missing or refused the partition cases alone
are skipped, saying why.

Run by hand: CHATD_BIN=... python3 test_cluster_faults.py [test names].
"""
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from harness import run  # noqa: E402
from checker import History  # noqa: E402
from chatload import ChatClient, check_gapless, first_anomaly, history  # noqa: E402
from test_postgres import Postgres, ack, commits_settled, readyz, user_message  # noqa: E402
import test_cluster  # noqa: E402
from test_cluster import WAIT, Redis  # noqa: E402
from test_cluster_recovery import DEVS, Nodes, device, node_name, wait_all  # noqa: E402

PAUSE = 5.0  # seconds a server is stopped
CUT = 9.0    # seconds node C is cut off: longer than PG_IDLE_TX_MS (5 s)


# ---- helpers ------------------------------------------------------------------------------

class Writer:
    """One device writing to a session, one message at a time, as
    PROTOCOL.md tells clients: a message refused `unavailable` is sent again
    with the same id (after retry_after, at most half a second) until it is
    acked. Records when each message was first sent and when it was acked,
    and the longest wait for any answer. A message unanswered for `limit`
    seconds fails the writer: a node must not leave a write hanging."""

    def __init__(self, client, sid, tag, limit=WAIT * 2):
        self.c, self.sid, self.tag, self.limit = client, sid, tag, limit
        self.acks = []       # (id, seq, first sent, acked at)
        self.refused = []    # (id, at, reply)
        self.worst_answer = 0.0
        self.failure = None
        self.more = threading.Event()
        self.more.set()
        self.thread = threading.Thread(target=self._run, name="writer-" + tag, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def finish(self):
        self.more.clear()
        self.thread.join(self.limit + 10)
        assert not self.thread.is_alive(), "%s did not finish" % self.tag
        assert self.failure is None, "%s: %s" % (self.tag, self.failure)

    def acked(self):
        return {cid: seq for cid, seq, _, _ in self.acks}

    def acked_between(self, t0, t1):
        return [a for a in self.acks if t0 <= a[3] <= t1]

    def worst_ack(self, t0, t1):
        """The longest a message sent before t1 waited for its ack, among
        those acked after t0."""
        waits = [at - sent for _, _, sent, at in self.acks if at >= t0 and sent <= t1]
        return max(waits) if waits else 0.0

    def count(self):
        return len(self.acks)

    def _run(self):
        try:
            i = 0
            while self.more.is_set():
                cid = "%s%d" % (self.tag, i)
                msg = user_message(cid, "%s says %d" % (self.tag, i), self.sid)
                first = time.time()
                while True:
                    t = time.time()
                    try:
                        r = self.c.request(msg, timeout=self.limit)
                    except AssertionError as e:
                        raise AssertionError("%s: no answer to %s within %ss: %s" % (
                            self.c.label, cid, self.limit, e))
                    now = time.time()
                    self.worst_answer = max(self.worst_answer, now - t)
                    if r.get("type") == "ack":
                        self.acks.append((cid, r["seq"], first, now))
                        break
                    if r.get("code") == "unavailable" and r.get("recoverable", True):
                        self.refused.append((cid, now, r))
                        time.sleep(min(r.get("retry_after", 100), 500) / 1000.0)
                        continue
                    raise AssertionError("%s: unexpected answer to %s: %s" % (self.c.label,
                                                                              cid, r))
                i += 1
        except Exception as e:  # the test reports it
            self.failure = e


def wait_acks(writers, more, what):
    base = [w.count() for w in writers]
    wait_all(lambda: all(w.count() >= b + more for w, b in zip(writers, base)) or
             any(w.failure for w in writers), "%d more acks from each writer %s" % (more, what),
             timeout=WAIT * 2)
    for w in writers:
        assert w.failure is None, "%s: %s" % (w.tag, w.failure)


def fault_lines(nodes):
    """What the nodes logged of Redis and storage, for a failure's message."""
    keys = ("event=redis", "event=store", "event=catch_up", "event=bus", "event=send_queue_full")
    return "\n".join("%s: %s" % (node_name(x), line) for x in nodes
                     for line in x.log().splitlines() if any(k in line for k in keys))[-6000:]


def check_session(reader, sid, devs, acked, wait=WAIT, nodes=(), others=None):
    """Storage holds each acked message once, at its acked seq, with no gap
    and nothing else (but the session events `others`, {seq: type});
    every device received every event of the session once, in seq order,
    each the message acked at that seq. `reader` is a (port, token) to
    read the history with."""
    events, last = history(reader[0], sid, reader[1])
    check_gapless(sid, events)
    others = others or {}
    assert {e["seq"]: e["type"] for e in events if e["type"] != "user_message"} == others, \
        [e for e in events if e["type"] != "user_message"]
    events = [e for e in events if e["type"] == "user_message"]
    ids = [e.get("id") for e in events]
    dups = sorted({i for i in ids if ids.count(i) > 1})
    assert not dups, "stored more than once: %s" % dups[:10]
    assert set(ids) == set(acked), "stored but never acked: %s; acked but not stored: %s" % (
        sorted(set(ids) - set(acked))[:10], sorted(set(acked) - set(ids))[:10])
    for e in events:
        assert acked[e["id"]] == e["seq"], "stored at %d, acked at %d: %s" % (
            e["seq"], acked[e["id"]], e)
    total = len(events) + len(others)
    assert last == total, (last, total)
    for d in devs:
        d.wait_count(sid, total, wait)
    time.sleep(0.3)  # a late duplicate would show up here
    for d in devs:
        with d.cond:
            got = [(e["seq"], e.get("id")) for e in d.events if e.get("session_id") == sid]
        seqs = [s for s, _ in got]
        assert seqs == list(range(1, total + 1)), \
            "%s: not every event once in seq order (%d stored): %s (connection closed %s, " \
            "code %s, read error %s)\nThe nodes said:\n%s" % (
                d.label, total, first_anomaly(seqs, 1), d.closed, d.close_code, d.read_error,
                fault_lines(nodes))
        wrong = [(s, i) for s, i in got if acked.get(i) != s and s not in others]
        assert not wrong, "%s: events not the messages acked at their seq: %s" % (
            d.label, wrong[:5])
        assert not d.dup_replies, (d.label, d.dup_replies[:3])
        assert d.read_error is None, (d.label, d.read_error)
    return total


def check_history(port, sessions, writers, devices, firsts):
    """The history checker (tests/checker.py) over the whole run, recorded
    after the fact from what the writers and devices kept: each attempt of
    each message with its answer, and every frame each device got, in
    arrival order. sessions: {session id: token that may read it}; firsts:
    [(client, id, content, session id, seq)] sent before the writers. Every
    device must end holding every event of the sessions it writes or
    watches. Returns the number of events checked."""
    h = History()
    for c, cid, content, sid, seq in firsts:
        h.send(c.sub, cid, content, sid)
        h.ack(c.sub, cid, sid, seq)
    for w in writers:
        refusals = {}
        for cid, _, reply in w.refused:
            refusals.setdefault(cid, []).append(reply)
        acked = w.acked()
        n = len(acked) + len([cid for cid in refusals if cid not in acked])
        for i in range(n):
            cid = "%s%d" % (w.tag, i)
            content = "%s says %d" % (w.tag, i)
            for reply in refusals.get(cid, []):
                h.send(w.c.sub, cid, content, w.sid)
                h.refused(w.c.sub, cid,
                          maybe_stored="nothing was stored" not in reply.get("message", ""))
            if cid in acked:
                h.send(w.c.sub, cid, content, w.sid)
                h.ack(w.c.sub, cid, w.sid, acked[cid])
    complete = {}
    for d, sids in devices:
        conn = h.connect(d.label, d.sub)
        with d.cond:
            frames = list(d.log)
        for m in frames:
            h.received(conn, m)
        complete[d.label] = sids
    final = {}
    for sid, token in sessions.items():
        events, _ = history(port, sid, token)
        check_gapless(sid, events)
        final[sid] = events
    anomalies = h.check(final, complete=complete, out=lambda s: print("     " + s))
    assert not anomalies, "the history checker found: %s" % anomalies[:10]
    return sum(len(v) for v in final.values())


def first_message(client, cid="first"):
    return ack(client.request(user_message(cid, cid)), cid)["session_id"]


def redis_cmd(port, *args, host="127.0.0.1"):
    """One command to Redis over RESP; returns the decoded reply."""
    req = b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(a), a) for a in (x.encode() if isinstance(x, str) else x
                                                  for x in args))
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(req)
        f = s.makefile("rb")

        def read():
            line = f.readline().rstrip(b"\r\n")
            kind, rest = line[:1], line[1:]
            if kind in (b"+", b"-"):
                return rest.decode()
            if kind == b":":
                return int(rest)
            if kind == b"$":
                n = int(rest)
                if n < 0:
                    return None
                v = f.read(n + 2)[:-2]
                return v.decode(errors="replace")
            if kind == b"*":
                return [read() for _ in range(int(rest))]
            raise AssertionError("bad reply from Redis: %r" % line)
        return read()


def redis_presence(port):
    """What Redis keeps of presence: {user: devices} from the online hash
    and the device sets, and the number of hold sets with members."""
    online = redis_cmd(port, "HGETALL", "chatd:0:online") or []
    users = {}
    for user, key in zip(online[::2], online[1::2]):
        users[user] = redis_cmd(port, "ZCARD", key)
    holds = sum(1 for k in redis_cmd(port, "KEYS", "chatd:0:hold:*")
                if redis_cmd(port, "ZCARD", k) > 0)
    return users, holds


def pg_pids(pg):
    """The postmaster's pid and its children's."""
    with open(os.path.join(pg.data, "postmaster.pid")) as f:
        pm = int(f.readline())
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    st = f.read()
            except OSError:
                continue
            if int(st[st.rindex(")") + 2:].split()[1]) == pm:
                kids.append(int(d))
    return pm, kids


def signal_pg(pg, sig):
    """Stop (SIGSTOP) or go on (SIGCONT) or kill (SIGKILL) every process
    of the server: the postmaster first when stopping or killing (no new
    child meanwhile), last when going on."""
    pm, kids = pg_pids(pg)
    order = [pm] + kids if sig != signal.SIGCONT else kids + [pm]
    for pid in order:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return order


def gone(pid):
    """The process has exited (reaped, or a zombie)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            st = f.read()
    except OSError:
        return True
    return st[st.rindex(")") + 2] in "ZX"


# ---- 1. Redis paused ------------------------------------------------------------------------

def test_redis_paused_under_traffic():
    """Redis is stopped (SIGSTOP) for PAUSE seconds while devices on nodes A
    and B write to one session and a device on C only reads. Every round
    trip a node makes to Redis ends at its 2 s timeout, so every write is
    still answered (acked: storage is up) within a bound, and /readyz
    answers (Redis does not make a node unready). After SIGCONT every acked
    event reaches every device once, in seq order."""
    redis = test_cluster.REDIS
    with Nodes("redispause") as nodes:
        devs = [device(x, "ava") for x in nodes]
        sid = first_message(devs[0])
        writers = [Writer(devs[i], sid, "w%s-" % "ab"[i]).start() for i in (0, 1)]
        wait_acks(writers, 5, "before the pause")
        stopped = time.time()
        os.kill(redis.proc.pid, signal.SIGSTOP)
        try:
            ready = []
            while time.time() - stopped < PAUSE:
                t = time.time()
                ready.append((readyz(nodes[2].port), time.time() - t))
                time.sleep(0.5)
        finally:
            os.kill(redis.proc.pid, signal.SIGCONT)
        resumed = time.time()
        wait_acks(writers, 5, "after the pause")
        for w in writers:
            w.finish()
        acked = {"first": 1}
        for w in writers:
            acked.update(w.acked())
        total = check_session((nodes[2].port, devs[2].token), sid, devs, acked, nodes=nodes)
        during = sum(len(w.acked_between(stopped, resumed)) for w in writers)
        worst = max(w.worst_ack(stopped, resumed) for w in writers)
        assert all(code == 200 for code, _ in ready), ready
        # Each of a write's round trips to Redis (its budget, the batch's
        # publish and its one retry) ends within 2 s: far below this bound.
        assert worst < 15, worst
        print("     Redis paused %.1f s: %d events, %d acked during the pause, worst ack "
              "%.2f s, /readyz 200 within %.2f s" % (resumed - stopped, total, during, worst,
                                                      max(t for _, t in ready)))


# ---- 2. Redis killed, a new empty one on its port ------------------------------------------

def test_redis_killed_and_restarted_empty():
    """Redis is SIGKILLed while devices write, and a new Redis with nothing
    in it starts on its port (as after a crash without persistence). The
    nodes count their devices, the users' `online` entries and an admin's
    hold in it again (the heartbeat after subscribing again), the device
    limit holds again across nodes, delivery across nodes resumes and
    nothing acked is lost."""
    redis = test_cluster.REDIS
    with Nodes("rediskill", extra=("--max-devices", "3")) as nodes:
        devs = [device(x, "bea") for x in nodes]
        adm = ChatClient(nodes[2].port, "root", roles=("admin",), name="Root", label="root@c")
        DEVS.append(adm)
        sid = first_message(devs[0])
        ack(adm.request({"type": "admin_join", "id": "j", "session_id": sid}), "join")
        users, holds = redis_presence(redis.port)
        assert users.get("bea") == 3 and holds == 1, (users, holds)
        writers = [Writer(devs[i], sid, "w%s-" % "ab"[i]).start() for i in (0, 1)]
        wait_acks(writers, 5, "before the kill")
        killed = time.time()
        redis.proc.kill()
        redis.proc.wait()
        time.sleep(1.0)
        redis.start()  # the same port, empty
        restarted = time.time()
        # Counted again within a heartbeat (10 s) of subscribing again.
        back = wait_all(lambda: (lambda p: p if p[0].get("bea") == 3 and p[0].get("root") == 1
                                 and p[1] == 1 else None)(redis_presence(redis.port)),
                        "devices, online entries and the hold counted again in the new Redis",
                        timeout=WAIT + 15)
        rebuilt = time.time() - restarted
        wait_acks(writers, 5, "after the restart")
        for w in writers:
            w.finish()
        # The limit holds across nodes again: a 4th device of bea is refused.
        status, _, body, _ = test_cluster.refused_upgrade(
            nodes[1].port, token=test_cluster.make_token("bea"))
        assert status == 429, (status, body)
        acked = {"first": 1}
        for w in writers:
            acked.update(w.acked())
        total = check_session((nodes[2].port, devs[2].token), sid, devs, acked, nodes=nodes,
                              others={2: "admin_join"})
        assert adm.seqs(sid) == list(range(2, total + 1)), first_anomaly(adm.seqs(sid), 2)
        for x in nodes:
            assert "event=redis_connection_lost" in x.log(), node_name(x)
        print("     Redis down %.1f s: %d events; counted again %.1f s after the new Redis "
              "started: %s" % (restarted - killed, total, rebuilt, back))


# ---- 3. PostgreSQL paused -------------------------------------------------------------------

def test_postgres_paused_under_traffic():
    """Every process of PostgreSQL is stopped (SIGSTOP) for PAUSE seconds
    while devices on A and B write. No write is acked while it cannot
    commit (the writer waits on its connection: nothing is refused either,
    the server being neither gone nor refusing); after SIGCONT the held
    writes are acked, each stored once at its acked seq, and every device
    gets every event once, in order."""
    pg = test_cluster.PG
    with Nodes("pgpause", n=2) as nodes:
        devs = [device(x, "cid") for x in nodes]
        sid = first_message(devs[0])
        writers = [Writer(devs[i], sid, "w%s-" % "ab"[i]).start() for i in (0, 1)]
        wait_acks(writers, 5, "before the pause")
        stopped = time.time()
        signal_pg(pg, signal.SIGSTOP)
        try:
            time.sleep(PAUSE)
            ready = [readyz(x.port) for x in nodes]
        finally:
            signal_pg(pg, signal.SIGCONT)
        resumed = time.time()
        wait_acks(writers, 5, "after the pause")
        for w in writers:
            w.finish()
        # An ack in the pause's first second may be of a commit done
        # before it; after that none can come.
        during = [a for w in writers for a in w.acked_between(stopped + 1.0, resumed)]
        assert not during, "acked while PostgreSQL was stopped: %s" % during[:5]
        refused = [r for w in writers for r in w.refused]
        held = max(w.worst_ack(stopped, resumed) for w in writers)
        acked = {"first": 1}
        for w in writers:
            acked.update(w.acked())
        total = check_session((nodes[1].port, devs[1].token), sid, devs, acked, nodes=nodes)
        assert held >= PAUSE - 1, "no write waited for the pause: not under traffic (%.2f)" % held
        print("     PostgreSQL paused %.1f s: %d events, 0 acked during the pause, %d refused, "
              "longest wait for an ack %.2f s, /readyz during it %s" % (
                  resumed - stopped, total, len(refused), held, ready))


# ---- 4. PostgreSQL killed and started again -------------------------------------------------

def test_postgres_killed_and_restarted():
    """Every process of PostgreSQL is SIGKILLed under traffic (a crash of
    its machine: no shutdown, no answer to what was in flight), and it is
    started again after PAUSE seconds (crash recovery). What chatd does
    (src/store/postgres/writer.c): a write whose connection broke before
    COMMIT is refused `unavailable`; one cut during COMMIT is settled by
    asking the server after reconnecting (pg_xact_status), refused only
    when that cannot be learnt; while the server is away every write is
    refused at once and /readyz says 503; the writer reconnects by itself
    (back-off 100 ms doubling to 5 s) and /readyz says 200 again. A writer
    settling a cut COMMIT holds the writes queued behind it until it knows:
    they are acked late rather than refused. Devices retry with the same
    id: nothing acked is lost, nothing stored twice."""
    pg = test_cluster.PG
    with Nodes("pgkill", n=2) as nodes:
        devs = [device(x, "dee") for x in nodes]
        sid = first_message(devs[0])
        writers = [Writer(devs[i], sid, "w%s-" % "ab"[i]).start() for i in (0, 1)]
        wait_acks(writers, 5, "before the kill")
        killed = time.time()
        pids = signal_pg(pg, signal.SIGKILL)
        wait_all(lambda: all(gone(p) for p in pids), "the server's processes gone")
        unready = set()
        try:
            def all_unready():
                for x in nodes:
                    if readyz(x.port) == 503:
                        unready.add(node_name(x))
                return len(unready) == len(nodes) and time.time() - killed >= PAUSE
            wait_all(all_unready, "/readyz 503 on every node while PostgreSQL is down",
                     timeout=WAIT)
            refused_down = sum(len(w.refused) for w in writers)
        finally:
            pg.start()
        started = time.time()
        wait_all(lambda: all(readyz(x.port) == 200 for x in nodes),
                 "/readyz 200 on every node once PostgreSQL is back")
        ready_after = time.time() - started
        wait_acks(writers, 5, "after the restart")
        for w in writers:
            w.finish()
        during = [a for w in writers for a in w.acked_between(killed + 1.0, started)]
        assert not during, "acked while PostgreSQL was down: %s" % during[:5]
        # The kill met the traffic: a write was refused while the server
        # was away, or the kill cut a COMMIT, which that node's writer
        # settled once the server was back while the writes behind it
        # waited in its queue (acked late, not refused).
        settled = commits_settled(*(x.log() for x in nodes))
        assert refused_down > 0 or settled, "nothing refused while PostgreSQL was down"
        for w in writers:
            for cid, _, r in w.refused:
                assert r.get("retry_after", 0) > 0, r
        acked = {"first": 1}
        for w in writers:
            acked.update(w.acked())
        total = check_session((nodes[1].port, devs[1].token), sid, devs, acked, nodes=nodes)
        logs = [x.log() for x in nodes]
        for x, log in zip(nodes, logs):
            assert "event=store_unhealthy" in log and "event=store_healthy" in log, \
                "%s: %s" % (node_name(x), log[-3000:])
        print("     PostgreSQL killed, down %.1f s: %d events, %d refusals, ready %.1f s "
              "after it started, %d commits settled" % (
                  started - killed, total, sum(len(w.refused) for w in writers), ready_after,
                  commits_settled(*logs)))


# ---- 5. a network partition -------------------------------------------------------------------

CLONE_NEWNET = 0x40000000


class Netns:
    """A network namespace with a veth pair to the test's own: the host
    side 10.231.<i>.1/30, the namespace's side .2. `cut` makes each side
    drop the IP packets that come in from the other (nft, an input hook):
    they leave without an error and vanish, a partition, not a refusal;
    the link and ARP stay up, as behind a router. `heal` removes the
    rules."""

    def __init__(self):
        self.name = "chatd-nf-%d" % os.getpid()
        self.host_if = "cnf%da" % (os.getpid() % 100000)
        self.ns_if = "cnf%db" % (os.getpid() % 100000)
        self.table = "chatd_cut_%d" % os.getpid()
        self.error = None
        self.made = False
        used = subprocess.run(["ip", "-4", "-o", "addr"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL).stdout.decode() \
            if self._have_ip() else ""
        i = os.getpid() % 250 + 1
        while "10.231.%d." % i in used:
            i = i % 250 + 1
        self.host_ip, self.ns_ip = "10.231.%d.1" % i, "10.231.%d.2" % i
        if not self._have_ip():
            self.error = "`ip` (Debian package iproute2) is not installed"
            return
        if not shutil.which("nft"):
            self.error = "`nft` (Debian package nftables) is not installed"
            return
        try:
            self._ip("netns", "add", self.name)
            self.made = True
            self._ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if,
                     "netns", self.name)
            self._ip("addr", "add", self.host_ip + "/30", "dev", self.host_if)
            self._ip("link", "set", self.host_if, "up")
            self._ip("-n", self.name, "addr", "add", self.ns_ip + "/30", "dev", self.ns_if)
            self._ip("-n", self.name, "link", "set", self.ns_if, "up")
            self._ip("-n", self.name, "link", "set", "lo", "up")
            self.run(lambda: None)  # setns works too
            self.cut()  # and so do the rules
            self.heal()
        except (AssertionError, OSError) as e:
            self.error = str(e)
            self.close()

    @staticmethod
    def _have_ip():
        return subprocess.run(["sh", "-c", "command -v ip"], stdout=subprocess.DEVNULL).returncode \
            == 0

    @staticmethod
    def _ip(*args):
        p = subprocess.run(["ip"] + list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=30)
        assert p.returncode == 0, "ip %s: %s" % (" ".join(args), p.stdout.decode().strip())

    def run(self, fn):
        """fn() on a thread inside the namespace: the sockets it makes
        stay there (the thread's readers then use them from anywhere)."""
        out = {}

        def body():
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = os.open("/run/netns/" + self.name, os.O_RDONLY)
                try:
                    if libc.setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns into " + self.name)
                finally:
                    os.close(fd)
                out["v"] = fn()
            except BaseException as e:  # handed to the caller
                out["e"] = e
        t = threading.Thread(target=body, daemon=True)
        t.start()
        t.join()
        if "e" in out:
            raise out["e"]
        return out.get("v")

    def _nft(self, ns, script):
        argv = (["ip", "netns", "exec", self.name] if ns else []) + ["nft", "-f", "-"]
        p = subprocess.run(argv, input=script.encode(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=30)
        assert p.returncode == 0, "nft: %s\n%s" % (p.stdout.decode().strip(), script)

    def _rules(self, ifname):
        return ("table inet %s {\n chain input {\n  type filter hook input priority -300;\n"
                "  iifname \"%s\" meta nfproto ipv4 drop\n }\n}\n" % (self.table, ifname))

    def cut(self):
        self._nft(False, self._rules(self.host_if))
        self._nft(True, self._rules(self.ns_if))

    def heal(self):
        self._nft(False, "delete table inet %s\n" % self.table)
        self._nft(True, "delete table inet %s\n" % self.table)

    def close(self):
        if self.made:
            subprocess.run(["nft", "delete", "table", "inet", self.table],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            subprocess.run(["ip", "link", "del", self.host_if], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            subprocess.run(["ip", "netns", "del", self.name], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            self.made = False


NETNS = None


class Partitioned(Nodes):
    """Three nodes; node C runs in NETNS and reaches PostgreSQL and Redis
    over TCP through the veth pair (A and B on loopback and the Unix
    socket)."""

    def __init__(self, db):
        super().__init__(db)
        c = self.nodes[2]
        i = c.args.index("--postgres") + 1
        c.args[i] = c.args[i].replace("host=%s" % test_cluster.PG.dir,
                                      "host=%s port=5432" % NETNS.host_ip)
        i = c.args.index("--redis") + 1
        c.args[i] = "redis://%s:%d/0" % (NETNS.host_ip, test_cluster.REDIS.port)
        c.wrap = ["ip", "netns", "exec", NETNS.name]


def test_partition_of_one_node():
    """Node C, in a namespace of its own, is cut off from Redis and
    PostgreSQL (its packets dropped) for CUT seconds while devices write on A
    (to the session of a user with devices on A and C) and on B (another
    user's session, devices on A and B), and C's device writes too. C acks
    nothing while it cannot store; B carries on; A waits at most
    PG_IDLE_TX_MS (5 s) for a session row that C's cut-off transaction
    holds locked: the server ends that transaction (chatd sets
    idle_in_transaction_session_timeout). After healing C's held writes
    commit, or are refused (their transaction ended) and retried; C's
    subscription, never broken, delivers what it missed, and every device
    of both users has every event once, in order."""
    if NETNS.error:
        print("     SKIP test_partition_of_one_node: no network namespace here: %s" % NETNS.error)
        return
    redis, pg = test_cluster.REDIS, test_cluster.PG
    redis_cmd(redis.port, "CONFIG", "SET", "bind", "127.0.0.1 " + NETNS.host_ip)
    redis_cmd(redis.port, "CONFIG", "SET", "protected-mode", "no")
    with Partitioned("partition") as nodes:
        a, b, _ = nodes
        # C's devices are made inside its namespace, on its loopback.
        c_port = nodes[2].port
        cdev = NETNS.run(lambda: ChatClient(c_port, "eve", label="eve@node-c"))
        DEVS.append(cdev)
        adev = device(a, "eve")
        sid = first_message(adev)
        other = [device(a, "fox"), device(b, "fox")]
        osid = first_message(other[1], "o-first")
        writers = [Writer(adev, sid, "wa-"), Writer(cdev, sid, "wc-"),
                   Writer(other[1], osid, "wb-")]
        for w in writers:
            w.start()
        wait_acks(writers, 5, "before the cut")
        # Cut C off while its writer is inside a transaction that holds the
        # session row locked (A's writer waits for it): a cut that misses
        # is healed and made again.
        in_tx = ("SELECT count(*) FROM pg_stat_activity WHERE client_addr = '%s' AND "
                 "state = 'idle in transaction' AND backend_xid IS NOT NULL" % NETNS.ns_ip)
        blocking = "SELECT (%s) > 0 AND (SELECT count(*) FROM pg_stat_activity WHERE " \
            "wait_event_type = 'Lock') > 0" % in_tx
        tries = 0
        try:
            while True:
                tries += 1
                cut_at = time.time()
                NETNS.cut()
                time.sleep(0.2)
                if pg.psql(blocking, "partition") == "t":
                    break
                assert tries < 50, "C's writer never cut off inside a transaction"
                NETNS.heal()
                wait_acks([writers[1]], 1, "after a short cut")
            # The server ends that transaction after PG_IDLE_TX_MS, and A goes on.
            wait_all(lambda: pg.psql(in_tx, "partition") == "0",
                     "C's transaction ended by the server", timeout=CUT)
            ended = time.time() - cut_at
            time.sleep(max(0.0, cut_at + CUT - time.time()))
            c_ready = NETNS.run(lambda: readyz(c_port))
        finally:
            NETNS.heal()
        healed = time.time()
        wait_acks(writers, 5, "after healing")
        for w in writers:
            w.finish()
        wa, wc, wb = writers
        c_during = wc.acked_between(cut_at + 1.0, healed)
        assert not c_during, "node C acked while cut off: %s" % c_during[:5]
        b_during = wb.acked_between(cut_at + 1.0, healed)
        assert b_during, "node B acked nothing while C was cut off"
        # A writes to the session C writes to: C's batch, cut off mid-way,
        # may hold its row locked; the server ends that transaction after
        # PG_IDLE_TX_MS (5 s), and A goes on before the link is back.
        a_during = wa.acked_between(cut_at + 1.0, healed)
        assert a_during, "node A acked nothing in the %.0f s node C was cut off: C's " \
            "transaction, cut off mid-batch, kept the session row locked" % CUT
        assert NETNS.host_ip in nodes[2].log(), "node C not reaching Redis through the veth"
        # C's batch was not committed: once C was back, its writer found the
        # connection ended before COMMIT and ran the batch again on a new
        # one (or, cut during COMMIT, asked the server and refused it).
        c_log = nodes[2].log()
        redone = c_log.count("event=store_batch_retried engine=postgres reason=reconnected")
        assert redone or wc.refused, "node C's ended transaction neither run again nor " \
            "refused:\n%s" % fault_lines(nodes[2:])
        acked = {"first": 1}
        for w in (wa, wc):
            acked.update(w.acked())
        total = check_session((a.port, adev.token), sid, [adev, cdev], acked, nodes=nodes)
        oacked = {"o-first": 1}
        oacked.update(wb.acked())
        ototal = check_session((b.port, other[1].token), osid, other, oacked, nodes=nodes)
        check_history(a.port, {sid: adev.token, osid: other[1].token}, writers,
                      [(adev, [sid]), (cdev, [sid]), (other[0], [osid]), (other[1], [osid])],
                      [(adev, "first", "first", sid, 1), (other[1], "o-first", "o-first", osid, 1)])
        print("     C cut off %.1f s (try %d) inside a transaction, which the server ended "
              "after %.1f s: %d + %d events; during the cut B acked %d, C 0, A %d; "
              "worst ack C %.2f s, A %.2f s, B %.2f s; C ran %d batch again, refused %d; "
              "C's /readyz during it %s" % (
                  healed - cut_at, tries, ended, total, ototal, len(b_during),
                  len(wa.acked_between(cut_at + 1.0, healed)),
                  wc.worst_ack(cut_at, healed), wa.worst_ack(cut_at, healed),
                  wb.worst_ack(cut_at, healed), redone, len(wc.refused), c_ready))


LONG_CUT = 45.0  # longer than the 30 s in which a node finds out a silent peer


def test_long_partition_of_one_node():
    """As above, node C cut off, but for LONG_CUT seconds: longer than the
    30 s in which chatd finds a silent peer out. Its writer's round trip,
    whose bytes go unanswered, ends at tcp_user_timeout (30 s): C refuses
    its writes `unavailable` and says 503 on /readyz before the link is
    back; its subscribing connection, which only receives, ends at its
    keepalives (about 30 s) and is made again after healing, filling what
    was missed. Afterwards every device has every event once, in order.
    Out of `make test` (it takes a minute): CHATD_FAULTS_LONG=1 runs it."""
    if not os.environ.get("CHATD_FAULTS_LONG"):
        print("     SKIP test_long_partition_of_one_node: set CHATD_FAULTS_LONG=1 to run it")
        return
    if NETNS.error:
        print("     SKIP test_long_partition_of_one_node: no network namespace here: %s" %
              NETNS.error)
        return
    redis = test_cluster.REDIS
    redis_cmd(redis.port, "CONFIG", "SET", "bind", "127.0.0.1 " + NETNS.host_ip)
    redis_cmd(redis.port, "CONFIG", "SET", "protected-mode", "no")
    with Partitioned("longpartition") as nodes:
        a, b, _ = nodes
        c_port = nodes[2].port
        cdev = NETNS.run(lambda: ChatClient(c_port, "gil", label="gil@node-c"))
        DEVS.append(cdev)
        devs = [device(a, "gil"), device(b, "gil"), cdev]
        sid = first_message(devs[0])
        writers = [Writer(devs[0], sid, "wa-"), Writer(cdev, sid, "wc-")]
        for w in writers:
            w.start()
        wait_acks(writers, 5, "before the cut")
        lost_before = nodes[2].log().count("event=redis_connection_lost")
        cut_at = time.time()
        NETNS.cut()
        unready_at = None
        try:
            while time.time() - cut_at < LONG_CUT:
                if unready_at is None and NETNS.run(lambda: readyz(c_port)) == 503:
                    unready_at = time.time() - cut_at
                time.sleep(0.5)
            lost_at_heal = nodes[2].log().count("event=redis_connection_lost")
        finally:
            NETNS.heal()
        healed = time.time()
        wait_all(lambda: NETNS.run(lambda: readyz(c_port)) == 200, "C ready after healing")
        ready_after = time.time() - healed
        wait_acks(writers, 5, "after healing")
        for w in writers:
            w.finish()
        wa, wc = writers
        assert not wc.acked_between(cut_at + 1.0, healed), "node C acked while cut off"
        assert wa.acked_between(cut_at + 1.0, healed), "node A acked nothing meanwhile"
        assert unready_at is not None, "node C's /readyz never said 503 in %.0f s" % LONG_CUT
        c_refused = [at - cut_at for _, at, _ in wc.refused if at < healed]
        assert c_refused, "node C refused nothing in the %.0f s it was cut off" % LONG_CUT
        assert lost_at_heal > lost_before, "node C's subscription was not found dead " \
            "in %.0f s:\n%s" % (LONG_CUT, fault_lines(nodes[2:]))
        acked = {"first": 1}
        for w in writers:
            acked.update(w.acked())
        total = check_session((a.port, devs[0].token), sid, devs, acked, nodes=nodes)
        check_history(a.port, {sid: devs[0].token}, writers, [(d, [sid]) for d in devs],
                      [(devs[0], "first", "first", sid, 1)])
        print("     C cut off %.1f s: %d events; C's first refusal after %.1f s, /readyz 503 "
              "after %.1f s, its subscription found dead before healing; ready %.1f s after "
              "healing" % (healed - cut_at, total, min(c_refused), unready_at, ready_after))


def main():
    global NETNS
    NETNS = Netns()
    try:
        test_cluster.PG = Postgres(listen=NETNS.host_ip, trust_from=NETNS.ns_ip) \
            if not NETNS.error else Postgres()
        try:
            test_cluster.REDIS = Redis()
            try:
                run([test_redis_paused_under_traffic,
                     test_redis_killed_and_restarted_empty,
                     test_postgres_paused_under_traffic,
                     test_postgres_killed_and_restarted,
                     test_partition_of_one_node,
                     test_long_partition_of_one_node])
            finally:
                test_cluster.REDIS.close()
        finally:
            test_cluster.PG.close()
    finally:
        NETNS.close()


if __name__ == "__main__":
    main()
