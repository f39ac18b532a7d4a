#!/usr/bin/env python3
"""One party of the Wide&Deep split, with the seed's launch arguments (see run_vfl_train_leader.sh).

    python run_vfl_train.py leader 127.0.0.1:10087 127.0.0.1:10086 /path/to/data True \
        server_pw client_pw /path/to/server.p12 /path/to/client.p12 /path/to/ca.crt [options]

DATA is this party's data: a directory written by preprocess.py (each party reads only its own
columns from it) or a party file (``leader.npz``/``follower.npz``). The two parties' addresses are
swapped on the other side. Options after the positional arguments tune training; --help lists them.
"""

from __future__ import annotations

import argparse
import os
import sys

from splitlink.runtime.launch import add_launch_options, exec_party, launch_train_section


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("party", choices=["leader", "follower"])
    ap.add_argument("local_address", help="host:port this party's server listens on")
    ap.add_argument("peer_address", help="host:port of the other party's server")
    ap.add_argument("data", help="preprocessed directory or this party's .npz")
    ap.add_argument("enable_ssl", nargs="?", default="True", help="True (mutual TLS, default) or False (loopback only)")
    ap.add_argument("server_password", nargs="?", help="password of the server .p12")
    ap.add_argument("client_password", nargs="?", help="password of the client .p12")
    ap.add_argument("server_cert", nargs="?", help="server certificate (.p12, or PEM with a .key beside it)")
    ap.add_argument("client_cert", nargs="?", help="client certificate (.p12, or PEM with a .key beside it)")
    ap.add_argument("ca_cert", nargs="?", help="CA certificate (PEM) that signed both parties' certificates")
    ap.add_argument("--epochs", type=int, default=None, help="default: the YAML's hyper_parameters.epochs")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the YAML's hyper_parameters.batch_size")
    ap.add_argument("--vocab-size", type=int, default=200_000)
    ap.add_argument("--emb-dim", type=int, default=80)
    ap.add_argument("--deep-layers", type=int, nargs="+", default=[1024, 512, 256, 128])
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--ckpt-every", type=int, default=1000, help="checkpoint every N steps (0: never)")
    ap.add_argument("--ckpt-dir", default="checkpoints")
    ap.add_argument("--no-compress", action="store_true", help="send embeddings and gradients uncompressed")
    ap.add_argument("--label-dp", action="store_true", help="leader: randomized response on labels (YAML eps)")
    ap.add_argument("--embedding-dp", action="store_true", help="follower: sign randomized response on embeddings")
    ap.add_argument("--metrics", default=None, help="leader: append JSON lines of losses and AUC here")
    add_launch_options(ap)
    return ap.parse_args(argv)


def main(argv: list[str]) -> None:
    a = parse(argv)
    ssl = a.enable_ssl.lower() in ("true", "1", "yes")
    cfg: dict = {
        "scenario": "criteo_wide_deep",
        "party": a.party,
        "address": a.local_address,
        "peer_address": a.peer_address,
        "enable_ssl": ssl,
        "data": os.path.abspath(a.data),
        "threads": a.threads,
        "model": {"vocab_size": a.vocab_size, "emb_dim": a.emb_dim, "deep_layers": a.deep_layers},
        "train": {
            "epochs": a.epochs,
            "batch_size": a.batch_size,
            "log_every": a.log_every,
            "ckpt_every": a.ckpt_every,
            "ckpt_dir": os.path.abspath(os.path.join(a.ckpt_dir, a.party)),
            "compress": not a.no_compress,
            "label_dp": a.label_dp,
            "embedding_dp": a.embedding_dp,
            "metrics_path": a.metrics,
            **launch_train_section(a),
        },
    }
    exec_party(cfg, (a.server_cert, a.client_cert, a.ca_cert, a.server_password, a.client_password) if ssl else None)


if __name__ == "__main__":
    main(sys.argv[1:])
