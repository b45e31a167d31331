#!/bin/sh
# Run the whole test suite three times (plain debug, ASan+UBSan, TSan), then
# the fuzzers, and print one summary line: "N passed, N failed".
# Each build has its own folder under build/. Any sanitizer report fails the
# test that triggered it (halt_on_error, -fno-sanitize-recover=all).
set -u
cd "$(dirname "$0")/.." || exit 1

JOBS=$(nproc 2>/dev/null || echo 2)
# Tests run two per core: most of them wait on sockets, timers and child
# processes more than they compute. On the 2-core machine, at one test per
# core, the debug kind kept its cores 32 % busy (392 s of CPU in 608 s);
# at two per core its tests took 472 s instead of 608 (ASan 485 s instead
# of 646, TSan 376 instead of 512). The tests that measure or load the
# machine (the soak, the browser tests, the user build, the assistant load
# test) still run alone (RUN_SERIAL in CMakeLists.txt). The fuzzers are
# the exception: each runs for a set time and computes all of it, so they
# keep one per core, or each would make half the executions.
TEST_JOBS=${TEST_JOBS:-$((JOBS * 2))}
BUILD=${BUILD:-build}
KINDS=${TEST_KINDS:-"debug asan tsan fuzz"}
passed=0
failed=0
failed_names=""
reasons=""

# TSan needs a memory layout that high ASLR entropy can break; running
# without ASLR is the documented workaround and harmless for tests.
norand=""
if command -v setarch >/dev/null 2>&1 && setarch "$(uname -m)" -R true 2>/dev/null; then
    norand="setarch $(uname -m) -R"
fi

run_kind() {
    kind=$1
    dir=$BUILD/test-$kind
    start=$(date +%s)
    case $kind in
        debug) flags="-DCMAKE_BUILD_TYPE=Debug" ;;
        asan) flags="-DCMAKE_BUILD_TYPE=Debug -DCHATD_SANITIZE=address" ;;
        tsan) flags="-DCMAKE_BUILD_TYPE=RelWithDebInfo -DCHATD_SANITIZE=thread" ;;
        fuzz) flags="-DCMAKE_BUILD_TYPE=RelWithDebInfo -DCHATD_FUZZ=ON -DCMAKE_C_COMPILER=clang" ;;
    esac
    # Warnings are errors in the test builds (a user's build only warns).
    flags="$flags -DCHATD_WERROR=ON"
    echo "== $kind build ($dir)"
    # shellcheck disable=SC2086
    if ! cmake -S . -B "$dir" $flags >"$dir.configure.log" 2>&1 ||
       ! cmake --build "$dir" -j "$JOBS" >"$dir.build.log" 2>&1; then
        cat "$dir.configure.log" "$dir.build.log" 2>/dev/null | tail -40
        echo "== $kind: BUILD FAILED"
        failed=$((failed + 1))
        failed_names="$failed_names $kind/build"
        return
    fi
    built=$(date +%s)
    echo "== $kind tests (built in $((built - start)) s)"
    prefix=""
    [ "$kind" = tsan ] && prefix=$norand
    jobs=$TEST_JOBS
    [ "$kind" = fuzz ] && jobs=$JOBS
    log=$dir.ctest.log
    # shellcheck disable=SC2086
    (cd "$dir" && $prefix ctest --output-on-failure -j "$jobs" --timeout 600) >"$log" 2>&1
    grep -E "^ *[0-9]+/[0-9]+ Test|tests passed|tests failed" "$log"
    echo "== $kind tests took $(($(date +%s) - built)) s"
    total=$(sed -n 's/.*tests passed, \([0-9]*\) tests failed out of \([0-9]*\).*/\2/p' "$log")
    bad=$(sed -n 's/.*tests passed, \([0-9]*\) tests failed out of \([0-9]*\).*/\1/p' "$log")
    # ctest prints "0 tests failed" too: only a count above 0 is a failure.
    if [ -n "$bad" ] && [ "$bad" -gt 0 ]; then
        sed -n '/The following tests FAILED/,$p' "$log"
        # Show the failing output in full for CI readers.
        grep -E -A60 "\*\*\*Failed|\*\*\*Timeout|\*\*\*Exception" "$log" | head -300
        # And why, in a few lines, for the summary at the very end (a
        # reader who sees only the tail of a long run still sees them).
        why=$(grep -E -A3 "^FAIL |Error: |ERROR: [A-Za-z]*Sanitizer|WARNING: ThreadSanitizer|\*\*\*Timeout" "$log" |
              grep -v -E "^ *[0-9]+/[0-9]+ Test|^ *Start +[0-9]+:|^--$" | cut -c1-300 | head -20)
        reasons="$reasons
-- $kind:
$why"
    fi
    if [ -z "$total" ]; then
        echo "== $kind: ctest did not finish"
        failed=$((failed + 1))
        failed_names="$failed_names $kind/ctest"
        return
    fi
    passed=$((passed + total - bad))
    failed=$((failed + bad))
    [ "$bad" -gt 0 ] && failed_names="$failed_names $kind"
}

mkdir -p "$BUILD"
began=$(date +%s)
for k in $KINDS; do
    run_kind "$k"
done

echo "== builds and tests took $(($(date +%s) - began)) s"
if [ -n "$failed_names" ]; then
    [ -n "$reasons" ] && printf '== why (the first lines of each failure; the full output is above)%s\n' "$reasons"
    echo "failed in:$failed_names"
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
