"""A client training under DeepSpeed ZeRO-2 on CPU, from FATE's seed config ("auto" values resolved)."""

from __future__ import annotations

import math

import pytest
import torch
from required import require_deepspeed

from splitlink.horizontal.adapters import (
    AdapterSpec,
    GPT2Spec,
    build_classifier,
    exchanged_names,
)
from splitlink.horizontal.client import LocalOptions, LocalTrainer

SPEC = GPT2Spec(vocab_size=260, n_positions=16, n_embd=16, n_layer=1, n_head=2, num_labels=2)
SEED_CONFIG = {  # seed 003's deepspeed_config, as is
    "train_micro_batch_size_per_gpu": 16,
    "train_batch_size": "auto",
    "optimizer": {"type": "Adam", "params": {"lr": 5e-4}},
    "scheduler": {"type": "WarmupLR", "params": {"warmup_min_lr": 0}},
    "fp16": {"enabled": False},
    "zero_optimization": {
        "stage": 2,
        "allgather_partitions": True,
        "allgather_bucket_size": 5e8,
        "overlap_comm": False,
        "reduce_scatter": True,
        "reduce_bucket_size": 5e8,
        "contiguous_gradients": True,
        "stage3_gather_16bit_weights_on_model_save": True,
    },
}


def _data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 257, (32, 16), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": (ids[:, 0] > 128).long()}


def _trainer(ds: dict | None, mode: str = "lora") -> LocalTrainer:  # type: ignore[type-arg]
    model = build_classifier(SPEC, AdapterSpec(type=mode, r=2, lora_alpha=4), seed=0)
    opts = LocalOptions(batch_size=16, lr=5e-3, optimizer="sgd", deepspeed=ds)
    return LocalTrainer("guest", model, _data(), opts, exchanged=exchanged_names(model))


@pytest.mark.slow
def test_deepspeed_zero2_client() -> None:
    require_deepspeed()
    torch.set_num_threads(1)
    # 1) the seed's config as is: trains (its WarmupLR keeps DeepSpeed's defaults, a log warm-up from lr 0
    #    over 1000 steps, so the first round's steps barely move: two rounds), only the adapters move
    t = _trainer(SEED_CONFIG)
    g0 = t.get_state()
    s1, n, loss = t.train_round(0, g0)
    s2, _, _ = t.train_round(1, s1)
    assert n == 32 and math.isfinite(loss)
    assert t.engine is not None and t.engine.zero_optimization_stage() == 2
    assert any(not torch.equal(s2[k], g0[k]) for k in g0)
    # 2) ZeRO-2 with plain SGD equals the torch client, and set_state reaches ZeRO's fp32 master copy:
    #    the same round from the same global state twice gives the same result
    sgd = {
        **{k: v for k, v in SEED_CONFIG.items() if k not in ("optimizer", "scheduler")},
        "optimizer": {"type": "SGD", "params": {"lr": 5e-3}},
        "train_micro_batch_size_per_gpu": "auto",
        "zero_allow_untested_optimizer": True,
    }  # torch SGD under ZeRO: DeepSpeed asks for consent
    d = _trainer(sgd, mode="none")
    p = _trainer(None, mode="none")
    w0 = p.get_state()
    a, _, _ = d.train_round(0, w0)
    b, _, _ = d.train_round(0, w0)
    c, _, _ = p.train_round(0, w0)
    for k in w0:
        assert torch.equal(a[k], b[k]), k
        # ZeRO-2 reduces gradients through flat fp32 buckets (same values, other memory layout); the
        # SGD update is elementwise, so any difference would be a rounding of the same sums: a few ulp
        torch.testing.assert_close(a[k], c[k], rtol=1e-6, atol=1e-7)
    assert any(not torch.equal(a[k], w0[k]) for k in w0)


@pytest.mark.slow
def test_deepspeed_client_keeps_its_engine_and_adam_moments_across_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two rounds under ZeRO-2 with Adam equal a torch reference whose ONE Adam optimizer lives across the
    rounds (parameters reset to the global state at each round's start, moments kept); a fresh optimizer
    per round (the stateless torch client) gives another result, so the comparison can fail."""
    require_deepspeed()
    from splitlink.horizontal import client as client_mod

    torch.set_num_threads(1)
    adam = {
        **{k: v for k, v in SEED_CONFIG.items() if k not in ("optimizer", "scheduler")},
        "optimizer": {"type": "Adam", "params": {"lr": 5e-3}},
        "train_micro_batch_size_per_gpu": "auto",
        "zero_allow_untested_optimizer": True,
    }

    def trainer(ds: dict | None) -> LocalTrainer:  # type: ignore[type-arg]
        model = build_classifier(SPEC, AdapterSpec(type="none"), seed=0)
        opts = LocalOptions(batch_size=16, lr=5e-3, optimizer="adam", deepspeed=ds)
        return LocalTrainer("guest", model, _data(), opts, exchanged=exchanged_names(model))

    d, ref, fresh = trainer(adam), trainer(None), trainer(None)
    w0 = ref.get_state()
    d1, _, _ = d.train_round(0, w0)
    engine = d.engine
    assert engine is not None
    # the reference: one torch Adam for the life of the client (the stateless client makes one per round)
    real = client_mod._torch_optimizer
    kept: dict[str, torch.optim.Optimizer] = {}

    def persistent(kind: str, params: list[torch.nn.Parameter], opts: LocalOptions, ds: object = None) -> torch.optim.Optimizer:
        if "opt" not in kept:
            kept["opt"] = real(kind, params, opts, ds)  # type: ignore[arg-type]
        return kept["opt"]

    monkeypatch.setattr(client_mod, "_torch_optimizer", persistent)
    r1, _, _ = ref.train_round(0, w0)
    monkeypatch.setattr(client_mod, "_torch_optimizer", real)
    # round 2 starts from a global state that is not the client's own result (as after averaging)
    g1 = {k: (d1[k] + w0[k]) / 2 for k in w0}
    d2, _, _ = d.train_round(1, g1)
    assert d.engine is engine  # not rebuilt
    monkeypatch.setattr(client_mod, "_torch_optimizer", persistent)
    r2, _, _ = ref.train_round(1, g1)
    monkeypatch.setattr(client_mod, "_torch_optimizer", real)
    fresh.train_round(0, w0)
    f2, _, _ = fresh.train_round(1, g1)
    assert int(next(iter(kept["opt"].state.values()))["step"]) == 2 * d.steps_in_round()
    far = 0.0
    for k in w0:
        # ZeRO-2 reduces gradients through flat fp32 buckets (same values, other layout) and Adam is
        # elementwise: a few ulp after two rounds, far below a step of lr = 5e-3
        torch.testing.assert_close(d1[k], r1[k], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(d2[k], r2[k], rtol=1e-5, atol=1e-6)
        far = max(far, float((f2[k] - d2[k]).abs().max()))
    assert far > 1e-4  # the moments matter: a fresh optimizer in round 2 lands elsewhere
