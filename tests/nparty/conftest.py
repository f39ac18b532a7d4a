"""Shared data for the N-party tests: a small synthetic Criteo set, preprocessed once."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitlink.examples import criteo


@pytest.fixture(scope="session")
def criteo_small(tmp_path_factory: pytest.TempPathFactory) -> tuple[criteo.PartyData, criteo.PartyData, Path]:
    d = tmp_path_factory.mktemp("nparty-data")
    criteo.write_synthetic(d / "s.tsv", 700, seed=3)
    criteo.preprocess(d / "s.tsv", d / "pre", vocab_size=1000)
    return criteo.load_party(d / "pre", "leader"), criteo.load_party(d / "pre", "follower"), d / "pre"
