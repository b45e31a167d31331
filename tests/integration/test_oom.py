"""Out of memory: chatd's allocations fail one at a time, and chatd neither
crashes, leaks nor loses an acknowledged message (docs/reliability.md,
"Out of memory").

The Debug test builds link tests/failalloc.c into chatd: with
CHATD_FAILALLOC=<control file>, SIGUSR2 arms it so that the Nth allocation
after the arming fails (any thread; chatd's own code, jansson and libuv).
For each path below the test first counts the path's allocations (an
arming that never fires), then, for N = 1, 2, ... up to that count (capped),
arms N, drives the path once, disarms, and checks:
  - chatd still runs and still serves the path (the next round drives it
    again, unarmed, and it must work);
  - the operation either succeeded or was refused plainly: an `error`
    answering it, an HTTP error status, or that one connection closed;
  - every message acknowledged so far is in the session's history, each
    device still open has every live event in seq order with no gap, and a
    device that was closed gets everything back by resume.
The paths: connection (accept, HTTP upgrade, JWT handshake, the first
frame), a message fanned out to three devices and a joined admin, resume,
and an assistant answer (tests/fake_provider.py). At the end chatd stops
with SIGTERM and must exit 0; in the ASan kind LeakSanitizer then proves
that no failure path leaked.

Kinds: the loop runs in the ASan kind (the leak proof) and, shorter, in
the debug kind; the TSan kind (RelWithDebInfo) has no failure point and
skips, as does any build without it.
"""
import json
import os
import signal
import socket
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from fake_provider import FakeProvider  # noqa: E402
from harness import (SLOW, WS, Chatd, WSClosed, http_get, make_token,  # noqa: E402
                     run, upgrade_request)

KIND = os.environ.get("CHATD_BUILD_KIND", "")
KEY = "sk-test-oom-0123"
T = 60.0 if SLOW else 20.0  # seconds to wait for something that must come
# Rounds per path at most: every N up to the path's count in the ASan kind
# (the counts measured are below these caps on this machine), a stride
# through them in the debug kind.
CAP = 700
STRIDE = 1 if KIND == "address" else 3

STATS = {}  # path -> {"count":, "rounds":, "injected":, outcome: n}


def has_failpoint():
    try:
        with open(os.environ.get("CHATD_BIN", ""), "rb") as f:
            return b"__wrap_malloc" in f.read()
    except OSError:
        return False


def signal_state(pid):
    """What the kernel says of the process and its signals (for a failure)."""
    try:
        with open("/proc/%d/status" % pid) as f:
            keep = ("State", "SigPnd", "ShdPnd", "SigBlk", "SigCgt", "Threads")
            return " ".join(l.strip() for l in f if l.split(":")[0] in keep)
    except OSError as e:
        return "no status (%s)" % e


class Failpoint:
    """The control file of tests/failalloc.c in one chatd."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="chatd-oom-")
        self.path = os.path.join(self.dir, "ctl")
        self.proc = None  # chatd's Popen (its pid; its exit status when it died)

    def arm(self, n, count=1):
        """Arm N (0 disarms); return (seen, failed) of the previous arming."""
        with open(self.path + ".tmp", "w") as f:
            f.write("%d %d\n" % (n, count))
        os.rename(self.path + ".tmp", self.path)
        os.kill(self.proc.pid, signal.SIGUSR2)
        deadline = time.time() + T
        resend = time.time() + 2.0
        while os.path.exists(self.path):
            now = time.time()
            if now > deadline:
                raise AssertionError("the failure point did not take the arming; chatd: %s, "
                                     "exit status %s" % (signal_state(self.proc.pid),
                                                         self.proc.poll()))
            if now > resend:
                # a repeat is harmless: without a control file it changes nothing
                os.kill(self.proc.pid, signal.SIGUSR2)
                resend = now + 2.0
            time.sleep(0.002)
        with open(self.path + ".out") as f:
            words = f.read().split()
        return int(words[1]), int(words[3])

    def disarm(self):
        return self.arm(0)


class Dev:
    """One WebSocket device that keeps everything it received."""

    def __init__(self, port, sub, roles=None):
        claims = {"roles": roles} if roles else {}
        self.token = make_token(sub, name=sub.title(), **claims)
        self.ws = WS(port, "/ws", token=self.token, timeout=T)
        self.seen = []
        self.closed = None
        first = self.ws.recv_json()
        assert first["type"] == "connection_status", first

    def send(self, **obj):
        self.ws.send_json(obj)

    def read(self, pred, timeout=T):
        """Read until pred(message); None when the time is up or the server
        closed this connection (self.closed holds the close code then)."""
        deadline = time.time() + timeout
        while self.closed is None and time.time() < deadline:
            self.ws.sock.settimeout(max(0.05, deadline - time.time()))
            try:
                m = self.ws.recv_json()
            except WSClosed:
                # 1011 and the like; -1 when chatd had no memory even for a
                # close frame and dropped the connection
                self.closed = self.ws.close_code or -1
                break
            except (socket.timeout, TimeoutError):
                break
            except OSError:
                self.closed = -1  # dropped without a close frame
                break
            self.seen.append(m)
            if pred(m):
                return m
        return None

    def seqs(self, sid):
        return [m["seq"] for m in self.seen
                if m.get("session_id") == sid and "seq" in m and
                m["type"] in ("user_message", "admin_message", "ai_response", "help_request",
                              "help_resolved", "admin_join", "admin_leave")]

    def close(self):
        self.ws.close()
        self.ws.shut()


def answer_of(dev, mid):
    """The ack or error answering mid. A message chatd had no memory to
    parse is answered by an error without its id (code internal)."""
    return dev.read(lambda m: (m.get("id") == mid and m["type"] in ("ack", "error")) or
                    (m["type"] == "error" and "id" not in m and "session_id" not in m))


def history(port, sid, token):
    st, _, body = http_get(port, "/api/sessions/%s/messages?limit=1000" % sid,
                           {"Authorization": "Bearer " + token})
    assert st == 200, (st, body[:300])
    return json.loads(body)["messages"]


def note(path, outcome):
    s = STATS.setdefault(path, {"count": 0, "rounds": 0, "injected": 0})
    s[outcome] = s.get(outcome, 0) + 1


def loop(fp, path, once, check):
    """Count the allocations of once(), then fail each N in turn."""
    fp.arm(1 << 60)
    once(None)
    seen, _ = fp.disarm()
    check()
    assert seen > 0, "%s: no allocation counted" % path
    s = STATS.setdefault(path, {"count": 0, "rounds": 0, "injected": 0})
    s["count"] = seen
    # Up to twice the count (it varies with what runs beside the path),
    # until ten rounds in a row end before their Nth allocation.
    last, idle = min(2 * seen + 10, CAP), 0
    for n in range(1, last + 1, STRIDE):
        fp.arm(n)
        outcome = once(n)
        _, failed = fp.disarm()
        s["rounds"] += 1
        s["injected"] += failed
        s["max_n"] = n
        note(path, outcome if failed else "not reached")
        check()
        idle = 0 if failed else idle + 1
        if idle >= 10:
            break
    return s


# ---- the paths ------------------------------------------------------------------

def connect_once(port, token):
    """One connection: accept, upgrade, JWT check, the first frame. The
    outcome: 'ok', 'http <status>', 'close <code>' or 'dropped'."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=T)
    except OSError:
        return "dropped"
    try:
        req, _ = upgrade_request("/ws", token=token)
        sock.sendall(req)
        buf = b""
        while b"\r\n\r\n" not in buf:
            b = sock.recv(65536)
            if not b:
                return "dropped"
            buf += b
        status = int(buf.split(b" ", 2)[1])
        if status != 101:
            head, _, body = buf.partition(b"\r\n\r\n")
            assert status >= 500 or status == 429, (status, buf[:300])
            return "http %d" % status
        ws = WS.__new__(WS)
        ws.sock, ws.buf, ws.close_code = sock, buf.partition(b"\r\n\r\n")[2], None
        try:
            first = ws.recv_json()
        except WSClosed:
            assert ws.close_code == 1011, ws.close_code
            return "close %d" % ws.close_code
        assert first["type"] == "connection_status", first
        ws.close()
        return "ok"
    except (ConnectionResetError, BrokenPipeError):
        return "dropped"
    except (socket.timeout, TimeoutError):
        raise AssertionError("the connection hangs: neither served nor refused")
    finally:
        sock.close()


def test_out_of_memory_paths():
    if KIND == "thread" or not has_failpoint():
        print("SKIP: this chatd has no allocation-failure point (only the Debug test builds "
              "link tests/failalloc.c)")
        return
    fp = Failpoint()
    # Contents are sealed at rest, so the seal's allocations are on the paths.
    keyfile = os.path.join(fp.dir, "key")
    with open(keyfile, "w") as f:
        f.write("ab" * 32 + "\n")
    started = time.time()
    with FakeProvider(key=KEY) as prov, \
            Chatd("--model", "fake=openai:%s,key-env=FAKE_KEY,name=Fake" % prov.base_url,
                  "--workers", "2", "--ping-interval", "600", "--pong-timeout", "900",
                  "--rate-limit", "100000", "--assistant-rate-limit", "100000",
                  "--input-rate", "100000", "--input-byte-rate", "1000000000",
                  # a failure that stalls an answer ends it soon
                  "--assistant-first-byte-timeout", "5", "--assistant-timeout", "10",
                  "--encryption-key-file", keyfile, env={"FAKE_KEY": KEY, "CHATD_FAILALLOC": fp.path}) as d:
        fp.proc = d.proc
        port = d.port
        acked = {}  # client id -> (session, seq): every ack chatd ever sent

        def check_alive():
            assert d.alive(), "chatd died:\n" + d.log()[-4000:]

        # -- connection -------------------------------------------------------------
        ctoken = make_token("carol", name="Carol")

        def conn_once(n):
            out = connect_once(port, ctoken)
            if n is None:
                assert out == "ok", out
            return out

        def conn_check():
            check_alive()
            # The device count comes back to zero: a refused connection
            # left nothing behind in the registry.
            deadline = time.time() + T
            while True:
                st, _, body = http_get(port, "/api/admin/connections", {
                    "Authorization": "Bearer " + make_token("root", roles=["admin"])})
                assert st == 200, (st, body[:200])
                # carol's are the only connections at this point
                if json.loads(body)["total_devices"] == 0:
                    break
                assert time.time() < deadline, "carol's connections stay counted: %s" % body
                time.sleep(0.02)

        loop(fp, "connection", conn_once, conn_check)

        # -- fan-out: three devices of alice and a joined admin ----------------------
        devs = [Dev(port, "alice") for _ in range(3)]
        admin = Dev(port, "root", roles=["admin"])
        box = [admin]  # the admin device (replaced when it comes back)
        alice = devs[0]
        mid0 = "first"
        alice.send(type="user_message", content="hello", id=mid0)
        a0 = answer_of(alice, mid0)
        assert a0 and a0["type"] == "ack", a0
        sid = a0["session_id"]
        acked[mid0] = (sid, a0["seq"])
        # The admin's join keeps the assistant silent in this session, once
        # it has answered the first message.
        assert alice.read(lambda m: m["type"] == "ai_response" and m.get("done")), "no answer"
        admin.send(type="admin_join", session_id=sid, id="join")
        assert (answer_of(admin, "join") or {}).get("type") == "ack"
        counter = [0]

        def reopen(old, sub, roles=None):
            """A closed device comes back and resumes from the start: it then
            holds every stored event of the session. An admin joins again."""
            old.close()
            for _ in range(5):
                nd = Dev(port, sub, roles)
                if roles:
                    nd.send(type="admin_join", session_id=sid, id="rejoin")
                    answer_of(nd, "rejoin")
                nd.send(type="resume", session_id=sid, after_seq=0, id="r")
                r = nd.read(lambda m: m["type"] == "resumed" or
                            (m["type"] == "error" and m.get("id") == "r"))
                if r and r["type"] == "resumed":
                    return nd
                nd.close()  # closed by a late notice of the round before: again
            raise AssertionError("a device could not come back: %s" % nd.seen[-5:])

        def fan_once(n):
            counter[0] += 1
            mid = "f%d" % counter[0]
            sender = devs[0]
            sender.send(type="user_message", session_id=sid, content="fan %d" % counter[0], id=mid)
            a = answer_of(sender, mid)
            if a is None:
                assert sender.closed is not None, "no answer to %s and no close" % mid
                return "close %s" % sender.closed
            if a["type"] == "ack":
                acked[mid] = (sid, a["seq"])
                # Armed until the event has reached every device (or the
                # device was closed): the failure may hit the fan-out.
                for dv in devs + box:
                    dv.read(lambda m: m.get("seq") == a["seq"] and m.get("session_id") == sid)
                return "ack"
            assert a["code"] in ("internal", "unavailable"), a
            return "error " + a["code"]

        def fan_check():
            check_alive()
            # A marker, sent unarmed, must be acked; every device then holds
            # every stored seq up to it, in order, once: live, or (a device
            # that chatd closed) through its resume.
            for attempt in range(5):
                for i, dv in enumerate(devs):
                    if dv.closed is not None:
                        devs[i] = reopen(dv, "alice")
                if box[0].closed is not None:
                    box[0] = reopen(box[0], "root", ["admin"])
                counter[0] += 1
                mk = "k%d" % counter[0]
                devs[0].send(type="user_message", session_id=sid, content="marker", id=mk)
                a = answer_of(devs[0], mk)
                if a is None and devs[0].closed is not None:
                    continue  # closed by a late notice: the retry resends
                assert a and a["type"] == "ack", (mk, a)
                acked[mk] = (sid, a["seq"])
                ok = True
                for dv in devs + box:
                    got = dv.read(lambda m: m.get("seq") == a["seq"] and
                                  m.get("session_id") == sid)
                    if not got:
                        assert dv.closed is not None, "a device missed seq %d, open" % a["seq"]
                        ok = False
                        continue
                    seqs = sorted(set(dv.seqs(sid)))
                    assert seqs == list(range(seqs[0], a["seq"] + 1)), \
                        "gap in a device's events: %s" % seqs[-20:]
                    assert len(dv.seqs(sid)) == len(seqs), "an event twice"
                if ok:
                    return
            raise AssertionError("devices kept closing after the failure was disarmed")

        loop(fp, "fan-out", fan_once, fan_check)

        # -- resume --------------------------------------------------------------------
        # A session of its own with a few events (the read allocates for
        # each event: a long one would be all read), and a fresh connection
        # for each round (a connection is replayed only what it has not
        # been sent), opened before the arming.
        writer = Dev(port, "dave")
        rsid = None
        for i in range(4):
            msg = {"type": "user_message", "content": "event %d" % i, "id": "d%d" % i}
            if rsid:
                msg["session_id"] = rsid
            writer.send(**msg)
            a = answer_of(writer, "d%d" % i)
            assert a and a["type"] == "ack", a
            rsid = a["session_id"]
            acked["d%d" % i] = (rsid, a["seq"])
        # The assistant answers dave too: its answers end before the rounds.
        last = acked["d3"][1]
        assert writer.read(lambda m: m["type"] == "ai_response" and m.get("done") and
                           m["seq"] > last), "no answer to dave"
        writer.close()
        reader = [Dev(port, "dave")]
        rcount = [0]

        def res_once(n):
            rcount[0] += 1
            rid = "res%d" % rcount[0]
            dv = reader[0]
            dv.send(type="resume", session_id=rsid, after_seq=0, id=rid)
            r = dv.read(lambda m: (m.get("session_id") == rsid and m["type"] == "resumed") or
                        (m["type"] == "error" and m.get("id") in (rid, None) and
                         "session_id" not in m))
            if r is None:
                assert dv.closed is not None, "N=%s: no answer to the resume and no close: %s" % (
                    n, dv.seen[-3:])
                return "close %s" % dv.closed
            if r["type"] == "error":
                assert r["code"] in ("internal", "unavailable"), r
                return "error " + r["code"]
            got = sorted(dv.seqs(rsid))
            assert got == list(range(1, r["last_seq"] + 1)), "resume gave %s" % got[-20:]
            return "ok"

        def res_check():
            check_alive()
            reader[0].close()
            reader[0] = Dev(port, "dave")

        loop(fp, "resume", res_once, res_check)

        # -- assistant: a session of bob's, no admin --------------------------------------
        bob = [Dev(port, "bob")]
        bcount = [0]
        bsid = [None]

        def ask_once(n):
            bcount[0] += 1
            mid = "b%d" % bcount[0]
            dv = bob[0]
            msg = {"type": "user_message", "content": "question %d" % bcount[0], "id": mid}
            if bsid[0]:
                msg["session_id"] = bsid[0]
            dv.send(**msg)
            a = answer_of(dv, mid)
            if a is None:
                assert dv.closed is not None, "no answer to %s and no close" % mid
                return "close %s" % dv.closed
            if a["type"] == "error":
                assert a["code"] in ("internal", "unavailable"), a
                return "error " + a["code"]
            acked[mid] = (a["session_id"], a["seq"])
            bsid[0] = a["session_id"]
            # The answer ends: a final ai_response, or an error for the
            # session (assistant_error / internal), never silence.
            end = dv.read(lambda m: m.get("session_id") == bsid[0] and (
                (m["type"] == "ai_response" and m.get("done")) or
                (m["type"] == "error" and "id" not in m)))
            if end is None:
                assert dv.closed is not None, "N=%s: the answer to %s never ended: %s" % (
                    n, mid, dv.seen[-4:])
                return "close %s" % dv.closed
            if n is None:
                assert end["type"] == "ai_response", end
            if end["type"] == "error":
                if end["code"] == "assistant_timeout":
                    STATS["assistant"].setdefault("timeout at N", []).append(n)
                return "answer error " + end["code"]
            return "answered"

        def ask_check():
            check_alive()
            if bob[0].closed is not None:
                bob[0].close()
                bob[0] = Dev(port, "bob")

        loop(fp, "assistant", ask_once, ask_check)

        # -- nothing acknowledged is lost ------------------------------------------------
        by_sid = {}
        for mid, (s_id, seq) in acked.items():
            by_sid.setdefault(s_id, {})[mid] = seq
        for s_id, mids in by_sid.items():
            owner = {sid: "alice", rsid: "dave"}.get(s_id, "bob")
            ev = history(port, s_id, make_token(owner))
            seqs = [e["seq"] for e in ev]
            assert seqs == list(range(1, len(seqs) + 1)), "stored seqs with a gap"
            stored = {e.get("id"): e["seq"] for e in ev if e.get("id")}
            for mid, seq in mids.items():
                assert stored.get(mid) == seq, "acked %s at seq %d, stored %s" % (
                    mid, seq, stored.get(mid))
        for dv in devs + box + reader + bob:
            dv.close()
    took = time.time() - started
    for path, s in STATS.items():
        print("%-10s allocations %4d, N 1..%d, rounds %d, failures injected %d, outcomes %s" % (
            path, s["count"], s.get("max_n", 0), s["rounds"], s["injected"],
            {k: v for k, v in s.items() if k not in ("count", "rounds", "injected", "max_n")}))
    print("acknowledged messages checked: %d; %.1fs" % (len(acked), took))


if __name__ == "__main__":
    run([test_out_of_memory_paths])
