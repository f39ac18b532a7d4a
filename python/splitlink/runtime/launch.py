"""Runs one party of a scenario from its run file (``splitlink train``): logging, threads, the gRPC
communicator, then the scenario's party (looked up by name in the registry) to the end."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

from splitlink.runtime import registry
from splitlink.runtime.metrics import BarAwareHandler
from splitlink.runtime.run_config import RunConfig, run_config_from_dict, ssl_section

__all__ = ["run_party", "add_launch_options", "launch_train_section", "exec_party"]

log = logging.getLogger("splitlink.train")


def run_party(cfg: RunConfig) -> int:
    """Trains this party to the end; returns a process exit code."""
    from splitlink.channel import ServerConfig, SSLConfig, VerticalFederatedCommunicator

    if cfg.ranks is not None:  # a party over several processes: names, slices, exit (splitlink.runtime.ranks)
        from splitlink.runtime import ranks

        return ranks.run_rank_party(cfg)
    setup_process(cfg)
    peer = "follower" if cfg.party == "leader" else "leader"
    remotes = [ServerConfig(n, a) for n, a in cfg.peers.items()] if cfg.peers else [ServerConfig(peer, str(cfg.peer_address))]
    ssl = SSLConfig(**cfg.ssl.model_dump()) if cfg.ssl is not None else None
    party = registry.get(cfg.scenario).make_party(cfg)
    # A peer that stops answering fails the run after peer_timeout (sending retries as long), with an
    # error naming it; restarting both parties with resume continues from their newest common checkpoint.
    retry = cfg.train.peer_timeout or 60.0
    with VerticalFederatedCommunicator(
        ServerConfig(cfg.name or cfg.party, cfg.address),
        remotes,
        enable_ssl=cfg.enable_ssl,
        ssl_config=ssl,
        retry_deadline=retry,
        compress_configs=party.compress_configs(),
        seal=cfg.seal,
    ) as comm:
        party.comm = comm
        party.run()
    log.info("%s: finished at step %d", cfg.name or cfg.party, party.step)
    return 0


def setup_process(cfg: RunConfig, log_file: str | None = None) -> None:
    """Logging (to stderr and ``log_file``, default the run file's), threads, glibc's freed memory."""
    log_file = log_file if log_file is not None else cfg.log_file
    handlers: list[logging.Handler] = [BarAwareHandler()]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:%(name)s:%(message)s", handlers=handlers, force=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.keep_freed_memory:
        from splitlink.util import keep_freed_memory

        log.debug("glibc keeps freed memory: %s", keep_freed_memory())


# --- the seed-style launch scripts (examples/splitnn_*): the options they share and how they end ---------


def add_launch_options(ap: argparse.ArgumentParser, *, device_help: str = "this party's device") -> None:
    """The options every launch script takes the same way: --threads, --resume, --micro-batches,
    --auto-codec-ms, --device (read back with :func:`launch_train_section`)."""
    ap.add_argument("--threads", type=int, default=None, help="torch threads for this process")
    ap.add_argument("--resume", action="store_true", help="continue from the newest step both parties checkpointed")
    ap.add_argument(
        "--micro-batches",
        type=int,
        default=1,
        metavar="M",
        help="pipeline each step over M micro-batches (1: none); give both parties the same value",
    )
    ap.add_argument(
        "--auto-codec-ms",
        type=float,
        default=None,
        metavar="MS",
        help="auto codec: per tensor, the least lossy of fp32/fp16/8-bit/4-bit "
        "that keeps a step's exchange within MS milliseconds at the measured link rate",
    )
    ap.add_argument(
        "--device", default="auto", help=f"{device_help}: cpu, cuda, cuda:N or auto (default: cuda when available, else cpu)"
    )


def launch_train_section(a: argparse.Namespace) -> dict[str, Any]:
    """The run file's ``train`` keys that :func:`add_launch_options` set."""
    out: dict[str, Any] = {"resume": a.resume, "device": a.device, "pipeline": {"micro_batches": a.micro_batches}}
    if a.auto_codec_ms is not None:
        out["auto_codec"] = {"budget_ms": a.auto_codec_ms}
    return out


def exec_party(cfg: Mapping[str, Any], ssl: Sequence[str | None] | None = None) -> NoReturn:
    """Runs the party of the run file ``cfg`` (a mapping: :func:`run_config_from_dict`) and ends the
    process with its exit code; ``ssl``: (server_cert, client_cert, ca_cert, server_password,
    client_password) for mutual TLS. A wrong argument ends it with code 2 and the error on stderr.

    The process ends by ``os._exit`` after flushing: torch/gloo can abort during interpreter teardown
    after a finished run."""
    try:
        data = dict(cfg)
        if ssl is not None:
            data["ssl"] = ssl_section(*ssl)
        config = run_config_from_dict(data)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(2)
    code = run_party(config)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
