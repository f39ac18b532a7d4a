"""Frames that arrive as byte ranges over parallel ``SendRange`` calls, assembled in one buffer.

A sender splits a large frame into a few contiguous ranges and sends them at once over several
HTTP/2 streams (or connections). The receiver writes each range's chunks at their offset in ONE
pooled buffer of the frame's declared size (no second copy) and delivers the frame when every byte
has arrived exactly once.

Network input is checked before anything is written: a range must lie inside the frame (decoding
checks ``0 < length`` and ``offset + length <= total``), must agree with the frame's declared size,
must not overlap another range of the frame (a repeat of the very same range is a retry: the newest
attempt takes it over and the older one stops writing), and a frame takes at most ``MAX_RANGES``
ranges. Each sender has at most ``MAX_ASSEMBLING`` frames in assembly (a sender keeps a window of at
most 8 frames on the wire; one more abandons its oldest incomplete frame), so a peer can make this
party hold at most that many frames of ``max_frame_bytes`` beyond its bounded receive queue. Once a
frame is complete (or abandoned) no write reaches its buffer any more, so a late or hostile writer
cannot change a delivered frame.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["Assembly", "Assembler", "RangeRefused", "RangeDelivered", "MAX_RANGES"]

MAX_RANGES = 256  # per frame; senders use one range per stream (a handful)
MAX_ASSEMBLING = 8  # frames per sender: the communicator's largest window (MAX_WINDOW)
_REMEMBERED = 2 * MAX_ASSEMBLING  # completed frames per sender whose late ranges are answered DUP


class RangeRefused(Exception):
    """A range that cannot be taken; ``code`` is the gRPC status name to answer with."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class RangeDelivered(Exception):
    """The range belongs to a frame that was already assembled and delivered (a retry that raced
    the completion): the handler answers DUP, as for a whole frame delivered twice."""


class Assembly:
    """One frame being assembled: its buffer (allocated once the receive queue has room) and which
    ranges are written (``done``) or being written (``owners``: offset -> (length, attempt))."""

    def __init__(self, incarnation: int, seq: int, total: int) -> None:
        self.incarnation = incarnation
        self.seq = seq
        self.total = total
        self.buf: Any = None
        self.view: memoryview | None = None
        self.done: dict[int, int] = {}
        self.owners: dict[int, tuple[int, object]] = {}
        self.received = 0
        self.closed = False  # complete or abandoned: nothing is written any more
        self.start_failed = False  # its first range's handler failed before the buffer existed
        self.room: Any = None  # the receive queue's reservation for it (``reserve``'s result)
        self.unreserve: Callable[[Any], None] | None = None  # frees ``room`` if it is abandoned incomplete
        self.lock = threading.Lock()

    def claim(self, offset: int, length: int) -> object | None:
        """A token to write range [offset, offset + length), or None when that range is already written
        (a retry of a range that arrived). Raises ``RangeRefused`` for an overlap or too many ranges."""
        end = offset + length
        with self.lock:
            if self.closed and self.received == self.total:
                raise RangeDelivered()
            if self.closed:
                raise RangeRefused("ABORTED", f"frame seq {self.seq} is no longer being assembled")
            if self.done.get(offset) == length:
                return None
            for o, n in list(self.done.items()) + [(o, n) for o, (n, _) in self.owners.items()]:
                if (o, n) != (offset, length) and o < end and offset < o + n:
                    raise RangeRefused(
                        "INVALID_ARGUMENT", f"range [{offset}, {end}) overlaps range [{o}, {o + n}) of frame seq {self.seq}"
                    )
            if offset not in self.owners and len(self.done) + len(self.owners) >= MAX_RANGES:
                raise RangeRefused("RESOURCE_EXHAUSTED", f"frame seq {self.seq} sent in more than {MAX_RANGES} ranges")
            token = object()
            self.owners[offset] = (length, token)  # a repeat of an unfinished range takes it over (retry)
            return token

    def write(self, offset: int, token: object, pos: int, chunk: Any) -> None:
        """Writes ``chunk`` at ``pos`` bytes into the range; the caller checked pos + len <= length."""
        with self.lock:
            owner = self.owners.get(offset)
            if self.closed or owner is None or owner[1] is not token:
                raise RangeRefused("ABORTED", f"range at {offset} of frame seq {self.seq} was taken over by a retry")
            assert self.view is not None
            start = offset + pos
            self.view[start : start + len(chunk)] = chunk

    def finish(self, offset: int, token: object) -> bool:
        """The range is complete; True when it completed the frame (the caller delivers it)."""
        with self.lock:
            owner = self.owners.get(offset)
            if self.closed or owner is None or owner[1] is not token:
                raise RangeRefused("ABORTED", f"range at {offset} of frame seq {self.seq} was taken over by a retry")
            del self.owners[offset]
            self.done[offset] = owner[0]
            self.received += owner[0]
            if self.received == self.total:  # ranges never overlap, so every byte was written once
                self.closed = True
                self.view = None
                return True
            return False

    def release(self, offset: int, token: object) -> None:
        """The attempt writing this range failed: the range is free for a retry."""
        with self.lock:
            owner = self.owners.get(offset)
            if owner is not None and owner[1] is token:
                del self.owners[offset]

    def abandon(self) -> None:
        """No more writes; an incomplete frame gives its room in the receive queue back."""
        with self.lock:
            self.closed = True
            self.view = None
            room = None
            if self.received != self.total:
                room, self.room = self.room, None
        if room is not None and self.unreserve is not None:
            self.unreserve(room)


class Assembler:
    """The frames in assembly, at most ``MAX_ASSEMBLING`` per sender."""

    def __init__(self) -> None:
        self._current: dict[str, dict[int, Assembly]] = {}  # sender -> seq -> its frame in assembly
        self._completed: dict[str, deque[tuple[int, int]]] = {}  # sender -> (incarnation, seq) last assembled
        self._retired: Callable[[str, int], bool] = lambda sender, incarnation: False
        self._cond = threading.Condition()

    def retired_by(self, is_retired: Callable[[str, int], bool]) -> None:
        """``is_retired(sender, incarnation)``: that process of the sender was replaced; its late ranges
        must not abandon the new process's frame in assembly."""
        self._retired = is_retired

    def begin(
        self,
        sender: str,
        incarnation: int,
        seq: int,
        total: int,
        alive: Callable[[], bool],
        reserve: Callable[[int, Callable[[], bool]], Any],
        acquire: Callable[[int], Any],
        unreserve: Callable[[Any], None] | None = None,
    ) -> Assembly:
        """The assembly of frame (sender, incarnation, seq), created when this is its first range:
        ``reserve(total, alive)`` waits for room in the receive queue and returns the reservation (kept
        as ``room``; falsy: the call ended), ``acquire(total)`` gives the buffer, ``unreserve(room)``
        frees the room of a frame abandoned before it was complete."""
        with self._cond:
            if (incarnation, seq) in self._completed.get(sender, ()):
                raise RangeDelivered()
            if self._retired(sender, incarnation):
                raise RangeRefused("ABORTED", f"sender process {incarnation:#x} was replaced by a newer one")
            current = self._current.setdefault(sender, {})
            a = current.get(seq)
            if a is not None and a.incarnation == incarnation:
                if a.total != total:
                    raise RangeRefused(
                        "INVALID_ARGUMENT",
                        f"range declares a {total}-byte frame, but frame seq {seq} was declared {a.total} bytes",
                    )
                while a.buf is None and not a.closed:
                    if not alive():
                        raise RangeRefused("CANCELLED", "sender went away while the queue was full")
                    self._cond.wait(0.2)
                if a.closed and a.start_failed:
                    # the handler that was to allocate it went away (e.g. its call timed out while the
                    # receive queue was full): transient, the sender retries and a new assembly starts
                    raise RangeRefused(
                        "UNAVAILABLE",
                        f"frame seq {seq} must be started again (its first range's call ended while waiting for queue room)",
                    )
                if a.closed:
                    raise RangeRefused("ABORTED", f"frame seq {seq} is no longer being assembled")
                return a
            for old in [o for o in current.values() if o.incarnation != incarnation]:
                old.abandon()  # the sender restarted
                del current[old.seq]
            if len(current) >= MAX_ASSEMBLING:
                oldest = min(current)
                if seq < oldest:
                    raise RangeRefused("ABORTED", f"frame seq {seq} was superseded by seq {oldest} and later")
                current.pop(oldest).abandon()  # the sender moved on (gave up on it)
            a = Assembly(incarnation, seq, total)
            a.unreserve = unreserve
            current[seq] = a
            self._cond.notify_all()
        try:
            room = reserve(total, alive)
            if not room:
                raise RangeRefused("CANCELLED", "sender went away while the queue was full")
            with a.lock:
                late = a.closed  # abandoned (superseded) while it waited for room: give the room back
                if not late:
                    a.room = room
            if late and unreserve is not None:
                unreserve(room)
            buf = acquire(total)
        except BaseException:
            a.start_failed = True
            self.finish(sender, a)
            raise
        with self._cond:
            with a.lock:
                if not a.closed:
                    a.buf, a.view = buf, memoryview(buf)
            self._cond.notify_all()
            if a.closed:
                raise RangeRefused("ABORTED", f"frame seq {seq} was superseded")
        return a

    def finish(self, sender: str, a: Assembly) -> None:
        """``a`` is complete (or failed to start): no longer the sender's frame in assembly."""
        with self._cond:
            current = self._current.get(sender, {})
            if current.get(a.seq) is a:
                del current[a.seq]
            if a.received == a.total:
                self._completed.setdefault(sender, deque(maxlen=_REMEMBERED)).append((a.incarnation, a.seq))
            a.abandon()  # no more writes (a complete frame's buffer stays with its receiver)
            self._cond.notify_all()

    def forget(self, sender: str, incarnation: int, seq: int) -> None:
        """Frame (sender, incarnation, seq) was assembled but withdrawn before it was delivered: its
        ranges are no longer answered as delivered, so the sender's resend of them assembles it anew."""
        with self._cond:
            done = self._completed.get(sender)
            if done is not None and (incarnation, seq) in done:
                done.remove((incarnation, seq))

    def drop(self, sender: str) -> None:
        with self._cond:
            for a in self._current.pop(sender, {}).values():
                a.abandon()
            self._cond.notify_all()

    def pending(self, sender: str) -> Assembly | None:
        """The sender's newest frame in assembly."""
        with self._cond:
            current = self._current.get(sender, {})
            return current[max(current)] if current else None
