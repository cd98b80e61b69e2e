# Thin wrapper over CMake. `make run` and `make test` do all set-up from a fresh clone.
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: all deps configure build run test bench format install clean

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

bench: build
	$(BUILD)/tests/portbroker_bench

format:
	@git ls-files '*.cc' '*.h' '*.hpp' '*.c' | xargs clang-format -i

install: build
	cmake --install $(BUILD)

clean:
	rm -rf $(BUILD)
