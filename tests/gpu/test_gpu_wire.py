"""Frames from and into GPU memory, and the torch codecs on CUDA: the same bytes and tensors as the CPU
path (tests/codec/test_codec_torch.py and test_wire_device_path.py prove the same functions against
the C++ codecs on the CPU). Skipped without CUDA (tests/conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from splitlink import CompressConfig, ErrorFeedback, _core, codec_torch, wire
from splitlink.buffers import pinned_pool
from splitlink.channel import InProcessCommunicator, ServerConfig

pytestmark = pytest.mark.gpu

TYPES = _core.codec.CODEC_TYPES
Spec = _core.codec.CodecSpec


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == torch.bool:
        return torch.equal(a.cpu(), b.cpu())
    ints = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}[a.element_size()]
    return torch.equal(a.contiguous().view(ints).cpu(), b.contiguous().view(ints).cpu())


SPECS = [
    Spec(TYPES["min_max"], bit_num=8),
    Spec(TYPES["min_max"], bit_num=8, block_size=4096),
    Spec(TYPES["min_max"], bit_num=1, block_size=8),
    Spec(TYPES["min_max"], bit_num=5, block_size=24, stochastic=True, seed=77),
    Spec(TYPES["min_max"], bit_num=8, stochastic=True, seed=2**64 - 1),
    Spec(TYPES["fp16"]),
    Spec(TYPES["bf16"]),
    Spec(TYPES["topk"], topk_count=1000),
    Spec(TYPES["topk"], topk_count=5000, value_bits=8, block_size=256),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: repr(s))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_codecs_on_cuda_give_the_cpu_bytes_and_values(spec: object, dtype: torch.dtype) -> None:
    if not codec_torch.supports(spec, dtype):
        pytest.skip(f"{spec} does not take {dtype} (the C++ codec refuses it too)")
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(300_001, generator=g) * 3).to(dtype)
    x[17] = -0.0
    x[100:200] = 1.5  # ties for topk
    want = bytes(codec_torch.encode(spec, x).numpy())
    code = int(_core.wire.DTYPES[str(dtype).removeprefix("torch.")])
    cpp = np.empty(len(want), dtype=np.uint8)
    host = x.view(torch.int16) if dtype == torch.bfloat16 else x
    _core.codec.encode(spec, code, host.numpy(), cpp)
    assert cpp.tobytes() == want
    got = codec_torch.encode(spec, x.cuda())
    assert got.is_cuda and bytes(got.cpu().numpy()) == want
    dec = codec_torch.decode(spec, got, dtype, tuple(x.shape))
    assert dec.is_cuda and same(dec, codec_torch.decode(spec, got.cpu(), dtype, tuple(x.shape)))


def frames_equal_on_both_paths(tensors_cpu: dict, **kw) -> None:  # type: ignore[no-untyped-def]
    on_gpu = {
        k: (v.cuda() if isinstance(v, torch.Tensor) else {a: b.cuda() for a, b in v.items()}) for k, v in tensors_cpu.items()
    }
    want = bytes(wire.pack(tensors_cpu, **kw))
    got = wire.pack(on_gpu, **kw)
    assert bytes(got) == want
    assert wire.packed_size(on_gpu, **{k: v for k, v in kw.items() if k != "error_feedback"}) == len(want)
    chunks = wire.pack_chunks(on_gpu, chunk_size=1 << 16, **kw) if "error_feedback" not in kw else None
    if chunks is not None:
        assert b"".join(chunks.chunk(i) for i in range(len(chunks))) == want
    cpu_frame = wire.unpack(want)
    dev_frame = wire.unpack(want, device="cuda")
    for path, t in cpu_frame.flat.items():
        d = dev_frame.flat[path]
        assert d.is_cuda and same(d, t), path


def test_pack_from_device_is_the_cpu_frame() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, 1024, 64, generator=g)
    tensors = {
        "hidden": x,
        "mask": torch.rand(8, 1024, generator=g) > 0.5,
        "ids": torch.arange(8192).view(8, 1024),
        "grp": {"bf": x[:2].to(torch.bfloat16), "t": x[0, 0].clone()},
        "empty": torch.zeros(0, 3),
    }
    frames_equal_on_both_paths(tensors)
    frames_equal_on_both_paths(
        tensors,
        compress={
            "hidden": CompressConfig("min_max", bit_num=8),
            "bf": CompressConfig("min_max", bit_num=4, block_size=64),
            "t": CompressConfig("fp16"),
            "ids": CompressConfig("bit_pack", bit_num=13),
        },
        sender="leader",
        seq=3,
        step=9,
        kind="tensors",
    )
    frames_equal_on_both_paths(
        {"g": x}, compress={"g": CompressConfig("topk", ratio=0.01, value_bit_num=8, stochastic=True, seed=5)}, seq=4
    )


def test_error_feedback_from_device_matches_the_cpu() -> None:
    x = torch.randn(4096)
    compress = {"x": CompressConfig("topk", k=100, error_feedback=True)}
    fa, fb = ErrorFeedback(), ErrorFeedback()
    for _ in range(3):
        assert bytes(wire.pack({"x": x.cuda()}, compress=compress, error_feedback=fb)) == bytes(
            wire.pack({"x": x}, compress=compress, error_feedback=fa)
        )
    assert torch.equal(fa.residuals["x"], fb.residuals["x"])


def test_pack_waits_for_the_producing_stream() -> None:
    # The tensor is written by a long kernel queue on the current stream; pack must see its final values.
    x = torch.zeros(1 << 24, device="cuda")
    for _ in range(50):
        x.add_(1.0)
    frame = wire.pack({"x": x})
    assert float(wire.unpack(frame).tensors["x"].min()) == 50.0


def test_frame_buffers_are_pinned_and_pooled() -> None:
    x = torch.randn(1 << 20, device="cuda")
    f = wire.pack({"x": x})
    assert torch.from_numpy(f).is_pinned()
    before = pinned_pool().stats()["buffers"]
    del f
    for _ in range(5):
        wire.pack({"x": x})
    assert pinned_pool().stats()["buffers"] <= max(before, 1) + 1  # reused, not one per frame


def test_unpack_to_device_from_pinned_and_pageable_frames() -> None:
    x = torch.randn(3, 1000)
    pageable = bytes(wire.pack({"x": x}))
    pinned = wire.pack({"x": x.cuda()})  # a pinned pooled buffer
    for frame in (pageable, pinned):
        got = wire.unpack(frame, device="cuda:0").tensors["x"]
        assert got.device == torch.device("cuda", 0) and torch.equal(got.cpu(), x)


def test_in_process_receive_onto_the_device_both_ways() -> None:
    hub: dict = {}
    a, b = ServerConfig("a", "127.0.0.1:1"), ServerConfig("b", "127.0.0.1:2")
    cfg = {"h": CompressConfig("min_max", bit_num=8)}
    ca = InProcessCommunicator(a, b, cfg, hub=hub, through_codecs=True)
    cb = InProcessCommunicator(b, a, cfg, hub=hub, through_codecs=True)
    h = torch.randn(16, 64)
    ca.send_tensors("b", {"h": h})  # a CPU party sends, the GPU party receives on its device
    got = cb.receive("a", device="cuda")["h"]
    assert got.is_cuda
    ca.send_tensors("b", {"h": h})
    ref = cb.receive("a")["h"]
    assert torch.equal(got.cpu(), ref)
    cb.send_tensors("a", {"h": got})  # and back: a GPU tensor to a CPU receiver
    assert torch.equal(ca.receive("b")["h"], wire.unpack(wire.pack({"h": ref}, compress=cfg)).tensors["h"])


def test_grpc_receive_and_irecv_onto_the_device() -> None:
    """The gRPC communicator (plaintext on loopback here) places received frames on the device, posted
    receives included; the codecs are decoded there and give the CPU receiver's tensor."""
    from splitlink.channel import VerticalFederatedCommunicator
    from splitlink.util import free_ports

    pa, pb = free_ports(2)
    a, b = ServerConfig("a", f"127.0.0.1:{pa}"), ServerConfig("b", f"127.0.0.1:{pb}")
    cfg = {"h": CompressConfig("min_max", bit_num=8)}
    with (
        VerticalFederatedCommunicator(a, b, compress_configs=cfg, enable_ssl=False) as ca,
        VerticalFederatedCommunicator(b, a, compress_configs=cfg, enable_ssl=False) as cb,
    ):
        h = torch.randn(64, 256)
        ca.send_tensors("b", {"h": h})
        got = cb.receive("a", timeout=60, device="cuda:0")["h"]
        ca.send_tensors("b", {"h": h})
        posted = cb.irecv("a", timeout=60, device="cuda:0").wait()["h"]
        ca.send_tensors("b", {"h": h})
        ref = cb.receive("a", timeout=60)["h"]
    assert got.is_cuda and posted.is_cuda and not ref.is_cuda
    assert torch.equal(got.cpu(), ref) and torch.equal(posted.cpu(), ref)
