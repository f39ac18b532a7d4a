"""ECDH-PSI between two processes over mutual TLS on loopback.

Per size (ids per side, 50% overlap): wall time of the intersection (after both parties are
connected), ids per second per party, bytes each party sent per id. Baseline measured in the same
run: OpenSSL's X25519 derivations per second on one core through the same EVP calls (a fresh peer
key per derivation, as blinding needs). A party does 2 derivations per id (its own ids, then the
peer's), so with C cores one party can reach at most rate * C / 2 ids/s; here both parties share the
machine's cores, so the attainable rate per party is rate * C / 4. ``--json`` prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SIZES = (100_000, 1_000_000)


def party(args: argparse.Namespace) -> None:
    import torch

    from splitlink import psi
    from splitlink.channel import ServerConfig, SSLConfig, VerticalFederatedCommunicator

    role, peer = args.party, ("follower" if args.party == "leader" else "leader")
    start = 0 if role == "leader" else args.n // 2
    ids = [f"user-{i:010d}" for i in range(start, start + args.n)]
    c = Path(args.certs)
    ssl = SSLConfig(
        server_cert_path=str(c / f"{role}.server.p12"),
        client_cert_path=str(c / f"{role}.client.p12"),
        ca_cert_path=str(c / "ca.crt"),
        server_password="splitlink",
        client_password="splitlink",
    )
    sent = {"bytes": 0}
    with VerticalFederatedCommunicator(
        ServerConfig(role, f"127.0.0.1:{args.port}"),
        ServerConfig(peer, f"127.0.0.1:{args.peer_port}"),
        enable_ssl=True,
        ssl_config=ssl,
    ) as comm:
        real = comm.send_tensors

        def counting(target: str, tensors: Any, **kw: Any) -> None:
            def size(x: Any) -> int:
                return sum(size(v) for v in x.values()) if isinstance(x, dict) else int(x.numel() * x.element_size())

            sent["bytes"] += size(tensors)
            real(target, tensors, **kw)

        comm.send_tensors = counting  # type: ignore[method-assign]
        comm.send_tensors(peer, {"ready": torch.ones(1)})  # both connected before the clock starts
        comm.receive(peer, 120)
        sent["bytes"] = 0
        t0 = time.perf_counter()
        out = psi.intersect(ids, comm, peer, role=role)
        wall = time.perf_counter() - t0
        comm.send_tensors(peer, {"bye": torch.ones(1)})
        comm.receive(peer, 120)
    peak = next(
        int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:")
    )  # this process's own peak resident memory, KiB
    print(
        json.dumps(
            {
                "role": role,
                "n": args.n,
                "wall_s": wall,
                "intersection": len(out),
                "bytes_sent": sent["bytes"],
                "peak_rss_mib": peak / 1024,
            }
        )
    )
    sys.stdout.flush()
    os._exit(0)


def run_size(n: int, certs: str) -> dict[str, Any]:
    from splitlink.util import free_ports

    p1, p2 = free_ports(2)
    procs = {}
    for role, me, peer in (("follower", p2, p1), ("leader", p1, p2)):
        procs[role] = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--party",
                role,
                "--n",
                str(n),
                "--port",
                str(me),
                "--peer-port",
                str(peer),
                "--certs",
                certs,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
    res = {}
    for role, p in procs.items():
        out, _ = p.communicate(timeout=3600)
        if p.returncode != 0:
            raise RuntimeError(f"{role} failed")
        res[role] = json.loads(out.strip().splitlines()[-1])
    assert res["leader"]["intersection"] == res["follower"]["intersection"] == n // 2
    wall = max(r["wall_s"] for r in res.values())
    return {
        "n": n,
        "wall_s": wall,
        "ids_per_s_per_party": n / wall,
        "bytes_per_id": max(r["bytes_sent"] for r in res.values()) / n,
        "peak_rss_mib_per_party": max(r["peak_rss_mib"] for r in res.values()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--party", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--peer-port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--certs", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.party:
        party(args)
        return
    from splitlink import _core
    from splitlink.certs import make_dev_certs

    cores = len(os.sched_getaffinity(0))
    rate = sorted(_core.psi.x25519_derives_per_second(1.0) for _ in range(3))[1]
    bound_alone = rate * cores / 2
    bound_shared = rate * cores / 4
    with tempfile.TemporaryDirectory() as tmp:
        make_dev_certs(tmp, ["leader", "follower"])
        rows = [run_size(n, tmp) for n in args.sizes]
    rate_after = sorted(_core.psi.x25519_derives_per_second(1.0) for _ in range(3))[1]
    for r in rows:
        r["of_bound_shared"] = r["ids_per_s_per_party"] / bound_shared
        r["of_bound_alone"] = r["ids_per_s_per_party"] / bound_alone
    result = {
        "cores": cores,
        "x25519_per_s_per_core": rate,
        "x25519_per_s_per_core_after": rate_after,
        "bound_ids_per_s_one_party_alone": bound_alone,
        "bound_ids_per_s_both_parties_sharing": bound_shared,
        "rows": rows,
    }
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(
        f"baseline: OpenSSL X25519 {rate:,.0f} derivations/s on one core (median of 3; {rate_after:,.0f} after the "
        f"runs), {cores} cores"
    )
    print(
        f"bound per party: {bound_alone:,.0f} ids/s with the machine to itself (rate x cores / 2 derivations per id); "
        f"{bound_shared:,.0f} ids/s with both parties on this machine"
    )
    print(
        f"{'ids/side':>10} {'wall s':>8} {'ids/s/party':>12} {'of shared bound':>16} {'of alone bound':>15} {'bytes/id':>9}"
        f" {'peak MiB/party':>15}"
    )
    for r in rows:
        print(
            f"{r['n']:>10,} {r['wall_s']:>8.2f} {r['ids_per_s_per_party']:>12,.0f} {r['of_bound_shared']:>15.2f}x "
            f"{r['of_bound_alone']:>14.2f}x {r['bytes_per_id']:>9.1f} {r['peak_rss_mib_per_party']:>15,.0f}"
        )
    print("(peak memory includes the party's own list of ids as Python strings)")


if __name__ == "__main__":
    main()
