"""A stand-in for FLModel's checkpoint API (files of one JSON number per step), and a minimal Party."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from splitlink.runtime.party import Party, TrainOptions
from splitlink.util import atomic_write


class FakeModel:
    """Holds one number ``weight``; ``save_ckpt`` writes it to ``<dir>/step-<step>.json`` atomically."""

    def __init__(self, directory: Path, name: str, *, fail_at: int | None = None, loads: list[str] | None = None) -> None:
        self.dir = Path(directory) / name
        self.name = name
        self.step = 0
        self.weight = 0.0
        self.fail_at = fail_at
        self.loads = loads if loads is not None else []

    def _file(self, step: int) -> Path:
        return self.dir / f"step-{step:010d}.json"

    def save_ckpt(self, path: Any = None, *, keep: int | None = None) -> Path:
        if self.step == self.fail_at:
            raise OSError(f"{self.name}: disk full (simulated) at step {self.step}")
        atomic_write(self._file(self.step), lambda fh: json.dump({"weight": self.weight}, fh))
        if keep is not None:
            for old in [self._file(s) for s in self.checkpoint_steps()][:-keep]:
                old.unlink()
        return self._file(self.step)

    def checkpoint_steps(self, path: Any = None) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in self.dir.glob("step-*.json")) if self.dir.is_dir() else []

    def load_ckpt(self, path: Any = None, phase: str = "train", *, step: int | None = None) -> Path:
        assert step is not None
        self.weight = json.loads(self._file(step).read_text())["weight"]
        self.step = step
        self.loads.append(self.name)
        return self._file(step)


class SimpleParty(Party[TrainOptions]):
    """Two fake sub-networks; the per-step math adds 1 to each weight."""

    def __init__(self, comm: Any, train: TrainOptions, directory: Path) -> None:
        super().__init__(comm, train)
        self.models.update(a=FakeModel(directory, f"{self.role}-a"), b=FakeModel(directory, f"{self.role}-b"))

    def train_loop(self) -> int:
        while self.step < (self.train.max_steps or 0):
            for m in self.models.values():
                m.weight += 1
            self.advance()
        return self.step


class Leader(SimpleParty):
    role, peer = "leader", "follower"


class Follower(SimpleParty):
    role, peer = "follower", "leader"
