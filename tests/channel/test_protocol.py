"""The transport messages: every one round-trips, truncated or padded bytes are refused with a reason,
and protos/splitlink/v1/transport.proto describes the same service and byte layouts as protocol.py."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from splitlink.channel import protocol
from splitlink.channel.protocol import Ack, Announcement, Hello, ProtocolError, RangeHeader, StreamHeader

PROTO = Path(__file__).resolve().parents[2] / "protos" / "splitlink" / "v1" / "transport.proto"
U64 = st.integers(0, (1 << 64) - 1)
NAME = st.text(min_size=1, max_size=40).filter(lambda s: len(s.encode()) < 1 << 16)


@given(NAME, U64, U64, U64, st.integers(-(1 << 63), (1 << 63) - 1), U64, st.binary(max_size=20))
def test_stream_header_round_trips_and_says_where_the_frame_starts(
    sender: str, inc: int, meant: int, seq: int, step: int, total: int, tail: bytes
) -> None:
    encoded = StreamHeader(sender, inc, meant, seq, step, total).encode()
    decoded, end = StreamHeader.decode(encoded + tail)
    assert end == len(encoded)
    assert decoded == StreamHeader(sender, inc, meant, seq, step & ((1 << 64) - 1), total)


def test_stream_header_layout() -> None:
    encoded = StreamHeader("leader", 1, 2, 3, -1, 5).encode()
    assert encoded == b"SLC2" + struct.pack("<QQQQQH", 1, 2, 3, (1 << 64) - 1, 5, 6) + b"leader"


@given(NAME, U64, U64, U64, st.integers(-(1 << 63), (1 << 63) - 1), st.integers(1, 1 << 40), st.data())
def test_range_header_round_trips(
    sender: str, inc: int, meant: int, seq: int, step: int, total: int, data: st.DataObject
) -> None:
    offset = data.draw(st.integers(0, total - 1))
    length = data.draw(st.integers(1, total - offset))
    encoded = RangeHeader(sender, inc, meant, seq, step, total, offset, length).encode()
    assert RangeHeader.decode(encoded) == RangeHeader(sender, inc, meant, seq, step & ((1 << 64) - 1), total, offset, length)


def test_range_header_layout_and_bounds() -> None:
    assert (
        RangeHeader("ab", 1, 2, 3, -1, 100, 40, 60).encode()
        == b"SLR1" + struct.pack("<QQQQQQQH", 1, 2, 3, (1 << 64) - 1, 100, 40, 60, 2) + b"ab"
    )
    for offset, length, total in ((0, 0, 10), (5, 6, 10), (10, 1, 10), ((1 << 64) - 1, 2, 10), (0, 11, 10)):
        with pytest.raises(ProtocolError, match="outside the|empty"):
            RangeHeader.decode(RangeHeader("ab", 1, 0, 1, 0, total, offset, length).encode())
    with pytest.raises(ProtocolError, match="whole-frame header"):
        RangeHeader.decode(StreamHeader("ab", 1, 0, 1, 0, 10).encode())  # a 1.0 header is not misread as a range
    with pytest.raises(ProtocolError):
        StreamHeader.decode(RangeHeader("ab", 1, 0, 1, 0, 10, 0, 10).encode())  # nor the reverse
    with pytest.raises(ProtocolError, match="name length"):
        RangeHeader.decode(RangeHeader("ab", 1, 0, 1, 0, 10, 0, 10).encode() + b"x")


@given(NAME, U64)
def test_announcement_round_trips(sender: str, inc: int) -> None:
    assert Announcement.decode(Announcement(sender, inc).encode()) == Announcement(sender, inc)


@given(NAME, st.binary(min_size=32, max_size=32))
def test_hello_round_trips(sender: str, key: bytes) -> None:
    assert Hello.decode(Hello(sender, key).encode()) == Hello(sender, key)


@pytest.mark.parametrize("status", [protocol.ACK_OK, protocol.ACK_DUP, protocol.ACK_STALE, protocol.ACK_PART])
def test_ack_round_trips(status: bytes) -> None:
    assert Ack.decode(Ack(status, 12345).encode()) == Ack(status, 12345)


@pytest.mark.parametrize(
    "decode, good",
    [
        (lambda b: StreamHeader.decode(b), StreamHeader("leader", 1, 0, 1, 0, 9).encode()),
        (Announcement.decode, Announcement("leader", 1).encode()),
        (Hello.decode, Hello("leader", bytes(32)).encode()),
        (Ack.decode, Ack(protocol.ACK_OK, 1).encode()),
        (RangeHeader.decode, RangeHeader("leader", 1, 0, 1, 0, 9, 0, 9).encode()),
    ],
    ids=["StreamHeader", "Announcement", "Hello", "Ack", "RangeHeader"],
)
def test_every_truncation_is_refused_with_a_reason(decode, good: bytes) -> None:  # type: ignore[no-untyped-def]
    decode(good)
    for cut in range(len(good)):
        with pytest.raises(ProtocolError) as err:
            decode(good[:cut])
        assert str(err.value)


def test_exact_length_messages_refuse_extra_bytes_and_bad_magic() -> None:
    for decode, good in (
        (Announcement.decode, Announcement("leader", 1).encode()),
        (Hello.decode, Hello("leader", bytes(32)).encode()),
    ):
        with pytest.raises(ProtocolError):
            decode(good + b"x")
    for decode, good in (
        (Announcement.decode, Announcement("leader", 1).encode()),
        (lambda b: StreamHeader.decode(b), StreamHeader("leader", 1, 0, 1, 0, 9).encode()),
    ):
        with pytest.raises(ProtocolError):
            decode(b"SLC1" + good[4:])  # the previous protocol version
    with pytest.raises(ProtocolError, match="not a splitlink acknowledgement"):
        Ack.decode(b"NOPE" + bytes(8))


def test_claimed_party_reads_each_methods_first_message() -> None:
    assert protocol.claimed_party(protocol.SEND, StreamHeader("a", 1, 0, 1, 0, 0).encode()) == "a"
    assert protocol.claimed_party(protocol.SEND_ONE, StreamHeader("b", 1, 0, 1, 0, 3).encode() + b"xyz") == "b"
    assert protocol.claimed_party(protocol.SEND_RANGE, RangeHeader("r", 1, 0, 1, 0, 9, 0, 9).encode()) == "r"
    assert protocol.claimed_party(protocol.SEND_RANGE, StreamHeader("r", 1, 0, 1, 0, 9).encode()) is None
    assert protocol.claimed_party(protocol.ANNOUNCE, Announcement("c", 1).encode()) == "c"
    assert protocol.claimed_party(protocol.HELLO, Hello("d", bytes(32)).encode()) == "d"
    assert protocol.claimed_party(protocol.SEND, b"junk") is None
    with pytest.raises(KeyError, match="not a method of the transport service"):
        protocol.claimed_party("/other.Service/Call", Announcement("c", 1).encode())


def _layouts() -> dict[str, str]:
    """message name -> the struct format on its `// layout:` line in transport.proto."""
    out: dict[str, str] = {}
    layout = None
    for line in PROTO.read_text().splitlines():
        m = re.match(r"// layout: (\S+)", line)
        if m:
            layout = m.group(1)
        m = re.match(r"message (\w+) \{", line)
        if m and layout is not None:
            out[m.group(1)] = layout
            layout = None
    return out


def test_proto_layouts_are_the_ones_protocol_py_writes() -> None:
    layouts = _layouts()
    assert layouts["StreamHeader"] == protocol.STREAM_HEADER.format
    assert layouts["RangeHeader"] == protocol.RANGE_HEADER.format
    assert re.search(rf"\n//   {protocol.RANGE_HEADER.size}\s+name_len\s+sender", PROTO.read_text())
    assert layouts["Announcement"] == protocol.ANNOUNCEMENT.format
    assert layouts["Incarnation"] == protocol.INCARNATION.format
    assert struct.calcsize(layouts["PublicKey"]) == protocol.PUBLIC_KEY_BYTES
    name_len = struct.calcsize(layouts["HelloRequest"])
    assert len(Hello("ab", bytes(32)).encode()) == name_len + 2 + protocol.PUBLIC_KEY_BYTES
    ack = Ack(protocol.ACK_STALE, 7).encode()
    assert ack == struct.pack(layouts["Ack"].format(status=f"{len(protocol.ACK_STALE)}s"), protocol.ACK_STALE, 7)
    # the offsets table of the stream header: the name starts where the fixed part ends
    assert re.search(rf"\n//   {protocol.STREAM_HEADER.size}\s+name_len\s+sender", PROTO.read_text())


def test_proto_service_matches_the_methods_the_channel_serves(tmp_path: Path) -> None:
    """transport.proto compiles, and its service names the same methods, with the same streaming."""
    import importlib.util

    from grpc_tools import protoc  # grpcio-tools, as for the frame.proto tests (tests/conftest.py)

    root = PROTO.parents[2]
    assert protoc.main(["protoc", f"-I{root}", f"--python_out={tmp_path}", str(PROTO)]) == 0
    spec = importlib.util.spec_from_file_location("_splitlink_transport_pb2", tmp_path / "splitlink" / "v1" / "transport_pb2.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    service = module.DESCRIPTOR.services_by_name["Transport"]
    assert service.full_name == protocol.SERVICE
    methods = {f"/{service.full_name}/{m.name}": (m.client_streaming, m.server_streaming) for m in service.methods}
    assert methods == {
        protocol.SEND: (True, False),
        protocol.SEND_ONE: (False, False),
        protocol.SEND_RANGE: (True, False),
        protocol.ANNOUNCE: (False, False),
        protocol.HELLO: (False, False),
    }
