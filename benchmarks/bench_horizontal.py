"""Horizontal FL with PEFT adapters: LoRA and IA3 against full fine-tuning (FATE-LLM's table columns).

Per mode (full, lora, ia3) of a GPT-2-architecture sequence classifier built from a config:

* ``param_fraction``: exchanged (trainable) parameters / all parameters; also for GPT-2 small's real
  sizes (124M: 12 layers, 768 wide, vocab 50257), where FATE-LLM reports LoRA 0.222%, IA3 0.042%;
* ``bytes_per_round``: tensor bytes one client receives plus sends per round (the exchanged state, each way);
* ``epoch_s``: median wall time of one local epoch (``LocalTrainer.train_round``, aggregate_freq 1 epoch)
  on the same rows, modes timed in turns so machine noise falls on all alike; ``epoch_ratio_vs_full``
  is the same-run ratio (FATE-LLM: LoRA epochs take 24% of full fine-tuning's time on their GPUs).

``--quick``: a tiny model and few rows (smoke test). ``--json`` prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved_medians

MODES = ("full", "lora", "ia3")


def _spec(size: str) -> dict[str, int]:
    return {"tiny": {"vocab_size": 260, "n_positions": 32, "n_embd": 32, "n_layer": 1, "n_head": 2},
            "small": {"vocab_size": 260, "n_positions": 64, "n_embd": 128, "n_layer": 4, "n_head": 4},
            "gpt2": {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12}}[size]


def _model(size: str, mode: str) -> Any:
    from splitlink.horizontal.adapters import AdapterSpec, GPT2Spec, build_classifier

    adapter = AdapterSpec(type="none" if mode == "full" else mode, r=8, lora_alpha=16, target_modules=["c_attn"])
    return build_classifier(GPT2Spec(**_spec(size), num_labels=2), adapter, seed=0)


def bench_peft(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch
    from splitlink.horizontal.adapters import exchanged_names, parameter_fraction
    from splitlink.horizontal.client import LocalOptions, LocalTrainer
    from splitlink.horizontal.rounds import state_bytes

    torch.set_num_threads(args.threads)
    size = "tiny" if args.quick else args.size
    rows, seq = (32, 16) if args.quick else (args.rows, args.seq)
    rng = np.random.default_rng(0)
    ids = torch.from_numpy(rng.integers(1, 257, (rows, seq)))
    data = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.from_numpy(rng.integers(0, 2, rows))}
    out: dict[str, Any] = {"size": size, "model": _spec(size), "rows": rows, "seq": seq, "threads": args.threads,
                           "modes": {}}
    trainers = {}
    for mode in MODES:
        model = _model(size, mode)
        names = exchanged_names(model)
        t = LocalTrainer(mode, model, data, LocalOptions(batch_size=8, lr=1e-3, optimizer="adam"), exchanged=names)
        state = t.get_state()
        trainers[mode] = (t, state)
        out["modes"][mode] = {"param_fraction": parameter_fraction(model), "exchanged_tensors": len(names),
                              "bytes_per_round": 2 * state_bytes(state)}

    def epoch(mode: str) -> Any:
        t, s = trainers[mode]
        return lambda: t.train_round(0, s)

    times = interleaved_medians({m: epoch(m) for m in MODES}, repeat=args.repeat, warmup=1)
    for m in MODES:
        out["modes"][m]["epoch_s"] = times[m]
        out["modes"][m]["epoch_ratio_vs_full"] = times[m] / times["full"]
        out["modes"][m]["bytes_ratio_vs_full"] = out["modes"][m]["bytes_per_round"] / out["modes"]["full"]["bytes_per_round"]
    if not args.quick and not args.skip_gpt2_fraction:
        out["gpt2_small_param_fraction"] = {m: parameter_fraction(_model("gpt2", m)) for m in MODES}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["tiny", "small", "gpt2"], default="small", help="the model timed (default: small)")
    ap.add_argument("--rows", type=int, default=256, help="rows of one client's epoch (default: 256)")
    ap.add_argument("--seq", type=int, default=64, help="tokens per row (default: 64)")
    ap.add_argument("--repeat", type=int, default=5, help="timed epochs per mode (median; default: 5)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    ap.add_argument("--skip-gpt2-fraction", action="store_true", help="do not build GPT-2 small for its fractions")
    ap.add_argument("--quick", action="store_true", help="tiny model, few rows: a smoke test")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = {"peft": bench_peft(args)}
    if args.json:
        print(json.dumps(res))
        return
    p = res["peft"]
    print(f"model {p['size']} {p['model']}, {p['rows']} rows x {p['seq']} tokens, {p['threads']} thread(s)")
    print(f"{'mode':6} {'params %':>10} {'bytes/round':>12} {'vs full':>8} {'epoch s':>9} {'vs full':>8}")
    for m, r in p["modes"].items():
        print(f"{m:6} {100 * r['param_fraction']:10.3f} {r['bytes_per_round']:12d} {r['bytes_ratio_vs_full']:8.4f} "
              f"{r['epoch_s']:9.3f} {r['epoch_ratio_vs_full']:8.3f}")
    if "gpt2_small_param_fraction" in p:
        print("GPT-2 small (124M) exchanged parameter %: " + ", ".join(
            f"{m} {100 * v:.3f}" for m, v in p["gpt2_small_param_fraction"].items()))


if __name__ == "__main__":
    main()
