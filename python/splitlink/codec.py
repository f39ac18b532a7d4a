"""Compression of tensors in frames, chosen per tensor name.

``CompressConfig(compress_type, bit_num=8, **params)`` is MindSpore Federated's class with more
codecs; ``wire.pack(tensors, compress={name: config})`` applies it in the same pass that writes
the frame, and ``wire.unpack`` undoes it from the frame header alone. Codecs (encoded layouts in
``csrc/include/splitlink/codec/codec.h``):

``no_compress``
    raw bytes.
``min_max`` (float tensors)
    min-max quantization to ``bit_num`` (1..8) bits, densely bit-packed. ``block_size=N`` (a
    multiple of 8) gives every N values their own min/scale, which bounds the damage an outlier
    does. Round-to-nearest error is at most ``(max - min) / (2**bit_num - 1) / 2`` per block (plus
    float32 rounding); ``stochastic=True`` (needs ``seed=``) rounds up or down at random, unbiased,
    error below one step. NaN and Inf are rejected with ``CodecError`` naming the tensor: they have
    no place on a quantization grid.
``bit_pack`` (integer and bool tensors)
    lossless: values minus their minimum in ``bit_num`` bits; negative values work. Values spanning
    ``2**bit_num`` or more steps raise ``CodecError`` with the range found.
``fp16`` / ``bf16`` (float32 and float64 tensors)
    round-to-nearest-even downcast; decoded back to the original dtype. Overflow follows the
    casts of numpy and torch: finite values beyond fp16's range (|x| >= 65520) become +-Inf; bf16
    shares float32's range. NaN stays NaN.
``topk`` (float32, float16, bfloat16 tensors)
    keeps ``ratio`` (0 < ratio <= 1, rounded up) or ``k`` of the largest-magnitude values as
    increasing indices plus values, raw or min_max-quantized (``value_bit_num=1..8``); the rest
    decode as zero. ``error_feedback=True`` (float32 only) keeps, per tensor name, what was dropped
    and adds it to the next tensor of that name before selecting (pass an ``ErrorFeedback`` store
    to ``wire.pack``).

Lossy codecs refuse integer and bool tensors (``CodecError``), never skip them silently.
"""

from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING, Any

from splitlink import _core

if TYPE_CHECKING:
    import torch

__all__ = ["CompressConfig", "ErrorFeedback", "COMPRESS_TYPES"]

# name -> frame.proto `enum CodecType` code, as the core defines them
COMPRESS_TYPES: dict[str, int] = dict(_core.codec.CODEC_TYPES)
_NAMES = {v: k for k, v in COMPRESS_TYPES.items()}

_PARAMS: dict[str, set[str]] = {
    "no_compress": set(),
    "min_max": {"block_size", "stochastic", "seed"},
    "bit_pack": set(),
    "fp16": set(),
    "bf16": set(),
    "topk": {"ratio", "k", "value_bit_num", "block_size", "stochastic", "seed", "error_feedback"},
}


def _check_int(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < lo or (hi is not None and value > hi):
        allowed = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be in {allowed}, got {value}")
    return value


class CompressConfig:
    """How one tensor (or every tensor of one name) is compressed.

    >>> CompressConfig("min_max", bit_num=4)
    >>> CompressConfig("min_max", bit_num=8, block_size=256)
    >>> CompressConfig("topk", ratio=0.01, value_bit_num=8, error_feedback=True)
    """

    __slots__ = ("compress_type", "bit_num", "block_size", "stochastic", "seed", "ratio", "k", "value_bit_num", "error_feedback")

    def __init__(self, compress_type: str = "no_compress", bit_num: int | None = None, **params: Any) -> None:
        if compress_type not in COMPRESS_TYPES:
            raise ValueError(f"compress_type must be one of {', '.join(COMPRESS_TYPES)}; got {compress_type!r}")
        unknown = set(params) - _PARAMS[compress_type]
        if unknown:
            allowed = ", ".join(sorted(_PARAMS[compress_type])) or "none"
            raise TypeError(f"{compress_type} does not take {', '.join(sorted(unknown))}; its parameters: {allowed}")
        self.compress_type = compress_type
        if compress_type in ("min_max", "bit_pack"):
            self.bit_num = _check_int("bit_num", 8 if bit_num is None else bit_num, 1, 8)
        elif compress_type == "no_compress":
            self.bit_num = 0  # MindSpore YAML files often carry bit_num on no_compress; it is ignored
        elif bit_num is not None:
            raise ValueError(
                f"bit_num does not apply to {compress_type}" + (" (use value_bit_num)" if compress_type == "topk" else "")
            )
        else:
            self.bit_num = 0
        self.block_size = _check_int("block_size", params.get("block_size", 0), 0)
        if self.block_size % 8:
            raise ValueError(f"block_size must be a multiple of 8 (or 0 for one block per tensor), got {self.block_size}")
        self.stochastic = bool(params.get("stochastic", False))
        seed = params.get("seed")
        if self.stochastic and seed is None:
            raise ValueError("stochastic rounding needs an explicit seed=<int> (splitlink never uses global random state)")
        self.seed = None if seed is None else _check_int("seed", seed, 0, 2**64 - 1)
        self.value_bit_num = _check_int("value_bit_num", params.get("value_bit_num", 0), 0, 8)
        self.error_feedback = bool(params.get("error_feedback", False))
        ratio, k = params.get("ratio"), params.get("k")
        self.ratio: float | None = None
        self.k: int | None = None
        if compress_type == "topk":
            if (ratio is None) == (k is None):
                raise ValueError("topk needs exactly one of ratio= (0 < ratio <= 1) or k= (values to keep)")
            if ratio is not None:
                if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
                    raise ValueError(f"ratio must be a number in (0, 1], got {ratio!r}")
                self.ratio = float(ratio)
            else:
                self.k = _check_int("k", k, 0)
            if self.stochastic and self.value_bit_num == 0:
                raise ValueError("stochastic rounding applies to quantized topk values: set value_bit_num")

    def topk_count(self, numel: int) -> int:
        if self.k is not None:
            return min(self.k, numel)
        assert self.ratio is not None
        return min(numel, math.ceil(self.ratio * numel))

    def spec(self, numel: int, seq: int = 0, name: str = "") -> _core.codec.CodecSpec:
        """The native codec spec (``_core.codec.CodecSpec``) for a tensor of ``numel`` elements.

        The stochastic-rounding stream is derived from (seed, seq, name), so every frame and
        tensor gets fresh, reproducible randomness.
        """
        t = COMPRESS_TYPES[self.compress_type]
        k = self.topk_count(numel) if self.compress_type == "topk" else 0
        seed = 0
        if self.stochastic:
            digest = hashlib.blake2b(f"{self.seed}/{seq}/{name}".encode(), digest_size=8).digest()
            seed = int.from_bytes(digest, "little")
        return _core.codec.CodecSpec(
            t,
            bit_num=self.bit_num,
            block_size=self.block_size,
            topk_count=k,
            value_bits=self.value_bit_num,
            stochastic=self.stochastic,
            seed=seed,
        )

    def __repr__(self) -> str:
        fields = [repr(self.compress_type)]
        if self.bit_num:
            fields.append(f"bit_num={self.bit_num}")
        for name in ("block_size", "value_bit_num"):
            if getattr(self, name):
                fields.append(f"{name}={getattr(self, name)}")
        for name in ("ratio", "k", "seed"):
            if getattr(self, name) is not None:
                fields.append(f"{name}={getattr(self, name)}")
        for name in ("stochastic", "error_feedback"):
            if getattr(self, name):
                fields.append(f"{name}=True")
        return f"CompressConfig({', '.join(fields)})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompressConfig):
            return NotImplemented
        return all(getattr(self, s) == getattr(other, s) for s in self.__slots__)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, s) for s in self.__slots__))


def codec_name(code: int) -> str:
    return _NAMES.get(code, f"unknown({code})")


class ErrorFeedback:
    """Residuals of error-feedback compression, one float32 tensor per tensor name.

    The sender owns one store per peer; ``wire.pack(..., error_feedback=store)`` adds the stored
    residual to each tensor whose config has ``error_feedback=True`` and stores what the new
    encoding dropped. ``state_dict``/``load_state_dict`` make it part of a checkpoint.
    """

    def __init__(self) -> None:
        self.residuals: dict[str, torch.Tensor] = {}

    def prepare(self, name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(tensor to encode = x + residual, buffer the encoder writes the new residual into)."""
        import torch  # here, not at module level: splitlink.config imports this module and stays torch-free

        if x.dtype != torch.float32:
            raise ValueError(f"error feedback needs a float32 tensor; '{name}' is {x.dtype}")
        r = self.residuals.get(name)
        if r is None or r.shape != x.shape:
            if r is not None:
                raise ValueError(
                    f"tensor '{name}' changed shape from {tuple(r.shape)} to {tuple(x.shape)} under error feedback; "
                    "call reset(name) when that is intended"
                )
            r = torch.zeros(x.shape, dtype=torch.float32)
            self.residuals[name] = r
        return (x.detach().cpu() + r).contiguous(), r

    def reset(self, name: str | None = None) -> None:
        if name is None:
            self.residuals.clear()
        else:
            self.residuals.pop(name, None)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.residuals.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        import torch

        self.residuals = {k: v.clone().to(torch.float32) for k, v in state.items()}
