#!/usr/bin/env python3
"""Both parties of the Wide&Deep split in one process (the in-process communicator).

    python run_vfl_train_local.py --data ./data/preprocessed --epochs 2 --batch-size 1000

``--data`` is a directory written by preprocess.py. ``--through-codecs`` passes tensors through the real
frame/compression path instead of by reference, to study compression without processes.
"""

from __future__ import annotations

import argparse
import logging

import torch

from splitlink.examples import criteo
from splitlink.examples import wide_deep as wd
from splitlink.runtime.launch import add_launch_options, launch_train_section
from splitlink.runtime.run_config import TrainSection


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--vocab-size", type=int, default=200_000)
    ap.add_argument("--emb-dim", type=int, default=80)
    ap.add_argument("--deep-layers", type=int, nargs="+", default=[1024, 512, 256, 128])
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--ckpt-every", type=int, default=0)
    ap.add_argument("--ckpt-dir", default="checkpoints")
    ap.add_argument("--label-dp", action="store_true")
    ap.add_argument("--embedding-dp", action="store_true")
    ap.add_argument("--through-codecs", action="store_true")
    add_launch_options(ap, device_help="the leader's device")
    ap.add_argument("--follower-device", default=None, help="the follower's device (default: --device)")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, filename="log_local.txt")
    logging.getLogger().addHandler(logging.StreamHandler())
    cfg = wd.WideDeepConfig(vocab_size=a.vocab_size, emb_dim=a.emb_dim, deep_layers=tuple(a.deep_layers))
    if a.threads:
        torch.set_num_threads(a.threads)
    section = {
        "epochs": a.epochs,
        "batch_size": a.batch_size,
        "log_every": a.log_every,
        "ckpt_every": a.ckpt_every,
        "ckpt_dir": a.ckpt_dir,
        "label_dp": a.label_dp,
        "embedding_dp": a.embedding_dp,
        **launch_train_section(a),
    }
    train = TrainSection.model_validate(section).options(wd.TrainConfig)
    wd.train_local(
        criteo.load_party(a.data, "leader"),
        criteo.load_party(a.data, "follower"),
        cfg,
        train,
        through_codecs=a.through_codecs,
        follower_device=a.follower_device,
    )


if __name__ == "__main__":
    main()
