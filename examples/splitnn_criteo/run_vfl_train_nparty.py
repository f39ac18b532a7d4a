#!/usr/bin/env python3
"""A leader and N followers as separate processes over mutual TLS (``splitlink train`` per party).

    python run_vfl_train_nparty.py --workdir nparty-run --followers 3 --rows 30000 --aggregate sum --secure

Creates development certificates (one per party: ``splitlink certs --parties leader follower1 ...``),
a synthetic Criteo set split into ``leader.npz`` and ``follower<k>.npz`` (the follower columns split N
ways), one run file per party (``<name>_run.yaml``: ``name``, ``address`` and ``peers``, every other
party's name and address; the leader's ``nparty`` section picks the aggregation), starts every party
and prints the leader's eval AUC. To run the parties on different machines, copy each its run file,
data and certificates and start ``splitlink train leader|follower --config <name>_run.yaml`` on each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from splitlink.certs import make_dev_certs
from splitlink.examples import criteo_nparty as cn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="nparty-run")
    ap.add_argument("--followers", type=int, default=3)
    ap.add_argument("--rows", type=int, default=30_000)
    ap.add_argument("--aggregate", choices=["concat", "sum", "mean"], default="sum")
    ap.add_argument("--secure", action="store_true")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--vocab-size", type=int, default=50_000)
    ap.add_argument("--ckpt-every", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=3600)
    a = ap.parse_args()
    d = Path(a.workdir).resolve()
    names = ["leader", *cn.follower_names(a.followers)]
    make_dev_certs(d / "certs", names)
    info = cn.prepare_data(d, a.rows, a.followers, vocab_size=a.vocab_size)
    files = cn.write_run_files(
        d,
        a.followers,
        aggregate=a.aggregate,
        secure=a.secure,
        model={"vocab_size": a.vocab_size, "emb_dim": 16, "deep_layers": [128, 64]},
        train={"epochs": a.epochs, "batch_size": a.batch_size, "log_every": 20, "ckpt_every": a.ckpt_every},
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = {
        n: subprocess.Popen(
            [sys.executable, "-m", "splitlink", "train", "leader" if n == "leader" else "follower", "--config", str(files[n])],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(d / f"{n}.stderr", "wb"),
        )
        for n in names
    }
    deadline = time.monotonic() + a.timeout
    while any(p.poll() is None for p in procs.values()):
        failed = [n for n, p in procs.items() if p.poll() not in (None, 0)]
        if failed or time.monotonic() > deadline:
            for p in procs.values():
                p.kill()
            raise SystemExit(f"party {failed or 'timeout'} failed; see {d}/<name>.stderr and <name>.log")
        time.sleep(0.5)
    rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    aucs = [r["auc"] for r in rows if r["kind"] == "eval"]
    print(
        f"{a.followers} followers, {'secure ' if a.secure else ''}{a.aggregate}: eval AUC per epoch "
        f"{', '.join(f'{x:.4f}' for x in aucs)} (oracle {info['oracle_auc']:.4f}, leader only "
        f"{info['leader_only_auc']:.4f})"
    )


if __name__ == "__main__":
    main()
