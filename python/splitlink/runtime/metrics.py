"""Metrics and logging of a party: rows of a run's history (optionally appended to a JSON-lines
file as they come), log lines prefixed with the party's name, and the progress bar."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

__all__ = ["Metrics", "progress_bar", "BarAwareHandler"]


class Metrics:
    """The history of a run: one dict per row (``kind``: "train", "eval", ...); with ``path``, each row
    is also appended to that file as one JSON line, flushed at once (a resumed run appends)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = path
        self.history: list[dict[str, Any]] = []

    def record(self, **row: Any) -> None:
        self.history.append(row)
        if self.path:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(row) + "\n")


def progress_bar(total: int, initial: int, enabled: bool) -> Any:
    """A tqdm progress bar over the run's steps, or None (disabled, tqdm missing, stderr not a terminal)."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    # disable=None: no bar when stderr is not a terminal (CI logs, files)
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, leave=True, disable=None)


class BarAwareHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes log lines above a tqdm progress bar instead of through it."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm
        except ImportError:
            super().emit(record)
            return
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never raise
            self.handleError(record)
