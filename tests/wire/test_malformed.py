"""Malformed frames raise WireError naming the problem and where; nothing crashes."""

from __future__ import annotations

import pytest
import torch
from wire_cases import grad_scale

from splitlink import WireError, wire


@pytest.fixture(scope="module")
def good() -> bytes:
    return bytes(wire.pack(grad_scale(), sender="leader", kind="backward", step=3, seq=4))


def test_every_truncation_is_rejected(good: bytes) -> None:
    for n in range(len(good)):
        with pytest.raises(WireError):
            wire.unpack(good[:n])


def test_trailing_garbage_is_rejected(good: bytes) -> None:
    with pytest.raises(WireError, match="does not end with its payload"):
        wire.unpack(good + b"\x08\x01")


def test_every_single_byte_flip_is_rejected_or_stays_in_bounds(good: bytes) -> None:
    # Flipping a byte either yields a WireError or a frame whose tensors still lie in the buffer
    # (payload bytes carry no checksum: integrity is the channel's AEAD/TLS job).
    for i in range(len(good)):
        bad = bytearray(good)
        bad[i] ^= 0xFF
        try:
            frame = wire.unpack(bytes(bad))
        except WireError as e:
            assert "byte" in str(e) or "frame" in str(e)
            continue
        for t in frame.flat.values():
            t.sum()


@pytest.mark.parametrize(
    ("frame", "fragment"),
    [
        (b"", "empty frame"),
        (b"\x08\x02\x7a\x00", "wire version 2"),
        (b"\x12\x01a\x7a\x00", "no wire version"),
        (b"\x08\x01\x12\x7fab", "declares 127 bytes but only 2 remain"),
        (b"\x08\x01\x12\x02\xc3\x28\x7a\x00", "not valid UTF-8"),
        (b"\x08\x01", "no payload field"),
        (b"\x08" + b"\xff" * 11, "varint"),
    ],
    ids=["empty", "version", "no-version", "length-past-end", "utf8", "no-payload", "long-varint"],
)
def test_messages_name_the_problem(frame: bytes, fragment: str) -> None:
    with pytest.raises(WireError, match=fragment):
        wire.unpack(frame)


def _frame_with(frame_pb2, **tensor_fields):  # type: ignore[no-untyped-def]
    msg = frame_pb2.Frame(version=1, sender="peer")
    t = msg.tensors.add()
    t.path.append("x")
    for key, value in tensor_fields.items():
        if key == "shape":
            t.shape.extend(value)
        else:
            setattr(t, key, value)
    msg.payload = tensor_fields.pop("payload", b"\0" * 64)
    return msg.SerializeToString()


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"dtype": 1, "shape": [4], "offset": 0, "length": 15}, "declares 15 bytes"),
        ({"dtype": 1, "shape": [32], "offset": 0, "length": 128}, "but the payload has 64"),
        ({"dtype": 1, "shape": [2**40, 2**40], "offset": 0, "length": 0}, "overflows"),
        ({"dtype": 8, "shape": [2**61], "offset": 0, "length": 0}, "overflows"),
        ({"dtype": 1, "shape": [1] * 33, "offset": 0, "length": 4}, "more than 32 dimensions"),
        ({"dtype": 1, "shape": [4], "offset": 2**64 - 64, "length": 16}, "payload"),
        ({"dtype": 1, "shape": [4], "offset": 8, "length": 16}, "not a multiple of 64"),
        ({"shape": [4], "offset": 0, "length": 16}, "no dtype"),
    ],
    ids=["length-vs-shape", "past-payload", "numel-overflow", "bytes-overflow", "ndim", "offset-wrap", "misaligned", "no-dtype"],
)
def test_descriptor_checks(frame_pb2, fields: dict, fragment: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(WireError, match=fragment):
        wire.unpack(_frame_with(frame_pb2, **fields))


def test_unknown_dtype_and_codec_are_named(frame_pb2) -> None:  # type: ignore[no-untyped-def]
    raw = bytearray(_frame_with(frame_pb2, dtype=1, shape=[4], offset=0, length=16))
    # dtype field (tag 0x10) of the tensor: 0x10 0x01 -> 0x10 0x63 (99)
    i = raw.index(b"\x10\x01")
    raw[i + 1] = 99
    with pytest.raises(WireError, match="unknown dtype 99"):
        wire.unpack(bytes(raw))


def test_duplicate_names_and_overlap(frame_pb2) -> None:  # type: ignore[no-untyped-def]
    msg = frame_pb2.Frame(version=1, payload=b"\0" * 64)
    for _ in range(2):
        t = msg.tensors.add(dtype=1, offset=0, length=16)
        t.path.append("x")
        t.shape.append(4)
    with pytest.raises(WireError, match="overlap|repeats the name"):
        wire.unpack(msg.SerializeToString())
    msg.tensors[1].path[0] = "y"
    with pytest.raises(WireError, match="overlap"):
        wire.unpack(msg.SerializeToString())


def test_tensor_and_group_with_one_name(frame_pb2) -> None:  # type: ignore[no-untyped-def]
    msg = frame_pb2.Frame(version=1, payload=b"\0" * 128)
    a = msg.tensors.add(dtype=1, offset=0, length=16)
    a.path.append("loss")
    a.shape.append(4)
    b = msg.tensors.add(dtype=1, offset=64, length=16)
    b.path.extend(["loss", "emb"])
    b.shape.append(4)
    with pytest.raises(WireError, match="both a tensor and a group"):
        wire.unpack(msg.SerializeToString())


def test_non_buffer_input_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="bytes-like"):
        wire.unpack("not bytes")  # type: ignore[arg-type]


def test_absurd_tensor_count_is_bounded() -> None:
    # 2^20 + 1 empty descriptors would exceed the limit; the decoder stops at the limit.
    one = b"\x32\x00"  # field 6, length 0
    frame = b"\x08\x01" + one * (wire._core.wire.MAX_TENSORS + 1) + b"\x7a\x00"
    with pytest.raises(WireError, match="more than"):
        wire.unpack(frame)


def test_empty_descriptor_is_rejected() -> None:
    with pytest.raises(WireError, match="has no name"):
        wire.unpack(b"\x08\x01\x32\x00\x7a\x00")
    assert torch.zeros(1).sum() == 0
