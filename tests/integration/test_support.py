"""The support workflow of protocol 1.1 (issue 13), end to end.

Through real sockets against the real binary: session titles, renaming,
one session's details, share links (and their expiry, by editing the
database of a stopped chatd), resolve_help, the admins' triage list, the
admin statistics, the devices endpoint and the refused 11th device,
refused upgrades in /metrics, and --dev keeping its secret across a
restart. Standard library only.
"""
import datetime
import json
import os
import re
import select
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from harness import (CHATD_BIN, SANITIZER_MARKERS, WS, Chatd, http_raw,  # noqa: E402
                     make_token, parse_response, run, upgrade_request)
from test_chat_protocol import (NO_SUCH, ROOT, SLACK, TS_RE, admin_event, api,  # noqa: E402
                                check_ack, check_session_event, close_all, connect, history,
                                post, quiet, recv_type, scrape, send_msg, server, sessions,
                                token)

ADMIN_NAME = "Root"
SESSION_KEYS = {"id", "title", "owner", "created", "updated", "last_seq", "help", "admins",
                "read", "model"}


# ---- helpers ------------------------------------------------------------------

def http(port, method, path, tok=None, body=None, raw=None, headers=None):
    """One request with Connection: close and, for a body, Content-Length.
    body: JSON (encoded here); raw: bytes as they are. Returns (status,
    headers, decoded JSON or None)."""
    h = {"Host": "127.0.0.1", "Connection": "close"}
    if tok:
        h["Authorization"] = "Bearer " + tok
    data = b""
    if body is not None:
        data = json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    elif raw is not None:
        data = raw
    if data or method in ("POST", "PATCH"):
        h["Content-Length"] = str(len(data))
    h.update(headers or {})
    head = "%s %s HTTP/1.1\r\n" % (method, path) + "".join(
        "%s: %s\r\n" % kv for kv in h.items() if kv[1] is not None) + "\r\n"
    status, hdrs, resp = parse_response(http_raw(port, head.encode() + data))
    return status, hdrs, json.loads(resp) if resp else None


def http_error(status_doc, status, code):
    st, _, doc = status_doc
    assert st == status, (st, doc)
    assert doc["error"]["code"] == code, doc
    assert isinstance(doc["error"]["message"], str) and doc["error"]["message"], doc
    return doc


def admin_token(sub=ROOT, name=ADMIN_NAME):
    return make_token(sub, roles=["admin"], name=name)


def user_token(sub, name=None):
    return make_token(sub, **({"name": name} if name else {}))


def get_session(port, sid, tok):
    status, doc = api(port, "/api/sessions/" + sid, tok)
    assert status == 200, (status, doc)
    assert set(doc) == SESSION_KEYS, doc
    return doc


def rename(port, sid, tok, title):
    return http(port, "PATCH", "/api/sessions/" + sid, tok, {"title": title})


def title_of(port, sid, tok):
    by_id = {s["id"]: s for s in sessions(port, tok)}
    return by_id[sid]["title"]


def ms_of(ts):
    """RFC 3339 with milliseconds (UTC) to Unix milliseconds."""
    assert TS_RE.match(ts) or re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$", ts), ts
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ" if "." in ts else "%Y-%m-%dT%H:%M:%SZ"
    dt = datetime.datetime.strptime(ts, fmt).replace(tzinfo=datetime.timezone.utc)
    return round(dt.timestamp() * 1000)


def now_ms():
    return int(time.time() * 1000)


def wait_for(pred, what, timeout=5.0):
    deadline = time.time() + timeout * SLACK
    while True:
        v = pred()
        if v:
            return v
        assert time.time() < deadline, "timed out waiting for " + what
        time.sleep(0.05)


def connect_admin(port, sub=ROOT, name=ADMIN_NAME):
    return connect(port, sub, admin=True, name=name)


def admin_sender(sub=ROOT, name=ADMIN_NAME):
    return {"type": "admin", "id": sub, "name": name}


def admin_list(port, query=""):
    status, doc = api(port, "/api/admin/sessions" + query, admin_token())
    assert status == 200, (status, doc)
    return doc["sessions"]


# ---- titles --------------------------------------------------------------------------

TITLE_CASES = [
    # (first message, title): the first line, trimmed, cut at a word
    # boundary to at most 60 characters, no ellipsis.
    ("  Hello there, world  \nsecond line", "Hello there, world"),
    ("\n\n   \n  Real title\nmore", "Real title"),
    ("Windows line\r\nnext", "Windows line"),
    ("The quick brown fox jumps over the lazy dog while the cat sleeps all day long",
     "The quick brown fox jumps over the lazy dog while the cat"),
    ("a" * 60 + " tail", "a" * 60),          # a word ends exactly at 60
    ("b" * 59 + " cd", "b" * 59),            # the next word does not fit
    ("c" * 70, "c" * 60),                    # one word longer than the limit
    ("\u00e9" * 59 + " ok", "\u00e9" * 59),  # characters, not bytes
    ("\u00fc" * 60, "\u00fc" * 60),
    ("short", "short"),
]


def test_titles():
    with server() as d:
        a1 = connect(d.port, "alice", name="Alice")
        a2 = connect(d.port, "alice", name="Alice")
        tok1, tok2 = user_token("alice", "Alice"), user_token("alice", "Alice")
        sids = []
        for content, want in TITLE_CASES:
            ack, _ = post(a1, content)
            a2.recv_json()
            sid = ack["session_id"]
            sids.append(sid)
            # Set by the first message at once; a prefix of its first line.
            got = title_of(d.port, sid, tok1)
            assert got == want, "title of %r: %r, expected %r" % (content, got, want)
            assert get_session(d.port, sid, tok1)["title"] == want
        sid = sids[0]
        want = TITLE_CASES[0][1]
        # Later messages (by the owner, by an admin) do not change it.
        adm = connect_admin(d.port)
        admin_event(adm, "admin_join", "j", sid, 2, admin_sender(), (a1, a2))
        for content in ("A different first line\nand more", "x"):
            post(a1, content, sid)
            a2.recv_json()
            adm.recv_json()
        send_msg(adm, "An admin speaks", sid, "am", mtype="admin_message")
        check_ack(adm.recv_json(), "am", sid)
        for ws in (adm, a1, a2):
            recv_type(ws, "admin_message")
        assert title_of(d.port, sid, tok1) == want
        # Two devices (two tokens) see the same titles.
        assert sessions(d.port, tok1) == sessions(d.port, tok2)
        # A rename is kept through later messages; both devices see it.
        st, _, doc = rename(d.port, sid, tok1, "Renamed by Alice")
        assert st == 200 and doc["title"] == "Renamed by Alice", (st, doc)
        for ws in (a1, a2):
            n = recv_type(ws, "notification")
            assert n["code"] == "session_renamed" and n["title"] == "Renamed by Alice", n
        post(a1, "Another line that could be a title", sid)
        a2.recv_json()
        adm.recv_json()
        for tok in (tok1, tok2):
            assert title_of(d.port, sid, tok) == "Renamed by Alice"
            assert get_session(d.port, sid, tok)["title"] == "Renamed by Alice"
        assert get_session(d.port, sid, admin_token())["title"] == "Renamed by Alice"
        assert [s["title"] for s in admin_list(d.port) if s["id"] == sid] == ["Renamed by Alice"]
        quiet(a1, a2, adm)
        close_all(a1, a2, adm)


def test_titles_sealed_at_rest():
    """With an encryption key, a title (derived or given) is not in the
    database file in clear, and reads back after a restart."""
    tmp = tempfile.mkdtemp(prefix="chatd-title-")
    try:
        key = os.path.join(tmp, "k")
        with open(key, "wb") as f:
            f.write(os.urandom(32))
        db = os.path.join(tmp, "c.db")
        first = "FIRSTLINE-" + os.urandom(6).hex()
        renamed = "RENAMED-" + os.urandom(6).hex()
        args = ("--db", db, "--encryption-key-file", key)
        with server(*args) as d:
            a = connect(d.port, "alice")
            sid = post(a, first + "\nbody")[0]["session_id"]
            tok = user_token("alice")
            assert title_of(d.port, sid, tok) == first
            sid2 = post(a, "other " + first)[0]["session_id"]
            st, _, doc = rename(d.port, sid2, tok, renamed)
            assert st == 200, (st, doc)
            recv_type(a, "notification")
            close_all(a)
        data = b""
        for name in os.listdir(tmp):
            if name.startswith("c.db"):
                with open(os.path.join(tmp, name), "rb") as f:
                    data += f.read()
        assert first.encode() not in data and renamed.encode() not in data, \
            "a title is in the database in clear"
        with server(*args) as d:
            tok = user_token("alice")
            assert title_of(d.port, sid, tok) == first
            assert title_of(d.port, sid2, tok) == renamed
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- PATCH rename -------------------------------------------------------------------

def test_rename():
    with server() as d:
        a1 = connect(d.port, "alice", name="Alice")
        a2 = connect(d.port, "alice", name="Alice")
        adm = connect_admin(d.port)
        bob = connect(d.port, "bob")
        tok = user_token("alice", "Alice")
        sid = post(a1, "original title")[0]["session_id"]
        a2.recv_json()
        admin_event(adm, "admin_join", "j", sid, 2, admin_sender(), (a1, a2))
        before = get_session(d.port, sid, tok)

        # The owner: 200 with the session object, as GET shows it after.
        for title in ("x", "A better title", "\u00e9" * 50, "y" * 100, "  spaced  "):
            st, _, doc = rename(d.port, sid, tok, title)
            assert st == 200, (title, st, doc)
            assert set(doc) == SESSION_KEYS and doc["title"] == title, doc
            assert doc == get_session(d.port, sid, tok), doc
            assert doc["updated"] >= before["updated"] and doc["last_seq"] == 2, doc
            assert doc["id"] == sid and doc["owner"] == {"id": "alice", "name": "Alice"}, doc
            # Every device of the owner is told; the joined admin is not.
            for ws in (a1, a2):
                n = ws.recv_json()
                assert n == {"type": "notification", "code": "session_renamed",
                             "message": n.get("message"), "session_id": sid,
                             "title": title}, n
                assert isinstance(n["message"], str) and n["message"], n
            quiet(adm, bob)
        # Not stored as an event.
        assert history(d.port, sid, tok)["last_seq"] == 2

        # Refused: empty, too long (bytes), control characters, not a string.
        current = get_session(d.port, sid, tok)["title"]
        for bad in ("", "y" * 101, "\u00e9" * 50 + "a", "line\nbreak", "tab\there", "\x1f",
                    "del\x7f", "cr\r"):
            http_error(rename(d.port, sid, tok, bad), 400, "invalid_field")
        for body in ({"title": 5}, {"title": None}, {"title": ["a"]}, {}, {"name": "x"}):
            http_error(http(d.port, "PATCH", "/api/sessions/" + sid, tok, body), 400,
                       "invalid_field")
        for raw in (b"not json", b"[1]", b'"title"'):
            http_error(http(d.port, "PATCH", "/api/sessions/" + sid, tok, raw=raw), 400,
                       "bad_json")
        # A chunked body: 400, nothing changed.
        st, _, doc = http(d.port, "PATCH", "/api/sessions/" + sid, tok,
                          raw=b'14\r\n{"title":"chunked!"}\r\n0\r\n\r\n',
                          headers={"Transfer-Encoding": "chunked"})
        assert st == 400 and doc["error"]["code"] == "bad_request", (st, doc)
        # A body over 8 KiB: 413.
        st, _, doc = http(d.port, "PATCH", "/api/sessions/" + sid, tok,
                          {"title": "z", "pad": "p" * 9000})
        assert st == 413, (st, doc)
        assert get_session(d.port, sid, tok)["title"] == current
        quiet(a1, a2)

        # An admin: 403 (it may see the session, not rename it); another
        # user, or an unknown session: 404; no token: 401.
        http_error(rename(d.port, sid, admin_token(), "by admin"), 403, "forbidden")
        bob_404 = http_error(rename(d.port, sid, user_token("bob"), "by bob"), 404,
                             "session_not_found")
        unknown = http_error(rename(d.port, NO_SUCH, tok, "nope"), 404, "session_not_found")
        assert bob_404 == unknown, (bob_404, unknown)
        http_error(rename(d.port, sid, None, "anon"), 401, "unauthorized")
        assert get_session(d.port, sid, tok)["title"] == current
        quiet(a1, a2, adm, bob)
        close_all(a1, a2, adm, bob)


# ---- GET /api/sessions/{id} ------------------------------------------------------------

def test_session_details():
    with server() as d:
        a1 = connect(d.port, "alice", name="Alice")
        adm = connect_admin(d.port)
        adm_b = connect_admin(d.port)  # the same admin's second device
        adm2 = connect_admin(d.port, "root2", "Second")
        bob = connect(d.port, "bob")
        tok = user_token("alice", "Alice")
        ack, ev = post(a1, "details please")
        sid = ack["session_id"]

        doc = get_session(d.port, sid, tok)
        assert doc == {"id": sid, "title": "details please",
                       "owner": {"id": "alice", "name": "Alice"}, "created": ev["timestamp"],
                       "updated": ev["timestamp"], "last_seq": 1, "help": False, "admins": [],
                       "read": {}, "model": None}, doc
        # An admin sees the same, joined or not.
        assert get_session(d.port, sid, admin_token()) == doc
        # Another user, an unknown session: 404 alike; no token: 401.
        other = http_error(http(d.port, "GET", "/api/sessions/" + sid, user_token("bob")), 404,
                           "session_not_found")
        unknown = http_error(http(d.port, "GET", "/api/sessions/" + NO_SUCH, tok), 404,
                             "session_not_found")
        assert other == unknown, (other, unknown)
        assert api(d.port, "/api/sessions/" + sid, None)[0] == 401

        # Joined admins, now: each admin once, whichever devices joined.
        admin_event(adm, "admin_join", "j1", sid, 2, admin_sender(), (a1,))
        admin_event(adm_b, "admin_join", "j2", sid, 3, admin_sender(), (a1, adm))
        admin_event(adm2, "admin_join", "j3", sid, 4, admin_sender("root2", "Second"),
                    (a1, adm, adm_b))
        doc = get_session(d.port, sid, tok)
        assert sorted(doc["admins"], key=lambda a: a["id"]) == [
            {"id": ROOT, "name": ADMIN_NAME}, {"id": "root2", "name": "Second"}], doc
        admin_event(adm, "admin_leave", "l1", sid, 5, admin_sender(), (a1, adm_b, adm2))
        assert sorted(a["id"] for a in get_session(d.port, sid, tok)["admins"]) == [ROOT,
                                                                                      "root2"]
        # A joined admin's connection closes: an admin_leave of its own.
        close_all(adm_b)
        leave = check_session_event(recv_type(a1, "admin_leave"), "admin_leave", sid, 6,
                                    admin_sender())
        assert adm2.recv_json() == leave
        doc = get_session(d.port, sid, tok)
        assert doc["admins"] == [{"id": "root2", "name": "Second"}], doc
        assert doc["last_seq"] == 6 and doc["help"] is False, doc
        assert [m["type"] for m in history(d.port, sid, tok)["messages"]] == [
            "user_message", "admin_join", "admin_join", "admin_join", "admin_leave",
            "admin_leave"]

        # help, read markers per reader, model.
        a1.send_json({"type": "help_request", "id": "h", "session_id": sid})
        assert check_ack(a1.recv_json(), "h", sid)["seq"] == 7
        hev = recv_type(a1, "help_request")
        for ws in (adm, adm2):
            assert ws.recv_json() == hev
        a1.send_json({"type": "read", "session_id": sid, "seq": 7})
        recv_type(adm2, "read")
        adm2.send_json({"type": "read", "session_id": sid, "seq": 5})
        recv_type(a1, "read")
        a1.send_json({"type": "model_select", "id": "ms", "session_id": sid, "model_id": "m2"})
        check_ack(a1.recv_json(), "ms", sid, seq=False)
        doc = get_session(d.port, sid, tok)
        assert doc["help"] is True and doc["last_seq"] == 7, doc
        assert doc["read"] == {"alice": 7, "root2": 5}, doc
        assert doc["model"] == "m2", doc
        assert TS_RE.match(doc["created"]) and TS_RE.match(doc["updated"]), doc
        assert doc["updated"] >= doc["created"], doc
        assert get_session(d.port, sid, admin_token("root2", "Second")) == doc
        quiet(a1, adm, adm2, bob)
        close_all(a1, adm, adm2, bob)


# ---- share links ----------------------------------------------------------------------

SHARED_MESSAGE_KEYS = {"type", "seq", "sender", "content", "timestamp"}


def share(port, sid, tok, body=None):
    return http(port, "POST", "/api/sessions/%s/share" % sid, tok, body)


def shared(port, tok_or_url):
    token_part = tok_or_url.rsplit("/", 1)[-1]
    status, _, doc = http(port, "GET", "/api/shared/" + token_part)
    return status, doc


def check_link(doc, prefix, ttl_s, t0, t1):
    assert set(doc) == {"url", "token", "expires"}, doc
    assert re.match(r"^[A-Za-z0-9_-]{32}$", doc["token"]), doc
    assert doc["url"] == "%s/shared/%s" % (prefix, doc["token"]), doc
    exp = ms_of(doc["expires"])
    assert t0 + ttl_s * 1000 - 1000 <= exp <= t1 + ttl_s * 1000 + 1000, (doc, t0, t1)


def setup_shared_session(d):
    """Alice's session with messages and session events around them.
    Returns (sid, the history's events)."""
    a = connect(d.port, "alice", name="Alice")
    adm = connect_admin(d.port)
    ack, _ = post(a, "How do I share this?\nmore text", mid="secret-client-id",
                  metadata={"internal": "do-not-share"})
    sid = ack["session_id"]
    admin_event(adm, "admin_join", "j", sid, 2, admin_sender(), (a,))
    send_msg(adm, "Like this.", sid, "am", mtype="admin_message")
    check_ack(adm.recv_json(), "am", sid)
    recv_type(adm, "admin_message")
    recv_type(a, "admin_message")
    a.send_json({"type": "help_request", "id": "h", "session_id": sid})
    check_ack(a.recv_json(), "h", sid)
    recv_type(a, "help_request")
    recv_type(adm, "help_request")
    admin_event(adm, "resolve_help", "r", sid, 5, admin_sender(), (a,))
    post(a, "Thanks!", sid)
    recv_type(adm, "user_message")
    admin_event(adm, "admin_leave", "l", sid, 7, admin_sender(), (a,))
    close_all(a, adm)
    return sid, history(d.port, sid, user_token("alice", "Alice"))["messages"]


def check_shared_view(doc, title, events, expires):
    """What a link shows: the title and the messages (user, admin, ai) with
    sender type and name, no ids, no metadata, no session events."""
    assert set(doc) == {"title", "expires", "messages"}, doc
    assert doc["title"] == title and doc["expires"] == expires, doc
    want = [{"type": e["type"], "seq": e["seq"],
             "sender": {"type": e["sender"]["type"], "name": e["sender"]["name"]},
             "content": e["content"], "timestamp": e["timestamp"]}
            for e in events if e["type"] in ("user_message", "admin_message", "ai_response")]
    assert doc["messages"] == want, (doc["messages"], want)
    for m in doc["messages"]:
        assert set(m) == SHARED_MESSAGE_KEYS and set(m["sender"]) == {"type", "name"}, m
    text = json.dumps(doc)
    for leak in ("secret-client-id", "do-not-share", "internal", '"alice"', ROOT, "s_"):
        assert leak not in text, "the shared view shows %r: %s" % (leak, text)


def test_share_links():
    with server() as d:
        sid, events = setup_shared_session(d)
        assert [e["type"] for e in events] == [
            "user_message", "admin_join", "admin_message", "help_request", "help_resolved",
            "user_message", "admin_leave"], events
        tok = user_token("alice", "Alice")
        title = "How do I share this?"

        t0 = now_ms()
        st, _, link = share(d.port, sid, tok)
        t1 = now_ms()
        assert st == 201, (st, link)
        check_link(link, "", 604800, t0, t1)  # a week by default
        st, _, link2 = share(d.port, sid, tok, {"ttl_seconds": 60})
        assert st == 201, (st, link2)
        check_link(link2, "", 60, t0, now_ms())
        assert link2["token"] != link["token"]
        t0 = now_ms()
        st, _, link3 = share(d.port, sid, tok, {"ttl_seconds": 2592000})
        assert st == 201, (st, link3)
        check_link(link3, "", 2592000, t0, now_ms())

        # The view needs no credentials; it is the same for every link but
        # for its expiry.
        for ln in (link, link2, link3):
            st, doc = shared(d.port, ln["url"])
            assert st == 200, (st, doc)
            check_shared_view(doc, title, events, ln["expires"])
        # A credential changes nothing.
        st, _, doc = http(d.port, "GET", "/api/shared/" + link["token"], tok)
        assert st == 200 and doc["messages"] == shared(d.port, link["token"])[1]["messages"]
        # A rename shows in the view.
        assert rename(d.port, sid, tok, "Shared and renamed")[0] == 200
        assert shared(d.port, link["token"])[1]["title"] == "Shared and renamed"

        # Unknown tokens: 404, whatever their shape.
        for bad in ("A" * 32, link["token"][:-1] + ("B" if link["token"][-1] != "B" else "C"),
                    "short", link["token"] + "x"):
            st, doc = shared(d.port, bad)
            assert st == 404 and "error" in doc, (bad, st, doc)

        # ttl_seconds out of 60..2592000, or not an integer: 400.
        for body in ({"ttl_seconds": 59}, {"ttl_seconds": 0}, {"ttl_seconds": -60},
                     {"ttl_seconds": 2592001}, {"ttl_seconds": "60"}, {"ttl_seconds": 60.5},
                     {"ttl_seconds": None}):
            http_error(share(d.port, sid, tok, body), 400, "invalid_field")
        http_error(http(d.port, "POST", "/api/sessions/%s/share" % sid, tok, raw=b"[60]"), 400,
                   "bad_json")
        # Only the owner shares or revokes: an admin 403, another user and
        # an unknown session 404, no token 401.
        for method in ("POST", "DELETE"):
            path = "/api/sessions/%s/share" % sid
            http_error(http(d.port, method, path, admin_token()), 403, "forbidden")
            http_error(http(d.port, method, path, user_token("bob")), 404, "session_not_found")
            http_error(http(d.port, method, "/api/sessions/%s/share" % NO_SUCH, tok), 404,
                       "session_not_found")
            http_error(http(d.port, method, path, None), 401, "unauthorized")
        assert http(d.port, "GET", "/api/sessions/%s/share" % sid, tok)[0] == 405

        # DELETE revokes every link of the session at once.
        st, _, doc = http(d.port, "DELETE", "/api/sessions/%s/share" % sid, tok)
        assert st == 204 and doc is None, (st, doc)
        for ln in (link, link2, link3):
            st, doc = shared(d.port, ln["token"])
            assert st == 404 and "error" in doc, (st, doc)
        # Revoking again is fine; a new link works again.
        assert http(d.port, "DELETE", "/api/sessions/%s/share" % sid, tok)[0] == 204
        st, _, link4 = share(d.port, sid, tok)
        assert st == 201 and shared(d.port, link4["token"])[0] == 200


def test_share_link_with_prefix():
    with server("--prefix", "/chat") as d:
        a = connect_ws_prefixed(d.port, "/chat", "alice")
        ack, _ = post(a, "prefixed")
        sid = ack["session_id"]
        tok = user_token("alice")
        t0 = now_ms()
        st, _, link = http(d.port, "POST", "/chat/api/sessions/%s/share" % sid, tok)
        assert st == 201, (st, link)
        check_link(link, "/chat", 604800, t0, now_ms())
        st, _, doc = http(d.port, "GET", "/chat/api/shared/" + link["token"])
        assert st == 200 and doc["title"] == "prefixed", (st, doc)
        assert http(d.port, "GET", "/api/shared/" + link["token"])[0] == 404
        close_all(a)


def connect_ws_prefixed(port, prefix, sub):
    ws = WS(port, path=prefix + "/ws", token=token(sub))
    assert recv_type(ws, "connection_status")["user_id"] == sub
    return ws


def test_share_link_expiry():
    """A link past its expiry is 404. Waiting a minute is too slow: stop
    chatd, move the link's expires_at into the past in the database, start
    chatd again on the same file."""
    tmp = tempfile.mkdtemp(prefix="chatd-share-")
    db = os.path.join(tmp, "chat.db")
    try:
        with server("--db", db) as d:
            a = connect(d.port, "alice")
            sid = post(a, "expiring")[0]["session_id"]
            tok = user_token("alice")
            st, _, short = share(d.port, sid, tok, {"ttl_seconds": 60})
            assert st == 201, (st, short)
            st, _, long_ = share(d.port, sid, tok, {"ttl_seconds": 3600})
            assert st == 201, (st, long_)
            assert shared(d.port, short["token"])[0] == 200
            close_all(a)
        past = now_ms() - 1000
        edit_db(db, "UPDATE shares SET expires_at = %d WHERE token = '%s'" % (
            past, short["token"]))
        with server("--db", db) as d:
            st, doc = shared(d.port, short["token"])
            assert st == 404 and "error" in doc, (st, doc)
            st, doc = shared(d.port, long_["token"])
            assert st == 200 and doc["title"] == "expiring", (st, doc)
            assert doc["expires"] == long_["expires"], (doc, long_)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def edit_db(db, sql):
    """Run one statement on a stopped chatd's database: /usr/bin/sqlite3
    when installed, else Python's sqlite3 module. Exactly one row changes."""
    if os.path.exists("/usr/bin/sqlite3"):
        out = subprocess.run(["/usr/bin/sqlite3", db, sql + "; SELECT changes();"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        assert out.returncode == 0, out.stderr
        assert out.stdout.decode().strip().splitlines()[-1] == "1", out.stdout
        return
    con = sqlite3.connect(db)
    try:
        cur = con.execute(sql)
        assert cur.rowcount == 1, cur.rowcount
        con.commit()
    finally:
        con.close()


# ---- resolve_help ----------------------------------------------------------------------

def test_resolve_help():
    with server() as d:
        a1 = connect(d.port, "alice", name="Alice")
        a2 = connect(d.port, "alice", name="Alice")
        adm = connect_admin(d.port)                      # joined
        adm2 = connect_admin(d.port, "root2", "Second")  # online, not joined
        bob = connect(d.port, "bob")
        tok = user_token("alice", "Alice")
        sid = post(a1, "help me")[0]["session_id"]
        a2.recv_json()
        admin_event(adm, "admin_join", "j", sid, 2, admin_sender(), (a1, a2))

        # Nothing open: acked duplicate, no seq, no event. A wrong ack is
        # recorded and reported at the end, so that the rest is checked too.
        late_failures = []

        def check_duplicate(ack):
            if ack.get("duplicate") is not True:
                late_failures.append(
                    "resolve_help with no open help request was acked %s: expected "
                    "\"duplicate\": true (and no seq)" % json.dumps(ack))

        adm.send_json({"type": "resolve_help", "id": "r0", "session_id": sid})
        check_duplicate(check_ack(adm.recv_json(), "r0", sid, seq=False))
        quiet(a1, a2, adm, adm2)
        assert get_session(d.port, sid, tok)["last_seq"] == 2

        a1.send_json({"type": "help_request", "id": "h1", "session_id": sid})
        assert check_ack(a1.recv_json(), "h1", sid)["seq"] == 3
        hev = recv_type(a1, "help_request")
        for ws in (a2, adm, adm2):
            assert ws.recv_json() == hev
        assert get_session(d.port, sid, tok)["help"] is True

        # Not an admin, even the owner: forbidden; nothing changes.
        for ws in (a1, bob):
            ws.send_json({"type": "resolve_help", "id": "nope", "session_id": sid})
            e = ws.recv_json()
            assert e["type"] == "error" and e["code"] == "forbidden" and e["id"] == "nope", e
        quiet(a1, a2, adm, adm2, bob)
        assert get_session(d.port, sid, tok)["help"] is True

        # An admin that has not joined resolves: ack with the seq, the event
        # to the session's participants and every admin online, once each.
        adm2.send_json({"type": "resolve_help", "id": "r1", "session_id": sid})
        rack = check_ack(adm2.recv_json(), "r1", sid)
        assert rack["seq"] == 4 and "duplicate" not in rack, rack
        rev = check_session_event(adm2.recv_json(), "help_resolved", sid, 4,
                                  admin_sender("root2", "Second"))
        assert rev["timestamp"] == rack["timestamp"]
        for ws in (a1, a2, adm):
            assert ws.recv_json() == rev
        quiet(a1, a2, adm, adm2, bob)
        doc = get_session(d.port, sid, tok)
        assert doc["help"] is False and doc["last_seq"] == 4, doc
        assert [s["help_requested"] for s in sessions(d.port, tok) if s["id"] == sid] == [False]
        assert admin_list(d.port, "?help=1") == []
        # Resolved already: duplicate.
        adm.send_json({"type": "resolve_help", "id": "r2", "session_id": sid})
        check_duplicate(check_ack(adm.recv_json(), "r2", sid, seq=False))
        quiet(a1, a2, adm, adm2)
        # Asking again after a resolve is a new request.
        a2.send_json({"type": "help_request", "id": "h2", "session_id": sid})
        h2 = check_ack(a2.recv_json(), "h2", sid)
        assert h2["seq"] == 5 and "duplicate" not in h2, h2
        hev2 = recv_type(a2, "help_request")
        for ws in (a1, adm, adm2):
            assert ws.recv_json() == hev2
        assert get_session(d.port, sid, tok)["help"] is True
        msgs = history(d.port, sid, tok)["messages"]
        assert [m["type"] for m in msgs] == ["user_message", "admin_join", "help_request",
                                             "help_resolved", "help_request"], msgs
        assert msgs[3] == rev, (msgs[3], rev)
        # A resume replays them like messages.
        a3 = connect(d.port, "alice", name="Alice")
        a3.send_json({"type": "resume", "session_id": sid, "after_seq": 0})
        replay = [a3.recv_json() for _ in range(5)]
        assert replay == msgs, replay
        assert recv_type(a3, "resumed")["last_seq"] == 5
        quiet(a1, a2, a3, adm, adm2, bob)
        close_all(a1, a2, a3, adm, adm2, bob)
        assert not late_failures, "; ".join(late_failures)


# ---- the admins' list ------------------------------------------------------------------

def test_admin_list_triage():
    with server() as d:
        users = {u: connect(d.port, u, name=u.capitalize()) for u in ("alice", "bob", "carol",
                                                                       "dave")}
        adm = connect_admin(d.port)
        sid, first_ts = {}, {}
        long_text = "\u00e9" * 150 + " tail"
        for u, content in (("alice", "alpha first"), ("bob", "bravo"), ("carol", long_text),
                           ("dave", "delta")):
            ack, ev = post(users[u], content)
            sid[u] = ack["session_id"]
            first_ts[u] = ev["timestamp"]
            time.sleep(0.03)
        # Dave is answered (by an admin that joined).
        admin_event(adm, "admin_join", "j", sid["dave"], 2, admin_sender(), (users["dave"],))
        send_msg(adm, "Hello Dave", sid["dave"], "am", mtype="admin_message")
        check_ack(adm.recv_json(), "am", sid["dave"])
        recv_type(adm, "admin_message")
        recv_type(users["dave"], "admin_message")
        # Alice writes again: she still waits since her first message.
        post(users["alice"], "alpha again", sid["alice"])
        # Carol asks for a person.
        users["carol"].send_json({"type": "help_request", "id": "h", "session_id": sid["carol"]})
        check_ack(users["carol"].recv_json(), "h", sid["carol"])
        recv_type(users["carol"], "help_request")
        recv_type(adm, "help_request")

        t0 = now_ms()
        lst = admin_list(d.port)
        t1 = now_ms()
        # Help first; then the longest waiting; the answered session last.
        assert [s["id"] for s in lst] == [sid["carol"], sid["alice"], sid["bob"], sid["dave"]], \
            [(s["owner"], s["waiting_since"]) for s in lst]
        by = {s["owner"]: s for s in lst}
        for u, s in by.items():
            assert s["owner_name"] == u.capitalize(), s
        assert by["carol"]["help_requested"] is True
        assert all(not by[u]["help_requested"] for u in ("alice", "bob", "dave"))
        # Preview: the last message (not a session event), at most 140
        # characters.
        assert by["alice"]["preview"] == {"type": "user_message", "sender_name": "Alice",
                                          "content": "alpha again"}, by["alice"]
        assert by["carol"]["preview"] == {"type": "user_message", "sender_name": "Carol",
                                          "content": "\u00e9" * 140}, by["carol"]
        assert by["dave"]["preview"] == {"type": "admin_message", "sender_name": ADMIN_NAME,
                                         "content": "Hello Dave"}, by["dave"]
        # Waiting: since the oldest user message not yet answered.
        for u in ("alice", "bob", "carol"):
            s = by[u]
            assert s["waiting_since"] == first_ts[u], (u, s)
            since = ms_of(first_ts[u])
            assert t0 - since - 50 <= s["waiting_ms"] <= t1 - since + 50, (u, s, t0, t1)
        assert by["dave"]["waiting_since"] is None and by["dave"]["waiting_ms"] is None, by
        # Admins joined now.
        assert by["dave"]["admins"] == [{"id": ROOT, "name": ADMIN_NAME}], by["dave"]
        assert all(by[u]["admins"] == [] for u in ("alice", "bob", "carol"))
        assert [s["id"] for s in admin_list(d.port, "?help=1")] == [sid["carol"]]

        # Answer Alice: she stops waiting and moves among the answered, the
        # most recently updated first. Bob writing again does not reset his
        # wait.
        admin_event(adm, "admin_join", "j2", sid["alice"], 3, admin_sender(),
                    (users["alice"],))
        send_msg(adm, "Hi Alice", sid["alice"], "am2", mtype="admin_message")
        check_ack(adm.recv_json(), "am2", sid["alice"])
        recv_type(adm, "admin_message")
        recv_type(users["alice"], "admin_message")
        post(users["bob"], "bravo again", sid["bob"])
        lst = admin_list(d.port)
        assert [s["id"] for s in lst] == [sid["carol"], sid["bob"], sid["alice"], sid["dave"]], \
            [(s["owner"], s["waiting_since"], s["updated_at"]) for s in lst]
        by = {s["owner"]: s for s in lst}
        assert by["bob"]["waiting_since"] == first_ts["bob"], by["bob"]
        assert by["alice"]["waiting_ms"] is None, by["alice"]
        # A user message after an answer: waiting again, since that one.
        _, ev = post(users["dave"], "one more thing", sid["dave"])
        adm.recv_json()
        by = {s["owner"]: s for s in admin_list(d.port)}
        assert by["dave"]["waiting_since"] == ev["timestamp"], by["dave"]
        # Users may not list: 403; nobody without a token: 401.
        assert api(d.port, "/api/admin/sessions", user_token("alice"))[0] == 403
        assert api(d.port, "/api/admin/sessions", None)[0] == 401
        close_all(adm, *users.values())


# ---- GET /api/admin/stats ----------------------------------------------------------------

def stats(port):
    status, doc = api(port, "/api/admin/stats", admin_token())
    assert status == 200, (status, doc)
    assert set(doc) == {"sessions", "messages", "help_open", "assistant_tokens",
                        "help_to_first_admin_ms"}, doc
    return doc


def test_admin_stats():
    with server() as d:
        assert stats(d.port) == {
            "sessions": 0, "messages": {"user": 0, "admin": 0, "ai": 0}, "help_open": 0,
            "assistant_tokens": {"input": 0, "output": 0},
            "help_to_first_admin_ms": {"count": 0, "median": None, "p90": None}}
        adm = connect_admin(d.port)
        waits = []
        for i, (u, pause) in enumerate((("alice", 0.05), ("bob", 0.15), ("carol", 0.3))):
            ws = connect(d.port, u)
            sid = post(ws, "question %d" % i)[0]["session_id"]
            # An admin message before the help request does not count.
            admin_event(adm, "admin_join", "j%d" % i, sid, 2, admin_sender(), (ws,))
            send_msg(adm, "early", sid, "e%d" % i, mtype="admin_message")
            check_ack(adm.recv_json(), "e%d" % i, sid)
            recv_type(adm, "admin_message")
            recv_type(ws, "admin_message")
            ws.send_json({"type": "help_request", "id": "h", "session_id": sid})
            hack = check_ack(ws.recv_json(), "h", sid)
            recv_type(ws, "help_request")
            recv_type(adm, "help_request")
            time.sleep(pause)
            # The first admin message after it counts, the next does not.
            for k in range(2):
                send_msg(adm, "answer %d" % k, sid, "a%d%d" % (i, k), mtype="admin_message")
                aack = check_ack(adm.recv_json(), "a%d%d" % (i, k), sid)
                recv_type(adm, "admin_message")
                recv_type(ws, "admin_message")
                if k == 0:
                    waits.append(ms_of(aack["timestamp"]) - ms_of(hack["timestamp"]))
                time.sleep(0.02)
            close_all(ws)
            s = stats(d.port)["help_to_first_admin_ms"]
            w = sorted(waits)
            # Nearest rank: the ceil(n * p / 100)-th smallest.
            assert s == {"count": len(w), "median": w[(len(w) * 50 + 99) // 100 - 1],
                         "p90": w[(len(w) * 90 + 99) // 100 - 1]}, (s, w)
        assert waits[0] >= 50 and waits[2] >= 300, waits
        # An unanswered help request is open and not counted.
        dave = connect(d.port, "dave")
        sid = post(dave, "nobody answers")[0]["session_id"]
        dave.send_json({"type": "help_request", "id": "h", "session_id": sid})
        check_ack(dave.recv_json(), "h", sid)
        recv_type(adm, "help_request")
        s = stats(d.port)
        w = sorted(waits)
        assert s == {"sessions": 4, "messages": {"user": 4, "admin": 9, "ai": 0},
                     "help_open": 4, "assistant_tokens": {"input": 0, "output": 0},
                     "help_to_first_admin_ms": {"count": 3, "median": w[1], "p90": w[2]}}, s
        # Resolving closes one.
        admin_event(adm, "resolve_help", "r", sid, 3, admin_sender(), ())
        assert stats(d.port)["help_open"] == 3
        # Users: 403; no token: 401.
        assert api(d.port, "/api/admin/stats", user_token("alice"))[0] == 403
        assert api(d.port, "/api/admin/stats", None)[0] == 401
        close_all(adm, dave)


# ---- devices -------------------------------------------------------------------------

def devices(port, tok, query=False):
    if query:
        status, doc = api(port, "/api/devices?token=" + tok, None)
    else:
        status, doc = api(port, "/api/devices", tok)
    assert status == 200, (status, doc)
    return doc


def test_devices_endpoint_and_the_11th_device():
    with server() as d:
        tok = user_token("many")
        assert devices(d.port, tok) == {"user_id": "many", "devices": 0, "max_devices": 10,
                                        "device_policy": "refuse"}
        status, doc = api(d.port, "/api/devices", None)
        assert status == 401 and doc["error"]["code"] == "unauthorized", (status, doc)
        status, doc = api(d.port, "/api/devices", make_token("many", secret="w" * 40))
        assert status == 401, (status, doc)
        assert http(d.port, "POST", "/api/devices", tok)[0] == 405
        conns = []
        for i in range(10):
            conns.append(connect(d.port, "many"))
            assert conns[-1].status["devices"] == i + 1
            assert devices(d.port, tok)["devices"] == i + 1
        # The 11th is refused with 429 before the upgrade...
        req, _ = upgrade_request("/ws", token=tok)
        status, _, body = parse_response(http_raw(d.port, req))
        assert status == 429, (status, body)
        err = json.loads(body)["error"]
        assert err["code"] == "connection_limit" and err["retry_after"] > 0, err
        # ... the ten are told ...
        for ws in conns:
            n = recv_type(ws, "notification")
            assert n["code"] == "connection_limit", n
        # ... and a page that cannot read the 429 asks (header or ?token=).
        for query in (False, True):
            assert devices(d.port, tok, query) == {"user_id": "many", "devices": 10,
                                                   "max_devices": 10, "device_policy": "refuse"}
        # Another user is not affected.
        assert devices(d.port, user_token("other"))["devices"] == 0
        close_all(conns.pop())
        wait_for(lambda: devices(d.port, tok)["devices"] == 9, "9 devices")
        conns.append(connect(d.port, "many"))
        assert conns[-1].status["devices"] == 10
        close_all(*conns)
        wait_for(lambda: devices(d.port, tok)["devices"] == 0, "no device")
    with server("--max-devices", "2", "--device-policy", "evict-oldest") as d:
        assert devices(d.port, user_token("x")) == {"user_id": "x", "devices": 0,
                                                    "max_devices": 2,
                                                    "device_policy": "evict-oldest"}


def test_refused_upgrades_in_metrics():
    with server() as d:
        v, types = scrape(d.port)
        assert types.get("chatd_ws_refused_total") == "counter", types
        for reason in ("unauthorized", "connection_limit", "origin_not_allowed", "unavailable"):
            assert v['chatd_ws_refused_total{reason="%s"}' % reason] == 0, v
        assert v['chatd_errors_total{code="unauthorized"}'] == 0, v

        def refused(tok, want_status, extra=None):
            req, _ = upgrade_request("/ws", token=tok, extra=extra)
            status, _, body = parse_response(http_raw(d.port, req))
            assert status == want_status, (status, body)
            return json.loads(body)["error"]["code"]

        # Unauthorized: no token, a bad signature, an expired token.
        assert refused(None, 401) == "unauthorized"
        assert refused(make_token("eve", secret="z" * 40), 401) == "unauthorized"
        assert refused(make_token("eve", ttl=-600), 401) == "unauthorized"
        # The device limit.
        conns = [connect(d.port, "many") for _ in range(10)]
        assert refused(user_token("many"), 429) == "connection_limit"
        v, _ = scrape(d.port)
        assert v['chatd_ws_refused_total{reason="unauthorized"}'] == 3, v
        assert v['chatd_ws_refused_total{reason="connection_limit"}'] == 1, v
        assert v['chatd_ws_refused_total{reason="origin_not_allowed"}'] == 0, v
        assert v['chatd_errors_total{code="unauthorized"}'] == 3, v
        close_all(*conns)
    with server("--allowed-origins", "https://ok.example") as d:
        req, _ = upgrade_request("/ws", token=user_token("o"),
                                 extra=["Origin: https://evil.example"])
        assert parse_response(http_raw(d.port, req))[0] == 403
        v, _ = scrape(d.port)
        assert v['chatd_ws_refused_total{reason="origin_not_allowed"}'] == 1, v


# ---- --dev keeps its secret -----------------------------------------------------------------

def read_banner(d, timeout=10.0):
    """The development banner chatd prints on stdout: (token, secret)."""
    out = b""
    deadline = time.time() + timeout * SLACK
    while b"secret:" not in out or not out.rstrip(b" ").endswith(b"\n"):
        left = deadline - time.time()
        assert left > 0, "no banner on stdout: %r" % out
        r, _, _ = select.select([d.proc.stdout], [], [], left)
        if r:
            chunk = os.read(d.proc.stdout.fileno(), 65536)
            assert chunk, "stdout closed before the banner: %r" % out
            out += chunk
    text = out.decode()
    tok = re.search(r"^\s*token:\s+(\S+)$", text, re.M)
    sec = re.search(r"^\s*secret:\s+([0-9a-f]{64})$", text, re.M)
    assert tok and sec, text
    return tok.group(1), sec.group(1)


def dev_server(db):
    return Chatd("--dev", "--db", db, "--rate-limit", "100000")


def test_dev_keeps_its_secret():
    tmp = tempfile.mkdtemp(prefix="chatd-dev-")
    db = os.path.join(tmp, "dev.db")
    secret_file = db + ".dev-secret"
    try:
        with dev_server(db) as d:
            dev_tok, secret = read_banner(d)
            assert stat.S_IMODE(os.stat(secret_file).st_mode) == 0o600, \
                oct(os.stat(secret_file).st_mode)
            with open(secret_file) as f:
                assert f.read().strip() == secret
            # Mid-conversation: the banner's token, and tokens minted with
            # the secret, for a user and an admin.
            dev = WS(d.port, path="/ws", token=dev_tok)
            st = recv_type(dev, "connection_status")
            assert st["user_id"] == "dev" and "admin" in st["roles"], st
            alice_tok = make_token("alice", secret=secret, name="Alice")
            root_tok = make_token(ROOT, secret=secret, name=ADMIN_NAME, roles=["admin"])
            alice = WS(d.port, path="/ws", token=alice_tok)
            recv_type(alice, "connection_status")
            root = WS(d.port, path="/ws", token=root_tok)
            recv_type(root, "connection_status")
            sid = post(alice, "before the restart")[0]["session_id"]
            alice.send_json({"type": "help_request", "id": "h", "session_id": sid})
            check_ack(alice.recv_json(), "h", sid)
            recv_type(alice, "help_request")
            assert recv_type(root, "help_request")["session_id"] == sid
            recv_type(dev, "help_request")  # dev is an admin too
            admin_event(root, "admin_join", "j", sid, 3, admin_sender(), (alice,))
            send_msg(root, "Support here", sid, "am", mtype="admin_message")
            check_ack(root.recv_json(), "am", sid)
            recv_type(root, "admin_message")
            recv_type(alice, "admin_message")
            # The admin's connection closes while joined: an admin_leave of
            # its own. Alice stays connected through the restart.
            close_all(dev, root)
            leave = recv_type(alice, "admin_leave")
            check_session_event(leave, "admin_leave", sid, 5, admin_sender())
            before = history_with(d.port, sid, alice_tok)
            assert [m["type"] for m in before] == ["user_message", "help_request", "admin_join",
                                                   "admin_message", "admin_leave"], before
            # Stopped mid-conversation: Alice is told and closed with 1001.
            d.proc.send_signal(signal.SIGTERM)
            n = recv_type(alice, "notification")
            assert n["code"] == "shutdown", n
            assert alice.expect_close() == 1001
            alice.close(1001)
            alice.shut()
            assert d.proc.wait(30 * SLACK) == 0

        # Restarted on the same database: the same secret, the old tokens
        # work, the state is there.
        with dev_server(db) as d:
            tok2, secret2 = read_banner(d)
            assert secret2 == secret
            for tok in (dev_tok, alice_tok, root_tok, tok2):
                ws = WS(d.port, path="/ws", token=tok)
                recv_type(ws, "connection_status")
                close_all(ws)
            assert history_with(d.port, sid, alice_tok) == before
            st, doc = api(d.port, "/api/sessions/" + sid, alice_tok)
            assert st == 200 and doc["help"] is True and doc["last_seq"] == 5, (st, doc)
            assert doc["title"] == "before the restart", doc
            # Nobody is joined after a restart (the admin's page joins again).
            assert doc["admins"] == [], doc
            alice = WS(d.port, path="/ws", token=alice_tok)
            recv_type(alice, "connection_status")
            alice.send_json({"type": "resume", "session_id": sid, "after_seq": 0})
            assert [alice.recv_json() for _ in range(5)] == before
            assert recv_type(alice, "resumed")["last_seq"] == 5
            ack, _ = post(alice, "after the restart", sid)
            assert ack["seq"] == 6, ack
            close_all(alice)
            assert "dev_secret_mode" not in d.log()

        # A file others can read is tightened, with a warning.
        os.chmod(secret_file, 0o644)
        with dev_server(db) as d:
            assert read_banner(d)[1] == secret
            assert stat.S_IMODE(os.stat(secret_file).st_mode) == 0o600
            log = d.log()
            assert re.search(r"level=warn event=dev_secret_mode .*%s" % re.escape(secret_file),
                             log), log[-2000:]
        # A file that holds no secret stops chatd at start (exit 2).
        with open(secret_file, "w") as f:
            f.write("not a secret\n")
        proc = subprocess.run([CHATD_BIN, "--dev", "--db", db, "--listen", "127.0.0.1:0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=30 * SLACK)
        err = proc.stderr.decode(errors="replace")
        assert proc.returncode == 2 and secret_file in err, (proc.returncode, err)
        for marker in SANITIZER_MARKERS:
            assert marker not in err, err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def history_with(port, sid, tok):
    return history(port, sid, tok)["messages"]


if __name__ == "__main__":
    run([test_titles, test_titles_sealed_at_rest, test_rename, test_session_details,
         test_share_links, test_share_link_with_prefix, test_share_link_expiry,
         test_resolve_help, test_admin_list_triage, test_admin_stats,
         test_devices_endpoint_and_the_11th_device, test_refused_upgrades_in_metrics,
         test_dev_keeps_its_secret])
