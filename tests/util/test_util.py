"""splitlink.util: free ports, and the glibc setting `splitlink train` applies for long runs."""

from __future__ import annotations

import json
import platform
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
    import socket

    ports = free_ports(5)
    assert len(set(ports)) == 5
    for p in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))
