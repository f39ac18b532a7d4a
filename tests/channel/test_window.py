"""A window of unacknowledged frames per peer: several ``isend`` frames on the wire at once, delivered
strictly in order and exactly once (the receiver holds a frame that overtook its predecessor).

The tests count the frames in flight at the receiver with a hook on ``_deliver`` (where a complete
frame is handed to the inbox) instead of timing anything: a sender that waits for each ack before
sending the next frame never has two frames there at once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import torch

from splitlink import PeerUnavailableError, ServerConfig, VerticalFederatedCommunicator
from splitlink.channel import FrameNotSentError
from splitlink.channel.inbox import DROPPED, DUPLICATE, MAX_HELD, QUEUED, WITHDRAWN, HeldTooMany, Inbox, Slot
from splitlink.util import free_ports

WAIT = 30.0  # seconds any single event may take on a loaded 2-core machine before the test fails


class Gate:
    """Wraps a receiver's ``_deliver``: counts frames inside it, lets a test hold chosen frames there."""

    def __init__(self, comm: VerticalFederatedCommunicator) -> None:
        self.cond = threading.Condition()
        self.inside: set[int] = set()  # seqs of frames in _deliver now
        self.most = 0  # the most frames in _deliver at once
        self.calls: list[int] = []  # seqs, in the order their calls reached _deliver
        self.blocked: set[int] = set()  # seqs held at the gate until released
        self.refuse: dict[int, tuple[grpc.StatusCode, int]] = {}  # seq -> (status, times) to abort with
        self._deliver = comm._deliver
        comm._deliver = self.deliver  # type: ignore[method-assign]

    def deliver(self, sender: str, incarnation: int, seq: int, buf: Any, context: grpc.ServicerContext, slot: Slot) -> bytes:
        with self.cond:
            self.calls.append(seq)
            self.inside.add(seq)
            self.most = max(self.most, len(self.inside))
            self.cond.notify_all()
            code, times = self.refuse.get(seq, (grpc.StatusCode.OK, 0))
            if times:
                self.refuse[seq] = (code, times - 1)
            self.cond.wait_for(lambda: seq not in self.blocked, WAIT)
        try:
            if times:
                context.abort(code, f"test refuses frame seq {seq}")
            return self._deliver(sender, incarnation, seq, buf, context, slot)
        finally:
            with self.cond:
                self.inside.discard(seq)
                self.cond.notify_all()

    def wait_inside(self, n: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.inside) >= n, WAIT), f"{len(self.inside)} frame(s) in flight, not {n}"

    def release(self, *seqs: int) -> None:
        with self.cond:
            self.blocked -= set(seqs)
            self.cond.notify_all()


@pytest.fixture
def pair() -> Iterator[tuple[VerticalFederatedCommunicator, VerticalFederatedCommunicator]]:
    made: list[VerticalFederatedCommunicator] = []

    def make(**kw: Any) -> tuple[VerticalFederatedCommunicator, VerticalFederatedCommunicator]:
        lp, fp = free_ports(2)
        lc, fc = ServerConfig("leader", f"127.0.0.1:{lp}"), ServerConfig("follower", f"127.0.0.1:{fp}")
        leader = VerticalFederatedCommunicator(lc, fc, retry_deadline=WAIT, **kw).launch()
        follower = VerticalFederatedCommunicator(fc, lc, retry_deadline=WAIT, **kw).launch()
        made.extend((leader, follower))
        # one frame first: its ack tells the sender that the receiver delivers in order (window opens)
        leader.send_tensors("follower", {"x": torch.tensor([-1.0])})
        assert float(follower.receive("leader", timeout=WAIT)["x"][0]) == -1.0
        return leader, follower

    yield make  # type: ignore[misc]
    for c in made:
        c.shutdown(grace=0.5)


def frame(i: int) -> dict[str, torch.Tensor]:
    return {"x": torch.full((16,), float(i))}


def received(comm: VerticalFederatedCommunicator, n: int) -> list[float]:
    return [float(comm.receive("leader", timeout=WAIT)["x"][0]) for _ in range(n)]


def test_frames_of_the_window_are_on_the_wire_at_once_and_delivered_in_order(pair) -> None:  # type: ignore[no-untyped-def]
    leader, follower = pair(max_inflight=4)
    gate = Gate(follower)
    gate.blocked = {2, 3, 4, 5}  # seq 1 was the first frame
    works = [leader.isend("follower", frame(i)) for i in range(4)]
    gate.wait_inside(4)  # all four frames reached the receiver before any was acknowledged
    gate.release(5, 4, 3)  # the later ones first: held (their calls open) until frame 2 is delivered
    held(follower._inboxes["leader"], 3, 4, 5)
    assert all(not w.is_completed() for w in works)  # no ack before its predecessors were delivered
    assert sorted(follower._inboxes["leader"].held) == [3, 4, 5]
    gate.release(2)
    for w in works:
        w.wait(WAIT)
    assert received(follower, 4) == [0.0, 1.0, 2.0, 3.0]
    assert gate.most == 4


def test_a_slow_first_frame_and_a_fast_second_frame_arrive_in_order(pair) -> None:  # type: ignore[no-untyped-def]
    leader, follower = pair(max_inflight=2)
    gate = Gate(follower)
    gate.blocked = {2}
    first, second = leader.isend("follower", frame(0)), leader.isend("follower", frame(1))
    inbox = follower._inboxes["leader"]
    with inbox.cond:  # the second frame completed and waits for the first
        assert inbox.cond.wait_for(lambda: 3 in inbox.held, WAIT)
    with pytest.raises(TimeoutError):
        follower.receive("leader", timeout=0.05)  # nothing is delivered ahead of the first frame
    gate.release(2)
    first.wait(WAIT)
    second.wait(WAIT)
    assert received(follower, 2) == [0.0, 1.0]


def test_a_retried_frame_in_the_middle_of_the_window_is_delivered_once_in_order(pair) -> None:  # type: ignore[no-untyped-def]
    leader, follower = pair(max_inflight=4)
    gate = Gate(follower)
    gate.refuse[3] = (grpc.StatusCode.UNAVAILABLE, 2)  # the second frame of the window fails twice, then passes
    works = [leader.isend("follower", frame(i)) for i in range(4)]
    for w in works:
        w.wait(WAIT)
    assert received(follower, 4) == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(TimeoutError):
        follower.receive("leader", timeout=0.05)  # exactly once
    assert gate.calls.count(3) == 3  # two refused attempts and the one delivered


def test_a_failed_frame_fails_the_frames_behind_it_which_are_never_delivered(pair) -> None:  # type: ignore[no-untyped-def]
    leader, follower = pair(max_inflight=4)
    gate = Gate(follower)
    gate.refuse[3] = (grpc.StatusCode.INVALID_ARGUMENT, 1)  # not retried: the frame fails
    gate.blocked = {3}
    works = [leader.isend("follower", frame(i)) for i in range(3)]
    inbox = follower._inboxes["leader"]
    with inbox.cond:  # the frame behind the failing one reached the receiver and waits for it
        assert inbox.cond.wait_for(lambda: 4 in inbox.held, WAIT)
    gate.release(3)
    works[0].wait(WAIT)
    with pytest.raises(PeerUnavailableError, match="seq 3"):
        works[1].wait(WAIT)
    with pytest.raises(FrameNotSentError):
        works[2].wait(WAIT)
    # the next frame is delivered right after the last good one; the held frame is dropped
    leader.send_tensors("follower", frame(9))
    assert received(follower, 2) == [0.0, 9.0]
    assert not inbox.held
    with pytest.raises(TimeoutError):
        follower.receive("leader", timeout=0.05)


def test_the_window_never_exceeds_max_inflight(pair) -> None:  # type: ignore[no-untyped-def]
    leader, follower = pair(max_inflight=2)
    gate = Gate(follower)
    gate.blocked = {2, 3, 4}
    works = [leader.isend("follower", frame(i)) for i in range(2)]
    gate.wait_inside(2)
    third_queued = threading.Event()

    def third() -> None:
        works.append(leader.isend("follower", frame(2)))
        third_queued.set()

    t = threading.Thread(target=third)
    t.start()
    assert not third_queued.wait(0.5)  # isend blocks: max_inflight frames are pending
    gate.release(2, 3, 4)
    t.join(WAIT)
    for w in works:
        w.wait(WAIT)
    assert received(follower, 3) == [0.0, 1.0, 2.0]
    assert gate.most == 2


def test_sealed_frames_go_one_at_a_time(pair) -> None:  # type: ignore[no-untyped-def]
    leader, follower = pair(max_inflight=4, seal=True)
    gate = Gate(follower)
    works = [leader.isend("follower", frame(i)) for i in range(4)]
    for w in works:
        w.wait(WAIT)
    assert received(follower, 4) == [0.0, 1.0, 2.0, 3.0]
    assert gate.most == 1


# ---- the inbox's reorder buffer on its own -----------------------------------------------------------


def deliver(inbox: Inbox, seq: int, after: int, alive: Any = lambda: True, incarnation: int = 1) -> str:
    """What a frame's call does: reserve room, then put the frame (or learn what became of it)."""
    slot = inbox.reserve(incarnation, seq, after, 1, alive)
    if isinstance(slot, str):
        return slot
    try:
        return inbox.put(slot, f"f{seq}")
    finally:
        inbox.release(slot)


def put_in_thread(inbox: Inbox, seq: int, after: int, alive: Any = lambda: True) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(deliver(inbox, seq, after, alive)))
    t.start()
    return t, out


def held(inbox: Inbox, *seqs: int) -> None:
    with inbox.cond:
        assert inbox.cond.wait_for(lambda: set(seqs) <= set(inbox.held), WAIT)


def test_inbox_withdraws_a_held_frame_whose_call_ended_and_delivers_its_retry_in_order() -> None:
    inbox = Inbox("p", 100, 1 << 30)
    assert deliver(inbox, 1, 0) == QUEUED
    two = inbox.reserve(1, 2, 1, 1, lambda: True)  # frame 2's body is on its way
    assert isinstance(two, Slot)
    gone = threading.Event()
    t3, out3 = put_in_thread(inbox, 3, 2, lambda: not gone.is_set())
    held(inbox, 3)
    gone.set()  # frame 3's call ends while it waits: withdrawn, never delivered later
    t3.join(WAIT)
    assert out3 == [WITHDRAWN] and 3 not in inbox.held and 3 not in inbox.reserved
    t3r, out3r = put_in_thread(inbox, 3, 2)  # the sender's retry of frame 3
    held(inbox, 3)
    t4, out4 = put_in_thread(inbox, 4, 3)
    held(inbox, 4)
    assert inbox.put(two, "f2") == QUEUED
    for t in (t4, t3r):
        t.join(WAIT)
    assert out4 == [QUEUED] and out3r == [QUEUED]
    assert list(inbox.frames) == ["f1", "f2", "f3", "f4"]
    assert deliver(inbox, 3, 2) == DUPLICATE
    assert not inbox.held and not inbox.reserved


def test_inbox_never_releases_a_held_frame_whose_call_ended_even_before_it_noticed() -> None:
    inbox = Inbox("p", 100, 1 << 30)
    two = inbox.reserve(1, 2, 0, 1, lambda: True)
    assert isinstance(two, Slot)
    open_ = threading.Event()
    open_.set()
    t3, out3 = put_in_thread(inbox, 3, 2, open_.is_set)
    held(inbox, 3)
    with inbox.cond:  # the call ends, and its predecessor is queued before the held frame's wait notices
        open_.clear()
        assert inbox.put(two, "f2") == QUEUED
    t3.join(WAIT)
    assert out3 == [WITHDRAWN] and list(inbox.frames) == ["f2"]


def test_inbox_drops_held_frames_that_a_fresh_frame_passes_and_on_restart() -> None:
    inbox = Inbox("p", 100, 1 << 30)
    assert deliver(inbox, 1, 0) == QUEUED
    assert isinstance(inbox.reserve(1, 2, 1, 1, lambda: True), Slot)
    t3, out3 = put_in_thread(inbox, 3, 2)
    held(inbox, 3)
    assert deliver(inbox, 5, 0) == QUEUED  # nothing in flight before it: the sender gave up on 2 and 3
    t3.join(WAIT)
    assert out3 == [DROPPED] and list(inbox.frames) == ["f1", "f5"] and not inbox.held and not inbox.reserved
    assert isinstance(inbox.reserve(1, 6, 5, 1, lambda: True), Slot)
    t7, out7 = put_in_thread(inbox, 7, 6)
    held(inbox, 7)
    inbox.see(2)  # the sender restarted: its old process's held frames are never delivered
    t7.join(WAIT)
    assert out7 == [DROPPED] and not inbox.held and not inbox.reserved


def test_inbox_bounds_its_held_frames() -> None:
    inbox = Inbox("p", 100, 1 << 30)
    assert deliver(inbox, 1, 0) == QUEUED
    assert isinstance(inbox.reserve(1, 2, 1, 1, lambda: True), Slot)
    gone = threading.Event()
    threads = [put_in_thread(inbox, 3 + i, 2 + i, lambda: not gone.is_set())[0] for i in range(MAX_HELD - 1)]
    held(inbox, *range(3, 2 + MAX_HELD))
    with pytest.raises(HeldTooMany):  # one seq further than a window can reach
        inbox.reserve(1, 2 + MAX_HELD, 1 + MAX_HELD, 1, lambda: True)
    gone.set()
    for t in threads:
        t.join(WAIT)
    assert not inbox.held
