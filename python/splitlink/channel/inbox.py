"""The receive queue of one peer: bounded in frames and bytes, exactly once per (incarnation, seq), in
the sender's order, and the bookkeeping of the peer's restarts (which process of the peer the
application knows of).

**Order.** A sender keeps several frames on the wire at once (a window, see ``splitlink.channel.work``),
so frame ``seq`` may arrive before the frame it follows. Each frame names its predecessor (``after``:
the seq of the frame it must be delivered after; 0: none in flight, deliver it next). A frame whose
predecessor has not been delivered waits in a small reorder buffer (at most ``MAX_HELD`` frames per
peer, keyed by seq; beyond the bounded queue, as frames in assembly are) and is queued the moment the
predecessor is, whether or not its call is still open: a retry of a held frame waits for the held one
and answers as it. Held frames are dropped, never delivered, when a later frame that names no
predecessor is queued (the sender gave up on them: an earlier frame failed) or the sender restarts."""

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

# Frames of one peer waiting for their predecessor: a sender's window is at most 8 frames (the
# communicator's MAX_WINDOW), so at most 7 wait; only a misbehaving sender reaches this bound, and
# its frame is refused.
MAX_HELD = 8


class _Held:
    """A frame waiting for its predecessor; ``state``: None while held, True once queued, False if dropped."""

    __slots__ = ("after", "frame", "state")

    def __init__(self, after: int, frame: Any) -> None:
        self.after = after
        self.frame = frame
        self.state: bool | None = None


class HeldTooMany(Exception):
    """A peer has ``MAX_HELD`` frames waiting for their predecessors: it sends out of order."""


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
        self.held: dict[int, _Held] = {}  # seq -> a frame waiting for its predecessor
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
            for held in self.held.values():
                held.state, held.frame = False, None  # the old process's: never delivered
            self.held.clear()
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

    def put(
        self, incarnation: int, seq: int, frame: Any, after: int = 0, alive: Callable[[], bool] = lambda: True
    ) -> bool | None:
        """Queues frame ``seq`` once frame ``after`` (0: none) was delivered. True: queued (now or after
        waiting); False: a duplicate, stale (its sender process was replaced) or dropped while held (a
        frame the sender sent with nothing before it passed it: the sender gave up on it, and reads no
        answer); None: not queued yet when ``alive()`` turned False (it stays held: a retry of it waits
        for it again)."""
        with self.cond:
            self.see(incarnation)
            if incarnation != self.incarnation:
                return False  # the process that sent it was replaced while it arrived: it is stale
            if seq <= self.last_seq:
                return False
            held = self.held.get(seq)
            if held is None and after > max(self.last_seq, 0):
                if len(self.held) >= MAX_HELD:
                    raise HeldTooMany(f"{len(self.held)} frames of '{self.peer}' already wait for their predecessors")
                held = self.held[seq] = _Held(after, frame)
                self.cond.notify_all()
            if held is None:
                self._queue(seq, frame)
                return True
            return self._wait(held, alive)

    def rewait(self, seq: int, alive: Callable[[], bool]) -> bool | None:
        """A retried range of frame ``seq``, which was assembled already: as ``put`` while the frame is
        held; False when it is not (delivered: the caller answers as for a duplicate)."""
        with self.cond:
            held = self.held.get(seq)
            return False if held is None else self._wait(held, alive)

    def _wait(self, held: _Held, alive: Callable[[], bool]) -> bool | None:
        while held.state is None:
            if not alive():
                return None
            self.cond.wait(0.2)
        return held.state

    def _queue(self, seq: int, frame: Any) -> None:
        """Queues frame ``seq`` and the held frames that follow it; drops held frames it passed over."""
        while True:
            self.last_seq = seq
            self.append(frame)
            for s in [s for s in self.held if s <= seq]:
                passed = self.held.pop(s)  # its sender gave up on it
                passed.state, passed.frame = False, None
            ready = [s for s, h in self.held.items() if h.after <= seq]
            if not ready:
                return
            seq = min(ready)
            held = self.held.pop(seq)
            held.state, frame, held.frame = True, held.frame, None

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
