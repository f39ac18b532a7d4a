"""Wide&Deep split between a leader (20 fields + labels) and a follower (19 fields), as in the seed.

Each party runs a bottom :class:`WideDeepModel` over its own fields; the leader's top network combines
both parties' wide and deep embeddings into the click logit (sigmoid cross-entropy loss). The step:

    follower: ids, weights -> bottom -> (wide, deep) embeddings  --------------------------> leader
    leader:   bottom -> its embeddings; top(its + follower's embeddings, label) -> loss
              backward: grad scale {"loss": {embedding: gradient}}; its share -> its bottom,
              the follower's share -------------------------------------------------------> follower
    follower: bottom.backward_one_step(sens=grad scale)

:class:`Leader` and :class:`Follower` are :class:`splitlink.runtime.Party` s: they hold one party's
FLModels and data and do the per-step math; the runtime does the rest of ``run()`` (checkpoints every N
steps, coordinated resume, riding through a peer's restart, the schedule, metrics). The in-process
driver :func:`train_local` interleaves both parties' steps in one process. The scenario registers
itself as ``criteo_wide_deep`` (:mod:`splitlink.runtime.registry`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from splitlink.config import FLYamlData
from splitlink.examples import YAML_DIR
from splitlink.examples.criteo import FOLLOWER_FIELDS, LEADER_FIELDS, PartyData, auc, load_party
from splitlink.model import FLModel
from splitlink.runtime import pipeline
from splitlink.runtime.metrics import progress_bar
from splitlink.runtime.party import Party, TrainOptions, agree_locally
from splitlink.runtime.registry import Scenario, register
from splitlink.runtime.run_config import RunConfig, Section

__all__ = ["WideDeepConfig", "WideDeepModel", "LeaderTopNet", "Leader", "Follower", "train_local"]

log = logging.getLogger("splitlink.examples.wide_deep")
YAMLS = YAML_DIR / "criteo"


@dataclass
class WideDeepConfig:
    vocab_size: int = 200_000
    emb_dim: int = 80
    deep_layers: Sequence[int] = (1024, 512, 256, 128)
    l2_coef: float = 8e-5
    init_std: float = 0.01


class WideDeepSection(Section):
    """The run file's ``model`` section (criteo_wide_deep, wide_deep_nparty): the network's sizes."""

    vocab_size: int = Field(default=200_000, ge=2)
    emb_dim: int = Field(default=80, ge=1)
    deep_layers: list[int] = Field(default_factory=lambda: [1024, 512, 256, 128], min_length=1)
    l2_coef: float = Field(default=8e-5, ge=0)
    init_std: float = Field(default=0.01, gt=0)

    def build(self) -> WideDeepConfig:
        return WideDeepConfig(
            vocab_size=self.vocab_size,
            emb_dim=self.emb_dim,
            deep_layers=tuple(self.deep_layers),
            l2_coef=self.l2_coef,
            init_std=self.init_std,
        )


@dataclass
class TrainConfig(TrainOptions):
    eval_fraction: float = 0.1
    compress: bool = True  # the YAML's min_max settings on the follower's embeddings
    label_dp: bool = False
    embedding_dp: bool = False
    progress: bool = True
    # privacy sections merged into the YAMLs (validated as YAML: splitlink audit's defences)
    leader_privacy: dict[str, Any] | None = None  # leader top (label_dp, grad_norm, marvell)
    follower_privacy: dict[str, Any] | None = None  # follower bottom (embedding_dp)
    lr_scale: float = 1.0  # multiplies every YAML learning_rate (the audit's short runs train at 10x)
    # replaces the follower bottom's optimizers (the audit's noise-robust follower): {"type": ..., "hyper_parameters":
    # {...}, "replace": [YAML types, default all]}; its learning_rate is absolute (lr_scale does not apply), the
    # YAML's loss_scale is kept (the sens was multiplied by it)
    follower_optimizer: dict[str, Any] | None = None


class WideDeepModel(nn.Module):
    """One party's bottom network: wide (linear over id weights) and deep (embeddings + MLP) parts.

    ``forward(id_hldr, wt_hldr)`` returns the wide embedding (B, 1), the deep embedding
    (B, deep_layers[-1]) and the L2 regularisation of the looked-up deep embeddings.
    """

    def __init__(self, field_size: int, cfg: WideDeepConfig) -> None:
        super().__init__()
        self.l2_coef = cfg.l2_coef
        self.wide_w = nn.Embedding(cfg.vocab_size, 1)
        self.wide_b = nn.Parameter(torch.zeros(1))
        self.deep_embeddings = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        nn.init.normal_(self.wide_w.weight, std=cfg.init_std)
        nn.init.normal_(self.deep_embeddings.weight, std=cfg.init_std)
        layers: list[nn.Module] = []
        width = field_size * cfg.emb_dim
        for i, n in enumerate(cfg.deep_layers):
            layers.append(nn.Linear(width, n))
            if i < len(cfg.deep_layers) - 1:
                layers.append(nn.ReLU())
            width = n
        self.dense = nn.Sequential(*layers)

    def forward(self, id_hldr: torch.Tensor, wt_hldr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        w = wt_hldr.unsqueeze(-1)
        wide = (self.wide_w(id_hldr) * w).sum(dim=1) + self.wide_b
        emb = self.deep_embeddings(id_hldr) * w
        deep = self.dense(emb.flatten(1))
        l2 = self.l2_coef * emb.pow(2).sum() / id_hldr.shape[0]
        return wide, deep, l2


class _BottomEval(nn.Module):
    def __init__(self, model: WideDeepModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, id_hldr: torch.Tensor, wt_hldr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        wide, deep, _ = self.model(id_hldr, wt_hldr)
        return wide, deep


class LeaderTopNet(nn.Module):
    """Combines the four embeddings: logit = leader_wide + follower_wide + MLP([leader_deep, follower_deep])."""

    def __init__(self, deep_dim: int, follower_deep_width: int | None = None) -> None:
        super().__init__()
        # Parameter names match the seed YAML's optimizer selectors ("deep", "dense").
        self.deep_combine = nn.Linear(deep_dim + (deep_dim if follower_deep_width is None else follower_deep_width), deep_dim)
        self.dense_out = nn.Linear(deep_dim, 1)

    def logits(self, lw: torch.Tensor, ld: torch.Tensor, fw: torch.Tensor, fd: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = lw + fw + self.dense_out(torch.relu(self.deep_combine(torch.cat([ld, fd], dim=1))))
        return out

    def forward(
        self, lw: torch.Tensor, ld: torch.Tensor, fw: torch.Tensor, fd: torch.Tensor, label: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.logits(lw, ld, fw, fd)
        return z, F.binary_cross_entropy_with_logits(z, label.view_as(z))


class _TopEval(nn.Module):
    def __init__(self, top: LeaderTopNet) -> None:
        super().__init__()
        self.top = top

    def forward(
        self, lw: torch.Tensor, ld: torch.Tensor, fw: torch.Tensor, fd: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.top.logits(lw, ld, fw, fd)
        return z, torch.sigmoid(z)


def _ids_digest(ids: np.ndarray) -> torch.Tensor:
    return torch.frombuffer(
        bytearray(hashlib.sha256(np.ascontiguousarray(ids, dtype=np.int64).tobytes()).digest()), dtype=torch.uint8
    )


def _replace_optimizer(opt: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
    """``opt`` (a YAML ``opts`` entry) with ``spec``'s type and hyper-parameters if its type is among
    ``spec["replace"]`` (default: every type); the entry's grads, params and loss_scale are kept."""
    unknown = set(spec) - {"type", "hyper_parameters", "replace"}
    if unknown or not isinstance(spec.get("type"), str):
        raise ValueError(
            f"follower_optimizer must be {{'type': <optimizer>, 'hyper_parameters': {{...}}, 'replace': [types]}}, "
            f"got {dict(spec)!r}"
        )
    replace = spec.get("replace")
    if replace is not None and opt.get("type") not in replace:
        return dict(opt)
    hyper = {k: v for k, v in (opt.get("hyper_parameters") or {}).items() if k == "loss_scale"}
    return {**opt, "type": spec["type"], "hyper_parameters": {**hyper, **(spec.get("hyper_parameters") or {})}}


_O = TypeVar("_O", bound=TrainConfig)


class CriteoRowsParty(Party[_O]):
    """A Wide&Deep party over Criteo rows: what the two-party (``criteo_wide_deep``) and the N-party
    (``wide_deep_nparty``) splits share: its rows cut into train and held-out, the schedule, the feature
    tensors of a batch, the codecs of its sub-networks' YAMLs and the row-alignment check at start-up."""

    keep_checkpoints = 3
    logger = log

    def _setup_rows(self, data: PartyData, model_cfg: WideDeepConfig, seed: int) -> None:
        """Holds ``data``, builds the sub-networks (seeded) and the schedule over the training rows."""
        self.data, self.cfg = data, model_cfg
        torch.manual_seed(seed)
        self.build()
        n = len(data)
        self.n_train = n - int(round(n * self.train.eval_fraction))
        self.schedule = self.make_schedule(self.n_train)
        self.steps_per_epoch, self.total_steps = self.schedule.steps_per_epoch, self.schedule.total_steps

    def build(self) -> None:
        raise NotImplementedError

    def compress_configs(self) -> dict[str, Any]:
        if not self.train.compress:
            return {}
        out: dict[str, Any] = {}
        for m in self.models.values():
            out.update(m.get_compress_configs())
        return out

    def eval_batches(self) -> Iterator[np.ndarray]:
        rows = np.arange(self.n_train, len(self.data))
        for i in range(0, len(rows), self.schedule.batch_size):
            yield rows[i : i + self.schedule.batch_size]

    def features(self, idx: np.ndarray, suffix: str) -> dict[str, torch.Tensor]:
        return {
            f"id_hldr{suffix}": torch.from_numpy(np.ascontiguousarray(self.data.ids[idx])),
            f"wt_hldr{suffix}": torch.from_numpy(np.ascontiguousarray(self.data.wts[idx])),
        }

    def _report_losses(self, epoch: int, window: list[tuple[float, float]], t0: float) -> None:
        """Every ``log_every`` steps (and at the last): the mean wide/deep loss of ``window`` (emptied)
        logged and recorded. Log lines go around the progress bar (metrics.BarAwareHandler)."""
        if self.step % self.train.log_every and self.step != self.total_steps:
            return
        w, d = (float(np.mean(v)) for v in zip(*window))
        window.clear()
        at = self.schedule.in_epoch(self.step)
        log.info("epoch %d step %d/%d wide_loss: %.6f deep_loss: %.6f", epoch, at, self.steps_per_epoch, w, d)
        self.record(kind="train", epoch=epoch, step=self.step, wide_loss=w, deep_loss=d, seconds=time.perf_counter() - t0)

    # Start-up: the parties must hold the same rows in the same order.
    def hello(self) -> dict[str, torch.Tensor]:
        return {"ids_sha256": _ids_digest(self.data.sample_ids)}

    def _check_rows(self, theirs: Mapping[str, Any], whose: str, fix: str) -> None:
        if not torch.equal(theirs["ids_sha256"], _ids_digest(self.data.sample_ids)):
            raise RuntimeError(f"{self.name}: {whose} sample ids differ (row alignment); {fix}")


class _WideDeepParty(CriteoRowsParty[TrainConfig]):
    tap: Any = None  # a splitlink.attacks.CutTap: sees what this party receives across the cut

    def __init__(self, data: PartyData, comm: Any, model_cfg: WideDeepConfig, train: TrainConfig) -> None:
        super().__init__(comm, train)
        self._setup_rows(data, model_cfg, train.seed + (0 if self.role == "leader" else 1))

    def _yaml(
        self, name: str, privacy: Mapping[str, Any] | None = None, optimizer: Mapping[str, Any] | None = None
    ) -> FLYamlData:
        data = FLYamlData(YAMLS / name)
        if self.train.ckpt_dir is not None or privacy is not None or optimizer is not None or self.train.lr_scale != 1.0:
            raw = dict(data.raw)
            if self.train.lr_scale != 1.0:
                raw["opts"] = [
                    {
                        **o,
                        "hyper_parameters": {
                            **o.get("hyper_parameters", {}),
                            "learning_rate": o.get("hyper_parameters", {}).get("learning_rate", 1e-3) * self.train.lr_scale,
                        },
                    }
                    for o in raw.get("opts") or []
                ]
            if optimizer is not None:
                raw["opts"] = [_replace_optimizer(o, optimizer) for o in raw.get("opts") or []]
            if self.train.ckpt_dir is not None:
                raw["ckpt_path"] = str(Path(self.train.ckpt_dir).resolve())
            if privacy is not None:
                raw["privacy"] = {**(raw.get("privacy") or {}), **privacy}
            data = FLYamlData(raw)
        return data

    def check_hello(self, theirs: Mapping[str, Any]) -> None:
        self._check_rows(theirs, "the parties'", "align the rows with PSI first so both hold the same samples in the same order")


class Follower(_WideDeepParty):
    role, peer = "follower", "leader"

    def build(self) -> None:
        name = "follower_bottom_embedding_dp.yaml" if self.train.embedding_dp else "follower_bottom.yaml"
        self.net = WideDeepModel(len(FOLLOWER_FIELDS), self.cfg).to(self.device)  # initialised on the CPU
        self.models["bottom"] = FLModel(
            self._yaml(name, self.train.follower_privacy, self.train.follower_optimizer),
            self.net,
            eval_network=_BottomEval(self.net),
        )

    def forward(self, idx: np.ndarray) -> None:
        self._batch = self.features(idx, "0")
        self._rows = idx
        out = self.models["bottom"].forward_one_step(self._batch)
        self.send({k: out[k] for k in ("follower_wide_embedding", "follower_deep_embedding")}, step=self.step)

    def backward(self) -> None:
        scale = self.receive()
        if self.tap is not None:
            self.tap.gradients(self.step, self.step // self.steps_per_epoch, self._rows, scale["loss"])
        self.models["bottom"].backward_one_step(self._batch, sens=scale)
        self.advance()

    def pipeline_stages(self, idx: np.ndarray) -> list[pipeline.Stage]:
        """The follower's stages of one pipelined step: bottom forward (embeddings to the leader), bottom
        backward (the leader's gradients; the last micro-batch steps the optimizers)."""
        parts = pipeline.split_rows(idx, self.train.micro_batches)
        n, w = len(parts), pipeline.weights(parts)
        feats: list[Any] = [None] * n
        pend: list[Any] = [None] * n
        bottom = self.models["bottom"]

        def forward(i: int, _: Any) -> dict[str, Any]:
            feats[i] = self.features(parts[i], "0")
            out = bottom.forward_one_step(feats[i])
            pend[i] = bottom.take_pending()
            return {
                "follower_wide_embedding": out["follower_wide_embedding"],
                "follower_deep_embedding": out["follower_deep_embedding"],
                pipeline.MICRO_KEY: pipeline.micro_tag(i, n, self.train.micro_batches),
            }

        def backward(i: int, scale: Any) -> None:
            if self.tap is not None:
                self.tap.gradients(self.step, self.step // self.steps_per_epoch, parts[i], scale["loss"])
            bottom.put_pending(pend[i])
            pend[i] = None
            bottom.backward_one_step(feats[i], sens=scale, step=i == n - 1, loss_weight=w[i])  # its L2 term
            feats[i] = None

        return [pipeline.Stage("bottom forward", forward, sends=True), pipeline.Stage("bottom backward", backward, receives=True)]

    def evaluate(self) -> None:
        for idx in self.eval_batches():
            out = self.models["bottom"].eval_one_step(self.features(idx, "0"))
            self.send(dict(out), kind="eval", step=self.step)

    def train_loop(self) -> None:
        for _, idx in self.schedule.steps(self.step):
            if self.train.micro_batches > 1:
                stages = self.pipeline_stages(idx)
                pipeline.run_stages(self, stages, len(pipeline.split_rows(idx, self.train.micro_batches)))
                self.advance()
            else:
                self.forward(idx)
                self.backward()
            if self.schedule.epoch_done(self.step):
                self.evaluate()


class Leader(_WideDeepParty):
    role, peer = "leader", "follower"

    def build(self) -> None:
        assert self.data.labels is not None, "the leader's data must hold the labels"
        deep_dim = self.cfg.deep_layers[-1]
        self.bottom_net = WideDeepModel(len(LEADER_FIELDS), self.cfg).to(self.device)  # initialised on the CPU
        self.top_net = LeaderTopNet(deep_dim).to(self.device)
        top_yaml = "leader_top_label_dp.yaml" if self.train.label_dp else "leader_top.yaml"
        self.models["bottom"] = FLModel(
            self._yaml("leader_bottom.yaml"), self.bottom_net, eval_network=_BottomEval(self.bottom_net)
        )
        self.models["top"] = FLModel(
            self._yaml(top_yaml, self.train.leader_privacy), self.top_net, eval_network=_TopEval(self.top_net)
        )
        self.local_peer: Follower | None = None  # train_local: the follower in this process, stepped in turn

    def train_step(self, idx: np.ndarray) -> tuple[float, float]:
        assert self.data.labels is not None
        bottom, top = self.models["bottom"], self.models["top"]
        feats = self.features(idx, "")
        mine = bottom.forward_one_step(feats)
        theirs = self.receive()
        if pipeline.MICRO_KEY in theirs:
            raise ValueError(
                f"{self.name}: {self.peer_name} pipelines its steps but this party does not; give both "
                "parties the same train.pipeline.micro_batches"
            )
        if self.tap is not None:
            self.tap.embeddings(self.step, self.step // self.steps_per_epoch, idx, theirs)
        batch = {
            "leader_wide_embedding": mine["leader_wide_embedding"],
            "leader_deep_embedding": mine["leader_deep_embedding"],
            "label": torch.from_numpy(np.ascontiguousarray(self.data.labels[idx])).unsqueeze(1),
            "sample_id": torch.from_numpy(self.data.sample_ids[idx]),
        }
        out = top.forward_one_step(batch, theirs)
        scale = top.backward_one_step(batch, theirs)["loss"]
        self.send({"loss": {k: scale[k] for k in ("follower_wide_embedding", "follower_deep_embedding")}}, step=self.step)
        bottom.backward_one_step(feats, sens={"loss": {k: scale[k] for k in ("leader_wide_embedding", "leader_deep_embedding")}})
        wide_loss = float(out["loss"].detach())
        deep_loss = wide_loss + float(mine["leader_l2_regu"].detach())
        self.advance()
        return wide_loss, deep_loss

    def pipeline_stage(self, idx: np.ndarray) -> pipeline.Stage:
        """The leader's stage of one pipelined step: per micro-batch, its bottom forward, the top forward
        and backward on the follower's embeddings (the follower's gradients sent back at once), then its
        bottom backward. ``self._losses``: the step's (wide, deep) losses, micro-batches weighted by rows."""
        assert self.data.labels is not None
        labels = self.data.labels
        parts = pipeline.split_rows(idx, self.train.micro_batches)
        w = pipeline.weights(parts)
        last = len(parts) - 1
        bottom, top = self.models["bottom"], self.models["top"]
        held: dict[str, Any] = {}
        self._losses = [0.0, 0.0]

        def step(i: int, theirs: Any) -> dict[str, Any]:
            pipeline.check_micro(theirs, i, self.train.micro_batches, self.name, self.peer_name)
            if self.tap is not None:
                self.tap.embeddings(self.step, self.step // self.steps_per_epoch, parts[i], theirs)
            feats = self.features(parts[i], "")
            mine = bottom.forward_one_step(feats)
            batch = {
                "leader_wide_embedding": mine["leader_wide_embedding"],
                "leader_deep_embedding": mine["leader_deep_embedding"],
                "label": torch.from_numpy(np.ascontiguousarray(labels[parts[i]])).unsqueeze(1),
                "sample_id": torch.from_numpy(self.data.sample_ids[parts[i]]),
            }
            out = top.forward_one_step(batch, theirs)
            scale = top.backward_one_step(batch, theirs, step=i == last, loss_weight=w[i])["loss"]
            held.update(feats=feats, scale=scale)
            wl = float(out["loss"].detach())
            self._losses[0] += w[i] * wl
            self._losses[1] += w[i] * (wl + float(mine["leader_l2_regu"].detach()))
            return {"loss": {k: scale[k] for k in ("follower_wide_embedding", "follower_deep_embedding")}}

        def then(i: int) -> None:
            scale = held.pop("scale")
            bottom.backward_one_step(
                held.pop("feats"),
                sens={"loss": {k: scale[k] for k in ("leader_wide_embedding", "leader_deep_embedding")}},
                step=i == last,
                loss_weight=w[i],
            )

        return pipeline.Stage("bottom + top", step, receives=True, sends=True, then=then)

    def pipelined_step(self, idx: np.ndarray) -> tuple[float, float]:
        stage = self.pipeline_stage(idx)
        count = len(pipeline.split_rows(idx, self.train.micro_batches))
        follower = self.local_peer
        if follower is None:
            pipeline.run_stages(self, [stage], count)
        else:
            fwd, bwd = follower.pipeline_stages(idx)
            pipeline.run_local([(follower, fwd), (self, stage), (follower, bwd)], count)
            follower.advance()
        self.advance()
        return self._losses[0], self._losses[1]

    def evaluate(self) -> float:
        assert self.data.labels is not None
        probs, labels = [], []
        for idx in self.eval_batches():
            mine = self.models["bottom"].eval_one_step(self.features(idx, ""))
            theirs = self.receive(kind="eval")
            out = self.models["top"].eval_one_step(dict(mine), theirs)
            probs.append(out["pred_probs"].reshape(-1).cpu().numpy())
            labels.append(np.asarray(self.data.labels[idx]))
        return auc(np.concatenate(labels), np.concatenate(probs)) if probs else math.nan

    def train_loop(self) -> list[dict[str, Any]]:
        bar = progress_bar(self.total_steps, self.step, self.train.progress)
        try:
            self._train_steps(bar)
        finally:
            if bar is not None:
                bar.close()
        return self.history

    def _train_steps(self, bar: Any) -> None:
        t0 = time.perf_counter()
        window: list[tuple[float, float]] = []
        follower = self.local_peer
        for epoch, idx in self.schedule.steps(self.step):
            if self.train.micro_batches > 1:
                wl, dl = self.pipelined_step(idx)
            else:
                if follower is not None:
                    follower.forward(idx)
                wl, dl = self.train_step(idx)
                if follower is not None:
                    follower.backward()
            window.append((wl, dl))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{wl:.4f}")
            self._report_losses(epoch, window, t0)
            if self.schedule.epoch_done(self.step):
                if follower is not None:
                    follower.evaluate()
                a = self.evaluate()
                log.info("epoch %d eval AUC: %.4f", epoch, a)
                self.record(kind="eval", epoch=epoch, step=self.step, auc=a, seconds=time.perf_counter() - t0)


def train_local(
    leader_data: PartyData,
    follower_data: PartyData,
    model_cfg: WideDeepConfig,
    train: TrainConfig,
    *,
    through_codecs: bool = False,
    tap: Any = None,
    follower_device: str | None = None,
) -> list[dict[str, Any]]:
    """Both parties in one process over the in-process communicator, steps interleaved. The leader
    runs on ``train.device``, the follower on ``follower_device`` (default: the same). ``tap`` (a
    :class:`splitlink.attacks.CutTap`) records what each party receives across the cut."""
    from splitlink.channel import InProcessCommunicator, ServerConfig

    hub: dict[str, Any] = {}
    lc = ServerConfig("leader", "127.0.0.1:1")
    fc = ServerConfig("follower", "127.0.0.1:2")
    leader = Leader(leader_data, None, model_cfg, train)
    follower = Follower(
        follower_data, None, model_cfg, train if follower_device is None else dataclasses.replace(train, device=follower_device)
    )
    leader.comm = InProcessCommunicator(lc, fc, leader.compress_configs(), hub=hub, through_codecs=through_codecs)
    follower.comm = InProcessCommunicator(fc, lc, follower.compress_configs(), hub=hub, through_codecs=through_codecs)
    agree_locally(leader, follower)
    leader.local_peer = follower
    leader.tap = follower.tap = tap
    return leader.train_loop()


def config_dict(cfg: WideDeepConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["deep_layers"] = list(cfg.deep_layers)
    return d


def make_party(cfg: RunConfig) -> _WideDeepParty:
    """The party of a ``criteo_wide_deep`` run file (its communicator is set by the caller)."""
    assert cfg.data is not None
    data = load_party(cfg.data, cfg.party)
    model_cfg = cfg.section("model", WideDeepSection).build()
    return (Leader if cfg.party == "leader" else Follower)(data, None, model_cfg, cfg.train.options(TrainConfig))


def _demo(*args: Any, **kwargs: Any) -> Any:
    from splitlink.examples.demo import run_demo

    return run_demo(*args, **kwargs)


SCENARIO = register(
    Scenario(
        "criteo_wide_deep",
        make_party,
        summary="Wide&Deep on Criteo, leader + follower",
        demo=_demo,
        sections={"model": WideDeepSection},
    )
)


# The leakage audit (splitlink audit, benchmarks/bench_leakage.py): how to train this scenario for it.
AUDIT_MODEL = WideDeepConfig(vocab_size=5000, emb_dim=8, deep_layers=(32, 16))
AUDIT_TASK_SEED = 22  # the synthetic task of every audit (write_synthetic's task_seed)
AUDIT_POSITIVE_RATE = 0.256  # Criteo's display-advertising data (Kaggle): 25.6% of the impressions clicked
AUDIT_LR_SCALE = 10.0  # the YAML's Adam learning rate (3.5e-4) is for 20 epochs of 45M rows; audits run 2-3 short epochs


def _audit_prepare(workdir: Path, rows: int, seed: int, tsv: str | None = None) -> tuple[PartyData, PartyData]:
    from splitlink.examples import criteo
    from splitlink.examples.demo import prepare_data

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if tsv is None:
        # one task at every row count (the seed draws the rows), so audits of different sizes compare, with
        # Criteo's label balance (the norm attack feeds on it)
        prepare_data(
            workdir,
            rows,
            seed=seed,
            vocab_size=AUDIT_MODEL.vocab_size,
            task_seed=AUDIT_TASK_SEED,
            positive_rate=AUDIT_POSITIVE_RATE,
        )
        return load_party(workdir / "leader.npz", "leader"), load_party(workdir / "follower.npz", "follower")
    pre = criteo.preprocess(tsv, workdir / "preprocessed", vocab_size=AUDIT_MODEL.vocab_size)
    parts = []
    for role in ("leader", "follower"):
        p = load_party(pre, role)
        n = min(rows, len(p))
        parts.append(PartyData(p.sample_ids[:n], p.ids[:n], p.wts[:n], None if p.labels is None else p.labels[:n]))
    return parts[0], parts[1]


def _audit_train(
    data: tuple[PartyData, PartyData], defence: Any, tap: Any, *, epochs: int, batch_size: int, seed: int
) -> dict[str, Any]:
    leader, follower = data
    fp = defence.follower_privacy
    if fp and isinstance(fp.get("embedding_dp"), dict) and fp["embedding_dp"].get("mechanism") == "gaussian":
        # the accountant counts releases per sample: one per epoch over the training rows
        n_train = len(follower) - int(round(len(follower) * TrainConfig.eval_fraction))
        fp = {**fp, "embedding_dp": {"num_samples": n_train, **fp["embedding_dp"]}}
    train = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        log_every=1,
        progress=False,
        compress=False,
        lr_scale=AUDIT_LR_SCALE,
        leader_privacy=defence.leader_privacy,
        follower_privacy=fp,
        follower_optimizer=defence.follower_optimizer,
    )
    hist = train_local(leader, follower, AUDIT_MODEL, train, tap=tap)
    t = [r["seconds"] for r in hist if r["kind"] == "train"]
    evals = [r["auc"] for r in hist if r["kind"] == "eval"]
    return {"test_auc": evals[-1] if evals else math.nan, "step_seconds": list(np.diff([0.0, *t]))}


def _register_audit() -> None:
    from splitlink.attacks.audit import AuditTarget, register_target

    register_target(
        AuditTarget(
            "criteo_wide_deep",
            prepare=_audit_prepare,
            train=_audit_train,
            labels=lambda d: np.asarray(d[0].labels),
            follower_features=lambda d: np.asarray(d[1].ids),
            summary="Wide&Deep on synthetic Criteo (or a Criteo-format TSV), leader holds the labels",
        )
    )


_register_audit()
