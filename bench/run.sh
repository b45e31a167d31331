#!/usr/bin/env bash
# bench/run.sh: chatd's standard benchmark (what `make bench` runs).
#
# Builds the release tree, then for each group of scenarios starts a fresh
# chatd pinned to core 0 and drives it with chatd-bench pinned to core 1:
#   echo      100 connections x 8 in flight, 64-byte text, on /echo
#   connect   50 loops of authenticated handshakes (JWT verified each time)
#   idle      10,000 and 19,000 authenticated connections held open, each on
#             a fresh chatd: RSS growth per connection
#   chat      50 users x 2 devices = 100 senders, 1 message in flight each,
#             then the same with 16 in flight (throughput), then 16 in flight
#             paced to 50,000 messages/s in all (latency at half the 100k
#             target)
#   fanout    one session watched by 1,000 connections (1 sender, 499 owner
#             devices, 500 admins that admin_join), one sender, 32 messages
#             in flight; chat and fanout run with --sync normal and with
#             --sync full (a fresh chatd each)
#   assistant 500 users each ask one question in a new session at once;
#             chatd streams the 500 answers from chatd-fake-provider (4,096
#             bytes in 8-byte deltas, one every 10 ms), then the same with
#             no pause between deltas: deltas delivered/s, server CPU per
#             delta, every answer checked (see bench/assistant.sh)
#   cluster   three chatd nodes on one PostgreSQL and one Redis, all on the
#             server's core: chat on PostgreSQL (1 and 16 in flight) and
#             cross-node delivery (senders on node A, their users' other
#             devices on B and C: deliveries/s there, send->delivery
#             latency), then a summary beside the SQLite chat figures above
#             (see bench/cluster.sh; skipped without redis-server and
#             postgresql)
# Every figure is server CPU time (the process's CPU clock, all threads) per
# operation beside the rate. One JSON line per run goes to
# $BUILD/bench/results.jsonl, then a table is printed. About 5 minutes
# with the defaults (DURATION=10 WARMUP=2 seconds per scenario; the
# assistant runs take what their answers take, ~27 s together; the
# cluster's five runs and its start ~70 s).
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

RESULTS=$OUT/results.jsonl
: >"$RESULTS"
: >"$OUT/logs/generator.log"
trap stop_all EXIT
trap 'stop_all; exit 130' INT TERM

build_release

start_chatd chatd-main
bench_run "$RESULTS" chatd echo --connections 100 --inflight 8 --size 64
bench_run "$RESULTS" chatd connect --secret "$SECRET" --connections 50
stop_server

# Idle connections: the server and the generator each hold one descriptor per
# connection (plus a few), within this shell's hard limit.
hard=$(ulimit -Hn)
for n in 10000 19000; do
    if [ "$hard" != unlimited ] && [ "$hard" -lt $((n + 200)) ]; then
        log "idle $n: skipped, the open-file hard limit is $hard"
        printf '{"mode":"idle","label":"chatd","connections":%d,"skipped":"open-file hard limit %s < %d"}\n' \
            "$n" "$hard" $((n + 200)) >>"$RESULTS"
        continue
    fi
    start_chatd "chatd-idle-$n"
    bench_run "$RESULTS" chatd idle --secret "$SECRET" --connections "$n" --concurrency 256
    stop_server
done

# Storage matters for chat and fan-out (every message is stored before it is
# acknowledged and delivered): both run under each durability setting.
for sync in normal full; do
    start_chatd "chatd-chat-$sync" --sync "$sync"
    # fan-out first: after the chat run's ~200,000 stored messages each
    # insert costs more, and fan-out's figure would carry that.
    bench_run "$RESULTS" "chatd sync=$sync" fanout --secret "$SECRET" --watchers 1000 --max-devices 1000 --inflight 32
    bench_run "$RESULTS" "chatd sync=$sync" chat --secret "$SECRET" --users 50 --devices 2 --inflight 1 --size 64
    bench_run "$RESULTS" "chatd sync=$sync pipelined" chat --secret "$SECRET" --users 50 --devices 2 --inflight 16 --size 64
    # Latency at half the target load (100k acked/s): sends paced to 50k/s.
    bench_run "$RESULTS" "chatd sync=$sync at 50k/s" chat --secret "$SECRET" --users 50 --devices 2 --inflight 16 --size 64 --rate 50000
    stop_server
done

assistant_scenarios "$RESULTS"

"$ROOT/bench/cluster.sh" "$RESULTS" || log "cluster part failed (exit $?); see $OUT/logs/cluster-*.log"

echo
echo "chatd benchmark ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, server on core $SERVER_CPU, generator on core $GEN_CPU)"
echo "ops: echo = messages echoed, fanout = deliveries, connect = handshakes, idle = connections, chat = acknowledged messages, assistant = answer deltas delivered"
print_table "$RESULTS"
echo
cluster_summary "$RESULTS"
paced_summary "$RESULTS"
echo
echo "JSON lines: $RESULTS"
