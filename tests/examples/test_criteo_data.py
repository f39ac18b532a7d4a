"""Criteo reader, preprocessing, party split, synthetic data and the AUC used to judge the demo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from splitlink.examples import criteo


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    d = tmp_path_factory.mktemp("criteo")
    info = criteo.write_synthetic(d / "s.tsv", 3000, seed=7)
    return d / "s.tsv", info


def test_synthetic_file_has_the_criteo_format(synthetic: tuple[Path, dict[str, float]]) -> None:
    path, info = synthetic
    lines = path.read_text().splitlines()
    assert len(lines) == 3000
    for line in lines[:200]:
        cols = line.split("\t")
        assert len(cols) == 40 and cols[0] in ("0", "1")
        assert all(c == "" or c.lstrip("-").isdigit() for c in cols[1:14])
        assert all(c == "" or (len(c) == 8 and int(c, 16) >= 0) for c in cols[14:])
    assert any("\t\t" in line for line in lines)  # missing values occur
    assert 0.5 < info["leader_only_auc"] < info["oracle_auc"] < 1.0
    assert 0.1 < info["positive_rate"] < 0.9


def test_task_seed_keeps_one_task_at_every_row_count(tmp_path: Path) -> None:
    # without task_seed the planted effects follow the rows' draws, so the task (its positive rate and how
    # much the leader's columns tell) moves with the row count; with it, only sampling noise remains
    small = criteo.write_synthetic(tmp_path / "a.tsv", 4000, seed=1, task_seed=5)
    large = criteo.write_synthetic(tmp_path / "b.tsv", 40000, seed=2, task_seed=5)
    assert abs(small["positive_rate"] - large["positive_rate"]) < 0.02
    assert abs(small["leader_only_auc"] - large["leader_only_auc"]) < 0.03
    assert abs(small["oracle_auc"] - large["oracle_auc"]) < 0.03
    other = criteo.write_synthetic(tmp_path / "c.tsv", 40000, seed=2, task_seed=6)
    assert abs(other["positive_rate"] - large["positive_rate"]) > 0.005 or abs(other["oracle_auc"] - large["oracle_auc"]) > 0.005


@pytest.mark.parametrize("rate", [0.03, 0.256, 0.5, 0.8])
def test_positive_rate_sets_the_intercept(tmp_path: Path, rate: float) -> None:
    info = criteo.write_synthetic(tmp_path / "s.tsv", 20000, seed=3, task_seed=4, positive_rate=rate)
    assert info["positive_rate"] == pytest.approx(rate, abs=4 * (rate * (1 - rate) / 20000) ** 0.5 + 1e-3)
    logit = np.random.default_rng(0).normal(0.0, 2.0, 1000)
    b = criteo._intercept_for(logit, rate)
    assert float(np.mean(1 / (1 + np.exp(-(logit + b))))) == pytest.approx(rate, abs=1e-6)


@pytest.mark.parametrize("rate", [0.0, 1.0, -0.1, 1.5])
def test_positive_rate_out_of_range_is_refused(tmp_path: Path, rate: float) -> None:
    with pytest.raises(ValueError, match="positive_rate must be strictly between 0 and 1"):
        criteo.write_synthetic(tmp_path / "s.tsv", 10, positive_rate=rate)


def test_preprocess_streams_in_chunks_identically(synthetic: tuple[Path, dict[str, float]], tmp_path: Path) -> None:
    path, _ = synthetic
    a = criteo.preprocess(path, tmp_path / "a", vocab_size=1000, chunk_rows=128)
    b = criteo.preprocess(path, tmp_path / "b", vocab_size=1000, chunk_rows=100_000)
    for name in ("ids.npy", "wts.npy", "labels.npy"):
        assert np.array_equal(np.load(a / name), np.load(b / name))
    ids, wts = np.load(a / "ids.npy"), np.load(a / "wts.npy")
    assert ids.shape == (3000, 39) and ids.min() >= 0 and ids.max() < 1000
    raw = [line.split("\t") for line in path.read_text().splitlines()]
    missing = np.array([[c == "" for c in r[1:]] for r in raw])
    assert np.array_equal(wts == 0, missing)
    assert np.array_equal(np.load(a / "labels.npy"), np.array([float(r[0]) for r in raw], dtype=np.float32))


def test_party_split_is_the_seeds(synthetic: tuple[Path, dict[str, float]], tmp_path: Path) -> None:
    path, _ = synthetic
    pre = criteo.preprocess(path, tmp_path / "p", vocab_size=500)
    leader, follower = criteo.load_party(pre, "leader"), criteo.load_party(pre, "follower")
    assert leader.ids.shape[1] == 20 and follower.ids.shape[1] == 19
    assert leader.labels is not None and follower.labels is None
    full = np.load(pre / "ids.npy")
    assert np.array_equal(leader.ids, full[:, list(range(7)) + list(range(13, 26))])
    assert np.array_equal(follower.ids, full[:, list(range(7, 13)) + list(range(26, 39))])
    follower.save(tmp_path / "f.npz")
    again = criteo.load_party(tmp_path / "f.npz", "follower")
    assert again.labels is None and np.array_equal(again.ids, follower.ids)


def test_malformed_lines_are_named(tmp_path: Path) -> None:
    (tmp_path / "bad.tsv").write_text("1" + "\t1" * 13 + "\tabcdef01" * 26 + "\n" + "0\t1\t2\n")
    with pytest.raises(ValueError, match=r"bad.tsv:2: expected 40 tab-separated columns .* found 3"):
        criteo.preprocess(tmp_path / "bad.tsv", tmp_path / "out")


def test_auc_matches_the_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + y, 1)  # with ties
    pos, neg = s[y == 1], s[y == 0]
    brute = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert criteo.auc(y, s) == pytest.approx(brute, abs=1e-12)
    assert np.isnan(criteo.auc(np.ones(3), np.arange(3)))
