"""ECDH-PSI: equals the plaintext intersection, leaks nothing in the clear, joins CSVs, resumes per bucket."""

from __future__ import annotations

import csv
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitlink import _core, psi
from splitlink.channel import InProcessCommunicator, ServerConfig

L, F = ServerConfig("leader", "127.0.0.1:1"), ServerConfig("follower", "127.0.0.1:2")


def pair(through_codecs: bool = True) -> tuple[InProcessCommunicator, InProcessCommunicator]:
    hub: dict[str, Any] = {}
    return (
        InProcessCommunicator(L, F, hub=hub, through_codecs=through_codecs),
        InProcessCommunicator(F, L, hub=hub, through_codecs=through_codecs),
    )


def run_both(fn_leader, fn_follower) -> tuple[Any, Any]:
    out: dict[str, Any] = {}

    def go(name: str, fn) -> None:
        try:
            out[name] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            out[name] = e

    t = threading.Thread(target=go, args=("follower", fn_follower))
    t.start()
    go("leader", fn_leader)
    t.join(120)
    for v in out.values():
        if isinstance(v, BaseException):
            raise v
    return out["leader"], out["follower"]


def psi_both(a: list, b: list, **kw: Any) -> tuple[list, list]:
    cl, cf = pair()
    return run_both(
        lambda: psi.intersect(a, cl, "follower", role="leader", **kw),
        lambda: psi.intersect(b, cf, "leader", role="follower", **kw),
    )


def test_commutative_and_deterministic() -> None:
    a, b = _core.psi.Blinder(), _core.psi.Blinder()
    ids = [f"user-{i}" for i in range(300)]
    ab = b.blind(a.hash_and_blind(ids))
    ba = a.blind(b.hash_and_blind(ids))
    assert np.array_equal(ab, ba)
    assert np.array_equal(a.hash_and_blind(ids), a.hash_and_blind(ids))
    assert not np.array_equal(a.hash_and_blind(ids), b.hash_and_blind(ids))
    assert _core.psi.hash_to_point(b"x") == _core.psi.hash_to_point(b"x") != _core.psi.hash_to_point(b"y")
    assert "secret" in repr(a) and "scalar" in repr(a)


def test_low_order_points_from_a_peer_are_refused() -> None:
    bad = np.zeros((3, 32), np.uint8)
    bad[1, 0] = 1  # u = 1 and u = 0: small-order points
    with pytest.raises(_core.CryptoError, match="point 0 from the peer is of small order"):
        _core.psi.Blinder().blind(bad)


@pytest.mark.parametrize("case", ["empty", "identical", "disjoint", "duplicates", "unicode_long", "one_empty"])
def test_equals_the_plaintext_intersection(case: str) -> None:
    rng = np.random.default_rng(1)
    if case == "empty":
        a, b = [], []
    elif case == "identical":
        a = [str(i) for i in range(500)]
        b = list(reversed(a))
    elif case == "disjoint":
        a, b = [f"a{i}" for i in range(300)], [f"b{i}" for i in range(200)]
    elif case == "duplicates":
        a = [str(int(x)) for x in rng.integers(0, 400, 700)]
        b = [str(int(x)) for x in rng.integers(200, 600, 500)]
    elif case == "unicode_long":
        a = ["Zürich-😀", "東京", "x" * 100_000, "", "é", "e\u0301"]
        b = ["東京", "x" * 100_000, "y" * 100_000, "e\u0301", ""]
    else:
        a, b = [str(i) for i in range(50)], []
    got_l, got_f = psi_both(a, b)
    cl, cf = pair(False)
    plain_l, plain_f = run_both(
        lambda: psi.insecure_plaintext_intersect(a, cl, "follower", role="leader"),
        lambda: psi.insecure_plaintext_intersect(b, cf, "leader", role="follower"),
    )
    assert got_l == got_f  # same order on both sides
    assert set(got_l) == set(a) & set(b) == set(plain_l) == set(plain_f)
    assert len(got_l) == len(set(got_l))


@settings(max_examples=15, deadline=None)
@given(st.sets(st.text(max_size=12), max_size=40), st.sets(st.text(max_size=12), max_size=40))
def test_random_sets(a: set[str], b: set[str]) -> None:
    got_l, got_f = psi_both(sorted(a), sorted(b, reverse=True))
    assert got_l == got_f and set(got_l) == a & b


class Recording(InProcessCommunicator):
    def __init__(self, *a: Any, **k: Any) -> None:
        super().__init__(*a, **k)
        self.received: list[bytes] = []

    def receive(self, target_server_name: str, timeout: float | None = None, *, kind: str | None = None) -> dict:
        got = super().receive(target_server_name, timeout, kind=kind)

        def walk(x: Any) -> None:
            if isinstance(x, dict):
                for v in x.values():
                    walk(v)
            else:
                self.received.append(np.ascontiguousarray(x.numpy()).tobytes())

        walk(got)
        return got


def test_received_frames_hold_no_id_in_the_clear() -> None:
    hub: dict[str, Any] = {}
    cl = Recording(L, F, hub=hub, through_codecs=True)
    cf = Recording(F, L, hub=hub, through_codecs=True)
    secret = [f"customer-{i:06d}@example.com" for i in range(200)]
    a = secret[:100] + [f"lead-only-{i}" for i in range(50)]
    b = secret[50:] + [f"follow-only-{i}" for i in range(50)]
    run_both(lambda: psi.intersect(a, cl, "follower", role="leader"), lambda: psi.intersect(b, cf, "leader", role="follower"))
    seen_by_leader = b"".join(cl.received)
    seen_by_follower = b"".join(cf.received)
    for ident in b:
        raw = ident.encode()
        assert raw not in seen_by_leader
        assert _core.psi.hash_to_point(raw) not in seen_by_leader  # not even unblinded hashes
    for ident in a:
        assert ident.encode() not in seen_by_follower
        assert _core.psi.hash_to_point(ident.encode()) not in seen_by_follower


def test_digest_length_bounds_false_positives() -> None:
    assert psi.digest_bytes(0, 0) == 8
    assert psi.digest_bytes(10**6, 10**6) == 10  # 40 + 39.9 bits
    assert psi.digest_bytes(10**7, 10**7) == 11
    assert psi.digest_bytes(2**100, 2**100) == 30 and psi.digest_bytes(2**120, 2**120) == 32


def test_buckets_give_the_same_set_and_order_on_both_sides(tmp_path: Path) -> None:
    a = [str(i) for i in range(0, 3000, 2)]
    b = [str(i) for i in range(0, 3000, 3)]
    got_l, got_f = psi_both(a, b, buckets=7)
    assert got_l == got_f and set(got_l) == set(a) & set(b)
    cl, cf = pair()
    with pytest.raises(ValueError, match="disagree on the number of buckets"):
        run_both(
            lambda: psi.intersect(a, cl, "follower", role="leader", buckets=3),
            lambda: psi.intersect(b, cf, "leader", role="follower", buckets=4),
        )


def test_a_psi_killed_mid_way_resumes_per_bucket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = [f"id{i}" for i in range(0, 4000, 2)]
    b = [f"id{i}" for i in range(0, 4000, 5)]
    real = psi._intersect_once
    calls = {"n": 0}

    def dying(*args: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 7:  # the leader's 4th bucket (the calls of both parties interleave)
            raise KeyboardInterrupt("killed")
        return real(*args, **kw)

    monkeypatch.setattr(psi, "_intersect_once", dying)
    sl, sf = tmp_path / "l", tmp_path / "f"
    cl, cf = pair()
    with pytest.raises((KeyboardInterrupt, TimeoutError)):
        run_both(
            lambda: psi.intersect(a, cl, "follower", role="leader", buckets=6, state_dir=sl, timeout=5),
            lambda: psi.intersect(b, cf, "leader", role="follower", buckets=6, state_dir=sf, timeout=5),
        )
    finished = {p.name for p in sl.glob("bucket-*.json")} & {p.name for p in sf.glob("bucket-*.json")}
    assert 1 <= len(finished) < 6

    def counting(*args: Any, **kw: Any) -> Any:
        calls["n"] += 1
        return real(*args, **kw)

    calls["n"] = 0
    monkeypatch.setattr(psi, "_intersect_once", counting)
    cl, cf = pair()
    got_l, got_f = run_both(
        lambda: psi.intersect(a, cl, "follower", role="leader", buckets=6, state_dir=sl),
        lambda: psi.intersect(b, cf, "leader", role="follower", buckets=6, state_dir=sf),
    )
    assert got_l == got_f and set(got_l) == set(a) & set(b)
    assert calls["n"] == 2 * (6 - len(finished))  # the buckets both finished were not run again


def column(path: Path, name: str = "sample_id") -> list[str]:
    with open(path, newline="") as fh:
        return [r[name] for r in csv.DictReader(fh)]


@pytest.mark.slow
def test_csv_join_over_mtls_aligns_rows_the_wide_deep_example_trains_on(tmp_path: Path) -> None:
    from splitlink.examples import criteo, demo, wide_deep

    demo.make_dev_certs(tmp_path / "certs", ["leader", "follower"])
    demo.prepare_psi_data(tmp_path, 3000, seed=5, vocab_size=5000, keep=0.8)
    lead_ids, fol_ids = set(column(tmp_path / "leader.csv")), set(column(tmp_path / "follower.csv"))
    sizes = demo.run_psi(tmp_path)  # `splitlink psi` on both sides, two processes over mutual TLS
    assert sizes["leader"] == sizes["follower"] == len(lead_ids & fol_ids)
    la, fa = column(tmp_path / "leader_aligned.csv"), column(tmp_path / "follower_aligned.csv")
    assert la == fa and set(la) == lead_ids & fol_ids
    hist = wide_deep.train_local(
        criteo.load_party(tmp_path / "leader.npz", "leader"),
        criteo.load_party(tmp_path / "follower.npz", "follower"),
        wide_deep.WideDeepConfig(vocab_size=5000, emb_dim=8, deep_layers=(16,)),
        wide_deep.TrainConfig(epochs=1, batch_size=500, log_every=1, progress=False),
    )
    assert hist and all(np.isfinite(r.get("wide_loss", 0.0)) for r in hist)


def test_join_csv_errors(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id,x\n1,2\n")
    cl, _ = pair()
    with pytest.raises(ValueError, match="has no column 'key'; its columns: id, x"):
        psi.join_csv(tmp_path / "a.csv", "key", tmp_path / "o.csv", cl, "follower", role="leader")
    (tmp_path / "b.csv").write_text("id,x\n1,2,3\n")
    with pytest.raises(ValueError, match=r"b.csv:2: 3 fields, the header has 2"):
        psi.join_csv(tmp_path / "b.csv", "id", tmp_path / "o.csv", cl, "follower", role="leader")
    with pytest.raises(TypeError, match="id 0 is a int"):
        psi.intersect([1, 2], cl, "follower", role="leader")
    with pytest.raises(ValueError, match="role must be"):
        psi.intersect(["a"], cl, "follower", role="boss")
