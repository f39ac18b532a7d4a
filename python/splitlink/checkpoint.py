"""A party's checkpoint manifest: which steps it holds COMPLETE checkpoints for, per run.

A party may own several FLModels (party A of the Pangu split owns the Embedding and the Head); a step
counts only when all of them are durable. After saving them, a party calls :meth:`Manifest.record`,
which rewrites ``manifest-<run_id>.json`` atomically (temporary file, fsync, rename, fsync of the
directory). At start-up the parties exchange :meth:`Manifest.steps` and all load the newest step
every one of them lists, so a crash at any moment (even between two FLModels' saves, or during the
manifest write) leaves a consistent step to resume from.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from splitlink.util import atomic_write

__all__ = ["Manifest", "newest_common_step", "ride_through_restarts"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_RUN_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class Manifest:
    def __init__(self, directory: str | os.PathLike[str], run_id: str = "run") -> None:
        if not _RUN_ID.match(run_id):
            raise ValueError(f"run_id must be 1-64 characters of letters, digits, '_', '-', '.'; got {run_id!r}")
        self.directory = Path(directory)
        self.run_id = run_id
        self.path = self.directory / f"manifest-{run_id}.json"

    def _read(self) -> list[int]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (ValueError, OSError) as e:
            raise ValueError(f"checkpoint manifest {self.path} is unreadable ({e}); move it away to start over") from None
        if data.get("run_id") != self.run_id or not isinstance(data.get("steps"), list):
            raise ValueError(f"{self.path} is not the manifest of run {self.run_id!r}")
        return sorted(int(s) for s in data["steps"])

    def steps(self, still_present: Callable[[int], bool] | None = None) -> list[int]:
        """Recorded steps (ascending), optionally only those whose files ``still_present(step)`` says exist."""
        return [s for s in self._read() if still_present is None or still_present(s)]

    def record(self, step: int, keep: Iterable[int] | None = None) -> None:
        """Adds ``step`` (call after every FLModel of the party saved it durably); ``keep`` limits the list."""
        steps = sorted(set(self._read()) | {int(step)})
        if keep is not None:
            allowed = set(keep)
            steps = [s for s in steps if s in allowed]
        atomic_write(self.path, lambda fh: json.dump({"run_id": self.run_id, "steps": steps}, fh))


def ride_through_restarts(who: str, agree: Callable[[bool], object], train: Callable[[], T]) -> T:
    """Runs ``agree(rejoin=False)`` (the start-up agreement on the step to resume from), then ``train()``.
    When the communicator raises ``PeerRestartedError`` (the peer crashed and was restarted with
    resume), runs ``agree(True)`` (both go back to their newest common checkpoint) and trains on, so
    this process keeps running and ends where an uninterrupted run would. ``agree(True)`` must fail
    with a clear error when there is no common checkpoint."""
    from splitlink.channel import PeerRestartedError

    rejoin = False
    while True:
        try:
            agree(rejoin)
            return train()
        except PeerRestartedError as e:
            log.warning("%s: %s: going back to the newest common checkpoint", who, e)
            rejoin = True


def newest_common_step(*step_lists: Iterable[int]) -> int | None:
    """The newest step every party lists, or None."""
    common = set.intersection(*(set(s) for s in step_lists)) if step_lists else set()
    return max(common) if common else None
