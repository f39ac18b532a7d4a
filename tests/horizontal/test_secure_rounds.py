"""Secure aggregation (SecAgg+) inside the FedAvg rounds: equality with plain FedAvg on the quantised
updates, dropouts at every stage, the aggregator's received frames, LoRA adapters, the job file, and a
federation of processes over mutual TLS that reproduces the in-process run bit for bit."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from splitlink.certs import make_dev_certs
from splitlink.channel import InProcessCommunicator, ServerConfig
from splitlink.errors import YamlConfigError
from splitlink.horizontal.aggregator import FedAvg, SecureAggregation, ServerOptimizer
from splitlink.horizontal.client import LocalOptions, LocalTrainer, seed_of
from splitlink.horizontal.job import build_trainer, load_job, make_aggregator
from splitlink.horizontal.rounds import (
    Aggregator,
    ClientParty,
    LocalTransport,
    NetworkTransport,
    RoundError,
    RoundOptions,
)
from splitlink.horizontal.secagg import quantise
from splitlink.horizontal.secure_rounds import (
    SA_ROSTER,
    SA_SHARES,
    SA_UNMASK,
    SecureSettings,
    flatten_delta,
    pack_map,
    unpack_map,
    weighted,
)
from splitlink.util import free_ports

# clip = levels / 1024 makes the quantisation scale levels / clip = 1024 exactly: values on the 2^-10 grid
# quantise without rounding, and every later step (int -> float32, * 2^-10, / a power of two) is exact.
LEVELS = (1 << 15) - 1
GRID_CLIP = LEVELS / 1024


def _global() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "w": torch.randint(-64, 64, (6, 5), generator=g).float() / 64,
        "b": torch.randint(-64, 64, (7,), generator=g).float() / 64,
        "steps": torch.tensor([3], dtype=torch.int64),
    }


class Fixed:
    """A client whose round-r update is ``(r + 1) * delta`` (no training): the test knows every update."""

    def __init__(self, name: str, delta: dict[str, torch.Tensor], samples: int = 10, seed: int = 0) -> None:
        self.name, self.delta, self.samples, self.opts = name, delta, samples, SimpleNamespace(seed=seed)
        self.sent: list[dict[str, torch.Tensor]] = []

    def train_round(self, r: int, g: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int, float]:
        out = {k: (g[k] + (r + 1) * self.delta[k]) if k in self.delta else g[k].clone() for k in g}
        self.sent.append(out)
        return out, self.samples, 0.25

    def set_state(self, state: Mapping[str, torch.Tensor]) -> None:
        self.final = dict(state)


def _grid_deltas(n: int, seed: int = 0, span: int = 2000) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        {
            k: torch.randint(-span, span, v.shape, generator=g).float() / 1024
            for k, v in _global().items()
            if v.is_floating_point()
        }
        for _ in range(n)
    ]


def _run(trainers: dict[str, Any], strategy: Any, rounds: int = 2, transport: Any = None, **opts: Any) -> Aggregator:
    agg = Aggregator(
        list(trainers), _global(), strategy, RoundOptions(rounds=rounds, **opts), transport or LocalTransport(trainers)
    )
    agg.run()
    return agg


def _secure(inner: Any = None, **kw: Any) -> SecureAggregation:
    return SecureAggregation(inner or FedAvg(), SecureSettings(**{"clip": GRID_CLIP, **kw}))


@pytest.mark.parametrize("inner", ["fedavg", "momentum", "adam"])
def test_secure_equals_plain_fedavg_on_grid_updates(inner: str) -> None:
    # Equal sample counts (weights 1), updates on the 2^-10 grid: quantisation is exact, the masks cancel
    # exactly in Z/2^32, so the secure mean EQUALS plain FedAvg's, and so do FedAvgM/FedAdam on top of it.
    # FedAdam's step (m / sqrt(v)) leaves the grid, so the next round's updates would not be on it: one round.
    deltas = _grid_deltas(4)
    rounds = 1 if inner == "adam" else 2

    def make() -> Any:
        return FedAvg() if inner == "fedavg" else ServerOptimizer(inner, lr=0.5)

    plain = _run({f"c{i}": Fixed(f"c{i}", d) for i, d in enumerate(deltas)}, make(), rounds=rounds)
    sec = _run({f"c{i}": Fixed(f"c{i}", d) for i, d in enumerate(deltas)}, _secure(make()), rounds=rounds)
    assert any(not torch.equal(sec.state[k], v) for k, v in _global().items())
    for k, v in plain.state.items():
        assert torch.equal(sec.state[k], v), k
    assert [r["clipped"] for r in sec.history] == [0] * rounds
    assert sec.history[0]["clients"] == ["c0", "c1", "c2", "c3"] and sec.history[0]["loss"] == 0.25
    assert sec.strategy.name == f"secure-{make().name}"


def test_unequal_weights_match_the_quantised_reference_and_the_plain_mean_within_the_step() -> None:
    g = torch.Generator().manual_seed(5)
    deltas = [
        {k: torch.randn(v.shape, generator=g) * 0.3 for k, v in _global().items() if v.is_floating_point()} for _ in range(3)
    ]
    samples = [7, 13, 20]
    clip = 1.0
    trainers = {f"c{i}": Fixed(f"c{i}", d, s, seed=4) for i, (d, s) in enumerate(zip(deltas, samples))}
    sec = _run(trainers, _secure(clip=clip), rounds=1)
    plain = _run({f"c{i}": Fixed(f"c{i}", d, s) for i, (d, s) in enumerate(zip(deltas, samples))}, FedAvg(), rounds=1)
    # like-with-like reference: each client's quantised weighted update (its own rounding seed), summed as
    # integers, then the aggregator's documented decoding: global + sum * clip / levels / sum(weights)
    g0 = _global()
    weights = [s / max(samples) for s in samples]
    cfg = SecureSettings(clip=clip).config(3, "run")
    ints = sum(
        quantise(weighted(flatten_delta(t.sent[0], g0), w), cfg, seed=seed_of("secagg", 4, 0, c))[0]
        for (c, t), w in zip(trainers.items(), weights)
    )
    total = ints.to(torch.float32) * (1.0 / cfg.scale)
    delta = total.double() / sum(weights)
    pos = 0
    for k in sorted(["b", "w"]):
        n = g0[k].numel()
        want = (g0[k].double() + delta[pos : pos + n].reshape(g0[k].shape)).float()
        pos += n
        assert torch.equal(sec.state[k], want), k
        # vs plain FedAvg: each client's stochastic rounding errs by < one step (clip / levels) per element,
        # so the mean errs by < n * step / sum(weights); plus float32 rounding of the result (|x| < 4)
        bound = 3 * (clip / LEVELS) / sum(weights) + 4 * 2**-23
        assert float((sec.state[k].double() - plain.state[k].double()).abs().max()) < bound
    assert torch.equal(sec.state["steps"], g0["steps"])  # integer tensors keep the global value
    assert sec.history[0]["samples"] == 40


def test_clipped_values_are_counted_per_round() -> None:
    deltas = _grid_deltas(3)
    deltas[1]["w"][0, :3] = torch.tensor([40.0, -50.0, 33.0])  # beyond the clip (~32) in round 1 already
    deltas[2]["b"][:2] = torch.tensor([20.0, -20.0])  # within the clip in round 1, beyond it in round 2 (x2)
    sec = _run({f"c{i}": Fixed(f"c{i}", d) for i, d in enumerate(deltas)}, _secure())
    assert [r["clipped"] for r in sec.history] == [3, 3 + 2]


class Dropping(LocalTransport):
    """Clients that stop answering from a given stage on (their transport goes silent)."""

    def __init__(self, trainers: Mapping[str, Any], drop: Mapping[str, str]) -> None:
        super().__init__(trainers)
        self.drop = dict(drop)

    def deliver(self, round_: int, client: str, kind: str, msg: Mapping[str, Any]) -> Any:
        if self.drop.get(client) == kind:
            return None
        return super().deliver(round_, client, kind, msg)


@pytest.mark.parametrize(
    "stage,dropped", [(SA_SHARES, ["c1"]), (SA_SHARES, ["c0", "c3"]), (SA_ROSTER, ["c2", "c4"]), (SA_UNMASK, ["c4", "c0"])]
)
def test_five_clients_threshold_three_survive_dropouts(stage: str, dropped: list[str]) -> None:
    # SA_SHARES: the client received the relayed shares but never sends its masked input (dropped after the
    # share stage: its pairwise masks are reconstructed); SA_ROSTER: it never shares (excluded cleanly);
    # SA_UNMASK: its masked input is in the sum but it sends no unmask shares.
    deltas = _grid_deltas(5, seed=2)
    trainers = {f"c{i}": Fixed(f"c{i}", d) for i, d in enumerate(deltas)}
    drop = {c: stage for c in dropped}
    agg = _run(trainers, _secure(threshold=3), rounds=1, transport=Dropping(trainers, drop), min_clients=3)
    in_sum = [c for c in trainers if c not in dropped or stage == SA_UNMASK]
    assert agg.history[0]["clients"] == in_sum
    where = {SA_SHARES: "masked_input", SA_ROSTER: "share", SA_UNMASK: "unmask"}[stage]
    assert agg.history[0]["dropped"][where] == sorted(dropped)
    g0 = _global()
    for k in ("w", "b"):  # sums of 2^-10-grid values are exact; the division is the same fp64 operation
        want = (g0[k].double() + sum(trainers[c].delta[k].double() for c in in_sum) / len(in_sum)).float()
        assert torch.equal(agg.state[k], want), k


def test_three_of_five_dropping_is_a_clear_error_naming_them() -> None:
    deltas = _grid_deltas(5, seed=3)
    trainers = {f"c{i}": Fixed(f"c{i}", d) for i, d in enumerate(deltas)}
    drop = {"c1": SA_SHARES, "c2": SA_SHARES, "c4": SA_SHARES}
    with pytest.raises(RoundError, match=r"round 1: .*threshold.*only 2 of 5.*c1 \(at masked input.*c2.*c4"):
        _run(trainers, _secure(threshold=3), rounds=1, transport=Dropping(trainers, drop), min_clients=2)


def test_settings_are_validated_with_the_numbers() -> None:
    with pytest.raises(ValueError, match=r"threshold 2 is invalid.*3 <= t <= 5"):
        SecureSettings(clip=1.0, threshold=2).config(5, "s")
    with pytest.raises(ValueError, match=r"overflow"):
        SecureSettings(clip=1.0, bits=24).config(300, "s")
    assert SecureSettings(clip=1.0).neighbourhood(5) == 4 and SecureSettings(clip=1.0).neighbourhood(100) == 14
    SecureSettings(clip=1.0).config(100, "s")  # the default k and t are valid for large n
    assert unpack_map(pack_map({"a": b"x", "bb": b""}), "m") == {"a": b"x", "bb": b""}
    for bad in (b"\x01", b"\x01\x00\x05\x00ab", pack_map({"a": b"x"}) + b"z"):
        with pytest.raises(ValueError, match="m: "):
            unpack_map(bad, "m")


# --- over the communicator: what the aggregator receives ------------------------------------------------


def _linear_trainer(name: str, seed: int) -> LocalTrainer:
    torch.manual_seed(0)
    model = nn.Linear(64, 8)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 64, generator=g)
    data = {"x": x, "labels": x[:, :8].sum(1)}

    def loss(m: nn.Module, b: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return ((m(b["x"]).sum(1) - b["labels"]) ** 2).mean()

    opts = LocalOptions(batch_size=8, lr=0.05, optimizer="sgd", aggregate_strategy="step", aggregate_freq=2, seed=seed)
    return LocalTrainer(name, model, data, opts, loss_fn=loss)


def test_the_aggregator_never_receives_an_individual_update_and_matches_the_local_run() -> None:
    names = ["c0", "c1", "c2"]
    received: list[tuple[str, str, dict[str, Any]]] = []

    class Recording(InProcessCommunicator):
        def receive(self, target, timeout=None, **kw):  # type: ignore[no-untyped-def]
            out = super().receive(target, timeout, **kw)
            kind, t = out
            received.append((target, kind, dict(t)))
            return out

    hub: dict[str, object] = {}
    comm = Recording(ServerConfig("arb", "x:1"), [ServerConfig(c, "x:1") for c in names], hub=hub)
    trainers = {c: _linear_trainer(c, i) for i, c in enumerate(names)}
    updates: dict[str, list[torch.Tensor]] = {c: [] for c in names}
    for c, t in trainers.items():
        orig = t.train_round

        def spy(r: int, g: Mapping[str, torch.Tensor], orig: Any = orig, c: str = c) -> Any:
            state, n, loss = orig(r, g)
            updates[c].append(flatten_delta(state, g))
            return state, n, loss

        t.train_round = spy  # type: ignore[method-assign]
    settings = SecureSettings(clip=0.5)
    parties = [
        ClientParty(
            InProcessCommunicator(ServerConfig(c, "x:1"), ServerConfig("arb", "x:1"), hub=hub),
            "arb",
            t,
            timeout=60,
            secure=settings,
        )
        for c, t in trainers.items()
    ]
    threads = [threading.Thread(target=p.run, daemon=True) for p in parties]
    for th in threads:
        th.start()
    initial = {k: v.detach().clone() for k, v in _linear_trainer("x", 0).model.named_parameters()}
    opts = RoundOptions(rounds=2, round_deadline=60)
    agg = Aggregator(names, initial, SecureAggregation(FedAvg(), settings), opts, NetworkTransport(comm))
    agg.run()
    for th in threads:
        th.join(60)
    assert all(not th.is_alive() for th in threads)
    numel = 64 * 8 + 8
    kinds = {k for _, k, _ in received}
    assert kinds == {"fl:sa:advert", "fl:sa:shares", "fl:sa:masked", "fl:sa:unmask"}
    cfg = settings.config(3, "run")
    for sender, kind, frame in received:
        for key, t in frame.items():
            assert isinstance(t, torch.Tensor), (kind, key)
            if t.is_floating_point():
                assert t.numel() == 1, (kind, key)  # only the loss: no float vector reaches the aggregator
            elif t.dtype == torch.uint8:  # secagg messages: keys, encrypted shares; no update bytes inside
                blob = t.numpy().tobytes()
                assert len(blob) < numel, (kind, key)
                for u in updates[sender]:
                    assert u[:8].numpy().tobytes() not in blob
            elif t.numel() > 1:
                assert kind == "fl:sa:masked" and t.dtype == torch.int32 and t.numel() >= numel
                r = int(frame["round"])
                q, _ = quantise(updates[sender][r], cfg, seed=seed_of("secagg", trainers[sender].opts.seed, r, sender))
                same = (t[:numel].to(torch.int64) == q).float().mean()
                assert same < 0.02, f"{sender}'s masked input equals its quantised update in {same:.1%} of places"
    # the same federation through the in-process transport gives the same state bit for bit
    local = {c: _linear_trainer(c, i) for i, c in enumerate(names)}
    ref = Aggregator(names, initial, SecureAggregation(FedAvg(), settings), opts, LocalTransport(local))
    ref.run()
    for k, v in ref.state.items():
        assert torch.equal(agg.state[k], v), k
    assert [(r["loss"], r["clipped"]) for r in agg.history] == [(r["loss"], r["clipped"]) for r in ref.history]


# --- the job file, LoRA, and processes over mutual TLS ----------------------------------------------------

SMALL = {"vocab_size": 260, "n_positions": 16, "n_embd": 16, "n_layer": 1, "n_head": 2, "num_labels": 2}


def _data(seed: int, n: int = 12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 257, (n, 16))
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": (ids[:, 0] > 128).astype(np.int64)}


def _job(
    tmp: Path,
    *,
    aggregator: str = "secure",
    secure: str = "{clip: 0.5, bits: 16}",
    ssl: bool = False,
    ports: list[int] | None = None,
    steps: int = 4,
    clients: int = 3,
) -> Path:
    ports = ports or list(range(1, clients + 2))
    names = [f"c{i}" for i in range(clients)]
    for i, c in enumerate(names):
        np.savez(tmp / f"{c}.npz", **_data(i, 12 + 4 * i))
    party = "\n".join(f'  - {{name: {c}, address: "127.0.0.1:{ports[i + 1]}", data: {c}.npz}}' for i, c in enumerate(names))
    sec = f", secure: {secure}" if secure else ""
    text = f"""session_id: sec
aggregator: {{name: arbiter, address: "127.0.0.1:{ports[0]}"}}
clients:
{party}
enable_ssl: {str(ssl).lower()}
{"ssl: {cert_dir: certs, ca_cert_path: certs/ca.crt, password: splitlink}" if ssl else ""}
fed_args: {{aggregate_strategy: step, aggregate_freq: 2, round_deadline: 120, aggregator: {aggregator}{sec}}}
training_args: {{max_steps: {steps}, per_device_train_batch_size: 4, learning_rate: 0.01, optim: adam, seed: 3}}
model: {json.dumps(SMALL)}
peft: {{type: lora, r: 2, lora_alpha: 4}}
"""
    p = tmp / "job.yaml"
    p.write_text(text)
    return p


def _in_process(job: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], list[dict[str, Any]]]:
    cfg = load_job(job)
    trainers = {c.name: build_trainer(cfg, c.name) for c in cfg.clients}
    agg = make_aggregator(cfg, LocalTransport(trainers))
    return agg.run(), trainers, agg.history


def test_lora_adapters_through_secure_aggregation(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    (tmp_path / "s").mkdir()
    (tmp_path / "p").mkdir()
    sec, trainers, history = _in_process(_job(tmp_path / "s", steps=2))
    plain, _, _ = _in_process(_job(tmp_path / "p", aggregator="fedavg", secure="", steps=2))
    names = set(trainers["c0"].exchanged)
    assert set(sec) == names and all("lora_" in k or ".score." in k for k in names)
    assert history[0]["clipped"] == 0 and history[0]["clients"] == ["c0", "c1", "c2"]
    base = {
        k: v for k, v in build_trainer(load_job(tmp_path / "s" / "job.yaml"), "c0").model.named_parameters() if k not in names
    }
    for t in trainers.values():
        for k, v in t.model.named_parameters():
            if k in base:
                assert torch.equal(v, base[k]), k
    step = 0.5 / LEVELS
    # one round: per element the secure mean differs from FedAvg's by < n * step / sum(weights) (stochastic
    # rounding of 3 clients, weights 12/20, 16/20, 1) plus float32 rounding of values below 1
    bound = 3 * step / (12 / 20 + 16 / 20 + 1) + 2**-23
    for k in names:
        assert float((sec[k].double() - plain[k].double()).abs().max()) < bound, k
    init = {k: v for k, v in build_trainer(load_job(tmp_path / "s" / "job.yaml"), "c0").model.named_parameters() if k in names}
    assert any(not torch.equal(sec[k], init[k]) for k in names)  # the adapters did train


def test_job_file_secure_section_is_strict(tmp_path: Path) -> None:
    cfg = load_job(_job(tmp_path, secure="{clip: 0.5, threshold: 3, neighbours: 2, bits: 12}"))
    assert cfg.fed_args.secure is not None and cfg.fed_args.secure.neighbours == 2
    for secure, msg in [
        ("{clip: 0.5, threshold: 1}", r"fed_args.secure.*threshold 1 is invalid.*2 <= t <= 3"),
        ("{clip: 0}", r"fed_args.secure.clip"),
        ("{clip: 1, bits: 30}", r"fed_args.secure.bits"),
        ("{clip: 1, neighbours: 5}", r"fed_args.secure.*neighbours = 5.*only 2 other"),
        ("{clip: 1, colour: red}", r"fed_args.secure.colour"),
        ("{threshold: 2}", r"fed_args.secure.clip"),
    ]:
        with pytest.raises(YamlConfigError, match=msg):
            load_job(_job(tmp_path, secure=secure))
    with pytest.raises(YamlConfigError, match=r"fed_args.secure.*aggregator is fedavg"):
        load_job(_job(tmp_path, aggregator="fedavg"))


@pytest.mark.slow
def test_secure_processes_over_mtls_reproduce_the_in_process_run(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    ports = free_ports(4)
    make_dev_certs(tmp_path / "certs", ["arbiter", "c0", "c1", "c2"])
    job = _job(tmp_path, ssl=True, ports=ports)
    cmds = {"arbiter": ["aggregator"], **{c: ["client", "--name", c] for c in ("c0", "c1", "c2")}}
    procs = {
        n: subprocess.Popen(
            [sys.executable, "-m", "splitlink", "fl", *c, "--job", str(job), "--save-state", str(tmp_path / f"{n}.pt")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n, c in cmds.items()
    }
    outs = {n: p.communicate(timeout=300) for n, p in procs.items()}
    for n, p in procs.items():
        assert p.returncode == 0, f"{n}: {outs[n][1][-3000:]}"
    ref, _, history = _in_process(job)
    for n in cmds:
        got = torch.load(tmp_path / f"{n}.pt", weights_only=True)
        assert set(got) == set(ref)
        for k in ref:
            assert torch.equal(got[k], ref[k]), (n, k)
    agg = json.loads(outs["arbiter"][0].strip().splitlines()[-1])
    assert [(r["loss"], r["clipped"], r["clients"]) for r in agg["history"]] == [
        (r["loss"], r["clipped"], r["clients"]) for r in history
    ]
    assert all(r["secure"] for r in agg["history"])


def test_secure_mean_in_chunks_equals_the_whole_vector_formula(monkeypatch: pytest.MonkeyPatch) -> None:
    from splitlink.horizontal import secure_rounds

    g = torch.Generator().manual_seed(3)
    state = {
        "a": torch.randn(5, 7, generator=g),
        "b": torch.randn(13, generator=g, dtype=torch.float64),
        "c": torch.randn(4, 3, generator=g).to(torch.bfloat16),
        "steps": torch.tensor([7], dtype=torch.int64),
    }
    total = torch.randn(35 + 13 + 12, generator=g) * 3
    monkeypatch.setattr(secure_rounds, "_MEAN_CHUNK", 4)  # chunks that straddle nothing and tails of 1..3
    got = secure_rounds.secure_mean(state, total, 2.7)
    # the formula on whole vectors (float64, cast back): element-wise, so chunking must not change a bit
    delta = total.to(torch.float64) / 2.7
    pos = 0
    for k in ("a", "b", "c"):
        n = state[k].numel()
        want = (state[k].to(torch.float64) + delta[pos : pos + n].reshape(state[k].shape)).to(state[k].dtype)
        assert got[k].dtype == state[k].dtype and torch.equal(got[k], want), k
        pos += n
    assert torch.equal(got["steps"], state["steps"]) and got["steps"] is not state["steps"]
    with pytest.raises(ValueError, match="the secure sum holds 59 values, the global state 60"):
        secure_rounds.secure_mean(state, total[:-1], 2.7)
