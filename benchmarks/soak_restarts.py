"""Restart soak: Wide&Deep trained by `splitlink train` (two processes, mutual TLS) while a random party
is killed with SIGKILL every few seconds and restarted alone with resume.

Each kill is survived without stopping the other party: the survivor learns that its peer is a new
process, both go back to the newest checkpoint they both hold, and training goes on. At the end the
script compares every tensor of both parties' final checkpoints (model and optimizer state) with a
run of the same seed that nobody killed, bit for bit, and prints the kills, the steps replayed and
the step rates. The full run takes minutes; CI runs a short one (tests/test_benchmarks.py). Kills
much more often than a process takes to start (~2 s) mostly hit processes still starting, and the
run then makes little progress.

Kills come at random times (``--kill-every``, ``--seed``), or with ``--kill-at-steps`` when the
leader's log shows training has reached each given step since the previous kill (a deterministic
schedule: every kill lands on a running pair, so a short run surely has its kills and rejoins).
``--json`` prints one JSON object with every count (kills, rejoins, both-restarts).

    python benchmarks/soak_restarts.py --steps 10000 --kill-every 8 [--json]
    python benchmarks/soak_restarts.py --steps 150 --ckpt-every 25 --kill-at-steps 50,100 --log-every 5 --json
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


def run_files(
    d: Path, out: Path, steps: int, every: int, rows_per_batch: int, peer_timeout: float, log_every: int = 100
) -> dict[str, Path]:
    from splitlink.examples import demo

    files = demo.write_run_files(
        d,
        epochs=10_000,
        batch_size=rows_per_batch,
        vocab_size=5000,
        log_every=log_every,
        progress=False,
        model=MODEL,
        ckpt_every=every,
        max_steps=steps,
    )
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
    return subprocess.Popen(
        [sys.executable, "-m", "splitlink", "train", role, "--config", str(f)], stdout=subprocess.DEVNULL, stderr=open(log, "a")
    )


def logged_step(text: str) -> int:
    """The highest global step in leader log lines ``epoch E step I/N wide_loss: ...`` (0 if none)."""
    best = 0
    for line in text.splitlines():
        if "wide_loss" not in line or " step " not in line:
            continue
        epoch = int(line.split("epoch ")[1].split()[0])
        i, n = (int(x) for x in line.split(" step ")[1].split()[0].split("/"))
        best = max(best, epoch * n + i)
    return best


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


def run(
    d: Path,
    name: str,
    steps: int,
    every: int,
    batch: int,
    kill_every: float,
    seed: int,
    peer_timeout: float,
    kill_at: tuple[int, ...] = (),
    log_every: int = 100,
) -> dict[str, Any]:
    out = d / name
    files = run_files(d, out, steps, every, batch, peer_timeout, log_every)
    procs = {role: start(files[role], role, out / f"{role}.err") for role in ("follower", "leader")}
    rng = random.Random(seed)
    kills = {"leader": 0, "follower": 0}
    both_restarted = 0
    t0 = time.perf_counter()
    next_kill = t0 + rng.uniform(0.5, 1.5) * kill_every if kill_every and not kill_at else float("inf")
    targets = list(kill_at)
    log_from = 0  # leader.log offset at the last kill: progress counts only what was logged after it

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
        due = now >= next_kill
        if targets and (out / "leader.log").exists():
            with open(out / "leader.log") as fh:
                fh.seek(log_from)
                due = logged_step(fh.read()) >= targets[0]
        if due and all(c is None for c in codes.values()):
            if targets:
                targets.pop(0)
                log_from = (out / "leader.log").stat().st_size
            victim = rng.choice(("leader", "follower"))
            procs[victim].send_signal(signal.SIGKILL)
            procs[victim].wait(30)
            kills[victim] += 1
            procs[victim] = resume(victim)
            next_kill = now + rng.uniform(0.5, 1.5) * kill_every if kill_every and not kill_at else float("inf")
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    log = (out / "leader.log").read_text() + (out / "follower.log").read_text()
    rejoins = log.count("going back to the newest common checkpoint")
    return {
        "wall_s": wall,
        "steps_per_s": steps / wall,
        "kills": kills,
        "kill_targets_missed": targets,
        "rejoins": rejoins,
        "both_restarted_after_peer_finished": both_restarted,
        "final": final_state(out, steps),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--ckpt-every", type=int, default=50)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--kill-every", type=float, default=8.0, help="mean seconds between kills")
    ap.add_argument(
        "--kill-at-steps",
        default="",
        metavar="S1,S2,...",
        help="kill when the leader has logged step S1 (then S2 after that kill, ...) instead of at random "
        "times; give --log-every small enough to see them",
    )
    ap.add_argument("--log-every", type=int, default=100, help="the parties' log interval in steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--peer-timeout",
        type=float,
        default=120.0,
        help="seconds a party waits for its peer (a restarted peer must be back within it)",
    )
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.steps % a.ckpt_every:
        ap.error("--steps must be a multiple of --ckpt-every (the final checkpoint is compared)")
    try:
        kill_at = tuple(int(x) for x in a.kill_at_steps.split(",") if x.strip())
    except ValueError:
        ap.error(f"--kill-at-steps {a.kill_at_steps!r}: give comma-separated step numbers, e.g. 50,100")
    if any(not 0 < k < a.steps for k in kill_at):
        ap.error(f"--kill-at-steps: every step must lie in 1..{a.steps - 1}")
    from splitlink.examples import demo

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        demo.make_dev_certs(d / "certs", ["leader", "follower"])
        demo.prepare_data(d, 20_000, seed=2, vocab_size=5000)
        clean = run(d, "clean", a.steps, a.ckpt_every, a.batch, 0, a.seed, a.peer_timeout, log_every=a.log_every)
        killed = run(d, "killed", a.steps, a.ckpt_every, a.batch, a.kill_every, a.seed, a.peer_timeout, kill_at, a.log_every)
    same = clean["final"] == killed["final"] and len(clean["final"]) == 3
    result = {"steps": a.steps, "ckpt_every": a.ckpt_every, "clean": clean, "killed": killed, "final_equal": same}
    if a.json:
        print(json.dumps(result, indent=1))
    else:
        k = killed["kills"]
        print(f"{a.steps} Wide&Deep steps, two processes over mutual TLS, checkpoint every {a.ckpt_every} steps")
        print(f"uninterrupted: {clean['wall_s']:.1f} s ({clean['steps_per_s']:.0f} steps/s incl. start-up)")
        print(
            f"killed:        {killed['wall_s']:.1f} s ({killed['steps_per_s']:.0f} steps/s); {sum(k.values())} SIGKILLs "
            f"({k['leader']} leader, {k['follower']} follower), each victim restarted alone; the survivor went back "
            f"to the common checkpoint {killed['rejoins']} times and kept running; both restarted "
            f"{killed['both_restarted_after_peer_finished']} times (a party killed as its peer finished)"
        )
        print(f"final model and optimizer state of both parties equal to the uninterrupted run, bit for bit: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
