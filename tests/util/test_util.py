"""splitlink.util: free ports, and the glibc setting `splitlink train` applies for long runs."""

from __future__ import annotations

import json
import platform
import socket
import subprocess
import sys

import pytest

from splitlink.util import free_ports

PROBE = """
import ctypes, json, sys
from splitlink.util import keep_freed_memory
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
n = 64 << 20
p = libc.malloc(n)
ctypes.memset(p, 1, n)  # touch every page
before_free = rss()
libc.free(p)
print(json.dumps({"applied": applied, "released": before_free - rss()}))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt settings are glibc's")
def test_keep_freed_memory_keeps_a_freed_block_mapped() -> None:
    out = {}
    for mode in ("default", "keep"):
        proc = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
        out[mode] = json.loads(proc.stdout)
    assert out["default"]["released"] >= 60 << 20  # glibc gives a freed 64 MiB block back at once
    assert out["keep"]["applied"] is True
    assert out["keep"]["released"] < 1 << 20  # kept for the next step's allocations


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5
    for p in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_free_ports_stay_out_of_the_ephemeral_range_and_are_never_handed_out_twice() -> None:
    """A port handed out is bound later by the process it is meant for; meanwhile nothing the OS numbers
    itself (a client's connection, a listener on port 0) may take it, and no later call may return it."""
    from splitlink.util import _ephemeral_range

    lo, hi = _ephemeral_range()
    ports = [p for _ in range(100) for p in free_ports(2)]
    assert len(set(ports)) == len(ports) == 200  # the ports of earlier calls were closed: still not repeated
    assert not [p for p in ports if lo <= p <= hi], (lo, hi)
    assert all(1024 <= p <= 65535 for p in ports)
    # the OS numbers a listener on port 0 from exactly the range the ports avoid
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        assert lo <= s.getsockname()[1] <= hi
