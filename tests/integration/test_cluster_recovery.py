"""Recovery in a cluster (issue 14): three chatd nodes on one Redis and one
PostgreSQL, as in test_cluster.py (whose fixtures this file uses), and what
a client sees when a device moves between nodes or the database restarts.

- A device that left node A resumes on node C: it gets exactly what it
  missed, in order, then the live events; and again on its way back to A
  while another device keeps writing.
- A node that stopped watching a user (their last device there left mid-
  burst) gives the user's next device there nothing older than what comes
  after it arrived.
- An event one node publishes late (held back on its way to Redis) is not
  passed by a later one on a node whose device just resumed.
- PostgreSQL restarts while devices on all three nodes write to one
  session and retry what is refused with the same id: every acked message
  is stored once, at its acked seq, every device has every event once in
  seq order, and /readyz says 503 during the outage and 200 after.
- The node running a user's assistant answer is SIGKILLed mid-answer: what
  it acked is stored and delivered, the session goes on on another node,
  and the device that was on the dead node resumes elsewhere.
- A device that resumes on another node while an answer streams gets the
  answer so far, then the live pieces (PROTOCOL.md section 4).
- A COMMIT done on the server whose answer one node lost, that node then
  cut off the database for a while: what the restart of test 2 runs into
  now and then, made certain (a synchronous standby that does not exist
  holds the answer; a role made NOLOGIN keeps that node out).

What test_cluster.py already covers is not repeated here: a SIGKILLed
node's device slots (test_sigkill_of_a_node_gives_its_slots_back) and a
Redis restart mid-traffic (test_redis_restart_mid_traffic_loses_nothing).
The assistant runs on the fake provider (tests/fake_provider.py).

Needs redis-server and PostgreSQL like test_cluster.py: missing binaries
fail the test, they never skip it.
"""
import os
import shutil
import socket
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from harness import SLOW, run  # noqa: E402
from chatload import ChatClient, check_gapless, first_anomaly, history, pipeline  # noqa: E402
from fake_provider import FakeProvider, answer_for  # noqa: E402
from test_postgres import Postgres, ack, commits_settled, readyz, user_message  # noqa: E402
import test_cluster  # noqa: E402
from test_cluster import WAIT, Cluster, Redis, check_devices  # noqa: E402


def node_name(node):
    return node.args[node.args.index("--node-id") + 1]


DEVS = []  # the running test's devices, closed before its nodes stop


def device(node, sub, suffix=""):
    """A device of sub on node, labelled user@node."""
    d = ChatClient(node.port, sub, label="%s@%s%s" % (sub, node_name(node), suffix))
    DEVS.append(d)
    return d


class Nodes(Cluster):
    """test_cluster's Cluster that first closes the test's devices, also
    when the test failed (a node does not wait for their close then), and
    that leaves no node running when stopping one of them failed."""

    def __exit__(self, *exc):
        while DEVS:
            DEVS.pop().close()
        try:
            return super().__exit__(*exc)
        finally:
            for x in self.nodes:
                if x.proc is not None and x.proc.poll() is None:
                    x.proc.kill()
                    x.proc.wait()
                    if x.log_path and os.path.exists(x.log_path):
                        os.unlink(x.log_path)
                    shutil.rmtree(x.tmpdir, ignore_errors=True)


def session_log(client, sid):
    """The client's stored events of sid and its `resumed` frames, in
    arrival order."""
    with client.cond:
        return [m for m in client.log if m.get("session_id") == sid and
                (m.get("type") == "resumed" or ("seq" in m and m.get("type") in
                                                 ("user_message", "admin_message",
                                                  "ai_response")))]


def wait_resumed(client, rid):
    return client.wait_message(lambda m: m.get("type") == "resumed" and m.get("id") == rid, WAIT)


def send_all(client, sid, tag, n, contents):
    """n messages from client, pipelined, each acked; remembers their
    contents by id. Returns the acks' seqs, in the order sent."""
    msgs = [user_message("%s%d" % (tag, i), "%s %d" % (tag, i), sid) for i in range(n)]
    out = pipeline(client, msgs, window=8, timeout=WAIT * 3)
    assert len(out) == n, "%s: %d of %d answered" % (tag, len(out), n)
    for m in msgs:
        ack(out[m["id"]], m["id"])
        contents[m["id"]] = m["content"]
    return [out[m["id"]]["seq"] for m in msgs]


def check_contents(client, sid, contents):
    with client.cond:
        evs = [e for e in client.events if e.get("session_id") == sid]
    for e in evs:
        assert contents.get(e.get("id")) == e.get("content"), \
            "%s: event %s is not the message sent with id %r" % (client.label, e, e.get("id"))


# ---- 1. resume on another node than the one the device left -------------------------------

def test_resume_on_another_node_gets_exactly_what_was_missed():
    """A device on node A has seqs 1..k and leaves; a device on node B
    writes meanwhile; the device comes back on node C and resumes after k:
    it receives k+1.. from storage in order, then `resumed`, then the live
    events, each once. Then it leaves C and comes back on A while B keeps
    writing during the resume: every event after its last seq exactly once,
    the live ones in order, the replay filling in below them."""
    with Nodes("resume_moves") as nodes:
        a, b, c = nodes
        contents = {}
        w = device(b, "rae")
        dev = device(a, "rae")
        sid = ack(w.request(user_message("s0", "start")), "s0")["session_id"]
        contents["s0"] = "start"
        k = 10
        send_all(w, sid, "before", k - 1, contents)
        dev.wait_count(sid, k, WAIT)
        assert dev.seqs(sid) == list(range(1, k + 1)), \
            "%s: %s" % (dev.label, first_anomaly(dev.seqs(sid), 1))
        dev.close()

        # Away: B writes on.
        m = 40
        seqs = send_all(w, sid, "away", m, contents)
        assert seqs == list(range(k + 1, k + m + 1)), seqs

        # Back on C, nothing live meanwhile: the replay alone, in order.
        dev = device(c, "rae")
        dev.send({"type": "resume", "session_id": sid, "after_seq": k, "id": "res1"})
        res = wait_resumed(dev, "res1")
        assert res["last_seq"] == k + m, res
        arrived = [x.get("seq") if x["type"] != "resumed" else "resumed"
                   for x in session_log(dev, sid)]
        assert arrived == list(range(k + 1, k + m + 1)) + ["resumed"], \
            "%s: the replay after %d is not %d..%d then resumed: %s" % (
                dev.label, k, k + 1, k + m, arrived)
        # Live after the resume.
        n_live = 10
        send_all(w, sid, "live", n_live, contents)
        last = k + m + n_live
        dev.wait_count(sid, last - k, WAIT)
        assert dev.seqs(sid) == list(range(k + 1, last + 1)), \
            "%s: %s" % (dev.label, first_anomaly(dev.seqs(sid), k + 1))
        check_contents(dev, sid, contents)
        dev_last = last

        # It leaves C without a close handshake; B writes on.
        dev.drop()
        m2 = 30
        send_all(w, sid, "gone", m2, contents)
        last += m2

        # Back on A (which served it before) while B writes during the resume.
        dev = device(a, "rae", "'")
        n3 = 60 if SLOW else 120
        out = {}
        resume_sent = threading.Event()

        def write_during():
            # Half before the resume, half once it is sent: B writes during
            # the resume however fast the first half went.
            r = send_all(w, sid, "during", n3 // 2, contents)
            assert resume_sent.wait(WAIT), "the resume was never sent"
            out["r"] = r + send_all(w, sid, "duringb", n3 - n3 // 2, contents)
        writer = threading.Thread(target=write_during)
        writer.start()
        # Some live events first, so that the replay has to fill in below them.
        dev.wait_until(lambda: sum(1 for e in dev.events if e.get("session_id") == sid) >= 5,
                       WAIT)
        dev.send({"type": "resume", "session_id": sid, "after_seq": dev_last, "id": "res2"})
        resume_sent.set()
        writer.join(WAIT * 3)
        assert not writer.is_alive() and "r" in out, "the writer did not finish"
        last += n3
        assert out["r"][-1] == last, (out["r"][-1], last)
        res = wait_resumed(dev, "res2")
        assert last - n3 <= res["last_seq"] <= last, res
        # One more, to know that everything sent before it has arrived.
        end = ack(w.request(user_message("end", "end", sid)), "end")
        contents["end"] = "end"
        last += 1
        assert end["seq"] == last, end
        dev.wait_message(lambda x: x.get("type") == "user_message" and x.get("id") == "end", WAIT)
        time.sleep(0.3)  # a late duplicate would show up here

        log = session_log(dev, sid)
        seqs = [x["seq"] for x in log if x["type"] != "resumed"]
        want = list(range(dev_last + 1, last + 1))
        missing = sorted(set(want) - set(seqs))
        dups = sorted({s for s in seqs if seqs.count(s) > 1})
        extra = sorted(set(seqs) - set(want))
        assert not missing and not dups and not extra, \
            "%s: after resume(after_seq=%d) with %d..%d stored: missing %s, duplicated %s, " \
            "not asked for %s" % (dev.label, dev_last, dev_last + 1, last, missing[:20],
                                  dups[:20], extra[:20])
        # Arrival: [live...][replay...][resumed][live...]: seqs rise except
        # where the replay starts, and what follows `resumed` is above all
        # that came before it.
        descents = [i for i in range(1, len(seqs)) if seqs[i] < seqs[i - 1]]
        assert len(descents) <= 1, "%s: out of order at %s: %s" % (
            dev.label, descents[:5], [seqs[max(0, i - 2):i + 2] for i in descents[:3]])
        idx = next(i for i, x in enumerate(log) if x["type"] == "resumed")
        before = [x["seq"] for x in log[:idx]]
        after = [x["seq"] for x in log[idx + 1:]]
        if before and after:
            assert min(after) > max(before), \
                "%s: live event %d after resumed, but %d came before it" % (
                    dev.label, min(after), max(before))
        check_contents(dev, sid, contents)
        # The writer, on B all along, has every event once, in order.
        check_devices([w], sid, last)
        for x in (dev, w):
            assert x.read_error is None, (x.label, x.read_error)
            x.close()


def test_a_node_that_stopped_watching_a_user_fills_in_nothing_old():
    """A user's last device on node A leaves while node B writes a burst:
    A stops watching the user's shard, and what Redis still had on its way
    to A then must not start the session's order there. It did: the next
    device on A got every seq written while A was not watching, read from
    storage in front of its first live event (the cause of seqs below a
    resume's after_seq reaching a device in test 1, once in many runs).
    Each round the new device on A must get the next message alone."""
    with Nodes("unwatched") as nodes:
        a, b, _ = nodes
        w = device(b, "una")
        contents = {}
        sid = ack(w.request(user_message("s0", "start")), "s0")["session_id"]
        contents["s0"] = "start"
        # A round's chance of an event on its way at the UNSUBSCRIBE is
        # about one in six here: 15 rounds find the old fault most times.
        burst = 80 if SLOW else 120
        for rnd in range(15):
            dev = device(a, "una", "#%d" % rnd)
            out = {}
            writer = threading.Thread(
                target=lambda: out.update(r=send_all(w, sid, "b%d_" % rnd, burst, contents)))
            writer.start()
            # The device leaves in the middle of the burst.
            dev.wait_until(lambda: dev.count(sid) >= 20, WAIT)
            dev.close()
            writer.join(WAIT * 3)
            assert "r" in out, "round %d: the burst did not finish" % rnd
            time.sleep(0.2)  # A's UNSUBSCRIBE and what came with it are through
            dev = device(a, "una", "#%db" % rnd)
            # A publish of the burst later than the device's arrival is
            # live for it; the fault filled the old seqs in front of the
            # next message, so what counts is what came with that message.
            time.sleep(0.1)
            had = len(dev.seqs(sid))
            mid = "x%d" % rnd
            x = ack(w.request(user_message(mid, "next %d" % rnd, sid)), mid)
            contents[mid] = "next %d" % rnd
            dev.wait_message(lambda m: m.get("id") == mid and "seq" in m, WAIT)
            time.sleep(0.1)  # anything sent behind it arrives
            got = dev.seqs(sid)[had:]
            assert got == [x["seq"]], \
                "round %d: %s got %d events with message %d, seqs %s, where it alone was " \
                "due; the others were written while node A watched no device of the " \
                "user" % (rnd, dev.label, len(got), x["seq"], got[:8])
            check_contents(dev, sid, contents)
            dev.close()


class PublishHolder:
    """A TCP relay between one node and Redis that, while holding, stops a
    connection's traffic to Redis at its first PUBLISH until released: that
    node's writer has committed and acked, and its event reaches the other
    nodes late (a writer paused between its commit and its publish). Its
    other connections, which publish nothing, go on."""

    def __init__(self, redis_port):
        self.redis_port = redis_port
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.holding = threading.Event()
        self.released = threading.Event()
        self.held = 0
        self.socks = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self):
        return "redis://127.0.0.1:%d/0" % self.port

    def _accept(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            s = socket.create_connection(("127.0.0.1", self.redis_port))
            self.socks += [c, s]
            threading.Thread(target=self._pump, args=(c, s, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(s, c, False), daemon=True).start()

    def _pump(self, src, dst, to_redis):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if to_redis and self.holding.is_set() and b"\r\nPUBLISH\r\n" in data:
                    self.held += 1
                    self.released.wait(60)
                dst.sendall(data)
        except OSError:
            pass
        for x in (src, dst):
            try:
                x.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.released.set()
        self.lsock.close()
        for x in self.socks:
            x.close()


def test_an_event_published_late_is_not_passed_by_a_later_one():
    """Node A commits and acks seq 2, and its PUBLISH is held back (above)
    while node B commits and publishes seq 3. Node C had begun no order of
    the session, and its device had just resumed up to 1: it must get 2
    before 3 (C's order begins where the resume read storage, holds 3 and
    fills 2 from storage). Before, C began its order with 3 and the device
    got 3 right after 1, then 2 late (found by test_cluster_crash_loop,
    where the publishing node was slow or killed)."""
    holder = PublishHolder(test_cluster.REDIS.port)
    try:
        cluster = Nodes("late_publish")
        first = cluster.nodes[0]
        first.args = [holder.url if x == test_cluster.REDIS.url else x for x in first.args]
        with cluster as nodes:
            a, b, c = nodes
            wa, wb = device(a, "lou"), device(b, "lou")
            sid = ack(wa.request(user_message("s0", "start")), "s0")["session_id"]
            for w in (wa, wb):  # A's publish is through: both orders began at 1
                w.wait_count(sid, 1, WAIT)
            dev = device(c, "lou")
            dev.send({"type": "resume", "session_id": sid, "after_seq": 0, "id": "r"})
            assert wait_resumed(dev, "r")["last_seq"] == 1
            time.sleep(0.2)
            holder.holding.set()
            assert ack(wa.request(user_message("m2", "two", sid)), "m2")["seq"] == 2
            deadline = time.time() + WAIT
            while holder.held < 1 and time.time() < deadline:
                time.sleep(0.01)
            assert holder.held >= 1, "node A's PUBLISH of seq 2 was not held"
            assert ack(wb.request(user_message("m3", "three", sid)), "m3")["seq"] == 3
            time.sleep(1.0)  # more than a node waits for a missing seq (HOLD_MS)
            holder.released.set()
            dev.wait_count(sid, 3, WAIT)
            time.sleep(0.3)  # the late 2, if it were to come again
            arrived = [x.get("seq", "resumed") for x in session_log(dev, sid)]
            assert arrived == [1, "resumed", 2, 3], \
                "%s: %s where 1, resumed, 2, 3 was due" % (dev.label, arrived)
            for w in (wa, wb):
                check_devices([w], sid, 3)
    finally:
        holder.close()


# ---- 2. PostgreSQL restarted mid-traffic ----------------------------------------------

class RetryingWriter:
    """One device writing to a session as PROTOCOL.md tells clients to:
    every message has an id, and one refused (error `unavailable`) or
    unanswered for RESEND_AFTER seconds is sent again with the same id until
    it is acked. At most `window` messages are in flight or waiting to be
    sent again; new ones are made while `more` is set."""

    RESEND_AFTER = 10.0

    def __init__(self, client, sid, tag, window=4):
        self.c, self.sid, self.tag, self.window = client, sid, tag, window
        self.msgs = {}       # id -> message, every one made
        self.acked = {}      # id -> seq of its first ack
        self.bad_acks = []   # an id acked at two different seqs
        self.refused = 0
        self.resent_unanswered = 0
        self.failure = None
        self.more = threading.Event()
        self.more.set()
        self.thread = threading.Thread(target=self._run, name="writer-" + tag, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def acked_count(self):
        return len(self.acked)

    def _send(self, cid, inflight):
        with self.c.cond:  # a retry's answer, not the refusal before it
            self.c.replies.pop(cid, None)
        self.c.send(self.msgs[cid])
        inflight[cid] = time.time()

    def _run(self):
        try:
            self._loop()
        except Exception as e:  # the test reports it
            self.failure = e

    def _loop(self):
        deadline = time.time() + WAIT * 4
        inflight, retry_at = {}, {}
        while time.time() < deadline:
            now = time.time()
            if self.more.is_set():
                while len(inflight) + len(retry_at) < self.window:
                    cid = "%s%d" % (self.tag, len(self.msgs))
                    self.msgs[cid] = user_message(cid, "%s says %d" % (self.tag, len(self.msgs)),
                                                  self.sid)
                    self._send(cid, inflight)
            elif not inflight and not retry_at:
                return
            for cid, at in list(retry_at.items()):
                if at <= now:
                    del retry_at[cid]
                    self._send(cid, inflight)
            self.c.wait_until(lambda: any(p in self.c.replies for p in inflight), 0.05)
            if self.c.closed:
                raise AssertionError("%s: the connection closed (%r, close code %s)" % (
                    self.c.label, self.c.read_error, self.c.close_code))
            with self.c.cond:
                answered = {p: self.c.replies.pop(p) for p in list(inflight)
                            if p in self.c.replies}
            for cid, r in answered.items():
                del inflight[cid]
                if r.get("type") == "ack":
                    if self.acked.setdefault(cid, r["seq"]) != r["seq"]:
                        self.bad_acks.append((cid, self.acked[cid], r))
                elif r.get("code") == "unavailable" and r.get("recoverable", True):
                    self.refused += 1
                    # retry_after is a hint: no longer than half a second here.
                    wait = min(r.get("retry_after", 100), 500) / 1000.0
                    retry_at[cid] = time.time() + wait
                else:
                    raise AssertionError("%s: unexpected answer to %s: %s" % (self.c.label,
                                                                              cid, r))
            for cid, at in list(inflight.items()):
                if time.time() - at > self.RESEND_AFTER:
                    self.resent_unanswered += 1
                    del inflight[cid]
                    self._send(cid, inflight)
        raise AssertionError("%s: %d messages not acked within %ss: %s" % (
            self.c.label, len(inflight) + len(retry_at), WAIT * 4,
            sorted(list(inflight) + list(retry_at))[:10]))


def wait_all(pred, what, timeout=WAIT, poll=0.05):
    deadline = time.time() + timeout
    while True:
        v = pred()
        if v:
            return v
        assert time.time() < deadline, "not within %ss: %s" % (timeout, what)
        time.sleep(poll)


def outage(pg, nodes, writers, mode, before):
    """Once each writer has `before` more acks: stop PostgreSQL (pg_ctl
    -m mode) until every node's /readyz said 503 and a second has passed,
    start it, wait for /readyz 200 everywhere. Returns how long it was
    down."""
    base = [w.acked_count() for w in writers]
    wait_all(lambda: all(w.acked_count() >= n + before for w, n in zip(writers, base)) or
             any(w.failure for w in writers),
             "%d more acks from each device before the %s stop" % (before, mode),
             timeout=WAIT * 2)
    for x in nodes:
        assert readyz(x.port) == 200, "%s not ready before the %s stop" % (node_name(x), mode)
    stopped_at = time.time()
    pg.stop(mode)
    seen = set()
    try:
        def all_unready():
            for x in nodes:
                if node_name(x) not in seen and readyz(x.port) == 503:
                    seen.add(node_name(x))
            return len(seen) == len(nodes) and time.time() - stopped_at >= 1.0
        wait_all(all_unready, "/readyz 503 on every node while PostgreSQL is down (%s stop; "
                 "seen on %s)" % (mode, sorted(seen)))
    finally:
        pg.start()
    down_for = time.time() - stopped_at
    seen = set()

    def all_ready():
        for x in nodes:
            if node_name(x) not in seen and readyz(x.port) == 200:
                seen.add(node_name(x))
        return len(seen) == len(nodes)
    wait_all(all_ready, "/readyz 200 on every node once PostgreSQL is back (%s stop; seen "
             "on %s)" % (mode, sorted(seen)))
    return down_for


def test_postgres_restart_mid_traffic_with_three_nodes():
    """Devices of one user on nodes A, B and C write to one session without
    pause. PostgreSQL stops until every node's /readyz says 503 (and at
    least a second), then starts again; twice: a fast shutdown (connections
    cut, transactions rolled back), then an immediate one (a crash: a COMMIT
    may be cut off, its outcome settled after the restart). Each device
    retries what was refused with the same id. In the end every message is
    acked, each stored exactly once at the seq its ack named, the session
    has no gap, and every device received every event once, in seq order."""
    pg = test_cluster.PG
    with Nodes("pgrestart") as nodes:
        devs = [device(x, "uma") for x in nodes]
        sid = ack(devs[0].request(user_message("first", "first")), "first")["session_id"]
        writers = [RetryingWriter(d, sid, "w%s-" % "abc"[i]).start()
                   for i, d in enumerate(devs)]
        some = 10 if SLOW else 25
        downs = []
        for mode in ("fast", "immediate"):
            downs.append(outage(pg, nodes, writers, mode, some))
            # The stop met the traffic: a write was refused, or the stop
            # cut a COMMIT, which that node's writer settled once the
            # server was back while the writes behind it waited in its
            # queue (acked late, not refused).
            refused = sum(w.refused for w in writers)
            settled = commits_settled(*(x.log() for x in nodes))
            assert refused > 0 or settled, "nothing refused by the %s stop: not mid-traffic" % mode
        # Traffic goes on after the restarts, then the writers finish.
        base = [w.acked_count() for w in writers]
        wait_all(lambda: all(w.acked_count() >= n + some for w, n in zip(writers, base)) or
                 any(w.failure for w in writers),
                 "%d more acks from each device after the restarts" % some, timeout=WAIT * 2)
        for w in writers:
            w.more.clear()
        for w in writers:
            w.thread.join(WAIT * 4 + 10)
            assert not w.thread.is_alive(), "%s did not finish" % w.tag
            assert w.failure is None, "%s: %s" % (w.tag, w.failure)
            assert not w.bad_acks, "%s: an id acked at two seqs: %s" % (w.tag, w.bad_acks[:5])
            assert len(w.acked) == len(w.msgs), (w.tag, len(w.acked), len(w.msgs))

        # Storage: each message once, at its acked seq, no gap.
        acked = {"first": 1}
        for w in writers:
            acked.update(w.acked)
        total = len(acked)
        events, last = history(nodes[2].port, sid, devs[2].token)
        check_gapless(sid, events)
        stored_ids = [e.get("id") for e in events]
        dup_ids = sorted({i for i in stored_ids if stored_ids.count(i) > 1})
        assert not dup_ids, "stored more than once: %s" % dup_ids[:10]
        assert set(stored_ids) == set(acked), \
            "stored but never acked: %s; acked but not stored: %s" % (
                sorted(set(stored_ids) - set(acked))[:10],
                sorted(set(acked) - set(stored_ids))[:10])
        assert last == total and len(events) == total, (last, len(events), total)
        for e in events:
            assert acked[e["id"]] == e["seq"], "stored at %d, acked at %d: %s" % (
                e["seq"], acked[e["id"]], e)

        # Every device: every event once, in seq order.
        for d in devs:
            d.wait_count(sid, total, WAIT)
        for d in devs:
            seqs = d.seqs(sid)
            assert sorted(seqs) == list(range(1, total + 1)), "%s: %s" % (
                d.label, first_anomaly(sorted(seqs), 1))
            assert d.read_error is None, (d.label, d.read_error)
        for d in devs:
            seqs = d.seqs(sid)
            late = [i for i in range(1, len(seqs)) if seqs[i] < seqs[i - 1]]
            assert not late, \
                "%s received the session's live events out of seq " \
                "order: %s. The cause seen so far: a node whose COMMIT answer was cut off by the crash settles it " \
                "only after PostgreSQL is back and then publishes; the other nodes held the " \
                "seqs above it for HOLD_MS (500 ms), handed them on (event=redis_gap), could " \
                "not fill the gap from storage (event=catch_up_failed rc=-5, never tried " \
                "again) and delivered the settled events late (PROTOCOL.md section 5: live " \
                "events reach each connection in seq order). The nodes said:\n%s" % (
                    d.label, ["...%s..." % seqs[max(0, i - 2):i + 2] for i in late[:3]],
                    "\n".join(line for x in nodes for line in x.log().splitlines()
                              if "event=redis_gap" in line or "event=catch_up_failed" in line
                              or "event=store_commit_settled" in line or
                              "during COMMIT" in line))
        for d in devs:
            d.close()
        logs = [x.log() for x in nodes]
        print("     %d messages, %d refusals, %d resent unanswered, %d commits settled, "
              "down for %s s" % (total, sum(w.refused for w in writers),
                                 sum(w.resent_unanswered for w in writers),
                                 commits_settled(*logs),
                                 "/".join("%.1f" % t for t in downs)))
    for x, log in zip(nodes, logs):
        assert "event=store_unhealthy" in log and "event=store_healthy" in log, \
            "%s: %s" % (node_name(x), log[-3000:])


# ---- 3. an answer streaming while a device moves or its node dies ----------------------

PROVIDER_KEY = "sk-test-cluster-recovery-0123"


class AssistantCluster(Nodes):
    """A Cluster whose nodes all use the fake provider as model "fake" (the
    key in a file: Cluster starts its nodes with the test's environment)."""

    def __init__(self, db, fp, n=3, extra=()):
        self.keydir = tempfile.mkdtemp(prefix="chatd-key-")
        key_file = os.path.join(self.keydir, "key")
        with open(key_file, "w") as f:
            f.write(PROVIDER_KEY)
        super().__init__(db, n, ("--model", "fake=openai:%s,key-file=%s,name=Fake" % (
            fp.base_url, key_file)) + tuple(extra))

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            shutil.rmtree(self.keydir, ignore_errors=True)


def pieces(client, stream_id):
    """The streamed (not final) ai_response frames of one answer."""
    with client.cond:
        return [m for m in client.log if m.get("type") == "ai_response" and not m.get("done")
                and m.get("stream_id") == stream_id]


def streamed(client, stream_id):
    """The answer as the device assembled it, each piece at its offset: a
    catch-up from 0 may only repeat what it had; no gap, no byte twice."""
    text = b""
    for m in pieces(client, stream_id):
        d = m["delta"].encode()
        if m["offset"] == 0 and text:
            assert d.startswith(text), (client.label, text, d)
            text = d
            continue
        assert m["offset"] == len(text), "%s: a piece at %d, %d bytes before it" % (
            client.label, m["offset"], len(text))
        text += d
    return text.decode()


def final_answer(client, sid, after_seq=0):
    return client.wait_message(lambda m: m.get("type") == "ai_response" and m.get("done") is True
                               and m.get("session_id") == sid and m.get("seq", 0) > after_seq,
                               WAIT)


def test_resume_mid_answer_on_another_node_gets_the_answer_so_far():
    """The assistant's answer streams from node A (the question was asked
    there); a device that leaves node B mid-answer comes back on node C and
    resumes: PROTOCOL.md section 4 says it first receives one ai_response
    at offset 0 with everything streamed so far, then the live pieces, no
    byte lost or repeated (test_assistant.py checks this on one node)."""
    with FakeProvider(key=PROVIDER_KEY) as fp, AssistantCluster("midanswer", fp) as nodes:
        a = device(nodes[0], "wes")
        b = device(nodes[1], "wes")
        q = "a longer question for a slow answer [fake:slow=150]"
        sid = ack(a.request(user_message("q1", q)), "q1")["session_id"]
        first = b.wait_message(lambda m: m.get("type") == "ai_response" and not m.get("done") and
                               m.get("offset", 0) > 4, WAIT)
        stream_id = first["stream_id"]
        b.close()
        c = device(nodes[2], "wes")
        c.send({"type": "resume", "session_id": sid, "after_seq": 1, "id": "r1"})
        res = wait_resumed(c, "r1")
        fa, fc = final_answer(a, sid), final_answer(c, sid)
        with c.cond:
            idx = c.log.index(res)
            before_resumed = [m for m in c.log[:idx] if m.get("type") == "ai_response"]
        got = pieces(c, stream_id)
        assert got and got[0]["offset"] == 0 and len(got[0]["delta"]) > 4 and \
            before_resumed and before_resumed[0] is got[0], \
            "a device that resumes on node C while node A streams the " \
            "answer gets no catch-up piece (offset 0, everything so far) before `resumed`, " \
            "and no live piece at all: %d pieces %s, then only the final answer (PROTOCOL.md " \
            "section 4; on one node it works, test_assistant.py)" % (
                len(got), [(m["offset"], m["delta"]) for m in got[:3]])
        want = answer_for(q)
        assert fa["content"] == fc["content"] == want, (fa, fc)
        assert streamed(a, stream_id) == streamed(c, stream_id) == want
        assert fa["seq"] == fc["seq"] == 2, (fa, fc)
        for x in (a, c):
            x.close()


def test_sigkill_of_the_node_streaming_an_answer():
    """The node that runs a user's answer (the question was asked there)
    is killed with SIGKILL mid-answer, while the user keeps writing. What
    that node acked is stored and reached the user's device on node B; the
    answer is lost, as PROTOCOL.md's docs say of a crash (nothing of it was
    stored); the session goes on on B: a new message is acked and answered
    there, to every device; the device that was on the dead node comes back
    on node C and resumes with exactly what it missed. (test_cluster.py's
    SIGKILL test checks the device slots; this one the session.)"""
    with FakeProvider(key=PROVIDER_KEY) as fp, AssistantCluster("killstream", fp) as nodes:
        a = device(nodes[0], "xia")
        b = device(nodes[1], "xia")
        q1 = "a question for a slow answer [fake:slow=100]"
        sid = ack(a.request(user_message("q1", q1)), "q1")["session_id"]
        piece = b.wait_message(lambda m: m.get("type") == "ai_response" and not m.get("done") and
                               m.get("offset", 0) > 0, WAIT)
        dead_stream = piece["stream_id"]
        # The user writes on while the answer streams (these wait for the
        # next answer): acked by the node about to die.
        for i in range(2, 5):
            r = ack(a.request(user_message("m%d" % i, "meanwhile %d" % i, sid)), "m%d" % i)
            assert r["seq"] == i, r
        a.wait_count(sid, 4, WAIT)
        assert a.seqs(sid) == [1, 2, 3, 4], a.seqs(sid)
        nodes[0].proc.kill()
        nodes[0].proc.wait()
        a.drop()
        # What A acked reached B (published before the kill).
        b.wait_count(sid, 4, WAIT)
        assert b.seqs(sid) == [1, 2, 3, 4], b.seqs(sid)
        got = streamed(b, dead_stream)
        assert 0 < len(got) < len(answer_for(q1)), "not killed mid-answer: %r" % got

        # The session goes on on B: acked, and answered there. The answer
        # reads the history as it is: every user message since the last
        # answer, joined into one turn (docs/protocol.md, "What the model is
        # sent"); "[fake:fast]" undoes q1's "slow".
        q2 = "are you still there? [fake:fast]"
        r = ack(b.request(user_message("q2", q2, sid)), "q2")
        assert r["seq"] == 5, r
        want = answer_for("\n\n".join([q1] + ["meanwhile %d" % i for i in range(2, 5)] + [q2]))
        fb = final_answer(b, sid, 4)
        assert fb["seq"] == 6 and fb["content"] == want, fb
        assert fb["stream_id"] != dead_stream, fb
        assert fb["metadata"].get("reply_to_seq") == 5, fb
        assert streamed(b, fb["stream_id"]) == want

        # The device from the dead node, back on C, resumes after seq 4.
        c = device(nodes[2], "xia")
        c.send({"type": "resume", "session_id": sid, "after_seq": 4, "id": "r1"})
        res = wait_resumed(c, "r1")
        assert res["last_seq"] == 6, res
        assert [(x["type"], x.get("seq")) for x in session_log(c, sid)] == \
            [("user_message", 5), ("ai_response", 6), ("resumed", None)], session_log(c, sid)
        assert final_answer(c, sid, 4)["content"] == want

        # Storage: the acked messages and the new answer; nothing of the
        # lost one.
        events, last = history(nodes[2].port, sid, c.token)
        check_gapless(sid, events)
        assert last == 6, last
        assert [(e["type"], e.get("id") or e.get("stream_id")) for e in events] == \
            [("user_message", "q1"), ("user_message", "m2"), ("user_message", "m3"),
             ("user_message", "m4"), ("user_message", "q2"), ("ai_response", fb["stream_id"])], \
            events
        assert b.seqs(sid) == [1, 2, 3, 4, 5, 6], b.seqs(sid)
        for x in (b, c):
            assert x.read_error is None, (x.label, x.read_error)
            x.close()


# ---- 4. a COMMIT whose answer one node lost, with that node cut off ------------------------

class CutOffNode(Nodes):
    """Nodes of which node B logs in to PostgreSQL as its own role, so that
    the test can cut B alone off the database (NOLOGIN) while A and C keep
    working; and B's commits wait for a synchronous standby that does not
    exist once the test names one, so that a COMMIT of B's is done on the
    server (locally) while B still waits for its answer."""

    def __init__(self, db, role):
        super().__init__(db)
        pg = test_cluster.PG
        pg.psql("CREATE ROLE %s LOGIN SUPERUSER" % role)
        pg.psql("ALTER ROLE %s SET synchronous_commit = on" % role)
        pg.psql("ALTER ROLE postgres SET synchronous_commit = local")
        args = self.nodes[1].args
        args[1] = args[1].replace("user=postgres", "user=" + role)
        self.role = role

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            pg = test_cluster.PG
            pg.psql("ALTER SYSTEM RESET synchronous_standby_names")
            pg.psql("SELECT pg_reload_conf()")
            pg.psql("ALTER ROLE postgres RESET synchronous_commit")


def test_commit_answer_lost_while_its_node_is_cut_off():
    """What test 2 runs into now and then, made certain: node B's COMMIT of
    seq 3 is done on the server, but B loses the connection before the
    answer and cannot log in again; node A commits seq 4 meanwhile. B
    answers its device `unavailable` ("may have been stored", retry with
    the same id); the retry, once B is back, is acked seq 3 (a duplicate).
    Expected (PROTOCOL.md section 5): every device of the owner receives
    every event, each once, in seq order."""
    pg = test_cluster.PG
    role = "cutoff_b"
    with CutOffNode("cutoff", role) as nodes:
        devs = [device(x, "zed") for x in nodes]
        a, b, c = devs
        sid = ack(a.request(user_message("m1", "one")), "m1")["session_id"]
        ack(b.request(user_message("m2", "two", sid)), "m2")
        for d in devs:
            d.wait_count(sid, 2, WAIT)
        pg.psql("ALTER SYSTEM SET synchronous_standby_names = 'nowhere'")
        pg.psql("SELECT pg_reload_conf()")
        # A backend takes a reload in only after its next command: B's
        # writer sends an empty query every idle second, so after 1.5 s its
        # COMMIT waits for the standby (it once committed at once in CI).
        time.sleep(1.5)
        waiting = ("SELECT pid FROM pg_stat_activity WHERE usename = '%s' AND "
                   "wait_event = 'SyncRep'" % role)
        try:
            # B's writer sends COMMIT, which the server does, then waits for
            # the standby; B is cut off, and its connection ended.
            b.send(user_message("m3", "three", sid))
            wait_all(lambda: pg.psql(waiting), "B's COMMIT waiting for the standby")
            pg.psql("ALTER ROLE %s NOLOGIN" % role)
            pg.psql("SELECT pg_terminate_backend(pid) FROM (%s) AS w" % waiting)
            # A writes on: seq 4.
            r = ack(a.request(user_message("m4", "four", sid)), "m4")
            assert r["seq"] == 4, r
            r = b.wait_reply("m3", WAIT)  # after PG_OUTCOME_WAIT_MS (10 s)
            assert r.get("type") == "error" and r.get("code") == "unavailable", r
        finally:
            pg.psql("ALTER ROLE %s LOGIN" % role)
            pg.psql("ALTER SYSTEM RESET synchronous_standby_names")
            pg.psql("SELECT pg_reload_conf()")
        # B's device retries m3 with the same id until it is acked.
        r = wait_all(lambda: (lambda x: x if x.get("type") == "ack" else
                              time.sleep(min(x.get("retry_after", 100), 500) / 1000.0))(
            b.request(user_message("m3", "three", sid))), "the retry of m3 acked",
            timeout=WAIT, poll=0)
        assert r["seq"] == 3, r
        ack(a.request(user_message("m5", "five", sid)), "m5")
        for d in devs:  # the last one reached every device
            d.wait_message(lambda m: m.get("type") == "user_message" and m.get("seq") == 5,
                           WAIT)
        time.sleep(0.3)  # a late one would show up here
        got = {d.label: d.seqs(sid) for d in devs}
        logs = "\n".join(line for x in nodes for line in x.log().splitlines()
                         if "event=redis_gap" in line or "event=catch_up_failed" in line
                         or "event=store_commit" in line or "during COMMIT" in line)
        assert all(v == [1, 2, 3, 4, 5] for v in got.values()), \
            "each device should have received seqs [1, 2, 3, 4, 5] in " \
            "that order; they received %s. Seq 3's COMMIT answer was lost to node B, which " \
            "then could not reach PostgreSQL for 10 s: B published nothing (unknown " \
            "outcome), and the retry's duplicate ack publishes nothing either; A and C held " \
            "seq 4 for 500 ms, handed it on and filled seq 3 from storage after it; B's own " \
            "fill failed (catch_up_failed rc=-5) and is never tried again. The nodes said:" \
            "\n%s" % (got, logs)


def main():
    test_cluster.PG = Postgres()
    try:
        test_cluster.REDIS = Redis()
        try:
            run([test_resume_on_another_node_gets_exactly_what_was_missed,
                 test_a_node_that_stopped_watching_a_user_fills_in_nothing_old,
                 test_an_event_published_late_is_not_passed_by_a_later_one,
                 test_postgres_restart_mid_traffic_with_three_nodes,
                 test_sigkill_of_the_node_streaming_an_answer,
                 test_resume_mid_answer_on_another_node_gets_the_answer_so_far,
                 test_commit_answer_lost_while_its_node_is_cut_off])
        finally:
            test_cluster.REDIS.close()
    finally:
        test_cluster.PG.close()


if __name__ == "__main__":
    main()
