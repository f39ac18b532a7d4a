#!/usr/bin/env python3
"""One party of the Homo-NN GPT-2 example, with FATE's launch arguments.

    python run_homo_gpt2.py --role arbiter --federation_session_id homo_gpt2 --job homo_gpt2/job.yaml
    python run_homo_gpt2.py --role guest   --federation_session_id homo_gpt2 --job homo_gpt2/job.yaml
    python run_homo_gpt2.py --role host    --federation_session_id homo_gpt2 --job homo_gpt2/job.yaml [--data_path host.npz]

``--role arbiter`` is the aggregator (FATE's FedAVGServer); guest and host are clients (FedAVGClient).
The session id must equal the job's ``session_id`` (FATE: the same federation_session_id everywhere).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from splitlink.horizontal.job import load_job, run_aggregator, run_client


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--role", required=True, help="arbiter, or a client's name in the job (guest, host, ...)")
    ap.add_argument("--federation_session_id", default=None, help="must equal the job file's session_id")
    ap.add_argument("--job", required=True, help="the job file written by prepare.py")
    ap.add_argument("--data_path", default=None, help="clients: this client's .npz (default: the job's)")
    ap.add_argument("--save_path", default=None, help="write the final global state here (FATE: save_model)")
    a = ap.parse_args()
    cfg = load_job(a.job)
    if a.federation_session_id is not None and a.federation_session_id != cfg.session_id:
        raise SystemExit(
            f"--federation_session_id {a.federation_session_id!r} differs from the job's session_id "
            f"{cfg.session_id!r}; every party must use the same"
        )
    if a.role == cfg.aggregator.name:
        agg = run_aggregator(cfg)
        state, summary = agg.state, {"role": "arbiter", "history": agg.history}
    else:
        if a.data_path:
            cfg = cfg.model_copy(
                update={
                    "clients": [
                        c.model_copy(update={"data": os.path.abspath(a.data_path)}) if c.name == a.role else c
                        for c in cfg.clients
                    ]
                }
            )
        party, result = run_client(cfg, a.role)
        state, summary = party.final, {"role": a.role, "eval": result}
    if a.save_path:
        torch.save(state, a.save_path)
    print(json.dumps(summary, default=str))
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
