# chatd: the two commands are `make run` and `make test` (see README.md).
# Both install any missing Debian packages first (scripts/deps.sh, as root).

BUILD ?= build
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_FLAGS ?=

.PHONY: run test fuzz build deps bench bench-peers soak clean

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

# The long soak (docs/reliability.md, "Soak"): 1,000 clients with mixed
# traffic for SOAK_SECONDS (default 600) against the plain debug build, or
# SOAK_KIND=asan for the ASan build (LeakSanitizer at the exit). Figures in
# build/soak-KIND.json; `make test` runs a two-minute one.
SOAK_SECONDS ?= 600
SOAK_KIND ?= debug

soak:
	@./scripts/deps.sh test
	@case "$(SOAK_KIND)" in debug) san="" ;; asan) san="-DCHATD_SANITIZE=address" ;; \
	  *) echo "SOAK_KIND must be debug or asan" >&2; exit 2 ;; esac; \
	cmake -S . -B $(BUILD)/test-$(SOAK_KIND) -DCMAKE_BUILD_TYPE=Debug -DCHATD_WERROR=ON $$san >/dev/null && \
	cmake --build $(BUILD)/test-$(SOAK_KIND) -j $(JOBS) --target chatd >/dev/null && \
	CHATD_BIN=$(CURDIR)/$(BUILD)/test-$(SOAK_KIND)/chatd \
	CHATD_BUILD_KIND=$$(test $(SOAK_KIND) = asan && echo address) \
	ASAN_OPTIONS=halt_on_error=1:detect_leaks=1:exitcode=86 \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:exitcode=86 \
	/usr/bin/python3 tests/soak/soak.py --seconds $(SOAK_SECONDS) --json $(BUILD)/soak-$(SOAK_KIND).json

clean:
	rm -rf $(BUILD)
