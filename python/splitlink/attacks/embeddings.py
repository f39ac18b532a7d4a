"""Attacks on the follower's embeddings (the leader's; see :mod:`splitlink.attacks`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from splitlink.attacks.gradients import attack_auc, per_sample

__all__ = ["feature_inversion", "model_completion", "onehot_targets"]


def _split(n: int, known: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 1 <= known < n:
        raise ValueError(f"known/auxiliary samples must be between 1 and {n - 1} (of {n}), got {known}")
    order = np.random.default_rng(seed).permutation(n)
    return order[:known], order[known:]


def _standardise(x: np.ndarray, fit: np.ndarray) -> np.ndarray:
    mu, sd = x[fit].mean(0), x[fit].std(0)
    out: np.ndarray = (x - mu) / np.where(sd > 0, sd, 1.0)
    return out


def model_completion(
    embeddings: Any, labels: Any, *, known: int = 40, seed: int = 0, weight_decay: float = 1e-2, steps: int = 200
) -> dict[str, float]:
    """Trains a logistic head on ``known`` randomly chosen samples' embeddings and labels (seeded), and
    predicts the others. Returns ``accuracy``, ``auc`` and ``majority_accuracy`` (always predicting the
    known samples' majority class: the baseline accuracy must beat). The known set always holds both
    classes (its first positive and negative are swapped in if the draw missed one)."""
    x = per_sample(embeddings)
    y = (np.asarray(labels).reshape(-1) > 0.5).astype(np.float64)
    if x.shape[0] != y.size:
        raise ValueError(f"{x.shape[0]} embeddings for {y.size} labels")
    fit, rest = _split(len(y), known, seed)
    for cls in (0.0, 1.0):
        if not (y[fit] == cls).any():
            swap = rest[np.flatnonzero(y[rest] == cls)]
            if swap.size == 0:
                raise ValueError("model completion needs both classes among the samples")
            j = int(np.flatnonzero(rest == swap[0])[0])
            rest[j], fit[0 if cls else -1] = fit[0 if cls else -1], swap[0]
    xs = torch.from_numpy(_standardise(x, fit))
    yt = torch.from_numpy(y)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")
    fit_t = torch.from_numpy(fit)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        z = xs[fit_t] @ w + b
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z, yt[fit_t]) + weight_decay * w.dot(w)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]
    with torch.no_grad():
        z = (xs @ w + b).numpy()
    pred = z[rest] > 0
    majority = float(y[fit].mean() >= 0.5)
    return {
        "accuracy": float((pred == (y[rest] > 0.5)).mean()),
        "auc": attack_auc(y[rest], z[rest]),
        "majority_accuracy": float((y[rest] == majority).mean()),
        "known": float(len(fit)),
    }


def onehot_targets(features: np.ndarray, *, top: int = 3) -> np.ndarray:
    """Raw categorical features (rows x fields of ids) as indicators of each field's ``top`` most frequent
    values: the regression targets of :func:`feature_inversion`."""
    f = np.asarray(features)
    cols = []
    for j in range(f.shape[1]):
        vals, counts = np.unique(f[:, j], return_counts=True)
        for v in vals[np.argsort(-counts, kind="stable")[:top]]:
            cols.append((f[:, j] == v).astype(np.float64))
    return np.stack(cols, axis=1) if cols else np.zeros((f.shape[0], 0))


def feature_inversion(
    embeddings: Any, targets: np.ndarray, *, aux: int = 200, seed: int = 0, ridge: float = 1.0
) -> dict[str, float]:
    """Regresses ``targets`` (e.g. :func:`onehot_targets` of the follower's raw features) on the embeddings
    (ridge, with intercept), fitted on ``aux`` random samples (the attacker's auxiliary set, seeded), and
    reports on the others: ``r2`` = 1 - SSE / SST pooled over the target columns, ``mse`` and
    ``baseline_mse`` (predicting the auxiliary set's column means; its R^2 is ``baseline_r2``, about 0)."""
    x = per_sample(embeddings)
    t = np.asarray(targets, dtype=np.float64)
    if t.ndim != 2 or t.shape[0] != x.shape[0]:
        raise ValueError(f"targets must be (samples, columns) with {x.shape[0]} samples, got {t.shape}")
    fit, rest = _split(len(x), aux, seed)
    xs = _standardise(x, fit)
    a = np.hstack([xs[fit], np.ones((len(fit), 1))])
    reg = ridge * np.eye(a.shape[1])
    reg[-1, -1] = 0.0  # the intercept is not penalised
    coef = np.linalg.solve(a.T @ a + reg, a.T @ t[fit])
    pred = np.hstack([xs[rest], np.ones((len(rest), 1))]) @ coef
    truth = t[rest]
    sse = float(((pred - truth) ** 2).sum())
    base = float(((truth - t[fit].mean(0)) ** 2).sum())
    sst = float(((truth - truth.mean(0)) ** 2).sum())
    n = truth.size or 1
    return {
        "r2": 1.0 - sse / sst if sst > 0 else math.nan,
        "baseline_r2": 1.0 - base / sst if sst > 0 else math.nan,
        "mse": sse / n,
        "baseline_mse": base / n,
    }
