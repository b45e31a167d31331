"""Crash loop over three nodes (issue 15): the cluster of test_cluster.py
(one PostgreSQL, one Redis, three chatd nodes; its fixtures are used, not
copied) under the load of test_crash_loop.py's devices, and in each cycle
one node chosen at random killed with SIGKILL, left down for a random
while, then restarted on the same port.

A device whose node dies reconnects to a node chosen at random (another
one, or the same once it is back) and resumes each session after the last
seq it holds without a gap; messages left unanswered are sent again with
the same id (a few given up, so that unknown outcomes stay in the run).
At the end every device connects once more and resumes, and the history
checker (tests/checker.py) over every client's view and over the
sessions' histories must find no anomaly.

Printed figures: cycles, messages acknowledged, time from the restart of a
node to its /readyz 200 (median, max).

Needs redis-server and PostgreSQL like test_cluster.py: missing binaries
fail the test, they never skip it.
"""
import os
import random
import signal
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from harness import Chatd, run  # noqa: E402
from checker import History  # noqa: E402
from test_postgres import Postgres  # noqa: E402
import test_cluster  # noqa: E402
from test_cluster import SECRET, Cluster, Redis  # noqa: E402
from test_crash_loop import (KIND, WAIT, discard, final_check, make_devices,  # noqa: E402
                             make_sessions, settle, wait_ready)

CYCLES = int(os.environ.get("CHATD_CRASH_CYCLES") or 20)


def restart_args(node):
    """The killed node's options, on its port, without the database file of
    its old (removed) folder: the restarted node gets a folder of its own."""
    args, out, i = node.args, [], 0
    while i < len(args):
        if args[i] == "--db":
            i += 2
            continue
        out.append(args[i])
        i += 1
    return out + ["--listen", "127.0.0.1:%d" % node.port]


def test_sigkill_of_random_nodes_under_load_loses_nothing():
    hist = History()
    rnd = random.Random(int(os.environ.get("CHATD_CRASH_SEED", time.time())))
    pick_rnd = random.Random(rnd.random())
    devs = []
    with Cluster("crashloop", extra=("--max-devices", "1000")) as nodes:
        try:
            ports = [x.port for x in nodes]
            for p in ports:
                wait_ready(p)
            sessions = make_sessions(ports[0], hist)
            devs = make_devices(hist, sessions, lambda: pick_rnd.choice(ports))
            for x in devs:
                x.start()
            ready, killed, t0 = [], [], time.time()
            for cycle in range(CYCLES):
                time.sleep(rnd.uniform(0.2, 1.5))
                i = rnd.randrange(len(nodes))
                victim = nodes[i]
                victim.proc.send_signal(signal.SIGKILL)
                victim.proc.wait(WAIT)
                discard(victim)
                killed.append(i)
                time.sleep(rnd.uniform(0.0, 0.5))  # its devices move elsewhere meanwhile
                nodes[i] = Chatd(*restart_args(victim), secret=SECRET)
                started = time.time()
                nodes[i].start()
                wait_ready(nodes[i].port)
                ready.append(time.time() - started)
            loop_time = time.time() - t0
            settle(devs, "after %d cycles" % CYCLES)
            anomalies, final = final_check(hist, devs, sessions,
                                           lambda dev: pick_rnd.choice(ports))
            st = hist.stats()
            print("     %d node SIGKILL+restart cycles in %.1fs (kind %s; nodes killed %s), "
                  "%d messages acked, %d unknown at the end (given up; %s of them stored), "
                  "%d device connections; node time to ready after restart: median %.0f ms, "
                  "max %.0f ms" % (
                      CYCLES, loop_time, KIND or "debug",
                      "/".join(str(killed.count(k)) for k in range(len(nodes))), st["acked"],
                      st["unknown"], hist.unknown_stored, sum(x.connections for x in devs),
                      statistics.median(ready) * 1000, max(ready) * 1000))
            assert anomalies == [], anomalies[:20]
            assert st["acked"] > CYCLES, "too little load to mean anything: %s" % st
        finally:
            for x in devs:
                x.stop.set()


def main():
    test_cluster.PG = Postgres()
    try:
        test_cluster.REDIS = Redis()
        try:
            run([test_sigkill_of_random_nodes_under_load_loses_nothing])
        finally:
            test_cluster.REDIS.close()
    finally:
        test_cluster.PG.close()


if __name__ == "__main__":
    main()
