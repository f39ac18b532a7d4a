"""A leader and three followers as processes over mutual TLS (``splitlink train``), secure sum: an
uninterrupted run, and one where a follower is killed with SIGKILL mid-run and restarted with resume.
Every party must end bit for bit where the uninterrupted run ends (the other parties ride through:
the leader tells the followers to go back to the newest checkpoint all hold, the masks are re-agreed)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from splitlink.certs import make_dev_certs
from splitlink.examples import criteo_nparty as cn

STEPS, EVERY, N = 24, 4, 3
NAMES = ["leader", *cn.follower_names(N)]
MODEL = {"vocab_size": 3000, "emb_dim": 4, "deep_layers": [8]}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("nparty-procs")
    make_dev_certs(d / "certs", NAMES)
    cn.prepare_data(d, 1500, N, seed=4, vocab_size=3000)
    return d


def run_files(d: Path, run: Path, resume: bool, peer_timeout: float = 120.0) -> dict[str, Path]:
    run.mkdir(parents=True, exist_ok=True)
    files = cn.write_run_files(
        d,
        N,
        aggregate="sum",
        secure=True,
        model=MODEL,
        train={
            "epochs": 1,
            "batch_size": 50,
            "max_steps": STEPS,
            "log_every": 1,
            "ckpt_every": EVERY,
            "resume": resume,
            "peer_timeout": peer_timeout,
        },
    )
    out = {}
    for name, f in files.items():
        cfg = yaml.safe_load(f.read_text())
        cfg["train"]["ckpt_dir"] = str(run / name)
        cfg["log_file"] = str(run / f"{name}.log")
        cfg["data"] = str(d / cfg["data"])
        cfg["ssl"] = {k: str(d / v) if k.endswith("_path") else v for k, v in cfg["ssl"].items()}
        if name == "leader":
            cfg["train"]["metrics_path"] = str(run / "metrics.jsonl")
        out[name] = run / f"{name}.yaml"
        out[name].write_text(yaml.safe_dump(cfg))
    return out


def start(files: dict[str, Path], names: list[str]) -> dict[str, subprocess.Popen[str]]:
    return {
        n: subprocess.Popen(
            [sys.executable, "-m", "splitlink", "train", "leader" if n == "leader" else "follower", "--config", str(files[n])],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in names
    }


def finish(procs: dict[str, subprocess.Popen[str]], timeout: float = 300) -> tuple[dict[str, int], dict[str, str]]:
    errs = {n: p.communicate(timeout=timeout)[1] for n, p in procs.items()}
    return {n: p.returncode for n, p in procs.items()}, errs


def final_state(run: Path) -> dict[str, str]:
    out = {}
    for f in sorted(run.rglob(f"step-{STEPS:010d}.pt")):
        s = torch.load(f, map_location="cpu", weights_only=True)
        out[str(f.relative_to(run))] = json.dumps(
            {k: v.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes().hex() for k, v in sorted(s["model"].items())}
        )
    return out


def losses(run: Path) -> dict[int, float]:
    f = run / "metrics.jsonl"
    rows = [json.loads(x) for x in f.read_text().splitlines()] if f.exists() else []
    return {r["step"]: r["wide_loss"] for r in rows if r["kind"] == "train"}


@pytest.fixture(scope="module")
def reference(workdir: Path) -> tuple[dict[str, str], dict[int, float]]:
    ref = workdir / "ref"
    codes, errs = finish(start(run_files(workdir, ref, resume=False), NAMES))
    assert set(codes.values()) == {0}, errs
    expected, expected_losses = final_state(ref), losses(ref)
    assert len(expected) == N + 2  # leader bottom + top, each follower's bottom
    assert sorted(expected_losses) == list(range(1, STEPS + 1))
    return expected, expected_losses


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["follower2", "leader"])
def test_party_killed_and_restarted_ends_bitwise_where_an_uninterrupted_run_ends(
    workdir: Path, reference: tuple[dict[str, str], dict[int, float]], victim: str
) -> None:
    expected, expected_losses = reference
    run = workdir / f"killed-{victim}"
    files = run_files(workdir, run, resume=False)
    procs = start(files, NAMES)
    deadline = time.monotonic() + 240
    while max(losses(run), default=0) < 2 * EVERY + 2:
        assert time.monotonic() < deadline, "training did not reach the kill step"
        assert all(p.poll() is None for p in procs.values()), "a party stopped before the kill step"
        time.sleep(0.02)
    procs[victim].send_signal(signal.SIGKILL)
    assert procs[victim].wait(30) == -signal.SIGKILL
    procs[victim].stderr.close()  # type: ignore[union-attr]
    resume_file = files[victim].with_name(f"{victim}.resume.yaml")
    cfg = yaml.safe_load(files[victim].read_text())
    cfg["train"]["resume"] = True
    resume_file.write_text(yaml.safe_dump(cfg))
    procs[victim] = start({victim: resume_file}, [victim])[victim]
    survivors = [n for n in NAMES if n != victim]
    codes, errs = finish(procs)
    assert set(codes.values()) == {0}, errs
    for n in survivors:
        log = (run / f"{n}.log").read_text()
        assert "going back to the newest common checkpoint" in log and "resumed at step" in log, (n, log[-2000:])
    assert losses(run) == expected_losses  # every step's loss, the replayed ones included
    got = final_state(run)
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name] == expected[name], f"{name} differs after killing {victim}"
