"""Party B's backbone over 2 ranks of torchrun (CPU, gloo), party A scattering to them or paired with
them rank by rank: the training equals the one-process split at the same global batch, and a B rank
killed mid-run is restarted with its group by the launcher and the run ends bitwise where an
uninterrupted one ends.

Tolerances (fp32): the ranks sum their gradient slices in another order than one process does, so
results agree to rounding, not bitwise. Losses: 1e-6 relative. Adam's moments (linear in the
gradients): 1e-5 of the tensor's largest magnitude -- a missing or doubled gradient scale (B's sum
vs DeepSpeed's average, the world-size factor on the gradients B returns) is off by 50-100%.
Weights: 2% of one Adam step (lr) absolute: Adam moves a weight by about lr * sign(g) where the
gradient is tiny, so rounding in a near-zero gradient component moves it by a fraction of lr.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from rankrun import (
    assert_close,
    backbone_adam_state,
    finish,
    flat_tensors,
    launch,
    losses,
    party_a_state,
    run_files,
)

STEPS, EVERY, LR = 8, 4, 1e-3
pytestmark = pytest.mark.slow


def _ds() -> None:
    from required import require_deepspeed

    require_deepspeed()


def run_pair(d: Path, run: Path, mode: str, zero: int = 2) -> Path:
    files = run_files(d, run, mode=mode, steps=STEPS, zero=zero, every=EVERY)
    procs = {
        "follower": launch("follower", files["follower"], ranks=2),
        "leader": launch("leader", files["leader"], ranks=2 if mode == "paired" else 0),
    }
    res = finish(procs)
    assert {r: c for r, (c, _) in res.items()} == {"follower": 0, "leader": 0}, res
    return run


@pytest.fixture(scope="module")
def scatter2(workdir: Path) -> Path:
    _ds()
    return run_pair(workdir, workdir / "scatter-zero2", "scatter")


def one_process(d: Path, zero: int) -> tuple[list[float], Path]:
    """The one-process split (party A and party B in this process, B a DeepSpeed group of one)."""
    from splitlink.examples import pangu

    out = d / f"one-process-zero{zero}"
    cfg = dataclasses.replace(pangu.CONFIGS["tiny"], vocab_size=512, seq_length=32)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        hist = pangu.train_local(
            cfg,
            pangu.TokenDataset(d / "data", 32),
            pangu.TrainConfig(
                epochs=1,
                batch_size=4,
                max_steps=STEPS,
                lr=LR,
                log_every=100,
                zero_stage=zero,
                ckpt_every=EVERY,
                ckpt_dir=str(out),
            ),
        )
    finally:
        torch.set_num_threads(n)
    return [r["loss"] for r in hist], out


def assert_same_training(
    got: dict[int, float], a_dir: Path, b_dir: Path, ref_losses: list[float], ref_a: Path, ref_b: Path, what: str
) -> None:
    assert sorted(got) == list(range(1, STEPS + 1)), got
    for step, want in enumerate(ref_losses, start=1):
        assert abs(got[step] - want) <= 1e-6 * abs(want), (what, step, got[step], want)
    step_dir = f"step-{STEPS:010d}"
    assert_close(backbone_adam_state(b_dir / step_dir), backbone_adam_state(ref_b / step_dir), f"{what}: B", rel=1e-5)
    a, ref = party_a_state(a_dir, STEPS), party_a_state(ref_a, STEPS)
    assert set(a) == {"follower_loss_net", "leaderhead_loss_net"}, a.keys()
    for net in a:
        assert_close(a[net]["optimizers"], ref[net]["optimizers"], f"{what}: A {net} optimizer", rel=1e-5)
        assert_close(a[net]["model"], ref[net]["model"], f"{what}: A {net} weights", atol=0.02 * LR)


@pytest.mark.parametrize("zero", [2, 3])
def test_b_over_two_ranks_equals_the_one_process_split(workdir: Path, zero: int, request: pytest.FixtureRequest) -> None:
    _ds()
    run = request.getfixturevalue("scatter2") if zero == 2 else run_pair(workdir, workdir / "scatter-zero3", "scatter", zero=3)
    files = sorted((run / "follower" / "backbone_loss_net" / f"step-{STEPS:010d}").glob("*optim_states.pt"))
    assert len(files) == 2  # DeepSpeed's checkpoint sharded over both ranks
    ref_losses, ref = one_process(workdir, zero)
    assert_same_training(
        losses(run),
        run / "leader",
        run / "follower" / "backbone_loss_net",
        ref_losses,
        ref,
        ref / "backbone_loss_net",
        f"ZeRO-{zero}",
    )


def test_a_paired_over_two_ranks_equals_a_scattering(workdir: Path, scatter2: Path) -> None:
    run = run_pair(workdir, workdir / "paired-zero2", "paired")
    # Rank r of A records its slice's loss; the global batch's is their mean.
    r0, r1 = losses(run), losses(run, "metrics.r1.jsonl")
    assert r0.keys() == r1.keys() and r0 != r1  # each rank trained on its own slice
    ref = [losses(scatter2)[s] for s in range(1, STEPS + 1)]
    assert_same_training(
        {s: (r0[s] + r1[s]) / 2 for s in r0},
        run / "leader",
        run / "follower" / "backbone_loss_net",
        ref,
        scatter2 / "leader",
        scatter2 / "follower" / "backbone_loss_net",
        "paired",
    )
    assert not list((run / "leader").glob("*/*.r1*"))  # A's replicas: rank 0 alone writes A's files


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (torchrun's workers)."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(p.name))
    return out


def all_tensors(run: Path) -> dict[str, Any]:
    """Every tensor of both parties' checkpoints at the last step (A's files, B's DeepSpeed shards)."""
    out: dict[str, Any] = {}
    for f in sorted(run.rglob("*.pt")):
        rel = str(f.relative_to(run))
        if f"step-{STEPS:010d}" in rel:
            out.update({rel + k: v for k, v in flat_tensors(torch.load(f, map_location="cpu", weights_only=False)).items()})
    return out


def test_a_b_rank_killed_mid_run_restarts_with_its_group_and_ends_bitwise(workdir: Path, scatter2: Path) -> None:
    run = workdir / "killed"
    files = run_files(workdir, run, mode="scatter", steps=STEPS, every=EVERY)
    procs = {"follower": launch("follower", files["follower"], ranks=2, restarts=1), "leader": launch("leader", files["leader"])}
    kill_at = EVERY + 2
    deadline = time.monotonic() + 300
    while max(losses(run), default=0) < kill_at:
        assert time.monotonic() < deadline, "training did not reach the kill step"
        assert all(p.poll() is None for p in procs.values()), finish(procs, 10)
        time.sleep(0.05)
    workers = children(procs["follower"].pid)
    assert len(workers) == 2, workers
    reached = max(losses(run))
    import os

    os.kill(max(workers), signal.SIGKILL)
    res = finish(procs)
    assert {r: c for r, (c, _) in res.items()} == {"follower": 0, "leader": 0}, res
    log = (run / "leader.log").read_text()
    assert "going back to the newest common checkpoint" in log, log
    resumed = [int(line.rsplit(" ", 1)[1]) for line in log.splitlines() if "party A: resumed at step" in line]
    assert resumed and resumed[-1] % EVERY == 0 and 0 < resumed[-1] <= reached, (reached, log)
    assert losses(run) == losses(scatter2)  # every step's loss, the replayed ones included, bitwise
    got, want = all_tensors(run), all_tensors(scatter2)
    assert got.keys() == want.keys() and any("optim_states" in k for k in want)
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), f"{k} differs after the restart"
