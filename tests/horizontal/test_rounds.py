"""FedAvg rounds: equality with centralised training where theory says so, exact weighted averaging,
server optimizers, sampling, deadlines and minimum clients, checkpoint and resume."""

from __future__ import annotations

import threading
from collections.abc import Mapping

import pytest
import torch
from torch import nn

from splitlink.channel import InProcessCommunicator, ServerConfig
from splitlink.horizontal.aggregator import (
    ClientUpdate,
    FedAvg,
    SecureAggregation,
    ServerOptimizer,
    make_strategy,
    weighted_mean,
)
from splitlink.horizontal.client import LocalOptions, LocalTrainer
from splitlink.horizontal.rounds import (
    Aggregator,
    ClientParty,
    LocalTransport,
    NetworkTransport,
    RoundError,
    RoundOptions,
)


def mse(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return ((model(batch["x"]).squeeze(-1) - batch["labels"]) ** 2).mean()


def linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(3, 1).double()


def data(seed: int, n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return {"x": x, "labels": x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 0.1}


def trainer(name: str, d: dict[str, torch.Tensor], **kw: object) -> LocalTrainer:
    opts = LocalOptions(batch_size=len(d["labels"]), lr=0.1, optimizer="sgd", aggregate_strategy="step", aggregate_freq=1, **kw)  # type: ignore[arg-type]
    return LocalTrainer(name, linear(), d, opts, loss_fn=mse)


def _central(w0: dict[str, torch.Tensor], union: dict[str, torch.Tensor], steps: int, lr: float) -> nn.Module:
    central = linear()
    with torch.no_grad():
        for k, p in central.named_parameters():
            p.copy_(w0[k])
    opt = torch.optim.SGD(central.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        mse(central, union).backward()
        opt.step()
    return central


def test_fedavg_one_full_batch_sgd_step_equals_central_step_exactly() -> None:
    # Equal sample counts, one full-batch SGD step each: mean_i (w - lr g_i) = w - lr mean_i g_i, and the
    # mean of equal-size batch gradients is the union's gradient. With small integer data, dyadic
    # weights and a power-of-two learning rate every fp64 operation is exact, so the two are EQUAL.
    g = torch.Generator().manual_seed(0)
    parts = []
    for _ in range(2):
        x = torch.randint(-3, 4, (8, 3), generator=g).double()
        parts.append({"x": x, "labels": torch.randint(-4, 5, (8,), generator=g).double()})
    w0 = {"weight": torch.tensor([[0.5, -0.25, 0.125]], dtype=torch.float64), "bias": torch.tensor([0.25], dtype=torch.float64)}
    trainers = {f"c{i}": trainer(f"c{i}", d) for i, d in enumerate(parts)}
    for t in trainers.values():
        t.opts.lr = 0.125
    fed = Aggregator(list(trainers), w0, FedAvg(), RoundOptions(rounds=3), LocalTransport(trainers)).run()
    union = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    central = _central(w0, union, 3, 0.125)
    for k, v in central.named_parameters():
        assert torch.equal(fed[k], v.detach()), k
    assert not torch.equal(fed["weight"], w0["weight"])


def test_fedavg_equals_central_on_real_valued_data() -> None:
    # Random real data: equal up to the order of fp64 sums (a few ulp of values of order 1).
    parts = [data(1, 8), data(2, 8)]
    w0 = {k: v.detach().clone() for k, v in linear().named_parameters()}
    trainers = {f"c{i}": trainer(f"c{i}", d) for i, d in enumerate(parts)}
    fed = Aggregator(list(trainers), w0, FedAvg(), RoundOptions(rounds=3), LocalTransport(trainers)).run()
    central = _central(w0, {k: torch.cat([p[k] for p in parts]) for k in parts[0]}, 3, 0.1)
    for k, v in central.named_parameters():
        torch.testing.assert_close(fed[k], v.detach(), rtol=0, atol=1e-14)


def test_weighted_mean_is_exact() -> None:
    g = {"w": torch.zeros(4, dtype=torch.float64), "n": torch.tensor(7)}
    ups = [
        ClientUpdate("a", {"w": torch.tensor([1.0, 2, 3, 4], dtype=torch.float64), "n": torch.tensor(7)}, 1),
        ClientUpdate("b", {"w": torch.tensor([5.0, 6, 7, 8], dtype=torch.float64), "n": torch.tensor(7)}, 3),
    ]
    out = weighted_mean(g, ups)
    assert torch.equal(out["w"], torch.tensor([4.0, 5, 6, 7], dtype=torch.float64))  # (1*x + 3*y) / 4, exact
    assert int(out["n"]) == 7
    f32 = {"w": torch.zeros(3)}
    ups32 = [
        ClientUpdate("a", {"w": torch.tensor([0.1, 0.2, 0.3])}, 2),
        ClientUpdate("b", {"w": torch.tensor([0.7, -0.2, 1.3])}, 5),
    ]
    want = ((torch.tensor([0.1, 0.2, 0.3]).double() * (2 / 7)) + torch.tensor([0.7, -0.2, 1.3]).double() * (5 / 7)).float()
    assert torch.equal(weighted_mean(f32, ups32)["w"], want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_weighted_mean_of_large_states_is_the_float64_mean_rounded_once(dtype: torch.dtype) -> None:
    # long enough for the vectorised kernels, an odd length for their tails; states of unlike magnitudes.
    # The result must be the float64 weighted mean rounded once to the state's dtype: as close to the
    # float64 reference as its correctly rounded value, up to float64 rounding (the two kernels may fuse
    # the multiply-add differently on another CPU; an accumulation in the state's dtype fails by far).
    gen = torch.Generator().manual_seed(3)
    n, numel = 7, 100_003
    ups = [ClientUpdate(f"c{i}", {"w": (torch.randn(numel, generator=gen) * 4.0**i).to(dtype)}, 10 + 3 * i) for i in range(n)]
    total = float(sum(u.samples for u in ups))
    ref = torch.zeros(numel, dtype=torch.float64)
    for u in ups:
        ref.add_(u.state["w"].to(torch.float64), alpha=u.samples / total)
    got = weighted_mean({"w": torch.zeros(numel, dtype=dtype)}, ups)["w"]
    assert got.dtype == dtype
    err, best = (got.double() - ref).abs(), (ref.to(dtype).double() - ref).abs()
    assert bool((err <= best + 1e-12 * ref.abs()).all())
    # and the same bits wherever the reference is not within float64 rounding of a tie
    assert (got != ref.to(dtype)).float().mean() < 1e-3


def test_bad_updates_are_named() -> None:
    g = {"w": torch.zeros(2)}
    with pytest.raises(ValueError, match="client 'b'.*missing"):
        weighted_mean(g, [ClientUpdate("a", {"w": torch.zeros(2)}, 1), ClientUpdate("b", {"v": torch.zeros(2)}, 1)])
    with pytest.raises(ValueError, match="client 'a'.*shape|client 'a'.*\\(3,\\)"):
        weighted_mean(g, [ClientUpdate("a", {"w": torch.zeros(3)}, 1)])
    with pytest.raises(ValueError, match="0 samples"):
        weighted_mean(g, [ClientUpdate("a", {"w": torch.zeros(2)}, 0)])


def test_server_momentum_and_adam() -> None:
    g = {"w": torch.tensor([1.0, 1.0], dtype=torch.float64)}
    up = [ClientUpdate("a", {"w": torch.tensor([2.0, 0.0], dtype=torch.float64)}, 1)]
    m = ServerOptimizer("momentum", lr=0.5, beta1=0.5)
    s1 = m.aggregate(0, g, up)  # d = [1, -1]; m = d; w = 1 + 0.5 d
    assert torch.equal(s1["w"], torch.tensor([1.5, 0.5], dtype=torch.float64))
    s2 = m.aggregate(1, s1, up)  # d = [0.5, -0.5]; m = 0.5*[1,-1] + d = [1, -1]
    assert torch.equal(s2["w"], torch.tensor([2.0, 0.0], dtype=torch.float64))
    a = ServerOptimizer("adam", lr=0.1, beta1=0.0, beta2=0.0, tau=1e-12)
    s = a.aggregate(0, g, up)  # m = d, v = d^2: step = sign(d) (up to tau)
    torch.testing.assert_close(s["w"], torch.tensor([1.1, 0.9], dtype=torch.float64), rtol=0, atol=1e-12)
    b = ServerOptimizer("adam", lr=0.1)
    b.load_state_dict(a.state_dict())
    assert set(b.state_dict()) == {"m.w", "v.w"}


def test_make_strategy_secure_needs_its_settings() -> None:
    from splitlink.horizontal.secure_rounds import SecureSettings

    with pytest.raises(ValueError, match="fed_args.secure"):
        make_strategy("secure")
    s = make_strategy("secure", "adam", secure=SecureSettings(clip=1.0))
    assert isinstance(s, SecureAggregation) and s.name == "secure-fedadam"
    with pytest.raises(TypeError, match="never sees plain client updates"):
        s.aggregate(0, {}, [])
    with pytest.raises(ValueError, match="unknown aggregator"):
        make_strategy("median")


def test_sampling_is_seeded_and_weighted_by_samples() -> None:
    parts = {f"c{i}": data(10 + i, 4 + 2 * i) for i in range(4)}
    trainers = {k: trainer(k, d) for k, d in parts.items()}
    w0 = {k: v.detach().clone() for k, v in linear().named_parameters()}
    agg = Aggregator(list(trainers), w0, FedAvg(), RoundOptions(rounds=4, clients_per_round=2, seed=3), LocalTransport(trainers))
    agg.run()
    picks = [r["clients"] for r in agg.history]
    assert all(len(p) == 2 for p in picks) and len({tuple(p) for p in picks}) > 1
    again = Aggregator(
        list(trainers),
        w0,
        FedAvg(),
        RoundOptions(rounds=4, clients_per_round=2, seed=3),
        LocalTransport({k: trainer(k, d) for k, d in parts.items()}),
    )
    again.run()
    assert [r["clients"] for r in again.history] == picks
    assert [r["samples"] for r in agg.history] == [sum(len(parts[c]["labels"]) for c in p) for p in picks]


def test_fedprox_pulls_towards_the_global_state() -> None:
    d = data(5, 16)
    w0 = {k: v.detach().clone() for k, v in linear().named_parameters()}
    far = {}
    for mu in (0.0, 10.0):
        t = LocalTrainer(
            "c", linear(), d, LocalOptions(batch_size=4, lr=0.05, optimizer="sgd", aggregate_freq=2, fedprox_mu=mu), loss_fn=mse
        )
        s, n, _ = t.train_round(0, w0)
        far[mu] = sum(float((s[k] - w0[k]).norm()) for k in s)
        assert n == 16
    assert far[10.0] < far[0.0]


def _net_run(
    trainers: dict[str, LocalTrainer],
    opts: RoundOptions,
    silent: set[str] = frozenset(),  # type: ignore[assignment]
    broken: set[str] = frozenset(),
) -> Aggregator:  # type: ignore[assignment]
    hub: dict[str, object] = {}
    names = list(trainers)
    agg_comm = InProcessCommunicator(ServerConfig("arbiter", "x:1"), [ServerConfig(n, "x:1") for n in names], hub=hub)
    w0 = {k: v.detach().clone() for k, v in linear().named_parameters()}
    agg = Aggregator(names, w0, FedAvg(), opts, NetworkTransport(agg_comm))
    threads = []
    for n in names:
        if n in silent:
            continue
        comm = InProcessCommunicator(ServerConfig(n, "x:1"), ServerConfig("arbiter", "x:1"), hub=hub)
        if n in broken:
            trainers[n].opts.batch_size = 0  # fails inside train_round's schedule use
            trainers[n].steps_in_round = lambda: 1 // 0  # type: ignore[method-assign]
        party = ClientParty(comm, "arbiter", trainers[n], timeout=5)
        th = threading.Thread(target=lambda p=party: _quiet(p.run), daemon=True)
        th.start()
        threads.append(th)
    try:
        agg.run()
    finally:
        agg_comm.shutdown()
        for th in threads:
            th.join(10)
    return agg


def _quiet(fn: object) -> None:
    try:
        fn()  # type: ignore[operator]
    except Exception:  # noqa: BLE001 - a client thread ending with the aggregator gone
        pass


def test_deadline_and_min_clients_name_late_and_failed_clients() -> None:
    torch.set_num_threads(1)
    parts = {f"c{i}": data(20 + i, 6) for i in range(3)}
    mk = lambda: {k: trainer(k, d) for k, d in parts.items()}
    with pytest.raises(
        RoundError,
        match=r"round 1: only 1 of 3 .*0.5 s round deadline.*min_clients is 2.*late.*: c2.*failed: c1 \(ZeroDivisionError",
    ):
        _net_run(mk(), RoundOptions(rounds=2, min_clients=2, round_deadline=0.5), silent={"c2"}, broken={"c1"})
    agg = _net_run(mk(), RoundOptions(rounds=2, min_clients=2, round_deadline=0.5), silent={"c2"})
    assert [r["late"] for r in agg.history] == [["c2"], ["c2"]]
    assert [r["clients"] for r in agg.history] == [["c0", "c1"], ["c0", "c1"]]


def test_a_late_answer_is_dropped_in_the_next_round() -> None:
    torch.set_num_threads(1)
    parts = {f"c{i}": data(50 + i, 6) for i in range(2)}
    trainers = {k: trainer(k, d) for k, d in parts.items()}
    slow = trainers["c1"]
    real = slow.train_round

    def late_in_round_0(r: int, state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int, float]:
        import time

        if r == 0:
            time.sleep(3.0)  # answers round 1 after its 2 s deadline, while round 2 waits (2 s - 4 s)
        return real(r, state)

    slow.train_round = late_in_round_0  # type: ignore[method-assign]
    agg = _net_run(trainers, RoundOptions(rounds=2, min_clients=1, round_deadline=2.0))
    assert [r["late"] for r in agg.history] == [["c1"], []]
    assert [r["clients"] for r in agg.history] == [["c0"], ["c0", "c1"]]


def test_network_rounds_equal_local_rounds_bitwise() -> None:
    torch.set_num_threads(1)
    parts = {f"c{i}": data(30 + i, 5 + i) for i in range(3)}
    net = _net_run({k: trainer(k, d) for k, d in parts.items()}, RoundOptions(rounds=3))
    w0 = {k: v.detach().clone() for k, v in linear().named_parameters()}
    local = Aggregator(
        list(parts), w0, FedAvg(), RoundOptions(rounds=3), LocalTransport({k: trainer(k, d) for k, d in parts.items()})
    )
    local.run()
    for k in net.state:
        assert torch.equal(net.state[k], local.state[k])


def test_resume_is_bitwise(tmp_path: object) -> None:
    parts = {f"c{i}": data(40 + i, 8) for i in range(2)}
    w0 = {k: v.detach().clone() for k, v in linear().named_parameters()}

    def run(rounds: int, resume: bool, d: str) -> Aggregator:
        opts = RoundOptions(rounds=rounds, ckpt_dir=d, ckpt_every=1, resume=resume, run_id="t")
        trainers = {
            k: LocalTrainer(k, linear(), v, LocalOptions(batch_size=3, lr=0.05, optimizer="adam"), loss_fn=mse)
            for k, v in parts.items()
        }
        agg = Aggregator(list(parts), w0, ServerOptimizer("adam", lr=0.01), opts, LocalTransport(trainers))
        agg.run()
        return agg

    full = run(4, False, f"{tmp_path}/a")
    run(2, False, f"{tmp_path}/b")  # "crashes" after round 2 (its checkpoint is there)
    resumed = run(4, True, f"{tmp_path}/b")
    assert [r["round"] for r in resumed.history] == [3, 4]
    for k in full.state:
        assert torch.equal(full.state[k], resumed.state[k])


def test_an_unusable_update_fails_that_client_only() -> None:
    """Updates are checked before they reach the strategy: a missing tensor, a wrong shape, NaN, no
    samples or a missing key make that client fail the round (named, with the reason); the others count."""
    from splitlink.horizontal.rounds import NetworkTransport

    hub: dict = {}
    agg = ServerConfig("agg", "127.0.0.1:1")
    names = ["good", "nan", "shape", "nosamples", "missing"]
    clients = {n: ServerConfig(n, f"127.0.0.1:{2 + i}") for i, n in enumerate(names)}
    a_comm = InProcessCommunicator(agg, list(clients.values()), hub=hub)
    c_comms = {n: InProcessCommunicator(cfg, agg, hub=hub) for n, cfg in clients.items()}
    state = {"w": torch.zeros(3), "b": torch.zeros(1)}
    transport = NetworkTransport(a_comm)
    transport.broadcast(0, names, state, b"")
    good = {"w": torch.ones(3), "b": torch.ones(1)}
    bad_state = {
        "good": good,
        "nan": {"w": torch.tensor([1.0, float("nan"), 0.0]), "b": torch.ones(1)},
        "shape": {"w": torch.ones(4), "b": torch.ones(1)},
        "nosamples": good,
        "missing": {"w": torch.ones(3)},
    }
    for n, c in c_comms.items():
        c.receive("agg", 5)
        c.send_tensors(
            "agg",
            {
                "round": torch.tensor(0),
                "samples": torch.tensor(0 if n == "nosamples" else 4),
                "loss": torch.tensor(0.5, dtype=torch.float64),
                "state": bad_state[n],
            },
            kind="fl:update",
        )
    got = transport.collect(0, names, 5.0)
    assert list(got.updates) == ["good"]
    reasons = {c: why for c, why in got.failed.items()}
    assert "NaN" in reasons["nan"] and "(4,)" in reasons["shape"] and "0 samples" in reasons["nosamples"]
    assert "missing ['b']" in reasons["missing"]
