"""The frame codecs in torch ops: the same payload bytes and decoded values as the C++ codecs
(``csrc/core/codec/``), computed on the tensor's own device.

``wire`` uses these to compress CUDA tensors before they leave the GPU and to decode compressed
tensors after they reach it; on the CPU the C++ codecs stay the fast path. The functions run on any
device, so CPU tests compare them byte for byte with the C++ codecs (``tests/codec/test_codec_torch.py``).

Covered: ``min_max`` (1-8 bit, one block or blocks, deterministic and stochastic rounding), ``fp16``,
``bf16`` and ``topk`` (raw or min_max values). ``supports(spec, dtype)`` says whether a spec is
covered; ``bit_pack`` and error feedback stay on the C++ path.

Exactness rests on doing each float32 operation as the C++ does: ``(x - lo) * inv + 0.5`` as three
rounded operations (separate torch ops, never fused), scale and inverse computed in float64 and
rounded once, ``lo + code * scale`` as two, integer bit manipulation for the half formats' NaNs and
for bf16 rounding, and the counter-based uniform of stochastic rounding in 64-bit integer arithmetic.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from splitlink import _core
from splitlink.errors import CodecError

__all__ = ["supports", "encoded_size", "encode", "decode"]

_TYPES = _core.codec.CODEC_TYPES
_MINMAX, _FP16, _BF16, _TOPK = _TYPES["min_max"], _TYPES["fp16"], _TYPES["bf16"], _TYPES["topk"]
_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_FLT_MAX = 3.4028234663852886e38
_U64 = 1 << 64


def _i64(c: int) -> int:
    """A uint64 constant as the int64 with the same bits."""
    return c - _U64 if c >= 1 << 63 else c


def _shr(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (torch's >> is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def supports(spec: Any, dtype: torch.dtype) -> bool:
    """Whether ``encode``/``decode`` cover this ``CodecSpec`` for tensors of ``dtype`` (what they do not
    cover goes through the C++ codecs)."""
    t = getattr(spec, "type", None)
    if t == _MINMAX:
        return dtype in _FLOATS
    if t in (_FP16, _BF16):
        return dtype in (torch.float32, torch.float64)
    if t == _TOPK:
        return dtype in (torch.float32, torch.float16, torch.bfloat16)
    return False


def _check(spec: Any, dtype: torch.dtype, numel: int, name: str) -> None:
    if not supports(spec, dtype):
        raise CodecError(
            f"tensor '{name}': codec {getattr(spec, 'name', spec)!r} on {dtype} is not implemented in "
            "torch ops; use the C++ codec (splitlink._core.codec)"
        )
    # The C++ validation (bit widths, block sizes, k) with its messages.
    _core.codec.encoded_size(spec, _dtype_code(dtype), numel, name)


def _dtype_code(dtype: torch.dtype) -> int:
    return int(_core.wire.DTYPES[str(dtype).removeprefix("torch.")])


def encoded_size(spec: Any, dtype: torch.dtype, numel: int, name: str = "tensor") -> int:
    return int(_core.codec.encoded_size(spec, _dtype_code(dtype), numel, name))


# Bit packing: 8 codes of b bits <-> b bytes, code i at bits [i*b, (i+1)*b) of the stream, LSB first.
def _pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    n = codes.numel()
    if bits == 8:
        return codes
    groups = (n + 7) // 8
    c = torch.zeros(groups * 8, dtype=torch.int64, device=codes.device)
    c[:n] = codes
    shifts = torch.arange(8, device=codes.device, dtype=torch.int64) * bits
    v = (c.view(groups, 8) << shifts).sum(dim=1)  # disjoint bits: the sum is their OR
    byte_shifts = torch.arange(bits, device=codes.device, dtype=torch.int64) * 8
    out = ((v.unsqueeze(1) >> byte_shifts) & 0xFF).to(torch.uint8).reshape(-1)
    return out[: (n * bits + 7) // 8]


def _unpack_codes(packed: torch.Tensor, n: int, bits: int) -> torch.Tensor:
    if bits == 8:
        return packed[:n]
    groups = (n + 7) // 8
    b = torch.zeros(groups * bits, dtype=torch.int64, device=packed.device)
    b[: packed.numel()] = packed
    byte_shifts = torch.arange(bits, device=packed.device, dtype=torch.int64) * 8
    v = (b.view(groups, bits) << byte_shifts).sum(dim=1)
    shifts = torch.arange(8, device=packed.device, dtype=torch.int64) * bits
    codes = (v.unsqueeze(1) >> shifts) & ((1 << bits) - 1)
    return codes.reshape(-1)[:n].to(torch.uint8)


def _uniform01(seed: int, index: torch.Tensor) -> torch.Tensor:
    """elem.h's uniform01(seed, index) for int64 indices, in wrapping 64-bit arithmetic."""
    z = (index + 1) * _i64(0x9E3779B97F4A7C15) + _i64(seed % _U64)
    z = (z ^ _shr(z, 30)) * _i64(0xBF58476D1CE4E5B9)
    z = (z ^ _shr(z, 27)) * _i64(0x94D049BB133111EB)
    z = z ^ _shr(z, 31)
    return _shr(z, 40).to(torch.float32) * (1.0 / 16777216.0)


def _num_blocks(numel: int, block_size: int) -> int:
    if numel == 0:
        return 0
    return 1 if block_size == 0 else (numel + block_size - 1) // block_size


def _minmax_encode(x: torch.Tensor, bits: int, block_size: int, stochastic: bool, seed: int, name: str) -> torch.Tensor:
    """x: any float dtype, flat. Returns the payload (uint8 on x's device)."""
    dev = x.device
    n = x.numel()
    nb = _num_blocks(n, block_size)
    if nb == 0:
        return torch.empty(0, dtype=torch.uint8, device=dev)
    f = x.to(torch.float32)  # E::load: every element as float32 (float64 rounds, may overflow to inf)
    bs = n if nb == 1 else block_size
    pad = nb * bs - n
    if pad:
        lo = torch.cat([f, f.new_full((pad,), math.inf)]).view(nb, bs).amin(dim=1)
        hi = torch.cat([f, f.new_full((pad,), -math.inf)]).view(nb, bs).amax(dim=1)
    else:
        lo = f.view(nb, bs).amin(dim=1)
        hi = f.view(nb, bs).amax(dim=1)
    levels = float((1 << bits) - 1)
    scale_d = (hi.to(torch.float64) - lo.to(torch.float64)) / levels
    finite = torch.isfinite(lo) & torch.isfinite(hi)
    bad_range, too_wide = bool((~finite).any()), bool((finite & (scale_d > _FLT_MAX)).any())
    if bad_range:
        first = int((~torch.isfinite(f)).nonzero()[0, 0])
        raise CodecError(
            f"tensor '{name}' contains NaN or Inf (first at flat index {first}); min_max cannot encode "
            "non-finite values: fix them or send this tensor with no_compress, fp16 or bf16"
        )
    if too_wide:
        blk = int((scale_d > _FLT_MAX).nonzero()[0, 0])
        raise CodecError(
            f"tensor '{name}': value range [{float(lo[blk])}, {float(hi[blk])}] is too wide for {bits}-bit "
            "min_max (scale overflows float32); use more bits or no_compress"
        )
    lo = lo + 0.0  # -0 -> +0, as the C++ does
    scale = scale_d.to(torch.float32)
    inv_d = torch.where(scale_d > 0, 1.0 / torch.where(scale_d > 0, scale_d, 1.0), 0.0)
    inv = torch.where(inv_d <= _FLT_MAX, inv_d, 0.0).to(torch.float32)
    blk_of = (torch.arange(n, device=dev) // bs) if nb > 1 else None
    lo_e = lo[blk_of] if blk_of is not None else lo
    inv_e = inv[blk_of] if blk_of is not None else inv
    y = (f - lo_e) * inv_e  # two rounded float32 operations, then the rounding offset
    if stochastic:
        y = y + _uniform01(seed, torch.arange(n, device=dev, dtype=torch.int64))
    else:
        y = y + 0.5
    y = torch.clamp(torch.clamp(y, max=levels), min=0.0)
    codes = y.to(torch.int32).to(torch.uint8)
    params = torch.stack([lo, scale], dim=1).contiguous().view(torch.uint8).reshape(-1)
    return torch.cat([params, _pack_codes(codes, bits)])


def _minmax_decode(payload: torch.Tensor, n: int, bits: int, block_size: int, name: str) -> torch.Tensor:
    """Float32 values (flat) from a min_max payload."""
    dev = payload.device
    nb = _num_blocks(n, block_size)
    if nb == 0:
        return torch.empty(0, dtype=torch.float32, device=dev)
    params = payload[: nb * 8].clone().view(torch.float32).view(nb, 2)
    lo, scale = params[:, 0], params[:, 1]
    ok = torch.isfinite(lo) & torch.isfinite(scale) & (scale >= 0)
    if not bool(ok.all()):
        blk = int((~ok).nonzero()[0, 0])
        raise CodecError(
            f"tensor '{name}': min_max block {blk} has invalid parameters (min {float(lo[blk])}, scale "
            f"{float(scale[blk])}); the frame is corrupt"
        )
    codes = _unpack_codes(payload[nb * 8 :], n, bits)
    bs = n if nb == 1 else block_size
    if nb > 1:
        blk_of = torch.arange(n, device=dev) // bs
        lo, scale = lo[blk_of], scale[blk_of]
    return lo + codes.to(torch.float32) * scale


def _f32_bits(f: torch.Tensor) -> torch.Tensor:
    """float32 bit patterns as non-negative int64."""
    return f.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF


def _to_half_bits(x: torch.Tensor, bf16: bool) -> torch.Tensor:
    """elem.h's f32_to_f16 / f32_to_bf16 (float64 rounds to float32 first) as int64 16-bit patterns."""
    f = x.to(torch.float32)
    u = _f32_bits(f)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    if bf16:
        rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
        return torch.where(nan, (u >> 16) | 0x40, rounded) & 0xFFFF
    # torch's float32 -> float16 rounds to nearest even (overflow to inf, subnormals) like the C++;
    # NaNs keep their payload, quieted, as the C++ does.
    h = f.to(torch.float16).view(torch.int16).to(torch.int64) & 0xFFFF
    return torch.where(nan, ((u >> 16) & 0x8000) | 0x7E00 | ((u >> 13) & 0x3FF), h)


def _from_half_bits(h: torch.Tensor, bf16: bool) -> torch.Tensor:
    """int64 16-bit patterns -> float32 (exact; NaNs quieted as the C++ does)."""
    if bf16:
        return (h << 16).to(torch.int32).view(torch.float32)
    f = h.to(torch.int16).view(torch.float16).to(torch.float32)
    nan = ((h & 0x7C00) == 0x7C00) & ((h & 0x3FF) != 0)
    bits = ((h & 0x8000) << 16) | 0x7F800000 | 0x400000 | ((h & 0x3FF) << 13)
    return torch.where(nan, bits.to(torch.int32).view(torch.float32), f)


def _store(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float32 values stored as E::store does (float64 widens exactly; halves round to nearest even)."""
    if dtype == torch.float32:
        return v
    if dtype in (torch.float16, torch.bfloat16):
        return _from_bits16(_to_half_bits(v, dtype == torch.bfloat16), dtype)
    return v.to(dtype)


def _from_bits16(h: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return h.to(torch.int32).to(torch.int16).view(dtype)


def _topk_encode(
    x: torch.Tensor, k: int, value_bits: int, block_size: int, stochastic: bool, seed: int, name: str
) -> torch.Tensor:
    dev = x.device
    n = x.numel()
    if k == 0:
        return torch.empty(0, dtype=torch.uint8, device=dev)
    iw = 8 if n > (1 << 32) else 4
    key = _f32_bits(x.to(torch.float32)) & 0x7FFFFFFF
    if bool((key > 0x7F800000).any()):
        raise CodecError(f"tensor '{name}' contains NaN; topk cannot rank it: fix the values or use no_compress")
    thr = torch.topk(key, k, sorted=False).values.min()
    gt = key > thr
    ties = k - gt.sum()
    eq = key == thr
    keep = gt | (eq & (torch.cumsum(eq.to(torch.int64), 0) <= ties))  # ties: lowest indices first
    idx = keep.nonzero().flatten()
    idx_bytes = idx.to(torch.int64).view(torch.uint8).view(-1, 8)[:, :iw].reshape(-1)
    if value_bits == 0:
        vals = x[idx].contiguous().view(torch.uint8).reshape(-1)
    else:
        vals = _minmax_encode(x[idx].to(torch.float32), value_bits, block_size, stochastic, seed, name)
    return torch.cat([idx_bytes, vals])


def _topk_decode(
    payload: torch.Tensor, n: int, dtype: torch.dtype, k: int, value_bits: int, block_size: int, name: str
) -> torch.Tensor:
    dev = payload.device
    out = torch.zeros(n, dtype=dtype, device=dev)
    if k == 0:
        return out
    iw = 8 if n > (1 << 32) else 4
    raw = torch.zeros(k, 8, dtype=torch.uint8, device=dev)
    raw[:, :iw] = payload[: k * iw].view(k, iw)
    idx = raw.view(torch.int64).reshape(-1)
    ok_range = (idx >= 0) & (idx < n)
    ok_order = torch.ones_like(ok_range)
    ok_order[1:] = idx[1:] > idx[:-1]
    ok = ok_range & ok_order
    if not bool(ok.all()):
        j = int((~ok).nonzero()[0, 0])
        prev = int(idx[j - 1]) if j > 0 else 0
        raise CodecError(
            f"tensor '{name}': topk index #{j} is {int(idx[j]) % _U64} (previous {prev}, numel {n}); "
            "indices must be increasing and in range: the frame is corrupt"
        )
    vals = payload[k * iw :]
    if value_bits == 0:
        out[idx] = vals.clone().view(dtype)
    else:
        out[idx] = _store(_minmax_decode(vals, k, value_bits, block_size, name), dtype)
    return out


def encode(spec: Any, x: torch.Tensor, name: str = "tensor") -> torch.Tensor:
    """The C++ codec's payload for tensor ``x`` (flattened in C order) under ``spec`` (a
    ``CodecSpec``), as a uint8 tensor on ``x``'s device. Raises ``CodecError`` where the C++ does."""
    x = x.detach().reshape(-1)
    _check(spec, x.dtype, x.numel(), name)
    t = spec.type
    if t == _MINMAX:
        out = _minmax_encode(x, spec.bit_num, spec.block_size, spec.stochastic, spec.seed, name)
    elif t in (_FP16, _BF16):
        out = _from_bits16(_to_half_bits(x, t == _BF16), torch.int16).view(torch.uint8).reshape(-1)
    else:
        out = _topk_encode(x, spec.topk_count, spec.value_bits, spec.block_size, spec.stochastic, spec.seed, name)
    return out


def decode(spec: Any, payload: torch.Tensor, dtype: torch.dtype, shape: tuple[int, ...], name: str = "tensor") -> torch.Tensor:
    """The tensor the C++ codec decodes from ``payload`` (uint8 tensor, any device; the result is on
    the same device). Raises ``CodecError`` for a payload of the wrong size or corrupt content."""
    n = math.prod(shape)
    _check(spec, dtype, n, name)
    want = encoded_size(spec, dtype, n, name)
    if payload.dtype != torch.uint8 or payload.dim() != 1:
        raise TypeError(f"tensor '{name}': the payload must be a 1-D uint8 tensor, got {payload.dtype} {tuple(payload.shape)}")
    if payload.numel() != want:
        raise CodecError(f"tensor '{name}': {spec.name} data is {payload.numel()} bytes, expected {want}")
    t = spec.type
    if t == _MINMAX:
        v = _store(_minmax_decode(payload, n, spec.bit_num, spec.block_size, name), dtype)
    elif t in (_FP16, _BF16):
        h = payload.clone().view(torch.int16).to(torch.int64) & 0xFFFF
        v = _from_half_bits(h, t == _BF16).to(dtype)
    else:
        v = _topk_decode(payload, n, dtype, spec.topk_count, spec.value_bits, spec.block_size, name)
    return v.view(shape)
