"""Step time of the N-party Wide&Deep split (scenario wide_deep_nparty) with 1, 2 and 4 followers:
the aggregation layer ``concat``, ``sum`` and secure ``sum`` (pairwise masks among the followers,
fixed point in Z/2^64) against the same model unsplit, all measured in the same run.

Every party runs in this one process over in-process communicators (tensors by reference, no
serialization), each variant's step being every follower's forward, the leader's step and every
follower's backward in turn: the step time is the parties' compute added up, so the masking cost
(each follower masks its embeddings, the leader sums the ring elements) is measured against all the
compute it comes with, not hidden behind parallel parties. The variants are stepped in turns
(``interleaved_medians``) so machine noise falls on all alike; medians of ``--steps`` steps after
warm-up. Like ``splitlink train``, the process keeps freed memory for reuse (``--no-keep-freed-memory``:
glibc's default, where every fresh tensor, masked ones included, is faulted in anew). Ratios: each split variant /
unsplit, and secure sum / plain sum (target <= 1.10). Also timed
alone (less noisy than a difference of step times): the masking itself per step (every follower masks
its embeddings, the leader sums and decodes), and its share of a plain-sum step.
``--quick`` runs tiny sizes (a smoke test); ``--json`` prints JSON.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import interleaved_medians, median_time  # noqa: E402
from splitlink.examples import criteo_nparty as cn  # noqa: E402
from splitlink.examples.criteo import FOLLOWER_FIELDS, LEADER_FIELDS, PartyData  # noqa: E402
from splitlink.examples.wide_deep import WideDeepConfig  # noqa: E402
from splitlink.model import FLModel  # noqa: E402
from splitlink.runtime.multiparty import combine, train_stream  # noqa: E402


def data(rows: int, vocab: int, seed: int) -> tuple[PartyData, PartyData]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(rows, len(LEADER_FIELDS) + len(FOLLOWER_FIELDS)), dtype=np.int32)
    wts = np.ones(ids.shape, dtype=np.float32)
    labels = (rng.random(rows) < 0.25).astype(np.float32)
    sid = np.arange(rows, dtype=np.int64)
    k = len(LEADER_FIELDS)
    return (
        PartyData(sid, np.ascontiguousarray(ids[:, :k]), np.ascontiguousarray(wts[:, :k]), labels),
        PartyData(sid, np.ascontiguousarray(ids[:, k:]), np.ascontiguousarray(wts[:, k:]), None),
    )


def split_step(leader: cn.NLeader, followers: list[cn.NFollower]) -> Callable[[], None]:
    batches = itertools.cycle([idx for _, idx in leader.schedule.steps(0)])

    def step() -> None:
        idx = next(batches)
        for f in followers:
            f.forward(idx)
        leader.train_step(idx)
        for f in followers:
            f.backward()

    return step


def unsplit_step(leader: cn.NLeader, followers: list[cn.NFollower]) -> Callable[[], None]:
    """The same networks and optimizers (built by FLModel from the same YAMLs) as one model: the loss plus
    every bottom's L2 term, loss.backward(), each optimizer's step."""
    nets = [copy.deepcopy(leader.bottom_net)] + [copy.deepcopy(f.net) for f in followers]
    top = copy.deepcopy(leader.top_net)
    model = cn.UnsplitModel(nets[0], nets[1:], top, "sum")
    opts = [
        o
        for m, net in (
            (leader.models["bottom"], nets[0]),
            (leader.models["top"], top),
            *((f.models["bottom"], n) for f, n in zip(followers, nets[1:])),
        )
        for o in FLModel(m.yaml, net).optimizers
    ]
    batches = itertools.cycle([idx for _, idx in leader.schedule.steps(0)])

    def step() -> None:
        idx = next(batches)
        feats = [(torch.from_numpy(leader.data.ids[idx]), torch.from_numpy(leader.data.wts[idx]))]
        feats += [(torch.from_numpy(f.data.ids[idx]), torch.from_numpy(f.data.wts[idx])) for f in followers]
        label = torch.from_numpy(np.ascontiguousarray(leader.data.labels[idx])).unsqueeze(1)
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss, l2 = model(feats, label)
        (loss + l2).backward()
        for o in opts:
            o.step()

    return step


def mask_cost(leader: cn.NLeader, followers: list[cn.NFollower], batch: int, deep: int, repeat: int) -> float:
    """What secure aggregation adds to a step, alone: every follower masks its two embeddings, the leader
    sums the ring elements and decodes (median of ``repeat``)."""
    gen = torch.Generator().manual_seed(0)
    emb = {
        "follower_wide_embedding": torch.randn(batch, 1, generator=gen),
        "follower_deep_embedding": torch.randn(batch, deep, generator=gen),
    }
    step = iter(range(10**9))

    def once() -> None:
        s = next(step)
        got = {f.me: f.session.mask(emb, lambda i: train_stream(s, i)) for f in followers}  # type: ignore[union-attr]
        for name, agg in leader.aggs.items():
            combine(agg, {p: got[p][name] for p in agg.parties})

    return median_time(once, repeat * 4, warmup=3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--followers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--vocab-size", type=int, default=50_000)
    ap.add_argument("--emb-dim", type=int, default=16)
    ap.add_argument("--deep-layers", type=int, nargs="+", default=[128, 64])
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 2 steps (a smoke test)")
    ap.add_argument(
        "--no-keep-freed-memory",
        action="store_true",
        help="leave glibc's malloc as it is (splitlink train keeps freed memory for reuse by default)",
    )
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.batch_size, a.vocab_size, a.emb_dim, a.deep_layers, a.steps = 100, 2000, 4, [16], 2
    torch.set_num_threads(a.threads)
    logging.disable(logging.INFO)
    kept = False
    if not a.no_keep_freed_memory:  # as every splitlink train process does (run-file keep_freed_memory)
        from splitlink.util import keep_freed_memory

        kept = keep_freed_memory()
    cfg = WideDeepConfig(vocab_size=a.vocab_size, emb_dim=a.emb_dim, deep_layers=tuple(a.deep_layers))
    leader_data, follower_data = data(a.batch_size * 8, a.vocab_size, seed=0)
    results: dict[str, Any] = {}
    for n in a.followers:
        shares = cn.split_follower(follower_data, n)
        fns: dict[str, Callable[[], None]] = {}
        variants = [("concat", "concat", False), ("sum", "sum", False)]
        if n >= 2:  # secure aggregation needs two followers to mask among
            variants.append(("secure_sum", "sum", True))
        base = secure_parties = None
        for name, agg, sec in variants:
            t = cn.NPartyConfig(
                epochs=1000,
                batch_size=a.batch_size,
                progress=False,
                eval_fraction=0.0,
                log_every=10**9,
                aggregate=agg,
                secure=sec,
            )
            leader, followers = cn.make_local(leader_data, shares, cfg, t)
            fns[name] = split_step(leader, followers)
            if agg == "sum" and not sec:
                base = (leader, followers)
            if sec:
                secure_parties = (leader, followers)
        assert base is not None
        fns["unsplit"] = unsplit_step(*base)
        med = interleaved_medians(fns, a.steps, warmup=2)
        row: dict[str, Any] = {f"{k}_ms": v * 1e3 for k, v in med.items()}
        for k in med:
            if k != "unsplit":
                row[f"{k}_vs_unsplit"] = med[k] / med["unsplit"]
        if "secure_sum" in med:
            row["secure_vs_plain_sum"] = med["secure_sum"] / med["sum"]
            assert secure_parties is not None
            row["masking_ms"] = mask_cost(*secure_parties, a.batch_size, a.deep_layers[-1], a.steps) * 1e3
            row["masking_share_of_sum_step"] = row["masking_ms"] / row["sum_ms"]
        results[str(n)] = row
    out = {
        "config": {
            "batch_size": a.batch_size,
            "vocab_size": a.vocab_size,
            "emb_dim": a.emb_dim,
            "deep_layers": a.deep_layers,
            "steps": a.steps,
            "threads": a.threads,
            "keep_freed_memory": kept,
        },
        "results": results,
        "target_secure_vs_plain_sum": 1.10,
    }
    if a.json:
        print(json.dumps(out, indent=1))
        return
    print(f"N-party Wide&Deep step time (ms, median of {a.steps}; batch {a.batch_size}, in process)")
    print(f"{'followers':>9} {'unsplit':>9} {'concat':>9} {'sum':>9} {'secure sum':>11} {'secure/sum':>11} {'masking':>9}")
    for n, r in results.items():
        sec = (
            f"{r['secure_sum_ms']:11.2f} {r['secure_vs_plain_sum']:11.3f} {r['masking_ms']:9.3f}"
            if "secure_sum_ms" in r
            else f"{'-':>11} {'-':>11} {'-':>9}"
        )
        print(f"{n:>9} {r['unsplit_ms']:9.2f} {r['concat_ms']:9.2f} {r['sum_ms']:9.2f} {sec}")


if __name__ == "__main__":
    main()
