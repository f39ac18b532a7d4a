"""The resume agreement between two parties in one process (in-process communicators, and threads),
and riding through a peer's restart."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from fakes import Follower, Leader, SimpleParty

from splitlink.channel import InProcessCommunicator, PeerRestartedError, ServerConfig
from splitlink.runtime.party import TrainOptions, agree_locally, ride_through_restarts


def pair(tmp_path: Path, *, through_codecs: bool = False, **opts: Any) -> tuple[SimpleParty, SimpleParty]:
    hub: dict[str, Any] = {}
    lc, fc = ServerConfig("leader", "127.0.0.1:1"), ServerConfig("follower", "127.0.0.1:2")
    leader = Leader(
        InProcessCommunicator(lc, fc, hub=hub, through_codecs=through_codecs),
        TrainOptions(ckpt_dir=str(tmp_path / "leader"), peer_timeout=10, **opts),
        tmp_path / "leader",
    )
    follower = Follower(
        InProcessCommunicator(fc, lc, hub=hub, through_codecs=through_codecs),
        TrainOptions(ckpt_dir=str(tmp_path / "follower"), peer_timeout=10, **opts),
        tmp_path / "follower",
    )
    return leader, follower


def save_steps(p: SimpleParty, steps: list[int]) -> None:
    for s in steps:
        p.step = s
        for m in p.models.values():
            m.weight = float(s)
        p.save()
    p.step = 0
    for m in p.models.values():
        m.weight = -1.0


@pytest.mark.parametrize("through_codecs", [False, True])
def test_both_load_the_newest_step_both_hold(tmp_path: Path, through_codecs: bool) -> None:
    leader, follower = pair(tmp_path, through_codecs=through_codecs, resume=True)
    save_steps(leader, [0, 5, 10, 15])
    save_steps(follower, [0, 5, 10])  # killed before it recorded 15
    agree_locally(leader, follower)
    assert leader.step == follower.step == 10
    assert all(m.weight == 10.0 for p in (leader, follower) for m in p.models.values())


def test_over_threads_each_party_agrees_on_its_own(tmp_path: Path) -> None:
    leader, follower = pair(tmp_path, resume=True)
    save_steps(leader, [2, 4])
    save_steps(follower, [2, 4, 6])
    got: dict[str, int] = {}
    threads = [threading.Thread(target=lambda p=p: got.__setitem__(p.role, p.agree())) for p in (leader, follower)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert got == {"leader": 4, "follower": 4}


def test_without_resume_nothing_is_loaded(tmp_path: Path) -> None:
    leader, follower = pair(tmp_path, resume=False)
    save_steps(leader, [3])
    save_steps(follower, [3])
    agree_locally(leader, follower)
    assert leader.step == follower.step == 0 and leader.models["a"].weight == -1.0


def test_rejoin_without_a_common_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    leader, follower = pair(tmp_path, resume=False)
    save_steps(leader, [3])
    follower.offer()  # a restarted follower whose operator forgot resume: offers nothing
    leader.offer(rejoin=True)
    with pytest.raises(RuntimeError, match="the follower restarted, but the parties hold no common checkpoint.*resume"):
        leader.settle(rejoin=True)


def test_different_run_ids_are_refused(tmp_path: Path) -> None:
    leader, follower = pair(tmp_path)
    follower.train.run_id = "other"
    leader.offer()
    follower.offer()
    with pytest.raises(RuntimeError, match="runs 'run' but the follower runs 'other'; give both the same run_id"):
        leader.settle()


def test_a_frame_of_another_stage_is_a_protocol_error(tmp_path: Path) -> None:
    leader, follower = pair(tmp_path)
    leader.offer()
    follower.send({"x": torch.ones(1)})  # a training frame where the resume offer belongs
    with pytest.raises(ValueError, match="expected the resume offer.*different stages"):
        leader.settle()


class Hello(Leader):
    def hello(self) -> dict[str, torch.Tensor]:
        return {"rows": torch.tensor([len(self.role)])}

    def check_hello(self, theirs: Any) -> None:
        if int(theirs["rows"]) != len(self.role):
            raise RuntimeError("rows differ")


def test_the_hello_goes_first_and_is_checked(tmp_path: Path) -> None:
    hub: dict[str, Any] = {}
    lc, fc = ServerConfig("leader", "127.0.0.1:1"), ServerConfig("follower", "127.0.0.1:2")
    leader = Hello(InProcessCommunicator(lc, fc, hub=hub), TrainOptions(ckpt_dir=str(tmp_path), peer_timeout=5), tmp_path)
    peer = InProcessCommunicator(fc, lc, hub=hub)
    leader.offer()
    peer.send_tensors("leader", {"rows": torch.tensor([99])}, kind="hello")
    with pytest.raises(RuntimeError, match="rows differ"):
        leader.settle()
    assert peer.receive("leader", 5, with_kind=True)[0] == "hello"
    assert peer.receive("leader", 5, with_kind=True)[0] == "resume:run"


def test_run_trains_checkpoints_and_a_restarted_run_resumes(tmp_path: Path) -> None:
    leader, follower = pair(tmp_path, max_steps=6, ckpt_every=3)
    results: dict[str, int] = {}
    threads = [threading.Thread(target=lambda p=p: results.__setitem__(p.role, p.run())) for p in (leader, follower)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {"leader": 6, "follower": 6}
    assert leader.checkpoint_steps() == follower.checkpoint_steps() == [0, 3, 6]  # step 0: the fresh run's start
    again_l, again_f = pair(tmp_path, max_steps=6, resume=True)
    agree_locally(again_l, again_f)
    assert again_l.step == again_f.step == 6 and again_l.models["b"].weight == 6.0


def test_ride_through_agrees_again_after_a_peer_restart() -> None:
    calls: list[bool] = []
    attempts = iter([PeerRestartedError("follower", "it announced a new process"), None])

    def train() -> str:
        e = next(attempts)
        if e is not None:
            raise e
        return "done"

    assert ride_through_restarts("leader", calls.append, train) == "done"
    assert calls == [False, True]
