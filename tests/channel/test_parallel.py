"""Large frames in parallel byte ranges, asynchronous sends and posted receives.

Frames above ``parallel_threshold`` travel as ``streams`` parallel ``SendRange`` calls and are
assembled in one buffer; ``isend``/``irecv`` return ``Work`` handles (torch.distributed style) with
bounded in-flight frames per peer. Both communicators (gRPC and in-process) have the same API.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from splitlink import InProcessCommunicator, PeerUnavailableError, ServerConfig, SSLConfig, VerticalFederatedCommunicator, wire
from splitlink.certs import make_dev_certs
from splitlink.channel import FrameNotSentError, Work
from splitlink.util import free_ports

CHUNK = 64 << 10  # small chunks and threshold: frames of a few hundred KiB already go in ranges
THRESHOLD = 2 * CHUNK


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    make_dev_certs(out, ["leader", "follower"])
    return out


def ssl_for(d: Path, party: str) -> SSLConfig:
    return SSLConfig(
        server_cert_path=str(d / f"{party}.server.crt"),
        server_key_path=str(d / f"{party}.server.key"),
        client_cert_path=str(d / f"{party}.client.crt"),
        client_key_path=str(d / f"{party}.client.key"),
        ca_cert_path=str(d / "ca.crt"),
    )


class CountingCommunicator(VerticalFederatedCommunicator):
    """Counts the SendRange calls its server handles (to see that ranges were really used)."""

    def __init__(self, *a, **kw) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*a, **kw)
        self.range_calls = 0

    def _handle_range(self, request_iterator, context):  # type: ignore[no-untyped-def]
        self.range_calls += 1
        return super()._handle_range(request_iterator, context)


def pair(certs: Path | None = None, **kw):  # type: ignore[no-untyped-def]
    lp, fp = free_ports(2)
    lc, fc = ServerConfig("leader", f"127.0.0.1:{lp}"), ServerConfig("follower", f"127.0.0.1:{fp}")
    opts = {"chunk_size": CHUNK, "parallel_threshold": THRESHOLD, "streams": 3, **kw}
    leader = CountingCommunicator(lc, fc, enable_ssl=certs is not None, ssl_config=certs and ssl_for(certs, "leader"), **opts)
    follower = CountingCommunicator(fc, lc, enable_ssl=certs is not None, ssl_config=certs and ssl_for(certs, "follower"), **opts)
    return leader.launch(), follower.launch()


# bytes of tensor data around the threshold and the chunk size (frames add a header of ~60 bytes),
# odd sizes, one byte
SIZES = [
    1,
    3,
    THRESHOLD - 200,
    THRESHOLD - 61,
    THRESHOLD,
    THRESHOLD + 1,
    THRESHOLD + CHUNK - 1,
    3 * CHUNK + 7,
    5 * CHUNK,
    11 * CHUNK + 12345,
]


@pytest.mark.parametrize("mode", ["plaintext, one connection", "tls, a connection per stream", "sealed"])
def test_frames_round_trip_bit_exact_over_parallel_ranges(certs: Path, mode: str) -> None:
    kw = {"connections": mode.startswith("tls")}
    leader, follower = pair(certs if mode.startswith("tls") else None, seal=mode == "sealed", **kw)
    try:
        g = torch.Generator().manual_seed(1)
        sent = [torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g) for n in SIZES]
        for i, x in enumerate(sent):
            leader.send_tensors("follower", {"x": x, "i": torch.tensor([i])})
        got = [follower.receive("leader", timeout=30) for _ in sent]
        assert [int(f["i"]) for f in got] == list(range(len(sent)))
        for f, x in zip(got, sent):
            assert torch.equal(f["x"], x)
        # frames above the threshold went as min(3 streams, their chunk count) ranges, the others whole
        sizes = [wire.packed_size({"x": x, "i": torch.tensor([i])}, sender="leader", seq=1) for i, x in enumerate(sent)]
        assert any(n == THRESHOLD + 1 for n in sizes) or any(n <= THRESHOLD < m for n, m in zip(sizes, sizes[1:]))
        assert follower.range_calls == sum(min(3, -(-n // CHUNK)) for n in sizes if n > THRESHOLD) > 0
        # small frames did not: a one-byte frame cannot be split, and none of them shows up as ranges
        leader.send_tensors("follower", {"x": torch.ones(1, dtype=torch.uint8)})
        calls = follower.range_calls
        assert torch.equal(follower.receive("leader", timeout=10)["x"], torch.ones(1, dtype=torch.uint8))
        assert follower.range_calls == calls
    finally:
        leader.shutdown()
        follower.shutdown()


def test_streams_1_sends_large_frames_as_one_stream() -> None:
    leader, follower = pair(streams=1)
    try:
        x = torch.randn(4 * CHUNK)
        leader.send_tensors("follower", {"x": x})
        assert torch.equal(follower.receive("leader", timeout=10)["x"], x)
        assert follower.range_calls == 0
    finally:
        leader.shutdown()
        follower.shutdown()


def test_isend_is_ordered_and_irecv_posted_ahead_takes_frames_in_order() -> None:
    leader, follower = pair(max_inflight=3)
    try:
        posted = [follower.irecv("leader", timeout=30) for _ in range(6)]
        assert all(isinstance(w, Work) for w in posted)
        works = [
            leader.isend("follower", {"x": torch.full((CHUNK if i % 2 else 3 * CHUNK,), float(i))}, step=i) for i in range(6)
        ]
        for w in works:
            assert w.wait(30) is None and w.is_completed() and w.exception() is None
        assert [float(w.wait(30)["x"][0]) for w in posted] == [float(i) for i in range(6)]
        # a blocking receive after posted ones takes the next frame; send_tensors after isends keeps order
        leader.isend("follower", {"x": torch.tensor([6.0])})
        leader.send_tensors("follower", {"x": torch.tensor([7.0])})
        w6 = follower.irecv("leader", timeout=30)
        assert float(follower.receive("leader", timeout=30)["x"][0]) == 7.0  # after the posted receive
        assert float(w6.wait(5)["x"][0]) == 6.0
        leader.flush(30)
    finally:
        leader.shutdown()
        follower.shutdown()


def test_irecv_then_receive_keeps_the_order() -> None:
    leader, follower = pair()
    try:
        first = follower.irecv("leader", timeout=30)
        for i in range(2):
            leader.send_tensors("follower", {"x": torch.tensor([float(i)])})
        assert float(follower.receive("leader", timeout=30)["x"][0]) == 1.0  # the posted receive took frame 0
        assert float(first.wait(5)["x"][0]) == 0.0
    finally:
        leader.shutdown()
        follower.shutdown()


def test_isend_blocks_beyond_max_inflight_until_the_peer_takes_frames() -> None:
    """Back-pressure: the receiver's queue holds one frame; with max_inflight=2 the third isend blocks
    until the application receives."""
    lp, fp = free_ports(2)
    lc, fc = ServerConfig("leader", f"127.0.0.1:{lp}"), ServerConfig("follower", f"127.0.0.1:{fp}")
    leader = VerticalFederatedCommunicator(
        lc, fc, max_inflight=2, chunk_size=CHUNK, parallel_threshold=THRESHOLD, streams=2
    ).launch()
    follower = VerticalFederatedCommunicator(fc, lc, max_queue_frames=1, chunk_size=CHUNK).launch()
    try:
        frames = [{"x": torch.full((3 * CHUNK,), float(i))} for i in range(4)]
        w0 = leader.isend("follower", frames[0])
        w0.wait(30)  # in the follower's queue (now full)
        w1 = leader.isend("follower", frames[1])  # on the wire, held by the receiver's back-pressure
        w2 = leader.isend("follower", frames[2])  # queued: 2 in flight
        returned = threading.Event()
        third: list[Work] = []
        t = threading.Thread(target=lambda: (third.append(leader.isend("follower", frames[3])), returned.set()))
        t.start()
        assert not returned.wait(1.0), "isend returned while max_inflight frames were pending"
        assert not w1.is_completed() and not w2.is_completed()
        got = [float(follower.receive("leader", timeout=30)["x"][0]) for _ in range(4)]
        assert returned.wait(30)
        t.join(30)
        for w in (w1, w2, third[0]):
            w.wait(30)
        assert got == [0.0, 1.0, 2.0, 3.0]
    finally:
        leader.shutdown()
        follower.shutdown()


def test_isend_errors_surface_on_wait_and_on_the_next_send() -> None:
    lp, fp = free_ports(2)  # nobody listens at fp
    leader = VerticalFederatedCommunicator(
        ServerConfig("leader", f"127.0.0.1:{lp}"), ServerConfig("follower", f"127.0.0.1:{fp}"), retry_deadline=0.5, max_inflight=4
    ).launch()
    try:
        first = leader.isend("follower", {"x": torch.ones(3)})
        later = leader.isend("follower", {"x": torch.ones(3)})
        with pytest.raises(PeerUnavailableError, match="'follower' at 127.0.0.1:.* unreachable"):
            first.wait(30)
        with pytest.raises(FrameNotSentError, match="earlier frame to 'follower' failed"):
            later.wait(30)  # not sent: the peer would have seen a gap
        # nobody waited for this one: the next send raises its error
        unseen = leader.isend("follower", {"x": torch.ones(3)})
        while not unseen.is_completed():
            time.sleep(0.01)
        with pytest.raises(PeerUnavailableError):
            leader.send_tensors("follower", {"x": torch.ones(3)})
        # flush raises an error nobody saw
        leader.isend("follower", {"x": torch.ones(3)})
        with pytest.raises(PeerUnavailableError):
            leader.flush(30)
        leader.flush(30)  # seen: nothing more to raise
    finally:
        leader.shutdown()


def test_in_process_communicator_has_the_same_async_api() -> None:
    lc, fc = ServerConfig("leader", "127.0.0.1:1"), ServerConfig("follower", "127.0.0.1:2")
    for through_codecs in (False, True):
        hub: dict = {}
        leader = InProcessCommunicator(lc, fc, hub=hub, through_codecs=through_codecs)
        follower = InProcessCommunicator(fc, lc, hub=hub, through_codecs=through_codecs)
        posted = [follower.irecv("leader", timeout=10) for _ in range(3)]
        works = [leader.isend("follower", {"x": torch.tensor([float(i)])}) for i in range(3)]
        for w in works:
            assert w.wait(10) is None and w.is_completed()
        leader.flush()
        assert [float(w.wait(10)["x"][0]) for w in posted] == [0.0, 1.0, 2.0]
        leader.send_tensors("follower", {"x": torch.tensor([3.0])}, kind="grad")
        assert follower.irecv("leader", timeout=10, kind="grad").wait(10)["x"].tolist() == [3.0]
        with pytest.raises(ValueError, match="unknown peer"):
            leader.isend("nobody", {"x": torch.ones(1)})
        with pytest.raises(ValueError, match="expected a 'grad' frame"):
            leader.send_tensors("follower", {"x": torch.ones(1)})
            follower.irecv("leader", timeout=10, kind="grad").wait(10)
        leader.shutdown()
        follower.shutdown()


def test_bad_parallel_settings_are_refused_with_the_fix() -> None:
    lc, fc = ServerConfig("leader", "127.0.0.1:1"), ServerConfig("follower", "127.0.0.1:2")
    with pytest.raises(ValueError, match="streams must be 1..64"):
        VerticalFederatedCommunicator(lc, fc, streams=0)
    with pytest.raises(ValueError, match="parallel_threshold .* must be >= chunk_size"):
        VerticalFederatedCommunicator(lc, fc, parallel_threshold=1 << 20, chunk_size=4 << 20)
    with pytest.raises(ValueError, match="max_inflight must be >= 1"):
        VerticalFederatedCommunicator(lc, fc, max_inflight=0)
