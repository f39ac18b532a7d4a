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

A :class:`Defence` may also replace the follower's optimizers (:func:`follower_optimizer`: e.g. SGD with
momentum, which averages zero-mean gradient noise out over steps, where Adam's second-moment division turns
it into a smaller learning rate). The test-AUC cost of every row is then against the best no-defence row
over the optimizers run, so a defence that needs another optimizer pays for any loss that optimizer brings.
"""

from __future__ import annotations

import dataclasses
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
    "FOLLOWER_OPTIMIZERS",
    "TABLE_COLUMNS",
    "AuditTarget",
    "Defence",
    "add_costs",
    "default_defences",
    "follower_optimizer",
    "optimizer_label",
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
    # replaces the follower's optimizers for this run (see follower_optimizer()); None: the scenario's YAML
    follower_optimizer: dict[str, Any] | None = None

    @property
    def optimizer(self) -> str:
        """The follower's optimizer as a table label: ``yaml`` (the scenario's own) or e.g. ``sgd lr 0.5``."""
        return optimizer_label(self.follower_optimizer)


FOLLOWER_OPTIMIZERS = ("yaml", "adam", "sgd", "momentum")


def follower_optimizer(
    kind: str, lr: float | None = None, *, momentum: float = 0.9, replace: str = "all"
) -> dict[str, Any] | None:
    """The follower-optimizer override of a :class:`Defence`: ``yaml`` -> None (the scenario's YAML: for
    Wide&Deep FTRL on the wide part, Adam on the deep part, learning rates x the audit's lr scale);
    ``adam``, ``sgd``, ``momentum`` (SGD with heavy-ball ``momentum``) at learning rate ``lr`` (absolute, needed),
    replacing every optimizer of the follower's YAML (``replace="all"``) or only its Adam
    (``replace="adam"``: the wide part keeps FTRL).

    Why: Marvell's noise is zero-mean, so plain or momentum SGD averages it out over steps, while Adam
    divides each step by the running second moment, which the noise inflates (and FTRL by its accumulated
    squared gradients): under Adam the noise mostly shrinks the follower's effective learning rate."""
    if kind not in FOLLOWER_OPTIMIZERS:
        raise ValueError(f"follower optimizer must be one of {', '.join(FOLLOWER_OPTIMIZERS)}, got {kind!r}")
    if replace not in ("all", "adam"):
        raise ValueError(f"replace must be 'all' (every optimizer of the follower) or 'adam' (only its Adam), got {replace!r}")
    if kind == "yaml":
        return None
    if lr is None or not lr > 0:
        raise ValueError(f"follower optimizer {kind!r} needs a learning rate > 0 (--follower-lr), got {lr!r}")
    hyper: dict[str, Any] = {"learning_rate": float(lr)}
    if kind == "momentum":
        if not 0 < momentum < 1:
            raise ValueError(f"momentum must be in (0, 1), got {momentum!r}")
        hyper["momentum"] = float(momentum)
    spec: dict[str, Any] = {"type": "Adam" if kind == "adam" else "SGD", "hyper_parameters": hyper}
    if replace == "adam":
        spec["replace"] = ["Adam"]
    return spec


def optimizer_label(spec: dict[str, Any] | None) -> str:
    if spec is None:
        return "yaml"
    h = spec.get("hyper_parameters") or {}
    kind = str(spec["type"]).lower()
    if kind == "sgd" and h.get("momentum"):
        kind = f"mom{h['momentum']:g}"
    text = f"{kind} lr{h.get('learning_rate', '?'):g}" if "learning_rate" in h else kind
    return text + ("" if spec.get("replace") is None else "/" + "+".join(str(t).lower() for t in spec["replace"]))


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
    follower_optimizer: dict[str, Any] | None = None,
) -> list[Defence]:
    """No defence, then each defence at 2 (``quick``) or 3 strengths, weakest first; ``follower_optimizer``
    (see :func:`follower_optimizer`) trains the follower of every row with that optimizer, and adds a
    first no-defence row with the YAML's optimizers (a baseline too); ``marvell_scales``
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
    if follower_optimizer is not None:
        out = [Defence("none")] + [dataclasses.replace(d, follower_optimizer=follower_optimizer) for d in out]
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


def _run_one(
    target: AuditTarget, data: Any, d: Defence, seed: int, epochs: int, batch_size: int, known: int, aux: int
) -> dict[str, Any]:
    tap = CutTap()
    res = target.train(data, d, tap, epochs=epochs, batch_size=batch_size, seed=seed)
    ev = evaluate_tap(tap, target.labels(data), target.follower_features(data), known=known, aux=aux, seed=seed)
    step = statistics.median(res["step_seconds"]) * 1e3 if res["step_seconds"] else math.nan
    return {"test_auc": float(res["test_auc"]), "step_ms": step, **ev}


def _run_one_in_worker(
    module: str, name: str, data: Any, d: Defence, seed: int, epochs: int, batch_size: int, known: int, aux: int, threads: int
) -> dict[str, Any]:
    """:func:`_run_one` in a spawned worker process: imports the module that registers the target first."""
    import importlib

    import torch

    torch.set_num_threads(threads)
    importlib.import_module(module)
    return _run_one(get_target(name), data, d, seed, epochs, batch_size, known, aux)


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
    jobs: int = 1,
) -> list[dict[str, Any]]:
    """Trains ``target`` once per defence and seed; one row per defence (numbers: medians over seeds).

    ``jobs > 1`` runs the trainings in that many spawned processes (each seeded as in one process; the
    step times then share the CPU). The test-AUC cost of each row is against the no-defence row with the
    best median test AUC (``baseline``: with several follower optimizers, a defence that needs a worse
    optimizer pays for it), paired by seed; ``test_auc_cost_same_optimizer`` is against the no-defence row
    with the row's own follower optimizer."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    work = [(d, s) for d in defences for s in seeds]
    results: dict[tuple[int, int], dict[str, Any]] = {}
    if jobs == 1:
        for i, d in enumerate(defences):
            for s in seeds:
                results[i, s] = _run_one(target, data, d, s, epochs, batch_size, known, aux)
    else:
        import multiprocessing
        import os
        from concurrent.futures import ProcessPoolExecutor

        module = target.train.__module__
        threads = max(1, (os.cpu_count() or 1) // jobs)
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futs = {
                (i, s): pool.submit(_run_one_in_worker, module, target.name, data, d, s, epochs, batch_size, known, aux, threads)
                for i, d in enumerate(defences)
                for s in seeds
            }
            for key, f in futs.items():
                results[key] = f.result()
    assert len(results) == len(work)
    rows_out: list[dict[str, Any]] = []
    for i, d in enumerate(defences):
        per_seed = [results[i, s] for s in seeds]
        row: dict[str, Any] = {
            "defence": d.name,
            "strength": d.strength,
            "optimizer": d.optimizer,
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
    add_costs(rows_out)
    return rows_out


def _cost(base: dict[str, Any] | None, r: dict[str, Any]) -> list[float]:
    # paired by seed: each seed's run against the baseline run of the same seed
    return [b - t for b, t in zip(base["test_auc_by_seed"], r["test_auc_by_seed"])] if base else []


def add_costs(rows: list[dict[str, Any]]) -> None:
    """Adds each row's test-AUC cost and step-time ratio against the no-defence baseline (see :func:`run_audit`)."""
    bases = [r for r in rows if r["defence"] == "none"]
    best = max(bases, key=lambda r: r["test_auc"]) if bases else None
    for r in rows:
        same = next((b for b in bases if b.get("optimizer") == r.get("optimizer")), None)
        r["baseline"] = f"none {best.get('optimizer', '')}".strip() if best else None
        r["test_auc_cost_by_seed"] = _cost(best, r)
        r["test_auc_cost"] = float(statistics.median(r["test_auc_cost_by_seed"])) if best else math.nan
        by_seed = _cost(same, r)
        r["test_auc_cost_same_optimizer"] = float(statistics.median(by_seed)) if same else math.nan
        r["step_ratio"] = r["step_ms"] / best["step_ms"] if best and best["step_ms"] else math.nan


# (key, title, width, format of a number)
TABLE_COLUMNS: list[tuple[str, str, int, str]] = [
    ("defence", "defence", 12, "{}"),
    ("strength", "strength", 11, "{}"),
    ("optimizer", "follower opt", 13, "{}"),
    ("test_auc", "test AUC", 8, "{:.4f}"),
    ("norm_auc", "norm AUC", 8, "{:.3f}"),
    ("direction_auc", "dir AUC", 7, "{:.3f}"),
    ("direction_majority_auc", "dir-maj", 7, "{:.3f}"),
    ("completion_acc", "MC acc", 6, "{:.3f}"),
    ("completion_auc", "MC AUC", 6, "{:.3f}"),
    ("inversion_r2", "inv R2", 6, "{:.3f}"),
    ("step_ms", "step ms", 7, "{:.1f}"),
]


_LEFT = ("defence", "strength", "optimizer")


def format_table(rows: Sequence[dict[str, Any]], *, header: bool = True) -> str:
    """The audit rows as a fixed-width text table (n/a where an attack had nothing to score)."""

    def cell(v: Any, width: int, fmt: str, left: bool) -> str:
        text = "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)
        return text.ljust(width) if left else text.rjust(width)

    lines = []
    if header:
        lines.append("  ".join(t.ljust(w) if k in _LEFT else t.rjust(w) for k, t, w, _ in TABLE_COLUMNS))
    for r in rows:
        lines.append("  ".join(cell(r.get(k), w, f, k in _LEFT) for k, _, w, f in TABLE_COLUMNS))
    return "\n".join(lines)


def plot_tradeoff(rows: Sequence[dict[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Test AUC against the strongest gradient attack's AUC, one point per row, labelled; a PNG (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    markers = {"none": "o", "marvell": "s", "grad_norm": "^", "norm+marvell": "P", "label_dp": "D", "embedding_dp": "v"}
    several = len({r.get("optimizer") for r in rows}) > 1

    def series(r: dict[str, Any]) -> str:
        return f"{r['defence']} ({r.get('optimizer')})" if several else str(r["defence"])

    for name in dict.fromkeys(series(r) for r in rows):
        pts = [r for r in rows if series(r) == name]
        xs = [max(r.get("norm_auc", math.nan), r.get("direction_auc", math.nan)) for r in pts]
        ax.plot(xs, [r["test_auc"] for r in pts], marker=markers.get(str(pts[0]["defence"]), "x"), linestyle="-", label=name)
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
