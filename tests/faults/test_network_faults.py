"""Network faults between two communicators on loopback: corrupted bytes, cut connections, delays, a
sender killed mid-send.

Each scenario checks that every frame arrives exactly once, in order, bit for bit, or that the
sender fails with a clear error; never that a corrupted tensor is delivered.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from faultproxy import FaultProxy

from splitlink import PeerRestartedError, ServerConfig, SSLConfig, VerticalFederatedCommunicator
from splitlink.certs import make_dev_certs
from splitlink.util import free_ports


def free_port() -> int:
    return free_ports(1)[0]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    make_dev_certs(d, ["leader", "follower"], password="pw")
    return d


def ssl_for(d: Path, party: str) -> SSLConfig:
    return SSLConfig(
        server_cert_path=str(d / f"{party}.server.p12"),
        client_cert_path=str(d / f"{party}.client.p12"),
        server_password="pw",
        client_password="pw",
        ca_cert_path=str(d / "ca.crt"),
    )


def parties(certs: Path | None, seal: bool) -> tuple[VerticalFederatedCommunicator, VerticalFederatedCommunicator, FaultProxy]:
    """leader listens on its port; the follower reaches it only through the fault proxy."""
    lp, fp = free_port(), free_port()
    proxy = FaultProxy(lp)
    tls = certs is not None
    leader = VerticalFederatedCommunicator(
        ServerConfig("leader", f"127.0.0.1:{lp}"),
        ServerConfig("follower", f"127.0.0.1:{fp}"),
        enable_ssl=tls,
        ssl_config=ssl_for(certs, "leader") if tls else None,
        seal=seal,
        retry_deadline=20,
    )
    follower = VerticalFederatedCommunicator(
        ServerConfig("follower", f"127.0.0.1:{fp}"),
        ServerConfig("leader", proxy.address),
        enable_ssl=tls,
        ssl_config=ssl_for(certs, "follower") if tls else None,
        seal=seal,
        retry_deadline=20,
        chunk_size=256 << 10,
    )
    return leader.launch(), follower.launch(), proxy


def frames(n: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [{"emb": torch.randn(256, 1024, generator=g), "step": torch.tensor([i])} for i in range(n)]


def receive_all(leader: VerticalFederatedCommunicator, n: int) -> list[dict[str, torch.Tensor]]:
    return [leader.receive("follower", timeout=60) for _ in range(n)]


def assert_exact(got: list[dict], sent: list[dict], leader: VerticalFederatedCommunicator) -> None:
    assert [int(f["step"]) for f in got] == [int(f["step"]) for f in sent]  # once each, in order
    for g, s in zip(got, sent):
        assert torch.equal(g["emb"], s["emb"])  # bit for bit
    with pytest.raises(TimeoutError):
        leader.receive("follower", timeout=0.3)  # and nothing more


@pytest.mark.parametrize("mode", ["tls", "sealed-over-plaintext"])
def test_corrupted_bytes_in_flight_are_caught_and_the_frame_resent(certs: Path, mode: str) -> None:
    leader, follower, proxy = parties(certs if mode == "tls" else None, seal=mode != "tls")
    try:
        sent = frames(4)
        follower.send_tensors("leader", sent[0])
        base = proxy.forwarded
        proxy.corrupt_after = base + 600_000  # inside the second frame's tensor bytes
        for f in sent[1:]:
            follower.send_tensors("leader", f)
        assert proxy.corrupted == 1
        assert_exact(receive_all(leader, 4), sent, leader)
        # Caught by TLS's record MAC (the connection fails and the frame is re-sent) or, sealed, by
        # AES-GCM (the receiver refuses the frame, keys are agreed again and the frame re-sealed).
        assert proxy.connections >= 2 or mode != "tls"
    finally:
        follower.shutdown()
        leader.shutdown()
        proxy.close()


def test_cut_connection_is_restored_and_nothing_is_lost_or_doubled(certs: Path) -> None:
    leader, follower, proxy = parties(certs, seal=False)
    try:
        sent = frames(12)
        got: list[dict] = []
        t = threading.Thread(target=lambda: got.extend(receive_all(leader, len(sent))))
        t.start()
        for i, f in enumerate(sent):
            if i in (3, 8):
                proxy.cut(1.0)  # every connection dropped, new ones refused for a second
            follower.send_tensors("leader", f)
        t.join(60)
        assert proxy.connections >= 3
        assert_exact(got, sent, leader)
    finally:
        follower.shutdown()
        leader.shutdown()
        proxy.close()


def test_delayed_frames_arrive_in_order(certs: Path) -> None:
    leader, follower, proxy = parties(certs, seal=True)
    try:
        proxy.delay_s = 0.02
        sent = frames(3)
        t0 = time.monotonic()
        for f in sent:
            follower.send_tensors("leader", f)
        assert time.monotonic() - t0 > 0.2  # the delay was real
        assert_exact(receive_all(leader, 3), sent, leader)
    finally:
        follower.shutdown()
        leader.shutdown()
        proxy.close()


def test_a_peer_that_stays_unreachable_fails_with_a_clear_error(certs: Path) -> None:
    from splitlink import PeerUnavailableError

    leader, follower, proxy = parties(certs, seal=False)
    follower.retry_deadline = 2
    try:
        proxy.cut(30)
        with pytest.raises(PeerUnavailableError, match=r"'leader' at 127\.0\.0\.1:\d+ unreachable for 2 s"):
            follower.send_tensors("leader", frames(1)[0])
    finally:
        follower.shutdown()
        leader.shutdown()
        proxy.close()


SENDER = """
import sys, torch
from splitlink import ServerConfig, VerticalFederatedCommunicator
me, leader, mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
comm = VerticalFederatedCommunicator(ServerConfig("follower", me), ServerConfig("leader", leader), retry_deadline=20,
                                     chunk_size=256 << 10).launch()
comm.send_tensors("leader", {"x": torch.arange(mib << 18, dtype=torch.float32)})
comm.shutdown()
"""


def test_sender_killed_mid_send_delivers_nothing_partial_and_its_restart_is_announced(tmp_path: Path) -> None:
    """The follower process is killed with SIGKILL while a 64 MiB frame is half-way through the network:
    the leader never sees a partial frame; the restarted follower is announced (PeerRestartedError,
    once) and its frame arrives whole."""
    script = tmp_path / "sender.py"
    script.write_text(SENDER)
    lp, fp = free_port(), free_port()
    proxy = FaultProxy(lp)
    leader = VerticalFederatedCommunicator(
        ServerConfig("leader", f"127.0.0.1:{lp}"), ServerConfig("follower", f"127.0.0.1:{fp}")
    ).launch()
    try:
        proxy.delay_s = 0.005  # ~64 KiB per 5 ms: the 64 MiB frame takes seconds to cross
        victim = subprocess.Popen([sys.executable, str(script), f"127.0.0.1:{fp}", proxy.address, "64"])
        deadline = time.monotonic() + 60
        while proxy.forwarded < 8 << 20:
            assert time.monotonic() < deadline and victim.poll() is None, "the frame did not start crossing"
            time.sleep(0.01)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(10) == -signal.SIGKILL
        assert proxy.forwarded < 64 << 20  # killed mid-send
        proxy.delay_s = 0.0
        with pytest.raises(TimeoutError):
            leader.receive("follower", timeout=1.0)  # nothing partial is delivered
        restarted = subprocess.Popen([sys.executable, str(script), f"127.0.0.1:{fp}", proxy.address, "1"])
        with pytest.raises(PeerRestartedError, match="'follower' restarted"):
            leader.receive("follower", timeout=60)
        got = leader.receive("follower", timeout=60)["x"]
        assert torch.equal(got, torch.arange(1 << 18, dtype=torch.float32))
        assert restarted.wait(60) == 0
    finally:
        leader.shutdown()
        proxy.close()


# ---- large frames in parallel byte ranges (SendRange) through the same faults ---------------------


def parallel_parties(
    certs: Path, connections: bool
) -> tuple[VerticalFederatedCommunicator, VerticalFederatedCommunicator, FaultProxy]:
    """As ``parties``, but the follower sends its 1 MiB frames as 4 parallel ranges of 256 KiB chunks."""
    lp, fp = free_port(), free_port()
    proxy = FaultProxy(lp)
    leader = VerticalFederatedCommunicator(
        ServerConfig("leader", f"127.0.0.1:{lp}"),
        ServerConfig("follower", f"127.0.0.1:{fp}"),
        enable_ssl=True,
        ssl_config=ssl_for(certs, "leader"),
        retry_deadline=20,
    )
    follower = VerticalFederatedCommunicator(
        ServerConfig("follower", f"127.0.0.1:{fp}"),
        ServerConfig("leader", proxy.address),
        enable_ssl=True,
        ssl_config=ssl_for(certs, "follower"),
        retry_deadline=20,
        chunk_size=256 << 10,
        parallel_threshold=512 << 10,
        streams=4,
        connections=connections,
    )
    return leader.launch(), follower.launch(), proxy


@pytest.mark.parametrize("connections", [True, False], ids=["connection-per-stream", "one-connection"])
def test_parallel_ranges_survive_cut_connections_exactly_once_in_order(certs: Path, connections: bool) -> None:
    leader, follower, proxy = parallel_parties(certs, connections)
    try:
        sent = frames(10)
        got: list[dict] = []
        t = threading.Thread(target=lambda: got.extend(receive_all(leader, len(sent))))
        t.start()
        works = []
        for i, f in enumerate(sent):
            if i in (3, 7):
                proxy.cut(0.5)  # every connection dropped mid-frame, new ones refused for half a second
            works.append(follower.isend("leader", f))
        for w in works:
            w.wait(60)
        t.join(60)
        assert proxy.connections >= 3
        assert_exact(got, sent, leader)
    finally:
        follower.shutdown()
        leader.shutdown()
        proxy.close()


def test_parallel_ranges_corrupted_in_flight_are_resent(certs: Path) -> None:
    leader, follower, proxy = parallel_parties(certs, connections=True)
    try:
        sent = frames(4)
        follower.send_tensors("leader", sent[0])
        proxy.corrupt_after = proxy.forwarded + 600_000  # inside the second frame's ranges
        for f in sent[1:]:
            follower.send_tensors("leader", f)
        assert proxy.corrupted == 1
        assert_exact(receive_all(leader, 4), sent, leader)
    finally:
        follower.shutdown()
        leader.shutdown()
        proxy.close()
