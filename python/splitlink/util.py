"""Small helpers shared across splitlink: durable atomic file writes, free loopback ports, the glibc
allocator setting for long CPU training runs."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "fsync_dir", "free_ports", "keep_freed_memory"]


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[Any]], object], *, binary: bool = False) -> Path:
    """Writes ``path`` so that a crash never leaves a partial file: ``write(fh)`` fills a temporary
    file beside it, which is fsynced, renamed over ``path``, and the directory fsynced."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".tmp-{target.name}.{os.getpid()}")
    try:
        fh: IO[Any]
        with open(tmp, "wb") if binary else open(tmp, "w", encoding="utf-8", newline="") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsync_dir(target.parent)
    return target


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Makes a rename in ``directory`` durable (best effort where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def free_ports(n: int = 1) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 right now (for loopback tests, demos and launchers)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def keep_freed_memory(mmap_threshold: int = 256 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Makes glibc's malloc keep freed memory for reuse instead of returning it to the kernel (the
    ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` settings, applied with ``mallopt``).

    By default glibc unmaps freed blocks above a (dynamic) threshold and trims the heap top, so a
    training step's large temporaries (optimizer intermediates, activations, gradients) are faulted
    in again every step; on the development machines that costs a split MLP step ~15% (first touch
    runs at ~2 GB/s, reuse at 6-17 GB/s; ``benchmarks/bench_step.py``). The cost is a process
    that holds on to its peak memory. ``splitlink train`` calls this at start-up (run-file option
    ``keep_freed_memory``); a library import never does. Returns whether it was applied (False on
    other C libraries, where preloading jemalloc or tcmalloc is the equivalent)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, int(mmap_threshold))) and bool(mallopt(m_trim_threshold, int(trim_threshold)))
