#!/usr/bin/env python3
"""The whole Homo-NN GPT-2 example on this machine: prepare, the aggregator and the clients as processes
over mutual TLS (``splitlink fl``), then the same model trained centrally on the union of the clients' rows.

    python run_all.py --workdir ./homo_gpt2 [--clients 2] [--mode lora|ia3|full] [--non-iid] [--epochs 8] [--no-secure]

Secure aggregation (SecAgg+) is on unless --no-secure: the aggregator only ever unmasks the sum of the
clients' updates; the values clipped to [-clip, clip] in each round are reported.

Prints held-out accuracy of every client's final (global) model and of the central model.
"""

from __future__ import annotations

import argparse
import json
import time

from splitlink.examples.homo_gpt2 import central_baseline, prepare, run_processes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="homo_gpt2")
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--mode", choices=["lora", "ia3", "full"], default="lora")
    ap.add_argument("--non-iid", action="store_true")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=None, help="default: 3e-3 full fine-tuning, 1e-2 adapters")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-secure", action="store_true", help="plain FedAvg instead of secure aggregation (SecAgg+)")
    ap.add_argument("--clip", type=float, default=1.0, help="secure aggregation's clip on each weighted update element")
    a = ap.parse_args()
    lr = a.lr or (3e-3 if a.mode == "full" else 1e-2)
    job = prepare(
        a.workdir,
        clients=a.clients,
        mode=a.mode,
        non_iid=a.non_iid,
        epochs=a.epochs,
        seed=a.seed,
        lr=lr,
        secure=not a.no_secure,
        clip=a.clip,
    )
    t0 = time.perf_counter()
    out = run_processes(job)
    t_fed = time.perf_counter() - t0
    t0 = time.perf_counter()
    central = central_baseline(job)
    t_central = time.perf_counter() - t0
    fed = {n: s["eval"] for n, s in out.items() if s.get("role") == "client"}
    history = out.get("arbiter", {}).get("history", [])
    print(
        json.dumps(
            {
                "mode": a.mode,
                "non_iid": a.non_iid,
                "clients": a.clients,
                "epochs": a.epochs,
                "aggregator": "fedavg" if a.no_secure else "secure",
                "clipped_per_round": [r.get("clipped", 0) for r in history],
                "federated_eval": fed,
                "federated_seconds": round(t_fed, 1),
                "central_eval": central,
                "central_seconds": round(t_central, 1),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
