"""Runs the C++ suites: the plain build and the AddressSanitizer + UBSan build.

The codec suites run under every instruction-set variant the CPU has by themselves (they force
each one with splitlink::cpu::override_features); the plain build also runs whole under
SPLITLINK_CPU_FEATURES=scalar, so everything else that dispatches (masking) and the variable's
own path are covered too.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ENV = "SPLITLINK_CPU_FEATURES"


def _run(binary: Path, features: str | None) -> None:
    assert binary.is_file(), f"{binary} missing: run `make native`"
    env = dict(os.environ)
    env.pop(ENV, None)
    if features is not None:
        env[ENV] = features
    proc = subprocess.run([str(binary), "--gtest_brief=1"], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "PASSED" in proc.stdout


@pytest.mark.parametrize("variant", ["release", "sanitize"])
def test_cpp_suite(native_build: Path, variant: str) -> None:
    _run(native_build / variant / "splitlink_tests", None)


def test_cpp_suite_with_scalar_forced_by_the_environment(native_build: Path) -> None:
    _run(native_build / "release" / "splitlink_tests", "scalar")
