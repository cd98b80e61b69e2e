# Thin wrapper over CMake. `make run` and `make test` do all set-up from a fresh clone.
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: all deps configure build run test test-asan complexity bench bench-flood fuzz format install deb clean

all: build

deps:
	@bash packaging/install-deps.sh

configure: deps
	@cmake -S . -B $(BUILD) -DPORTBROKER_WERROR=ON $(CMAKE_FLAGS) >/dev/null

build: configure
	@cmake --build $(BUILD) -j $(JOBS)

# Starts the daemon in the foreground on its embedded defaults (root or not).
run: build
	$(BUILD)/portbrokerd

test: build
	cd $(BUILD) && ctest --output-on-failure -j 1

# The same tests with AddressSanitizer and UndefinedBehaviorSanitizer in every binary (the
# daemon included: a leak or a bad access there makes it exit non-zero, which fails the test).
# Not the intercept test: its preload library (and the programs it is loaded into) cannot
# carry ASan, whose runtime must come first in a process's libraries; `make test` runs it.
SAN = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
test-asan: deps
	@cmake -S . -B $(BUILD)-asan -DPORTBROKER_WERROR=ON -DCMAKE_BUILD_TYPE=Debug \
	  -DCMAKE_CXX_FLAGS="$(SAN)" -DCMAKE_C_FLAGS="$(SAN)" \
	  -DCMAKE_EXE_LINKER_FLAGS="$(SAN)" -DCMAKE_SHARED_LINKER_FLAGS="$(SAN)" >/dev/null
	@cmake --build $(BUILD)-asan -j $(JOBS)
	cd $(BUILD)-asan && ctest --output-on-failure -j 1 -E '^(install|integration.intercept_test)$$' -LE package

# libFuzzer targets (tests/fuzz), built apart with clang and the sanitizers, each run for
# FUZZ_SECONDS from the checked-in corpus; any finding fails (see tests/fuzz/run.sh).
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 20
CCACHE := $(shell command -v ccache 2>/dev/null)
fuzz: deps
	@cmake -S . -B $(FUZZ_BUILD) -DPORTBROKER_FUZZ=ON -DPORTBROKER_TESTS=OFF \
	  -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 \
	  $(if $(CCACHE),-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache) >/dev/null
	@cmake --build $(FUZZ_BUILD) -j $(JOBS) --target fuzz_targets
	@bash tests/fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_SECONDS)

# No function under broker/ above clang-tidy's cognitive complexity threshold (see the script).
complexity: build
	@bash .ci/complexity $(BUILD)

bench: build
	$(BUILD)/tests/portbroker_bench
	$(BUILD)/tests/portbroker_bench_intercept

# One uid floods, another's status latency is measured (root: the flood runs as uid 65534).
bench-flood: build
	$(BUILD)/tests/portbroker_bench_flood

format:
	@git ls-files '*.cc' '*.h' '*.hpp' '*.c' | xargs clang-format -i

install: build
	cmake --install $(BUILD)

# The Debian packages (portbroker, libportbroker0, libportbroker-dev) in $(BUILD)/deb, checked
# with lintian; `make test` builds them too (ctest label "package").
deb: deps
	@JOBS=$(JOBS) bash packaging/build-deb.sh $(BUILD)/deb

clean:
	rm -rf $(BUILD)
