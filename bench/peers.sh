#!/usr/bin/env bash
# bench/peers.sh: chatd beside other WebSocket servers, same machine, same
# run, same generator (chatd-bench), same pinning (server core 0, generator
# core 1), one server at a time.
#
# Peers (installed here from Debian and npm, the only registries reachable):
#   libwebsockets  bench/peers/lws_echo.c, built against Debian's
#                  libwebsockets-dev (libwebsockets-test-server ships no echo
#                  protocol): /echo and a ring-buffer /fanout
#   gorilla        bench/peers/gorilla/main.go, Debian's golang-go +
#                  golang-github-gorilla-websocket-dev, built offline
#                  (GOPATH=/usr/share/gocode, GO111MODULE=off): /echo and a
#                  PreparedMessage /fanout
#   ws             bench/peers/ws_echo.js, npm ws: /echo and a /fanout room
#   socket.io      bench/peers/socketio_fanout.js, npm socket.io: room
#                  fan-out only, driven by chatd-bench --proto socketio
#                  (Engine.IO v4 / Socket.IO v5 framing over WebSocket)
# and a floor under them all:
#   floor          bench/chatd_floor.c (chatd-floor): one thread of raw epoll
#                  that unmasks and echoes or broadcasts frames and writes
#                  each connection once per loop iteration, nothing else (no
#                  checks, no storage). Its figure is what the kernel charges
#                  for the scenario on this machine: no server can go much
#                  below it, so its "x lws" is the most any server can reach.
#
# Scenarios, as in bench/run.sh: echo = 100 connections x 8 in flight,
# 64-byte text; fanout = 1,000 connections on one room/session, one sender
# that runs at most 32 messages ahead of the deliveries (averaged over the
# watchers). For the plain
# peers fan-out means "relay each message to every connection"; chatd also
# parses, stores (SQLite, --sync normal), acknowledges and routes it.
#
# Output: $BUILD/bench/peers.jsonl (one line per run, with its round) and a
# table of medians over ROUNDS interleaved rounds (default 3, each scenario
# DURATION=6 seconds after WARMUP=2) whose "x lws" column is the server CPU
# per operation divided by libwebsockets' for the same mode. About 8 minutes
# with the defaults; ROUNDS=1 DURATION=10 gives one longer pass.
set -euo pipefail

: "${ROUNDS:=3}"
: "${DURATION:=6}"

# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

PEERS=$ROOT/bench/peers
POUT=$OUT/peers
RESULTS=$OUT/peers.jsonl
mkdir -p "$POUT"
: >"$RESULTS"
: >"$OUT/logs/generator.log"
trap stop_server EXIT
trap 'stop_server; exit 130' INT TERM

# ---- install ---------------------------------------------------------------
need=""
for p in libwebsockets-dev pkg-config golang-go golang-github-gorilla-websocket-dev; do
    dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed || need="$need $p"
done
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || need="$need nodejs npm"
if [ -n "$need" ]; then
    if [ "$(id -u)" != 0 ]; then
        log "missing Debian packages:$need (run as root, or install them)"
        exit 1
    fi
    log "installing$need"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $need >/dev/null
fi
if [ ! -d "$PEERS/node_modules/ws" ] || [ ! -d "$PEERS/node_modules/socket.io" ]; then
    log "installing npm ws and socket.io under bench/peers"
    (cd "$PEERS" && npm install --no-audit --no-fund --silent >/dev/null)
fi

# ---- build -----------------------------------------------------------------
build_release
log "building the libwebsockets peer"
# shellcheck disable=SC2046
cc -O2 -o "$POUT/lws-echo" "$PEERS/lws_echo.c" $(pkg-config --cflags --libs libwebsockets)
log "building the gorilla peer (offline, from /usr/share/gocode)"
(cd "$PEERS/gorilla" && env GOPATH=/usr/share/gocode GO111MODULE=off GOFLAGS= GOPROXY=off \
    GOCACHE="$POUT/gocache" go build -o "$POUT/gorilla-peer" .)

ECHO_ARGS=(--connections 100 --inflight 8 --size 64)
FAN_ARGS=(--watchers 1000 --inflight 32 --size 64)

# One round: every server in turn, each scenario once. Rounds are
# interleaved (chatd, lws, ..., floor, then again) so that a slow spell of
# the shared machine lands on all servers alike; the table reports the
# median of the rounds.
one_round() {
    # ---- chatd -----------------------------------------------------------------
    start_chatd peer-chatd --sync normal
    bench_run "$RESULTS" chatd echo "${ECHO_ARGS[@]}"
    bench_run "$RESULTS" chatd fanout "${FAN_ARGS[@]}" --secret "$SECRET" --max-devices 1000
    bench_run "$RESULTS" chatd connect --secret "$SECRET" --connections 50
    stop_server

    # ---- libwebsockets ---------------------------------------------------------
    port=$(free_port)
    if start_server peer-lws "$port" "$POUT/lws-echo" "$port"; then
        bench_run "$RESULTS" lws echo "${ECHO_ARGS[@]}" --path /echo
        bench_run "$RESULTS" lws fanout "${FAN_ARGS[@]}" --proto plain --path /fanout
        bench_run "$RESULTS" lws connect --proto plain --path /echo --connections 50
        stop_server
    fi

    # ---- gorilla/websocket -----------------------------------------------------
    port=$(free_port)
    if start_server peer-gorilla "$port" "$POUT/gorilla-peer" -addr "127.0.0.1:$port"; then
        bench_run "$RESULTS" gorilla echo "${ECHO_ARGS[@]}" --path /echo
        bench_run "$RESULTS" gorilla fanout "${FAN_ARGS[@]}" --proto plain --path /fanout
        bench_run "$RESULTS" gorilla connect --proto plain --path /echo --connections 50
        stop_server
    fi

    # ---- Node ws ---------------------------------------------------------------
    port=$(free_port)
    if start_server peer-ws "$port" node "$PEERS/ws_echo.js" "$port"; then
        bench_run "$RESULTS" node-ws echo "${ECHO_ARGS[@]}" --path /echo
        bench_run "$RESULTS" node-ws fanout "${FAN_ARGS[@]}" --proto plain --path /fanout
        bench_run "$RESULTS" node-ws connect --proto plain --path /echo --connections 50
        stop_server
    fi

    # ---- Socket.IO -------------------------------------------------------------
    port=$(free_port)
    if start_server peer-socketio "$port" node "$PEERS/socketio_fanout.js" "$port"; then
        bench_run "$RESULTS" socket.io fanout "${FAN_ARGS[@]}" --proto socketio
        stop_server
    fi

    # ---- the floor: bare epoll ---------------------------------------------------
    port=$(free_port)
    if start_server floor "$port" "$CHATD_FLOOR" "$port"; then
        bench_run "$RESULTS" floor echo "${ECHO_ARGS[@]}" --path /echo
        bench_run "$RESULTS" floor fanout "${FAN_ARGS[@]}" --proto plain --path /fanout
        stop_server
    fi
}

for round in $(seq 1 "$ROUNDS"); do
    log "round $round of $ROUNDS"
    BENCH_ROUND=$round
    one_round
done

echo
echo "chatd and peers ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, server on core $SERVER_CPU, generator on core $GEN_CPU)"
echo "ops: echo = messages echoed, fanout = deliveries; 'x lws' = server CPU per op / libwebsockets'"
print_table "$RESULTS" lws
echo
echo "JSON lines: $RESULTS"
