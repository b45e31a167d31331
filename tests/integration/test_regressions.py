"""Defects found by driving chatd from outside, each pinned by a test.

Each test reproduces one reported defect through real parts (the binary, its
sockets, its SQLite file) and asserts the behaviour chatd now promises:
shutdown while the writer is blocked, roles taken from a refreshed token,
bounded resume, a budget for every message type, a per-connection input
budget, prefix matching, quoted log values, fail-stop storage.
"""
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from harness import (SANITIZER_MARKERS, SLOW, WS, Chatd, WSClosed, frame,  # noqa: E402
                     http_get, make_token, run)
from test_chat_protocol import (NO_SUCH, ROOT, SLACK, barrier, close_all, connect,  # noqa: E402
                                expect_error, next_id, post, recv_type, server, token)


def db_path(d):
    return d.args[d.args.index("--db") + 1]


# ---- 1. shutdown while the writer still has work ---------------------------------

def test_shutdown_while_writer_blocked():
    """Another connection holds the write lock, a message is queued, SIGTERM
    arrives: chatd drains the writer while the workers' inboxes still exist,
    then exits 0 (the old order freed the workers first and crashed)."""
    d = server().start()
    ws = connect(d.port, "alice")
    post(ws, "before the lock")
    lock = sqlite3.connect(db_path(d), timeout=10, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    for i in range(20):
        ws.send_json({"type": "user_message", "id": next_id("blk"), "content": "queued %d" % i})
    time.sleep(0.3)
    d.proc.send_signal(signal.SIGTERM)
    # The client goes away at once, so the workers end quickly; the lock is
    # kept until they are gone, then the writer goes on.
    ws.shut()
    deadline = time.time() + 10 * SLACK
    while "event=shutdown_begin" not in d.log() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.0 * SLACK)
    lock.execute("ROLLBACK")
    lock.close()
    rc = d.proc.wait(30 * SLACK)
    log = d.log()
    for marker in SANITIZER_MARKERS:
        assert marker not in log, log[-4000:]
    assert rc == 0, "exit status %s:\n%s" % (rc, log[-3000:])
    assert "event=shutdown_done" in log, log[-2000:]


# ---- 2. a refresh takes roles and name from the new token ----------------------------

def test_refresh_without_admin_role_leaves_and_loses_rights():
    with server() as d:
        a1 = connect(d.port, "alice", name="Alice")
        a2 = connect(d.port, "alice", name="Alice")
        ack, _ = post(a1, "private words")
        a2.recv_json()
        sid = ack["session_id"]
        # An admin whose token lasts 4 s joins Alice's session.
        adm = WS(d.port, path="/ws", token=make_token("sam", ttl=4, roles=["admin"], name="Sam"))
        assert adm.recv_json()["roles"] == ["admin"]
        adm.send_json({"type": "admin_join", "id": "j1", "session_id": sid})
        got = barrier(adm)
        assert any(m["type"] == "ack" and m.get("id") == "j1" for m in got), got
        assert recv_type(a1, "admin_join")["session_id"] == sid
        recv_type(a2, "admin_join")
        # A refresh with a plain user token (longer-lived, other name).
        fresh = make_token("sam", ttl=3600, roles=["user"], name="Sam Plain")
        adm.send_json({"type": "refresh", "id": "r1", "token": fresh})
        m = recv_type(adm, "refreshed")
        assert m["id"] == "r1" and m["roles"] == ["user"] and m["name"] == "Sam Plain", m
        n = recv_type(adm, "notification")
        assert n["code"] == "roles_changed" and n["sessions"] == [sid], n
        # Alice's devices see the admin leave.
        assert recv_type(a1, "admin_leave")["session_id"] == sid
        recv_type(a2, "admin_leave")
        assert barrier(adm) == [], "no ack or event for the leave chatd made"
        # Wait past the admin token's expiry: the connection lives on with
        # the new token, without any admin right.
        time.sleep(4.5)
        post(a1, "more private words", sid=sid)
        a2.recv_json()
        assert barrier(adm) == [], "an event of Alice's session reached the former admin"
        adm.send_json({"type": "admin_join", "id": "j2", "session_id": sid})
        expect_error(adm, "forbidden", "j2")
        adm.send_json({"type": "resume", "id": "r2", "session_id": sid, "after_seq": 0})
        expect_error(adm, "session_not_found", "r2")
        adm.send_json({"type": "admin_message", "id": "m2", "session_id": sid, "content": "x"})
        expect_error(adm, "forbidden", "m2")
        # And the other way: a refresh that grants admin makes help requests
        # reach the connection.
        adm.send_json({"type": "refresh", "id": "r3",
                       "token": make_token("sam", ttl=3600, roles=["admin"])})
        assert recv_type(adm, "refreshed")["roles"] == ["admin"]
        a1.send_json({"type": "help_request", "id": "h1", "session_id": sid})
        assert recv_type(a1, "ack")["id"] == "h1"
        got = barrier(adm)
        assert [m["type"] for m in got] == ["help_request"], got
        close_all(a1, a2, adm)


# ---- 3. resume is bounded per connection and session ---------------------------------

def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_resume_is_bounded():
    """256 messages of 64 KiB; a second device sends 60 resumes from 0 and
    reads nothing. One replay runs, the others are refused, and the server
    holds no pages for the parked replay."""
    with server() as d:
        a1 = connect(d.port, "alice")
        big = "x" * 65536
        ack, _ = post(a1, big)
        sid = ack["session_id"]
        a1.sock.settimeout(30 * SLACK)
        for k in range(0, 255, 5):  # a few at a time: a1 reads its own events too
            n = min(5, 255 - k)
            for i in range(k, k + n):
                a1.send_json({"type": "user_message", "id": "b%d" % i, "session_id": sid,
                              "content": big})
            seen = 0
            while seen < 2 * n:
                if a1.recv_json()["type"] in ("ack", "user_message"):
                    seen += 1
        a2 = connect(d.port, "alice")
        time.sleep(0.5)
        before = rss_kib(d.proc.pid)
        for i in range(60):
            a2.send_json({"type": "resume", "id": "r%d" % i, "session_id": sid, "after_seq": 0})
        time.sleep(2.0 * SLACK)
        grown = rss_kib(d.proc.pid) - before
        if not SLOW:  # sanitizers keep freed memory in quarantine
            assert grown < 48 * 1024, "RSS grew by %d KiB" % grown
        # Now read: exactly one full replay, 59 refusals, nothing twice.
        a2.sock.settimeout(30 * SLACK)
        seqs, refused, resumed = [], [], []
        while not resumed or len(refused) < 59:
            m = a2.recv_json()
            if m["type"] == "user_message":
                seqs.append(m["seq"])
            elif m["type"] == "error":
                assert m["code"] == "rate_limited" and m["retry_after"] > 0, m
                refused.append(m["id"])
            elif m["type"] == "resumed":
                resumed.append(m)
            elif m["type"] == "ack":
                pass
            else:
                raise AssertionError(m)
        assert len(resumed) == 1 and resumed[0]["id"] == "r0", resumed
        assert resumed[0]["last_seq"] == 256, resumed
        assert seqs == list(range(1, 257)), seqs[:5]
        assert sorted(refused) == sorted("r%d" % i for i in range(1, 60)), refused
        # The replay is over: a new one may start.
        a2.send_json({"type": "resume", "id": "again", "session_id": sid, "after_seq": 250})
        got = []
        while True:
            m = a2.recv_json()
            got.append(m)
            if m["type"] == "resumed":
                break
        assert got[-1]["id"] == "again" and len(got) == 1, got  # all were sent already
        close_all(a1, a2)


# ---- 4. every message type has a budget --------------------------------------------

def metric(port, name):
    status, _, body = http_get(port, "/metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError("no metric " + name)


def test_every_type_has_a_budget():
    # The connection's own input budget is raised so that the per-type
    # budgets are what is measured here.
    with Chatd("--rate-limit", "3", "--input-rate", "1000000", "--models", "m1") as d:
        alice = connect(d.port, "alice")
        adm = connect(d.port, ROOT, admin=True)
        ack, _ = post(alice, "one")
        sid = ack["session_id"]
        post(alice, "two", sid=sid)
        post(alice, "three", sid=sid)
        alice.send_json({"type": "user_message", "id": "over", "session_id": sid,
                         "content": "four"})
        expect_error(alice, "rate_limited", "over")
        commits = metric(d.port, "chatd_store_commit_seconds_count")
        n = 3000
        burst = b"".join(frame(
            1, json.dumps({"type": "help_request", "id": "h%d" % i, "session_id": sid}).encode())
            for i in range(n))
        alice.send_raw(burst)
        acks, limited, dup, events = 0, 0, 0, []
        # Every request answered, and the one stored help_request event
        # (seq 4) delivered to the owner's device.
        while acks + limited < n or not events:
            m = alice.recv_json()
            if m["type"] == "ack":
                acks += 1
                if m.get("duplicate", False):
                    assert m["duplicate"] is True and "seq" not in m, m
                    dup += 1
                else:
                    assert m["seq"] == 4, m
            elif m["type"] == "help_request":
                assert m["seq"] == 4 and m["session_id"] == sid, m
                events.append(m)
            else:
                assert m["type"] == "error" and m["code"] == "rate_limited", m
                assert m["retry_after"] > 0, m
                limited += 1
        assert acks <= 12 and acks + limited == n, (acks, limited)
        assert dup == acks - 1, "repeated help requests are coalesced: %d of %d" % (dup, acks)
        assert len(events) == 1 and barrier(alice) == [], events
        # The admin heard of it once.
        got = barrier(adm)
        assert got == events, got
        assert metric(d.port, "chatd_store_commit_seconds_count") - commits <= 13
        # Typing indicators, read markers, model selections, resumes.
        for mtype, extra in (("typing_indicator", {"typing": True}), ("read", {"seq": 1}),
                             ("resume", {"after_seq": 3}), ("model_select", {"model_id": "m1"})):
            data = b"".join(frame(1, json.dumps(
                dict({"type": mtype, "id": "t%d" % i, "session_id": sid}, **extra)).encode())
                for i in range(n))
            alice.send_raw(data)
            got = []
            if mtype == "model_select":
                # The barrier below is a model_select too: every answer in
                # first, then the time for its budget to give one again.
                while len([m for m in got if str(m.get("id", "")).startswith("t")]) < n:
                    got.append(alice.recv_json())
                wait = max(m.get("retry_after", 0) for m in got) / 1000.0
                time.sleep(wait + 0.2)
            limited = sum(1 for m in got + barrier(alice)
                          if m["type"] == "error" and m["code"] == "rate_limited")
            assert limited >= n - 300, (mtype, limited)
        # refresh verifies a signature: 5, then 6 a minute.
        fresh = token("alice")
        for i in range(20):
            alice.send_json({"type": "refresh", "id": "f%d" % i, "token": fresh})
        answers = [alice.recv_json() for _ in range(20)]
        assert [m["type"] for m in answers].count("refreshed") == 5, answers
        assert all(m["code"] == "rate_limited" for m in answers if m["type"] == "error"), answers
        close_all(alice, adm)


# ---- 5. one connection cannot monopolise its worker ------------------------------------

def test_input_budget_closes_a_flooding_connection():
    with Chatd("--workers", "1", "--rate-limit", "100000") as d:
        victim = connect(d.port, "victim")
        hog = connect(d.port, "hog")
        keys = ",".join('"k%05d":"%s"' % (i, "v" * 4) for i in range(60000))
        blob = ("{" + keys + "}").encode()
        assert len(blob) > 700 * 1024
        frame_bytes = frame(1, blob)
        sent, errors = 0, 0
        stop = threading.Event()

        def flood():
            nonlocal sent
            try:
                while not stop.is_set() and sent < 200:
                    hog.send_raw(frame_bytes)
                    sent += 1
            except OSError:
                pass
        t = threading.Thread(target=flood)
        t.start()
        # The victim keeps being answered meanwhile.
        ack, _ = post(victim, "hello")
        for i in range(20):
            post(victim, "msg %d" % i, sid=ack["session_id"])
        code = None
        hog.sock.settimeout(30 * SLACK)
        try:
            while True:
                m = hog.recv_json()
                assert m["type"] == "error" and m["code"] == "invalid_field", m
                errors += 1
        except WSClosed:
            code = hog.close_code
        stop.set()
        t.join()
        assert code == 1008 and "input" in hog.close_reason, (code, hog.close_reason)
        # At most the burst (2 x 1 MiB + 256 KiB a second) was parsed.
        assert errors <= 6, errors
        assert metric(d.port, "chatd_input_budget_closes_total") == 1
        assert "event=input_budget_exceeded" in d.log()
        post(victim, "after", sid=ack["session_id"])
        close_all(victim)


def test_input_budget_counts_small_messages():
    with Chatd("--input-rate", "20") as d:
        ws = connect(d.port, "eve")
        data = b"".join(frame(1, b"not json") for _ in range(500))
        ws.send_raw(data)
        errors = 0
        try:
            while True:
                m = ws.recv_json()
                assert m["code"] == "bad_json", m
                errors += 1
        except WSClosed:
            pass
        assert ws.close_code == 1008, ws.close_code
        assert 80 <= errors <= 90, errors  # the burst is 4 x 20 (plus what refilled)
        close_all(ws)


# ---- 6. the prefix is matched, not skipped -----------------------------------------

def test_api_routes_match_the_prefix():
    with server("--prefix", "/chat") as d:
        adm = token(ROOT, admin=True)
        auth = {"Authorization": "Bearer " + adm}
        assert http_get(d.port, "/chat/api/admin/connections", auth)[0] == 200
        assert http_get(d.port, "/chat/api/sessions", auth)[0] == 200
        for path in ("/XXXX/api/admin/connections", "/abcd/api/sessions", "/api/sessions",
                     "/chat", "/c", "/", "/cha/api/sessions/" + NO_SUCH + "/messages",
                     "/XXXX/ws", "/XXXX/healthz", "/xhat/metrics"):
            status, _, body = http_get(d.port, path, auth)
            if path == "/chat":
                assert status == 308, (path, status)  # to {prefix}/
                continue
            assert status == 404, (path, status, body)
            assert json.loads(body)["error"]["code"] == "not_found", (path, body)
        assert http_get(d.port, "/chat/healthz")[0] == 200


# ---- 8. values from clients cannot forge log fields -----------------------------------

def logfmt(line):
    """Parse one key=value log line; quoted values may hold spaces and \\"."""
    out = []
    for m in re.finditer(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)', line):
        v = m.group(2)
        if v.startswith('"'):
            v = json.loads(v)
        out.append((m.group(1), v))
    return out


def test_log_values_are_quoted():
    # A sub must be printable (a newline is refused at sign-in), but spaces,
    # '=', quotes and backslashes are allowed.
    sub = 'x admin=yes devices=99 user=root ts=forged "q" \\'
    with server() as d:
        ws = WS(d.port, path="/ws", token=make_token(sub, name="N y=z"))
        st = ws.recv_json()
        assert st["user_id"] == sub, st
        ws.close(1000)
        ws.expect_close()
        ws.shut()
        deadline = time.time() + 5 * SLACK
        while "event=ws_close" not in d.log() and time.time() < deadline:
            time.sleep(0.05)
        lines = d.log().splitlines()
        opens = [logfmt(line) for line in lines if "event=ws_open" in line]
        assert len(opens) == 1, lines
        fields = opens[0]
        keys = [k for k, _ in fields]
        assert keys.count("user") == 1 and keys.count("admin") == 1, fields
        assert keys.count("devices") == 1, fields
        assert dict(fields)["user"] == sub, fields
        assert dict(fields)["admin"] == "no", fields
        closes = [logfmt(line) for line in lines if "event=ws_close" in line]
        assert closes and dict(closes[0])["user"] == sub, lines


# ---- 10-12. storage faults: fail-stop ---------------------------------------------------

def readyz(port):
    return http_get(port, "/readyz")[0]


def test_failed_fsync_is_fail_stop():
    """One fsync of a commit fails with EIO: that batch is answered 'may have
    been stored', nothing later is acknowledged, /readyz is 503; after a
    SIGKILL and a restart, the retry with the same id finds the message
    exactly once."""
    import shutil
    tmp = __import__("tempfile").mkdtemp(prefix="chatd-fsync-")
    db = os.path.join(tmp, "chat.db")
    try:
        with server("--db", db) as d:  # the database exists before the fault
            ws = connect(d.port, "alice")
            ack, _ = post(ws, "first")
            sid = ack["session_id"]
            close_all(ws)
        # strace attaches to the running chatd (every thread), so the first
        # sync it sees is a commit's, not one of the start's.
        d = server("--db", db)
        d.expect_exit = None
        d.start()
        slog = os.path.join(tmp, "strace.log")
        tracer = subprocess.Popen(["strace", "-f", "-qq", "-p", str(d.proc.pid), "-o", slog,
                                   "-e", "trace=fsync,fdatasync",
                                   "-e", "inject=fsync,fdatasync:error=EIO:when=1"])
        try:
            deadline = time.time() + 10
            while len(os.listdir("/proc/%d/task" % d.proc.pid)) > 0 and time.time() < deadline:
                # attached once every thread shows the tracer
                tids = os.listdir("/proc/%d/task" % d.proc.pid)
                traced = 0
                for tid in tids:
                    with open("/proc/%d/task/%s/status" % (d.proc.pid, tid)) as f:
                        traced += any(line.startswith("TracerPid:") and line.split()[1] != "0"
                                      for line in f)
                if traced == len(tids):
                    break
                time.sleep(0.05)
            ws = connect(d.port, "alice")
            ws.send_json({"type": "user_message", "id": "m1", "session_id": sid,
                          "content": "during the fault"})
            e = expect_error(ws, "unavailable", "m1")
            assert "may have been stored" in e["message"], e
            assert "nothing was stored" not in e["message"], e
            # The next fsync would succeed, but nothing more is acknowledged.
            ws.send_json({"type": "user_message", "id": "m2", "session_id": sid,
                          "content": "after the fault"})
            expect_error(ws, "unavailable", "m2")
            assert readyz(d.port) == 503
            assert "event=store_failed" in d.log(), d.log()[-2000:]
            d.proc.kill()
            d.proc.wait(30)
            tracer.wait(30)
            with open(slog) as f:
                assert "EIO (Input/output error) (INJECTED)" in f.read()
            ws.shut()
        finally:
            if d.proc.poll() is None:
                d.proc.kill()
            if tracer.poll() is None:
                tracer.kill()
            d.check_log()
        with server("--db", db) as d:
            ws = connect(d.port, "alice")
            ws.send_json({"type": "user_message", "id": "m1", "session_id": sid,
                          "content": "during the fault"})
            ack = recv_type(ws, "ack")
            assert ack["id"] == "m1", ack
            status, _, body = http_get(d.port, "/api/sessions/%s/messages" % sid,
                                       {"Authorization": "Bearer " + token("alice")})
            msgs = json.loads(body)["messages"]
            contents = [m["content"] for m in msgs]
            assert contents.count("during the fault") == 1, contents
            assert "after the fault" not in contents, contents
            assert [m["seq"] for m in msgs] == list(range(1, len(msgs) + 1)), msgs
            close_all(ws)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_removed_database_is_fail_stop():
    with server() as d:
        ws = connect(d.port, "alice")
        ack, _ = post(ws, "before")
        db = db_path(d)
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(db + suffix):
                os.unlink(db + suffix)
        for i in range(5):
            ws.send_json({"type": "user_message", "id": "gone%d" % i,
                          "session_id": ack["session_id"], "content": "after %d" % i})
            e = expect_error(ws, "unavailable", "gone%d" % i)
            assert "retry" in e["message"], e
        assert readyz(d.port) == 503
        assert "database file removed" in d.log(), d.log()[-2000:]
        close_all(ws)


def test_replaced_wal_is_fail_stop():
    with server() as d:
        ws = connect(d.port, "alice")
        ack, _ = post(ws, "before")
        db = db_path(d)
        os.unlink(db + "-wal")
        ws.send_json({"type": "user_message", "id": "w1", "session_id": ack["session_id"],
                      "content": "after"})
        expect_error(ws, "unavailable", "w1")
        assert readyz(d.port) == 503
        assert "WAL file removed" in d.log(), d.log()[-2000:]
        close_all(ws)


def test_read_only_database_refused_at_start():
    """As a user who cannot write the database, chatd stops at start with one
    line naming the file and exit status 2."""
    import shutil
    import tempfile
    tmp = tempfile.mkdtemp(prefix="chatd-ro-")
    try:
        os.chmod(tmp, 0o755)
        db = os.path.join(tmp, "chat.db")
        with server("--db", db) as d:
            post(connect(d.port, "alice"), "hello")
        # A copy of the binary that user 'nobody' can run wherever the build is.
        from harness import CHATD_BIN
        binary = os.path.join(tmp, "chatd")
        shutil.copy(CHATD_BIN, binary)
        os.chmod(binary, 0o755)
        for mode in (0o644, 0o444):
            os.chmod(db, mode)
            p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                binary, "--listen", "127.0.0.1:0", "--db", db,
                                "--jwt-secret", "x" * 40],
                               capture_output=True, text=True, timeout=60)
            assert p.returncode == 2, (p.returncode, p.stderr)
            lines = [x for x in p.stderr.splitlines() if x.startswith("chatd:")]
            assert len(lines) == 1 and db in lines[0], p.stderr
            assert "event=listening" not in p.stderr, p.stderr
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    run([test_shutdown_while_writer_blocked,
         test_refresh_without_admin_role_leaves_and_loses_rights, test_resume_is_bounded,
         test_every_type_has_a_budget, test_input_budget_closes_a_flooding_connection,
         test_input_budget_counts_small_messages, test_api_routes_match_the_prefix,
         test_log_values_are_quoted, test_failed_fsync_is_fail_stop,
         test_removed_database_is_fail_stop, test_replaced_wal_is_fail_stop,
         test_read_only_database_refused_at_start])
