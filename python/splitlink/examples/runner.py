"""``splitlink train leader|follower --config run.yaml``: one party of a seed scenario, from a run file.

A run file says where this party listens, where its peer is, how TLS is set up, where its data is and
how to train. Example (the leader of the Wide&Deep demo)::

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

Relative paths are relative to the run file. Every problem with the file is reported at once, like
the model YAML's.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from splitlink.config import Problem, YamlConfigError, YamlLines, pydantic_problems

__all__ = ["RunConfig", "load_run_config", "run_party"]

log = logging.getLogger("splitlink.train")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SSLSection(_Strict):
    server_cert_path: str
    client_cert_path: str
    ca_cert_path: str
    server_password: str | None = None
    client_password: str | None = None
    server_key_path: str | None = None
    client_key_path: str | None = None
    crl_path: str | None = None


class WideDeepSection(_Strict):
    vocab_size: int = Field(default=200_000, ge=2)
    emb_dim: int = Field(default=80, ge=1)
    deep_layers: list[int] = Field(default_factory=lambda: [1024, 512, 256, 128], min_length=1)
    l2_coef: float = Field(default=8e-5, ge=0)
    init_std: float = Field(default=0.01, gt=0)


class PanguSection(_Strict):
    config: Literal["tiny", "350M", "2.6B"] = "tiny"
    vocab_size: int | None = Field(default=None, ge=2)
    hidden_size: int | None = Field(default=None, ge=1)
    num_layers: int | None = Field(default=None, ge=1)
    num_heads: int | None = Field(default=None, ge=1)
    seq_length: int | None = Field(default=None, ge=2)


class TrainSection(_Strict):
    epochs: int | None = Field(default=None, ge=1)
    batch_size: int | None = Field(default=None, ge=1)
    eval_fraction: float = Field(default=0.1, ge=0, lt=1)
    seed: int = Field(default=0, ge=0)
    log_every: int = Field(default=100, ge=1)
    ckpt_every: int = Field(default=0, ge=0)
    ckpt_dir: str | None = None
    resume: bool = False
    compress: bool | None = None    # default per scenario: Wide&Deep on (the YAML's codecs), Pangu off
    label_dp: bool = False
    embedding_dp: bool = False
    max_steps: int | None = Field(default=None, ge=1)
    metrics_path: str | None = None
    progress: bool = True
    deepspeed: bool = True          # pangu_alpha: party B's backbone under DeepSpeed
    lr: float | None = Field(default=None, gt=0)
    peer_timeout: float | None = Field(default=None, gt=0)
    run_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")


class RunConfig(_Strict):
    scenario: Literal["criteo_wide_deep", "pangu_alpha"]
    party: Literal["leader", "follower"]
    address: str
    peer_address: str
    enable_ssl: bool = True
    ssl: SSLSection | None = None
    seal: bool = False
    data: str | None = None         # pangu_alpha: only party A (the leader) holds data
    eval_data: str | None = None    # pangu_alpha: held-out token data for party A's eval loss
    threads: int | None = Field(default=None, ge=1)
    keep_freed_memory: bool = True  # glibc keeps freed memory for reuse (splitlink.util.keep_freed_memory)
    model: WideDeepSection = Field(default_factory=WideDeepSection)
    pangu: PanguSection = Field(default_factory=PanguSection)
    train: TrainSection = Field(default_factory=TrainSection)
    log_file: str | None = None


_PATH_KEYS = {("data",), ("eval_data",), ("log_file",), ("train", "ckpt_dir"), ("train", "metrics_path"),
              *(("ssl", k) for k in SSLSection.model_fields if k.endswith("_path"))}


def load_run_config(path: str | os.PathLike[str]) -> RunConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"run file {str(p)!r} does not exist") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise YamlConfigError(str(p), [Problem(mark.line + 1 if mark else None, "", f"not valid YAML: {e}")]) from None
    lines = YamlLines(node)
    if not isinstance(raw, dict):
        raise YamlConfigError(str(p), [Problem(1, "", "the run file must be a mapping")])
    problems = list(lines.problems)
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as e:
        problems.extend(pydantic_problems(e, lines, RunConfig))
        raise YamlConfigError(str(p), problems) from None
    if cfg.enable_ssl and cfg.ssl is None:
        problems.append(Problem(lines.line(("enable_ssl",)), "ssl",
                                "missing: enable_ssl is true, so give ssl.server_cert_path, client_cert_path, ca_cert_path"))
    if cfg.data is None and (cfg.scenario == "criteo_wide_deep" or cfg.party == "leader"):
        problems.append(Problem(lines.line(()), "data", "missing: this party's data (a path)"))
    if problems:
        raise YamlConfigError(str(p), problems)
    base = p.resolve().parent
    data = cfg.model_dump()
    for keys in _PATH_KEYS:
        d: Any = data
        for k in keys[:-1]:
            d = d.get(k) if isinstance(d, dict) else None
        if isinstance(d, dict) and isinstance(d.get(keys[-1]), str) and not os.path.isabs(d[keys[-1]]):
            d[keys[-1]] = str(base / d[keys[-1]])
    return RunConfig.model_validate(data)


class _BarAwareHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes log lines above a tqdm progress bar instead of through it."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm
        except ImportError:
            super().emit(record)
            return
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never raise
            self.handleError(record)


def ssl_section(server_cert: str | None, client_cert: str | None, ca_cert: str | None,
                server_password: str | None = None, client_password: str | None = None) -> dict[str, Any]:
    """The ``ssl`` section of a run file from the seed scripts' positional arguments (absolute paths)."""
    given = {"server_cert": server_cert, "client_cert": client_cert, "ca_cert": ca_cert}
    missing = [n for n, v in given.items() if not v]
    if missing:
        raise ValueError(f"enable_ssl is True, so give {', '.join(missing)} (see --help), or enable_ssl False on "
                         "loopback addresses")
    return {"server_cert_path": os.path.abspath(str(server_cert)), "client_cert_path": os.path.abspath(str(client_cert)),
            "ca_cert_path": os.path.abspath(str(ca_cert)), "server_password": server_password,
            "client_password": client_password}


def run_party(cfg: RunConfig) -> int:
    """Trains this party to the end; returns a process exit code."""
    from splitlink.channel import ServerConfig, SSLConfig, VerticalFederatedCommunicator

    handlers: list[logging.Handler] = [_BarAwareHandler()]
    if cfg.log_file:
        Path(cfg.log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(cfg.log_file))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:%(name)s:%(message)s", handlers=handlers, force=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.keep_freed_memory:
        from splitlink.util import keep_freed_memory

        log.debug("glibc keeps freed memory: %s", keep_freed_memory())
    peer = "follower" if cfg.party == "leader" else "leader"
    ssl = SSLConfig(**cfg.ssl.model_dump()) if cfg.ssl is not None else None
    if cfg.scenario == "pangu_alpha":
        party = _pangu_party(cfg)
    else:
        party = _wide_deep_party(cfg)
    # A peer that stops answering fails the run after peer_timeout (sending retries as long), with an
    # error naming it; restarting both parties with resume continues from their newest common checkpoint.
    retry = cfg.train.peer_timeout or 60.0
    with VerticalFederatedCommunicator(ServerConfig(cfg.party, cfg.address), ServerConfig(peer, cfg.peer_address),
                                       enable_ssl=cfg.enable_ssl, ssl_config=ssl, retry_deadline=retry,
                                       compress_configs=party.compress_configs(), seal=cfg.seal) as comm:
        party.comm = comm
        party.run()
    log.info("%s: finished at step %d", cfg.party, party.step)
    return 0


def _wide_deep_party(cfg: RunConfig) -> Any:
    from splitlink.examples import criteo
    from splitlink.examples import wide_deep as wd

    assert cfg.data is not None
    data = criteo.load_party(cfg.data, cfg.party)
    model_cfg = wd.WideDeepConfig(vocab_size=cfg.model.vocab_size, emb_dim=cfg.model.emb_dim,
                                  deep_layers=tuple(cfg.model.deep_layers), l2_coef=cfg.model.l2_coef,
                                  init_std=cfg.model.init_std)
    fields = set(wd.TrainConfig.__dataclass_fields__)
    train = wd.TrainConfig(**{k: v for k, v in cfg.train.model_dump().items() if k in fields and v is not None})
    return (wd.Leader if cfg.party == "leader" else wd.Follower)(data, None, model_cfg, train)


def _pangu_party(cfg: RunConfig) -> Any:
    import dataclasses

    from splitlink.examples import pangu

    overrides = {k: v for k, v in cfg.pangu.model_dump().items() if k != "config" and v is not None}
    model_cfg = dataclasses.replace(pangu.CONFIGS[cfg.pangu.config], **overrides)
    fields = set(pangu.TrainConfig.__dataclass_fields__)
    train = pangu.TrainConfig(**{k: v for k, v in cfg.train.model_dump().items() if k in fields and v is not None})
    if cfg.party == "leader":
        assert cfg.data is not None
        data = pangu.TokenDataset(cfg.data, model_cfg.seq_length)
        if data.vocab_size > model_cfg.vocab_size:
            raise ValueError(f"the tokenizer of {cfg.data} has {data.vocab_size} tokens but the model's vocabulary "
                             f"is {model_cfg.vocab_size}; set pangu.vocab_size")
        eval_data = pangu.TokenDataset(cfg.eval_data, model_cfg.seq_length) if cfg.eval_data else None
        return pangu.PartyA(model_cfg, data, None, train, eval_data)
    return pangu.PartyB(model_cfg, None, train)
