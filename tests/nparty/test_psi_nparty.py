"""PSI across a leader and N followers equals the plaintext intersection, in one order everywhere."""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import pytest

from splitlink.channel import InProcessCommunicator, ServerConfig
from splitlink.psi import intersect_parties


def run_all(sets: dict[str, list[str]], **kw: Any) -> dict[str, list[str]]:
    names = list(sets)
    cfgs = {n: ServerConfig(n, f"127.0.0.1:{k + 1}") for k, n in enumerate(names)}
    hub: dict[str, Any] = {}
    followers = [n for n in names if n != "leader"]
    comms = {
        n: InProcessCommunicator(cfgs[n], [cfgs[m] for m in (followers if n == "leader" else ["leader"])], hub=hub) for n in names
    }
    out: dict[str, Any] = {}

    def party(n: str) -> None:
        try:
            peers = followers if n == "leader" else "leader"
            sd = kw.get("state_dir")
            out[n] = intersect_parties(
                sets[n],
                comms[n],
                peers,
                role="leader" if n == "leader" else "follower",
                buckets=kw.get("buckets", 1),
                state_dir=None if sd is None else Path(sd) / n,
                timeout=60,
            )
        except BaseException as e:  # noqa: BLE001 (reported by the test)
            out[n] = e

    threads = [threading.Thread(target=party, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for _n, v in out.items():
        if isinstance(v, BaseException):
            raise v
    return out


def make_sets(n_followers: int, seed: int) -> dict[str, list[str]]:
    rng = random.Random(seed)
    universe = [f"user-{i}" for i in range(400)]
    sets = {"leader": rng.sample(universe, 300)}
    for k in range(n_followers):
        sets[f"follower{k + 1}"] = rng.sample(universe, 250 + 10 * k)
    return sets


@pytest.mark.parametrize("n", [1, 3])
def test_nparty_psi_equals_the_plaintext_intersection(n: int) -> None:
    sets = make_sets(n, seed=n)
    got = run_all(sets)
    expected = set.intersection(*(set(s) for s in sets.values()))
    assert set(got["leader"]) == expected and len(got["leader"]) == len(expected)
    assert all(got[p] == got["leader"] for p in sets)  # the same rows in the same order at every party
    assert 0 < len(expected) < 250


def test_nparty_psi_with_buckets_resumes_from_its_state(tmp_path: Path) -> None:
    sets = make_sets(3, seed=7)
    first = run_all(sets, buckets=3, state_dir=tmp_path)
    assert sorted((tmp_path / "leader").glob("follower*/bucket-*.json"))  # per-follower state at the leader
    again = run_all(sets, buckets=3, state_dir=tmp_path)  # every bucket finished: taken from the state
    assert again == first
    assert set(first["leader"]) == set.intersection(*(set(s) for s in sets.values()))


def test_a_follower_refuses_malformed_final_positions(monkeypatch: pytest.MonkeyPatch) -> None:
    from splitlink import psi

    class Fake:
        def __init__(self) -> None:
            self.sent: list[Any] = []

        def send_tensors(self, peer: str, tensors: Any, **_: Any) -> None:
            self.sent.append(tensors)

        def receive(self, peer: str, timeout: Any = None, **_: Any) -> Any:
            import torch

            return {"psi": {"final": torch.tensor([0, 0], dtype=torch.int64)}}

    monkeypatch.setattr(psi, "intersect", lambda *a, **k: ["a", "b"])  # the pairwise part: both hold a, b
    with pytest.raises(ValueError, match="malformed PSI message from 'leader'"):  # a repeated position
        intersect_parties(["a", "b"], Fake(), "leader", role="follower")
