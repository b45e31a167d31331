"""The two ways chatd reads a user_message or admin_message answer alike.

The hub reads the common shape (string members type, id, session_id and
content, nothing else) without building a JSON tree; anything else goes the
general way. Each case below is sent twice by the same kind of client: once
in that shape, once with one more member ("x": 1, which the protocol
ignores) so that the general path reads it. The answers must be the same:
the same error code and text, or an ack with the same fields, and the same
content stored and delivered. Real sockets, the real binary, a real SQLite
file.
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from harness import WS, Chatd, make_token  # noqa: E402

BASE = ("--rate-limit", "100000", "--input-rate", "100000", "--input-byte-rate", "1000000000",
        "--max-content-bytes", "1000")

_n = [0]


def cid(prefix):
    _n[0] += 1
    return "%s-%d" % (prefix, _n[0])


def connect(port, sub, admin=False):
    claims = {"roles": ["admin"]} if admin else {}
    ws = WS(port, path="/ws", token=make_token(sub, **claims))
    st = ws.recv_json()
    assert st["type"] == "connection_status", st
    return ws


def general(text):
    """The same message with one member more: read by the general path."""
    assert text.endswith("}")
    return text[:-1] + ',"x":1}'


def answer(ws, want_id):
    """The next answer to want_id (acks and errors carry the client id)."""
    for _ in range(50):
        m = ws.recv_json()
        if m.get("id") == want_id or m.get("type") == "error" and want_id is None:
            return m
    raise AssertionError("no answer to %r" % want_id)


def shape(m):
    """What must match between the paths: an error's code and text, or an
    ack's fields (values that differ by nature, seq and time, left out)."""
    if m["type"] == "error":
        return ("error", m.get("code"), m.get("message"))
    return (m["type"], tuple(sorted(m)))


def both(ws, make):
    """Send make(id) as it is and through the general path; the answers."""
    a_id, b_id = cid("fast"), cid("gen")
    ta, tb = make(a_id), make(b_id)
    ws.send(ta)
    a = answer(ws, json.loads(ta).get("id"))
    ws.send(general(tb))
    b = answer(ws, json.loads(tb).get("id"))
    assert shape(a) == shape(b), (ta, a, b)
    return a, b


def test_same_answers():
    with Chatd(*BASE) as srv:
        alice = connect(srv.port, "alice")
        root = connect(srv.port, "root", admin=True)
        eve = connect(srv.port, "eve")

        # A new session each, then messages in alice's first.
        a, b = both(alice, lambda i: json.dumps({"type": "user_message", "id": i,
                                                  "content": "hello"}))
        assert a["type"] == "ack" and a["session_id"] != b["session_id"], (a, b)
        sid = a["session_id"]

        def in_sid(content, typ="user_message", s=None):
            return lambda i: json.dumps({"type": typ, "id": i, "session_id": s or sid,
                                         "content": content})

        # Escapes, non-ASCII and a long content are stored byte for byte.
        tricky = 'quote " slash \\ tab\t nl\n \u00e9\u4e2d\U0001F600 \u2028 /'
        a, b = both(alice, in_sid(tricky))
        assert a["type"] == "ack", a
        # Every error the checks give, alike.
        cases = [
            in_sid(""),                                   # empty content
            in_sid("x" * 1001),                           # over --max-content-bytes
            in_sid("hi", s="s_nothexnothexnothexnothe"),  # not the shape of an id
            in_sid("hi", s="s_" + "0" * 24),              # no such session
        ]
        for make in cases:
            a, b = both(alice, make)
            assert a["type"] == "error", a
        # Another user's session is not found either.
        a, b = both(eve, in_sid("mine?"))
        assert a["type"] == "error" and a["code"] == "session_not_found", a
        # admin_message: the role, the session, the join.
        a, b = both(alice, in_sid("hi", typ="admin_message"))
        assert a["code"] == "forbidden", a
        a, b = both(root, lambda i: json.dumps({"type": "admin_message", "id": i,
                                                "content": "hi"}))
        assert a["code"] == "invalid_field", a
        a, b = both(root, in_sid("hi", typ="admin_message"))
        assert a["code"] == "forbidden" and "admin_join" in a["message"], a
        root.send_json({"type": "admin_join", "id": "j1", "session_id": sid})
        answer(root, "j1")
        a, b = both(root, in_sid("from support", typ="admin_message"))
        assert a["type"] == "ack", a
        # An id of 64 bytes is the longest (65 goes the general way and is refused).
        a, b = both(alice, lambda i: json.dumps({"type": "user_message",
                                                  "id": (i + "." * 64)[:64],
                                                  "session_id": sid, "content": "long id"}))
        assert a["type"] == "ack", a
        long_id = "y" * 65
        alice.send(json.dumps({"type": "user_message", "id": long_id, "session_id": sid,
                               "content": "too long an id"}))
        m = answer(alice, None)
        assert m["code"] == "invalid_field", m

        # What was stored: each fast message's content equals its twin's.
        # (A new device: a resume replays what its connection was not sent.)
        later = connect(srv.port, "alice")
        later.send_json({"type": "resume", "id": "r1", "session_id": sid, "after_seq": 0})
        contents = []
        for _ in range(200):
            m = later.recv_json()
            if m.get("type") in ("user_message", "admin_message") and m.get("session_id") == sid:
                contents.append(m["content"])
            if m.get("type") == "resumed" or m.get("type") == "error":
                break
        assert m.get("type") == "resumed", m
        assert contents.count("hello") == 1, contents  # the other "hello" made a session
        assert contents.count(tricky) == 2, contents
        assert contents.count("from support") == 2, contents
        assert contents.count("long id") == 2, contents
        assert len(contents) == 7, contents  # no refused message was stored
        for ws in (alice, root, eve, later):
            ws.close()


if __name__ == "__main__":
    import traceback
    failed = 0
    for name, fn in sorted(globals().items()):
        if name.startswith("test_") and callable(fn):
            try:
                fn()
                print("ok   " + name)
            except Exception:
                failed += 1
                print("FAIL " + name)
                traceback.print_exc()
    print("%d passed, %d failed" % (1 - failed, failed))
    sys.exit(1 if failed else 0)
