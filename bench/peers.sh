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
#   uws            uWebSockets v20, the C++ library on uSockets' epoll loop:
#                  bench/peers/uws_peer.cpp, /echo and a pub/sub /fanout
#                  (the library's publish). Optional, as neither registry
#                  carries the C++ sources: built here with g++ -O2 -flto
#                  when UWS_SRC names a uWebSockets tree (uSockets in
#                  UWS_SRC/uSockets, or UWS_USOCKETS), or a server of your
#                  own build run as UWS_PEER (PORT as its argument, /echo
#                  and /fanout as above); otherwise its row says why it was
#                  skipped (bench/README.md, "uWebSockets")
#   uws-node       the same library through its Node binding: a prebuilt
#                  native module from npm (UWS_NPM, a pinned version whose
#                  digest, UWS_NPM_SHA512, is checked), fetched with
#                  `npm pack` into the build folder, loaded by
#                  bench/peers/uws_echo.js: /echo and a pub/sub /fanout.
#                  Skipped, with the reason in its row, when the package
#                  has no module for this Node's ABI
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
#                  Its fan-out runs twice: with the 64-byte messages every
#                  peer relays, and ("floor, chatd's bytes") with messages
#                  the size of the events chatd delivered in the same round
#                  (chatd-bench's bytes_per_delivery: ~290 bytes, as a
#                  chatd event carries the protocol's fields around the 64
#                  bytes of content). uWebSockets' fan-out runs at chatd's
#                  bytes too ("uws-node, chatd's bytes", "uws, chatd's
#                  bytes"): the same relay, byte for byte
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
# per operation divided by libwebsockets' for the same mode. About 9 minutes
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

# ---- uWebSockets (optional) ------------------------------------------------
# UWS_BIN / UWS_ADDON: the C++ server and the Node module to measure, or
# empty with the reason in UWS_WHY / UWS_NODE_WHY (printed, and written as
# the skipped row of the table).
: "${UWS_NPM:=@trufflesuite/uws-js-unofficial@20.30.0-unofficial.0}"
: "${UWS_NPM_SHA512:=af95f468e41cb93ea92f04d12c3fa63e700cfe794ab6f20ae19f8ccbef80f2d4ce474a938cd471f1407c8f3463dc3fa9f4f300a792e7a425141a6cfbfd3a69c0}"
UWS_BIN='' UWS_WHY='' UWS_ADDON='' UWS_NODE_WHY=''

# build_uws: bench/peers/uws_peer.cpp against UWS_SRC (uSockets compiled
# from its C sources with the epoll backend, no TLS; no zlib), or UWS_PEER.
build_uws() {
    if [ -n "${UWS_PEER:-}" ]; then
        if [ -x "$UWS_PEER" ]; then
            UWS_BIN=$UWS_PEER
            log "uws: using UWS_PEER=$UWS_PEER"
        else
            UWS_WHY="UWS_PEER=$UWS_PEER is not an executable file"
        fi
        return 0
    fi
    if [ -z "${UWS_SRC:-}" ]; then
        UWS_WHY="no uWebSockets C++ source (neither Debian nor npm has it): set UWS_SRC=/path/to/uWebSockets or UWS_PEER=/path/to/server, see bench/README.md"
        return 0
    fi
    local us=${UWS_USOCKETS:-$UWS_SRC/uSockets}
    if [ ! -f "$UWS_SRC/src/App.h" ] || [ ! -f "$us/src/libusockets.h" ]; then
        UWS_WHY="UWS_SRC=$UWS_SRC has no src/App.h, or $us no src/libusockets.h"
        return 0
    fi
    local obj=$POUT/uws-obj blog=$OUT/logs/uws-build.log
    rm -rf "$obj"
    mkdir -p "$obj"
    log "building the uWebSockets peer from $UWS_SRC (log: $blog)"
    # shellcheck disable=SC2046
    if (cd "$obj" && cc -O2 -flto -DLIBUS_NO_SSL -I"$us/src" -c \
            $(find "$us/src" -maxdepth 1 -name '*.c') $(find "$us/src/eventing" "$us/src/crypto" -maxdepth 1 -name '*.c') &&
        g++ -O2 -flto -std=c++20 -DLIBUS_NO_SSL -DUWS_NO_ZLIB -I"$UWS_SRC/src" -I"$us/src" \
            -o "$POUT/uws-peer" "$PEERS/uws_peer.cpp" "$obj"/*.o) >"$blog" 2>&1; then
        UWS_BIN=$POUT/uws-peer
    else
        UWS_WHY="building against UWS_SRC failed: see $blog"
    fi
}

# fetch_uws_node: the pinned npm package into $POUT/uws-npm (once; its
# digest checked), and its native module for this Node's platform and ABI.
fetch_uws_node() {
    local dir=$POUT/uws-npm name tgz
    name=$(node -p '"uws_" + process.platform + "_" + process.arch + "_" + process.versions.modules + ".node"')
    mkdir -p "$dir"
    tgz=$(find "$dir" -maxdepth 1 -name '*.tgz' | head -n 1)
    if [ -z "$tgz" ] || ! echo "$UWS_NPM_SHA512  $tgz" | sha512sum -c --status 2>/dev/null; then
        rm -rf "$dir"
        mkdir -p "$dir"
        log "fetching $UWS_NPM (npm pack) into $dir"
        if ! (cd "$dir" && npm pack --silent "$UWS_NPM" >/dev/null 2>"$OUT/logs/uws-npm.log"); then
            UWS_NODE_WHY="npm pack $UWS_NPM failed: see $OUT/logs/uws-npm.log"
            return 0
        fi
        tgz=$(find "$dir" -maxdepth 1 -name '*.tgz' | head -n 1)
        if [ -z "$tgz" ] || ! echo "$UWS_NPM_SHA512  $tgz" | sha512sum -c --status 2>/dev/null; then
            UWS_NODE_WHY="$UWS_NPM: the tarball's SHA-512 is not UWS_NPM_SHA512"
            return 0
        fi
    fi
    rm -rf "$dir/package"
    if ! tar xzf "$tgz" -C "$dir" "package/binaries/$name" 2>/dev/null; then
        UWS_NODE_WHY="$UWS_NPM has no $name (Node $(node --version)): try another UWS_NPM"
        return 0
    fi
    if ! node -e 'require(process.argv[1])' "$dir/package/binaries/$name" >"$OUT/logs/uws-npm.log" 2>&1; then
        UWS_NODE_WHY="$name does not load in Node $(node --version): see $OUT/logs/uws-npm.log"
        return 0
    fi
    UWS_ADDON=$dir/package/binaries/$name
}

# skip_row LABEL REASON: the table's row for a peer that is not measured
# (written in the first round only).
skip_row() {
    [ "${BENCH_ROUND:-1}" = 1 ] || return 0
    log "$1 skipped: $2"
    python3 -c 'import json, sys; print(json.dumps({"mode": "-", "label": sys.argv[1], "skipped": "skipped: " + sys.argv[2]}))' \
        "$1" "$2" >>"$RESULTS"
}

# ---- build -----------------------------------------------------------------
build_release
log "building the libwebsockets peer"
# shellcheck disable=SC2046
cc -O2 -o "$POUT/lws-echo" "$PEERS/lws_echo.c" $(pkg-config --cflags --libs libwebsockets)
log "building the gorilla peer (offline, from /usr/share/gocode)"
(cd "$PEERS/gorilla" && env GOPATH=/usr/share/gocode GO111MODULE=off GOFLAGS= GOPROXY=off \
    GOCACHE="$POUT/gocache" go build -o "$POUT/gorilla-peer" .)
build_uws
fetch_uws_node
[ -n "$UWS_BIN" ] || log "uws (C++) will be skipped: $UWS_WHY"
[ -n "$UWS_ADDON" ] || log "uws-node will be skipped: $UWS_NODE_WHY"

ECHO_ARGS=(--connections 100 --inflight 8 --size 64)
FAN_ARGS=(--watchers 1000 --inflight 32 --size 64)

# One round: every server in turn, each scenario once. Rounds are
# interleaved (chatd, lws, ..., floor, then again) so that a slow spell of
# the shared machine lands on all servers alike; the table reports the
# median of the rounds.
# The payload bytes per delivery of chatd's fan-out in this round's results
# (nothing when it did not run).
chatd_event_bytes() {
    python3 - "$RESULTS" "${BENCH_ROUND:-}" <<'EOF' 2>/dev/null || true
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("label") == "chatd" and r.get("mode") == "fanout" and \
            str(r.get("round", "")) == sys.argv[2] and r.get("bytes_per_delivery"):
        print(round(r["bytes_per_delivery"]))
EOF
}

# same_bytes_fanout LABEL: the running plain server's fan-out again, with
# messages the size of the events chatd delivered in this round (its
# bytes_per_delivery), where the 64 bytes of the peers' messages are ~290
# in chatd's user_message event: the same relay at chatd's bytes.
same_bytes_fanout() {
    local same
    same=$(chatd_event_bytes)
    if [ -n "$same" ]; then
        bench_run "$RESULTS" "$1" fanout --watchers 1000 --inflight 32 \
            --size "$same" --proto plain --path /fanout
    fi
}

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

    # ---- uWebSockets (C++) -----------------------------------------------------
    port=$(free_port)
    if [ -z "$UWS_BIN" ]; then
        skip_row uws "$UWS_WHY"
    elif start_server peer-uws "$port" "$UWS_BIN" "$port"; then
        bench_run "$RESULTS" uws echo "${ECHO_ARGS[@]}" --path /echo
        bench_run "$RESULTS" uws fanout "${FAN_ARGS[@]}" --proto plain --path /fanout
        bench_run "$RESULTS" uws connect --proto plain --path /echo --connections 50
        same_bytes_fanout "uws, chatd's bytes"
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

    # ---- uWebSockets through Node ------------------------------------------------
    port=$(free_port)
    if [ -z "$UWS_ADDON" ]; then
        skip_row uws-node "$UWS_NODE_WHY"
    elif start_server peer-uws-node "$port" node "$PEERS/uws_echo.js" "$port" "$UWS_ADDON"; then
        bench_run "$RESULTS" uws-node echo "${ECHO_ARGS[@]}" --path /echo
        bench_run "$RESULTS" uws-node fanout "${FAN_ARGS[@]}" --proto plain --path /fanout
        bench_run "$RESULTS" uws-node connect --proto plain --path /echo --connections 50
        same_bytes_fanout "uws-node, chatd's bytes"
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
        same_bytes_fanout "floor, chatd's bytes"
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
