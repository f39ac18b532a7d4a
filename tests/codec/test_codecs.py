"""Codecs through pack/unpack: documented error bounds and invariants, as properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from splitlink import CodecError, CompressConfig, ErrorFeedback, WireError, wire

finite32 = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False, width=32)
float_arrays = hnp.arrays(np.float32, st.integers(0, 300), elements=finite32)


def roundtrip(x: torch.Tensor, config: CompressConfig, **kw) -> torch.Tensor:  # type: ignore[no-untyped-def]
    got = wire.unpack(wire.pack({"x": x}, compress={"x": config}, **kw)).tensors["x"]
    assert got.dtype == x.dtype and got.shape == x.shape
    return got


@settings(max_examples=150, deadline=None)
@given(a=float_arrays, bits=st.integers(1, 8), block=st.sampled_from([0, 8, 24, 64]))
def test_min_max_nearest_error_bound(a: np.ndarray, bits: int, block: int) -> None:
    x = torch.from_numpy(a)
    y = roundtrip(x, CompressConfig("min_max", bit_num=bits, block_size=block))
    n = a.size
    size = block or max(n, 1)
    for b in range(0, n, size):
        seg = a[b : b + size].astype(np.float64)
        step = (seg.max() - seg.min()) / (2**bits - 1)
        bound = step / 2 + (abs(seg.max()) + abs(seg.min())) * 2e-7 + 1e-30
        assert np.abs(y.numpy()[b : b + size] - seg).max() <= bound


@settings(max_examples=60, deadline=None)
@given(a=float_arrays, bits=st.integers(1, 8), seed=st.integers(0, 2**64 - 1))
def test_min_max_stochastic_error_is_under_one_step_and_reproducible(a: np.ndarray, bits: int, seed: int) -> None:
    x = torch.from_numpy(a)
    config = CompressConfig("min_max", bit_num=bits, stochastic=True, seed=seed)
    y = roundtrip(x, config, seq=5)
    if a.size:
        step = (float(a.max()) - float(a.min())) / (2**bits - 1)
        assert np.abs(y.numpy().astype(np.float64) - a).max() <= step * (1 + 1e-5) + abs(float(a.max())) * 2e-7 + 1e-30
    assert torch.equal(y, roundtrip(x, config, seq=5))


def test_min_max_stochastic_rounding_is_unbiased() -> None:
    # Every value sits 30% of a step above a grid point: nearest rounding always goes down,
    # stochastic rounding goes up 30% of the time, so the mean error cancels.
    grid = torch.arange(0, 15, dtype=torch.float32)
    # min 0 and max 15 pin the 4-bit grid to the integers 0..15 (step 1).
    x = torch.cat([torch.tensor([0.0]), (grid + 0.3).repeat(4000), torch.tensor([15.0])])
    config = CompressConfig("min_max", bit_num=4, stochastic=True, seed=11)
    errors = torch.stack([roundtrip(x, config, seq=s) - x for s in range(8)])
    assert abs(errors[:, 1:-1].mean().item()) < 0.01
    assert abs((roundtrip(x, CompressConfig("min_max", bit_num=4)) - x)[1:-1].mean().item() + 0.3) < 1e-4


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_min_max_other_float_dtypes(dtype: torch.dtype) -> None:
    x = torch.linspace(-5, 5, 1001, dtype=torch.float64).to(dtype)
    y = roundtrip(x, CompressConfig("min_max", bit_num=8))
    tol = 10 / 255 / 2 + (0.04 if dtype == torch.bfloat16 else 0.005 if dtype == torch.float16 else 1e-6)
    assert (y.double() - x.double()).abs().max().item() <= tol


@pytest.mark.parametrize("config", [CompressConfig("min_max", bit_num=3), CompressConfig("topk", k=2)], ids=["min_max", "topk"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_rejected_by_name(config: CompressConfig, bad: float) -> None:
    x = torch.tensor([1.0, bad, 3.0])
    if config.compress_type == "topk" and math.isinf(bad):
        assert roundtrip(x, config)[1].item() == bad  # Inf has a rank; it travels exactly
        return
    with pytest.raises(CodecError, match="'x'.*(NaN|Inf)"):
        wire.pack({"x": x}, compress={"x": config})


@pytest.mark.parametrize("name", ["min_max", "fp16", "bf16", "topk"])
def test_empty_and_constant_tensors(name: str) -> None:
    kw = {"ratio": 0.5} if name == "topk" else {}
    config = CompressConfig(name, **kw)
    assert roundtrip(torch.empty(0, 3), config).shape == (0, 3)
    c = torch.full((17,), -2.5)
    y = roundtrip(c, config)
    if name == "topk":
        assert int((y != 0).sum()) == 9 and torch.all(y[y != 0] == -2.5)
    else:
        assert torch.equal(y, c)


@settings(max_examples=150, deadline=None)
@given(
    dtype=st.sampled_from([np.int8, np.int16, np.int32, np.int64, np.uint8]),
    bits=st.integers(1, 8),
    data=st.data(),
)
def test_bit_pack_is_lossless_with_negative_values(dtype: type, bits: int, data: st.DataObject) -> None:
    info = np.iinfo(dtype)
    lo = data.draw(st.integers(int(info.min), int(info.max) - (2**bits - 1)))
    a = data.draw(hnp.arrays(dtype, st.integers(0, 200), elements=st.integers(lo, lo + 2**bits - 1)))
    y = roundtrip(torch.from_numpy(a), CompressConfig("bit_pack", bit_num=bits))
    assert np.array_equal(y.numpy(), a)


def test_bit_pack_mindspore_counterexample_and_compact_size() -> None:
    x = torch.tensor([-3, -1, 0, 2])
    frame = wire.pack({"x": x}, compress={"x": CompressConfig("bit_pack", bit_num=3)})
    assert wire.unpack(frame).tensors["x"].tolist() == [-3, -1, 0, 2]
    mask = torch.rand(1024, generator=torch.Generator().manual_seed(0)) > 0.5
    raw = len(wire.pack({"m": mask}))
    packed = len(wire.pack({"m": mask}, compress={"m": CompressConfig("bit_pack", bit_num=1)}))
    assert raw - packed >= 1024 - 1024 // 8 - 16  # one bit per bool (+ 8-byte base)
    assert torch.equal(
        wire.unpack(wire.pack({"m": mask}, compress={"m": CompressConfig("bit_pack", bit_num=1)})).tensors["m"], mask
    )


def test_bit_pack_overflow_names_tensor_and_range() -> None:
    with pytest.raises(CodecError, match=r"'ids'.*\[-5, 300\].*bit_num=8.*raise bit_num to 9"):
        wire.pack({"ids": torch.tensor([-5, 300])}, compress={"ids": CompressConfig("bit_pack", bit_num=8)})


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.float32, st.integers(0, 200), elements=st.floats(width=32, allow_nan=False)))
def test_fp16_matches_numpy_cast_bit_for_bit(a: np.ndarray) -> None:
    y = roundtrip(torch.from_numpy(a), CompressConfig("fp16"))
    with np.errstate(over="ignore"):
        assert np.array_equal(y.numpy(), a.astype(np.float16).astype(np.float32))


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.float32, st.integers(0, 200), elements=st.floats(width=32, allow_nan=False)))
def test_bf16_matches_torch_cast_bit_for_bit(a: np.ndarray) -> None:
    x = torch.from_numpy(a)
    y = roundtrip(x, CompressConfig("bf16"))
    assert torch.equal(y, x.to(torch.bfloat16).to(torch.float32))


def test_bf16_vector_path_rounds_ties_to_even_and_keeps_nans_quiet() -> None:
    """Long enough for the SIMD loop: ties, carries into the exponent, infinities, NaN payloads of both
    signs, denormals; every result bit equal to the documented rule (round to nearest even on the upper
    16 bits; a NaN keeps its sign and payload's upper bits and is made quiet)."""
    rng = np.random.default_rng(3)
    bits = rng.integers(0, 2**32, size=4099, dtype=np.uint64).astype(np.uint32)
    special = np.array(
        [
            0x3F808000,
            0x3F818000,
            0x3F80FFFF,
            0x7F7FFFFF,
            0x7F7F8000,
            0x7F800000,
            0xFF800000,
            0x7F800001,
            0xFF800001,
            0x7FC00000,
            0xFFC00000,
            0x7FBFFFFF,
            0x00008000,
            0x80018000,
            0x00000001,
            0x80000000,
        ],
        dtype=np.uint32,
    )
    bits[::7][: len(special)] = special
    bits[100 : 100 + len(special)] = special
    x = torch.from_numpy(bits.view(np.float32).copy())
    got = roundtrip(x, CompressConfig("bf16")).numpy().view(np.uint32)
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    rounded = ((bits.astype(np.uint64) + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint32) & 0xFFFF
    want = np.where(nan, (bits >> 16) | 0x40, rounded).astype(np.uint32) << 16
    assert np.array_equal(got, want)


def test_half_overflow_and_nan_behaviour() -> None:
    x = torch.tensor([65504.0, 65519.0, 65520.0, -1e9, math.nan, 1e-8])
    y = roundtrip(x, CompressConfig("fp16"))
    assert y[:2].tolist() == [65504.0, 65504.0] and y[2].item() == math.inf and y[3].item() == -math.inf
    assert math.isnan(y[4].item()) and y[5].item() == np.float32(np.float16(1e-8))
    z = roundtrip(torch.tensor([3.4e38, math.nan]), CompressConfig("bf16"))
    assert z[0].item() == math.inf and math.isnan(z[1].item())


@settings(max_examples=150, deadline=None)
@given(
    a=hnp.arrays(np.float32, st.integers(1, 400), elements=st.sampled_from([0.0, 1.0, -1.0, 2.5, -3.0, 7.0]) | finite32),
    ratio=st.floats(0.001, 1.0),
)
def test_topk_keeps_exactly_the_largest_magnitudes(a: np.ndarray, ratio: float) -> None:
    y = roundtrip(torch.from_numpy(a), CompressConfig("topk", ratio=ratio)).numpy()
    k = math.ceil(ratio * a.size)
    # Reference: stable sort by decreasing magnitude, ties to the lower index.
    order = sorted(range(a.size), key=lambda i: (-abs(float(a[i])), i))
    expected = np.zeros_like(a)
    expected[order[:k]] = a[order[:k]]
    assert np.array_equal(y, expected)


def test_topk_quantized_values_and_size() -> None:
    x = torch.randn(10000, generator=torch.Generator().manual_seed(1))
    config = CompressConfig("topk", ratio=0.01, value_bit_num=8)
    frame = wire.pack({"x": x}, compress={"x": config})
    y = wire.unpack(frame).tensors["x"]
    kept = y != 0
    assert int(kept.sum()) == 100
    top = x.abs().topk(100).indices
    assert set(top.tolist()) == set(kept.nonzero().flatten().tolist())
    step = (x[top].max() - x[top].min()) / 255
    assert (y[kept] - x[kept]).abs().max() <= step / 2 + 1e-6
    assert len(frame) < 100 * 5 + 300  # 4-byte indices + 1-byte values + header


@settings(max_examples=40, deadline=None)
@given(steps=st.integers(1, 6), k=st.integers(0, 50), value_bits=st.sampled_from([0, 4, 8]), seed=st.integers(0, 1000))
def test_error_feedback_residual_is_exactly_what_was_dropped(steps: int, k: int, value_bits: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    store = ErrorFeedback()
    config = CompressConfig("topk", k=k, value_bit_num=value_bits, error_feedback=True)
    total_in = torch.zeros(64, dtype=torch.float64)
    total_sent = torch.zeros(64, dtype=torch.float64)
    for s in range(steps):
        x = torch.randn(64, generator=g)
        total_in += x.double()
        sent = wire.unpack(wire.pack({"grad": x}, compress={"grad": config}, error_feedback=store, seq=s)).tensors["grad"]
        assert int((sent != 0).sum()) <= k
        total_sent += sent.double()
    # Everything ever given is either sent or still held as residual.
    assert torch.allclose(total_sent + store.residuals["grad"].double(), total_in, atol=1e-5)


def test_error_feedback_needs_a_store_and_float32() -> None:
    config = CompressConfig("topk", ratio=0.5, error_feedback=True)
    with pytest.raises(ValueError, match="error_feedback=ErrorFeedback"):
        wire.pack({"g": torch.ones(4)}, compress={"g": config})
    with pytest.raises(ValueError, match="float32"):
        wire.pack({"g": torch.ones(4, dtype=torch.float16)}, compress={"g": config}, error_feedback=ErrorFeedback())


def test_names_addressed_by_inner_name_or_full_path() -> None:
    tensors = {"loss": {"emb": torch.randn(100), "other": torch.randn(100)}, "emb": torch.randn(100)}
    got = wire.unpack(wire.pack(tensors, compress={"emb": CompressConfig("fp16"), "loss/other": CompressConfig("bf16")}))
    assert got.codecs == {("loss", "emb"): "fp16", ("loss", "other"): "bf16", ("emb",): "fp16"}


@pytest.mark.parametrize("codec", ["min_max", "fp16", "bf16"])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool, torch.uint8])
def test_lossy_codecs_refuse_integer_tensors(codec: str, dtype: torch.dtype) -> None:
    with pytest.raises(CodecError, match="'n'"):
        wire.pack({"n": torch.zeros(4, dtype=dtype)}, compress={"n": CompressConfig(codec)})


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "fragment"),
    [
        (("zip",), {}, ValueError, "compress_type must be one of"),
        (("min_max",), {"bit_num": 9}, ValueError, r"bit_num must be in 1\.\.8"),
        (("min_max",), {"bit_num": 0}, ValueError, r"bit_num must be in 1\.\.8"),
        (("min_max",), {"block_size": 12}, ValueError, "multiple of 8"),
        (("min_max",), {"stochastic": True}, ValueError, "explicit seed"),
        (("min_max",), {"ratio": 0.1}, TypeError, "min_max does not take ratio"),
        (("fp16",), {"bit_num": 4}, ValueError, "bit_num does not apply to fp16"),
        (("topk",), {}, ValueError, "exactly one of ratio"),
        (("topk",), {"ratio": 0.1, "k": 3}, ValueError, "exactly one of ratio"),
        (("topk",), {"ratio": 1.5}, ValueError, r"\(0, 1\]"),
        (("topk",), {"k": 3, "value_bit_num": 9}, ValueError, "value_bit_num"),
        (("min_max",), {"bit_num": "8"}, TypeError, "bit_num must be an int"),
    ],
)
def test_compress_config_validation(args: tuple, kwargs: dict, error: type, fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        CompressConfig(*args, **kwargs)


def test_compress_config_defaults_like_mindspore() -> None:
    assert CompressConfig("min_max").bit_num == 8
    assert CompressConfig("no_compress", bit_num=6).bit_num == 0  # MindSpore YAML carries it; ignored
    assert repr(CompressConfig("topk", ratio=0.1, value_bit_num=8)) == "CompressConfig('topk', value_bit_num=8, ratio=0.1)"


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_corrupted_compressed_frames_fail_cleanly(data: st.DataObject) -> None:
    from wire_cases import compressed, compressed_configs

    frame = bytearray(wire.pack(compressed(), compress=compressed_configs()))
    for _ in range(data.draw(st.integers(1, 6))):
        frame[data.draw(st.integers(0, len(frame) - 1))] = data.draw(st.integers(0, 255))
    try:
        got = wire.unpack(bytes(frame))
    except (WireError, CodecError):
        return
    for t in got.flat.values():
        t.clone()


@pytest.mark.parametrize("bits", [8, 4])
def test_large_tensors_take_the_streaming_path_and_stay_within_bounds(bits: int) -> None:
    # Above 8 MiB the kernels write with streaming stores after peeling to 32-byte alignment; the
    # codes sit 8 bytes into their slot and outputs may start anywhere, so both peel paths run.
    from splitlink import _core

    x = torch.randn(3_000_001, generator=torch.Generator().manual_seed(bits))
    config = CompressConfig("min_max", bit_num=bits)
    y = roundtrip(x, config)
    step = (x.max() - x.min()).item() / (2**bits - 1)
    assert (y - x).abs().max().item() <= step / 2 * (1 + 1e-5) + 1e-6
    spec = config.spec(x.numel())
    enc = np.empty(_core.codec.encoded_size(spec, 1, x.numel()), dtype=np.uint8)
    _core.codec.encode(spec, 1, x.numpy(), enc)
    backing = np.empty(x.numel() + 8, dtype=np.float32)
    out = backing[3 : 3 + x.numel()]  # 12 bytes past a 64-byte boundary at most: not 32-aligned
    _core.codec.decode(spec, 1, enc, 0, enc.size, out)
    assert np.array_equal(out, y.numpy())


@pytest.mark.parametrize("bits", [1, 4, 8])
@pytest.mark.parametrize("stochastic", [False, True])
def test_min_max_range_too_narrow_for_an_inverse_is_a_constant_block(bits: int, stochastic: bool) -> None:
    # hi - lo inside the subnormal range: 1/scale overflows float32. Found by the ASan+UBSan build
    # (hypothesis data): the inverse was inf, (x - lo) * inf NaN for x == lo, and the float-to-int
    # conversion undefined (scalar) or code `levels` (AVX2). Such a block now decodes to lo everywhere.
    lo = np.float32(-1.67316242e-38)
    a = np.array([lo, np.nextafter(lo, np.float32(1)), lo, np.float32(-1.6e-38)] * 6, dtype=np.float32)
    cfg = (
        CompressConfig("min_max", bit_num=bits, block_size=24, stochastic=stochastic, seed=7)
        if stochastic
        else CompressConfig("min_max", bit_num=bits, block_size=24)
    )
    y = roundtrip(torch.from_numpy(a.copy()), cfg).numpy()
    assert np.all(y == lo), y
    assert np.abs(y.astype(np.float64) - a).max() <= float(a.max()) - float(a.min()) < 1e-36
