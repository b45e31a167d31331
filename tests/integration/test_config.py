"""Command line, environment and --config file (docs/protocol.md section 8)."""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from harness import (CHATD_BIN, OP_BINARY, OP_TEXT, SANITIZER_MARKERS, SLOW,  # noqa: E402
                     TEST_SECRET, WS, Chatd, http_get, make_token, run)

FLAGS = ["--listen", "--workers", "--prefix", "--echo", "--max-message-bytes",
         "--max-connections", "--ping-interval", "--pong-timeout", "--shutdown-timeout",
         "--log-level", "--config"]
TIMEOUT = 60 if SLOW else 15


def clean_env(extra=None):
    """The test's environment without any CHATD_* variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATD_")}
    env.update(extra or {})
    return env


def chatd(args, env=None):
    """Run chatd to completion; (exit status, stdout, stderr)."""
    try:
        p = subprocess.run([CHATD_BIN] + args, env=clean_env(env), capture_output=True,
                           timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AssertionError("chatd %s did not exit (it should have refused to start)" % args)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def expect_usage_error(args, name, env=None):
    """Exit status 2 and exactly one line on stderr that names the option."""
    # A free port, so a chatd that wrongly starts cannot collide with anything,
    # and a JWT key, so that the option under test is the only thing wrong.
    if not any(a.startswith("--listen") for a in args):
        args = ["--listen", "127.0.0.1:0"] + args
    args = ["--jwt-secret", TEST_SECRET] + args
    rc, out, err = chatd(args, env)
    assert rc == 2, "chatd %s (env %s): exit %s, expected 2\nstderr: %s" % (args, env, rc, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), \
        "chatd %s: expected one line on stderr, got %r" % (args, err)
    assert name.lower() in lines[0].lower(), \
        "chatd %s: error does not name %r: %r" % (args, name, lines[0])
    return lines[0]


def config_file(text):
    fd, path = tempfile.mkstemp(prefix="chatd-test-", suffix=".conf")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


# ---- --help, --version -------------------------------------------------------

def test_help_lists_every_flag():
    rc, out, err = chatd(["--help"])
    assert rc == 0, (rc, err)
    for flag in FLAGS:
        assert re.search(re.escape(flag) + r"\b", out), "--help does not list %s:\n%s" % (flag,
                                                                                          out)
    assert "--help" in out and "--version" in out


def test_version():
    rc, out, err = chatd(["--version"])
    assert rc == 0, (rc, err)
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    assert re.search(r"\d+\.\d+", lines[0]), out
    assert "chatd" in lines[0], out


# ---- a secret on the command line ----------------------------------------------

def test_help_prefers_secret_file():
    rc, out, err = chatd(["--help"])
    assert rc == 0, (rc, err)
    line = [l for l in out.splitlines() if l.strip().startswith("--jwt-secret ")]
    assert len(line) == 1, out
    assert "--jwt-secret-file" in line[0] and "prefer" in line[0], \
        "--help must steer --jwt-secret to --jwt-secret-file: %r" % line[0]
    assert re.search(r"ps\b|other local users", line[0]), \
        "--help must say why the flag form is unsafe: %r" % line[0]


def test_secret_flag_hidden_from_process_list():
    """Every local user can read /proc/PID/cmdline (ps): once chatd has read
    --jwt-secret, the value there must be gone, in both flag spellings, and
    the secret must still be the one tokens are checked against."""
    for args in (["--jwt-secret", TEST_SECRET], ["--jwt-secret=" + TEST_SECRET]):
        with Chatd(*args, env=clean_env()) as d:
            with open("/proc/%d/cmdline" % d.proc.pid, "rb") as f:
                cmdline = f.read()
            assert b"--jwt-secret" in cmdline, cmdline  # the flag form was used
            assert TEST_SECRET.encode() not in cmdline, \
                "the secret is visible in /proc/%d/cmdline: %r" % (d.proc.pid, cmdline)
            assert TEST_SECRET[:8].encode() not in cmdline, cmdline
            ws = WS(d.port, path="/ws", token=make_token("alice"))
            hello = ws.recv_json()
            assert hello["type"] == "connection_status", hello
            ws.shut()


# ---- refusals -----------------------------------------------------------------

def test_unknown_flag_exit_2():
    expect_usage_error(["--bogus-flag"], "bogus-flag")
    expect_usage_error(["--echo", "--no-such-option", "1"], "no-such-option")
    expect_usage_error(["stray"], "stray")


def test_malformed_values_exit_2():
    expect_usage_error(["--workers", "abc"], "workers")
    expect_usage_error(["--workers", "-1"], "workers")
    expect_usage_error(["--listen", "nope"], "listen")
    expect_usage_error(["--listen", "127.0.0.1:99999"], "listen")
    expect_usage_error(["--max-message-bytes", "12k"], "max-message-bytes")
    expect_usage_error(["--max-connections", ""], "max-connections")
    expect_usage_error(["--ping-interval", "1.5"], "ping-interval")
    expect_usage_error(["--pong-timeout", "soon"], "pong-timeout")
    expect_usage_error(["--shutdown-timeout", "x"], "shutdown-timeout")
    expect_usage_error(["--log-level", "loud"], "log-level")
    expect_usage_error(["--prefix", "no-slash"], "prefix")
    expect_usage_error(["--workers"], "workers")  # value missing


def test_config_file_errors_exit_2():
    path = config_file("# a comment\necho = true\nbogus_key = 1\n")
    try:
        expect_usage_error(["--config", path], "bogus_key")
    finally:
        os.unlink(path)
    path = config_file("workers = many\n")
    try:
        expect_usage_error(["--config", path], "workers")
    finally:
        os.unlink(path)
    missing = os.path.join(tempfile.gettempdir(), "chatd-no-such-file-%d.conf" % os.getpid())
    expect_usage_error(["--config", missing], "config")


def test_bad_environment_exit_2():
    expect_usage_error([], "workers", env={"CHATD_WORKERS": "abc"})
    expect_usage_error([], "max-message-bytes",
                       env={"CHATD_MAX_MESSAGE_BYTES": "big"})
    expect_usage_error([], "ping-interval", env={"CHATD_PING_INTERVAL": "-3"})


# ---- one chatd per address ---------------------------------------------------

def expect_address_in_use(port, host, args):
    """chatd on an address another chatd listens on: exit 2 within a few
    seconds, one line on stderr naming the address."""
    addr = "%s:%d" % ("[%s]" % host if ":" in host else host, port)
    db = tempfile.mkdtemp(prefix="chatd-test-")
    try:
        rc, out, err = chatd(["--listen", addr, "--db", os.path.join(db, "b.db")] + args)
    finally:
        shutil.rmtree(db, ignore_errors=True)
    assert rc == 2, "second chatd on %s: exit %s, expected 2\nstderr: %s" % (addr, rc, err)
    lines = err.splitlines()
    assert len(lines) == 1, "expected one line on stderr, got %r" % err
    assert "address already in use" in lines[0], lines[0]
    assert addr in lines[0], "error does not name the address: %r" % lines[0]
    assert "event=listening" not in err and "running in development mode" not in out, (out, err)


def test_address_in_use_exit_2():
    with Chatd("--echo") as a:
        # Several workers, so that the shared (SO_REUSEPORT) sockets are
        # there too; the same address, the wildcard covering it, and a
        # --dev server (what a developer starts twice by mistake).
        for args in (["--echo"], ["--echo", "--workers", "3"], ["--dev"],
                     ["--jwt-secret", TEST_SECRET]):
            expect_address_in_use(a.port, "127.0.0.1", args)
        expect_address_in_use(a.port, "0.0.0.0", ["--echo"])
        # A still serves, alone: every connection reaches it.
        for _ in range(20):
            assert http_get(a.port, "/healthz")[0] == 200
        ws = WS(a.port)
        ws.send(b"still here")
        assert ws.recv() == (OP_BINARY, b"still here")
        ws.shut()
        assert a.alive()
        port = a.port
    # A stopped (the server closed the /healthz connections first, so some
    # of them wait in TIME_WAIT on that port): the port can be used again.
    with Chatd("--echo", "--listen", "127.0.0.1:%d" % port) as b:
        assert b.port == port
        assert http_get(port, "/healthz")[0] == 200


def test_address_in_use_ipv6():
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.bind(("::1", 0))
        s.close()
    except OSError:
        print("skip: no IPv6 loopback", flush=True)
        return
    log = tempfile.TemporaryFile()
    a = subprocess.Popen([CHATD_BIN, "--echo", "--listen", "[::1]:0", "--db", "none"],
                         env=clean_env(), stdout=subprocess.DEVNULL, stderr=log)
    try:
        port, deadline = None, time.time() + TIMEOUT
        while port is None and time.time() < deadline and a.poll() is None:
            time.sleep(0.02)
            log.seek(0)
            m = re.search(rb"event=listening addr=\[::1\]:(\d+)", log.read())
            port = m and int(m.group(1))
        assert port, "chatd on [::1]:0 did not start"
        expect_address_in_use(port, "::1", ["--echo"])
        expect_address_in_use(port, "::", ["--echo"])
        c = socket.create_connection(("::1", port), timeout=5)
        c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert c.recv(64).startswith(b"HTTP/1.1 200"), "chatd on [::1] does not serve"
        c.close()
    finally:
        a.terminate()
        assert a.wait(TIMEOUT) == 0
        log.seek(0)
        text = log.read().decode(errors="replace")
        log.close()
    assert not any(m in text for m in SANITIZER_MARKERS), text


# ---- precedence: flag > environment > file -------------------------------------

def serves_prefix(d, prefix):
    return http_get(d.port, prefix + "/healthz")[0] == 200


def test_prefix_precedence():
    path = config_file("# chatd test config\n\n  prefix = /file  \n")
    try:
        with Chatd("--config", path, env=clean_env()) as d:
            assert serves_prefix(d, "/file")
            assert not serves_prefix(d, "")
        with Chatd("--config", path, env=clean_env({"CHATD_PREFIX": "/env"})) as d:
            assert serves_prefix(d, "/env"), "environment must win over the file"
            assert not serves_prefix(d, "/file")
        with Chatd("--config", path, "--prefix", "/flag",
                   env=clean_env({"CHATD_PREFIX": "/env"})) as d:
            assert serves_prefix(d, "/flag"), "a flag must win over environment and file"
            assert not serves_prefix(d, "/env")
            assert not serves_prefix(d, "/file")
        # Flag before --config on the command line wins all the same.
        with Chatd("--prefix", "/flag", "--config", path, env=clean_env()) as d:
            assert serves_prefix(d, "/flag")
            assert not serves_prefix(d, "/file")
        # The config file may itself come from the environment.
        with Chatd(env=clean_env({"CHATD_CONFIG": path})) as d:
            assert serves_prefix(d, "/file")
    finally:
        os.unlink(path)


def echo_size_accepted(d, n):
    """True if an n-byte message is echoed, False if closed with 1009."""
    ws = WS(d.port)
    try:
        ws.send(b"z" * n)
        try:
            return ws.recv() == (OP_BINARY, b"z" * n)
        except Exception:
            assert ws.close_code == 1009, ws.close_code
            return False
    finally:
        ws.shut()


def test_numeric_and_bool_precedence():
    path = config_file("echo = true\nmax-message-bytes = 100\n")
    try:
        with Chatd("--config", path, env=clean_env()) as d:
            assert echo_size_accepted(d, 100)
            assert not echo_size_accepted(d, 101)
        with Chatd("--config", path, env=clean_env({"CHATD_MAX_MESSAGE_BYTES": "200"})) as d:
            assert echo_size_accepted(d, 200)
            assert not echo_size_accepted(d, 201)
        with Chatd("--config", path, "--max-message-bytes", "150",
                   env=clean_env({"CHATD_MAX_MESSAGE_BYTES": "200"})) as d:
            assert echo_size_accepted(d, 150)
            assert not echo_size_accepted(d, 151)
        # A boolean: the file turns echo on, the environment off, a flag on again.
        with Chatd("--config", path, env=clean_env({"CHATD_ECHO": "false"})) as d:
            assert http_get(d.port, "/echo")[0] == 404
        with Chatd("--config", path, "--echo", env=clean_env({"CHATD_ECHO": "false"})) as d:
            ws = WS(d.port)  # the upgrade succeeds
            ws.send("on")
            assert ws.recv() == (OP_TEXT, b"on")
            ws.shut()
    finally:
        os.unlink(path)


# ---- a damaged database -------------------------------------------------------

def filled_database(folder):
    """A real chatd.db with a few hundred stored messages, chatd stopped."""
    sys.path.insert(0, os.path.dirname(__file__))
    from chatload import ChatClient, pipeline
    with Chatd("--workers", "1", "--rate-limit", "1000000", "--input-rate", "1000000",
               "--input-byte-rate", "1000000000") as d:
        c = ChatClient(d.port, "dora")
        first = c.request({"type": "user_message", "id": "m0", "content": "first"})
        assert first.get("type") == "ack", first
        sid = first["session_id"]
        out = pipeline(c, [{"type": "user_message", "id": "m%d" % i, "session_id": sid,
                            "content": "x" * 400} for i in range(1, 600)], window=16)
        assert len(out) == 599, len(out)
        c.close()
        db = os.path.join(d.tmpdir, "chatd.db")
        d.stop()
        path = os.path.join(folder, "chatd.db")
        shutil.copy(db, path)
    return path


def test_damaged_database_refused_naming_the_file():
    """A database file that is not one, is cut short, or has damaged pages
    in its middle stops chatd at start: exit 2, one line naming the file.
    The same file undamaged starts."""
    folder = tempfile.mkdtemp(prefix="chatd-damaged-")
    try:
        good = filled_database(folder)
        size = os.path.getsize(good)
        assert size > 64 * 1024, size
        cases = {}
        with open(good, "rb") as f:
            whole = f.read()
        cases["random"] = os.urandom(len(whole))
        cases["cut"] = whole[:len(whole) // 2]
        middle = (len(whole) // 2) // 4096 * 4096
        cases["pages"] = whole[:middle] + os.urandom(8192) + whole[middle + 8192:]
        for name, data in cases.items():
            path = os.path.join(folder, name + ".db")
            with open(path, "wb") as f:
                f.write(data)
            line = expect_usage_error(["--db", path], path)
            assert re.search(r"damaged|not a database|malformed", line), (name, line)
        with Chatd("--db", good) as d:
            assert "event=store_checked" in d.log(), d.log()[-2000:]
            status, _, _ = http_get(d.port, "/readyz")
            assert status == 200, status
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_db_check_modes():
    """--db-check: 'auto' checks a small file after a clean stop and any
    file after an unclean one (the WAL left behind), 'always' checks,
    'never' skips; each start logs which and why."""
    folder = tempfile.mkdtemp(prefix="chatd-dbcheck-")
    try:
        good = filled_database(folder)
        assert not os.path.exists(good + "-wal"), "a clean stop leaves no WAL"
        for mode, want in ((None, 'event=store_checked ms=\\d+ why="small file"'),
                           ("always", 'event=store_checked ms=\\d+ why="always"'),
                           ("never", 'event=store_check_skipped why="never"')):
            args = ["--db", good] + (["--db-check", mode] if mode else [])
            with Chatd(*args) as d:
                assert re.search(want, d.log()), (mode, d.log()[-2000:])
                status, _, _ = http_get(d.port, "/readyz")
                assert status == 200, status
        d = Chatd("--db", good)
        d.expect_exit = None
        d.start()
        d.stop(sig=signal.SIGKILL)
        assert os.path.exists(good + "-wal"), "SIGKILL leaves the WAL"
        with Chatd("--db", good) as d:
            assert 'why="unclean stop"' in d.log(), d.log()[-2000:]
        line = expect_usage_error(["--db", good, "--db-check", "sometimes"], "--db-check")
        assert "auto, always or never" in line, line
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    run([test_help_lists_every_flag, test_version, test_help_prefers_secret_file,
         test_secret_flag_hidden_from_process_list, test_unknown_flag_exit_2,
         test_malformed_values_exit_2, test_config_file_errors_exit_2,
         test_bad_environment_exit_2, test_address_in_use_exit_2, test_address_in_use_ipv6,
         test_prefix_precedence, test_numeric_and_bool_precedence,
         test_damaged_database_refused_naming_the_file, test_db_check_modes])
