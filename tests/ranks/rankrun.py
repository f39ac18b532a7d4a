"""Runs of the Pangu split with party B (and, paired, party A) over ranks started by torchrun: run files,
launches, results. Every process gets a generous peer_timeout (imports are slow on a loaded machine)
and every wait a hard timeout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from splitlink.util import free_ports

PEER_TIMEOUT = 120.0
MODEL = {"config": "tiny", "vocab_size": 512, "seq_length": 32}
NAMES = ["leader", "leader-r0", "leader-r1", "follower-r0", "follower-r1"]


def run_files(
    d: Path, run: Path, *, mode: str | None, world: int = 2, steps: int = 8, batch: int = 4, zero: int = 2, every: int = 0
) -> dict[str, Path]:
    """Run files of party A ("leader") and party B ("follower"); ``mode`` None: one process each. Party B
    resumes whenever it is (re)started (a fresh run has nothing to resume): the launcher restarts its
    ranks with the same command line."""
    n_ports = 1 + world * (2 if mode == "paired" else 1) if mode else 2
    ports = free_ports(n_ports)
    a_port, b_ports = ports[0], ports[1 : 1 + (world if mode else 1)]
    a_ports = ports[1 + world :] if mode == "paired" else [a_port]
    run.mkdir(parents=True, exist_ok=True)
    c = d / "certs"
    files = {}
    for role in ("leader", "follower"):
        ranked = mode is not None and (role == "follower" or mode == "paired")
        cert = f"{role}-r{{rank}}" if ranked else role
        cfg: dict[str, Any] = {
            "scenario": "pangu_alpha",
            "party": role,
            "enable_ssl": True,
            "threads": 1,
            "address": f"127.0.0.1:{(a_ports if role == 'leader' else b_ports)[0]}",
            "peer_address": f"127.0.0.1:{(b_ports if role == 'leader' else a_ports)[0]}",
            "log_file": str(run / f"{role}.log"),
            "pangu": MODEL,
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
                "lr": 1e-3,
                "log_every": 1,
                "ckpt_every": every or steps,
                "ckpt_dir": str(run / role),
                "resume": role == "follower",
                "peer_timeout": PEER_TIMEOUT,
                "zero_stage": zero,
                "metrics_path": str(run / "metrics.jsonl"),
                "progress": False,
            },
        }
        if mode is not None:
            cfg["ranks"] = {"mode": mode, "world_size": world, "follower_addresses": [f"127.0.0.1:{p}" for p in b_ports]}
            if mode == "paired":
                cfg["ranks"]["leader_addresses"] = [f"127.0.0.1:{p}" for p in a_ports]
        if role == "leader":
            cfg["data"] = str(d / "data")
        files[role] = run / f"{role}.yaml"
        files[role].write_text(yaml.safe_dump(cfg))
    return files


def launch(role: str, f: Path, ranks: int = 0, restarts: int = 0) -> subprocess.Popen[str]:
    """One party: a plain process, or ``ranks`` processes under torchrun (its own rendezvous)."""
    cmd = [sys.executable, "-m", "splitlink", "train", role, "--config", str(f)]
    if ranks:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={ranks}",
            f"--max-restarts={restarts}",
            "--monitor-interval=0.5",
            "-m",
            *cmd[2:],
        ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(procs: dict[str, subprocess.Popen[str]], timeout: float = 400) -> dict[str, tuple[int, str]]:
    out = {}
    for r, p in procs.items():
        try:
            err = p.communicate(timeout=timeout)[1]
        except subprocess.TimeoutExpired:
            p.kill()
            err = p.communicate()[1]
        out[r] = (p.returncode, err[-4000:])
    return out


def losses(run: Path, name: str = "metrics.jsonl") -> dict[int, float]:
    """step -> training loss party A recorded (a resumed run appends; later rows win)."""
    f = run / name
    rows = [json.loads(line) for line in f.read_text().splitlines()] if f.exists() else []
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def backbone_numels() -> list[int]:
    """Element counts of party B's parameters in the optimizer's order (the tiny test model)."""
    import dataclasses

    import torch

    from splitlink.examples import pangu

    cfg = dataclasses.replace(pangu.CONFIGS["tiny"], vocab_size=512, seq_length=32)
    with torch.device("meta"):
        return [p.numel() for p in pangu.BackboneNet(cfg).parameters()]


def backbone_adam_state(step_dir: Path) -> dict[str, Any]:
    """Party B's AdamW moments at a DeepSpeed checkpoint, as whole flat vectors over its parameters
    (in order), whatever the ranks and ZeRO stage: ZeRO-2 partitions the flat vector into contiguous
    per-rank slices; ZeRO-3 cuts every parameter into per-rank slices and concatenates each rank's."""
    import torch

    files = sorted(step_dir.glob("zero_pp_rank_*_mp_rank_00_optim_states.pt"), key=lambda p: int(p.name.split("_")[3]))
    states = [torch.load(f, map_location="cpu", weights_only=False)["optimizer_state_dict"] for f in files]
    numels = backbone_numels()
    total, world = sum(numels), len(states)
    out: dict[str, Any] = {}
    for key in ("exp_avg", "exp_avg_sq"):
        if "base_optimizer_state" in states[0]:  # ZeRO-1/2
            parts = [s["base_optimizer_state"]["state"][0][key] for s in states]
            out[key] = torch.cat(parts)[:total]
        else:  # ZeRO-3
            parts = [s["optimizer_state_dict"]["state"][0][key] for s in states]
            pieces, offs = [], [0] * world
            for n in numels:
                size = -(-n // world)
                whole = torch.cat([parts[r][offs[r] : offs[r] + size] for r in range(world)])[:n]
                offs = [o + size for o in offs]
                pieces.append(whole)
            out[key] = torch.cat(pieces)
    return out


def party_a_state(ckpt: Path, step: int) -> dict[str, Any]:
    """Party A's sub-networks at ``step``: weights and optimizer states (plain FLModel files)."""
    import torch

    out = {}
    for f in sorted(ckpt.glob(f"*/step-{step:010d}.pt")):
        s = torch.load(f, map_location="cpu", weights_only=True)
        out[f.parent.name] = {"model": s["model"], "optimizers": s["optimizers"]}
    return out


def flat_tensors(x: Any, prefix: str = "") -> dict[str, Any]:
    import torch

    if isinstance(x, torch.Tensor):
        return {prefix: x}
    out: dict[str, Any] = {}
    if isinstance(x, dict):
        for k, v in x.items():
            out.update(flat_tensors(v, f"{prefix}/{k}"))
    elif isinstance(x, (list, tuple)):
        for i, v in enumerate(x):
            out.update(flat_tensors(v, f"{prefix}/{i}"))
    return out


def assert_close(got: Any, want: Any, what: str, *, rel: float = 0.0, atol: float = 0.0) -> None:
    """Every tensor of ``got`` within ``atol + rel * (largest magnitude of its counterpart in want)``."""
    import torch

    g, w = flat_tensors(got), flat_tensors(want)
    assert g.keys() == w.keys(), (what, sorted(g.keys() ^ w.keys()))
    assert g, what
    for k in w:
        a, b = g[k].double(), w[k].double()
        bound = atol + rel * float(b.abs().max())
        err = float((a - b).abs().max())
        assert err <= bound, f"{what}{k}: max difference {err:.3g} exceeds {bound:.3g}"
        assert torch.equal(torch.isfinite(a), torch.isfinite(b)), f"{what}{k}"
