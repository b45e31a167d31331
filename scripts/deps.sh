#!/bin/sh
# Install the Debian packages chatd needs to build, run and test.
# Idempotent: when everything is present it prints nothing and exits 0.
# Usage: scripts/deps.sh [run|bench|test]   (bench adds what `make bench`
# starts beside chatd, test the test-only packages)
set -eu

mode=${1:-test}

pkgs="build-essential cmake pkg-config libuv1-dev libhttp-parser-dev libssl-dev \
libjansson-dev libsqlite3-dev libpq-dev libhiredis-dev libcurl4-openssl-dev"
# `make bench`'s cluster part (bench/cluster.sh) starts its own PostgreSQL
# and Redis, as the cluster tests do.
if [ "$mode" = bench ]; then
    pkgs="$pkgs postgresql redis-server"
fi
if [ "$mode" = test ]; then
    pkgs="$pkgs libcmocka-dev clang libclang-rt-dev python3 python3-websockets openssl util-linux strace"
    # test_faults_time.py moves chatd's wall clock (LD_PRELOAD libfaketime).
    pkgs="$pkgs libfaketime"
    # The PostgreSQL engine's tests start their own server (initdb, pg_ctl).
    pkgs="$pkgs postgresql"
    # The cluster tests start their own Redis.
    pkgs="$pkgs redis-server"
    # test_cluster_faults.py puts a node in a network namespace (ip, from
    # iproute2) and cuts it off by dropping its packets (nft).
    pkgs="$pkgs iproute2 nftables"
    # The deployment test runs deploy/haproxy.cfg and deploy/nginx.conf.
    pkgs="$pkgs haproxy nginx"
    # The web pages' browser test (tests/interop/test_web.js) drives Debian's
    # Chromium through the npm playwright-core, which downloads no browser.
    pkgs="$pkgs chromium"
fi

missing=""
# Node.js may come from another Debian-format source that bundles npm; only
# ask for Debian's when no node/npm is on the machine at all.
if [ "$mode" = test ] && ! command -v npm >/dev/null 2>&1; then
    pkgs="$pkgs nodejs npm"
fi
for p in $pkgs; do
    if ! dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed; then
        missing="$missing $p"
    fi
done

if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "deps: missing Debian packages:$missing (run as root, or install them)" >&2
        exit 1
    fi
    echo "deps: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# The interop tests' npm packages (ws, playwright-core, axe-core) live under
# tests/interop.
if [ "$mode" = test ] && { [ ! -d tests/interop/node_modules/ws ] ||
    [ ! -d tests/interop/node_modules/playwright-core ] ||
    [ ! -d tests/interop/node_modules/axe-core ]; }; then
    echo "deps: installing npm packages for interop tests"
    (cd tests/interop && npm install --no-audit --no-fund --silent >/dev/null)
fi
