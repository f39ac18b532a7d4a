"""Criteo display-advertising data: a streaming reader, preprocessing, the party split, synthetic data.

The Criteo TSV has one sample per line: ``label``, 13 integer features ``I1..I13`` and 26 categorical
features ``C1..C26`` (8 hex digits each, hashed by Criteo), tab-separated, any feature possibly empty.

Preprocessing (as MindSpore's ModelZoo Wide&Deep feeds its model, one (id, weight) pair per field):

* integer field ``i`` with value ``x``: bucket ``b = floor(log(x)^2)`` for ``x > 2`` else ``x`` (the
  Kaggle-winning transform), id = hash(field, b) in a vocabulary of ``vocab_size`` ids, weight 1;
* categorical field: id = hash(field, value), weight 1;
* missing value: id = hash(field, "missing"), weight 0.

Hashing is a fixed 64-bit mix of (field, value) reduced modulo ``vocab_size``: the same on every
machine and every run, so two parties preprocessing their own columns agree. The reader streams the
file in chunks into memory-mapped ``.npy`` arrays, so a 45M-line file never has to fit in memory.

The party split is the seed's: the leader holds fields 0-6 and 13-25 (20 fields) and the labels; the
follower holds fields 7-12 and 26-38 (19 fields).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap

__all__ = [
    "N_DENSE",
    "N_CAT",
    "N_FIELDS",
    "LEADER_FIELDS",
    "FOLLOWER_FIELDS",
    "preprocess",
    "PartyData",
    "write_synthetic",
    "load_party",
    "auc",
]

N_DENSE, N_CAT = 13, 26
N_FIELDS = N_DENSE + N_CAT
LEADER_FIELDS = tuple(range(0, 7)) + tuple(range(13, 26))
FOLLOWER_FIELDS = tuple(range(7, 13)) + tuple(range(26, 39))
_MISSING = np.uint64(0xFFFF_FFFF_FFFF)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(field: np.ndarray | int, value: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser of (field, value): a fixed, well-spread 64-bit hash."""
    with np.errstate(over="ignore"):
        z = value.astype(np.uint64) + (np.uint64(field) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        out: np.ndarray = z ^ (z >> np.uint64(31))
        return out


def _dense_bucket(x: np.ndarray) -> np.ndarray:
    out = x.astype(np.float64)
    big = out > 2
    out[big] = np.floor(np.log(out[big]) ** 2)
    return out.astype(np.int64) + 8  # negative values (I2 has some) stay distinct from the buckets


def _encode_chunk(cols: list[list[str]], vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    n = len(cols[0])
    ids = np.empty((n, N_FIELDS), dtype=np.int32)
    wts = np.ones((n, N_FIELDS), dtype=np.float32)
    vocab = np.uint64(vocab_size)
    for f in range(N_FIELDS):
        raw = cols[f + 1]
        present = np.fromiter((len(s) > 0 for s in raw), dtype=bool, count=n)
        vals = np.full(n, _MISSING, dtype=np.uint64)
        if present.any():
            if f < N_DENSE:
                x = np.array([int(s) for s, p in zip(raw, present) if p], dtype=np.int64)
                vals[present] = _dense_bucket(x).astype(np.uint64)
            else:
                vals[present] = np.array([int(s, 16) for s, p in zip(raw, present) if p], dtype=np.uint64)
        ids[:, f] = (_mix(f, vals) % vocab).astype(np.int32)
        wts[~present, f] = 0.0
    return ids, wts


def _read_chunks(path: Path, chunk_rows: int) -> Iterator[list[list[str]]]:
    with open(path, encoding="ascii", newline="") as fh:
        lineno = 0
        while True:
            cols: list[list[str]] = [[] for _ in range(1 + N_FIELDS)]
            for _ in range(chunk_rows):
                line = fh.readline()
                if not line:
                    break
                lineno += 1
                parts = line.rstrip("\r\n").split("\t")
                if len(parts) != 1 + N_FIELDS:
                    raise ValueError(
                        f"{path}:{lineno}: expected {1 + N_FIELDS} tab-separated columns (label, "
                        f"13 integer, 26 categorical features), found {len(parts)}"
                    )
                for c, v in zip(cols, parts):
                    c.append(v)
            if not cols[0]:
                return
            yield cols


def _count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 24):
            n += block.count(b"\n")
    return n


def preprocess(
    tsv: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, vocab_size: int = 200_000, chunk_rows: int = 100_000
) -> Path:
    """Streams a Criteo TSV into ``out_dir/{ids,wts,labels}.npy`` (memory-mapped) and returns ``out_dir``.

    Row ``i`` of the output is line ``i`` of the file; its sample id is ``i``.
    """
    src, out = Path(tsv), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = _count_lines(src)
    ids = open_memmap(out / "ids.npy", mode="w+", dtype=np.int32, shape=(rows, N_FIELDS))
    wts = open_memmap(out / "wts.npy", mode="w+", dtype=np.float32, shape=(rows, N_FIELDS))
    labels = open_memmap(out / "labels.npy", mode="w+", dtype=np.float32, shape=(rows,))
    at = 0
    for cols in _read_chunks(src, chunk_rows):
        i, w = _encode_chunk(cols, vocab_size)
        n = len(i)
        ids[at : at + n], wts[at : at + n] = i, w
        try:
            labels[at : at + n] = np.array(cols[0], dtype=np.float32)
        except ValueError:
            raise ValueError(f"{src}: a label in lines {at + 1}..{at + n} is not 0 or 1") from None
        at += n
    if at != rows:
        raise ValueError(f"{src}: counted {rows} lines but parsed {at}; is the last line complete?")
    for a in (ids, wts, labels):
        a.flush()
    return out


@dataclass
class PartyData:
    """One party's columns of the aligned samples (labels only at the leader)."""

    sample_ids: np.ndarray
    ids: np.ndarray
    wts: np.ndarray
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(self.sample_ids)

    def save(self, path: str | os.PathLike[str]) -> None:
        arrays = {"sample_ids": self.sample_ids, "ids": self.ids, "wts": self.wts}
        if self.labels is not None:
            arrays["labels"] = self.labels
        np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as its bool option


def load_party(preprocessed: str | os.PathLike[str], role: str) -> PartyData:
    """The ``role``'s columns of a preprocessed directory (or a party file written by ``PartyData.save``)."""
    p = Path(preprocessed)
    if p.is_file():
        with np.load(p) as z:
            return PartyData(z["sample_ids"], z["ids"], z["wts"], z["labels"] if "labels" in z else None)
    fields = list(LEADER_FIELDS if role == "leader" else FOLLOWER_FIELDS)
    ids = np.load(p / "ids.npy", mmap_mode="r")
    wts = np.load(p / "wts.npy", mmap_mode="r")
    labels = np.load(p / "labels.npy", mmap_mode="r") if role == "leader" else None
    return PartyData(
        np.arange(len(ids), dtype=np.int64),
        np.ascontiguousarray(ids[:, fields]),
        np.ascontiguousarray(wts[:, fields]),
        None if labels is None else np.asarray(labels),
    )


def _intercept_for(logit: np.ndarray, rate: float) -> float:
    """The b with mean(sigmoid(logit + b)) == rate (the mean is increasing in b): bisection to 1e-9."""
    lo, hi = -40.0, 40.0
    while hi - lo > 1e-9:
        mid = 0.5 * (lo + hi)
        if float(np.mean(1.0 / (1.0 + np.exp(-(logit + mid))))) < rate:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def write_synthetic(
    path: str | os.PathLike[str],
    rows: int,
    *,
    seed: int = 0,
    values_per_field: int = 200,
    missing_rate: float = 0.05,
    task_seed: int | None = None,
    positive_rate: float | None = None,
) -> dict[str, float]:
    """Writes ``rows`` lines of Criteo-format TSV with a planted signal; returns the AUCs it allows.

    Each field's value is drawn from a Zipf-like distribution over ``values_per_field`` values. The
    label is Bernoulli(sigmoid(logit)) where the logit sums per-value effects of six leader fields and
    six follower fields, plus one leader x follower interaction, so the follower's columns carry about
    as much signal as the leader's. Returned: ``oracle_auc`` (AUC of the true probabilities: the best
    any model can do), ``leader_only_auc`` (AUC of the leader's part of the logit: about what the
    leader alone could reach) and the positive rate.

    ``task_seed``: the planted effects (which values matter, by how much) come from a generator of their
    own, so the task is the same at every row count and ``seed`` only draws the rows (what the leakage
    audit uses, to compare settings of different sizes on one task). ``None`` (default): they come from
    ``seed``'s generator after the rows' values, as the demo's and tests' data always have, so there the
    task changes with ``rows``.

    ``positive_rate``: the logit's intercept is set so that the expected positive rate over these rows is
    this (bisection on the mean predicted probability; e.g. 0.256, Criteo's display-advertising data);
    ``None``: a fixed intercept of -1.1 (about 35% positives).
    """
    if positive_rate is not None and not 0.0 < positive_rate < 1.0:
        raise ValueError(f"positive_rate must be strictly between 0 and 1, got {positive_rate!r}")
    rng = np.random.default_rng(seed)
    probs = 1.0 / np.arange(1, values_per_field + 1) ** 1.1
    probs /= probs.sum()
    vals = rng.choice(values_per_field, size=(rows, N_FIELDS), p=probs)
    missing = rng.random((rows, N_FIELDS)) < missing_rate
    leader_sig = [0, 3, 14, 17, 20, 24]
    follower_sig = [8, 11, 27, 30, 33, 37]
    task_rng = rng if task_seed is None else np.random.default_rng(task_seed)
    effects = task_rng.normal(0.0, 1.0, size=(N_FIELDS, values_per_field))
    contrib = np.zeros((rows, N_FIELDS))
    for f in leader_sig + follower_sig:
        contrib[:, f] = np.where(missing[:, f], 0.0, effects[f, vals[:, f]] * 0.55)
    inter = effects[5, vals[:, 15] % values_per_field] * effects[6, vals[:, 28] % values_per_field] * 0.5
    inter = np.where(missing[:, 15] | missing[:, 28], 0.0, inter)
    leader_part = contrib[:, leader_sig].sum(1)
    logit = leader_part + contrib[:, follower_sig].sum(1) + inter
    logit += -1.1 if positive_rate is None else _intercept_for(logit, positive_rate)
    p = 1.0 / (1.0 + np.exp(-logit))
    labels = (rng.random(rows) < p).astype(np.int64)
    # Dense fields carry the value index as a count (bucketized later); categorical as 8 hex digits.
    hexes = [
        np.array([f"{(f * 2654435761 + v * 40503) & 0xFFFFFFFF:08x}" for v in range(values_per_field)]) for f in range(N_CAT)
    ]
    with open(path, "w", encoding="ascii", newline="") as fh:
        for r in range(rows):
            parts = [str(labels[r])]
            for f in range(N_FIELDS):
                if missing[r, f]:
                    parts.append("")
                elif f < N_DENSE:
                    parts.append(str(int(vals[r, f])))
                else:
                    parts.append(str(hexes[f - N_DENSE][vals[r, f]]))
            fh.write("\t".join(parts) + "\n")
    return {"oracle_auc": auc(labels, p), "leader_only_auc": auc(labels, leader_part), "positive_rate": float(labels.mean())}


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied scores averaged)."""
    y = np.asarray(labels).reshape(-1).astype(bool)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # average ranks over ties
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def write_party_csv(party: PartyData, path: str | os.PathLike[str], role: str) -> None:
    """One party's rows as CSV: ``sample_id`` (the join key), ``label`` (leader only), per field id and weight."""
    fields = LEADER_FIELDS if role == "leader" else FOLLOWER_FIELDS
    header = (
        ["sample_id"] + (["label"] if party.labels is not None else []) + [f"id{f}" for f in fields] + [f"wt{f}" for f in fields]
    )
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(",".join(header) + "\n")
        for r in range(len(party)):
            cols = [str(int(party.sample_ids[r]))]
            if party.labels is not None:
                cols.append(str(int(party.labels[r])))
            cols += [str(int(v)) for v in party.ids[r]] + [f"{float(v):g}" for v in party.wts[r]]
            fh.write(",".join(cols) + "\n")


def load_party_csv(path: str | os.PathLike[str], role: str) -> PartyData:
    """The inverse of :func:`write_party_csv` (e.g. on the rows ``splitlink psi`` aligned)."""
    import csv

    fields = LEADER_FIELDS if role == "leader" else FOLLOWER_FIELDS
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = list(reader)
    need = ["sample_id"] + [f"id{f}" for f in fields] + [f"wt{f}" for f in fields] + (["label"] if role == "leader" else [])
    missing = [c for c in need if c not in header]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)} for the {role}")
    col = {c: i for i, c in enumerate(header)}
    arr = np.array(rows, dtype=object).reshape(len(rows), len(header))
    ids = arr[:, [col[f"id{f}"] for f in fields]].astype(np.int32)
    wts = arr[:, [col[f"wt{f}"] for f in fields]].astype(np.float32)
    labels = arr[:, col["label"]].astype(np.float32) if role == "leader" else None
    return PartyData(arr[:, col["sample_id"]].astype(np.int64), ids, wts, labels)
