"""The data schedule: which rows every step of a run trains on, from (seed, epoch) alone.

Both parties of a vertical split hold the same rows in the same order (aligned by PSI); each derives
the same batches from the shared seed, so no row indices travel between them, and a party resuming
at step ``s`` (a checkpoint) continues with exactly the batches an uninterrupted run would use.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

__all__ = ["Schedule"]


class Schedule:
    """Epochs of shuffled batches over ``n_rows`` rows.

    Epoch ``e`` visits the rows in the order ``numpy.random.default_rng([seed, e]).permutation(n_rows)``
    in batches of ``batch_size``; the last, shorter batch is kept unless ``drop_last``. The run has
    ``epochs * steps_per_epoch`` steps, or ``max_steps`` if that is smaller.
    """

    def __init__(
        self, n_rows: int, batch_size: int, *, seed: int, epochs: int, max_steps: int | None = None, drop_last: bool = False
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.n_rows, self.batch_size, self.seed, self.drop_last = n_rows, batch_size, seed, drop_last
        self.steps_per_epoch = n_rows // batch_size if drop_last else math.ceil(n_rows / batch_size)
        if self.steps_per_epoch == 0:
            raise ValueError(f"{n_rows} training rows are fewer than one batch of {batch_size}")
        self.epochs = epochs
        self.total_steps = epochs * self.steps_per_epoch
        if max_steps is not None:
            self.total_steps = min(self.total_steps, max_steps)

    def batches(self, epoch: int) -> list[np.ndarray]:
        """The row indices of every batch of ``epoch``."""
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n_rows)
        end = self.n_rows - self.batch_size + 1 if self.drop_last else self.n_rows
        return [order[i : i + self.batch_size] for i in range(0, end, self.batch_size)]

    def steps(self, start: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """(epoch, rows) of every step from step ``start`` (steps already done) to the end of the run."""
        step = start
        while step < self.total_steps:
            epoch, first = divmod(step, self.steps_per_epoch)
            for rows in self.batches(epoch)[first:]:
                if step >= self.total_steps:
                    return
                yield epoch, rows
                step += 1

    def epoch_done(self, step: int) -> bool:
        """Whether ``step`` steps done end an epoch (or the run): the moment to evaluate."""
        return step % self.steps_per_epoch == 0 or step == self.total_steps

    def in_epoch(self, step: int) -> int:
        """1-based position within its epoch of the step that made ``step`` steps done."""
        return (step - 1) % self.steps_per_epoch + 1
