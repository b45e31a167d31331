"""The chat protocol on /ws and the storage-backed HTTP API, end to end.

Every client message type and every error code of docs/protocol.md sections 3-5
and 7, through real sockets against the real binary: acknowledgements and
their order, delivery to every device of the owner and to joined admins,
duplicates, typing/read relays and read markers per reader, help requests,
model selection, admin join/leave/message (the session events of protocol
1.1, stored and numbered in seq), resume, authorization between users, the rate limit,
field validation, the HTTP API, /metrics and encryption at rest.

"Nothing else arrives" is checked with a barrier rather than a sleep: every
storage-backed request is committed by the one writer thread, which posts
each batch's replies and events to the workers' FIFO inboxes in commit
order. So once a connection sees the answer to a request it sent *after* an
action elsewhere was answered, anything that action sent to it has arrived.
"""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from harness import (CHATD_BIN, OP_TEXT, SANITIZER_MARKERS, SLOW, TEST_SECRET, WS,  # noqa: E402
                     Chatd, frame, http_get, json_error, make_token, run)

SLACK = 4.0 if SLOW else 1.0
MODELS = "m1:Model One,m2"
# A generous rate limit everywhere except where the limit is the subject.
# ... and a generous input budget: these tests send in bursts.
BASE = ("--models", MODELS, "--rate-limit", "100000", "--input-rate", "100000",
        "--input-byte-rate", "1000000000")
TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
SID_RE = re.compile(r"^s_[0-9a-f]{24}$")
NO_SUCH = "s_" + "0" * 24  # well-formed, never created
ROOT = "root"  # the admin user of these tests


# ---- helpers ------------------------------------------------------------------

def server(*extra, **kw):
    return Chatd(*(BASE + extra), **kw)


def token(sub, admin=False, name=None):
    claims = {}
    if admin:
        claims["roles"] = ["admin"]
    if name:
        claims["name"] = name
    return make_token(sub, **claims)


def connect(port, sub, admin=False, name=None):
    """One device of `sub`, past its connection_status."""
    ws = WS(port, path="/ws", token=token(sub, admin, name))
    st = ws.recv_json()
    assert st["type"] == "connection_status", st
    assert st["user_id"] == sub, st
    ws.status = st
    return ws


_seq = [0]


def next_id(prefix="c"):
    _seq[0] += 1
    return "%s-%d" % (prefix, _seq[0])


def barrier(ws):
    """Return every message `ws` receives before the answer to a request
    that goes through the writer now (a model_select on a session that does
    not exist: answered session_not_found, changes nothing)."""
    mid = next_id("sync")
    ws.send_json({"type": "model_select", "id": mid, "session_id": NO_SUCH, "model_id": "m1"})
    got = []
    while True:
        m = ws.recv_json()
        if m.get("id") == mid and m.get("type") in ("ack", "error"):
            assert m["type"] == "error" and m["code"] == "session_not_found", m
            return got
        got.append(m)


def quiet(*conns):
    """Assert that nothing is pending for these connections."""
    for ws in conns:
        extra = barrier(ws)
        assert extra == [], "unexpected messages: %r" % extra


def recv_type(ws, mtype):
    m = ws.recv_json()
    assert m.get("type") == mtype, "expected %s, got %r" % (mtype, m)
    return m


def expect_error(ws, code, mid=None):
    m = ws.recv_json()
    assert m.get("type") == "error", "expected error %s, got %r" % (code, m)
    assert m["code"] == code, "expected error %s, got %r" % (code, m)
    assert isinstance(m["message"], str) and m["message"], m
    assert m["recoverable"] is True, m
    if mid is None:
        assert "id" not in m, m
    else:
        assert m.get("id") == mid, m
    return m


def send_msg(ws, content, sid=None, mid=None, metadata=None, mtype="user_message"):
    msg = {"type": mtype, "content": content}
    if sid is not None:
        msg["session_id"] = sid
    if mid is not None:
        msg["id"] = mid
    if metadata is not None:
        msg["metadata"] = metadata
    ws.send_json(msg)


def check_ack(ack, mid=None, sid=None, seq=True):
    assert ack["type"] == "ack", ack
    if mid is None:
        assert "id" not in ack, ack
    else:
        assert ack["id"] == mid, ack
    assert SID_RE.match(ack["session_id"]), ack
    if sid is not None:
        assert ack["session_id"] == sid, ack
    assert TS_RE.match(ack["timestamp"]), ack
    if seq:
        assert isinstance(ack["seq"], int) and ack["seq"] >= 1, ack
    else:
        assert "seq" not in ack, ack
    return ack


def post(ws, content, sid=None, mid=None, metadata=None, mtype="user_message"):
    """Send a chat message; return (ack, own event). The sender receives the
    ack first, then the event."""
    mid = mid or next_id("m")
    send_msg(ws, content, sid, mid, metadata, mtype)
    ack = check_ack(ws.recv_json(), mid, sid)
    assert ack.get("duplicate", False) is False, ack
    ev = recv_type(ws, mtype)
    assert ev["seq"] == ack["seq"] and ev["session_id"] == ack["session_id"], (ack, ev)
    assert ev["id"] == mid, ev
    return ack, ev


def check_event(ev, sid, seq, content, sender_type, sender_id, sender_name, mid=None,
                metadata=None, mtype="user_message"):
    assert ev["type"] == mtype, ev
    assert ev["session_id"] == sid and ev["seq"] == seq, ev
    assert ev["content"] == content, ev
    assert ev["sender"] == {"type": sender_type, "id": sender_id, "name": sender_name}, ev
    assert TS_RE.match(ev["timestamp"]), ev
    if mid is None:
        assert "id" not in ev, ev
    else:
        assert ev["id"] == mid, ev
    if metadata is None:
        assert ev.get("metadata") in (None, {}), ev
    else:
        assert ev["metadata"] == metadata, ev


SESSION_EVENT_KEYS = {"type", "session_id", "seq", "sender", "timestamp"}


def check_session_event(ev, mtype, sid, seq, sender):
    """A stored session event (help_request, help_resolved, admin_join,
    admin_leave): numbered in the session's seq, who and when, no content."""
    assert ev.get("type") == mtype, "expected %s, got %r" % (mtype, ev)
    assert set(ev) == SESSION_EVENT_KEYS, ev
    assert ev["session_id"] == sid and ev["seq"] == seq, (sid, seq, ev)
    assert ev["sender"] == sender, ev
    assert TS_RE.match(ev["timestamp"]), ev
    return ev


def admin_event(ws, mtype, mid, sid, seq, sender, others=()):
    """Send admin_join / admin_leave / resolve_help on `ws`: the ack carries
    the event's seq (and its timestamp), then the admin's own connection gets
    the stored event, and so does every connection in `others`."""
    ws.send_json({"type": mtype, "id": mid, "session_id": sid})
    ack = check_ack(ws.recv_json(), mid, sid)
    assert ack["seq"] == seq and "duplicate" not in ack, ack
    evtype = {"resolve_help": "help_resolved"}.get(mtype, mtype)
    ev = check_session_event(ws.recv_json(), evtype, sid, seq, sender)
    assert ev["timestamp"] == ack["timestamp"], (ack, ev)
    for other in others:
        assert other.recv_json() == ev
    return ev


def api(port, path, tok):
    headers = {"Authorization": "Bearer " + tok} if tok else {}
    status, hdrs, body = http_get(port, path, headers)
    return status, json.loads(body) if body else None


def history(port, sid, tok, query=""):
    status, doc = api(port, "/api/sessions/%s/messages%s" % (sid, query), tok)
    assert status == 200, (status, doc)
    assert doc["session_id"] == sid, doc
    return doc


def sessions(port, tok):
    status, doc = api(port, "/api/sessions", tok)
    assert status == 200, (status, doc)
    assert set(doc) == {"sessions"}, doc
    return doc["sessions"]


def alice_session(d, first):
    """Alice on two devices, a session she started with `first` (both
    devices past its event), an admin and bob online, nobody joined."""
    a1 = connect(d.port, "alice", name="Alice")
    a2 = connect(d.port, "alice", name="Alice")
    adm = connect(d.port, ROOT, admin=True, name="Root")
    bob = connect(d.port, "bob")
    ack, _ = post(a1, first)
    a2.recv_json()
    return a1, a2, adm, bob, ack["session_id"]


def close_all(*conns):
    for ws in conns:
        ws.close(1000)
        try:
            ws.expect_close(timeout=5.0 * SLACK)
        except AssertionError:
            pass
        ws.shut()


def wait_offline(port, sub, timeout=None):
    """Poll /api/admin/connections until `sub` has no device left."""
    deadline = time.time() + (timeout or 5.0 * SLACK)
    while True:
        status, doc = api(port, "/api/admin/connections", token(ROOT, admin=True))
        assert status == 200, (status, doc)
        if not any(u["user_id"] == sub for u in doc["users"]):
            return
        assert time.time() < deadline, "%s still online: %r" % (sub, doc)
        time.sleep(0.05)


# ---- messages, acks and delivery -----------------------------------------------------

def test_connection_status_lists_models():
    with server() as d:
        ws = connect(d.port, "alice", name="Alice")
        assert ws.status["models"] == [{"id": "m1", "name": "Model One"},
                                       {"id": "m2", "name": "m2"}], ws.status
        assert ws.status["name"] == "Alice" and ws.status["devices"] == 1, ws.status
        close_all(ws)


def test_ack_before_event_and_second_device():
    with server() as d:
        a1 = connect(d.port, "alice", name="Alice")
        a2 = connect(d.port, "alice", name="Alice")
        bob = connect(d.port, "bob")

        # A new session: ack (id, session_id, seq 1, timestamp), then the event.
        meta = {"lang": "en", "client": "test"}
        send_msg(a1, "hello", mid="first", metadata=meta)
        ack = check_ack(a1.recv_json(), "first")
        assert ack["seq"] == 1 and ack.get("duplicate", False) is False, ack
        sid = ack["session_id"]
        ev1 = a1.recv_json()
        check_event(ev1, sid, 1, "hello", "user", "alice", "Alice", "first", meta)
        # The other device of the same user gets the same event.
        ev2 = a2.recv_json()
        assert ev2 == ev1, (ev1, ev2)

        # No id: the ack and the event carry none; no metadata: none.
        send_msg(a1, "no id", sid)
        ack = check_ack(a1.recv_json(), None, sid)
        assert ack["seq"] == 2, ack
        check_event(a1.recv_json(), sid, 2, "no id", "user", "alice", "Alice")
        check_event(a2.recv_json(), sid, 2, "no id", "user", "alice", "Alice")

        # A pipelined burst: on the sender each ack precedes its event; seq
        # rises by one with no gap; the second device gets every event once,
        # in order.
        n = 10 if SLOW else 30
        ids = ["burst-%d" % i for i in range(n)]
        for i, mid in enumerate(ids):
            send_msg(a1, "burst %d" % i, sid, mid)
        acked, seen_ev = {}, []
        while len(seen_ev) < n:
            m = a1.recv_json()
            if m["type"] == "ack":
                acked[m["id"]] = m["seq"]
            else:
                assert m["type"] == "user_message", m
                assert m["id"] in acked, "event before its ack: %r" % m
                assert acked[m["id"]] == m["seq"], m
                seen_ev.append(m["seq"])
        assert sorted(acked.values()) == list(range(3, 3 + n)), acked
        assert seen_ev == list(range(3, 3 + n)), seen_ev
        other = [a2.recv_json() for _ in range(n)]
        assert [m["seq"] for m in other] == seen_ev, other
        assert [m["id"] for m in other] == [acked_id for acked_id in sorted(
            acked, key=acked.get)], other
        quiet(a1, a2, bob)  # nothing twice, and nothing to another user
        close_all(a1, a2, bob)


def test_dedup_same_id():
    with server() as d:
        a1 = connect(d.port, "alice")
        a2 = connect(d.port, "alice")
        ack, _ = post(a1, "one", mid="setup")
        sid = ack["session_id"]
        a2.recv_json()
        first, ev = post(a1, "the message", sid, "dup-1")
        assert first["seq"] == 2, first
        assert a2.recv_json() == ev

        # The same id again, from the same device and from the other device,
        # even with other content: the original seq and timestamp,
        # "duplicate": true, no new event anywhere.
        for ws, content in ((a1, "the message"), (a2, "changed on retry")):
            send_msg(ws, content, sid, "dup-1")
            again = check_ack(ws.recv_json(), "dup-1", sid)
            assert again["seq"] == 2 and again["duplicate"] is True, again
            assert again["timestamp"] == first["timestamp"], (first, again)
        quiet(a1, a2)

        doc = history(d.port, sid, token("alice"))
        assert [m["seq"] for m in doc["messages"]] == [1, 2], doc
        assert [m.get("id") for m in doc["messages"]] == ["setup", "dup-1"], doc
        assert doc["messages"][1]["content"] == "the message", doc
        assert doc["last_seq"] == 2, doc

        # The next message continues the sequence without a gap.
        nxt, _ = post(a1, "after", sid)
        assert nxt["seq"] == 3, nxt
        a2.recv_json()
        # The same id in another session is another message.
        ack2, _ = post(a1, "elsewhere", None, "dup-1")
        assert ack2["session_id"] != sid and ack2["seq"] == 1, ack2
        a2.recv_json()
        close_all(a1, a2)


def test_new_session_retry_finds_the_session():
    with server() as d:
        a1 = connect(d.port, "alice")
        a2 = connect(d.port, "alice")
        ack, ev = post(a1, "start a chat", None, "create-1")
        sid = ack["session_id"]
        assert ack["seq"] == 1, ack
        assert a2.recv_json() == ev
        # The first ack was "lost": the client retries without a session_id.
        for ws in (a1, a2):
            send_msg(ws, "start a chat", None, "create-1")
            again = check_ack(ws.recv_json(), "create-1", sid)
            assert again["seq"] == 1 and again["duplicate"] is True, again
            assert again["timestamp"] == ack["timestamp"], (ack, again)
        quiet(a1, a2)
        ss = sessions(d.port, token("alice"))
        assert [s["id"] for s in ss] == [sid], ss
        assert ss[0]["last_seq"] == 1, ss
        assert len(history(d.port, sid, token("alice"))["messages"]) == 1

        # Another user with the same client id gets a session of their own.
        bob = connect(d.port, "bob")
        back, _ = post(bob, "start a chat", None, "create-1")
        assert back["session_id"] != sid and back["seq"] == 1, back
        assert [s["id"] for s in sessions(d.port, token("bob"))] == [back["session_id"]]
        assert [s["id"] for s in sessions(d.port, token("alice"))] == [sid]
        quiet(a1, a2)
        close_all(a1, a2, bob)


def test_typing_relayed_not_echoed():
    with server() as d:
        a1, a2, adm, bob, sid = alice_session(d, "hi")
        admin_event(adm, "admin_join", "j", sid, 2, {"type": "admin", "id": ROOT, "name": "Root"},
                    (a1, a2))

        for flag in (True, False):
            a1.send_json({"type": "typing_indicator", "session_id": sid, "typing": flag})
            for ws in (a2, adm):
                m = recv_type(ws, "typing_indicator")
                assert m["session_id"] == sid and m["typing"] is flag, m
                assert m["sender"] == {"type": "user", "id": "alice", "name": "Alice"}, m
        # Not echoed to the sender, not sent to anyone else, not stored (the
        # admin_join is seq 2).
        quiet(a1, bob)
        assert history(d.port, sid, token("alice"))["last_seq"] == 2

        # An admin who joined types: the owner's devices see sender.type admin.
        adm.send_json({"type": "typing_indicator", "session_id": sid, "typing": True})
        for ws in (a1, a2):
            m = recv_type(ws, "typing_indicator")
            assert m["sender"] == {"type": "admin", "id": ROOT, "name": "Root"}, m
            assert m["typing"] is True and m["session_id"] == sid, m
        quiet(adm, a1, a2, bob)
        close_all(a1, a2, adm, bob)


def test_read_relayed_to_other_participants():
    """A read marker goes, with its sender, to the session's other
    participants: the owner's other devices and the joined admins. It is not
    stored as an event; the latest per reader is kept (never going back)."""
    with server() as d:
        a1 = connect(d.port, "alice")
        a2 = connect(d.port, "alice")
        a3 = connect(d.port, "alice")
        adm = connect(d.port, ROOT, admin=True)
        adm2 = connect(d.port, "root2", admin=True)  # online, not joined
        ack, _ = post(a1, "hi")
        sid = ack["session_id"]
        a2.recv_json()
        a3.recv_json()
        admin_event(adm, "admin_join", "j", sid, 2, {"type": "admin", "id": ROOT, "name": ROOT},
                    (a1, a2, a3))
        alice = {"type": "user", "id": "alice", "name": "alice"}
        root = {"type": "admin", "id": ROOT, "name": ROOT}

        def read(ws, seq, sent_seq, sender, others):
            ws.send_json({"type": "read", "session_id": sid, "seq": seq})
            for other in others:
                m = recv_type(other, "read")
                assert m == {"type": "read", "session_id": sid, "seq": sent_seq,
                             "sender": sender}, m

        read(a2, 1, 1, alice, (a1, a3, adm))
        quiet(a2, adm2)  # not the sender, not an admin outside the session
        read(adm, 2, 2, root, (a1, a2, a3))
        quiet(adm, adm2)

        def markers():
            status, doc = api(d.port, "/api/sessions/" + sid, token("alice"))
            assert status == 200, (status, doc)
            return doc["read"]

        assert markers() == {"alice": 1, ROOT: 2}
        # Kept per reader, the latest only: an older marker is relayed but
        # does not move it back; one beyond the end is cut to the last seq.
        read(a1, 0, 0, alice, (a2, a3, adm))
        assert markers() == {"alice": 1, ROOT: 2}
        read(a3, 99, 2, alice, (a1, a2, adm))
        assert markers() == {"alice": 2, ROOT: 2}
        quiet(a1, a2, a3, adm, adm2)
        assert history(d.port, sid, token("alice"))["last_seq"] == 2
        close_all(a1, a2, a3, adm, adm2)


def test_help_request_reaches_admins():
    """help_request is a stored event: acked with its seq, delivered to the
    session's participants (the owner's devices, the joined admins) and to
    every admin online, each connection once. Asking again while it is open
    is acked duplicate and changes nothing."""
    with server() as d:
        alice = connect(d.port, "alice", name="Alice")
        alice2 = connect(d.port, "alice", name="Alice")
        adm1 = connect(d.port, ROOT, admin=True)
        adm2 = connect(d.port, "root2", admin=True)
        bob = connect(d.port, "bob")
        ack, _ = post(alice, "I need a human")
        sid = ack["session_id"]
        alice2.recv_json()
        other, _ = post(alice, "another chat")
        alice2.recv_json()
        # adm1 joined the session and is online: it gets the event once.
        admin_event(adm1, "admin_join", "j", sid, 2, {"type": "admin", "id": ROOT, "name": ROOT},
                    (alice, alice2))

        alice.send_json({"type": "help_request", "id": "h1", "session_id": sid})
        hack = check_ack(alice.recv_json(), "h1", sid)
        assert hack["seq"] == 3 and "duplicate" not in hack, hack
        ev = check_session_event(alice.recv_json(), "help_request", sid, 3,
                                 {"type": "user", "id": "alice", "name": "Alice"})
        assert ev["timestamp"] == hack["timestamp"], (hack, ev)
        for ws in (alice2, adm1, adm2):  # every admin online, joined or not
            assert ws.recv_json() == ev
        quiet(alice, alice2, bob, adm1, adm2)

        # Again while it is open: acked duplicate, no seq, no event.
        for ws in (alice, alice2):
            ws.send_json({"type": "help_request", "id": "h2", "session_id": sid})
            again = check_ack(ws.recv_json(), "h2", sid, seq=False)
            assert again["duplicate"] is True, again
        quiet(alice, alice2, bob, adm1, adm2)

        ss = {s["id"]: s for s in sessions(d.port, token("alice"))}
        assert ss[sid]["help_requested"] is True, ss
        assert ss[sid]["last_seq"] == 3, ss
        assert ss[other["session_id"]]["help_requested"] is False, ss
        status, doc = api(d.port, "/api/admin/sessions?help=1", token(ROOT, admin=True))
        assert status == 200, (status, doc)
        assert [s["id"] for s in doc["sessions"]] == [sid], doc
        # Stored: history returns it in its place.
        doc = history(d.port, sid, token("alice"))
        assert doc["last_seq"] == 3, doc
        assert [m["type"] for m in doc["messages"]] == ["user_message", "admin_join",
                                                        "help_request"], doc
        assert doc["messages"][2] == ev, (doc["messages"][2], ev)
        close_all(alice, alice2, adm1, adm2, bob)


def test_model_select():
    with server() as d:
        alice = connect(d.port, "alice")
        ack, _ = post(alice, "hi")
        sid = ack["session_id"]
        assert sessions(d.port, token("alice"))[0]["model"] is None

        alice.send_json({"type": "model_select", "id": "ms1", "session_id": sid,
                         "model_id": "m2"})
        a = check_ack(alice.recv_json(), "ms1", sid, seq=False)
        assert a["model_id"] == "m2", a
        assert sessions(d.port, token("alice"))[0]["model"] == "m2"

        for bad in ("m3", "", "Model One", "M1"):
            alice.send_json({"type": "model_select", "id": "bad", "session_id": sid,
                             "model_id": bad})
            expect_error(alice, "invalid_field", "bad")
        assert sessions(d.port, token("alice"))[0]["model"] == "m2"

        alice.send_json({"type": "model_select", "id": "ms2", "session_id": sid,
                         "model_id": "m1"})
        assert check_ack(alice.recv_json(), "ms2", sid, seq=False)["model_id"] == "m1"
        assert sessions(d.port, token("alice"))[0]["model"] == "m1"
        assert history(d.port, sid, token("alice"))["last_seq"] == 1
        quiet(alice)
        close_all(alice)


def test_admin_join_leave_message():
    with server() as d:
        a1, a2, adm, bob, sid = alice_session(d, "hello?")

        # Not an admin: forbidden, whatever the session.
        for t in ("admin_join", "admin_leave"):
            bob.send_json({"type": t, "id": "b-" + t, "session_id": sid})
            expect_error(bob, "forbidden", "b-" + t)
        send_msg(bob, "let me in", sid, "b-msg", mtype="admin_message")
        expect_error(bob, "forbidden", "b-msg")
        # The owner is not an admin either.
        send_msg(a1, "as admin", sid, "a-msg", mtype="admin_message")
        expect_error(a1, "forbidden", "a-msg")
        # An admin who did not join: forbidden.
        send_msg(adm, "not joined", sid, "adm-early", mtype="admin_message")
        expect_error(adm, "forbidden", "adm-early")
        quiet(a2, adm)
        # An unknown session cannot be joined.
        adm.send_json({"type": "admin_join", "id": "j0", "session_id": NO_SUCH})
        expect_error(adm, "session_not_found", "j0")

        # admin_join: acked with its seq; the admin's own connection, after
        # the ack, and the owner's devices get the stored event.
        root = {"type": "admin", "id": ROOT, "name": "Root"}
        jev = admin_event(adm, "admin_join", "j1", sid, 2, root, (a1, a2))

        # The joined admin receives the session's events.
        _, ev = post(a1, "are you there?", sid)
        assert a2.recv_json() == ev
        assert adm.recv_json() == ev

        # admin_message: ack with seq, then delivered to the owner's devices
        # and the admin itself with sender.type admin.
        send_msg(adm, "Yes, how can I help?", sid, "am1", mtype="admin_message")
        aack = check_ack(adm.recv_json(), "am1", sid)
        assert aack["seq"] == 4, aack
        aev = recv_type(adm, "admin_message")
        check_event(aev, sid, 4, "Yes, how can I help?", "admin", ROOT, "Root", "am1",
                    mtype="admin_message")
        for ws in (a1, a2):
            assert ws.recv_json() == aev
        # A retried admin_message is acknowledged again, not stored twice.
        send_msg(adm, "Yes, how can I help?", sid, "am1", mtype="admin_message")
        again = check_ack(adm.recv_json(), "am1", sid)
        assert again["seq"] == 4 and again["duplicate"] is True, again
        quiet(bob, a1, a2, adm)

        # History keeps the join as a session event and the admin message.
        msgs = history(d.port, sid, token("alice"))["messages"]
        assert [m["type"] for m in msgs] == ["user_message", "admin_join", "user_message",
                                             "admin_message"], msgs
        assert msgs[1] == jev and msgs[3] == aev, (msgs, jev, aev)

        # admin_leave: acked with its seq, the participants and the admin's
        # own connection get the event; then no more events for the admin.
        lev = admin_event(adm, "admin_leave", "l1", sid, 5, root, (a1, a2))
        post(a1, "bye", sid)
        a2.recv_json()
        quiet(adm)
        send_msg(adm, "after leaving", sid, "am2", mtype="admin_message")
        expect_error(adm, "forbidden", "am2")
        quiet(a1, a2)
        doc = history(d.port, sid, token("alice"))
        assert doc["last_seq"] == 6, doc
        assert doc["messages"][4] == lev, doc
        close_all(a1, a2, adm, bob)


def test_admin_requests_in_order_without_waiting():
    # A client may send admin_join and its first admin_message back to back:
    # one connection's requests are handled in order, so the message is the
    # joined admin's, not refused. Likewise admin_leave then a message is
    # refused, and a join that fails leaves the admin outside. Each pair goes
    # in one TCP segment, so chatd reads both before the writer can answer
    # the first.
    def together(ws, *msgs):
        ws.send_raw(b"".join(frame(OP_TEXT, json.dumps(m)) for m in msgs))

    def admin_msg(content, session, mid):
        return {"type": "admin_message", "content": content, "session_id": session, "id": mid}

    with server() as d:
        a1 = connect(d.port, "alice", name="Alice")
        adm = connect(d.port, ROOT, admin=True, name="Root")
        ack, _ = post(a1, "anyone?")
        sid = ack["session_id"]

        root = {"type": "admin", "id": ROOT, "name": "Root"}
        together(adm, {"type": "admin_join", "id": "pj1", "session_id": sid},
                 admin_msg("right here", sid, "pm1"))
        # The join (seq 2) and the message (seq 3) may be committed in one
        # batch or two: each ack comes before its event, the acks in order,
        # the events in seq order.
        got = [adm.recv_json() for _ in range(4)]
        acks = [m for m in got if m["type"] == "ack"]
        evs = [m for m in got if m["type"] != "ack"]
        jack = check_ack(acks[0], "pj1", sid)
        pack = check_ack(acks[1], "pm1", sid)
        assert jack["seq"] == 2 and pack["seq"] == 3, got
        assert got.index(jack) < got.index(evs[0]) and got.index(pack) < got.index(evs[1]), got
        jev = check_session_event(evs[0], "admin_join", sid, 2, root)
        pev = evs[1]
        check_event(pev, sid, 3, "right here", "admin", ROOT, "Root", "pm1",
                    mtype="admin_message")
        assert a1.recv_json() == jev
        assert a1.recv_json() == pev

        together(adm, {"type": "admin_leave", "id": "pl1", "session_id": sid},
                 admin_msg("too late", sid, "pm2"))
        got = [adm.recv_json(), adm.recv_json(), adm.recv_json()]
        by_id = {m.get("id"): m for m in got if "id" in m}
        assert by_id["pm2"]["type"] == "error" and by_id["pm2"]["code"] == "forbidden", got
        lack = check_ack(by_id["pl1"], "pl1", sid)
        assert lack["seq"] == 4, lack
        lev = [m for m in got if "id" not in m]
        assert len(lev) == 1 and got.index(lack) < got.index(lev[0]), got
        check_session_event(lev[0], "admin_leave", sid, 4, root)
        assert a1.recv_json() == lev[0]

        # Joining a session that does not exist, then writing to it: the join
        # is session_not_found; the message too, or forbidden when the failed
        # join was settled before the message was read. Nothing is stored,
        # and afterwards the admin is still outside.
        together(adm, {"type": "admin_join", "id": "pj2", "session_id": NO_SUCH},
                 admin_msg("hello?", NO_SUCH, "pm3"))
        expect_error(adm, "session_not_found", "pj2")
        m = adm.recv_json()
        assert m["type"] == "error" and m["id"] == "pm3", m
        assert m["code"] in ("session_not_found", "forbidden"), m
        send_msg(adm, "still outside", sid, "pm4", mtype="admin_message")
        expect_error(adm, "forbidden", "pm4")
        quiet(a1, adm)
        msgs = history(d.port, sid, token("alice"))["messages"]
        assert [(m["type"], m.get("content")) for m in msgs] == [
            ("user_message", "anyone?"), ("admin_join", None), ("admin_message", "right here"),
            ("admin_leave", None)], msgs
        close_all(a1, adm)


def test_resume():
    with server() as d:
        a1 = connect(d.port, "alice")
        live = []
        ack, ev = post(a1, "one", metadata={"k": "v"})
        sid = ack["session_id"]
        live.append(ev)
        for c in ("two", "three"):
            live.append(post(a1, c, sid)[1])

        # A new device resumes from 0: every event in order, then resumed.
        a2 = connect(d.port, "alice")
        a2.send_json({"type": "resume", "id": "r1", "session_id": sid, "after_seq": 0})
        got = [a2.recv_json() for _ in range(3)]
        assert got == live, (got, live)  # same shape as the live events
        r = recv_type(a2, "resumed")
        assert r["session_id"] == sid and r["last_seq"] == 3, r
        # Again: everything was already sent on this connection.
        a2.send_json({"type": "resume", "session_id": sid, "after_seq": 0})
        r = recv_type(a2, "resumed")
        assert r["session_id"] == sid and r["last_seq"] == 3, r

        # From the middle, and from beyond the end.
        a3 = connect(d.port, "alice")
        a3.send_json({"type": "resume", "session_id": sid, "after_seq": 2})
        assert a3.recv_json() == live[2]
        assert recv_type(a3, "resumed")["last_seq"] == 3
        a4 = connect(d.port, "alice")
        a4.send_json({"type": "resume", "session_id": sid, "after_seq": 99})
        r = recv_type(a4, "resumed")
        assert r["session_id"] == sid and r["last_seq"] == 3, r

        # A live event first, then a resume fills the gap below it, once.
        live.append(post(a1, "four", sid)[1])
        for ws in (a2, a3, a4):
            assert ws.recv_json() == live[3]
        a4.send_json({"type": "resume", "session_id": sid, "after_seq": 0})
        got = [a4.recv_json() for _ in range(3)]
        assert got == live[:3], got
        assert recv_type(a4, "resumed")["last_seq"] == 4
        quiet(a1, a2, a3, a4)

        # Validation.
        for bad in (-1, "0", 1.5, None, True):
            msg = {"type": "resume", "id": "rb", "session_id": sid}
            if bad is not None:
                msg["after_seq"] = bad
            a1.send_json(msg)
            expect_error(a1, "invalid_field", "rb")
        a1.send_json({"type": "resume", "id": "rn", "after_seq": 0})
        expect_error(a1, "invalid_field", "rn")
        a1.send_json({"type": "resume", "id": "ru", "session_id": NO_SUCH, "after_seq": 0})
        expect_error(a1, "session_not_found", "ru")
        close_all(a1, a2, a3, a4)


def test_resume_exactly_once_during_live_traffic():
    """Resume while the session is being written: every event after
    after_seq arrives exactly once, live or replayed."""
    n = 40 if SLOW else 150
    with server() as d:
        a1 = connect(d.port, "alice")
        sid = post(a1, "start")[0]["session_id"]
        subscribed = connect(d.port, "alice")  # receives the burst live
        for i in range(n):
            send_msg(a1, "burst %d" % i, sid, "b%d" % i)
        # A device that connects mid-burst and resumes from 0.
        late = None
        got_a1 = 0
        while got_a1 < 2 * n:
            a1.recv_json()
            got_a1 += 1
            if got_a1 == n // 2:
                late = connect(d.port, "alice")
                late.send_json({"type": "resume", "session_id": sid, "after_seq": 0})
                subscribed.send_json({"type": "resume", "session_id": sid, "after_seq": 0})
        for ws in (late, subscribed):
            seqs, resumed = [], None
            while resumed is None or len(seqs) < n + 1:
                m = ws.recv_json()
                if m["type"] == "resumed":
                    assert resumed is None, m
                    resumed = m
                    continue
                assert m["type"] == "user_message" and m["session_id"] == sid, m
                seqs.append(m["seq"])
            assert sorted(seqs) == list(range(1, n + 2)), "missing or repeated: %r" % seqs
            assert 1 <= resumed["last_seq"] <= n + 1, resumed
            quiet(ws)
        close_all(a1, late, subscribed)


def test_resume_after_admin_rejoin_fills_the_hole():
    """An admin that left misses the events meanwhile; after joining again,
    resume from 0 must send every event this connection was not sent,
    including those from while it was away."""
    with server() as d:
        alice = connect(d.port, "alice")
        adm = connect(d.port, ROOT, admin=True)
        root = {"type": "admin", "id": ROOT, "name": ROOT}
        sid = post(alice, "1 before join")[0]["session_id"]
        admin_event(adm, "admin_join", "j1", sid, 2, root, (alice,))
        post(alice, "3 while joined", sid)
        assert recv_type(adm, "user_message")["seq"] == 3
        admin_event(adm, "admin_leave", "l1", sid, 4, root, (alice,))
        post(alice, "5 while away", sid)
        post(alice, "6 while away", sid)
        quiet(adm)
        admin_event(adm, "admin_join", "j2", sid, 7, root, (alice,))
        post(alice, "8 joined again", sid)
        assert recv_type(adm, "user_message")["seq"] == 8
        adm.send_json({"type": "resume", "session_id": sid, "after_seq": 0})
        seqs = []
        while True:
            m = adm.recv_json()
            if m["type"] == "resumed":
                break
            seqs.append(m["seq"])
        assert m["last_seq"] == 8, m
        assert seqs == [1, 5, 6], \
            "resume after_seq=0 on the admin connection (sent 2, 3, 4, 7 and 8 live) sent " \
            "%r, expected [1, 5, 6]" % seqs
        close_all(alice, adm)


# ---- authorization ----------------------------------------------------------------

def test_authorization_between_users():
    with server() as d:
        a1 = connect(d.port, "alice")
        a2 = connect(d.port, "alice")
        bob = connect(d.port, "bob")
        ack, _ = post(a1, "private")
        sid = ack["session_id"]
        a2.recv_json()
        bob_sid = post(bob, "bob's own")[0]["session_id"]

        attempts = [
            {"type": "resume", "session_id": sid, "after_seq": 0},
            {"type": "user_message", "session_id": sid, "content": "intrusion"},
            {"type": "user_message", "session_id": sid, "content": "x", "metadata": {"a": "b"}},
            {"type": "typing_indicator", "session_id": sid, "typing": True},
            {"type": "read", "session_id": sid, "seq": 1},
            {"type": "help_request", "session_id": sid},
            {"type": "model_select", "session_id": sid, "model_id": "m1"},
        ]
        for i, msg in enumerate(attempts):
            answers = []
            # Someone else's session, an unknown one and a malformed one: the
            # same answer, so the error leaks nothing.
            for target in (sid, NO_SUCH, "s_123", "not-a-session"):
                mid = "x%d" % i
                bob.send_json(dict(msg, id=mid, session_id=target))
                e = expect_error(bob, "session_not_found", mid)
                answers.append((e["code"], e["message"], e.get("retry_after")))
            assert len(set(answers)) == 1, (msg["type"], answers)
        # Nothing reached alice; nothing was stored or changed.
        quiet(a1, a2, bob)
        doc = history(d.port, sid, token("alice"))
        assert doc["last_seq"] == 1 and len(doc["messages"]) == 1, doc
        s = sessions(d.port, token("alice"))[0]
        assert s["help_requested"] is False and s["model"] is None, s
        assert [x["id"] for x in sessions(d.port, token("bob"))] == [bob_sid]

        # HTTP: someone else's history is 404 like an unknown session.
        bodies = []
        for target in (sid, NO_SUCH, "nope", "s_" + "f" * 40):
            status, hdrs, body = http_get(d.port, "/api/sessions/%s/messages" % target,
                                          {"Authorization": "Bearer " + token("bob")})
            assert status == 404, (target, status, body)
            assert json_error(body)["code"] == "session_not_found", body
            bodies.append(body)
        assert len(set(bodies)) == 1, bodies
        # The owner and an admin can read it; nobody without a token.
        assert len(history(d.port, sid, token("alice"))["messages"]) == 1
        assert len(history(d.port, sid, token(ROOT, admin=True))["messages"]) == 1
        status, _ = api(d.port, "/api/sessions/%s/messages" % sid, None)
        assert status == 401, status

        # An admin that has not joined is not a participant, and admin
        # rights do not make user_message write into another user's session.
        adm = connect(d.port, ROOT, admin=True)
        for i, msg in enumerate([
                {"type": "typing_indicator", "session_id": sid, "typing": True},
                {"type": "read", "session_id": sid, "seq": 1},
                {"type": "user_message", "session_id": sid, "content": "as a user"}]):
            adm.send_json(dict(msg, id="adm%d" % i))
            expect_error(adm, "session_not_found", "adm%d" % i)
        quiet(a1, a2)
        assert history(d.port, sid, token("alice"))["last_seq"] == 1
        close_all(a1, a2, bob, adm)


# ---- rate limit ---------------------------------------------------------------------

def test_rate_limit():
    with Chatd("--models", MODELS, "--rate-limit", "5") as d:
        a1 = connect(d.port, "alice")
        a2 = connect(d.port, "alice")
        bob = connect(d.port, "bob")
        sid = None
        for i in range(5):
            ack, _ = post(a1, "msg %d" % i, sid)
            sid = ack["session_id"]
            a2.recv_json()
        send_msg(a1, "one too many", sid, "over")
        e = expect_error(a1, "rate_limited", "over")
        ra = e.get("retry_after")
        assert isinstance(ra, int) and not isinstance(ra, bool), e
        # 5 per minute: a token every 12 s.
        assert 0 < ra <= 12000 + 100, e
        # Per user: the other device is limited too; another user is not.
        send_msg(a2, "from the other device", sid, "over2")
        e2 = expect_error(a2, "rate_limited", "over2")
        assert 0 < e2["retry_after"] <= 12000 + 100, e2
        post(bob, "bob is fine")
        # The connection stays open and usable; nothing was stored.
        a1.send_json({"type": "typing_indicator", "session_id": sid, "typing": True})
        assert recv_type(a2, "typing_indicator")["typing"] is True
        quiet(a1, a2)
        assert history(d.port, sid, token("alice"))["last_seq"] == 5
        close_all(a1, a2, bob)


def test_rate_limit_survives_reconnect():
    """The limit is per user per minute: closing every device and opening a
    new one must not hand out a fresh burst."""
    with Chatd("--models", MODELS, "--rate-limit", "3") as d:
        a1 = connect(d.port, "alice")
        sid = None
        for i in range(3):
            sid = post(a1, "msg %d" % i, sid)[0]["session_id"]
        send_msg(a1, "over", sid, "over")
        expect_error(a1, "rate_limited", "over")
        close_all(a1)
        wait_offline(d.port, "alice")
        a1 = connect(d.port, "alice")
        send_msg(a1, "after reconnecting", sid, "again")
        m = a1.recv_json()
        assert m.get("type") == "error" and m.get("code") == "rate_limited", \
            "a reconnect reset the rate limit: expected rate_limited, got %r" % m
        close_all(a1)


# ---- validation -----------------------------------------------------------------------

def test_validation_of_every_field():
    with server("--max-content-bytes", "100") as d:
        a = connect(d.port, "alice")
        adm = connect(d.port, ROOT, admin=True)
        sid = post(a, "setup")[0]["session_id"]
        admin_event(adm, "admin_join", "j", sid, 2, {"type": "admin", "id": ROOT, "name": ROOT},
                    (a,))

        # Frames that are not a JSON object: bad_json, no id.
        for raw in ("{not json", "[1,2]", '"text"', "42", "null", "",
                    '{"type":"user_message","content":"a"', '{"type":"user_message"}}'):
            a.send(raw)
            expect_error(a, "bad_json")

        # The envelope: type and id.
        cases = [
            ({"content": "x"}, "invalid_field", "v1"),
            ({"type": 5, "content": "x"}, "invalid_field", "v1"),
            ({"type": None}, "invalid_field", "v1"),
            ({"type": "no_such_type"}, "unknown_type", "v1"),
            ({"type": "USER_MESSAGE", "content": "x"}, "unknown_type", "v1"),
            ({"type": "user_message", "content": "x", "id": ""}, "invalid_field", None),
            ({"type": "user_message", "content": "x", "id": "a" * 65}, "invalid_field", None),
            ({"type": "user_message", "content": "x", "id": "\u00e9" * 33}, "invalid_field",
             None),
            ({"type": "user_message", "content": "x", "id": 7}, "invalid_field", None),
            ({"type": "user_message", "content": "x", "id": ["a"]}, "invalid_field", None),
            ({"type": "user_message", "content": "x", "id": None}, "invalid_field", None),
        ]
        um = {"type": "user_message", "session_id": sid}
        big = "x" * 101
        cases += [
            (dict(um, content=None), "invalid_field", "v1"),
            (dict(um, content=5), "invalid_field", "v1"),
            (dict(um, content=["a"]), "invalid_field", "v1"),
            (dict(um, content=""), "invalid_field", "v1"),
            ({"type": "user_message", "session_id": sid}, "invalid_field", "v1"),
            (dict(um, content=big), "content_too_large", "v1"),
            (dict(um, content="\u00e9" * 51), "content_too_large", "v1"),  # 102 bytes
            (dict(um, content="x", session_id=5), "invalid_field", "v1"),
            (dict(um, content="x", session_id={"id": sid}), "invalid_field", "v1"),
            (dict(um, content="x", session_id="nope"), "session_not_found", "v1"),
            (dict(um, content="x", session_id=sid.upper()), "session_not_found", "v1"),
            (dict(um, content="x", session_id=NO_SUCH), "session_not_found", "v1"),
            (dict(um, content="x", metadata="k=v"), "invalid_field", "v1"),
            (dict(um, content="x", metadata=["a"]), "invalid_field", "v1"),
            (dict(um, content="x", metadata={"n": 1}), "invalid_field", "v1"),
            (dict(um, content="x", metadata={"a": "b", "t": True}), "invalid_field", "v1"),
            (dict(um, content="x", metadata={"o": {"a": "b"}}), "invalid_field", "v1"),
            (dict(um, content="x", metadata={"z": None}), "invalid_field", "v1"),
            (dict(um, content="x", metadata={"k": "x" * 17000}), "invalid_field", "v1"),
            # typing_indicator
            ({"type": "typing_indicator", "typing": True}, "invalid_field", "v1"),
            ({"type": "typing_indicator", "session_id": sid}, "invalid_field", "v1"),
            ({"type": "typing_indicator", "session_id": sid, "typing": "true"},
             "invalid_field", "v1"),
            ({"type": "typing_indicator", "session_id": sid, "typing": 1}, "invalid_field",
             "v1"),
            ({"type": "typing_indicator", "session_id": NO_SUCH, "typing": True},
             "session_not_found", "v1"),
            # read
            ({"type": "read", "seq": 1}, "invalid_field", "v1"),
            ({"type": "read", "session_id": sid}, "invalid_field", "v1"),
            ({"type": "read", "session_id": sid, "seq": -1}, "invalid_field", "v1"),
            ({"type": "read", "session_id": sid, "seq": "1"}, "invalid_field", "v1"),
            ({"type": "read", "session_id": sid, "seq": 1.5}, "invalid_field", "v1"),
            ({"type": "read", "session_id": NO_SUCH, "seq": 1}, "session_not_found", "v1"),
            # help_request
            ({"type": "help_request"}, "invalid_field", "v1"),
            ({"type": "help_request", "session_id": 12}, "invalid_field", "v1"),
            ({"type": "help_request", "session_id": NO_SUCH}, "session_not_found", "v1"),
            # model_select
            ({"type": "model_select", "model_id": "m1"}, "invalid_field", "v1"),
            ({"type": "model_select", "session_id": sid}, "invalid_field", "v1"),
            ({"type": "model_select", "session_id": sid, "model_id": 1}, "invalid_field", "v1"),
            ({"type": "model_select", "session_id": sid, "model_id": "nope"},
             "invalid_field", "v1"),
            # resolve_help: admins only, whatever the fields
            ({"type": "resolve_help", "session_id": sid}, "forbidden", "v1"),
            # resume
            ({"type": "resume", "after_seq": 0}, "invalid_field", "v1"),
            ({"type": "resume", "session_id": sid, "after_seq": -5}, "invalid_field", "v1"),
        ]
        for msg, code, mid in cases:
            if "id" not in msg:
                msg = dict(msg, id="v1")
            a.send_json(msg)
            m = a.recv_json()
            assert m.get("type") == "error" and m.get("code") == code, (msg, m)
            assert m["recoverable"] is True and isinstance(m["message"], str), (msg, m)
            assert m.get("id") == mid, (msg, m)

        # The admin operations, by an admin.
        admin_cases = [
            ({"type": "admin_join"}, "invalid_field"),
            ({"type": "admin_join", "session_id": 3}, "invalid_field"),
            ({"type": "admin_join", "session_id": "bad"}, "session_not_found"),
            ({"type": "admin_leave"}, "invalid_field"),
            ({"type": "admin_message", "content": "x"}, "invalid_field"),
            ({"type": "admin_message", "session_id": sid}, "invalid_field"),
            ({"type": "admin_message", "session_id": sid, "content": ""}, "invalid_field"),
            ({"type": "admin_message", "session_id": sid, "content": 3}, "invalid_field"),
            ({"type": "admin_message", "session_id": sid, "content": big},
             "content_too_large"),
            ({"type": "resolve_help"}, "invalid_field"),
            ({"type": "resolve_help", "session_id": 3}, "invalid_field"),
            ({"type": "resolve_help", "session_id": "bad"}, "session_not_found"),
            ({"type": "resolve_help", "session_id": NO_SUCH}, "session_not_found"),
        ]
        for msg, code in admin_cases:
            adm.send_json(dict(msg, id="av"))
            m = adm.recv_json()
            assert m.get("type") == "error" and m.get("code") == code, (msg, m)
            assert m.get("id") == "av", (msg, m)

        # Nothing above was stored or delivered; valid edge cases are accepted.
        quiet(a, adm)
        assert history(d.port, sid, token("alice"))["last_seq"] == 2
        ack, ev = post(a, "x" * 100, sid, "i" * 64, metadata={})
        assert ack["seq"] == 3 and ev["content"] == "x" * 100, (ack, ev)
        ack, ev = post(a, "\u00e9" * 50, sid, "\u00e9" * 32, metadata={"k": "\u00fc"})
        assert ack["seq"] == 4 and ev["content"] == "\u00e9" * 50, ev
        assert ev["metadata"] == {"k": "\u00fc"}, ev
        # null session_id starts a session like no session_id.
        a.send_json({"type": "user_message", "id": "nullsid", "session_id": None,
                     "content": "new"})
        ack = check_ack(a.recv_json(), "nullsid")
        assert ack["session_id"] != sid and ack["seq"] == 1, ack
        recv_type(a, "user_message")
        for ws in (adm,):
            assert [m["seq"] for m in barrier(ws)] == [3, 4], "admin sees the session's events"
        close_all(a, adm)


def test_unavailable_without_storage():
    with Chatd("--db", "none") as d:
        a = connect(d.port, "alice")
        for t in ("user_message", "typing_indicator", "help_request", "resume"):
            a.send_json({"type": t, "id": "u-" + t, "session_id": NO_SUCH, "content": "x",
                         "typing": True, "after_seq": 0})
            expect_error(a, "unavailable", "u-" + t)
        close_all(a)


# ---- HTTP API -------------------------------------------------------------------------

def test_http_api():
    with server() as d:
        alice, bob = connect(d.port, "alice", name="Alice"), connect(d.port, "bob")
        tok_a, tok_b, tok_root = token("alice"), token("bob"), token(ROOT, admin=True)
        assert sessions(d.port, tok_a) == []
        s1 = post(alice, "first chat", None, "h1", metadata={"k": "v"})[0]["session_id"]
        time.sleep(0.02)
        s2 = post(alice, "second chat")[0]["session_id"]
        time.sleep(0.02)
        s3 = post(bob, "bob's chat")[0]["session_id"]

        ss = sessions(d.port, tok_a)
        assert [s["id"] for s in ss] == [s2, s1], ss  # newest first
        for s in ss:
            assert set(s) == {"id", "title", "owner", "owner_name", "created_at", "updated_at",
                              "last_seq", "help_requested", "model"}, s
            assert s["owner"] == "alice" and s["owner_name"] == "Alice", s
            assert s["last_seq"] == 1, s
            assert TS_RE.match(s["created_at"]) and TS_RE.match(s["updated_at"]), s
            assert s["help_requested"] is False and s["model"] is None, s
        assert [s["title"] for s in ss] == ["second chat", "first chat"], ss
        # A new message moves s1 to the front.
        time.sleep(0.02)
        live = [post(alice, "more %d" % i, s1)[1] for i in range(4)]
        ss = sessions(d.port, tok_a)
        assert [s["id"] for s in ss] == [s1, s2] and ss[0]["last_seq"] == 5, ss
        assert ss[0]["updated_at"] >= ss[0]["created_at"], ss
        assert [s["id"] for s in sessions(d.port, tok_b)] == [s3]
        status, doc = api(d.port, "/api/sessions?limit=1", tok_a)
        assert status == 200 and [s["id"] for s in doc["sessions"]] == [s1], doc
        # No name claim: the name is the user id.
        bm = history(d.port, s3, tok_b)["messages"]
        assert bm[0]["sender"] == {"type": "user", "id": "bob", "name": "bob"}, bm

        # History: seq order, paging, the live events' shape.
        doc = history(d.port, s1, tok_a)
        assert set(doc) == {"session_id", "messages", "last_seq"}, doc
        assert doc["last_seq"] == 5 and [m["seq"] for m in doc["messages"]] == [1, 2, 3, 4, 5]
        first = doc["messages"][0]
        check_event(first, s1, 1, "first chat", "user", "alice", "Alice", "h1", {"k": "v"})
        assert doc["messages"][1:] == live, (doc["messages"][1:], live)
        doc = history(d.port, s1, tok_a, "?after_seq=2&limit=2")
        assert [m["seq"] for m in doc["messages"]] == [3, 4] and doc["last_seq"] == 5, doc
        doc = history(d.port, s1, tok_a, "?after_seq=5")
        assert doc["messages"] == [] and doc["last_seq"] == 5, doc
        doc = history(d.port, s1, tok_a, "?limit=1000")
        assert len(doc["messages"]) == 5, doc
        for q in ("?after_seq=-1", "?after_seq=abc", "?limit=0", "?limit=1001", "?limit=-3",
                  "?limit=x", "?after_seq=1.5"):
            status, body = api(d.port, "/api/sessions/%s/messages%s" % (s1, q), tok_a)
            assert status == 400, (q, status, body)
            assert body["error"]["code"] == "bad_request", (q, body)

        # Admin listing, help filter, roles.
        status, body = api(d.port, "/api/admin/sessions", tok_a)
        assert status == 403 and body["error"]["code"] == "forbidden", (status, body)
        status, body = api(d.port, "/api/admin/sessions", None)
        assert status == 401 and body["error"]["code"] == "unauthorized", (status, body)
        status, body = api(d.port, "/api/sessions", None)
        assert status == 401 and body["error"]["code"] == "unauthorized", (status, body)
        # The token may also come as ?token= (like the WebSocket's).
        status, doc = api(d.port, "/api/sessions?token=" + tok_b, None)
        assert status == 200 and [s["id"] for s in doc["sessions"]] == [s3], (status, doc)
        status, body = api(d.port, "/api/sessions", make_token("alice", secret="x" * 40))
        assert status == 401 and body["error"]["code"] == "unauthorized", (status, body)
        status, doc = api(d.port, "/api/admin/sessions", tok_root)
        assert status == 200, (status, doc)
        # Triage order: help requested first (none yet), then the longest
        # waiting (every session's first user message is still unanswered:
        # s1 was written first, then s2, then s3).
        assert [s["id"] for s in doc["sessions"]] == [s1, s2, s3], doc
        for s in doc["sessions"]:
            assert set(s) == {"id", "title", "owner", "owner_name", "created_at", "updated_at",
                              "last_seq", "help_requested", "model", "preview",
                              "waiting_since", "waiting_ms", "admins", "help"}, s
        assert [(s["owner"], s["owner_name"], s["title"]) for s in doc["sessions"]] == [
            ("alice", "Alice", "first chat"), ("alice", "Alice", "second chat"),
            ("bob", "bob", "bob's chat")], doc
        status, doc = api(d.port, "/api/admin/sessions?help=1", tok_root)
        assert status == 200 and doc["sessions"] == [], doc
        bob.send_json({"type": "help_request", "id": "hr", "session_id": s3})
        hack = check_ack(bob.recv_json(), "hr", s3)
        assert hack["seq"] == 2 and "duplicate" not in hack, hack
        check_session_event(bob.recv_json(), "help_request", s3, 2,
                            {"type": "user", "id": "bob", "name": "bob"})
        status, doc = api(d.port, "/api/admin/sessions?help=1", tok_root)
        assert [s["id"] for s in doc["sessions"]] == [s3], doc
        assert doc["sessions"][0]["help_requested"] is True, doc
        status, doc = api(d.port, "/api/admin/sessions?help=0", tok_root)
        assert [s["id"] for s in doc["sessions"]] == [s3, s1, s2], doc
        status, body = api(d.port, "/api/admin/sessions?help=2", tok_root)
        assert status == 400, (status, body)
        # An admin reads anyone's history (the help request is stored).
        assert len(history(d.port, s3, tok_root)["messages"]) == 2
        # Only the caller's own sessions for /api/sessions, admin or not.
        assert sessions(d.port, tok_root) == []
        status, body = api(d.port, "/api/sessions/%s/messages" % NO_SUCH, tok_root)
        assert status == 404 and body["error"]["code"] == "session_not_found", body
        close_all(alice, bob)


def test_prefix_applies_to_chat_and_api():
    with server("--prefix", "/chat") as d:
        ws = WS(d.port, path="/chat/ws", token=token("alice"))
        assert recv_type(ws, "connection_status")["user_id"] == "alice"
        sid = post(ws, "hi")[0]["session_id"]
        status, doc = api(d.port, "/chat/api/sessions", token("alice"))
        assert status == 200 and [s["id"] for s in doc["sessions"]] == [sid], (status, doc)
        status, doc = api(d.port, "/chat/api/sessions/%s/messages" % sid, token("alice"))
        assert status == 200 and doc["last_seq"] == 1, (status, doc)
        assert api(d.port, "/api/sessions", token("alice"))[0] == 404
        close_all(ws)


# ---- metrics --------------------------------------------------------------------------

METRIC_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')


def scrape(port):
    status, headers, body = http_get(port, "/metrics")
    assert status == 200, status
    assert headers["content-type"].startswith("text/plain"), headers
    values, types = {}, {}
    for line in body.decode().splitlines():
        if not line:
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
            continue
        if line.startswith("#"):
            continue
        m = METRIC_LINE.match(line)
        assert m, "not a Prometheus sample line: %r" % line
        values[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return values, types


def check_histogram(values, name):
    buckets = [(k, v) for k, v in values.items() if k.startswith(name + "_bucket{")]
    assert buckets, "no buckets for " + name
    counts = [v for _, v in buckets]
    assert counts == sorted(counts), "%s buckets not cumulative: %r" % (name, buckets)
    assert values[name + '_bucket{le="+Inf"}'] == values[name + "_count"], name
    return values[name + "_count"], values[name + "_sum"]


def test_metrics_after_traffic():
    with server() as d:
        a1 = connect(d.port, "alice")
        a2 = connect(d.port, "alice")
        bob = connect(d.port, "bob")
        adm = connect(d.port, ROOT, admin=True)
        received = 4  # connection_status frames

        sid = post(a1, "m1")[0]["session_id"]
        a2.recv_json()
        for c in ("m2", "m3"):
            post(a1, c, sid)
            a2.recv_json()
        received += 3 * 3
        a1.send_json({"type": "typing_indicator", "session_id": sid, "typing": True})
        recv_type(a2, "typing_indicator")
        a1.send_json({"type": "read", "session_id": sid, "seq": 3})
        recv_type(a2, "read")
        received += 2
        a1.send_json({"type": "help_request", "id": "h", "session_id": sid})
        assert check_ack(a1.recv_json(), "h", sid)["seq"] == 4
        for ws in (a1, a2, adm):
            recv_type(ws, "help_request")
        a1.send_json({"type": "model_select", "id": "ms", "session_id": sid, "model_id": "m1"})
        check_ack(a1.recv_json(), "ms", sid, seq=False)
        # Seq 4 (the help request) was sent live: nothing to replay.
        a1.send_json({"type": "resume", "session_id": sid, "after_seq": 3})
        recv_type(a1, "resumed")
        received += 6
        root = {"type": "admin", "id": ROOT, "name": ROOT}
        admin_event(adm, "admin_join", "j", sid, 5, root, (a1, a2))
        send_msg(adm, "hello", sid, "am", mtype="admin_message")
        check_ack(adm.recv_json(), "am", sid)
        for ws in (adm, a1, a2):
            recv_type(ws, "admin_message")
        admin_event(adm, "admin_leave", "l", sid, 7, root, (a1, a2))
        received += 4 + 4 + 4
        # Errors: one session_not_found, two invalid_field, one forbidden.
        send_msg(bob, "intrude", sid, "e1")
        expect_error(bob, "session_not_found", "e1")
        send_msg(a1, "", sid, "e2")
        expect_error(a1, "invalid_field", "e2")
        a1.send_json({"type": "model_select", "id": "e3", "session_id": sid, "model_id": "zz"})
        expect_error(a1, "invalid_field", "e3")
        bob.send_json({"type": "admin_join", "id": "e4", "session_id": sid})
        expect_error(bob, "forbidden", "e4")
        received += 4

        v, types = scrape(d.port)
        assert v["chatd_connections_open"] == 4, v["chatd_connections_open"]
        assert types.get("chatd_connections_open") == "gauge", types
        # Devices per online user: alice 2, bob 1, root 1.
        assert types.get("chatd_user_devices") == "histogram", types
        count, total = check_histogram(v, "chatd_user_devices")
        assert count == 3 and total == 4, (count, total)
        assert v['chatd_user_devices_bucket{le="1"}'] == 2, v
        assert v['chatd_user_devices_bucket{le="2"}'] == 3, v
        want_in = {"user_message": 5, "typing_indicator": 1, "read": 1, "help_request": 1,
                   "model_select": 2, "resume": 1, "admin_join": 2, "admin_message": 1,
                   "admin_leave": 1}
        for t, n in want_in.items():
            key = 'chatd_messages_in_total{type="%s"}' % t
            assert v.get(key) == n, (key, v.get(key), n)
        assert types.get("chatd_messages_in_total") == "counter", types
        assert v["chatd_ws_messages_out_total"] >= received, (v["chatd_ws_messages_out_total"],
                                                              received)
        assert v["chatd_send_queue_drops_total"] == 0, v
        want_err = {"session_not_found": 1, "invalid_field": 2, "forbidden": 1, "bad_json": 0,
                    "unknown_type": 0, "content_too_large": 0, "rate_limited": 0,
                    "unavailable": 0}
        for code, n in want_err.items():
            key = 'chatd_errors_total{code="%s"}' % code
            assert v.get(key) == n, (key, v.get(key), n)
        assert types.get("chatd_errors_total") == "counter", types
        # Storage: 11 requests went through the writer (3+1 appends, typing,
        # read, help, model, join, admin message, leave).
        assert types.get("chatd_store_commit_seconds") == "histogram", types
        commits, secs = check_histogram(v, "chatd_store_commit_seconds")
        assert 1 <= commits <= 11 and secs > 0, (commits, secs)
        assert types.get("chatd_store_batch_size") == "histogram", types
        batches, reqs = check_histogram(v, "chatd_store_batch_size")
        assert batches == commits and reqs == 11, (batches, reqs)

        close_all(bob)
        deadline = time.time() + 5 * SLACK
        while scrape(d.port)[0]["chatd_connections_open"] != 3:
            assert time.time() < deadline, "chatd_connections_open did not drop to 3"
            time.sleep(0.05)
        close_all(a1, a2, adm)


def test_metrics_count_every_error_reply():
    """chatd_errors_total counts error replies by code, including those for
    frames that never reach a message handler (bad JSON, unknown type, a bad
    id or type field)."""
    with server() as d:
        a = connect(d.port, "alice")
        a.send("{oops")
        expect_error(a, "bad_json")
        a.send_json({"type": "nope", "id": "u"})
        expect_error(a, "unknown_type", "u")
        a.send_json({"type": "user_message", "content": "x", "id": ""})
        expect_error(a, "invalid_field")
        a.send_json({"content": "x"})
        expect_error(a, "invalid_field")
        a.send_json({"type": "typing_indicator", "typing": True})  # no session_id
        expect_error(a, "invalid_field")
        v, _ = scrape(d.port)
        got = {c: v.get('chatd_errors_total{code="%s"}' % c)
               for c in ("bad_json", "unknown_type", "invalid_field")}
        assert got == {"bad_json": 1, "unknown_type": 1, "invalid_field": 3}, \
            "error replies sent: bad_json 1, unknown_type 1, invalid_field 3; metrics: %r" % got
        close_all(a)


# ---- encryption at rest ---------------------------------------------------------------

def db_bytes(db):
    data = b""
    for p in glob.glob(db + "*"):
        with open(p, "rb") as f:
            data += f.read()
    assert data, "no database files at " + db
    return data


def write_and_read_back(db, key_file, secret):
    """Store three messages with `secret` in their content, read them back by
    history and by resume, stop chatd. Returns the session id."""
    extra = ("--db", db) + (("--encryption-key-file", key_file) if key_file else ())
    with server(*extra) as d:
        a = connect(d.port, "alice")
        sid = None
        contents = ["%s #%d" % (secret, i) for i in range(3)]
        for c in contents:
            sid = post(a, c, sid)[0]["session_id"]
        msgs = history(d.port, sid, token("alice"))["messages"]
        assert [m["content"] for m in msgs] == contents, msgs
        b = connect(d.port, "alice")
        b.send_json({"type": "resume", "session_id": sid, "after_seq": 0})
        assert [b.recv_json()["content"] for _ in range(3)] == contents
        recv_type(b, "resumed")
        close_all(a, b)
    return sid, contents


def test_encryption_at_rest():
    tmp = tempfile.mkdtemp(prefix="chatd-enc-")
    try:
        raw_key = os.path.join(tmp, "raw.key")
        with open(raw_key, "wb") as f:
            f.write(os.urandom(32))
        hex_key = os.path.join(tmp, "hex.key")
        with open(hex_key, "w") as f:
            f.write(os.urandom(32).hex() + "\n")

        # Control: without a key the content is in the file, so the check
        # below can see plaintext when it is there.
        plain_db = os.path.join(tmp, "plain.db")
        secret = "PLAINTEXT-MARKER-" + os.urandom(8).hex()
        write_and_read_back(plain_db, None, secret)
        assert secret.encode() in db_bytes(plain_db), "control: plaintext not found"

        for key_file in (raw_key, hex_key):
            db = os.path.join(tmp, os.path.basename(key_file) + ".db")
            secret = "TOP-SECRET-" + os.urandom(8).hex()
            sid, contents = write_and_read_back(db, key_file, secret)
            data = db_bytes(db)
            assert secret.encode() not in data, "plaintext content in %s" % db
            assert secret[:12].encode() not in data, "plaintext content in %s" % db
            # Restarted with the same key, history still decrypts.
            with server("--db", db, "--encryption-key-file", key_file) as d:
                msgs = history(d.port, sid, token("alice"))["messages"]
                assert [m["content"] for m in msgs] == contents, msgs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_encryption_key_file_must_be_32_bytes():
    tmp = tempfile.mkdtemp(prefix="chatd-key-")
    try:
        bad = {"short.key": os.urandom(31), "long.key": os.urandom(33),
               "hex63.key": b"a" * 63 + b"\n", "hex65.key": b"a" * 65,
               "nothex.key": b"g" * 64, "empty.key": b""}
        paths = []
        for name, data in bad.items():
            p = os.path.join(tmp, name)
            with open(p, "wb") as f:
                f.write(data)
            paths.append(p)
        paths.append(os.path.join(tmp, "missing.key"))
        for p in paths:
            proc = subprocess.run(
                [CHATD_BIN, "--listen", "127.0.0.1:0", "--jwt-secret", TEST_SECRET, "--db",
                 os.path.join(tmp, "x.db"), "--encryption-key-file", p],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30 * SLACK)
            err = proc.stderr.decode(errors="replace")
            assert proc.returncode == 2, (p, proc.returncode, err)
            assert "--encryption-key-file" in err, (p, err)
            for marker in SANITIZER_MARKERS:
                assert marker not in err, (p, err)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    run([test_connection_status_lists_models, test_ack_before_event_and_second_device,
         test_dedup_same_id, test_new_session_retry_finds_the_session,
         test_typing_relayed_not_echoed, test_read_relayed_to_other_participants,
         test_help_request_reaches_admins, test_model_select, test_admin_join_leave_message,
         test_admin_requests_in_order_without_waiting,
         test_resume, test_resume_exactly_once_during_live_traffic,
         test_resume_after_admin_rejoin_fills_the_hole, test_authorization_between_users,
         test_rate_limit, test_rate_limit_survives_reconnect, test_validation_of_every_field,
         test_unavailable_without_storage, test_http_api,
         test_prefix_applies_to_chat_and_api, test_metrics_after_traffic,
         test_metrics_count_every_error_reply, test_encryption_at_rest,
         test_encryption_key_file_must_be_32_bytes])
