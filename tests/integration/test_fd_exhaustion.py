"""Out of file descriptors: chatd runs with `ulimit -n 256` and clients open
far more connections than it can hold. While it is full it must not spin:
accepting pauses (its CPU stays near zero), the connections past the limit
wait in the kernel's queue (none is accepted only to be closed unanswered),
and the log has one line per pause; once descriptors are free again it
serves a new request within a second. Five rounds in one run: which
worker meets the limit first, and how, varies."""
import os
import re
import select
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from harness import SLOW, Chatd, http_get, run  # noqa: E402

LIMIT = 256
HOLD = 400  # well past the limit: every round exhausts it
RECOVER_S = 3.0 if SLOW else 1.0  # sanitizer builds are several times slower
IDLE_CPU_S = 0.3 if SLOW else 0.15


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        v = f.read().rsplit(")", 1)[1].split()
    return (int(v[11]) + int(v[12])) / os.sysconf("SC_CLK_TCK")


def peer_closed(s):
    try:
        return s.recv(1) == b""
    except OSError:
        return True


def test_out_of_descriptors_pauses_then_recovers():
    wrap = ["bash", "-c", "ulimit -n %d && exec \"$0\" \"$@\"" % LIMIT]
    worst_cpu = worst_recover = 0.0
    shed = 0
    with Chatd("--echo", "--db", "none", "--workers", "2", wrap=wrap) as d:
        for round_ in range(5):
            held = []
            for _ in range(HOLD):
                try:
                    held.append(socket.create_connection(("127.0.0.1", d.port), timeout=2))
                except OSError:
                    break
            time.sleep(0.3)  # chatd meets the limit
            c0 = cpu_seconds(d.proc.pid)
            time.sleep(1.0)
            busy = cpu_seconds(d.proc.pid) - c0
            assert busy < IDLE_CPU_S, "round %d: %.2f s of CPU in 1 s while full" % (round_, busy)
            # It really ran out: every descriptor chatd may have is open.
            # The last round's connections may still be closing (slowly
            # under a sanitizer), each freeing a slot that the next accept
            # retry (every 100 ms) fills: the most seen over a moment.
            fds, until = 0, time.time() + RECOVER_S
            while fds < LIMIT - 2 and time.time() < until:
                fds = max(fds, len(os.listdir("/proc/%d/fd" % d.proc.pid)))
                time.sleep(0.02)
            assert fds >= LIMIT - 2, "round %d: only %d descriptors open" % (round_, fds)
            assert round_ > 0 or "event=accept_paused" in d.log(), d.log()[-2000:]
            worst_cpu = max(worst_cpu, busy)
            readable, _, _ = select.select(held, [], [], 0)
            shed += sum(1 for s in readable if peer_closed(s))
            for s in held:
                s.close()
            t0 = time.time()
            while True:
                try:
                    status, _, _ = http_get(d.port, "/healthz")
                    if status == 200:
                        break
                except (OSError, IndexError, ValueError):
                    pass  # refused, or shed (closed unanswered) while still full: again
                assert time.time() - t0 < RECOVER_S, "round %d: not serving %.0f s after" % (
                    round_, RECOVER_S)
                time.sleep(0.02)
            worst_recover = max(worst_recover, time.time() - t0)
        assert shed == 0, "%d connections closed unanswered while full" % shed
        failed = len(re.findall(r"event=accept_failed", d.log()))
        assert failed < 100, "%d accept_failed lines" % failed
        # Every pause ends (a worker that had nothing to accept since may
        # take one more retry tick to notice).
        deadline = time.time() + RECOVER_S
        while True:
            paused = len(re.findall(r"event=accept_paused", d.log()))
            resumed = len(re.findall(r"event=accept_resumed", d.log()))
            if paused == resumed or time.time() > deadline:
                break
            time.sleep(0.05)
        assert paused == resumed, (paused, resumed)
        print("figure: ulimit -n %d, %d connections a round, 5 rounds: at most %.2f s of CPU in "
              "1 s while full, serving again at most %.2f s after descriptors are free; "
              "%d connections shed (closed unanswered), %d pauses, %d accept_failed lines" % (
                  LIMIT, HOLD, worst_cpu, worst_recover, shed, paused, failed), flush=True)


if __name__ == "__main__":
    run([test_out_of_descriptors_pauses_then_recovers])
