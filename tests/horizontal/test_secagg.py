"""Secure aggregation with dropout recovery (splitlink.horizontal.secagg).

The sums are compared exactly, as integers, with the plain sum of the same quantised updates
(``quantise`` with each client's rounding seed): the protocol must lose nothing and add nothing.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import pytest
import torch

from splitlink.horizontal.secagg import (
    SecAggClient,
    SecAggConfig,
    SecAggError,
    SecAggReport,
    SecAggServer,
    harary_neighbours,
    quantise,
)

NAMES5 = [f"client{i}" for i in range(5)]


@dataclass
class Outcome:
    server: SecAggServer
    clients: dict[str, SecAggClient]
    total: torch.Tensor
    report: SecAggReport
    expected: torch.Tensor  # exact int64 sum of the survivors' quantised updates
    updates: dict[str, torch.Tensor]


def updates_for(names: list[str], numel: int, scale: float = 0.3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(numel, generator=g) * scale for n in names}


def run_round(
    names: list[str],
    cfg: SecAggConfig,
    updates: Mapping[str, torch.Tensor],
    *,
    round_id: int = 3,
    no_advert: Collection[str] = (),
    no_shares: Collection[str] = (),
    no_masked: Collection[str] = (),
    no_unmask: Collection[str] = (),
    in_place: bool = False,
) -> Outcome:
    server = SecAggServer(cfg, round_id, names)
    seeds = {n: 100 + i for i, n in enumerate(names)}
    clients = {n: SecAggClient(n, cfg, round_id, names, rounding_seed=seeds[n]) for n in names}
    live = [n for n in names if n not in no_advert]
    for n in live:
        server.receive_advert(n, clients[n].advertise())
    shares = {n: clients[n].share(server.roster(n)) for n in live}
    live = [n for n in live if n not in no_shares]
    for n in live:
        server.receive_shares(n, shares[n])
    masked = {}
    for n in live:
        if in_place:  # the masked input written over a copy of the update (room for the extra elements)
            buf = torch.empty(updates[n].numel() + SecAggClient.EXTRA_ELEMENTS)
            buf[: updates[n].numel()] = updates[n]
            masked[n] = clients[n].masked_input(buf[: updates[n].numel()], server.shares_for(n), out=buf.view(torch.int32))
            assert masked[n].data_ptr() == buf.data_ptr()
        else:
            masked[n] = clients[n].masked_input(updates[n], server.shares_for(n))
    live = [n for n in live if n not in no_masked]
    for n in live:
        server.receive_masked(n, masked[n])
    survivors, dropped = server.unmask_request()
    assert survivors == sorted(live)
    for n in survivors:
        if n not in no_unmask:
            server.receive_unmask(n, clients[n].unmask(survivors, dropped))
    total, report = server.result()
    expected = sum(quantise(updates[n], cfg, seed=seeds[n])[0] for n in survivors)
    assert isinstance(expected, torch.Tensor)
    return Outcome(server, clients, total, report, expected, dict(updates))


@pytest.mark.parametrize("ring_bits", [32, 64])
@pytest.mark.parametrize(("n", "k", "t"), [(2, None, 2), (3, None, 2), (5, None, 3), (7, 4, 3), (8, 3, 3)])
def test_unmasked_sum_equals_the_plain_sum_of_quantised_updates(n: int, k: int | None, t: int, ring_bits: int) -> None:
    names = [f"c{i}" for i in range(n)]
    cfg = SecAggConfig(threshold=t, clip=1.0, neighbours=k, bits=16, ring_bits=ring_bits)
    out = run_round(names, cfg, updates_for(names, 3001, seed=n))
    assert torch.equal(out.server.exact_sum(), out.expected)
    # The float result is that integer sum times the quantisation step (float32 conversion and one
    # multiply: at most 2 ulp of the sum's magnitude).
    ref = out.expected.double() / cfg.scale
    assert torch.allclose(out.total.double(), ref, rtol=2 * 2**-23, atol=1e-12)
    assert out.report.survivors == tuple(names)
    assert out.report.clipped == sum(int((u.abs() > cfg.clip).sum()) for u in out.updates.values())
    assert out.report.neighbours == (n - 1 if k is None else k)


def test_quantised_sum_is_close_to_the_float_sum() -> None:
    names = [f"c{i}" for i in range(4)]
    cfg = SecAggConfig(threshold=3, clip=2.0, bits=20)
    ups = updates_for(names, 5000, scale=0.5, seed=9)
    out = run_round(names, cfg, ups)
    # Stochastic rounding moves each value by less than one step (clip / levels) per client.
    step = cfg.clip / cfg.levels
    assert (out.total.double() - sum(u.double() for u in ups.values())).abs().max() < len(names) * step * 1.001


@pytest.mark.parametrize("dropped", [("client1",), ("client0", "client3")])
def test_clients_dropping_after_sharing_leave_the_exact_sum_of_survivors(dropped: tuple[str, ...]) -> None:
    cfg = SecAggConfig(threshold=3, clip=1.0)
    out = run_round(NAMES5, cfg, updates_for(NAMES5, 2000), no_masked=dropped)
    assert torch.equal(out.server.exact_sum(), out.expected)
    assert out.report.dropped_at_masking == dropped
    assert out.report.survivors == tuple(n for n in NAMES5 if n not in dropped)


def test_three_of_five_dropping_is_a_clear_error_naming_them() -> None:
    cfg = SecAggConfig(threshold=3, clip=1.0)
    with pytest.raises(
        SecAggError,
        match=r"2 clients sent masked inputs.*fewer than the threshold 3.*"
        r"before masking: \['client1', 'client2', 'client4'\]",
    ):
        run_round(NAMES5, cfg, updates_for(NAMES5, 100), no_masked=("client1", "client2", "client4"))


def test_a_client_dropping_before_sharing_is_excluded_cleanly() -> None:
    cfg = SecAggConfig(threshold=3, clip=1.0)
    out = run_round(NAMES5, cfg, updates_for(NAMES5, 1000), no_shares=("client2",), no_advert=("client4",))
    assert torch.equal(out.server.exact_sum(), out.expected)
    assert out.report.dropped_at_share == ("client2",) and out.report.dropped_at_advertise == ("client4",)
    assert out.report.dropped_at_masking == () and out.report.survivors == ("client0", "client1", "client3")


def test_a_survivor_silent_at_unmasking_is_covered_by_the_others() -> None:
    cfg = SecAggConfig(threshold=3, clip=1.0)
    out = run_round(NAMES5, cfg, updates_for(NAMES5, 1000), no_masked=("client0",), no_unmask=("client3",))
    assert torch.equal(out.server.exact_sum(), out.expected)
    assert out.report.dropped_at_unmask == ("client3",) and "client3" in out.report.survivors


def test_too_few_unmask_responses_is_a_clear_error() -> None:
    cfg = SecAggConfig(threshold=3, clip=1.0)
    with pytest.raises(
        SecAggError,
        match=r"needs 3 shares, only 2 holders answered.*dropped at unmasking: "
        r"\['client1', 'client2', 'client3'\]",
    ):
        run_round(NAMES5, cfg, updates_for(NAMES5, 10), no_unmask=("client1", "client2", "client3"))


def test_the_server_sees_no_individual_update() -> None:
    """Masked inputs look uniform in the ring and are uncorrelated with the updates; the share-stage
    messages hold ciphertext only; and no client reveals both secrets of any client."""
    names = [f"c{i}" for i in range(4)]
    cfg = SecAggConfig(threshold=3, clip=1.0, bits=16)
    ups = updates_for(names, 200_000, seed=1)
    server = SecAggServer(cfg, 1, names)
    clients = {n: SecAggClient(n, cfg, 1, names, rounding_seed=i) for i, n in enumerate(names)}
    for n in names:
        server.receive_advert(n, clients[n].advertise())
    sent = {n: clients[n].share(server.roster(n)) for n in names}
    for n in names:
        server.receive_shares(n, sent[n])
    for n in names:
        q = quantise(ups[n], cfg, seed=names.index(n))[0]
        m = clients[n].masked_input(ups[n], server.shares_for(n))
        assert m.dtype == torch.int32 and m.numel() == 200_000 + 6
        u = m[:200_000].to(torch.int64) & 0xFFFFFFFF  # as unsigned ring elements
        # Uniform in [0, 2^32): mean 2^31 (sd of the mean 2^32 / sqrt(12 * 2e5) ~ 2.8e6: allow 8e6 ~ 3 sd)
        assert abs(u.double().mean().item() - 2**31) < 8e6
        # each of the 32 bits set about half the time (sd 0.0011 each; allow 0.006)
        for b in range(32):
            assert abs(((u >> b) & 1).double().mean().item() - 0.5) < 0.006, (n, b)
        # Uncorrelated with the update and with its quantised values (|r| < 0.012 ~ 5 sd for 2e5 pairs)
        r = torch.corrcoef(torch.stack([m[:200_000].double(), ups[n].double()]))[0, 1].item()
        assert abs(r) < 0.012, (n, r)
        assert (m[:200_000].to(torch.int64) == q).double().mean().item() < 1e-3  # no value sent in the clear
        server.receive_masked(n, m)
        # The share messages are AEAD ciphertexts: the client's own quantised values are not in them
        assert all(len(msg) < 200 for msg in sent[n].values())
    survivors, dropped = server.unmask_request()
    kinds: dict[str, set[bytes]] = {}
    for n in survivors:
        resp = clients[n].unmask(survivors, dropped)
        server.receive_unmask(n, resp)
        assert len(resp) < 400
    for entries in server._unmask.values():
        for target, (kind, _) in entries.items():
            kinds.setdefault(target, set()).add(kind.encode())
    assert all(v == {b"b"} for v in kinds.values())  # survivors: only self-mask seed shares


def test_a_tampered_share_is_refused_naming_its_sender() -> None:
    cfg = SecAggConfig(threshold=3, clip=1.0)
    server = SecAggServer(cfg, 5, NAMES5)
    clients = {n: SecAggClient(n, cfg, 5, NAMES5) for n in NAMES5}
    for n in NAMES5:
        server.receive_advert(n, clients[n].advertise())
    for n in NAMES5:
        server.receive_shares(n, clients[n].share(server.roster(n)))
    mine = server.shares_for("client2")
    bad = bytearray(mine["client4"])
    bad[-20] ^= 0x40  # inside the ciphertext
    with pytest.raises(SecAggError, match="client2: share from 'client4' failed authentication"):
        clients["client2"].masked_input(torch.zeros(10), {**mine, "client4": bytes(bad)})
    # a share meant for another client, relayed to client3 under client4's name, is refused too
    with pytest.raises(SecAggError, match="addressed to 'client2', not 'client3'"):
        clients["client3"].masked_input(torch.zeros(10), {**server.shares_for("client3"), "client4": mine["client4"]})


def test_replays_late_and_misdirected_messages_are_refused() -> None:
    cfg = SecAggConfig(threshold=2, clip=1.0)
    names = ["a", "b", "c"]
    old_server = SecAggServer(cfg, 1, names)
    old = {n: SecAggClient(n, cfg, 1, names) for n in names}
    for n in names:
        old_server.receive_advert(n, old[n].advertise())
    old_shares = {n: old[n].share(old_server.roster(n)) for n in names}
    for n in names:
        old_server.receive_shares(n, old_shares[n])
    old_masked = {n: old[n].masked_input(torch.ones(8), old_server.shares_for(n)) for n in names}

    server = SecAggServer(cfg, 2, names)
    new = {n: SecAggClient(n, cfg, 2, names) for n in names}
    with pytest.raises(SecAggError, match="message of round 1, this is round 2"):
        server.receive_advert("a", old_server._advert_bytes["a"])
    ad = new["a"].advertise()
    with pytest.raises(SecAggError, match="says it is from 'a', it came from 'b'"):
        server.receive_advert("b", ad)
    server.receive_advert("a", ad)
    with pytest.raises(SecAggError, match="already sent its advertise message"):
        server.receive_advert("a", ad)
    with pytest.raises(SecAggError, match="not a client of round 2"):
        server.receive_advert("mallory", ad)
    with pytest.raises(SecAggError, match="share message from 'a' but that stage is not open yet"):
        server.receive_shares("a", {})
    for n in "bc":
        server.receive_advert(n, new[n].advertise())
    shares = {n: new[n].share(server.roster(n)) for n in names}
    with pytest.raises(SecAggError, match="advertise message from 'a' but that stage is closed"):
        server.receive_advert("a", ad)
    with pytest.raises(SecAggError, match="round 1, this is round 2"):
        server.receive_shares("a", old_shares["a"])
    with pytest.raises(SecAggError, match="a message of stage 'advertise' where stage 'share' is expected"):
        server.receive_shares("a", {"b": ad, "c": ad})
    with pytest.raises(SecAggError, match="expected exactly its advertised neighbours"):
        server.receive_shares("a", {"b": shares["a"]["b"]})
    for n in names:
        server.receive_shares(n, shares[n])
    with pytest.raises(SecAggError, match="already sent its share message"):
        server.receive_shares("a", shares["a"])
    masked = {n: new[n].masked_input(torch.ones(8), server.shares_for(n)) for n in names}
    with pytest.raises(SecAggError, match="made for round 1, this is round 2"):
        server.receive_masked("a", old_masked["a"])
    with pytest.raises(SecAggError, match="made by 'b', not by the client that sent it"):
        server.receive_masked("a", masked["b"])
    with pytest.raises(SecAggError, match="expected a 1-D torch.int32 tensor"):
        server.receive_masked("a", masked["a"].to(torch.int64))
    for n in names:
        server.receive_masked(n, masked[n])
    with pytest.raises(SecAggError, match="already sent its masked input"):
        server.receive_masked("a", masked["a"])
    survivors, dropped = server.unmask_request()
    resp = new["a"].unmask(survivors, dropped)
    with pytest.raises(SecAggError, match="unmask\\(\\) called out of order"):
        new["a"].unmask(survivors, dropped)  # a client answers once: never both shares of a client
    server.receive_unmask("a", resp)
    with pytest.raises(SecAggError, match="already sent its unmask message"):
        server.receive_unmask("a", resp)
    for n in "bc":
        server.receive_unmask(n, new[n].unmask(survivors, dropped))
    server.result()
    assert torch.equal(server.exact_sum(), torch.full((8,), 3 * cfg.levels, dtype=torch.int64))
    with pytest.raises(SecAggError, match="already computed"):
        server.result()


def test_a_client_refuses_to_reveal_both_shares_of_a_client() -> None:
    cfg = SecAggConfig(threshold=2, clip=1.0)
    names = ["a", "b", "c"]
    server = SecAggServer(cfg, 0, names)
    cl = {n: SecAggClient(n, cfg, 0, names) for n in names}
    for n in names:
        server.receive_advert(n, cl[n].advertise())
    for n in names:
        server.receive_shares(n, cl[n].share(server.roster(n)))
    for n in names:
        cl[n].masked_input(torch.ones(4), server.shares_for(n))
    with pytest.raises(SecAggError, match=r"names \['b'\] as both surviving and dropped"):
        cl["a"].unmask(["a", "b"], ["b"])
    with pytest.raises(SecAggError, match="out of order"):
        SecAggClient("a", cfg, 0, names).share({})


def test_a_malicious_unmask_share_is_detected_and_outvoted() -> None:
    """A survivor sends a wrong (well-formed) seed share: with t+1 answers the server finds the
    consistent t-subset (checked against the seed commitment); with exactly t it is a clear error."""
    cfg = SecAggConfig(threshold=3, clip=1.0)

    def attempt(silent: tuple[str, ...]) -> tuple[SecAggServer, torch.Tensor]:
        server = SecAggServer(cfg, 9, NAMES5)
        cl = {n: SecAggClient(n, cfg, 9, NAMES5, rounding_seed=i) for i, n in enumerate(NAMES5)}
        for n in NAMES5:
            server.receive_advert(n, cl[n].advertise())
        for n in NAMES5:
            server.receive_shares(n, cl[n].share(server.roster(n)))
        ups = updates_for(NAMES5, 50)
        for n in NAMES5:
            server.receive_masked(n, cl[n].masked_input(ups[n], server.shares_for(n)))
        survivors, dropped = server.unmask_request()
        for n in survivors:
            if n in silent:
                continue
            resp = bytearray(cl[n].unmask(survivors, dropped))
            if n == "client1":
                resp[-1] ^= 0x01  # the last byte of its last share's last field element
            server.receive_unmask(n, bytes(resp))
        expected = sum(quantise(ups[n], cfg, seed=i)[0] for i, n in enumerate(NAMES5))
        assert isinstance(expected, torch.Tensor)
        return server, expected

    server, expected = attempt(())
    server.result()
    assert torch.equal(server.exact_sum(), expected)
    server, _ = attempt(("client2", "client3"))
    with pytest.raises(SecAggError, match="inconsistent \\(a corrupted or malicious share\\)"):
        server.result()


def test_clipped_values_are_counted_per_round_over_survivors() -> None:
    names = [f"c{i}" for i in range(4)]
    cfg = SecAggConfig(threshold=2, clip=0.5, neighbours=2)
    ups = {n: torch.zeros(70_000) for n in names}
    counts = {"c0": 3, "c1": 0, "c2": 66_000, "c3": 5}
    for n, c in counts.items():
        ups[n][:c] = torch.linspace(0.51, 9.0, c) * (-1) ** torch.arange(c)
        ups[n][c : c + 10] = 0.5  # exactly at the clip: not clipped
    out = run_round(names, cfg, ups, no_masked=("c3",))
    assert out.report.clipped == 3 + 0 + 66_000  # c3 dropped: its count is not in the sum
    assert {n: out.clients[n].clipped for n in names} == counts
    assert torch.equal(out.server.exact_sum(), out.expected)
    assert out.total.abs().max().item() <= 3 * 0.5 * (1 + 2**-20)


def test_stochastic_rounding_is_reproducible_unbiased_and_within_one_step() -> None:
    cfg = SecAggConfig(threshold=2, clip=1.0, bits=8)  # step 1/127
    x = torch.full((400_000,), 0.3)
    q1, c1 = quantise(x, cfg, seed=5)
    q2, _ = quantise(x, cfg, seed=5)
    q3, _ = quantise(x, cfg, seed=6)
    assert torch.equal(q1, q2) and not torch.equal(q1, q3) and c1 == 0
    v = 0.3 * cfg.scale  # 38.1
    assert set(q1.unique().tolist()) == {math.floor(v), math.floor(v) + 1}
    # mean of 4e5 Bernoulli(0.1) roundings: sd 4.7e-4; allow 3e-3
    assert abs(q1.double().mean().item() - v) < 3e-3
    with pytest.raises(SecAggError, match="non-finite value \\(nan\\) at flat index 7"):
        quantise(torch.cat([torch.zeros(7), torch.tensor([math.nan])]), cfg, seed=0)


@pytest.mark.parametrize(
    ("kwargs", "n", "message"),
    [
        (
            {"bits": 24, "neighbours": 4},
            300,
            (
                r"300 x 8388607 = 2516582100 \(bits = 24\), beyond the ring's signed range "
                r"2\^31-1 = 2147483647: it would overflow; lower bits to at most 23 or use "
                r"ring_bits = 64"
            ),
        ),
        ({"threshold": 2}, 5, r"threshold 2 is invalid for neighbourhoods of 4.*3 <= t <= 5"),
        ({"threshold": 6}, 5, r"threshold 6 is invalid"),
        ({"neighbours": 5}, 5, r"neighbours = 5 but there are only 4 other clients"),
        ({"neighbours": 3}, 7, r"odd neighbourhood size \(3\) needs an even number of clients \(got 7\)"),
        ({}, 1, r"at least 2 clients"),
    ],
)
def test_configuration_is_validated_up_front(kwargs: dict[str, int], n: int, message: str) -> None:
    cfg = SecAggConfig(**{"threshold": 3, "clip": 1.0, **kwargs})  # type: ignore[arg-type]
    with pytest.raises(SecAggError, match=message):
        cfg.validate(n)
    with pytest.raises(SecAggError, match=message):
        SecAggServer(cfg, 0, [f"c{i}" for i in range(n)])
    # the suggested fixes work
    SecAggConfig(threshold=3, clip=1.0, neighbours=4, bits=24, ring_bits=64).validate(300)
    SecAggConfig(threshold=3, clip=1.0, neighbours=4, bits=23).validate(300)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"clip": 0.0}, "clip must be a finite number > 0"),
        ({"clip": -1.0}, "clip must be a finite number > 0"),
        ({"clip": math.inf}, "clip must be a finite number > 0"),
        ({"clip": math.nan}, "clip must be a finite number > 0"),
        ({"bits": 25}, "bits must be 2..24"),
        ({"ring_bits": 16}, "ring_bits must be 32 or 64"),
        ({"threshold": 0}, "threshold must be an integer >= 1"),
        ({"cipher": "rot13"}, "cipher must be one of"),
    ],
)
def test_bad_parameters_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(SecAggError, match=message):
        SecAggConfig(**{"threshold": 2, "clip": 1.0, **kwargs})  # type: ignore[arg-type]


@pytest.mark.parametrize(("n", "k"), [(5, 4), (6, 5), (10, 2), (10, 3), (11, 4), (30, 6), (30, 7)])
def test_neighbourhoods_are_a_symmetric_k_regular_graph(n: int, k: int) -> None:
    names = [f"n{i:02d}" for i in range(n)]
    g = harary_neighbours(list(reversed(names)), k)
    assert set(g) == set(names)
    for c, nb in g.items():
        assert len(nb) == k and c not in nb
        assert all(c in g[v] for v in nb)


def test_cost_grows_as_n_times_k() -> None:
    """Each client sends one share message per neighbour: n*k share messages, not n*(n-1)."""
    names = [f"c{i:02d}" for i in range(12)]
    cfg = SecAggConfig(threshold=3, clip=1.0, neighbours=4)
    server = SecAggServer(cfg, 0, names)
    cl = {n: SecAggClient(n, cfg, 0, names) for n in names}
    for n in names:
        server.receive_advert(n, cl[n].advertise())
    sent = {n: cl[n].share(server.roster(n)) for n in names}
    assert sum(len(s) for s in sent.values()) == 12 * 4
    assert all(len(server.roster(n)) == 5 for n in names)


@pytest.mark.parametrize("dropped", [(), ("client2",)])
def test_masked_input_written_over_the_update_gives_the_same_exact_sum(dropped: tuple[str, ...]) -> None:
    cfg = SecAggConfig(threshold=3, clip=1.0, bits=16)
    ups = updates_for(NAMES5, 70_001, seed=4)  # more than one native task and a ragged tail
    a = run_round(NAMES5, cfg, ups, no_masked=dropped, in_place=True)
    assert torch.equal(a.server.exact_sum(), a.expected)
    b = run_round(NAMES5, cfg, ups, no_masked=dropped)
    assert torch.equal(a.total, b.total)  # the same rounding seeds: the same result, whatever the masks


def test_masked_input_out_is_checked() -> None:
    cfg = SecAggConfig(threshold=2, clip=1.0)
    names = ["a", "b"]
    server = SecAggServer(cfg, 0, names)
    cl = {n: SecAggClient(n, cfg, 0, names) for n in names}
    for n in names:
        server.receive_advert(n, cl[n].advertise())
    sent = {n: cl[n].share(server.roster(n)) for n in names}
    for n in names:
        server.receive_shares(n, sent[n])
    with pytest.raises(SecAggError, match="out must be a contiguous 1-D CPU int32 tensor of 16 elements"):
        cl["a"].masked_input(torch.zeros(10), server.shares_for("a"), out=torch.empty(15, dtype=torch.int32))


def _round_sum(names: list[str], cfg: SecAggConfig, mask: Mapping[str, object]) -> torch.Tensor:
    """The exact unmasked sum of one round whose clients mask with ``mask[n](client, shares)``."""
    server = SecAggServer(cfg, 1, names)
    clients = {n: SecAggClient(n, cfg, 1, names, rounding_seed=10 + i) for i, n in enumerate(names)}
    for n in names:
        server.receive_advert(n, clients[n].advertise())
    sent = {n: clients[n].share(server.roster(n)) for n in names}
    for n in names:
        server.receive_shares(n, sent[n])
    for n in names:
        server.receive_masked(n, mask[n](clients[n], server.shares_for(n)))  # type: ignore[operator]
    survivors, dropped = server.unmask_request()
    for n in survivors:
        server.receive_unmask(n, clients[n].unmask(survivors, dropped))
    server.result()
    return server.exact_sum()


def test_trained_minus_global_inside_the_native_pass_equals_the_flat_weighted_delta() -> None:
    names = ["a", "b", "c"]
    cfg = SecAggConfig(threshold=2, clip=0.5, bits=16)
    g = torch.Generator().manual_seed(8)
    shapes = [(3, 5), (70_001,), (1,), (2, 2, 3)]  # one piece over a native task, ragged offsets
    glob = {n: [torch.randn(s, generator=g) for s in shapes] for n in names}
    local = {n: [t + torch.randn(t.shape, generator=g) * 0.2 for t in glob[n]] for n in names}
    local["c"][1][5] = 3.0  # clipped
    weights = {"a": 1.0, "b": 0.37, "c": 0.8125}

    def fused(n: str) -> object:
        return lambda cl, sh: cl.masked_input(local[n], sh, base=glob[n], weight=weights[n])

    def flat(n: str) -> object:
        d = torch.cat([(x - y).reshape(-1) for x, y in zip(local[n], glob[n])])  # float32 sub, then float32 mul
        return lambda cl, sh: cl.masked_input(d * torch.tensor(weights[n], dtype=torch.float32), sh)

    a = _round_sum(names, cfg, {n: fused(n) for n in names})
    b = _round_sum(names, cfg, {n: flat(n) for n in names})
    assert torch.equal(a, b)
    assert a.abs().max() > 0


def test_base_inputs_are_checked() -> None:
    cfg = SecAggConfig(threshold=2, clip=1.0)
    bad = {
        "a": lambda cl, sh: cl.masked_input([torch.zeros(3)], sh, base=[torch.zeros(4)]),
        "b": lambda cl, sh: cl.masked_input(torch.zeros(3), sh, weight=0.5),
    }
    with pytest.raises(SecAggError, match="tensors #0 must be CPU float32 tensors of the same shape"):
        _round_sum(["a", "b"], cfg, bad)
    nan = [torch.zeros(9)]
    nan[0][7] = math.nan
    with pytest.raises(SecAggError, match=r"non-finite value \(nan\) at flat index 12"):
        _round_sum(
            ["a", "b"],
            cfg,
            {
                n: (lambda cl, sh: cl.masked_input([torch.zeros(5), nan[0]], sh, base=[torch.zeros(5), torch.zeros(9)]))
                for n in "ab"
            },
        )
