#!/usr/bin/env python3
"""Criteo TSV -> preprocessed arrays (streaming; a 45M-line file never has to fit in memory).

    python preprocess.py --input train.txt --out ./data/preprocessed [--vocab-size 200000]
    python preprocess.py --synthetic 100000 --out ./data/preprocessed      # a synthetic file first

Each party then reads only its own columns (leader: fields 0-6, 13-25 and labels; follower: 7-12, 26-38).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from splitlink.examples import criteo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="a Criteo display-advertising TSV (label, I1..I13, C1..C26)")
    src.add_argument("--synthetic", type=int, metavar="ROWS", help="write ROWS synthetic lines with a planted signal")
    ap.add_argument("--out", required=True)
    ap.add_argument("--vocab-size", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tsv = a.input
    if a.synthetic:
        tsv = out / "synthetic.tsv"
        info = criteo.write_synthetic(tsv, a.synthetic, seed=a.seed)
        print(f"wrote {tsv}: {json.dumps(info)}")
    criteo.preprocess(tsv, out, vocab_size=a.vocab_size)
    print(f"preprocessed {tsv} -> {out}/ids.npy, wts.npy, labels.npy")


if __name__ == "__main__":
    main()
