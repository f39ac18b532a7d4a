"""Runs one party of a scenario from its run file (``splitlink train``): logging, threads, the gRPC
communicator, then the scenario's party (looked up by name in the registry) to the end."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from splitlink.runtime import registry
from splitlink.runtime.metrics import BarAwareHandler
from splitlink.runtime.run_config import RunConfig

__all__ = ["run_party"]

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
