# shellcheck shell=bash
# Helpers shared by bench/run.sh and bench/peers.sh (sourced, not run).
#
# Pinning: the server under test runs on core $SERVER_CPU (default 0) and
# chatd-bench on core $GEN_CPU (default 1), so the server's CPU time per
# operation is not blurred by the generator. On a one-core machine nothing is
# pinned (and the figures say less).
#
# Environment knobs: BUILD (build folder, default build), DURATION and WARMUP
# (seconds per scenario, default 10 and 2), SERVER_CPU, GEN_CPU. The
# assistant scenario's (assistant_scenarios below): ASSISTANT_USERS (500),
# ASSISTANT_ANSWER (bytes per answer, 4096), ASSISTANT_DELTA (bytes per
# delta, 8), ASSISTANT_INTERVAL_MS (pause between two deltas of an answer,
# 10), ASSISTANT_UNPACED (1: also a run with no pause; 0: not),
# ASSISTANT_PROVIDER (c: bench/chatd_fake_provider.c; python:
# tests/fake_provider.py), ASSISTANT_LIMIT (the longest a run waits for
# its answers, 45 s), ASSISTANT_WARMUP (1: a first burst of the same
# answers warms the server and is reported apart; 0: only that first
# burst is run), ASSISTANT_BURSTS (measured bursts after the first, 3: the
# table keeps the median) and ASSISTANT_CHATD (another chatd binary to
# run, to compare two builds side by side).

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-build}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
OUT=$BUILD/bench
BENCH=$BUILD/release/chatd-bench
CHATD=$BUILD/release/chatd
CHATD_FLOOR=$BUILD/release/chatd-floor
FAKE_PROVIDER=$BUILD/release/chatd-fake-provider
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
SECRET=${BENCH_SECRET:-chatd-bench-secret-0123456789abcdef}
SERVER_CPU=${SERVER_CPU:-0}
GEN_CPU=${GEN_CPU:-1}
SRV_PID=
SRV_PORT=
PROV_PID=
PROV_PORT=
ASSISTANT_USERS=${ASSISTANT_USERS:-500}
ASSISTANT_ANSWER=${ASSISTANT_ANSWER:-4096}
ASSISTANT_DELTA=${ASSISTANT_DELTA:-8}
ASSISTANT_INTERVAL_MS=${ASSISTANT_INTERVAL_MS:-10}
ASSISTANT_WARMUP=${ASSISTANT_WARMUP:-1}
ASSISTANT_BURSTS=${ASSISTANT_BURSTS:-3}
ASSISTANT_UNPACED=${ASSISTANT_UNPACED:-1}
ASSISTANT_PROVIDER=${ASSISTANT_PROVIDER:-c}
ASSISTANT_LIMIT=${ASSISTANT_LIMIT:-45}

mkdir -p "$OUT/logs"

if [ "$(nproc 2>/dev/null || echo 1)" -ge 2 ] && command -v taskset >/dev/null 2>&1; then
    PIN_SERVER="taskset -c $SERVER_CPU"
    PIN_GEN="taskset -c $GEN_CPU"
else
    echo "bench: fewer than 2 cores (or no taskset): nothing is pinned" >&2
    PIN_SERVER=
    PIN_GEN=
fi

# Every descriptor this shell may have: servers and generators inherit it.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

log() { printf '%s\n' "bench: $*" >&2; }

build_release() {
    log "building release (chatd, chatd-bench, chatd-floor, chatd-fake-provider)"
    cmake -S "$ROOT" -B "$BUILD/release" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCHATD_TESTS=OFF >/dev/null
    cmake --build "$BUILD/release" -j "$(nproc 2>/dev/null || echo 2)" --target chatd chatd-bench chatd-floor chatd-fake-provider >/dev/null
}

# start_provider NAME CMD...: start a model provider pinned beside the
# generator (the server's core stays the server's); CMD prints
# "listening PORT" on stdout first. Sets PROV_PID and PROV_PORT.
start_provider() {
    local name=$1
    shift
    local portfile=$OUT/logs/$name.port
    : >"$portfile"
    # shellcheck disable=SC2086
    $PIN_GEN "$@" >"$portfile" 2>"$OUT/logs/$name.log" &
    PROV_PID=$!
    local tries=100
    while [ $tries -gt 0 ]; do
        tries=$((tries - 1))
        PROV_PORT=$(sed -n 's/^listening \([0-9][0-9]*\)$/\1/p' "$portfile")
        [ -n "$PROV_PORT" ] && return 0
        if ! kill -0 "$PROV_PID" 2>/dev/null; then
            log "$name exited at start; see $OUT/logs/$name.log"
            PROV_PID=
            return 1
        fi
        sleep 0.1
    done
    log "$name did not say its port within 10 s"
    stop_provider
    return 1
}

stop_provider() {
    if [ -n "$PROV_PID" ]; then
        kill "$PROV_PID" 2>/dev/null || true
        local tries=50
        while [ $tries -gt 0 ] && kill -0 "$PROV_PID" 2>/dev/null; do
            sleep 0.1
            tries=$((tries - 1))
        done
        kill -9 "$PROV_PID" 2>/dev/null || true
        wait "$PROV_PID" 2>/dev/null || true
        PROV_PID=
    fi
}

stop_all() {
    stop_server
    stop_provider
}

# assistant_run RESULTS LABEL INTERVAL_MS: bursts of ASSISTANT_USERS
# answers streamed through a fresh chatd from a fresh provider that pauses
# INTERVAL_MS between two deltas of an answer (0: no pause): the first
# burst, then (ASSISTANT_WARMUP=1) ASSISTANT_BURSTS measured ones, of which
# the table keeps the median.
assistant_run() {
    local results=$1 label=$2 interval=$3 check=$ASSISTANT_ANSWER
    if [ "$ASSISTANT_PROVIDER" = python ]; then
        # tests/fake_provider.py streams its own text ("huge" mode): the
        # generator checks the deltas against the final answer only.
        local mode="huge=$ASSISTANT_ANSWER,chunk=$ASSISTANT_DELTA"
        [ "$interval" != 0 ] && mode="$mode,slow=$interval"
        check=0
        start_provider fake-provider-py python3 "$ROOT/tests/fake_provider.py" --port 0 --mode "$mode" || return 0
    else
        start_provider fake-provider "$FAKE_PROVIDER" --answer-bytes "$ASSISTANT_ANSWER" \
            --delta-bytes "$ASSISTANT_DELTA" --interval-ms "$interval" || return 0
    fi
    # A key, as a real provider needs: chatd sends it, tests/fake_provider.py
    # wants the header (and accepts any key), chatd-fake-provider ignores it.
    if ! CHATD=${ASSISTANT_CHATD:-$CHATD} BENCH_PROVIDER_KEY=bench-provider-key start_chatd "chatd-assistant" \
        --model "fake=openai:http://127.0.0.1:$PROV_PORT/v1,name=Fake,key-env=BENCH_PROVIDER_KEY" \
        --assistant-max-streams $((ASSISTANT_USERS * 2)); then
        printf '{"mode":"assistant","label":"%s","error":"chatd did not start"}\n' "$label" >>"$results"
        stop_provider
        return 0
    fi
    # With the C provider the generator counts its deltas (chatd joins the
    # ones it reads together into one piece).
    local deltas=()
    [ "$check" != 0 ] && deltas=(--delta-bytes "$ASSISTANT_DELTA")
    local burst=(assistant --secret "$SECRET" --users "$ASSISTANT_USERS" --answer-bytes "$check"
        ${deltas[@]+"${deltas[@]}"} --provider-pid "$PROV_PID" --duration "$ASSISTANT_LIMIT" --setup-timeout 10)
    # The first burst of a fresh chatd also pays for starting: its heap
    # grows (page faults for every answer's buffers) and every answer opens
    # a connection to the provider. The other scenarios measure after a
    # warm-up (WARMUP); so does this one: the first burst is reported
    # apart ("..., first burst") and the same answers again, the
    # connections to the provider kept open and the heap grown, make the
    # scenario's figures.
    # A burst lasts 0.2-0.4 s unpaced: one is at the mercy of a moment's
    # noise, so the measured figure is the median of several (a round each).
    if [ "$ASSISTANT_WARMUP" = 1 ]; then
        bench_run "$results" "$label, first burst" "${burst[@]}"
        local b
        for b in $(seq 1 "$ASSISTANT_BURSTS"); do
            BENCH_ROUND=$b bench_run "$results" "$label" "${burst[@]}"
        done
    else
        bench_run "$results" "$label" "${burst[@]}"
    fi
    stop_server
    stop_provider
}

# assistant_scenarios RESULTS: the assistant's answers paced as a model
# streams them, then (ASSISTANT_UNPACED=1) as fast as chatd reads them.
assistant_scenarios() {
    local results=$1 who=chatd
    [ "$ASSISTANT_PROVIDER" = python ] && who="chatd (python provider)"
    assistant_run "$results" "$who ${ASSISTANT_INTERVAL_MS}ms/delta" "$ASSISTANT_INTERVAL_MS"
    if [ "$ASSISTANT_UNPACED" = 1 ] && [ "$ASSISTANT_INTERVAL_MS" != 0 ]; then
        assistant_run "$results" "$who unpaced" 0
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null ||
        echo $((20000 + RANDOM % 10000))
}

# start_server NAME PORT CMD...: start CMD pinned, wait until PORT accepts.
start_server() {
    local name=$1 port=$2
    shift 2
    # shellcheck disable=SC2086
    $PIN_SERVER "$@" >"$OUT/logs/$name.log" 2>&1 &
    SRV_PID=$!
    SRV_PORT=$port
    local tries=100
    while [ $tries -gt 0 ]; do
        tries=$((tries - 1))
        if ! kill -0 "$SRV_PID" 2>/dev/null; then
            log "$name exited at start; see $OUT/logs/$name.log"
            SRV_PID=
            return 1
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            sleep 0.2   # let it finish starting (storage, workers)
            return 0
        fi
        sleep 0.1
    done
    log "$name did not listen on $port within 10 s"
    stop_server
    return 1
}

stop_server() {
    if [ -n "$SRV_PID" ]; then
        kill "$SRV_PID" 2>/dev/null || true
        local tries=100
        while [ $tries -gt 0 ] && kill -0 "$SRV_PID" 2>/dev/null; do
            sleep 0.1
            tries=$((tries - 1))
        done
        kill -9 "$SRV_PID" 2>/dev/null || true
        wait "$SRV_PID" 2>/dev/null || true
        SRV_PID=
    fi
}

# What every benchmarked chatd gets (start_chatd, and bench/cluster.sh's
# nodes): limits raised for load, one worker (it has one core), warn-level
# logs (no line per connection).
CHATD_LOAD_FLAGS=(--echo --jwt-secret "$SECRET" --rate-limit 1000000 --input-rate 100000000
    --input-byte-rate 100000000000 --max-devices 1000 --workers 1 --log-level warn)

# start_chatd NAME [chatd options]: a fresh chatd (new database) for one
# group of scenarios, with CHATD_LOAD_FLAGS.
start_chatd() {
    local name=$1
    shift
    local port
    port=$(free_port)
    rm -f "$OUT/chatd.db" "$OUT/chatd.db-wal" "$OUT/chatd.db-shm"
    start_server "$name" "$port" "$CHATD" --listen "127.0.0.1:$port" "${CHATD_LOAD_FLAGS[@]}" \
        --db "$OUT/chatd.db" "$@"
}

# bench_run RESULTS LABEL MODE [chatd-bench options]: one scenario against
# the running server; appends its JSON line (or an error line) to RESULTS.
bench_run() {
    local results=$1 label=$2 mode=$3
    shift 3
    local line rc=0
    log "$label: $mode $*"
    # shellcheck disable=SC2086
    line=$($PIN_GEN "$BENCH" "$mode" --port "$SRV_PORT" --server-pid "$SRV_PID" --label "$label" \
        --duration "$DURATION" --warmup "$WARMUP" --json "$@" 2>>"$OUT/logs/generator.log") || rc=$?
    if [ $rc -ne 0 ] || [ -z "$line" ]; then
        log "$label $mode failed (exit $rc); see $OUT/logs/generator.log"
        printf '{"mode":"%s","label":"%s","error":"generator exit %s"}\n' "$mode" "$label" "$rc" >>"$results"
        return 0
    fi
    if [ -n "${BENCH_ROUND:-}" ]; then
        line="{\"round\":$BENCH_ROUND,${line#\{}"
    fi
    printf '%s\n' "$line" >>"$results"
}

# print_table RESULTS [REFERENCE_LABEL]: one row per JSON line; with a
# reference label, a column with server CPU per operation divided by the
# reference's for the same mode.
print_table() {
    python3 - "$@" <<'EOF' || cat "$1"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ref = sys.argv[2] if len(sys.argv) > 2 else None
# Several rounds of the same (server, mode): keep the run with the median
# server CPU per operation and note the spread. The assistant's operations
# are the pieces delivered, whose number varies from burst to burst with
# how chatd joined the deltas: its runs are ranked by CPU per provider
# delta, the same work each time.
def cost(r):
    if r.get("server_cpu_us_per_provider_delta"):
        return r["server_cpu_us_per_provider_delta"], "us/provider delta"
    return r.get("server_cpu_us_per_op"), "us/op"
groups = {}
for r in rows:
    key = (r.get("label"), r["mode"], r.get("connections"), r.get("inflight"))
    groups.setdefault(key, []).append(r)
if any("round" in r for r in rows):
    merged = []
    for g in groups.values():
        ok = sorted((r for r in g if r.get("server_cpu_us_per_op") is not None),
                    key=lambda r: cost(r)[0])
        if not ok:
            merged.append(g[0])
            continue
        med = dict(ok[(len(ok) - 1) // 2])
        if len(ok) > 1:
            med["spread"] = "median of %d: %.3f-%.3f %s" % (
                len(ok), cost(ok[0])[0], cost(ok[-1])[0], cost(ok[0])[1])
        merged.append(med)
    rows = merged
refcost = {r["mode"]: r.get("server_cpu_us_per_op") for r in rows if r.get("label") == ref}
# The assistant's target is set against chatd's fan-out (--sync normal) of
# the same run, when the run has one (make bench; not bench/assistant.sh).
fan = [r["server_cpu_us_per_op"] for r in rows if r["mode"] == "fanout" and
       r.get("label") == "chatd sync=normal" and r.get("server_cpu_us_per_op")]
hdr = ["server", "mode", "conns", "ops/s", "p50 us", "p99 us", "p999 us", "srv us/op", "srv cpu", "notes"]
if ref:
    hdr.insert(8, "x " + ref)
out = [hdr]
for r in rows:
    if "error" in r or "skipped" in r:
        out.append([r.get("label", ""), r["mode"]] + [""] * (len(hdr) - 3) + [r.get("error") or r.get("skipped")])
        continue
    notes = []
    if r["mode"] == "idle" and "rss_bytes_per_conn" in r:
        notes.append("rss %d B/conn (%d->%d kB)" % (r["rss_bytes_per_conn"], r["server_rss_kb_before"], r["server_rss_kb_after"]))
    if r["mode"] == "chat":
        notes.append("%.0f deliv/s, deliv p50/p99 %.0f/%.0f us" % (r["deliveries_per_s"], r["delivery_p50_us"], r["delivery_p99_us"]))
    if r["mode"] == "cross":
        notes.append("%.0f acked/s, ack p50/p99 %.0f/%.0f us, same-node deliv p50/p99 %.0f/%.0f us, %.2f other-node deliv/ack" % (
            r["acks_per_s"], r["ack_p50_us"], r["ack_p99_us"], r["local_delivery_p50_us"],
            r["local_delivery_p99_us"], r["remote_deliveries_per_ack"]))
    if "backend_cpu_util" in r:
        notes.append("redis+pg %.0f%% cpu, %.2f us/op" % (100 * r["backend_cpu_util"], r.get("backend_cpu_us_per_op", 0)))
    if r["mode"] == "fanout" and r.get("server_cpu_us_per_msg"):
        notes.append("%d deliv/msg, %.0f us/msg" % (r["deliveries_per_msg"], r["server_cpu_us_per_msg"]))
    if r["mode"] == "assistant":
        notes.append("%d/%d answers ok, last at %.2f s, %.0f deltas of %.1f B each, at most %d at once" % (
            r["answers_ok"], r["questions"], r["time_to_last_answer_s"], r["deltas_per_answer"],
            r["delta_bytes"] / r["deltas"] if r["deltas"] else 0, r.get("answers_streaming_peak", 0)))
        if r.get("provider_deltas"):
            notes.append("%.3f us per provider delta (%d pieces for %d deltas)" % (
                r["server_cpu_us_per_provider_delta"], r["deltas"], r["provider_deltas"]))
            if fan:
                notes.append("%.1fx the fan-out's us per delivery (target: at most 2x)" % (
                    r["server_cpu_us_per_provider_delta"] / fan[0]))
        if r.get("final_lag_p50_us"):
            notes.append("final %.0f/%.0f ms after the last delta (p50/p99)" % (
                r["final_lag_p50_us"] / 1e3, r["final_lag_p99_us"] / 1e3))
        if r.get("server_cpu_us_per_answer"):
            notes.append("%.0f us/answer" % r["server_cpu_us_per_answer"])
        if r.get("server_rss_kb_peak", -1) > 0:
            notes.append("rss peak %d kB (+%d)" % (r["server_rss_kb_peak"], r["server_rss_kb_peak"] - r["server_rss_kb_before"]))
        if "provider_cpu_util" in r:
            notes.append("provider %.0f%%" % (100 * r["provider_cpu_util"]))
    bad = {k: r[k] for k in ("connect_errors", "http_errors", "closed", "protocol_errors", "server_errors",
                             "answers_failed", "answers_unfinished", "answers_partial", "answers_deltas_differ",
                             "answers_text_differs", "offset_gaps", "bytes_received_twice", "snapshots",
                             "wrong_session", "wrong_stream", "after_end") if r.get(k)}
    if r["ready"] < r["connections"] and r["mode"] != "connect":
        bad["not_ready"] = r["connections"] - r["ready"]
    if bad:
        notes.append(" ".join("%s=%s" % kv for kv in bad.items()))
    if r.get("spread"):
        notes.append(r["spread"])
    if r.get("other_busy_cores", 0) > 0.15:
        notes.append("NOISY: other processes used %.2f cores" % r["other_busy_cores"])
    cost = r.get("server_cpu_us_per_op")
    row = [r.get("label", ""), r["mode"], str(r["connections"]), "%.0f" % r["ops_per_s"],
           "%.0f" % r["latency_p50_us"], "%.0f" % r["latency_p99_us"], "%.0f" % r["latency_p999_us"],
           "%.3f" % cost if cost is not None else "-",
           "%.0f%%" % (100 * r["server_cpu_util"]) if "server_cpu_util" in r else "-", "; ".join(notes)]
    if ref:
        rc = refcost.get(r["mode"])
        row.insert(8, "%.2f" % (cost / rc) if cost and rc else "-")
    out.append(row)
w = [max(len(row[i]) for row in out) for i in range(len(hdr))]
for i, row in enumerate(out):
    print("  ".join(c.ljust(w[j]) if j in (0, 1, len(hdr) - 1) else c.rjust(w[j]) for j, c in enumerate(row)).rstrip())
    if i == 0:
        print("  ".join("-" * x for x in w))
EOF
}

# cluster_summary RESULTS: bench/cluster.sh's runs beside the single SQLite
# chatd's chat runs of the same results file (when it has them): acked
# messages/s and their ratio, server CPU per message (the nodes', then with
# Redis and PostgreSQL added), and the cross-node deliveries.
cluster_summary() {
    python3 - "$1" <<'PYEOF' || true
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ok = [r for r in rows if "error" not in r and "skipped" not in r]
def find(label, mode):
    got = [r for r in ok if r.get("label") == label and r["mode"] == mode]
    return got[-1] if got else None
def cost(r):
    c = r.get("server_cpu_us_per_op")
    if c is None:
        return "-"
    if "backend_cpu_us_per_op" in r:
        return "%.1f+%.1f us" % (c, r["backend_cpu_us_per_op"])
    return "%.1f us" % c
print("3 nodes (PostgreSQL + Redis, all on one core) beside one chatd (SQLite), chat: acked msg/s (server CPU per msg: nodes+redis/pg)")
hdr = ["in flight", "3 nodes, pg", "1 node sync=full", "ratio", "1 node sync=normal", "ratio"]
out = [hdr]
for fl, suffix in ((1, ""), (16, " pipelined")):
    c = find("cluster pg" + suffix, "chat")
    if c is None:
        continue
    row = [str(fl), "%.0f (%s)" % (c["ops_per_s"], cost(c))]
    for sync in ("full", "normal"):
        s = find("chatd sync=%s%s" % (sync, suffix), "chat")
        if s:
            row += ["%.0f (%s)" % (s["ops_per_s"], cost(s)), "%.2f" % (c["ops_per_s"] / s["ops_per_s"])]
        else:
            row += ["-", "-"]
    out.append(row)
w = [max(len(r[i]) for r in out) for i in range(len(hdr))]
for r in out:
    print("  " + "  ".join(x.ljust(w[i]) for i, x in enumerate(r)).rstrip())
print("Cross-node: senders on node A, each user's other devices on nodes B and C")
for suffix in (" 10 senders", "", " pipelined"):
    x = find("cluster A->B+C" + suffix, "cross")
    if x is None:
        continue
    print("  %3d senders x %2d in flight: %.0f deliveries/s on B+C (%.0f acked msg/s), send -> delivery on "
          "another node p50 %.2f ms, p99 %.2f ms (same node: %.2f / %.2f ms); %s per delivery on B+C" % (
              x["users"] * x["devices"], x["inflight"], x["ops_per_s"], x["acks_per_s"],
              x["latency_p50_us"] / 1e3, x["latency_p99_us"] / 1e3,
              x["local_delivery_p50_us"] / 1e3, x["local_delivery_p99_us"] / 1e3, cost(x)))
PYEOF
}

# paced_summary RESULTS: the paced cross runs (those with a --rate), as
# cluster_summary's "Cross-node:" lines, with the rate asked and whether
# the target (p99 under 5 ms) was met.
paced_summary() {
    python3 - "$1" <<'PYEOF' || true
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
paced = [r for r in rows if r["mode"] == "cross" and "rate" in r and "error" not in r]
if paced:
    print("Cross-node, paced (target: send -> delivery on another node p99 under 5 ms at 50,000 deliveries/s)")
for x in paced:
    per_msg = len(x["remote_ports"]) * x["remote_devices"]
    asked = x["rate"] * per_msg
    c = x.get("server_cpu_us_per_op")
    cost = "-" if c is None else "%.1f+%.1f us" % (c, x.get("backend_cpu_us_per_op", 0))
    print("  %3d senders x %2d in flight, %d devices on each of %d nodes, paced at %d msg/s (%d deliveries/s): "
          "%.0f deliveries/s on B+C%s (%.0f acked msg/s, %.2f per ack of %d), send -> delivery on another node "
          "p50 %.2f ms, p99 %.2f ms (same node: %.2f / %.2f ms): p99 %s; %s per delivery on B+C" % (
              x["users"] * x["devices"], x["inflight"], x["remote_devices"], len(x["remote_ports"]),
              x["rate"], asked, x["ops_per_s"], "" if x["ops_per_s"] >= 0.97 * asked else " (short of the rate)",
              x["acks_per_s"], x["remote_deliveries_per_ack"], per_msg,
              x["latency_p50_us"] / 1e3, x["latency_p99_us"] / 1e3,
              x["local_delivery_p50_us"] / 1e3, x["local_delivery_p99_us"] / 1e3,
              "under 5 ms" if x["latency_p99_us"] < 5000 else "over 5 ms", cost))
PYEOF
}
