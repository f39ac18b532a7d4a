"""Samples/s of the Pangu split with party B's backbone over 1 and 2 ranks of torchrun (DeepSpeed ZeRO-2,
gloo on CPU, NCCL on GPUs), party A one process scattering every global batch to B's ranks.

Each configuration is a real run: party A and party B's torchrun group as processes, mutual TLS on
loopback, the same global batch and steps. The step time is the median of the differences between
consecutive steps' timestamps in party A's metrics, after ``--warmup`` steps (imports, connection, the
first steps' allocations); samples/s = global batch / median step time. The configurations run in turns
(1, 2, 1, 2, ... ranks, ``--rounds`` times) so machine noise falls on both alike; the figure of each is
the median over rounds. Scaling efficiency = (samples/s with 2 ranks / samples/s with 1 rank) / 2,
against the one-rank run of the same benchmark. On a machine with fewer free cores than processes
(party A + B's ranks), expect far below 1. ``--json`` prints JSON; ``--quick`` is a smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

MODELS = {
    "tiny": {"config": "tiny", "vocab_size": 512, "seq_length": 32},
    "small": {"config": "tiny", "vocab_size": 512, "hidden_size": 256, "num_layers": 4, "num_heads": 8, "seq_length": 128},
}


def free_ports(n: int) -> list[int]:
    from splitlink.util import free_ports as fp

    return fp(n)


def prepare(d: Path) -> None:
    from splitlink.certs import make_dev_certs
    from splitlink.examples import pangu

    make_dev_certs(d / "certs", ["leader", "follower-r0", "follower-r1"])
    corpus = pangu.stdlib_corpus(d / "corpus", max_bytes=400_000)
    pangu.preprocess_corpus(corpus, d / "data", vocab_size=512)


def run_once(d: Path, world: int, model: str, batch: int, steps: int, threads: int, timeout: float) -> list[float]:
    """One run; party A's per-step timestamps (seconds since its training loop began)."""
    run = Path(tempfile.mkdtemp(prefix=f"r{world}-", dir=d))
    ports = free_ports(1 + world)
    c = d / "certs"
    files = {}
    for role in ("leader", "follower"):
        cert = "follower-r{rank}" if role == "follower" else "leader"
        cfg: dict[str, Any] = {
            "scenario": "pangu_alpha",
            "party": role,
            "enable_ssl": True,
            "threads": threads,
            "address": f"127.0.0.1:{ports[0] if role == 'leader' else ports[1]}",
            "peer_address": f"127.0.0.1:{ports[1] if role == 'leader' else ports[0]}",
            "pangu": MODELS[model],
            "log_file": str(run / f"{role}.log"),
            "ranks": {"mode": "scatter", "world_size": world, "follower_addresses": [f"127.0.0.1:{p}" for p in ports[1:]]},
            "ssl": {
                "server_cert_path": str(c / f"{cert}.server.p12"),
                "client_cert_path": str(c / f"{cert}.client.p12"),
                "ca_cert_path": str(c / "ca.crt"),
                "server_password": "splitlink",
                "client_password": "splitlink",
            },
            "train": {
                "epochs": 1,
                "batch_size": batch,
                "max_steps": steps,
                "lr": 1e-4,
                "log_every": 1000,
                "peer_timeout": 300.0,
                "zero_stage": 2,
                "metrics_path": str(run / "metrics.jsonl"),
                "progress": False,
                "ckpt_dir": str(run / role),
            },
        }
        if role == "leader":
            cfg["data"] = str(d / "data")
        files[role] = run / f"{role}.yaml"
        files[role].write_text(yaml.safe_dump(cfg))
    b = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={world}",
            "-m",
            "splitlink",
            "train",
            "follower",
            "--config",
            str(files["follower"]),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    a = subprocess.Popen(
        [sys.executable, "-m", "splitlink", "train", "leader", "--config", str(files["leader"])],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    errs = {}
    for name, p in (("party A", a), ("party B", b)):
        try:
            errs[name] = p.communicate(timeout=timeout)[1]
        except subprocess.TimeoutExpired:
            p.kill()
            errs[name] = p.communicate()[1]
        if p.returncode != 0:
            raise RuntimeError(f"{name} with B over {world} rank(s) failed ({p.returncode}):\n{errs[name][-3000:]}")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["seconds"] for r in rows if r["kind"] == "train"]


def step_time(stamps: list[float], warmup: int) -> float:
    diffs = [b - a for a, b in zip(stamps, stamps[1:])][warmup:]
    if not diffs:
        raise ValueError(f"{len(stamps)} steps leave nothing after {warmup} warm-up steps; raise --steps")
    return statistics.median(diffs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="small")
    ap.add_argument("--batch", type=int, default=8, help="global batch (a multiple of 2)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5, help="steps not timed at the start of each run")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each configuration, in turns")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds one run may take")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny model, 6 steps, one round")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.quick:
        a.model, a.steps, a.warmup, a.rounds, a.batch = "tiny", 6, 2, 1, 4
    if a.batch % 2:
        ap.error("--batch must be a multiple of 2 (it is cut into one slice per rank)")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    with tempfile.TemporaryDirectory(prefix="bench-ranks-") as tmp:
        d = Path(tmp)
        prepare(d)
        times: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(a.rounds):
            for world in (1, 2):
                times[world].append(step_time(run_once(d, world, a.model, a.batch, a.steps, a.threads, a.timeout), a.warmup))
    med = {w: statistics.median(t) for w, t in times.items()}
    sps = {w: a.batch / t for w, t in med.items()}
    result = {
        "model": a.model,
        "global_batch": a.batch,
        "steps": a.steps,
        "warmup": a.warmup,
        "rounds": a.rounds,
        "threads_per_process": a.threads,
        "cpus": os.cpu_count(),
        "step_s": {str(w): t for w, t in med.items()},
        "step_s_all": {str(w): t for w, t in times.items()},
        "samples_per_s": {str(w): s for w, s in sps.items()},
        "speedup_2_vs_1": sps[2] / sps[1],
        "scaling_efficiency": sps[2] / sps[1] / 2,
    }
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"Pangu {a.model}, global batch {a.batch}, party B over 1 and 2 ranks (ZeRO-2), party A scattering; "
            f"median step of {a.steps - 1 - a.warmup} steps, median of {a.rounds} round(s)"
        )
        for w in (1, 2):
            print(f"  B over {w} rank(s): {med[w] * 1e3:8.1f} ms/step  {sps[w]:8.2f} samples/s")
        print(
            f"  speed-up 2 vs 1 rank: {result['speedup_2_vs_1']:.2f}x, scaling efficiency "
            f"{result['scaling_efficiency']:.0%} (machine: {os.cpu_count()} CPUs)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
