# Iris: the README's commands. Each target installs missing dependencies (scripts/install-deps),
# configures and builds (Release, in build/), then acts. `make build` and `make run` install
# only what the servers, tools and client library need; the test, bench and chaos targets
# also install the test tools (scripts/install-deps --test) and build the tests.
.PHONY: all deps deps-cluster deps-test configure configure-test build build-test run run-cluster package test test-sanitize test-tsan test-fuzz bench chaos format lint clean

BUILD       ?= build
ASAN_BUILD  ?= build-asan
TSAN_BUILD  ?= build-tsan
FUZZ_BUILD  ?= build-fuzz
JOBS        ?= $(shell nproc)
CTEST_JOBS  ?= 2
# What `make run` passes to irisd (e.g. make run ARGS="--listen 0.0.0.0:7443").
ARGS        ?=

all: build

deps:
	@scripts/install-deps

deps-cluster:
	@scripts/install-deps --cluster

deps-test:
	@scripts/install-deps --test

# IRIS_TESTS=AUTO: the tests are built when their libraries are installed.
configure: deps
	@if [ ! -f $(BUILD)/build.ninja ]; then \
	  cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release; fi

# The same build directory, with the tests required (re-running cmake is cheap).
configure-test: deps-test
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release -DIRIS_TESTS=ON >/dev/null

build: configure
	cmake --build $(BUILD) -j $(JOBS)

build-test: configure-test
	cmake --build $(BUILD) -j $(JOBS)

run: build
	@if [ -x $(BUILD)/src/server/irisd ]; then exec $(BUILD)/src/server/irisd $(ARGS); \
	else echo "irisd is not built yet: the build finished, but there is no server binary."; fi

# A local cluster: one etcd and three nodes on loopback with a generated CA (scripts/run-cluster).
run-cluster: deps-cluster build
	@BUILD=$(BUILD) scripts/run-cluster

# Debian packages in $(BUILD)/: irisd, iris-client, libiris-client-dev (docs/operations.md,
# "Install from the packages"). Install with: sudo apt install ./$(BUILD)/irisd_*.deb
package: configure
	cmake --build $(BUILD) -j $(JOBS) --target irisd irisctl iris iris_client
	cd $(BUILD) && cpack -G DEB

# The whole suite (unit, property, integration, chaos) through ctest.
test: build-test
	cd $(BUILD) && ctest --output-on-failure -j $(CTEST_JOBS) --timeout 900

# Under AddressSanitizer + UndefinedBehaviorSanitizer: every unit and property suite, and irisd
# with the integration and chaos suites marked SANITIZE (cmake/IrisTargets.cmake): messaging,
# hostile input, groups, data lifecycle, single-node nemeses and the replicated cluster's
# kill test (fewer cycles). -O1 -g1 (line tables): the reports keep file:line, and the
# build is faster than RelWithDebInfo's full debug info. LeakSanitizer runs in every process:
# an irisd that exits (SIGTERM, a refused start) with a leak fails its test. Two tests are
# left to the main build: running out of descriptors (the sanitizer runtime needs a free
# descriptor to check a vptr, and reports every virtual call as bad without one) and the clock
# steps under libfaketime (an LD_PRELOAD that does not mix reliably with ASan's interceptors:
# irisd hung before its first log line in one of four starts).
SAN_SKIP     = -DescriptorTest.RunningOutOfDescriptorsPausesAcceptingWithoutSpinning:ChaosNode.Clock*
SAN_FLAGS    = -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g1" \
               -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" -DIRIS_TESTS=ON
test-sanitize: deps-test deps-cluster
	@if [ ! -f $(ASAN_BUILD)/build.ninja ]; then \
	  cmake -S . -B $(ASAN_BUILD) -G Ninja $(SAN_FLAGS) -DIRIS_SANITIZE=ON; fi
	cmake --build $(ASAN_BUILD) -j $(JOBS) --target iris_sanitize_set
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:verify_asan_link_order=0 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 IRIS_REPL_CYCLES=8 GTEST_FILTER='$(SAN_SKIP)' \
	  ctest --output-on-failure -j $(CTEST_JOBS) -L 'unit|property|sanitize' --timeout 900

# The store, net and core suites (the threads: commit and archive threads, event loops,
# worker pools) under ThreadSanitizer. RocksDB is not instrumented: races inside it are not
# looked for (tests/tsan.supp).
test-tsan: deps-test
	@if [ ! -f $(TSAN_BUILD)/build.ninja ]; then \
	  cmake -S . -B $(TSAN_BUILD) -G Ninja $(SAN_FLAGS) -DIRIS_TSAN=ON -DIRIS_UNIT_ONLY=ON; fi
	cmake --build $(TSAN_BUILD) -j $(JOBS) --target iris_store_unit_test iris_net_unit_test iris_core_unit_test
	cd $(TSAN_BUILD) && TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$(CURDIR)/tests/tsan.supp" \
	  ctest --output-on-failure -j $(CTEST_JOBS) -R '^iris_(store|net|core)_unit_test$$'

# libFuzzer targets (clang), each run for a bounded time over its seed corpus.
test-fuzz: deps-test
	@if [ ! -f $(FUZZ_BUILD)/build.ninja ]; then \
	  CC=clang CXX=clang++ cmake -S . -B $(FUZZ_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	    -DIRIS_FUZZ=ON -DIRIS_UNIT_ONLY=ON -DIRIS_TESTS=ON; fi
	cmake --build $(FUZZ_BUILD) -j $(JOBS)
	cd $(FUZZ_BUILD) && ctest --output-on-failure -j $(CTEST_JOBS) -L fuzz

# Micro-benchmarks (every build/bench/iris_*_bench), then a short run of every iris-bench
# scenario against a fresh irisd each (a few minutes on 2 cores; figures: docs/performance.md).
# BENCH_ARGS adds or overrides iris-bench flags, e.g. make bench BENCH_ARGS="--sessions 18000".
BENCH_ARGS  ?=
bench: build-test
	@for b in $(BUILD)/bench/iris_*_bench; do [ -x "$$b" ] && "$$b" || true; done
	$(BUILD)/tools/iris-bench/iris-bench --spawn-irisd $(BUILD)/src/server/irisd --scenario all \
	  --connects 2000 --sessions 5000 --hold-s 5 --pairs 100 --duration-s 10 --rate 2000 \
	  --storm-sessions 4000 --json $(BUILD)/iris-bench.json $(BENCH_ARGS)

# The chaos suite's long mode (docs/reliability.md): every single-node and cluster nemesis
# with IRIS_CHAOS_LONG=1 (>= 1,000 kill -9 cycles, 100 partitions and power losses of each
# kind, ...), then a summary table of the JSON reports. The cluster nemeses need etcd (make
# deps-cluster) and root (network namespaces, FUSE); their node logs go to
# $(CHAOS_REPORTS)/cluster-logs.
# IRIS_CHAOS_SEED=S replays a run; IRIS_CHAOS_CYCLES=N overrides every nemesis's cycle count.
CHAOS_REPORTS ?= $(BUILD)/chaos-reports
chaos: configure-test
	cmake --build $(BUILD) -j $(JOBS) --target irisd iris_chaos_checker_test iris_chaos_node_test \
	  iris_powerloss_test iris_lossyfs iris_lossyfs_nowalsync iris_store_crash_child \
	  iris_store_chaos_test iris_chaos_cluster_test irisctl
	$(BUILD)/tests/chaos/harness/iris_chaos_checker_test --gtest_brief=1
	rm -rf $(CHAOS_REPORTS) && mkdir -p $(CHAOS_REPORTS)
	IRIS_BUILD_DIR=$(abspath $(BUILD)) IRIS_CHAOS_LONG=$${IRIS_CHAOS_LONG:-1} \
	  IRIS_CHAOS_REPORT_DIR=$(abspath $(CHAOS_REPORTS)) \
	  $(BUILD)/tests/chaos/node/iris_chaos_node_test; rc=$$?; \
	  cd $(BUILD)/tests/chaos/powerloss && IRIS_BUILD_DIR=$(abspath $(BUILD)) \
	  IRIS_CHAOS_LONG=$${IRIS_CHAOS_LONG:-1} ./iris_powerloss_test || rc=1; cd $(CURDIR); \
	  IRIS_BUILD_DIR=$(abspath $(BUILD)) IRIS_CHAOS_LONG=$${IRIS_CHAOS_LONG:-1} \
	  IRIS_CHAOS_REPORT_DIR=$(abspath $(CHAOS_REPORTS)) \
	  $(BUILD)/tests/chaos/store/iris_store_chaos_test --gtest_filter='CrashTest.*' || rc=1; \
	  mkdir -p $(CHAOS_REPORTS)/cluster-logs; \
	  IRIS_BUILD_DIR=$(abspath $(BUILD)) IRIS_CHAOS_LONG=$${IRIS_CHAOS_LONG:-1} \
	  IRIS_CHAOS_REPORT_DIR=$(abspath $(CHAOS_REPORTS)) \
	  IRIS_CHAOS_LOG_DIR=$(abspath $(CHAOS_REPORTS))/cluster-logs \
	  $(BUILD)/tests/chaos/cluster/iris_chaos_cluster_test || rc=1; \
	  python3 tests/chaos/harness/chaos_summary.py $(CHAOS_REPORTS) || rc=1; exit $$rc

format:
	@git ls-files '*.h' '*.cc' | xargs clang-format -i

lint: configure-test
	@git ls-files 'src/*.cc' | xargs clang-tidy -p $(BUILD) --quiet

format-check:
	@git ls-files '*.h' '*.cc' | xargs clang-format --dry-run --Werror

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(TSAN_BUILD) $(FUZZ_BUILD)
