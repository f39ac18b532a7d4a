"""Asynchronous sends and posted receives, as ``torch.distributed.isend``/``irecv`` users know them.

``isend`` returns a ``Work`` at once; a background thread per peer packs the frames in the order they
were submitted and starts each one's call without waiting for the previous frame's ack: up to a
window of frames per peer are on the wire at once (the communicator's window: ``max_inflight``, at
most 8, once the peer has said it delivers in order; 1 before that and for sealed frames), and the
receiver delivers them in submission order, exactly once. At most ``max_inflight`` frames per peer
are queued or on the wire: the next ``isend`` blocks until one of them is accepted by the peer
(back-pressure). As with ``torch.distributed.isend``, the tensors must not be modified until
``wait()`` returns (the frame is packed from their memory while it is sent).

An error surfaces on the failed frame's ``wait()``, and on the next ``isend``/``send_tensors``/
``flush`` if nobody waited for it. Frames submitted after a failed one and before the error was seen
are not delivered (the peer would see a gap in the conversation); they fail with
``FrameNotSentError``: those not started yet are not sent, and those already on the wire behind it
are cancelled. Outcomes are settled in submission order, so a frame behind a failed one never
reports the failure itself.

**What an outcome means.** The receiver queues a frame only while the call carrying it is open, and
only after the frames before it: a frame that overtook its predecessor is held with its call open,
and withdrawn (never delivered later) when that call ends, whether the sender cancelled it, its
attempt timed out or the connection broke. Hence:

* ``wait()`` returns: the frame was delivered, once, after every frame submitted before it.
* ``FrameNotSentError``: the frame was not delivered and never will be, unless the failed frame
  before it was in fact delivered (see the next point) and this frame was queued just before its
  call was cancelled.
* Any other error (``PeerUnavailableError``, ...): the frame was not delivered and never will be,
  unless only its answer was lost: the receiver queued it as the call that carried it failed (the
  connection broke at that moment) and none of its retries reached the receiver to be answered as
  a duplicate. This can happen to any frame of any window, as to any remote call.

A frame's attempt may take its own time plus that of the unacknowledged frames ahead of it (the
receiver holds it for them), and its retry deadline counts from when they settled, so a small frame
behind a large one on a slow link is neither timed out nor resent. Retries of a frame (a lost
connection) resend it with the same seq: the receiver answers a duplicate as delivered, and a retry
that arrives while the frame is still held (its earlier call not ended yet) takes the held frame over
and answers as it, so retries never reorder or repeat delivery.

``irecv`` posts a receive ahead: its ``Work.wait()`` returns the tensors of the frame it took. Posted
receives take frames in the order they were posted (one background thread per peer).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

from splitlink.errors import SplitlinkError

__all__ = ["Work", "SendQueue", "ReceiveQueue", "PostedReceives", "FrameNotSentError", "Window", "Settled"]


class FrameNotSentError(SplitlinkError):
    """An ``isend`` frame was not sent because an earlier frame to the same peer failed."""


class Work:
    """A pending ``isend``/``irecv``: ``wait()`` blocks until it is done and returns its result (None
    for a send, the tensors for a receive) or raises its error."""

    __slots__ = ("_future", "_on_error_seen", "what")

    def __init__(self, what: str, on_error_seen: Callable[[Work], None] | None = None) -> None:
        self._future: futures.Future[Any] = futures.Future()
        self._on_error_seen = on_error_seen
        self.what = what

    def wait(self, timeout: float | None = None) -> Any:
        """The result; raises the operation's error, or ``TimeoutError`` if not done within ``timeout`` s."""
        try:
            return self._future.result(timeout)
        except futures.TimeoutError:
            raise TimeoutError(f"{self.what} not done within {timeout} s") from None
        except BaseException:
            if self._on_error_seen is not None:
                self._on_error_seen(self)
            raise

    def is_completed(self) -> bool:
        return self._future.done()

    def exception(self) -> BaseException | None:
        """The error of a completed operation (None: succeeded or not done yet)."""
        return self._future.exception(0) if self._future.done() else None

    def __repr__(self) -> str:
        state = "pending" if not self._future.done() else ("failed" if self._future.exception(0) else "done")
        return f"Work({self.what}, {state})"

    def _resolve(self, result: Any = None, error: BaseException | None = None) -> None:
        if error is not None:
            self._future.set_exception(error)
        else:
            self._future.set_result(result)


class Settled(threading.Event):
    """Set once a frame's outcome is settled; ``at``: when (``time.monotonic()``), None before."""

    def __init__(self) -> None:
        super().__init__()
        self.at: float | None = None

    def set(self) -> None:
        self.at = time.monotonic()
        super().set()


class Window:
    """The frames of one run of a peer's window: ``abandon()`` (an earlier frame failed, or shutdown)
    cancels the calls still carrying them, so the receiver withdraws frames that wait for the failed one."""

    def __init__(self) -> None:
        self.abandoned = threading.Event()
        self._lock = threading.Lock()
        self._calls: set[Any] = set()

    def track(self, call: Any) -> None:
        """``call`` (anything with ``cancel()``) carries a frame of this window; cancelled at once when
        the window was abandoned already."""
        with self._lock:
            if not self.abandoned.is_set():
                self._calls.add(call)
                return
        call.cancel()

    def untrack(self, call: Any) -> None:
        with self._lock:
            self._calls.discard(call)

    def abandon(self) -> None:
        with self._lock:
            self.abandoned.set()
            calls, self._calls = list(self._calls), set()
        for call in calls:
            call.cancel()


class SendQueue:
    """One peer's asynchronous sends: in submission order, at most ``max_inflight`` pending, of which at
    most ``window()`` on the wire at once.

    ``start(*args, chained, window, settled)`` runs on the queue's thread, in submission order: it packs
    the frame and returns the blocking call that sends it and handles its answer, run on a thread of its
    own so that the next frame starts before this one is acknowledged. ``chained``: another frame is
    still on the wire, so this one must be delivered after it (False: nothing earlier can still arrive).
    ``settled`` (a ``Settled``) is set once the frames before this one are settled: until then the
    receiver holds this frame for them, so its retry deadline counts from then.
    Outcomes are settled in submission order: once a frame failed, the frames after it that were on the
    wire are abandoned (``Window.abandon``) and fail with ``FrameNotSentError`` unless the peer accepted
    them already, and the next frame waits until the window is empty."""

    def __init__(
        self,
        peer: str,
        max_inflight: int,
        start: Callable[..., Callable[[], None]],
        thread_name: str,
        window: Callable[[], int] = lambda: 1,
    ) -> None:
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {max_inflight}")
        self.peer = peer
        self._start = start
        self._window = window
        self._slots = threading.Semaphore(max_inflight)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._pending = 0
        self._flying = 0  # frames started and not settled
        self._run_of = Window()
        self._failed: Work | None = None  # the first failed frame whose error nobody has seen yet
        # Tickets: every frame submitted before a failure is refused (FrameNotSentError), whether or not
        # the application has seen the error by the time the worker reaches it: the peer must never get
        # a later frame without the one that failed (a gap it cannot see).
        self._last_ticket = 0
        self._poisoned_up_to = 0
        self._thread_name = thread_name
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def pending(self) -> int:
        with self._cond:
            return self._pending

    def submit(self, *args: Any) -> Work:
        """Queues a frame; blocks while ``max_inflight`` frames are queued or on the wire."""
        self.raise_unseen_error()
        self._slots.acquire()
        work = Work(f"isend to '{self.peer}'", self._seen)
        with self._cond:
            if self._closed:
                self._slots.release()
                raise RuntimeError(f"isend to '{self.peer}' after shutdown()")
            self._pending += 1
            self._last_ticket += 1
            ticket = self._last_ticket
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
                self._thread.start()
        self._queue.put((work, ticket, args))
        return work

    def flush(self, timeout: float | None = None) -> None:
        """Waits until every submitted frame was accepted by the peer or failed; raises an error nobody saw."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._pending == 0, timeout):
                raise TimeoutError(f"{self._pending} frame(s) to '{self.peer}' still in flight after {timeout} s")
        self.raise_unseen_error()

    def raise_unseen_error(self) -> None:
        with self._cond:
            failed, self._failed = self._failed, None
        if failed is not None:
            error = failed.exception()
            assert error is not None
            raise error

    def close(self) -> None:
        with self._cond:
            self._closed = True
            run = self._run_of
            if self._thread is not None:
                self._queue.put(None)
            self._cond.notify_all()
        run.abandon()

    def _seen(self, work: Work) -> None:
        with self._cond:
            if self._failed is work:
                self._failed = None

    def _not_sent(self) -> FrameNotSentError:
        failed = self._failed
        why = f" ({failed.exception()})" if failed is not None else ""
        return FrameNotSentError(
            f"not sent: an earlier frame to '{self.peer}' failed{why}; wait() on it or send again to continue"
        )

    def _run(self) -> None:
        settled = Settled()  # the previous frame's outcome is settled
        settled.set()
        while True:
            item = self._queue.get()
            if item is None:
                return
            work, ticket, args = item
            with self._cond:
                # A slot in the window; after a failure the abandoned frames settle first.
                self._cond.wait_for(
                    lambda: (
                        self._closed
                        or (self._flying < max(1, self._window()) and not (self._run_of.abandoned.is_set() and self._flying))
                    )
                )
                # Refused frames never reach the wire: they take no slot and name no predecessor.
                started = not (self._failed is not None or ticket <= self._poisoned_up_to or self._closed)
                if started:
                    if self._run_of.abandoned.is_set():
                        self._run_of = Window()
                    self._flying += 1
                chained, run = self._flying > 1, self._run_of
            finish: Callable[[], None] | None = None
            error: BaseException | None = None if started else self._not_sent()
            if started:
                try:
                    finish = self._start(*args, chained=chained, window=run, settled=settled)
                except BaseException as e:  # noqa: BLE001 - settled (in order) below
                    error = e
            done = Settled()
            threading.Thread(
                target=self._fly,
                args=(work, started, finish, error, run, settled, done),
                name=f"{self._thread_name}-fly",
                daemon=True,
            ).start()
            settled = done

    def _fly(
        self,
        work: Work,
        started: bool,
        finish: Callable[[], None] | None,
        error: BaseException | None,
        run: Window,
        before: Settled,
        done: Settled,
    ) -> None:
        """Sends one frame (``finish``), then settles its outcome after the frame before it; ``started``:
        the frame was (to be) sent, not refused."""
        try:
            if finish is not None:
                try:
                    finish()
                except BaseException as e:  # noqa: BLE001 - handed to the application by wait()
                    error = e
            before.wait()
            with self._cond:
                if error is not None and not isinstance(error, FrameNotSentError):
                    if run.abandoned.is_set():  # an earlier frame of this window failed: this one was cut off
                        error = self._not_sent()
                    else:
                        if self._failed is None:
                            self._failed = work
                        self._poisoned_up_to = max(self._poisoned_up_to, self._last_ticket)
            if error is not None and started:
                run.abandon()  # the frames after this one must not be delivered without it
            work._resolve(None, error)
        finally:
            done.set()
            self._slots.release()
            with self._cond:
                self._pending -= 1
                self._flying -= started
                self._cond.notify_all()


class ReceiveQueue:
    """One peer's posted receives, served in the order they were posted."""

    def __init__(self, peer: str, thread_name: str) -> None:
        self.peer = peer
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._pending = 0
        self._thread_name = thread_name
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> int:
        with self._cond:
            return self._pending

    def take(self, receive: Callable[[], Any]) -> Any:
        """``receive()``'s result, after the receives posted ahead (they take the peer's frames first)."""
        if self.pending:
            return self.post(receive).wait()
        return receive()

    def post(self, receive: Callable[[], Any]) -> Work:
        work = Work(f"irecv from '{self.peer}'")
        with self._cond:
            self._pending += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
                self._thread.start()
        self._queue.put((work, receive))
        return work

    def _run(self) -> None:
        while True:
            work, receive = self._queue.get()
            try:
                work._resolve(receive())
            except BaseException as e:  # noqa: BLE001 - handed to the application by wait()
                work._resolve(error=e)
            finally:
                with self._cond:
                    self._pending -= 1


class PostedReceives:
    """``receive`` and ``irecv`` of both communicators: the peer is checked, and a receive waits behind
    the receives posted ahead of it. The communicator gives ``peers`` (its peers' names), ``_receives``
    (a ``ReceiveQueue`` per peer) and ``_receive_now`` (takes and decodes the peer's next frame)."""

    peers: Any
    _receives: dict[str, ReceiveQueue]

    def _receive_now(self, peer: str, timeout: float | None, kind: str | None, with_kind: bool, device: Any = None) -> Any:
        raise NotImplementedError

    def _check_peer(self, peer: str) -> None:
        if peer not in self.peers:
            raise ValueError(f"unknown peer {peer!r}; peers: {', '.join(self.peers)}")

    def receive(
        self,
        target_server_name: str,
        timeout: float | None = None,
        *,
        kind: str | None = None,
        with_kind: bool = False,
        device: Any = None,
    ) -> Any:
        """The next frame's tensors from ``target_server_name`` (nested as sent, compression undone).

        With ``kind``, a frame of another kind is a protocol error (ValueError naming both). With
        ``with_kind``, returns ``(frame kind, tensors)`` (a receiver that dispatches on the kind).
        ``device`` (e.g. ``"cuda:0"``) places the tensors there (see the communicator's
        ``_receive_now``); ``None`` keeps them on the CPU. ``TimeoutError`` after ``timeout`` s."""
        self._check_peer(target_server_name)
        return self._receives[target_server_name].take(
            lambda: self._receive_now(target_server_name, timeout, kind, with_kind, device)
        )

    def irecv(
        self,
        target_server_name: str,
        timeout: float | None = None,
        *,
        kind: str | None = None,
        with_kind: bool = False,
        device: Any = None,
    ) -> Work:
        """Posts a receive ahead: a ``Work`` whose ``wait()`` returns what ``receive`` would (or raises
        its error). Posted receives take the peer's frames in the order they were posted, and frames
        are unpacked on a background thread."""
        self._check_peer(target_server_name)
        return self._receives[target_server_name].post(
            lambda: self._receive_now(target_server_name, timeout, kind, with_kind, device)
        )
