"""A party killed with SIGKILL mid-training, both restarted with resume: the run ends bit for bit where an
uninterrupted run of the same seed ends (Wide&Deep, two processes over mutual TLS)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from splitlink.examples import demo as demo_mod

STEPS, EVERY = 30, 5
MODEL = {"vocab_size": 5000, "emb_dim": 8, "deep_layers": [16]}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("faults")
    demo_mod.make_dev_certs(d / "certs", ["leader", "follower"])
    demo_mod.prepare_data(d, 3000, seed=2, vocab_size=5000)
    return d


def run_files(d: Path, ckpt: Path, resume: bool) -> dict[str, Path]:
    files = demo_mod.write_run_files(d, epochs=1, batch_size=90, vocab_size=5000, log_every=1, progress=False,
                                     model=MODEL, ckpt_every=EVERY, max_steps=STEPS)
    for role, f in files.items():
        cfg = yaml.safe_load(f.read_text())
        cfg["train"].update(ckpt_dir=str(ckpt / role), resume=resume, peer_timeout=8.0)
        cfg["log_file"] = str(ckpt / f"{role}.log")
        f.write_text(yaml.safe_dump(cfg))
    return files


def start(files: dict[str, Path]) -> dict[str, subprocess.Popen]:
    return {role: subprocess.Popen([sys.executable, "-m", "splitlink", "train", role, "--config", str(files[role])],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for role in ("follower", "leader")}


ERRORS: dict[str, str] = {}


def finish(procs: dict[str, subprocess.Popen], timeout: float = 240) -> dict[str, int]:
    for r, p in procs.items():
        ERRORS[r] = p.communicate(timeout=timeout)[1]
    return {r: p.returncode for r, p in procs.items()}


def final_state(ckpt: Path) -> dict[str, dict]:
    out = {}
    for f in sorted(ckpt.rglob(f"step-{STEPS:010d}.pt")):
        out[str(f.relative_to(ckpt))] = torch.load(f, map_location="cpu", weights_only=True)
    return out


def steps_done(log: Path) -> int:
    if not log.exists():
        return 0
    done = [int(line.split("step ")[1].split("/")[0]) for line in log.read_text().splitlines() if "wide_loss" in line]
    return max(done, default=0)


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["follower", "leader"])
def test_sigkill_and_resume_ends_bitwise_where_an_uninterrupted_run_ends(workdir: Path, victim: str) -> None:
    ref = workdir / "ref"
    if not ref.exists():
        codes = finish(start(run_files(workdir, ref, resume=False)))
        assert codes == {"follower": 0, "leader": 0}
    expected = final_state(ref)
    assert len(expected) == 3  # leader bottom, leader top, follower bottom

    run = workdir / f"killed-{victim}"
    rng = np.random.default_rng(abs(hash(victim)) % 1000)
    kill_at = int(rng.integers(EVERY + 2, STEPS - 3))
    procs = start(run_files(workdir, run, resume=False))
    deadline = time.monotonic() + 120
    while steps_done(run / "leader.log") < kill_at:
        assert time.monotonic() < deadline, "training did not reach the kill step"
        assert procs["leader"].poll() is None, "the leader stopped before the kill step"
        time.sleep(0.02)
    procs[victim].send_signal(signal.SIGKILL)
    codes = finish(procs, timeout=120)
    survivor = "leader" if victim == "follower" else "follower"
    assert codes[victim] == -signal.SIGKILL
    assert codes[survivor] != 0  # it noticed: no frame from the peer within peer_timeout, a clear error
    err = ERRORS[survivor]
    assert victim in err and ("within" in err or "unavailable" in err), err

    codes = finish(start(run_files(workdir, run, resume=True)))
    assert codes == {"follower": 0, "leader": 0}
    log = (run / "leader.log").read_text()
    resumed = [line for line in log.splitlines() if "resumed at step" in line]
    assert resumed, log
    got = final_state(run)
    assert got.keys() == expected.keys()
    for name, state in expected.items():
        for part in ("model", "optimizers"):
            a, b = json.dumps(_flat(state[part])), json.dumps(_flat(got[name][part]))
            assert a == b, f"{name}: {part} differs after kill at step {kill_at} and resume"


def _flat(x: object) -> object:
    """Tensors as exact bytes (hex) so the comparison is bitwise."""
    if isinstance(x, torch.Tensor):
        return [str(x.dtype), list(x.shape), x.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes().hex()]
    if isinstance(x, dict):
        return {str(k): _flat(v) for k, v in sorted(x.items(), key=lambda kv: str(kv[0]))}
    if isinstance(x, (list, tuple)):
        return [_flat(v) for v in x]
    return x
