"""The one retry policy: which errors it repeats, how long it waits, when it gives up. A fake clock
and sleep make the waits exact and the tests instant."""

from __future__ import annotations

import random
import threading
import time

import grpc
import pytest

from splitlink.channel.retry import RetryGaveUp, RetryPolicy, transient


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code.name)
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "fake"


class NoJitter(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return 1.0


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def failing(times: int, error: BaseException, result: str = "done"):  # type: ignore[no-untyped-def]
    calls = [0]

    def attempt() -> str:
        calls[0] += 1
        if calls[0] <= times:
            raise error
        return result

    return attempt, calls


UNAVAILABLE = FakeRpcError(grpc.StatusCode.UNAVAILABLE)


def test_transient_errors_are_unreachable_peers_and_timeouts_only() -> None:
    assert transient(FakeRpcError(grpc.StatusCode.UNAVAILABLE))
    assert transient(FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED))
    for code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED):
        assert not transient(FakeRpcError(code))
    assert not transient(ValueError("closed channel"))


def test_waits_double_up_to_the_maximum_and_the_call_succeeds() -> None:
    t = FakeTime()
    attempt, calls = failing(8, UNAVAILABLE)
    policy = RetryPolicy(first_delay=0.05, max_delay=1.0, deadline=None)
    assert policy.call(attempt, clock=t.clock, sleep=t.sleep, rng=NoJitter()) == "done"
    assert calls[0] == 9
    assert t.waits == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])


def test_jitter_scales_each_wait_by_half_to_one_and_a_half() -> None:
    t = FakeTime()
    attempt, _ = failing(40, UNAVAILABLE)
    RetryPolicy(first_delay=0.05, max_delay=0.05).call(attempt, clock=t.clock, sleep=t.sleep, rng=random.Random(7))
    assert all(0.025 <= w <= 0.075 for w in t.waits), t.waits
    assert len(set(t.waits)) > 1  # jittered, not a constant


def test_gives_up_before_a_wait_that_would_pass_the_deadline() -> None:
    t = FakeTime()
    attempt, calls = failing(100, UNAVAILABLE)
    on_retry: list[tuple[int, float]] = []
    with pytest.raises(RetryGaveUp) as gave_up:
        RetryPolicy(first_delay=0.5, max_delay=5.0, deadline=4.0).call(
            attempt, clock=t.clock, sleep=t.sleep, rng=NoJitter(), on_retry=lambda n, e, d: on_retry.append((n, d))
        )
    # waits 0.5, 1, 2 (3.5 s in all); the next (4 s) would end after the deadline
    assert t.waits == [0.5, 1.0, 2.0] and calls[0] == 4
    assert on_retry == [(1, 0.5), (2, 1.0), (3, 2.0)]
    assert gave_up.value.attempts == 4 and gave_up.value.last is UNAVAILABLE and not gave_up.value.stopped


def test_the_deadline_counts_from_since_and_not_before_it_comes() -> None:
    """A frame held behind earlier ones: no deadline while they are unsettled, then the full deadline."""
    t = FakeTime()
    attempt, calls = failing(100, UNAVAILABLE)
    settled: list[float | None] = [None]

    def sleep(seconds: float) -> None:
        t.sleep(seconds)
        if t.now >= 130.0 and settled[0] is None:
            settled[0] = t.now  # the frames ahead settle 30 s in, far past the 4 s deadline

    with pytest.raises(RetryGaveUp):
        RetryPolicy(first_delay=1.0, max_delay=1.0, deadline=4.0).call(
            attempt, clock=t.clock, sleep=sleep, rng=NoJitter(), since=lambda: settled[0]
        )
    assert settled[0] == 130.0
    assert t.now == pytest.approx(134.0) and calls[0] == 35  # 4 s of retries after they settled


def test_an_error_that_is_not_retryable_propagates_at_once() -> None:
    t = FakeTime()
    denied = FakeRpcError(grpc.StatusCode.PERMISSION_DENIED)
    attempt, calls = failing(1, denied)
    with pytest.raises(FakeRpcError) as err:
        RetryPolicy(deadline=60).call(attempt, clock=t.clock, sleep=t.sleep)
    assert err.value is denied and calls[0] == 1 and t.waits == []
    attempt, calls = failing(1, ValueError("boom"))
    with pytest.raises(ValueError, match="boom"):
        RetryPolicy().call(attempt, clock=t.clock, sleep=t.sleep)


def test_a_custom_retryable_predicate() -> None:
    t = FakeTime()
    attempt, calls = failing(2, KeyError("again"))
    assert RetryPolicy().call(attempt, retryable=lambda e: isinstance(e, KeyError), clock=t.clock, sleep=t.sleep) == "done"
    assert calls[0] == 3


def test_stop_ends_the_retries() -> None:
    t = FakeTime()
    stop = threading.Event()
    stop.set()
    attempt, calls = failing(5, UNAVAILABLE)
    with pytest.raises(RetryGaveUp) as gave_up:
        RetryPolicy().call(attempt, stop=stop, clock=t.clock, sleep=t.sleep)
    assert gave_up.value.stopped and calls[0] == 1 and t.waits == []

    stop = threading.Event()

    def stop_while_waiting(seconds: float) -> None:
        t.sleep(seconds)
        stop.set()

    attempt, calls = failing(5, UNAVAILABLE)
    with pytest.raises(RetryGaveUp) as gave_up:
        RetryPolicy().call(attempt, stop=stop, clock=t.clock, sleep=stop_while_waiting)
    assert gave_up.value.stopped and calls[0] == 1 and len(t.waits) == 1  # no attempt after the stop


def test_the_default_wait_ends_when_stop_is_set() -> None:
    stop = threading.Event()
    attempt, _ = failing(5, UNAVAILABLE)
    threading.Timer(0.1, stop.set).start()
    t0 = time.monotonic()
    with pytest.raises(RetryGaveUp):
        RetryPolicy(first_delay=60, max_delay=60).call(attempt, stop=stop)
    assert time.monotonic() - t0 < 30  # far below the 30-90 s wait: the stop interrupted it


@pytest.mark.parametrize("kw", [{"first_delay": 0}, {"first_delay": 2, "max_delay": 1}, {"deadline": -1}])
def test_bad_policies_are_refused(kw: dict) -> None:
    with pytest.raises(ValueError, match="first_delay|deadline"):
        RetryPolicy(**kw)
