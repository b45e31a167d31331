#!/usr/bin/python3
"""chatd soak: many WebSocket clients with mixed traffic against one chatd
(SQLite) for a long time, while chatd's memory and descriptors are sampled.

The load (defaults: 1,000 connections). Users have DEVICES devices each
(the fan-out) and two sessions: a chat session that a support admin has
joined, so the assistant stays silent there, and an ask session that the
assistant answers (tests/fake_provider.py streams every answer in paced
deltas). ADMINS admin connections each hold the chat sessions of a share of
the users. Every device does one action every INTERVAL seconds on average
(exponential gaps): a chat message (most), a typing indicator, a read
marker, a resume of part of the history, an HTTP history page, now and
then a help request (which the session's admin resolves); admins write
and type too. Each user asks a question in its ask session every ASK
seconds (a steady pace, phases spread over the users). Every device
reconnects every RECONNECT seconds on average: most close cleanly after their messages are acknowledged, the rest hang up with
messages in flight and send them again with the same ids on the new
connection; every new connection resumes its sessions from the last seq it
holds in order. Admins reconnect too and join their sessions again.

The generator is one asyncio loop with a minimal WebSocket client of its
own (asyncio.Protocol, no thread per connection), so that its CPU stays
well below chatd's; the figure is reported.

What is checked (soak() returns the figures, check() the failures):
  - memory: chatd's VmRSS is sampled every SAMPLE seconds. After the
    warm-up (the first WARMUP fraction of the traffic time), the drift is
    median(RSS over the last WINDOW fraction) / median(RSS over the first
    WINDOW fraction after the warm-up) - 1; it must stay under 5 % (checked
    in the plain build only: ASan's quarantine and shadow memory grow on
    their own terms);
  - descriptors: /proc/PID/fd counted at the same times, less chatd's
    connections to the model provider (a keep-alive pool that follows the
    answers streaming at once; reported apart); after the warm-up the
    count must stay within a band of max(20, 2 % of the connections)
    (reconnects and HTTP requests in progress move it a little), and its
    median must not climb from the first window to the last by more than 5;
  - accounting: every message sent is acknowledged (a message sent again
    after a hang-up is acknowledged with its first seq); every
    acknowledged (seq, id) is in the session's stored history over HTTP;
    every session's history is numbered 1..N with no gap; every user
    device that is connected at the end holds each of its sessions' events
    1..N exactly (live or by resume), and no connection received one seq
    twice; every question in an ask session has a stored answer equal to
    the fake provider's answer to it, and every stream a connection
    followed assembles (deltas placed by offset) to the final content;
  - no error frame, no refused connection, no close code other than the
    expected ones;
  - the caller stops chatd with SIGTERM and checks its exit status 0 and a
    log free of sanitizer reports: under ASan that is where LeakSanitizer
    reports a leak (and exits 86).

Command line (make soak): soak.py [--seconds 600] [--clients 1000]
[--json FILE]; CHATD_BIN names the binary, CHATD_BUILD_KIND=address says it
is an ASan build. Standard library only.
"""
import argparse
import asyncio
import json
import os
import random
import re
import resource
import statistics
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
from fake_provider import FakeProvider, answer_for  # noqa: E402
from harness import Chatd, accept_for, make_token, mask_bytes, ws_key  # noqa: E402

OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 1, 8, 9, 10
KEY = "sk-soak"
STORED = ("user_message", "admin_message", "ai_response", "help_request", "help_resolved",
          "admin_join", "admin_leave")


class Cfg:
    """The knobs; defaults are the 10-minute soak's."""

    def __init__(self, seconds=600.0, clients=1000, devices=4, admins=40, interval=2.0,
                 reconnect=60.0, sample=2.0, warmup=0.25, window=0.10, seed=1, ask=8.0):
        self.seconds = seconds
        self.devices = devices
        self.admins = admins
        self.users = max(1, (clients - admins) // devices)
        self.clients = self.users * devices + admins
        self.interval = interval
        self.ask = ask
        self.reconnect = reconnect
        self.sample = sample
        self.warmup = warmup
        self.window = window
        self.seed = seed


class Run:
    """Counters, failures and the shared state of one run."""

    def __init__(self, cfg, port):
        self.cfg = cfg
        self.port = port
        self.stopping = False
        self.count = {}
        self.failures = []
        self.acked = {}        # session -> {seq: client id}
        self.questions = {}    # ask session -> [content]
        self.last_rx = time.monotonic()
        self.conn_ids = 0

    def inc(self, name, n=1):
        self.count[name] = self.count.get(name, 0) + n

    def fail(self, what):
        self.inc("failures")
        if len(self.failures) < 50:
            self.failures.append(what)


# ---- a minimal WebSocket client on asyncio --------------------------------------

class WSProto(asyncio.Protocol):
    """One connection: the upgrade, then server frames to dev.on_message."""

    def __init__(self, dev, token, opened):
        self.dev = dev
        self.token = token
        self.opened = opened          # future: connection_status or an exception
        self.key = ws_key()
        self.buf = bytearray()
        self.upgraded = False
        self.transport = None
        self.lost = asyncio.get_running_loop().create_future()
        self.close_code = None
        self.closing = False

    def connection_made(self, transport):
        self.transport = transport
        req = ("GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
               "Authorization: Bearer %s\r\n\r\n" % (self.key, self.token))
        transport.write(req.encode())

    def send(self, obj):
        if self.transport is None or self.transport.is_closing():
            return False
        self.transport.write(client_frame(OP_TEXT, json.dumps(obj).encode()))
        return True

    def close(self, code=1000):
        if self.transport is not None and not self.transport.is_closing() and not self.closing:
            self.closing = True
            self.transport.write(client_frame(OP_CLOSE, struct.pack("!H", code)))

    def data_received(self, data):
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).decode("latin-1")
            del self.buf[:end + 4]
            status = int(head.split()[1])
            if status != 101 or accept_for(self.key) not in head:
                if not self.opened.done():
                    self.opened.set_exception(ConnectionError("upgrade refused: " +
                                                              head.split("\r\n")[0]))
                self.transport.abort()
                return
            self.upgraded = True
        buf = self.buf
        pos = 0
        while len(buf) - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n = b1 & 0x7F
            h = 2
            if n == 126:
                if len(buf) - pos < 4:
                    break
                n = struct.unpack_from("!H", buf, pos + 2)[0]
                h = 4
            elif n == 127:
                if len(buf) - pos < 10:
                    break
                n = struct.unpack_from("!Q", buf, pos + 2)[0]
                h = 10
            if len(buf) - pos < h + n:
                break
            op = b0 & 0x0F
            payload = bytes(buf[pos + h:pos + h + n])
            pos += h + n
            if not b0 & 0x80:
                self.dev.run.fail("%s: a fragmented frame (chatd sends whole messages)" %
                                  self.dev.name)
                continue
            if op == OP_PING:
                self.transport.write(client_frame(OP_PONG, payload))
                self.dev.run.inc("pings")
            elif op == OP_CLOSE:
                self.close_code = struct.unpack("!H", payload[:2])[0] if n >= 2 else 1005
                if not self.closing:
                    self.closing = True
                    self.transport.write(client_frame(OP_CLOSE, payload[:2]))
                self.transport.close()
            elif op == OP_TEXT:
                msg = json.loads(payload)
                if not self.opened.done():
                    # The device switches to this connection before the next
                    # frame, which may be a catch-up of a streaming answer.
                    self.dev.attach(self)
                    self.opened.set_result(msg)
                else:
                    self.dev.on_message(self, msg)
        del buf[:pos]

    def connection_lost(self, exc):
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("closed before connection_status"))
        if not self.lost.done():
            self.lost.set_result(self.close_code)
        self.dev.on_lost(self)


def client_frame(op, payload):
    n = len(payload)
    if n < 126:
        hdr = struct.pack("!BB", 0x80 | op, 0x80 | n)
    elif n < 65536:
        hdr = struct.pack("!BBH", 0x80 | op, 0x80 | 126, n)
    else:
        hdr = struct.pack("!BBQ", 0x80 | op, 0x80 | 127, n)
    key = random.getrandbits(32).to_bytes(4, "big")
    return hdr + key + mask_bytes(payload, key)


# ---- devices ----------------------------------------------------------------------

class Device:
    """One user device (or one admin connection) over its reconnects."""

    def __init__(self, run, user, index, admin=False):
        self.run = run
        self.user = user
        self.index = index
        self.admin = admin
        self.name = "%s/%d" % (user.sub, index)
        self.token = make_token(user.sub, ttl=24 * 3600,
                                roles=["admin"] if admin else ["user"])
        self.proto = None
        self.seen = {}         # session -> set of seqs held (over every connection)
        self.life = {}         # session -> seqs this connection received (duplicates)
        self.streams = {}      # stream id -> bytearray placed by offset (this connection)
        self.pending = {}      # client id -> (message, session)
        self.nsent = 0
        self.resuming = set()  # sessions with a resume in flight (this connection)
        self.joined = []       # admin: the chat sessions it holds

    # -- bookkeeping of what arrives
    def hw(self, sid):
        """The last seq held with every seq before it."""
        s = self.seen.get(sid, ())
        n = 0
        while n + 1 in s:
            n += 1
        return n

    def on_message(self, proto, m):
        run = self.run
        run.last_rx = time.monotonic()
        if proto is not self.proto:
            return
        t = m.get("type")
        sid = m.get("session_id")
        run.inc("rx_" + t if t in ("ack", "resumed", "typing_indicator", "read", "loading",
                                   "notification") else "rx_other")
        if t == "resumed":
            self.resuming.discard(sid)
            return
        if t == "ack":
            cid = m.get("id")
            p = self.pending.pop(cid, None)
            if p is None:
                run.fail("%s: an ack of nothing sent: %s" % (self.name, json.dumps(m)[:200]))
                return
            msg, sid = p
            if msg["type"] not in ("user_message", "admin_message"):
                run.inc("acked_" + msg["type"])
                return
            sid = m["session_id"]
            got = run.acked.setdefault(sid, {})
            if got.get(m["seq"], cid) != cid:
                run.fail("%s: seq %d of %s acknowledged for %s and %s" %
                         (self.name, m["seq"], sid, got[m["seq"]], cid))
            got[m["seq"]] = cid
            run.inc("acked")
            if msg.get("_create"):
                self.user.created(msg["_create"], sid)
            return
        if t == "error":
            run.fail("%s: error %s" % (self.name, json.dumps(m)[:300]))
            if m.get("id") in self.pending:
                del self.pending[m["id"]]
            return
        if t == "notification":
            if m.get("code") not in ("assistant_done",):
                run.fail("%s: notification %s" % (self.name, json.dumps(m)[:300]))
            return
        if t == "ai_response" and "seq" not in m:
            # A streamed piece: placed by offset; a catch-up starts at 0.
            run.inc("deltas")
            buf = self.streams.setdefault(m["stream_id"], bytearray())
            d = m["delta"].encode()
            off = m["offset"]
            if off == 0 and buf:
                if not d.startswith(bytes(buf)):
                    run.fail("%s: catch-up of %s changes the text" % (self.name, m["stream_id"]))
                buf[:] = d
            elif off != len(buf):
                run.fail("%s: delta of %s at %d, held %d bytes" %
                         (self.name, m["stream_id"], off, len(buf)))
                self.streams.pop(m["stream_id"])
            else:
                buf += d
            return
        if t in STORED and "seq" in m:
            seq = m["seq"]
            life = self.life.setdefault(sid, set())
            if seq in life:
                run.fail("%s: seq %d of %s received twice on one connection" %
                         (self.name, seq, sid))
            life.add(seq)
            self.seen.setdefault(sid, set()).add(seq)
            run.inc("deliveries_admin" if self.admin else "deliveries")
            if t == "ai_response":
                buf = self.streams.pop(m.get("stream_id"), None)
                if buf is not None:
                    run.inc("streams_followed")
                    if bytes(buf) != m["content"].encode():
                        run.fail("%s: stream %s assembled %r, final %r" %
                                 (self.name, m.get("stream_id"), bytes(buf)[:80],
                                  m["content"][:80]))
            if t == "help_request" and self.admin and sid in self.joined:
                self.request({"type": "resolve_help", "session_id": sid})
                run.inc("help_resolved_sent")
            return

    def attach(self, proto):
        self.proto = proto
        self.life = {}
        self.streams = {}
        self.resuming = set()

    def resume(self, sid, after):
        """One resume at a time per session and connection (chatd refuses
        a second one until the first's `resumed`)."""
        if sid in self.resuming:
            return
        self.resuming.add(sid)
        self.send({"type": "resume", "session_id": sid, "after_seq": after})
        self.run.inc("resumes")

    def on_lost(self, proto):
        if proto is self.proto:
            self.proto = None
            if not self.run.stopping and not getattr(proto, "planned", False):
                self.run.fail("%s: connection lost unasked (close %s)" %
                              (self.name, proto.close_code))

    # -- sending
    def send(self, obj):
        if self.proto is None:
            return False
        return self.proto.send(obj)

    def request(self, obj):
        """Send a message other than a chat message with an id: its ack is
        expected (and checked) like a chat message's."""
        self.nsent += 1
        obj["id"] = "%s-%d-%d" % (self.user.sub, self.index, self.nsent)
        self.pending[obj["id"]] = (obj, obj.get("session_id"))
        self.send(obj)

    def send_message(self, sid, content, create=None, kind="user_message"):
        self.nsent += 1
        cid = "%s-%d-%d" % (self.user.sub, self.index, self.nsent)
        msg = {"type": kind, "id": cid, "content": content}
        if sid:
            msg["session_id"] = sid
        if create:
            msg["_create"] = create
        self.pending[cid] = (msg, sid)
        self.run.inc("sent")
        wire = {k: v for k, v in msg.items() if not k.startswith("_")}
        self.send(wire)
        return cid

    async def connect(self):
        """Open a connection, retrying a refusal a few times (counted)."""
        loop = asyncio.get_running_loop()
        for attempt in range(5):
            opened = loop.create_future()
            try:
                _, proto = await loop.create_connection(
                    lambda: WSProto(self, self.token, opened), "127.0.0.1", self.run.port)
                st = await asyncio.wait_for(opened, 30)
            except (OSError, ConnectionError, asyncio.TimeoutError) as e:
                self.run.fail("%s: connect: %r" % (self.name, e))
                await asyncio.sleep(1.0 + attempt)
                continue
            if st.get("type") != "connection_status":
                self.run.fail("%s: first frame %r" % (self.name, st))
            self.run.inc("connects")
            return True
        return False

    async def reconnect(self):
        run = self.run
        drop = random.random() < 0.3
        if not drop:
            # Clean: the messages in flight are acknowledged first.
            deadline = time.monotonic() + 30
            while self.pending and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            if self.pending:
                run.fail("%s: %d messages unacknowledged for 30 s" %
                         (self.name, len(self.pending)))
        old = self.proto
        if old is not None:
            old.planned = True
            if drop:
                old.transport.abort()
                run.inc("reconnects_dropped")
            else:
                old.close(1000)
                try:
                    code = await asyncio.wait_for(asyncio.shield(old.lost), 15)
                except asyncio.TimeoutError:
                    run.fail("%s: no close answer in 15 s" % self.name)
                    old.transport.abort()
                    code = None
                if code not in (1000, None):
                    run.fail("%s: closed with %s" % (self.name, code))
                run.inc("reconnects_clean")
            self.proto = None
        # Messages in flight on the old connection go again with the same
        # id: stored once, acknowledged with their first seq. Taken before
        # connecting: once the new connection is up, the asker may send a
        # question on it before this resumes, and that one is in flight
        # there, not lost (sent again, it would be acked twice).
        again = list(self.pending.items())
        if not await self.connect():
            return False
        await self.after_connect()
        for cid, (msg, sid) in again:
            wire = {k: v for k, v in msg.items() if not k.startswith("_")}
            self.send(wire)
            run.inc("resent")
        return True

    async def after_connect(self):
        if self.admin:
            for sid in self.joined:
                self.request({"type": "admin_join", "session_id": sid})
        else:
            for sid in self.user.sessions():
                self.resume(sid, self.hw(sid))


class User:
    def __init__(self, run, i, admin=False):
        self.sub = ("admin-%d" if admin else "user-%d") % i
        self.chat = None
        self.ask = None
        self.ready = asyncio.get_running_loop().create_future()
        self.devices = []

    def sessions(self):
        return [s for s in (self.chat, self.ask) if s]

    def created(self, which, sid):
        setattr(self, which, sid)
        if self.chat and self.ask and not self.ready.done():
            self.ready.set_result(True)


def content_for(dev, kind):
    n = random.randint(8, 160)
    return "%s %s %d %s" % (kind, dev.name, dev.nsent, "x" * n)


async def http_history(run, dev, sid, after, limit):
    """One history page over HTTP (Connection: close): (status, doc)."""
    r, w = await asyncio.open_connection("127.0.0.1", run.port)
    w.write(("GET /api/sessions/%s/messages?after_seq=%d&limit=%d HTTP/1.1\r\nHost: x\r\n"
             "Authorization: Bearer %s\r\nConnection: close\r\n\r\n" %
             (sid, after, limit, dev.token)).encode())
    data = await r.read()
    w.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    return status, (json.loads(body) if status == 200 else body[:200])


# ---- behaviour ------------------------------------------------------------------------

async def device_loop(run, dev, t_end):
    cfg = run.cfg
    next_reconnect = time.monotonic() + random.expovariate(1.0 / cfg.reconnect)
    while not run.stopping:
        await asyncio.sleep(min(random.expovariate(1.0 / cfg.interval),
                                max(0.0, t_end - time.monotonic())))
        if time.monotonic() >= t_end or run.stopping:
            break
        if time.monotonic() >= next_reconnect:
            next_reconnect = time.monotonic() + random.expovariate(1.0 / cfg.reconnect)
            await dev.reconnect()
            continue
        if dev.proto is None:
            continue
        if dev.admin:
            r = random.random()
            sid = random.choice(dev.joined) if dev.joined else None
            if sid and r < 0.2:
                dev.send_message(sid, content_for(dev, "admin"), kind="admin_message")
                run.inc("admin_messages")
            elif sid:
                dev.send({"type": "typing_indicator", "session_id": sid,
                          "typing": random.random() < 0.5})
                run.inc("typing")
            continue
        u = dev.user
        r = random.random()
        if r < 0.62:
            dev.send_message(u.chat, content_for(dev, "chat"))
        elif r < 0.77:
            dev.send({"type": "typing_indicator", "session_id": u.chat,
                      "typing": random.random() < 0.5})
            run.inc("typing")
        elif r < 0.87:
            sid = random.choice((u.chat, u.ask))
            dev.send({"type": "read", "session_id": sid, "seq": max(1, dev.hw(sid))})
            run.inc("reads")
        elif r < 0.94:
            sid = random.choice((u.chat, u.ask))
            dev.resume(sid, max(0, dev.hw(sid) - random.randint(1, 20)))
        elif r < 0.995:
            sid = random.choice((u.chat, u.ask))
            try:
                st, doc = await http_history(run, dev, sid,
                                             max(0, dev.hw(sid) - 30), 30)
            except OSError as e:
                run.fail("%s: history over HTTP: %r" % (dev.name, e))
                continue
            if st != 200:
                run.fail("%s: history over HTTP: %s %r" % (dev.name, st, doc))
            run.inc("http_history")
        else:
            dev.request({"type": "help_request", "session_id": u.chat})
            run.inc("help_requests")


async def asker(run, u, t_end, phase):
    """The user's questions: one every ASK seconds from one of its devices
    in turn. A steady pace rather than random gaps: the answers streaming
    at once, and so chatd's pool of provider connections and the memory
    its buffers take, stay level instead of reaching a new peak now and
    then, which the drift would count."""
    cfg = run.cfg
    k = 0
    t_next = time.monotonic() + phase
    while not run.stopping:
        await asyncio.sleep(max(0.0, t_next - time.monotonic()))
        if time.monotonic() >= t_end or run.stopping:
            break
        t_next += cfg.ask
        for _ in range(len(u.devices)):
            dev = u.devices[k % len(u.devices)]
            k += 1
            if dev.proto is not None:
                c = content_for(dev, "question")
                run.questions.setdefault(u.ask, []).append(c)
                dev.send_message(u.ask, c)
                break


async def sampler(run, pid, out, t_stop, provider_port):
    while not run.stopping and time.monotonic() < t_stop:
        out.append(sample(pid, provider_port))
        await asyncio.sleep(run.cfg.sample)


def provider_inodes(port):
    """Inodes of the loopback TCP sockets whose far end is the provider's
    port: chatd's connections to the model provider."""
    out = set()
    want = ":%04X" % port
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    p = line.split()
                    if p[2].endswith(want):
                        out.add(p[9])
        except OSError:
            pass
    return out


def sample(pid, provider_port):
    """(time, VmRSS kB, descriptors, RssAnon kB, RssFile kB, provider
    connections among the descriptors)."""
    st = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile"):
                st[k] = int(v.split()[0])
    fd_dir = "/proc/%d/fd" % pid
    links = []
    for fd in os.listdir(fd_dir):
        try:
            links.append(os.readlink(os.path.join(fd_dir, fd)))
        except OSError:
            pass  # closed meanwhile
    prov = provider_inodes(provider_port)
    nprov = sum(1 for ln in links if ln.startswith("socket:[") and ln[8:-1] in prov)
    return (time.monotonic(), st.get("VmRSS", 0), len(links), st.get("RssAnon", 0),
            st.get("RssFile", 0), nprov)


def proc_cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def setup(run, users, admins):
    """Connect every device; device 0 of each user makes its two sessions;
    admins join the chat sessions of their users."""
    sem = asyncio.Semaphore(64)

    async def connect(dev):
        async with sem:
            ok = await dev.connect()
        if not ok:
            raise AssertionError("%s could not connect" % dev.name)

    await asyncio.gather(*(connect(u.devices[0]) for u in users))
    # A few users at a time: each first message is answered, and a burst of
    # hundreds of answers would leave chatd as many idle connections to the
    # provider for its first two minutes.
    for i in range(0, len(users), 16):
        group = users[i:i + 16]
        for u in group:
            d0 = u.devices[0]
            d0.send_message(None, "chat session of %s" % u.sub, create="chat")
            d0.send_message(None, "ask session of %s" % u.sub, create="ask")
        await asyncio.wait_for(asyncio.gather(*(u.ready for u in group)), 120)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(
                2 in u.devices[0].seen.get(sid, ()) for u in group for sid in u.sessions()):
            await asyncio.sleep(0.05)
    for u in users:
        run.questions.setdefault(u.ask, []).append("ask session of %s" % u.sub)
    for i, u in enumerate(users):
        admins[i % len(admins)].joined.append(u.chat)
    await asyncio.gather(*(connect(d) for u in users for d in u.devices[1:]))
    await asyncio.gather(*(connect(a) for a in admins))
    for d in [d for u in users for d in u.devices] + admins:
        await d.after_connect()


async def drive(cfg, port, pid, provider_pid, provider_port):
    random.seed(cfg.seed)
    run = Run(cfg, port)
    users = [User(run, i) for i in range(cfg.users)]
    for u in users:
        u.devices = [Device(run, u, k) for k in range(cfg.devices)]
    admin_users = [User(run, i, admin=True) for i in range(cfg.admins)]
    admins = [Device(run, a, 0, admin=True) for a in admin_users]
    t0 = time.monotonic()
    await setup(run, users, admins)
    setup_s = time.monotonic() - t0
    # The traffic.
    cpu0 = os.times()
    chatd_cpu0 = proc_cpu_s(pid)
    prov_cpu0 = proc_cpu_s(provider_pid)
    t_start = time.monotonic()
    t_end = t_start + cfg.seconds
    samples = []
    devs = [d for u in users for d in u.devices] + admins
    samp = asyncio.ensure_future(sampler(run, pid, samples, t_end, provider_port))
    await asyncio.gather(*(device_loop(run, d, t_end) for d in devs),
                         *(asker(run, u, t_end, cfg.ask * i / len(users))
                           for i, u in enumerate(users)))
    traffic_s = time.monotonic() - t_start
    await samp
    cpu1 = os.times()
    chatd_cpu = proc_cpu_s(pid) - chatd_cpu0
    prov_cpu = proc_cpu_s(provider_pid) - prov_cpu0
    # Drain: every message acknowledged, then quiet (answers ended).
    deadline = time.monotonic() + 60
    while any(d.pending for d in devs) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    for d in devs:
        if d.pending:
            run.fail("%s: %d messages never acknowledged, e.g. %s" %
                     (d.name, len(d.pending), next(iter(d.pending))))
    while time.monotonic() - run.last_rx < 3.0 and time.monotonic() < deadline + 60:
        await asyncio.sleep(0.2)
    run.stopping = True
    final = sample(pid, provider_port)
    await verify(run, users)
    for d in devs:
        if d.proto is not None:
            d.proto.planned = True
            d.proto.transport.abort()
    gen_cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    return report(run, cfg, samples, final, setup_s, traffic_s, gen_cpu, chatd_cpu, prov_cpu)


async def verify(run, users):
    """Stored history against what was acknowledged and delivered."""
    sem = asyncio.Semaphore(8)

    async def one(u, sid):
        events, after = [], 0
        while True:
            async with sem:
                st, doc = await http_history(run, u.devices[0], sid, after, 1000)
            if st != 200:
                run.fail("history of %s: %s %r" % (sid, st, doc))
                return
            events += doc["messages"]
            if len(doc["messages"]) < 1000:
                break
            after = doc["messages"][-1]["seq"]
        seqs = [e["seq"] for e in events]
        n = len(seqs)
        if seqs != list(range(1, n + 1)):
            run.fail("history of %s is not 1..%d without gap" % (sid, n))
        by_seq = {e["seq"]: e for e in events}
        for seq, cid in run.acked.get(sid, {}).items():
            e = by_seq.get(seq)
            if e is None or e.get("id") != cid:
                run.fail("acknowledged %s seq %d (%s) stored as %r" %
                         (sid, seq, cid, e and e.get("id")))
        run.inc("stored_events", n)
        run.inc("answers_stored_all", sum(1 for e in events if e["type"] == "ai_response"))
        for d in u.devices:
            if d.proto is None:
                continue
            held = d.seen.get(sid, set())
            if held != set(range(1, n + 1)):
                missing = sorted(set(range(1, n + 1)) - held)
                run.fail("%s holds %d of %d events of %s; missing e.g. %s" %
                         (d.name, len(held), n, sid, missing[:5]))
        if sid == u.ask:
            # One answer at a time: questions that come while one streams
            # are answered together by the next one, which reads the
            # history as it is then (the fake answers its last question).
            # So every answer answers a question stored before it, and the
            # last question has an answer after it.
            # chatd sends consecutive user messages as one (joined by a
            # blank line), and the fake answers that.
            asked, last_q = set(), 0
            head, tail = answer_for("\x00").split("\x00")
            for e in events:
                if e["type"] == "user_message":
                    asked.add(e["content"])
                    last_q = e["seq"]
                elif e["type"] == "ai_response":
                    run.inc("answers_stored")
                    c = e["content"]
                    if not (c.startswith(head) and c.endswith(tail) and
                            all(q in asked for q in c[len(head):-len(tail)].split("\n\n"))):
                        run.fail("%s seq %d: an answer to no question before it: %r" %
                                 (sid, e["seq"], e["content"][:80]))
            if not any(e["type"] == "ai_response" and e["seq"] > last_q for e in events):
                run.fail("%s: the last question (seq %d) has no answer" % (sid, last_q))
            if len(run.questions.get(sid, [])) != sum(1 for e in events
                                                      if e["type"] == "user_message"):
                run.fail("%s: %d questions asked, %d stored" % (
                    sid, len(run.questions.get(sid, [])),
                    sum(1 for e in events if e["type"] == "user_message")))

    await asyncio.gather(*(one(u, s) for u in users for s in u.sessions()))


def median_in(samples, lo, hi):
    vals = [s for t, s in samples if lo <= t <= hi]
    return statistics.median(vals) if vals else None


def report(run, cfg, samples, final, setup_s, traffic_s, gen_cpu, chatd_cpu, prov_cpu):
    t0 = samples[0][0] if samples else 0
    rel = [(t - t0,) + tuple(x[1:]) for x in samples for t in (x[0],)]
    dur = cfg.seconds
    w_start = cfg.warmup * dur
    win = cfg.window * dur
    rss = [(x[0], x[1]) for x in rel]
    # The descriptors less chatd's connections to the model provider: those
    # are a keep-alive pool that follows how many answers stream at once
    # (idle ones close after a while), reported apart.
    fds = [(x[0], x[2] - x[5]) for x in rel]
    prov = [x[5] for x in rel if x[0] >= w_start]
    first = median_in(rss, w_start, w_start + win)
    last = median_in(rss, dur - win, dur)
    fd_after = [f for t, f in fds if t >= w_start]
    res = {
        "clients": cfg.clients, "users": cfg.users, "devices": cfg.devices,
        "admins": cfg.admins, "seconds": round(traffic_s, 1), "setup_s": round(setup_s, 1),
        "samples": len(samples),
        "rss_kb_warmup_end": first, "rss_kb_end": last,
        "rss_kb_max": max(r for _, r in rss) if rss else None,
        "drift_pct": round((last / first - 1) * 100, 2) if first and last else None,
        "fd_min": min(fd_after) if fd_after else None,
        "fd_max": max(fd_after) if fd_after else None,
        "fd_first_median": median_in(fds, w_start, w_start + win),
        "fd_last_median": median_in(fds, dur - win, dur),
        "fd_final": final[2] - final[5], "rss_kb_final": final[1],
        "provider_conns_min": min(prov) if prov else None,
        "provider_conns_max": max(prov) if prov else None,
        "rss_anon_kb_warmup_end": median_in([(x[0], x[3]) for x in rel], w_start, w_start + win),
        "rss_anon_kb_end": median_in([(x[0], x[3]) for x in rel], dur - win, dur),
        "rss_file_kb_warmup_end": median_in([(x[0], x[4]) for x in rel], w_start, w_start + win),
        "rss_file_kb_end": median_in([(x[0], x[4]) for x in rel], dur - win, dur),
        "generator_cpu_pct": round(100 * gen_cpu / traffic_s, 1),
        "chatd_cpu_pct": round(100 * chatd_cpu / traffic_s, 1),
        "provider_cpu_pct": round(100 * prov_cpu / traffic_s, 1),
        "loadavg": os.getloadavg(),
    }
    res.update(sorted(run.count.items()))
    res["failures"] = run.failures
    res["rss_series_kb"] = [(round(x[0], 1),) + tuple(x[1:]) for x in rel]
    return res


def check(res, memory=True):
    """The soak's verdicts on top of the run's own failures: a list of text."""
    bad = list(res["failures"])
    if res["drift_pct"] is None:
        bad.append("too few samples for the drift")
    elif memory and res["drift_pct"] >= 5.0:
        bad.append("memory drift %.2f %% >= 5 %%" % res["drift_pct"])
    band = max(20, res["clients"] // 50)
    if res["fd_max"] - res["fd_min"] > band:
        bad.append("descriptors moved from %d to %d (band %d)" %
                   (res["fd_min"], res["fd_max"], band))
    if res["fd_last_median"] - res["fd_first_median"] > 5:
        bad.append("descriptors climbed: median %s then %s" %
                   (res["fd_first_median"], res["fd_last_median"]))
    for k in ("acked", "deliveries", "answers_stored", "connects"):
        if not res.get(k):
            bad.append("no %s at all" % k)
    if res.get("reconnects_clean", 0) + res.get("reconnects_dropped", 0) == 0 and \
            res["seconds"] >= 60:
        bad.append("no reconnect happened")
    return bad


def soak(cfg, chatd_args=(), log=print):
    """Start the fake provider and chatd, drive, stop chatd (exit 0, clean
    log: LSan under ASan). Returns (figures, failures)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 4 * cfg.clients + 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    with FakeProvider("--chunk", "8", key=KEY, mode="slow=25") as fp:
        d = Chatd("--model", "fake=openai:%s,key-env=K" % fp.base_url,
                  "--max-devices", str(cfg.devices * 2),
                  "--rate-limit", "6000", "--assistant-rate-limit", "600",
                  "--max-connections", str(cfg.clients * 2),
                  "--ping-interval", "20", "--log-level", "warn", *chatd_args,
                  env={"K": KEY})
        with d:
            log("soak: chatd pid %d port %d, %d clients (%d users x %d devices + %d admins), "
                "%d s" % (d.proc.pid, d.port, cfg.clients, cfg.users, cfg.devices, cfg.admins,
                          cfg.seconds))
            res = asyncio.run(drive(cfg, d.port, d.proc.pid, fp.proc.pid, fp.port))
            t = time.monotonic()
            d.stop(timeout=120)
            res["stop_s"] = round(time.monotonic() - t, 1)
            res["chatd_exit"] = d.proc.returncode
            warn = [ln for ln in d.log().splitlines() if "level=error" in ln]
            res["chatd_error_lines"] = warn[:10]
    return res


def main():
    ap = argparse.ArgumentParser(description="chatd soak (see the module doc)")
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 600)))
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--interval", type=float, default=2.0)
    ap.add_argument("--reconnect", type=float, default=60.0)
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args()
    cfg = Cfg(seconds=a.seconds, clients=a.clients, interval=a.interval, reconnect=a.reconnect)
    asan = os.environ.get("CHATD_BUILD_KIND") == "address"
    res = soak(cfg)
    bad = check(res, memory=not asan)
    show = {k: v for k, v in res.items() if k != "rss_series_kb"}
    print(json.dumps(show, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f)
    if asan:
        print("soak: ASan build: the drift is reported, not checked; LeakSanitizer was clean")
    for b in bad:
        print("FAIL: " + b)
    print("soak: %s" % ("FAILED" if bad else "passed"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
