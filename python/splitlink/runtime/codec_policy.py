"""The ``auto`` codec policy (issue 19 item 4): per tensor, the least lossy codec that keeps a step's
exchange under a time budget at the measured link rate.

Levels, least lossy first: fp32 (no codec), fp16, 8-bit min_max, 4-bit min_max. At the end of every
step the policy knows, per tensor name, how many elements this party sent during the step, and the link
rate measured from its own sends (:class:`LinkRateMeter`: bytes on the wire / seconds, over the recent
accepted frames). :func:`choose` then starts every tensor at fp32 and, while the step's bytes exceed
rate x budget, moves the tensor that currently costs the most bytes (ties: by name) one level down,
until everything fits or every tensor is at 4 bits (then it logs that the budget cannot be met). The
choice is a pure function of (element counts, rate, budget): deterministic given the measured rate.
The first step runs in fp32 (no rate known yet).

The error a choice introduces is measured once, on the first tensor sent under it: the relative RMS
error ``||decode(encode(x)) - x|| / ||x||`` of the very codec the frame uses, logged with the choice and
kept in :attr:`AutoCodecPolicy.errors`.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from splitlink.codec import CompressConfig

__all__ = ["LEVELS", "LinkRateMeter", "AutoCodecPolicy", "choose", "encoded_bytes", "relative_rms_error"]

log = logging.getLogger("splitlink.runtime.codec_policy")

LEVELS: list[tuple[str, CompressConfig | None]] = [
    ("fp32", None),
    ("fp16", CompressConfig("fp16")),
    ("8-bit", CompressConfig("min_max", bit_num=8)),
    ("4-bit", CompressConfig("min_max", bit_num=4)),
]


def encoded_bytes(level: int, numel: int) -> int:
    """Bytes of ``numel`` float32 values at ``level`` (codec payload, without the frame's headers)."""
    cfg = LEVELS[level][1]
    if cfg is None:
        return 4 * numel
    from splitlink import codec_torch

    return codec_torch.encoded_size(cfg.spec(numel), torch.float32, numel)


def relative_rms_error(x: torch.Tensor, level: int, name: str = "tensor") -> float:
    """||decode(encode(x)) - x|| / ||x|| under ``level``'s codec (0 for fp32 and for an all-zero x)."""
    cfg = LEVELS[level][1]
    if cfg is None:
        return 0.0
    from splitlink import codec_torch

    x = x.detach().float().reshape(-1)
    spec = cfg.spec(x.numel(), 0, name)
    back = codec_torch.decode(spec, codec_torch.encode(spec, x, name), torch.float32, (x.numel(),), name)
    norm = float(torch.linalg.vector_norm(x))
    return float(torch.linalg.vector_norm(back - x)) / norm if norm > 0 else 0.0


def choose(numels: Mapping[str, int], rate_bytes_s: float, budget_s: float) -> dict[str, int]:
    """Level per tensor name so that the step's bytes fit ``rate_bytes_s * budget_s`` where possible."""
    if not (math.isfinite(rate_bytes_s) and rate_bytes_s > 0 and math.isfinite(budget_s) and budget_s > 0):
        raise ValueError(f"choose() needs a positive rate and budget, got {rate_bytes_s!r} B/s, {budget_s!r} s")
    allowed = rate_bytes_s * budget_s
    level = {n: 0 for n in sorted(numels)}
    cost = {n: encoded_bytes(0, numels[n]) for n in level}
    while sum(cost.values()) > allowed:
        movable = [n for n in level if level[n] < len(LEVELS) - 1]
        if not movable:
            break
        worst = max(movable, key=cost.__getitem__)  # most bytes; ties: the first name (sorted)
        level[worst] += 1
        cost[worst] = encoded_bytes(level[worst], numels[worst])
    return level


class LinkRateMeter:
    """The link's rate from this party's own sends: bytes / seconds over the last ``window`` frames."""

    def __init__(self, window: int = 16) -> None:
        self._frames: deque[tuple[int, float]] = deque(maxlen=window)

    def record(self, nbytes: int, seconds: float) -> None:
        if nbytes > 0 and seconds > 0:
            self._frames.append((nbytes, seconds))

    def rate(self) -> float | None:
        """Bytes per second, or None before the first frame."""
        if not self._frames:
            return None
        return sum(b for b, _ in self._frames) / sum(s for _, s in self._frames)


def _leaves(tree: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    for k, v in tree.items():
        if isinstance(v, Mapping):
            yield from _leaves(v)
        else:
            yield k, v


class AutoCodecPolicy:
    """One party's ``auto`` codec policy over what it sends (``train.auto_codec.budget_ms``).

    The party calls :meth:`frame_sent` for each step frame (its tensors, wire-byte estimate and the
    seconds the channel took to accept it) and :meth:`end_step` at each step boundary, which installs the
    next step's choice in the communicator's ``compress_configs``.
    """

    def __init__(self, budget_s: float, *, name: str = "party", window: int = 16) -> None:
        if not (math.isfinite(budget_s) and budget_s > 0):
            raise ValueError(f"the auto codec budget must be a positive number of seconds, got {budget_s!r}")
        self.budget_s, self.name = budget_s, name
        self.meter = LinkRateMeter(window)
        self.levels: dict[str, int] = {}
        self.errors: dict[str, tuple[str, float]] = {}  # name -> (level name, relative RMS error)
        self._numels: dict[str, int] = {}
        self._unmeasured: set[str] = set()

    def frame_bytes(self, tensors: Mapping[str, Any], configs: Mapping[str, Any]) -> int:
        """Payload bytes of a frame under ``configs`` (the frame's own headers left out)."""
        total = 0
        for n, t in _leaves(tensors):
            if not isinstance(t, torch.Tensor):
                continue
            if t.is_floating_point() and n in self.levels:
                total += encoded_bytes(self.levels[n], t.numel())
            else:
                total += t.numel() * t.element_size()
        return total

    def frame_sent(self, tensors: Mapping[str, Any], nbytes: int, seconds: float | None) -> None:
        for n, t in _leaves(tensors):
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                self._numels[n] = self._numels.get(n, 0) + t.numel()
                if n in self._unmeasured:
                    self._unmeasured.discard(n)
                    lv = self.levels[n]
                    err = relative_rms_error(t, lv, n)
                    self.errors[n] = (LEVELS[lv][0], err)
                    log.info("%s: auto codec: %s sent as %s, relative RMS error %.3g", self.name, n, LEVELS[lv][0], err)
        if seconds is not None:
            self.meter.record(nbytes, seconds)

    def end_step(self, configs: dict[str, Any]) -> dict[str, int]:
        """Chooses the next step's levels (from this step's tensors and the measured rate) and installs
        them in ``configs`` (a communicator's ``compress_configs``); returns them."""
        numels, self._numels = self._numels, {}
        rate = self.meter.rate()
        if not numels or rate is None:
            return dict(self.levels)
        new = choose(numels, rate, self.budget_s)
        for n, lv in new.items():
            if self.levels.get(n) != lv:
                self._unmeasured.add(n)
                fits = sum(encoded_bytes(v, numels[k]) for k, v in new.items()) <= rate * self.budget_s
                log.info(
                    "%s: auto codec: %s -> %s (link %.1f Mbit/s measured, budget %.1f ms%s)",
                    self.name,
                    n,
                    LEVELS[lv][0],
                    rate * 8e-6,
                    self.budget_s * 1e3,
                    "" if fits else ", not met even at 4 bits",
                )
            cfg = LEVELS[lv][1]
            if cfg is None:
                configs.pop(n, None)
            else:
                configs[n] = cfg
        self.levels = new
        return dict(new)


def timed_send(send: Any, *args: Any, **kwargs: Any) -> float:
    t0 = time.perf_counter()
    send(*args, **kwargs)
    return time.perf_counter() - t0
