"""Restart soak: Wide&Deep trained by `splitlink train` (two processes, mutual TLS) while a random party
is killed with SIGKILL every few seconds and restarted alone with resume.

Each kill is survived without stopping the other party: the survivor learns that its peer is a new
process, both go back to the newest checkpoint they both hold, and training goes on. At the end the
script compares every tensor of both parties' final checkpoints (model and optimizer state) with a
run of the same seed that nobody killed, bit for bit, and prints the kills, the steps replayed and
the step rates. The full run takes minutes; CI runs a short one (tests/test_benchmarks.py). Kills
much more often than a process takes to start (~2 s) mostly hit processes still starting, and the
run then makes little progress.

    python benchmarks/soak_restarts.py --steps 10000 --kill-every 8 [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

MODEL = {"vocab_size": 5000, "emb_dim": 8, "deep_layers": [16]}


def run_files(d: Path, out: Path, steps: int, every: int, rows_per_batch: int, peer_timeout: float) -> dict[str, Path]:
    from splitlink.examples import demo

    files = demo.write_run_files(d, epochs=10_000, batch_size=rows_per_batch, vocab_size=5000, log_every=100,
                                 progress=False, model=MODEL, ckpt_every=every, max_steps=steps)
    out.mkdir(parents=True, exist_ok=True)
    for role, f in files.items():
        cfg = yaml.safe_load(f.read_text())
        cfg["train"].update(ckpt_dir=str(out / role), resume=False, peer_timeout=peer_timeout)
        cfg["log_file"] = str(out / f"{role}.log")
        f.write_text(yaml.safe_dump(cfg))
        resumed = dict(cfg, train={**cfg["train"], "resume": True})
        f.with_name(f.stem + ".resume.yaml").write_text(yaml.safe_dump(resumed))
    return files


def start(f: Path, role: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "splitlink", "train", role, "--config", str(f)],
                            stdout=subprocess.DEVNULL, stderr=open(log, "a"))


def final_state(out: Path, steps: int) -> dict[str, str]:
    """sha256 of every tensor (dtype, shape, bytes) of each final checkpoint file."""
    import hashlib

    def walk(x: Any, h: Any) -> None:
        if isinstance(x, torch.Tensor):
            h.update(f"{x.dtype}{tuple(x.shape)}".encode())
            h.update(x.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            for k in sorted(x, key=str):
                h.update(str(k).encode())
                walk(x[k], h)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v, h)

    digests = {}
    for f in sorted(out.rglob(f"step-{steps:010d}.pt")):
        h = hashlib.sha256()
        state = torch.load(f, map_location="cpu", weights_only=True)
        walk({"model": state["model"], "optimizers": state["optimizers"]}, h)
        digests[str(f.relative_to(out))] = h.hexdigest()
    return digests


def run(d: Path, name: str, steps: int, every: int, batch: int, kill_every: float, seed: int,
        peer_timeout: float) -> dict[str, Any]:
    out = d / name
    files = run_files(d, out, steps, every, batch, peer_timeout)
    procs = {role: start(files[role], role, out / f"{role}.err") for role in ("follower", "leader")}
    rng = random.Random(seed)
    kills = {"leader": 0, "follower": 0}
    both_restarted = 0
    t0 = time.perf_counter()
    next_kill = t0 + rng.uniform(0.5, 1.5) * kill_every if kill_every else float("inf")

    def resume(role: str) -> subprocess.Popen:
        return start(files[role].with_name(files[role].stem + ".resume.yaml"), role, out / f"{role}.err")

    while True:
        codes = {r: p.poll() for r, p in procs.items()}
        if all(c == 0 for c in codes.values()):
            break
        failed = [r for r, c in codes.items() if c not in (None, 0) and c != -signal.SIGKILL]
        if failed:
            (r,) = failed if len(failed) == 1 else (failed[0],)
            other = "leader" if r == "follower" else "follower"
            if codes[other] == 0 and len(failed) == 1:
                # A party killed just as its peer finished: restarted alone, it has no peer to rejoin
                # and stops with an error naming it. What an operator does then: restart both with resume.
                both_restarted += 1
                procs = {role: resume(role) for role in procs}
                continue
            errs = {role: (out / f"{role}.err").read_text()[-3000:] for role in procs}
            raise RuntimeError(f"run {name}: the {r} failed after {kills} kills: {codes}\n{errs}")
        now = time.perf_counter()
        if now >= next_kill and all(c is None for c in codes.values()):
            victim = rng.choice(("leader", "follower"))
            procs[victim].send_signal(signal.SIGKILL)
            procs[victim].wait(30)
            kills[victim] += 1
            procs[victim] = resume(victim)
            next_kill = now + rng.uniform(0.5, 1.5) * kill_every
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    log = (out / "leader.log").read_text() + (out / "follower.log").read_text()
    rejoins = log.count("going back to the newest common checkpoint")
    return {"wall_s": wall, "steps_per_s": steps / wall, "kills": kills, "rejoins": rejoins,
            "both_restarted_after_peer_finished": both_restarted, "final": final_state(out, steps)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--ckpt-every", type=int, default=50)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--kill-every", type=float, default=8.0, help="mean seconds between kills")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--peer-timeout", type=float, default=120.0,
                    help="seconds a party waits for its peer (a restarted peer must be back within it)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.steps % a.ckpt_every:
        ap.error("--steps must be a multiple of --ckpt-every (the final checkpoint is compared)")
    from splitlink.examples import demo

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        demo.make_dev_certs(d / "certs", ["leader", "follower"])
        demo.prepare_data(d, 20_000, seed=2, vocab_size=5000)
        clean = run(d, "clean", a.steps, a.ckpt_every, a.batch, 0, a.seed, a.peer_timeout)
        killed = run(d, "killed", a.steps, a.ckpt_every, a.batch, a.kill_every, a.seed, a.peer_timeout)
    same = clean["final"] == killed["final"] and len(clean["final"]) == 3
    result = {"steps": a.steps, "ckpt_every": a.ckpt_every, "clean": clean, "killed": killed, "final_equal": same}
    if a.json:
        print(json.dumps(result, indent=1))
    else:
        k = killed["kills"]
        print(f"{a.steps} Wide&Deep steps, two processes over mutual TLS, checkpoint every {a.ckpt_every} steps")
        print(f"uninterrupted: {clean['wall_s']:.1f} s ({clean['steps_per_s']:.0f} steps/s incl. start-up)")
        print(f"killed:        {killed['wall_s']:.1f} s ({killed['steps_per_s']:.0f} steps/s); {sum(k.values())} SIGKILLs "
              f"({k['leader']} leader, {k['follower']} follower), each victim restarted alone; the survivor went back "
              f"to the common checkpoint {killed['rejoins']} times and kept running; both restarted "
              f"{killed['both_restarted_after_peer_finished']} times (a party killed as its peer finished)")
        print(f"final model and optimizer state of both parties equal to the uninterrupted run, bit for bit: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
