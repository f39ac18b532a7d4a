"""The wheel is complete: built with `python -m build`, installed alone, it imports and works."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_and_round_trips(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(REPO)],
        check=True,
        capture_output=True,
        timeout=900,
    )
    (wheel,) = dist.glob("splitlink-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("splitlink/_core") and n.endswith(".so") for n in names)
    assert "splitlink/protos/splitlink/v1/frame.proto" in names
    assert "splitlink/py.typed" in names

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target), str(wheel)],
        check=True,
        timeout=300,
    )
    code = (
        "import splitlink, torch; from splitlink import wire; "
        f"assert splitlink.__file__.startswith({str(target)!r}), splitlink.__file__; "
        "f = wire.unpack(bytes(wire.pack({'x': torch.arange(5)}))); assert f.tensors['x'].tolist() == [0, 1, 2, 3, 4]; "
        "print(splitlink._core.openssl_version())"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(target)}, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "OpenSSL 3" in proc.stdout
