#!/usr/bin/env python3
"""Data, certificates and the job file of the Homo-NN GPT-2 example (FATE seed 003), in WORKDIR.

    python prepare.py --workdir ./homo_gpt2 [--clients 2] [--mode lora|ia3|full] [--non-iid] [--epochs 8] [--no-secure]

The labelled text: docstrings of four standard-library package families (asyncio, email, unittest, xml),
classified by family; 20% held out, the rest split over the clients (IID, or --non-iid label skew).
Then start the aggregator and every client (run_homo_gpt2.py, one process each), or run_all.py.
"""

from __future__ import annotations

import argparse

from splitlink.examples.homo_gpt2 import prepare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="homo_gpt2")
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--mode", choices=["lora", "ia3", "full"], default="lora")
    ap.add_argument("--non-iid", action="store_true")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-secure", action="store_true", help="plain FedAvg instead of secure aggregation (SecAgg+)")
    ap.add_argument("--clip", type=float, default=1.0, help="secure aggregation's clip on each weighted update element")
    a = ap.parse_args()
    job = prepare(
        a.workdir,
        clients=a.clients,
        mode=a.mode,
        non_iid=a.non_iid,
        epochs=a.epochs,
        seed=a.seed,
        secure=not a.no_secure,
        clip=a.clip,
    )
    print(f"wrote {job}")


if __name__ == "__main__":
    main()
