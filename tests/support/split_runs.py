"""Two-process split runs over mutual TLS, on plain loopback or through an emulated link (netem.py).

:func:`run_split` writes both parties' run files (``splitlink train leader|follower --config``), starts
the two processes (inside the link's namespace, each party's peer address pointing at the route the
link gives it: through the delay line where there is one), waits for both, and returns the leader's
metrics, the step times, the bytes the link carried and where the checkpoints are.

Scenario settings come as the run file's sections: :func:`wide_deep_run` and :func:`pangu_run` build them.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from netem import EmulatedLink

from splitlink.certs import make_dev_certs
from splitlink.util import free_ports

PASSWORD = "splitlink"


def make_certs(directory: Path) -> Path:
    if not (directory / "ca.crt").exists():
        make_dev_certs(directory, ["leader", "follower"], password=PASSWORD)
    return directory


def wide_deep_run(
    data_dir: Path, *, model: dict[str, Any], batch_size: int, steps: int, compress: bool, seed: int = 0
) -> dict[str, Any]:
    """Sections of a ``criteo_wide_deep`` run (data: ``<role>.npz`` in ``data_dir``, from demo.prepare_data)."""
    return {
        "scenario": "criteo_wide_deep",
        "model": model,
        "data": {r: str(data_dir / f"{r}.npz") for r in ("leader", "follower")},
        "train": {
            "epochs": 1000,
            "batch_size": batch_size,
            "max_steps": steps,
            "compress": compress,
            "log_every": 1,
            "seed": seed,
            "progress": False,
            "eval_fraction": 0.0,
        },
    }


def pangu_run(
    data_dir: Path, *, pangu: dict[str, Any], batch_size: int, steps: int, compress: bool, seed: int = 0, lr: float = 1e-3
) -> dict[str, Any]:
    """Sections of a ``pangu_alpha`` run (the leader is party A and holds the token data)."""
    return {
        "scenario": "pangu_alpha",
        "pangu": pangu,
        "data": {"leader": str(data_dir)},
        "train": {
            "epochs": 1000,
            "batch_size": batch_size,
            "max_steps": steps,
            "compress": compress,
            "log_every": 1,
            "seed": seed,
            "lr": lr,
            "progress": False,
            "deepspeed": False,
        },
    }


@dataclass
class SplitRun:
    history: list[dict[str, Any]]
    step_s: list[float]  # wall time of each step after the first, from the leader's metrics
    wire_bytes: dict[str, int] = field(default_factory=dict)  # per direction (emulated links only)
    ckpt_dirs: dict[str, Path] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def losses(self) -> list[float]:
        key = "wide_loss" if self.history and "wide_loss" in self.history[0] else "loss"
        return [r[key] for r in self.history if r["kind"] == "train"]

    def median_step_s(self, skip: int = 2) -> float:
        """Median step time, leaving out the first ``skip`` steps (warm-up: allocations, connection set-up)."""
        times = self.step_s[skip:] or self.step_s
        return statistics.median(times)


def run_split(
    workdir: Path,
    spec: dict[str, Any],
    *,
    certs: Path,
    link: EmulatedLink | None = None,
    ckpt_every: int = 0,
    threads: int = 1,
    timeout: float = 600,
) -> SplitRun:
    """Runs both parties of ``spec`` (from wide_deep_run / pangu_run) to the end; raises with the logs'
    tails if a party fails or the run times out."""
    workdir.mkdir(parents=True, exist_ok=True)
    roles = ("leader", "follower")
    if link is not None:
        ports = dict(zip(roles, link.free_ports(2)))
        peer = {
            "leader": link.route(ports["follower"], client="leader"),
            "follower": link.route(ports["leader"], client="follower"),
        }
    else:
        ports = dict(zip(roles, free_ports(2)))
        peer = {"leader": f"127.0.0.1:{ports['follower']}", "follower": f"127.0.0.1:{ports['leader']}"}
    metrics = workdir / "metrics.jsonl"
    metrics.unlink(missing_ok=True)
    files, ckpt_dirs = {}, {}
    for role in roles:
        train = dict(spec["train"])
        if ckpt_every:
            ckpt_dirs[role] = workdir / "ckpt" / role
            train.update(ckpt_every=ckpt_every, ckpt_dir=str(ckpt_dirs[role]))
        if role == "leader":
            train["metrics_path"] = str(metrics)
        run: dict[str, Any] = {
            "scenario": spec["scenario"],
            "party": role,
            "address": f"127.0.0.1:{ports[role]}",
            "peer_address": peer[role],
            "enable_ssl": True,
            "threads": threads,
            "train": train,
            "ssl": {
                "server_cert_path": str(certs / f"{role}.server.p12"),
                "client_cert_path": str(certs / f"{role}.client.p12"),
                "ca_cert_path": str(certs / "ca.crt"),
                "server_password": PASSWORD,
                "client_password": PASSWORD,
            },
            "log_file": str(workdir / f"{role}.log"),
        }
        for key in ("model", "pangu"):
            if key in spec:
                run[key] = spec[key]
        if role in spec.get("data", {}):
            run["data"] = spec["data"][role]
        files[role] = workdir / f"{role}_run.yaml"
        files[role].write_text(yaml.safe_dump(run, sort_keys=False))
    before = link.wire_bytes() if link is not None else {}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    t0 = time.monotonic()
    try:
        for role in ("follower", "leader"):
            argv = [sys.executable, "-m", "splitlink", "train", role, "--config", str(files[role])]
            with open(workdir / f"{role}.stderr", "wb") as err:
                procs[role] = (
                    link.popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)
                    if link is not None
                    else subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
                )
        deadline = t0 + timeout
        failed = None
        while procs and failed is None:
            for role, p in list(procs.items()):
                rc = p.poll()
                if rc is not None:
                    del procs[role]
                    if rc != 0:
                        failed = f"party {role} failed (exit code {rc})"
            if time.monotonic() > deadline:
                failed = f"timeout after {timeout} s"
            time.sleep(0.05)
        if failed:
            tails = []
            for role in roles:
                text = (workdir / f"{role}.stderr").read_text(errors="replace").strip()
                tails.append(f"--- {role} (last lines) ---\n" + "\n".join(text.splitlines()[-15:]))
            raise RuntimeError(f"{failed}\n" + "\n".join(tails))
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(10)
    wall = time.monotonic() - t0
    history = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    seconds = [r["seconds"] for r in history if r["kind"] == "train"]
    steps = [b - a for a, b in zip(seconds, seconds[1:])]
    wire = {}
    if link is not None:
        after = link.wire_bytes()
        wire = {k: after[k] - before.get(k, 0) for k in after}
    return SplitRun(history, steps, wire, ckpt_dirs, wall)


def load_state(directory: Path) -> dict[str, Any]:
    """Every checkpoint file under ``directory`` (relative name -> contents) for comparing runs."""
    import torch

    out: dict[str, Any] = {}
    for f in sorted(directory.rglob("*")):
        if not f.is_file():
            continue
        rel = str(f.relative_to(directory))
        if f.suffix == ".json":
            out[rel] = json.loads(f.read_text())
        else:
            out[rel] = torch.load(f, map_location="cpu", weights_only=False)
    return out


def same_state(a: Any, b: Any, where: str = "") -> list[str]:
    """Where two loaded states differ (tensors bit for bit), as readable paths; [] when equal."""
    import torch

    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        same = a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{where}: keys {sorted(map(str, set(a) ^ set(b)))}"]
        return [d for k in a for d in same_state(a[k], b[k], f"{where}/{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: lengths {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in same_state(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]
