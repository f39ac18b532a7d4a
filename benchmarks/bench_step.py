"""Step time of a split model driven by FLModels in one process vs the same model unsplit.

Two models, each trained for the same steps from the same seed:

* MLP: bottom (follower) -> top (leader, loss), batch 256, 512 -> 1024 -> 1024 -> 10 classes, Adam.
* GPT: Embedding (party A) / Transformer backbone (party B) / Head with the word embedding tied
  (party A), d=256, 4 layers, 8 heads, seq 128, batch 8, AdamW.

"split" runs each part as an FLModel (forward_one_step, backward_one_step with the grad scales passed
in-process: no serialization, so this isolates FLModel's own overhead); "central" is plain PyTorch
(forward, loss.backward(), optimizer.step()) on the unsplit model with the same optimizer FLModel
builds from the YAML (torch's fused implementation: splitlink.optim.build_optimizer); "by-hand" is the
same split written in plain PyTorch (detach at each cut, one optimizer per part), which separates what
splitting itself costs from what FLModel adds. The overhead ratio is split / central (target <= 1.05).
"central, torch default" is the unsplit model with torch's default (for-loop) optimizer, i.e. what an
unsplit script gets without choosing an implementation; split / that shows what FLModel's default
optimizer gives back. By default all four run interleaved step by step in one process, in a rotating
order, so machine noise hits them alike (medians of --steps steps after warm-up); they then share
glibc's heap, whose trimming depends on the process's whole allocation history (the default
optimizer's temporaries change what the others see). --own-process runs each variant in a process
of its own, --rounds times in rotating order: the allocator behaves as in a real run, at the price of
a few % of process-to-process noise. Also printed: the tests' tiny sizes, where the fixed per-step cost of
Python and of each extra autograd and optimizer call dominates; and one Adam step over the big MLP's
parameters with torch's three implementations, with cold caches (the three stepped in turns, each evicting
the others' state, like a training step's forward/backward does) and warm (one optimizer stepped repeatedly).
``--json`` prints JSON.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "support"))
from split_nets import (  # noqa: E402
    GPT_BACKBONE,
    GPT_EMBEDDING,
    GPT_HEAD,
    MLP_BOTTOM,
    MLP_TOP,
    fl_yaml,
    gpt_batch,
    gpt_parts,
    mlp_batch,
    mlp_parts,
)

from splitlink import FLModel  # noqa: E402

Step = Callable[[int], float]


def unsplit_step(opt: torch.optim.Optimizer, loss_of: Callable[[int], torch.Tensor]) -> Step:
    """One training step of the unsplit model: loss, backward, optimizer step."""

    def step(s: int) -> float:
        loss = loss_of(s)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def mlp_pair(size: str) -> tuple[Step, Step, Step, Step]:
    dims = dict(d_in=512, d_hidden=1024, n_classes=10) if size == "big" else dict(d_in=32, d_hidden=64, n_classes=5)
    batch = 256 if size == "big" else 16
    bottom, _, top = mlp_parts(0, **dims)
    cb, ct = copy.deepcopy(bottom), copy.deepcopy(top)
    fb = FLModel(fl_yaml(MLP_BOTTOM, LS=1.0), bottom)
    ft = FLModel(fl_yaml(MLP_TOP, LS=1.0, HIN="h"), top)
    opt = torch.optim.Adam([*cb.parameters(), *ct.parameters()], lr=1e-3, fused=True)  # as FLModel builds it
    db, dt = copy.deepcopy(cb), copy.deepcopy(ct)
    dopt = torch.optim.Adam([*db.parameters(), *dt.parameters()], lr=1e-3)  # torch's default implementation
    batches = [mlp_batch(s, batch=batch, d_in=dims["d_in"], n_classes=dims["n_classes"]) for s in range(4)]

    def split(s: int) -> float:
        b = batches[s % 4]
        h = fb.forward_one_step({"x": b["x"]})
        loss = ft.forward_one_step({"y": b["y"]}, h)["loss"]
        fb.backward_one_step({"x": b["x"]}, sens=ft.backward_one_step({"y": b["y"]}, h))
        return loss.item()

    central = unsplit_step(opt, lambda s: ct(cb(batches[s % 4]["x"]), batches[s % 4]["y"]))
    central_default = unsplit_step(dopt, lambda s: dt(db(batches[s % 4]["x"]), batches[s % 4]["y"]))

    mb, mt = copy.deepcopy(cb), copy.deepcopy(ct)
    ob, ot = (torch.optim.Adam(m.parameters(), lr=1e-3, fused=True) for m in (mb, mt))

    def manual(s: int) -> float:
        # The same split written by hand in plain PyTorch (detach at the cut, two optimizers).
        b = batches[s % 4]
        h = mb(b["x"])
        hd = h.detach().requires_grad_(True)
        loss = mt(hd, b["y"])
        loss.backward()
        ot.step()
        ot.zero_grad(set_to_none=True)
        h.backward(hd.grad)
        ob.step()
        ob.zero_grad(set_to_none=True)
        return loss.item()

    return split, central, manual, central_default


def gpt_pair(size: str) -> tuple[Step, Step, Step, Step]:
    cfg = (
        dict(vocab=4096, d=256, seq=128, n_layer=4, n_head=8)
        if size == "big"
        else dict(vocab=97, d=32, seq=16, n_layer=2, n_head=4)
    )
    batch = 8 if size == "big" else 4
    emb, bb, head = gpt_parts(0, **cfg)
    ce, cbb, ch = (copy.deepcopy(m) for m in (emb, bb, head))
    fe = FLModel(fl_yaml(GPT_EMBEDDING), emb)
    fbb = FLModel(fl_yaml(GPT_BACKBONE), bb)
    fh = FLModel(fl_yaml(GPT_HEAD), head)
    kw = dict(lr=1e-3, eps=1e-8, weight_decay=0.01)
    opt = torch.optim.AdamW([p for m in (ce, cbb, ch) for p in m.parameters()], fused=True, **kw)  # as FLModel builds it
    de, dbb, dh = (copy.deepcopy(m) for m in (ce, cbb, ch))
    dopt = torch.optim.AdamW([p for m in (de, dbb, dh) for p in m.parameters()], **kw)  # torch's default implementation
    batches = [gpt_batch(s, batch=batch, vocab=cfg["vocab"], seq=cfg["seq"]) for s in range(4)]

    def split(s: int) -> float:
        b = batches[s % 4]
        e = fe.forward_one_step(b)
        hidden = fbb.forward_one_step(None, {"embedding_table": e["embedding_table"]})
        loss = fh.forward_one_step({"input_ids": b["input_ids"], "word_table": e["word_table"]}, hidden)["output"]
        hs = fh.backward_one_step()
        fe.backward_one_step(sens={**fbb.backward_one_step(sens=hs), **hs})
        return loss.item()

    def unsplit_loss(e: torch.nn.Module, bb: torch.nn.Module, h: torch.nn.Module) -> Callable[[int], torch.Tensor]:
        def loss(s: int) -> torch.Tensor:
            b = batches[s % 4]
            x, table = e(b["input_ids"], b["position_id"])
            return h(bb(x), table, b["input_ids"])

        return loss

    central = unsplit_step(opt, unsplit_loss(ce, cbb, ch))
    central_default = unsplit_step(dopt, unsplit_loss(de, dbb, dh))

    me, mbb, mh = (copy.deepcopy(m) for m in (ce, cbb, ch))
    oe, obb, oh = (torch.optim.AdamW(m.parameters(), fused=True, **kw) for m in (me, mbb, mh))

    def manual(s: int) -> float:
        # The same three-way split by hand in plain PyTorch (detach at each cut, one optimizer each).
        b = batches[s % 4]
        x, table = me(b["input_ids"], b["position_id"])
        xd = x.detach().requires_grad_(True)
        hidden = mbb(xd)
        hd, td = hidden.detach().requires_grad_(True), table.detach().requires_grad_(True)
        loss = mh(hd, td, b["input_ids"])
        loss.backward()
        oh.step()
        oh.zero_grad(set_to_none=True)
        hidden.backward(hd.grad)
        obb.step()
        obb.zero_grad(set_to_none=True)
        torch.autograd.backward([x, table], [xd.grad, td.grad])
        oe.step()
        oe.zero_grad(set_to_none=True)
        return loss.item()

    return split, central, manual, central_default


VARIANTS = ("split", "central", "manual", "default")
MODELS = (("mlp", "big"), ("mlp", "tiny"), ("gpt", "big"), ("gpt", "tiny"))


def ratios(ms: dict[str, float]) -> dict[str, float]:
    return {
        "split_ms": ms["split"],
        "central_ms": ms["central"],
        "manual_ms": ms["manual"],
        "central_default_ms": ms["default"],
        "ratio": ms["split"] / ms["central"],
        "manual_ratio": ms["manual"] / ms["central"],
        "flmodel_vs_manual": ms["split"] / ms["manual"],
        "split_vs_central_default": ms["split"] / ms["default"],
        "overhead_us": (ms["split"] - ms["central"]) * 1e3,
    }


def make(name: str, size: str) -> tuple[Step, Step, Step, Step]:
    return (mlp_pair if name == "mlp" else gpt_pair)(size)


def measure_interleaved(fns: tuple[Step, ...], steps: int) -> dict[str, float]:
    """Median step times of the variants in one process, in a rotating order so noise hits all alike."""
    for s in range(3):
        for fn in fns:
            fn(s)
    times: dict[str, list[float]] = {n: [] for n in VARIANTS}
    orders = list(itertools.permutations(range(len(VARIANTS))))
    for s in range(steps):
        for i in orders[s % len(orders)]:
            t0 = time.perf_counter()
            fns[i](s)
            times[VARIANTS[i]].append(time.perf_counter() - t0)
    return ratios({n: statistics.median(v) * 1e3 for n, v in times.items()})


def child_times(variant: str, steps: int) -> dict[str, list[float]]:
    """Step times (s) of one variant on every model, in a process that runs nothing else."""
    out = {}
    for name, size in MODELS:
        fn = make(name, size)[VARIANTS.index(variant)]
        n = steps if size == "big" else steps * 4
        for s in range(3):
            fn(s)
        times = []
        for s in range(n):
            t0 = time.perf_counter()
            fn(s)
            times.append(time.perf_counter() - t0)
        out[f"{name}-{size}"] = times
    return out


def adam_optimizers() -> dict[str, torch.optim.Optimizer]:
    """Adam over the big MLP's parameters (1.6M), with gradients, in torch's three implementations (fused:
    what FLModel builds from the YAML; foreach; the for-loop torch picks on CPU by default)."""
    bottom, _, top = mlp_parts(0, d_in=512, d_hidden=1024, n_classes=10)
    kinds = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop (torch default on CPU)": {}}
    opts = {}
    for name, kw in kinds.items():
        params = [p.detach().clone().requires_grad_(True) for p in (*bottom.parameters(), *top.parameters())]
        for p in params:
            p.grad = torch.randn_like(p)
        opts[name] = torch.optim.Adam(params, lr=1e-3, **kw)
    return opts


def optimizer_steps(steps: int) -> dict[str, float]:
    """Median ms of one Adam step (adam_optimizers) with cold caches: the three implementations stepped in
    turns, so each step finds its state (parameters, gradients, moments: 26 MB each) evicted by the
    others', as in a training step where forward and backward run between optimizer steps."""
    opts = adam_optimizers()
    times: dict[str, list[float]] = {n: [] for n in opts}
    for s in range(steps + 3):
        for name in list(opts) if s % 2 else list(opts)[::-1]:
            t0 = time.perf_counter()
            opts[name].step()
            if s >= 3:
                times[name].append(time.perf_counter() - t0)
    return {n: statistics.median(v) * 1e3 for n, v in times.items()}


def optimizer_steps_warm(steps: int, rounds: int = 3) -> dict[str, float]:
    """Median ms of one Adam step (adam_optimizers) with warm caches: one optimizer stepped repeatedly
    (``steps`` times per round after 3 untimed steps), the implementations taking turns by round in a
    rotating order so that slow drifts of the machine fall on all alike."""
    opts = adam_optimizers()
    names = list(opts)
    per_round = max(1, steps // rounds)
    times: dict[str, list[float]] = {n: [] for n in opts}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            for s in range(per_round + 3):
                t0 = time.perf_counter()
                opts[name].step()
                if s >= 3:
                    times[name].append(time.perf_counter() - t0)
    return {n: statistics.median(v) * 1e3 for n, v in times.items()}


TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(256 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def run_config(env: dict[str, str], steps: int, rounds: int, same_process: bool) -> dict[str, dict[str, float]]:
    def child(*extra: str) -> str:
        return (
            subprocess.run(
                [sys.executable, __file__, "--steps", str(steps), *extra], env=env, check=True, capture_output=True, text=True
            )
            .stdout.strip()
            .splitlines()[-1]
        )

    if same_process:
        return json.loads(child("--child-interleaved"))
    # Each variant in a process of its own (what a training run of it sees: the allocator's state is
    # its own), the variants' processes alternating in a rotating order over the rounds.
    times: dict[str, dict[str, list[float]]] = {f"{n}-{s}": {v: [] for v in VARIANTS} for n, s in MODELS}
    for r in range(rounds):
        for v in VARIANTS[r % 4 :] + VARIANTS[: r % 4]:
            for model, ts in json.loads(child("--child-variant", v)).items():
                times[model][v].extend(ts)
    return {m: ratios({v: statistics.median(ts) * 1e3 for v, ts in per.items()}) for m, per in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60, help="steps per process and round on the big models (x4 tiny)")
    ap.add_argument(
        "--own-process",
        action="store_true",
        help="run each variant in a process of its own (its allocator state its own, as in a real run; "
        "noisier: processes differ by a few %%) instead of interleaved step by step in one process",
    )
    ap.add_argument("--rounds", type=int, default=3, help="with --own-process: rounds of one process per variant")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child-variant", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--child-interleaved", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_variant:
        print(json.dumps(child_times(args.child_variant, args.steps)))
        return
    if args.child_interleaved:
        print(
            json.dumps(
                {f"{n}-{s}": measure_interleaved(make(n, s), args.steps if s == "big" else args.steps * 4) for n, s in MODELS}
            )
        )
        return
    # glibc returns freed blocks above its (dynamic) mmap threshold to the kernel and trims its heap,
    # so a step's large temporaries may be page-faulted in again on every step, depending on the
    # allocation history of the process. Two configurations: glibc defaults, and glibc told to keep
    # freed memory (what splitlink train sets; or use jemalloc/tcmalloc).
    results = {}
    for label, extra in (("glibc defaults", {}), ("glibc keeps freed memory, as splitlink train sets it", TUNED_MALLOC)):
        results[label] = run_config({**os.environ, **extra}, args.steps, args.rounds, not args.own_process)
    optim_ms = optimizer_steps(args.steps)
    optim_warm_ms = optimizer_steps_warm(args.steps)
    if args.json:
        print(
            json.dumps(
                {
                    "threads": torch.get_num_threads(),
                    "tuned_env": TUNED_MALLOC,
                    "adam_step_ms": optim_ms,
                    "adam_step_warm_ms": optim_warm_ms,
                    "mode": "same process" if not args.own_process else "one process per variant",
                    "results": results,
                },
                indent=1,
            )
        )
        return
    how = (
        "the variants interleaved step by step in one process"
        if not args.own_process
        else f"each variant in its own process, {args.rounds} rounds in rotating order"
    )
    print(
        f"torch threads: {torch.get_num_threads()}; medians of {args.steps * (1 if not args.own_process else args.rounds)} "
        f"(big) / {args.steps * 4 * (1 if not args.own_process else args.rounds)} (tiny) steps; {how}"
    )
    for label, rows in results.items():
        print(f"\n[{label}]" + ("" if label == "glibc defaults" else " " + " ".join(f"{k}={v}" for k, v in TUNED_MALLOC.items())))
        print(
            f"{'model':<10} {'split ms':>9} {'central ms':>11} {'by-hand ms':>11} {'split/central':>14} "
            f"{'by-hand/central':>16} {'split/by-hand':>14} {'central,default ms':>19} {'split/that':>11}"
        )
        for k, r in rows.items():
            print(
                f"{k:<10} {r['split_ms']:>9.3f} {r['central_ms']:>11.3f} {r['manual_ms']:>11.3f} {r['ratio']:>13.3f}x "
                f"{r['manual_ratio']:>15.3f}x {r['flmodel_vs_manual']:>13.3f}x {r['central_default_ms']:>19.3f} "
                f"{r['split_vs_central_default']:>10.3f}x"
            )
    print(
        "\nsplit: FLModels passing tensors in-process; central: the unsplit model, same (fused) optimizer; by-hand: the same "
        "split written in\nplain PyTorch (detach at each cut, one optimizer per part), i.e. what splitting costs "
        "before any library;\ncentral,default: the unsplit model with torch's default (for-loop) optimizer."
    )
    print("target: split/central <= 1.05 on the big models")
    loop = "for-loop (torch default on CPU)"
    print(
        f"\nAdam step over the big MLP's 1.6M parameters (medians of {args.steps} cold / {3 * max(1, args.steps // 3)} "
        "warm steps, this process):"
    )
    print(
        "  cold caches (the three stepped in turns): "
        + ", ".join(f"{k} {v:.3f} ms" for k, v in optim_ms.items())
        + f"; for-loop/fused {optim_ms[loop] / optim_ms['fused']:.1f}x"
    )
    print(
        "  warm caches (one optimizer stepped repeatedly): "
        + ", ".join(f"{k} {v:.3f} ms" for k, v in optim_warm_ms.items())
        + f"; for-loop/fused {optim_warm_ms[loop] / optim_warm_ms['fused']:.1f}x"
    )


if __name__ == "__main__":
    main()
