# splitlink developer entry points. The README's two commands are `make demo` and `make test`;
# both work on a fresh machine: they install missing Debian packages, create .venv, build and run.

PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
NATIVE := build/native
CMAKE := $(VENV)/bin/cmake
CMAKE_GEN := -G Ninja -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV)/bin/ninja)

.PHONY: demo test install native bench bench-cpp sysdeps sysdeps-dev clean

# The main job: Wide&Deep split between two processes over mutual TLS (certificates, synthetic
# Criteo data, training, AUC, loss plot), all under ./splitlink-demo.
demo: install
	$(PY) -m splitlink demo

# Every test: Python suites, C++ suites (plain and ASan+UBSan) and the libFuzzer run.
test: install native
	$(PY) -m pytest --native-build=$(NATIVE)

sysdeps:
	@scripts/install-system-deps.sh core

sysdeps-dev:
	@scripts/install-system-deps.sh dev

# torch goes in first and pinned: a bare `torch` requirement would fetch a multi-GB CUDA build.
$(VENV)/.deps: pyproject.toml requirements/dev.txt | sysdeps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q -r requirements/dev.txt
	touch $@

install: $(VENV)/.deps
	$(PIP) install -q --no-build-isolation .

# C++ tests (gcc, Release), and the same tests plus the fuzzer under clang with ASan+UBSan.
native: $(VENV)/.deps sysdeps-dev
	$(CMAKE) -S . -B $(NATIVE)/release $(CMAKE_GEN) -DSPLITLINK_BUILD_PYTHON=OFF -DSPLITLINK_BUILD_TESTS=ON >/dev/null
	$(CMAKE) --build $(NATIVE)/release
	CXX=clang++ $(CMAKE) -S . -B $(NATIVE)/sanitize $(CMAKE_GEN) -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DSPLITLINK_BUILD_PYTHON=OFF -DSPLITLINK_BUILD_TESTS=ON -DSPLITLINK_SANITIZE=ON -DSPLITLINK_BUILD_FUZZERS=ON >/dev/null
	$(CMAKE) --build $(NATIVE)/sanitize

bench: install
	$(PY) benchmarks/bench_wire.py
	$(PY) benchmarks/bench_codec.py
	$(PY) benchmarks/bench_secure.py
	$(PY) benchmarks/bench_channel.py

bench-cpp: $(VENV)/.deps sysdeps-dev
	$(CMAKE) -S . -B build/bench $(CMAKE_GEN) -DSPLITLINK_BUILD_PYTHON=OFF -DSPLITLINK_BUILD_BENCHMARKS=ON >/dev/null
	$(CMAKE) --build build/bench
	build/bench/splitlink_bench --benchmark_repetitions=$(or $(REPS),9) --benchmark_report_aggregates_only=true $(BENCH_ARGS)

clean:
	rm -rf build dist
