"""Wide&Deep split between a leader (20 fields + labels) and a follower (19 fields), as in the seed.

Each party runs a bottom :class:`WideDeepModel` over its own fields; the leader's top network combines
both parties' wide and deep embeddings into the click logit (sigmoid cross-entropy loss). The step:

    follower: ids, weights -> bottom -> (wide, deep) embeddings  --------------------------> leader
    leader:   bottom -> its embeddings; top(its + follower's embeddings, label) -> loss
              backward: grad scale {"loss": {embedding: gradient}}; its share -> its bottom,
              the follower's share -------------------------------------------------------> follower
    follower: bottom.backward_one_step(sens=grad scale)

:class:`Leader` and :class:`Follower` hold one party's FLModels, data and communicator; ``run()``
trains (with evaluation AUC each epoch, checkpoints every N steps, coordinated resume), and the
in-process driver :func:`train_local` interleaves both parties' steps in one process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from splitlink.checkpoint import Manifest, ride_through_restarts
from splitlink.config import FLYamlData
from splitlink.examples import YAML_DIR
from splitlink.examples.criteo import FOLLOWER_FIELDS, LEADER_FIELDS, PartyData, auc
from splitlink.model import FLModel

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


@dataclass
class TrainConfig:
    epochs: int | None = None          # default: the YAML's hyper_parameters
    batch_size: int | None = None
    eval_fraction: float = 0.1
    seed: int = 0
    log_every: int = 100
    ckpt_every: int = 0                # 0: no periodic checkpoints
    ckpt_dir: str | None = None        # default: the YAML's ckpt_path
    resume: bool = False
    compress: bool = True              # the YAML's min_max settings on the follower's embeddings
    label_dp: bool = False
    embedding_dp: bool = False
    max_steps: int | None = None       # stop early (tests)
    metrics_path: str | None = None    # the leader appends one JSON line per logged step and per epoch
    progress: bool = True
    peer_timeout: float | None = 600.0  # seconds to wait for the peer's next message before failing
    run_id: str = "run"                # checkpoints of one run: both parties must use the same


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

    def __init__(self, deep_dim: int) -> None:
        super().__init__()
        # Parameter names match the seed YAML's optimizer selectors ("deep", "dense").
        self.deep_combine = nn.Linear(2 * deep_dim, deep_dim)
        self.dense_out = nn.Linear(deep_dim, 1)

    def logits(self, lw: torch.Tensor, ld: torch.Tensor, fw: torch.Tensor, fd: torch.Tensor) -> torch.Tensor:
        return lw + fw + self.dense_out(torch.relu(self.deep_combine(torch.cat([ld, fd], dim=1))))

    def forward(self, lw: torch.Tensor, ld: torch.Tensor, fw: torch.Tensor, fd: torch.Tensor,
                label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.logits(lw, ld, fw, fd)
        return z, F.binary_cross_entropy_with_logits(z, label.view_as(z))


class _TopEval(nn.Module):
    def __init__(self, top: LeaderTopNet) -> None:
        super().__init__()
        self.top = top

    def forward(self, lw: torch.Tensor, ld: torch.Tensor, fw: torch.Tensor, fd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.top.logits(lw, ld, fw, fd)
        return z, torch.sigmoid(z)


def _ids_digest(ids: np.ndarray) -> torch.Tensor:
    return torch.frombuffer(bytearray(hashlib.sha256(np.ascontiguousarray(ids, dtype=np.int64).tobytes()).digest()),
                            dtype=torch.uint8)


class _Party:
    role = ""
    peer = ""

    def __init__(self, data: PartyData, comm: Any, model_cfg: WideDeepConfig, train: TrainConfig) -> None:
        self.data, self.comm, self.cfg, self.train = data, comm, model_cfg, train
        torch.manual_seed(train.seed + (0 if self.role == "leader" else 1))
        self.models: dict[str, FLModel] = {}
        self.build()
        first = next(iter(self.models.values()))
        self.epochs = train.epochs or first.yaml.epochs
        self.batch_size = train.batch_size or first.yaml.batch_size
        n = len(data)
        n_eval = int(round(n * train.eval_fraction))
        self.n_train = n - n_eval
        self.steps_per_epoch = math.ceil(self.n_train / self.batch_size)
        self.total_steps = self.epochs * self.steps_per_epoch
        if train.max_steps is not None:
            self.total_steps = min(self.total_steps, train.max_steps)
        self.step = 0

    def build(self) -> None:
        raise NotImplementedError

    def _yaml(self, name: str) -> FLYamlData:
        data = FLYamlData(YAMLS / name)
        if self.train.ckpt_dir is not None:
            raw = dict(data.raw)
            raw["ckpt_path"] = str(Path(self.train.ckpt_dir).resolve())
            data = FLYamlData(raw)
        return data

    def compress_configs(self) -> dict[str, Any]:
        if not self.train.compress:
            return {}
        out: dict[str, Any] = {}
        for m in self.models.values():
            out.update(m.get_compress_configs())
        return out

    def batches(self, epoch: int) -> list[np.ndarray]:
        order = np.random.default_rng([self.train.seed, epoch]).permutation(self.n_train)
        return [order[i:i + self.batch_size] for i in range(0, self.n_train, self.batch_size)]

    def eval_batches(self) -> Iterator[np.ndarray]:
        rows = np.arange(self.n_train, len(self.data))
        for i in range(0, len(rows), self.batch_size):
            yield rows[i:i + self.batch_size]

    def features(self, idx: np.ndarray, suffix: str) -> dict[str, torch.Tensor]:
        return {f"id_hldr{suffix}": torch.from_numpy(np.ascontiguousarray(self.data.ids[idx])),
                f"wt_hldr{suffix}": torch.from_numpy(np.ascontiguousarray(self.data.wts[idx]))}

    # Start-up: aligned rows, and the step both parties resume from. After the peer restarted
    # (``rejoin``), this party goes back to the newest checkpoint both hold, whatever ``resume`` says.
    def handshake(self, rejoin: bool = False) -> int:
        self.comm.send_tensors(self.peer, {"ids_sha256": _ids_digest(self.data.sample_ids)})
        theirs = self.comm.receive(self.peer, self.train.peer_timeout)["ids_sha256"]
        if not torch.equal(theirs, _ids_digest(self.data.sample_ids)):
            raise RuntimeError(f"{self.role}: the parties' sample ids differ (row alignment); align the rows with "
                               "PSI first so both hold the same samples in the same order")
        mine = self.checkpoint_steps() if self.train.resume or rejoin else []
        rid = torch.frombuffer(bytearray(self.train.run_id.encode()), dtype=torch.uint8)
        self.comm.send_tensors(self.peer, {"ckpt_steps": torch.tensor(mine, dtype=torch.int64), "run_id": rid})
        got = self.comm.receive(self.peer, self.train.peer_timeout)
        peer_steps = got["ckpt_steps"].tolist()
        peer_run = bytes(got["run_id"].numpy().tobytes()).decode()
        if peer_run != self.train.run_id:
            raise RuntimeError(f"{self.role}: this party runs {self.train.run_id!r} but the {self.peer} runs "
                               f"{peer_run!r}; give both the same run_id")
        common = sorted(set(mine) & set(peer_steps))
        if rejoin:
            if not common:
                hint = f" (was the {self.peer} restarted with resume: true?)" if not peer_steps else ""
                raise RuntimeError(f"{self.role}: the {self.peer} restarted, but the parties hold no common checkpoint "
                                   f"to continue from{hint}; restart both parties with resume")
            self.restore(common[-1])
        elif self.train.resume:
            if common:
                self.restore(common[-1])
            else:
                log.warning("%s: --resume but no checkpoint step both parties hold; starting from step 0", self.role)
        return self.step

    def manifest(self) -> Manifest:
        root = Path(self.train.ckpt_dir) if self.train.ckpt_dir else next(iter(self.models.values())).yaml.ckpt_path
        return Manifest(root, self.train.run_id)

    def checkpoint_steps(self) -> list[int]:
        """Steps this party recorded as complete (every FLModel durable) whose files are still there."""
        present = [set(m.checkpoint_steps()) for m in self.models.values()]
        return self.manifest().steps(lambda s: all(s in p for p in present))

    def restore(self, step: int) -> None:
        for m in self.models.values():
            m.load_ckpt(step=step)
        self.step = step
        log.info("%s: resumed at step %d", self.role, step)

    def save_start(self) -> None:
        """A fresh run with periodic checkpoints first writes step 0 (the seeded initial state), so a party
        killed before the first periodic checkpoint still has a step to rejoin its peer at."""
        if self.train.ckpt_every and self.step == 0 and not self.checkpoint_steps():
            self.save()

    def save(self) -> None:
        for m in self.models.values():
            m.step = self.step
            m.save_ckpt(keep=3)
        kept = [set(m.checkpoint_steps()) for m in self.models.values()]
        self.manifest().record(self.step, keep=set.intersection(*kept))


class Follower(_Party):
    role, peer = "follower", "leader"

    def build(self) -> None:
        name = "follower_bottom_embedding_dp.yaml" if self.train.embedding_dp else "follower_bottom.yaml"
        self.net = WideDeepModel(len(FOLLOWER_FIELDS), self.cfg)
        self.models["bottom"] = FLModel(self._yaml(name), self.net, eval_network=_BottomEval(self.net))

    def forward(self, idx: np.ndarray) -> None:
        self._batch = self.features(idx, "0")
        out = self.models["bottom"].forward_one_step(self._batch)
        self.comm.send_tensors("leader", {k: out[k] for k in ("follower_wide_embedding", "follower_deep_embedding")},
                               step=self.step)

    def backward(self) -> None:
        scale = self.comm.receive("leader", self.train.peer_timeout)
        self.models["bottom"].backward_one_step(self._batch, sens=scale)
        self.step += 1
        if self.train.ckpt_every and self.step % self.train.ckpt_every == 0:
            self.save()

    def evaluate(self) -> None:
        for idx in self.eval_batches():
            out = self.models["bottom"].eval_one_step(self.features(idx, "0"))
            self.comm.send_tensors("leader", dict(out), step=self.step)

    def run(self) -> None:
        self.save_start()
        ride_through_restarts(self.role, self.handshake, self._train)

    def _train(self) -> None:
        for epoch, bs in _schedule(self):
            for idx in bs:
                self.forward(idx)
                self.backward()
            if self.step % self.steps_per_epoch == 0 or self.step == self.total_steps:
                self.evaluate()


class Leader(_Party):
    role, peer = "leader", "follower"

    def build(self) -> None:
        assert self.data.labels is not None, "the leader's data must hold the labels"
        deep_dim = self.cfg.deep_layers[-1]
        self.bottom_net = WideDeepModel(len(LEADER_FIELDS), self.cfg)
        self.top_net = LeaderTopNet(deep_dim)
        top_yaml = "leader_top_label_dp.yaml" if self.train.label_dp else "leader_top.yaml"
        self.models["bottom"] = FLModel(self._yaml("leader_bottom.yaml"), self.bottom_net,
                                        eval_network=_BottomEval(self.bottom_net))
        self.models["top"] = FLModel(self._yaml(top_yaml), self.top_net, eval_network=_TopEval(self.top_net))
        self.history: list[dict[str, Any]] = []
        self._metrics_fh = open(self.train.metrics_path, "a") if self.train.metrics_path else None

    def _record(self, **row: Any) -> None:
        self.history.append(row)
        if self._metrics_fh is not None:
            self._metrics_fh.write(json.dumps(row) + "\n")
            self._metrics_fh.flush()

    def train_step(self, idx: np.ndarray) -> tuple[float, float]:
        assert self.data.labels is not None
        bottom, top = self.models["bottom"], self.models["top"]
        feats = self.features(idx, "")
        mine = bottom.forward_one_step(feats)
        theirs = self.comm.receive("follower", self.train.peer_timeout)
        batch = {"leader_wide_embedding": mine["leader_wide_embedding"],
                 "leader_deep_embedding": mine["leader_deep_embedding"],
                 "label": torch.from_numpy(np.ascontiguousarray(self.data.labels[idx])).unsqueeze(1),
                 "sample_id": torch.from_numpy(self.data.sample_ids[idx])}
        out = top.forward_one_step(batch, theirs)
        scale = top.backward_one_step(batch, theirs)["loss"]
        self.comm.send_tensors("follower", {"loss": {k: scale[k] for k in ("follower_wide_embedding",
                                                                          "follower_deep_embedding")}}, step=self.step)
        bottom.backward_one_step(feats, sens={"loss": {k: scale[k] for k in ("leader_wide_embedding",
                                                                          "leader_deep_embedding")}})
        wide_loss = float(out["loss"].detach())
        deep_loss = wide_loss + float(mine["leader_l2_regu"].detach())
        self.step += 1
        if self.train.ckpt_every and self.step % self.train.ckpt_every == 0:
            self.save()
        return wide_loss, deep_loss

    def evaluate(self) -> float:
        assert self.data.labels is not None
        probs, labels = [], []
        for idx in self.eval_batches():
            mine = self.models["bottom"].eval_one_step(self.features(idx, ""))
            theirs = self.comm.receive("follower", self.train.peer_timeout)
            out = self.models["top"].eval_one_step(dict(mine), theirs)
            probs.append(out["pred_probs"].reshape(-1).numpy())
            labels.append(np.asarray(self.data.labels[idx]))
        return auc(np.concatenate(labels), np.concatenate(probs)) if probs else math.nan

    def run(self) -> list[dict[str, Any]]:
        try:
            self.save_start()
            ride_through_restarts(self.role, self.handshake, self._train)
        finally:
            if self._metrics_fh is not None:
                self._metrics_fh.close()
        return self.history

    def _train(self) -> None:
        bar = _progress(self.total_steps, self.step, self.train.progress)
        try:
            self._train_steps(bar)
        finally:
            if bar is not None:
                bar.close()

    def _train_steps(self, bar: Any) -> None:
        t0 = time.perf_counter()
        window: list[tuple[float, float]] = []
        for epoch, bs in _schedule(self):
            for idx in bs:
                wl, dl = self.train_step(idx)
                window.append((wl, dl))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{wl:.4f}")
                in_epoch = (self.step - 1) % self.steps_per_epoch + 1
                if self.step % self.train.log_every == 0 or self.step == self.total_steps:
                    w, d = (float(np.mean(v)) for v in zip(*window))
                    window.clear()
                    _log(bar, f"epoch {epoch} step {in_epoch}/{self.steps_per_epoch} wide_loss: {w:.6f} "
                              f"deep_loss: {d:.6f}")
                    self._record(kind="train", epoch=epoch, step=self.step, wide_loss=w, deep_loss=d,
                                 seconds=time.perf_counter() - t0)
            if self.step % self.steps_per_epoch == 0 or self.step == self.total_steps:
                a = self.evaluate()
                _log(bar, f"epoch {epoch} eval AUC: {a:.4f}")
                self._record(kind="eval", epoch=epoch, step=self.step, auc=a, seconds=time.perf_counter() - t0)


def _schedule(p: _Party) -> Iterator[tuple[int, list[np.ndarray]]]:
    """(epoch, batches still to run) from the party's current step to the end."""
    step = p.step
    while step < p.total_steps:
        epoch, first = divmod(step, p.steps_per_epoch)
        bs = p.batches(epoch)[first:]
        bs = bs[: p.total_steps - step]
        yield epoch, bs
        step += len(bs)


def _progress(total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    # disable=None: no bar when stderr is not a terminal (CI logs, files)
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, leave=True, disable=None)


def _log(bar: Any, line: str) -> None:
    log.info(line)  # splitlink.examples.runner routes log lines around the progress bar


def train_local(leader_data: PartyData, follower_data: PartyData, model_cfg: WideDeepConfig, train: TrainConfig,
                *, through_codecs: bool = False) -> list[dict[str, Any]]:
    """Both parties in one process over the in-process communicator, steps interleaved."""
    from splitlink.channel import InProcessCommunicator, ServerConfig

    hub: dict[str, Any] = {}
    lc = ServerConfig("leader", "127.0.0.1:1")
    fc = ServerConfig("follower", "127.0.0.1:2")
    leader = Leader(leader_data, None, model_cfg, train)
    follower = Follower(follower_data, None, model_cfg, train)
    leader.comm = InProcessCommunicator(lc, fc, leader.compress_configs(), hub=hub, through_codecs=through_codecs)
    follower.comm = InProcessCommunicator(fc, lc, follower.compress_configs(), hub=hub, through_codecs=through_codecs)
    # The start-up exchange: each party sends, then receives.
    for p in (leader, follower):
        p.comm.send_tensors(p.peer, {"ids_sha256": _ids_digest(p.data.sample_ids)})
        p.comm.send_tensors(p.peer, {"ckpt_steps": torch.tensor(p.checkpoint_steps() if train.resume else [],
                                                                 dtype=torch.int64)})  # run ids: one process
    for p in (leader, follower):
        if not torch.equal(p.comm.receive(p.peer, p.train.peer_timeout)["ids_sha256"], _ids_digest(p.data.sample_ids)):
            raise RuntimeError("the parties' sample ids differ (row alignment); align the rows with PSI first")
    steps = [set(p.checkpoint_steps()) if train.resume else set() for p in (leader, follower)]
    for p in (leader, follower):
        p.comm.receive(p.peer, p.train.peer_timeout)
    common = sorted(steps[0] & steps[1])
    if train.resume and common:
        leader.restore(common[-1])
        follower.restore(common[-1])
    bar = _progress(leader.total_steps, leader.step, train.progress)
    window: list[tuple[float, float]] = []
    t0 = time.perf_counter()
    for (epoch, bs), _ in zip(_schedule(leader), _schedule(follower)):
        for idx in bs:
            follower.forward(idx)
            wl, dl = leader.train_step(idx)
            follower.backward()
            window.append((wl, dl))
            if bar is not None:
                bar.update(1)
            in_epoch = (leader.step - 1) % leader.steps_per_epoch + 1
            if leader.step % train.log_every == 0 or leader.step == leader.total_steps:
                w, d = (float(np.mean(v)) for v in zip(*window))
                window.clear()
                _log(bar, f"epoch {epoch} step {in_epoch}/{leader.steps_per_epoch} wide_loss: {w:.6f} deep_loss: {d:.6f}")
                leader._record(kind="train", epoch=epoch, step=leader.step, wide_loss=w, deep_loss=d,
                               seconds=time.perf_counter() - t0)
        if leader.step % leader.steps_per_epoch == 0 or leader.step == leader.total_steps:
            follower.evaluate()
            a = leader.evaluate()
            _log(bar, f"epoch {epoch} eval AUC: {a:.4f}")
            leader._record(kind="eval", epoch=epoch, step=leader.step, auc=a, seconds=time.perf_counter() - t0)
    if bar is not None:
        bar.close()
    return leader.history


def config_dict(cfg: WideDeepConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["deep_layers"] = list(cfg.deep_layers)
    return d

