"""The receive queue of one peer: bounded in frames and bytes, exactly once per (incarnation, seq), in
the sender's order, and the bookkeeping of the peer's restarts (which process of the peer the
application knows of).

**Room.** A frame's call reserves room for it (``reserve``: one frame and its declared bytes) before
its body is read, and keeps it until the frame is queued or given up, so the frames being received,
held or queued together stay within ``max_frames`` and ``max_bytes`` (one frame larger than
``max_bytes`` passes when nothing is queued). Reservations are granted in the sender's order: a frame
reserves only once the frame it follows is delivered or has room reserved itself, so frames that
overtook their predecessor never take the room the predecessor needs. A second call for a seq that
already has room reserved (a retry racing its earlier attempt) waits for that attempt instead of
buffering a second copy.

**Order.** A sender keeps several frames on the wire at once (a window, see ``splitlink.channel.work``),
so frame ``seq`` may arrive before the frame it follows. Each frame names its predecessor (``after``:
the seq of the frame it must be delivered after; 0: none in flight, deliver it next). A frame whose
predecessor has not been delivered waits in a small reorder buffer (at most ``MAX_HELD`` frames per
peer, at most ``MAX_HELD`` seqs past the last delivered one) and is queued when the predecessor is,
**only if its call is still open**: a held frame whose call ended (cancelled by its sender, timed
out, connection lost) is withdrawn, never delivered later, and its room released; the sender's retry
sends it again if it still wants it (a retry arriving while the held frame's call is still open takes
the held frame over instead). Held frames are dropped, never delivered, when a later frame that
names no predecessor is queued (the sender gave up on them: an earlier frame failed) or the sender
restarts; their calls are answered with an error, never as delivered."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from splitlink.channel.errors import PeerClosedError, PeerRestartedError

__all__ = ["Inbox", "Slot", "HeldTooMany", "MAX_HELD", "QUEUED", "DUPLICATE", "DROPPED", "WITHDRAWN"]

logger = logging.getLogger(__name__)

# Frames of one peer waiting for their predecessor: a sender's window is at most 8 frames (the
# communicator's MAX_WINDOW), so at most 7 wait, all within 8 seqs of the last delivered frame; only
# a misbehaving sender goes beyond, and its frame is refused.
MAX_HELD = 8

# What became of a frame (``put``, ``reserve``): queued for the application; not queued because it was
# delivered already (a retry) or its sender process was replaced (stale); dropped while it waited for
# its predecessor (the sender gave up on it, or restarted); withdrawn because its call ended first.
QUEUED, DUPLICATE, DROPPED, WITHDRAWN = "queued", "duplicate", "dropped", "withdrawn"


class Slot:
    """Room reserved for frame ``seq`` (after frame ``after``) from before its body is read until it is
    queued or given up; ``frame`` is set while it is held for its predecessor; ``alive()`` tells whether
    the call that answers for it is still open; ``state``: None while pending, then one of the outcomes."""

    __slots__ = ("seq", "after", "nbytes", "alive", "frame", "state")

    def __init__(self, seq: int, after: int, nbytes: int, alive: Callable[[], bool]) -> None:
        self.seq = seq
        self.after = after
        self.nbytes = nbytes
        self.alive = alive
        self.frame: Any = None
        self.state: str | None = None


class HeldTooMany(Exception):
    """A peer's frame would wait for its predecessor beyond the reorder bound: it sends out of order."""


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
        self.reserved: dict[int, Slot] = {}  # seq -> room for a frame being received or held (not queued yet)
        self.reserved_bytes = 0
        self.held: dict[int, Slot] = {}  # seq -> a complete frame waiting for its predecessor (has room reserved)
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
            for slot in list(self.reserved.values()):
                self._settle(slot, DROPPED)  # the old process's: never delivered
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

    def is_duplicate(self, incarnation: int, seq: int) -> bool:
        with self.cond:
            return incarnation == self.incarnation and seq <= self.last_seq

    def reserve(self, incarnation: int, seq: int, after: int, nbytes: int, alive: Callable[[], bool]) -> Slot | str:
        """Room for frame ``seq`` of ``nbytes`` declared bytes, delivered after frame ``after`` (0: none),
        taken before its body is read; waits while the queue is full or the frame it follows has no room
        yet. Returns the ``Slot`` (the caller reads the body, then ``put`` or ``release``), or what became
        of the frame without this call reading it: DUPLICATE (delivered already, or its sender process
        was replaced), WITHDRAWN (this call ended first), or the outcome of the held frame this call took
        over (a retry of a frame held since an earlier attempt whose call is still open). Raises
        ``HeldTooMany`` for a frame that would be held more than ``MAX_HELD`` seqs past the last delivered."""
        with self.cond:
            self.see(incarnation)
            while True:
                if incarnation != self.incarnation or seq <= self.last_seq:
                    return DUPLICATE
                last = max(self.last_seq, 0)
                head = after <= last  # nothing to wait for: queued as soon as it is complete
                if not head and seq - last > MAX_HELD:
                    raise HeldTooMany(
                        f"frame seq {seq} of '{self.peer}' would wait for the {seq - last - 1} frames after "
                        f"seq {last} (at most {MAX_HELD - 1})"
                    )
                other = self.reserved.get(seq)
                if other is not None and other.frame is not None:
                    other.alive = alive  # held since an earlier attempt: this call answers for it now
                    return self._wait(other, alive)
                if other is None and (head or after in self.reserved) and (self._has_room(nbytes) or (head and not self.frames)):
                    slot = self.reserved[seq] = Slot(seq, after, nbytes, alive)
                    self.reserved_bytes += nbytes
                    self.cond.notify_all()
                    return slot
                if not alive():
                    return WITHDRAWN
                self.cond.wait(0.2)

    def _has_room(self, nbytes: int) -> bool:
        return (
            len(self.frames) + len(self.reserved) < self.max_frames
            and self.bytes + self.reserved_bytes + nbytes <= self.max_bytes
        )

    def put(self, slot: Slot, frame: Any) -> str:
        """Queues the complete ``frame`` of ``slot`` once the frame it follows was delivered, holding it
        until then while its call is open (``slot.alive``). Returns QUEUED, DROPPED (passed over by a
        frame that names no predecessor, or its sender restarted) or WITHDRAWN (its call ended before
        it could be queued: it never will be). Raises ``HeldTooMany`` beyond the reorder bound."""
        with self.cond:
            if slot.state is not None:
                return slot.state  # dropped while its body was read
            if self.reserved.get(slot.seq) is not slot:
                return DROPPED
            if not slot.alive():
                self._settle(slot, WITHDRAWN)
                return WITHDRAWN
            if slot.after > max(self.last_seq, 0):
                if len(self.held) >= MAX_HELD:
                    self._settle(slot, DROPPED)
                    raise HeldTooMany(f"{len(self.held)} frames of '{self.peer}' already wait for their predecessors")
                slot.frame = frame
                self.held[slot.seq] = slot
                self.cond.notify_all()
                return self._wait(slot, slot.alive)
            self._queue(slot, frame)
            return QUEUED

    def release(self, slot: Slot) -> None:
        """The call of ``slot`` ends without its frame queued or held (failed, refused): the room is free."""
        with self.cond:
            if slot.state is None and slot.frame is None:
                self._settle(slot, WITHDRAWN)

    def rewait(self, seq: int, alive: Callable[[], bool]) -> str:
        """A retried range of frame ``seq``, which was assembled already: while the frame is held, this
        call takes it over and answers as ``put``; DUPLICATE once delivered; WITHDRAWN when it was
        given up before it was delivered (its ranges must all be sent again)."""
        with self.cond:
            slot = self.held.get(seq)
            if slot is not None:
                slot.alive = alive
                return self._wait(slot, alive)
            return DUPLICATE if seq <= self.last_seq else WITHDRAWN

    def _wait(self, slot: Slot, alive: Callable[[], bool]) -> str:
        while slot.state is None:
            if not alive():
                if slot.alive is alive:  # nobody answers for the frame any more: never deliver it
                    self._settle(slot, WITHDRAWN)
                return WITHDRAWN  # (else a retry took it over and answers for it)
            self.cond.wait(0.2)
        return slot.state

    def _settle(self, slot: Slot, state: str) -> None:
        """``slot`` is no longer pending: its room is released (a queued frame's counts as queued)."""
        if self.reserved.get(slot.seq) is slot:
            del self.reserved[slot.seq]
            self.reserved_bytes -= slot.nbytes
        if self.held.get(slot.seq) is slot:
            del self.held[slot.seq]
        if slot.state is None:
            slot.state = state
        slot.frame = None
        self.cond.notify_all()

    def _queue(self, slot: Slot, frame: Any) -> None:
        """Queues ``frame`` (of ``slot``) and the held frames that follow it whose calls are still open;
        drops the frames it passed over."""
        while True:
            seq = self.last_seq = slot.seq
            self._settle(slot, QUEUED)
            self.frames.append(frame)
            self.bytes += _payload_size(frame)
            for passed in [s for s in self.reserved.values() if s.seq <= seq]:
                self._settle(passed, DROPPED)  # its sender gave up on it
            ready = [s for s in self.held.values() if s.after <= seq]
            if not ready:
                return
            slot = min(ready, key=lambda s: s.seq)
            frame = slot.frame
            if not slot.alive():  # its call ended while it was held: its sender may have given up on it
                self._settle(slot, WITHDRAWN)
                return

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
