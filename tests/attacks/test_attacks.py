"""The attacks themselves, on data whose leakage is known by construction (fast, no training)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from splitlink.attacks import (
    attack_auc,
    direction_attack,
    direction_scores,
    feature_inversion,
    model_completion,
    norm_attack,
    onehot_targets,
)
from splitlink.attacks.gradients import leak_auc, per_sample


def brute_auc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    wins = sum((a > b) + 0.5 * (a == b) for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_attack_auc_is_the_pairwise_probability_with_ties_half() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(60) < 0.3).astype(int)
    s = rng.integers(0, 5, 60).astype(float)  # many ties
    assert attack_auc(y, s) == pytest.approx(brute_auc(y, s), abs=1e-12)
    assert np.isnan(attack_auc(np.zeros(5), np.arange(5)))
    assert leak_auc(0.2) == pytest.approx(0.8) and leak_auc(0.7) == 0.7
    with pytest.raises(ValueError, match="labels for"):
        attack_auc(np.zeros(3), np.zeros(4))


def test_gradient_attacks_read_norm_and_direction() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(400) < 0.25).astype(np.float32)
    jac = rng.normal(size=8)
    # positives: larger and opposite gradients, as BCE makes them
    g = ((0.25 - y)[:, None] * (jac + 0.2 * rng.normal(size=(400, 8)))).astype(np.float32)
    grads = {"wide": torch.from_numpy(g[:, :1].copy()), "deep": torch.from_numpy(g[:, 1:].copy())}
    assert per_sample(grads).shape == (400, 8)
    assert norm_attack(grads, y) > 0.95
    assert direction_attack(grads, y) > 0.99
    assert direction_attack(grads, y, known_positive=False) > 0.99
    # the same norms in random directions: the direction attack is at chance, the norm attack is not
    u = rng.normal(size=(400, 8))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    shuffled = u * np.linalg.norm(g, axis=1, keepdims=True)
    assert norm_attack(shuffled, y) > 0.95
    assert 0.4 < direction_attack(shuffled, y) < 0.6
    # equal norms: the norm attack has nothing
    assert norm_attack(u, y) < 0.6
    s = direction_scores(g, reference=int(np.flatnonzero(y)[0]))
    assert s.shape == (400,) and np.all(np.abs(s) <= 1 + 1e-6)


def test_model_completion_learns_labels_from_informative_embeddings_only() -> None:
    rng = np.random.default_rng(2)
    y = (rng.random(3000) < 0.3).astype(float)
    informative = rng.normal(size=(3000, 6)) + 1.5 * y[:, None] * np.array([1, -1, 0, 0, 0.5, 0])
    res = model_completion(informative, y, known=40, seed=0)
    assert res["auc"] > 0.85 and res["accuracy"] > res["majority_accuracy"] + 0.05 and res["known"] == 40
    noise = rng.normal(size=(3000, 6))
    res0 = model_completion(noise, y, known=40, seed=0)
    assert 0.4 < res0["auc"] < 0.6
    # deterministic given the seed
    assert model_completion(informative, y, known=40, seed=0) == res
    # the known set holds both classes even when the draw would not
    assert model_completion(informative, np.r_[1.0, np.zeros(2999)], known=5, seed=0)["known"] == 5
    with pytest.raises(ValueError, match="between 1 and"):
        model_completion(informative, y, known=3000)


def test_feature_inversion_beats_the_mean_baseline_only_when_features_leak() -> None:
    rng = np.random.default_rng(3)
    feats = rng.integers(0, 6, size=(4000, 5))
    t = onehot_targets(feats, top=3)
    assert t.shape == (4000, 15) and set(np.unique(t)) <= {0.0, 1.0}
    emb = t @ rng.normal(size=(15, 10)) + 0.3 * rng.normal(size=(4000, 10))  # a noisy linear encoder
    res = feature_inversion(emb, t, aux=200, seed=0)
    assert res["r2"] > 0.5 and res["mse"] < res["baseline_mse"]
    assert abs(res["baseline_r2"]) < 0.05
    blind = feature_inversion(rng.normal(size=(4000, 10)), t, aux=200, seed=0)
    assert blind["r2"] < 0.02
    with pytest.raises(ValueError, match="samples"):
        feature_inversion(emb, t[:10])
