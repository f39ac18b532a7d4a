"""Every benchmark runs end to end at its smallest setting and reports what it promises.

No timing is asserted (the machines are shared and noisy): this keeps the benchmarks from rotting,
and the soak runs still check their correctness claims (final state equal to the fault-free run), and
that the faults they claim to survive happened: the smoke settings use the deterministic schedules
(faults at traffic positions, kills at logged steps), so the counts below are surely non-zero.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def check_wire(d: dict[str, Any]) -> None:
    assert d["scenarios"] and all(isinstance(v, dict) and v for v in d["scenarios"].values())
    assert all(positive(sc["ratios"]["speedup_1thread_vs_pickle protocol 5"]) for sc in d["scenarios"].values())


def check_codec(d: dict[str, Any]) -> None:
    assert set(d["inputs"]) == {"normal", "gelu_activation"}
    for r in d["inputs"].values():
        assert positive(r["targets"]["api_round_trip_vs_numpy_alloc"]) and positive(r["targets"]["unpack_vs_decode_kernel"])


def check_secure(d: dict[str, Any]) -> None:
    assert {"aes-256-gcm", "chacha20-poly1305"} <= set(d["ciphers"])
    assert positive(d["masking_64MiB"]["mask_gbps_1t"]) and positive(d["masking_64MiB"]["unmask_gbps_1t"])


def check_channel(d: dict[str, Any]) -> None:
    for mode in ("plaintext", "tls"):
        assert {"splitlink", "raw_grpc", "ratios"} <= set(d[mode])
        assert all(positive(v) for v in d[mode]["ratios"].values())


def check_psi(d: dict[str, Any]) -> None:
    # The benchmark itself asserts that both parties found the planted intersection.
    (row,) = d["rows"]
    assert row["n"] == 1000 and positive(row["ids_per_s_per_party"]) and positive(row["bytes_per_id"])


def check_step(d: dict[str, Any]) -> None:
    assert len(d["adam_step_ms"]) == 3 and all(positive(v) for v in d["adam_step_ms"].values())
    assert d["adam_step_warm_ms"].keys() == d["adam_step_ms"].keys() and all(positive(v) for v in d["adam_step_warm_ms"].values())
    assert len(d["results"]) == 2
    for rows in d["results"].values():
        assert set(rows) == {"mlp-big", "mlp-tiny", "gpt-big", "gpt-tiny"}
        for r in rows.values():
            assert all(positive(r[k]) for k in ("split_ms", "central_ms", "manual_ms", "central_default_ms", "ratio"))


def check_gpu_smoke(d: dict[str, Any]) -> None:
    # The CPU smoke run of bench_gpu.py: every path ran and reported (figures meaningless on a CPU).
    ms = d["results"]["fp32"]["step_ms"]
    assert set(ms) == {
        "central",
        "central_ds",
        "split_ref",
        "split_ds",
        "split_pack",
        "split_pack_8bit",
        "two_process",
        "two_process_8bit",
    } and all(positive(v) for v in ms.values())
    assert all(positive(v) for v in d["results"]["fp32"]["ratios"].values())
    assert all(positive(v) for v in d["exchange"].values())


def check_secagg(d: dict[str, Any]) -> None:
    (rows,) = d["results"].values()
    assert set(rows) == {"k=2 (SecAgg)"}
    r = rows["k=2 (SecAgg)"]
    assert all(positive(r[k]) for k in ("mask_s", "setup_s", "unmask_s", "plain_fedavg_s"))
    # bytes, not time: keys and shares add well under 10% to a 1M-float update
    assert 1.0 < r["ratios"]["traffic_vs_plain"] < 1.1


def check_soak(d: dict[str, Any]) -> None:
    assert d["params_equal"] is True
    clean, faulty = d["fault_free"], d["with_faults"]
    assert clean["bytes_corrupted"] == clean["cuts_hit"] == 0 and clean["connections"] == 2, clean
    # faults were injected AND hit: a flipped byte in a live stream, a cut that closed a live connection
    assert faulty["faults"]["corrupt"] >= 1 and faulty["bytes_corrupted"] >= 1, faulty
    assert faulty["faults"]["cut"] >= 1 and faulty["cuts_hit"] >= 1, faulty
    assert faulty["connections"] > 2, faulty  # the parties reconnected after the faults


def check_soak_restarts(d: dict[str, Any]) -> None:
    assert d["final_equal"] is True
    clean, killed = d["clean"], d["killed"]
    assert sum(clean["kills"].values()) == 0 and clean["rejoins"] == 0, clean
    assert killed["kill_targets_missed"] == [], killed
    assert sum(killed["kills"].values()) == 1, killed  # --kill-at-steps 30: exactly one kill
    assert killed["rejoins"] >= 1, killed  # the survivor went back to the common checkpoint and carried on


def check_leakage(d: dict[str, Any]) -> None:
    assert [(r["defence"], r["strength"]) for r in d["rows"]] == [("none", "-"), ("marvell", "scale 1"), ("marvell", "scale 4")]
    for r in d["rows"]:
        assert 0 <= r["test_auc"] <= 1 and 0.5 <= r["norm_auc"] <= 1 and 0.5 <= r["direction_auc"] <= 1
        assert positive(r["step_ms"]) and positive(r["step_ratio"])
    assert {"no_defence_norm_auc", "best_ok"} <= set(d["targets"])
    assert Path(d["plot"]).read_bytes()[:4] == b"\x89PNG"


def check_horizontal(d: dict[str, Any]) -> None:
    modes = d["peft"]["modes"]
    assert set(modes) >= {"full", "lora", "ia3"} and modes["full"]["param_fraction"] == 1.0
    for m in ("lora", "ia3"):
        assert 0 < modes[m]["param_fraction"] < 1 and modes[m]["bytes_per_round"] < modes["full"]["bytes_per_round"]
    assert all(positive(r["epoch_s"]) and positive(r["epoch_ratio_vs_full"]) for r in modes.values())
    (row,) = d["secure_rounds"]["rows"]  # --quick: one secure-vs-plain round of 3 clients x 100k values
    assert (row["clients"], row["numel"], row["neighbours"], row["threshold"]) == (3, 100_000, 2, 2)
    assert all(positive(row[k]) for k in ("plain_s", "secure_s", "plain_parallel_s", "secure_parallel_s"))
    # bytes, not time: the masked update is as large as the float32 one; keys and shares add well under 10%
    assert 1.0 < row["traffic_vs_plain"] < 1.1 and row["clipped"] >= 0


def check_nparty(d: dict[str, Any]) -> None:
    assert set(d["results"]) == {"1", "2", "4"}
    for n, r in d["results"].items():
        need = {"unsplit_ms", "concat_ms", "sum_ms"} | ({"secure_sum_ms", "secure_vs_plain_sum"} if n != "1" else set())
        assert need <= set(r) and all(positive(r[k]) for k in need), r


CASES: list[tuple[str, list[str], Callable[[dict[str, Any]], None]]] = [
    ("bench_wire.py", ["--repeat", "1", "--warmup", "0"], check_wire),
    ("bench_codec.py", ["--repeat", "1"], check_codec),
    ("bench_secure.py", ["--repeat", "1"], check_secure),
    ("bench_channel.py", ["--repeat", "1"], check_channel),
    ("bench_psi.py", ["--sizes", "1000"], check_psi),
    ("bench_secagg.py", ["--quick", "--clients", "3", "--repeat", "1"], check_secagg),
    ("bench_step.py", ["--steps", "2"], check_step),
    (
        "bench_leakage.py",
        [
            "--quick",
            "--rows",
            "1000",
            "--epochs",
            "1",
            "--batch-size",
            "450",
            "--only",
            "marvell",
            "--plot",
            str(Path(tempfile.gettempdir()) / "splitlink-bench-leakage-smoke.png"),
        ],
        check_leakage,
    ),
    ("bench_gpu.py", ["--device", "cpu", "--quick", "--steps", "1", "--warmup", "1", "--dtypes", "fp32"], check_gpu_smoke),
    ("bench_horizontal.py", ["--quick", "--repeat", "1"], check_horizontal),
    ("bench_nparty.py", ["--quick"], check_nparty),
    # ~4.4 kB per step each way: the first fault of each direction lands within 45 kB, the run carries ~130 kB
    ("soak.py", ["--steps", "30", "--fault-every-bytes", "30000"], check_soak),
    # a restarted party must be back within --peer-timeout: process start takes long on a busy machine
    (
        "soak_restarts.py",
        ["--steps", "60", "--ckpt-every", "20", "--kill-at-steps", "30", "--log-every", "5", "--peer-timeout", "120"],
        check_soak_restarts,
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("script, args, check", CASES, ids=[c[0] for c in CASES])
def test_benchmark_runs_and_reports(script: str, args: list[str], check: Callable[[dict[str, Any]], None]) -> None:
    proc = subprocess.run([sys.executable, str(BENCH / script), *args, "--json"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    check(json.loads(proc.stdout))


@pytest.mark.slow
def test_bench_wan_runs_and_reports() -> None:
    """bench_wan at its smallest: Pangu tiny over the emulated LAN, fp32 and the YAML codecs, sequential
    and pipelined over 2 micro-batches."""
    from netem import netns_support

    why = netns_support()
    if why:
        pytest.skip(f"bench_wan needs network namespaces: {why}")
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH / "bench_wan.py"),
            "--profiles",
            "lan",
            "--models",
            "pangu-tiny",
            "--steps",
            "4",
            "--micro-batches",
            "2",
            "--trace",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, f"bench_wan.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    d = json.loads(proc.stdout)
    assert d["links"]["lan"]["ok"] is True
    assert positive(d["one_process"]["pangu-tiny"]["step_ms"])
    measured = [r for r in d["rows"] if "status" not in r]
    assert {(r["profile"], r["variant"]) for r in measured} == {
        ("lan", "fp32"),
        ("lan", "codecs"),
        ("lan", "pipelined m=2"),
        ("lan", "pipelined m=2 + codecs"),
    }
    for r in measured:
        assert r["steps"] == 4
        assert all(positive(r[k]) for k in ("step_ms", "samples_s", "vs_one_process", "vs_lan_split", "loss"))
        assert all(positive(v) for v in r["wire_mb_per_step"].values())
    by = {r["variant"]: r for r in measured}
    fp32, codecs = by["fp32"], by["codecs"]
    # the codecs shrink what crosses the link each way (min_max at 6-8 bits vs float32)
    assert all(codecs["wire_mb_per_step"][k] < 0.8 * fp32["wire_mb_per_step"][k] for k in fp32["wire_mb_per_step"])
    assert not [r for r in d["rows"] if "status" in r]
    # pipelining keeps the full batch's update: after 4 Adam steps the loss differs only by the rounding of
    # the accumulation order, carried through the steps (well under 0.1%)
    assert abs(by["pipelined m=2"]["loss"] - fp32["loss"]) < 1e-3 * fp32["loss"]
    # the traced rows: each party's compute per step, and the bound it puts on a pipelined step (a step is
    # never shorter than the slower party's compute in it, nor than party B's, who starts by receiving,
    # with its wait between steps: one RTT plus party A's embedding backward and forward of one micro-batch,
    # of which B's own work after its last send, its deferred optimizer step, fills a part; 10% for medians
    # of different series)
    rtt = d["links"]["lan"]["rtt_ms"]
    for name in ("pipelined m=2", "pipelined m=2 + codecs"):
        r = by[name]
        a, b = r["trace"]["party A"], r["trace"]["party B"]
        assert set(r["trace"]) == {"party A", "party B"}
        assert positive(a["compute_ms"]) and positive(b["compute_ms"]) and positive(b["finish_ms"])
        assert b["first_receives"] == 1 and a["first_receives"] == 0
        assert a["first_stage_ms"] == a["embedding forward cpu ms per micro-batch"]
        assert a["last_stage_ms"] == a["embedding backward cpu ms per micro-batch"]
        assert r["compute_bound_ms"] == max(a["compute_ms"], b["compute_ms"])
        gap = rtt + a["first_stage_ms"] + a["last_stage_ms"]
        assert b["tail_ms"] == pytest.approx(b["finish_ms"], abs=0.05)  # its last stage (backbone backward) has no then
        assert r["bound_ms"] == pytest.approx(max(a["compute_ms"], b["compute_ms"] - b["tail_ms"] + max(b["tail_ms"], gap)))
        assert r["step_ms"] >= 0.9 * r["bound_ms"]
        seq = by["codecs" if "codecs" in name else "fp32"]["step_ms"]
        assert r["vs_sequential"] == pytest.approx(seq / r["step_ms"])
        assert r["vs_sequential_at_bound"] == pytest.approx(seq / r["bound_ms"])
