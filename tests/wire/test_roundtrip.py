"""pack/unpack round trips: every dtype, nesting, order, header fields, zero-copy, pools."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from wire_cases import (
    assert_same_tree,
    compressed,
    compressed_configs,
    deep_nesting,
    edge_shapes,
    every_dtype,
    grad_scale,
    sample,
)

from splitlink import wire


@pytest.mark.parametrize("make", [every_dtype, grad_scale, edge_shapes, deep_nesting], ids=lambda f: f.__name__)
@pytest.mark.parametrize("via", ["pool", "fresh", "out", "bytes"])
def test_round_trip(make, via: str) -> None:
    tensors = make()
    header = {"sender": "leader", "step": -5, "kind": "backward", "seq": 2**64 - 1}
    if via == "out":
        out = bytearray(wire.packed_size(tensors, **header) + 10)
        frame = wire.pack(tensors, **header, out=out)
        assert len(frame) == wire.packed_size(tensors, **header)
    else:
        frame = wire.pack(tensors, **header, pool=None if via == "fresh" else wire.default_pool())
    if via == "bytes":
        frame = bytes(frame)
    got = wire.unpack(frame)
    assert (got.version, got.sender, got.seq, got.step, got.kind) == (1, "leader", 2**64 - 1, -5, "backward")
    assert_same_tree(got.tensors, tensors)


@pytest.mark.parametrize("make", [every_dtype, grad_scale, edge_shapes, deep_nesting, compressed, dict], ids=lambda f: f.__name__)
@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000, 4096, 1 << 20])
def test_pack_chunks_are_the_packed_frame_cut_in_pieces(make, chunk_size: int) -> None:
    tensors = make()
    header = {"sender": "leader", "step": 9, "kind": "forward", "seq": 3}
    cfg = compressed_configs() if make is compressed else None
    whole = bytes(wire.pack(tensors, **header, compress=cfg))
    chunks = wire.pack_chunks(tensors, chunk_size=chunk_size, **header, compress=cfg)
    assert chunks.nbytes == len(whole) and len(chunks) == -(-len(whole) // chunk_size)
    pieces = [chunks.chunk(i) for i in range(len(chunks))]
    assert all(type(p) is bytes for p in pieces) and all(len(p) == chunk_size for p in pieces[:-1])
    assert b"".join(pieces) == whole
    assert b"".join(chunks.chunk(i) for i in range(len(chunks))) == whole  # again, as a retry would
    assert chunks.chunk(0, b"HDR") == b"HDR" + pieces[0]
    with pytest.raises(IndexError):
        chunks.chunk(len(chunks))


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 5000), min_size=0, max_size=6), chunk=st.integers(1, 9000))
def test_pack_chunks_match_pack_for_any_tensor_sizes(sizes: list[int], chunk: int) -> None:
    tensors = {f"t{i}": torch.arange(n, dtype=torch.float32) * (i + 1) for i, n in enumerate(sizes)}
    r = wire.pack_chunks(tensors, chunk_size=chunk, sender="s", seq=1)
    assert b"".join(r.chunk(i) for i in range(len(r))) == bytes(wire.pack(tensors, sender="s", seq=1))


def test_pack_chunks_rejects_a_bad_chunk_size() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        wire.pack_chunks({"x": torch.ones(3)}, chunk_size=0)


def test_flat_lists_paths_in_order() -> None:
    got = wire.unpack(wire.pack(grad_scale()))
    assert list(got.flat) == [
        ("loss", "follower_wide_embedding"),
        ("loss", "follower_deep_embedding"),
        ("aux", "mask"),
    ]


def test_unpack_views_the_frame_buffer() -> None:
    frame = wire.pack(every_dtype())
    raw = np.frombuffer(frame, dtype=np.uint8)
    got = wire.unpack(frame)
    lo, hi = frame.address, frame.address + len(frame)
    for path, t in got.flat.items():
        assert lo <= t.data_ptr() and t.data_ptr() + t.nbytes <= hi, path
        if t.dtype != torch.bfloat16:
            assert np.shares_memory(t.numpy(), raw), path


def test_unpack_copy_true_owns_its_memory() -> None:
    frame = wire.pack(every_dtype())
    got = wire.unpack(frame, copy=True)
    lo, hi = frame.address, frame.address + len(frame)
    for t in got.flat.values():
        assert not (lo <= t.data_ptr() < hi)


def test_packed_tensor_bytes_sit_at_a_64_byte_aligned_offset_of_the_frame() -> None:
    x = torch.arange(1000, dtype=torch.float32)
    frame = wire.pack({"x": x})
    assert frame.address % 64 == 0
    got = wire.unpack(frame).flat[("x",)]
    offset = got.data_ptr() - frame.address  # the decoded tensor views the frame (zero-copy)
    assert offset > 0 and offset % 64 == 0 and offset + x.nbytes <= len(frame)
    assert bytes(memoryview(frame)[offset : offset + x.nbytes]) == x.numpy().tobytes()


def test_pack_chunks_copy_straight_from_tensor_memory() -> None:
    # pack_chunks keeps no copy of an uncompressed tensor: every chunk() call fills its bytes from
    # the tensor's own memory, so a change made after pack_chunks() shows up in the next chunk.
    x = torch.zeros(4096)
    chunks = wire.pack_chunks({"x": x}, chunk_size=1 << 20)
    assert len(chunks) == 1
    before = chunks.chunk(0)
    x[100:200] = 7.0
    after = chunks.chunk(0)
    assert before == bytes(wire.pack({"x": torch.zeros(4096)}))
    assert after == bytes(wire.pack({"x": x}))
    assert after != before


def test_views_keep_the_buffer_alive() -> None:
    t = wire.unpack(bytes(wire.pack({"x": torch.arange(64, dtype=torch.int64)}))).tensors["x"]
    gc.collect()
    assert torch.equal(t, torch.arange(64))


def test_pool_reuses_a_buffer_only_when_nothing_references_it() -> None:
    pool = wire.BufferPool(max_buffers=2)
    x = {"x": torch.ones(1 << 16)}
    first = wire.pack(x, pool=pool)
    addr = first.address
    view = wire.unpack(first).tensors["x"]
    del first
    second = wire.pack(x, pool=pool)
    addr2 = second.address
    assert addr2 != addr, "buffer reused while a tensor still viewed it"
    assert pool.stats()["hits"] == 0
    del view, second
    gc.collect()
    third = wire.pack(x, pool=pool)
    assert third.address in {addr, addr2}, "a fresh buffer although two pooled ones were free"
    stats = pool.stats()
    assert (stats["hits"], stats["misses"], stats["buffers"]) == (1, 2, 2)


def test_pool_respects_its_byte_budget() -> None:
    pool = wire.BufferPool(max_buffers=8, max_bytes=1 << 20)
    frames = [wire.pack({"x": torch.ones(1 << 17)}, pool=pool) for _ in range(4)]  # 512 KiB each
    assert pool.stats()["retained_bytes"] <= 1 << 20
    assert all(len(f) > 1 << 19 for f in frames)


def test_reused_buffer_carries_no_stale_bytes() -> None:
    pool = wire.BufferPool(max_buffers=1)
    big = wire.pack({"a": torch.full((4096,), 7, dtype=torch.uint8), "b": torch.full((4096,), 9, dtype=torch.uint8)}, pool=pool)
    addr = big.address
    del big
    tensors = {"a": torch.full((3,), 1, dtype=torch.uint8), "b": torch.full((5,), 2, dtype=torch.uint8)}
    small = wire.pack(tensors, pool=pool)
    assert small.address == addr
    # Identical to a frame written into fresh (zeroed) memory: padding and gaps carry nothing old.
    assert bytes(small) == bytes(wire.pack(tensors, pool=None))


def test_non_contiguous_and_grad_tensors_are_packed_by_value() -> None:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    w = torch.randn(3, requires_grad=True)
    tensors = {"t": base.t(), "s": base[:, ::2], "neg": base._neg_view(), "w": w}
    got = wire.unpack(wire.pack(tensors)).tensors
    assert torch.equal(got["t"], base.t())
    assert torch.equal(got["s"], base[:, ::2])
    assert torch.equal(got["neg"], -base)
    assert torch.equal(got["w"], w.detach())


def test_numpy_big_endian_and_non_contiguous() -> None:
    a = np.arange(10, dtype=">i4")
    b = np.arange(20, dtype=np.float64).reshape(4, 5)[:, 1::2]
    got = wire.unpack(wire.pack({"a": a, "b": b})).tensors
    assert got["a"].tolist() == list(range(10))
    assert torch.equal(got["b"], torch.from_numpy(np.ascontiguousarray(b)))


def test_large_tensor_split_across_threads() -> None:
    x = sample(torch.float32, (3 << 20,), 9)  # 12 MiB: several copy pieces
    for threads in (1, 2):
        assert torch.equal(wire.unpack(wire.pack({"x": x}, threads=threads)).tensors["x"], x)


def test_unaligned_buffer_is_copied_not_misread() -> None:
    frame = bytes(wire.pack({"x": torch.arange(16, dtype=torch.float64)}))
    shifted = bytearray(len(frame) + 3)
    shifted[3:] = frame
    got = wire.unpack(memoryview(shifted)[3:])
    assert torch.equal(got.tensors["x"], torch.arange(16, dtype=torch.float64))


@pytest.mark.parametrize(
    ("tensors", "error", "fragment"),
    [
        ({"x": torch.zeros(2, dtype=torch.complex64)}, ValueError, "complex64"),
        ({"x": [1, 2]}, TypeError, "'x' must be a torch.Tensor or numpy.ndarray"),
        ({1: torch.zeros(1)}, TypeError, "names must be str"),
        ({"x": torch.zeros(2).to_sparse()}, ValueError, "to_dense"),
        ({"": torch.zeros(1)}, ValueError, "empty or over-long key"),
        ({"x": np.zeros(2, dtype=np.complex128)}, ValueError, "complex128"),
        ({"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": torch.zeros(1)}}}}}}}}}, ValueError, "nesting must be 1..8"),
    ],
    ids=["complex", "list", "int-key", "sparse", "empty-name", "numpy-complex", "too-deep"],
)
def test_bad_inputs_are_named(tensors, error, fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        wire.pack(tensors)


def test_out_too_small_says_how_big() -> None:
    with pytest.raises(ValueError, match="packed_size"):
        wire.pack({"x": torch.zeros(100)}, out=bytearray(10))


def test_repr_lists_tensors() -> None:
    r = repr(wire.unpack(wire.pack(grad_scale(), sender="leader")))
    assert "loss/follower_wide_embedding:(16, 1):float32" in r and "sender='leader'" in r


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_tensors_are_staged_through_pinned_memory() -> None:
    x = torch.randn(1 << 20, device="cuda")
    y = x[::2]
    got = wire.unpack(wire.pack({"x": x, "y": y})).tensors
    assert torch.equal(got["x"], x.cpu()) and torch.equal(got["y"], y.cpu())
