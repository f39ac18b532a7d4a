"""The torch-op codecs (splitlink.codec_torch) against the C++ codecs: identical payload bytes, identical
decoded values both ways (torch-encoded -> C++-decoded and C++-encoded -> torch-decoded), the same error
class for the same bad input. They run on the CPU here; the same functions run on CUDA in
tests/gpu/test_gpu_wire.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from splitlink import CodecError, _core, codec_torch

CODES = _core.wire.DTYPES
TYPES = _core.codec.CODEC_TYPES
Spec = _core.codec.CodecSpec


def _code(dtype: torch.dtype) -> int:
    return int(CODES[str(dtype).removeprefix("torch.")])


def _host(t: torch.Tensor) -> np.ndarray:
    t = t.contiguous()
    return (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()


def cpp_encode(spec: object, x: torch.Tensor) -> bytes:
    out = np.empty(_core.codec.encoded_size(spec, _code(x.dtype), x.numel()), dtype=np.uint8)
    _core.codec.encode(spec, _code(x.dtype), _host(x.reshape(-1)), out)
    return out.tobytes()


def cpp_decode(spec: object, payload: bytes, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype)
    src = np.frombuffer(payload, dtype=np.uint8)
    _core.codec.decode(spec, _code(dtype), src, 0, src.size, _host(out).reshape(-1) if out.numel() else _host(out))
    return out


def as_payload(b: bytes | bytearray) -> torch.Tensor:
    return torch.tensor(list(b), dtype=torch.uint8) if len(b) < 64 else torch.frombuffer(bytearray(b), dtype=torch.uint8)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (tells -0 from +0, compares NaN payloads)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    ints = {8: torch.int64, 4: torch.int32, 2: torch.int16}[a.element_size()]
    return torch.equal(a.contiguous().view(ints), b.contiguous().view(ints))


def check_both_ways(spec: object, x: torch.Tensor) -> None:
    want = cpp_encode(spec, x)
    got = codec_torch.encode(spec, x, "x")
    assert got.dtype == torch.uint8 and got.device == x.device
    assert bytes(got.numpy()) == want
    a = codec_torch.decode(spec, as_payload(want), x.dtype, tuple(x.shape), "x")
    b = cpp_decode(spec, want, x.dtype, tuple(x.shape))
    assert same(a, b)


FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
values = st.one_of(
    st.floats(-1e4, 1e4, allow_nan=False, width=32),
    st.sampled_from([0.0, -0.0, 1e-30, -1e-30, 1e-40, 3.0, -3.0]),
)


@st.composite
def tensors(draw: st.DrawFn, dtypes: list[torch.dtype] = FLOATS) -> torch.Tensor:
    dtype = draw(st.sampled_from(dtypes))
    n = draw(st.integers(0, 200))
    kind = draw(st.sampled_from(["free", "constant", "narrow", "wide"]))
    if kind == "free":
        vals = draw(st.lists(values, min_size=n, max_size=n))
    elif kind == "constant":
        vals = [draw(values)] * n
    elif kind == "narrow":  # a range whose float32 inverse overflows (constant-block path)
        base = draw(st.sampled_from([0.0, 1e-38, -2e-38]))
        vals = [base + (i % 3) * 1e-45 for i in range(n)]
    else:
        vals = [draw(st.floats(-3.0000000054977558e38, 3.0000000054977558e38, allow_nan=False, width=32)) for _ in range(n)]
    x = torch.tensor(vals, dtype=torch.float64).to(dtype)
    if not torch.isfinite(x).all():  # float16 overflows the wide kind: keep it finite
        x = torch.nan_to_num(x, posinf=1.0, neginf=-1.0)
    return x


@settings(max_examples=300, deadline=None)
@given(
    x=tensors(),
    bits=st.integers(1, 8),
    block=st.sampled_from([0, 8, 16, 24, 64, 256]),
    stochastic=st.booleans(),
    seed=st.integers(0, 2**64 - 1),
)
def test_min_max_matches_cpp(x: torch.Tensor, bits: int, block: int, stochastic: bool, seed: int) -> None:
    spec = Spec(TYPES["min_max"], bit_num=bits, block_size=block, stochastic=stochastic, seed=seed)
    try:
        want = cpp_encode(spec, x)
    except CodecError:  # the range overflows the scale: the torch codec must refuse it the same way
        with pytest.raises(CodecError, match="too wide"):
            codec_torch.encode(spec, x, "x")
        return
    check_both_ways(spec, x)
    assert len(want) == codec_torch.encoded_size(spec, x.dtype, x.numel())


@settings(max_examples=150, deadline=None)
@given(x=tensors([torch.float32, torch.float64]), bf16=st.booleans(), shape2=st.booleans())
def test_half_casts_match_cpp(x: torch.Tensor, bf16: bool, shape2: bool) -> None:
    spec = Spec(TYPES["bf16" if bf16 else "fp16"])
    if shape2 and x.numel() % 2 == 0:
        x = x.view(2, -1)
    check_both_ways(spec, x)


def test_half_casts_specials_match_cpp() -> None:
    bits = [
        0x7FC00000,
        0xFFC00001,
        0x7F800001,
        0x7FFFFFFF,
        0x7F800000,
        0xFF800000,
        0x477FF000,
        0x477FEFFF,
        0x33000000,
        0x33000001,
        0x38800000,
        0x387FFFFF,
        0x00000001,
        0x80000000,
        0x3F808000,
        0x3F818000,
        0x7F7FFFFF,
    ]
    x = torch.tensor([b - (1 << 32) if b >= 1 << 31 else b for b in bits], dtype=torch.int32).view(torch.float32)
    for name in ("fp16", "bf16"):
        check_both_ways(Spec(TYPES[name]), x)
    # Decoding every 16-bit pattern (NaNs included) gives the C++ floats.
    every = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16).view(torch.uint8)
    for name in ("fp16", "bf16"):
        spec = Spec(TYPES[name])
        a = codec_torch.decode(spec, every.clone(), torch.float32, (1 << 16,))
        assert same(a, cpp_decode(spec, bytes(every.numpy()), torch.float32, (1 << 16,)))


@settings(max_examples=200, deadline=None)
@given(
    x=tensors([torch.float32, torch.float16, torch.bfloat16]),
    data=st.data(),
    value_bits=st.sampled_from([0, 1, 4, 8]),
    block=st.sampled_from([0, 8, 32]),
    stochastic=st.booleans(),
    seed=st.integers(0, 2**64 - 1),
)
def test_topk_matches_cpp(x: torch.Tensor, data: st.DataObject, value_bits: int, block: int, stochastic: bool, seed: int) -> None:
    if data.draw(st.booleans()) and x.numel():  # many ties
        x = torch.round(x / (x.abs().max() + 1) * 3).to(x.dtype)
    k = data.draw(st.integers(0, x.numel()))
    spec = Spec(TYPES["topk"], topk_count=k, value_bits=value_bits, block_size=block, stochastic=stochastic, seed=seed)
    try:
        cpp_encode(spec, x)
    except CodecError:
        with pytest.raises(CodecError):
            codec_torch.encode(spec, x, "x")
        return
    check_both_ways(spec, x)


def test_large_tensor_blocks_and_chunks_match_cpp() -> None:
    # Larger than the C++ codecs' parallel chunk (2^18 elements): chunk seams must not show.
    g = torch.Generator().manual_seed(3)
    x = torch.randn(300_000, generator=g) * 5
    for spec in (
        Spec(TYPES["min_max"], bit_num=8),
        Spec(TYPES["min_max"], bit_num=3, block_size=4096),
        Spec(TYPES["min_max"], bit_num=8, stochastic=True, seed=9),
        Spec(TYPES["topk"], topk_count=3000, value_bits=8, block_size=256),
        Spec(TYPES["bf16"]),
    ):
        check_both_ways(spec, x)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_refused_like_cpp(bad: float) -> None:
    x = torch.arange(20, dtype=torch.float32)
    x[7] = bad
    spec = Spec(TYPES["min_max"], bit_num=8, block_size=8)
    with pytest.raises(CodecError):
        cpp_encode(spec, x)
    with pytest.raises(CodecError, match="first at flat index 7"):
        codec_torch.encode(spec, x, "x")
    if math.isnan(bad):
        topk = Spec(TYPES["topk"], topk_count=3)
        with pytest.raises(CodecError):
            cpp_encode(topk, x)
        with pytest.raises(CodecError, match="NaN"):
            codec_torch.encode(topk, x, "x")
    # float64 values beyond float32 are infinite once loaded as float32, in both.
    big = torch.tensor([1.0, 1e300], dtype=torch.float64)
    with pytest.raises(CodecError):
        cpp_encode(Spec(TYPES["min_max"], bit_num=8), big)
    with pytest.raises(CodecError, match="NaN or Inf"):
        codec_torch.encode(Spec(TYPES["min_max"], bit_num=8), big, "x")


def test_corrupt_payloads_refused_like_cpp() -> None:
    x = torch.arange(16, dtype=torch.float32)
    spec = Spec(TYPES["min_max"], bit_num=4)
    good = bytearray(cpp_encode(spec, x))
    for bad_scale in (-1.0, math.nan, math.inf):
        p = bytearray(good)
        p[4:8] = np.float32(bad_scale).tobytes()
        with pytest.raises(CodecError):
            cpp_decode(spec, bytes(p), torch.float32, (16,))
        with pytest.raises(CodecError, match="invalid parameters"):
            codec_torch.decode(spec, as_payload(p), torch.float32, (16,))
    with pytest.raises(CodecError, match="expected"):
        codec_torch.decode(spec, torch.zeros(3, dtype=torch.uint8), torch.float32, (16,))
    topk = Spec(TYPES["topk"], topk_count=2)
    enc = bytearray(cpp_encode(topk, x))
    enc[0:4], enc[4:8] = enc[4:8], enc[0:4]  # indices out of order
    with pytest.raises(CodecError):
        cpp_decode(topk, bytes(enc), torch.float32, (16,))
    with pytest.raises(CodecError, match="increasing"):
        codec_torch.decode(topk, as_payload(enc), torch.float32, (16,))


def test_unsupported_specs_are_named() -> None:
    assert not codec_torch.supports(Spec(TYPES["bit_pack"], bit_num=3), torch.int32)
    assert not codec_torch.supports(Spec(TYPES["fp16"]), torch.float16)
    assert codec_torch.supports(Spec(TYPES["min_max"], bit_num=8), torch.bfloat16)
    with pytest.raises(CodecError, match="not implemented in torch ops"):
        codec_torch.encode(Spec(TYPES["bit_pack"], bit_num=3), torch.zeros(4, dtype=torch.int32))
    with pytest.raises(CodecError, match="bit_num"):
        codec_torch.encode(Spec(TYPES["min_max"], bit_num=9), torch.zeros(4))
