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
PYMOD_DEFS = -DPython_EXECUTABLE=$(abspath $(PY)) -Dpybind11_DIR="$$($(PY) -m pybind11 --cmakedir)"
# On the GPU machine (see ../shared/gpu/README.md: `bash .gpu/on-device.sh make gpu-check`): its own python3.
GPU_PY ?= python3

.PHONY: demo test install native lint bench bench-cpp sysdeps sysdeps-dev clean gpu-check

# The main job: Wide&Deep split between two processes over mutual TLS (certificates, synthetic
# Criteo data, training, AUC, loss plot), all under ./splitlink-demo.
demo: install
	$(PY) -m splitlink demo

# Every test: Python suites, C++ suites (plain and ASan+UBSan) and the libFuzzer run.
test: install native lint
	SPLITLINK_TEST_REQUIRE=deepspeed,transformers,peft $(PY) -m pytest --native-build=$(NATIVE)

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
	# The Python module twice more, by clang: plain (a second toolchain for every native error path)
	# and with ASan+UBSan (run with the ASan runtime preloaded); tests/native/test_alt_builds.py.
	CXX=clang++ $(CMAKE) -S . -B $(NATIVE)/py-clang $(CMAKE_GEN) $(PYMOD_DEFS) >/dev/null
	$(CMAKE) --build $(NATIVE)/py-clang --target _core
	CXX=clang++ $(CMAKE) -S . -B $(NATIVE)/py-asan $(CMAKE_GEN) -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DSPLITLINK_SANITIZE=ON $(PYMOD_DEFS) >/dev/null
	$(CMAKE) --build $(NATIVE)/py-asan --target _core

bench: install
	$(PY) benchmarks/bench_wire.py
	$(PY) benchmarks/bench_codec.py
	$(PY) benchmarks/bench_secure.py
	$(PY) benchmarks/bench_channel.py

# Static checks: ruff's lint rules and formatting, mypy --strict over the package (with the _core stub), and the
# C++ sources against .clang-format (configured in pyproject.toml / .clang-format).
lint: $(VENV)/.deps
	$(PY) -m ruff check python tests benchmarks examples
	$(PY) -m ruff format --check python tests benchmarks examples
	$(PY) -m mypy
	$(VENV)/bin/clang-format --dry-run --Werror $$(git ls-files 'csrc/*.cc' 'csrc/*.h' 2>/dev/null || find csrc -name '*.cc' -o -name '*.h')

bench-cpp: $(VENV)/.deps sysdeps-dev
	$(CMAKE) -S . -B build/bench $(CMAKE_GEN) -DSPLITLINK_BUILD_PYTHON=OFF -DSPLITLINK_BUILD_BENCHMARKS=ON >/dev/null
	$(CMAKE) --build build/bench
	build/bench/splitlink_bench --benchmark_repetitions=$(or $(REPS),9) --benchmark_report_aggregates_only=true $(BENCH_ARGS)

# GPU machine checks: how the extension was built there, every native error path (after torch and
# CUDA are loaded), then the GPU-marked tests.
gpu-check:
	$(GPU_PY) -c "import torch, splitlink._core as c; print('torch', torch.__version__, 'cuda', torch.cuda.is_available()); print(c.build_info())"
	$(GPU_PY) -m pytest -q -p no:cacheprovider tests/test_native_errors.py tests/wire/test_malformed.py \
	  tests/codec/test_codecs.py tests/secure tests/psi/test_psi.py tests/channel/test_transport_input.py
	$(GPU_PY) -m pytest -q -p no:cacheprovider -rfEs -m gpu tests
	$(GPU_PY) benchmarks/bench_gpu.py --quick

clean:
	rm -rf build dist
