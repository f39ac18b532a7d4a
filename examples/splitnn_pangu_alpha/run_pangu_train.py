#!/usr/bin/env python3
"""One party of the Pangu-alpha split, or both in one process, with the seed's launch arguments.

# party A (Embedding + Head, holds the text), the seed's leader arguments:
python run_pangu_train.py leader LOCAL PEER TRAIN_DATA EVAL_DATA \
    [ENABLE_SSL SERVER_PW CLIENT_PW SERVER_CERT CLIENT_CERT CA_CERT] [options]
# party B (the Transformer backbone, under DeepSpeed), the seed's follower arguments:
python run_pangu_train.py follower LOCAL PEER [ENABLE_SSL SERVER_PW CLIENT_PW SERVER_CERT CLIENT_CERT CA_CERT] [options]
# both in one process:
python run_pangu_train.py local TRAIN_DATA [options]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys

import torch

from splitlink.examples import pangu
from splitlink.runtime.launch import add_launch_options, exec_party, launch_train_section
from splitlink.runtime.run_config import TrainSection


def options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--config", choices=sorted(pangu.CONFIGS), default="tiny", help="model size (default: tiny)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (the seed's YAML has 5e-6 for 350M)")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--compress", action="store_true", help="min-max compress hidden states and their gradients")
    ap.add_argument("--embedding-dp", action="store_true", help="Gaussian noise on the embeddings sent to party B")
    ap.add_argument("--no-deepspeed", action="store_true", help="party B without DeepSpeed")
    ap.add_argument("--ckpt-every", type=int, default=0)
    ap.add_argument("--ckpt-dir", default="checkpoints")
    ap.add_argument("--metrics", default=None, help="party A: append JSON lines of losses here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--ranks",
        default=None,
        metavar="MODE:N",
        help="party B over N ranks started by torchrun: scatter:N (party A one process) or paired:N "
        "(party A over N ranks too); give both parties the same value",
    )
    ap.add_argument(
        "--follower-addresses",
        default=None,
        metavar="H:P,H:P,...",
        help="every rank of party B, in rank order (default: party B's address, port + rank)",
    )
    ap.add_argument("--zero-stage", type=int, choices=[0, 1, 2, 3], default=None, help="party B's ZeRO stage")
    add_launch_options(ap, device_help="this party's device (local: party A's)")


def train_section(a: argparse.Namespace) -> dict:
    return {
        "epochs": a.epochs,
        "batch_size": a.batch_size,
        "max_steps": a.max_steps,
        "lr": a.lr,
        "log_every": a.log_every,
        "compress": a.compress,
        "embedding_dp": a.embedding_dp,
        "deepspeed": not a.no_deepspeed,
        "ckpt_every": a.ckpt_every,
        "seed": a.seed,
        "ckpt_dir": os.path.abspath(a.ckpt_dir),
        "metrics_path": a.metrics,
        "zero_stage": a.zero_stage,
        **launch_train_section(a),
    }


def ranks_section(a: argparse.Namespace) -> dict | None:
    if a.ranks is None:
        return None
    mode, _, n = a.ranks.partition(":")
    if mode not in ("scatter", "paired") or not n.isdigit():
        raise ValueError(f"--ranks takes scatter:N or paired:N, got {a.ranks!r}")
    out: dict = {"mode": mode, "world_size": int(n)}
    if a.follower_addresses:
        out["follower_addresses"] = a.follower_addresses.split(",")
    return out


def ssl_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("enable_ssl", nargs="?", default="True")
    for n in ("server_password", "client_password", "server_cert", "client_cert", "ca_cert"):
        ap.add_argument(n, nargs="?")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="role", required=True)
    lead = sub.add_parser("leader", help="party A")
    lead.add_argument("local_address")
    lead.add_argument("peer_address")
    lead.add_argument("train_data")
    lead.add_argument("eval_data", help="held-out data (preprocess.py writes <out>_eval), or - for none")
    ssl_args(lead)
    options(lead)
    fol = sub.add_parser("follower", help="party B")
    fol.add_argument("local_address")
    fol.add_argument("peer_address")
    ssl_args(fol)
    options(fol)
    loc = sub.add_parser("local", help="both parties in one process")
    loc.add_argument("train_data")
    options(loc)
    loc.add_argument("--device-b", default=None, help="party B's device (default: --device)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:%(name)s:%(message)s")
    if a.role == "local":
        cfg = pangu.CONFIGS[a.config]
        data = pangu.TokenDataset(a.train_data, cfg.seq_length)
        cfg = dataclasses.replace(cfg, vocab_size=max(cfg.vocab_size, data.vocab_size))
        if a.threads:
            torch.set_num_threads(a.threads)
        train = TrainSection.model_validate(train_section(a)).options(pangu.TrainConfig)
        hist = pangu.train_local(cfg, data, train, device_b=a.device_b)
        if a.metrics:
            with open(a.metrics, "w") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in hist)
        return 0
    ssl = a.enable_ssl.lower() in ("true", "1", "yes")
    cfg_dict: dict = {
        "scenario": "pangu_alpha",
        "party": a.role,
        "address": a.local_address,
        "peer_address": a.peer_address,
        "enable_ssl": ssl,
        "threads": a.threads,
        "pangu": {"config": a.config},
        "train": train_section(a),
    }
    try:
        if ranks_section(a) is not None:
            cfg_dict["ranks"] = ranks_section(a)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.role == "leader":
        cfg_dict["data"] = os.path.abspath(a.train_data)
        if a.eval_data != "-":
            cfg_dict["eval_data"] = os.path.abspath(a.eval_data)
    exec_party(cfg_dict, (a.server_cert, a.client_cert, a.ca_cert, a.server_password, a.client_password) if ssl else None)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
