"""The help webhook end to end: a real chatd started with --help-webhook
pointing at a receiver in this process (http.server in a thread) that
records every request and answers with a scripted status.

Covered: a user's help_request in a session reaches the receiver as one
POST of exactly {"event","session_id","user":{"id","name"},"title",
"timestamp"} (in that order) with Content-Type application/json and a valid
X-Chatd-Signature (HMAC-SHA256 of the raw body, checked with Python's hmac);
a second help_request while one is open posts nothing; a receiver that
answers 500 twice gets the same bytes three times, the retries spaced out,
and /metrics counts delivered 1 and attempts 3; without a secret file there
is no signature header; a delivery still waiting for a retry at shutdown
is dropped and counted, and chatd still exits 0 at once; a bad URL or an
unreadable secret file stops chatd at start with exit 2.

The tests that raise a help request need the router to hand committed help
requests to the webhook (webhook_help_request, called from the storage
writer side of the router); the option tests do not.
"""
import hashlib
import hmac
import http.server
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from harness import CHATD_BIN, SLOW, TEST_SECRET, WS, Chatd, http_get, make_token, run  # noqa: E402

T = 60.0 if SLOW else 20.0  # seconds to wait for something that must come
TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
HOOK_SECRET = b"hook-secret-\x01 with spaces and bytes \xfe"
KEYS = ["event", "session_id", "user", "title", "timestamp"]


# ---- the receiver ---------------------------------------------------------------

class Receiver:
    """An HTTP server on 127.0.0.1 that records each request and answers
    with the next status of `script`, then 200."""

    def __init__(self, script=()):
        self.script = list(script)
        self.requests = []  # dicts: path, headers (lower-case), body (bytes), at
        self.cond = threading.Condition()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                with receiver.cond:
                    receiver.requests.append({
                        "method": "POST", "path": self.path, "body": body, "at": time.time(),
                        "headers": {k.lower(): v for k, v in self.headers.items()}})
                    status = receiver.script.pop(0) if receiver.script else 200
                    receiver.cond.notify_all()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = "http://127.0.0.1:%d/hook" % self.port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, n, timeout=T):
        """Wait until n requests arrived; return them all."""
        deadline = time.time() + timeout
        with self.cond:
            while len(self.requests) < n:
                left = deadline - time.time()
                if left <= 0:
                    raise AssertionError("the receiver got %d requests, expected %d" %
                                         (len(self.requests), n))
                self.cond.wait(left)
            return list(self.requests)

    def count(self):
        with self.cond:
            return len(self.requests)

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


# ---- chatd and its users --------------------------------------------------------

def secret_file(data=HOOK_SECRET + b"\n"):
    fd, path = tempfile.mkstemp(prefix="chatd-hook-secret-")
    os.write(fd, data)
    os.close(fd)
    return path


def start(receiver, secret_path=None, *extra):
    args = ["--help-webhook", receiver.url, "--workers", "2"]
    if secret_path:
        args += ["--webhook-secret-file", secret_path]
    return Chatd(*(args + list(extra)))


class User:
    def __init__(self, port, sub, name):
        self.ws = WS(port, "/ws", token=make_token(sub, name=name), timeout=T)
        first = self.ws.recv_json()
        assert first["type"] == "connection_status", first
        self.n = 0

    def request(self, **msg):
        """Send msg with a fresh id; return the ack or error that answers it."""
        self.n += 1
        mid = "m%d" % self.n
        self.ws.send_json(dict(msg, id=mid))
        while True:
            m = self.ws.recv_json()
            if m.get("id") == mid and m.get("type") in ("ack", "error"):
                return m

    def new_session(self, content):
        ack = self.request(type="user_message", content=content)
        assert ack["type"] == "ack", ack
        return ack["session_id"]

    def help(self, sid):
        ack = self.request(type="help_request", session_id=sid)
        assert ack["type"] == "ack", ack
        return ack

    def close(self):
        self.ws.close()
        self.ws.shut()


def metrics(port):
    status, _, body = http_get(port, "/metrics")
    assert status == 200, status
    out = {}
    for line in body.decode().splitlines():
        if line.startswith("chatd_webhook_"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def wait_metrics(port, want, timeout=T):
    """Poll /metrics until every name in want has its value."""
    deadline = time.time() + timeout
    while True:
        got = metrics(port)
        if all(got.get(k) == v for k, v in want.items()):
            return got
        if time.time() > deadline:
            raise AssertionError("webhook metrics %r, expected %r" % (got, want))
        time.sleep(0.05)


def signature(body, key=HOOK_SECRET):
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def check_body(req, sid, user_id, name, title):
    """The exact document, its members in order, compact."""
    assert req["path"] == "/hook", req
    assert req["headers"]["content-type"] == "application/json", req["headers"]
    doc = json.loads(req["body"], object_pairs_hook=lambda pairs: pairs)
    assert [k for k, _ in doc] == KEYS, doc
    d = dict(doc)
    assert d["event"] == "help_request", d
    assert d["session_id"] == sid, d
    assert d["user"] == [("id", user_id), ("name", name)], d
    assert d["title"] == title, d
    assert TS_RE.match(d["timestamp"]), d
    ts = time.mktime(time.strptime(d["timestamp"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert abs(ts - time.time()) < 120, d
    # Compact: the bytes are what json.dumps writes without spaces.
    again = json.dumps(json.loads(req["body"]), separators=(",", ":"), ensure_ascii=False)
    assert req["body"] == again.encode(), req["body"]


# ---- tests -------------------------------------------------------------------------

def test_signed_delivery_once_per_open_request():
    path = secret_file()
    try:
        with Receiver() as rcv, start(rcv, path) as d:
            alice = User(d.port, "alice", "Alice")
            sid = alice.new_session("Printer on floor 3 is down\nsince this morning")
            ack = alice.help(sid)
            assert not ack.get("duplicate"), ack
            req = rcv.wait(1)[0]
            check_body(req, sid, "alice", "Alice", "Printer on floor 3 is down")
            assert req["headers"]["x-chatd-signature"] == signature(req["body"]), req["headers"]

            # Asked again while it is open: not posted again. Another
            # session's request comes after it through the writer; once that
            # one is posted (and a little more), only two came.
            alice.request(type="help_request", session_id=sid)
            sid2 = alice.new_session("Another thing")
            alice.help(sid2)
            reqs = rcv.wait(2)
            time.sleep(1.0)
            assert rcv.count() == 2, rcv.requests
            check_body(reqs[1], sid2, "alice", "Alice", "Another thing")
            assert reqs[1]["headers"]["x-chatd-signature"] == signature(reqs[1]["body"])
            wait_metrics(d.port, {
                'chatd_webhook_deliveries_total{result="delivered"}': 2,
                'chatd_webhook_deliveries_total{result="failed"}': 0,
                'chatd_webhook_deliveries_total{result="dropped"}': 0,
                "chatd_webhook_attempts_total": 2,
                "chatd_webhook_pending": 0})
            alice.close()
            assert "hook-secret" not in d.log(), "the secret is in the log"
    finally:
        os.unlink(path)


def test_retried_after_500():
    path = secret_file()
    try:
        with Receiver(script=[500, 500]) as rcv, start(rcv, path) as d:
            bob = User(d.port, "bob", "Bob B.")
            sid = bob.new_session("Help")
            bob.help(sid)
            reqs = rcv.wait(3)
            wait_metrics(d.port, {
                'chatd_webhook_deliveries_total{result="delivered"}': 1,
                'chatd_webhook_deliveries_total{result="failed"}': 0,
                "chatd_webhook_attempts_total": 3,
                "chatd_webhook_pending": 0})
            check_body(reqs[0], sid, "bob", "Bob B.", "Help")
            for r in reqs:
                assert r["body"] == reqs[0]["body"], reqs
                assert r["headers"]["x-chatd-signature"] == signature(r["body"]), r["headers"]
            # About 1 s, then about 2 s (a quarter either way): lower bounds.
            assert reqs[1]["at"] - reqs[0]["at"] >= 0.7, reqs
            assert reqs[2]["at"] - reqs[1]["at"] >= 1.4, reqs
            time.sleep(0.5)
            assert rcv.count() == 3
            bob.close()
    finally:
        os.unlink(path)


def test_no_secret_no_signature():
    with Receiver() as rcv, start(rcv) as d:
        carol = User(d.port, "carol", "Carol")
        sid = carol.new_session("Unsigned, please")
        carol.help(sid)
        req = rcv.wait(1)[0]
        check_body(req, sid, "carol", "Carol", "Unsigned, please")
        assert "x-chatd-signature" not in req["headers"], req["headers"]
        wait_metrics(d.port, {'chatd_webhook_deliveries_total{result="delivered"}': 1})
        carol.close()


def test_pending_retry_dropped_at_shutdown():
    with Receiver(script=[503] * 10) as rcv, start(rcv) as d:
        dan = User(d.port, "dan", "Dan")
        sid = dan.new_session("Anyone there?")
        dan.help(sid)
        rcv.wait(1)
        wait_metrics(d.port, {"chatd_webhook_attempts_total": 1, "chatd_webhook_pending": 1})
        dan.close()
        t0 = time.time()
        assert d.stop() == 0
        # The retries (1 s, 2 s, 4 s... away) are not waited for.
        assert time.time() - t0 < (30 if SLOW else 10), time.time() - t0
        assert re.search(r"event=webhook_shutdown pending=1 dropped=1\b", d.log()), d.log()
        assert rcv.count() <= 2, rcv.requests


def refused_at_start(*args):
    p = subprocess.run([CHATD_BIN, "--listen", "127.0.0.1:0", "--jwt-secret", TEST_SECRET,
                        "--db", "none"] + list(args),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    err = p.stderr.decode(errors="replace").strip()
    return p.returncode, err


def test_bad_options_stop_chatd():
    for url in ("ftp://127.0.0.1/hook", "127.0.0.1/hook", "http://", "http://x/a b"):
        rc, err = refused_at_start("--help-webhook", url)
        assert rc == 2, (url, rc, err)
        assert err.startswith("chatd: --help-webhook:") and "\n" not in err, (url, err)
    rc, err = refused_at_start("--help-webhook", "http://127.0.0.1:9/h",
                               "--webhook-secret-file", "/nonexistent/hook-secret")
    assert rc == 2, (rc, err)
    assert "--webhook-secret-file" in err and "/nonexistent/hook-secret" in err, err
    assert "\n" not in err, err
    empty = secret_file(b"\n")
    try:
        rc, err = refused_at_start("--help-webhook", "http://127.0.0.1:9/h",
                                   "--webhook-secret-file", empty)
        assert rc == 2 and "--webhook-secret-file" in err, (rc, err)
    finally:
        os.unlink(empty)


if __name__ == "__main__":
    run([test_signed_delivery_once_per_open_request, test_retried_after_500,
         test_no_secret_no_signature, test_pending_retry_dropped_at_shutdown,
         test_bad_options_stop_chatd])
