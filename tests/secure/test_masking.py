"""Pairwise additive masks cancel exactly; fixed point is within its documented bound."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from splitlink import secure


def maskers(n: int, frac_bits: int = 16) -> list[secure.PairwiseMasker]:
    names = [f"party{i}" for i in range(n)]
    pairs = {name: secure.KeyPair.generate() for name in names}
    sid = secure.new_session_id()
    return [
        secure.PairwiseMasker(
            name, pairs[name], {p: pairs[p].public_bytes for p in names if p != name}, session_id=sid, frac_bits=frac_bits
        )
        for name in names
    ]


@pytest.mark.parametrize("parties", [2, 3, 5])
def test_masks_cancel_exactly_in_the_ring(parties: int) -> None:
    ms = maskers(parties)
    g = torch.Generator().manual_seed(parties)
    xs = [torch.randn(10_001, generator=g) * 100 for _ in range(parties)]
    masked = [m.mask(x, stream_id=7, name="emb") for m, x in zip(ms, xs)]
    # Exactly: the ring sum of masked tensors equals the ring sum of unmasked fixed-point values.
    scale = 2.0**16
    fixed = [torch.round(x.double() * scale).to(torch.int64) for x in xs]
    assert torch.equal(sum(masked), sum(fixed))  # int64 addition wraps like Z/2^64
    total = secure.sum_masked(masked, frac_bits=16)
    bound = secure.fixed_point_error_bound(parties, 16)
    exact = sum(x.double() for x in xs)
    assert (total.double() - exact).abs().max().item() <= bound + exact.abs().max().item() * 2**-24


def test_a_single_masked_tensor_reveals_nothing_obvious() -> None:
    ms = maskers(3)
    x = torch.zeros(100_000)
    y = ms[0].mask(x, stream_id=1)
    # Masks look uniform over the ring: about half the values are negative, no value repeats.
    assert 0.45 < (y < 0).double().mean().item() < 0.55
    assert y.unique().numel() == y.numel()
    assert ms[0].unmask(y, stream_id=1).abs().max().item() == 0.0


def test_stream_ids_give_fresh_masks() -> None:
    ms = maskers(2)
    x = torch.ones(1000)
    assert not torch.equal(ms[0].mask(x, stream_id=1), ms[0].mask(x, stream_id=2))
    assert torch.equal(ms[0].mask(x, stream_id=3), ms[0].mask(x, stream_id=3))  # deterministic


@settings(max_examples=30, deadline=None)
@given(
    frac_bits=st.integers(0, 30),
    values=st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=1, max_size=300),
)
def test_fixed_point_error_bound(frac_bits: int, values: list[float]) -> None:
    ms = maskers(2, frac_bits)
    x = torch.tensor(values, dtype=torch.float32)
    y = torch.tensor(values[::-1], dtype=torch.float32)
    total = secure.sum_masked([ms[0].mask(x, stream_id=0), ms[1].mask(y, stream_id=0)], frac_bits=frac_bits)
    exact = x.double() + y.double()
    tol = secure.fixed_point_error_bound(2, frac_bits) + exact.abs().max().item() * 2**-24
    assert (total.double() - exact).abs().max().item() <= tol


def test_out_of_range_and_non_finite_are_errors_naming_the_tensor() -> None:
    m = maskers(2, frac_bits=16)[0]
    assert m.range == 2.0**35
    with pytest.raises(ValueError, match=r"'emb' value .* at flat index 2 is outside the fixed-point range"):
        m.mask(torch.tensor([1.0, 2.0, 2.0**36]), stream_id=0, name="emb")
    with pytest.raises(ValueError, match="flat index 0"):
        m.mask(torch.tensor([float("nan")]), stream_id=0, name="emb")
    with pytest.raises(TypeError, match="float32"):
        m.mask(torch.ones(3, dtype=torch.float64), stream_id=0)


def test_large_tensors_use_every_chunk_of_the_keystream() -> None:
    ms = maskers(2)
    x = torch.randn(300_001)  # several parallel chunks, odd length
    total = secure.sum_masked([ms[0].mask(x, stream_id=5), ms[1].mask(-x, stream_id=5)])
    assert total.abs().max().item() <= secure.fixed_point_error_bound(2, 16)


def test_masker_arguments() -> None:
    kp = secure.KeyPair.generate()
    with pytest.raises(ValueError, match="at least one peer"):
        secure.PairwiseMasker("a", kp, {}, session_id=secure.new_session_id())
    with pytest.raises(ValueError, match="must not include this party"):
        secure.PairwiseMasker("a", kp, {"a": kp.public_bytes}, session_id=secure.new_session_id())
    with pytest.raises(ValueError, match="shape"):
        secure.sum_masked([torch.zeros(3, dtype=torch.int64), torch.zeros(4, dtype=torch.int64)])
