"""The job file of a horizontal FL federation (``splitlink fl aggregator|client --job job.yaml``).

One file describes the whole federation; each process picks its part by its name. Every problem is
reported at once with file, line and key path (the YAML error reporter of :mod:`splitlink.config`).
FATE's ``FedArguments`` and ``TrainingArguments`` keep their names::

    session_id: homo_gpt2                 # FATE federation_session_id: the checkpoints' run id
    aggregator: {name: arbiter, address: 127.0.0.1:7000}
    clients:
      - {name: guest, address: 127.0.0.1:7001, data: data/guest.npz}
      - {name: host, address: 127.0.0.1:7002, data: data/host.npz}
    ssl: {cert_dir: certs, ca_cert_path: certs/ca.crt, password: splitlink}   # <cert_dir>/<name>.server.p12 ...
    fed_args:                             # FATE FedArguments
      aggregate_strategy: epoch           # epoch | step
      aggregate_freq: 1
      aggregator: secure                  # fedavg | secure (SecAgg+ with dropout recovery)
      secure: {clip: 0.05, threshold: 2, bits: 16}   # aggregator: secure only; see SecureSection
      server_optimizer: none              # none | momentum | adam (FedAvgM, FedAdam)
      fedprox_mu: 0.0
      clients_per_round: null             # null: all
      min_clients: 2
      round_deadline: 600                 # seconds
    training_args:                        # FATE TrainingArguments
      num_train_epochs: 5                 # epoch strategy: rounds = num_train_epochs / aggregate_freq
      max_steps: null                     # step strategy: rounds = max_steps / aggregate_freq
      per_device_train_batch_size: 16
      learning_rate: 5.0e-4
      optim: adam                         # sgd | adam | adamw
      deepspeed: ds_config.json           # or an inline mapping; "auto" values resolved
    model: {n_embd: 64, n_layer: 2, n_head: 4, vocab_size: 260, n_positions: 128, num_labels: 4}
    peft: {type: lora, r: 8, lora_alpha: 16, target_modules: [c_attn]}
    checkpoint: {dir: ckpt, every: 1, resume: false}

Relative paths are relative to the job file.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from splitlink.config import (
    Problem,
    YamlConfigError,
    parse_yaml_document,
    pydantic_problems,
    read_yaml_text,
)

__all__ = ["JobConfig", "build_trainer", "load_job", "make_round_options", "run_aggregator", "run_client"]

log = logging.getLogger("splitlink.fl")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class PartySection(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    address: str
    data: str | None = None  # clients: an .npz of input_ids, attention_mask, labels
    eval_data: str | None = None  # clients: held-out rows to report accuracy on at the end


class SSLSection(_Strict):
    cert_dir: str
    ca_cert_path: str
    password: str | None = None


class SecureSection(_Strict):
    """``fed_args.secure`` (with ``aggregator: secure``): SecAgg+ over each round's sampled clients.

    clip: bound on each element of a client's weighted update ``(local - global) * samples / max samples``;
    larger values are clipped (counted per round). bits: width of one quantised value (step = clip /
    (2^(bits-1)-1)). threshold: clients needed to unmask (null: the smallest valid, a majority of each
    neighbourhood). neighbours: SecAgg+ neighbourhood size k (null: all others up to 8 clients, else ~2 log2 n).
    ring_bits: 32 (4 bytes per value, as float32) or 64."""

    clip: float = Field(gt=0)
    threshold: int | None = Field(default=None, ge=1)
    neighbours: int | None = Field(default=None, ge=1)
    bits: int = Field(default=16, ge=2, le=24)
    ring_bits: Literal[32, 64] = 32


class FedArgs(_Strict):
    aggregate_strategy: Literal["epoch", "step"] = "epoch"
    aggregate_freq: int = Field(default=1, ge=1)
    aggregator: Literal["fedavg", "secure"] = "fedavg"
    server_optimizer: Literal["none", "momentum", "adam"] = "none"
    server_lr: float = Field(default=1.0, gt=0)
    server_beta1: float = Field(default=0.9, ge=0, lt=1)
    server_beta2: float = Field(default=0.99, ge=0, lt=1)
    server_tau: float = Field(default=1e-3, gt=0)
    fedprox_mu: float = Field(default=0.0, ge=0)
    clients_per_round: int | None = Field(default=None, ge=1)
    min_clients: int | None = Field(default=None, ge=1)
    round_deadline: float | None = Field(default=None, gt=0)
    secure: SecureSection | None = None


class TrainingArgs(_Strict):
    num_train_epochs: int | None = Field(default=None, ge=1)
    max_steps: int | None = Field(default=None, ge=1)
    per_device_train_batch_size: int = Field(default=16, ge=1)
    learning_rate: float = Field(default=5e-4, gt=0)
    optim: Literal["sgd", "adam", "adamw"] = "adam"
    weight_decay: float = Field(default=0.0, ge=0)
    max_grad_norm: float = Field(default=0.0, ge=0)
    warmup_steps: int = Field(default=0, ge=0)
    seed: int = Field(default=0, ge=0)
    dataloader_drop_last: bool = False
    deepspeed: str | dict[str, Any] | None = None


class ModelSection(_Strict):
    vocab_size: int = Field(default=260, ge=2)
    n_positions: int = Field(default=128, ge=1)
    n_embd: int = Field(default=64, ge=1)
    n_layer: int = Field(default=2, ge=1)
    n_head: int = Field(default=4, ge=1)
    num_labels: int = Field(default=2, ge=2)
    pad_token_id: int = Field(default=0, ge=0)


class PeftSection(_Strict):
    type: Literal["none", "lora", "ia3"] = "none"
    r: int = Field(default=8, ge=1)
    lora_alpha: int = Field(default=16, ge=1)
    lora_dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["c_attn"], min_length=1)
    feedforward_modules: list[str] = Field(default_factory=list)


class CheckpointSection(_Strict):
    dir: str | None = None
    every: int = Field(default=0, ge=0)
    resume: bool = False


class JobConfig(_Strict):
    session_id: str = Field(default="run", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    aggregator: PartySection
    clients: list[PartySection] = Field(min_length=1)
    enable_ssl: bool = True
    ssl: SSLSection | None = None
    fed_args: FedArgs = Field(default_factory=FedArgs)
    training_args: TrainingArgs = Field(default_factory=TrainingArgs)
    model: ModelSection = Field(default_factory=ModelSection)
    peft: PeftSection = Field(default_factory=PeftSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    threads: int | None = Field(default=1, ge=1)
    client_timeout: float = Field(default=3600.0, gt=0)
    metrics_path: str | None = None
    source: str = ""

    @property
    def rounds(self) -> int:
        t, f = self.training_args, self.fed_args
        total = t.num_train_epochs if f.aggregate_strategy == "epoch" else t.max_steps
        return (total or 0) // f.aggregate_freq


def load_job(path: str | os.PathLike[str]) -> JobConfig:
    """The job file at ``path``, validated (all problems at once, with lines and key paths); relative
    paths made absolute."""
    p = Path(path)
    raw, lines = parse_yaml_document(read_yaml_text(p, "job file"), str(p))
    if not isinstance(raw, dict):
        raise YamlConfigError(str(p), [*lines.problems, Problem(1, "", "the job file must be a mapping")])
    problems = list(lines.problems)
    try:
        cfg = JobConfig.model_validate(raw)
    except ValidationError as e:
        problems.extend(pydantic_problems(e, lines, JobConfig))
        raise YamlConfigError(str(p), problems) from None

    def add(keys: tuple[Any, ...], msg: str) -> None:
        problems.append(Problem(lines.line(keys), ".".join(map(str, keys)), msg))

    f, t = cfg.fed_args, cfg.training_args
    n = len(cfg.clients)
    if f.aggregator == "secure":
        if f.secure is None:
            add(
                ("fed_args",),
                "aggregator is secure, so give fed_args.secure: {clip: <bound on each weighted update "
                "element>, threshold, neighbours, bits}",
            )
        else:
            from splitlink.horizontal.secagg import SecAggError

            per_round = min(f.clients_per_round or n, n)
            try:
                secure_settings(cfg).config(per_round, cfg.session_id)
            except SecAggError as e:
                add(("fed_args", "secure"), f"{e} (for the {per_round} clients sampled per round)")
    elif f.secure is not None:
        add(
            ("fed_args", "secure"),
            "secure settings are given but aggregator is fedavg; set aggregator: secure or remove fed_args.secure",
        )
    if f.aggregate_strategy == "epoch":
        if t.num_train_epochs is None:
            add(("training_args",), "missing num_train_epochs (aggregate_strategy is epoch)")
        elif t.num_train_epochs % f.aggregate_freq:
            add(
                ("training_args", "num_train_epochs"),
                f"{t.num_train_epochs} epochs are not a whole number of rounds of aggregate_freq {f.aggregate_freq} epochs",
            )
    else:
        if t.max_steps is None:
            add(("training_args",), "missing max_steps (aggregate_strategy is step)")
        elif t.max_steps % f.aggregate_freq:
            add(
                ("training_args", "max_steps"),
                f"{t.max_steps} steps are not a whole number of rounds of aggregate_freq {f.aggregate_freq} steps",
            )
    names = [cfg.aggregator.name] + [c.name for c in cfg.clients]
    for i, c in enumerate(cfg.clients):
        if names.count(c.name) > 1:
            add(("clients", i, "name"), f"party name {c.name!r} is used twice")
        if c.data is None:
            add(("clients", i), "missing: data (the client's .npz)")
    k = f.clients_per_round or n
    if k > n:
        add(("fed_args", "clients_per_round"), f"{k} is more than the {n} clients")
    if f.min_clients is not None and f.min_clients > k:
        add(("fed_args", "min_clients"), f"{f.min_clients} is more than the {k} clients sampled per round")
    if cfg.enable_ssl and cfg.ssl is None:
        add(("enable_ssl",), "enable_ssl is true, so give ssl: {cert_dir, ca_cert_path, password}")
    if cfg.model.n_embd % cfg.model.n_head:
        add(("model", "n_head"), f"n_embd {cfg.model.n_embd} is not divisible by n_head {cfg.model.n_head}")
    base = p.resolve().parent
    ds = t.deepspeed
    if isinstance(ds, str):
        dsp = Path(ds) if os.path.isabs(ds) else base / ds
        try:
            loaded = json.loads(dsp.read_text())
            if not isinstance(loaded, dict):
                raise ValueError("the top level must be an object")
        except (OSError, ValueError) as e:
            add(("training_args", "deepspeed"), f"DeepSpeed config {str(dsp)!r} cannot be read as a JSON object: {e}")
    if problems:
        raise YamlConfigError(str(p), problems)
    data = cfg.model_dump()
    data["source"] = str(p)

    def absolute(v: str | None) -> str | None:
        return v if v is None or os.path.isabs(v) else str(base / v)

    for party in [data["aggregator"], *data["clients"]]:
        party["data"], party["eval_data"] = absolute(party["data"]), absolute(party["eval_data"])
    if data["ssl"]:
        data["ssl"]["cert_dir"], data["ssl"]["ca_cert_path"] = (
            absolute(data["ssl"]["cert_dir"]),
            absolute(data["ssl"]["ca_cert_path"]),
        )
    data["checkpoint"]["dir"] = absolute(data["checkpoint"]["dir"])
    data["metrics_path"] = absolute(data["metrics_path"])
    if isinstance(ds, str):
        data["training_args"]["deepspeed"] = json.loads((Path(ds) if os.path.isabs(ds) else base / ds).read_text())
    return JobConfig.model_validate(data)


# ---- building the parties ------------------------------------------------------------------------------
def build_model(cfg: JobConfig) -> Any:
    from splitlink.horizontal.adapters import AdapterSpec, GPT2Spec, build_classifier

    m, pe = cfg.model, cfg.peft
    return build_classifier(GPT2Spec(**m.model_dump()), AdapterSpec(**pe.model_dump()), seed=cfg.training_args.seed)


def load_npz(path: str) -> dict[str, Any]:
    import numpy as np
    import torch

    with np.load(path) as z:
        missing = {"input_ids", "labels"} - set(z.files)
        if missing:
            raise ValueError(f"{path}: missing arrays {sorted(missing)} (needs input_ids, labels, optional attention_mask)")
        return {k: torch.from_numpy(z[k].astype(np.int64)) for k in z.files if k in ("input_ids", "attention_mask", "labels")}


def build_trainer(cfg: JobConfig, name: str, data: dict[str, Any] | None = None) -> Any:
    """The LocalTrainer of client ``name`` (its data from the job's path unless given)."""
    from splitlink.horizontal.adapters import exchanged_names
    from splitlink.horizontal.client import LocalOptions, LocalTrainer

    party = next((c for c in cfg.clients if c.name == name), None)
    if party is None:
        raise ValueError(f"{cfg.source}: no client named {name!r}; clients: {', '.join(c.name for c in cfg.clients)}")
    t, f = cfg.training_args, cfg.fed_args
    opts = LocalOptions(
        batch_size=t.per_device_train_batch_size,
        lr=t.learning_rate,
        optimizer=t.optim,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        aggregate_strategy=f.aggregate_strategy,
        aggregate_freq=f.aggregate_freq,
        fedprox_mu=f.fedprox_mu,
        seed=t.seed,
        drop_last=t.dataloader_drop_last,
        deepspeed=t.deepspeed if isinstance(t.deepspeed, dict) else None,
        warmup_steps=t.warmup_steps,
    )
    model = build_model(cfg)
    assert party.data is not None
    return LocalTrainer(name, model, data if data is not None else load_npz(party.data), opts, exchanged=exchanged_names(model))


def make_round_options(cfg: JobConfig) -> Any:
    from splitlink.horizontal.rounds import RoundOptions

    f, c = cfg.fed_args, cfg.checkpoint
    return RoundOptions(
        rounds=cfg.rounds,
        clients_per_round=f.clients_per_round,
        min_clients=f.min_clients or (f.clients_per_round or len(cfg.clients)),
        round_deadline=f.round_deadline,
        client_timeout=cfg.client_timeout,
        seed=cfg.training_args.seed,
        ckpt_dir=c.dir,
        ckpt_every=c.every,
        resume=c.resume,
        run_id=cfg.session_id,
        metrics_path=cfg.metrics_path,
    )


def secure_settings(cfg: JobConfig) -> Any:
    """The job's SecureSettings (None unless ``aggregator: secure``)."""
    from splitlink.horizontal.secure_rounds import SecureSettings

    f = cfg.fed_args
    if f.aggregator != "secure" or f.secure is None:
        return None
    return SecureSettings(**f.secure.model_dump())


def make_aggregator(cfg: JobConfig, transport: Any) -> Any:
    from splitlink.horizontal.adapters import exchanged_names
    from splitlink.horizontal.aggregator import make_strategy
    from splitlink.horizontal.rounds import Aggregator, base_digest

    f = cfg.fed_args
    model = build_model(cfg)
    names = exchanged_names(model)
    params = dict(model.named_parameters())
    initial = {k: params[k].detach().clone() for k in names}
    strategy = make_strategy(
        f.aggregator,
        f.server_optimizer,
        server_lr=f.server_lr,
        beta1=f.server_beta1,
        beta2=f.server_beta2,
        tau=f.server_tau,
        secure=secure_settings(cfg),
    )
    return Aggregator(
        [c.name for c in cfg.clients], initial, strategy, make_round_options(cfg), transport, digest=base_digest(model, names)
    )


def _communicator(cfg: JobConfig, me: PartySection, peers: list[PartySection], retry: float | None = None) -> Any:
    from splitlink.channel import ServerConfig, SSLConfig, VerticalFederatedCommunicator

    ssl = None
    if cfg.enable_ssl:
        assert cfg.ssl is not None
        d = Path(cfg.ssl.cert_dir)
        ssl = SSLConfig(
            server_cert_path=str(d / f"{me.name}.server.p12"),
            client_cert_path=str(d / f"{me.name}.client.p12"),
            ca_cert_path=cfg.ssl.ca_cert_path,
            server_password=cfg.ssl.password,
            client_password=cfg.ssl.password,
        )
    return VerticalFederatedCommunicator(
        ServerConfig(me.name, me.address),
        [ServerConfig(p.name, p.address) for p in peers],
        enable_ssl=cfg.enable_ssl,
        ssl_config=ssl,
        retry_deadline=retry or min(cfg.client_timeout, 600.0),
    )


def _setup(cfg: JobConfig) -> None:
    import torch

    logging.basicConfig(level=logging.INFO, format="%(levelname)s:%(name)s:%(message)s", stream=sys.stderr, force=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)


def run_aggregator(cfg: JobConfig) -> Any:
    """The aggregator's process: all rounds; returns the Aggregator (its final state and history)."""
    from splitlink.horizontal.rounds import NetworkTransport

    _setup(cfg)
    # a client that cannot be reached within the round deadline fails that round (named), not the federation
    with _communicator(cfg, cfg.aggregator, list(cfg.clients), retry=cfg.fed_args.round_deadline) as comm:
        agg = make_aggregator(cfg, NetworkTransport(comm))
        agg.run()
    return agg


def run_client(cfg: JobConfig, name: str) -> Any:
    """Client ``name``'s process: answers the aggregator's rounds; returns (ClientParty, eval metrics or None)."""
    from splitlink.horizontal.rounds import ClientParty

    _setup(cfg)
    trainer = build_trainer(cfg, name)
    me = next(c for c in cfg.clients if c.name == name)
    with _communicator(cfg, me, [cfg.aggregator]) as comm:
        party = ClientParty(comm, cfg.aggregator.name, trainer, timeout=cfg.client_timeout, secure=secure_settings(cfg))
        party.run()
    result = None
    if me.eval_data:
        result = trainer.evaluate(load_npz(me.eval_data))
        log.info("client %s: held-out loss %.4f accuracy %.4f", name, result["loss"], result["accuracy"])
    return party, result
