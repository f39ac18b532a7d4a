"""The examples' DP flags do what they claim, measured on what the model trains on and what is sent:

* Wide&Deep ``label_dp`` (randomized response, eps 1 in leader_top_label_dp.yaml): the labels the top
  network trains on differ from the true ones at the rate 1 / (1 + e^eps), each sample's label is
  randomised once (the same in every epoch), and the run differs from one without label DP;
* Wide&Deep ``embedding_dp`` (MindSpore's sign randomized response, eps 1): the follower sends bits that
  differ from the signs of its clean embeddings at the rate 1 / (1 + e^eps);
* Pangu ``embedding_dp`` (Gaussian, clip_norm 1, noise_multiplier 1): the sent hidden states are the clean
  ones clipped to L2 norm 1 per sample plus noise of standard deviation noise_multiplier * clip_norm.

A spy on FLModel.forward_one_step records each step's network inputs (after label DP) and released
outputs, and recomputes the clean outputs with the same parameters (these networks have no dropout).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from splitlink.examples import criteo, pangu
from splitlink.examples import demo as demo_mod
from splitlink.examples import wide_deep as wd
from splitlink.model import FLModel

TINY = wd.WideDeepConfig(vocab_size=5000, emb_dim=8, deep_layers=(32, 16))
# init_std 1: hidden states of per-sample L2 norm ~sqrt(2 * 32 * 64) = 64, far above clip_norm 1, so that
# clipping shows in what is sent (at the default 0.02 the norms are ~1.3 and clipping is lost in the noise)
PANGU = dataclasses.replace(
    pangu.CONFIGS["tiny"], hidden_size=64, num_heads=4, num_layers=2, seq_length=32, vocab_size=512, init_std=1.0
)
EPS = 1.0  # both Wide&Deep DP YAMLs
FLIP = 1.0 / (1.0 + math.exp(EPS))  # 0.2689: binary randomized response with eps 1


def within(rate: float, p: float, n: int) -> bool:
    """|rate - p| within 5 standard deviations of a binomial proportion (a false failure: < 1e-6)."""
    return abs(rate - p) <= 5 * math.sqrt(p * (1 - p) / n)


@pytest.fixture(scope="module")
def criteo_parties(tmp_path_factory: pytest.TempPathFactory) -> tuple[criteo.PartyData, criteo.PartyData]:
    d = tmp_path_factory.mktemp("dp")
    demo_mod.prepare_data(d, 3000, seed=5, vocab_size=5000)
    return criteo.load_party(d / "leader.npz", "leader"), criteo.load_party(d / "follower.npz", "follower")


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    records: list[dict[str, Any]] = []
    original = FLModel.forward_one_step

    def forward_one_step(self: FLModel, local: Any = None, remote: Any = None) -> Any:
        out = original(self, local, remote)
        rec: dict[str, Any] = {"model": self, "local": dict(local or {})}
        if self.label_dp is not None:
            i = self._in_names.index(self._label_name)
            rec["trained_label"] = self._pending["inputs"][i].detach().reshape(-1).clone()
        if self.embedding_dp is not None:
            with torch.no_grad():
                clean = self.train_network(*self._pending["inputs"])
            rec["clean"] = dict(zip(self._out_names, (c.detach().clone() for c in clean)))
            rec["sent"] = {n: out[n].detach().clone() for n in self._remote_outs}
        records.append(rec)
        return out

    monkeypatch.setattr(FLModel, "forward_one_step", forward_one_step)
    yield records


def wd_losses(hist: list[dict[str, Any]]) -> list[float]:
    return [r["wide_loss"] for r in hist if r["kind"] == "train"]


@pytest.mark.slow
def test_wide_deep_label_dp_flips_each_samples_label_once_at_the_eps_rate(
    criteo_parties: tuple[criteo.PartyData, criteo.PartyData], spy: list[dict[str, Any]]
) -> None:
    L, F = criteo_parties
    train = dict(epochs=2, batch_size=300, log_every=1, progress=False, compress=False)
    hist = wd.train_local(L, F, TINY, wd.TrainConfig(**train, label_dp=True))
    steps = [r for r in spy if "trained_label" in r]
    n_train = len(L) - round(len(L) * 0.1)
    assert len(steps) == 2 * math.ceil(n_train / 300)
    true = dict(zip(L.sample_ids.tolist(), np.asarray(L.labels).tolist()))
    per_epoch: list[dict[int, int]] = [{}, {}]
    half = len(steps) // 2
    for k, r in enumerate(steps):
        for sid, lab in zip(r["local"]["sample_id"].tolist(), r["trained_label"].tolist()):
            per_epoch[k // half][sid] = int(lab)
    assert per_epoch[0].keys() == per_epoch[1].keys() and len(per_epoch[0]) == n_train  # every sample, each epoch
    flipped = [sid for sid, lab in per_epoch[0].items() if lab != true[sid]]
    rate = len(flipped) / n_train
    assert within(rate, FLIP, n_train), (rate, FLIP, n_train)
    # randomised once per sample: the second epoch trains on exactly the labels of the first
    assert per_epoch[1] == per_epoch[0]
    # without label DP the model trains on the true labels, and the runs differ
    spy.clear()
    clean = wd.train_local(L, F, TINY, wd.TrainConfig(**train))
    assert not any("trained_label" in r for r in spy)
    assert wd_losses(clean) != wd_losses(hist)


@pytest.mark.slow
def test_wide_deep_embedding_dp_sends_sign_bits_flipped_at_the_eps_rate(
    criteo_parties: tuple[criteo.PartyData, criteo.PartyData], spy: list[dict[str, Any]]
) -> None:
    L, F = criteo_parties
    train = dict(epochs=1, batch_size=300, log_every=1, progress=False, compress=False, max_steps=4)
    hist = wd.train_local(L, F, TINY, wd.TrainConfig(**train, embedding_dp=True))
    steps = [r for r in spy if "sent" in r]
    assert len(steps) == 4
    differ = total = 0
    for r in steps:
        assert set(r["sent"]) == {"follower_wide_embedding", "follower_deep_embedding"}
        for name, sent in r["sent"].items():
            assert ((sent == 0) | (sent == 1)).all(), name  # one bit per value
            signs = (r["clean"][name] > 0).to(sent.dtype)
            differ += int((sent != signs).sum())
            total += sent.numel()
    assert within(differ / total, FLIP, total), (differ / total, FLIP, total)
    spy.clear()
    clean = wd.train_local(L, F, TINY, wd.TrainConfig(**train))
    assert not any("sent" in r for r in spy)
    assert wd_losses(clean) != wd_losses(hist)


@pytest.mark.slow
def test_pangu_embedding_dp_clips_to_the_norm_and_adds_noise_of_the_expected_scale(
    tmp_path: Path, spy: list[dict[str, Any]]
) -> None:
    corpus = pangu.stdlib_corpus(tmp_path / "corpus", max_bytes=100_000)
    ds = pangu.TokenDataset(pangu.preprocess_corpus(corpus, tmp_path / "data", vocab_size=512), PANGU.seq_length)
    train = dict(epochs=1, batch_size=4, max_steps=3, lr=1e-3, deepspeed=False)
    hist = pangu.train_local(PANGU, ds, pangu.TrainConfig(**train, embedding_dp=True))
    steps = [r for r in spy if "sent" in r]
    assert len(steps) == 3
    clip, sigma = 1.0, 1.0 * 1.0  # PartyA's settings: clip_norm 1, noise_multiplier 1 (std = multiplier * clip)
    residuals, along = [], []
    for r in steps:
        x = r["clean"]["embedding_table"].double()
        sent = r["sent"]["embedding_table"].double()
        flat_x, flat_sent = x.reshape(len(x), -1), sent.reshape(len(sent), -1)
        norms = flat_x.norm(dim=1)
        assert (norms > 10 * clip).all(), norms  # clipping matters here: every sample is far above clip_norm
        clipped = flat_x * (clip / norms.clamp(min=clip)).unsqueeze(1)
        residuals.append((flat_sent - clipped).reshape(-1))
        along.append((flat_sent * flat_x / norms.unsqueeze(1)).sum(dim=1))  # clip + N(0, sigma^2) per sample
    res = torch.cat(residuals)
    n = res.numel()
    # noise ~ N(0, sigma^2) independent of the data: mean 0 (sd sigma/sqrt(n)), variance sigma^2 (sd ~ sigma^2*sqrt(2/n))
    assert abs(float(res.mean())) < 5 * sigma / math.sqrt(n), float(res.mean())
    assert abs(float(res.var()) - sigma**2) < 5 * sigma**2 * math.sqrt(2 / n), float(res.var())
    # the clipping norm holds: along its clean direction each sent sample has length clip_norm plus N(0, sigma^2)
    # noise (mean over k samples: sd sigma/sqrt(k)); unclipped it would be its norm (> 10 clip_norm)
    a = torch.cat(along)
    assert abs(float(a.mean()) - clip) < 5 * sigma / math.sqrt(len(a)), a
    spy.clear()
    clean = pangu.train_local(PANGU, ds, pangu.TrainConfig(**train))
    assert not any("sent" in r for r in spy)
    assert [r["loss"] for r in clean] != [r["loss"] for r in hist]
