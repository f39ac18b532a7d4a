"""Optimizers named in YAML: ``torch.optim`` classes, FTRL, and your own by name.

``opts[].type`` in a YAML file names a ``torch.optim`` class (``Adam``, ``AdamW``, ``SGD``, ...), one
registered here with :func:`register_optimizer`, or ``FTRL`` (FTRL-Proximal, the optimizer of the wide
part in Wide&Deep, which torch does not ship).

Hyper-parameters pass to the optimizer's constructor. MindSpore's names are accepted: ``learning_rate``
means ``lr``; ``beta1``/``beta2`` become ``betas``; ``loss_scale`` is not an optimizer argument but static
loss scaling: parameter gradients are divided by it before the step (the sens that produced them was
multiplied by it).

Optimizers built from YAML take torch's fused implementation (one kernel per parameter group instead
of a dozen tensor operations per parameter) where torch has one for the class and every parameter is
fp32/fp64 on a device it supports. It computes the update torch's default implementation computes,
equal up to rounding (the vectorised kernel may contract a multiply-add; ``tests/training/test_optim.py``),
and on CPU it is several times faster: ``benchmarks/bench_step.py`` prints an Adam step over a 1.6M-parameter
MLP in torch's three implementations with cold caches (stepped in turns, as between a training step's
forward and backward) and with warm caches (one optimizer stepped repeatedly); for-loop/fused there was
about 4x cold and 6x warm on the 2-core development machines. ``fused: false`` (or ``foreach: ...``) in
``hyper_parameters`` keeps torch's choice. For bf16/fp16 parameters the fused kernels compute in fp32
and so give other numbers than torch's default: there they are used only when asked for (``fused: true``).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from splitlink.errors import HyperParameterError

__all__ = ["FTRL", "build_optimizer", "register_optimizer", "resolve_optimizer", "optimizer_kwargs"]

_REGISTRY: dict[str, type[torch.optim.Optimizer]] = {}


def register_optimizer(name: str, cls: type[torch.optim.Optimizer]) -> None:
    """Makes ``cls`` available as ``opts[].type: <name>`` in YAML files."""
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise TypeError(f"register_optimizer({name!r}, ...) needs a torch.optim.Optimizer subclass, got {cls!r}")
    _REGISTRY[name] = cls


def resolve_optimizer(name: str) -> type[torch.optim.Optimizer]:
    if name in _REGISTRY:
        return _REGISTRY[name]
    cls = getattr(torch.optim, name, None)
    if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer) and cls is not torch.optim.Optimizer:
        return cls
    known = sorted(
        n
        for n in dir(torch.optim)
        if isinstance(getattr(torch.optim, n), type)
        and issubclass(getattr(torch.optim, n), torch.optim.Optimizer)
        and n != "Optimizer"
    )
    raise ValueError(
        f"unknown optimizer {name!r}; use a torch.optim class ({', '.join(known)}), "
        f"one registered with splitlink.optim.register_optimizer ({', '.join(sorted(_REGISTRY)) or 'none yet'}), "
        "or pass optimizers= to FLModel"
    )


def optimizer_kwargs(cls: type[torch.optim.Optimizer], hyper: Mapping[str, Any]) -> tuple[dict[str, Any], float]:
    """(constructor keyword arguments, static loss scale) for ``cls`` from YAML hyper-parameters."""
    params = inspect.signature(cls.__init__).parameters
    allowed = [n for n in params if n not in ("self", "params")]
    kwargs: dict[str, Any] = {}
    loss_scale = 1.0
    betas: dict[str, float] = {}
    for key, value in hyper.items():
        if key == "loss_scale":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise HyperParameterError(key, f"loss_scale must be a number > 0, got {value!r}")
            loss_scale = float(value)
            continue
        if key in ("beta1", "beta2") and "betas" in params:
            betas[key] = value
            continue
        name = "lr" if key == "learning_rate" else key
        if name not in params or name in ("self", "params"):
            raise HyperParameterError(
                key,
                f"{key!r} is not a parameter of {cls.__module__}.{cls.__name__}; "
                f"allowed: {', '.join(allowed)}, loss_scale (and learning_rate for lr)",
            )
        kwargs[name] = value
    if betas:
        default = params["betas"].default
        d1, d2 = default if isinstance(default, tuple) else (0.9, 0.999)
        kwargs["betas"] = (betas.get("beta1", d1), betas.get("beta2", d2))
    return kwargs, loss_scale


_FUSED_DTYPES = (torch.float32, torch.float64)


def build_optimizer(
    cls: type[torch.optim.Optimizer], params: list[torch.nn.Parameter], kwargs: Mapping[str, Any]
) -> torch.optim.Optimizer:
    """``cls(params, **kwargs)``, fused by default where that computes the same update faster (module
    docstring); torch's default implementation where torch refuses ``fused=True``."""
    kwargs = dict(kwargs)
    wants_default = not ({"fused", "foreach", "differentiable"} & kwargs.keys())
    if (
        wants_default
        and "fused" in inspect.signature(cls.__init__).parameters
        and params
        and all(p.dtype in _FUSED_DTYPES and not p.is_sparse for p in params)
    ):
        try:
            return cls(params, fused=True, **kwargs)  # type: ignore[call-arg]  # cls is a subclass that takes it
        except (RuntimeError, ValueError, TypeError):  # this device or option has no fused kernel
            pass
    return cls(params, **kwargs)


class FTRL(torch.optim.Optimizer):
    """FTRL-Proximal (McMahan et al., "Ad Click Prediction: a View from the Trenches", KDD 2013).

    Per coordinate, with accumulator ``n`` (starting at ``initial_accum``) and linear term ``z``::

        n' = n + g^2;  sigma = (n'^(-lr_power) - n^(-lr_power)) / lr;  z += g - sigma * w;  n = n'
        w = 0                                         if |z| <= l1
        w = (sign(z) * l1 - z) / (n^(-lr_power) / lr + 2 * l2)   otherwise

    The same update TensorFlow's and MindSpore's FTRL apply (``lr_power = -0.5`` by default).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        l1: float = 0.0,
        l2: float = 0.0,
        initial_accum: float = 0.1,
        lr_power: float = -0.5,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"FTRL lr must be > 0, got {lr}")
        if l1 < 0 or l2 < 0:
            raise ValueError(f"FTRL l1 and l2 must be >= 0, got {l1}, {l2}")
        if initial_accum <= 0:
            raise ValueError(f"FTRL initial_accum must be > 0, got {initial_accum}")
        if lr_power > 0:
            raise ValueError(f"FTRL lr_power must be <= 0, got {lr_power}")
        super().__init__(params, dict(lr=lr, l1=l1, l2=l2, initial_accum=initial_accum, lr_power=lr_power))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, l1, l2, power = group["lr"], group["l1"], group["l2"], group["lr_power"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    g = g.to_dense()
                state = self.state[p]
                if not state:
                    state["accum"] = torch.full_like(p, group["initial_accum"])
                    state["linear"] = torch.zeros_like(p)
                n, z = state["accum"], state["linear"]
                n_new = n + g * g
                sigma = (n_new.pow(-power) - n.pow(-power)) / lr
                z.add_(g - sigma * p)
                n.copy_(n_new)
                quadratic = n.pow(-power) / lr + 2 * l2
                w = (torch.sign(z) * l1 - z) / quadratic
                p.copy_(torch.where(z.abs() > l1, w, torch.zeros_like(w)))
        return loss


register_optimizer("FTRL", FTRL)
