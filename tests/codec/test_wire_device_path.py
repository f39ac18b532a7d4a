"""The device path of wire.pack/unpack (frames of GPU tensors), run on the CPU: the header written in
Python, slots filled from torch tensors and the torch codecs must give the very bytes the C++ encoder
gives, and unpack(device=) the very tensors unpack gives. tests/gpu/test_gpu_wire.py runs the same
with CUDA tensors."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from splitlink import CodecError, CompressConfig, ErrorFeedback, WireError, wire
from splitlink.buffers import PinnedPool


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == torch.bool:
        return torch.equal(a, b)
    ints = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}[a.element_size()]
    return torch.equal(a.contiguous().view(ints), b.contiguous().view(ints))


def device_pack(tensors, **kw):  # type: ignore[no-untyped-def]
    args = dict(compress=None, error_feedback=None, seq=0, sender="", step=0, kind="", out=None)
    args.update(kw)
    return wire._pack_device(
        tensors,
        args["compress"],
        args["error_feedback"],
        args["seq"],
        args["sender"],
        args["step"],
        args["kind"],
        args["out"],
        all_tensors=True,
    )


CONFIGS = [
    None,
    CompressConfig("min_max", bit_num=8),
    CompressConfig("min_max", bit_num=3, block_size=16),
    CompressConfig("min_max", bit_num=5, stochastic=True, seed=4),
    CompressConfig("fp16"),
    CompressConfig("bf16"),
    CompressConfig("topk", ratio=0.25),
    CompressConfig("topk", k=3, value_bit_num=4),
]


@settings(max_examples=120, deadline=None)
@given(
    n=st.integers(0, 90),
    rows=st.integers(1, 3),
    which=st.lists(st.integers(0, len(CONFIGS) - 1), min_size=1, max_size=3),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]),
    seq=st.integers(0, 2**40),
    step=st.integers(-(2**40), 2**40),
    sender=st.text(max_size=5),
    kind=st.sampled_from(["", "tensors", "grad"]),
    seed=st.integers(0, 1000),
)
def test_device_path_frames_are_the_cpu_frames(
    n: int, rows: int, which: list[int], dtype: torch.dtype, seq: int, step: int, sender: str, kind: str, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    tensors = {"grp": {}, "ids": torch.randint(-5, 5, (n,), generator=g), "flag": torch.rand(n, generator=g) > 0.5}
    compress = {}
    for i, w in enumerate(which):
        name = f"t{i}"
        tensors["grp"][name] = (torch.randn(rows, n, generator=g) * 10).to(dtype)
        config = CONFIGS[w]
        ok = (
            config is not None
            and not (config.compress_type in ("fp16", "bf16") and dtype not in (torch.float32, torch.float64))
            and not (config.compress_type == "topk" and dtype == torch.float64)
            and not (config.compress_type == "topk" and config.k is not None and config.k > rows * n)
        )
        if ok:
            compress[name] = config
    if sender.encode("utf-8", "surrogatepass") != sender.encode("utf-8", "replace"):
        return
    kw = dict(seq=seq, step=step, sender=sender, kind=kind, compress=compress)
    want = bytes(wire.pack(tensors, **kw))
    got = device_pack(tensors, **kw)
    assert bytes(got) == want
    assert wire.packed_size(tensors, **kw) == len(want)
    # unpack onto a device (here the CPU through the same code) gives unpack's tensors.
    a = wire.unpack(want)
    b = wire._unpack_device(memoryview(want), wire.peek_header(want), torch.device("cpu"))
    assert a.flat.keys() == b.flat.keys() and a.codecs == b.codecs
    for k in a.flat:
        assert same(a.flat[k], b.flat[k]), k
    assert (b.sender, b.seq, b.step, b.kind) == (sender, seq, step, kind)


def test_device_path_error_feedback_and_bit_pack_stay_on_the_host() -> None:
    x = torch.randn(64)
    ids = torch.arange(64, dtype=torch.int32)
    compress = {"x": CompressConfig("topk", k=8, error_feedback=True), "ids": CompressConfig("bit_pack", bit_num=7)}
    fa, fb = ErrorFeedback(), ErrorFeedback()
    for _ in range(3):
        want = bytes(wire.pack({"x": x, "ids": ids}, compress=compress, error_feedback=fa))
        got = bytes(device_pack({"x": x, "ids": ids}, compress=compress, error_feedback=fb))
        assert got == want
    assert torch.equal(fa.residuals["x"], fb.residuals["x"])
    with pytest.raises(ValueError, match="error_feedback"):
        device_pack({"x": x}, compress=compress)


def test_device_path_out_and_errors() -> None:
    x = torch.arange(10, dtype=torch.float32)
    size = wire.packed_size({"x": x})
    out = bytearray(size + 7)
    view = device_pack({"x": x}, out=out)
    assert bytes(view) == bytes(wire.pack({"x": x}))
    with pytest.raises(ValueError, match="needs"):
        device_pack({"x": x}, out=bytearray(size - 1))
    with pytest.raises(CodecError, match="NaN or Inf"):
        device_pack({"x": torch.tensor([1.0, float("nan")])}, compress={"x": CompressConfig("min_max", bit_num=8)})
    with pytest.raises(ValueError, match="empty or over-long key"):  # validated by the C++ encoder's plan
        device_pack({"": x})
    with pytest.raises(ValueError, match="seq"):
        device_pack({"x": x}, seq=-1)
    with pytest.raises(ValueError, match="dtype"):
        device_pack({"x": torch.zeros(2, dtype=torch.complex64)})


def test_device_chunks_join_to_the_frame() -> None:
    x = torch.randn(1000)
    frame = device_pack({"x": x})
    chunks = wire.DeviceFrameChunks(frame, 300)
    assert chunks.nbytes == len(bytes(frame)) and len(chunks) == -(-chunks.nbytes // 300)
    assert b"".join(chunks.chunk(i) for i in range(len(chunks))) == bytes(frame)
    assert chunks.chunk(0, prefix=b"hd")[:2] == b"hd"
    with pytest.raises(IndexError):
        chunks.chunk(len(chunks))


def test_unpack_device_cpu_is_the_zero_copy_path_and_bad_frames_fail_first() -> None:
    frame = bytes(wire.pack({"x": torch.ones(3)}))
    assert wire.unpack(frame, device="cpu").tensors["x"].device.type == "cpu"
    with pytest.raises(WireError):
        wire.unpack(frame[:-1], device="cpu")


def test_pinned_pool_never_reuses_a_buffer_in_use() -> None:
    pool = PinnedPool(max_buffers=2)
    a = pool.acquire(100)
    arr = a.numpy()
    ptr = a.data_ptr()
    del a
    gc.collect()
    b = pool.acquire(100)  # the array still holds the first buffer
    assert b.data_ptr() != ptr
    view = torch.frombuffer(memoryview(arr), dtype=torch.uint8)
    del arr
    c = pool.acquire(10)  # the first buffer through a tensor, the second by b: a third, unkept
    assert c.data_ptr() not in (ptr, b.data_ptr())
    assert pool.stats()["buffers"] == 2
    del view, b, c
    gc.collect()
    assert pool.stats()["in_use"] == 0
    assert pool.acquire(100).data_ptr() == ptr or pool.stats()["buffers"] == 2
    assert not pool.acquire(1).is_pinned() or torch.cuda.is_available()  # a CPU-only machine never pins
    with pytest.raises(ValueError):
        pool.acquire(-1)


def test_large_frame_through_the_device_path() -> None:
    x = torch.randn(3, 100_000)
    compress = {"x": CompressConfig("min_max", bit_num=8, block_size=4096)}
    want = bytes(wire.pack({"x": x, "y": x[0]}, compress=compress))
    assert bytes(device_pack({"x": x, "y": x[0]}, compress=compress)) == want
    f = wire._unpack_device(memoryview(want), wire.peek_header(want), torch.device("cpu"))
    assert same(f.tensors["x"], wire.unpack(want).tensors["x"]) and np.array_equal(f.tensors["y"].numpy(), x[0].numpy())
