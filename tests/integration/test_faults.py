"""Faults on one node, each driven against a real chatd on a real SQLite file.

Storage: a write refused for want of space (ENOSPC), a write that fails
(EIO), a file-size limit (RLIMIT_FSIZE, EFBIG), injected into the running
chatd by strace or set before it starts. A failed fsync is the same
reaction as EIO and is test_regressions.py test_failed_fsync_is_fail_stop.
Descriptors: accept failing with EMFILE. An outside program that keeps a
read transaction open on the database while clients write.

Each case's docstring says the reaction chatd must show; each prints the
figure it measured (`figure: ...`), which docs/reliability.md quotes.
Sanitizer builds (CHATD_BUILD_KIND) get longer deadlines and fewer
messages, never fewer cases.
"""
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from harness import SLOW, http_get, run  # noqa: E402
from chatload import ChatClient, history, pipeline  # noqa: E402
from test_chat_protocol import server, token  # noqa: E402

SLACK = 4.0 if SLOW else 1.0


def figure(text):
    print("figure: " + text, flush=True)


def cpu_seconds(pid):
    """User + system CPU time of a process (every thread), in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        v = f.read().rsplit(")", 1)[1].split()
    return (int(v[11]) + int(v[12])) / os.sysconf("SC_CLK_TCK")


def readyz(port):
    return http_get(port, "/readyz")[0]


class Strace:
    """strace attached to every thread of a running process, injecting a
    fault into some system calls until it is detached. The same technique as
    test_regressions.py test_failed_fsync_is_fail_stop: attach, then wait
    until every thread shows the tracer, so the fault starts at a known
    moment."""

    def __init__(self, pid, syscalls, inject):
        self.pid = pid
        self.tmp = tempfile.mkdtemp(prefix="chatd-strace-")
        self.out = os.path.join(self.tmp, "strace.log")
        self.proc = subprocess.Popen(["strace", "-f", "-qq", "-p", str(pid), "-o", self.out,
                                      "-e", "trace=" + syscalls, "-e", "inject=" + inject])
        deadline = time.time() + 10 * SLACK
        while time.time() < deadline:
            tids = os.listdir("/proc/%d/task" % pid)
            traced = 0
            for tid in tids:
                try:
                    with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
                        traced += any(line.startswith("TracerPid:") and line.split()[1] != "0"
                                      for line in f)
                except FileNotFoundError:
                    traced += 1  # a thread that ended meanwhile
            if traced == len(tids):
                return
            time.sleep(0.02)
        self.detach()
        raise AssertionError("strace did not attach to every thread of %d" % pid)

    def detach(self):
        """Stop injecting: strace detaches on SIGINT and the calls run again."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10 * SLACK)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def injected(self):
        with open(self.out, errors="replace") as f:
            return f.read().count("(INJECTED)")

    def cleanup(self):
        self.detach()
        shutil.rmtree(self.tmp, ignore_errors=True)


# ---- storage faults: the shared driver ------------------------------------------

def start_writer(c, sid, prefix, stop, results, content="x", window=4):
    """A client thread writing to one session without pause (pipelined, a
    few in flight) until stop is set; results collects {id: reply}."""
    def loop():
        i = 0
        while not stop.is_set() and not c.closed:
            msgs = [{"type": "user_message", "id": "%s%d" % (prefix, i + k), "session_id": sid,
                     "content": "%s %s" % (content, i + k)} for k in range(16)]
            i += 16
            results.update(pipeline(c, msgs, window=window, timeout=30 * SLACK))
    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t


def classify(c):
    """Replies in arrival order: (acked ids, refused 'nothing was stored',
    in doubt 'may have been stored', acks that came after the first
    error)."""
    acked, refused, doubtful, acks_after = [], [], [], 0
    seen_error = False
    with c.cond:
        log = list(c.log)
    for m in log:
        if m.get("type") == "ack":
            acked.append(m["id"])
            acks_after += seen_error
        elif m.get("type") == "error" and "id" in m:
            assert m["code"] == "unavailable", m
            seen_error = True
            if "may have been stored" in m["message"]:
                doubtful.append(m["id"])
            else:
                assert "nothing was stored" in m["message"], m
                refused.append(m["id"])
    return acked, refused, doubtful, acks_after


def check_after_restart(db, sid, acked, refused, doubtful, acked_seq):
    """A fresh chatd on the same file: every acknowledged message is there
    exactly once with the seq it was acknowledged with, none refused is,
    seqs have no gap; a retry of each one in doubt is acknowledged once."""
    with server("--db", db) as d:
        tok = token("alice")
        events, _ = history(d.port, sid, tok)
        ids = [e.get("id") for e in events]
        seqs = [e["seq"] for e in events]
        assert seqs == list(range(1, len(seqs) + 1)), seqs
        by_id = {e.get("id"): e["seq"] for e in events}
        for mid in acked:
            assert ids.count(mid) == 1, (mid, ids.count(mid))
            assert by_id[mid] == acked_seq[mid], (mid, by_id[mid], acked_seq[mid])
        for mid in refused:
            assert mid not in by_id, "%s was answered 'nothing was stored' but is stored" % mid
        c = ChatClient(d.port, "alice")
        try:
            for mid in doubtful:
                r = c.request({"type": "user_message", "id": mid, "session_id": sid,
                               "content": "retry"}, timeout=30 * SLACK)
                assert r["type"] == "ack", r
        finally:
            c.close()
        events, _ = history(d.port, sid, tok)
        ids = [e.get("id") for e in events]
        for mid in doubtful:
            assert ids.count(mid) == 1, (mid, ids.count(mid))
        return len(events)


def fault_session(db):
    """A database that exists, with one session of alice's; returns its id."""
    with server("--db", db) as d:
        c = ChatClient(d.port, "alice")
        r = c.request({"type": "user_message", "id": "seed", "content": "before"})
        assert r["type"] == "ack", r
        c.close()
        return r["session_id"]


def drive_until_fault(d, sid, prefix, start_fault, content="x"):
    """Write without pause, start the fault once acks flow, keep writing
    until errors come; return (client, results, seconds from the fault's
    start to the first error)."""
    c = ChatClient(d.port, "alice", timeout=30 * SLACK)
    stop, results = threading.Event(), {}
    t = start_writer(c, sid, prefix, stop, results, content)
    assert c.wait_until(lambda: sum(m.get("type") == "ack" for m in c.log) >= 20,
                        30 * SLACK), "no acks before the fault"
    t0 = time.time()
    fault = start_fault()
    first_error = c.wait_until(
        lambda: next((m for m in c.log if m.get("type") == "error"), None), 20 * SLACK)
    assert first_error, "no error within %.0f s of the fault" % (20 * SLACK)
    to_refuse = time.time() - t0
    # A few more rounds of writes while the fault lasts: all refused.
    n = len(c.log)
    c.wait_until(lambda: len(c.log) >= n + 30, 5 * SLACK)
    stop.set()
    t.join(30 * SLACK)
    return c, results, to_refuse, fault


def acked_seqs(c):
    with c.cond:
        return {m["id"]: m["seq"] for m in c.log if m.get("type") == "ack"}


# ---- 1. ENOSPC on write -------------------------------------------------------------

def test_enospc_on_write_refuses_then_recovers():
    """Every write to the database or WAL fails with ENOSPC (disk full), then
    space comes back. SQLite rolls the batch back, so nothing is in doubt:
    each message is answered `unavailable` "nothing was stored" (never
    "may have been stored"), no ack comes while the disk is full, /readyz
    answers 503; chatd does not fail for good: once writes succeed again it
    acknowledges again and /readyz is 200. After a restart every
    acknowledged message is there once, no refused one is."""
    tmp = tempfile.mkdtemp(prefix="chatd-enospc-")
    db = os.path.join(tmp, "chat.db")
    fault = None
    try:
        sid = fault_session(db)
        d = server("--db", db).start()
        try:
            c, _, to_refuse, fault = drive_until_fault(
                d, sid, "n", lambda: Strace(d.proc.pid, "pwrite64,pwritev,write",
                                            "pwrite64,pwritev:error=ENOSPC"))
            assert readyz(d.port) == 503
            acked, refused, doubtful, acks_after = classify(c)
            assert acks_after == 0, "%d acks after the first refusal" % acks_after
            assert not doubtful, "a refused write is not in doubt: %s" % doubtful[:3]
            assert refused, "nothing refused"
            # Space is back: the next writes are acknowledged.
            fault.detach()
            assert fault.injected() > 0
            t0 = time.time()
            r = c.request({"type": "user_message", "id": "after", "session_id": sid,
                           "content": "space again"}, timeout=30 * SLACK)
            while r["type"] != "ack" and time.time() - t0 < 10 * SLACK:
                time.sleep(0.1)
                r = c.request({"type": "user_message", "id": "after", "session_id": sid,
                               "content": "space again"}, timeout=30 * SLACK)
            to_recover = time.time() - t0
            assert r["type"] == "ack", r
            assert readyz(d.port) == 200
            assert "event=store_failed" not in d.log()
            seqs = acked_seqs(c)
            c.close()
            d.stop()
        finally:
            if d.proc.poll() is None:
                d.proc.kill()
        n = check_after_restart(db, sid, acked + ["after"], refused, [], seqs)
        figure("ENOSPC: first refusal %.2f s after the fault began; %d acked before, %d "
               "refused 'nothing was stored', 0 in doubt, %d acks after the first refusal; "
               "acking again %.2f s after space came back; %d events after restart, each "
               "acked one once" % (to_refuse, len(acked), len(refused), acks_after,
                                   to_recover, n))
    finally:
        if fault:
            fault.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


# ---- 2. EIO on write -----------------------------------------------------------------

def storage_failstop_case(label, tmp, db, sid, d, start_fault):
    """The shared check of a fail-stop: the batch in flight is answered "may
    have been stored", nothing is acknowledged after it, /readyz is 503 and
    stays so once the fault is gone; after SIGKILL and a restart every acked
    message is there exactly once and each one in doubt, retried, once."""
    fault = None
    try:
        c, _, to_refuse, fault = drive_until_fault(d, sid, label[:1], start_fault,
                                                   content="y" * 2000)
        acked, refused, doubtful, acks_after = classify(c)
        assert acks_after == 0, "%d acks after the first error" % acks_after
        assert doubtful, "the batch in flight must be answered 'may have been stored'"
        assert readyz(d.port) == 503
        assert "event=store_failed" in d.log(), d.log()[-2000:]
        if fault is not None and hasattr(fault, "detach"):
            fault.detach()
        # For good: the storage works again, chatd still refuses.
        r = c.request({"type": "user_message", "id": "late", "session_id": sid,
                       "content": "after the fault"}, timeout=30 * SLACK)
        assert r["type"] == "error" and r["code"] == "unavailable", r
        assert readyz(d.port) == 503
        seqs = acked_seqs(c)
        c.close()
        d.proc.kill()
        d.proc.wait(30)
        d.check_log()
        wal = os.path.getsize(db + "-wal")
        n = check_after_restart(db, sid, acked, refused + ["late"], doubtful, seqs)
        figure("%s: first error %.2f s after the fault began (RLIMIT_FSIZE: after 20 acks), "
               "WAL %.2f MiB then; %d acked before, %d in doubt ('may have been stored'), "
               "%d refused, %d acks after the first error; /readyz 503 for good; %d events "
               "after restart, each acked one once, each one in doubt once after its "
               "retry" % (label, to_refuse, wal / 2**20, len(acked), len(doubtful),
                          len(refused), acks_after, n))
        return fault
    finally:
        if fault is not None and hasattr(fault, "cleanup"):
            fault.cleanup()


def test_eio_on_write_is_fail_stop():
    """Every write to the database or WAL fails with EIO. SQLite cannot say
    what reached the file: chatd fails for good (fail-stop). The batch in
    flight is answered `unavailable` "may have been stored" (retry_after
    5000), nothing later is acknowledged, /readyz answers 503 and keeps
    doing so after the disk works again; after a restart every acknowledged
    message is there exactly once."""
    tmp = tempfile.mkdtemp(prefix="chatd-eio-")
    db = os.path.join(tmp, "chat.db")
    try:
        sid = fault_session(db)
        d = server("--db", db)
        d.expect_exit = None
        d.start()
        try:
            storage_failstop_case("EIO on write", tmp, db, sid, d,
                                  lambda: Strace(d.proc.pid, "pwrite64,pwritev,write",
                                                 "pwrite64,pwritev:error=EIO"))
        finally:
            if d.proc.poll() is None:
                d.proc.kill()
                d.proc.wait()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- 3. RLIMIT_FSIZE -------------------------------------------------------------

def test_file_size_limit_is_fail_stop():
    """chatd runs under a file-size limit (RLIMIT_FSIZE, as `ulimit -f`) and
    the WAL reaches it. The kernel would kill a process that writes past it
    with SIGXFSZ; chatd ignores that signal, so the write fails with EFBIG
    instead, and chatd reacts as to any failed write: fail-stop, the batch
    in flight "may have been stored", no ack after it, /readyz 503; after a
    restart without the limit every acknowledged message is there once."""
    tmp = tempfile.mkdtemp(prefix="chatd-fsize-")
    db = os.path.join(tmp, "chat.db")
    limit = 3 << 20  # bytes; the log stays far below it
    try:
        sid = fault_session(db)
        d = server("--db", db, "--log-level", "warn",
                   wrap=["prlimit", "--fsize=%d:%d" % (limit, limit), "--"])
        d.expect_exit = None
        d.start()
        try:
            storage_failstop_case("RLIMIT_FSIZE", tmp, db, sid, d, lambda: None)
            failed = [x for x in d.log().splitlines() if "event=store_failed" in x]
            assert failed and "I/O error" in failed[0], failed
        finally:
            if d.proc.poll() is None:
                d.proc.kill()
                d.proc.wait()
            # Killed by SIGXFSZ would be -25: chatd must be the one that ended.
            assert d.proc.returncode != -signal.SIGXFSZ, "chatd was killed by SIGXFSZ"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- 4. EMFILE on accept ---------------------------------------------------------

def test_emfile_on_accept_pauses_then_resumes():
    """accept4 fails with EMFILE for a while. chatd pauses accepting (log
    `event=accept_paused`) and retries on a timer, so it does not spin: its
    CPU time over the fault stays near zero. A client that connected
    meanwhile waits in the kernel's queue and is served within 1 s of accept
    working again; connections open before the fault keep working through
    it."""
    with server("--workers", "2") as d:
        c = ChatClient(d.port, "alice")
        r = c.request({"type": "user_message", "id": "e0", "content": "before"})
        assert r["type"] == "ack", r
        sid = r["session_id"]
        fault = Strace(d.proc.pid, "accept4,accept", "accept4,accept:error=EMFILE")
        try:
            waiting = {}

            def wait_served():
                t = time.time()
                try:
                    waiting["status"] = http_get(d.port, "/healthz")[0]
                except (OSError, IndexError, ValueError) as e:
                    waiting["status"] = repr(e)
                waiting["at"] = time.time()
                waiting["waited"] = waiting["at"] - t
            w = threading.Thread(target=wait_served, daemon=True)
            w.start()
            deadline = time.time() + 10 * SLACK
            while "event=accept_paused" not in d.log() and time.time() < deadline:
                time.sleep(0.02)
            assert "event=accept_paused" in d.log(), d.log()[-2000:]
            c0 = cpu_seconds(d.proc.pid)
            time.sleep(1.5)
            busy = cpu_seconds(d.proc.pid) - c0
            assert "waited" not in waiting, "served while accept fails: %r" % waiting
            # An open connection is not touched by the fault.
            r = c.request({"type": "user_message", "id": "e1", "session_id": sid,
                           "content": "during"}, timeout=10 * SLACK)
            assert r["type"] == "ack", r
            assert busy < 0.2 * SLACK, "%.2f s of CPU in 1.5 s while accept fails" % busy
            t_fix = time.time()
            fault.detach()
            injected = fault.injected()
            w.join(10 * SLACK)
            assert waiting.get("status") == 200, waiting
            assert injected > 0
            resume = waiting["at"] - t_fix
            assert resume < 1.0 * SLACK, "served %.2f s after accept works again" % resume
            figure("EMFILE on accept: %d accept calls refused, chatd CPU %.3f s over 1.5 s of "
                   "fault; the waiting client served %.2f s after accept works again" %
                   (injected, busy, resume))
        finally:
            fault.cleanup()
        c.close()


# ---- 5. an outside reader holds a transaction ----------------------------------------

def wal_header(path):
    """(checkpoint sequence, salt-1) of a WAL file: both change each time the
    WAL is reset, i.e. once a checkpoint has copied all of it."""
    with open(path, "rb") as f:
        h = f.read(32)
    return int.from_bytes(h[12:16], "big"), int.from_bytes(h[16:20], "big")


def test_outside_reader_does_not_block_writes():
    """Another program (python's sqlite3) opens the database, BEGINs and
    SELECTs, and keeps that read transaction open for seconds while clients
    write 10 KB messages. WAL lets readers and the writer run side by side:
    chatd keeps acknowledging the whole time (no pause of half the hold),
    its checkpoints (PASSIVE) never wait on the reader, the WAL
    grows by what is written and no more; once the reader ends, the next
    checkpoint copies the WAL and it starts over (its header's salt
    changes) instead of growing further, and a WAL that grew past 8 MiB is
    cut back to that size."""
    hold_s = 3.0
    content = "r" * 10000
    with server() as d:
        db = d.args[d.args.index("--db") + 1]
        c = ChatClient(d.port, "alice", timeout=60 * SLACK)
        r = c.request({"type": "user_message", "id": "r0", "content": "start"})
        sid = r["session_id"]

        acks = []  # (time, bytes of content) per ack
        stop = threading.Event()

        def writer():
            i = 1
            while not stop.is_set():
                msgs = [{"type": "user_message", "id": "r%d" % (i + k), "session_id": sid,
                         "content": content} for k in range(8)]
                i += 8
                for mid, rep in pipeline(c, msgs, window=4, timeout=60 * SLACK).items():
                    assert rep["type"] == "ack", rep
                    acks.append(time.time())
        t = threading.Thread(target=writer, daemon=True)
        t.start()
        t_start = time.time()
        time.sleep(0.5)
        reader = sqlite3.connect(db, isolation_level=None, timeout=10)
        reader.execute("BEGIN")
        n0 = reader.execute("SELECT count(*) FROM events").fetchone()[0]
        t_hold = time.time()
        wal_at_hold = os.path.getsize(db + "-wal")
        header_at_hold = wal_header(db + "-wal")
        samples = []
        while time.time() - t_hold < hold_s:
            time.sleep(0.25)
            samples.append((time.time() - t_hold, os.path.getsize(db + "-wal")))
        # The reader still sees its snapshot: it really held a transaction.
        assert reader.execute("SELECT count(*) FROM events").fetchone()[0] == n0
        t_end = time.time()
        reader.execute("COMMIT")
        reader.close()
        during = [a for a in acks if t_hold <= a <= t_end]
        rate_before = sum(a < t_hold for a in acks) / (t_hold - t_start)
        gaps = [b - a for a, b in zip([t_hold] + during, during + [t_end])]
        wal_peak = max(s for _, s in samples)
        written = len(during) * len(content)
        # After the reader: keep writing until the WAL starts over.
        deadline = time.time() + 30 * SLACK
        while wal_header(db + "-wal") == header_at_hold and time.time() < deadline:
            time.sleep(0.1)
        reset = wal_header(db + "-wal") != header_at_hold
        t_reset = time.time() - t_end
        # The new header is written with the first frame after the restart;
        # the cut (journal_size_limit) comes at that transaction's commit, a
        # moment later (longer under a sanitizer). The smallest size seen
        # over a short while says whether it came.
        size_after_reset = os.path.getsize(db + "-wal")
        cut_deadline = time.time() + 2 * SLACK
        while reset and size_after_reset >= wal_peak and time.time() < cut_deadline:
            time.sleep(0.02)
            size_after_reset = min(size_after_reset, os.path.getsize(db + "-wal"))
        stop.set()
        t.join(60 * SLACK)
        c.close()
        assert len(during) >= 10, "only %d acks in %.1f s of the reader's hold" % (
            len(during), hold_s)
        # Blocked by the reader, the writer would stall for the whole hold.
        assert max(gaps) < hold_s / 2, "writes paused %.2f s during the hold" % max(gaps)
        # The WAL holds what was written during the hold plus page overhead.
        assert wal_peak - wal_at_hold <= 3 * written + (4 << 20), (wal_peak, written)
        assert reset, "the WAL did not start over within %.0f s of the reader's end" % (
            30 * SLACK)
        if wal_peak > (16 << 20):
            # Cut back (journal_size_limit) rather than kept at its peak.
            assert size_after_reset < wal_peak, (size_after_reset, wal_peak)
        figure("outside reader: %.0f acks/s before, %d acks (%.0f/s) during a %.1f s hold, "
               "longest pause %.2f s; WAL %.1f MiB at the hold, %.1f MiB peak for %.1f MiB "
               "written; WAL reset %.2f s after the reader ended, %.1f MiB then" % (
                   rate_before, len(during), len(during) / (t_end - t_hold), t_end - t_hold,
                   max(gaps), wal_at_hold / 2**20, wal_peak / 2**20, written / 2**20, t_reset,
                   size_after_reset / 2**20))

if __name__ == "__main__":
    run([test_enospc_on_write_refuses_then_recovers, test_eio_on_write_is_fail_stop,
         test_file_size_limit_is_fail_stop, test_emfile_on_accept_pauses_then_resumes,
         test_outside_reader_does_not_block_writes])
