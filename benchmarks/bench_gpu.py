"""Split training on a GPU: step times against central training, and the GPU exchange path's throughput.

In ONE run (medians of --steps timed steps after --warmup; every ratio against a baseline measured in
this run), for Pangu-alpha (default 350M: d=1280, 16 layers, seq 1024) at --batch, in fp32 and bf16
(bf16: the models built in bf16; the DeepSpeed variants use DeepSpeed's bf16 mode):

* ``central``: the unsplit model, plain PyTorch (forward, backward, the optimizer FLModel builds);
* ``central_ds``: the unsplit model under DeepSpeed ZeRO-2;
* ``split_ref``: party A (embedding + head) and party B (backbone) as the pangu example's parties in
  one process, tensors passed by reference (InProcessCommunicator);
* ``split_ds``: the same with party B under DeepSpeed (the example's ZeRO-2 config);
* ``split_pack`` / ``split_pack_8bit``: tensors through wire.pack/unpack in process (frames from and
  into device memory), without and with the YAML's 8-bit codecs;
* ``two_process`` / ``two_process_8bit``: the example's two parties as two processes over mutual TLS
  on loopback, sharing the GPU (fp32 only; party B without DeepSpeed, as ``central``).

Then, on a 64 MiB float32 tensor: ``wire.pack`` from device memory against torch's copy into pinned
memory, ``wire.unpack(..., device=)`` against torch's pinned-to-device copy; the GPU min_max 8-bit
codec (splitlink.codec_torch) encode+decode against a naive torch min-max and the C++ codec (CPU).

``--quick``: fewer steps (<= 5 min on one H200). ``--device cpu --config tiny``: a smoke run of every
path on a CPU-only machine (the tests run it); without ``--device cpu`` a machine without CUDA gets a
message and exit status 2. ``--json`` prints JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "examples" / "splitnn_pangu_alpha" / "run_pangu_train.py"


def sync(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[int], Any], steps: int, warmup: int, device: Any) -> float:
    """Median ms of ``steps`` calls after ``warmup`` (the device synchronized around each)."""
    for s in range(warmup):
        step(s)
    sync(device)
    times = []
    for s in range(warmup, warmup + steps):
        t0 = time.perf_counter()
        step(s)
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def make_data(out: Path, cfg: Any, rows: int) -> Path:
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, cfg.vocab_size, size=rows * cfg.seq_length, dtype=np.int64)
    tokens[::997] = 0  # EOD now and then: attention masks with document boundaries
    np.save(out / "tokens.npy", tokens)
    (out / "meta.json").write_text(json.dumps({"eod": 0, "vocab_size": cfg.vocab_size}))
    return out


@contextlib.contextmanager
def default_dtype(dtype: Any) -> Any:
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def free(device: Any) -> None:
    import torch

    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


class Whole:
    """The unsplit Pangu model: loss of a batch (for the central runs)."""

    def __init__(self, cfg: Any, seed: int) -> None:
        import torch
        from torch import nn

        from splitlink.examples import pangu

        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                torch.manual_seed(seed)
                self.emb = pangu.EmbeddingNet(cfg)
                torch.manual_seed(seed + 2)
                self.head = pangu.HeadNet(cfg)
                torch.manual_seed(seed + 1)
                self.bb = pangu.BackboneNet(cfg)

            def forward(self, ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
                x, table, m = self.emb(ids, pos, mask)
                return self.head(self.bb(x, m), ids, table, pos, m)

        self.net = Net()


def model_variants(a: argparse.Namespace, dtype_name: str, data_dir: Path, only: set[str]) -> dict[str, float]:
    import torch

    from splitlink.channel import InProcessCommunicator, ServerConfig
    from splitlink.examples import pangu
    from splitlink.model.engine import in_engine, initialize_engine
    from splitlink.runtime.party import agree_locally

    dev = torch.device(a.device)
    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    cfg = pangu.CONFIGS[a.config]
    data = pangu.TokenDataset(data_dir, cfg.seq_length)
    rows = lambda s: [((s * a.batch + i) % len(data)) for i in range(a.batch)]  # noqa: E731
    batches = {}

    def batch(s: int) -> dict[str, torch.Tensor]:
        if s not in batches:
            batches[s] = {k: v.to(dev) for k, v in data.batch(rows(s)).items()}
        return batches[s]

    out: dict[str, float] = {}
    train = pangu.TrainConfig(seed=0, batch_size=a.batch, device=str(dev), lr=1e-4, log_every=10**9)
    ds_cfg = {
        "zero_optimization": {"stage": 2},
        "train_micro_batch_size_per_gpu": a.batch,
        "bf16": {"enabled": dtype_name == "bf16"},
    }

    if "central" in only:
        with default_dtype(dtype):
            w = Whole(cfg, 0).net.to(dev)
        ref = pangu.FLModel(pangu.FLYamlData(pangu.YAMLS / "embedding.yaml"), pangu.EmbeddingNet(pangu.CONFIGS["tiny"]))
        cls = type(ref.optimizers[0])  # the optimizer FLModel builds from the YAML, with its settings
        accepted = inspect.signature(cls).parameters
        opt = cls(w.parameters(), **{k: v for k, v in {**ref.optimizers[0].defaults, "lr": 1e-4}.items() if k in accepted})

        def central(s: int) -> None:
            b = batch(s)
            loss = w(b["input_ids"], b["position_id"], b["attention_mask"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        out["central"] = timed(central, a.steps, a.warmup, dev)
        del w, opt, ref
        free(dev)

    if "central_ds" in only:
        w = Whole(cfg, 0).net  # fp32: DeepSpeed casts it in bf16 mode
        e = initialize_engine(w, torch.optim.AdamW(w.parameters(), lr=1e-4), dict(ds_cfg), micro_batch_size=a.batch)
        engine = e.engine

        def central_ds(s: int) -> None:
            b = batch(s)
            with in_engine():
                loss = engine(b["input_ids"], b["position_id"], b["attention_mask"])
                engine.backward(loss)
                engine.step()

        out["central_ds"] = timed(central_ds, a.steps, a.warmup, dev)
        del engine, e, w
        free(dev)

    def split(name: str, deepspeed: bool, through: bool, compress: bool) -> None:
        t = pangu.dataclasses.replace(train, deepspeed=False, compress=compress)
        with default_dtype(dtype):
            pa = pangu.PartyA(cfg, data, None, t)
        # Party B under DeepSpeed: built in fp32 (DeepSpeed casts it for bf16), the config central_ds uses.
        with default_dtype(torch.float32 if deepspeed else dtype):
            pb = pangu.PartyB(cfg, None, t)
        if deepspeed:
            pb.model = pangu.FLModel(
                pangu._yaml("backbone.yaml", t, drop_deepspeed=True), pb.backbone, deepspeed_config=dict(ds_cfg)
            )
            pb.models["backbone"] = pb.model
        hub: dict[str, Any] = {}
        a_cfg, b_cfg = ServerConfig("leader", "127.0.0.1:1"), ServerConfig("follower", "127.0.0.1:2")
        pa.comm = InProcessCommunicator(a_cfg, b_cfg, pa.compress_configs(), hub=hub, through_codecs=through)
        pb.comm = InProcessCommunicator(b_cfg, a_cfg, pb.compress_configs(), hub=hub, through_codecs=through)
        agree_locally(pb, pa)

        def step(s: int) -> None:
            pa._batch = batch(s)  # the batch on the device, as a loader with pin_memory would give it
            e = pa.emb_model.forward_one_step(pa._batch)
            pa._word_table = e["word_table"]
            pa.send({"embedding_table": e["embedding_table"], "attention_mask": e["attention_mask"]}, step=pa.step)
            pb.forward()
            pa.head_step()
            pb.backward()
            pa.backward()

        out[name] = timed(step, a.steps, a.warmup, dev)
        pa = pb = None  # free the device memory before the next variant (the closure holds them)
        free(dev)

    for name, ds, through, comp in (
        ("split_ref", False, False, False),
        ("split_ds", True, False, False),
        ("split_pack", False, True, False),
        ("split_pack_8bit", False, True, True),
    ):
        if name in only:
            split(name, ds, through, comp)
    return out


def two_process(a: argparse.Namespace, data_dir: Path, compress: bool, work: Path) -> float:
    """Median step ms of party A with party B in another process, over mutual TLS on loopback."""
    from splitlink.certs import make_dev_certs
    from splitlink.util import free_ports

    certs = work / "certs"
    if not (certs / "ca.crt").exists():
        make_dev_certs(certs, ["leader", "follower"])
    lp, fp = free_ports(2)
    metrics = work / f"metrics_{int(compress)}.jsonl"
    metrics.unlink(missing_ok=True)
    common = [
        "--config",
        a.config,
        "--batch-size",
        str(a.batch),
        "--max-steps",
        str(a.steps + a.warmup),
        "--log-every",
        "1",
        "--no-deepspeed",
        "--device",
        a.device,
        "--ckpt-dir",
        str(work / "ckpt"),
        "--lr",
        "1e-4",
    ] + (["--compress"] if compress else [])

    def ssl(role: str) -> list[str]:
        return [
            "True",
            "splitlink",
            "splitlink",
            str(certs / f"{role}.server.p12"),
            str(certs / f"{role}.client.p12"),
            str(certs / "ca.crt"),
        ]

    env = dict(os.environ)
    procs = [
        subprocess.Popen(
            [sys.executable, str(EXAMPLE), "follower", f"127.0.0.1:{fp}", f"127.0.0.1:{lp}", *ssl("follower"), *common],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(work / "follower.err", "w"),
        ),
        subprocess.Popen(
            [
                sys.executable,
                str(EXAMPLE),
                "leader",
                f"127.0.0.1:{lp}",
                f"127.0.0.1:{fp}",
                str(data_dir),
                "-",
                *ssl("leader"),
                *common,
                "--metrics",
                str(metrics),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(work / "leader.err", "w"),
        ),
    ]
    try:
        codes = [p.wait(timeout=a.two_process_timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    if any(codes):
        raise RuntimeError(
            f"two-process run failed ({codes}): {(work / 'leader.err').read_text()[-1500:]}\n"
            f"{(work / 'follower.err').read_text()[-1500:]}"
        )
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    secs = [r["seconds"] for r in rows if r.get("kind") == "train"]
    steps_ms = [(b - c) * 1e3 for b, c in zip(secs[1:], secs[:-1])][max(0, a.warmup - 1) :]
    if not steps_ms:
        raise RuntimeError(f"two-process run recorded {len(secs)} steps; need at least 2")
    return statistics.median(steps_ms)


def exchange(a: argparse.Namespace) -> dict[str, float]:
    """GB/s of the exchange path on a 64 MiB float32 tensor (--exchange-mib), against torch baselines."""
    import numpy as np
    import torch

    from splitlink import CompressConfig, _core, codec_torch, wire

    dev = torch.device(a.device)
    n = a.exchange_mib * (1 << 20) // 4
    x = torch.randn(n, device=dev)
    nbytes = n * 4
    gbps = lambda ms: nbytes / (ms * 1e-3) / 1e9  # noqa: E731
    reps, warm = (5, 2) if a.quick else (20, 3)
    pinned = torch.empty(n, dtype=torch.float32, pin_memory=dev.type == "cuda")
    r: dict[str, float] = {}
    r["torch_d2h_pinned_gbps"] = gbps(timed(lambda s: pinned.copy_(x, non_blocking=True), reps, warm, dev))
    r["pack_from_device_gbps"] = gbps(timed(lambda s: wire.pack({"x": x}), reps, warm, dev))
    frame = wire.pack({"x": x})
    pageable = bytes(frame)
    back = torch.empty_like(x)
    r["torch_h2d_pinned_gbps"] = gbps(timed(lambda s: back.copy_(pinned, non_blocking=True), reps, warm, dev))
    r["unpack_to_device_gbps"] = gbps(timed(lambda s: wire.unpack(frame, device=dev), reps, warm, dev))
    r["unpack_to_device_from_pageable_gbps"] = gbps(timed(lambda s: wire.unpack(pageable, device=dev), reps, warm, dev))
    r["pack_vs_torch_d2h"] = r["pack_from_device_gbps"] / r["torch_d2h_pinned_gbps"]
    r["unpack_vs_torch_h2d"] = r["unpack_to_device_gbps"] / r["torch_h2d_pinned_gbps"]
    frame = pageable = None  # the closures above hold them: release the buffers

    spec = CompressConfig("min_max", bit_num=8).spec(n)

    def naive(s: int) -> None:
        lo, hi = x.min(), x.max()
        scale = (hi - lo) / 255
        q = ((x - lo) / scale).round().to(torch.uint8)
        (q.float() * scale + lo).sum()

    def ours(s: int) -> None:
        codec_torch.decode(spec, codec_torch.encode(spec, x), torch.float32, (n,))

    host = x.cpu().numpy()
    enc = np.empty(_core.codec.encoded_size(spec, 1, n), dtype=np.uint8)
    dec = np.empty(n, dtype=np.float32)

    def cpp(s: int) -> None:
        _core.codec.encode(spec, 1, host, enc)
        _core.codec.decode(spec, 1, enc, 0, enc.size, dec)

    r["codec_naive_torch_gbps"] = gbps(timed(naive, reps, warm, dev))
    r["codec_torch_minmax8_gbps"] = gbps(timed(ours, reps, warm, dev))
    r["codec_cpp_cpu_gbps"] = gbps(timed(cpp, reps, warm, "cpu"))
    r["codec_torch_vs_naive"] = r["codec_torch_minmax8_gbps"] / r["codec_naive_torch_gbps"]
    r["codec_torch_vs_cpp"] = r["codec_torch_minmax8_gbps"] / r["codec_cpp_cpu_gbps"]
    return r


VARIANTS = ["central", "central_ds", "split_ref", "split_ds", "split_pack", "split_pack_8bit"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a smoke run")
    ap.add_argument("--config", default=None, help="Pangu config (default: 350M on cuda, tiny on cpu)")
    ap.add_argument("--batch", type=int, default=None, help="default: 8 (2 on cpu)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 10, --quick 4)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3, --quick 2)")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--skip", default="", help="comma-separated variants to leave out (also two_process, exchange)")
    ap.add_argument("--exchange-mib", type=int, default=None, help="tensor size for the GB/s figures (default 64)")
    ap.add_argument("--two-process-timeout", type=float, default=600.0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    import torch

    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "bench_gpu.py: torch sees no CUDA GPU on this machine; run it on a GPU machine (make gpu-check), or "
            "pass --device cpu for a smoke run of every path",
            file=sys.stderr,
        )
        return 2
    cpu = a.device == "cpu"
    a.config = a.config or ("tiny" if cpu else "350M")
    a.batch = a.batch or (2 if cpu else 8)
    a.steps = a.steps or (4 if a.quick else 10)
    a.warmup = a.warmup if a.warmup is not None else (2 if a.quick else 3)
    a.exchange_mib = a.exchange_mib or (4 if cpu else 64)
    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    if cpu:
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    else:
        torch.backends.cuda.matmul.allow_tf32 = True  # as the measurements (TF32 matmuls)
        torch.backends.cudnn.allow_tf32 = True

    from splitlink.examples import pangu

    cfg = pangu.CONFIGS[a.config]
    result: dict[str, Any] = {
        "device": str(torch.cuda.get_device_name(0)) if not cpu else "cpu",
        "torch": torch.__version__,
        "config": a.config,
        "batch": a.batch,
        "steps": a.steps,
        "warmup": a.warmup,
        "results": {},
    }
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        work = Path(tmp)
        data_dir = make_data(work / "data", cfg, rows=max(64, a.batch * (a.steps + a.warmup + 2)))
        for dtype_name in [d.strip() for d in a.dtypes.split(",") if d.strip()]:
            only = set(VARIANTS) - skip
            ms = model_variants(a, dtype_name, data_dir, only)
            if dtype_name == "fp32":
                for name, comp in (("two_process", False), ("two_process_8bit", True)):
                    if name not in skip and "two_process" not in skip:
                        ms[name] = two_process(a, data_dir, comp, work)
            ratios = {}
            if "central" in ms:
                ratios.update(
                    {f"{k}_vs_central": v / ms["central"] for k, v in ms.items() if k != "central" and not k.endswith("_ds")}
                )
            if "central_ds" in ms and "split_ds" in ms:
                ratios["split_ds_vs_central_ds"] = ms["split_ds"] / ms["central_ds"]
            result["results"][dtype_name] = {"step_ms": ms, "ratios": ratios}
        if "exchange" not in skip:
            result["exchange"] = exchange(a)
    result["seconds"] = time.perf_counter() - t_start
    if a.json:
        print(json.dumps(result, indent=1))
    else:
        print(
            f"bench_gpu: {result['device']}, torch {result['torch']}, Pangu {a.config}, batch {a.batch}, "
            f"median of {a.steps} steps after {a.warmup}"
        )
        for dtype_name, r in result["results"].items():
            print(f"[{dtype_name}]")
            for k, v in r["step_ms"].items():
                print(f"  {k:<18} {v:9.1f} ms/step")
            for k, v in r["ratios"].items():
                print(f"  {k:<30} {v:6.3f}x")
        for k, v in result.get("exchange", {}).items():
            print(f"  {k:<40} {v:8.3f}")
        print(f"total {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
