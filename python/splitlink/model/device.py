"""Where a party computes: choosing the device (``--device``), finding a network's, and moving tensors
there (non-blocking from pinned host memory, where the copy can overlap)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["default_device", "resolve_device", "module_device", "to_device"]


def default_device() -> torch.device:
    """``cuda`` when torch sees a CUDA GPU, else ``cpu``."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def resolve_device(spec: str | torch.device | None) -> torch.device:
    """A ``--device`` value as a ``torch.device``: ``None`` or ``"auto"`` -> ``default_device()``; a
    CUDA device on a machine without one is refused with what to pass instead."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "auto"):
        return default_device()
    try:
        dev = torch.device(spec.strip() if isinstance(spec, str) else spec)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {spec!r} is not a torch device ({e}); use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r}: torch sees no CUDA GPU on this machine; use --device cpu (or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def module_device(module: nn.Module) -> torch.device:
    """The device of a network's first parameter (or buffer); ``cpu`` for one with neither."""
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


def to_device(t: Any, device: torch.device) -> Any:
    """``t`` on ``device`` (the same object when already there); tensors in pinned host memory are
    copied non-blocking (ordered on the current stream before any use there)."""
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # what "cuda" means for a tensor
    if not isinstance(t, torch.Tensor) or t.device == device:
        return t
    pinned = t.device.type == "cpu" and device.type != "cpu" and torch.cuda.is_available() and t.is_pinned()
    return t.to(device, non_blocking=pinned)
