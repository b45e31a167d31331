"""Helpers for chat delivery tests: a threaded chat client on /ws, a
pipelined sender, and an HTTP history reader. Standard library only.

ChatClient runs one reader thread per connection that answers pings, files
acks and errors by their `id`, keeps stored events (messages and session
events, each with a `seq`) in arrival order, and records every frame in
`log` so a test can check what arrived before or after a given reply. Sends
from several threads are serialized by a lock.
"""
import json
import os
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from harness import (OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, WS, WSClosed,  # noqa: E402
                     frame, http_get, make_token)

# The stored events (protocol 1.1: the session events are numbered in the
# session's seq with the messages). A `read` relay carries a seq too but is
# not stored.
MESSAGE_TYPES = ("user_message", "admin_message", "ai_response")
SESSION_EVENT_TYPES = ("help_request", "help_resolved", "admin_join", "admin_leave")
EVENT_TYPES = MESSAGE_TYPES + SESSION_EVENT_TYPES


class ChatClient:
    """One device on /ws with a background reader."""

    def __init__(self, port, sub, roles=("user",), name=None, timeout=60.0, label=None):
        self.sub = sub
        self.label = label or sub
        claims = {"roles": list(roles)}
        if name:
            claims["name"] = name
        self.token = make_token(sub, ttl=3600, **claims)
        self.ws = WS(port, path="/ws", token=self.token, timeout=timeout)
        self.status = self.ws.recv_json()
        assert self.status.get("type") == "connection_status", self.status
        self.send_lock = threading.Lock()
        self.cond = threading.Condition()
        self.log = []          # every message, in arrival order
        self.events = []       # stored events (have a seq), in arrival order
        self.replies = {}      # client id -> ack or error answering it
        self.dup_replies = []  # second answers to the same id (should not happen)
        self.closed = False
        self.close_code = None
        self.read_error = None
        self._stopping = False
        self.reader = threading.Thread(target=self._run, name="reader-" + self.label, daemon=True)
        self.reader.start()

    # ---- reading ----------------------------------------------------------
    def _run(self):
        parts, op0 = [], None
        try:
            while True:
                try:
                    fin, op, payload = self.ws.recv_frame()
                except socket.timeout:
                    if self._stopping:
                        return
                    continue
                if op == OP_PING:
                    self._send_raw(frame(OP_PONG, payload))
                    continue
                if op == OP_PONG:
                    continue
                if op == OP_CLOSE:
                    self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 \
                        else 1005
                    return
                if op0 is None:
                    op0 = op
                parts.append(payload)
                if not fin:
                    continue
                data, kind = b"".join(parts), op0
                parts, op0 = [], None
                if kind != OP_TEXT:
                    raise AssertionError("%s: non-text data frame from the server" % self.label)
                self._dispatch(json.loads(data))
        except (WSClosed, OSError, ConnectionError) as e:
            if not self._stopping:
                self.read_error = e
        except Exception as e:  # a protocol violation: keep it for the test
            self.read_error = e
        finally:
            with self.cond:
                self.closed = True
                self.cond.notify_all()

    def _dispatch(self, msg):
        with self.cond:
            self.log.append(msg)
            t = msg.get("type")
            if t in ("ack", "error") and isinstance(msg.get("id"), str):
                if msg["id"] in self.replies:
                    self.dup_replies.append(msg)
                else:
                    self.replies[msg["id"]] = msg
            elif t in EVENT_TYPES and "seq" in msg:
                self.events.append(msg)
            self.cond.notify_all()

    # ---- writing ----------------------------------------------------------
    def _send_raw(self, data):
        with self.send_lock:
            self.ws.sock.sendall(data)

    def send(self, obj):
        self._send_raw(frame(OP_TEXT, json.dumps(obj)))

    def send_text(self, text):
        self._send_raw(frame(OP_TEXT, text))

    # ---- waiting ----------------------------------------------------------
    def wait_until(self, pred, timeout):
        """Wait until pred() (called under the lock) is true; return it."""
        deadline = time.time() + timeout
        with self.cond:
            while True:
                v = pred()
                if v or self.closed:
                    return v
                left = deadline - time.time()
                if left <= 0:
                    return v
                self.cond.wait(min(left, 0.5))

    def wait_reply(self, cid, timeout=30.0):
        r = self.wait_until(lambda: self.replies.get(cid), timeout)
        if not r:
            raise AssertionError("%s: no reply to id %r within %ss (closed=%s, error=%r)" %
                                 (self.label, cid, timeout, self.closed, self.read_error))
        return r

    def request(self, obj, timeout=30.0):
        """Send and wait for the answer to obj["id"]; an earlier answer to the
        same id (a retry) is forgotten first."""
        with self.cond:
            self.replies.pop(obj["id"], None)
        self.send(obj)
        return self.wait_reply(obj["id"], timeout)

    def wait_message(self, pred, timeout=30.0):
        """First logged message matching pred (under the lock)."""
        def find():
            for m in self.log:
                if pred(m):
                    return m
            return None
        m = self.wait_until(find, timeout)
        if not m:
            raise AssertionError("%s: expected message not received within %ss" %
                                 (self.label, timeout))
        return m

    def seqs(self, sid):
        with self.cond:
            return [e["seq"] for e in self.events if e.get("session_id") == sid]

    def count(self, sid):
        with self.cond:
            return sum(1 for e in self.events if e.get("session_id") == sid)

    def wait_count(self, sid, n, timeout):
        return self.wait_until(
            lambda: sum(1 for e in self.events if e.get("session_id") == sid) >= n, timeout)

    # ---- closing ----------------------------------------------------------
    def close(self, timeout=5.0):
        self._stopping = True
        try:
            self._send_raw(frame(OP_CLOSE, struct.pack("!H", 1000)))
        except OSError:
            pass
        self.reader.join(timeout)
        self.ws.shut()
        self.reader.join(1.0)

    def drop(self):
        """Hang up without a close handshake."""
        self._stopping = True
        try:
            self.ws.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.ws.shut()
        self.reader.join(5.0)


def pipeline(client, msgs, window=8, timeout=60.0, stop=None):
    """Send msgs (each with a unique "id") keeping at most `window` unanswered.
    Returns {id: reply}; stops early when the connection closes, the stop
    event is set or the deadline passes (unanswered ids are absent)."""
    deadline = time.time() + timeout
    out, pending = {}, []
    i = 0
    while (i < len(msgs) or pending) and time.time() < deadline:
        if stop is not None and stop.is_set():
            break
        while i < len(msgs) and len(pending) < window:
            try:
                client.send(msgs[i])
            except OSError:
                return out
            pending.append(msgs[i]["id"])
            i += 1
        client.wait_until(lambda: any(p in client.replies for p in pending),
                          min(1.0, max(0.0, deadline - time.time())))
        with client.cond:
            still = []
            for p in pending:
                if p in client.replies:
                    out[p] = client.replies[p]
                else:
                    still.append(p)
            pending = still
        if client.closed and pending:
            break
    return out


def history(port, sid, token, page=1000, timeout=30.0):
    """Every stored event of a session over HTTP, paging by after_seq.
    Returns (events, last_seq reported by the first page)."""
    events, after, last_seq = [], 0, None
    deadline = time.time() + timeout
    while time.time() < deadline:
        st, _, body = http_get(port, "/api/sessions/%s/messages?limit=%d&after_seq=%d" %
                               (sid, page, after),
                               headers={"Authorization": "Bearer " + token})
        assert st == 200, "history of %s after %d: %s %s" % (sid, after, st, body[:300])
        doc = json.loads(body)
        if last_seq is None:
            last_seq = doc.get("last_seq")
        msgs = doc["messages"]
        events += msgs
        if len(msgs) < page:
            return events, last_seq
        after = msgs[-1]["seq"]
    raise AssertionError("history of %s not read within %ss" % (sid, timeout))


def sessions_of(port, token, limit=1000):
    st, _, body = http_get(port, "/api/sessions?limit=%d" % limit,
                           headers={"Authorization": "Bearer " + token})
    assert st == 200, (st, body[:300])
    return json.loads(body)["sessions"]


def check_gapless(sid, events):
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), \
        "session %s: stored seqs are not 1..%d without gap: first anomaly %s" % (
            sid, len(seqs), first_anomaly(seqs, 1))


def first_anomaly(seqs, start):
    """Describe the first place where seqs differs from start, start+1, ..."""
    for i, s in enumerate(seqs):
        if s != start + i:
            return "index %d: got %d, expected %d (neighbourhood %s)" % (
                i, s, start + i, seqs[max(0, i - 3):i + 4])
    return "length %d, expected more" % len(seqs)
