"""Tensor codecs against NumPy, NumPy's float16 cast, zstandard and lz4, in one run.

For a 64 MiB float32 random-normal tensor and a realistic activation (GELU of a random linear
layer's output, 64 MiB), per codec and bit width: encode and decode GB/s (of float32 input, steady
state: preallocated outputs, median of repeated runs), compressed size ratio, max and RMS error.
splitlink runs on one thread (the fair comparison with NumPy) and on all cores. Baselines in the
same run: a plain NumPy 8-bit and 4-bit min-max (below) writing into preallocated ``out=``
buffers like the kernels do (the fair baseline), and the same allocating its outputs on every
call (as it is usually written); NumPy float16 casting, zstandard level 1 and lz4 on the raw
floats (lossless references).

Then what a user of the public API gets, in this (default) process: ``wire.pack(...,
compress=min_max 8-bit)``, ``wire.unpack(frame).tensors["x"]`` and a sum of the result, against
the same round trip in naive NumPy (allocating, as users write it, one thread), timed in turns;
and ``wire.unpack`` of the compressed frame against the decode kernel alone into a preallocated
tensor (both on all cores). ``--json`` prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np
import torch

from _common import interleaved_medians, median_time
from splitlink import CompressConfig, _core, wire

MiB = 1 << 20
F32 = 1  # wire dtype code of float32


# ---- NumPy baselines (what a careful user would write without a native core) -----------------


def np_minmax_encode(x: np.ndarray, bits: int) -> tuple[float, float, np.ndarray]:
    lo, hi = float(x.min()), float(x.max())
    levels = (1 << bits) - 1
    scale = (hi - lo) / levels if hi > lo else 1.0
    q = np.rint((x - lo) / scale).astype(np.uint8)
    if bits == 4:
        q = q[0::2] | (q[1::2] << 4)
    return lo, scale, q


def np_minmax_decode(enc: tuple[float, float, np.ndarray], bits: int, n: int) -> np.ndarray:
    lo, scale, q = enc
    if bits == 4:
        codes = np.empty(n, dtype=np.uint8)
        codes[0::2] = q & 0x0F
        codes[1::2] = q >> 4
        q = codes
    return q.astype(np.float32) * np.float32(scale) + np.float32(lo)


class NumpyMinMaxOut:
    """The same NumPy min-max, every step written into buffers allocated once (``out=``): what the
    kernels are measured with (preallocated outputs), so no page faults in either. Same operations
    in the same order as the allocating version, so the same results."""

    def __init__(self, n: int, bits: int) -> None:
        self.bits = bits
        self.tmp = np.zeros(n, dtype=np.float32)
        self.codes = np.zeros(n, dtype=np.uint8)
        self.packed = np.zeros(n // 2, dtype=np.uint8) if bits == 4 else self.codes
        self.out = np.zeros(n, dtype=np.float32)

    def encode(self, x: np.ndarray) -> tuple[float, float, np.ndarray]:
        lo, hi = float(x.min()), float(x.max())
        scale = (hi - lo) / ((1 << self.bits) - 1) if hi > lo else 1.0
        np.subtract(x, lo, out=self.tmp)
        np.divide(self.tmp, scale, out=self.tmp)
        np.rint(self.tmp, out=self.tmp)
        np.copyto(self.codes, self.tmp, casting="unsafe")
        if self.bits == 4:
            np.left_shift(self.codes[1::2], 4, out=self.packed)
            np.bitwise_or(self.packed, self.codes[0::2], out=self.packed)
        return lo, scale, self.packed

    def decode(self, enc: tuple[float, float, np.ndarray]) -> np.ndarray:
        lo, scale, q = enc
        if self.bits == 4:
            np.bitwise_and(q, 0x0F, out=self.codes[0::2])
            np.right_shift(q, 4, out=self.codes[1::2])
            q = self.codes
        np.multiply(q, np.float32(scale), out=self.out)
        np.add(self.out, np.float32(lo), out=self.out)
        return self.out


# ---- inputs ---------------------------------------------------------------------------------


def inputs() -> dict[str, np.ndarray]:
    g = torch.Generator().manual_seed(0)
    normal = torch.randn(64 * MiB // 4, generator=g)
    tokens = torch.randn(16384, 256, generator=g)
    weight = torch.randn(256, 1024, generator=g) / 16
    activation = torch.nn.functional.gelu(tokens @ weight).reshape(-1)
    return {"normal": normal.numpy(), "gelu_activation": activation.contiguous().numpy()}


CODECS: dict[str, CompressConfig] = {
    "min_max 8-bit": CompressConfig("min_max", bit_num=8),
    "min_max 4-bit": CompressConfig("min_max", bit_num=4),
    "min_max 2-bit": CompressConfig("min_max", bit_num=2),
    "min_max 8-bit block 256": CompressConfig("min_max", bit_num=8, block_size=256),
    "min_max 8-bit stochastic": CompressConfig("min_max", bit_num=8, stochastic=True, seed=0),
    "fp16": CompressConfig("fp16"),
    "bf16": CompressConfig("bf16"),
    "topk 1% raw": CompressConfig("topk", ratio=0.01),
    "topk 1% 8-bit values": CompressConfig("topk", ratio=0.01, value_bit_num=8),
}


def errors(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    d = y.astype(np.float64) - x
    return float(np.abs(d).max()), float(np.sqrt(np.mean(d * d)))


def measure_codecs(x: np.ndarray, repeat: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    n = x.size
    dec = np.empty_like(x)
    for name, config in CODECS.items():
        spec = config.spec(n)
        size = _core.codec.encoded_size(spec, F32, n)
        enc = np.empty(size, dtype=np.uint8)
        row: dict[str, float] = {"ratio": x.nbytes / size}
        for label, threads in (("1t", 1), ("all", 0)):
            te = median_time(lambda: _core.codec.encode(spec, F32, x, enc, "x", None, threads), repeat)
            td = median_time(lambda: _core.codec.decode(spec, F32, enc, 0, size, dec, "x", threads), repeat)
            row[f"encode_gbps_{label}"] = x.nbytes / te / 1e9
            row[f"decode_gbps_{label}"] = x.nbytes / td / 1e9
            row[f"encode_s_{label}"] = te
            row[f"decode_s_{label}"] = td
        row["max_err"], row["rms_err"] = errors(x, dec)
        out[name] = row
    return out


def measure_baselines(x: np.ndarray, repeat: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    n = x.size
    for bits in (8, 4):
        fair = NumpyMinMaxOut(n, bits)
        enc = fair.encode(x)
        te = median_time(lambda: fair.encode(x), repeat)
        td = median_time(lambda: fair.decode(enc), repeat)
        mx, rms = errors(x, fair.decode(enc))
        out[f"numpy min_max {bits}-bit"] = {
            "encode_gbps_1t": x.nbytes / te / 1e9,
            "decode_gbps_1t": x.nbytes / td / 1e9,
            "encode_s_1t": te,
            "decode_s_1t": td,
            "ratio": x.nbytes / (enc[2].nbytes + 8),
            "max_err": mx,
            "rms_err": rms,
        }
        enc = np_minmax_encode(x, bits)
        te = median_time(lambda: np_minmax_encode(x, bits), repeat)
        td = median_time(lambda: np_minmax_decode(enc, bits, n), repeat)
        y = np_minmax_decode(enc, bits, n)
        mx, rms = errors(x, y)
        out[f"numpy min_max {bits}-bit alloc"] = {
            "encode_gbps_1t": x.nbytes / te / 1e9,
            "decode_gbps_1t": x.nbytes / td / 1e9,
            "encode_s_1t": te,
            "decode_s_1t": td,
            "ratio": x.nbytes / (enc[2].nbytes + 8),
            "max_err": mx,
            "rms_err": rms,
        }
    # Memory floor: one read pass over the input (NumPy's max is vectorized). Whole-tensor min_max
    # must read the input twice (min/max first, then quantize), so its one-core bound is half this.
    tr = median_time(lambda: x.max(), repeat)
    out["one read pass (numpy max)"] = {
        "encode_gbps_1t": x.nbytes / tr / 1e9,
        "decode_gbps_1t": float("nan"),
        "encode_s_1t": tr,
        "decode_s_1t": float("nan"),
        "ratio": float("nan"),
        "max_err": float("nan"),
        "rms_err": float("nan"),
    }
    half = np.empty(n, dtype=np.float16)
    back = np.empty_like(x)
    te = median_time(lambda: np.copyto(half, x, casting="same_kind"), repeat)
    td = median_time(lambda: np.copyto(back, half), repeat)
    mx, rms = errors(x, back)
    out["numpy float16 cast"] = {
        "encode_gbps_1t": x.nbytes / te / 1e9,
        "decode_gbps_1t": x.nbytes / td / 1e9,
        "encode_s_1t": te,
        "decode_s_1t": td,
        "ratio": 2.0,
        "max_err": mx,
        "rms_err": rms,
    }
    raw = x.tobytes()
    try:
        import zstandard

        cctx, dctx = zstandard.ZstdCompressor(level=1), zstandard.ZstdDecompressor()
        comp = cctx.compress(raw)
        te = median_time(lambda: cctx.compress(raw), max(3, repeat // 3))
        td = median_time(lambda: dctx.decompress(comp), max(3, repeat // 3))
        out["zstd level 1 (lossless)"] = {
            "encode_gbps_1t": x.nbytes / te / 1e9,
            "decode_gbps_1t": x.nbytes / td / 1e9,
            "encode_s_1t": te,
            "decode_s_1t": td,
            "ratio": len(raw) / len(comp),
            "max_err": 0.0,
            "rms_err": 0.0,
        }
    except ImportError:
        pass
    try:
        import lz4.frame

        comp = lz4.frame.compress(raw)
        te = median_time(lambda: lz4.frame.compress(raw), max(3, repeat // 3))
        td = median_time(lambda: lz4.frame.decompress(comp), max(3, repeat // 3))
        out["lz4 (lossless)"] = {
            "encode_gbps_1t": x.nbytes / te / 1e9,
            "decode_gbps_1t": x.nbytes / td / 1e9,
            "encode_s_1t": te,
            "decode_s_1t": td,
            "ratio": len(raw) / len(comp),
            "max_err": 0.0,
            "rms_err": 0.0,
        }
    except ImportError:
        pass
    return out


def measure_api(x: np.ndarray, repeat: int) -> dict[str, float]:
    """The public API's round trip against naive NumPy, and unpack against the decode kernel, in
    this process as it is (no allocator tuning): steady state, timed in turns."""
    t = torch.from_numpy(x)
    cfg = {"x": CompressConfig("min_max", bit_num=8)}

    def api_round_trip() -> float:
        frame = wire.pack({"x": t}, compress=cfg)
        return float(wire.unpack(frame).tensors["x"].sum())

    def numpy_round_trip() -> float:
        return float(np_minmax_decode(np_minmax_encode(x, 8), 8, x.size).sum())

    frame = wire.pack({"x": t}, compress=cfg, pool=None)
    mv = memoryview(frame)
    ((_, code, _, offset, length, spec),) = _core.wire.decode_header(mv)[7]
    dst = np.zeros_like(x)  # mapped, as the kernel rows above measure it
    times = interleaved_medians(
        {
            "api_round_trip": api_round_trip,
            "numpy_round_trip": numpy_round_trip,
            "pack": lambda: wire.pack({"x": t}, compress=cfg),
            "unpack": lambda: wire.unpack(frame).tensors["x"],
            "decode_kernel": lambda: _core.codec.decode(spec, code, mv, offset, length, dst, "x"),
        },
        repeat,
    )
    return {f"{k}_ms": v * 1e3 for k, v in times.items()}


def targets(codecs: dict[str, dict[str, float]], base: dict[str, dict[str, float]]) -> dict[str, float]:
    def rt(row: dict[str, float]) -> float:
        return row["encode_s_1t"] + row["decode_s_1t"]

    m8 = codecs["min_max 8-bit"]
    return {
        "minmax8_vs_numpy_1t": rt(base["numpy min_max 8-bit"]) / rt(m8),
        "minmax8_vs_numpy_alloc_1t": rt(base["numpy min_max 8-bit alloc"]) / rt(m8),
        "minmax8_encode_gbps_1t": m8["encode_gbps_1t"],
        "minmax8_encode_vs_two_pass_bound_1t": m8["encode_gbps_1t"] / (base["one read pass (numpy max)"]["encode_gbps_1t"] / 2),
        "minmax8_block_encode_gbps_1t": codecs["min_max 8-bit block 256"]["encode_gbps_1t"],
        "minmax4_time_vs_8bit_1t": rt(codecs["min_max 4-bit"]) / rt(m8),
        "minmax2_time_vs_8bit_1t": rt(codecs["min_max 2-bit"]) / rt(m8),
        "minmax4_vs_numpy4_1t": rt(base["numpy min_max 4-bit"]) / rt(codecs["min_max 4-bit"]),
        "minmax4_vs_numpy4_alloc_1t": rt(base["numpy min_max 4-bit alloc"]) / rt(codecs["min_max 4-bit"]),
        "fp16_vs_numpy_cast_1t": rt(base["numpy float16 cast"]) / rt(codecs["fp16"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--repeat", type=int, default=9, help="timed runs per measurement (median reported)")
    args = ap.parse_args()
    report: dict[str, Any] = {"threads": _core.num_threads(), "inputs": {}}
    for name, x in inputs().items():
        codecs = measure_codecs(x, args.repeat)
        base = measure_baselines(x, args.repeat)
        api = measure_api(x, args.repeat)
        t = targets(codecs, base)
        t["api_round_trip_vs_numpy_alloc"] = api["numpy_round_trip_ms"] / api["api_round_trip_ms"]
        t["unpack_vs_decode_kernel"] = api["unpack_ms"] / api["decode_kernel_ms"]
        report["inputs"][name] = {"codecs": codecs, "baselines": base, "api": api, "targets": t}
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return
    print(f"splitlink codec benchmark: 64 MiB float32 inputs, median of {args.repeat} runs, {report['threads']} threads")
    for name, r in report["inputs"].items():
        print(f"\n== {name} ==")
        print(
            f"{'codec':<27}{'enc GB/s 1t':>12}{'dec GB/s 1t':>12}{'enc GB/s all':>13}{'dec GB/s all':>13}{'ratio':>8}"
            f"{'max err':>11}{'rms err':>11}"
        )
        for cname, row in {**r["codecs"], **r["baselines"]}.items():
            enc_all = f"{row['encode_gbps_all']:.2f}" if "encode_gbps_all" in row else "-"
            dec_all = f"{row['decode_gbps_all']:.2f}" if "decode_gbps_all" in row else "-"
            print(
                f"{cname:<27}{row['encode_gbps_1t']:>12.2f}{row['decode_gbps_1t']:>12.2f}{enc_all:>13}{dec_all:>13}"
                f"{row['ratio']:>8.2f}{row['max_err']:>11.3g}{row['rms_err']:>11.3g}"
            )
        t = r["targets"]
        print(
            f"min_max 8-bit encode+decode vs NumPy with out= buffers (1 thread): {t['minmax8_vs_numpy_1t']:.1f}x "
            f"(target >= 5x); vs NumPy allocating: {t['minmax8_vs_numpy_alloc_1t']:.1f}x"
        )
        print(
            f"min_max 8-bit encode on one core: {t['minmax8_encode_gbps_1t']:.2f} GB/s (target >= 4); "
            f"{t['minmax8_encode_vs_two_pass_bound_1t']:.2f} of this machine's two-read-pass bound; "
            f"one-pass blocked variant: {t['minmax8_block_encode_gbps_1t']:.2f} GB/s"
        )
        print(
            f"4-bit / 2-bit time relative to 8-bit: {t['minmax4_time_vs_8bit_1t']:.2f} / "
            f"{t['minmax2_time_vs_8bit_1t']:.2f} (target <= 1.5); 4-bit vs NumPy 4-bit: {t['minmax4_vs_numpy4_1t']:.1f}x "
            f"(allocating: {t['minmax4_vs_numpy4_alloc_1t']:.1f}x)"
        )
        print(f"fp16 encode+decode vs NumPy float16 cast (1 thread): {t['fp16_vs_numpy_cast_1t']:.1f}x (target >= 3x)")
        a = r["api"]
        print(
            f"public API, this default process, {report['threads']} threads: pack {a['pack_ms']:.2f} ms, unpack "
            f"{a['unpack_ms']:.2f} ms, round trip + sum {a['api_round_trip_ms']:.2f} ms; naive NumPy (allocating, "
            f"1 thread) {a['numpy_round_trip_ms']:.2f} ms: {t['api_round_trip_vs_numpy_alloc']:.1f}x (target >= 5x)"
        )
        print(
            f"unpack of the compressed frame / decode kernel into a preallocated tensor ({a['decode_kernel_ms']:.2f} ms): "
            f"{t['unpack_vs_decode_kernel']:.2f} (target <= 1.5)"
        )


if __name__ == "__main__":
    main()
