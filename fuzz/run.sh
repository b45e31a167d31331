#!/bin/sh
# run.sh BINARY CORPUS_DIR: run a libFuzzer binary for FUZZ_SECONDS (default
# 20, what `make test` gives each target) over a scratch copy of the seed
# corpus, so that the checked-in seeds are never modified, and exit with the
# fuzzer's status (nonzero on a crash).
# Crash reproducers are written to the current directory (the ctest build
# directory), as libFuzzer does by default.
set -u

if [ "$#" -ne 2 ]; then
    echo "usage: $0 BINARY CORPUS_DIR" >&2
    exit 2
fi
bin=$1
seeds=$2
if [ ! -x "$bin" ]; then
    echo "run.sh: $bin is not executable" >&2
    exit 2
fi

# FUZZ_WORK_DIR (make fuzz): a corpus directory kept between runs instead
# of a scratch one; the seeds are copied into it each time.
if [ -n "${FUZZ_WORK_DIR:-}" ]; then
    tmp=$FUZZ_WORK_DIR
    mkdir -p "$tmp" || exit 2
else
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/fuzz-corpus.XXXXXX") || exit 2
    trap 'rm -rf "$tmp"' EXIT
fi
trap 'exit 130' INT TERM HUP

if [ -d "$seeds" ]; then
    # cp -R dir/. copies the contents, hidden files included, and works
    # on an empty directory.
    cp -R "$seeds/." "$tmp/" || exit 2
else
    echo "run.sh: no seed corpus at $seeds, starting empty" >&2
fi

"$bin" -max_total_time="${FUZZ_SECONDS:-20}" -rss_limit_mb=2048 -print_final_stats=1 "$tmp"
status=$?
exit "$status"
