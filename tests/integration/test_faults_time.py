"""Faults of time on one node: chatd stopped (SIGSTOP) for 30 s, and the
wall clock jumping hours forward and back under a running chatd.

chatd keeps its timeouts (ping, pong, HTTP head, rate budgets) on the
monotonic clock. The wall clock is read for what is a date: event
timestamps, `server_time`, log lines, and the token's `exp` (a date the
token carries: a connection whose token expires by the wall clock is
closed 1008 whatever the monotonic clock says). Each case prints the figure
it measured (`figure: ...`), which docs/reliability.md quotes.
"""
import datetime
import glob
import os
import shutil
import signal
import socket
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from harness import OP_CLOSE, OP_PING, SLOW, WS, WSClosed, frame, make_token, run  # noqa: E402
import chatload  # noqa: E402
from chatload import ChatClient, history  # noqa: E402
from test_chat_protocol import server, token  # noqa: E402

SLACK = 4.0 if SLOW else 1.0
PING_S, PONG_S = 2, 4
# Debian's libfaketime (scripts/deps.sh), the variant for threaded programs.
FAKETIME_LIBS = glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1")


def figure(text):
    print("figure: " + text, flush=True)


def ack(c, mid, sid, content, timeout=None):
    r = c.request({"type": "user_message", "id": mid, "session_id": sid, "content": content},
                  timeout=timeout or 30 * SLACK)
    assert r["type"] == "ack", r
    return r


def dead_peer(port):
    """A device that signs in and then never reads nor answers a ping."""
    ws = WS(port, path="/ws", token=make_token("carol", ttl=2 * 86400))
    ws.recv_json()
    return ws


def closed_within(ws, timeout):
    """Seconds until the server closed this connection (a close frame or
    EOF), or None when it is still open after timeout."""
    t0 = time.time()
    ws.sock.settimeout(0.2)
    while time.time() - t0 < timeout:
        try:
            _, op, _ = ws.recv_frame()
            if op == OP_CLOSE:
                return time.time() - t0
        except socket.timeout:
            continue
        except (WSClosed, OSError):
            return time.time() - t0
    return None


# ---- 1. chatd stopped for 30 s --------------------------------------------------

def test_stopped_30s_then_continued():
    """chatd is stopped with SIGSTOP for 30 s (a stall: a VM paused, a
    debugger, swap), with a short keep-alive (ping every 2 s, pong within
    4 s). A stall of chatd is not a peer's fault: a device that kept
    pinging during the stall and a device that only answers pings both
    survive it and are served at once after SIGCONT; the message sent
    during the stall is acknowledged right after it. The kernel keeps what
    peers send meanwhile and chatd reads it before it looks at any deadline,
    so a peer is judged by what it sent: a device that answered nothing in
    those 30 s is dropped by the pong timeout on the first sweep after
    SIGCONT (within ping + pong seconds, never kept forever). Nothing
    acknowledged is lost."""
    stall = 30.0
    with server("--ping-interval", str(PING_S), "--pong-timeout", str(PONG_S)) as d:
        a = ChatClient(d.port, "alice", timeout=120)
        b = ChatClient(d.port, "alice", timeout=120, label="alice-2")
        sid = ack(a, "s0", None, "before")["session_id"]
        dead = dead_peer(d.port)
        time.sleep(PING_S + 0.5)  # keep-alive under way on every connection
        d.proc.send_signal(signal.SIGSTOP)
        t_stop = time.time()
        try:
            # Device a keeps pinging and writes once; all of it waits in the
            # kernel until chatd runs again.
            a.send({"type": "user_message", "id": "s1", "session_id": sid,
                    "content": "during the stall"})
            while time.time() - t_stop < stall:
                a._send_raw(frame(OP_PING, b"k"))
                time.sleep(1.0)
        finally:
            d.proc.send_signal(signal.SIGCONT)
        t_cont = time.time()
        r = a.wait_reply("s1", 30 * SLACK)
        to_ack = time.time() - t_cont
        assert r["type"] == "ack", r
        dead_after = closed_within(dead, PING_S + PONG_S + 3 * SLACK)
        assert dead_after is not None, "a peer that answers nothing was never dropped"
        # Past a whole ping + pong period after SIGCONT: both live devices
        # are still there and served.
        while time.time() - t_cont < PING_S + PONG_S + 1:
            time.sleep(0.2)
        assert not a.closed and not b.closed, (a.close_code, b.close_code, d.log()[-3000:])
        ack(a, "s2", sid, "after, from a")
        ack(b, "s3", sid, "after, from b")
        acked = {"s0", "s1", "s2", "s3"}
        events, _ = history(d.port, sid, token("alice"))
        ids = [e.get("id") for e in events]
        for mid in acked:
            assert ids.count(mid) == 1, (mid, ids)
        assert "ws_pong_timeout" in d.log()
        dead.shut()
        a.close()
        b.close()
        figure("SIGSTOP %.0f s: the message sent during the stall acked %.2f s after SIGCONT; "
               "2 of 2 live devices kept (%d s keep-alive), the silent one dropped %.1f s "
               "after SIGCONT; %d of %d acked messages stored once" % (
                   t_cont - t_stop, to_ack, PING_S + PONG_S, dead_after, len(acked),
                   len(acked)))


# ---- 2. the wall clock jumps -------------------------------------------------------

def ts_ms(s):
    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp() * 1000


def test_wall_clock_jumps():
    """chatd runs under a wall clock that jumps 5 h forward, then 8 h back
    (libfaketime, monotonic clock left alone), with idle and active
    devices and a short keep-alive. No connection is closed by a jump:
    keep-alive and timeouts run on the monotonic clock, so idle and active
    devices both outlive a whole ping + pong period after each jump.
    The exception is the token's `exp`, a date: a device whose token (1 h)
    is past its expiry after the forward jump is closed 1008 "token
    expired". Event timestamps follow the wall clock forward; after the
    backward jump they do not go back: each stored event's timestamp is at
    least the one before it, held at the latest one given until the clock
    catches up, so that seq order and time order agree."""
    assert FAKETIME_LIBS, "libfaketime is not installed (scripts/deps.sh test)"
    tmp = tempfile.mkdtemp(prefix="chatd-clock-")
    rc = os.path.join(tmp, "faketime.rc")
    with open(rc, "w") as f:
        f.write("+0\n")
    env = {"LD_PRELOAD": FAKETIME_LIBS[0], "FAKETIME_TIMESTAMP_FILE": rc, "FAKETIME_NO_CACHE": "1",
           "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    if os.environ.get("CHATD_BUILD_KIND") == "address":
        env["ASAN_OPTIONS"] = os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"

    def jump(offset):
        with open(rc + ".tmp", "w") as f:
            f.write(offset + "\n")
        os.rename(rc + ".tmp", rc)

    long_ttl = 2 * 86400
    try:
        with server("--ping-interval", str(PING_S), "--pong-timeout", str(PONG_S),
                    env=env) as d:
            # Tokens good for two days: the jumps stay within them.
            chatload.make_token = lambda sub, ttl=0, **kw: make_token(sub, ttl=long_ttl, **kw)
            try:
                idle = ChatClient(d.port, "alice", timeout=120, label="idle")
                active = ChatClient(d.port, "alice", timeout=120, label="active")
            finally:
                chatload.make_token = make_token
            short = ChatClient(d.port, "bob", label="short")  # its token lasts 1 h
            r = ack(active, "t0", None, "at +0")
            sid, stamps = r["session_id"], []
            t_wall0 = time.time() * 1000

            def write_some(tag, n=3):
                for i in range(n):
                    ack(active, "%s-%d" % (tag, i), sid, "%s %d" % (tag, i))
                    time.sleep(0.1)

            # Forward 5 h.
            jump("+5h")
            t_jump = time.time()
            code = short.wait_until(lambda: short.closed, 5 * SLACK)
            to_expire = time.time() - t_jump
            assert code and short.close_code == 1008, (short.closed, short.close_code)
            write_some("fwd")
            while time.time() - t_jump < PING_S + PONG_S + 1:
                time.sleep(0.2)
            assert not idle.closed and not active.closed, d.log()[-3000:]
            write_some("fwd2")
            # Back 8 h (to 3 h before the real time).
            jump("-3h")
            t_jump = time.time()
            write_some("back")
            while time.time() - t_jump < PING_S + PONG_S + 1:
                time.sleep(0.2)
            assert not idle.closed and not active.closed, d.log()[-3000:]
            write_some("back2")
            jump("+0")
            events, _ = history(d.port, sid, token("alice"))
            stamps = [ts_ms(e["timestamp"]) for e in events]
            by_id = {e["id"]: ts_ms(e["timestamp"]) for e in events}
            hour = 3600 * 1000
            assert abs(by_id["t0"] - t_wall0) < 60000, (by_id["t0"], t_wall0)
            assert by_id["fwd-0"] - t_wall0 > 4.9 * hour, by_id["fwd-0"] - t_wall0
            backs = [by_id["back-%d" % i] for i in range(3)] + \
                [by_id["back2-%d" % i] for i in range(3)]
            assert all(s >= by_id["fwd2-2"] for s in backs), "a timestamp went back in time"
            assert stamps == sorted(stamps), "timestamps out of seq order"
            for c in (idle, active):
                assert not c.closed
                c.close()
            figure("wall clock +5 h then -8 h: 0 of 2 connections closed by a jump (checked "
                   "over a keep-alive period after each); the 1 h token closed 1008 %.2f s "
                   "after the forward jump; timestamps +%.2f h after it, held at +%.2f h "
                   "after the backward jump (never decreasing over %d events)" % (
                       to_expire, (by_id["fwd-0"] - t_wall0) / hour,
                       (backs[-1] - t_wall0) / hour, len(stamps)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    run([test_stopped_30s_then_continued, test_wall_clock_jumps])
