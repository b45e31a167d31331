# chatd: the two commands are `make run` and `make test` (see README.md).
# Both install any missing Debian packages first (scripts/deps.sh, as root).

BUILD ?= build
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_FLAGS ?=

.PHONY: run test fuzz build deps bench bench-peers clean

deps:
	@./scripts/deps.sh run

# The server alone: no test package (cmocka, python3, node, clang) is needed
# or looked up (-DCHATD_TESTS=OFF); `make test` builds the tests elsewhere.
build: deps
	@cmake -S . -B $(BUILD)/release -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCHATD_TESTS=OFF $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(BUILD)/release -j $(JOBS) --target chatd chatd-token

run: build
	./$(BUILD)/release/chatd --dev $(ARGS)

test:
	@./scripts/deps.sh test
	@./scripts/test.sh

# Every fuzz target for FUZZ_SECONDS each (default 300; `make test` gives
# each 20), one after another, with executions and coverage per target
# (scripts/fuzz.sh; docs/reliability.md, "Fuzzing").
fuzz:
	@./scripts/deps.sh test
	@./scripts/fuzz.sh

# Benchmarks (see docs/benchmarks.md): chatd alone, then chatd beside the
# servers users would otherwise pick, measured in the same run.
# `make bench` ends with three nodes on PostgreSQL and Redis (bench/cluster.sh),
# so it installs those servers' packages too.
bench:
	@./scripts/deps.sh bench
	@./bench/run.sh

bench-peers: deps
	@./bench/peers.sh

clean:
	rm -rf $(BUILD)
