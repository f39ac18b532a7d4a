"""Emulated network links for tests and benchmarks: two parties in a private network namespace, the
link between them shaped by the kernel and delayed by a delay line.

* **Isolation.** :class:`Netns` creates a network namespace (``ip netns add``) with only its loopback,
  brought up: everything the parties send stays on 127.0.0.1 of that namespace. Processes run in it
  through ``nsenter --net`` (:meth:`Netns.popen`); this process's own sockets enter it per thread
  (:meth:`Netns.call`: a thread that ``setns(2)``-ed into the namespace, whose sockets and child threads
  live there; the rest of the process is untouched).
* **Bandwidth** by the kernel: an ``htb`` qdisc on the namespace's loopback with one class per direction
  (A to B, B to A, each at the profile's rate: the link is full duplex), packets sorted into them by
  ``u32`` filters on the port the client dials (its destination port one way, its source port the other).
  Only the client-to-dial-port leg is shaped, so a proxy in the path does not halve the rate; all other
  loopback traffic is unclassified and bypasses htb. ``tc -s class show`` then gives the bytes each
  direction carried, TCP/IP headers, TLS records and acknowledgements included (:meth:`EmulatedLink.wire_bytes`).
* **Delay and jitter** by the kernel's ``netem`` under each class where the kernel has it (detected),
  else by a delay line (:class:`faultproxy.FaultProxy` with ``one_way_delay_s``): each chunk is forwarded
  when due, so the path keeps its rate while delayed; one-way delay = RTT / 2 per direction, jitter
  without reordering.
* **Loss** as cut connections: :meth:`EmulatedLink.cut` (the fault proxy's cut; needs the proxy).

Profiles (:data:`PROFILES`): LAN 10 Gbit/s 0.2 ms RTT, metro 1 Gbit/s 5 ms, WAN 1 Gbit/s 20 ms, thin WAN
100 Mbit/s 40 ms, long-haul 1 Gbit/s 200 ms. LAN runs without a delay line: a user-space proxy cannot add
0.2 ms accurately nor carry 10 Gbit/s; loopback is faster than the profile on both counts, which
:meth:`EmulatedLink.self_check` reports instead of failing.

Self-check (:meth:`EmulatedLink.self_check`): a raw TCP ping-pong through the emulated path (median RTT)
and a bulk transfer (rate between the receiver's first and last byte). A figure that misses the profile by
more than ``tolerance`` (20%) fails the check, on either side where the emulation imposes it. A rate the
host cannot clearly exceed even unshaped (a plain loopback socket pair in the namespace, measured in turns
with the shaped path so that the load of the moment falls on both) is reported as host-limited and
checked against what the host reached instead (LAN's 10 Gbit/s on a busy 2-core machine: measured
7-10 Gbit/s shaped and unshaped alike).

Not emulated: the delay line and netem leave the parties' TCP windows as on loopback, so a real long path
whose windows cap its rate (bandwidth-delay product over the socket buffers) is slower than this emulation.

Clean-up: :class:`Netns` deletes the namespace and kills (the process group of) every process it started
on ``close()``, on leaving its ``with`` block, at interpreter exit (``atexit``) and on SIGTERM/SIGINT/SIGHUP
(handlers installed when the first namespace is created from the main thread; previous handlers are
chained). Namespaces left by a process that was SIGKILLed are removed by the next one that starts (their
name holds the creator's pid).

Usage::

    with EmulatedLink(PROFILES["wan"]) as link:      # namespace, htb, nothing routed yet
        report = link.self_check()                   # raises NetemError if the path misses the profile
        lp, fp = link.free_ports(2)                  # ports free in the namespace
        to_leader = link.route(lp, client="follower")      # address the follower dials to reach the leader
        to_follower = link.route(fp, client="leader")
        link.popen([...leader..., f"--peer={to_follower}"]); link.popen([...follower..., f"--peer={to_leader}"])
        ...
        link.wire_bytes()                            # {"follower->leader": n, "leader->follower": m}
"""

from __future__ import annotations

import atexit
import ctypes
import itertools
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from faultproxy import FaultProxy

__all__ = ["Profile", "PROFILES", "NetemError", "NetnsUnavailable", "Netns", "EmulatedLink", "netns_support"]

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
PREFIX = "splitlink-"


class NetemError(RuntimeError):
    """The emulated link could not be set up, or misses its profile."""


class NetnsUnavailable(NetemError):
    """This machine cannot create a network namespace (not root, a tool missing, no kernel support)."""


@dataclass(frozen=True)
class Profile:
    name: str
    rate_bit_s: float  # per direction
    rtt_s: float  # round trip: each direction is delayed rtt_s / 2
    jitter_s: float = 0.0  # each direction, uniform in +-jitter_s, no reordering

    @property
    def one_way_s(self) -> float:
        return self.rtt_s / 2

    def describe(self) -> str:
        rate = f"{self.rate_bit_s / 1e9:g} Gbit/s" if self.rate_bit_s >= 1e9 else f"{self.rate_bit_s / 1e6:g} Mbit/s"
        return f"{self.name} ({rate}, {self.rtt_s * 1e3:g} ms RTT)"


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in [
        Profile("lan", 10e9, 0.0002),
        Profile("metro", 1e9, 0.005),
        Profile("wan", 1e9, 0.020),
        Profile("thin-wan", 100e6, 0.040),
        Profile("long-haul", 1e9, 0.200),
    ]
}

# ---- the namespace --------------------------------------------------------------------------------------

_live: weakref.WeakSet[Netns] = weakref.WeakSet()
_handlers_installed = False
_counter = itertools.count()
_libc = ctypes.CDLL(None, use_errno=True)


def _run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise NetemError(f"`{' '.join(argv)}` failed (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def netns_support() -> str | None:
    """None when network namespaces can be made here, else why not (for a skip reason)."""
    missing = [t for t in ("ip", "tc", "nsenter") if shutil.which(t) is None]
    if missing:
        return f"network emulation needs the tools {', '.join(missing)} on PATH (iproute2 for ip and tc, util-linux for nsenter)"
    if os.geteuid() != 0:
        return "network emulation needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create a network namespace"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_stale() -> None:
    """Deletes namespaces left by splitlink processes that no longer exist (killed with SIGKILL)."""
    try:
        names = os.listdir(NETNS_DIR)
    except OSError:
        return
    for name in names:
        m = re.fullmatch(rf"{PREFIX}(\d+)-\d+", name)
        if m and not _pid_alive(int(m.group(1))):
            _run(["ip", "netns", "del", name], check=False)


def _close_all() -> None:
    for ns in list(_live):
        ns.close()


def _on_signal(signum: int, frame: Any) -> None:
    _close_all()
    previous = _previous_handlers.get(signum)
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_IGN:
        return
    else:  # default action: die of the signal, as without the handler
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


_previous_handlers: dict[int, Any] = {}


def _install_handlers() -> None:
    global _handlers_installed
    if _handlers_installed:
        return
    atexit.register(_close_all)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            prev = signal.getsignal(sig)
            if prev is signal.default_int_handler and sig == signal.SIGINT:
                # KeyboardInterrupt unwinds through the with blocks, which clean up; keep Python's handler
                continue
            _previous_handlers[sig] = prev
            signal.signal(sig, _on_signal)
    _handlers_installed = True


class Netns:
    """A private network namespace with its loopback up; processes and threads run inside it."""

    def __init__(self) -> None:
        why = netns_support()
        if why:
            raise NetnsUnavailable(why)
        _sweep_stale()
        self.name = f"{PREFIX}{os.getpid()}-{next(_counter)}"
        self.path = os.path.join(NETNS_DIR, self.name)
        self._procs: list[subprocess.Popen[Any]] = []
        self._closed = False
        self._lock = threading.Lock()
        proc = _run(["ip", "netns", "add", self.name], check=False)
        if proc.returncode != 0:
            raise NetnsUnavailable(f"cannot create a network namespace (`ip netns add {self.name}`): {proc.stderr.strip()}")
        _install_handlers()
        _live.add(self)
        try:
            self.ip("link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    def ip(self, *args: str) -> str:
        return _run(["ip", "-n", self.name, *args]).stdout

    def tc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(["ip", "netns", "exec", self.name, "tc", *args], check=check)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Starts ``argv`` inside the namespace, in a process group of its own (killed on close)."""
        if self._closed:
            raise NetemError(f"namespace {self.name} is closed")
        kwargs.setdefault("start_new_session", True)
        p = subprocess.Popen(["nsenter", f"--net={self.path}", "--", *argv], **kwargs)
        with self._lock:
            self._procs.append(p)
        return p

    def call(self, fn: Callable[[], T], timeout: float | None = 60) -> T:
        """``fn()`` run in a thread inside the namespace; its sockets, and the threads it starts, live there."""
        out: dict[str, Any] = {}

        def body() -> None:
            try:
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    if _libc.setns(fd, CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise NetemError(f"setns into {self.name}: {os.strerror(err)}")
                finally:
                    os.close(fd)
                out["value"] = fn()
            except BaseException as e:  # handed to the caller
                out["error"] = e

        t = threading.Thread(target=body, name=f"netns:{self.name}", daemon=True)
        t.start()
        t.join(timeout)
        if t.is_alive():
            raise NetemError(f"a call inside {self.name} did not finish within {timeout} s")
        if "error" in out:
            raise out["error"]
        return out["value"]

    def free_ports(self, n: int) -> list[int]:
        def pick() -> list[int]:
            socks = [socket.socket() for _ in range(n)]
            try:
                for s in socks:
                    s.bind(("127.0.0.1", 0))
                return [s.getsockname()[1] for s in socks]
            finally:
                for s in socks:
                    s.close()

        return self.call(pick)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            procs, self._procs = self._procs, []
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    p.kill()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass
        _run(["ip", "netns", "del", self.name], check=False)
        _live.discard(self)

    def __enter__(self) -> Netns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def netns_exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, name))


# ---- the link -------------------------------------------------------------------------------------------


def _rate(bit_s: float) -> str:
    return f"{int(bit_s)}bit"


@dataclass
class _Route:
    dial_port: int
    server_port: int
    client: str
    proxy: FaultProxy | None = None


@dataclass
class EmulatedLink:
    """Two parties ``a`` and ``b`` joined by a link with ``profile``'s rate and delay, in a namespace.

    ``delay``: "auto" (netem where the kernel has it, else the delay-line proxy; none for a profile
    under 1 ms RTT), "netem", "proxy" or "none". ``proxy=True`` forces a proxy in the path even without
    delay (for :meth:`cut`)."""

    profile: Profile
    a: str = "follower"
    b: str = "leader"
    delay: str = "auto"
    tolerance: float = 0.2
    ns: Netns = field(init=False)
    routes: list[_Route] = field(init=False, default_factory=list)
    delay_mode: str = field(init=False, default="none")

    def __post_init__(self) -> None:
        if self.delay not in ("auto", "netem", "proxy", "none"):
            raise ValueError(f"delay must be 'auto', 'netem', 'proxy' or 'none', not {self.delay!r}")
        self.ns = Netns()
        try:
            self._setup()
        except BaseException:
            self.ns.close()
            raise

    # -- set-up
    def _setup(self) -> None:
        has_netem = self._has_netem()
        mode = self.delay
        if mode == "auto":
            mode = "none" if self.profile.rtt_s < 1e-3 else ("netem" if has_netem else "proxy")
        if mode == "netem" and not has_netem:
            raise NetemError(
                "delay='netem' but this kernel has no netem qdisc (`tc qdisc add ... netem`: "
                "'Specified qdisc kind is unknown'); use delay='proxy'"
            )
        self.delay_mode = mode
        rate = _rate(self.profile.rate_bit_s)
        # burst: 2 ms of traffic, at least two 64 KiB loopback (GSO) packets; htb needs >= one packet
        burst = max(int(self.profile.rate_bit_s / 8 * 0.002), 2 * 65536 + 4096)
        self.ns.tc("qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb")  # default 0: unclassified bypasses
        for cls in ("1:1", "1:2"):
            self.ns.tc(
                "class",
                "add",
                "dev",
                "lo",
                "parent",
                "1:",
                "classid",
                cls,
                "htb",
                "rate",
                rate,
                "ceil",
                rate,
                "burst",
                str(burst),
                "cburst",
                str(burst),
                "quantum",
                "200000",
            )
            if mode == "netem":
                d_ms = self.profile.one_way_s * 1e3
                args = ["delay", f"{d_ms:.3f}ms"]
                if self.profile.jitter_s:
                    args += [f"{self.profile.jitter_s * 1e3:.3f}ms"]
                handle = "10:" if cls == "1:1" else "20:"
                self.ns.tc("qdisc", "add", "dev", "lo", "parent", cls, "handle", handle, "netem", *args, "limit", "1000000")

    def _has_netem(self) -> bool:
        probe = self.ns.tc("qdisc", "add", "dev", "lo", "root", "handle", "9:", "netem", "delay", "1ms", check=False)
        if probe.returncode == 0:
            self.ns.tc("qdisc", "del", "dev", "lo", "root", check=False)
            return True
        return False

    def _class_of(self, src: str) -> str:
        return "1:1" if src == self.a else "1:2"

    def _filter(self, match: str, port: int, src_party: str) -> None:
        self.ns.tc(
            "filter",
            "add",
            "dev",
            "lo",
            "parent",
            "1:",
            "protocol",
            "ip",
            "prio",
            "1",
            "u32",
            "match",
            "ip",
            match,
            str(port),
            "0xffff",
            "flowid",
            self._class_of(src_party),
        )

    def route(self, server_port: int, *, client: str, proxy: bool | None = None) -> str:
        """The address (127.0.0.1:port in the namespace) that ``client`` dials to reach the server on
        ``server_port`` (owned by the other party) through the emulated link."""
        if client not in (self.a, self.b):
            raise ValueError(f"client must be {self.a!r} or {self.b!r}, not {client!r}")
        server = self.b if client == self.a else self.a
        use_proxy = self.delay_mode == "proxy" if proxy is None else proxy
        fp = None
        if use_proxy:
            delay = self.profile.one_way_s if self.delay_mode == "proxy" else 0.0
            jitter = self.profile.jitter_s if self.delay_mode == "proxy" else 0.0
            fp = self.ns.call(lambda: FaultProxy(server_port, one_way_delay_s=delay, jitter_s=jitter))
            dial = fp.port
        else:
            dial = server_port
        self._filter("dport", dial, client)  # client to server
        self._filter("sport", dial, server)  # server to client
        self.routes.append(_Route(dial, server_port, client, fp))
        return f"127.0.0.1:{dial}"

    # -- use
    def free_ports(self, n: int) -> list[int]:
        return self.ns.free_ports(n)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        return self.ns.popen(argv, **kwargs)

    def call(self, fn: Callable[[], T], timeout: float | None = 60) -> T:
        return self.ns.call(fn, timeout)

    def cut(self, seconds: float) -> None:
        """Drops every connection through the link and refuses new ones for ``seconds`` (needs proxies)."""
        proxies = [r.proxy for r in self.routes if r.proxy is not None]
        if not proxies:
            raise NetemError("cut() needs the proxy in the path: route(..., proxy=True)")
        for p in proxies:
            p.cut(seconds)

    def wire_bytes(self) -> dict[str, int]:
        """Bytes each direction has carried on the shaped legs (IP packets: headers, TLS, acks included)."""
        out = self.ns.tc("-s", "class", "show", "dev", "lo").stdout
        got = {}
        for cls, name in (("1:1", f"{self.a}->{self.b}"), ("1:2", f"{self.b}->{self.a}")):
            m = re.search(rf"class htb {cls} .*?Sent (\d+) bytes", out, re.S)
            if not m:
                raise NetemError(f"no byte count for htb class {cls} in:\n{out}")
            got[name] = int(m.group(1))
        return got

    def close(self) -> None:
        for r in self.routes:
            if r.proxy is not None:
                r.proxy.close()
        self.ns.close()

    def __enter__(self) -> EmulatedLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- self-check
    def self_check(self, *, bulk_bytes: int | None = None, pings: int = 15, expect: Profile | None = None) -> dict[str, Any]:
        """Measures RTT (median of ``pings`` round trips of one byte) and rate (median of three transfers
        of ``bulk_bytes``) through the emulated path with a raw TCP probe (a to b); raises
        NetemError if either misses ``expect`` (default: the link's profile) by more than ``tolerance``.
        Returns the figures."""
        p = expect or self.profile
        if bulk_bytes is None:  # ~0.1 s at the profile's rate, at least 4 MiB, at most 128 MiB
            bulk_bytes = int(min(max(p.rate_bit_s / 8 * 0.1, 4 << 20), 128 << 20))
        if bulk_bytes < 1 << 20:
            raise ValueError(f"bulk_bytes must be at least 1 MiB (a quarter of it outlasts the shaper's burst), not {bulk_bytes}")
        port, plain_port = self.free_ports(2)
        server = self.call(lambda: _ProbeServer(port))
        plain = self.call(lambda: _ProbeServer(plain_port))  # unrouted: unshaped, undelayed
        host = None
        try:
            dial = self.route(port, client=self.a)
            rtt = self.call(lambda: _ping(dial, pings))
            # median of three: a thread of this process (the proxy's, the probe's) stalled by a busy host
            # slows one transfer, not the link
            rate = statistics.median(self.call(lambda: _bulk(dial, server, bulk_bytes), timeout=120) for _ in range(3))
            if rate < p.rate_bit_s * (1 - self.tolerance):
                # Slow: the shaper, or a host that cannot do the profile's rate at all? Shaped and unshaped
                # transfers in turns, so the load of the moment falls on both alike.
                shaped, unshaped = [], []
                for _ in range(5):
                    shaped.append(self.call(lambda: _bulk(dial, server, bulk_bytes), timeout=120))
                    unshaped.append(self.call(lambda: _bulk(f"127.0.0.1:{plain_port}", plain, bulk_bytes), timeout=120))
                rate, host = statistics.median(shaped), statistics.median(unshaped)
        finally:
            server.close()
            plain.close()
        report: dict[str, Any] = {
            "profile": p.name,
            "delay_mode": self.delay_mode,
            "rtt_ms": rtt * 1e3,
            "rate_bit_s": rate,
            "host_rate_bit_s": host,
            "target_rtt_ms": p.rtt_s * 1e3,
            "target_rate_bit_s": p.rate_bit_s,
        }
        problems = []
        tol = self.tolerance
        if rtt > p.rtt_s * (1 + tol):
            problems.append(f"RTT {rtt * 1e3:.3f} ms is over the profile's {p.rtt_s * 1e3:g} ms by more than {tol:.0%}")
        if self.delay_mode != "none" and rtt < p.rtt_s * (1 - tol):
            problems.append(f"RTT {rtt * 1e3:.3f} ms is under the profile's {p.rtt_s * 1e3:g} ms by more than {tol:.0%}")
        if self.delay_mode == "none":
            report["rtt_note"] = "no delay emulated: loopback's own RTT (faster than the profile)"
        if rate > p.rate_bit_s * (1 + tol):
            problems.append(
                f"rate {rate / 1e6:.0f} Mbit/s is over the profile's {p.rate_bit_s / 1e6:.0f} Mbit/s by "
                f"more than {tol:.0%}: the shaper does not hold"
            )
        if host is not None and host < p.rate_bit_s * (1 + tol):
            # The host cannot clearly exceed the profile's rate even unshaped: the shaper is not what binds,
            # so the check is against what the host reached alongside (a user-space delay line may cost more).
            report["rate_note"] = (
                f"host-limited: an unshaped loopback socket pair reaches {host / 1e9:.2f} Gbit/s, "
                f"not clearly above the profile's {p.rate_bit_s / 1e9:g} Gbit/s"
            )
            if rate < host * (1 - tol) and self.delay_mode != "proxy":
                problems.append(
                    f"rate {rate / 1e6:.0f} Mbit/s is under what the host reaches unshaped "
                    f"({host / 1e6:.0f} Mbit/s) by more than {tol:.0%}"
                )
        elif rate < p.rate_bit_s * (1 - tol):
            problems.append(
                f"rate {rate / 1e6:.0f} Mbit/s is under the profile's {p.rate_bit_s / 1e6:.0f} Mbit/s "
                f"by more than {tol:.0%} (an unshaped loopback pair reaches {(host or 0) / 1e6:.0f} Mbit/s)"
            )
        report["ok"] = not problems
        if problems:
            raise NetemError(
                f"the emulated link misses {p.describe()} ({self.delay_mode} delay): "
                + "; ".join(problems)
                + f"\nmeasured: {report}"
            )
        return report


# ---- the raw TCP probe ----------------------------------------------------------------------------------


class _ProbeServer:
    """Echoes 1-byte pings ('p'); for a bulk transfer ('b' + 8-byte length) receives the bytes and
    reports the seconds from when a quarter of them had arrived to the last byte's arrival, and the
    bytes received by then (the steady rate: the shaper's initial burst and the delay are left out)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(8)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        import struct

        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                op = conn.recv(1)
                if not op:
                    return
                if op == b"p":
                    conn.sendall(b"p")
                    continue
                (n,) = struct.unpack("!Q", _recv_exact(conn, 8))
                buf = bytearray(1 << 20)
                got, t_mark, at_mark = 0, 0.0, 0
                while got < n:
                    k = conn.recv_into(buf, min(len(buf), n - got))
                    if not k:
                        return
                    got += k
                    if not at_mark and got >= n // 4:  # the shaper's burst is spent by now
                        t_mark, at_mark = time.perf_counter(), got
                conn.sendall(struct.pack("!dQ", time.perf_counter() - t_mark, at_mark))
        except OSError:
            return
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()


def _recv_exact(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        k = s.recv(n - len(out))
        if not k:
            raise NetemError("probe connection closed early")
        out += k
    return out


def _connect(addr: str) -> socket.socket:
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=60)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _ping(addr: str, n: int) -> float:
    with _connect(addr) as s:
        times = []
        for i in range(n + 2):
            t0 = time.perf_counter()
            s.sendall(b"p")
            _recv_exact(s, 1)
            if i >= 2:  # the first round trips include the proxy's connection set-up
                times.append(time.perf_counter() - t0)
        return statistics.median(times)


def _bulk(addr: str, server: _ProbeServer, n: int) -> float:
    import struct

    with _connect(addr) as s:
        s.sendall(b"b" + struct.pack("!Q", n))
        chunk = bytes(1 << 20)
        left = n
        while left:
            k = min(left, len(chunk))
            s.sendall(memoryview(chunk)[:k])
            left -= k
        seconds, first = struct.unpack("!dQ", _recv_exact(s, 16))
    return (n - first) * 8 / max(seconds, 1e-9)
