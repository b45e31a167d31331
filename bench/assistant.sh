#!/usr/bin/env bash
# bench/assistant.sh: the assistant scenario of `make bench`, alone.
#
# ASSISTANT_USERS (default 500) WebSocket clients, one user each, connect to
# a fresh chatd and each send one user_message in a new session at the same
# moment. chatd (--model fake=openai:http://127.0.0.1:PORT/v1) streams the
# answers from chatd-fake-provider (bench/chatd_fake_provider.c), which
# sends each answer (ASSISTANT_ANSWER bytes, default 4096) in deltas of
# ASSISTANT_DELTA bytes (default 8) one every ASSISTANT_INTERVAL_MS (default
# 10); then, with ASSISTANT_UNPACED=1 (the default), the same with no pause
# between deltas. Each run sends its burst of questions four times to the
# same chatd: the first burst, reported apart, also pays for a fresh
# chatd's growing heap and its connections to the provider; of the other
# three (ASSISTANT_BURSTS) the one with the median CPU per provider delta
# makes the run's figures (ASSISTANT_WARMUP=0: the first only). chatd runs on core 0;
# chatd-bench and the provider share core 1.
#
# Figures per run: answer deltas delivered per second, chatd's CPU time per
# delta and per answer, answers completed and the time to the last one,
# chatd's peak RSS, and the checks: every client places its deltas by
# offset and compares them with the final answer's content, and that with
# the text the provider streamed. ASSISTANT_PROVIDER=python runs the same
# against tests/fake_provider.py (slower; see docs/benchmarks.md).
# Results: $BUILD/bench/assistant.jsonl, then a table. ~27 s.
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

RESULTS=$OUT/assistant.jsonl
: >"$RESULTS"
: >"$OUT/logs/generator.log"
trap stop_all EXIT
trap 'stop_all; exit 130' INT TERM

build_release
assistant_scenarios "$RESULTS"

echo
echo "chatd assistant benchmark ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, chatd on core $SERVER_CPU, generator and provider on core $GEN_CPU)"
echo "$ASSISTANT_USERS answers of $ASSISTANT_ANSWER bytes in $ASSISTANT_DELTA-byte deltas; ops = answer deltas delivered; p50/p99 = question -> first delta"
print_table "$RESULTS"
echo
echo "JSON lines: $RESULTS"
