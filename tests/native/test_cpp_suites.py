"""Runs the C++ suites: the plain build and the AddressSanitizer + UBSan build."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


@pytest.mark.parametrize("variant", ["release", "sanitize"])
def test_cpp_suite(native_build: Path, variant: str) -> None:
    binary = native_build / variant / "splitlink_tests"
    assert binary.is_file(), f"{binary} missing: run `make native`"
    proc = subprocess.run([str(binary), "--gtest_brief=1"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "PASSED" in proc.stdout
