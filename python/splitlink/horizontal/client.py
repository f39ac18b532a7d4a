"""A client's local training for one round: plain torch or under DeepSpeed (ZeRO-2 from FATE's JSON config).

A :class:`LocalTrainer` holds a client's model and data. Each round it takes the global state (the
exchanged tensors: every trainable parameter, or only the adapters under PEFT), trains on its own rows
for ``aggregate_freq`` epochs or steps and returns its new state and its number of training rows.

* **Deterministic.** The batches come from :class:`~splitlink.runtime.schedule.Schedule` (seeded by the
  job's seed and the client's name), the torch RNG is seeded per (seed, client, round) inside
  ``torch.random.fork_rng``, so a client trains the same whether it runs in its own process or beside
  the aggregator in one process.
* **Stateless torch clients.** A plain torch client makes a fresh optimizer every round (as Flower's
  clients do), so the federation's whole state is the aggregator's checkpoint. A DeepSpeed client keeps
  its engine (and its optimizer moments, as FATE's HF-Trainer clients do) for the life of its process.
* **FedProx.** ``fedprox_mu > 0`` adds ``mu/2 * ||w - w_global||^2`` over the exchanged tensors.
"""

from __future__ import annotations

import copy
import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from splitlink.runtime.schedule import Schedule

__all__ = ["LocalOptions", "LocalTrainer", "classifier_loss", "resolve_deepspeed_config", "seed_of"]

LossFn = Callable[[nn.Module, Mapping[str, torch.Tensor]], torch.Tensor]


def seed_of(*parts: object) -> int:
    """A 32-bit seed from the parts' text (stable across processes and Python runs, unlike hash())."""
    return zlib.crc32(":".join(map(str, parts)).encode())


@dataclass
class LocalOptions:
    """A client's training options (FATE's TrainingArguments and FedArguments as they apply to a client)."""

    batch_size: int = 16
    lr: float = 5e-4
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    momentum: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 0.0  # 0: no clipping
    aggregate_strategy: Literal["epoch", "step"] = "epoch"
    aggregate_freq: int = 1
    fedprox_mu: float = 0.0
    seed: int = 0
    drop_last: bool = False
    deepspeed: Mapping[str, Any] | None = None  # a DeepSpeed config ("auto" values allowed)
    warmup_steps: int = 0  # what "auto" warm-up steps in a DeepSpeed scheduler resolve to
    extra: dict[str, Any] = field(default_factory=dict)


def classifier_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of a ``transformers`` sequence classifier (``model(input_ids, attention_mask).logits``)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits
    return nn.functional.cross_entropy(logits.float(), batch["labels"].long())


def resolve_deepspeed_config(config: Mapping[str, Any], opts: LocalOptions) -> dict[str, Any]:
    """A DeepSpeed config with its HF-style ``"auto"`` values resolved from the training options (batch
    size, learning rate, gradient clipping, warm-up), one process (world size 1). A value still "auto"
    after that is an error naming its key path."""
    cfg = copy.deepcopy(dict(config))
    auto = "auto"
    gas = cfg.get("gradient_accumulation_steps", 1)
    if gas == auto:
        gas = cfg["gradient_accumulation_steps"] = 1
    if cfg.get("train_micro_batch_size_per_gpu", auto) == auto:
        cfg["train_micro_batch_size_per_gpu"] = opts.batch_size
    if cfg.get("train_batch_size") == auto:
        cfg["train_batch_size"] = int(cfg["train_micro_batch_size_per_gpu"]) * int(gas)
    if cfg.get("gradient_clipping", auto) == auto:
        cfg["gradient_clipping"] = float(opts.max_grad_norm)  # DeepSpeed clips at 1.0 unless told
    cfg.setdefault("steps_per_print", 1 << 30)
    for key in ("fp16", "bf16"):
        if isinstance(cfg.get(key), Mapping) and cfg[key].get("enabled") == auto:
            cfg[key] = {**cfg[key], "enabled": False}
    opt = cfg.get("optimizer")
    if isinstance(opt, Mapping):
        params = dict(opt.get("params", {}))
        for k, v in list(params.items()):
            if v == auto:
                params[k] = {"lr": opts.lr, "weight_decay": opts.weight_decay}.get(k, v)
        cfg["optimizer"] = {**opt, "params": params}
    sched = cfg.get("scheduler")
    if isinstance(sched, Mapping):
        params = dict(sched.get("params", {}))
        # Absent values keep DeepSpeed's defaults (as under FATE/HF); "auto" ones follow the training
        # options (DeepSpeed 0.19 wants at least one warm-up step).
        for k, v in list(params.items()):
            if v == auto:
                params[k] = {"warmup_min_lr": 0.0, "warmup_max_lr": opts.lr, "warmup_num_steps": max(1, opts.warmup_steps)}.get(
                    k, v
                )
        cfg["scheduler"] = {**sched, "params": params}
    left = [p for p in _auto_paths(cfg)]
    if left:
        raise ValueError(f'DeepSpeed config: cannot resolve "auto" at {", ".join(left)}; give a value')
    return cfg


def _auto_paths(node: Any, path: str = "") -> list[str]:
    if isinstance(node, Mapping):
        return [p for k, v in node.items() for p in _auto_paths(v, f"{path}.{k}" if path else str(k))]
    return [path] if node == "auto" else []


def _torch_optimizer(
    kind: str, params: list[nn.Parameter], opts: LocalOptions, ds_params: Mapping[str, Any] | None = None
) -> torch.optim.Optimizer:
    p = dict(ds_params or {})
    lr = float(p.pop("lr", opts.lr))
    wd = float(p.pop("weight_decay", opts.weight_decay))
    kind = kind.lower()
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(p.pop("momentum", opts.momentum)), weight_decay=wd)
    if kind in ("adam", "adamw"):
        betas = tuple(p.pop("betas", (0.9, 0.999)))
        eps = float(p.pop("eps", 1e-8))
        cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
        return cls(params, lr=lr, betas=(float(betas[0]), float(betas[1])), eps=eps, weight_decay=wd)
    raise ValueError(f"optimizer {kind!r} is not supported for clients; use sgd, adam or adamw")


class LocalTrainer:
    """One client's model, data and local training.

    ``data``: name -> tensor, all with the same first dimension (rows), ``labels`` among them; a batch is
    these tensors indexed by the schedule's rows. ``exchanged``: the parameter names that travel (default:
    every parameter that requires grad); only they are trained.
    """

    def __init__(
        self,
        name: str,
        model: nn.Module,
        data: Mapping[str, torch.Tensor],
        opts: LocalOptions,
        *,
        loss_fn: LossFn = classifier_loss,
        exchanged: list[str] | None = None,
    ) -> None:
        rows = {k: int(v.shape[0]) for k, v in data.items()}
        if not rows:
            raise ValueError(f"client {name!r}: no training data")
        if len(set(rows.values())) != 1:
            raise ValueError(f"client {name!r}: data tensors have different row counts {rows}")
        if opts.aggregate_freq < 1:
            raise ValueError(f"aggregate_freq must be at least 1, got {opts.aggregate_freq}")
        self.name, self.model, self.data, self.opts, self.loss_fn = name, model, dict(data), opts, loss_fn
        self.samples = next(iter(rows.values()))
        params = dict(model.named_parameters())
        self.exchanged = list(exchanged) if exchanged is not None else [k for k, p in params.items() if p.requires_grad]
        unknown = [k for k in self.exchanged if k not in params]
        if unknown:
            raise ValueError(f"client {name!r}: exchanged tensors {unknown[:5]} are not parameters of the model")
        keep = set(self.exchanged)
        for k, p in params.items():
            p.requires_grad_(k in keep)
        self.schedule = Schedule(
            self.samples, opts.batch_size, seed=seed_of(opts.seed, name), epochs=1 << 40, drop_last=opts.drop_last
        )
        self.engine: Any = None

    # ---- state ------------------------------------------------------------------------------------
    def get_state(self) -> dict[str, torch.Tensor]:
        params = dict(self.model.named_parameters())
        return {k: params[k].detach().clone() for k in self.exchanged}

    def set_state(self, state: Mapping[str, torch.Tensor]) -> None:
        params = dict(self.model.named_parameters())
        missing = [k for k in self.exchanged if k not in state]
        if missing or len(state) != len(self.exchanged):
            raise ValueError(
                f"client {self.name!r}: the global state does not hold the exchanged tensors "
                f"(missing {missing[:5]}, {len(state)} given, {len(self.exchanged)} expected)"
            )
        with torch.no_grad():
            for k in self.exchanged:
                if tuple(state[k].shape) != tuple(params[k].shape):
                    raise ValueError(
                        f"client {self.name!r}: global tensor {k!r} has shape {tuple(state[k].shape)}, "
                        f"the model's is {tuple(params[k].shape)}"
                    )
                params[k].copy_(state[k])
        if self.engine is not None and hasattr(self.engine.optimizer, "refresh_fp32_params"):
            self.engine.optimizer.refresh_fp32_params()  # ZeRO keeps fp32 master copies of the parameters

    def steps_in_round(self) -> int:
        f = self.opts.aggregate_freq
        return f * self.schedule.steps_per_epoch if self.opts.aggregate_strategy == "epoch" else f

    # ---- training ---------------------------------------------------------------------------------
    def _init_deepspeed(self) -> None:
        from splitlink.model.engine import init_deepspeed_runtime, own_group_env, quiet_deepspeed

        cfg = resolve_deepspeed_config(self.opts.deepspeed or {}, self.opts)
        ds_opt = cfg.pop("optimizer", None)
        params = [p for p in self.model.parameters() if p.requires_grad]
        # A torch optimizer instance: DeepSpeed's own CPU Adam would be JIT-compiled (minutes of g++).
        kind = str(ds_opt.get("type", self.opts.optimizer)) if isinstance(ds_opt, Mapping) else self.opts.optimizer
        optimizer = _torch_optimizer(kind, params, self.opts, ds_opt.get("params") if isinstance(ds_opt, Mapping) else None)
        deepspeed = init_deepspeed_runtime()
        with quiet_deepspeed(), own_group_env():
            self.engine, _, _, _ = deepspeed.initialize(model=self.model, optimizer=optimizer, config=cfg)

    def train_round(self, round_: int, global_state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int, float]:
        """Trains from ``global_state`` for one round; returns (new state, training rows, mean loss)."""
        if self.opts.deepspeed is not None and self.engine is None:
            self._init_deepspeed()
        self.set_state(global_state)
        n = self.steps_in_round()
        start = round_ * n
        anchor = {k: v.detach().clone() for k, v in global_state.items()} if self.opts.fedprox_mu > 0 else None
        params = dict(self.model.named_parameters())
        losses: list[float] = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_of(self.opts.seed, self.name, round_))
            if self.engine is None:
                optimizer = _torch_optimizer(self.opts.optimizer, [params[k] for k in self.exchanged], self.opts)
            self.model.train()
            for i, (_, rows) in enumerate(self.schedule.steps(start)):
                if i >= n:
                    break
                idx = torch.from_numpy(rows)
                batch = {k: v[idx] for k, v in self.data.items()}
                if self.engine is not None:
                    from splitlink.model.engine import in_engine

                    with in_engine():
                        loss = self.loss_fn(self.engine, batch)
                        total = loss + self._prox(params, anchor)
                        self.engine.backward(total)
                        self.engine.step()
                else:
                    optimizer.zero_grad(set_to_none=True)
                    loss = self.loss_fn(self.model, batch)
                    total = loss + self._prox(params, anchor)
                    total.backward()  # type: ignore[no-untyped-call]
                    if self.opts.max_grad_norm > 0:
                        torch.nn.utils.clip_grad_norm_([params[k] for k in self.exchanged], self.opts.max_grad_norm)
                    optimizer.step()
                losses.append(float(loss.detach()))
        mean = sum(losses) / len(losses) if losses else math.nan
        return self.get_state(), self.samples, mean

    def _prox(self, params: Mapping[str, nn.Parameter], anchor: Mapping[str, torch.Tensor] | None) -> torch.Tensor | float:
        if anchor is None:
            return 0.0
        sq = sum(((params[k] - anchor[k]) ** 2).sum() for k in self.exchanged)
        return 0.5 * self.opts.fedprox_mu * sq

    @torch.no_grad()
    def evaluate(self, data: Mapping[str, torch.Tensor], batch_size: int = 256) -> dict[str, float]:
        """Loss and accuracy of a classifier on ``data`` (labels included)."""
        return evaluate_classifier(self.model, data, batch_size, self.loss_fn)


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module, data: Mapping[str, torch.Tensor], batch_size: int = 256, loss_fn: LossFn = classifier_loss
) -> dict[str, float]:
    was = model.training
    model.eval()
    n = int(data["labels"].shape[0])
    correct, loss_sum = 0, 0.0
    for i in range(0, n, batch_size):
        batch = {k: v[i : i + batch_size] for k, v in data.items()}
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits
        loss_sum += float(nn.functional.cross_entropy(logits.float(), batch["labels"].long(), reduction="sum"))
        correct += int((logits.argmax(-1) == batch["labels"]).sum())
    model.train(was)
    return {"loss": loss_sum / n, "accuracy": correct / n}
