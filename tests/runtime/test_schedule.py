"""The data schedule from (seed, epoch): a resumed run continues with the batches of an uninterrupted one."""

from __future__ import annotations

import numpy as np
import pytest

from splitlink.runtime.schedule import Schedule


def test_every_row_once_per_epoch_and_epochs_differ() -> None:
    s = Schedule(10, 3, seed=7, epochs=2)
    assert s.steps_per_epoch == 4 and s.total_steps == 8
    e0, e1 = s.batches(0), s.batches(1)
    assert [len(b) for b in e0] == [3, 3, 3, 1]
    assert sorted(np.concatenate(e0).tolist()) == list(range(10))
    assert not np.array_equal(np.concatenate(e0), np.concatenate(e1))
    assert all(np.array_equal(x, y) for x, y in zip(e0, Schedule(10, 3, seed=7, epochs=2).batches(0)))


def test_resuming_at_any_step_continues_the_uninterrupted_run() -> None:
    s = Schedule(11, 4, seed=1, epochs=3, max_steps=8)
    full = list(s.steps())
    assert len(full) == 8 == s.total_steps
    for start in range(9):
        tail = list(s.steps(start))
        assert [e for e, _ in tail] == [e for e, _ in full[start:]]
        assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(tail, full[start:]))


def test_drop_last_and_epoch_ends() -> None:
    s = Schedule(10, 3, seed=0, epochs=2, drop_last=True)
    assert s.steps_per_epoch == 3 and [len(b) for b in s.batches(0)] == [3, 3, 3]
    assert [st for st in range(1, 7) if s.epoch_done(st)] == [3, 6]
    assert [s.in_epoch(st) for st in range(1, 7)] == [1, 2, 3, 1, 2, 3]
    with pytest.raises(ValueError, match="fewer than one batch"):
        Schedule(2, 3, seed=0, epochs=1, drop_last=True)
