"""Regressions of the window of unacknowledged frames found in review: a frame reported failed is never
delivered later, a small frame held behind a slow large one is not timed out, the receive queue's
bounds hold with a window, the predecessor named in call metadata is checked, a dropped held frame is
not answered as delivered, and a peer that restarts must say again that it orders before the window
reopens."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import torch

from splitlink import ServerConfig, VerticalFederatedCommunicator
from splitlink.channel import protocol
from splitlink.util import free_ports

from .test_window import WAIT, Gate, frame, held

Pair = tuple[VerticalFederatedCommunicator, VerticalFederatedCommunicator]


@pytest.fixture
def pair() -> Iterator[Any]:
    made: list[VerticalFederatedCommunicator] = []

    def make(**kw: Any) -> Pair:
        lp, fp = free_ports(2)
        lc, fc = ServerConfig("leader", f"127.0.0.1:{lp}"), ServerConfig("follower", f"127.0.0.1:{fp}")
        kw.setdefault("retry_deadline", WAIT)
        leader = VerticalFederatedCommunicator(lc, fc, **kw).launch()
        follower = VerticalFederatedCommunicator(fc, lc, **kw).launch()
        made.extend((leader, follower))
        leader.send_tensors("follower", {"x": torch.tensor([-1.0])})  # seq 1; its ack opens the window
        assert float(follower.receive("leader", timeout=WAIT)["x"][0]) == -1.0
        return leader, follower

    yield make
    for c in made:
        c.shutdown(grace=0.5)


def outcome(work: Any) -> str:
    try:
        work.wait(WAIT)
        return "ok"
    except Exception as e:  # noqa: BLE001 - the test compares what each frame reported
        return type(e).__name__


def raw_send(leader: VerticalFederatedCommunicator, seq: int, after: str | None, x: float, timeout: float = WAIT) -> bytes:
    """One frame of seq ``seq`` straight through the leader's stub, naming ``after`` in its metadata."""
    packed = leader._pack_chunks("follower", {"x": torch.full((4,), x)}, seq, 0, "tensors")
    told = leader._inboxes["follower"].told or 0
    header = protocol.StreamHeader("leader", leader._incarnation, told, seq, 0, packed.nbytes).encode()
    metadata = None if after is None else (("splitlink-after", after),)
    return bytes(leader._one_stubs["follower"](packed.chunk(0, header), timeout=timeout, metadata=metadata))


def in_thread(fn: Any, *args: Any, **kw: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn(*args, **kw))
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out.append(e)

    t = threading.Thread(target=run)
    t.start()
    return t, out


# ---- finding 1: a frame held behind a slow one -------------------------------------------------------


def test_a_small_frame_held_behind_a_slow_large_one_is_not_timed_out_resent_or_failed(pair: Any) -> None:
    leader, follower = pair(max_inflight=4, retry_deadline=3.0)
    # stands in for the defaults (10 s + size / min_bandwidth) at a small scale: a large frame may take a
    # minute, a small one a second; the small ones wait 6 s for the large one, longer than their own
    # attempt timeout and the retry deadline
    leader.attempt_timeout = lambda n: 60.0 if n > 100_000 else 1.0  # type: ignore[method-assign]
    gate = Gate(follower)
    gate.blocked = {2}  # the large frame is slow
    works = [leader.isend("follower", {"x": torch.zeros(100_000)}), leader.isend("follower", frame(1))]
    works.append(leader.isend("follower", frame(2)))
    held(follower._inboxes["leader"], 3, 4)
    time.sleep(6.0)
    gate.release(2)
    assert [outcome(w) for w in works] == ["ok", "ok", "ok"]
    got = [float(follower.receive("leader", timeout=WAIT)["x"][0]) for _ in range(3)]
    assert got == [0.0, 1.0, 2.0]
    assert gate.calls.count(3) == 1 and gate.calls.count(4) == 1  # neither resent


def test_a_held_frame_whose_call_ended_is_never_delivered(pair: Any) -> None:
    leader, follower = pair(max_inflight=4)
    inbox = follower._inboxes["leader"]
    gate = Gate(follower)
    gate.blocked = {2}
    t2, out2 = in_thread(raw_send, leader, 2, "1", 2.0)  # frame 2 arrives (room reserved) but is slow
    gate.wait_inside(1)
    t3, out3 = in_thread(raw_send, leader, 3, "2", 3.0, timeout=1.0)  # held for frame 2, then its call times out
    held(inbox, 3)
    t3.join(WAIT)
    assert isinstance(out3[0], grpc.RpcError) and out3[0].code() == grpc.StatusCode.DEADLINE_EXCEEDED
    with inbox.cond:  # withdrawn once the receiver notices that the call ended
        assert inbox.cond.wait_for(lambda: not inbox.held and sorted(inbox.reserved) == [2], WAIT)
    gate.release(2)
    t2.join(WAIT)
    assert float(follower.receive("leader", timeout=WAIT)["x"][0]) == 2.0
    with pytest.raises(TimeoutError):  # frame 3 was reported failed to its sender: never delivered
        follower.receive("leader", timeout=0.5)


# ---- finding 2: the queue's bounds ---------------------------------------------------------------------


@pytest.mark.parametrize("streams", [1, 2])
def test_a_window_of_frames_keeps_the_receive_queue_bounds(pair: Any, streams: int) -> None:
    leader, follower = pair(
        max_inflight=4,
        max_queue_frames=1,
        max_queue_bytes=300_000,
        chunk_size=1 << 16,
        streams=streams,
        parallel_threshold=1 << 17,  # streams=2: 1 MB frames go as two parallel ranges
    )
    inbox = follower._inboxes["leader"]
    works = [leader.isend("follower", {"x": torch.full((250_000,), float(i))}) for i in range(4)]
    with inbox.cond:
        assert inbox.cond.wait_for(lambda: len(inbox.frames) == 1, WAIT)
    time.sleep(1.0)  # time for the window's other frames to arrive (they must wait for room)
    with inbox.cond:
        assert len(inbox.frames) == 1 and not inbox.reserved and not inbox.held
    assert not any(w.is_completed() for w in works[1:])
    got = [float(follower.receive("leader", timeout=WAIT)["x"][0]) for _ in range(4)]
    assert got == [0.0, 1.0, 2.0, 3.0]
    assert [outcome(w) for w in works] == ["ok"] * 4


def test_a_retry_of_a_held_frame_takes_it_over_without_a_second_copy(pair: Any) -> None:
    leader, follower = pair(max_inflight=4, max_queue_frames=8)
    inbox = follower._inboxes["leader"]
    gate = Gate(follower)
    gate.blocked = {2}
    t2, out2 = in_thread(raw_send, leader, 2, "1", 2.0)  # reaches the gate with room reserved
    gate.wait_inside(1)
    t3, out3 = in_thread(raw_send, leader, 3, "2", 3.0)
    held(inbox, 3)
    t3r, out3r = in_thread(raw_send, leader, 3, "2", 3.0)  # the sender's retry while frame 3 is held
    time.sleep(0.5)
    with inbox.cond:
        assert sorted(inbox.reserved) == [2, 3]  # one reservation (and one buffer) for frame 3
    assert gate.calls.count(3) == 1  # the retry's body was not taken
    gate.release(2)
    for t in (t2, t3, t3r):
        t.join(WAIT)
    assert protocol.Ack.decode(out3r[0]).status == protocol.ACK_OK
    assert [float(follower.receive("leader", timeout=WAIT)["x"][0]) for _ in range(2)] == [2.0, 3.0]
    with pytest.raises(TimeoutError):
        follower.receive("leader", timeout=0.3)


# ---- finding 3: the predecessor named in call metadata --------------------------------------------------


@pytest.mark.parametrize(
    ("seq", "after"),
    [(100, "abc"), (100, "-1"), (100, "1e3"), (100, "99999999999999999999999"), (100, "0"), (100, "100"), (100, "5000")],
)
def test_a_bad_predecessor_is_refused_before_the_body_is_read(pair: Any, seq: int, after: str) -> None:
    leader, follower = pair(max_inflight=4)
    gate = Gate(follower)
    with pytest.raises(grpc.RpcError) as refused:
        raw_send(leader, seq, after, 1.0)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert gate.calls == [] and not follower._inboxes["leader"].held


@pytest.mark.parametrize(("seq", "after"), [(1000, "999"), (18446744073709551614, "18446744073709551613")])
def test_a_frame_far_ahead_of_the_delivered_ones_is_not_held(pair: Any, seq: int, after: str) -> None:
    leader, follower = pair(max_inflight=4)
    with pytest.raises(grpc.RpcError) as refused:
        raw_send(leader, seq, after, 1.0, timeout=5.0)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert not follower._inboxes["leader"].held and not follower._inboxes["leader"].reserved


# ---- finding 4: a dropped held frame; send_tensors and isend ------------------------------------------


def test_a_held_frame_dropped_by_a_fresh_frame_is_answered_with_an_error(pair: Any) -> None:
    leader, follower = pair(max_inflight=4)
    gate = Gate(follower)
    gate.blocked = {2}
    t2, out2 = in_thread(raw_send, leader, 2, "1", 2.0, timeout=5.0)
    gate.wait_inside(1)
    t3, out3 = in_thread(raw_send, leader, 3, "2", 3.0)
    held(follower._inboxes["leader"], 3)
    raw_send(leader, 4, None, 4.0)  # names no predecessor: the sender gave up on 2 and 3
    t3.join(WAIT)
    assert isinstance(out3[0], grpc.RpcError) and out3[0].code() == grpc.StatusCode.ABORTED
    gate.release(2)
    t2.join(WAIT)
    assert float(follower.receive("leader", timeout=WAIT)["x"][0]) == 4.0
    with pytest.raises(TimeoutError):
        follower.receive("leader", timeout=0.3)


def test_send_tensors_goes_through_the_window_behind_pending_isends(pair: Any) -> None:
    leader, follower = pair(max_inflight=4)
    gate = Gate(follower)
    gate.blocked = {2}
    work = leader.isend("follower", frame(0))
    gate.wait_inside(1)
    t, out = in_thread(leader.send_tensors, "follower", frame(1))
    held(follower._inboxes["leader"], 3)  # sent as the isend frame's successor, not after a flush
    gate.release(2)
    t.join(WAIT)
    work.wait(WAIT)
    assert out == [None]
    assert [float(follower.receive("leader", timeout=WAIT)["x"][0]) for _ in range(2)] == [0.0, 1.0]


# ---- finding 5: a restarted peer ---------------------------------------------------------------------


def test_the_window_closes_when_the_peer_restarts_until_its_new_process_orders(pair: Any) -> None:
    leader, follower = pair(max_inflight=4)
    assert leader._window_of("follower") == 4
    leader._inboxes["follower"].see(follower._incarnation ^ 1)  # its announcement of a new process
    assert leader._window_of("follower") == 1


# ---- found in a fresh-clone CI run: a frame in ranges withdrawn after it was assembled -----------------

RANGES = {"streams": 2, "chunk_size": 1 << 16, "parallel_threshold": 1 << 17}  # 400 kB frames: two ranges


def big(i: int) -> dict[str, torch.Tensor]:
    return {"x": torch.full((100_000,), float(i))}


def test_a_frame_in_ranges_whose_completing_call_failed_is_sent_again_whole(pair: Any, caplog: Any) -> None:
    leader, follower = pair(max_inflight=4, **RANGES)
    gate = Gate(follower)
    gate.refuse = {3: (grpc.StatusCode.UNAVAILABLE, 1)}  # frame 3 assembled, its completing call fails
    works = [leader.isend("follower", big(i)) for i in range(4)]
    got = [float(follower.receive("leader", timeout=WAIT)["x"][0]) for _ in range(4)]
    assert got == [0.0, 1.0, 2.0, 3.0]
    assert [outcome(w) for w in works] == ["ok"] * 4
    assert gate.calls.count(3) == 2  # assembled twice: all of its ranges came again
    assert "sending all of its ranges again" in caplog.text
    with pytest.raises(TimeoutError):
        follower.receive("leader", timeout=0.3)


def test_a_held_frame_in_ranges_withdrawn_when_its_call_timed_out_is_sent_again_whole(pair: Any, caplog: Any) -> None:
    leader, follower = pair(max_inflight=4, **RANGES)
    inbox = follower._inboxes["leader"]
    gate = Gate(follower)
    gate.blocked = {2}
    budget = leader._budget
    leader._budget = lambda peer, seq, n: 1.0 if seq == 3 else budget(peer, seq, n)  # type: ignore[method-assign]
    works = [leader.isend("follower", big(i)) for i in range(2)]  # frames 2 and 3
    held(inbox, 3)
    with inbox.cond:  # frame 3's attempts time out while it waits for frame 2: withdrawn
        assert inbox.cond.wait_for(lambda: 3 not in inbox.held and 3 not in inbox.reserved, WAIT)
    gate.release(2)
    got = [float(follower.receive("leader", timeout=WAIT)["x"][0]) for _ in range(2)]
    assert got == [0.0, 1.0]
    assert [outcome(w) for w in works] == ["ok"] * 2
    assert "sending all of its ranges again" in caplog.text
    with pytest.raises(TimeoutError):
        follower.receive("leader", timeout=0.3)
