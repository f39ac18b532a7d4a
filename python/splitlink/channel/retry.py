"""One retry policy for every call the channel repeats (frames, key agreement, announcements).

Exponential backoff with jitter: the n-th wait is ``min(first_delay * 2**(n-1), max_delay)`` times a
uniform factor in [0.5, 1.5], so parties that lost the same peer do not all retry in step. A retry is
made only for errors that ``retryable`` accepts, only while the un-jittered wait still ends before
the deadline, and never after ``stop`` is set (waits end early when it is set). The deadline counts
from the first attempt, or from a later moment the caller names (``since``: a frame that waits for the
one before it is not charged the wait).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

__all__ = ["RetryPolicy", "RetryGaveUp", "transient"]

T = TypeVar("T")

# A peer that is down or restarting, or a stalled connection that ran out of its attempt's time.
_TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def transient(error: BaseException) -> bool:
    """Whether a failed gRPC call is worth repeating: the peer was unreachable or the attempt timed out."""
    return isinstance(error, grpc.RpcError) and error.code() in _TRANSIENT


class RetryGaveUp(Exception):
    """The deadline came (or ``stop`` was set) before an attempt succeeded."""

    def __init__(self, last: BaseException, attempts: int, stopped: bool) -> None:
        super().__init__(f"gave up after {attempts} attempt(s): {last}")
        self.last = last  # the error of the last attempt
        self.attempts = attempts
        self.stopped = stopped  # True: stopped (shut down), False: the deadline passed


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to repeat a call that fails with a retryable error."""

    first_delay: float = 0.05
    max_delay: float = 5.0
    deadline: float | None = None  # seconds from the first attempt; None: until stopped

    def __post_init__(self) -> None:
        if not 0 < self.first_delay <= self.max_delay:
            raise ValueError(f"need 0 < first_delay <= max_delay, got {self.first_delay} and {self.max_delay}")
        if self.deadline is not None and self.deadline < 0:
            raise ValueError(f"deadline must be >= 0 seconds or None, got {self.deadline}")

    def call(
        self,
        attempt: Callable[[], T],
        *,
        retryable: Callable[[BaseException], bool] = transient,
        stop: threading.Event | None = None,
        on_retry: Callable[[int, BaseException, float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] | None = None,
        rng: random.Random | None = None,
        since: Callable[[], float | None] | None = None,
    ) -> T:
        """``attempt()``'s result, repeating it after retryable errors.

        An error that ``retryable`` refuses propagates at once. When the next wait would pass the
        deadline, or ``stop`` is set, ``RetryGaveUp`` is raised with the last error.
        ``on_retry(attempts so far, error, un-jittered delay)`` is called before each wait (logging).
        ``since()`` (a ``clock`` time, or None while it has not come) moves the start of the deadline to
        that moment when it is later than the first attempt; while it returns None there is no deadline.
        ``clock``, ``sleep`` and ``rng`` are for tests; the default wait is ``stop.wait`` (ends when
        ``stop`` is set) or ``time.sleep``."""
        uniform = (rng or random).uniform
        wait = sleep or (stop.wait if stop is not None else time.sleep)
        first = clock()
        delay, attempts = self.first_delay, 0
        while True:
            attempts += 1
            try:
                return attempt()
            except Exception as e:  # noqa: BLE001 - sorted by `retryable`
                if not retryable(e):
                    raise
                stopped = stop is not None and stop.is_set()
                deadline = None
                if self.deadline is not None:
                    start = first if since is None else since()
                    deadline = None if start is None else max(first, start) + self.deadline
                if stopped or (deadline is not None and clock() + delay > deadline):
                    raise RetryGaveUp(e, attempts, stopped) from e
                if on_retry is not None:
                    on_retry(attempts, e, delay)
                wait(delay * uniform(0.5, 1.5))
                if stop is not None and stop.is_set():
                    raise RetryGaveUp(e, attempts, True) from e
                delay = min(delay * 2, self.max_delay)
