"""Chat delivery end to end: fan-out to every device and joined admin,
resume without gap or duplicate, crash safety of acknowledged messages, and
behaviour on a full disk.

Contract (docs/protocol.md sections 3-5, 7): an `ack` is sent only once the
message is durably stored; the event goes to every connection of the
session's owner and every admin connection that joined; live events reach a
connection in seq order, none twice; `resume` fills the gap so that the
client ends with every event after `after_seq` exactly once; `seq` is 1, 2,
3, ... with no gap; storage failures answer `unavailable` and acknowledge
nothing; /readyz is 503 while storage is failing.
"""
import errno
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from harness import SLOW, Chatd, http_get, make_token, run  # noqa: E402
from chatload import (ChatClient, check_gapless, first_anomaly, history, pipeline,  # noqa: E402
                      sessions_of)

SLACK = 4.0 if SLOW else 1.0
LOAD_ARGS = ("--workers", "2", "--rate-limit", "1000000", "--input-rate", "1000000",
             "--input-byte-rate", "1000000000")


def ack_ok(reply, what=""):
    assert reply.get("type") == "ack", "%s: expected an ack, got %s" % (what, reply)
    assert isinstance(reply.get("seq"), int) and reply["seq"] >= 1, reply
    return reply


def close_all(clients):
    for c in clients:
        c.close()


def assert_reader_ok(c):
    assert not c.dup_replies, "%s: answered twice: %s" % (c.label, c.dup_replies[:3])
    if c.read_error is not None and not isinstance(c.read_error, (OSError, ConnectionError)):
        raise AssertionError("%s: reader failed: %r" % (c.label, c.read_error))


# ---- 1. fan-out -----------------------------------------------------------------

def test_multi_device_fanout():
    total = 250 if SLOW else 1000
    with Chatd(*LOAD_ARGS) as d:
        devices = [ChatClient(d.port, "fan-user", label="dev%d" % i) for i in range(5)]
        admins = [ChatClient(d.port, "fan-admin%d" % i, roles=("admin",), label="admin%d" % i)
                  for i in range(2)]
        clients = devices + admins
        try:
            assert devices[-1].status["devices"] == 5, devices[-1].status
            first = ack_ok(devices[0].request({"type": "user_message", "content": "hello 0",
                                               "id": "first"}), "first message")
            sid = first["session_id"]
            assert first["seq"] == 1, first
            by_seq = {1: ("first", "hello 0", "user_message")}
            join_seq = {}  # admin -> the seq of its admin_join
            # Each admin_join is a stored event (seq 2, 3): acked with its
            # seq, then delivered to the session, the joining admin's own
            # connection included.
            for k, a in enumerate(admins):
                r = ack_ok(a.request({"type": "admin_join", "session_id": sid,
                                      "id": "join-" + a.label}), "join")
                assert r["session_id"] == sid and r["seq"] == 2 + k, r
                by_seq[r["seq"]] = ("join-" + a.label, None, "admin_join")
                join_seq[a.sub] = r["seq"]
                # What came before the join: fetch it with resume (nothing
                # else is being sent, so this is a plain replay).
                a.send({"type": "resume", "session_id": sid, "after_seq": 0})
                res = a.wait_message(lambda m: m.get("type") == "resumed", 30 * SLACK)
                assert res["session_id"] == sid and res["last_seq"] == 2 + k, res
            n_before = 1 + len(admins)  # the events before the burst
            for c in clients:
                assert c.wait_count(sid, n_before, 10 * SLACK), (c.label, c.seqs(sid))
                # Live first, then the replay below it: each exactly once.
                assert sorted(c.seqs(sid)) == list(range(1, n_before + 1)), (c.label,
                                                                             c.seqs(sid))
            for c in devices:
                assert c.seqs(sid) == list(range(1, n_before + 1)), (c.label, c.seqs(sid))
            for a in admins:
                with a.cond:
                    kinds = [(m.get("type"), m.get("seq")) for m in a.log
                             if m.get("type") in ("ack", "admin_join")]
                own = join_seq[a.sub]
                assert kinds.index(("ack", own)) < kinds.index(("admin_join", own)), \
                    "%s: its admin_join event came before the ack: %s" % (a.label, kinds)

            # Senders: three owner devices and both admins, concurrently.
            senders = devices[:3] + admins
            per = (total - 1) // len(senders)
            extra = (total - 1) - per * len(senders)
            plans, sent = {}, {}
            for k, c in enumerate(senders):
                n = per + (1 if k < extra else 0)
                is_admin = c in admins
                msgs = []
                for i in range(n):
                    cid = "%s-%d" % (c.label, i)
                    msgs.append({"type": "admin_message" if is_admin else "user_message",
                                 "session_id": sid, "id": cid,
                                 "content": "from %s #%d" % (c.label, i)})
                    sent[cid] = (c, msgs[-1])
                plans[c.label] = msgs
            results = {}

            def send_all(c):
                results[c.label] = pipeline(c, plans[c.label], window=8, timeout=120 * SLACK)

            threads = [threading.Thread(target=send_all, args=(c,)) for c in senders]
            t0 = time.time()
            for t in threads:
                t.start()
            for t in threads:
                t.join(180 * SLACK)
            assert not any(t.is_alive() for t in threads), "senders did not finish"

            for c in senders:
                replies = results[c.label]
                assert len(replies) == len(plans[c.label]), \
                    "%s: %d of %d messages answered" % (c.label, len(replies),
                                                        len(plans[c.label]))
                for m in plans[c.label]:
                    r = ack_ok(replies[m["id"]], m["id"])
                    assert r["session_id"] == sid and "duplicate" not in r, r
                    assert r["seq"] not in by_seq, "seq %d acknowledged twice (%s and %s)" % (
                        r["seq"], by_seq[r["seq"]][0], m["id"])
                    by_seq[r["seq"]] = (m["id"], m["content"], m["type"])
            n_events = total + len(admins)  # the messages and the joins
            assert sorted(by_seq) == list(range(1, n_events + 1)), \
                "acked seqs are not 1..%d: %s" % (n_events, first_anomaly(sorted(by_seq), 1))

            for c in clients:
                ok = c.wait_count(sid, n_events, 60 * SLACK)
                assert_reader_ok(c)
                seqs = c.seqs(sid)
                assert ok, "%s received %d of %d events (closed=%s %r)" % (
                    c.label, len(seqs), n_events, c.closed, c.read_error)
                assert sorted(seqs[:n_before]) == list(range(1, n_before + 1)) and \
                    seqs[n_before:] == list(range(n_before + 1, n_events + 1)), \
                    "%s: events not exactly 1..%d, live ones in order: %s" % (
                        c.label, n_events,
                        first_anomaly(sorted(seqs[:n_before]) + seqs[n_before:], 1))
                with c.cond:
                    evs = [e for e in c.events if e["session_id"] == sid]
                for e in evs:
                    cid, content, typ = by_seq[e["seq"]]
                    if typ == "admin_join":
                        who = [sub for sub, seq in join_seq.items() if seq == e["seq"]]
                        assert set(e) == {"type", "session_id", "seq", "sender", "timestamp"} \
                            and e["type"] == typ and e["sender"] == {
                                "type": "admin", "id": who[0], "name": who[0]}, \
                            "%s: event seq %d is %s, expected %s's admin_join" % (
                                c.label, e["seq"], e, who)
                        continue
                    assert e.get("id") == cid and e["content"] == content and e["type"] == typ, \
                        "%s: event seq %d is %s, expected id %s %s" % (c.label, e["seq"], e,
                                                                      cid, typ)
                    want_sender = "admin" if typ == "admin_message" else "user"
                    assert e["sender"]["type"] == want_sender, e
            took = time.time() - t0
            print("     fan-out: %d events x %d connections in %.2fs" % (total, len(clients),
                                                                       took))
            # Nothing more trickles in afterwards (a late duplicate).
            time.sleep(0.3)
            for c in clients:
                assert c.count(sid) == n_events, "%s: %d events after the end" % (
                    c.label, c.count(sid))
        finally:
            close_all(clients)


# ---- 2. resume ------------------------------------------------------------------

def check_resume_arrival(label, arrivals, after, expected_last):
    """arrivals: the resuming connection's log (events and the resumed frame).
    Every seq after..expected_last exactly once; the live events in order: the
    arrival order is [live...][replay block][resumed][live...], so apart from
    the start of the replay block seqs only rise."""
    seqs = [m["seq"] for m in arrivals if m.get("type") in ("user_message", "admin_message")]
    want = list(range(after + 1, expected_last + 1))
    missing = sorted(set(want) - set(seqs))
    dups = sorted({s for s in seqs if seqs.count(s) > 1})
    extra = sorted(set(seqs) - set(want))
    assert not missing and not dups and not extra, \
        "%s: after resume(after_seq=%d): %d events, missing %s, duplicated %s, unexpected %s" % (
            label, after, len(seqs), missing[:20], dups[:20], extra[:20])
    descents = [i for i in range(1, len(seqs)) if seqs[i] < seqs[i - 1]]
    assert len(descents) <= 1, "%s: events out of order at %s: %s" % (
        label, descents[:5], [seqs[max(0, i - 2):i + 2] for i in descents[:3]])
    idx = next(i for i, m in enumerate(arrivals) if m.get("type") == "resumed")
    before = [m["seq"] for m in arrivals[:idx] if "seq" in m and m.get("type") != "resumed"]
    after_res = [m["seq"] for m in arrivals[idx + 1:] if "seq" in m]
    if before and after_res:
        assert after_res[0] > max(before), \
            "%s: live event %d after resumed, but %d already received" % (
                label, after_res[0], max(before))
    return len(before), len(after_res)


def resume_round(port, user, live_first):
    n1 = n2 = 200
    k_msgs = 10
    d1 = ChatClient(port, user, label="D1")
    d2 = ChatClient(port, user, label="D2")
    d3 = ChatClient(port, user, label="D3")
    clients = [d1, d2, d3]
    try:
        r = ack_ok(d3.request({"type": "user_message", "content": "start", "id": "m-0"}))
        sid = r["session_id"]
        pre = [{"type": "user_message", "session_id": sid, "id": "m-%d" % i,
                "content": "before %d" % i} for i in range(1, k_msgs)]
        rep = pipeline(d3, pre, window=4, timeout=60 * SLACK)
        assert len(rep) == len(pre)
        K = k_msgs
        assert d2.wait_count(sid, K, 20 * SLACK), "D2 got %s" % d2.seqs(sid)
        assert d2.seqs(sid) == list(range(1, K + 1)), d2.seqs(sid)
        d2.close()

        batch1 = [{"type": "user_message", "session_id": sid, "id": "a-%d" % i,
                   "content": "while away %d" % i} for i in range(n1)]
        rep = pipeline(d3, batch1, window=8, timeout=120 * SLACK)
        assert len(rep) == n1 and all(x["type"] == "ack" for x in rep.values()), \
            "batch 1: %d answers" % len(rep)
        expected = {}
        for m in pre + batch1:
            expected[m["id"]] = m["content"]

        d2b = ChatClient(port, user, label="D2'")
        clients.append(d2b)
        batch2 = [{"type": "user_message", "session_id": sid, "id": "b-%d" % i,
                   "content": "meanwhile %d" % i} for i in range(n2)]
        for m in batch2:
            expected[m["id"]] = m["content"]
        out = {}
        sender = threading.Thread(target=lambda: out.update(
            pipeline(d3, batch2, window=4, timeout=120 * SLACK)))
        resume = {"type": "resume", "session_id": sid, "after_seq": K, "id": "resume-1"}
        if live_first:
            sender.start()
            # Let live events reach D2' first, so the replay has to fill
            # a gap below them.
            d2b.wait_until(lambda: len(d2b.events) >= 10, 20 * SLACK)
            d2b.send(resume)
        else:
            d2b.send(resume)
            sender.start()
        sender.join(180 * SLACK)
        assert not sender.is_alive()
        assert len(out) == n2 and all(x["type"] == "ack" for x in out.values()), \
            "batch 2: %d answers" % len(out)
        last = K + n1 + n2
        assert max(x["seq"] for x in out.values()) == last, "acks do not reach %d" % last
        res = d2b.wait_message(lambda m: m.get("type") == "resumed", 60 * SLACK)
        assert res["session_id"] == sid and res.get("id") == "resume-1", res
        assert K + n1 <= res["last_seq"] <= last, res
        for c in (d1, d2b):
            c.wait_until(lambda: c.count(sid) >= (last if c is d1 else last - K), 60 * SLACK)
        time.sleep(0.3)  # a late duplicate would show up here
        for c in (d1, d3):
            assert_reader_ok(c)
            assert c.seqs(sid) == list(range(1, last + 1)), \
                "%s: %s" % (c.label, first_anomaly(c.seqs(sid), 1))
        assert_reader_ok(d2b)
        with d2b.cond:
            arrivals = [m for m in d2b.log if m.get("session_id") == sid and
                        (m.get("type") == "resumed" or "seq" in m and m.get("type") in
                         ("user_message", "admin_message"))]
            evs = list(d2b.events)
        nb, na = check_resume_arrival("D2' (%s)" % ("live first" if live_first else
                                                   "resume first"), arrivals, K, last)
        for e in evs:
            assert expected.get(e.get("id")) == e["content"], "wrong event %s" % e
        return nb, na
    finally:
        close_all(clients)


def test_resume_no_gap_no_duplicate():
    with Chatd(*LOAD_ARGS) as d:
        for live_first in (False, True):
            nb, na = resume_round(d.port, "resumer-%d" % live_first, live_first)
            print("     resume (%s): %d events before resumed, %d after" % (
                "live first" if live_first else "resume first", nb, na))


# ---- 3. crash safety ---------------------------------------------------------------

def crash_round(sync):
    users = 10
    per_user = 2
    run_for = 2.0
    tmp = tempfile.mkdtemp(prefix="chatd-crash-")
    db = os.path.join(tmp, "chat.db")
    args = LOAD_ARGS + ("--db", db, "--sync", sync)
    sent = {}        # (user, id) -> content
    acked = []       # (user, sid, seq, id, content)
    lock = threading.Lock()
    stop = threading.Event()
    shared = {}
    try:
        d = Chatd(*args)
        d.start()
        d.expect_exit = None  # it is killed
        clients = []
        try:
            for u in range(users):
                user = "crash-%s-%d" % (sync, u)
                c = ChatClient(d.port, user, label=user + "/0")
                cid = "shared-%d" % u
                r = ack_ok(c.request({"type": "user_message", "content": "shared start",
                                      "id": cid}))
                shared[user] = r["session_id"]
                sent[(user, cid)] = "shared start"
                acked.append((user, r["session_id"], r["seq"], cid, "shared start"))
                clients.append(c)
                for k in range(1, per_user):
                    clients.append(ChatClient(d.port, user, label="%s/%d" % (user, k)))

            def worker(c):
                user, tag = c.sub, c.label.rsplit("/", 1)[1]
                own = None
                pending = {}  # id -> content
                i = 0
                window = 4
                deadline = time.time() + 60 * SLACK
                while not c.closed and time.time() < deadline:
                    while len(pending) < window and not stop.is_set() and \
                            (own is not None or not pending):
                        cid = "t%s-%d" % (tag, i)
                        content = "%s says %d" % (c.label, i)
                        msg = {"type": "user_message", "id": cid, "content": content}
                        if own is not None and i % 2:
                            msg["session_id"] = own
                        elif own is not None or i > 0:
                            msg["session_id"] = shared[user]
                        with lock:
                            sent[(user, cid)] = content
                        try:
                            c.send(msg)
                        except OSError:
                            return
                        pending[cid] = content
                        i += 1
                    if not pending:
                        return
                    c.wait_until(lambda: any(p in c.replies for p in pending), 1.0)
                    with c.cond:
                        done = [(p, c.replies[p]) for p in pending if p in c.replies]
                    for p, r in done:
                        content = pending.pop(p)
                        if r.get("type") != "ack":
                            raise AssertionError("%s: %s answered %s" % (c.label, p, r))
                        with lock:
                            acked.append((user, r["session_id"], r["seq"], p, content))
                        if p == "t%s-0" % tag:
                            own = r["session_id"]

            errors = []

            def guarded(c):
                try:
                    worker(c)
                except Exception as e:
                    errors.append(e)

            threads = [threading.Thread(target=guarded, args=(c,)) for c in clients]
            for t in threads:
                t.start()
            time.sleep(run_for)
            n_before_kill = len(acked)
            d.proc.kill()
            d.proc.wait(30)
            for t in threads:
                t.join(30 * SLACK)
            stop.set()
            assert not any(t.is_alive() for t in threads), "client threads did not stop"
            assert not errors, errors[0]
            d.check_log()
        finally:
            stop.set()
            for c in clients:
                c.drop()
            if d.proc.poll() is None:
                d.proc.kill()
                d.proc.wait()
            if os.path.exists(d.log_path):
                os.unlink(d.log_path)
            shutil.rmtree(d.tmpdir, ignore_errors=True)

        assert len(acked) > 100 * (0.25 if SLOW else 1), \
            "only %d messages acknowledged in %.1fs" % (len(acked), run_for)
        # Restart on the same database and read everything back.
        with Chatd(*args) as d2:
            acked_by = {(a[0], a[3]): a for a in acked}
            for u in range(users):
                user = "crash-%s-%d" % (sync, u)
                tok = make_token(user)
                sessions = sessions_of(d2.port, tok)
                sids = {s["id"]: s for s in sessions}
                want_sids = {a[1] for a in acked if a[0] == user}
                assert want_sids <= set(sids), "user %s: acknowledged sessions missing: %s" % (
                    user, sorted(want_sids - set(sids)))
                for sid, s in sids.items():
                    evs, last_seq = history(d2.port, sid, tok)
                    check_gapless(sid, evs)
                    assert s["last_seq"] == len(evs) == last_seq, \
                        "session %s: last_seq %s / %s, %d events" % (sid, s["last_seq"],
                                                                     last_seq, len(evs))
                    seen = {}
                    for e in evs:
                        cid = e.get("id")
                        assert cid is not None, "stored event without its client id: %s" % e
                        assert cid not in seen, "id %s stored twice (seq %d and %d) in %s" % (
                            cid, seen[cid], e["seq"], sid)
                        seen[cid] = e["seq"]
                        assert (user, cid) in sent, "stored message never sent: %s" % e
                        assert e["content"] == sent[(user, cid)], e
                        a = acked_by.get((user, cid))
                        if a:
                            assert a[1] == sid and a[2] == e["seq"], \
                                "acked %s as %s seq %d, stored in %s at seq %d" % (
                                    cid, a[1], a[2], sid, e["seq"])
                    for a in acked:
                        if a[0] == user and a[1] == sid:
                            assert a[3] in seen, \
                                "acknowledged message lost: %s seq %d in %s (last_seq %d)" % (
                                    a[3], a[2], sid, len(evs))
            # A client's id is also unique across a user's sessions here.
        print("     crash (--sync %s): %d acknowledged (%d when killed), all present" % (
            sync, len(acked), n_before_kill))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_crash_safety():
    for sync in ("full", "normal"):
        crash_round(sync)


# ---- 4. full disk --------------------------------------------------------------------

def readyz(port):
    return http_get(port, "/readyz")[0]


def fill(path, chunk=1 << 16):
    """Write zeros until the filesystem is full; return bytes written."""
    n = 0
    buf = b"\0" * chunk
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            try:
                w = os.write(fd, buf if chunk > 1 else b"\0")
                n += w
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                if chunk == 1:
                    break
                chunk = max(1, chunk // 16)
                buf = b"\0" * chunk
        os.fsync(fd)
    finally:
        os.close(fd)
    return n


def test_storage_fault():
    mnt = tempfile.mkdtemp(prefix="chatd-tmpfs-")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mnt],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        print("     SKIP test_storage_fault: cannot mount a tmpfs (%s)" %
              r.stdout.decode(errors="replace").strip())
        os.rmdir(mnt)
        return
    filler = os.path.join(mnt, "filler")
    try:
        with Chatd(*LOAD_ARGS, "--db", os.path.join(mnt, "chat.db")) as d:
            a1 = ChatClient(d.port, "fault-a", label="A1")
            a2 = ChatClient(d.port, "fault-a", label="A2")
            b1 = ChatClient(d.port, "fault-b", label="B1")
            clients = [a1, a2, b1]
            try:
                late_failures = []
                acked = {}  # id -> (seq, content) in session SA
                r = ack_ok(a1.request({"type": "user_message", "content": "a 0", "id": "ok-0"}))
                sa = r["session_id"]
                acked["ok-0"] = (r["seq"], "a 0")
                for i in range(1, 5):
                    r = ack_ok(a1.request({"type": "user_message", "session_id": sa,
                                           "content": "a %d" % i, "id": "ok-%d" % i}))
                    acked["ok-%d" % i] = (r["seq"], "a %d" % i)
                rb = ack_ok(b1.request({"type": "user_message", "content": "b 0", "id": "b-0"}))
                sb = rb["session_id"]
                assert readyz(d.port) == 200
                last_seq = max(s for s, _ in acked.values())

                filled = fill(filler)
                # Until a write fails, messages may still be acknowledged (the
                # last file page may have room); after the first failure none
                # is, as long as the disk stays full.
                failed = {}  # id -> content (answered unavailable, never retried)
                first_fail = None
                for i in range(40):
                    cid, content = "f-%d" % i, "during fault %d" % i
                    r = a1.request({"type": "user_message", "session_id": sa, "id": cid,
                                    "content": content + " " + "x" * 2000})
                    if r["type"] == "ack":
                        assert first_fail is None, "acked after a storage failure: %s" % r
                        assert r["seq"] == last_seq + 1, r
                        last_seq = r["seq"]
                        acked[cid] = (r["seq"], content + " " + "x" * 2000)
                        continue
                    assert r["type"] == "error" and r["code"] == "unavailable", r
                    assert r["recoverable"] is True and isinstance(r.get("retry_after"), int), r
                    failed[cid] = content
                    if first_fail is None:
                        first_fail = i
                    if len(failed) >= 5:
                        break
                assert first_fail is not None, \
                    "no write failed on a full disk (%d bytes of filler)" % filled
                assert readyz(d.port) == 503, "readyz while storage fails"
                # Other users and kinds of messages: errors, no acks.
                r = b1.request({"type": "user_message", "session_id": sb, "id": "bf-1",
                                "content": "b fault"})
                assert r["type"] == "error" and r["code"] == "unavailable", r
                r = b1.request({"type": "user_message", "id": "bf-new", "content": "b new"})
                assert r["type"] == "error" and r["code"] == "unavailable", r
                r = b1.request({"type": "user_message", "session_id": sb, "id": "bf-empty",
                                "content": ""})
                assert r["type"] == "error" and r["code"] == "invalid_field", r
                b1.send_text("{not json")
                b1.wait_message(lambda m: m.get("type") == "error" and
                                m.get("code") == "bad_json", 10 * SLACK)
                assert http_get(d.port, "/healthz")[0] == 200
                assert http_get(d.port, "/metrics")[0] == 200
                assert readyz(d.port) == 503
                # Requests that write nothing (a typing indicator) do not make
                # a full disk ready again: a chat message would still fail.
                # Checked at the end, so that recovery is tested either way.
                b1.send({"type": "typing_indicator", "session_id": sb, "typing": True})
                time.sleep(0.3)
                st = readyz(d.port)
                if st != 503:
                    late_failures.append(
                        "readyz answered %d after a typing_indicator while the disk was still "
                        "full (expected 503: the last chat write failed and the next one "
                        "fails too)" % st)
                r = a1.request({"type": "user_message", "session_id": sa, "id": "f-again",
                                "content": "still full"})
                assert r["type"] == "error" and r["code"] == "unavailable", r
                failed["f-again"] = "still full"
                assert readyz(d.port) == 503
                st, _, _ = http_get(d.port, "/api/sessions/%s/messages" % sa,
                                    headers={"Authorization": "Bearer " + a1.token})
                print("     history read while the disk is full: HTTP %d" % st)
                # Nothing unacknowledged was delivered to the other device.
                time.sleep(0.2)
                with a2.cond:
                    leaked = [e for e in a2.events if e.get("id") in failed]
                assert not leaked, "A2 received unstored messages: %s" % leaked[:3]

                os.unlink(filler)
                # Recovery: new messages and a retry of a failed one.
                r = a1.request({"type": "user_message", "session_id": sa, "id": "after-0",
                                "content": "after 0"})
                ack_ok(r, "first message after the disk was freed")
                assert r["seq"] == last_seq + 1, "seq after recovery: %s, expected %d" % (
                    r, last_seq + 1)
                last_seq = r["seq"]
                acked["after-0"] = (r["seq"], "after 0")
                assert readyz(d.port) == 200, "readyz after a successful write"
                retry_id = sorted(failed)[0]
                content = failed.pop(retry_id)
                r = ack_ok(a1.request({"type": "user_message", "session_id": sa,
                                       "id": retry_id, "content": content + " retried"}))
                assert r["seq"] == last_seq + 1 and "duplicate" not in r, r
                last_seq = r["seq"]
                acked[retry_id] = (r["seq"], content + " retried")
                for i in range(1, 4):
                    r = ack_ok(a1.request({"type": "user_message", "session_id": sa,
                                           "id": "after-%d" % i, "content": "after %d" % i}))
                    assert r["seq"] == last_seq + 1, r
                    last_seq = r["seq"]
                    acked["after-%d" % i] = (r["seq"], "after %d" % i)
                # A retry of an id stored before the fault: re-acknowledged, not stored again.
                r = ack_ok(a1.request({"type": "user_message", "session_id": sa, "id": "ok-1",
                                       "content": "a 1"}))
                assert r["seq"] == acked["ok-1"][0] and r.get("duplicate") is True, r
                r = ack_ok(b1.request({"type": "user_message", "session_id": sb, "id": "bf-1",
                                       "content": "b fault"}))
                assert r["seq"] == 2, r
                rn = ack_ok(b1.request({"type": "user_message", "id": "bf-new",
                                        "content": "b new"}))
                assert rn["seq"] == 1 and rn["session_id"] != sb, rn

                # History: every ack stored once, with its seq; no failed id.
                evs, hl = history(d.port, sa, a1.token)
                check_gapless(sa, evs)
                assert hl == last_seq == len(evs), (hl, last_seq, len(evs))
                ids = [e.get("id") for e in evs]
                assert len(ids) == len(set(ids)), "an id stored twice: %s" % ids
                stored = {e.get("id"): (e["seq"], e["content"]) for e in evs}
                for cid, v in acked.items():
                    assert stored.get(cid) == v, "acked %s %s, stored %s" % (cid, v,
                                                                           stored.get(cid))
                for cid in failed:
                    assert cid not in stored, "unacknowledged %s is in history" % cid
                assert set(stored) == set(acked), set(stored) ^ set(acked)
                evb, _ = history(d.port, sb, b1.token)
                assert [(e["seq"], e.get("id")) for e in evb] == [(1, "b-0"), (2, "bf-1")], evb
                # The devices got exactly the stored events, in order.
                for c in (a1, a2):
                    c.wait_count(sa, len(evs), 10 * SLACK)
                    assert c.seqs(sa) == list(range(1, len(evs) + 1)), (c.label, c.seqs(sa))
                    assert_reader_ok(c)
                assert not late_failures, "; ".join(late_failures)
            finally:
                close_all(clients)
    finally:
        if os.path.exists(filler):
            os.unlink(filler)
        if subprocess.run(["umount", mnt]).returncode != 0:
            subprocess.run(["umount", "-l", mnt])
        os.rmdir(mnt)


def test_resume_long_history_paced():
    """A replay longer than the send queue is paced by the queue, not cut off:
    a client reading at a normal pace gets every event, then `resumed`."""
    n = 600 if SLOW else 3000
    with Chatd("--workers", "2", "--rate-limit", "100000000", "--sync", "normal",
               "--input-rate", "1000000", "--input-byte-rate", "1000000000",
               "--max-message-bytes", "65536", "--send-queue-bytes", "200000") as d:
        writer = ChatClient(d.port, "longuser")
        first = writer.request({"type": "user_message", "content": "x" * 300, "id": "m0"})
        assert first["type"] == "ack", first
        sid = first["session_id"]
        msgs = [{"type": "user_message", "session_id": sid, "content": "%05d" % i + "y" * 295,
                 "id": "m%d" % i} for i in range(1, n)]
        replies = pipeline(writer, msgs, window=32, timeout=120)
        assert len(replies) == n - 1 and all(r["type"] == "ack" for r in replies.values())
        writer.close()
        reader = ChatClient(d.port, "longuser", label="reader")
        reader.send({"type": "resume", "session_id": sid, "after_seq": 0, "id": "r"})
        done = reader.wait_message(lambda m: m.get("type") in ("resumed", "error"), timeout=120)
        assert done["type"] == "resumed", done
        assert done["last_seq"] == n, done
        assert reader.seqs(sid) == list(range(1, n + 1)), "replay incomplete or out of order"
        assert not reader.closed, reader.close_code
        reader.close()


if __name__ == "__main__":
    run([test_multi_device_fanout, test_resume_no_gap_no_duplicate, test_crash_safety,
         test_storage_fault, test_resume_long_history_paced])
