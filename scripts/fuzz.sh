#!/bin/sh
# make fuzz: build the fuzz kind (build/test-fuzz, as `make test` does) and
# run every libFuzzer target in turn for FUZZ_SECONDS (default 300) each,
# one at a time. Each target's corpus grows in build/test-fuzz/corpus/NAME
# (seeded from fuzz/corpus/NAME, kept between runs; the checked-in seeds are
# never modified); crash reproducers go to build/test-fuzz/artifacts/. Prints
# one line per target: executions, executions per second, coverage (cov:
# edges, ft: features), corpus size, and the result; exits nonzero if any
# target failed. FUZZ_TARGETS="fuzz_chat fuzz_row" runs only those.
set -u
cd "$(dirname "$0")/.."

BUILD=${BUILD:-build}
dir=$BUILD/test-fuzz
JOBS=$(nproc 2>/dev/null || echo 2)
secs=${FUZZ_SECONDS:-300}

echo "== fuzz build ($dir)"
mkdir -p "$dir"
if ! cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCHATD_FUZZ=ON \
        -DCMAKE_C_COMPILER=clang -DCHATD_WERROR=ON >"$dir.configure.log" 2>&1 ||
   ! cmake --build "$dir" -j "$JOBS" >"$dir.build.log" 2>&1; then
    cat "$dir.configure.log" "$dir.build.log" 2>/dev/null | tail -40
    echo "== fuzz: BUILD FAILED"
    exit 1
fi

root=$(pwd)
abs=$(cd "$dir" && pwd)
targets=${FUZZ_TARGETS:-$(cd fuzz && ls fuzz_*.c | sed 's/\.c$//')}
mkdir -p "$dir/artifacts" "$dir/logs"
failed=""
printf '%-14s %12s %8s %7s %8s %7s  %s\n' target executions exec/s cov ft corpus result
for t in $targets; do
    log=$dir/logs/$t.log
    mkdir -p "$dir/corpus/$t"
    (cd "$dir/artifacts" &&
        FUZZ_SECONDS=$secs FUZZ_WORK_DIR=$abs/corpus/$t \
        "$root/fuzz/run.sh" "$abs/$t" "$root/fuzz/corpus/$t") >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    last=$(grep -a -E '^#[0-9]+' "$log" | tail -1)
    cov=$(echo "$last" | sed -n 's/.* cov: \([0-9]*\).*/\1/p')
    ft=$(echo "$last" | sed -n 's/.* ft: \([0-9]*\).*/\1/p')
    corp=$(echo "$last" | sed -n 's/.* corp: \([^ ]*\).*/\1/p')
    result=ok
    if [ "$rc" -ne 0 ]; then
        result="FAILED (exit $rc, log $log)"
        failed="$failed $t"
    fi
    printf '%-14s %12s %8s %7s %8s %7s  %s\n' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" \
        "${ft:-?}" "${corp:-?}" "$result"
done
if [ -n "$failed" ]; then
    echo "fuzz: failed:$failed (reproducers in $dir/artifacts)"
    exit 1
fi
echo "fuzz: every target ran ${secs}s without a failure"
