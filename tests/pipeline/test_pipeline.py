"""Micro-batch pipelining (issue 19 item 2): the pipelined step's update is the full batch's.

Exactness is tested on the gradients the optimizers step on (captured in ``FLModel._step_plain``), not on
the weights after an Adam step: Adam's first step is about lr * sign(g), so an element whose gradient is
within rounding of zero could move by up to 2 * lr between two orders of the same sum. The accumulated
gradient is a sum over micro-batches in a different order than the full batch's reductions, so the two
agree within fp32 rounding (rtol 1e-4 with an absolute floor of 1e-6 of the gradient's largest element:
a sum of m partial sums of ~1e3 terms, each rounded at 2**-24 relative). Where the order of the operations
is the same (the same m in process and over two processes, a resumed pipelined run) the results are
compared bit for bit.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from splitlink.examples import criteo, pangu
from splitlink.examples import demo as demo_mod
from splitlink.examples import wide_deep as wd
from splitlink.model.flmodel import FLModel
from splitlink.runtime import pipeline

WD = wd.WideDeepConfig(vocab_size=3000, emb_dim=8, deep_layers=(32, 16))
PG = dataclasses.replace(pangu.CONFIGS["tiny"], hidden_size=32, num_heads=2, num_layers=1, seq_length=16, vocab_size=300)


@pytest.fixture(scope="module")
def wd_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("wd")
    demo_mod.prepare_data(d, 1200, seed=3, vocab_size=3000)
    return d


@pytest.fixture(scope="module")
def pg_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pangu")
    corpus = pangu.stdlib_corpus(d / "corpus", max_bytes=60_000)
    return pangu.preprocess_corpus(corpus, d / "data", vocab_size=300)


def wd_parties(d: Path) -> tuple[criteo.PartyData, criteo.PartyData]:
    return criteo.load_party(d / "leader.npz", "leader"), criteo.load_party(d / "follower.npz", "follower")


class GradLog:
    """Every optimizer step's gradients, per FLModel, in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.steps: dict[str, list[list[torch.Tensor | None]]] = {}
        original = FLModel._step_plain
        log = self

        def recording(model: FLModel) -> None:
            log.steps.setdefault(model.name, []).append(
                [None if p.grad is None else p.grad.detach().clone() for ps in model._opt_params for p in ps]
            )
            original(model)

        monkeypatch.setattr(FLModel, "_step_plain", recording)


def assert_grads_close(ref: dict[str, list[list[Any]]], got: dict[str, list[list[Any]]], step: int = 0) -> None:
    assert set(ref) == set(got) and ref
    for name in ref:
        for k, (a, b) in enumerate(zip(ref[name][step], got[name][step], strict=True)):
            assert (a is None) == (b is None), (name, k)
            if a is None:
                continue
            floor = 1e-6 * float(a.abs().max()) + 1e-12
            torch.testing.assert_close(b, a, rtol=1e-4, atol=floor, msg=f"{name} parameter {k}")


def test_split_rows_and_weights() -> None:
    parts = pipeline.split_rows(np.arange(10), 4)
    assert [len(p) for p in parts] == [3, 3, 2, 2] and np.array_equal(np.concatenate(parts), np.arange(10))
    assert pipeline.weights(parts) == [0.3, 0.3, 0.2, 0.2]
    assert [len(p) for p in pipeline.split_rows(np.arange(3), 8)] == [1, 1, 1]  # fewer rows than m
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="micro_batches must be an integer >= 1"):
            pipeline.split_rows(np.arange(4), bad)  # type: ignore[arg-type]


def test_loss_weight_is_validated(wd_data: Path) -> None:
    L, F = wd_parties(wd_data)
    leader = wd.Leader(L, None, WD, wd.TrainConfig(batch_size=8, progress=False))
    with pytest.raises(ValueError, match="loss_weight must be a positive finite number"):
        leader.models["bottom"].backward_one_step({}, loss_weight=0.0)
    with pytest.raises(RuntimeError, match="optimizer_step\\(\\) without accumulated gradients"):
        leader.models["bottom"].optimizer_step()


@pytest.mark.parametrize("m", [2, 4])
def test_wide_deep_pipelined_step_equals_the_full_batch_step(wd_data: Path, monkeypatch: pytest.MonkeyPatch, m: int) -> None:
    L, F = wd_parties(wd_data)
    # 250 rows: not a multiple of 4 (micro-batches of 63, 63, 62, 62 rows)
    base = dict(epochs=1, batch_size=250, max_steps=1, log_every=1, progress=False, seed=0, compress=False, eval_fraction=0.0)
    ref_log = GradLog(monkeypatch)
    ref = wd.train_local(L, F, WD, wd.TrainConfig(**base))
    ref_grads = ref_log.steps
    got_log = GradLog(monkeypatch)
    got = wd.train_local(L, F, WD, wd.TrainConfig(**base, micro_batches=m))
    assert set(got_log.steps) == {"leader_bottom_loss_net", "leader_top_loss_net", "follower_bottom_loss_net"}
    assert all(len(v) == 1 for v in got_log.steps.values())  # one optimizer step per step, not per micro-batch
    assert_grads_close(ref_grads, got_log.steps)
    r, g = ref[0], got[0]
    assert g["wide_loss"] == pytest.approx(r["wide_loss"], rel=1e-5)  # weighted micro-batch means = batch mean
    assert g["deep_loss"] == pytest.approx(r["deep_loss"], rel=1e-5)


@pytest.mark.parametrize("m", [2, 4])
def test_pangu_pipelined_step_equals_the_full_batch_step(pg_data: Path, monkeypatch: pytest.MonkeyPatch, m: int) -> None:
    ds = pangu.TokenDataset(pg_data, PG.seq_length)
    base = dict(epochs=1, batch_size=8, max_steps=1, lr=1e-3, log_every=100, deepspeed=False)
    ref_log = GradLog(monkeypatch)
    ref = pangu.train_local(PG, ds, pangu.TrainConfig(**base))
    ref_grads = ref_log.steps
    got_log = GradLog(monkeypatch)
    got = pangu.train_local(PG, ds, pangu.TrainConfig(**base, micro_batches=m))
    assert len(got_log.steps) == 3  # embedding, head, backbone
    assert all(len(v) == 1 for v in got_log.steps.values())
    assert_grads_close(ref_grads, got_log.steps)
    assert got[0]["loss"] == pytest.approx(ref[0]["loss"], rel=1e-5)


def test_pangu_pipelined_with_deepspeed_backbone_tracks_the_full_batch_run(pg_data: Path) -> None:
    from required import require_deepspeed

    require_deepspeed()
    ds = pangu.TokenDataset(pg_data, PG.seq_length)
    base = dict(epochs=1, batch_size=8, max_steps=4, lr=1e-3, log_every=100)
    ref = [r["loss"] for r in pangu.train_local(PG, ds, pangu.TrainConfig(**base))]
    got = [r["loss"] for r in pangu.train_local(PG, ds, pangu.TrainConfig(**base, micro_batches=2))]
    # Under DeepSpeed the engine holds the gradients (ZeRO partitions), so this test follows the loss: step 1
    # is before any update (the micro-batch losses weighted by rows are the batch's mean), steps 2-4 after
    # updates from the accumulated gradients. Adam is invariant to the gradients' scale, so this checks that
    # every micro-batch reached the engine's accumulation (one missing moves the loss by far more than 1e-3);
    # the scale itself comes from party A's weighted gradients, checked above without DeepSpeed.
    assert len(got) == 4 and got[0] == pytest.approx(ref[0], rel=1e-5)
    for a, b in zip(ref, got):
        assert b == pytest.approx(a, rel=1e-3), (ref, got)


def test_pipelined_resume_continues_exactly(wd_data: Path, pg_data: Path, tmp_path: Path) -> None:
    L, F = wd_parties(wd_data)
    base = dict(epochs=1, batch_size=200, log_every=1, progress=False, seed=0, compress=False, eval_fraction=0.0, micro_batches=3)
    full = [
        r["wide_loss"]
        for r in wd.train_local(L, F, WD, wd.TrainConfig(**base, max_steps=5, ckpt_dir=str(tmp_path / "a")))
        if r["kind"] == "train"
    ]
    wd.train_local(L, F, WD, wd.TrainConfig(**base, max_steps=3, ckpt_every=2, ckpt_dir=str(tmp_path / "b")))
    resumed = wd.train_local(L, F, WD, wd.TrainConfig(**base, max_steps=5, resume=True, ckpt_dir=str(tmp_path / "b")))
    train = [r for r in resumed if r["kind"] == "train"]
    assert train[0]["step"] == 3 and [r["wide_loss"] for r in train] == full[2:]  # bit for bit

    ds = pangu.TokenDataset(pg_data, PG.seq_length)
    pb = dict(epochs=1, batch_size=4, lr=1e-3, log_every=100, deepspeed=False, micro_batches=2)
    full = [r["loss"] for r in pangu.train_local(PG, ds, pangu.TrainConfig(**pb, max_steps=5))]
    pangu.train_local(PG, ds, pangu.TrainConfig(**pb, max_steps=3, ckpt_every=2, ckpt_dir=str(tmp_path / "p")))
    resumed = pangu.train_local(PG, ds, pangu.TrainConfig(**pb, max_steps=5, resume=True, ckpt_dir=str(tmp_path / "p")))
    assert resumed[0]["step"] == 3 and [r["loss"] for r in resumed] == full[2:]


@pytest.mark.parametrize("scenario", ["wide_deep", "pangu"])
def test_two_processes_over_mtls_reproduce_the_in_process_pipelined_run(
    wd_data: Path, pg_data: Path, tmp_path: Path, scenario: str
) -> None:
    """The same schedule of the same operations in one process and over two (one thread each): bit for bit."""
    from split_runs import make_certs, pangu_run, run_split, wide_deep_run

    m, steps = 3, 3
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if scenario == "wide_deep":
            L, F = wd_parties(wd_data)
            hist = wd.train_local(
                L,
                F,
                WD,
                wd.TrainConfig(
                    epochs=1000,
                    batch_size=200,
                    max_steps=steps,
                    log_every=1,
                    progress=False,
                    seed=0,
                    compress=False,
                    eval_fraction=0.0,
                    micro_batches=m,
                ),
            )
            local = [r["wide_loss"] for r in hist if r["kind"] == "train"]
            spec = wide_deep_run(wd_data, model=wd.config_dict(WD), batch_size=200, steps=steps, compress=False)
        else:
            ds = pangu.TokenDataset(pg_data, PG.seq_length)
            local = [
                r["loss"]
                for r in pangu.train_local(
                    PG,
                    ds,
                    pangu.TrainConfig(
                        epochs=1000, batch_size=4, max_steps=steps, lr=1e-3, log_every=1, deepspeed=False, micro_batches=m
                    ),
                )
            ]
            spec = pangu_run(
                pg_data,
                pangu={
                    "config": "tiny",
                    **{k: getattr(PG, k) for k in ("vocab_size", "hidden_size", "num_layers", "num_heads", "seq_length")},
                },
                batch_size=4,
                steps=steps,
                compress=False,
            )
    finally:
        torch.set_num_threads(n)
    spec["train"]["pipeline"] = {"micro_batches": m}
    run = run_split(tmp_path / "run", spec, certs=make_certs(tmp_path / "certs"), timeout=300)
    assert len(local) == steps and run.losses == local


def test_an_interrupted_accumulation_is_discarded_before_a_restore(wd_data: Path) -> None:
    L, _ = wd_parties(wd_data)
    leader = wd.Leader(L, None, WD, wd.TrainConfig(batch_size=8, progress=False))
    bottom = leader.models["bottom"]
    feats = leader.features(np.arange(4), "")
    out = bottom.forward_one_step(feats)
    sens = {"loss": {k: torch.ones_like(out[k]) for k in ("leader_wide_embedding", "leader_deep_embedding")}}
    bottom.backward_one_step(feats, sens=sens, step=False, loss_weight=0.5)
    assert any(p.grad is not None for p in bottom.train_network.parameters()) and bottom.step == 0
    bottom.discard_accumulation()
    assert all(p.grad is None for p in bottom.train_network.parameters())
    with pytest.raises(RuntimeError, match="without accumulated gradients"):
        bottom.optimizer_step()


def test_backbone_steps_its_optimizer_after_its_last_frame(pg_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Party B's backbone steps its optimizer after the last micro-batch's gradient frame is sent (party A's
    embedding backward and next step do not wait for it), once per step; the gradients it steps on are the
    full batch's (test_pangu_pipelined_step_equals_the_full_batch_step)."""
    from splitlink.channel import InProcessCommunicator

    events: list[tuple[str, str]] = []
    step_plain, send = FLModel._step_plain, InProcessCommunicator.send_tensors

    def stepping(model: FLModel) -> None:
        events.append(("step", model.name))
        step_plain(model)

    def sending(comm: InProcessCommunicator, target: str, tensors: Any, **kw: Any) -> None:
        if kw.get("kind", "tensors") == "tensors":  # a step's frames (not the set-up's agreement)
            events.append(("send", comm.me))
        send(comm, target, tensors, **kw)

    monkeypatch.setattr(FLModel, "_step_plain", stepping)
    monkeypatch.setattr(InProcessCommunicator, "send_tensors", sending)
    ds = pangu.TokenDataset(pg_data, PG.seq_length)
    m, steps = 3, 2
    train = pangu.TrainConfig(epochs=1, batch_size=8, max_steps=steps, lr=1e-3, log_every=100, deepspeed=False, micro_batches=m)
    pangu.train_local(PG, ds, train)
    b_sends = [k for k, e in enumerate(events) if e == ("send", "follower")]
    b_steps = [k for k, (what, name) in enumerate(events) if what == "step" and "backbone" in name]
    assert len(b_sends) == 2 * m * steps and len(b_steps) == steps  # hidden states + gradients; one step each
    for s in range(steps):
        last_frame = b_sends[(s + 1) * 2 * m - 1]
        next_frame = b_sends[(s + 1) * 2 * m] if s + 1 < steps else len(events)
        assert last_frame < b_steps[s] < next_frame
