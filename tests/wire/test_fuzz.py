"""Fuzzing the decoder: hypothesis mutations through the Python API, and the libFuzzer target."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wire_cases import deep_nesting, edge_shapes, grad_scale

from splitlink import CryptoError, WireError, secure, wire

SEEDS = [bytes(wire.pack(make(), sender="s", kind="k", step=1, seq=2)) for make in (grad_scale, edge_shapes, deep_nesting)]
GOLDEN_DIR = Path(__file__).resolve().parents[1] / "golden"


def _check(data: bytes) -> None:
    try:
        frame = wire.unpack(data)
    except WireError:
        return
    for t in frame.flat.values():
        t.clone()  # touch every byte the decoder claims is there


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(SEEDS),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
    cut=st.integers(0, 10**6),
)
def test_mutated_frames_never_crash(seed: bytes, edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(seed)
    for pos, value in edits:
        data[pos % len(data)] = value
    _check(bytes(data[: max(1, cut % (len(data) + 1))]))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_never_crash(data: bytes) -> None:
    _check(data)


_SEAL_KEY = secure.Key(bytes(range(32)))
SEALED = bytes(
    wire.pack(
        grad_scale(), sender="leader", seq=3, step=1, kind="k", sealer=secure.Sealer(_SEAL_KEY, "leader", segment_size=4096)
    )
)
SEALED_HEADER_BYTES = len(SEALED) - len(wire.pack(grad_scale(), sender="leader", seq=3, step=1, kind="k"))


@settings(max_examples=300, deadline=None)
@given(
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
    insert=st.binary(max_size=3),
    at=st.integers(0, 10**6),
)
def test_a_changed_sealed_frame_never_opens(edits: list[tuple[int, int]], insert: bytes, at: int) -> None:
    # Whatever bytes change or are inserted, the frame opens only if it is byte for byte the sealed
    # one. Half the edits land in the first 256 bytes, which hold the whole unencrypted header.
    assert SEALED_HEADER_BYTES < 256
    data = bytearray(SEALED)
    for pos, value in edits:
        data[pos % (len(data) if pos % 2 else 256)] = value
    at %= len(data) + 1
    data[at:at] = insert
    opener = secure.Opener(_SEAL_KEY, "leader")
    if bytes(data) == SEALED:
        assert wire.unpack(bytes(data), opener=opener).seq == 3
        return
    with pytest.raises(CryptoError):
        wire.unpack(bytes(data), opener=opener)


@pytest.mark.parametrize("target", ["fuzz_frame_decode", "fuzz_sealed_open"])
def test_libfuzzer_run(native_build: Path, tmp_path: Path, target: str) -> None:
    """Runs an ASan+UBSan libFuzzer target for a fixed budget, seeded with golden and sealed frames."""
    fuzzer = native_build / "sanitize" / target
    assert fuzzer.is_file(), f"{fuzzer} missing: run `make native`"
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, path in enumerate(sorted(GOLDEN_DIR.glob("v*/*.bin"))):
        (corpus / f"golden{i}").write_bytes(path.read_bytes())
    sealer = secure.Sealer(secure.Key(bytes(32)), "leader", segment_size=4096)
    for i in range(len(SEEDS)):
        (corpus / f"sealed{i}").write_bytes(bytes(sealer.seal(wire.pack({"x": torch.ones(3000)}, sender="leader", seq=i))))
    proc = subprocess.run(
        # RSS limits are off: Linux carries the parent's peak RSS across fork+exec, so a pytest process
        # that once held a large tensor would trip them; single allocations are still capped.
        [
            str(fuzzer),
            "-max_total_time=15",
            f"-artifact_prefix={tmp_path}/",
            "-rss_limit_mb=0",
            "-malloc_limit_mb=2048",
            "-timeout=5",
            str(corpus),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Done" in proc.stderr
