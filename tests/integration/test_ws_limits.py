"""WebSocket limits: message size, send queue, ping flood, keep-alive,
the fragment rule and the global connection cap, through `chatd --echo`."""
import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from harness import (OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, SLOW,  # noqa: E402
                     WS, Chatd, WSClosed, assert_healthy, echo_ok, expect_close_code, frame,
                     http_get, http_raw, json_error, parse_response, run, upgrade_request)

SCALE = 4 if SLOW else 1


# ---- helpers ----------------------------------------------------------------

def rss_mb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise AssertionError("no VmRSS for pid %d" % pid)


def wait_dropped(ws, timeout):
    """Read (never write) until the server drops the connection. Returns
    (seconds, close code or None). Pings are read but not answered."""
    ws.sock.settimeout(timeout)
    t0 = time.time()
    try:
        while True:
            fin, op, payload = ws.recv_frame()
            if op == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                # After its close frame the server must still end TCP.
                try:
                    ws.sock.settimeout(max(1.0, timeout - (time.time() - t0)))
                    while ws.sock.recv(65536):
                        pass
                except ConnectionResetError:
                    pass
                return time.time() - t0, code
    except (WSClosed, ConnectionResetError):
        return time.time() - t0, None
    except socket.timeout:
        raise AssertionError("connection still open after %.1fs" % (time.time() - t0))


# ---- message size -------------------------------------------------------------

def test_max_message_exact_and_one_over():
    with Chatd("--echo", "--max-message-bytes", "1000") as d:
        other = WS(d.port)
        echo_ok(other, "bystander")
        ws = WS(d.port)
        echo_ok(ws, "a" * 1000)
        echo_ok(ws, os.urandom(1000))
        ws.send_raw(frame(OP_BINARY, os.urandom(1001)))
        expect_close_code(ws, 1009)
        # Only that connection was closed.
        echo_ok(other, "still here")
        echo_ok(other, os.urandom(1000))
        # Header only, announcing one byte over: 1009 without the payload.
        ws = WS(d.port)
        ws.send_raw(frame(OP_TEXT, b"", length=1001))
        expect_close_code(ws, 1009)
        # The limit applies to the sum of the fragments.
        ws = WS(d.port)
        ws.send_raw(frame(OP_TEXT, "x" * 600, fin=False) + frame(OP_CONT, "y" * 400))
        assert ws.recv() == (OP_TEXT, b"x" * 600 + b"y" * 400)
        ws.send_raw(frame(OP_TEXT, "x" * 600, fin=False) + frame(OP_CONT, b"", length=401))
        expect_close_code(ws, 1009)
        echo_ok(other, "still here after fragments")
        other.shut()
        assert_healthy(d)


# ---- send queue -----------------------------------------------------------------

def test_send_queue_limit_closes_non_reader():
    limit_mb = 200
    with Chatd("--echo", "--send-queue-bytes", "200000", "--max-message-bytes", "65536") as d:
        other = WS(d.port)
        echo_ok(other, "bystander")
        base = rss_mb(d.proc.pid)
        hog = WS(d.port, timeout=2.0)
        hog.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        msg = frame(OP_BINARY, os.urandom(60 * 1024))
        sent = 0
        peak = base
        cap = 300 << 20  # an unbounded server would hold most of this
        deadline = time.time() + 30 * SCALE
        dropped = False
        while sent < cap and time.time() < deadline:
            try:
                hog.sock.sendall(msg)
            except (BrokenPipeError, ConnectionResetError):
                dropped = True
                break
            except socket.timeout:
                # The server stopped reading from us; enough pressure.
                break
            sent += len(msg)
            if (sent // len(msg)) % 64 == 0:
                peak = max(peak, rss_mb(d.proc.pid))
                assert peak < limit_mb, "chatd RSS %.0f MB after %d MB sent (start %.0f MB)" % (
                    peak, sent >> 20, base)
        peak = max(peak, rss_mb(d.proc.pid))
        assert peak < limit_mb, "chatd RSS %.0f MB (start %.0f MB)" % (peak, base)
        # Others are unaffected meanwhile.
        echo_ok(other, "during the flood")
        echo_ok(other, os.urandom(30000))
        # The non-reader is closed with 1013, or dropped.
        if not dropped:
            _, code = wait_dropped(hog, 15.0 * SCALE)
            assert code in (None, 1013), "close code %s, expected 1013" % code
        hog.shut()
        assert rss_mb(d.proc.pid) < limit_mb
        echo_ok(other, "after the flood")
        other.shut()
        assert_healthy(d)


# ---- ping flood -------------------------------------------------------------------

def test_ping_flood_1008():
    with Chatd("--echo") as d:
        # 64 pings in one burst are answered.
        ws = WS(d.port)
        ws.send_raw(b"".join(frame(OP_PING, b"%d" % i) for i in range(64)))
        for i in range(64):
            assert ws.recv_frame() == (True, OP_PONG, b"%d" % i)
        echo_ok(ws, "fine")
        ws.shut()
        # Hundreds in a burst: close 1008.
        ws = WS(d.port)
        ws.send_raw(b"".join(frame(OP_PING, b"flood") for _ in range(300)))
        pongs = 0
        ws.sock.settimeout(10)
        while True:
            fin, op, payload = ws.recv_frame()
            if op == OP_PONG:
                pongs += 1
                continue
            assert op == OP_CLOSE, op
            code = struct.unpack("!H", payload[:2])[0]
            assert code == 1008, code
            break
        assert pongs <= 128, pongs
        ws.close(1000)
        ws.expect_eof()
        ws.shut()
        assert_healthy(d)


# ---- keep-alive -----------------------------------------------------------------

def test_pong_timeout_drops_silent_client():
    with Chatd("--echo", "--ping-interval", "1", "--pong-timeout", "2") as d:
        ws = WS(d.port)
        took, code = wait_dropped(ws, 10.0 * SCALE)
        ws.shut()
        upper = 4.5 if not SLOW else 10.0
        assert 1.5 <= took <= upper, "silent client dropped after %.2fs" % took
        assert code in (None, 1000, 1001, 1008, 1011), code
        assert_healthy(d)


def test_client_answering_pings_stays_connected():
    with Chatd("--echo", "--ping-interval", "1", "--pong-timeout", "2") as d:
        ws = WS(d.port)
        t0 = time.time()
        pings = 0
        ws.sock.settimeout(1.0)
        while time.time() - t0 < 5.0:
            try:
                fin, op, payload = ws.recv_frame()
            except socket.timeout:
                continue
            assert op == OP_PING, "unexpected frame %s %r" % (op, payload)
            pings += 1
            ws.send_raw(frame(OP_PONG, payload))
        assert pings >= 3, pings
        ws.sock.settimeout(10)
        echo_ok(ws, "still connected after 5 s")
        ws.shut()
        assert_healthy(d)


def test_server_pings_every_interval():
    with Chatd("--echo", "--ping-interval", "1", "--pong-timeout", "30") as d:
        ws = WS(d.port)
        times = []
        t0 = time.time()
        ws.sock.settimeout(0.5)
        while time.time() - t0 < 4.5:
            try:
                fin, op, payload = ws.recv_frame()
            except socket.timeout:
                continue
            assert op == OP_PING, op
            times.append(time.time() - t0)
        assert len(times) >= 3, times
        assert times[0] <= 2.5, times
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert all(g < 2.5 for g in gaps), gaps
        # A default server does not ping within a few seconds.
        ws.shut()
    with Chatd("--echo") as d:
        ws = WS(d.port)
        ws.sock.settimeout(2.5)
        try:
            fin, op, payload = ws.recv_frame()
            raise AssertionError("unexpected frame %s with the default 54 s interval" % op)
        except socket.timeout:
            pass
        ws.shut()


# ---- fragments ----------------------------------------------------------------

def test_ten_thousand_fragments_1008_and_cheap():
    with Chatd("--echo") as d:
        parts = [frame(OP_TEXT, "a", fin=False)]
        parts += [frame(OP_CONT, "a", fin=False) for _ in range(9998)]
        parts.append(frame(OP_CONT, "a"))
        data = b"".join(parts)
        ws = WS(d.port)
        t0 = time.time()
        ws.send_raw(data)
        expect_close_code(ws, 1008)
        took = time.time() - t0
        assert took < (3.0 if not SLOW else 15.0), "took %.2fs" % took
        assert_healthy(d)


# ---- connection cap ---------------------------------------------------------------

def test_max_connections():
    with Chatd("--echo", "--max-connections", "5") as d:
        conns = [WS(d.port) for _ in range(5)]
        for i, ws in enumerate(conns):
            echo_ok(ws, "conn %d" % i)
        req, _ = upgrade_request("/echo")
        status, headers, body = parse_response(http_raw(d.port, req))
        assert status == 503, status
        assert json_error(body)["code"] == "unavailable"
        # Plain HTTP still works at the cap.
        assert http_get(d.port, "/healthz")[0] == 200
        # One leaves: a new one is accepted.
        conns[0].close(1000)
        assert conns[0].expect_close() == 1000
        conns[0].expect_eof()
        conns[0].shut()
        conns[0] = WS(d.port)
        echo_ok(conns[0], "replacement")
        # At the cap again.
        req, _ = upgrade_request("/echo")
        status, _, body = parse_response(http_raw(d.port, req))
        assert status == 503, status
        assert json_error(body)["code"] == "unavailable"
        # A connection that just disappears (no close handshake) frees its slot too.
        conns[1].shut()
        deadline = time.time() + 5 * SCALE
        while True:
            try:
                conns[1] = WS(d.port)
                break
            except AssertionError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        for i, ws in enumerate(conns):
            echo_ok(ws, "conn %d again" % i)
            ws.shut()


if __name__ == "__main__":
    run([test_max_message_exact_and_one_over, test_send_queue_limit_closes_non_reader,
         test_ping_flood_1008, test_pong_timeout_drops_silent_client,
         test_client_answering_pings_stays_connected, test_server_pings_every_interval,
         test_ten_thousand_fragments_1008_and_cheap, test_max_connections])
