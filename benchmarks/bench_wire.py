"""Frame packing and unpacking against the usual ways of turning tensors into bytes.

One run measures, for one 64 MiB float32 tensor and for 8 x 8 MiB tensors, the steady-state
time (median of repeated runs after warm-up) of:

* splitlink: ``wire.pack`` (pooled buffer) and ``wire.unpack`` (zero-copy views);
* copy into a preallocated array (``np.copyto``): the memory-speed floor;
* ``tobytes()`` / ``np.frombuffer``;
* pickle protocol 5 (in-band) of the numpy arrays;
* ``torch.save`` / ``torch.load`` through BytesIO;
* ``np.save`` / ``np.load`` through BytesIO (Flower's serde path);
* a naive protobuf Frame built from ``tensor.numpy().tobytes()`` with SerializeToString /
  ParseFromString (frame.proto compiled with grpcio-tools);

then prints the ratios the Foundation issue sets targets for. The baselines run on one thread;
splitlink's speed-ups are printed for its default (all cores) and, beside them, for splitlink on
one thread (``splitlink 1 thread``: ``pack(..., threads=1)`` with the native thread count set to 1),
the like-for-like comparison. ``--json`` prints JSON instead.
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import platform
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import splitlink
from _common import median_time
from splitlink import _core, wire
from splitlink.protos import compile_python

MiB = 1 << 20


def scenarios() -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return {
        "1x64MiB": {"hidden_states": torch.randn(64 * MiB // 4, generator=g)},
        "8x8MiB": {f"t{i}": torch.randn(8 * MiB // 4, generator=g) for i in range(8)},
    }


def measure(tensors: dict[str, torch.Tensor], pb2: Any, repeat: int, warmup: int) -> dict[str, dict[str, float]]:
    arrays = {k: v.numpy() for k, v in tensors.items()}
    nbytes = sum(a.nbytes for a in arrays.values())
    results: dict[str, dict[str, float]] = {}

    def record(name: str, pack: Callable[[], Any], unpack: Callable[[Any], Any]) -> None:
        packed = pack()
        results[name] = {
            "pack_s": median_time(pack, repeat, warmup),
            "unpack_s": median_time(lambda: unpack(packed), repeat, warmup),
        }

    # splitlink: the pool hands back the same buffer once the previous frame is dropped.
    record("splitlink", lambda: wire.pack(tensors, sender="leader", kind="forward"), lambda f: wire.unpack(f))
    all_threads = _core.num_threads()
    _core.set_num_threads(1)
    try:
        record(
            "splitlink 1 thread",
            lambda: wire.pack(tensors, sender="leader", kind="forward", threads=1),
            lambda f: wire.unpack(f),
        )
    finally:
        _core.set_num_threads(all_threads)
    out = bytearray(wire.packed_size(tensors, sender="leader", kind="forward"))
    record("splitlink out=", lambda: wire.pack(tensors, sender="leader", kind="forward", out=out), lambda f: wire.unpack(f))

    dst = {k: np.empty_like(a) for k, a in arrays.items()}
    for a in dst.values():
        a.fill(0)  # mapped: this is the memory-speed floor, not a page-fault measurement

    def copy_in() -> None:
        for k, a in arrays.items():
            np.copyto(dst[k], a)

    results["copy into preallocated"] = {"pack_s": median_time(copy_in, repeat, warmup), "unpack_s": 0.0}

    record(
        "tobytes/frombuffer",
        lambda: {k: a.tobytes() for k, a in arrays.items()},
        lambda d: {k: np.frombuffer(b, dtype=np.float32) for k, b in d.items()},
    )
    record("pickle protocol 5", lambda: pickle.dumps(arrays, protocol=5), pickle.loads)

    def torch_save() -> bytes:
        buf = io.BytesIO()
        torch.save(tensors, buf)
        return buf.getvalue()

    record("torch.save/load", torch_save, lambda b: torch.load(io.BytesIO(b), weights_only=True))

    def np_save() -> dict[str, bytes]:
        out = {}
        for k, a in arrays.items():
            buf = io.BytesIO()
            np.save(buf, a, allow_pickle=False)
            out[k] = buf.getvalue()
        return out

    record("np.save/load", np_save, lambda d: {k: np.load(io.BytesIO(b), allow_pickle=False) for k, b in d.items()})

    def pb_pack() -> bytes:
        msg = pb2.Frame(version=1, sender="leader", kind="forward")
        parts = []
        offset = 0
        for k, a in arrays.items():
            data = a.tobytes()
            desc = msg.tensors.add(dtype=1, offset=offset, length=len(data))
            desc.path.append(k)
            desc.shape.extend(a.shape)
            parts.append(data)
            offset += len(data)
        msg.payload = b"".join(parts)
        return msg.SerializeToString()

    def pb_unpack(raw: bytes) -> dict[str, np.ndarray]:
        msg = pb2.Frame()
        msg.ParseFromString(raw)
        return {
            t.path[0]: np.frombuffer(msg.payload, dtype=np.float32, count=t.length // 4, offset=t.offset).reshape(tuple(t.shape))
            for t in msg.tensors
        }

    record("naive protobuf", pb_pack, pb_unpack)

    for r in results.values():
        r["total_s"] = r["pack_s"] + r["unpack_s"]
        r["pack_gbps"] = nbytes / r["pack_s"] / 1e9
        r["unpack_gbps"] = nbytes / r["unpack_s"] / 1e9 if r["unpack_s"] > 0 else float("inf")
    return results


def ratios(results: dict[str, dict[str, float]]) -> dict[str, float]:
    sl, sl1 = results["splitlink"], results["splitlink 1 thread"]
    out = {
        "pack_vs_copy_floor": results["copy into preallocated"]["pack_s"] / sl["pack_s"],
        "pack_1thread_vs_copy_floor": results["copy into preallocated"]["pack_s"] / results["splitlink 1 thread"]["pack_s"],
        "unpack_ms": sl["unpack_s"] * 1e3,
    }
    for name in ("tobytes/frombuffer", "pickle protocol 5", "torch.save/load", "np.save/load", "naive protobuf"):
        out[f"speedup_vs_{name}"] = results[name]["total_s"] / sl["total_s"]
        out[f"speedup_1thread_vs_{name}"] = results[name]["total_s"] / sl1["total_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print JSON instead of tables")
    ap.add_argument("--repeat", type=int, default=15, help="timed runs per measurement (median reported)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed runs before timing")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        pb2 = compile_python(tmp)
    report: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "splitlink": splitlink.__version__,
            "threads": _core.num_threads(),
            "cpu": platform.processor() or platform.machine(),
        },
        "scenarios": {},
    }
    for name, tensors in scenarios().items():
        results = measure(tensors, pb2, args.repeat, args.warmup)
        report["scenarios"][name] = {"results": results, "ratios": ratios(results)}

    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return
    m = report["machine"]
    print(f"splitlink {m['splitlink']} wire benchmark | torch {m['torch']} numpy {m['numpy']} | {m['threads']} threads")
    print(
        f"median of {args.repeat} runs after {args.warmup} warm-up runs; steady state (buffers reused where the method allows)\n"
    )
    for name, sc in report["scenarios"].items():
        print(f"== {name} float32 ==")
        print(
            f"{'method':<24}{'pack ms':>10}{'unpack ms':>11}{'pack GB/s':>11}{'unpack GB/s':>13}{'total ms':>10}"
            f"{'vs splitlink':>14}{'vs splitlink 1t':>17}"
        )
        sl_total = sc["results"]["splitlink"]["total_s"]
        sl1_total = sc["results"]["splitlink 1 thread"]["total_s"]
        for method, r in sc["results"].items():
            unpack_gbps = "-" if r["unpack_s"] == 0 else f"{r['unpack_gbps']:.1f}"
            print(
                f"{method:<24}{r['pack_s'] * 1e3:>10.2f}{r['unpack_s'] * 1e3:>11.3f}{r['pack_gbps']:>11.2f}"
                f"{unpack_gbps:>13}{r['total_s'] * 1e3:>10.2f}{r['total_s'] / sl_total:>13.1f}x"
                f"{r['total_s'] / sl1_total:>16.1f}x"
            )
        rt = sc["ratios"]
        print(
            f"pack throughput / preallocated-copy throughput: {rt['pack_vs_copy_floor']:.2f} "
            f"({rt['pack_1thread_vs_copy_floor']:.2f} on 1 thread; target >= 0.6)"
        )
        print(f"unpack: {rt['unpack_ms']:.3f} ms (target well under 1 ms)")
        targeted = ("pickle protocol 5", "torch.save/load", "np.save/load", "naive protobuf")
        worst = min((rt[f"speedup_vs_{k}"], k) for k in targeted)
        worst1 = min((rt[f"speedup_1thread_vs_{k}"], k) for k in targeted)
        print(
            f"pack+unpack speedup, smallest over baselines: {worst[0]:.1f}x vs {worst[1]} "
            f"({worst1[0]:.1f}x vs {worst1[1]} with splitlink on 1 thread, like the baselines) "
            "(target >= 5x vs pickle, torch.save, np.save, naive protobuf)\n"
        )


if __name__ == "__main__":
    main()
