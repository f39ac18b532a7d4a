"""Gradient planning for FLModel: the terms each optimizer and grad scaler consumes, the leaves an
output's autograd graph reaches, and input conversion. No DeepSpeed, no checkpoints, no FLModel."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

Term = tuple[str, float | str]  # (output name, sens)


class WithLoss(nn.Module):
    """network + loss_fn: the last train_net input is the target given to the loss."""

    def __init__(self, network: nn.Module, loss_fn: Any, n_net_inputs: int, keep_outputs: bool) -> None:
        super().__init__()
        self.network = network
        self.loss_fn = loss_fn
        self.n = n_net_inputs
        self.keep_outputs = keep_outputs

    def forward(self, *xs: Any) -> Any:
        y = self.network(*xs[: self.n])
        ys = tuple(y) if isinstance(y, (tuple, list)) else (y,)
        loss = self.loss_fn(*ys, *xs[self.n :])
        return (*ys, loss) if self.keep_outputs else loss


def as_tensor(name: str, value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    if isinstance(value, (int, float, bool, list, tuple)):
        return torch.as_tensor(value)
    raise TypeError(f"input {name!r} is a {type(value).__name__}; give a torch.Tensor or numpy array")


def forward_arity(module: nn.Module) -> int | None:
    """Positional parameters of ``module.forward``, or None when it takes *args."""
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return None
    n = 0
    for p in params:
        if p.kind == p.VAR_POSITIONAL:
            return None
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            n += 1
    return n


def reachable(out: torch.Tensor) -> set[int]:
    """ids of the leaf tensors (parameters, inputs) the autograd graph of ``out`` reaches."""
    if out.grad_fn is None:
        return {id(out)} if out.requires_grad else set()
    found: set[int] = set()
    seen: set[Any] = set()
    stack = [out.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        var = getattr(fn, "variable", None)
        if var is not None:
            found.add(id(var))
        stack.extend(nxt for nxt, _ in fn.next_functions if nxt is not None)
    return found


def weighted_roots(
    outs: Mapping[str, torch.Tensor], terms: Sequence[Term], grads_out: Mapping[Term, torch.Tensor]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(output, the sum of its terms' sens) for each output the terms name."""
    summed: dict[str, torch.Tensor] = {}
    for t in terms:
        summed[t[0]] = summed[t[0]] + grads_out[t] if t[0] in summed else grads_out[t]
    return [(outs[n], g) for n, g in summed.items()]


class Consumer:
    """An optimizer or a grad scaler: the terms it needs and what it differentiates."""

    def __init__(self, kind: str, index: int, terms: list[Term], loss_scale: float = 1.0, inputs: tuple[str, ...] = ()) -> None:
        self.kind, self.index, self.terms, self.loss_scale = kind, index, terms, loss_scale
        self.inputs = inputs  # a grad scaler's input names, in YAML order
