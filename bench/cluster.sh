#!/usr/bin/env bash
# bench/cluster.sh [RESULTS]: chatd as three nodes sharing one Redis and one
# PostgreSQL (the last part of `make bench`; runnable alone).
#
# Starts, in a temporary folder of its own and on loopback only, a
# redis-server (no persistence) and a PostgreSQL (initdb, then postgres on a
# Unix socket in that folder; as user nobody when run as root, since
# PostgreSQL refuses root), then three chatd nodes (node-a, node-b, node-c:
# --postgres, --redis, --node-id, and the flags bench/run.sh gives chatd).
# Everything on the server side is pinned to core $SERVER_CPU, as the one
# chatd of bench/run.sh is: the three nodes, Redis and PostgreSQL share the
# core a single chatd has there. chatd-bench runs on core $GEN_CPU.
# Scenarios (DURATION and WARMUP as bench/run.sh):
#   chat    on node A only: 50 users x 2 devices, 1 message in flight each,
#           then 16: acknowledged messages/s with PostgreSQL as the storage
#           (and Redis carrying every event, as in any cluster)
#   cross   users with one sending device each on node A and one device on
#           node B and one on node C that only receive: deliveries on B and
#           C per second, and the time from send to delivery there (one
#           clock: the generator's). 10 users with 1 message in flight
#           (about half the load the core can take: the latency), then 100
#           users with 1, then 16 (as many as it takes)
#   paced   the target "cross-node delivery with p99 under 5 ms at 50,000
#           deliveries/s": 100 users, each with one sending device on A (16
#           in flight at most) and 4 receiving devices on B and 4 on C, so 8
#           deliveries there a message; the messages paced at 6,250/s in all
#           (50,000 deliveries/s), then at 3,125/s (25,000)
# The server figures are the three nodes' CPU summed; Redis's and
# PostgreSQL's (its backends included) are reported apart ("redis+pg").
#
# PostgreSQL keeps its default durability (fsync on, synchronous_commit on):
# an ack means the WAL is on disk, as with chatd's default --sync full.
# CLUSTER_PG_SYNC=off runs it with synchronous_commit=off instead.
# CLUSTER_ONLY=REGEX runs only the scenarios whose label matches (e.g.
# CLUSTER_ONLY='deliv/s' for the paced runs). CLUSTER_CPUS=LIST pins the
# nodes, Redis and PostgreSQL to those cores instead (e.g. 0,1: what a
# second core changes; the generator keeps core $GEN_CPU). CLUSTER_CHATD=PATH
# runs the three nodes with another chatd binary (an earlier build, to
# compare; the single-node reference keeps this tree's).
#
# With RESULTS (bench/run.sh passes its results.jsonl) the JSON lines are
# appended there and no table is printed. Alone, the results go to
# $BUILD/bench/cluster.jsonl, a single SQLite chatd (--sync full) is
# measured first for the comparison (CLUSTER_REFERENCE=0: not), and a
# table is printed. Without redis-server or PostgreSQL's binaries (Debian
# packages redis-server and postgresql; `make bench` installs them) it
# says so and does nothing else. About 1.5 minutes (2 alone).
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

if [ $# -gt 0 ]; then
    RESULTS=$1
    ALONE=0
else
    RESULTS=$OUT/cluster.jsonl
    ALONE=1
    : >"$RESULTS"
    : >"$OUT/logs/generator.log"
fi
REFERENCE=${CLUSTER_REFERENCE:-$ALONE}
PG_SYNC=${CLUSTER_PG_SYNC:-on}
if [ -n "${CLUSTER_CPUS:-}" ] && [ -n "$PIN_SERVER" ]; then
    PIN_SERVER="taskset -c $CLUSTER_CPUS"
fi

skip() {
    log "cluster: skipped: $1"
    printf '{"mode":"cross","label":"cluster","skipped":"%s"}\n' "$1" >>"$RESULTS"
    exit 0
}

REDIS_BIN=$(command -v redis-server || true)
if [ -z "$REDIS_BIN" ] && [ -x /usr/sbin/redis-server ]; then
    REDIS_BIN=/usr/sbin/redis-server
fi
[ -n "$REDIS_BIN" ] || skip "no redis-server (Debian package redis-server)"
if [ -n "${CHATD_PG_BINDIR:-}" ]; then
    PGBIN=$CHATD_PG_BINDIR
else
    PGBIN=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/initdb' 2>/dev/null | sort -V | tail -n 1)
    PGBIN=${PGBIN%/initdb}
fi
if [ -z "$PGBIN" ] || [ ! -x "$PGBIN/initdb" ] || [ ! -x "$PGBIN/postgres" ]; then
    skip "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin (Debian package postgresql)"
fi

# PostgreSQL refuses to run as root: as root, its programs run as nobody
# (65534), in a folder that user owns. /tmp, not TMPDIR: nobody must reach
# it, and a socket path has at most 107 bytes.
AS_PG=()
if [ "$(id -u)" = 0 ]; then
    if command -v setpriv >/dev/null 2>&1; then
        AS_PG=(setpriv --reuid=65534 --regid=65534 --clear-groups)
    else
        AS_PG=(runuser -u nobody --)
    fi
fi

CDIR=
REDIS_PID=
PG_PID=
NODE_PIDS=()

# Stop what this script started, by process id, and remove its folder.
cluster_stop() {
    local pid tries
    for pid in "${NODE_PIDS[@]}" $REDIS_PID; do
        kill "$pid" 2>/dev/null || true
    done
    # PostgreSQL: SIGINT is its fast shutdown (the backends end with it).
    if [ -n "$PG_PID" ]; then
        kill -INT "$PG_PID" 2>/dev/null || true
    fi
    for pid in "${NODE_PIDS[@]}" $REDIS_PID $PG_PID; do
        tries=100
        while [ $tries -gt 0 ] && kill -0 "$pid" 2>/dev/null; do
            sleep 0.1
            tries=$((tries - 1))
        done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    NODE_PIDS=()
    REDIS_PID=
    PG_PID=
    if [ -n "$CDIR" ]; then
        cp "$CDIR/postgres.log" "$OUT/logs/cluster-postgres.log" 2>/dev/null || true
        cp "$CDIR/redis.log" "$OUT/logs/cluster-redis.log" 2>/dev/null || true
        rm -rf "$CDIR"
        CDIR=
    fi
}
trap 'cluster_stop; stop_server' EXIT
trap 'cluster_stop; stop_server; exit 130' INT TERM

# wait_tcp PORT PID NAME: until PORT accepts, while PID lives (10 s at most).
wait_tcp() {
    local port=$1 pid=$2 name=$3 tries=100
    while [ $tries -gt 0 ]; do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "cluster: $name exited at start; see $OUT/logs/cluster-$name.log"
            return 1
        fi
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.1
        tries=$((tries - 1))
    done
    log "cluster: $name did not listen on $port within 10 s"
    return 1
}

start_backends() {
    CDIR=$(mktemp -d /tmp/chatd-bench-cluster.XXXXXX)
    mkdir "$CDIR/redis"
    [ ${#AS_PG[@]} -eq 0 ] || chown 65534:65534 "$CDIR"

    local rport
    rport=$(free_port)
    # shellcheck disable=SC2086
    $PIN_SERVER "$REDIS_BIN" --port "$rport" --bind 127.0.0.1 --dir "$CDIR/redis" --save "" \
        --appendonly no --daemonize no --logfile "$CDIR/redis.log" >/dev/null 2>&1 &
    REDIS_PID=$!
    wait_tcp "$rport" "$REDIS_PID" redis || return 1
    REDIS_URL=redis://127.0.0.1:$rport/0

    log "cluster: initdb ($PGBIN)"
    if ! "${AS_PG[@]}" "$PGBIN/initdb" -D "$CDIR/data" -U postgres -A trust -E UTF8 --no-locale \
        --no-sync >"$OUT/logs/cluster-initdb.log" 2>&1; then
        log "cluster: initdb failed; see $OUT/logs/cluster-initdb.log"
        return 1
    fi
    # Unix socket in the folder only (no TCP listener).
    # shellcheck disable=SC2086
    $PIN_SERVER "${AS_PG[@]}" "$PGBIN/postgres" -D "$CDIR/data" -k "$CDIR" -c listen_addresses= \
        -c synchronous_commit="$PG_SYNC" >"$CDIR/postgres.log" 2>&1 &
    PG_PID=$!
    local tries=300
    until "$PGBIN/pg_isready" -q -h "$CDIR" -U postgres; do
        tries=$((tries - 1))
        if [ $tries -le 0 ] || ! kill -0 "$PG_PID" 2>/dev/null; then
            cp "$CDIR/postgres.log" "$OUT/logs/cluster-postgres.log" 2>/dev/null || true
            log "cluster: PostgreSQL did not start; see $OUT/logs/cluster-postgres.log"
            return 1
        fi
        sleep 0.1
    done
    if ! "${AS_PG[@]}" "$PGBIN/createdb" -h "$CDIR" -U postgres chatd_bench >>"$OUT/logs/cluster-initdb.log" 2>&1; then
        log "cluster: createdb failed; see $OUT/logs/cluster-initdb.log"
        return 1
    fi
    PG_DSN="host=$CDIR user=postgres dbname=chatd_bench"
}

# start_nodes: node-a first (it creates the schema), then node-b and node-c.
NODE_NAMES=(node-a node-b node-c)
NODE_PORTS=()
start_nodes() {
    local name port pid i=0
    for name in "${NODE_NAMES[@]}"; do
        port=$(free_port)
        # shellcheck disable=SC2086
        $PIN_SERVER "${CLUSTER_CHATD:-$CHATD}" --listen "127.0.0.1:$port" "${CHATD_LOAD_FLAGS[@]}" --postgres "$PG_DSN" \
            --redis "$REDIS_URL" --node-id "$name" >"$OUT/logs/cluster-$name.log" 2>&1 &
        pid=$!
        NODE_PIDS+=("$pid")
        NODE_PORTS+=("$port")
        if [ $i = 0 ]; then
            wait_tcp "$port" "$pid" "$name" || return 1
        fi
        i=$((i + 1))
    done
    for i in 1 2; do
        wait_tcp "${NODE_PORTS[$i]}" "${NODE_PIDS[$i]}" "${NODE_NAMES[$i]}" || return 1
    done
    sleep 0.2   # let them finish starting (the bus's subscriptions, the read pools)
}

# cluster_run LABEL MODE [chatd-bench options]: one scenario against node A,
# the three nodes' CPU summed, Redis's and PostgreSQL's reported apart.
cluster_run() {
    if [ -n "${CLUSTER_ONLY:-}" ] && ! printf '%s\n' "$1" | grep -Eq -- "$CLUSTER_ONLY"; then
        return 0
    fi
    local SRV_PORT=${NODE_PORTS[0]}
    local SRV_PID
    SRV_PID=$(IFS=,; echo "${NODE_PIDS[*]}")
    local label=$1 mode=$2
    shift 2
    bench_run "$RESULTS" "$label" "$mode" --backend-pids "$REDIS_PID,$PG_PID" "$@"
}

build_release

if [ "$REFERENCE" = 1 ]; then
    start_chatd chatd-chat-full --sync full
    bench_run "$RESULTS" "chatd sync=full" chat --secret "$SECRET" --users 50 --devices 2 --inflight 1 --size 64
    bench_run "$RESULTS" "chatd sync=full pipelined" chat --secret "$SECRET" --users 50 --devices 2 --inflight 16 --size 64
    stop_server
fi

if ! start_backends || ! start_nodes; then
    printf '{"mode":"cross","label":"cluster","error":"the cluster did not start (see %s)"}\n' \
        "$OUT/logs/cluster-*.log" >>"$RESULTS"
    exit 0
fi
log "cluster: redis $REDIS_URL, postgres in $CDIR (synchronous_commit=$PG_SYNC), nodes on ${NODE_PORTS[*]}"

# Each run has users of its own (--user-offset): the devices of one run never
# meet those of another in the cluster's device counts.
cluster_run "cluster pg" chat --secret "$SECRET" --users 50 --devices 2 --inflight 1 --size 64 \
    --user-offset 100000
cluster_run "cluster pg pipelined" chat --secret "$SECRET" --users 50 --devices 2 --inflight 16 --size 64 \
    --user-offset 200000
remote="${NODE_PORTS[1]},${NODE_PORTS[2]}"
cluster_run "cluster A->B+C 10 senders" cross --secret "$SECRET" --users 10 --devices 1 --inflight 1 --size 64 \
    --remote-ports "$remote" --user-offset 250000
cluster_run "cluster A->B+C" cross --secret "$SECRET" --users 100 --devices 1 --inflight 1 --size 64 \
    --remote-ports "$remote" --user-offset 300000
cluster_run "cluster A->B+C pipelined" cross --secret "$SECRET" --users 100 --devices 1 --inflight 16 \
    --size 64 --remote-ports "$remote" --user-offset 400000
# Paced, at the target's load and at half: latency at a given rate, not at
# the most the cluster takes. A user has 1 + 4 + 4 devices; the nodes count
# them across the cluster (through Redis) against their --max-devices,
# which CHATD_LOAD_FLAGS sets to 1000.
cluster_run "cluster A->4+4 at 50k deliv/s" cross --secret "$SECRET" --users 100 --devices 1 --inflight 16 \
    --remote-devices 4 --rate 6250 --size 64 --remote-ports "$remote" --user-offset 500000
cluster_run "cluster A->4+4 at 25k deliv/s" cross --secret "$SECRET" --users 100 --devices 1 --inflight 16 \
    --remote-devices 4 --rate 3125 --size 64 --remote-ports "$remote" --user-offset 600000
for i in 0 1 2; do
    if ! kill -0 "${NODE_PIDS[$i]}" 2>/dev/null; then
        log "cluster: ${NODE_NAMES[$i]} exited during the runs; see $OUT/logs/cluster-${NODE_NAMES[$i]}.log"
    fi
done
cluster_stop

if [ "$ALONE" = 1 ]; then
    echo
    echo "chatd cluster benchmark ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, 3 nodes + redis + postgres on core $SERVER_CPU, generator on core $GEN_CPU)"
    echo "ops: chat = acknowledged messages, cross = deliveries on nodes B and C (p50/p99: send -> delivery there)"
    print_table "$RESULTS"
    echo
    cluster_summary "$RESULTS"
    paced_summary "$RESULTS"
    echo
    echo "JSON lines: $RESULTS"
fi
