"""The emulated link (tests/support/netem.py): it meets its profiles, its self-check catches a link that
does not, it leaves nothing behind on any exit, and split training through it is exact."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from netem import PROFILES, EmulatedLink, NetemError, Netns, netns_exists

pytestmark = pytest.mark.usefixtures("netns_ok")

SUPPORT = Path(__file__).resolve().parents[1] / "support"


@pytest.mark.parametrize("name", ["metro", "thin-wan"])
def test_self_check_meets_the_profile(name: str) -> None:
    with EmulatedLink(PROFILES[name]) as link:
        assert link.delay_mode in ("proxy", "netem")
        r = link.self_check(bulk_bytes=4 << 20)
    p = PROFILES[name]
    # self_check raises beyond 20%; restated here so the figures it returns are checked too
    assert abs(r["rtt_ms"] / (p.rtt_s * 1e3) - 1) <= 0.2, r
    assert abs(r["rate_bit_s"] / p.rate_bit_s - 1) <= 0.2, r


def test_self_check_fails_a_link_that_misses_its_profile() -> None:
    """A link shaped and delayed as thin WAN, checked against faster and slower claims: both caught."""
    with EmulatedLink(PROFILES["thin-wan"]) as link:
        claim = dataclasses.replace(PROFILES["thin-wan"], rate_bit_s=1e9)  # 10x the rate
        with pytest.raises(NetemError, match=r"rate \d+ Mbit/s is under the profile's 1000 Mbit/s"):
            link.self_check(bulk_bytes=2 << 20, expect=claim)
    with EmulatedLink(PROFILES["metro"]) as link:
        claim = dataclasses.replace(PROFILES["metro"], rtt_s=0.050)  # 10x the RTT
        with pytest.raises(NetemError, match=r"RTT [\d.]+ ms is under the profile's 50 ms"):
            link.self_check(bulk_bytes=2 << 20, expect=claim)
        claim = dataclasses.replace(PROFILES["metro"], rate_bit_s=100e6)  # a tenth of the rate
        with pytest.raises(NetemError, match=r"rate \d+ Mbit/s is over the profile's 100 Mbit/s"):
            link.self_check(bulk_bytes=2 << 20, expect=claim)


def test_wire_bytes_count_each_direction() -> None:
    from netem import _bulk, _ProbeServer

    n = 4 << 20
    with EmulatedLink(PROFILES["metro"]) as link:
        (port,) = link.free_ports(1)
        server = link.call(lambda: _ProbeServer(port))
        try:
            dial = link.route(port, client="follower")
            before = link.wire_bytes()
            link.call(lambda: _bulk(dial, server, n))  # n bytes follower -> leader
            after = link.wire_bytes()
        finally:
            server.close()
    up = after["follower->leader"] - before["follower->leader"]
    down = after["leader->follower"] - before["leader->follower"]
    assert n < up < n * 1.1  # payload plus TCP/IP headers (a few %)
    assert 0 < down < n // 10  # acknowledgements and the probe's reply only


def test_an_exception_leaves_no_namespace_and_no_process() -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with EmulatedLink(PROFILES["wan"]) as link:
            name = link.ns.name
            p = link.popen([sys.executable, "-c", "import time; time.sleep(600)"])
            assert netns_exists(name) and p.poll() is None
            raise RuntimeError("boom")
    assert not netns_exists(name)
    assert p.wait(5) == -signal.SIGKILL


def test_a_terminated_owner_leaves_no_namespace_and_no_process(tmp_path: Path) -> None:
    """The process that made the link is sent SIGTERM: its handler removes the namespace and kills the
    processes it started; a SIGKILLed owner's namespace is swept by the next one that starts."""
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(SUPPORT)!r})
        from netem import EmulatedLink, PROFILES
        link = EmulatedLink(PROFILES["wan"])
        p = link.popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print(link.ns.name, p.pid, flush=True)
        time.sleep(600)
        """)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as owner:
            assert owner.stdout is not None
            name, pid = owner.stdout.readline().split()
            assert netns_exists(name)
            owner.send_signal(sig)
            assert owner.wait(30) == -sig
        if sig == signal.SIGKILL:
            assert netns_exists(name)  # nothing could run in the killed process
            os.kill(int(pid), signal.SIGKILL)
            Netns().close()  # the next namespace made sweeps the stale one
        assert not netns_exists(name)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_cut_drops_live_connections_and_needs_a_proxy() -> None:
    from netem import _connect, _ProbeServer, _recv_exact

    with EmulatedLink(PROFILES["metro"]) as link:
        (port,) = link.free_ports(1)
        server = link.call(lambda: _ProbeServer(port))
        dial = link.route(port, client="follower")
        conn = link.call(lambda: _connect(dial))
        try:
            conn.sendall(b"p")
            assert _recv_exact(conn, 1) == b"p"  # the path works
            link.cut(5.0)
            conn.settimeout(5)
            with pytest.raises((OSError, NetemError)):
                conn.sendall(b"p")
                _recv_exact(conn, 1)  # the connection is gone: reset or closed

            def fresh_connection_is_closed() -> bytes:
                with _connect(dial) as s:
                    s.settimeout(5)
                    return s.recv(1)

            assert link.call(fresh_connection_is_closed) == b""  # new connections refused while down
        finally:
            conn.close()
            server.close()
    with EmulatedLink(PROFILES["lan"]) as link:
        assert link.delay_mode == "none"
        with pytest.raises(NetemError, match="cut\\(\\) needs the proxy"):
            link.cut(0.1)


def test_two_process_mtls_split_through_wan_ends_exactly_as_on_loopback(tmp_path: Path) -> None:
    """Wide&Deep, two processes over mutual TLS: once on plain loopback, once through the WAN profile
    (both peer addresses through the delay line, htb-shaped). The link changes timing only: every
    step's loss and both parties' final checkpoints are equal bit for bit."""
    from split_runs import load_state, make_certs, run_split, same_state, wide_deep_run

    from splitlink.examples import demo

    certs = make_certs(tmp_path / "certs")
    demo.prepare_data(tmp_path, 3000, seed=3, vocab_size=5000)
    spec = wide_deep_run(
        tmp_path, model={"vocab_size": 5000, "emb_dim": 8, "deep_layers": [32, 16]}, batch_size=300, steps=6, compress=True
    )
    plain = run_split(tmp_path / "plain", spec, certs=certs, ckpt_every=6, timeout=300)
    with EmulatedLink(PROFILES["wan"]) as link:
        link.self_check(bulk_bytes=4 << 20)
        wan = run_split(tmp_path / "wan", spec, certs=certs, link=link, ckpt_every=6, timeout=300)
    assert len(plain.losses) == 6 and wan.losses == plain.losses
    # each step crosses the link both ways at least once: two 10 ms one-way delays at the least
    assert wan.median_step_s(skip=1) >= 0.020
    assert wan.wire_bytes["follower->leader"] > 0 and wan.wire_bytes["leader->follower"] > 0
    for role in ("leader", "follower"):
        a, b = load_state(plain.ckpt_dirs[role]), load_state(wan.ckpt_dirs[role])
        assert any(name.endswith("step-0000000006.pt") for name in a), sorted(a)  # the final state is there
        assert same_state(a, b) == [], role


def test_missing_tools_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from netem import NetnsUnavailable, netns_support

    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no ip, tc or nsenter
    assert "needs the tools ip, tc, nsenter on PATH" in (netns_support() or "")
    with pytest.raises(NetnsUnavailable, match="needs the tools ip, tc, nsenter"):
        Netns()
