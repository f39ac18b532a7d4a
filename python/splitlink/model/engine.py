"""DeepSpeed under FLModel: importing it for this machine, a process group of one when no launcher made
one, the engine's warnings kept from users who turn warnings into errors, and the vector-Jacobian
products FLModel takes through an engine's forward outputs (its per-output hooks undone)."""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from splitlink.util import free_ports


@contextlib.contextmanager
def quiet_deepspeed() -> Any:
    """DeepSpeed's import and engine touch deprecated torch APIs (torch.jit, ZeRO collectives): their
    Deprecation/FutureWarnings are DeepSpeed's business, not the user's, and must not break runs that
    turn warnings into errors."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


# The environment of a one-process group splitlink made up (no launcher): set only while DeepSpeed
# reads it, so child processes (the other party, a launcher) never inherit a rank and port as if they
# had been launched into this group.
_OWN_GROUP_ENV: dict[str, str] = {}


@contextlib.contextmanager
def own_group_env() -> Any:
    saved = {k: os.environ.get(k) for k in _OWN_GROUP_ENV}
    os.environ.update(_OWN_GROUP_ENV)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def in_engine() -> Any:
    """Around every call into a DeepSpeed engine: its deprecation noise silenced, and the made-up group's
    environment present (ZeRO-3 reads LOCAL_RANK on every forward, not only at initialisation)."""
    with quiet_deepspeed(), own_group_env():
        yield


def hooked_tensors(result: Any) -> list[torch.Tensor]:
    """The tensors of an engine forward's result that DeepSpeed hooks: those with a grad_fn, in
    tensors, tuples, lists and mappings, as its register_output_backward_hooks finds them."""
    found: dict[int, torch.Tensor] = {}
    stack = [result]
    while stack:
        x = stack.pop()
        if isinstance(x, torch.Tensor):
            if x.grad_fn is not None:
                found[id(x)] = x
        elif isinstance(x, (tuple, list)):
            stack.extend(x)
        elif isinstance(x, Mapping):
            stack.extend(x.values())
    return list(found.values())


class EngineOutputHooks:
    """Hooks on the tensors a DeepSpeed engine's forward returned, registered after the engine's own
    there, so they run after them.

    DeepSpeed 0.19 hooks every output of its forward with ``_backward_prologue_per_tensor``, which
    leaves the gradient as it is under ``engine.backward`` and divides it by gradient_accumulation_steps
    in any other backward (for users who call ``loss.backward()``). These hooks ask that same function
    what it does in the running backward (``ratio``, 1 if the engine has no such function) and, with
    ``undo``, divide it out again: a backward of FLModel's own through the engine's outputs then gives
    the plain vector-Jacobian products."""

    def __init__(self, engine: Any, tensors: list[torch.Tensor], undo: bool) -> None:
        self._fn = getattr(engine, "_backward_prologue_per_tensor", None)
        self._undo = undo
        self.ratio = 1.0
        self._handles = [t.register_hook(self._seen) for t in tensors] if self._fn is not None else []  # type: ignore[no-untyped-call]

    def _seen(self, g: torch.Tensor) -> torch.Tensor | None:
        assert self._fn is not None
        probe = torch.ones((), dtype=torch.float64)
        r = self._fn(probe)
        self.ratio = 1.0 if r is None else float(r)
        if self._undo and self.ratio != 1.0 and math.isfinite(self.ratio) and self.ratio != 0.0:
            return g / self.ratio
        return None

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def vjp_past_engine_hooks(
    engine: Any,
    hooked: list[torch.Tensor],
    roots: list[tuple[torch.Tensor, torch.Tensor]],
    wrt: list[torch.Tensor],
    retain_graph: bool,
) -> list[torch.Tensor | None]:
    """``torch.autograd.grad`` of the roots (outputs of a DeepSpeed engine's forward, or computed from
    them), each weighted by its given gradient, as plain autograd computes it: the engine's per-output
    hooks on ``hooked`` undone (EngineOutputHooks)."""
    hooks = EngineOutputHooks(engine, hooked, undo=True)
    try:
        return list(
            torch.autograd.grad([o for o, _ in roots], wrt, [g for _, g in roots], retain_graph=retain_graph, allow_unused=True)
        )
    finally:
        hooks.remove()


class ObjectiveGrad:
    """The gradient a backward gives a scalar objective: what a DeepSpeed engine's backward multiplied
    it by (1/gradient_accumulation_steps, the fp16 loss scale), measured. Read after the backward (a
    read inside it would wait for the device)."""

    def __init__(self, objective: torch.Tensor) -> None:
        self._g: torch.Tensor | None = None
        self._handle = objective.register_hook(self._seen)  # type: ignore[no-untyped-call]

    def _seen(self, g: torch.Tensor) -> None:
        self._g = g.detach()

    def value(self) -> float | None:
        return None if self._g is None else float(self._g)

    def remove(self) -> None:
        self._handle.remove()


def init_deepspeed_runtime() -> Any:
    """Imports DeepSpeed for this machine (CPU or CUDA) and joins or creates its process group.

    Without a launcher (no RANK in the environment) this process becomes a group of one on 127.0.0.1.
    """
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    with quiet_deepspeed():
        import deepspeed
        import deepspeed.ops

    # The shared-memory collectives would be JIT-compiled (~45 s of g++) for nothing on one process.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if not torch.distributed.is_initialized():
        if "RANK" not in os.environ:
            _OWN_GROUP_ENV.update(
                MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_ports(1)[0]), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0"
            )
        with own_group_env():
            deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", verbose=False)
    return deepspeed


@dataclass(frozen=True)
class Engine:
    """A DeepSpeed engine over one party's train network, and what FLModel needs to know about it."""

    engine: Any
    optimizer: Any  # the engine's optimizer (a ZeRO wrapper of the one given, or that one)
    gradient_accumulation_steps: int
    prescale_fp16: bool  # FLModel applies the fp16 loss scale itself (see initialize_engine)
    dtype: torch.dtype | None  # bf16/fp16 when the engine computes in it, else None


def initialize_engine(
    network: torch.nn.Module, optimizer: torch.optim.Optimizer, config: dict[str, Any], *, micro_batch_size: int
) -> Engine:
    """``deepspeed.initialize`` with the traps defused: DeepSpeed clips gradients at 1.0 unless told
    otherwise and prints every 10 steps; ZeRO-3's memory-efficient linear patches torch for the whole
    process (another party's sub-network in it included), so it is off unless the config asks for it.
    ``config`` is completed in place (a micro-batch size from the YAML when it names none)."""
    deepspeed = init_deepspeed_runtime()
    config.setdefault("gradient_clipping", 0.0)
    config.setdefault("steps_per_print", 1 << 30)
    zero = config.get("zero_optimization")
    if isinstance(zero, Mapping) and int(zero.get("stage", 0)) == 3:
        config["zero_optimization"] = {**zero, "memory_efficient_linear": zero.get("memory_efficient_linear", False)}
    if "train_batch_size" not in config and "train_micro_batch_size_per_gpu" not in config:
        config["train_micro_batch_size_per_gpu"] = micro_batch_size
    with quiet_deepspeed(), own_group_env():
        engine, ds_optimizer, _, _ = deepspeed.initialize(model=network, optimizer=optimizer, config=config)
    # DeepSpeed 0.19's engine.backward applies the fp16 loss scale only through a ZeRO optimizer (or
    # torch autocast's scaler); its plain fp16 optimizers (ZeRO stage 0) divide by it all the same in
    # their step (deepspeedai/DeepSpeed#8393). FLModel then scales the loss itself; every step checks
    # what the engine did (FLModel._check_fp16_scaling) and switches if a DeepSpeed scales after all.
    prescale = False
    if engine.fp16_enabled() and getattr(engine, "torch_autocast_z0_gradscaler", None) is None:
        try:
            from deepspeed.runtime.base_optimizer import ZeROOptimizer
        except ImportError:  # another DeepSpeed: the first step's check decides
            pass
        else:
            prescale = not isinstance(engine.optimizer, ZeROOptimizer)
    dtype = torch.bfloat16 if engine.bfloat16_enabled() else torch.float16 if engine.fp16_enabled() else None
    return Engine(engine, ds_optimizer, int(engine.gradient_accumulation_steps()), prescale, dtype)
