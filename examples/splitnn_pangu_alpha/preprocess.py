#!/usr/bin/env python3
"""A folder of text files -> a token-id dataset for the Pangu-alpha example (no downloads).

    python preprocess.py --input ./corpus --out ./data/train [--vocab-size 2048] [--tokenizer tok.json]
    python preprocess.py --stdlib --out ./data/train       # the Python standard library's sources as corpus

Trains a byte-level BPE tokenizer on the corpus with the ``tokenizers`` package (or uses the one given),
writes ``tokens.npy`` (memory-mapped at training time), ``tokenizer.json`` and ``meta.json``.
``--eval-fraction`` also writes a held-out split to ``<out>_eval`` with the same tokenizer.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from splitlink.examples import pangu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="folder of text files")
    src.add_argument("--stdlib", action="store_true", help="use this Python's standard-library sources")
    ap.add_argument("--out", required=True)
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--tokenizer", help="an existing tokenizer.json (must have an <eod> token)")
    ap.add_argument("--max-mb", type=float, default=4.0, help="--stdlib: megabytes of source to take")
    ap.add_argument("--eval-fraction", type=float, default=0.05)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(a.input) if a.input else pangu.stdlib_corpus(Path(tmp) / "corpus", int(a.max_mb * (1 << 20)))
        files = sorted(p for p in corpus.rglob("*") if p.is_file())
        n_eval = max(1, int(len(files) * a.eval_fraction)) if a.eval_fraction > 0 and len(files) > 1 else 0
        train_dir, eval_dir = Path(tmp) / "train", Path(tmp) / "eval"
        for d, chosen in ((train_dir, files[n_eval:]), (eval_dir, files[:n_eval])):
            d.mkdir()
            for i, f in enumerate(chosen):
                shutil.copy(f, d / f"{i:06d}_{f.name}")
        out = pangu.preprocess_corpus(train_dir, a.out, vocab_size=a.vocab_size, tokenizer=a.tokenizer)
        print(f"wrote {out}/tokens.npy, tokenizer.json, meta.json ({len(files) - n_eval} documents)")
        if n_eval:
            ev = pangu.preprocess_corpus(eval_dir, f"{a.out}_eval", tokenizer=out / "tokenizer.json")
            print(f"wrote {ev}/ (held out, {n_eval} documents)")


if __name__ == "__main__":
    main()
