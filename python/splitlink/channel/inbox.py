"""The receive queue of one peer: bounded in frames and bytes, exactly once per (incarnation, seq),
and the bookkeeping of the peer's restarts (which process of the peer the application knows of)."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from splitlink.channel.errors import PeerClosedError, PeerRestartedError

__all__ = ["Inbox"]

logger = logging.getLogger(__name__)


def _payload_size(frame: Any) -> int:
    """Bytes a queued item holds: frame buffers count, in-process references do not."""
    return int(getattr(frame, "nbytes", 0)) if not isinstance(frame, Mapping) else 0


class Inbox:
    """Bounded queue of received frames from one peer (frames and bytes)."""

    def __init__(self, peer: str, max_frames: int, max_bytes: int) -> None:
        self.peer = peer
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.frames: deque[Any] = deque()
        self.bytes = 0
        self.last_seq = -1
        self.incarnation: int | None = None  # the sender process's random id: seq restarts with it
        self.told: int | None = None  # the peer incarnation the application knows of
        self.restart_pending = False  # a new incarnation the application has not been told of
        self.retired: set[int] = set()  # processes of the peer that were replaced
        self.closed = False
        self.cond = threading.Condition()

    def see(self, incarnation: int) -> None:
        """The peer process ``incarnation`` sent a frame or announced itself."""
        with self.cond:
            if incarnation == self.incarnation or incarnation in self.retired:
                return
            if self.incarnation is not None:
                self.retired.add(self.incarnation)
                logger.info("'%s' restarted; %d frame(s) its previous process sent are discarded", self.peer, len(self.frames))
                self.frames.clear()  # they continue a conversation the new process does not know
                self.bytes = 0
            self.incarnation = incarnation
            self.last_seq = -1  # its sequence numbers begin again
            if self.told is None:
                self.told = incarnation
            self.restart_pending = self.told != incarnation
            self.cond.notify_all()

    def learn(self, incarnation: int) -> None:
        """The peer process answered our frame (first contact: remember which process it is)."""
        with self.cond:
            if self.told is None:
                self.told = incarnation

    def acknowledge(self, incarnation: int) -> None:
        """The application is being told that the peer is now ``incarnation``."""
        self.see(incarnation)
        with self.cond:
            self.told = incarnation
            self.restart_pending = False

    def wait_for_room(self, nbytes: int, alive: Callable[[], bool]) -> bool:
        with self.cond:
            while self.frames and (len(self.frames) >= self.max_frames or self.bytes + nbytes > self.max_bytes):
                if not alive():
                    return False
                self.cond.wait(0.2)
            return True

    def is_duplicate(self, incarnation: int, seq: int) -> bool:
        with self.cond:
            return incarnation == self.incarnation and seq <= self.last_seq

    def put(self, incarnation: int, seq: int, frame: Any) -> bool:
        with self.cond:
            self.see(incarnation)
            if incarnation != self.incarnation:
                return False  # the process that sent it was replaced while it arrived: it is stale
            if seq <= self.last_seq:
                return False
            self.last_seq = seq
            self.append(frame)
            return True

    def append(self, frame: Any) -> None:
        with self.cond:
            self.frames.append(frame)
            self.bytes += _payload_size(frame)
            self.cond.notify_all()

    def get(self, timeout: float | None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while not self.frames or self.restart_pending:
                if self.restart_pending:
                    assert self.incarnation is not None
                    self.acknowledge(self.incarnation)
                    raise PeerRestartedError(self.peer, "it announced a new process")
                if self.closed:
                    raise PeerClosedError(f"peer '{self.peer}' shut down; no more frames will arrive")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"no frame from '{self.peer}' within {timeout} s")
                self.cond.wait(remaining if remaining is not None else 0.5)
            frame = self.frames.popleft()
            self.bytes -= _payload_size(frame)
            self.cond.notify_all()
            return frame

    def close(self) -> None:
        """No more frames will come: wakes blocked receivers with ``PeerClosedError``."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()
