#!/usr/bin/env bash
# bench/compare.sh OTHER_CHATD: this tree's chatd against another chatd
# binary (an earlier build), side by side, in interleaved rounds.
#
# For ROUNDS rounds (default 3), each binary in turn gets a fresh server for
# echo (100 connections x 8 in flight), fan-out (1,000 watchers, 32 in
# flight, --sync normal) and chat (100 senders x 16 in flight, --sync
# normal), then handshakes (50 slots, JWT checked). The table keeps each
# scenario's median round and a column with this tree's server CPU per
# operation divided by the other's.
# Example: bench/compare.sh /path/to/old/build/release/chatd
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

OTHER=${1:?usage: bench/compare.sh OTHER_CHATD}
ROUNDS=${ROUNDS:-3}
RESULTS=$OUT/compare.jsonl
: >"$RESULTS"
trap stop_server EXIT
trap 'stop_server; exit 130' INT TERM

build_release
NEW=$CHATD

# An older chatd may not know every option start_chatd passes: drop the
# ones its --help does not list.
run_group() {
    local label=$1 bin=$2
    CHATD=$bin
    local extra=()
    # Read the whole help first: with pipefail, `grep -q` leaving early
    # would fail the pipe (SIGPIPE) and misjudge this tree's binary.
    local help
    help=$("$bin" --help 2>/dev/null || true)
    case $help in *--input-rate*) ;; *) extra=(--legacy) ;; esac
    start_chatd_for "$label" "${extra[@]}" --sync normal
    bench_run "$RESULTS" "$label" echo --connections 100 --inflight 8 --size 64
    bench_run "$RESULTS" "$label" fanout --secret "$SECRET" --watchers 1000 --max-devices 1000 --inflight 32
    bench_run "$RESULTS" "$label" chat --secret "$SECRET" --users 50 --devices 2 --inflight 16 --size 64
    bench_run "$RESULTS" "$label" connect --secret "$SECRET" --connections 50
    stop_server
}

start_chatd_for() {
    local name=$1
    shift
    if [ "${1:-}" = --legacy ]; then
        shift
        local port
        port=$(free_port)
        rm -f "$OUT/chatd.db" "$OUT/chatd.db-wal" "$OUT/chatd.db-shm"
        start_server "$name" "$port" "$CHATD" --listen "127.0.0.1:$port" --echo --jwt-secret "$SECRET" \
            --db "$OUT/chatd.db" --rate-limit 1000000 --max-devices 1000 --workers 1 --log-level warn "$@"
    else
        start_chatd "$name" "$@"
    fi
}

for r in $(seq 1 "$ROUNDS"); do
    export BENCH_ROUND=$r
    run_group this "$NEW"
    run_group other "$OTHER"
done

echo
echo "this tree against $OTHER ($(date -u +%Y-%m-%dT%H:%M:%SZ), $ROUNDS interleaved rounds, server on core $SERVER_CPU, generator on core $GEN_CPU)"
print_table "$RESULTS" other
