"""Golden frames of every released wire version keep decoding to the same tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from wire_cases import GOLDEN, GOLDEN_COMPRESSED, assert_same_tree

from splitlink import wire

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "golden"
FILES = sorted(GOLDEN_DIR.glob("v*/*.bin"))


def test_golden_files_exist_for_every_case() -> None:
    names = {p.stem for p in GOLDEN_DIR.glob(f"v{wire.WIRE_VERSION}/*.bin")}
    assert names == set(GOLDEN) | set(GOLDEN_COMPRESSED), "run tests/wire/make_golden.py for new cases"


@pytest.mark.parametrize("path", [p for p in FILES if p.stem in GOLDEN], ids=lambda p: f"{p.parent.name}/{p.stem}")
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


@pytest.mark.parametrize("path", [p for p in FILES if p.stem in GOLDEN_COMPRESSED], ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_compressed_golden_frame_decodes_to_recorded_values(path: Path) -> None:
    got = wire.unpack(path.read_bytes())
    expected = np.load(path.with_suffix(".expected.npz"))
    assert sorted(expected.files) == sorted("/".join(p) for p in got.flat)
    for p, t in got.flat.items():
        assert torch.equal(t, torch.from_numpy(expected["/".join(p)])), p
    assert set(got.codecs.values()) == {"min_max", "bit_pack", "fp16", "bf16", "topk"}


@pytest.mark.parametrize("name", sorted(GOLDEN_COMPRESSED))
def test_current_encoder_reproduces_compressed_golden_bytes(name: str) -> None:
    make, configs, header = GOLDEN_COMPRESSED[name]
    path = GOLDEN_DIR / f"v{wire.WIRE_VERSION}" / f"{name}.bin"
    assert bytes(wire.pack(make(), compress=configs(), **header)) == path.read_bytes()
