"""Runs Python tests against two other builds of splitlink._core that `make native` makes.

- ``py-clang``: the module built by clang (the wheel is built by gcc), a second toolchain for every
  path where the core raises an error: a native error must become its Python exception whichever
  compiler built the extension (the GPU machine's segfaults came from exactly these paths).
- ``py-asan``: the module built by clang with AddressSanitizer + UndefinedBehaviorSanitizer, run by
  the ordinary (uninstrumented) Python with the ASan runtime preloaded, so the pybind11 layer
  (buffer lifetimes, views handed to torch/NumPy) runs under the sanitizers too, not only the C++
  suites. Leak detection is off: CPython and torch keep allocations until exit by design.

Each build is staged as a package (the repository's Python sources + that ``_core``) and a nested
pytest imports it through PYTHONPATH; ``tests/test_native_errors.py`` checks the import really
came from that build.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Every Python path on which the core raises: malformed frames, codecs, sealing, key agreement,
# PSI, hostile transport input, plus the import-order checks.
ERROR_PATHS = [
    "tests/test_native_errors.py",
    "tests/wire/test_malformed.py",
    "tests/codec/test_codecs.py",
    "tests/secure/test_sealing.py",
    "tests/secure/test_vectors.py",
    "tests/psi/test_psi.py",
    "tests/channel/test_transport_input.py",
]
# Under the sanitizers: everything that hands buffers across the boundary.
SANITIZED = ["tests/test_native_errors.py", "tests/wire", "tests/secure", "tests/codec/test_codecs.py"]


def _stage(build: Path, dest: Path) -> Path:
    modules = sorted(build.glob("_core*.so"))
    assert modules, f"no _core module in {build}: run `make native`"
    site = dest / "site"
    shutil.copytree(REPO / "python" / "splitlink", site / "splitlink", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    shutil.copy2(modules[0], site / "splitlink" / modules[0].name)
    protos = site / "splitlink" / "protos" / "splitlink" / "v1"
    protos.mkdir(parents=True, exist_ok=True)
    for proto in (REPO / "protos" / "splitlink" / "v1").glob("*.proto"):
        shutil.copy2(proto, protos / proto.name)
    return site


def _asan_runtime() -> str:
    clang = shutil.which("clang++") or shutil.which("clang")
    assert clang, "clang is needed for the sanitizer build: run `make sysdeps-dev`"
    lib = subprocess.run(
        [clang, "-print-file-name=libclang_rt.asan-x86_64.so"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert os.path.isfile(lib), f"ASan runtime not found ({lib}): apt-get install libclang-rt-14-dev"
    return lib


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["py-clang", "py-asan"])
def test_python_suite_against_build(native_build: Path, variant: str, tmp_path: Path) -> None:
    site = _stage(native_build / variant, tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("SPLITLINK_NATIVE_BUILD", "LD_PRELOAD")}
    env["PYTHONPATH"] = str(site)
    env["SPLITLINK_EXPECT_CORE"] = str(site / "splitlink")
    tests = ERROR_PATHS
    if variant == "py-asan":
        tests = SANITIZED
        env["LD_PRELOAD"] = _asan_runtime()
        env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=1"
        env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    info = subprocess.run(
        [sys.executable, "-c", "import splitlink._core as c; print(c.__file__); print(c.build_info())"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert info.returncode == 0, info.stderr[-4000:]
    assert info.stdout.splitlines()[0].startswith(str(site)), info.stdout
    assert "clang" in info.stdout, info.stdout
    if variant == "py-asan":
        assert "address,undefined" in info.stdout, info.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    tail = proc.stdout[-6000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout and "failed" not in proc.stdout.splitlines()[-1], tail
