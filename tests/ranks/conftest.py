"""Fixtures of the multi-rank tests (helpers in rankrun.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from rankrun import NAMES  # noqa: E402

from splitlink.examples import demo as demo_mod  # noqa: E402


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from splitlink.examples import pangu

    d = tmp_path_factory.mktemp("ranks")
    demo_mod.make_dev_certs(d / "certs", NAMES)
    corpus = pangu.stdlib_corpus(d / "corpus", max_bytes=200_000)
    pangu.preprocess_corpus(corpus, d / "data", vocab_size=512)
    return d
