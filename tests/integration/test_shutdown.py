"""Graceful shutdown: SIGTERM/SIGINT close every WebSocket with 1001, stop
accepting, and exit 0 within --shutdown-timeout."""
import os
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from harness import OP_TEXT, SLOW, WS, Chatd, frame, run, upgrade_request  # noqa: E402


def echo_ok(ws, text):
    ws.send(text)
    assert ws.recv() == (OP_TEXT, text.encode())


def wait_exit(d, t0, limit):
    """Wait for chatd to exit on its own (no second signal); return seconds
    since t0. d.stop() afterwards checks the status and the log."""
    try:
        d.proc.wait(limit + 10)
    except Exception:
        raise AssertionError("chatd did not exit within %.0fs of the signal:\n%s" %
                             (limit + 10, d.log()[-3000:]))
    took = time.time() - t0
    assert took <= limit, "chatd took %.2fs to exit (limit %.1fs)" % (took, limit)
    return took


def read_eof(sock, timeout):
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            b = sock.recv(65536)
            if not b:
                return data
            data += b
    except ConnectionResetError:
        return data
    except socket.timeout:
        raise AssertionError("connection still open, got %r" % data[:200])


def test_sigterm_closes_100_connections_with_1001():
    n = 100
    with Chatd("--echo", "--workers", "2", "--shutdown-timeout", "10") as d:
        conns = []
        for i in range(n):
            ws = WS(d.port, timeout=20)
            conns.append(ws)
        for i, ws in enumerate(conns):
            echo_ok(ws, "hello %d" % i)
        # An idle keep-alive HTTP connection and one with half a request head.
        idle = socket.create_connection(("127.0.0.1", d.port), timeout=10)
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while b'{"status":"ok"}' not in got:
            got += idle.recv(4096)
        half = socket.create_connection(("127.0.0.1", d.port), timeout=10)
        half.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        # A WebSocket in the middle of a fragmented message.
        conns[0].send_raw(frame(OP_TEXT, "part", fin=False))
        time.sleep(0.2)

        t0 = time.time()
        d.proc.send_signal(signal.SIGTERM)
        codes = []
        for ws in conns:
            codes.append(ws.expect_close(timeout=20))
        bad = [(i, c) for i, c in enumerate(codes) if c != 1001]
        assert not bad, "connections closed with other codes than 1001: %s" % bad[:10]
        for ws in conns:
            ws.close(1001)
        for ws in conns:
            ws.expect_eof(timeout=20)
            ws.shut()
        assert read_eof(idle, 10) == b""
        read_eof(half, 10)
        idle.close()
        half.close()
        # Every client answered: no reason to wait for the timeout.
        wait_exit(d, t0, 9.0 if SLOW else 5.0)


def test_client_ignoring_close_does_not_block_exit():
    timeout_s = 3
    with Chatd("--echo", "--workers", "2", "--shutdown-timeout", str(timeout_s)) as d:
        ignorer = WS(d.port)
        echo_ok(ignorer, "I will not answer")
        polite = WS(d.port)
        echo_ok(polite, "I will answer")
        t0 = time.time()
        d.proc.send_signal(signal.SIGTERM)
        assert polite.expect_close(10) == 1001
        polite.close(1001)
        polite.expect_eof(10)
        polite.shut()
        # Draining: new connections are not accepted (refused, or answered
        # without an upgrade).
        assert d.alive(), "chatd exited before the ignoring client was dealt with"
        req, _ = upgrade_request("/echo")
        try:
            s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
            try:
                s.sendall(req)
                data = read_eof(s, 5)
                assert not data.startswith(b"HTTP/1.1 101"), data[:200]
                if data:
                    assert data.startswith(b"HTTP/1.1 503"), data[:200]
            except (ConnectionResetError, BrokenPipeError):
                pass
            finally:
                s.close()
        except (ConnectionRefusedError, ConnectionResetError):
            # Refused, or reset: the connection reached the backlog just as
            # the listener closed.
            pass
        # The ignorer never reads nor writes; chatd still exits in time.
        wait_exit(d, t0, timeout_s + (10.0 if SLOW else 2.5))
        # It was sent a 1001 close all the same.
        assert ignorer.expect_close(5) == 1001
        ignorer.shut()


def test_sigint_is_graceful_too():
    with Chatd("--echo", "--shutdown-timeout", "10") as d:
        conns = [WS(d.port) for _ in range(3)]
        for ws in conns:
            echo_ok(ws, "x")
        t0 = time.time()
        d.proc.send_signal(signal.SIGINT)
        for ws in conns:
            assert ws.expect_close(10) == 1001
            ws.close(1001)
            ws.expect_eof(10)
            ws.shut()
        wait_exit(d, t0, 9.0 if SLOW else 5.0)


def test_idle_server_exits_promptly():
    with Chatd("--echo") as d:
        t0 = time.time()
        d.proc.send_signal(signal.SIGTERM)
        wait_exit(d, t0, 8.0 if SLOW else 3.0)


def test_new_connections_refused_while_draining():
    """Once SIGTERM is in, the listening socket is gone: a client that
    connects while chatd still drains an open connection is refused at once
    (and can try another node), never left queued until chatd exits."""
    with Chatd("--echo", "--shutdown-timeout", "5") as d:
        held = socket.create_connection(("127.0.0.1", d.port), timeout=5)
        req, _ = upgrade_request("/echo")
        held.sendall(req)
        assert held.recv(1024).startswith(b"HTTP/1.1 101"), "no upgrade"
        d.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5 if SLOW else 0.2)
        t0 = time.time()
        try:
            s = socket.create_connection(("127.0.0.1", d.port), timeout=2)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            s.settimeout(2)
            got = s.recv(64)
            raise AssertionError("connected while draining, answered %r after %.2f s" %
                                 (got, time.time() - t0))
        except (ConnectionRefusedError, ConnectionResetError):
            pass
        except socket.timeout:
            raise AssertionError("a new connection hung while chatd drained")
        held.close()


if __name__ == "__main__":
    run([test_sigterm_closes_100_connections_with_1001,
         test_client_ignoring_close_does_not_block_exit, test_sigint_is_graceful_too,
         test_idle_server_exits_promptly, test_new_connections_refused_while_draining])
