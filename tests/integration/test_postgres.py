"""chatd on PostgreSQL (--postgres DSN): the storage guarantees through the
real server, against a PostgreSQL this test starts and stops itself.

The server runs from Debian's postgresql package (which `make test`
installs: missing binaries fail the test, they never skip it) in a
temporary folder, on a Unix socket in that folder only, as user nobody
when the test runs as root (PostgreSQL refuses root).
"""
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from harness import SLOW, Chatd, http_get, run  # noqa: E402
from chatload import ChatClient, check_gapless, history, pipeline  # noqa: E402

LOAD_ARGS = ("--workers", "2", "--rate-limit", "1000000", "--input-rate", "1000000",
             "--input-byte-rate", "1000000000")
WAIT = 60 if SLOW else 20


class Postgres:
    """A PostgreSQL server of the test's own, on a Unix socket."""

    def __init__(self, listen="", trust_from=""):
        # listen: an address to take TCP connections on too, besides the
        # Unix socket, from the address trust_from (trusted) only.
        self.listen = listen
        bindir = os.environ.get("CHATD_PG_BINDIR")
        if not bindir:
            found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
            assert found, ("PostgreSQL's initdb is not installed (Debian package postgresql; "
                           "`make test` installs it, or set CHATD_PG_BINDIR)")
            bindir = os.path.dirname(found[-1])
        self.bin = bindir
        # /tmp, not TMPDIR: the server's user must reach it, and a socket
        # path has at most 107 bytes.
        self.dir = tempfile.mkdtemp(prefix="chatd-pgit-", dir="/tmp")
        self.as_user = []
        if os.geteuid() == 0:
            os.chown(self.dir, 65534, 65534)
            self.as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        self.data = os.path.join(self.dir, "data")
        self.cmd("initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
                 "--no-locale")
        if listen:
            with open(os.path.join(self.data, "pg_hba.conf"), "a") as f:
                f.write("host all all %s/32 trust\n" % trust_from)
        self.start()

    def cmd(self, prog, *args):
        p = subprocess.run(self.as_user + [os.path.join(self.bin, prog)] + list(args),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=180)
        assert p.returncode == 0, "%s failed: %s\n%s" % (prog, p.stdout.decode(errors="replace"),
                                                         self.server_log())
        return p.stdout.decode()

    def server_log(self):
        try:
            with open(os.path.join(self.dir, "server.log"), errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def start(self):
        self.cmd("pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "server.log"), "-w",
                 "-t", "120", "-o",
                 "-k %s -c listen_addresses=%s -c fsync=off" % (self.dir, self.listen), "start")

    def stop(self, mode="fast"):
        self.cmd("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def psql(self, sql, db="postgres"):
        return self.cmd(os.path.join(self.bin, "psql"), "-h", self.dir, "-U", "postgres", "-d",
                        db, "-AtX", "-v", "ON_ERROR_STOP=1", "-c", sql).strip()

    def new_db(self, name):
        self.psql("CREATE DATABASE %s" % name)
        return "host=%s user=postgres dbname=%s" % (self.dir, name)

    def close(self):
        subprocess.run(self.as_user + [os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-m",
                                       "immediate", "-w", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(self.dir, ignore_errors=True)


PG = None


def readyz(port):
    return http_get(port, "/readyz")[0]


def commits_settled(*logs):
    """How many COMMITs cut off with their connection the writers settled
    after reconnecting (store_commit_settled), by the chatd logs given. A
    fault under traffic shows as refused writes or as such a commit: while
    the writer settles it, the writes behind it wait and are acked late."""
    return sum(log.count("event=store_commit_settled") for log in logs)


def wait_for(pred, what, timeout=WAIT):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError("not within %ss: %s" % (timeout, what))


def user_message(cid, content, sid=None):
    m = {"type": "user_message", "id": cid, "content": content}
    if sid:
        m["session_id"] = sid
    return m


def ack(reply, what):
    assert reply.get("type") == "ack", "%s: expected an ack, got %s" % (what, reply)
    return reply


# ---- 1. what was acked is there after a restart -----------------------------------

def test_acked_messages_survive_a_restart():
    # The server trusts local users: the password is only there to be hidden.
    dsn = PG.new_db("restart") + " password=not-to-be-shown"
    n = 20
    with Chatd("--postgres", dsn, *LOAD_ARGS) as d:
        assert "storage=postgres" in d.log(), d.log()[-2000:]
        with open("/proc/%d/cmdline" % d.proc.pid, "rb") as f:
            assert b"not-to-be-shown" not in f.read(), "the DSN's password is in ps"
        c = ChatClient(d.port, "alice")
        first = ack(c.request(user_message("m0", "hello postgres")), "m0")
        sid = first["session_id"]
        acks = pipeline(c, [user_message("m%d" % i, "message %d" % i, sid)
                            for i in range(1, n)])
        assert len(acks) == n - 1 and all(a["type"] == "ack" for a in acks.values()), acks
        c.close()
    with Chatd("--postgres", dsn, *LOAD_ARGS) as d:
        c = ChatClient(d.port, "alice")
        events, last = history(d.port, sid, c.token)
        check_gapless(sid, events)
        assert last == n and len(events) == n, (last, len(events))
        assert [e["content"] for e in events] == \
            ["hello postgres"] + ["message %d" % i for i in range(1, n)]
        # A retry after the restart is the same message, not a new one.
        again = ack(c.request(user_message("m5", "message 5", sid)), "m5 again")
        assert again["seq"] == 6, again
        assert history(d.port, sid, c.token)[1] == n
        c.close()
        assert "not-to-be-shown" not in d.log() and "password=***" in d.log(), d.log()[-2000:]


# ---- 2. the server goes away and comes back ---------------------------------------

def test_unreachable_server_refuses_then_recovers():
    dsn = PG.new_db("outage")
    with Chatd("--postgres", dsn, *LOAD_ARGS) as d:
        c = ChatClient(d.port, "bob")
        sid = ack(c.request(user_message("b0", "before")), "b0")["session_id"]
        assert readyz(d.port) == 200
        PG.stop()
        try:
            # Noticed without a write (the writer checks an idle connection).
            wait_for(lambda: readyz(d.port) == 503, "/readyz 503 while PostgreSQL is down")
            r = c.request(user_message("b1", "during", sid))
            assert r.get("type") == "error" and r.get("code") == "unavailable", r
            assert readyz(d.port) == 503
        finally:
            PG.start()
        wait_for(lambda: readyz(d.port) == 200, "/readyz 200 once PostgreSQL is back")
        # The client's retry with the same id is stored, once.
        r1 = ack(c.request(user_message("b1", "during", sid)), "b1 retried")
        r2 = ack(c.request(user_message("b1", "during", sid)), "b1 twice")
        assert r1["seq"] == r2["seq"] == 2, (r1, r2)
        events, last = history(d.port, sid, c.token)
        check_gapless(sid, events)
        assert [e["content"] for e in events] == ["before", "during"], events
        c.close()
        log = d.log()
    assert "event=store_unhealthy" in log and "event=store_healthy" in log, log[-3000:]


# ---- 3. a COMMIT cut off mid-way is settled by asking the server ---------------------

def held_and_cut_off(db, user, trigger, held_query, what):
    """A message held in the server by a trigger ("CREATE ... TRIGGER
    hold ..." calling hold(), which sleeps), its connection ended while
    held_query shows it active: the batch is settled by pg_xact_status
    ('aborted': the reply is 'unavailable'), and once the trigger is gone
    the retry with the same id is stored once."""
    dsn = PG.new_db(db)
    with Chatd("--postgres", dsn, *LOAD_ARGS) as d:
        c = ChatClient(d.port, user)
        sid = ack(c.request(user_message("m0", "before")), "m0")["session_id"]
        PG.psql("CREATE FUNCTION hold() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN PERFORM pg_sleep(30); RETURN NEW; END $$; " + trigger, db)
        c.send(user_message("held", "held", sid))
        active = ("SELECT pid FROM pg_stat_activity WHERE datname = '%s' AND "
                  "application_name = 'chatd' AND state = 'active' AND %s" % (db, held_query))
        wait_for(lambda: PG.psql(active, db) != "", "chatd's statement is held: " + what)
        PG.psql("SELECT pg_terminate_backend(pid) FROM (%s) AS c" % active, db)
        r = c.wait_reply("held", WAIT)
        assert r.get("type") == "error" and r.get("code") == "unavailable", r
        assert "event=store_commit_settled" in d.log() and "outcome=aborted" in d.log(), \
            d.log()[-3000:]
        PG.psql("DROP TRIGGER hold ON events", db)
        wait_for(lambda: readyz(d.port) == 200, "/readyz 200 after the reconnection")
        r1 = ack(c.request(user_message("held", "held", sid)), "held retried")
        r2 = ack(c.request(user_message("held", "held", sid)), "held twice")
        assert r1["seq"] == r2["seq"] == 2, (r1, r2)
        events, last = history(d.port, sid, c.token)
        check_gapless(sid, events)
        assert [e["content"] for e in events] == ["before", "held"], events
        c.close()


def test_commit_cut_off_is_settled():
    """The connection is lost while COMMIT runs (a deferred trigger holds
    the COMMIT; the test ends that backend): chatd cannot know from the
    connection whether it committed, reconnects, asks pg_xact_status, and
    answers by what the server says (here: rolled back, so 'unavailable',
    and the retry with the same id is stored once)."""
    held_and_cut_off("cutoff", "dave",
                     "CREATE CONSTRAINT TRIGGER hold AFTER INSERT ON events "
                     "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.client_id = 'held') "
                     "EXECUTE FUNCTION hold()", "query = 'COMMIT'", "COMMIT")


def test_lost_before_a_queued_commit_is_settled():
    """The connection is lost while an event statement runs, with the
    COMMIT already sent behind it: chatd cannot tell from the connection
    whether the server reached the COMMIT, so it settles the batch the
    same way."""
    held_and_cut_off("queued", "fay",
                     "CREATE TRIGGER hold BEFORE INSERT ON events FOR EACH ROW "
                     "WHEN (NEW.client_id = 'held') EXECUTE FUNCTION hold()",
                     "query LIKE 'WITH s AS%'", "the event")


# ---- 3a. events sent ahead of their answers (pipeline mode) ---------------------------

def batch_sizes(port):
    """(batches committed, of which at most 256 requests) from /metrics."""
    text = http_get(port, "/metrics")[2].decode()
    count = small = None
    for line in text.splitlines():
        if line.startswith("chatd_store_batch_size_count "):
            count = int(line.split()[1])
        elif line.startswith('chatd_store_batch_size_bucket{le="256"} '):
            small = int(line.split()[1])
    return count, small


def forget(client, ids):
    """Drop the replies already received for ids: their retries get new ones."""
    with client.cond:
        for i in ids:
            client.replies.pop(i, None)


def test_pipelined_events_and_a_refused_one():
    """The writer sends a batch's events without waiting for each answer
    (at most 256 ahead, then it reads them). A batch of more than 256
    messages is stored whole and gapless; a statement the server refuses
    in the middle of a batch (a trigger raises for one client id) refuses
    that batch and no other, leaves nothing of it stored, and every
    refused message is stored once when retried."""
    dsn = PG.new_db("pipelined")
    with Chatd("--postgres", dsn, *LOAD_ARGS) as d:
        clients = [ChatClient(d.port, "pipe%d" % k) for k in range(4)]
        sids = [ack(c.request(user_message("p%d-0" % k, "first")), "first")["session_id"]
                for k, c in enumerate(clients)]
        # 4 x 300 messages with 300 in flight each: batches of hundreds.
        n = 300
        results = [None] * len(clients)

        def send_all(k):
            msgs = [user_message("p%d-%d" % (k, i), "message %d" % i, sids[k])
                    for i in range(1, n + 1)]
            results[k] = pipeline(clients[k], msgs, window=n)

        threads = [threading.Thread(target=send_all, args=(k,)) for k in range(len(clients))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for k, got in enumerate(results):
            assert len(got) == n and all(r["type"] == "ack" for r in got.values()), \
                [r for r in got.values() if r["type"] != "ack"][:3]
            assert sorted(r["seq"] for r in got.values()) == list(range(2, n + 2))
            events, last = history(d.port, sids[k], clients[k].token)
            check_gapless(sids[k], events)
            assert last == n + 1 and [e["content"] for e in events[1:]] == \
                ["message %d" % i for i in range(1, n + 1)]
        count, small = batch_sizes(d.port)
        assert count is not None and small is not None and count > small, \
            "no batch of more than 256 requests: %s of %s" % (small, count)

        PG.psql("CREATE FUNCTION refuse_one() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$; "
                "CREATE TRIGGER refuse_one BEFORE INSERT ON events FOR EACH ROW "
                "WHEN (NEW.client_id = 'poison') EXECUTE FUNCTION refuse_one()", "pipelined")
        c = clients[0]
        msgs = [user_message("q%d" % i, "second %d" % i, sids[0]) for i in range(40)]
        msgs[20] = user_message("poison", "refused", sids[0])
        got = pipeline(c, msgs, window=40)
        assert len(got) == 40, got
        refused = sorted(m for m, r in got.items() if r["type"] != "ack")
        assert "poison" in refused, got["poison"]
        for m in refused:
            assert got[m].get("code") == "unavailable", got[m]
        acked = sorted(r["seq"] for r in got.values() if r["type"] == "ack")
        # Acked ones follow the first round without a gap; nothing refused is stored.
        assert acked == list(range(n + 2, n + 2 + len(acked))), acked
        events, last = history(d.port, sids[0], c.token)
        check_gapless(sids[0], events)
        contents = {e["content"] for e in events}
        by_id = {m["id"]: m["content"] for m in msgs}
        assert not [m for m in refused if by_id[m] in contents], "a refused message is stored"
        assert last == n + 1 + len(acked), (last, len(acked))
        assert "refused by the test" in d.log(), d.log()[-2000:]

        PG.psql("DROP TRIGGER refuse_one ON events", "pipelined")
        forget(c, refused)
        again = pipeline(c, [m for m in msgs if m["id"] in refused], window=40)
        assert all(r["type"] == "ack" for r in again.values()) and len(again) == len(refused), \
            again
        assert readyz(d.port) == 200, "not ready after a batch wrote again"
        retried = sorted(r["seq"] for r in again.values())
        assert retried == list(range(last + 1, last + 1 + len(refused))), retried
        # A second retry of everything is answered from what is stored.
        forget(c, [m["id"] for m in msgs])
        twice = pipeline(c, msgs, window=40)
        assert {m: r["seq"] for m, r in twice.items()} == \
            {**{m: r["seq"] for m, r in got.items() if r["type"] == "ack"},
             **{m: r["seq"] for m, r in again.items()}}
        events, last = history(d.port, sids[0], c.token)
        check_gapless(sids[0], events)
        assert last == n + 1 + 40 and len(events) == last, (last, len(events))
        for x in clients:
            x.close()


def test_event_statement_checks_its_seq():
    """The COMMIT goes behind a batch's events without waiting for their
    answers, so each event statement checks its own seq: the one the
    writer expects (and sealed the content for), or the statement fails
    and the COMMIT behind it with it. A trigger that moves a session's
    counter a step further than chatd expects refuses that message's
    batch whole (nothing stored, logged); the retry once it is gone is
    stored at the seq expected."""
    dsn = PG.new_db("seqcheck")
    with Chatd("--postgres", dsn, *LOAD_ARGS) as d:
        c = ChatClient(d.port, "erin")
        sid = ack(c.request(user_message("e1", "first")), "e1")["session_id"]
        assert ack(c.request(user_message("e2", "second", sid)), "e2")["seq"] == 2
        PG.psql("CREATE FUNCTION skew() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN NEW.last_seq := NEW.last_seq + 1; RETURN NEW; END $$; "
                "CREATE TRIGGER skew BEFORE UPDATE ON sessions FOR EACH ROW "
                "WHEN (OLD.last_seq = 2 AND NEW.last_seq = 3) EXECUTE FUNCTION skew()",
                "seqcheck")
        r = c.request(user_message("e3", "third", sid))
        assert r.get("type") == "error" and r.get("code") == "unavailable", r
        assert "event=store_seq_mismatch" in d.log(), d.log()[-2000:]
        assert PG.psql("SELECT last_seq FROM sessions WHERE id = '%s'" % sid, "seqcheck") == "2"
        events, last = history(d.port, sid, c.token)
        assert last == 2 and [e["content"] for e in events] == ["first", "second"], events
        PG.psql("DROP TRIGGER skew ON sessions", "seqcheck")
        forget(c, ["e3"])
        assert ack(c.request(user_message("e3", "third", sid)), "e3 retried")["seq"] == 3
        events, last = history(d.port, sid, c.token)
        check_gapless(sid, events)
        assert [e["content"] for e in events] == ["first", "second", "third"], events
        c.close()


# ---- 3c. a session's row, updated by every message, stays cheap -----------------------

def session_indexes(db):
    return PG.psql("SELECT string_agg(indexdef, ' | ' ORDER BY indexname) FROM pg_indexes "
                   "WHERE tablename = 'sessions'", db)


def test_session_updates_are_heap_only():
    """Every message updates its session's row (seq counter, activity
    time). No index covers a column a message changes, so PostgreSQL
    updates the row in place (HOT): no new index entries, nothing for the
    next look-up by id to wade through."""
    dsn = PG.new_db("hot")
    with Chatd("--postgres", dsn, *LOAD_ARGS) as d:
        c = ChatClient(d.port, "erin")
        sid = ack(c.request(user_message("h0", "first")), "h0")["session_id"]
        # One at a time: each message its own batch, its own activity time
        # (in a batch they share one, and an unchanged value is no change).
        n = 150
        got = pipeline(c, [user_message("h%d" % i, "message %d" % i, sid)
                           for i in range(1, n + 1)], window=1)
        assert len(got) == n and all(r["type"] == "ack" for r in got.values())
        c.close()
        stats = "SELECT n_tup_upd || ' ' || n_tup_hot_upd FROM pg_stat_user_tables " \
                "WHERE relname = 'sessions'"
        # The server publishes a backend's counts within a second or so.
        wait_for(lambda: int(PG.psql(stats, "hot").split()[0]) >= n, "the updates counted")
        upd, hot = map(int, PG.psql(stats, "hot").split())
    assert hot >= 0.9 * upd, "only %d of %d session updates were heap-only" % (hot, upd)
    assert "updated_at" not in session_indexes("hot"), session_indexes("hot")


def new_sessions(client, n):
    """n sessions of the client's user, each made by a first message."""
    return [ack(client.request(user_message("new%d" % k, "first")), "new")["session_id"]
            for k in range(n)]


def settled(sql, db):
    """A statistics query's answer once every backend's counts reached the
    server (it publishes them within a second or so)."""
    time.sleep(1.5)
    return PG.psql(sql, db)


def test_batches_find_rows_by_key():
    """The writer finds a batch's rows by key, never by scanning a table,
    even where the planner would find a scan cheaper: a small table of
    sessions whose rows every message updates holds many row versions in
    its pages until they are pruned, and a batch that locks many of those
    sessions scanned them all (at 6,250 messages/s over 100 sessions the
    writer's server process went from 39% to 70% of a core)."""
    dsn = PG.new_db("bykey")
    db = "bykey"
    with Chatd("--postgres", dsn, *LOAD_ARGS) as d:
        c = ChatClient(d.port, "gus")
        sids = new_sessions(c, 30)
        counts = "SELECT sum(seq_scan) || ' ' || sum(COALESCE(idx_scan, 0)) " \
                 "FROM pg_stat_user_tables WHERE relname IN ('sessions', 'events')"
        seq0, idx0 = map(int, settled(counts, db).split())
        for r in range(5):  # batches of messages to many sessions at once
            got = pipeline(c, [user_message("r%d-%d" % (r, k), "round %d" % r, sid)
                               for k, sid in enumerate(sids)], window=30)
            assert len(got) == 30 and all(x["type"] == "ack" for x in got.values()), got
        wait_for(lambda: int(PG.psql(counts, db).split()[1]) >= idx0 + 150,
                 "the look-ups counted")
        seq1, idx1 = map(int, settled(counts, db).split())
        c.close()
    assert seq1 == seq0, "sessions or events scanned %d times for 150 messages" % (seq1 - seq0)


def test_dedup_reads_by_client_id():
    """A retry is recognised by its client id through events_by_client,
    not by reading its session's events, however long the sessions have
    grown since the first batches (the cluster benchmark caught a plan
    kept from a nearly empty table that read them all; the writer now has
    each batch's look-up planned afresh)."""
    dsn = PG.new_db("dedup")
    db = "dedup"
    with Chatd("--postgres", dsn, *LOAD_ARGS) as d:
        c = ChatClient(d.port, "hal")
        sids = new_sessions(c, 12)

        def round_(tag):
            got = pipeline(c, [user_message("%s-%d" % (tag, k), tag, sid)
                               for k, sid in enumerate(sids)], window=12)
            assert len(got) == 12 and all(x["type"] == "ack" for x in got.values()), got
            return got

        for r in range(10):  # batches of about 12 look-ups, on a nearly empty table
            round_("early%d" % r)
        # 20,000 events more in each session, behind chatd's back (seqs far
        # above the ones chatd gives next).
        PG.psql("ALTER TABLE events SET (autovacuum_enabled = false); "
                "INSERT INTO events (session_id, seq, type, sender_type, sender_id, client_id, "
                "content, created_at) SELECT s, 1000 + g, 'user_message', 'user', 'bulk', "
                "'b' || g, 'x', 0 FROM generate_series(1, 20000) AS g, "
                "unnest(ARRAY['%s']) AS s" % "','".join(sids), db)
        reads = "SELECT idx_tup_read FROM pg_stat_user_indexes WHERE indexrelname = 'events_pkey'"
        counted = "SELECT COALESCE(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = 'events'"
        read0, scans0 = int(settled(reads, db)), int(PG.psql(counted, db))
        for r in range(5):
            round_("later%d" % r)
        wait_for(lambda: int(PG.psql(counted, db)) >= scans0 + 60, "the look-ups counted")
        read1 = int(settled(reads, db))
        # A retry is still answered with its first ack's seq.
        first = round_("again")
        forget(c, ["again-%d" % k for k in range(12)])
        second = round_("again")
        assert {m: x["seq"] for m, x in first.items()} == \
            {m: x["seq"] for m, x in second.items()}
        c.close()
    assert read1 - read0 < 1000, "60 messages read %d index entries of their sessions' events" % (
        read1 - read0)


def test_schema_1_is_migrated():
    """A database made by a chatd of schema 1 (updated_at indexed) is
    brought to schema 2 at start, its messages kept."""
    dsn = PG.new_db("upgrade")
    with Chatd("--postgres", dsn, *LOAD_ARGS) as d:
        c = ChatClient(d.port, "fay")
        sid = ack(c.request(user_message("u0", "kept")), "u0")["session_id"]
        c.close()
    PG.psql("DROP INDEX sessions_by_owner; "
            "CREATE INDEX sessions_by_owner ON sessions(owner, updated_at); "
            "CREATE INDEX sessions_by_updated ON sessions(updated_at); "
            "ALTER TABLE sessions RESET (fillfactor); "
            "UPDATE chatd_schema SET version = 1", "upgrade")
    assert "updated_at" in session_indexes("upgrade")
    with Chatd("--postgres", dsn, *LOAD_ARGS) as d:
        assert "event=store_migrated engine=postgres version=2" in d.log(), d.log()[-2000:]
        c = ChatClient(d.port, "fay")
        events, last = history(d.port, sid, c.token)
        assert [e["content"] for e in events] == ["kept"] and last == 1, events
        assert ack(c.request(user_message("u1", "after", sid)), "u1")["seq"] == 2
        c.close()
    assert PG.psql("SELECT version FROM chatd_schema", "upgrade") == "2"
    assert "updated_at" not in session_indexes("upgrade"), session_indexes("upgrade")
    assert "fillfactor=70" in PG.psql("SELECT reloptions::text FROM pg_class "
                                      "WHERE relname = 'sessions'", "upgrade")


# ---- 3b. a restart in the middle of traffic ---------------------------------------------

def test_restart_mid_traffic_loses_nothing_acked():
    """PostgreSQL restarts while a client keeps sending: the client retries
    every refused message with the same id until it is acked; in the end
    each message is stored exactly once, at the seq its ack named, with no
    gap. A restart that cuts a COMMIT holds the writer until the server is
    back and can say whether it committed: the messages queued meanwhile
    are then acked late rather than refused."""
    dsn = PG.new_db("midtraffic")
    with Chatd("--postgres", dsn, *LOAD_ARGS) as d:
        c = ChatClient(d.port, "erin")
        sid = ack(c.request(user_message("e0", "start")), "e0")["session_id"]
        msgs, acked, refused = {}, {"e0": 1}, 0

        def restart():
            time.sleep(0.3)
            PG.stop("fast")
            time.sleep(1.0)
            PG.start()
        t = threading.Thread(target=restart)
        t.start()
        deadline = time.time() + WAIT * 3
        while time.time() < deadline:
            if t.is_alive():  # new messages for as long as the restart lasts
                for i in range(len(msgs) + 1, len(msgs) + 21):
                    msgs["e%d" % i] = user_message("e%d" % i, "traffic %d" % i, sid)
            todo = [m for cid, m in msgs.items() if cid not in acked]
            if not todo and not t.is_alive():
                break
            with c.cond:  # a retry's answer, not the refusal before it
                for m in todo[:50]:
                    c.replies.pop(m["id"], None)
            for cid, r in pipeline(c, todo[:50], window=8, timeout=WAIT).items():
                if r.get("type") == "ack":
                    assert acked.get(cid, r["seq"]) == r["seq"], (cid, acked.get(cid), r)
                    acked[cid] = r["seq"]
                else:
                    assert r.get("code") == "unavailable", r
                    refused += 1
                    time.sleep(0.01)
        n = len(msgs)
        t.join()
        assert len(acked) == n + 1, "%d of %d acked" % (len(acked), n + 1)
        # The restart met the traffic: some message was refused, or it cut
        # a COMMIT, which the writer settled once the server was back while
        # the messages behind it waited in the queue (acked, not refused).
        assert refused > 0 or commits_settled(d.log()), \
            "the restart refused nothing: it did not happen mid-traffic"
        events, last = history(d.port, sid, c.token)
        check_gapless(sid, events)
        assert last == n + 1 and len(events) == n + 1, (last, len(events))
        for e in events:
            assert acked[e["id"]] == e["seq"], (e, acked.get(e["id"]))
        c.close()


# ---- 4. two nodes on one database --------------------------------------------------

def test_two_nodes_share_one_database():
    """Both start at once on an empty database (the migration race), then
    write to one session at the same time: every message is acked once and
    the session's seqs are gapless."""
    dsn = PG.new_db("twonodes")
    a, b = Chatd("--postgres", dsn, *LOAD_ARGS), Chatd("--postgres", dsn, *LOAD_ARGS)
    starters = [threading.Thread(target=x.start) for x in (a, b)]
    for t in starters:
        t.start()
    for t in starters:
        t.join()
    try:
        assert a.port and b.port, (a.log()[-2000:], b.log()[-2000:])
        assert PG.psql("SELECT version FROM chatd_schema", "twonodes") == "2"
        ca, cb = ChatClient(a.port, "carol", label="node-a"), ChatClient(b.port, "carol",
                                                                          label="node-b")
        sid = ack(ca.request(user_message("start", "first")), "start")["session_id"]
        n = 100 if SLOW else 300
        out = {}

        def send(client, tag):
            out[tag] = pipeline(client, [user_message("%s%d" % (tag, i), "%s %d" % (tag, i), sid)
                                         for i in range(n)], window=16, timeout=WAIT * 3)
        ts = [threading.Thread(target=send, args=(ca, "a")),
              threading.Thread(target=send, args=(cb, "b"))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        seqs = []
        for tag in ("a", "b"):
            assert len(out[tag]) == n, "%s: %d of %d answered" % (tag, len(out[tag]), n)
            for cid, r in out[tag].items():
                ack(r, cid)
                seqs.append(r["seq"])
        assert sorted(seqs) == list(range(2, 2 * n + 2)), "acked seqs repeat or leave gaps"
        events, last = history(b.port, sid, cb.token)
        check_gapless(sid, events)
        assert last == 2 * n + 1 and len(events) == 2 * n + 1
        by_id = {e.get("id") or e.get("client_id"): e["seq"] for e in events}
        for tag in ("a", "b"):
            for cid, r in out[tag].items():
                assert by_id.get(cid) == r["seq"], (cid, r, by_id.get(cid))
        ca.close()
        cb.close()
    finally:
        for x in (a, b):
            if x.proc is not None:
                x.__exit__(None, None, None)  # a clean stop, then its folder and log go


# ---- 5. refusals at start ------------------------------------------------------------

def test_unreachable_at_start_exits_2():
    dsn = "host=%s/nowhere user=postgres password=s3cret-pw dbname=x" % PG.dir
    p = subprocess.run([os.environ.get("CHATD_BIN", "chatd"), "--listen", "127.0.0.1:0",
                        "--jwt-secret", "test-secret-0123456789abcdefghijklmnop",
                        "--postgres", dsn], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=60)
    err = p.stderr.decode()
    assert p.returncode == 2, (p.returncode, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "--postgres" in lines[0], err
    assert "s3cret-pw" not in err, err
    # A malformed string: libpq would quote its words; chatd does not.
    p = subprocess.run([os.environ.get("CHATD_BIN", "chatd"), "--listen", "127.0.0.1:0",
                        "--jwt-secret", "test-secret-0123456789abcdefghijklmnop",
                        "--postgres", "host=/tmp password s3cret-pw"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    err = p.stderr.decode()
    assert p.returncode == 2 and "--postgres" in err and "s3cret-pw" not in err, (p.returncode,
                                                                                  err)


def main():
    global PG
    PG = Postgres()
    try:
        run([test_acked_messages_survive_a_restart,
             test_unreachable_server_refuses_then_recovers,
             test_commit_cut_off_is_settled,
             test_pipelined_events_and_a_refused_one,
             test_event_statement_checks_its_seq,
             test_lost_before_a_queued_commit_is_settled,
             test_session_updates_are_heap_only,
             test_schema_1_is_migrated,
             test_batches_find_rows_by_key,
             test_dedup_reads_by_client_id,
             test_restart_mid_traffic_loses_nothing_acked,
             test_two_nodes_share_one_database,
             test_unreachable_at_start_exits_2])
    finally:
        PG.close()


if __name__ == "__main__":
    main()
