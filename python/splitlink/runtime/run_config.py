"""The run file of ``splitlink train leader|follower --config run.yaml``: one party of a scenario.

A run file says which scenario and party this process is, where it listens, where its peer is, how
TLS is set up, where its data is and how to train. Example (the leader of the Wide&Deep demo)::

    scenario: criteo_wide_deep
    party: leader
    address: 127.0.0.1:6666          # this party's gRPC server
    peer_address: 127.0.0.1:6667     # the peer's
    enable_ssl: true
    ssl:
      server_cert_path: certs/leader.server.p12
      client_cert_path: certs/leader.client.p12
      ca_cert_path: certs/ca.crt
      server_password: splitlink
      client_password: splitlink
    data: data/leader.npz            # this party's columns (the leader's include the labels)
    threads: 1
    model: {vocab_size: 50000, emb_dim: 16, deep_layers: [128, 64]}
    train: {epochs: 3, batch_size: 500, log_every: 50, ckpt_every: 100, metrics_path: leader_metrics.jsonl}

``model`` above is the scenario's own section: each scenario declares its sections (key and strict
model) in the registry (``registry.Scenario.sections``), and :func:`run_config_model` adds them to the
generic keys, so this module knows no scenario and a run file of one scenario refuses another's keys.
Relative paths are relative to the run file. Every problem with the file is reported at once, with its
line, by the YAML error reporter of :mod:`splitlink.config` (the one the model YAML uses). The
scenario is looked up in :mod:`splitlink.runtime.registry`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from splitlink.config import Problem, YamlConfigError, YamlLines, parse_yaml_document, pydantic_problems, read_yaml_text
from splitlink.runtime import registry

__all__ = [
    "RunConfig",
    "Section",
    "SSLSection",
    "TrainSection",
    "PipelineSection",
    "AutoCodecSection",
    "RanksSection",
    "load_run_config",
    "run_config_model",
    "run_config_from_dict",
    "ssl_section",
]


class Section(BaseModel):
    """A strict run-file section: unknown keys, NaN/inf and mutation are refused. A scenario's own
    sections (``registry.Scenario.sections``) derive from it."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


_Strict = Section
_S = TypeVar("_S", bound=BaseModel)


class SSLSection(_Strict):
    server_cert_path: str
    client_cert_path: str
    ca_cert_path: str
    server_password: str | None = None
    client_password: str | None = None
    server_key_path: str | None = None
    client_key_path: str | None = None
    crl_path: str | None = None


class RanksSection(_Strict):
    """A party over several processes (:mod:`splitlink.runtime.ranks`): party B's ranks, and in
    ``paired`` mode party A's too. Without address lists rank r listens on the base address's port + r
    (one machine); over several machines list every rank's ``host:port`` in rank order."""

    mode: Literal["scatter", "paired"]
    world_size: int = Field(ge=1, le=4096)
    follower_addresses: list[str] | None = None  # party B's ranks (default: address/peer_address port + rank)
    leader_addresses: list[str] | None = None  # paired mode: party A's ranks


class PipelineSection(_Strict):
    """``train.pipeline``: each step's batch cut into ``micro_batches`` micro-batches whose exchanges
    overlap the parties' computation (:mod:`splitlink.runtime.pipeline`; the update is the full batch's).
    A batch that ``micro_batches`` does not divide is cut into sizes that differ by at most one row."""

    micro_batches: int = Field(default=1, ge=1, le=4096)


class AutoCodecSection(_Strict):
    """``train.auto_codec``: per tensor, the least lossy codec (fp32, fp16, 8-bit, 4-bit min_max) that keeps
    a step's exchange (what this party sends) within ``budget_ms`` at the link rate measured from its own
    sends (:mod:`splitlink.runtime.codec_policy`); the choices and their errors are logged."""

    budget_ms: float = Field(gt=0, le=3_600_000)


class TrainSection(_Strict):
    epochs: int | None = Field(default=None, ge=1)
    batch_size: int | None = Field(default=None, ge=1)
    eval_fraction: float = Field(default=0.1, ge=0, lt=1)
    seed: int = Field(default=0, ge=0)
    log_every: int = Field(default=100, ge=1)
    ckpt_every: int = Field(default=0, ge=0)
    ckpt_dir: str | None = None
    resume: bool = False
    compress: bool | None = None  # default per scenario: Wide&Deep on (the YAML's codecs), Pangu off
    label_dp: bool = False
    embedding_dp: bool = False
    max_steps: int | None = Field(default=None, ge=1)
    metrics_path: str | None = None
    progress: bool = True
    deepspeed: bool = True  # pangu_alpha: party B's backbone under DeepSpeed
    zero_stage: int | None = Field(default=None, ge=0, le=3)  # pangu_alpha: override the YAML's ZeRO stage
    lr: float | None = Field(default=None, gt=0)
    peer_timeout: float | None = Field(default=None, gt=0)
    run_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    device: str | None = Field(default=None, pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")  # this party's; default auto
    pipeline: PipelineSection | None = None  # micro-batch pipelining of each step
    auto_codec: AutoCodecSection | None = None  # bandwidth-aware codec choice per tensor

    def options(self, cls: type[Any]) -> Any:
        """The given fields as the scenario's TrainOptions dataclass ``cls`` (unset ones: its defaults)."""
        fields = set(cls.__dataclass_fields__)
        given = {k: v for k, v in self.model_dump().items() if k in fields and v is not None}
        if self.pipeline is not None and "micro_batches" in fields:
            given["micro_batches"] = self.pipeline.micro_batches
        if self.auto_codec is not None and "auto_codec_budget_ms" in fields:
            given["auto_codec_budget_ms"] = self.auto_codec.budget_ms
        return cls(**given)


class RunConfig(_Strict):
    scenario: str  # a name in splitlink.runtime.registry
    party: Literal["leader", "follower"]
    address: str
    peer_address: str | None = None  # two parties: the peer's address (N parties: peers)
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")  # N parties: this party's name
    peers: dict[str, str] | None = None  # N parties: every other party's name -> host:port
    enable_ssl: bool = True
    ssl: SSLSection | None = None
    seal: bool = False
    data: str | None = None  # pangu_alpha: only party A (the leader) holds data
    eval_data: str | None = None  # pangu_alpha: held-out token data for party A's eval loss
    threads: int | None = Field(default=None, ge=1)
    keep_freed_memory: bool = True  # glibc keeps freed memory for reuse (splitlink.util.keep_freed_memory)
    train: TrainSection = Field(default_factory=TrainSection)
    ranks: RanksSection | None = None  # a party over several processes (splitlink.runtime.ranks)
    log_file: str | None = None
    # plus the scenario's own sections (registry.Scenario.sections), as fields of run_config_model(scenario)

    def section(self, key: str, cls: type[_S]) -> _S:
        """The scenario's section ``key`` of this run file, a ``cls`` (its defaults where the file omits it)."""
        value = getattr(self, key, None)
        if not isinstance(value, cls):
            raise TypeError(
                f"this run file ({type(self).__name__}, scenario {self.scenario!r}) has no {key!r} section of type "
                f"{cls.__name__}: the scenario declares its sections in registry.Scenario.sections, and the run file "
                "must be read by load_run_config (which builds the scenario's RunConfig model)"
            )
        return value


_models: dict[tuple[str, int], type[RunConfig]] = {}
_models_lock = threading.Lock()


def run_config_model(scenario: registry.Scenario) -> type[RunConfig]:
    """The run-file model of ``scenario``: :class:`RunConfig`'s generic keys plus the scenario's sections."""
    if not scenario.sections:
        return RunConfig
    key = (scenario.name, id(scenario))
    with _models_lock:
        model = _models.get(key)
        if model is None:
            fields: dict[str, Any] = {}
            for name, cls in scenario.sections.items():
                if name in RunConfig.model_fields or not name.isidentifier():
                    raise ValueError(
                        f"scenario {scenario.name!r} declares a run-file section {name!r} that is a generic run-file key "
                        "or not an identifier: rename the section"
                    )
                fields[name] = (cls, Field(default_factory=cls))
            made = create_model(f"RunConfig_{scenario.name}", __base__=RunConfig, **fields)
            model = _models[key] = made
    return model


def run_config_from_dict(data: Mapping[str, Any]) -> RunConfig:
    """A run file given as a mapping (launch scripts build one from their arguments), validated with its
    scenario's sections; paths are taken as given. Raises pydantic's ``ValidationError`` (a ValueError)
    naming each wrong key, or ``UnknownScenarioError``."""
    scenario = data.get("scenario")
    model = run_config_model(registry.get(scenario)) if isinstance(scenario, str) else RunConfig
    return model.model_validate(dict(data))


_PATH_KEYS = {
    ("data",),
    ("eval_data",),
    ("log_file",),
    ("train", "ckpt_dir"),
    ("train", "metrics_path"),
    *(("ssl", k) for k in SSLSection.model_fields if k.endswith("_path")),
}


def _read_yaml(p: Path, what: str) -> tuple[Any, YamlLines]:
    return parse_yaml_document(read_yaml_text(p, what), str(p))


def load_run_config(path: str | os.PathLike[str]) -> RunConfig:
    """The run file at ``path``, validated; relative paths in it made absolute (relative to the file)."""
    p = Path(path)
    raw, lines = _read_yaml(p, "run file")
    if not isinstance(raw, dict):
        raise YamlConfigError(str(p), [*lines.problems, Problem(1, "", "the run file must be a mapping")])
    problems = list(lines.problems)
    scenario = raw.get("scenario")
    known = registry.names()
    model: type[RunConfig] = RunConfig
    path_keys = set(_PATH_KEYS)
    if isinstance(scenario, str) and scenario in known:
        found = registry.get(scenario)
        model = run_config_model(found)
        path_keys.update(found.path_keys)
    elif isinstance(scenario, str):
        problems.append(
            Problem(lines.line(("scenario",)), "scenario", f"{scenario!r} is not a known scenario; known: {', '.join(known)}")
        )
        raw = {k: v for k, v in raw.items() if k in RunConfig.model_fields}  # its sections cannot be checked without it
    try:
        cfg = model.model_validate(raw)
    except ValidationError as e:
        problems.extend(pydantic_problems(e, lines, model))
        raise YamlConfigError(str(p), problems) from None
    if cfg.enable_ssl and cfg.ssl is None:
        problems.append(
            Problem(
                lines.line(("enable_ssl",)),
                "ssl",
                "missing: enable_ssl is true, so give ssl.server_cert_path, client_cert_path, ca_cert_path",
            )
        )
    if cfg.data is None and cfg.scenario in known and registry.get(cfg.scenario).needs_data(cfg.party):
        problems.append(Problem(lines.line(()), "data", "missing: this party's data (a path)"))
    problems.extend(_ranks_problems(cfg, lines))
    problems.extend(_peers_problems(cfg, lines))
    pipe = cfg.train.pipeline
    if pipe is not None and cfg.train.batch_size is not None and pipe.micro_batches > cfg.train.batch_size:
        problems.append(
            Problem(
                lines.line(("train", "pipeline", "micro_batches")),
                "train.pipeline.micro_batches",
                f"{pipe.micro_batches} micro-batches of a batch of {cfg.train.batch_size} rows: at most "
                "one micro-batch per row; lower micro_batches or raise train.batch_size",
            )
        )
    if pipe is not None and pipe.micro_batches > 1 and cfg.ranks is not None:
        problems.append(
            Problem(
                lines.line(("train", "pipeline")),
                "train.pipeline",
                "pipelining a party over ranks is not supported yet; drop train.pipeline or ranks",
            )
        )
    if problems:
        raise YamlConfigError(str(p), problems)
    base = p.resolve().parent
    data = cfg.model_dump()
    for keys in path_keys:
        d: Any = data
        for k in keys[:-1]:
            d = d.get(k) if isinstance(d, dict) else None
        if isinstance(d, dict) and isinstance(d.get(keys[-1]), str) and not os.path.isabs(d[keys[-1]]):
            d[keys[-1]] = str(base / d[keys[-1]])
    return model.model_validate(data)


def _ranks_problems(cfg: RunConfig, lines: YamlLines) -> list[Problem]:
    r = cfg.ranks
    if r is None:
        return []
    out = []
    for key, given in (("follower_addresses", r.follower_addresses), ("leader_addresses", r.leader_addresses)):
        if given is None:
            continue
        if len(given) != r.world_size:
            out.append(
                Problem(
                    lines.line(("ranks", key)),
                    f"ranks.{key}",
                    f"lists {len(given)} address(es) but ranks.world_size is {r.world_size}: one per rank",
                )
            )
        bad = [a for a in given if not _is_host_port(a)]
        if bad:
            out.append(Problem(lines.line(("ranks", key)), f"ranks.{key}", f"not host:port: {', '.join(map(repr, bad))}"))
        if len(set(given)) != len(given):
            out.append(Problem(lines.line(("ranks", key)), f"ranks.{key}", "two ranks cannot share an address"))
    if r.leader_addresses is not None and r.mode != "paired":
        out.append(
            Problem(
                lines.line(("ranks", "leader_addresses")),
                "ranks.leader_addresses",
                "only paired mode runs party A over ranks; in scatter mode party A is one process at 'address'",
            )
        )
    if cfg.train.batch_size is not None and cfg.train.batch_size % r.world_size:
        out.append(
            Problem(
                lines.line(("train", "batch_size")),
                "train.batch_size",
                f"the global batch {cfg.train.batch_size} is cut into ranks.world_size={r.world_size} equal "
                "slices: make it a multiple",
            )
        )
    if r.mode == "paired" and cfg.party == "leader" and cfg.eval_data is not None:
        out.append(
            Problem(
                lines.line(("eval_data",)),
                "eval_data",
                "paired mode has no evaluation yet (every A rank would evaluate alone); drop eval_data",
            )
        )
    return out


def _peers_problems(cfg: RunConfig, lines: YamlLines) -> list[Problem]:
    out = []
    if cfg.peers is None:
        if cfg.peer_address is None:
            out.append(Problem(lines.line(()), "peer_address", "missing: the peer's host:port (or peers, with N parties)"))
        return out
    me = cfg.name or cfg.party
    if cfg.peer_address is not None:
        out.append(Problem(lines.line(("peer_address",)), "peer_address", "give peers or peer_address, not both"))
    if me in cfg.peers:
        out.append(Problem(lines.line(("peers", me)), f"peers.{me}", f"this party ({me!r}) is not its own peer"))
    bad = [a for a in cfg.peers.values() if not _is_host_port(a)]
    if bad:
        out.append(Problem(lines.line(("peers",)), "peers", f"not host:port: {', '.join(map(repr, bad))}"))
    if cfg.party == "follower" and "leader" not in cfg.peers:
        out.append(Problem(lines.line(("peers",)), "peers", "a follower's peers must include the leader"))
    if cfg.party == "leader" and me != "leader":
        out.append(Problem(lines.line(("name",)), "name", "the leader's name is 'leader'"))
    if cfg.party == "follower" and me == "leader":
        out.append(Problem(lines.line(("name",)), "name", "a follower cannot be called 'leader'"))
    if len(set(cfg.peers.values()) | {cfg.address}) != len(cfg.peers) + 1:
        out.append(Problem(lines.line(("peers",)), "peers", "two parties cannot share an address"))
    return out


def _is_host_port(a: str) -> bool:
    host, sep, port = a.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


def ssl_section(
    server_cert: str | None,
    client_cert: str | None,
    ca_cert: str | None,
    server_password: str | None = None,
    client_password: str | None = None,
) -> dict[str, Any]:
    """The ``ssl`` section of a run file from the seed scripts' positional arguments (absolute paths)."""
    given = {"server_cert": server_cert, "client_cert": client_cert, "ca_cert": ca_cert}
    missing = [n for n, v in given.items() if not v]
    if missing:
        raise ValueError(
            f"enable_ssl is True, so give {', '.join(missing)} (see --help), or enable_ssl False on loopback addresses"
        )
    return {
        "server_cert_path": os.path.abspath(str(server_cert)),
        "client_cert_path": os.path.abspath(str(client_cert)),
        "ca_cert_path": os.path.abspath(str(ca_cert)),
        "server_password": server_password,
        "client_password": client_password,
    }
