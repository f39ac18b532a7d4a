"""Wide&Deep on Criteo with a leader and N followers (scenario ``wide_deep_nparty``).

The leader holds 20 fields and the labels, as in the two-party split; the follower's 19 fields are
split N ways (``follower_fields``), each follower with its own bottom :class:`WideDeepModel`. The
leader's top network takes the followers' wide and deep embeddings through the aggregation layer its
YAML declares (:mod:`splitlink.runtime.multiparty`): ``concat`` (the deep embeddings side by side, the
wide ones added), ``sum`` or ``mean``, optionally ``secure`` (pairwise masks among the followers: the
leader sees only masked ring elements and their exact fixed-point sum). The step:

    follower k: its fields -> bottom -> (wide, deep), masked when secure --------------------> leader
    leader:     combine the N followers' tensors; top(its + combined, label) -> loss; backward;
                each follower's gradient (the same one for a sum) ------------------------------> follower k
    follower k: bottom.backward_one_step(sens=gradient)

:func:`train_local` runs every party in one process (in-process communicators); ``splitlink train``
runs each as a process over mutual TLS (run files with ``name`` and ``peers``).
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from splitlink.config import FLYamlData
from splitlink.examples import YAML_DIR
from splitlink.examples.criteo import FOLLOWER_FIELDS, LEADER_FIELDS, PartyData, auc
from splitlink.examples.wide_deep import (
    CriteoRowsParty,
    LeaderTopNet,
    TrainConfig,
    WideDeepConfig,
    WideDeepModel,
    WideDeepSection,
    _BottomEval,
    _TopEval,
)
from splitlink.model import FLModel
from splitlink.runtime.multiparty import (
    Aggregation,
    MaskingSession,
    MultiParty,
    Plan,
    aggregations,
    combine,
    eval_stream,
    followers_of,
    plan_for,
    split_grad,
    train_stream,
)
from splitlink.runtime.registry import Scenario, register
from splitlink.runtime.run_config import RunConfig, Section

__all__ = [
    "NPartyConfig",
    "follower_fields",
    "follower_names",
    "leader_top_yaml",
    "TopNet",
    "NLeader",
    "NFollower",
    "train_local",
    "split_follower",
    "UnsplitModel",
]

log = logging.getLogger("splitlink.examples.criteo_nparty")
YAMLS = YAML_DIR / "criteo"
EMBEDDINGS = ("follower_wide_embedding", "follower_deep_embedding")


@dataclass
class NPartyConfig(TrainConfig):
    compress: bool = False  # masked ring elements are not compressible; off by default
    aggregate: str = "sum"  # concat | sum | mean
    secure: bool = False
    frac_bits: int = 16


class NPartySection(Section):
    """The leader's run-file section ``nparty``: how the followers' embeddings are combined, unless
    ``top_yaml`` (a leader top YAML naming every follower) says it."""

    aggregate: Literal["concat", "sum", "mean"] = "sum"
    secure: bool = False
    frac_bits: int = Field(default=16, ge=0, le=40)
    top_yaml: str | None = None


def follower_names(n: int) -> list[str]:
    return [f"follower{k + 1}" for k in range(n)]


def follower_fields(n: int) -> list[tuple[int, ...]]:
    """The two-party follower's 19 fields split into ``n`` contiguous shares (sizes differ by <= 1)."""
    if not 1 <= n <= len(FOLLOWER_FIELDS):
        raise ValueError(f"1..{len(FOLLOWER_FIELDS)} followers, got {n}")
    return [tuple(int(f) for f in a) for a in np.array_split(np.array(FOLLOWER_FIELDS), n)]


def split_follower(data: PartyData, n: int) -> list[PartyData]:
    """The two-party follower's columns as ``n`` followers' (same rows, same order)."""
    out, at = [], 0
    for share in follower_fields(n):
        k = len(share)
        out.append(
            PartyData(
                data.sample_ids,
                np.ascontiguousarray(data.ids[:, at : at + k]),
                np.ascontiguousarray(data.wts[:, at : at + k]),
                None,
            )
        )
        at += k
    return out


def leader_top_yaml(
    followers: Sequence[str], aggregate: str, secure: bool = False, frac_bits: int = 16, ckpt_path: str | None = None
) -> FLYamlData:
    """The two-party leader top YAML with ``followers`` and the aggregation of both follower embeddings."""
    raw = copy.deepcopy(dict(FLYamlData(YAMLS / "leader_top.yaml").raw))
    raw = {"role": raw["role"], "followers": list(followers), **{k: v for k, v in raw.items() if k != "role"}}
    for net in ("train_net", "eval_net"):
        for item in raw["model"][net]["inputs"]:
            if item["name"] in EMBEDDINGS:
                for k in ("compress_type", "bit_num", "compress_params"):
                    item.pop(k, None)
                item["party"] = list(followers) if len(followers) > 1 else followers[0]
                if len(followers) > 1:
                    item["aggregate"] = aggregate
                    if secure:
                        item["secure"] = True
                        item["frac_bits"] = frac_bits
    if ckpt_path is not None:
        raw["ckpt_path"] = ckpt_path
    return FLYamlData(raw)


class TopNet(LeaderTopNet):
    """logit = leader_wide + sum(followers' wide) + MLP([leader_deep, followers' deep]); with a sum/mean
    aggregation (or one follower) this is the two-party :class:`LeaderTopNet`. ``follower_deep_width``:
    the followers' deep embeddings as the leader combines them (concatenated: their widths' sum)."""

    def __init__(self, deep_dim: int, follower_deep_width: int) -> None:
        super().__init__(deep_dim, follower_deep_width)

    def logits(self, lw: torch.Tensor, ld: torch.Tensor, fw: torch.Tensor, fd: torch.Tensor) -> torch.Tensor:
        return super().logits(lw, ld, fw if fw.shape[1] == 1 else fw.sum(dim=1, keepdim=True), fd)


class UnsplitModel(nn.Module):
    """The same computation in one module (the reference the split runs are compared with)."""

    def __init__(self, leader: WideDeepModel, followers: Sequence[WideDeepModel], top: TopNet, aggregate: str) -> None:
        super().__init__()
        self.leader, self.followers, self.top, self.aggregate = leader, nn.ModuleList(followers), top, aggregate

    def forward(
        self, feats: Sequence[tuple[torch.Tensor, torch.Tensor]], label: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the top's loss, the sum of every bottom's L2 term): what the YAMLs' optimizers differentiate
        is their sum."""
        lw, ld, l2 = self.leader(*feats[0])
        outs = [f(*x) for f, x in zip(self.followers, feats[1:])]
        for o in outs:
            l2 = l2 + o[2]
        ws, ds = [o[0] for o in outs], [o[1] for o in outs]
        if self.aggregate == "concat" or len(outs) == 1:
            fw, fd = torch.cat(ws, 1), torch.cat(ds, 1)
        else:
            fw, fd = ws[0] + ws[1], ds[0] + ds[1]
            for w, d in zip(ws[2:], ds[2:]):
                fw, fd = fw + w, fd + d
            if self.aggregate == "mean":
                fw, fd = fw / len(outs), fd / len(outs)
        return self.top(lw, ld, fw, fd, label)[1], l2


class _Base(MultiParty[NPartyConfig], CriteoRowsParty[NPartyConfig]):
    def __init__(
        self,
        data: PartyData,
        comm: Any,
        model_cfg: WideDeepConfig,
        train: NPartyConfig,
        me: str,
        peers: Sequence[str],
        seed_offset: int,
    ) -> None:
        super().__init__(comm, train, me, peers)
        self._setup_rows(data, model_cfg, train.seed + seed_offset)

    def _yaml(self, data: FLYamlData | str) -> FLYamlData:
        y = data if isinstance(data, FLYamlData) else FLYamlData(YAMLS / data)
        if self.train.ckpt_dir is not None:
            raw = dict(y.raw)
            raw["ckpt_path"] = str(Path(self.train.ckpt_dir).resolve())
            y = FLYamlData(raw)
        return y

    @property
    def checkpoints(self) -> Any:
        if self._checkpoints is None and self.train.ckpt_dir is None:
            # parties sharing a YAML ckpt_path keep their checkpoints apart by name
            self.train.ckpt_dir = str(Path(next(iter(self.models.values())).yaml.ckpt_path) / self.me)
        return super().checkpoints

    def check_hello_from(self, peer: str, theirs: Mapping[str, Any]) -> None:
        self._check_rows(theirs, f"the {peer!r}", "align every party's rows with splitlink.psi.intersect_parties first")


class NFollower(_Base):
    """One follower: its bottom network over its share of the columns."""

    def __init__(
        self, data: PartyData, comm: Any, model_cfg: WideDeepConfig, train: NPartyConfig, me: str, peers: Sequence[str]
    ) -> None:
        self.session: MaskingSession | None = None
        self._plan: Plan | None = None
        others = sorted(p for p in peers if p != "leader")
        super().__init__(data, comm, model_cfg, train, me, peers, 1 + sorted([me, *others]).index(me))

    def build(self) -> None:
        self.net = WideDeepModel(self.data.ids.shape[1], self.cfg)
        self.models["bottom"] = FLModel(self._yaml("follower_bottom.yaml"), self.net, eval_network=_BottomEval(self.net))

    def offer(self, rejoin: bool = False) -> None:
        self.session = MaskingSession(self.me, self.train.run_id)  # fresh keys for every agreement
        self._plan = None
        super().offer(rejoin)

    def hello_for(self, peer: str) -> dict[str, torch.Tensor]:
        h = self.hello()
        if peer != self.leader_name:
            assert self.session is not None
            h["x25519"] = torch.frombuffer(bytearray(self.session.public), dtype=torch.uint8)
        return h

    def check_hello_from(self, peer: str, theirs: Mapping[str, Any]) -> None:
        super().check_hello_from(peer, theirs)
        assert self.session is not None
        if peer == self.leader_name:
            self._plan = Plan.decode(theirs["plan"], peer)
        else:
            pub = theirs.get("x25519")
            if not isinstance(pub, torch.Tensor) or pub.dtype != torch.uint8 or pub.numel() != 32:
                raise ValueError(f"{self.me}: {peer!r} sent no valid X25519 public key in its hello")
            self.session.peer_publics[peer] = bytes(pub.numpy().tobytes())

    def settle(self, rejoin: bool = False) -> int:
        step = super().settle(rejoin)
        assert self.session is not None and self._plan is not None
        self.session.start(self._plan)
        if self._plan.masked:
            self.info(
                "masking %s with %s",
                ", ".join(sorted(self._plan.masked)),
                ", ".join(sorted({p for _, _, g in self._plan.masked.values() for p in g} - {self.me})),
            )
        return step

    def forward(self, idx: np.ndarray) -> None:
        assert self.session is not None
        self._batch = self.features(idx, "0")
        out = self.models["bottom"].forward_one_step(self._batch)
        step = self.step
        sent = self.session.mask({k: out[k] for k in EMBEDDINGS}, lambda i: train_stream(step, i))
        self.send(sent, step=self.step, peer=self.leader_name)

    def backward(self) -> None:
        scale = self.receive_step(self.leader_name, "gradient")
        self.models["bottom"].backward_one_step(self._batch, sens=scale)
        self.advance()

    def evaluate(self) -> None:
        assert self.session is not None
        step = self.step
        for b, idx in enumerate(self.eval_batches()):
            out = self.models["bottom"].eval_one_step(self.features(idx, "0"))
            self.send(
                self.session.mask(dict(out), functools.partial(eval_stream, step, b)),
                kind="eval",
                step=self.step,
                peer=self.leader_name,
            )

    def train_loop(self) -> None:
        for _, idx in self.schedule.steps(self.step):
            self.forward(idx)
            self.backward()
            if self.schedule.epoch_done(self.step):
                self.evaluate()


class NLeader(_Base):
    """The leader: its bottom network, the aggregation layer and the top network."""

    def __init__(
        self,
        data: PartyData,
        comm: Any,
        model_cfg: WideDeepConfig,
        train: NPartyConfig,
        followers: Sequence[str],
        top_yaml: FLYamlData | None = None,
    ) -> None:
        self._top_yaml = top_yaml
        self._followers = list(followers)
        super().__init__(data, comm, model_cfg, train, "leader", followers, 0)

    def build(self) -> None:
        assert self.data.labels is not None, "the leader's data must hold the labels"
        t = self.train
        top_yaml = self._top_yaml or leader_top_yaml(self._followers, t.aggregate, t.secure, t.frac_bits)
        if sorted(followers_of(top_yaml)) != sorted(self._followers):
            raise ValueError(
                f"the leader's top YAML lists followers {followers_of(top_yaml)} but the leader talks to {self._followers}"
            )
        self.aggs = aggregations(top_yaml)
        self.eval_aggs = aggregations(top_yaml, "eval_net")
        deep = self.aggs["follower_deep_embedding"]
        deep_dim = self.cfg.deep_layers[-1]
        width = deep_dim * (len(deep.parties) if deep.kind == "concat" else 1)
        self.bottom_net = WideDeepModel(len(LEADER_FIELDS), self.cfg)
        self.top_net = TopNet(deep_dim, width)
        self.models["bottom"] = FLModel(
            self._yaml("leader_bottom.yaml"), self.bottom_net, eval_network=_BottomEval(self.bottom_net)
        )
        self.models["top"] = FLModel(self._yaml(top_yaml), self.top_net, eval_network=_TopEval(self.top_net))
        self.local_peers: list[NFollower] = []  # train_local: the followers in this process, stepped in turn
        self.max_quantisation_error = max(a.error_bound() for a in self.aggs.values())

    def hello_for(self, peer: str) -> dict[str, torch.Tensor]:
        return {**self.hello(), "plan": plan_for(peer, self.aggs).encode()}

    def gather(self, aggs: Mapping[str, Aggregation], kind: str) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, int]]]:
        """Every follower's frame (all of them, before anything is combined), then the combined inputs."""
        got = {p: self.receive_step(p, "embeddings" if kind == "tensors" else "eval embeddings", kind) for p in self._followers}
        widths = {name: {p: int(got[p][name].shape[1]) for p in a.parties} for name, a in aggs.items()}
        return {name: combine(a, {p: got[p][name] for p in a.parties}) for name, a in aggs.items()}, widths

    def train_step(self, idx: np.ndarray) -> tuple[float, float]:
        assert self.data.labels is not None
        bottom, top = self.models["bottom"], self.models["top"]
        feats = self.features(idx, "")
        mine = bottom.forward_one_step(feats)
        theirs, widths = self.gather(self.aggs, "tensors")
        batch = {
            "leader_wide_embedding": mine["leader_wide_embedding"],
            "leader_deep_embedding": mine["leader_deep_embedding"],
            "label": torch.from_numpy(np.ascontiguousarray(self.data.labels[idx])).unsqueeze(1),
            "sample_id": torch.from_numpy(self.data.sample_ids[idx]),
        }
        out = top.forward_one_step(batch, theirs)
        scale = top.backward_one_step(batch, theirs)["loss"]
        per: dict[str, dict[str, torch.Tensor]] = {p: {} for p in self._followers}
        for name, a in self.aggs.items():
            for p, g in split_grad(a, scale[name], widths[name]).items():
                per[p][name] = g
        for p in self._followers:
            self.send({"loss": per[p]}, step=self.step, peer=p)
        bottom.backward_one_step(feats, sens={"loss": {k: scale[k] for k in ("leader_wide_embedding", "leader_deep_embedding")}})
        wide_loss = float(out["loss"].detach())
        deep_loss = wide_loss + float(mine["leader_l2_regu"].detach())
        self.advance()
        return wide_loss, deep_loss

    def evaluate(self) -> float:
        assert self.data.labels is not None
        probs, labels = [], []
        for idx in self.eval_batches():
            mine = self.models["bottom"].eval_one_step(self.features(idx, ""))
            theirs, _ = self.gather(self.eval_aggs, "eval")
            out = self.models["top"].eval_one_step(dict(mine), theirs)
            probs.append(out["pred_probs"].reshape(-1).numpy())
            labels.append(np.asarray(self.data.labels[idx]))
        return auc(np.concatenate(labels), np.concatenate(probs)) if probs else math.nan

    def train_loop(self) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        window: list[tuple[float, float]] = []
        for epoch, idx in self.schedule.steps(self.step):
            for f in self.local_peers:
                f.forward(idx)
            wl, dl = self.train_step(idx)
            for f in self.local_peers:
                f.backward()
            window.append((wl, dl))
            self._report_losses(epoch, window, t0)
            if self.schedule.epoch_done(self.step):
                for f in self.local_peers:
                    f.evaluate()
                a = self.evaluate()
                log.info("epoch %d eval AUC: %.4f", epoch, a)
                self.record(kind="eval", epoch=epoch, step=self.step, auc=a, seconds=time.perf_counter() - t0)
        return self.history


def make_local(
    leader_data: PartyData,
    follower_data: Sequence[PartyData],
    model_cfg: WideDeepConfig,
    train: NPartyConfig,
    *,
    top_yaml: FLYamlData | None = None,
    through_codecs: bool = False,
) -> tuple[NLeader, list[NFollower]]:
    """Every party in one process over in-process communicators (agreed, ready to train)."""
    from splitlink.channel import InProcessCommunicator, ServerConfig

    names = follower_names(len(follower_data))
    cfgs = {n: ServerConfig(n, f"127.0.0.1:{k + 1}") for k, n in enumerate(["leader", *names])}
    hub: dict[str, Any] = {}

    def opts(name: str) -> NPartyConfig:
        t = copy.copy(train)
        if t.ckpt_dir is not None:
            t.ckpt_dir = str(Path(t.ckpt_dir) / name)
        return t

    leader = NLeader(leader_data, None, model_cfg, opts("leader"), names, top_yaml)
    followers = [
        NFollower(d, None, model_cfg, opts(n), n, ["leader", *[m for m in names if m != n]]) for n, d in zip(names, follower_data)
    ]
    for p in [leader, *followers]:
        p.comm = InProcessCommunicator(
            cfgs[p.me], [cfgs[q] for q in p.peers], p.compress_configs(), hub=hub, through_codecs=through_codecs
        )
    for p in [leader, *followers]:
        p.save_start()
    for p in [leader, *followers]:
        p.offer()
    for p in [leader, *followers]:
        p.settle()
    leader.local_peers = followers
    return leader, followers


def train_local(
    leader_data: PartyData,
    follower_data: Sequence[PartyData],
    model_cfg: WideDeepConfig,
    train: NPartyConfig,
    *,
    top_yaml: FLYamlData | None = None,
    through_codecs: bool = False,
) -> list[dict[str, Any]]:
    """Every party in one process, steps interleaved; returns the leader's metrics."""
    leader, _ = make_local(leader_data, follower_data, model_cfg, train, top_yaml=top_yaml, through_codecs=through_codecs)
    return leader.train_loop()


def make_party(cfg: RunConfig) -> _Base:
    """The party of a ``wide_deep_nparty`` run file: ``name`` (leader, follower1, ...) and ``peers`` (every
    other party's name and address; a follower lists the leader and the other followers)."""
    from splitlink.examples.criteo import load_party

    assert cfg.data is not None
    if not cfg.peers:
        raise ValueError("a wide_deep_nparty run file lists every other party under peers: {name: host:port}")
    me = cfg.name or cfg.party
    model_cfg = cfg.section("model", WideDeepSection).build()
    n = cfg.section("nparty", NPartySection)
    train = cfg.train.options(NPartyConfig)
    train.aggregate, train.secure, train.frac_bits = n.aggregate, n.secure, n.frac_bits
    peers = list(cfg.peers)
    if cfg.party == "leader":
        top = FLYamlData(n.top_yaml) if n.top_yaml else None
        return NLeader(load_party(cfg.data, "leader"), None, model_cfg, train, sorted(peers), top)
    followers = sorted([me, *(p for p in peers if p != "leader")])
    data = load_party(cfg.data, "follower")
    if not Path(cfg.data).is_file():  # a preprocessed directory: this follower's share of the columns
        data = split_follower(data, len(followers))[followers.index(me)]
    return NFollower(data, None, model_cfg, train, me, peers)


SCENARIO = register(
    Scenario(
        "wide_deep_nparty",
        make_party,
        summary="Wide&Deep on Criteo, a leader and N followers (concat/sum/mean, secure sum)",
        sections={"model": WideDeepSection, "nparty": NPartySection},
        path_keys=(("nparty", "top_yaml"),),
    )
)


def prepare_data(workdir: str | Path, rows: int, n_followers: int, *, seed: int = 0, vocab_size: int = 200_000) -> dict[str, Any]:
    """Synthetic Criteo rows as ``leader.npz`` and ``follower<k>.npz`` (the follower columns split
    ``n_followers`` ways, rows aligned); returns the signal's reference AUCs."""
    import json
    import shutil

    from splitlink.examples import criteo

    d = Path(workdir)
    d.mkdir(parents=True, exist_ok=True)
    info = criteo.write_synthetic(d / "criteo_synthetic.tsv", rows, seed=seed)
    pre = criteo.preprocess(d / "criteo_synthetic.tsv", d / "preprocessed", vocab_size=vocab_size)
    criteo.load_party(pre, "leader").save(d / "leader.npz")
    for name, part in zip(follower_names(n_followers), split_follower(criteo.load_party(pre, "follower"), n_followers)):
        part.save(d / f"{name}.npz")
    shutil.rmtree(pre)
    (d / "signal.json").write_text(json.dumps(info, indent=1))
    return info


def write_run_files(
    workdir: str | Path,
    n_followers: int,
    *,
    aggregate: str = "sum",
    secure: bool = False,
    enable_ssl: bool = True,
    model: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    ports: Sequence[int] | None = None,
) -> dict[str, Path]:
    """One run file per party (``<name>_run.yaml``) for ``splitlink train``: each lists every other party
    under ``peers``; TLS certificates ``certs/<name>.{server,client}.p12`` (``splitlink certs --parties
    leader follower1 ...``)."""
    import yaml

    from splitlink.util import free_ports

    d = Path(workdir)
    names = ["leader", *follower_names(n_followers)]
    ports = list(ports) if ports is not None else free_ports(len(names))
    addr = {n: f"127.0.0.1:{p}" for n, p in zip(names, ports)}
    out = {}
    for name in names:
        cfg: dict[str, Any] = {
            "scenario": "wide_deep_nparty",
            "party": "leader" if name == "leader" else "follower",
            "name": name,
            "address": addr[name],
            "peers": {n: a for n, a in addr.items() if n != name},
            "enable_ssl": enable_ssl,
            "data": f"{name}.npz",
            "threads": 1,
            "model": model or {"vocab_size": 50_000, "emb_dim": 16, "deep_layers": [128, 64]},
            "train": {"ckpt_dir": f"checkpoints/{name}", "progress": False, **(train or {})},
            "log_file": f"{name}.log",
        }
        if name == "leader":
            cfg["nparty"] = {"aggregate": aggregate, "secure": secure}
            cfg["train"].setdefault("metrics_path", "metrics.jsonl")
        if enable_ssl:
            cfg["ssl"] = {
                "server_cert_path": f"certs/{name}.server.p12",
                "client_cert_path": f"certs/{name}.client.p12",
                "ca_cert_path": "certs/ca.crt",
                "server_password": "splitlink",
                "client_password": "splitlink",
            }
        out[name] = d / f"{name}_run.yaml"
        out[name].write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def train_unsplit(
    leader_data: PartyData, follower_data: Sequence[PartyData], model_cfg: WideDeepConfig, train: NPartyConfig
) -> list[dict[str, Any]]:
    """The same networks, initial weights and optimizers (built from the same YAMLs) as one model, trained
    centrally on the same batches (loss plus every bottom's L2 term, ``loss.backward()``); returns rows
    like the leader's metrics (``kind`` "train"/"eval", eval AUC each epoch): the unsplit reference."""
    t = copy.copy(train)
    t.ckpt_every, t.ckpt_dir, t.secure = 0, None, False
    leader, followers = make_local(leader_data, follower_data, model_cfg, t)
    agg = leader.aggs["follower_deep_embedding"].kind
    nets = [leader.bottom_net] + [f.net for f in followers]
    model = UnsplitModel(nets[0], nets[1:], leader.top_net, "sum" if agg == "single" else agg)
    opts = [
        o for m in (leader.models["bottom"], leader.models["top"], *(f.models["bottom"] for f in followers)) for o in m.optimizers
    ]
    parties = [leader, *followers]

    def feats(idx: np.ndarray) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [
            (torch.from_numpy(np.ascontiguousarray(p.data.ids[idx])), torch.from_numpy(np.ascontiguousarray(p.data.wts[idx])))
            for p in parties
        ]

    rows: list[dict[str, Any]] = []
    assert leader_data.labels is not None
    for epoch, idx in leader.schedule.steps(0):
        label = torch.from_numpy(np.ascontiguousarray(leader_data.labels[idx])).unsqueeze(1)
        for o in opts:
            o.zero_grad()
        x = feats(idx)
        loss, l2 = model(x, label)
        (loss + l2).backward()
        for o in opts:
            o.step()
        leader.step += 1
        rows.append({"kind": "train", "epoch": epoch, "step": leader.step, "wide_loss": float(loss.detach())})
        if leader.schedule.epoch_done(leader.step):
            probs, labels = [], []
            model.eval()
            with torch.no_grad():
                for eidx in leader.eval_batches():
                    lw, ld, _ = nets[0](*feats(eidx)[0])
                    outs = [net(*xi) for net, xi in zip(nets[1:], feats(eidx)[1:])]
                    ws, ds = [o[0] for o in outs], [o[1] for o in outs]
                    if model.aggregate == "concat":
                        fw, fd = torch.cat(ws, 1), torch.cat(ds, 1)
                    else:
                        fw, fd = sum(ws[1:], ws[0]), sum(ds[1:], ds[0])
                        if model.aggregate == "mean":
                            fw, fd = fw / len(ws), fd / len(ds)
                    probs.append(torch.sigmoid(leader.top_net.logits(lw, ld, fw, fd)).reshape(-1).numpy())
                    labels.append(np.asarray(leader_data.labels[eidx]))
            model.train()
            a = auc(np.concatenate(labels), np.concatenate(probs)) if probs else math.nan
            log.info("unsplit: epoch %d eval AUC: %.4f", epoch, a)
            rows.append({"kind": "eval", "epoch": epoch, "step": leader.step, "auc": a})
    return rows
