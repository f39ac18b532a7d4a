"""FLModel's checkpoint files: one ``step-<step>.pt`` per step written atomically (plain PyTorch), or
DeepSpeed's checkpoint directories ``step-<step>/`` (sharded by its ranks), and the checks that name what
is wrong with a file that cannot be resumed from. What goes into a checkpoint is FLModel's business;
this module knows only where and how it is stored."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from splitlink.errors import CheckpointError
from splitlink.model.engine import in_engine
from splitlink.util import atomic_write, fsync_dir

CKPT_FORMAT = "splitlink.FLModel/1"


def step_name(step: int) -> str:
    return f"step-{step:010d}"


def list_step_files(directory: Path) -> list[Path]:
    """The ``step-*.pt`` files of ``directory``, oldest step first."""
    found = []
    for p in directory.glob("step-*.pt"):
        with contextlib.suppress(ValueError):
            found.append((int(p.stem.split("-", 1)[1]), p))
    return [p for _, p in sorted(found)]


def step_of(path: Path) -> int:
    """The step in a ``step-<step>.pt`` file's or ``step-<step>/`` directory's name."""
    return int(path.name.split("-", 1)[1].removesuffix(".pt"))


def list_step_dirs(directory: Path) -> list[Path]:
    """DeepSpeed's complete ``step-*`` directories of ``directory`` (a save in progress is ``.tmp-*``), oldest first."""
    found = []
    for p in directory.glob("step-*"):
        with contextlib.suppress(ValueError):
            if p.is_dir():
                found.append((step_of(p), p))
    return [p for _, p in sorted(found)]


def write_state(target: Path, state: Mapping[str, Any], *, keep: int | None = None) -> Path:
    """Writes ``state`` to ``target`` atomically (temporary name, fsync, rename), so a crash never leaves
    a corrupt newest checkpoint; ``keep`` then removes all but the newest ``keep`` files beside it."""
    atomic_write(target, lambda fh: torch.save(dict(state), fh), binary=True)
    if keep is not None and keep > 0:
        for old in list_step_files(target.parent)[:-keep]:
            old.unlink(missing_ok=True)
    return target


def read_state(path: Path) -> dict[str, Any]:
    """A plain FLModel checkpoint: ``path`` a file, or a directory whose newest ``step-*.pt`` is taken."""
    p = path
    if p.is_dir():
        found = list_step_files(p)
        if not found:
            raise CheckpointError(f"no checkpoint (step-*.pt) in {p}")
        p = found[-1]
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which, and why
        raise CheckpointError(f"checkpoint {p} cannot be read ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("format") != CKPT_FORMAT:
        raise CheckpointError(f"{p} is not a splitlink FLModel checkpoint (format {CKPT_FORMAT})")
    state["_path"] = p
    return state


def load_module(module: nn.Module, state: Mapping[str, torch.Tensor], source: Path) -> None:
    """``module.load_state_dict(state)`` after checking that the keys and shapes match, naming every
    difference (a checkpoint of another network is refused before anything is overwritten)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing from the checkpoint: {', '.join(missing)}")
        if unexpected:
            parts.append(f"not in this network: {', '.join(unexpected)}")
        if shapes:
            parts.append(
                "different shapes: " + ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in shapes)
            )
        raise CheckpointError(f"checkpoint {source} is of a different network ({type(module).__name__}): " + "; ".join(parts))
    module.load_state_dict(state)


def save_deepspeed(engine: Any, directory: Path, step: int, client: dict[str, Any]) -> Path:
    """DeepSpeed's checkpoint of ``step`` in ``directory/step-<step>``: every rank writes its shards under a
    temporary tag; rank 0 fsyncs them and renames the tag once all ranks are done."""
    import torch.distributed as dist

    directory.mkdir(parents=True, exist_ok=True)
    tag = step_name(step)
    tmp_tag = f".tmp-{tag}"
    with in_engine():
        engine.save_checkpoint(str(directory), tag=tmp_tag, client_state=client, save_latest=False)
    if dist.is_initialized():
        dist.barrier()
    if not dist.is_initialized() or dist.get_rank() == 0:
        for f in (directory / tmp_tag).rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        final = directory / tag
        if final.exists():
            shutil.rmtree(final)
        os.replace(directory / tmp_tag, final)
        fsync_dir(directory)
    if dist.is_initialized():
        dist.barrier()
    return directory / tag


def load_deepspeed(engine: Any, directory: Path, phase: str) -> tuple[Path, dict[str, Any]]:
    """Loads DeepSpeed's checkpoint ``directory`` (a ``step-*`` directory, or the newest one in it);
    returns the tag directory and the client state saved with it."""
    if directory.name.startswith("step-"):
        tag_dir = directory
    else:
        tags = list_step_dirs(directory)
        if not tags:
            raise CheckpointError(f"no DeepSpeed checkpoint (step-*/) in {directory}")
        tag_dir = tags[-1]
    with in_engine():
        load_path, client = engine.load_checkpoint(
            str(tag_dir.parent),
            tag=tag_dir.name,
            load_optimizer_states=phase == "train",
            load_lr_scheduler_states=phase == "train",
            load_module_strict=True,
        )
    if load_path is None:
        raise CheckpointError(f"DeepSpeed could not load the checkpoint in {tag_dir}")
    return tag_dir, dict(client or {})
