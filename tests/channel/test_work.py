"""The asynchronous send queue's ordering rule: once a frame failed, no frame submitted before the
failure reaches the peer, even when the application saw the error before the worker got to it."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from splitlink.channel import FrameNotSentError
from splitlink.channel.work import SendQueue, Window, Work


def test_frames_submitted_before_a_failure_are_not_sent_even_after_the_error_was_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    release_a = threading.Event()
    error_seen = threading.Event()
    sent: list[str] = []

    def start(name: str, *, chained: bool, window: object, settled: object) -> Callable[[], None]:
        def send() -> None:
            if name == "A":
                release_a.wait(10)
                raise ConnectionError("peer refused A")
            sent.append(name)

        return send

    # The worker resolves A's failure and then waits until the application has seen it, so the
    # application's wait() (which marks the error seen) runs before the worker reaches B: the
    # interleaving that used to let B through.
    original = Work._resolve

    def resolve_then_pause(self: Work, result: object = None, error: BaseException | None = None) -> None:
        original(self, result, error)
        if error is not None and not isinstance(error, FrameNotSentError):
            error_seen.wait(10)

    monkeypatch.setattr(Work, "_resolve", resolve_then_pause)
    q = SendQueue("peer", 4, start, "test-isend")
    a = q.submit("A")
    b = q.submit("B")
    release_a.set()
    with pytest.raises(ConnectionError, match="refused A"):
        a.wait(10)
    error_seen.set()
    with pytest.raises(FrameNotSentError, match="earlier frame"):
        b.wait(10)
    assert sent == []
    # a frame submitted after the error was seen goes out again
    c = q.submit("C")
    c.wait(10)
    assert sent == ["C"]
    q.close()


def test_a_window_settles_in_order_and_a_frame_after_a_failure_starts_a_new_chain() -> None:
    """With a window of 2: frames start before the previous ones are acknowledged and name them
    (``chained``); outcomes settle in submission order; after a failure the refused frames take no slot
    and the next frame names no predecessor (the receiver must not wait for the failed one)."""
    gate = threading.Event()
    started: list[tuple[str, bool]] = []
    calls = threading.Semaphore(0)

    def start(name: str, *, chained: bool, window: Window, settled: object) -> Callable[[], None]:
        started.append((name, chained))

        def send() -> None:
            calls.release()
            if name == "A":
                gate.wait(10)
                raise ConnectionError("peer refused A")
            if name == "B":  # held by the receiver until A arrives; its call is cancelled instead
                assert window.abandoned.wait(10)
                raise FrameNotSentError("cancelled")

        return send

    q = SendQueue("peer", 8, start, "test-isend", window=lambda: 2)
    a, b, c = q.submit("A"), q.submit("B"), q.submit("C")  # C waits for a slot in the window of 2
    for _ in range(2):
        assert calls.acquire(timeout=10)  # B's call began while A's was still open
    assert not b.is_completed()  # B settles only after A
    gate.set()
    with pytest.raises(ConnectionError):
        a.wait(10)
    with pytest.raises(FrameNotSentError):
        b.wait(10)  # behind the failed frame on the wire: cut off
    with pytest.raises(FrameNotSentError):
        c.wait(10)  # submitted before the failure: refused, never started
    d = q.submit("D")
    d.wait(10)
    assert started == [("A", False), ("B", True), ("D", False)]
    q.close()
