# Iris: the README's commands. Each target installs missing dependencies (scripts/install-deps),
# configures and builds (Release, in build/), then acts.
.PHONY: all deps configure build run test test-sanitize test-fuzz bench format lint clean

BUILD       ?= build
ASAN_BUILD  ?= build-asan
FUZZ_BUILD  ?= build-fuzz
JOBS        ?= $(shell nproc)
CTEST_JOBS  ?= 2
# What `make run` passes to irisd (e.g. make run ARGS="--listen 0.0.0.0:7443").
ARGS        ?=

all: build

deps:
	@scripts/install-deps

configure: deps
	@if [ ! -f $(BUILD)/build.ninja ]; then \
	  cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release; fi

build: configure
	cmake --build $(BUILD) -j $(JOBS)

run: build
	@if [ -x $(BUILD)/src/server/irisd ]; then exec $(BUILD)/src/server/irisd $(ARGS); \
	else echo "irisd is not built yet: the build finished, but there is no server binary."; fi

# The whole suite (unit, property, integration, chaos) through ctest.
test: build
	cd $(BUILD) && ctest --output-on-failure -j $(CTEST_JOBS) --timeout 900

# Unit and property tests under AddressSanitizer + UndefinedBehaviorSanitizer.
test-sanitize: deps
	@if [ ! -f $(ASAN_BUILD)/build.ninja ]; then \
	  cmake -S . -B $(ASAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	    -DIRIS_SANITIZE=ON -DIRIS_UNIT_ONLY=ON; fi
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  ctest --output-on-failure -j $(CTEST_JOBS) -L 'unit|property'

# libFuzzer targets (clang), each run for a bounded time over its seed corpus.
test-fuzz: deps
	@if [ ! -f $(FUZZ_BUILD)/build.ninja ]; then \
	  CC=clang CXX=clang++ cmake -S . -B $(FUZZ_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	    -DIRIS_FUZZ=ON -DIRIS_UNIT_ONLY=ON; fi
	cmake --build $(FUZZ_BUILD) -j $(JOBS)
	cd $(FUZZ_BUILD) && ctest --output-on-failure -L fuzz

bench: build
	@for b in $(BUILD)/bench/iris_*_bench; do [ -x "$$b" ] && "$$b" || true; done

format:
	@git ls-files '*.h' '*.cc' | xargs clang-format -i

lint: configure
	@git ls-files 'src/*.cc' | xargs clang-tidy -p $(BUILD) --quiet

format-check:
	@git ls-files '*.h' '*.cc' | xargs clang-format --dry-run --Werror

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)
