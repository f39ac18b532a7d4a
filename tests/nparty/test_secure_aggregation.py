"""Secure sum among N followers: exact in the ring, and what the leader receives is masked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from splitlink import secure, wire
from splitlink.runtime.multiparty import (
    Aggregation,
    MaskingSession,
    Plan,
    combine,
    eval_stream,
    plan_for,
    split_grad,
    train_stream,
)

FRAC = 16


def sessions(n: int, frac_bits: int = FRAC) -> list[MaskingSession]:
    names = [f"follower{k + 1}" for k in range(n)]
    ss = [MaskingSession(p, "run") for p in names]
    for s in ss:
        s.peer_publics = {o.me: o.public for o in ss if o is not s}
    agg = Aggregation("emb", tuple(names), "sum", True, frac_bits)
    for s in ss:
        s.start(plan_for(s.me, {"emb": agg}))
    return ss


@pytest.mark.parametrize("n", [2, 3, 5])
def test_masked_sum_is_exact_in_the_ring(n: int) -> None:
    gen = torch.Generator().manual_seed(n)
    # values on the fixed-point grid (k / 2^16), so the encoding itself is exact and the decoded sum must
    # equal the float sum bit for bit (|sum| < 2^23 / 2^16: exact in float32 too)
    ks = [torch.randint(-(2**20), 2**20, (64, 8), generator=gen) for _ in range(n)]
    xs = [(k.double() / 2**FRAC).float() for k in ks]
    ss = sessions(n)
    ys = [s.mask({"emb": x}, lambda i: train_stream(7, i))["emb"] for s, x in zip(ss, xs)]
    assert all(y.dtype == torch.int64 for y in ys)
    ring = np.zeros((64, 8), dtype=np.uint64)
    for y in ys:
        ring += y.numpy().view(np.uint64)  # wraps mod 2^64
    expected = np.zeros((64, 8), dtype=np.uint64)
    for k in ks:
        expected += k.numpy().astype(np.int64).view(np.uint64)
    assert np.array_equal(ring, expected)  # the masks cancel exactly in Z/2^64
    agg = Aggregation("emb", tuple(s.me for s in ss), "sum", True, FRAC)
    total = combine(agg, {s.me: y for s, y in zip(ss, ys)})
    assert torch.equal(total, sum(k.double() for k in ks).div(2**FRAC).float())
    mean = combine(Aggregation("emb", agg.parties, "mean", True, FRAC), {s.me: y for s, y in zip(ss, ys)})
    assert torch.equal(mean, total / n)


@pytest.mark.parametrize("n", [2, 3, 5])
def test_quantisation_error_is_within_the_stated_bound(n: int) -> None:
    gen = torch.Generator().manual_seed(10 + n)
    xs = [torch.randn(256, 16, generator=gen) * 3 for _ in range(n)]
    ss = sessions(n)
    ys = {s.me: s.mask({"emb": x}, lambda i: train_stream(3, i))["emb"] for s, x in zip(ss, xs)}
    agg = Aggregation("emb", tuple(ys), "sum", True, FRAC)
    err = (combine(agg, ys).double() - sum(x.double() for x in xs)).abs().max().item()
    # the bound is before float32 rounding of the decoded sum: allow one float32 ulp of the largest sum
    ulp = float(torch.finfo(torch.float32).eps) * float(sum(x.double() for x in xs).abs().max())
    assert err <= agg.error_bound() + ulp, (err, agg.error_bound())
    assert agg.error_bound() == secure.fixed_point_error_bound(n, FRAC)


def test_missing_follower_means_no_partial_sum() -> None:
    ss = sessions(3)
    ys = {s.me: s.mask({"emb": torch.ones(4, 2)}, lambda i: train_stream(0, i))["emb"] for s in ss[:2]}
    with pytest.raises(RuntimeError, match="follower3.*partial"):
        combine(Aggregation("emb", tuple(s.me for s in ss), "sum", True, FRAC), ys)


def test_the_frame_the_leader_receives_holds_only_masked_values() -> None:
    """A follower's frame, packed as on the wire and unpacked as the leader does: int64 ring elements
    that do not correlate with the embedding; the unmasked frame of a plain sum does (the control)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 32, generator=gen)
    ss = sessions(3)
    masked = ss[0].mask({"emb": x}, lambda i: train_stream(5, i))
    frame = wire.unpack(wire.pack(masked, sender="follower1", step=5, kind="tensors"))
    got = frame.tensors["emb"]
    assert got.dtype == torch.int64 and got.shape == x.shape
    fixed = torch.round(x.double() * 2**FRAC)
    as_real = got.double()
    corr = torch.corrcoef(torch.stack([as_real.reshape(-1), x.double().reshape(-1)]))[0, 1].abs().item()
    # independent values: |corr| ~ 1/sqrt(n) = 0.008; 0.05 is > 6 standard deviations
    assert corr < 0.05, corr
    assert int((as_real == fixed).sum()) == 0
    top = (got.numpy().view(np.uint64) >> np.uint64(56)).astype(np.int64)
    hist = np.bincount(top.reshape(-1), minlength=256)
    # uniform top byte: 64 expected per bin over 16384 values; a chi-square over 255 d.o.f. stays far below 400
    chi2 = float(((hist - hist.mean()) ** 2 / hist.mean()).sum())
    assert chi2 < 400, chi2
    # control: an unmasked frame (a plain sum) is the embedding itself
    plain = wire.unpack(wire.pack({"emb": x}, sender="follower1", step=5, kind="tensors")).tensors["emb"]
    assert torch.corrcoef(torch.stack([plain.reshape(-1).double(), x.double().reshape(-1)]))[0, 1].item() > 0.99


def test_streams_never_repeat_and_masks_change_every_step() -> None:
    ss = sessions(2)
    x = torch.zeros(8, 4)
    a = ss[0].mask({"emb": x}, lambda i: train_stream(1, i))["emb"]
    b = ss[0].mask({"emb": x}, lambda i: train_stream(2, i))["emb"]
    c = ss[0].mask({"emb": x}, lambda i: eval_stream(1, 0, i))["emb"]
    assert not torch.equal(a, b) and not torch.equal(a, c)
    assert train_stream(1, 0) != eval_stream(0, 0, 0) and eval_stream(0, 0, 0) >> 63 == 1
    # a new agreement (fresh keys) masks the same step differently, and its masks still cancel
    again = sessions(2)
    a2 = again[0].mask({"emb": x}, lambda i: train_stream(1, i))["emb"]
    assert not torch.equal(a, a2)


def test_gradients_of_the_aggregation() -> None:
    g = torch.arange(12.0).reshape(3, 4)
    parties = ("f1", "f2", "f3")
    assert all(torch.equal(v, g) for v in split_grad(Aggregation("e", parties, "sum"), g).values())
    assert all(torch.equal(v, g / 3) for v in split_grad(Aggregation("e", parties, "mean"), g).values())
    parts = split_grad(Aggregation("e", parties, "concat"), g, {"f1": 1, "f2": 2, "f3": 1})
    assert torch.equal(torch.cat([parts[p] for p in parties], 1), g) and parts["f2"].shape == (3, 2)


def test_plan_roundtrip_and_malformed_plans() -> None:
    aggs = {"a": Aggregation("a", ("f1", "f2"), "sum", True, 12), "b": Aggregation("b", ("f2", "f3"), "mean", True)}
    p = plan_for("f2", aggs)
    assert Plan.decode(p.encode(), "leader") == p and set(p.masked) == {"a", "b"}
    assert plan_for("f1", aggs).masked == {"a": (0, 12, ("f1", "f2"))}
    for bad in (b"{", b'{"a": [0, 99, ["f1", "f2"]]}', b'{"a": [0, 16, ["f1"]]}', b"[1]"):
        with pytest.raises(ValueError, match="malformed aggregation plan from 'leader'"):
            Plan.decode(torch.frombuffer(bytearray(bad), dtype=torch.uint8), "leader")
