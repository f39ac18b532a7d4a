"""Decoded (compressed) tensors come from pooled memory: reused once nothing uses them, never before."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from splitlink import CompressConfig, wire

N = 1 << 16  # 64 Ki float32 = 256 KiB decoded: above the pooling threshold (64 KiB)
MINMAX8 = {"x": CompressConfig("min_max", bit_num=8)}


def frame_of(value: float, n: int = N, **kw: object) -> object:
    """A compressed frame whose decoded values are all ``value`` (min_max of a constant is exact)."""
    return wire.pack({"x": torch.full((n,), value)}, compress=MINMAX8, **kw)


def test_decoded_memory_is_reused_once_the_tensor_is_gone() -> None:
    pool = wire.BufferPool(max_buffers=4)
    first = wire.unpack(frame_of(1.0), pool=pool).tensors["x"]
    address = first.data_ptr()
    del first
    gc.collect()
    again = wire.unpack(frame_of(2.0), pool=pool).tensors["x"]
    assert again.data_ptr() == address
    assert torch.equal(again, torch.full((N,), 2.0))
    stats = pool.stats()
    assert (stats["misses"], stats["hits"], stats["buffers"]) == (1, 1, 1)


def test_the_default_pool_serves_unpack() -> None:
    before = wire.decode_pool().stats()
    x = wire.unpack(frame_of(3.0)).tensors["x"]
    after = wire.decode_pool().stats()
    assert after["hits"] + after["misses"] == before["hits"] + before["misses"] + 1
    assert torch.equal(x, torch.full((N,), 3.0))


@pytest.mark.parametrize("keep", ["tensor", "view", "numpy", "frame"])
def test_memory_in_use_is_never_handed_out_again(keep: str) -> None:
    pool = wire.BufferPool(max_buffers=4)
    frame = wire.unpack(frame_of(5.0), pool=pool)
    x = frame.tensors["x"]
    kept: object = {"tensor": x, "view": x[100:200], "numpy": x.numpy(), "frame": frame}[keep]
    expected = torch.full((N,), 5.0)
    del x, frame
    gc.collect()
    for i in range(50):
        y = wire.unpack(frame_of(float(i)), pool=pool).tensors["x"]
        assert torch.equal(y, torch.full((N,), float(i)))
        y.fill_(-1.0)  # writes into pooled memory must not reach the kept tensor either
        del y
    got = {
        "tensor": lambda: kept,
        "view": lambda: kept,
        "numpy": lambda: torch.from_numpy(kept),
        "frame": lambda: kept.tensors["x"],
    }[keep]()
    assert torch.equal(got, expected[: got.numel()])
    stats = pool.stats()
    assert stats["buffers"] == 2 and stats["hits"] == 49  # the kept one plus one reused 49 times


def test_the_pool_is_bounded_in_buffers_and_bytes() -> None:
    pool = wire.BufferPool(max_buffers=3, max_bytes=1 << 20)  # 1 MiB: three 256 KiB buffers (plus headroom)
    alive = [wire.unpack(frame_of(float(i)), pool=pool).tensors["x"] for i in range(8)]
    stats = pool.stats()
    assert stats["buffers"] <= 3 and stats["retained_bytes"] <= 1 << 20
    # Tensors beyond the bound get memory the pool does not keep; all of them stay correct.
    assert len({t.data_ptr() for t in alive}) == 8
    for i, t in enumerate(alive):
        assert torch.equal(t, torch.full((N,), float(i)))
    del alive
    gc.collect()
    for i in range(20):
        assert torch.equal(wire.unpack(frame_of(float(i)), pool=pool).tensors["x"], torch.full((N,), float(i)))
    stats = pool.stats()
    assert stats["buffers"] <= 3 and stats["retained_bytes"] <= 1 << 20


def test_the_default_decode_pool_is_bounded() -> None:
    stats = wire.decode_pool().stats()
    assert stats["max_buffers"] == 16 and stats["max_bytes"] == 1 << 30
    assert stats["buffers"] <= 16 and stats["retained_bytes"] <= 1 << 30
    assert wire.decode_pool() is not wire.default_pool()


def test_clearing_the_pool_leaves_live_tensors_intact() -> None:
    pool = wire.BufferPool()
    x = wire.unpack(frame_of(7.0), pool=pool).tensors["x"]
    pool.clear()
    gc.collect()
    y = wire.unpack(frame_of(8.0), pool=pool).tensors["x"]
    assert x.data_ptr() != y.data_ptr()
    assert torch.equal(x, torch.full((N,), 7.0)) and torch.equal(y, torch.full((N,), 8.0))


def test_small_tensors_do_not_take_pool_slots() -> None:
    pool = wire.BufferPool()
    small = wire.unpack(frame_of(4.0, n=1000), pool=pool).tensors["x"]  # 4000 bytes
    assert torch.equal(small, torch.full((1000,), 4.0))
    stats = pool.stats()
    assert stats["buffers"] == 0 and stats["hits"] + stats["misses"] == 0


def test_pool_none_allocates() -> None:
    frame = frame_of(6.0)
    before = wire.decode_pool().stats()
    x = wire.unpack(frame, pool=None).tensors["x"]
    after = wire.decode_pool().stats()
    assert torch.equal(x, torch.full((N,), 6.0))
    assert (after["hits"], after["misses"]) == (before["hits"], before["misses"])


def test_a_bad_pool_is_named() -> None:
    with pytest.raises(TypeError, match="pool must be a splitlink.wire.BufferPool or None, got dict"):
        wire.unpack(frame_of(1.0), pool={})


CASES = {
    "min_max 4-bit float32": (torch.float32, CompressConfig("min_max", bit_num=4)),
    "min_max float64": (torch.float64, CompressConfig("min_max", bit_num=8, block_size=64)),
    "fp16 of float32": (torch.float32, CompressConfig("fp16")),
    "bf16 of float64": (torch.float64, CompressConfig("bf16")),
    "topk bfloat16": (torch.bfloat16, CompressConfig("topk", ratio=0.1)),
    "topk float16 8-bit": (torch.float16, CompressConfig("topk", k=1000, value_bit_num=8)),
    "bit_pack int64": (torch.int64, CompressConfig("bit_pack", bit_num=5)),
    "bit_pack bool": (torch.bool, CompressConfig("bit_pack", bit_num=1)),
}


@pytest.mark.parametrize("case", CASES)
def test_pooled_decode_equals_fresh_decode(case: str) -> None:
    dtype, config = CASES[case]
    g = torch.Generator().manual_seed(1)
    shape = (256, 300)  # >= 64 KiB decoded for every dtype here (bool: 76800 bytes)
    if dtype == torch.bool:
        x = torch.rand(shape, generator=g) < 0.5
    elif dtype == torch.int64:
        x = torch.randint(-10, 20, shape, generator=g)
    else:
        x = torch.randn(shape, generator=g).to(dtype)
    frame = wire.pack({"g": {"x": x}}, compress={"g/x": config})
    pool = wire.BufferPool()
    pooled = wire.unpack(frame, pool=pool).tensors["g"]["x"]
    fresh = wire.unpack(frame, pool=None).tensors["g"]["x"]
    assert pool.stats()["buffers"] == 1  # it did come from the pool
    assert pooled.dtype == fresh.dtype == dtype and pooled.shape == fresh.shape == x.shape
    # Like with like: the same decoder into two kinds of memory gives the same bytes.
    assert torch.equal(pooled.view(-1).view(torch.uint8), fresh.view(-1).view(torch.uint8))
    if dtype in (torch.int64, torch.bool):
        assert torch.equal(pooled, x)  # bit_pack is lossless


def test_pooled_tensors_are_writable_and_usable_by_numpy() -> None:
    x = wire.unpack(frame_of(2.0)).tensors["x"]
    x.mul_(3)
    a = x.numpy()
    assert a.flags.writeable and np.array_equal(a, np.full(N, 6.0, dtype=np.float32))


def test_sealed_frames_decode_into_the_given_pool() -> None:
    from splitlink import secure

    key = secure.Key(bytes(range(32)))
    sealed = frame_of(9.0, sender="leader", seq=1, sealer=secure.Sealer(key, "leader"))
    pool = wire.BufferPool()
    x = wire.unpack(sealed, opener=secure.Opener(key, "leader"), pool=pool).tensors["x"]
    assert torch.equal(x, torch.full((N,), 9.0)) and pool.stats()["buffers"] == 1
