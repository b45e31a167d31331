"""Test harness for chatd integration and interop tests.

Starts the real chatd binary (CHATD_BIN, set by ctest) on a free port, talks
to it over real sockets, and on stop checks that it exited 0 with no
sanitizer report in its log. Standard library only (Debian's /usr/bin/python3).
"""
import base64
import hashlib
import hmac
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

CHATD_BIN = os.environ.get("CHATD_BIN", os.path.join(os.path.dirname(__file__), "..", "build",
                                                     "debug", "chatd"))
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "WARNING: ThreadSanitizer",
                     "runtime error:", "ERROR: ThreadSanitizer", "SUMMARY: UndefinedBehavior")
SLOW = os.environ.get("CHATD_BUILD_KIND", "") in ("address", "thread")
TEST_SECRET = "test-secret-0123456789abcdefghijklmnop"


class Chatd:
    """A chatd process. Use as a context manager or call start()/stop()."""

    def __init__(self, *args, env=None, expect_exit=0, secret=TEST_SECRET, wrap=None):
        # A JWT secret by default, so that the chat endpoint is on; pass
        # secret=None for a server started with no key at all.
        self.args = list(args)
        if secret and not any(a.startswith("--jwt") or a == "--dev" for a in self.args):
            self.args += ["--jwt-secret", secret]
        # Each server gets its own database in its own folder, unless the
        # test names one (crash tests restart on the same file).
        self.tmpdir = tempfile.mkdtemp(prefix="chatd-test-")
        if "--db" not in self.args:
            self.args += ["--db", os.path.join(self.tmpdir, "chatd.db")]
        self.env = dict(os.environ)
        if env:
            self.env.update(env)
        self.expect_exit = expect_exit
        self.wrap = list(wrap or [])  # a command chatd runs under (strace, setpriv)
        self.proc = None
        self.port = None
        self.log_path = None

    def start(self, timeout=20):
        fd, self.log_path = tempfile.mkstemp(prefix="chatd-", suffix=".log")
        self.log_file = os.fdopen(fd, "w+")
        argv = self.wrap + [CHATD_BIN, "--listen", "127.0.0.1:0"] + self.args
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.log_file,
                                     env=self.env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            m = re.search(r"event=listening addr=127\.0\.0\.1:(\d+)", self.log())
            if m:
                self.port = int(m.group(1))
                return self
            if self.proc.poll() is not None:
                raise AssertionError("chatd exited at start (%s):\n%s" %
                                     (self.proc.returncode, self.log()))
            time.sleep(0.02)
        raise AssertionError("chatd did not start:\n" + self.log())

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Signal chatd and wait; assert a clean exit and a clean log."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("chatd did not exit within %ss:\n%s" % (timeout, self.log()[-4000:]))
        self.check_log()
        if self.expect_exit is not None and rc != self.expect_exit:
            raise AssertionError("chatd exited %s, expected %s:\n%s" %
                                 (rc, self.expect_exit, self.log()[-4000:]))
        return rc

    def check_log(self):
        log = self.log()
        for marker in SANITIZER_MARKERS:
            if marker in log:
                raise AssertionError("sanitizer report in chatd log:\n" + log[-8000:])

    def alive(self):
        return self.proc.poll() is None

    def __enter__(self):
        return self.start()

    def __exit__(self, etype, exc, tb):
        if etype is None:
            self.stop()
        else:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            sys.stderr.write("---- chatd log ----\n" + self.log()[-6000:] + "\n")
        if self.log_path and os.path.exists(self.log_path):
            os.unlink(self.log_path)
        import shutil
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        return False


# ---- HTTP -------------------------------------------------------------------

def http_raw(port, data, timeout=5.0):
    """Send raw bytes, return everything received until the server closes or
    goes quiet for the timeout."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(data)
    chunks = []
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    except socket.timeout:
        pass
    finally:
        s.close()
    return b"".join(chunks)


def parse_response(raw):
    """Split one HTTP response into (status, headers dict lower-case, body)."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", len(rest)))
    return status, headers, rest[:n]


def http_get(port, path, headers=None, method="GET"):
    """One request with Connection: close; returns (status, headers, body)."""
    h = {"Host": "127.0.0.1", "Connection": "close"}
    h.update(headers or {})
    req = "%s %s HTTP/1.1\r\n" % (method, path) + "".join(
        "%s: %s\r\n" % kv for kv in h.items()) + "\r\n"
    return parse_response(http_raw(port, req.encode()))


def json_error(body):
    doc = json.loads(body)
    assert "error" in doc and "code" in doc["error"] and "message" in doc["error"], doc
    return doc["error"]


# ---- WebSocket client -----------------------------------------------------------

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


def ws_key():
    return base64.b64encode(os.urandom(16)).decode()


def upgrade_request(path, key=None, extra=None, version="13", token=None):
    key = key or ws_key()
    h = ["GET %s HTTP/1.1" % path, "Host: 127.0.0.1", "Upgrade: websocket",
         "Connection: Upgrade", "Sec-WebSocket-Key: " + key,
         "Sec-WebSocket-Version: " + version]
    if token:
        h.append("Authorization: Bearer " + token)
    h += extra or []
    return ("\r\n".join(h) + "\r\n\r\n").encode(), key


def accept_for(key):
    return base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
                                         .encode()).digest()).decode()


def mask_bytes(payload, key):
    """XOR payload with the 4-byte key, fast enough for megabytes."""
    n = len(payload)
    if n == 0:
        return b""
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


def frame(opcode, payload=b"", fin=True, mask=True, rsv=0, length=None, key=None):
    """Build one client frame; length overrides the announced payload length,
    key the (otherwise random) masking key."""
    if isinstance(payload, str):
        payload = payload.encode()
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    mbit = 0x80 if mask else 0
    if n < 126:
        hdr = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        hdr = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        hdr = struct.pack("!BBQ", b0, mbit | 127, n)
    if not mask:
        return hdr + payload
    key = key if key is not None else os.urandom(4)
    return hdr + key + mask_bytes(payload, key)


class WSClosed(Exception):
    pass


class WS:
    """A deliberately simple, strict WebSocket client over a blocking socket."""

    def __init__(self, port, path="/echo", token=None, extra=None, timeout=10.0, connect=True):
        self.port = port
        self.buf = b""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.close_code = None
        self.close_reason = None
        if connect:
            req, key = upgrade_request(path, token=token, extra=extra)
            self.sock.sendall(req)
            status, headers = self.read_head()
            if status != 101:
                raise AssertionError("upgrade refused: %s %s" % (status, self.buf[:500]))
            assert headers["sec-websocket-accept"] == accept_for(key)

    def read_head(self):
        while b"\r\n\r\n" not in self.buf:
            b = self.sock.recv(65536)
            if not b:
                raise AssertionError("closed during handshake: %r" % self.buf)
            self.buf += b
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        return int(lines[0].split()[1]), headers

    def send_raw(self, data):
        self.sock.sendall(data)

    def send(self, payload, opcode=None):
        if opcode is None:
            opcode = OP_TEXT if isinstance(payload, str) else OP_BINARY
        self.sock.sendall(frame(opcode, payload))

    def send_json(self, obj):
        self.send(json.dumps(obj))

    def _need(self, n):
        while len(self.buf) < n:
            b = self.sock.recv(1 << 20)
            if not b:
                raise WSClosed("connection closed by server")
            self.buf += b

    def recv_frame(self):
        """Return (fin, opcode, payload) of the next server frame."""
        self._need(2)
        b0, b1 = self.buf[0], self.buf[1]
        assert b1 & 0x80 == 0, "server frames must not be masked"
        n = b1 & 0x7F
        pos = 2
        if n == 126:
            self._need(4)
            n = struct.unpack("!H", self.buf[2:4])[0]
            pos = 4
        elif n == 127:
            self._need(10)
            n = struct.unpack("!Q", self.buf[2:10])[0]
            pos = 10
        self._need(pos + n)
        payload = self.buf[pos:pos + n]
        self.buf = self.buf[pos + n:]
        return bool(b0 & 0x80), b0 & 0x0F, payload

    def recv(self, auto_pong=True):
        """Next whole data message as (opcode, bytes); control frames are
        handled (pings answered); a close frame raises WSClosed."""
        parts, op0 = [], None
        while True:
            fin, op, payload = self.recv_frame()
            if op == OP_PING:
                if auto_pong:
                    self.sock.sendall(frame(OP_PONG, payload))
                continue
            if op == OP_PONG:
                continue
            if op == OP_CLOSE:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                self.close_reason = payload[2:].decode("utf-8", "replace")
                raise WSClosed("close %s %s" % (self.close_code, self.close_reason))
            if op0 is None:
                op0 = op
            parts.append(payload)
            if fin:
                return op0, b"".join(parts)

    def recv_json(self):
        op, data = self.recv()
        assert op == OP_TEXT, "expected a text frame"
        return json.loads(data)

    def expect_close(self, timeout=10.0):
        """Read until the server's close frame; return its code. Skips data."""
        self.sock.settimeout(timeout)
        try:
            while True:
                self.recv()
        except WSClosed:
            if self.close_code is None:
                raise AssertionError("connection dropped without a close frame")
            return self.close_code

    def expect_eof(self, timeout=10.0):
        """After a close handshake the server must close the TCP connection."""
        self.sock.settimeout(timeout)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                b = self.sock.recv(65536)
            except ConnectionResetError:
                return
            if not b:
                return
        raise AssertionError("server did not close the TCP connection")

    def close(self, code=1000, reason=""):
        try:
            self.sock.sendall(frame(OP_CLOSE, struct.pack("!H", code) + reason.encode()))
        except OSError:
            pass

    def shut(self):
        try:
            self.sock.close()
        except OSError:
            pass


# ---- tokens -------------------------------------------------------------------

def echo_ok(ws, payload, opcode=None):
    """payload sent on an echo connection comes back whole, same opcode."""
    if opcode is None:
        opcode = OP_TEXT if isinstance(payload, str) else OP_BINARY
    data = payload.encode() if isinstance(payload, str) else payload
    ws.send_raw(frame(opcode, data))
    op, got = ws.recv()
    assert op == opcode, (op, opcode)
    assert got == data, "echo differs: sent %d bytes, got %d" % (len(data), len(got))


def assert_healthy(d):
    """A fresh echo connection works: the server survived whatever came before."""
    assert d.alive(), "chatd died:\n" + d.log()[-3000:]
    ws = WS(d.port)
    echo_ok(ws, "still alive")
    echo_ok(ws, b"\x00\x01\x02")
    ws.close(1000)
    assert ws.expect_close() == 1000
    ws.expect_eof()
    ws.shut()


def expect_close_code(ws, code, timeout=10.0):
    """The server's next close frame carries `code`; then it closes TCP."""
    got = ws.expect_close(timeout)
    assert got == code, "expected close code %s, got %s (%r)" % (code, got, ws.close_reason)
    ws.close(code if code not in (1005, 1006) else 1000)
    ws.expect_eof(timeout)
    ws.shut()


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_token(sub="u1", secret=TEST_SECRET, ttl=3600, alg="HS256", header=None, **claims):
    """An HS256 token (or a deliberately broken one via header/alg/claims)."""
    now = int(time.time())
    payload = {"sub": sub, "exp": now + ttl, "iat": now}
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    hdr = header or {"alg": alg, "typ": "JWT"}
    signing_input = b64url(json.dumps(hdr).encode()) + "." + b64url(json.dumps(payload).encode())
    sig = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(sig)


# ---- running --------------------------------------------------------------------

def run(tests):
    """Run test functions in order; print a summary; exit non-zero on failure."""
    only = sys.argv[1:]
    failed = 0
    for t in tests:
        if only and t.__name__ not in only:
            continue
        t0 = time.time()
        try:
            t()
            print("ok   %s (%.2fs)" % (t.__name__, time.time() - t0), flush=True)
        except Exception:
            failed += 1
            import traceback
            print("FAIL %s" % t.__name__, flush=True)
            traceback.print_exc()
    print("%d passed, %d failed" % (len(tests) - failed if not only else len(only) - failed, failed))
    sys.exit(1 if failed else 0)
