"""The deployment example in deploy/: three chatd nodes behind the load
balancer configurations of the tree, run as they are.

A Redis, a PostgreSQL and three nodes sharing them are started as in
test_cluster.py. deploy/haproxy.cfg itself (not a copy) runs in front of
them: it reads the nodes' addresses and its own from the environment. Then
everything goes through HAProxy: WebSocket upgrades, a user's devices spread
over the nodes, /readyz, the health checks taking nodes out while the
database is away and when a node is killed.

deploy/nginx.conf names fixed addresses; a copy with this test's addresses
put in their place is checked with `nginx -t` and then run in front of the
same nodes.

haproxy and nginx come from the Debian packages haproxy and nginx, which
`make test` installs: a missing haproxy fails the test. A missing nginx
skips its part only (it says so in the output).
"""
import csv
import functools
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from harness import SLOW, http_get, run  # noqa: E402
from chatload import ChatClient  # noqa: E402
from test_postgres import Postgres, ack, user_message  # noqa: E402
import test_cluster  # noqa: E402
from test_cluster import Cluster, Redis, free_port  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HAPROXY_CFG = os.path.join(ROOT, "deploy", "haproxy.cfg")
NGINX_CONF = os.path.join(ROOT, "deploy", "nginx.conf")
WAIT = 60 if SLOW else 20
SERVERS = ("node-a", "node-b", "node-c")  # haproxy.cfg's names for NODES[0..2]

NODES = None   # the three Chatd nodes
LB = None      # the Haproxy in front of them
NGINX = None   # the Nginx in front of them, once test_nginx started it
OPEN = []      # the devices a test opened, closed when it ends


def closes_its_devices(test):
    """The test's devices are closed when it ends, failed or not, so that
    the next test starts with no WebSocket open."""
    @functools.wraps(test)
    def wrapper():
        try:
            test()
        finally:
            while OPEN:
                OPEN.pop().close()
    return wrapper


def wait_for(pred, what, timeout=WAIT, step=0.05):
    deadline = time.time() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.time() > deadline:
            raise AssertionError("not within %ss: %s" % (timeout, what))
        time.sleep(step)


# ---- the load balancers ---------------------------------------------------------------

class Haproxy:
    """deploy/haproxy.cfg in the foreground (-db), with the nodes' ports."""

    def __init__(self, nodes):
        self.bin = shutil.which("haproxy") or "/usr/sbin/haproxy"
        assert os.path.exists(self.bin), ("haproxy is not installed (Debian package haproxy; "
                                          "`make test` installs it)")
        self.dir = tempfile.mkdtemp(prefix="chatd-haproxy-")
        self.log_path = os.path.join(self.dir, "haproxy.log")
        self.nodes = nodes
        self.proc = None
        for _ in range(10):  # a free port can be taken before haproxy binds it
            self.port, self.stats_port = free_port(), free_port()
            if self.port != self.stats_port and self._start():
                return
        raise AssertionError("haproxy did not start:\n" + self.log())

    def env(self):
        env = dict(os.environ)
        for name, node in zip(("A", "B", "C"), self.nodes):
            env["CHATD_NODE_" + name] = "127.0.0.1:%d" % node.port
        env["CHATD_LB_BIND"] = "127.0.0.1:%d" % self.port
        env["CHATD_LB_STATS"] = "127.0.0.1:%d" % self.stats_port
        return env

    def _start(self):
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([self.bin, "-db", "-f", HAPROXY_CFG], env=self.env(),
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while time.time() < deadline and self.proc.poll() is None:
            try:
                if http_get(self.stats_port, "/stats;csv")[0] == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        return False

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def servers(self):
        """The backend's servers from the stats page: name -> CSV row."""
        # The page comes chunked: urllib rather than the harness's
        # http_get, which reads a Content-Length.
        with urllib.request.urlopen("http://127.0.0.1:%d/stats;csv" % self.stats_port,
                                    timeout=10) as r:
            text = r.read().decode()
        assert text.startswith("# "), text[:300]
        rows = csv.DictReader(io.StringIO(text[2:]))
        return {r["svname"]: r for r in rows
                if r["pxname"] == "chatd_nodes" and r["svname"] in SERVERS}

    def wait_status(self, names, status, timeout=WAIT):
        """Until every server in names has this status (UP, DOWN); return
        the rows."""
        last = {}

        def reached():
            last.update(self.servers())
            return all(last[n]["status"] == status for n in names)
        try:
            wait_for(reached, "%s %s" % (", ".join(names), status), timeout, step=0.1)
        except AssertionError:
            raise AssertionError("servers not %s: %s\n%s" % (
                status, {n: (r["status"], r["check_status"], r["check_code"])
                         for n, r in last.items()}, self.log()))
        return {n: last[n] for n in names}

    def wait_idle(self):
        """Until no WebSocket is open through HAProxy (leastconn then starts
        from equal counts)."""
        wait_for(lambda: all(r["scur"] == "0" for r in self.servers().values()),
                 "no session open through haproxy")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def render_nginx(conf, listen_port, node_ports, folder):
    """deploy/nginx.conf with this test's addresses in place of the
    example's. Each replaced text must be there exactly once, so that an
    edit of the example cannot leave part of it untested."""
    swaps = [("listen 8080;", "listen 127.0.0.1:%d;" % listen_port),
             ("/var/log/nginx/chatd-access.log", folder + "/access.log")]
    swaps += [("server 127.0.0.1:%d " % (8081 + i), "server 127.0.0.1:%d " % p)
              for i, p in enumerate(node_ports)]
    for old, new in swaps:
        assert conf.count(old) == 1, "deploy/nginx.conf: %r is there %d times, not once" % (
            old, conf.count(old))
        conf = conf.replace(old, new)
    return conf


class Nginx:
    """deploy/nginx.conf, rendered with the nodes' ports, in the foreground."""

    def __init__(self, nodes):
        self.bin = shutil.which("nginx") or "/usr/sbin/nginx"
        self.dir = tempfile.mkdtemp(prefix="chatd-nginx-")
        self.conf = os.path.join(self.dir, "nginx.conf")
        self.nodes = nodes
        self.port = None
        self.proc = None

    @staticmethod
    def installed():
        return bool(shutil.which("nginx")) or os.path.exists("/usr/sbin/nginx")

    def argv(self, *extra):
        # -e: the error log before the file is read; -g: the pid file. Both
        # where this test may write.
        return [self.bin, "-c", self.conf, "-p", self.dir, "-e",
                os.path.join(self.dir, "error.log")] + list(extra)

    def render(self):
        with open(NGINX_CONF) as f:
            text = render_nginx(f.read(), self.port, [x.port for x in self.nodes], self.dir)
        with open(self.conf, "w") as f:
            f.write(text)

    def check(self):
        """`nginx -t` on the rendered file: (exit status, output)."""
        p = subprocess.run(self.argv("-t", "-g", "pid %s/nginx.pid;" % self.dir),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        return p.returncode, p.stdout.decode(errors="replace")

    def start(self):
        for _ in range(10):
            self.port = free_port()
            self.render()
            rc, out = self.check()
            assert rc == 0 and "syntax is ok" in out, "nginx -t: %s\n%s" % (rc, out)
            self.proc = subprocess.Popen(
                self.argv("-g", "daemon off; pid %s/nginx.pid;" % self.dir),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.time() + 10
            while time.time() < deadline and self.proc.poll() is None:
                try:
                    if http_get(self.port, "/healthz")[0] == 200:
                        return
                except OSError:
                    pass
                time.sleep(0.05)
            self.stop()
        raise AssertionError("nginx did not start:\n" + self.log())

    def log(self):
        try:
            with open(os.path.join(self.dir, "error.log"), errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # nginx's fast stop: the workers go too
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# ---- which node a device reached ------------------------------------------------------

def opens(sub):
    """How many WebSockets of `sub` each node has opened (its log)."""
    pat = re.compile(r'event=ws_open .*user="%s"' % re.escape(sub))
    return [len(pat.findall(x.log())) for x in NODES]


def connect_via(port, sub):
    """A device of `sub` through the load balancer on port: (client, index
    of the node it reached)."""
    before = opens(sub)
    c = ChatClient(port, sub, label="%s@%d" % (sub, port))
    OPEN.append(c)
    assert c.status["user_id"] == sub, c.status

    def reached():
        now = opens(sub)
        return [i for i in range(len(NODES)) if now[i] > before[i]]
    where = wait_for(reached, "a node logs the WebSocket of %s" % sub)
    assert len(where) == 1, where
    return c, where[0]


def got_event(client, sid, seq, content):
    """client receives the event seq of sid, with this content."""
    m = client.wait_message(lambda m: m.get("session_id") == sid and m.get("seq") == seq and
                            m.get("type") == "user_message", WAIT)
    assert m["content"] == content, m
    return m


# ---- 1. the files ---------------------------------------------------------------------

def test_haproxy_cfg_as_shipped_is_valid():
    """`haproxy -c` on the file with none of its variables set (their
    defaults: three nodes on one machine): valid, and no warning."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CHATD_NODE_", "CHATD_LB_"))}
    p = subprocess.run([LB.bin, "-c", "-f", HAPROXY_CFG], env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=60)
    out = p.stdout.decode(errors="replace")
    assert p.returncode == 0 and "WARNING" not in out and "ALERT" not in out, out


# ---- 2. through HAProxy ----------------------------------------------------------------

def test_health_checks_ask_readyz_and_every_node_is_up():
    rows = LB.wait_status(SERVERS, "UP")
    for name, r in rows.items():
        # L7OK: an HTTP check that got the status it expects (200).
        assert r["check_status"] == "L7OK" and r["check_code"] == "200", (name, r)
    status, _, body = http_get(LB.port, "/readyz")
    assert status == 200 and b"ready" in body, (status, body)
    assert http_get(LB.port, "/healthz")[0] == 200
    # /metrics is the nodes' own, not the public side's.
    assert http_get(NODES[0].port, "/metrics")[0] == 200
    status, _, body = http_get(LB.port, "/metrics")
    assert status == 404 and b"chatd_" not in body, (status, body[:300])


@closes_its_devices
def test_websocket_through_haproxy():
    """The upgrade goes through (the client checks 101 and the accept key),
    connection_status comes first, and a message is stored and echoed to
    its sender."""
    c, _ = connect_via(LB.port, "ann")
    assert c.status["type"] == "connection_status" and c.status["devices"] == 1, c.status
    a = ack(c.request(user_message("a1", "hello through haproxy")), "a1")
    got_event(c, a["session_id"], 1, "hello through haproxy")


@closes_its_devices
def test_devices_spread_over_the_nodes_see_each_others_messages():
    """Three devices of one user through HAProxy: leastconn puts them on the
    three nodes. What one sends reaches the others; a device that resumes
    gets the session from its node. When a device leaves, its node gets the
    next one."""
    LB.wait_idle()
    d1, n1 = connect_via(LB.port, "bea")
    d2, n2 = connect_via(LB.port, "bea")
    assert n1 != n2, "leastconn sent both devices to node %d" % n1
    assert d2.status["devices"] == 2, d2.status  # counted across nodes
    sid = ack(d1.request(user_message("b1", "from the first device")), "b1")["session_id"]
    for d in (d1, d2):
        got_event(d, sid, 1, "from the first device")
    ack(d2.request(user_message("b2", "from the second device", sid)), "b2")
    for d in (d1, d2):
        got_event(d, sid, 2, "from the second device")
    d3, n3 = connect_via(LB.port, "bea")
    assert n3 not in (n1, n2), (n1, n2, n3)
    d3.send({"type": "resume", "session_id": sid, "after_seq": 0})
    r = d3.wait_message(lambda m: m.get("type") == "resumed", WAIT)
    assert r["last_seq"] == 2, r
    assert d3.seqs(sid) == [1, 2], d3.seqs(sid)
    # By connection count: the node whose device left gets the next one.
    d2.close()
    wait_for(lambda: LB.servers()[SERVERS[n2]]["scur"] == "0",
             "haproxy sees the device on %s gone" % SERVERS[n2])
    d4, n4 = connect_via(LB.port, "bea")
    assert n4 == n2, "the next device went to node %d, not to the emptier %d" % (n4, n2)


@closes_its_devices
def test_database_outage_takes_every_node_out_and_back():
    """PostgreSQL stops: every node's /readyz answers 503, so the checks
    (expecting 200) mark all three down, and HAProxy itself answers 503.
    The WebSockets open meanwhile stay open. PostgreSQL comes back: the
    nodes are up again and the open device's next message is stored."""
    d, _ = connect_via(LB.port, "cid")
    sid = ack(d.request(user_message("c1", "before the outage")), "c1")["session_id"]
    test_cluster.PG.stop()
    try:
        rows = LB.wait_status(SERVERS, "DOWN")
        for name, r in rows.items():
            # L7STS: the check got an HTTP answer with the wrong status.
            assert r["check_status"] == "L7STS" and r["check_code"] == "503", (name, r)
        assert http_get(LB.port, "/readyz")[0] == 503
    finally:
        test_cluster.PG.start()
    LB.wait_status(SERVERS, "UP")
    status, _, body = http_get(LB.port, "/readyz")
    assert status == 200, (status, body)
    assert not d.closed, "the device's WebSocket was closed during the outage: %r" % d.read_error
    a = ack(d.request(user_message("c2", "after the outage", sid), WAIT), "c2")
    assert a["seq"] == 2, a
    got_event(d, sid, 2, "after the outage")


# ---- 3. nginx -----------------------------------------------------------------------------

@closes_its_devices
def test_nginx_conf_checks_and_serves():
    """nginx -t accepts the file; run, it upgrades WebSockets, spreads one
    user's devices over two nodes (least_conn, shared by its workers), and
    hides /metrics."""
    global NGINX
    if not Nginx.installed():
        print("skip test_nginx_conf_checks_and_serves: nginx is not installed "
              "(Debian package nginx; `make test` installs it)")
        return
    NGINX = Nginx(NODES)
    NGINX.start()
    status, _, body = http_get(NGINX.port, "/readyz")
    assert status == 200 and b"ready" in body, (status, body)
    assert http_get(NGINX.port, "/metrics")[0] == 404
    d1, n1 = connect_via(NGINX.port, "dee")
    d2, n2 = connect_via(NGINX.port, "dee")
    assert n1 != n2, "least_conn sent both devices to node %d" % n1
    sid = ack(d1.request(user_message("d1", "through nginx")), "d1")["session_id"]
    for d in (d1, d2):
        got_event(d, sid, 1, "through nginx")


# ---- 4. a node killed ------------------------------------------------------------------

@closes_its_devices
def test_sigkill_of_a_node():
    """Two devices of a user on two nodes through HAProxy; the second's node
    is killed with SIGKILL. Its device is cut off; the health checks mark
    the node down; the device reconnects through HAProxy to a live node and
    resumes what it missed; new connections all succeed and none is sent
    to the dead node. nginx, which only notices failures, serves new
    connections too."""
    LB.wait_idle()
    d1, n1 = connect_via(LB.port, "eve")
    d2, n2 = connect_via(LB.port, "eve")
    assert n1 != n2, (n1, n2)
    sid = ack(d1.request(user_message("e1", "before the kill")), "e1")["session_id"]
    got_event(d2, sid, 1, "before the kill")
    victim = NODES[n2]
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()
    killed = time.time()
    assert d2.wait_until(lambda: d2.closed, WAIT), "the killed node's device is still open"
    LB.wait_status([SERVERS[n2]], "DOWN")
    down_after = time.time() - killed
    sent_to_victim = int(LB.servers()[SERVERS[n2]]["stot"])
    # The device on the live node keeps talking.
    ack(d1.request(user_message("e2", "while one node is gone", sid)), "e2")
    # The cut-off device comes back through HAProxy and resumes.
    d2b, n2b = connect_via(LB.port, "eve")
    assert n2b != n2
    d2b.send({"type": "resume", "session_id": sid, "after_seq": 1})
    r = d2b.wait_message(lambda m: m.get("type") == "resumed", WAIT)
    assert r["last_seq"] == 2 and d2b.seqs(sid) == [2], (r, d2b.seqs(sid))
    got_event(d2b, sid, 2, "while one node is gone")
    ack(d2b.request(user_message("e3", "back on another node", sid)), "e3")
    got_event(d1, sid, 3, "back on another node")
    # New users: every connection succeeds, on the live nodes only.
    fresh = [connect_via(LB.port, "new%d" % i) for i in range(6)]
    assert all(n != n2 for _, n in fresh), [n for _, n in fresh]
    assert int(LB.servers()[SERVERS[n2]]["stot"]) == sent_to_victim, \
        "haproxy sent connections to the node it had marked down"
    assert http_get(LB.port, "/readyz")[0] == 200
    if NGINX:
        # nginx tries the dead node until it has failed max_fails times;
        # each failed try goes on to the next node, so no client sees it.
        via_nginx = [connect_via(NGINX.port, "ngx%d" % i) for i in range(6)]
        assert all(n != n2 for _, n in via_nginx), [n for _, n in via_nginx]
        assert http_get(NGINX.port, "/readyz")[0] == 200
        # It did try the dead node (and went on): the failure is in its log.
        assert re.search(r"connect\(\) failed .*upstream: \"http://127\.0\.0\.1:%d/" % victim.port,
                         NGINX.log()), NGINX.log()
    print("     node %s marked down %.1fs after SIGKILL" % (SERVERS[n2], down_after))


def main():
    global NODES, LB
    test_cluster.PG = Postgres()
    try:
        test_cluster.REDIS = Redis()
        try:
            with Cluster("deploy") as nodes:
                NODES = nodes
                LB = Haproxy(nodes)
                try:
                    run([test_haproxy_cfg_as_shipped_is_valid,
                         test_health_checks_ask_readyz_and_every_node_is_up,
                         test_websocket_through_haproxy,
                         test_devices_spread_over_the_nodes_see_each_others_messages,
                         test_database_outage_takes_every_node_out_and_back,
                         test_nginx_conf_checks_and_serves,
                         test_sigkill_of_a_node])
                finally:
                    if NGINX:
                        NGINX.close()
                    LB.close()
        finally:
            test_cluster.REDIS.close()
    finally:
        test_cluster.PG.close()


if __name__ == "__main__":
    main()
