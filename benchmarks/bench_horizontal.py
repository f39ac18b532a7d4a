"""Horizontal FL with PEFT adapters: LoRA and IA3 against full fine-tuning (FATE-LLM's table columns).

Per mode (full, lora, ia3) of a GPT-2-architecture sequence classifier built from a config:

* ``param_fraction``: exchanged (trainable) parameters / all parameters; also for GPT-2 small's real
  sizes (124M: 12 layers, 768 wide, vocab 50257), where FATE-LLM reports LoRA 0.222%, IA3 0.042%;
* ``bytes_per_round``: tensor bytes one client receives plus sends per round (the exchanged state, each way);
* ``epoch_s``: median wall time of one local epoch (``LocalTrainer.train_round``, aggregate_freq 1 epoch)
  on the same rows, modes timed in turns so machine noise falls on all alike; ``epoch_ratio_vs_full``
  is the same-run ratio (FATE-LLM: LoRA epochs take 24% of full fine-tuning's time on their GPUs).

Secure aggregation against plain FedAvg, whole ROUNDS through the rounds API (``Aggregator.run_round``,
in-process ``LocalTransport``; clients whose "training" returns ``global + delta``, so the round is all
aggregation), for n = 3 and 10 clients and an update of 1M float32 (and 124M, GPT-2 small, at n = 10
unless ``--quick``), timed in turns in the same run:

* ``plain_s`` / ``secure_s``: median wall time of one round, every client in this process one after the
  other (the aggregator's work plus ALL clients' work);
* ``plain_parallel_s`` / ``secure_parallel_s``: the same round with the clients' work counted as if they
  ran in parallel (total - sum of client times + the slowest client of each stage), as on separate machines;
* ``bytes_per_client``: tensor bytes a client sends and receives per round (plain: the state each way;
  secure: the state down, the secagg messages both ways, the masked update up); ``traffic_vs_plain``.

Secure settings: ``bits`` 16, ring 2^32, the default neighbourhood (all others up to 8 clients, SecAgg+
k ~ 2 log2 n beyond) and threshold; ``--sa-clients``/``--sa-sizes`` change the grid.

``--quick``: a tiny model and few rows, secure rounds of 3 clients x 100k values (smoke test).
``--json`` prints JSON.
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
    return {
        "tiny": {"vocab_size": 260, "n_positions": 32, "n_embd": 32, "n_layer": 1, "n_head": 2},
        "small": {"vocab_size": 260, "n_positions": 64, "n_embd": 128, "n_layer": 4, "n_head": 4},
        "gpt2": {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12},
    }[size]


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
    out: dict[str, Any] = {"size": size, "model": _spec(size), "rows": rows, "seq": seq, "threads": args.threads, "modes": {}}
    trainers = {}
    for mode in MODES:
        model = _model(size, mode)
        names = exchanged_names(model)
        t = LocalTrainer(mode, model, data, LocalOptions(batch_size=8, lr=1e-3, optimizer="adam"), exchanged=names)
        state = t.get_state()
        trainers[mode] = (t, state)
        out["modes"][mode] = {
            "param_fraction": parameter_fraction(model),
            "exchanged_tensors": len(names),
            "bytes_per_round": 2 * state_bytes(state),
        }

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


class _Client:
    """A client whose round returns ``global + scale * delta`` (no training); times its own work."""

    def __init__(self, name: str, delta: Any, scale: float, clock: dict[str, float]) -> None:
        from types import SimpleNamespace

        self.name, self.delta, self.scale, self.clock = name, delta, scale, clock
        self.opts = SimpleNamespace(seed=0)

    def train_round(self, r: int, g: Any) -> Any:
        import time

        import torch

        t0 = time.perf_counter()
        out = {"w": torch.add(g["w"], self.delta, alpha=self.scale)}
        self.clock[f"train:{self.name}"] = time.perf_counter() - t0
        return out, 100, 0.0

    def set_state(self, state: Any) -> None:
        pass


def _secure_transport(trainers: dict[str, Any], clock: dict[str, float], traffic: dict[str, int]) -> Any:
    import time

    from splitlink.horizontal.rounds import TRAIN, LocalTransport

    def nbytes(m: Any) -> int:
        return sum(t.numel() * t.element_size() for t in m.values() if hasattr(t, "numel"))

    class Timed(LocalTransport):
        def deliver(self, round_: int, client: str, kind: str, msg: Any) -> Any:
            t0 = time.perf_counter()
            out = super().deliver(round_, client, kind, msg)
            clock[f"{kind}:{client}"] = time.perf_counter() - t0  # includes the "training" of fl:train
            clock.pop(f"train:{client}", None)
            if kind != TRAIN:
                traffic[client] = traffic.get(client, 0) + nbytes(msg)  # secagg frames down
            return out

    return Timed(trainers)


def _parallel(total: float, clock: dict[str, float]) -> float:
    """total - every client's time + the slowest client of each stage."""
    stages: dict[str, list[float]] = {}
    for key, v in clock.items():
        stages.setdefault(key.split(":", 1)[0] if not key.startswith("fl:") else key.rsplit(":", 1)[0], []).append(v)
    return total - sum(clock.values()) + sum(max(v) for v in stages.values())


def bench_secure_rounds(args: argparse.Namespace) -> dict[str, Any]:
    import gc
    import statistics
    import time

    import torch

    from splitlink.horizontal.aggregator import FedAvg, SecureAggregation
    from splitlink.horizontal.rounds import Aggregator, LocalTransport, RoundOptions
    from splitlink.horizontal.secure_rounds import SecureSettings

    torch.set_num_threads(args.threads)
    grid = [(3, 100_000)] if args.quick else [(n, int(float(s) * 1e6)) for n in args.sa_clients for s in args.sa_sizes]
    if not args.quick and not args.skip_124m:
        grid.append((10, 124_439_808))
    rows = []
    for n, numel in grid:
        g = torch.Generator().manual_seed(n)
        initial = {"w": torch.randn(numel, generator=g) * 0.1}
        delta = torch.randn(numel, generator=g) * 0.01
        settings = SecureSettings(clip=0.05, bits=16)
        names = [f"client{i:02d}" for i in range(n)]
        repeat = 1 if numel > 50_000_000 else args.repeat
        times: dict[str, list[float]] = {"plain": [], "secure": [], "plain_parallel": [], "secure_parallel": []}
        info: dict[str, Any] = {}
        for it in range(repeat + (0 if numel > 50_000_000 else 1)):  # the first of small sizes: warm-up
            for mode in ("plain", "secure"):
                clock: dict[str, float] = {}
                traffic: dict[str, int] = {}
                trainers = {c: _Client(c, delta, (i + 1) / n, clock) for i, c in enumerate(names)}
                if mode == "plain":
                    agg = Aggregator(names, initial, FedAvg(), RoundOptions(rounds=1), LocalTransport(trainers))
                else:
                    agg = Aggregator(
                        names,
                        initial,
                        SecureAggregation(FedAvg(), settings),
                        RoundOptions(rounds=1),
                        _secure_transport(trainers, clock, traffic),
                    )
                gc.collect()
                t0 = time.perf_counter()
                row = agg.run_round()
                total = time.perf_counter() - t0
                if it or numel > 50_000_000:
                    times[mode].append(total)
                    times[f"{mode}_parallel"].append(_parallel(total, clock))
                state_b = numel * 4
                if mode == "plain":
                    info["plain_bytes_per_client"] = state_b + row["bytes_up"] // n
                else:
                    info["secure_bytes_per_client"] = state_b + (row["bytes_up"] + sum(traffic.values())) // n
                    info["clipped"] = row["clipped"]
                    info["neighbours"] = settings.config(n, "run").neighbourhood_size(n)
                    info["threshold"] = settings.config(n, "run").threshold
                del agg, trainers
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append(
            {
                "clients": n,
                "numel": numel,
                "repeat": repeat,
                **{f"{k}_s": v for k, v in med.items()},
                "secure_vs_plain": med["secure"] / med["plain"],
                "secure_vs_plain_parallel": med["secure_parallel"] / med["plain_parallel"],
                **info,
                "traffic_vs_plain": info["secure_bytes_per_client"] / info["plain_bytes_per_client"],
            }
        )
        del initial, delta
    return {"threads": args.threads, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["tiny", "small", "gpt2"], default="small", help="the model timed (default: small)")
    ap.add_argument("--rows", type=int, default=256, help="rows of one client's epoch (default: 256)")
    ap.add_argument("--seq", type=int, default=64, help="tokens per row (default: 64)")
    ap.add_argument("--repeat", type=int, default=5, help="timed epochs per mode (median; default: 5)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    ap.add_argument("--skip-gpt2-fraction", action="store_true", help="do not build GPT-2 small for its fractions")
    ap.add_argument(
        "--sa-clients",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[3, 10],
        help="clients of the secure-vs-plain rounds (default: 3,10)",
    )
    ap.add_argument(
        "--sa-sizes", type=lambda v: v.split(","), default=["1"], help="update sizes in millions of float32 (default: 1)"
    )
    ap.add_argument("--skip-124m", action="store_true", help="no 124M-value round at n = 10")
    ap.add_argument("--only", choices=["peft", "secure"], help="run one part")
    ap.add_argument("--quick", action="store_true", help="tiny model, few rows: a smoke test")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = {}
        if args.only != "secure":
            res["peft"] = bench_peft(args)
        if args.only != "peft":
            res["secure_rounds"] = bench_secure_rounds(args)
    if args.json:
        print(json.dumps(res))
        return
    if "secure_rounds" in res:
        print("secure aggregation vs plain FedAvg, one round (in-process; 'parallel': clients as on separate machines)")
        print(
            f"{'n':>3} {'values':>11} {'k':>3} {'t':>3} {'plain s':>8} {'secure s':>9} {'ratio':>6} "
            f"{'par. plain':>10} {'par. secure':>11} {'ratio':>6} {'traffic':>8}"
        )
        for r in res["secure_rounds"]["rows"]:
            print(
                f"{r['clients']:3d} {r['numel']:11d} {r['neighbours']:3d} {r['threshold']:3d} {r['plain_s']:8.3f} "
                f"{r['secure_s']:9.3f} {r['secure_vs_plain']:6.2f} {r['plain_parallel_s']:10.3f} "
                f"{r['secure_parallel_s']:11.3f} {r['secure_vs_plain_parallel']:6.2f} {r['traffic_vs_plain']:8.4f}"
            )
    if "peft" not in res:
        return
    p = res["peft"]
    print(f"model {p['size']} {p['model']}, {p['rows']} rows x {p['seq']} tokens, {p['threads']} thread(s)")
    print(f"{'mode':6} {'params %':>10} {'bytes/round':>12} {'vs full':>8} {'epoch s':>9} {'vs full':>8}")
    for m, r in p["modes"].items():
        print(
            f"{m:6} {100 * r['param_fraction']:10.3f} {r['bytes_per_round']:12d} {r['bytes_ratio_vs_full']:8.4f} "
            f"{r['epoch_s']:9.3f} {r['epoch_ratio_vs_full']:8.3f}"
        )
    if "gpt2_small_param_fraction" in p:
        print(
            "GPT-2 small (124M) exchanged parameter %: "
            + ", ".join(f"{m} {100 * v:.3f}" for m, v in p["gpt2_small_param_fraction"].items())
        )


if __name__ == "__main__":
    main()
