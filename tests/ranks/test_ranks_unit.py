"""The pieces of a party over ranks, in one process: run-file validation, names and addresses, the
scatter/gather of party A's frames, the resume intersection, the restart of B's whole group, the
per-rank slices of a schedule."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from splitlink.channel import PeerRestartedError
from splitlink.config import YamlConfigError
from splitlink.runtime import ranks
from splitlink.runtime.run_config import load_run_config
from splitlink.runtime.schedule import Schedule


def write(tmp_path: Path, party: str = "follower", **over: Any) -> Path:
    cfg: dict[str, Any] = {
        "scenario": "pangu_alpha",
        "party": party,
        "address": "127.0.0.1:7000",
        "peer_address": "127.0.0.1:6000",
        "enable_ssl": False,
        "ranks": {"mode": "scatter", "world_size": 2},
        "train": {"batch_size": 4},
    }
    if party == "leader":
        cfg["data"] = "data"
    for k, v in over.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    f = tmp_path / "run.yaml"
    f.write_text(yaml.safe_dump(cfg))
    return f


@pytest.mark.parametrize(
    ("ranks_section", "train", "message"),
    [
        ({"mode": "scatter", "world_size": 2, "follower_addresses": ["h:1"]}, None, "lists 1 address(es)"),
        ({"mode": "scatter", "world_size": 2, "follower_addresses": ["h:1", "nope"]}, None, "not host:port: 'nope'"),
        ({"mode": "scatter", "world_size": 2, "follower_addresses": ["h:1", "h:1"]}, None, "cannot share an address"),
        ({"mode": "scatter", "world_size": 2, "leader_addresses": ["h:1", "h:2"]}, None, "only paired mode"),
        ({"mode": "scatter", "world_size": 3}, {"batch_size": 4}, "make it a multiple"),
        ({"mode": "ring", "world_size": 2}, None, "ranks.mode"),
        ({"mode": "paired", "world_size": 0}, None, "ranks.world_size"),
        ({"mode": "paired", "world_size": 2, "extra": 1}, None, "ranks.extra"),
    ],
)
def test_bad_ranks_sections_are_refused_with_the_reason(
    tmp_path: Path, ranks_section: dict[str, Any], train: dict[str, Any] | None, message: str
) -> None:
    f = write(tmp_path, ranks=ranks_section, train=train or {"batch_size": 4})
    with pytest.raises(YamlConfigError, match=re.escape(message)):
        load_run_config(f)


def test_paired_party_a_has_no_evaluation_yet(tmp_path: Path) -> None:
    f = write(tmp_path, "leader", ranks={"mode": "paired", "world_size": 2}, eval_data="eval")
    with pytest.raises(YamlConfigError, match="paired mode has no evaluation"):
        load_run_config(f)


def launched(monkeypatch: pytest.MonkeyPatch, rank: int | None, world: int = 2) -> None:
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    if rank is not None:
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(world))


def test_names_and_addresses_of_every_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    launched(monkeypatch, 1)
    b = load_run_config(write(tmp_path))
    plan = ranks.channel_plan(b, ranks.group_of(b))  # type: ignore[arg-type]
    assert plan.me == ("follower-r1", "127.0.0.1:7001") and plan.peers == [("leader", "127.0.0.1:6000")]
    assert ranks.group_of(b).sens_scale == 2.0  # type: ignore[union-attr]
    launched(monkeypatch, None)
    a = load_run_config(write(tmp_path, "leader", address="127.0.0.1:6000", peer_address="127.0.0.1:7000"))
    group = ranks.group_of(a)
    assert group is not None and not group.launched and group.sens_scale == 1.0
    assert ranks.channel_plan(a, group).peers == [("follower-r0", "127.0.0.1:7000"), ("follower-r1", "127.0.0.1:7001")]
    launched(monkeypatch, 1)
    paired = {
        "mode": "paired",
        "world_size": 2,
        "follower_addresses": ["b0:7000", "b1:7000"],
        "leader_addresses": ["a0:6000", "a1:6000"],
    }
    a = load_run_config(write(tmp_path, "leader", ranks=paired))
    plan = ranks.channel_plan(a, ranks.group_of(a))  # type: ignore[arg-type]
    assert plan.me == ("leader-r1", "a1:6000") and plan.peers == [("follower-r1", "b1:7000")]
    b = load_run_config(write(tmp_path, ranks=paired))
    group = ranks.group_of(b)
    assert group is not None and group.sens_scale == 1.0  # paired: each A rank's loss is its slice's mean
    assert ranks.channel_plan(b, group).me == ("follower-r1", "b1:7000")


def test_a_rank_needs_the_launcher_and_its_world_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    launched(monkeypatch, None)
    cfg = load_run_config(write(tmp_path))
    with pytest.raises(ValueError, match="torchrun --nproc_per_node 2"):
        ranks.group_of(cfg)
    launched(monkeypatch, 0, world=3)
    with pytest.raises(ValueError, match="started 3 ranks but the run file's ranks.world_size is 2"):
        ranks.group_of(cfg)
    a = load_run_config(write(tmp_path, "leader"))
    with pytest.raises(ValueError, match="party A is one process"):
        ranks.group_of(a)


def test_ssl_paths_take_the_rank() -> None:
    got = ranks.ssl_for_rank(
        {"server_cert_path": "c/follower-r{rank}.p12", "ca_cert_path": "c/ca.crt", "server_password": "{rank}"}, 3
    )
    assert got == {"server_cert_path": "c/follower-r3.p12", "ca_cert_path": "c/ca.crt", "server_password": "{rank}"}
    with pytest.raises(ValueError, match="not a rank"):
        ranks.ssl_for_rank({"server_cert_path": "c/follower-r{rank}.p12"}, None)


class FakeComm:
    """Queues per peer, as the communicator's API (receive raises what was queued as an exception)."""

    def __init__(self, peers: list[str]) -> None:
        self.sent: dict[str, list[tuple[str, Any]]] = {p: [] for p in peers}
        self.inbox: dict[str, list[Any]] = {p: [] for p in peers}

    def send_tensors(self, peer: str, tensors: Any, *, step: int | None = None, kind: str = "tensors") -> None:
        self.sent[peer].append((kind, tensors))

    def receive(self, peer: str, timeout: float | None = None, *, kind: str | None = None, with_kind: bool = False) -> Any:
        if not self.inbox[peer]:
            raise TimeoutError(f"nothing from {peer}")
        item = self.inbox[peer].pop(0)
        if isinstance(item, BaseException):
            raise item
        return item if with_kind else item[1]


def test_scatter_cuts_batches_in_rank_order_and_gathers_the_answers() -> None:
    fake = FakeComm(["follower-r0", "follower-r1"])
    comm = ranks.ScatterComm(fake, "follower", ["follower-r0", "follower-r1"], timeout=1.0)
    x = torch.arange(24.0).reshape(4, 3, 2)
    comm.send_tensors("follower", {"output": {"hidden_states": x}, "mask": x > 3}, step=1)
    for r in (0, 1):
        kind, got = fake.sent[f"follower-r{r}"][0]
        assert kind == "tensors"
        assert torch.equal(got["output"]["hidden_states"], x[2 * r : 2 * r + 2])
        assert torch.equal(got["mask"], x[2 * r : 2 * r + 2] > 3)
        fake.inbox[f"follower-r{r}"].append(("tensors", {"hidden_states": x[2 * r : 2 * r + 2] + 1}))
    assert torch.equal(comm.receive("follower")["hidden_states"], x + 1)
    comm.send_tensors("follower", {}, kind="done")  # control frames go to every rank whole
    assert [fake.sent[p][-1][0] for p in fake.sent] == ["done", "done"]
    with pytest.raises(ValueError, match="multiple of ranks.world_size"):
        comm.send_tensors("follower", {"t": torch.zeros(3, 2)})
    with pytest.raises(ValueError, match="unknown peer"):
        comm.send_tensors("leader", {})


def test_the_resume_offer_of_b_is_the_steps_every_rank_holds() -> None:
    fake = FakeComm(["follower-r0", "follower-r1"])
    comm = ranks.ScatterComm(fake, "follower", ["follower-r0", "follower-r1"], timeout=1.0)
    fake.inbox["follower-r0"].append(("resume:run", {"steps": torch.tensor([0, 4, 8])}))
    fake.inbox["follower-r1"].append(("resume:run", {"steps": torch.tensor([0, 4])}))
    kind, got = comm.receive("follower", with_kind=True)
    assert kind == "resume:run" and got["steps"].tolist() == [0, 4]
    fake.inbox["follower-r0"].append(("tensors", {}))
    fake.inbox["follower-r1"].append(("eval", {}))
    with pytest.raises(ValueError, match="different kinds"):
        comm.receive("follower")


def test_a_restart_of_one_rank_waits_for_the_whole_group() -> None:
    fake = FakeComm(["follower-r0", "follower-r1"])
    comm = ranks.ScatterComm(fake, "follower", ["follower-r0", "follower-r1"], timeout=1.0)
    fake.inbox["follower-r0"].append(PeerRestartedError("follower-r0", "new process"))
    # rank 1's previous process had sent a frame before its new process announced itself: dropped
    fake.inbox["follower-r1"] += [
        ("tensors", {"old": torch.zeros(1)}),
        PeerRestartedError("follower-r1", "new"),
        ("resume:run", {"steps": torch.tensor([4])}),
    ]
    with pytest.raises(PeerRestartedError, match="follower-r0"):
        comm.receive("follower")
    assert [k for k, _ in fake.inbox["follower-r1"]] == ["resume:run"]  # the new process's frames stay
    fake.inbox["follower-r0"].append(PeerRestartedError("follower-r0", "new process"))
    fake.inbox["follower-r1"].clear()
    with pytest.raises(TimeoutError, match="restarted together"):  # rank 1 never restarts
        comm.receive("follower")


def test_a_rank_of_a_paired_a_trains_on_its_slice_of_every_global_batch() -> None:
    s = Schedule(40, 8, seed=3, epochs=1)
    halves = [list(ranks.RankSlicedSchedule(s, r, 2).steps(1)) for r in (0, 1)]
    whole = list(s.steps(1))
    assert len(halves[0]) == len(whole) == 4
    for (e0, a), (e1, b), (e, rows) in zip(*halves, whole):
        assert e0 == e1 == e and np.array_equal(np.concatenate([a, b]), rows)
    with pytest.raises(ValueError, match="not a multiple"):
        ranks.RankSlicedSchedule(s, 0, 3)


def test_the_launch_script_of_party_b_over_ranks_has_help() -> None:
    import os
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "examples/splitnn_pangu_alpha/run_pangu_train_follower_ranks.sh"
    out = subprocess.run(
        ["bash", str(script), "--help"], env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "NPROC" in out.stdout and "--ranks" in out.stdout, out.stderr
