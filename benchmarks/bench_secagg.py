"""Secure aggregation (SecAgg / SecAgg+ with dropout recovery) against plain FedAvg, in one run.

For n in-process clients and vectors of 1M and (without ``--quick``) 124M float32 (GPT-2 small):

* client masking: ``SecAggClient.masked_input`` (decrypting the neighbours' shares, stochastic
  quantisation, pairwise and self masks in one native AES-CTR pass, reduction to the ring), median
  over the clients of a round (clients run in parallel on their own machines);
* client setup: ``advertise`` + ``share`` (key generation, Shamir, AEAD), median over the clients;
* server unmasking: ``receive_masked`` of every client (checks, and the ring sum as inputs arrive),
  ``unmask_request``, ``receive_unmask`` of every survivor and ``result`` (Shamir reconstruction, the
  survivors' self masks removed, dequantisation);
* the baseline, plain FedAvg on the same float32 tensors: the weighted mean ``sum_i w_i x_i`` with
  ``w_i = n_i / sum n`` (torch, in place), which is the aggregator's whole work in a plain round;
* traffic per client: every byte a client sends or receives for secure aggregation (advertisement,
  roster, shares both ways, masked input, unmask request and response) against the float32 update
  a plain client uploads.

"secure round" = median client masking + client setup + server unmasking; the target is <= 2x plain
FedAvg at 124M and n = 10, traffic <= 1.1x. Each configuration runs with k = n-1 (classic SecAgg)
and, where smaller, a SecAgg+ neighbourhood k ~ 2 log2 n. Medians over ``--repeat`` fresh rounds
(keys are per round), timed in turns with the baseline. ``--json`` prints JSON.

The server adds each masked input to a running ring sum on receipt and the clients here share one
update tensor at 124M, so memory stays at a few vectors whatever n: n = 30 at 124M (~4 GB, minutes of
AES for k = 29) runs with ``--clients 30 --big-n 30``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from typing import Any

import torch

from splitlink.horizontal.secagg import SecAggClient, SecAggConfig, SecAggServer

M = 1_000_000
GPT2_SMALL = 124_439_808  # parameters of GPT-2 small


def neighbourhoods(n: int) -> list[int]:
    ks = [n - 1]
    plus = 2 * math.ceil(math.log2(n))
    if plus < n - 1:
        ks.append(plus)
    return ks


THREADS = 0  # splitlink's native threads (0 = all); --threads sets it and torch's alike


def one_round(n: int, k: int, updates: list[torch.Tensor], round_id: int) -> dict[str, Any]:
    names = [f"client{i:03d}" for i in range(n)]
    cfg = SecAggConfig(threshold=(k + 1) // 2 + 1, clip=4.0, neighbours=k, bits=16, ring_bits=32)
    server = SecAggServer(cfg, round_id, names, threads=THREADS)
    clients = {c: SecAggClient(c, cfg, round_id, names, rounding_seed=i, threads=THREADS) for i, c in enumerate(names)}
    traffic = dict.fromkeys(names, 0)
    setup: dict[str, float] = {}
    for c in names:
        t0 = time.perf_counter()
        ad = clients[c].advertise()
        setup[c] = time.perf_counter() - t0
        traffic[c] += len(ad)
        server.receive_advert(c, ad)
    for c in names:
        roster = server.roster(c)
        traffic[c] += sum(len(v) for v in roster.values())
        t0 = time.perf_counter()
        shares = clients[c].share(roster)
        setup[c] += time.perf_counter() - t0
        traffic[c] += sum(len(v) for v in shares.values())
        server.receive_shares(c, shares)
    mask_times = []
    receive = 0.0  # the server's work on the masked inputs as they arrive
    for c, x in zip(names, updates):
        mine = server.shares_for(c)
        traffic[c] += sum(len(v) for v in mine.values())
        t0 = time.perf_counter()
        masked = clients[c].masked_input(x, mine)
        mask_times.append(time.perf_counter() - t0)
        traffic[c] += masked.numel() * masked.element_size()
        t0 = time.perf_counter()
        server.receive_masked(c, masked)  # checks it and adds it to the running ring sum
        receive += time.perf_counter() - t0
        del masked
    t0 = time.perf_counter()
    survivors, dropped = server.unmask_request()
    request = sum(len(s.encode()) + 2 for s in survivors + dropped)
    for c in survivors:
        resp = clients[c].unmask(survivors, dropped)
        traffic[c] += request + len(resp)
        server.receive_unmask(c, resp)
    total, report = server.result()
    unmask = time.perf_counter() - t0 + receive
    assert report.survivors == tuple(names) and total.numel() == updates[0].numel()
    return {
        "mask_s": statistics.median(mask_times),
        "setup_s": statistics.median(setup.values()),
        "unmask_s": unmask,
        "bytes_per_client": statistics.median(traffic.values()),
    }


def plain_fedavg(updates: list[torch.Tensor], counts: list[int]) -> torch.Tensor:
    total = float(sum(counts))
    acc = torch.zeros_like(updates[0])
    for x, c in zip(updates, counts):
        acc.add_(x, alpha=c / total)
    return acc


def measure(n: int, numel: int, repeat: int, distinct: bool) -> dict[str, Any]:
    g = torch.Generator().manual_seed(n)
    if distinct:
        updates = [torch.randn(numel, generator=g) for _ in range(n)]
    else:  # 124M: one tensor for every client (memory); the work per client is the same
        updates = [torch.randn(numel, generator=g)] * n
    counts = [100 + 7 * i for i in range(n)]
    rows: dict[str, Any] = {}
    for k in neighbourhoods(n):
        plain, secure = [], []
        if numel <= M:  # untimed warm-up round (first touch, OpenSSL and thread-pool start-up)
            plain_fedavg(updates, counts)
            one_round(n, k, updates, 10**6)
        for r in range(repeat):
            t0 = time.perf_counter()
            plain_fedavg(updates, counts)
            plain.append(time.perf_counter() - t0)
            secure.append(one_round(n, k, updates, r))
        p = statistics.median(plain)
        row = {key: statistics.median(s[key] for s in secure) for key in secure[0]}
        row["plain_fedavg_s"] = p
        row["plain_bytes_per_client"] = numel * 4
        row["secure_round_s"] = row["mask_s"] + row["setup_s"] + row["unmask_s"]
        row["ratios"] = {
            "secure_round_vs_plain": row["secure_round_s"] / p,
            "server_unmask_vs_plain": row["unmask_s"] / p,
            "client_mask_vs_plain": row["mask_s"] / p,
            "traffic_vs_plain": row["bytes_per_client"] / row["plain_bytes_per_client"],
        }
        rows[f"k={k}" + (" (SecAgg)" if k == n - 1 else " (SecAgg+)")] = row
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[3, 10, 30])
    ap.add_argument("--quick", action="store_true", help="1M floats only")
    ap.add_argument("--repeat", type=int, default=3, help="rounds per configuration at 1M (124M: 1)")
    ap.add_argument("--big-n", type=int, nargs="*", default=[3, 10], help="client counts also run at 124M")
    ap.add_argument(
        "--threads", type=int, default=0, help="threads for torch (the baseline) and splitlink alike; 0 = their defaults"
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    global THREADS
    if args.threads:
        THREADS = args.threads
        torch.set_num_threads(args.threads)
    sizes = [M] if args.quick else [M, GPT2_SMALL]
    out: dict[str, Any] = {"threads": torch.get_num_threads(), "results": {}}
    for numel in sizes:
        for n in args.clients:
            if numel > M and n not in args.big_n:
                continue
            rows = measure(n, numel, args.repeat if numel <= M else 1, distinct=numel <= M)
            out["results"][f"n={n} numel={numel}"] = rows
            if not args.json:
                for k, r in rows.items():
                    ra = r["ratios"]
                    print(
                        f"n={n:3d} numel={numel:>11,d} {k:16s} client mask {r['mask_s'] * 1e3:9.1f} ms  setup "
                        f"{r['setup_s'] * 1e3:7.1f} ms  server unmask {r['unmask_s'] * 1e3:9.1f} ms  plain FedAvg "
                        f"{r['plain_fedavg_s'] * 1e3:8.1f} ms  round {ra['secure_round_vs_plain']:6.2f}x  "
                        f"server {ra['server_unmask_vs_plain']:5.2f}x  traffic {ra['traffic_vs_plain']:.4f}x",
                        flush=True,
                    )
    if args.json:
        json.dump(out, sys.stdout, indent=1)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
