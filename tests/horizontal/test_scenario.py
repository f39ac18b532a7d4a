"""The homo_gpt2 scenario: registered by name, its data deterministic, its non-IID split skewed."""

from __future__ import annotations

import numpy as np
import pytest

from splitlink.examples import homo_gpt2
from splitlink.runtime import registry


def test_registered_and_points_to_splitlink_fl() -> None:
    registry.register_lazy("homo_gpt2", "splitlink.examples.homo_gpt2:SCENARIO")
    s = registry.get("homo_gpt2")
    assert s.name == "homo_gpt2" and s.demo is not None
    with pytest.raises(ValueError, match="splitlink fl aggregator"):
        s.make_party(None)  # type: ignore[arg-type]


def test_data_is_deterministic_labelled_and_non_iid_is_skewed() -> None:
    texts, labels = homo_gpt2.docstring_corpus()
    assert len(texts) > 200 and set(labels) == set(range(len(homo_gpt2.FAMILIES)))
    assert homo_gpt2.docstring_corpus() == (texts, labels)
    iid, held = homo_gpt2.make_splits(2, max_len=32)
    skew, held2 = homo_gpt2.make_splits(2, max_len=32, non_iid=True)
    assert np.array_equal(held["labels"], held2["labels"])
    n = sum(len(c["labels"]) for c in iid)
    assert n == sum(len(c["labels"]) for c in skew) and n + len(held["labels"]) == len(texts)
    assert all(c["input_ids"].shape[1] == 32 and c["input_ids"].max() <= homo_gpt2.EOT for c in iid)

    def spread(parts: list[dict[str, np.ndarray]]) -> float:  # total variation between the clients' label mixes
        h = [np.bincount(c["labels"], minlength=4) / len(c["labels"]) for c in parts]
        return float(np.abs(h[0] - h[1]).sum() / 2)

    assert spread(skew) > 0.5 > 0.2 > spread(iid)
