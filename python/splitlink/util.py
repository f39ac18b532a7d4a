"""Small helpers shared across splitlink: durable atomic file writes, free loopback ports, the glibc
allocator setting for long CPU training runs."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "fsync_dir", "free_ports", "keep_freed_memory"]

_RANDOM = random.SystemRandom()  # not the global generator: a test that seeds it must not make processes agree


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


# Ports free_ports() handed out in this process: never handed out again (the party they were meant for
# may still be starting), and the lock that guards them.
_HANDED_OUT: set[int] = set()
_PORTS_LOCK = threading.Lock()
_LOWEST_PORT = 10000  # below: the registered services' ports (5432, 8080, ...), best left alone


def _ephemeral_range() -> tuple[int, int]:
    """The ports the OS numbers sockets from itself (``bind`` to port 0, a client's ``connect``): Linux's
    ``ip_local_port_range``; elsewhere the IANA dynamic range that macOS and Windows use."""
    with contextlib.suppress(OSError, ValueError):
        lo, hi = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return lo, hi
    return 49152, 65535


def free_ports(n: int = 1) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 right now (for loopback tests, demos and launchers).

    A port is free only until someone binds it, and the process it is meant for binds it later (seconds
    later on a loaded machine, after its imports). So the ports are picked at random OUTSIDE the range the
    OS numbers sockets from itself, where no client connection and no listener on port 0 (torchrun's
    rendezvous store, gloo, another test's helper) can take one meanwhile, and a port handed out once in
    this process is never handed out again. (Taken from port 0, as before, a port went to another
    listener before party A of a two-rank test bound it, under load.) Where that range leaves fewer
    than 1000 ports, the OS picks them (``bind`` to port 0)."""
    lo, hi = _ephemeral_range()
    spans = [(a, b) for a, b in ((_LOWEST_PORT, lo - 1), (max(hi + 1, _LOWEST_PORT), 65535)) if b >= a]
    size = sum(b - a + 1 for a, b in spans)
    picked: list[int] = []
    with _PORTS_LOCK:
        if size < 1000:
            return _os_picked_ports(n)
        if len(_HANDED_OUT) > size // 2:
            _HANDED_OUT.clear()  # a very long-lived process: the oldest parties have long bound theirs
        for _ in range(100 * n):
            port = _nth_port(spans, _RANDOM.randrange(size))
            if port not in _HANDED_OUT and _bindable(port):
                _HANDED_OUT.add(port)
                picked.append(port)
                if len(picked) == n:
                    return picked
    raise OSError(f"found no {n} free TCP ports on 127.0.0.1 outside the ephemeral range {lo}-{hi}")


def _nth_port(spans: list[tuple[int, int]], k: int) -> int:
    """The ``k``-th port of the inclusive ``spans``, counted from 0."""
    for a, b in spans:
        if k <= b - a:
            return a + k
        k -= b - a + 1
    raise ValueError(f"port index {k} beyond the spans {spans}")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _os_picked_ports(n: int) -> list[int]:
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
