"""Label inference from the cut-layer gradients (the follower's attacks; see :mod:`splitlink.attacks`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "attack_auc",
    "direction_attack",
    "direction_scores",
    "leak_auc",
    "norm_attack",
    "norm_scores",
    "per_sample",
]


def attack_auc(labels: Any, scores: Any) -> float:
    """ROC AUC of ``scores`` for binary ``labels`` (Mann-Whitney U, ties counted one half); NaN for one class."""
    from scipy.stats import rankdata

    y = np.asarray(labels).reshape(-1) > 0.5
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.size != s.size:
        raise ValueError(f"{y.size} labels for {s.size} scores")
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return math.nan
    ranks = rankdata(s)  # average ranks over ties
    return float((ranks[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def leak_auc(auc: float) -> float:
    """max(AUC, 1 - AUC): an attack whose score ranks the classes the wrong way round leaks as much (an
    attacker who knows one label learns the orientation)."""
    return auc if math.isnan(auc) else max(auc, 1.0 - auc)


def per_sample(grads: Mapping[str, Any] | Sequence[Any] | Any) -> np.ndarray:
    """The per-sample gradients as one (batch, features) float64 array: each tensor's rows flattened and
    concatenated (a mapping in its key order)."""
    items = list(grads.values()) if isinstance(grads, Mapping) else list(grads) if isinstance(grads, (list, tuple)) else [grads]
    arrs = []
    for g in items:
        a = g.detach().to(torch.float64).cpu().numpy() if isinstance(g, torch.Tensor) else np.asarray(g, dtype=np.float64)
        arrs.append(a.reshape(a.shape[0], -1))
    rows = {a.shape[0] for a in arrs}
    if len(rows) != 1:
        raise ValueError(f"gradients disagree on the batch size: {sorted(rows)}")
    return np.concatenate(arrs, axis=1)


def norm_scores(grads: Any) -> np.ndarray:
    """Norm attack: each sample's gradient L2 norm (higher: more likely positive)."""
    out: np.ndarray = np.linalg.norm(per_sample(grads), axis=1)
    return out


def norm_attack(grads: Any, labels: Any) -> float:
    """AUC of the norm attack on one batch against the true labels."""
    return attack_auc(labels, norm_scores(grads))


def _cos(g: np.ndarray, ref: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(g, axis=1) * np.linalg.norm(ref)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (g @ ref) / n
    res: np.ndarray = np.nan_to_num(out, nan=0.0)
    return res


def direction_scores(grads: Any, reference: int | None = None) -> np.ndarray:
    """Direction (cosine) attack scores.

    ``reference``: the row of a sample the attacker knows to be positive; the score is the cosine
    similarity to its gradient (Li et al.: with a sigmoid output, positives' and negatives' gradients point
    in opposite directions). ``None``: no label knowledge; the majority class (negatives, when positives
    are rare) sets the mean unit gradient, and the score is minus the cosine to it.
    """
    g = per_sample(grads)
    if reference is not None:
        return _cos(g, g[reference])
    norms = np.linalg.norm(g, axis=1, keepdims=True)
    units = np.divide(g, norms, out=np.zeros_like(g), where=norms > 0)
    return -_cos(g, units.mean(0))


def direction_attack(grads: Any, labels: Any, *, known_positive: bool = True) -> float:
    """AUC of the direction attack on one batch. ``known_positive``: the reference is the batch's first
    positive (by the true labels), which is then left out of the scoring; else the majority direction."""
    y = np.asarray(labels).reshape(-1) > 0.5
    if not known_positive:
        return attack_auc(y, direction_scores(grads))
    pos = np.flatnonzero(y)
    if pos.size == 0:
        return math.nan
    ref = int(pos[0])
    s = direction_scores(grads, reference=ref)
    keep = np.ones(y.size, dtype=bool)
    keep[ref] = False
    return attack_auc(y[keep], s[keep])
