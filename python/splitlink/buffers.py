"""The process-wide buffer pools that frames are packed into, sealed into and decoded into.

``wire`` (packing and decoding) and ``secure`` (sealing and opening) both draw from these pools;
they live here, below both, so neither has to import the other. ``splitlink.wire`` re-exports
everything in this module.
"""

from __future__ import annotations

import threading
from typing import Any

from splitlink import _core

__all__ = ["BufferPool", "FrameBuffer", "PinnedPool", "default_pool", "decode_pool", "pinned_pool", "DECODE_POOL_MIN_BYTES"]

FrameBuffer = _core.wire.FrameBuffer
BufferPool = _core.wire.BufferPool

_DEFAULT_POOL = BufferPool()
# Memory for decoded (compressed) tensors. Bounded: at most 16 buffers and 1 GiB are kept, free or
# in use; beyond that a decoded tensor gets a buffer the pool does not keep (freed with the tensor).
_DECODE_POOL = BufferPool(max_buffers=16, max_bytes=1 << 30)
# Smaller decoded tensors come from torch's allocator: malloc serves them from memory it already
# has mapped, and they would take pool slots that large tensors need.
DECODE_POOL_MIN_BYTES = 64 << 10


def default_pool() -> Any:
    """The pool ``pack`` (and ``Sealer.seal`` / ``Opener.open``) draw frame buffers from unless told otherwise."""
    return _DEFAULT_POOL


def decode_pool() -> Any:
    """The pool ``unpack`` draws the memory of decoded (compressed) tensors from unless told
    otherwise. ``decode_pool().clear()`` lets its memory go once no tensor uses it."""
    return _DECODE_POOL


class PinnedPool:
    """Host buffers for copies to and from a GPU: page-locked (pinned) when CUDA is available, plain
    memory otherwise (a CPU-only machine never pins). Buffers are torch uint8 tensors made by
    ``torch.empty(..., pin_memory=True)``; ``acquire(n)`` hands out an ``n``-byte view of one and
    gives that buffer out again only after the view and everything made from it (``.numpy()``
    arrays, memoryviews, tensors viewing those: anything holding the buffer's storage) is gone and
    the copy event recorded with
    ``record(view, event)`` has completed: a buffer is never reused while a copy into or out of it
    is in flight. At most ``max_buffers`` buffers are kept; beyond that a view is freshly allocated.
    """

    def __init__(self, max_buffers: int = 4, min_bytes: int = 1 << 20) -> None:
        self.max_buffers = max_buffers
        self.min_bytes = min_bytes
        self._lock = threading.Lock()
        # [buffer tensor, storage use count when nothing but the pool holds it, event or None]
        self._entries: list[list[Any]] = []

    @staticmethod
    def _uses(buf: Any) -> int:
        import torch

        # References to the buffer's storage (views, numpy arrays and tensors made from them all hold
        # one); -1 where this torch build cannot tell, and then the buffer is never reused.
        count = getattr(torch._C, "_storage_Use_Count", None)
        return -1 if count is None else int(count(buf.untyped_storage()._cdata))

    def _free(self, e: list[Any]) -> bool:
        return bool(e[1] >= 0 and self._uses(e[0]) == e[1])

    @staticmethod
    def pins() -> bool:
        """Whether buffers are page-locked (CUDA available)."""
        import torch

        return bool(torch.cuda.is_available())

    def acquire(self, nbytes: int) -> Any:
        import torch

        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        pin = self.pins()
        with self._lock:
            best = None
            for e in self._entries:
                if e[0].numel() >= nbytes and self._free(e):
                    if best is None or e[0].numel() < best[0].numel():
                        best = e
            if best is None:
                size = max(self.min_bytes, 1 << max(0, (nbytes - 1).bit_length()))
                free = [e for e in self._entries if self._free(e)]
                if len(self._entries) >= self.max_buffers and free:
                    self._entries.remove(min(free, key=lambda e: e[0].numel()))
                buf = torch.empty(size, dtype=torch.uint8, pin_memory=pin)
                if len(self._entries) >= self.max_buffers:
                    return buf[:nbytes]  # every kept buffer is in use: one the pool does not keep
                best = [buf, self._uses(buf), None]
                self._entries.append(best)
            if best[2] is not None:
                best[2].synchronize()  # a copy from or into it may still run
                best[2] = None
            return best[0][:nbytes]

    def record(self, view: Any, event: Any) -> None:
        """Marks the buffer behind ``view`` busy until ``event`` (a ``torch.cuda.Event``) completes."""
        with self._lock:
            for e in self._entries:
                if e[0].untyped_storage().data_ptr() == view.untyped_storage().data_ptr():
                    e[2] = event
                    return

    def stats(self) -> dict[str, int]:
        with self._lock:
            busy = sum(1 for e in self._entries if not self._free(e))
            return {"buffers": len(self._entries), "in_use": busy, "bytes": sum(int(e[0].numel()) for e in self._entries)}

    def clear(self) -> None:
        """Drops the free buffers (their memory goes back once no view uses it)."""
        with self._lock:
            self._entries = [e for e in self._entries if not self._free(e)]


_PINNED_POOL: PinnedPool | None = None


def pinned_pool() -> PinnedPool:
    """The pool of (pinned, where CUDA is available) host buffers that frames of GPU tensors are
    packed into and staged through."""
    global _PINNED_POOL
    if _PINNED_POOL is None:
        _PINNED_POOL = PinnedPool()
    return _PINNED_POOL
