"""Golden frames of every released wire version keep decoding to the same tensors."""

from __future__ import annotations

from pathlib import Path

import pytest
from wire_cases import GOLDEN, assert_same_tree

from splitlink import wire

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "golden"
FILES = sorted(GOLDEN_DIR.glob("v*/*.bin"))


def test_golden_files_exist_for_every_case() -> None:
    names = {p.stem for p in GOLDEN_DIR.glob(f"v{wire.WIRE_VERSION}/*.bin")}
    assert names == set(GOLDEN), "run tests/wire/make_golden.py for new cases"


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_golden_frame_decodes(path: Path) -> None:
    make, header = GOLDEN[path.stem]
    got = wire.unpack(path.read_bytes())
    assert (got.sender, got.step, got.kind, got.seq) == (header["sender"], header["step"], header["kind"], header["seq"])
    assert_same_tree(got.tensors, make())


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_current_encoder_reproduces_golden_bytes(name: str) -> None:
    # Within one wire version the encoding is deterministic and stable byte for byte.
    make, header = GOLDEN[name]
    path = GOLDEN_DIR / f"v{wire.WIRE_VERSION}" / f"{name}.bin"
    assert bytes(wire.pack(make(), **header)) == path.read_bytes()
