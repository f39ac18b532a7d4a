"""A recorder of what crosses the cut (see :class:`CutTap`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["CutTap", "TapRecord"]


@dataclass
class TapRecord:
    step: int
    epoch: int
    rows: np.ndarray  # the batch's row indices (both parties know them: rows are aligned)
    tensors: dict[str, np.ndarray]  # name -> (batch, ...) float32 copies


@dataclass
class CutTap:
    """Records, per step, the gradients the follower receives and the embeddings the leader receives.

    The scenario calls :meth:`gradients` / :meth:`embeddings` right after the party's ``receive`` with
    exactly what it received; the tap keeps detached float32 copies and returns nothing, so training is
    unchanged (the tests compare runs with and without a tap). ``keep_epochs`` bounds memory: only the
    records of the newest that many epochs are kept (``None``: all).
    """

    keep_epochs: int | None = None
    grads: list[TapRecord] = field(default_factory=list)
    embeds: list[TapRecord] = field(default_factory=list)

    @staticmethod
    def _copy(tensors: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return {
            k: (
                v.detach().to(torch.float32).cpu().numpy().copy()
                if isinstance(v, torch.Tensor)
                else np.array(v, dtype=np.float32)
            )
            for k, v in tensors.items()
        }

    def _add(self, into: list[TapRecord], step: int, epoch: int, rows: Any, tensors: Mapping[str, Any]) -> None:
        into.append(TapRecord(int(step), int(epoch), np.array(rows, dtype=np.int64), self._copy(tensors)))
        if self.keep_epochs is not None:
            newest = into[-1].epoch
            while into and into[0].epoch <= newest - self.keep_epochs:
                into.pop(0)

    def gradients(self, step: int, epoch: int, rows: Any, grads: Mapping[str, Any]) -> None:
        """What the follower received: the gradients for its embeddings (name -> tensor)."""
        self._add(self.grads, step, epoch, rows, grads)

    def embeddings(self, step: int, epoch: int, rows: Any, embeds: Mapping[str, Any]) -> None:
        """What the leader received: the follower's embeddings (name -> tensor)."""
        self._add(self.embeds, step, epoch, rows, embeds)

    def last_epoch(self, records: list[TapRecord]) -> list[TapRecord]:
        if not records:
            return []
        e = records[-1].epoch
        return [r for r in records if r.epoch == e]
