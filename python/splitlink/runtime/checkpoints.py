"""A party's checkpoint set: all its sub-networks (FLModels) saved and loaded as one step.

A party may own several FLModels (party A of the Pangu split owns the Embedding and the Head); a step
counts only when all of them are durable. :class:`CheckpointSet` saves every model (each writes its
file atomically), then an optional mapping of extra state, then records the step in the party's
manifest (:class:`Manifest`: ``manifest-<id>.json``, rewritten atomically: temporary file, fsync,
rename, fsync of the directory). A crash at any moment (even between two models' saves, or during the
manifest write) therefore leaves the newest recorded step complete. :meth:`CheckpointSet.steps` lists
the recorded steps whose files are all still there; at start-up the parties exchange these lists and
load the newest step they all hold (:mod:`splitlink.runtime.party`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from splitlink.util import atomic_write

__all__ = ["Checkpointable", "CheckpointSet", "Manifest", "newest_common_step"]

log = logging.getLogger(__name__)

_RUN_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class Manifest:
    """The steps a party recorded as complete, per run id (``manifest-<run_id>.json`` in ``directory``)."""

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
        if not isinstance(data, dict) or data.get("run_id") != self.run_id or not isinstance(data.get("steps"), list):
            raise ValueError(f"{self.path} is not the manifest of run {self.run_id!r}")
        return sorted(int(s) for s in data["steps"])

    def steps(self, still_present: Callable[[int], bool] | None = None) -> list[int]:
        """Recorded steps (ascending), optionally only those whose files ``still_present(step)`` says exist."""
        return [s for s in self._read() if still_present is None or still_present(s)]

    def record(self, step: int, keep: Iterable[int] | None = None) -> None:
        """Adds ``step`` (call after everything of the step is durable); ``keep`` limits the list."""
        steps = sorted(set(self._read()) | {int(step)})
        if keep is not None:
            allowed = set(keep)
            steps = [s for s in steps if s in allowed]
        atomic_write(self.path, lambda fh: json.dump({"run_id": self.run_id, "steps": steps}, fh))


class Checkpointable(Protocol):
    """What :class:`CheckpointSet` needs of a sub-network (``splitlink.FLModel`` has it)."""

    step: int

    def save_ckpt(self, path: Any = None, *, keep: int | None = None) -> Any: ...

    def load_ckpt(self, path: Any = None, phase: str = "train", *, step: int | None = None) -> Any: ...

    def checkpoint_steps(self, path: Any = None) -> list[int]: ...


class CheckpointSet:
    """Saves and loads a party's sub-networks (and optional extra state) together, one step at a time.

    ``models``: name -> FLModel, loaded in this order (each load restores the process's torch RNG
    state saved with it, so the last one's wins, as it would in a single save/load of the party).
    ``manifest_id``: the manifest's run id (parties sharing a directory need different ids).
    ``keep``: keep only the newest ``keep`` steps of every model (None: keep all).
    ``extra_state``: every step also holds a JSON mapping (``save(step, extra=...)``, returned by
    ``load``); a step counts only when its extra state is there too.
    ``rank``: this process's rank in a party over several processes sharing ``directory`` (None: one process).
    """

    def __init__(
        self,
        models: Mapping[str, Checkpointable],
        directory: str | os.PathLike[str],
        manifest_id: str,
        *,
        keep: int | None = None,
        extra_state: bool = False,
        rank: int | None = None,
    ) -> None:
        if not models:
            raise ValueError("a checkpoint set needs at least one model")
        if keep is not None and keep < 1:
            raise ValueError(f"keep must be at least 1 (or None: keep every step), got {keep}")
        self.models = dict(models)
        self.manifest = Manifest(directory, manifest_id)
        self.keep = keep
        self.extra_state = extra_state
        # One rank of a party over several processes (splitlink.runtime.ranks): every rank saves the
        # models sharded over the ranks (DeepSpeed's save is collective); rank 0 alone writes the
        # replicated ones, the extra state and the manifest (the directory is shared by the ranks).
        self.rank = rank

    def _extra_path(self, step: int) -> Path:
        return self.manifest.directory / f"state-{self.manifest.run_id}" / f"step-{step:010d}.json"

    def steps(self) -> list[int]:
        """Steps recorded as complete whose files (every model's, the extra state) are all still there."""
        present = [set(m.checkpoint_steps()) for m in self.models.values()]
        return self.manifest.steps(
            lambda s: all(s in p for p in present) and (not self.extra_state or self._extra_path(s).is_file())
        )

    def save(self, step: int, extra: Mapping[str, Any] | None = None) -> None:
        """Saves every model at ``step`` (and ``extra``), then records the step: only now does it count."""
        if self.extra_state and extra is None:
            raise ValueError("this checkpoint set holds extra state: pass extra=... to save()")
        if not self.extra_state and extra is not None:
            raise ValueError("this checkpoint set was made without extra_state=True; it cannot save extra state")
        primary = self.rank is None or self.rank == 0
        for m in self.models.values():
            if primary or getattr(m, "engine", None) is not None:
                m.step = step
                m.save_ckpt(keep=self.keep)
        if not primary:
            return
        if extra is not None:
            text = json.dumps(dict(extra))  # fails here, before anything is recorded, if not JSON-serialisable
            atomic_write(self._extra_path(step), lambda fh: fh.write(text))
        kept: set[int] | None = None
        if self.keep is not None:
            kept = set.intersection(*(set(m.checkpoint_steps()) for m in self.models.values()))
            if self.extra_state:
                for old in self._extra_path(step).parent.glob("step-*.json"):
                    if old != self._extra_path(step) and _step_of(old) not in kept:
                        old.unlink(missing_ok=True)
        self.manifest.record(step, keep=kept)

    def load(self, step: int) -> dict[str, Any]:
        """Loads every model at ``step`` (a step of :meth:`steps`); returns the step's extra state ({} if none)."""
        for m in self.models.values():
            m.load_ckpt(step=step)
        if not self.extra_state:
            return {}
        data = json.loads(self._extra_path(step).read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{self._extra_path(step)} does not hold a mapping")
        return data


def _step_of(p: Path) -> int:
    try:
        return int(p.stem.split("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def newest_common_step(*step_lists: Iterable[int]) -> int | None:
    """The newest step every party lists, or None."""
    common = set.intersection(*(set(s) for s in step_lists)) if step_lists else set()
    return max(common) if common else None
