"""The audit's follower-optimizer option (``bench_leakage.py --follower-optimizer``): it reaches the follower's
YAML (the Wide&Deep follower's bottom really steps with SGD, the leader keeps its own optimizers), the
defence rows carry it, and the test-AUC cost is against the best no-defence baseline. No training: the
audit's ``train_local`` is replaced by one that records the configuration it is given."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from splitlink.attacks import CutTap
from splitlink.attacks.audit import (
    Defence,
    add_costs,
    default_defences,
    follower_optimizer,
    format_table,
    get_target,
)
from splitlink.examples import wide_deep as wd
from splitlink.optim import FTRL


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return get_target("criteo_wide_deep").prepare(tmp_path_factory.mktemp("fopt"), 600, 5)


def audit_train_config(data: Any, defence: Defence, monkeypatch: pytest.MonkeyPatch) -> wd.TrainConfig:
    """The TrainConfig the audit's Wide&Deep run would train with for ``defence``."""
    seen: list[wd.TrainConfig] = []

    def fake_train_local(leader: Any, follower: Any, cfg: Any, train: wd.TrainConfig, **kw: Any) -> list[dict[str, Any]]:
        seen.append(train)
        return [{"kind": "eval", "auc": 0.5, "seconds": 0.0}]

    monkeypatch.setattr(wd, "train_local", fake_train_local)
    get_target("criteo_wide_deep").train(data, defence, CutTap(), epochs=1, batch_size=100, seed=3)
    assert len(seen) == 1
    return seen[0]


def optimizers(party: Any) -> list[torch.optim.Optimizer]:
    return [o for m in party.models.values() for o in m.optimizers]


def test_momentum_sgd_reaches_the_followers_yaml_and_only_it(data: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    d = Defence("marvell", "scale 8", {"marvell": {"scale": 8.0, "seed": 7}}, None, follower_optimizer("momentum", 0.05))
    train = audit_train_config(data, d, monkeypatch)
    assert train.seed == 3 and train.leader_privacy == {"marvell": {"scale": 8.0, "seed": 7}}
    follower = wd.Follower(data[1], None, wd.AUDIT_MODEL, train)
    opts = optimizers(follower)
    assert len(opts) == 2  # the YAML's two: wide (FTRL) and deep (Adam), both replaced
    for o in opts:
        assert type(o) is torch.optim.SGD
        assert [g["lr"] for g in o.param_groups] == [0.05] * len(o.param_groups)  # absolute: not x lr_scale
        assert [g["momentum"] for g in o.param_groups] == [0.9] * len(o.param_groups)
    # every follower parameter is still stepped by one of them
    stepped = {id(p) for o in opts for g in o.param_groups for p in g["params"]}
    assert {id(p) for p in follower.net.parameters()} <= stepped
    # the YAML's loss_scale stays (the sens was multiplied by it)
    raw = follower.models["bottom"].yaml.raw
    assert [o["hyper_parameters"] for o in raw["opts"]] == [{"loss_scale": 1024.0, "learning_rate": 0.05, "momentum": 0.9}] * 2
    # the leader keeps the YAML's optimizers, learning rates x the audit's lr scale
    leader = wd.Leader(data[0], None, wd.AUDIT_MODEL, train)
    kinds = sorted(type(o).__name__ for o in optimizers(leader))
    assert "SGD" not in kinds and "Adam" in kinds and "FTRL" in kinds


def test_one_sgd_step_moves_the_followers_deep_weights_by_lr_times_the_gradient(
    data: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # seeded: the same follower (seed 3) built twice, once stepped; plain SGD (no momentum) must move each deep
    # weight by exactly -lr x its gradient (Adam would move every touched weight by about lr regardless of size)
    lr = 0.5
    train = audit_train_config(data, Defence("none", follower_optimizer=follower_optimizer("sgd", lr)), monkeypatch)
    f = wd.Follower(data[1], None, wd.AUDIT_MODEL, train)
    before = {n: p.detach().clone() for n, p in f.net.named_parameters()}
    idx = np.arange(50)
    batch = f.features(idx, "0")
    out = f.models["bottom"].forward_one_step(batch)
    g = torch.Generator().manual_seed(0)
    sens = {
        "loss": {
            k: torch.randn(out[k].shape, generator=g) * 1024.0 for k in ("follower_wide_embedding", "follower_deep_embedding")
        }
    }
    # the reference gradient of the last dense layer's bias: sum over rows of the deep embedding's sens / loss_scale
    # (the YAML's deep optimizer has loss_scale 1024; its l2 term has no bias in it)
    expected_bias_grad = sens["loss"]["follower_deep_embedding"].sum(0) / 1024.0
    f.models["bottom"].backward_one_step(batch, sens=sens)
    after = dict(f.net.named_parameters())
    name = [n for n in before if n.startswith("dense.") and n.endswith(".bias")][-1]
    # float32 sums of 50 terms of size ~1: 1e-5 relative covers their rounding
    torch.testing.assert_close(before[name] - after[name].detach(), lr * expected_bias_grad, rtol=1e-5, atol=1e-6)


def test_replace_adam_only_keeps_the_wide_ftrl(data: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    d = Defence("none", follower_optimizer=follower_optimizer("sgd", 0.1, replace="adam"))
    follower = wd.Follower(data[1], None, wd.AUDIT_MODEL, audit_train_config(data, d, monkeypatch))
    kinds = sorted(type(o).__name__ for o in optimizers(follower))
    assert kinds == ["FTRL", "SGD"]
    ftrl = next(o for o in optimizers(follower) if isinstance(o, FTRL))
    assert ftrl.param_groups[0]["lr"] == pytest.approx(5e-2 * wd.AUDIT_LR_SCALE)  # the YAML's, scaled as before


def test_default_defences_run_the_baseline_with_both_optimizers() -> None:
    spec = follower_optimizer("momentum", 0.05)
    ds = default_defences(quick=True, marvell_scales=[4.0, 8.0], follower_optimizer=spec)
    assert (ds[0].name, ds[0].follower_optimizer, ds[0].optimizer) == ("none", None, "yaml")
    assert ds[1].name == "none" and ds[1].follower_optimizer == spec
    assert all(d.follower_optimizer == spec for d in ds[1:])
    assert [d.strength for d in ds if d.name == "marvell"] == ["scale 4", "scale 8"]
    assert ds[1].optimizer == "mom0.9 lr0.05"
    assert (
        default_defences(quick=True)[0].follower_optimizer is None
        and len([d for d in default_defences(quick=True) if d.name == "none"]) == 1
    )


def row(defence: str, opt: str, aucs: list[float]) -> dict[str, Any]:
    return {
        "defence": defence,
        "strength": "-",
        "optimizer": opt,
        "seeds": [0, 1, 2],
        "test_auc_by_seed": aucs,
        "test_auc": float(np.median(aucs)),
        "step_ms": 10.0,
    }


def test_cost_is_against_the_better_baseline_paired_by_seed() -> None:
    rows = [
        row("none", "yaml", [0.76, 0.77, 0.78]),
        row("none", "sgd", [0.74, 0.75, 0.80]),  # median 0.75 < 0.77: the yaml baseline is the better one
        row("marvell", "sgd", [0.75, 0.74, 0.76]),
    ]
    add_costs(rows)
    m = rows[2]
    assert m["baseline"] == "none yaml"
    assert m["test_auc_cost_by_seed"] == pytest.approx([0.01, 0.03, 0.02])
    assert m["test_auc_cost"] == pytest.approx(0.02)
    assert m["test_auc_cost_same_optimizer"] == pytest.approx(0.01)  # median of -0.01, 0.01, 0.04
    assert rows[1]["test_auc_cost"] == pytest.approx(0.02)  # the worse optimizer's own price
    assert rows[0]["test_auc_cost"] == 0.0
    assert "sgd" in format_table(rows)


def test_bad_optimizer_options_are_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="yaml, adam, sgd, momentum"):
        follower_optimizer("rmsprop", 0.1)
    with pytest.raises(ValueError, match="learning rate > 0"):
        follower_optimizer("sgd")
    with pytest.raises(ValueError, match="momentum must be in"):
        follower_optimizer("momentum", 0.1, momentum=1.0)
    assert follower_optimizer("yaml") is None
    with pytest.raises(ValueError, match="follower_optimizer must be"):
        wd._replace_optimizer({"type": "Adam"}, {"kind": "SGD"})


def test_no_baseline_gives_nan_costs() -> None:
    rows = [row("marvell", "sgd", [0.7, 0.7, 0.7])]
    add_costs(rows)
    assert math.isnan(rows[0]["test_auc_cost"]) and rows[0]["baseline"] is None
