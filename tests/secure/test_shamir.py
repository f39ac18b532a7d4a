"""Shamir secret sharing (native, GF(2^61-1)): any t shares reconstruct, fewer reveal nothing we can
see, bad shares are refused or give a different secret, and shares tampered in transit are caught by
the AEAD layer that carries them."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitlink import _core, secure

S = _core.secure


@st.composite
def sharing(draw: st.DrawFn) -> tuple[bytes, int, list[int]]:
    secret = draw(st.binary(min_size=1, max_size=64))
    n = draw(st.integers(1, 8))
    t = draw(st.integers(1, n))
    xs = draw(st.lists(st.integers(1, 2**32 - 1), min_size=n, max_size=n, unique=True))
    return secret, t, xs


@settings(max_examples=60, deadline=None)
@given(sharing(), st.randoms(use_true_random=False))
def test_any_t_subset_reconstructs(case: tuple[bytes, int, list[int]], rnd: random.Random) -> None:
    secret, t, xs = case
    shares = S.shamir_split(secret, t, xs)
    assert len(shares) == len(xs)
    assert all(len(s) == S.shamir_share_bytes(len(secret)) for s in shares)
    assert [S.shamir_share_x(s) for s in shares] == xs
    subsets = list(itertools.combinations(shares, t))
    for subset in rnd.sample(subsets, min(len(subsets), 10)):
        chosen = list(subset)
        rnd.shuffle(chosen)
        assert S.shamir_combine(chosen, t) == secret


@settings(max_examples=40, deadline=None)
@given(sharing())
def test_fewer_than_t_shares_are_refused(case: tuple[bytes, int, list[int]]) -> None:
    secret, t, xs = case
    shares = S.shamir_split(secret, t, xs)
    with pytest.raises(ValueError, match=f"needs {t} shares, got {t - 1}"):
        S.shamir_combine(shares[: t - 1], t)


def test_t_minus_1_shares_look_uniform_whatever_the_secret() -> None:
    """Smoke check of secrecy: with t = 3, two shares of an all-zero and of an all-0xFF secret have
    the same (uniform) bit statistics. 3000 splits per secret; each of the 2 x 5 x 61 bit positions
    must be set with frequency 0.5 +- 0.05 (over 5 standard deviations)."""
    n = 3000
    for secret in (bytes(32), b"\xff" * 32):
        ones = [0] * 61
        for _ in range(n):
            for share in S.shamir_split(secret, 3, [1, 2, 3])[:2]:
                for c in range(5):
                    y = int.from_bytes(share[9 + 8 * c : 17 + 8 * c], "little")
                    assert y < S.SHAMIR_PRIME
                    for b in range(60):  # bit 60: p = 2^61-1 sits just below 2^61
                        ones[b] += (y >> b) & 1
        for b in range(60):
            assert abs(ones[b] / (n * 2 * 5) - 0.5) < 0.05, (secret[:1], b)


def test_refusals_name_the_problem() -> None:
    secret = b"k" * 32
    with pytest.raises(ValueError, match="x = 0"):
        S.shamir_split(secret, 2, [0, 1])
    with pytest.raises(ValueError, match="appears twice"):
        S.shamir_split(secret, 2, [4, 4])
    with pytest.raises(ValueError, match="threshold must be 1..2"):
        S.shamir_split(secret, 3, [1, 2])
    shares = S.shamir_split(secret, 2, [1, 2, 3])
    with pytest.raises(ValueError, match="both have x = 1"):
        S.shamir_combine([shares[0], shares[0]], 2)
    zero = bytearray(shares[1])
    zero[1:5] = bytes(4)
    with pytest.raises(ValueError, match="x = 0"):
        S.shamir_combine([shares[0], bytes(zero)], 2)
    with pytest.raises(ValueError, match="bytes"):
        S.shamir_combine([shares[0], shares[1][:-1]], 2)


@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.integers(9, 48), st.integers(0, 7))
def test_a_tampered_share_gives_another_secret_or_is_refused(secret: bytes, byte: int, bit: int) -> None:
    shares = S.shamir_split(secret, 3, [1, 2, 3, 4])
    bad = bytearray(shares[2])
    bad[byte] ^= 1 << bit
    try:
        got = S.shamir_combine([shares[0], shares[1], bytes(bad)], 3)
    except ValueError:
        return  # out of the field or inconsistent: refused
    assert got != secret


def test_a_share_tampered_in_transit_is_detected_by_the_aead_layer() -> None:
    key = secure.Key(bytes(range(32)))
    share = S.shamir_split(b"s" * 32, 2, [1, 2])[0]
    sealed = bytearray(secure.aead_encrypt("aes-256-gcm", key, bytes(12), b"round 1", share))
    assert secure.aead_decrypt("aes-256-gcm", key, bytes(12), b"round 1", bytes(sealed)) == share
    sealed[10] ^= 1
    with pytest.raises(secure.CryptoError):
        secure.aead_decrypt("aes-256-gcm", key, bytes(12), b"round 1", bytes(sealed))
