"""Soak: many small split-training steps between two processes while the network misbehaves.

The follower (bottom MLP) and the leader (top MLP + loss) train over mutual TLS, each reaching the
other only through a fault proxy run by this script. While they train, the script injects random
faults: flipped bytes in flight, connections cut for a moment, delays. At the end it checks that the
final parameters equal those of a fault-free run of the same seed (bit for bit) and prints steps/s,
the faults injected, how many HIT (a flipped byte in a live stream, a cut that closed a live
connection) and that every one was survived. Not part of CI at full length (it runs for minutes).

Faults come at random times (``--seed``), or with ``--fault-every-bytes N`` at traffic positions:
each proxy's next fault (flipped byte and cut in turn) lands after 0.5N..1.5N (drawn from the seed)
more bytes of its stream, so every fault hits and a short run surely meets some of each kind (the
smoke test in tests/test_benchmarks.py). ``--json`` prints one JSON object with every count.

    python benchmarks/soak.py --steps 10000 [--seal] [--json] [--fault-every-bytes 200000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "support"))


def party(a: argparse.Namespace) -> None:
    import torch
    from split_nets import MLP_BOTTOM, MLP_TOP, mlp_batch, mlp_parts

    from splitlink import FLModel, FLYamlData, ServerConfig, SSLConfig, VerticalFederatedCommunicator

    torch.set_num_threads(1)
    role, peer = a.party, ("follower" if a.party == "leader" else "leader")
    bottom, _, top = mlp_parts(0)
    c = Path(a.certs)
    ssl = SSLConfig(
        server_cert_path=str(c / f"{role}.server.p12"),
        client_cert_path=str(c / f"{role}.client.p12"),
        ca_cert_path=str(c / "ca.crt"),
        server_password="splitlink",
        client_password="splitlink",
    )
    with VerticalFederatedCommunicator(
        ServerConfig(role, f"127.0.0.1:{a.port}"),
        ServerConfig(peer, a.peer_address),
        enable_ssl=True,
        ssl_config=ssl,
        seal=a.seal,
        retry_deadline=60,
    ) as comm:

        def rss_mib() -> float:
            return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

        t0 = time.perf_counter()
        rss_at: dict[int, float] = {}
        if role == "follower":
            m = FLModel(FLYamlData("<bottom>", text=MLP_BOTTOM.replace("LS", "1.0")), bottom)
            for s in range(a.steps):
                if s in (a.steps // 10, a.steps - 1):
                    rss_at[s] = rss_mib()
                h = m.forward_one_step({"x": mlp_batch(s % 64)["x"]})
                comm.send_tensors("leader", dict(h), step=s)
                m.backward_one_step(sens=comm.receive("leader", 120))
            net = bottom
        else:
            m = FLModel(FLYamlData("<top>", text=MLP_TOP.replace("LS", "1.0").replace("HIN", "h")), top)
            for s in range(a.steps):
                if s in (a.steps // 10, a.steps - 1):
                    rss_at[s] = rss_mib()
                y = {"y": mlp_batch(s % 64)["y"]}
                h = comm.receive("follower", 120)
                m.forward_one_step(y, h)
                comm.send_tensors("follower", m.backward_one_step(y, h), step=s)
            net = top
        loop_s = time.perf_counter() - t0
        digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in net.parameters())).hexdigest()
        comm.send_tensors(peer, {"done": torch.ones(1)})
        comm.receive(peer, 120)
    print(
        json.dumps(
            {
                "role": role,
                "params_sha256": digest,
                "loop_s": loop_s,
                "rss_growth_mib": rss_at[a.steps - 1] - rss_at[a.steps // 10] if len(rss_at) == 2 else 0.0,
            }
        )
    )
    sys.stdout.flush()
    os._exit(0)


def run(steps: int, certs: str, seal: bool, faults: bool, seed: int, every_bytes: int = 0) -> dict[str, Any]:
    from faultproxy import FaultProxy

    from splitlink.util import free_ports

    lp, fp = free_ports(2)
    to_leader, to_follower = FaultProxy(lp), FaultProxy(fp)
    procs = {}
    for role, port, peer_addr in (("follower", fp, to_leader.address), ("leader", lp, to_follower.address)):
        procs[role] = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--party",
                role,
                "--port",
                str(port),
                "--peer-address",
                peer_addr,
                "--certs",
                certs,
                "--steps",
                str(steps),
            ]
            + (["--seal"] if seal else []),
            stdout=subprocess.PIPE,
            stderr=open(Path(certs) / f"{role}.{int(faults)}.err", "w"),
            text=True,
        )
    injected = {"corrupt": 0, "cut": 0, "delay": 0}
    stop = threading.Event()

    def injector() -> None:
        rng = random.Random(seed)
        while not stop.wait(rng.uniform(0.2, 0.8)):
            proxy = rng.choice((to_leader, to_follower))
            kind = rng.choice(("corrupt", "cut", "delay"))
            if kind == "corrupt":
                proxy.corrupt_after = proxy.forwarded + rng.randint(100, 20_000)
            elif kind == "cut":
                proxy.cut(rng.uniform(0.05, 0.5))
            else:
                proxy.delay_s = rng.uniform(0.001, 0.02)
                time.sleep(0.3)
                proxy.delay_s = 0.0
            injected[kind] += 1

    def byte_injector() -> None:
        # Per proxy, faults alternate (to the leader: a flipped byte first; to the follower: a cut first) at
        # positions drawn from one generator per proxy, so where they land does not depend on thread timing.
        rngs = [random.Random(f"{seed}/{i}") for i in range(2)]
        turn = [0, 1]
        while not stop.wait(0.005):
            for i, proxy in enumerate((to_leader, to_follower)):
                if proxy.corrupt_after is not None or proxy.cut_after is not None:
                    continue  # the armed fault has not landed yet
                at = proxy.forwarded + rngs[i].randint(every_bytes // 2, every_bytes * 3 // 2)
                if turn[i] % 2 == 0:
                    proxy.corrupt_after = at
                    injected["corrupt"] += 1
                else:
                    proxy.cut_seconds = rngs[i].uniform(0.05, 0.3)
                    proxy.cut_after = at
                    injected["cut"] += 1
                turn[i] += 1

    t0 = time.perf_counter()
    thread = threading.Thread(target=byte_injector if every_bytes else injector, daemon=True)
    if faults:
        thread.start()
    out, loop, growth = {}, 0.0, {}
    for role, p in procs.items():
        stdout, _ = p.communicate(timeout=7200)
        if p.returncode != 0:
            err = (Path(certs) / f"{role}.{int(faults)}.err").read_text()[-2000:]
            raise RuntimeError(f"{role} failed (exit {p.returncode}) under faults {injected}:\n{err}")
        res = json.loads(stdout.strip().splitlines()[-1])
        out[role] = res["params_sha256"]
        loop = max(loop, res["loop_s"])
        growth[role] = res["rss_growth_mib"]
    wall = time.perf_counter() - t0
    stop.set()
    if faults:
        thread.join()
    proxies = (to_leader, to_follower)
    # armed but never reached before the run ended (traffic-position schedule): not injected
    injected["corrupt"] -= sum(p.corrupt_after is not None for p in proxies) if every_bytes else 0
    injected["cut"] -= sum(p.cut_after is not None for p in proxies)
    hits = {
        "bytes_corrupted": sum(p.corrupted for p in proxies),
        "cuts_hit": sum(p.cuts_hit for p in proxies),
        "connections": sum(p.connections for p in proxies),
        "bytes_forwarded": sum(p.forwarded for p in proxies),
    }
    for p in proxies:
        p.close()
    return {
        "wall_s": wall,
        "train_s": loop,
        "steps_per_s": steps / loop,
        "rss_growth_mib": growth,
        "faults": injected,
        **hits,
        "params": out,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--seal", action="store_true", help="AES-GCM sealing on top of TLS")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--fault-every-bytes",
        type=int,
        default=0,
        metavar="N",
        help="faults at traffic positions, about every N bytes per direction (default: at random times)",
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--party", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--peer-address", help=argparse.SUPPRESS)
    ap.add_argument("--certs", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.party:
        party(a)
        return
    from splitlink.certs import make_dev_certs

    with tempfile.TemporaryDirectory() as tmp:
        make_dev_certs(tmp, ["leader", "follower"])
        clean = run(a.steps, tmp, a.seal, faults=False, seed=a.seed)
        faulty = run(a.steps, tmp, a.seal, faults=True, seed=a.seed, every_bytes=a.fault_every_bytes)
    same = clean["params"] == faulty["params"]
    result = {"steps": a.steps, "seal": a.seal, "fault_free": clean, "with_faults": faulty, "params_equal": same}
    if a.json:
        print(json.dumps(result, indent=1))
    else:
        f = faulty["faults"]
        print(f"{a.steps} steps, TLS{' + AES-GCM sealing' if a.seal else ''}, two processes on loopback")
        print(
            f"fault-free:  {clean['train_s']:.1f} s training ({clean['wall_s']:.1f} s with process start), "
            f"{clean['steps_per_s']:.0f} steps/s"
        )
        print(
            f"with faults: {faulty['train_s']:.1f} s training, {faulty['steps_per_s']:.0f} steps/s; injected {sum(f.values())} "
            f"faults ({f['corrupt']} corrupted bytes armed, {faulty['bytes_corrupted']} hit a stream; {f['cut']} "
            f"connection cuts, {faulty['cuts_hit']} closed a live connection; {f['delay']} delay bursts; "
            f"{faulty['connections']} connections in all), all survived"
        )
        g = faulty["rss_growth_mib"]
        print(
            f"resident memory from step {a.steps // 10} to the last, under faults: leader {g['leader']:+.1f} MiB, "
            f"follower {g['follower']:+.1f} MiB"
        )
        print(f"final parameters equal to the fault-free run, bit for bit: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
