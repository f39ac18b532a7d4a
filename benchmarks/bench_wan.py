"""Split training over emulated networks: step time vs bandwidth and latency (issue 19).

Each party is its own process (``splitlink train leader|follower``), over mutual TLS as in production,
both inside a private network namespace whose loopback is shaped per direction by htb to the profile's
rate, with the profile's RTT added by a delay line (or netem where the kernel has it) in both peer
paths (tests/support/netem.py; each link is self-checked with a raw TCP probe first: RTT and rate within
20% of the profile). Profiles: LAN 10 Gbit/s 0.2 ms RTT (no delay line: loopback is faster), metro
1 Gbit/s 5 ms, WAN 1 Gbit/s 20 ms, thin WAN 100 Mbit/s 40 ms, long-haul 1 Gbit/s 200 ms.

Models: Wide&Deep at the Criteo YAML's batch (16000 rows; the demo's synthetic Criteo-like data, a
smaller model than the seed's so that a step fits a 2-core machine), Pangu tiny (hidden 128, 2 layers,
seq 64) and small (hidden 256, 4 layers, seq 128), batch 8, without DeepSpeed.

Variants per profile:
  (a) sequential fp32: every exchanged tensor as float32;
  (b) sequential, compressed: the YAML's codecs on activations and gradients (min_max, 6 bits on
      Wide&Deep's embeddings and Pangu's head input and gradients, 8 bits on Pangu's backbone output);
  (c) pipelined, m = 2, 4, 8 micro-batches and (d) pipelined + the codecs (splitlink.runtime.pipeline:
      the batch cut into m micro-batches whose exchanges overlap both parties' computation, the update
      the full batch's; the hook :data:`PIPELINE` sets the run file's train.pipeline).

Baselines in the same run: the same model in one process (Pangu: unsplit, plain PyTorch with the same
seeds and AdamW settings; Wide&Deep: both parties in one process over the in-process communicator, no
network, the repository has no unsplit Wide&Deep), one thread like each party; and the LAN split (a).
Reported per row: median step time over the steps after the first two (warm-up), samples/s, the ratios
to both baselines, bytes on the wire per step each way (IP bytes on the shaped legs, from htb's
counters: TLS records, HTTP/2 framing, TCP/IP headers and acknowledgements included, averaged over the
run, connection set-up included) and the training loss after the fixed number of steps (the cost of
compression in accuracy next to its gain in time).

``--quick``: LAN, WAN, thin WAN; 8 steps each, pipelined with m = 2, 4 (about 10 min on 2 cores). ``--json`` prints JSON.
``--trace``: each pipelined run also traces both parties' stages (splitlink.runtime.pipeline.TRACE_ENV) and
the table is followed by each party's time per step computing, blocked receiving, queueing sends and
waiting for acknowledgements, and its compute per stage and micro-batch (where a pipelined step's time goes).

``--channel``: the channel alone over each profile's link (no model, so little CPU and a figure that a
shared machine does not blur): ``--frames`` frames of each size sent with ``isend`` and received, with
a window of 1 frame on the wire (``max_inflight=1``: each frame waits for the previous one's ack, as
before issue 19 item 3) and with a window of 4 (``max_inflight=4``, the default); median milliseconds
per burst over 8 bursts after 2 warm-up ones, and the ratio, in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "support"))
from netem import PROFILES, EmulatedLink, netns_support
from split_runs import make_certs, pangu_run, run_split, wide_deep_run


# (c)/(d): the pipelined variants. The pipelining work (issue 19 item 2) sets this to a function that
# returns a run spec (split_runs.wide_deep_run / pangu_run) with the run file's pipeline setting for m
# micro-batches; None: not built, and their rows say so instead of giving figures.
def _pipelined(spec: dict[str, Any], m: int) -> dict[str, Any]:
    """The run spec with each step pipelined over ``m`` micro-batches (the run file's train.pipeline)."""
    return {**spec, "train": {**spec["train"], "pipeline": {"micro_batches": m}}}


PIPELINE: Callable[[dict[str, Any], int], dict[str, Any]] | None = _pipelined
MICRO_BATCHES = (2, 4, 8)

WD_MODEL = {"vocab_size": 50_000, "emb_dim": 16, "deep_layers": [256, 128]}
WD_BATCH = 16_000  # the Criteo YAMLs' batch_size
PANGU = {
    "pangu-tiny": {"config": "tiny", "vocab_size": 1024, "seq_length": 64},
    "pangu-small": {"config": "tiny", "vocab_size": 1024, "hidden_size": 256, "num_layers": 4, "num_heads": 4, "seq_length": 128},
}
PANGU_BATCH = 8
VARIANTS = {"fp32": False, "codecs": True}  # name -> the run's train.compress


def prepare(work: Path) -> dict[str, Any]:
    """Data for every model: Wide&Deep's two parties' columns, Pangu's token corpus."""
    from splitlink.examples import demo, pangu

    wd_dir = work / "wd"
    wd_dir.mkdir(parents=True, exist_ok=True)
    demo.prepare_data(wd_dir, 2 * WD_BATCH, seed=1, vocab_size=WD_MODEL["vocab_size"])
    corpus = pangu.stdlib_corpus(work / "corpus", max_bytes=600_000)
    tokens = pangu.preprocess_corpus(corpus, work / "tokens", vocab_size=1024)
    return {"wd": wd_dir, "tokens": tokens}


def spec_for(model: str, data: dict[str, Any], steps: int, compress: bool) -> dict[str, Any]:
    if model == "wide-deep":
        return wide_deep_run(data["wd"], model=WD_MODEL, batch_size=WD_BATCH, steps=steps, compress=compress)
    return pangu_run(data["tokens"], pangu=PANGU[model], batch_size=PANGU_BATCH, steps=steps, compress=compress)


def batch_of(model: str) -> int:
    return WD_BATCH if model == "wide-deep" else PANGU_BATCH


def one_process(model: str, data: dict[str, Any], steps: int) -> dict[str, Any]:
    """The same model trained in this process, one thread: per-step times and the final loss."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if model == "wide-deep":
            from splitlink.examples import criteo
            from splitlink.examples import wide_deep as wd

            cfg = wd.WideDeepConfig(
                vocab_size=WD_MODEL["vocab_size"], emb_dim=WD_MODEL["emb_dim"], deep_layers=tuple(WD_MODEL["deep_layers"])
            )
            L = criteo.load_party(data["wd"] / "leader.npz", "leader")
            F = criteo.load_party(data["wd"] / "follower.npz", "follower")
            hist = wd.train_local(
                L,
                F,
                cfg,
                wd.TrainConfig(
                    epochs=1000,
                    batch_size=WD_BATCH,
                    max_steps=steps,
                    log_every=1,
                    compress=False,
                    progress=False,
                    seed=0,
                    eval_fraction=0.0,
                ),
            )
            rows = [r for r in hist if r["kind"] == "train"]
            secs = [r["seconds"] for r in rows]
            return {
                "what": "in-process split (no network)",
                "step_s": [b - a for a, b in zip(secs, secs[1:])],
                "loss": rows[-1]["wide_loss"],
            }
        return pangu_unsplit(model, data, steps)
    finally:
        torch.set_num_threads(threads)


def pangu_unsplit(model: str, data: dict[str, Any], steps: int) -> dict[str, Any]:
    """Pangu unsplit in plain PyTorch (as splitlink.examples.pangu.train_unsplit, timed per step)."""
    from splitlink.config import FLYamlData
    from splitlink.examples import pangu
    from splitlink.runtime.schedule import Schedule

    over = {k: v for k, v in PANGU[model].items() if k != "config"}
    cfg = dataclasses.replace(pangu.CONFIGS[PANGU[model]["config"]], **over)
    ds = pangu.TokenDataset(data["tokens"], cfg.seq_length)
    torch.manual_seed(0)
    emb = pangu.EmbeddingNet(cfg)
    torch.manual_seed(2)
    head = pangu.HeadNet(cfg)
    torch.manual_seed(1)
    bb = pangu.BackboneNet(cfg)
    ref = FLYamlData(pangu.YAMLS / "embedding.yaml").opts[0].hyper_parameters
    opt = torch.optim.AdamW([*emb.parameters(), *bb.parameters(), *head.parameters()], lr=1e-3, eps=ref.get("eps", 1e-8))
    times, loss_v = [], float("nan")
    for _, rows in Schedule(len(ds), PANGU_BATCH, seed=0, epochs=1000, max_steps=steps, drop_last=True).steps():
        t0 = time.perf_counter()
        b = ds.batch(rows)
        x, table, mask = emb(b["input_ids"], b["position_id"], b["attention_mask"])
        loss = head(bb(x, mask), b["input_ids"], table, b["position_id"], mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_v = float(loss.detach())
        times.append(time.perf_counter() - t0)
    return {"what": "unsplit, plain PyTorch", "step_s": times[1:], "loss": loss_v}


CHANNEL_SIZES = (64 << 10, 256 << 10, 1 << 20)


def channel_burst(link: EmulatedLink, windows: tuple[int, ...], frames: int, bursts: int = 10) -> list[dict[str, Any]]:
    """``frames`` frames of each of CHANNEL_SIZES, leader -> follower in one process in the link's namespace,
    per window size (the communicators' max_inflight); median ms per burst after 2 warm-up bursts."""
    from splitlink import ServerConfig, VerticalFederatedCommunicator

    def body() -> list[dict[str, Any]]:
        rows = []
        for window in windows:
            lp, fp = link.free_ports(2)
            kw: dict[str, Any] = {"allow_insecure": True, "max_inflight": window}
            leader = VerticalFederatedCommunicator(
                ServerConfig("leader", f"127.0.0.1:{lp}"), ServerConfig("follower", link.route(fp, client="leader")), **kw
            ).launch()
            follower = VerticalFederatedCommunicator(
                ServerConfig("follower", f"127.0.0.1:{fp}"), ServerConfig("leader", link.route(lp, client="follower")), **kw
            ).launch()
            try:
                for nbytes in CHANNEL_SIZES:
                    x = torch.zeros(nbytes // 4)
                    took = []
                    for _ in range(bursts):
                        t0 = time.perf_counter()
                        works = [leader.isend("follower", {"x": x}) for _ in range(frames)]
                        for _ in range(frames):
                            follower.receive("leader", timeout=60)
                        for w in works:
                            w.wait(60)
                        took.append(time.perf_counter() - t0)
                    rows.append({"window": window, "frame_kib": nbytes >> 10, "burst_ms": statistics.median(took[2:]) * 1e3})
            finally:
                leader.shutdown(0.5)
                follower.shutdown(0.5)
        return rows

    return link.call(body, timeout=600)


def channel_main(profiles: list[str], frames: int, as_json: bool) -> None:
    out: dict[str, Any] = {"frames": frames, "links": {}, "rows": []}
    for prof in profiles:
        with EmulatedLink(PROFILES[prof]) as link:
            out["links"][prof] = link.self_check()
            for r in channel_burst(link, (1, 4), frames):
                out["rows"].append({"profile": prof, **r})
    if as_json:
        print(json.dumps(out, indent=1))
        return
    print(f"the channel alone: bursts of {frames} isend frames, received in order; median ms per burst")
    print(f"\n{'profile':9s} {'frame':>8s} {'window 1':>9s} {'window 4':>9s} {'speed-up':>8s}")
    for prof in profiles:
        for kib in (n >> 10 for n in CHANNEL_SIZES):
            ms = {r["window"]: r["burst_ms"] for r in out["rows"] if r["profile"] == prof and r["frame_kib"] == kib}
            print(f"{prof:9s} {kib:5d} KiB {ms[1]:9.1f} {ms[4]:9.1f} {ms[1] / ms[4]:8.2f}")


def trace_summary(path: Path, skip: int = 2) -> dict[str, dict[str, float]]:
    """Per party, medians over the steps after ``skip`` of the pipelined step's trace
    (splitlink.runtime.pipeline.TRACE_ENV): milliseconds per step computing (the stages' work, their
    ``then`` included), blocked receiving, queueing sends, waiting for the last acknowledgements, the
    computing thread's CPU, and the compute per stage and micro-batch; ``finish_ms``: the step's finish
    (e.g. a deferred optimizer step); ``tail_ms``: the work after the step's last send (the last stage
    call's ``then``, e.g. Wide&Deep's leader's bottom backward and optimizer step, and the finish);
    ``first_receives``: 1 for the party whose step starts by receiving from the peer (its first stage
    receives), else 0; ``first_stage_ms`` and
    ``last_stage_ms``: the computing thread's CPU per micro-batch in its first and last stage (CPU, not
    wall time: while both parties compute, the 2 cores' other threads stretch a stage's wall time, and
    these stages matter where the other party waits for them)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out: dict[str, dict[str, float]] = {}
    for party in sorted({r["party"] for r in rows}):
        mine = [r for r in rows if r["party"] == party]
        steps = sorted({r["step"] for r in mine})[skip:]
        per: dict[str, list[float]] = {}
        ends = ("", "")
        for st in steps:
            rs = [r for r in mine if r["step"] == st]
            calls = [r for r in rs if r["i"] >= 0]
            tot = {
                # the stages' work, and the step's finish (after the acks: i == -2)
                "compute_ms": sum(r["compute_s"] + r["then_s"] for r in calls) + sum(r["then_s"] for r in rs if r["i"] == -2),
                "recv_ms": sum(r["recv_s"] for r in calls),
                "send_ms": sum(r["send_s"] for r in calls),
                "ack_wait_ms": sum(r["recv_s"] for r in rs if r["i"] == -1),
                "finish_ms": sum(r["then_s"] for r in rs if r["i"] == -2),
                "cpu_ms": sum(r["cpu_s"] for r in calls),
            }
            ordered = sorted(calls, key=lambda r: r["t"])
            tot["first_receives"] = float(bool(ordered and ordered[0].get("receives")))
            for r in ordered:
                per.setdefault(f"{r['stage']} per micro-batch ms", []).append(r["compute_s"] + r["then_s"])
                per.setdefault(f"{r['stage']} cpu ms per micro-batch", []).append(r["cpu_s"])
            if ordered:
                ends = (ordered[0]["stage"], ordered[-1]["stage"])
            # work after the step's last send: the last stage call's then and the finish
            tot["tail_ms"] = (ordered[-1]["then_s"] if ordered else 0.0) + tot["finish_ms"]
            for k, v in tot.items():
                per.setdefault(k, []).append(v)
        out[party] = {k: statistics.median(v) * (1 if k == "first_receives" else 1e3) for k, v in per.items()}
        out[party]["first_stage_ms"] = out[party][f"{ends[0]} cpu ms per micro-batch"]
        out[party]["last_stage_ms"] = out[party][f"{ends[1]} cpu ms per micro-batch"]
    return out


def step_bound(trace: dict[str, dict[str, float]], rtt_ms: float) -> float:
    """The shortest pipelined step the traced compute allows (milliseconds): see where main() uses it."""
    bound = max(t["compute_ms"] for t in trace.values())
    for party, t in trace.items():
        if t["first_receives"]:
            peer = next(q for p, q in trace.items() if p != party)
            gap = rtt_ms + peer["first_stage_ms"] + peer["last_stage_ms"]
            bound = max(bound, t["compute_ms"] - t["tail_ms"] + max(t["tail_ms"], gap))
    return bound


def median_after_warmup(step_s: list[float], skip: int = 2) -> float:
    return statistics.median(step_s[skip:] if len(step_s) > skip else step_s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="LAN, WAN and thin WAN, 8 steps (<= 10 min on 2 cores)")
    ap.add_argument("--profiles", nargs="+", choices=list(PROFILES), help="default: all (--quick: lan wan thin-wan)")
    ap.add_argument("--models", nargs="+", choices=["wide-deep", *PANGU], default=["wide-deep", *PANGU])
    ap.add_argument(
        "--steps",
        type=int,
        help="training steps per run (default 12, --quick 8); the first two are warm-up, left out of the medians",
    )
    ap.add_argument(
        "--micro-batches",
        type=int,
        nargs="+",
        metavar="M",
        help="the pipelined rows' micro-batch counts (default: 2 4 8; --quick: 2 4, to stay within 10 min)",
    )
    ap.add_argument("--channel", action="store_true", help="the channel alone: window 1 vs 4 (see above); no training")
    ap.add_argument("--frames", type=int, default=4, help="--channel: frames per burst (default 4)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    ap.add_argument(
        "--trace",
        action="store_true",
        help="trace the pipelined runs (splitlink.runtime.pipeline's SPLITLINK_PIPELINE_TRACE) and add each "
        "party's breakdown per step: computing, blocked receiving, sending, waiting for acks (ms)",
    )
    ap.add_argument("--workdir", help="keep data, run files and logs here (default: a temporary directory)")
    args = ap.parse_args()
    profiles = args.profiles or (["lan", "wan", "thin-wan"] if args.quick else list(PROFILES))
    if "lan" not in profiles:
        profiles = ["lan", *profiles]  # the LAN split is a baseline of every row
    steps = args.steps or (8 if args.quick else 12)
    args.micro_batches = args.micro_batches or ([2, 4] if args.quick else list(MICRO_BATCHES))
    if steps < 4:
        ap.error("--steps must be at least 4 (two warm-up steps, then the measured ones)")
    why = netns_support()
    if why:
        sys.exit(f"bench_wan: {why}")
    if args.channel:
        channel_main([p for p in profiles if p != "lan"] or ["wan"], args.frames, args.json)
        return

    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="bench_wan-")
    work = Path(args.workdir or tmp.name)  # type: ignore[union-attr]
    log = lambda *a: print(*a, file=sys.stderr, flush=True)
    t_start = time.monotonic()
    data = prepare(work)
    certs = make_certs(work / "certs")

    baselines = {}
    for model in args.models:
        b = one_process(model, data, steps)
        b["step_ms"] = median_after_warmup(b["step_s"], skip=1) * 1e3
        b["samples_s"] = batch_of(model) / (b["step_ms"] / 1e3)
        baselines[model] = b
        log(f"one process {model}: {b['step_ms']:.1f} ms/step")

    checks, rows = {}, []
    for prof in profiles:
        with EmulatedLink(PROFILES[prof]) as link:
            checks[prof] = link.self_check()
            log(f"link {prof}: {checks[prof]}")
            for model in args.models:
                for variant, compress in VARIANTS.items():
                    spec = spec_for(model, data, steps, compress)
                    run = run_split(work / "runs" / f"{prof}-{model}-{variant}", spec, certs=certs, link=link)
                    step_s = run.median_step_s(skip=2)
                    rows.append(
                        {
                            "profile": prof,
                            "model": model,
                            "variant": variant,
                            "step_ms": step_s * 1e3,
                            "samples_s": batch_of(model) / step_s,
                            "loss": run.losses[-1],
                            "wire_mb_per_step": {k: v / steps / 1e6 for k, v in run.wire_bytes.items()},
                            "steps": len(run.losses),
                        }
                    )
                    log(f"{prof} {model} {variant}: {step_s * 1e3:.1f} ms/step, wire {run.wire_bytes}")
                for m in args.micro_batches:
                    for variant in ("fp32", "codecs"):
                        name = f"pipelined m={m}" + (" + codecs" if variant == "codecs" else "")
                        if PIPELINE is None:
                            rows.append({"profile": prof, "model": model, "variant": name, "status": "not built yet"})
                            continue
                        spec = PIPELINE(spec_for(model, data, steps, VARIANTS[variant]), m)
                        rundir = work / "runs" / f"{prof}-{model}-pipe{m}-{variant}"
                        trace = rundir / "pipeline_trace.jsonl"
                        if args.trace:
                            from splitlink.runtime.pipeline import TRACE_ENV

                            rundir.mkdir(parents=True, exist_ok=True)
                            trace.unlink(missing_ok=True)
                            os.environ[TRACE_ENV] = str(trace)
                        try:
                            run = run_split(rundir, spec, certs=certs, link=link)
                        finally:
                            if args.trace:
                                os.environ.pop(TRACE_ENV, None)
                        step_s = run.median_step_s(skip=2)
                        extra = {"trace": trace_summary(trace)} if args.trace and trace.exists() else {}
                        rows.append(
                            {
                                **extra,
                                "profile": prof,
                                "model": model,
                                "variant": name,
                                "step_ms": step_s * 1e3,
                                "samples_s": batch_of(model) / step_s,
                                "loss": run.losses[-1],
                                "wire_mb_per_step": {k: v / steps / 1e6 for k, v in run.wire_bytes.items()},
                                "steps": len(run.losses),
                            }
                        )
    lan = {r["model"]: r["samples_s"] for r in rows if r["profile"] == "lan" and r["variant"] == "fp32"}
    for r in rows:
        if "trace" in r:
            # A pipelined step cannot be shorter than the slower party's compute in it (each party computes
            # on one thread, its stages in turn). The party whose step starts by receiving (Pangu's B,
            # Wide&Deep's leader) also waits in every step: its first input of step t+1 is what the peer's
            # first stage makes after its last stage took this party's last output of step t (the peer's
            # update comes between, so no exact schedule overlaps the two steps), i.e. at least one round
            # trip plus the peer's last and first stage on one micro-batch (their thread CPU time, which
            # their wall time cannot undercut), of which only this party's own work after its last send
            # (its tail: e.g. a deferred optimizer step) can fill. The best pipelining can
            # reach against the sequential split of the same profile and codecs, next to what it reached.
            same = {"profile": r["profile"], "model": r["model"], "variant": "codecs" if "codecs" in r["variant"] else "fp32"}
            seq = next(q["step_ms"] for q in rows if all(q.get(k) == v for k, v in same.items()))
            r["compute_bound_ms"] = max(t["compute_ms"] for t in r["trace"].values())
            r["bound_ms"] = step_bound(r["trace"], checks[r["profile"]]["rtt_ms"])
            r["vs_sequential"] = seq / r["step_ms"]
            r["vs_sequential_at_bound"] = seq / r["bound_ms"]
    for r in rows:
        if "samples_s" in r:
            r["vs_one_process"] = r["samples_s"] / baselines[r["model"]]["samples_s"]
            r["vs_lan_split"] = r["samples_s"] / lan[r["model"]]
    out = {
        "steps": steps,
        "threads_per_party": 1,
        "seconds": time.monotonic() - t_start,
        "links": checks,
        "one_process": {k: {kk: v for kk, v in b.items() if kk != "step_s"} for k, b in baselines.items()},
        "rows": rows,
    }
    if tmp is not None:
        tmp.cleanup()
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print_table(out)


def print_table(out: dict[str, Any]) -> None:
    print(
        f"split training over emulated links: {out['steps']} steps per run, medians after 2 warm-up steps, "
        f"1 thread per party, mutual TLS ({out['seconds']:.0f} s)"
    )
    print("\nlinks (self-check, raw TCP probe):")
    for name, c in out["links"].items():
        note = c.get("rtt_note", "") or c.get("rate_note", "")
        print(
            f"  {PROFILES[name].describe():34s} measured RTT {c['rtt_ms']:8.3f} ms, rate "
            f"{c['rate_bit_s'] / 1e6:8.0f} Mbit/s  [{c['delay_mode']}] {note}"
        )
    print("\none process (baseline):")
    for m, b in out["one_process"].items():
        print(f"  {m:12s} {b['step_ms']:9.1f} ms/step {b['samples_s']:10.0f} samples/s  loss {b['loss']:.4f}  ({b['what']})")
    hdr = (
        f"\n{'model':12s} {'profile':9s} {'variant':22s} {'ms/step':>9s} {'samples/s':>10s} {'x 1-proc':>8s} "
        f"{'x LAN':>6s} {'MB/step up':>10s} {'down':>7s} {'loss':>8s}"
    )
    print(hdr)
    for r in sorted(out["rows"], key=lambda r: (r["model"], list(PROFILES).index(r["profile"]))):
        if "status" in r:
            print(f"{r['model']:12s} {r['profile']:9s} {r['variant']:22s} {r['status']}")
            continue
        up, down = list(r["wire_mb_per_step"].values())
        print(
            f"{r['model']:12s} {r['profile']:9s} {r['variant']:22s} {r['step_ms']:9.1f} {r['samples_s']:10.0f} "
            f"{r['vs_one_process']:8.2f} {r['vs_lan_split']:6.2f} {up:10.2f} {down:7.2f} {r['loss']:8.4f}"
        )
    traced = [r for r in out["rows"] if "trace" in r]
    if traced:
        print("\npipelined steps traced (ms per step, medians after 2 warm-up steps):")
        for r in traced:
            for party, t in r["trace"].items():
                stages = ", ".join(f"{k.split(' per ')[0]} {v:.1f}" for k, v in t.items() if k.endswith("per micro-batch ms"))
                print(
                    f"  {r['profile']:9s} {r['variant']:22s} {party:9s} compute {t['compute_ms']:7.1f} "
                    f"(thread CPU {t['cpu_ms']:7.1f}) blocked receiving {t['recv_ms']:7.1f} sending "
                    f"{t['send_ms']:5.1f} acks {t['ack_wait_ms']:5.1f}; per micro-batch: {stages}"
                )
            print(
                f"  {r['profile']:9s} {r['variant']:22s} step {r['step_ms']:.1f} ms = {r['vs_sequential']:.2f}x the "
                f"sequential split's throughput; bound {r['bound_ms']:.1f} ms = {r['vs_sequential_at_bound']:.2f}x at "
                f"most (slower party's compute {r['compute_bound_ms']:.1f} ms, and the wait between steps of the party "
                "that starts by receiving: one RTT plus the peer's first and last stage)"
            )
    print(
        "\nup: follower -> leader (Wide&Deep: follower's embeddings; Pangu: party B's hidden states), down: "
        "the other way; x LAN: samples/s over the LAN split's (fp32) in this run"
    )


if __name__ == "__main__":
    main()
