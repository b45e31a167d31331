# chatd: the two commands are `make run` and `make test` (see README.md).
# Both install any missing Debian packages first (scripts/deps.sh, as root).

BUILD ?= build
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_FLAGS ?=

.PHONY: run test build deps bench bench-peers clean

deps:
	@./scripts/deps.sh run

build: deps
	@cmake -S . -B $(BUILD)/release -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(BUILD)/release -j $(JOBS) --target chatd chatd-token

run: build
	./$(BUILD)/release/chatd --dev $(ARGS)

test:
	@./scripts/deps.sh test
	@./scripts/test.sh

# Benchmarks (see docs/benchmarks.md): chatd alone, then chatd beside the
# servers users would otherwise pick, measured in the same run.
bench: deps
	@./bench/run.sh

bench-peers: deps
	@./bench/peers.sh

clean:
	rm -rf $(BUILD)
