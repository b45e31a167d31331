"""A history checker for chat runs that crash, reconnect and resume.

A test records, as it goes, what every client did and saw:

- every send of a chat message: who sent it (user), its client id, its
  content and session, and how each attempt ended: acknowledged with a
  seq, refused by the server (an `error`), or unknown (the connection
  dropped or the server died before any answer). A retry after a
  reconnect is another attempt of the same operation (same user, same id);
- every connection a device opens, every `resume` it asks for and every
  `resumed` that answers it, and every stored event (anything with a seq)
  it receives, in arrival order.

At the end the test reads each session's history from the server and
calls check(), which returns the anomalies of the whole run, each of one
of these kinds:

LOST        an acknowledged message absent from the final history (or
            stored at another seq than its ack said); or a stored event
            missing from a device that resumed past it (between the
            resume's after_seq and the `resumed` frame's last_seq), or
            from a device the test says must end complete, when that
            event was an acknowledged message.
DUPLICATED  a client message (user, id) stored twice; a seq stored twice;
            one seq delivered twice on one connection; one client message
            seen at two different seqs by one device; one operation
            acknowledged with two different seqs.
REORDERED   the stored seqs of a session not exactly 1..n; on a
            connection, once its resume of the session is answered (or
            from its first event when it never resumed the session), an
            event that is not the next seq after the highest one that
            connection has; a gap in what a resume filled (a missing seq
            that was no acknowledged message).
UNEXPECTED  a stored or delivered message whose (sender, id) nobody sent,
            or whose content differs from what was sent with that id; a
            message stored although every attempt was refused outright;
            an event a device received that differs from the stored event
            at that seq, or a seq beyond the session's history.

An operation whose attempts all ended unknown (or refused with a reply
that says it may have been stored) may be stored once or not at all,
never twice. An operation that was acknowledged must be stored exactly
once at the acknowledged seq.

Stored events that no tracked client sends (an assistant's answer, a help
request) are outside the check unless the test says they are expected
(the `untracked` predicate of check()).

Thread-safe: clients record from their reader threads. Standard library
only.
"""
import collections
import threading

LOST, DUPLICATED, REORDERED, UNEXPECTED = "LOST", "DUPLICATED", "REORDERED", "UNEXPECTED"
KINDS = (LOST, DUPLICATED, REORDERED, UNEXPECTED)

Anomaly = collections.namedtuple("Anomaly", "kind detail")

# How an attempt ended.
ACKED, REFUSED, MAYBE, UNKNOWN = "acked", "refused", "maybe", "unknown"


class Op:
    """One client message: every attempt with the same (user, id)."""

    __slots__ = ("user", "cid", "content", "session", "attempts", "seqs")

    def __init__(self, user, cid, content, session):
        self.user, self.cid, self.content, self.session = user, cid, content, session
        self.attempts = []   # outcomes, in order (None while unanswered)
        self.seqs = []       # (session, seq) of every ack

    def outcome(self):
        """acked if any attempt was; else unknown/maybe if any was;
        refused only when every attempt was refused outright."""
        if self.seqs:
            return ACKED
        if any(a in (UNKNOWN, MAYBE, None) for a in self.attempts):
            return UNKNOWN
        return REFUSED


class Conn:
    """One connection of one device, with what arrived on it."""

    def __init__(self, cid, device, user):
        self.id, self.device, self.user = cid, device, user
        self.items = []  # ("event", session, seq, sender, id, content) | ("resume", s, after)
        #                  | ("resumed", session, last_seq), in arrival order


class History:
    def __init__(self):
        self._lock = threading.Lock()
        self.unknown_stored = None   # set by check(): unknown outcomes found stored
        self.ops = {}          # (user, cid) -> Op
        self.conns = []        # every Conn, in the order opened
        self.devices = {}      # device -> user

    # ---- recording: operations --------------------------------------------
    def send(self, user, cid, content, session=None):
        """One attempt of the message (user, cid) leaves the client."""
        with self._lock:
            op = self.ops.get((user, cid))
            if op is None:
                op = self.ops[(user, cid)] = Op(user, cid, content, session)
            elif op.content != content or (session and op.session and op.session != session):
                raise ValueError("client id %r of %s reused for another message" % (cid, user))
            op.session = op.session or session
            op.attempts.append(None)

    def _settle(self, user, cid, outcome):
        op = self.ops.get((user, cid))
        if op is None:
            raise ValueError("an answer to %r of %s, which was never sent" % (cid, user))
        for i, a in enumerate(op.attempts):
            if a is None:
                op.attempts[i] = outcome
                return op
        # More answers than attempts: the server answered one send twice.
        op.attempts.append(outcome)
        return op

    def ack(self, user, cid, session, seq):
        with self._lock:
            op = self._settle(user, cid, ACKED)
            op.seqs.append((session, seq))
            op.session = op.session or session

    def refused(self, user, cid, maybe_stored=False):
        """An `error` answered the attempt; maybe_stored when its words say
        the message may have been stored nevertheless."""
        with self._lock:
            self._settle(user, cid, MAYBE if maybe_stored else REFUSED)

    def unknown(self, user, cid):
        """The connection ended before any answer to this attempt."""
        with self._lock:
            op = self.ops.get((user, cid))
            if op is not None and None in op.attempts:
                op.attempts[op.attempts.index(None)] = UNKNOWN

    # ---- recording: what devices saw --------------------------------------
    def connect(self, device, user):
        """A device opened a connection; returns its handle."""
        with self._lock:
            self.devices[device] = user
            c = Conn(len(self.conns), device, user)
            self.conns.append(c)
            return c

    def discard(self, conn):
        """A connection that never opened (refused, server down): forgotten."""
        with self._lock:
            if conn.items:
                raise ValueError("discarding a connection that received frames")
            self.conns.remove(conn)

    def resume(self, conn, session, after_seq):
        """The device asked for what follows after_seq (before sending it)."""
        with self._lock:
            conn.items.append(("resume", session, after_seq))

    def resume_failed(self, conn, session):
        """The oldest unanswered resume of session on conn was refused (an
        `error`): it fills nothing."""
        with self._lock:
            conn.items.append(("resume_failed", session, None))

    def received(self, conn, msg):
        """A frame arrived on conn: stored events (with a seq) and `resumed`
        are kept, the rest is ignored."""
        t = msg.get("type")
        with self._lock:
            if t == "resumed":
                conn.items.append(("resumed", msg.get("session_id"), msg.get("last_seq")))
            elif isinstance(msg.get("seq"), int) and t not in ("ack", "error", "read"):
                if t == "ai_response" and msg.get("done") is False:
                    return
                sender = (msg.get("sender") or {}).get("id")
                conn.items.append(("event", msg.get("session_id"), msg["seq"], sender,
                                   msg.get("id"), msg.get("content")))

    # ---- checking ------------------------------------------------------------
    def check(self, final, complete=None, untracked=None, out=print):
        """final: {session_id: [stored events, in the order the history
        returned them]}. complete: {device: sessions} the device must end
        holding every stored event of. untracked(event) True
        for a stored event no tracked client sent that is allowed. Prints
        a summary with out (None: silent); returns the anomalies."""
        with self._lock:
            ch = _Checker(self, final, dict(complete or {}), untracked)
            anomalies = ch.run()
            self.unknown_stored = ch.unknown_stored
        if out:
            out(summary(self, anomalies))
        return anomalies

    def stats(self):
        with self._lock:
            n = collections.Counter(op.outcome() for op in self.ops.values())
            attempts = sum(len(op.attempts) for op in self.ops.values())
            events = sum(1 for c in self.conns for i in c.items if i[0] == "event")
            return {"operations": len(self.ops), "attempts": attempts, "acked": n[ACKED],
                    "unknown": n[UNKNOWN], "refused": n[REFUSED], "connections": len(self.conns),
                    "events_received": events}


def summary(history, anomalies):
    counts = collections.Counter(a.kind for a in anomalies)
    st = history.stats()
    lines = ["checker: %d operations (%d attempts): %d acked, %d unknown (%s stored), %d refused; "
             "%d connections received %d events" % (
                 st["operations"], st["attempts"], st["acked"], st["unknown"],
                 history.unknown_stored, st["refused"], st["connections"],
                 st["events_received"]),
             "checker: anomalies " + ", ".join("%s=%d" % (k, counts[k]) for k in KINDS)]
    for a in anomalies[:20]:
        lines.append("  %s: %s" % a)
    if len(anomalies) > 20:
        lines.append("  ... %d more" % (len(anomalies) - 20))
    return "\n".join(lines)


class _Checker:
    def __init__(self, h, final, complete, untracked):
        self.h, self.final, self.complete = h, final, complete
        self.untracked = untracked or (lambda e: False)
        self.out = []
        # session -> {seq: stored event}, and the seqs of acknowledged ops.
        self.stored = {}
        self.acked_seqs = collections.defaultdict(set)

    def flag(self, kind, fmt, *args):
        self.out.append(Anomaly(kind, fmt % args))

    def run(self):
        self.check_ops()
        self.check_storage()
        self.check_acks_stored()
        for c in self.h.conns:
            self.check_conn(c)
        self.check_devices()
        return self.out

    def check_ops(self):
        for op in self.h.ops.values():
            if len(set(op.seqs)) > 1:
                self.flag(DUPLICATED, "%s/%s acknowledged at several seqs: %s", op.user, op.cid,
                          sorted(set(op.seqs)))
            for s, q in op.seqs:
                self.acked_seqs[s].add(q)

    def check_storage(self):
        found = collections.defaultdict(list)   # (user, cid) -> [(session, seq)]
        for sid, events in self.final.items():
            by_seq = self.stored[sid] = {}
            seqs = [e.get("seq") for e in events]
            if seqs != list(range(1, len(seqs) + 1)):
                bad = next(i for i, s in enumerate(seqs + [None]) if s != i + 1)
                self.flag(REORDERED, "session %s: stored seqs are not 1..%d (index %d: %s)",
                          sid, len(seqs), bad, seqs[max(0, bad - 2):bad + 3])
            for e in events:
                q = e.get("seq")
                if q in by_seq:
                    self.flag(DUPLICATED, "session %s: seq %s stored twice", sid, q)
                by_seq[q] = e
                sender = (e.get("sender") or {}).get("id")
                cid = e.get("id")
                op = self.h.ops.get((sender, cid)) if cid is not None else None
                if op is None:
                    if not self.untracked(e):
                        self.flag(UNEXPECTED, "session %s seq %s: stored %s from %s with id %r "
                                  "that nobody sent", sid, q, e.get("type"), sender, cid)
                    continue
                found[(sender, cid)].append((sid, q))
                if e.get("content") != op.content:
                    self.flag(UNEXPECTED, "session %s seq %s: %s/%s stored with content %r, "
                              "sent %r", sid, q, sender, cid, _cut(e.get("content")),
                              _cut(op.content))
                if op.session and op.session != sid:
                    self.flag(UNEXPECTED, "%s/%s sent to session %s, stored in %s", sender, cid,
                              op.session, sid)
        self.found = found
        self.unknown_stored = sum(1 for k, op in self.h.ops.items()
                                  if op.outcome() == UNKNOWN and k in found)
        for key, where in found.items():
            op = self.h.ops[key]
            if len(where) > 1:
                self.flag(DUPLICATED, "%s/%s (%s) stored %d times: %s", key[0], key[1],
                          op.outcome(), len(where), where)
            if op.outcome() == REFUSED:
                self.flag(UNEXPECTED, "%s/%s stored at %s although every attempt was refused",
                          key[0], key[1], where[0])

    def check_acks_stored(self):
        for key, op in self.h.ops.items():
            if op.outcome() != ACKED:
                continue
            where = self.found.get(key, [])
            sid, seq = op.seqs[0]
            if not where:
                self.flag(LOST, "%s/%s acknowledged at %s seq %s, absent from the history",
                          op.user, op.cid, sid, seq)
            elif (sid, seq) not in where:
                self.flag(LOST, "%s/%s acknowledged at %s seq %s, stored at %s", op.user, op.cid,
                          sid, seq, where)

    def compare(self, c, sid, seq, sender, cid, content):
        """An event a device received against the stored one at its seq."""
        if sid not in self.stored:
            return
        st = self.stored[sid].get(seq)
        if st is None:
            self.flag(UNEXPECTED, "%s (conn %d): session %s seq %s, beyond the history",
                      c.device, c.id, sid, seq)
            return
        st_sender = (st.get("sender") or {}).get("id")
        if (st_sender, st.get("id"), st.get("content")) != (sender, cid, content):
            self.flag(UNEXPECTED, "%s (conn %d): session %s seq %s is %s/%r %r, stored %s/%r %r",
                      c.device, c.id, sid, seq, sender, cid, _cut(content), st_sender,
                      st.get("id"), _cut(st.get("content")))

    def missing(self, c, sid, seqs, why):
        for q in sorted(seqs):
            if q in self.acked_seqs[sid]:
                self.flag(LOST, "%s (conn %d): acknowledged seq %s of session %s missing %s",
                          c.device, c.id, q, sid, why)
            else:
                self.flag(REORDERED, "%s (conn %d): gap at seq %s of session %s %s",
                          c.device, c.id, q, sid, why)

    def check_conn(self, c):
        seen = collections.defaultdict(set)      # session -> seqs on this connection
        top = {}                                 # session -> highest seq (ordered phase)
        pending = collections.defaultdict(list)  # session -> after_seq of unanswered resumes
        resumed = {}                             # session -> its last answered resume, in words
        for item in c.items:
            if item[0] == "resume":
                pending[item[1]].append(item[2])
                continue
            if item[0] == "resume_failed":
                if pending[item[1]]:
                    pending[item[1]].pop(0)
                continue
            if item[0] == "resumed":
                sid, last = item[1], item[2]
                if not pending[sid]:
                    self.flag(UNEXPECTED, "%s (conn %d): resumed %s without a resume",
                              c.device, c.id, sid)
                    continue
                after = pending[sid].pop(0)
                resumed[sid] = "resumed after %d to %s" % (after, last)
                if isinstance(last, int):
                    gap = set(range(after + 1, last + 1)) - seen[sid]
                    self.missing(c, sid, gap, "after resuming from %d to %d" % (after, last))
                    top[sid] = max([last] + list(seen[sid]))
                continue
            _, sid, seq, sender, cid, content = item
            if seq in seen[sid]:
                self.flag(DUPLICATED, "%s (conn %d): seq %s of session %s delivered twice",
                          c.device, c.id, seq, sid)
            elif not pending[sid]:
                # Ordered phase: live events follow one another without gap.
                if sid in top and seq != top[sid] + 1:
                    self.flag(REORDERED, "%s (conn %d): session %s seq %s after seq %s (%s)",
                              c.device, c.id, sid, seq, top[sid],
                              resumed.get(sid, "never resumed"))
                top[sid] = max(top.get(sid, seq), seq)
            seen[sid].add(seq)
            self.compare(c, sid, seq, sender, cid, content)
            if cid is not None and (sender, cid) not in self.h.ops and not self.untracked(
                    {"type": "user_message", "session_id": sid, "seq": seq, "id": cid,
                     "sender": {"id": sender}, "content": content}):
                self.flag(UNEXPECTED, "%s (conn %d): %s/%r at seq %s, nobody sent it",
                          c.device, c.id, sender, cid, seq)

    def check_devices(self):
        views = collections.defaultdict(lambda: collections.defaultdict(set))
        where = {}   # (device, sender, cid) -> the seq it was first seen at
        for c in self.h.conns:
            for item in c.items:
                if item[0] != "event":
                    continue
                _, sid, seq, sender, cid, _content = item
                views[c.device][sid].add(seq)
                if cid is None:
                    continue
                q = where.setdefault((c.device, sender, cid), (sid, seq))
                if q != (sid, seq):
                    self.flag(DUPLICATED, "%s: %s/%s seen at %s and at %s", c.device, sender,
                              cid, q, (sid, seq))
        for device, sessions in sorted(self.complete.items()):
            end = Conn(-1, device, self.h.devices.get(device))
            for sid in sessions:
                gap = set(self.stored.get(sid, {})) - views[device][sid]
                self.missing(end, sid, gap, "at the end of the run")


def _cut(s, n=40):
    s = repr(s) if not isinstance(s, str) else s
    return s if len(s) <= n else s[:n] + "..."
