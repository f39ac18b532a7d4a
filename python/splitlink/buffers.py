"""The process-wide buffer pools that frames are packed into, sealed into and decoded into.

``wire`` (packing and decoding) and ``secure`` (sealing and opening) both draw from these pools;
they live here, below both, so neither has to import the other. ``splitlink.wire`` re-exports
everything in this module.
"""

from __future__ import annotations

from typing import Any

from splitlink import _core

__all__ = ["BufferPool", "FrameBuffer", "default_pool", "decode_pool", "DECODE_POOL_MIN_BYTES"]

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
