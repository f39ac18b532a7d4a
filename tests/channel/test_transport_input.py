"""Hostile bytes at the transport: whatever reaches the gRPC methods (Send, SendOne, Announce) from the
network is refused with a status naming the problem, never crashes the server, never reaches the
application, and the channel keeps working for honest frames afterwards."""

from __future__ import annotations

import struct

import grpc
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitlink import ServerConfig, VerticalFederatedCommunicator, wire
from splitlink.channel.assembly import MAX_RANGES
from splitlink.channel.protocol import ANNOUNCEMENT as _ANNOUNCE_REQ
from splitlink.channel.protocol import MAGIC as _MAGIC
from splitlink.channel.protocol import RANGE_HEADER as _RANGE
from splitlink.channel.protocol import RANGE_MAGIC as _RANGE_MAGIC
from splitlink.channel.protocol import STREAM_HEADER as _HEADER
from splitlink.util import free_ports

SERVICE = "/splitlink.v1.Transport"


@pytest.fixture(scope="module")
def receiver():  # type: ignore[no-untyped-def]
    lp, fp = free_ports(2)
    comm = VerticalFederatedCommunicator(
        ServerConfig("follower", f"127.0.0.1:{fp}"), ServerConfig("leader", f"127.0.0.1:{lp}"), max_frame_bytes=1 << 20
    ).launch()
    channel = grpc.insecure_channel(f"127.0.0.1:{fp}")
    yield comm, channel, lp
    channel.close()
    comm.shutdown()


def header(
    sender: bytes = b"leader",
    total: int = 0,
    seq: int = 1,
    meant_for: int = 0,
    magic: bytes = _MAGIC,
    name_len: int | None = None,
) -> bytes:
    return _HEADER.pack(magic, 7, meant_for, seq, 0, total, len(sender) if name_len is None else name_len) + sender


def frame(seq: int) -> bytes:
    return bytes(wire.pack({"x": torch.arange(4.0)}, sender="leader", seq=seq))


CASES = {
    "empty": b"",
    "short": b"SLC2\x00",
    "bad magic": header(magic=b"XXXX"),
    "name longer than the message": header(name_len=60000),
    "unknown sender": header(sender=b"mallory"),
    "frame above max_frame_bytes": header(total=2 << 20),
    "declared length longer than the data": header(total=1000) + frame(1)[:100],
    "declared length shorter than the data": header(total=10) + frame(1),
    "garbage frame": header(total=64) + bytes(range(64)),
    "frame of another seq": header(total=len(frame(2)), seq=1) + frame(2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_send_one_is_refused_with_a_reason(receiver, case: str) -> None:  # type: ignore[no-untyped-def]
    comm, channel, _ = receiver
    with pytest.raises(grpc.RpcError) as err:
        channel.unary_unary(f"{SERVICE}/SendOne")(CASES[case], timeout=10)
    assert err.value.code() in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ), err.value
    assert err.value.details()  # a reason, not an empty status
    with pytest.raises(TimeoutError):
        comm.receive("leader", timeout=0.05)  # nothing reached the application


def test_malformed_streams_are_refused_and_honest_frames_still_flow(receiver) -> None:  # type: ignore[no-untyped-def]
    comm, channel, _ = receiver
    send = channel.stream_unary(f"{SERVICE}/Send")
    for chunks in (
        [],
        [b"junk"],
        [header(total=50), b"x" * 30],
        [header(total=10), b"y" * 20],
        [header(total=len(frame(3)), seq=3), frame(3)[:40], b"\x00" * (len(frame(3)) - 40)],
    ):
        with pytest.raises(grpc.RpcError) as err:
            send(iter(chunks), timeout=10)
        assert err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED)
    good = frame(9)
    ack = bytes(send(iter([header(total=len(good), seq=9), good]), timeout=10))
    assert ack.startswith(b"OK")
    assert torch.equal(comm.receive("leader", timeout=5)["x"], torch.arange(4.0))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_random_bytes_to_every_method_never_reach_the_application(receiver, data: bytes) -> None:  # type: ignore[no-untyped-def]
    comm, channel, _ = receiver
    for method, payload in (
        ("SendOne", data),
        ("SendOne", header(total=len(data)) + data),
        ("Announce", data),
        ("Announce", _ANNOUNCE_REQ.pack(_MAGIC, 5, 200) + data[:10]),
    ):
        try:
            channel.unary_unary(f"{SERVICE}/{method}")(payload, timeout=10)
        except grpc.RpcError as e:
            assert e.code() in (
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            ), e
    with pytest.raises(TimeoutError):
        comm.receive("leader", timeout=0.01)


def test_announcement_for_an_unknown_party_is_refused(receiver) -> None:  # type: ignore[no-untyped-def]
    _, channel, _ = receiver
    name = b"mallory"
    with pytest.raises(grpc.RpcError) as err:
        channel.unary_unary(f"{SERVICE}/Announce")(_ANNOUNCE_REQ.pack(_MAGIC, 1, len(name)) + name, timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "mallory" in err.value.details()
    assert struct.calcsize("<4sQH") == _ANNOUNCE_REQ.size


def test_a_peer_answering_in_another_protocol_is_a_clear_error() -> None:
    """The sender's side of hostile input: an answer that is not a splitlink acknowledgement (an older
    version, another service on the port) is an error naming the peer, not a crash on the bytes."""
    from concurrent import futures

    from splitlink import PeerUnavailableError

    lp, fp = free_ports(2)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handlers = {
        "SendOne": grpc.unary_unary_rpc_method_handler(lambda req, ctx: b"OK"),
        "Send": grpc.stream_unary_rpc_method_handler(lambda it, ctx: [None for _ in it] and b""),
        "Announce": grpc.unary_unary_rpc_method_handler(lambda req, ctx: b""),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("splitlink.v1.Transport", handlers),))
    server.add_insecure_port(f"127.0.0.1:{fp}")
    server.start()
    leader = VerticalFederatedCommunicator(
        ServerConfig("leader", f"127.0.0.1:{lp}"), ServerConfig("follower", f"127.0.0.1:{fp}"), chunk_size=1 << 16
    ).launch()
    try:
        for tensors in ({"x": torch.ones(4)}, {"x": torch.ones(1 << 16)}):  # SendOne, then a streamed frame
            with pytest.raises(PeerUnavailableError, match="'follower' at 127.0.0.1:.* not a splitlink acknowledgement"):
                leader.send_tensors("follower", tensors)
    finally:
        leader.shutdown()
        server.stop(0)


# ---- SendRange: a frame in byte ranges (transport 1.1) --------------------------------------------


def rheader(seq: int, total: int, offset: int, length: int, sender: bytes = b"leader", incarnation: int = 7) -> bytes:
    """A range header of the fixture's sender process (incarnation 7, as ``header``)."""
    return _RANGE.pack(_RANGE_MAGIC, incarnation, 0, seq, 0, total, offset, length, len(sender)) + sender


def send_range(channel: grpc.Channel, chunks: list[bytes]) -> bytes:
    return bytes(channel.stream_unary(f"{SERVICE}/SendRange")(iter(chunks), timeout=10))


def big_frame(seq: int, n: int = 5000) -> tuple[bytes, torch.Tensor]:
    x = torch.arange(float(n))
    return bytes(wire.pack({"x": x}, sender="leader", seq=seq)), x


def test_ranges_assemble_in_any_order_and_a_repeated_range_is_written_once(receiver) -> None:  # type: ignore[no-untyped-def]
    comm, channel, _ = receiver
    f, x = big_frame(100)
    a, b = 7000, 13000
    # out of order: the last range first, the middle one last
    assert send_range(channel, [rheader(100, len(f), b, len(f) - b), f[b:]]).startswith(b"PART")
    # the same range again (a retry): taken once, the frame is not completed by double counting
    assert send_range(channel, [rheader(100, len(f), b, len(f) - b), f[b:]]).startswith(b"PART")
    assert send_range(channel, [rheader(100, len(f), 0, a), f[:a]]).startswith(b"PART")
    with pytest.raises(TimeoutError):
        comm.receive("leader", timeout=0.05)  # incomplete: nothing delivered
    assert send_range(channel, [rheader(100, len(f), a, b - a), f[a : a + 2000], f[a + 2000 : b]]).startswith(b"OK")
    assert torch.equal(comm.receive("leader", timeout=5)["x"], x)
    # a range of a frame already delivered: DUP, nothing delivered again
    assert send_range(channel, [rheader(100, len(f), 0, a), f[:a]]).startswith(b"DUP")
    with pytest.raises(TimeoutError):
        comm.receive("leader", timeout=0.05)


def _range_cases(seq: int, f: bytes) -> dict[str, tuple[list[list[bytes]], grpc.StatusCode]]:
    """name -> (calls before the bad one, all answered PART; the bad call), expected status."""
    n = len(f)
    return {
        "empty stream": ([[]], grpc.StatusCode.INVALID_ARGUMENT),
        "whole-frame header on SendRange": ([[header(total=n, seq=seq), f]], grpc.StatusCode.INVALID_ARGUMENT),
        "range past the frame's end": ([[rheader(seq, n, n - 10, 20), b"x" * 20]], grpc.StatusCode.INVALID_ARGUMENT),
        "offset near 2**64": ([[rheader(seq, n, (1 << 64) - 4, 8), b"x" * 8]], grpc.StatusCode.INVALID_ARGUMENT),
        "empty range": ([[rheader(seq, n, 0, 0)]], grpc.StatusCode.INVALID_ARGUMENT),
        "frame above max_frame_bytes": ([[rheader(seq, 2 << 20, 0, 10), b"x" * 10]], grpc.StatusCode.RESOURCE_EXHAUSTED),
        "unknown sender": ([[rheader(seq, n, 0, 10, sender=b"mallory"), b"x" * 10]], grpc.StatusCode.PERMISSION_DENIED),
        "range longer than declared": ([[rheader(seq, n, 0, 100), f[:100], f[100:101]]], grpc.StatusCode.INVALID_ARGUMENT),
        "range shorter than declared": ([[rheader(seq, n, 0, 100), f[:99]]], grpc.StatusCode.INVALID_ARGUMENT),
        "overlapping ranges": (
            [[rheader(seq, n, 0, 100), f[:100]], [rheader(seq, n, 50, 100), f[50:150]]],
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "ranges declaring different frame sizes": (
            [[rheader(seq, n, 0, 100), f[:100]], [rheader(seq, n + 1, 100, 100), f[100:200]]],
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "too many ranges": (
            [[rheader(seq, n, i, 1), f[i : i + 1]] for i in range(MAX_RANGES)]
            + [[rheader(seq, n, MAX_RANGES, 1), f[MAX_RANGES : MAX_RANGES + 1]]],
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ),
        "assembled bytes are not a frame": (
            [[rheader(seq, n, 0, n // 2), bytes(n // 2)], [rheader(seq, n, n // 2, n - n // 2), bytes(n - n // 2)]],
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "assembled frame of another seq": (
            [
                [rheader(seq, n, 0, n // 2), big_frame(seq + 1)[0][: n // 2]],
                [rheader(seq, n, n // 2, n - n // 2), big_frame(seq + 1)[0][n // 2 :]],
            ],
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    }


def test_malicious_ranges_are_refused_and_never_reach_the_application(receiver) -> None:  # type: ignore[no-untyped-def]
    comm, channel, _ = receiver
    names = list(_range_cases(0, big_frame(0)[0]))
    for i, name in enumerate(names):
        seq = 200 + i  # a fresh frame per case (a newer seq abandons the previous case's partial frame)
        f = big_frame(seq)[0]
        calls, code = _range_cases(seq, f)[name]
        for chunks in calls[:-1]:
            assert send_range(channel, chunks).startswith(b"PART"), name
        with pytest.raises(grpc.RpcError) as err:
            send_range(channel, calls[-1])
        assert err.value.code() == code, (name, err.value)
        assert err.value.details(), name
        with pytest.raises(TimeoutError):
            comm.receive("leader", timeout=0.01)
    # the channel still takes honest frames, whole and in ranges
    f, x = big_frame(300)
    assert send_range(channel, [rheader(300, len(f), 0, 4096), f[:4096]]).startswith(b"PART")
    assert send_range(channel, [rheader(300, len(f), 4096, len(f) - 4096), f[4096:]]).startswith(b"OK")
    assert torch.equal(comm.receive("leader", timeout=5)["x"], x)


def test_an_older_range_after_a_full_window_of_newer_frames_is_refused(receiver) -> None:  # type: ignore[no-untyped-def]
    """A sender keeps at most MAX_ASSEMBLING frames in assembly (its window): an older frame's range may
    still come after newer ones (the window's calls race), but not once that many newer ones are open."""
    from splitlink.channel.assembly import MAX_ASSEMBLING

    comm, channel, _ = receiver
    f = big_frame(401)[0]
    for seq in range(402, 402 + MAX_ASSEMBLING - 1):
        assert send_range(channel, [rheader(seq, len(f), 0, 100), f[:100]]).startswith(b"PART")
    assert send_range(channel, [rheader(401, len(f), 0, 100), f[:100]]).startswith(b"PART")  # older, in the window
    with pytest.raises(grpc.RpcError) as err:  # seq 400 is older than a full window of frames in assembly
        send_range(channel, [rheader(400, len(f), 0, 100), f[:100]])
    assert err.value.code() == grpc.StatusCode.ABORTED and "superseded" in err.value.details()
    with pytest.raises(TimeoutError):
        comm.receive("leader", timeout=0.01)


def test_a_peer_without_ranges_is_a_clear_error() -> None:
    """A 1.1 sender and a 1.0 receiver (no SendRange): the sender says to upgrade or use streams=1."""
    from concurrent import futures

    from splitlink import PeerUnavailableError
    from splitlink.channel.protocol import Ack

    lp, fp = free_ports(2)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handlers = {
        "SendOne": grpc.unary_unary_rpc_method_handler(lambda req, ctx: Ack(b"OK", 5).encode()),
        "Send": grpc.stream_unary_rpc_method_handler(lambda it, ctx: [None for _ in it] and Ack(b"OK", 5).encode()),
        "Announce": grpc.unary_unary_rpc_method_handler(lambda req, ctx: struct.pack("<Q", 5)),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("splitlink.v1.Transport", handlers),))
    server.add_insecure_port(f"127.0.0.1:{fp}")
    server.start()
    leader = VerticalFederatedCommunicator(
        ServerConfig("leader", f"127.0.0.1:{lp}"),
        ServerConfig("follower", f"127.0.0.1:{fp}"),
        chunk_size=1 << 16,
        parallel_threshold=1 << 17,
        streams=2,
    ).launch()
    try:
        leader.send_tensors("follower", {"x": torch.ones(1 << 10)})  # small: one message, as before
        with pytest.raises(PeerUnavailableError, match="older splitlink.*streams=1"):
            leader.send_tensors("follower", {"x": torch.ones(1 << 16)})
    finally:
        leader.shutdown()
        server.stop(0)
