"""Devices per user on the chat endpoint /ws: limits, notifications, isolation.

The scenarios mirror the old service's device tests: several devices of one
user, the per-user limit (429 + notification, or evict-oldest), the global cap
(503), failures of one device not touching the others, fast reconnection,
concurrent churn, message size limits, token expiry and refresh, and the
Origin allow-list. No router is attached, so every chat message is answered
with `unavailable` (chatd runs with `--db none`: sign-in and devices without
the chat router, the layer tested alone); bad JSON answered with `bad_json` proves a device works.
"""
import json
import os
import random
import re
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from harness import (OP_BINARY, OP_CONT, OP_TEXT, SLOW, WS, Chatd, frame,  # noqa: E402
                     http_get, json_error, make_token, parse_response, run, upgrade_request)

ADMIN = make_token("root-admin", ttl=7200, roles=["admin"])
CHAT_TYPES = ("user_message", "typing_indicator", "help_request", "model_select", "resume",
              "read", "admin_join", "admin_leave", "admin_message")
# Sanitizer builds are 5-20x slower: allow more time, do less work.
SLACK = 4.0 if SLOW else 1.0


# ---- helpers ----------------------------------------------------------------

def connect(port, sub, token=None, extra=None, **claims):
    """Open one device of `sub`; return (ws, connection_status)."""
    tok = token or make_token(sub, **claims)
    ws = WS(port, path="/ws", token=tok, extra=extra)
    status = ws.recv_json()
    assert status["type"] == "connection_status", status
    assert status["user_id"] == sub, status
    return ws, status


def refused(port, token=None, extra=None, path="/ws", timeout=10.0):
    """Send an upgrade that the server must refuse. Return (status, headers,
    body, raw). Asserts the server closed the socket after a response whose
    Content-Length matches its body."""
    req, _ = upgrade_request(path, token=token, extra=extra)
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(req)
    chunks, eof = [], False
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            b = s.recv(65536)
            if not b:
                eof = True
                break
            chunks.append(b)
    except socket.timeout:
        pass
    except ConnectionResetError:
        eof = True
    finally:
        s.close()
    raw = b"".join(chunks)
    assert raw, "no answer to the upgrade"
    status, headers, body = parse_response(raw)
    assert status != 101, raw[:300]
    assert eof, "server did not close the socket after refusing (%s)" % status
    assert "content-length" in headers, raw[:300]
    head_len = raw.index(b"\r\n\r\n") + 4
    assert int(headers["content-length"]) == len(raw) - head_len, raw
    return status, headers, body, raw


def admin_connections(port, token=ADMIN):
    status, _, body = http_get(port, "/api/admin/connections",
                               {"Authorization": "Bearer " + token})
    assert status == 200, (status, body)
    return json.loads(body)


def devices_of(doc, sub):
    for u in doc["users"]:
        if u["user_id"] == sub:
            return u["devices"]
    return 0


def wait_total(port, want, timeout=None):
    """Poll /api/admin/connections until total_devices == want."""
    timeout = timeout or 5.0 * SLACK
    deadline = time.time() + timeout
    while True:
        doc = admin_connections(port)
        if doc["total_devices"] == want:
            return doc
        if time.time() > deadline:
            raise AssertionError("total_devices stays %s, expected %s: %s" %
                                 (doc["total_devices"], want, doc))
        time.sleep(0.05)


def recv_skip(ws, skip=("notification",)):
    """Next JSON message whose type is not in `skip`."""
    while True:
        m = ws.recv_json()
        if m.get("type") not in skip:
            return m


def assert_works(ws, skip=("notification",)):
    """The device answers: bad JSON gets its error back, connection open."""
    ws.send("{not json")
    m = recv_skip(ws, skip)
    assert m["type"] == "error" and m["code"] == "bad_json", m
    assert m["recoverable"] is True, m


def expect_notification(ws):
    m = ws.recv_json()
    assert m["type"] == "notification" and m["code"] == "connection_limit", m
    assert isinstance(m["message"], str) and m["message"], m
    return m


def close_clean(ws, code=1000):
    """Close handshake: our close, the server's close, then TCP EOF."""
    ws.close(code)
    got = ws.expect_close()
    assert got == code, got
    ws.expect_eof()
    ws.shut()


def rst(sock):
    """Abort a socket: the peer gets an RST, not a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def check_limit_body(body, limit):
    doc = json.loads(body)
    assert set(doc) == {"error"}, doc
    err = doc["error"]
    assert set(err) == {"code", "message", "retry_after"}, err
    assert err["code"] == "connection_limit", err
    assert isinstance(err["message"], str) and err["message"], err
    assert err["retry_after"] == 5000 and isinstance(err["retry_after"], int), err
    return err


# ---- tests --------------------------------------------------------------------

def test_multiple_connections_per_user():
    with Chatd("--db", "none", "--max-devices", "3") as d:
        devs, ids = [], set()
        for i in range(3):
            ws, st = connect(d.port, "alice", name="Alice")
            assert st["devices"] == i + 1, st
            assert st["max_devices"] == 3, st
            assert st["name"] == "Alice" and st["roles"] == ["user"], st
            assert isinstance(st["connection_id"], str) and st["connection_id"], st
            ids.add(st["connection_id"])
            assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", st["server_time"]), st
            assert isinstance(st["models"], list), st
            devs.append(ws)
        assert len(ids) == 3, ids
        doc = admin_connections(d.port)
        assert devices_of(doc, "alice") == 3, doc
        assert doc["total_devices"] == 3 and doc["total_users"] == 1, doc

        # A 4th device is refused; a message to the user reaches all 3.
        status, _, body, _ = refused(d.port, token=make_token("alice"))
        assert status == 429, (status, body)
        check_limit_body(body, 3)
        for ws in devs:
            expect_notification(ws)
        # Another user is not affected by alice's limit.
        bob, st = connect(d.port, "bob")
        assert st["devices"] == 1, st
        doc = admin_connections(d.port)
        assert devices_of(doc, "alice") == 3 and devices_of(doc, "bob") == 1, doc
        assert doc["total_devices"] == 4 and doc["total_users"] == 2, doc
        for ws in devs + [bob]:
            assert_works(ws)
            close_clean(ws)
        wait_total(d.port, 0)


def test_connection_limit_per_user():
    with Chatd("--db", "none") as d:
        devs = []
        for i in range(10):
            ws, st = connect(d.port, "carol")
            assert st["devices"] == i + 1 and st["max_devices"] == 10, st
            devs.append(ws)
        status, headers, body, _ = refused(d.port, token=make_token("carol"))
        assert status == 429, (status, body)
        assert headers["content-type"] == "application/json", headers
        check_limit_body(body, 10)
        doc = admin_connections(d.port)
        assert devices_of(doc, "carol") == 10 and doc["total_devices"] == 10, doc
        for ws in devs:
            ws.shut()
        wait_total(d.port, 0)


def test_graceful_handling_at_limit():
    with Chatd("--db", "none") as d:
        devs = [connect(d.port, "dave")[0] for _ in range(10)]
        for _ in range(2):
            status, headers, body, raw = refused(d.port, token=make_token("dave"))
            assert status == 429, raw[:300]
            assert raw.startswith(b"HTTP/1.1 429 "), raw[:100]
            assert headers.get("connection", "").lower() == "close", headers
            check_limit_body(body, 10)
        assert d.alive()
        # Each open device received the two notifications, and still works.
        for ws in devs:
            expect_notification(ws)
            expect_notification(ws)
            assert_works(ws, skip=())
        assert admin_connections(d.port)["total_devices"] == 10
        for ws in devs:
            close_clean(ws)
        wait_total(d.port, 0)


def test_notify_on_limit():
    with Chatd("--db", "none") as d:
        devs = [connect(d.port, "erin")[0] for _ in range(10)]
        other, _ = connect(d.port, "frank")
        status, _, body, _ = refused(d.port, token=make_token("erin"))
        assert status == 429
        for ws in devs:
            m = expect_notification(ws)
            assert set(m) >= {"type", "code", "message"}, m
        # The other user got nothing: its next message answers its own request.
        assert_works(other, skip=())
        for ws in devs + [other]:
            ws.shut()
        wait_total(d.port, 0)


def test_failure_isolation():
    with Chatd("--db", "none") as d:
        devs = [connect(d.port, "gina")[0] for _ in range(3)]
        assert admin_connections(d.port)["total_devices"] == 3
        half = frame(OP_TEXT, json.dumps({"type": "user_message", "content": "x" * 100}))
        devs[0].send_raw(half[:len(half) // 2])
        time.sleep(0.1)
        rst(devs[0].sock)
        for ws in devs[1:]:
            assert_works(ws)
        t0 = time.time()
        doc = wait_total(d.port, 2, timeout=2.0 * SLACK)
        assert devices_of(doc, "gina") == 2, doc
        took = time.time() - t0
        assert took < 2.0 * SLACK, took
        for ws in devs[1:]:
            assert_works(ws)
        # A new device of the same user is admitted with the right count.
        ws, st = connect(d.port, "gina")
        assert st["devices"] == 3, st
        for w in devs[1:] + [ws]:
            close_clean(w)
        wait_total(d.port, 0)


def test_reconnection():
    rounds = 40 if SLOW else 200
    with Chatd("--db", "none") as d:
        devs = [connect(d.port, "hank")[0] for _ in range(10)]
        for i in range(rounds):
            k = i % 10
            close_clean(devs[k])
            req, _ = upgrade_request("/ws", token=make_token("hank"))
            ws = WS(d.port, path="/ws", connect=False)
            ws.sock.sendall(req)
            status, _ = ws.read_head()
            assert status == 101, "round %d: refused with %s %r" % (i, status, ws.buf[:300])
            st = ws.recv_json()
            assert st["type"] == "connection_status" and st["devices"] == 10, (i, st)
            devs[k] = ws
        doc = admin_connections(d.port)
        assert doc["total_devices"] == 10 and doc["total_users"] == 1, doc
        assert devices_of(doc, "hank") == 10, doc
        for ws in devs:
            assert_works(ws, skip=())
        assert "device_limit" not in d.log(), "a reconnect hit the device limit"
        for ws in devs:
            close_clean(ws)
        wait_total(d.port, 0)


def test_max_connections_enforcement():
    with Chatd("--db", "none", "--max-connections", "5") as d:
        devs = [connect(d.port, "user%d" % (i % 2))[0] for i in range(5)]
        for sub in ("user0", "newbie"):
            status, _, body, _ = refused(d.port, token=make_token(sub))
            assert status == 503, (status, body)
            assert json_error(body)["code"] == "unavailable", body
        # Nobody was told about a device limit: the cap is global.
        for ws in devs:
            assert_works(ws, skip=())
        doc = admin_connections(d.port)
        assert doc["total_devices"] == 5, doc
        # A slot freed is a slot available again.
        close_clean(devs.pop())
        wait_total(d.port, 4)
        ws, st = connect(d.port, "newbie")
        assert st["devices"] == 1, st
        devs.append(ws)
        status, _, body, _ = refused(d.port, token=make_token("newbie"))
        assert status == 503, (status, body)
        for ws in devs:
            close_clean(ws)
        wait_total(d.port, 0)


def padded_message(size, mid):
    """A chat message of exactly `size` bytes of JSON."""
    base = {"type": "user_message", "id": mid, "content": ""}
    n = size - len(json.dumps(base, separators=(",", ":")))
    assert n >= 0
    base["content"] = "a" * n
    text = json.dumps(base, separators=(",", ":"))
    assert len(text) == size
    return text


def test_oversized_messages():
    with Chatd("--db", "none", "--max-message-bytes", "4096") as d:
        a, st = connect(d.port, "ivan")
        assert st["max_message_bytes"] == 4096, st
        b, _ = connect(d.port, "ivan")
        c, _ = connect(d.port, "ivan")

        # Exactly the limit: accepted, in one frame and in two fragments.
        a.send(padded_message(4096, "exact"))
        m = a.recv_json()
        assert m["type"] == "error" and m["code"] == "unavailable" and m["id"] == "exact", m
        text = padded_message(4096, "frag").encode()
        a.send_raw(frame(OP_TEXT, text[:2000], fin=False) + frame(OP_CONT, text[2000:]))
        m = a.recv_json()
        assert m["type"] == "error" and m["code"] == "unavailable" and m["id"] == "frag", m
        a.send("x" * 4096)
        m = a.recv_json()
        assert m["type"] == "error" and m["code"] == "bad_json", m

        # One byte more: that connection only is closed with 1009.
        a.send(padded_message(4097, "over"))
        assert a.expect_close() == 1009, a.close_reason
        a.close(1000)
        a.expect_eof()
        a.shut()
        assert_works(b, skip=())

        # The same across fragments.
        text = padded_message(4097, "over2").encode()
        c.send_raw(frame(OP_TEXT, text[:2048], fin=False) + frame(OP_CONT, text[2048:]))
        assert c.expect_close() == 1009, c.close_reason
        c.close(1000)
        c.expect_eof()
        c.shut()
        assert_works(b, skip=())
        doc = wait_total(d.port, 1)
        assert devices_of(doc, "ivan") == 1, doc
        close_clean(b)
        wait_total(d.port, 0)


def test_no_router_attached():
    with Chatd("--db", "none") as d:
        ws, _ = connect(d.port, "jane")
        for i, t in enumerate(CHAT_TYPES):
            mid = "m-%d-%s" % (i, t)
            ws.send_json({"type": t, "id": mid, "session_id": "s1", "content": "hi",
                          "typing": True, "model_id": "m1", "after_seq": 0, "seq": 1})
            m = ws.recv_json()
            assert m["type"] == "error" and m["code"] == "unavailable", (t, m)
            assert m["id"] == mid, (t, m)
            assert isinstance(m["message"], str) and isinstance(m["recoverable"], bool), m
        # Without an id: still answered, no id in the answer.
        ws.send_json({"type": "user_message", "content": "hi"})
        m = ws.recv_json()
        assert m["type"] == "error" and m["code"] == "unavailable" and "id" not in m, m
        ws.send_json({"type": "no_such_type", "id": "u1"})
        m = ws.recv_json()
        assert m["code"] == "unknown_type" and m["id"] == "u1", m
        assert_works(ws, skip=())
        close_clean(ws)


def test_concurrent_access():
    duration = 2.0 if SLOW else 5.0
    users = ("cu0", "cu1", "cu2")
    stats = {"opened": 0, "refused": 0, "max_seen": 0}
    lock = threading.Lock()
    errors = []

    with Chatd("--db", "none", "--max-devices", "4") as d:
        port = d.port
        deadline = time.time() + duration

        def open_device(sub):
            req, _ = upgrade_request("/ws", token=make_token(sub))
            ws = WS(port, path="/ws", connect=False)
            ws.sock.sendall(req)
            status, headers = ws.read_head()
            if status != 101:
                n = int(headers["content-length"])
                ws._need(n)
                body = ws.buf[:n]
                ws.shut()
                assert status == 429, (status, body)
                check_limit_body(body, 4)
                return None
            st = recv_skip(ws)
            assert st["type"] == "connection_status" and 1 <= st["devices"] <= 4, st
            with lock:
                stats["max_seen"] = max(stats["max_seen"], st["devices"])
            return ws

        def exchange(ws, n):
            mid = "c%d" % n
            ws.send_json({"type": "typing_indicator", "id": mid, "session_id": "s",
                          "typing": True})
            m = recv_skip(ws)
            assert m["type"] == "error" and m["code"] == "unavailable" and m["id"] == mid, m

        def finish(ws, how):
            if how == 0:
                close_clean(ws)
            elif how == 1:
                ws.shut()
            else:
                rst(ws.sock)

        def worker(seed):
            rnd = random.Random(seed)
            held, n = [], 0
            try:
                while time.time() < deadline:
                    n += 1
                    if held and (len(held) >= 2 or rnd.random() < 0.4):
                        ws = held.pop(rnd.randrange(len(held)))
                        exchange(ws, n)
                        finish(ws, rnd.randrange(3))
                        continue
                    ws = open_device(rnd.choice(users))
                    with lock:
                        stats["opened" if ws else "refused"] += 1
                    if ws:
                        exchange(ws, n)
                        held.append(ws)
                for ws in held:
                    finish(ws, rnd.randrange(3))
            except Exception as e:  # reported by the main thread
                import traceback
                errors.append("thread %d: %r\n%s" % (seed, e, traceback.format_exc()))
                for ws in held:
                    ws.shut()

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(duration + 120)
        assert not errors, "\n".join(errors)
        assert stats["opened"] > 0, stats
        assert stats["max_seen"] <= 4, stats
        doc = wait_total(port, 0, timeout=10.0 * SLACK)
        assert doc["users"] == [] and doc["total_users"] == 0, doc
        assert d.alive()
        d.check_log()
        sys.stderr.write("concurrent: %s\n" % stats)


def test_evict_oldest_policy():
    with Chatd("--db", "none", "--device-policy", "evict-oldest") as d:
        devs = [connect(d.port, "kim")[0] for _ in range(10)]
        newest, st = connect(d.port, "kim")
        assert st["devices"] == 10, st
        # The oldest gets the notification, then close 1008.
        expect_notification(devs[0])
        assert devs[0].expect_close() == 1008, devs[0].close_reason
        devs[0].close(1008)
        devs[0].expect_eof()
        devs[0].shut()
        doc = admin_connections(d.port)
        assert devices_of(doc, "kim") == 10 and doc["total_devices"] == 10, doc
        for ws in devs[1:] + [newest]:
            assert_works(ws)
        # Again: now the second-oldest goes.
        newer, st = connect(d.port, "kim")
        assert st["devices"] == 10, st
        expect_notification(devs[1])
        assert devs[1].expect_close() == 1008
        devs[1].shut()
        doc = admin_connections(d.port)
        assert devices_of(doc, "kim") == 10, doc
        for ws in devs[2:] + [newest, newer]:
            close_clean(ws)
        wait_total(d.port, 0)


def test_binary_frame_closes_1003():
    with Chatd("--db", "none") as d:
        a, _ = connect(d.port, "lee")
        b, _ = connect(d.port, "lee")
        a.send(b"\x00\x01binary", OP_BINARY)
        assert a.expect_close() == 1003, a.close_reason
        a.close(1003)
        a.expect_eof()
        a.shut()
        assert_works(b, skip=())
        wait_total(d.port, 1)
        close_clean(b)
        wait_total(d.port, 0)


def test_token_expiry_closes_1008():
    with Chatd("--db", "none") as d:
        exp = int(time.time()) + 3
        ws, _ = connect(d.port, "mia", token=make_token("mia", exp=exp))
        keep, _ = connect(d.port, "mia")
        assert_works(ws, skip=())
        code = ws.expect_close(timeout=10.0 * SLACK)
        t = time.time()
        assert code == 1008, (code, ws.close_reason)
        assert t >= exp - 0.05, "closed %.2fs before the token's exp" % (exp - t)
        assert t <= exp + 2.0 * SLACK, "closed %.2fs after the token's exp" % (t - exp)
        ws.close(1000)
        ws.expect_eof()
        ws.shut()
        # The device with a valid token stays.
        assert_works(keep, skip=())
        doc = wait_total(d.port, 1)
        assert devices_of(doc, "mia") == 1, doc
        close_clean(keep)


def test_refresh():
    with Chatd("--db", "none") as d:
        exp = int(time.time()) + 3
        a, _ = connect(d.port, "nora", token=make_token("nora", exp=exp))
        b, _ = connect(d.port, "nora", token=make_token("nora", exp=exp))

        # a: refreshed to one hour.
        fresh_exp = int(time.time()) + 3600
        a.send_json({"type": "refresh", "id": "r1", "token": make_token("nora", exp=fresh_exp)})
        m = a.recv_json()
        assert m["type"] == "refreshed" and m["exp"] == fresh_exp, m

        # b: another user's token, an expired one, a forged one: refused, open.
        bad = [make_token("oscar", ttl=3600), make_token("nora", ttl=-10),
               make_token("nora", secret="another-secret-0123456789abcdefghij")]
        for i, tok in enumerate(bad):
            b.send_json({"type": "refresh", "id": "b%d" % i, "token": tok})
            m = b.recv_json()
            assert m["type"] == "error" and m["code"] == "unauthorized", m
            assert m["id"] == "b%d" % i, m
        assert_works(b, skip=())
        a.send_json({"type": "refresh", "id": "r2", "token": make_token("oscar")})
        m = a.recv_json()
        assert m["type"] == "error" and m["code"] == "unauthorized" and m["id"] == "r2", m

        # b still expires at the old exp; a is open after 5 s.
        assert b.expect_close(timeout=10.0 * SLACK) == 1008, b.close_reason
        assert time.time() >= exp - 0.05
        b.shut()
        while time.time() < exp + 2.5:
            time.sleep(0.1)
        assert_works(a, skip=())
        doc = admin_connections(d.port)
        assert devices_of(doc, "nora") == 1, doc
        close_clean(a)


def test_origin_allowlist():
    with Chatd("--db", "none", "--allowed-origins", "https://a.example") as d:
        tok = make_token("olga")
        status, _, body, _ = refused(d.port, token=tok, extra=["Origin: https://b.example"])
        assert status == 403, (status, body)
        assert json_error(body)["code"] == "origin_not_allowed", body
        # The origin is checked before the token: no token, same answer.
        status, _, body, _ = refused(d.port, extra=["Origin: https://b.example"])
        assert status == 403, (status, body)
        assert admin_connections(d.port)["total_devices"] == 0
        a, _ = connect(d.port, "olga", extra=["Origin: https://a.example"])
        b, _ = connect(d.port, "olga")
        st = admin_connections(d.port)
        assert st["total_devices"] == 2, st
        for ws in (a, b):
            assert_works(ws, skip=())
            close_clean(ws)


if __name__ == "__main__":
    run([test_multiple_connections_per_user, test_connection_limit_per_user,
         test_graceful_handling_at_limit, test_notify_on_limit, test_failure_isolation,
         test_reconnection, test_max_connections_enforcement, test_oversized_messages,
         test_no_router_attached, test_concurrent_access, test_evict_oldest_policy,
         test_binary_frame_closes_1003, test_token_expiry_closes_1008, test_refresh,
         test_origin_allowlist])
