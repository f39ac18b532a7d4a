"""The leakage audit: train a scenario with no defence and with each defence at a few strengths, run every
attack on what crossed the cut, tabulate (``splitlink audit``, ``benchmarks/bench_leakage.py``).

A scenario takes part by registering an :class:`AuditTarget` when its module is imported (Wide&Deep:
``criteo_wide_deep``): how to prepare its data, train it once with a defence (the defence is a ``privacy``
section merged into the party's YAML, so it goes through the same validation as a user's file) while a
:class:`~splitlink.attacks.CutTap` records what crosses the cut, and the ground truth the attacks are scored
against (the true labels, the follower's raw features).

What is reported per run (attack AUCs as ``max(AUC, 1 - AUC)``: a score ranking the classes the wrong way
round leaks as much):

* ``test_auc``: the model's held-out AUC after training (the price of the defence);
* ``norm_auc``, ``direction_auc`` (cosine to a known positive in the batch), ``direction_majority_auc``
  (cosine to the majority direction): the follower's label inference from the gradients it receives,
  per step, averaged over all steps (``*_by_epoch``: per epoch);
* ``completion_acc``, ``completion_auc`` (and ``majority_acc``, the accuracy of always predicting the
  majority class): the leader's model completion on the follower's last-epoch embeddings, ``known``
  labelled samples;
* ``inversion_r2`` (and ``inversion_baseline_r2``): the leader's ridge inversion of the follower's raw
  features (indicators of each field's 3 most frequent values) from its last-epoch embeddings, fitted on
  ``aux`` samples;
* ``step_ms``: the median training step time.
"""

from __future__ import annotations

import math
import statistics
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from splitlink.attacks.embeddings import (
    feature_inversion,
    model_completion,
    onehot_targets,
)
from splitlink.attacks.gradients import direction_attack, leak_auc, norm_attack
from splitlink.attacks.tap import CutTap, TapRecord

__all__ = [
    "TABLE_COLUMNS",
    "AuditTarget",
    "Defence",
    "default_defences",
    "evaluate_tap",
    "format_table",
    "get_target",
    "plot_tradeoff",
    "register_target",
    "run_audit",
    "target_names",
]


@dataclass(frozen=True)
class Defence:
    """One row of the audit: a defence at one strength, as ``privacy`` YAML sections per party."""

    name: str
    strength: str = "-"
    leader_privacy: dict[str, Any] | None = None
    follower_privacy: dict[str, Any] | None = None


@dataclass(frozen=True)
class AuditTarget:
    """How the audit trains a scenario (registered by the scenario's module).

    ``prepare(workdir, rows, seed, tsv)`` -> data (synthetic unless ``tsv`` names a Criteo-format file);
    ``train(data, defence, tap, epochs=, batch_size=, seed=)`` -> ``{"test_auc", "step_seconds": [...]}``;
    ``labels(data)``: the true labels by row; ``follower_features(data)``: the follower's raw categorical
    features by row (the inversion's ground truth)."""

    name: str
    prepare: Callable[..., Any]
    train: Callable[..., dict[str, Any]]
    labels: Callable[[Any], np.ndarray]
    follower_features: Callable[[Any], np.ndarray]
    summary: str = ""


_targets: dict[str, AuditTarget] = {}
_lock = threading.Lock()


def register_target(target: AuditTarget) -> AuditTarget:
    if not isinstance(target, AuditTarget):
        raise TypeError(f"register_target() takes an AuditTarget, got {type(target).__name__}")
    with _lock:
        _targets[target.name] = target
    return target


def get_target(name: str) -> AuditTarget:
    with _lock:
        if name not in _targets:
            raise ValueError(
                f"scenario {name!r} has no leakage audit; scenarios with one: {', '.join(sorted(_targets)) or '(none imported)'}"
            )
        return _targets[name]


def target_names() -> list[str]:
    with _lock:
        return sorted(_targets)


def default_defences(
    quick: bool = False,
    *,
    marvell_scales: Sequence[float] | None = None,
    normalize_marvell_scales: Sequence[float] = (),
) -> list[Defence]:
    """No defence, then each defence at 2 (``quick``) or 3 strengths, weakest first; ``marvell_scales``
    replaces Marvell's default power budgets (see :class:`splitlink.privacy.MarvellNoise`);
    ``normalize_marvell_scales`` adds the combination gradient normalisation then Marvell at those budgets
    (the budget is then relative to the normalised gradients' class-mean difference)."""
    marvell = tuple(marvell_scales) if marvell_scales is not None else (1.0, 4.0) if quick else (0.25, 1.0, 4.0, 8.0)
    clip_q = (0.5,) if quick else (0.5, 0.1)
    label_eps = (3.0, 1.0) if quick else (3.0, 1.0, 0.5)
    emb_sigma = (0.25, 1.0) if quick else (0.25, 1.0, 2.0)
    out = [Defence("none")]
    out += [Defence("marvell", f"scale {s:g}", leader_privacy={"marvell": {"scale": s, "seed": 7}}) for s in marvell]
    out.append(Defence("grad_norm", "normalize", leader_privacy={"grad_norm": {"mode": "normalize"}}))
    out += [
        Defence(
            "norm+marvell",
            f"scale {s:g}",
            leader_privacy={"grad_norm": {"mode": "normalize"}, "marvell": {"scale": s, "seed": 7}},
        )
        for s in normalize_marvell_scales
    ]
    out += [Defence("grad_norm", f"clip q{q:g}", leader_privacy={"grad_norm": {"mode": "clip", "quantile": q}}) for q in clip_q]
    out += [Defence("label_dp", f"eps {e:g}", leader_privacy={"label_dp": {"eps": e, "seed": 7}}) for e in label_eps]
    # clip_norm 1: the follower's embeddings have per-sample norms of about 1 here (measured by the audit:
    # see the emb_norm column of the JSON); the noise multiplier sets the strength.
    out += [
        Defence(
            "embedding_dp",
            f"gauss {s:g}",
            follower_privacy={
                "embedding_dp": {"mechanism": "gaussian", "clip_norm": 1.0, "delta": 1e-5, "noise_multiplier": s, "seed": 7}
            },
        )
        for s in emb_sigma
    ]
    return out


def _mean(xs: Sequence[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return float(np.mean(xs)) if xs else math.nan


def _concat(records: list[TapRecord]) -> tuple[np.ndarray, np.ndarray]:
    rows = np.concatenate([r.rows for r in records])
    x = np.concatenate([np.concatenate([r.tensors[k].reshape(len(r.rows), -1) for k in r.tensors], axis=1) for r in records])
    return rows, x


def evaluate_tap(
    tap: CutTap,
    labels: np.ndarray,
    follower_features: np.ndarray | None = None,
    *,
    known: int = 40,
    aux: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Every attack on what ``tap`` recorded, scored against the truth (see the module docstring)."""
    labels = np.asarray(labels).reshape(-1)
    out: dict[str, Any] = {}
    by: dict[str, dict[int, list[float]]] = {"norm": {}, "direction": {}, "direction_majority": {}}
    for r in tap.grads:
        y = labels[r.rows]
        by["norm"].setdefault(r.epoch, []).append(leak_auc(norm_attack(r.tensors, y)))
        by["direction"].setdefault(r.epoch, []).append(leak_auc(direction_attack(r.tensors, y)))
        by["direction_majority"].setdefault(r.epoch, []).append(leak_auc(direction_attack(r.tensors, y, known_positive=False)))
    for k, per in by.items():
        out[f"{k}_auc"] = _mean([a for v in per.values() for a in v])
        out[f"{k}_auc_by_epoch"] = [_mean(per[e]) for e in sorted(per)]
    last = tap.last_epoch(tap.embeds)
    if last:
        rows, x = _concat(last)
        out["emb_norm"] = float(np.median(np.linalg.norm(x, axis=1)))
        mc = model_completion(x, labels[rows], known=known, seed=seed)
        out.update(completion_acc=mc["accuracy"], completion_auc=leak_auc(mc["auc"]), majority_acc=mc["majority_accuracy"])
        if follower_features is not None:
            inv = feature_inversion(x, onehot_targets(np.asarray(follower_features)[rows]), aux=aux, seed=seed)
            out.update(inversion_r2=inv["r2"], inversion_baseline_r2=inv["baseline_r2"])
    return out


def run_audit(
    target: AuditTarget,
    data: Any,
    *,
    defences: Sequence[Defence],
    epochs: int,
    batch_size: int,
    seeds: Sequence[int] = (0,),
    known: int = 40,
    aux: int = 200,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Trains ``target`` once per defence and seed; one row per defence (numbers: medians over seeds)."""
    labels = target.labels(data)
    feats = target.follower_features(data)
    rows_out: list[dict[str, Any]] = []
    for d in defences:
        per_seed = []
        for s in seeds:
            tap = CutTap()
            res = target.train(data, d, tap, epochs=epochs, batch_size=batch_size, seed=s)
            ev = evaluate_tap(tap, labels, feats, known=known, aux=aux, seed=s)
            step = statistics.median(res["step_seconds"]) * 1e3 if res["step_seconds"] else math.nan
            per_seed.append({"test_auc": float(res["test_auc"]), "step_ms": step, **ev})
        row: dict[str, Any] = {
            "defence": d.name,
            "strength": d.strength,
            "seeds": list(seeds),
            "test_auc_by_seed": [p["test_auc"] for p in per_seed],
            "attack_auc_by_seed": [max(p.get("norm_auc", math.nan), p.get("direction_auc", math.nan)) for p in per_seed],
        }
        for k, v in per_seed[0].items():
            if isinstance(v, float):
                row[k] = float(statistics.median(p[k] for p in per_seed))
            else:
                row[k] = v if len(per_seed) == 1 else [p[k] for p in per_seed]
        rows_out.append(row)
        if progress is not None:
            progress(format_table([row], header=not rows_out[:-1]))
    base = next((r for r in rows_out if r["defence"] == "none"), None)
    for r in rows_out:
        # paired by seed: each seed's run against the no-defence run of the same seed, then the median
        r["test_auc_cost_by_seed"] = [b - t for b, t in zip(base["test_auc_by_seed"], r["test_auc_by_seed"])] if base else []
        r["test_auc_cost"] = float(statistics.median(r["test_auc_cost_by_seed"])) if base else math.nan
        r["step_ratio"] = r["step_ms"] / base["step_ms"] if base and base["step_ms"] else math.nan
    return rows_out


# (key, title, width, format of a number)
TABLE_COLUMNS: list[tuple[str, str, int, str]] = [
    ("defence", "defence", 12, "{}"),
    ("strength", "strength", 11, "{}"),
    ("test_auc", "test AUC", 8, "{:.4f}"),
    ("norm_auc", "norm AUC", 8, "{:.3f}"),
    ("direction_auc", "dir AUC", 7, "{:.3f}"),
    ("direction_majority_auc", "dir-maj", 7, "{:.3f}"),
    ("completion_acc", "MC acc", 6, "{:.3f}"),
    ("completion_auc", "MC AUC", 6, "{:.3f}"),
    ("inversion_r2", "inv R2", 6, "{:.3f}"),
    ("step_ms", "step ms", 7, "{:.1f}"),
]


def format_table(rows: Sequence[dict[str, Any]], *, header: bool = True) -> str:
    """The audit rows as a fixed-width text table (n/a where an attack had nothing to score)."""

    def cell(v: Any, width: int, fmt: str, left: bool) -> str:
        text = "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)
        return text.ljust(width) if left else text.rjust(width)

    lines = []
    if header:
        lines.append("  ".join(t.ljust(w) if k in ("defence", "strength") else t.rjust(w) for k, t, w, _ in TABLE_COLUMNS))
    for r in rows:
        lines.append("  ".join(cell(r.get(k), w, f, k in ("defence", "strength")) for k, _, w, f in TABLE_COLUMNS))
    return "\n".join(lines)


def plot_tradeoff(rows: Sequence[dict[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Test AUC against the strongest gradient attack's AUC, one point per row, labelled; a PNG (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    markers = {"none": "o", "marvell": "s", "grad_norm": "^", "norm+marvell": "P", "label_dp": "D", "embedding_dp": "v"}
    for name in dict.fromkeys(r["defence"] for r in rows):
        pts = [r for r in rows if r["defence"] == name]
        xs = [max(r.get("norm_auc", math.nan), r.get("direction_auc", math.nan)) for r in pts]
        ax.plot(xs, [r["test_auc"] for r in pts], marker=markers.get(name, "x"), linestyle="-", label=name)
        for x, r in zip(xs, pts):
            if r["strength"] != "-":
                ax.annotate(r["strength"], (x, r["test_auc"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axvline(0.6, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("label-inference attack AUC on the gradients (max of norm, direction)")
    ax.set_ylabel("test AUC")
    ax.set_title(title or "leakage vs utility")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p
