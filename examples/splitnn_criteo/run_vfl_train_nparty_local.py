#!/usr/bin/env python3
"""A leader and N followers (Criteo's follower columns split N ways) in one process, and the AUC of the
same data trained unsplit, as the two-party split, and N-party with concat / sum / mean / secure sum.

    python run_vfl_train_nparty_local.py --data ./data/preprocessed --followers 3 --epochs 2 --batch-size 1000
    python run_vfl_train_nparty_local.py --synthetic 60000 --followers 3 --compare

``--data`` is a directory written by preprocess.py; ``--synthetic ROWS`` makes a synthetic Criteo set
with a planted signal instead. ``--aggregate``/``--secure`` choose the aggregation layer of a single
run; ``--compare`` runs them all (and the unsplit and two-party references) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

from splitlink.examples import criteo
from splitlink.examples import criteo_nparty as cn
from splitlink.examples import wide_deep as wd


def last_auc(rows: list[dict]) -> float:
    return [r["auc"] for r in rows if r["kind"] == "eval"][-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="a preprocessed directory (preprocess.py)")
    src.add_argument("--synthetic", type=int, metavar="ROWS", help="synthetic Criteo rows with a planted signal")
    ap.add_argument("--followers", type=int, default=3)
    ap.add_argument("--aggregate", choices=["concat", "sum", "mean"], default="sum")
    ap.add_argument("--secure", action="store_true", help="pairwise-masked sum/mean (the leader sees masked values)")
    ap.add_argument("--frac-bits", type=int, default=16)
    ap.add_argument("--compare", action="store_true", help="unsplit, 2-party and every N-party aggregation")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--vocab-size", type=int, default=50_000)
    ap.add_argument("--emb-dim", type=int, default=16)
    ap.add_argument("--deep-layers", type=int, nargs="+", default=[128, 64])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the AUCs here")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if a.synthetic:
        tmp = Path(tempfile.mkdtemp(prefix="nparty-"))
        info = criteo.write_synthetic(tmp / "s.tsv", a.synthetic, seed=a.seed)
        print(f"synthetic data: oracle AUC {info['oracle_auc']:.4f}, leader-only AUC {info['leader_only_auc']:.4f}")
        pre = criteo.preprocess(tmp / "s.tsv", tmp / "pre", vocab_size=a.vocab_size)
    else:
        pre = Path(a.data)
    leader, follower = criteo.load_party(pre, "leader"), criteo.load_party(pre, "follower")
    shares = cn.split_follower(follower, a.followers)
    cfg = wd.WideDeepConfig(vocab_size=a.vocab_size, emb_dim=a.emb_dim, deep_layers=tuple(a.deep_layers))

    def opts(**kw: object) -> cn.NPartyConfig:
        return cn.NPartyConfig(epochs=a.epochs, batch_size=a.batch_size, seed=a.seed, progress=False, log_every=10**9, **kw)  # type: ignore[arg-type]

    runs = (
        [(a.aggregate, a.secure)]
        if not a.compare
        else [("concat", False), ("sum", False), ("mean", False), ("sum", True), ("mean", True)]
    )
    aucs: dict[str, float] = {}
    if a.compare:
        aucs["unsplit"] = last_auc(cn.train_unsplit(leader, shares, cfg, opts(aggregate="sum")))
        t2 = wd.TrainConfig(
            epochs=a.epochs, batch_size=a.batch_size, seed=a.seed, progress=False, log_every=10**9, compress=False
        )
        aucs["2-party"] = last_auc(wd.train_local(leader, follower, cfg, t2))
    for agg, sec in runs:
        name = f"{a.followers} followers, {'secure ' if sec else ''}{agg}"
        aucs[name] = last_auc(cn.train_local(leader, shares, cfg, opts(aggregate=agg, secure=sec, frac_bits=a.frac_bits)))
    for k, v in aucs.items():
        print(f"{k:>32}: eval AUC {v:.4f}")
    if a.json:
        Path(a.json).write_text(json.dumps(aucs, indent=1))


if __name__ == "__main__":
    main()
