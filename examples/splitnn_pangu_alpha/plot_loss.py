#!/usr/bin/env python3
"""The seed's figure: loss of split training and of the same model trained unsplit, same seed.

    python plot_loss.py --data ./data/train --steps 200 --out pangu_loss.png [--config tiny]

Trains the split model (party A and party B in one process, B's backbone under DeepSpeed unless
--no-deepspeed) and the unsplit model from the same seed, prints a loss table and draws both curves.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging

from splitlink.examples import pangu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--config", choices=sorted(pangu.CONFIGS), default="tiny")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--no-deepspeed", action="store_true")
    ap.add_argument("--out", default="pangu_loss.png")
    ap.add_argument("--json", help="also write both loss series here")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = pangu.CONFIGS[a.config]
    data = pangu.TokenDataset(a.data, cfg.seq_length)
    cfg = dataclasses.replace(cfg, vocab_size=max(cfg.vocab_size, data.vocab_size))
    train = pangu.TrainConfig(
        epochs=10**6, batch_size=a.batch_size, max_steps=a.steps, lr=a.lr, log_every=10**9, deepspeed=not a.no_deepspeed
    )
    split = [r["loss"] for r in pangu.train_local(cfg, data, train)]
    unsplit = [r["loss"] for r in pangu.train_unsplit(cfg, data, train)]
    print(f"{'step':>6} {'split':>10} {'unsplit':>10} {'difference':>12}")
    for i in sorted({0, *range(9, len(split), max(1, len(split) // 10)), len(split) - 1}):
        print(f"{i + 1:>6} {split[i]:>10.6f} {unsplit[i]:>10.6f} {split[i] - unsplit[i]:>12.3g}")
    pangu.plot_losses(split, unsplit, a.out, title=f"Pangu-alpha ({a.config}) split vs unsplit training")
    print(f"wrote {a.out}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"split": split, "unsplit": unsplit}, fh)


if __name__ == "__main__":
    main()
