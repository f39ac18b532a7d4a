"""Malformed frames raise WireError naming the problem and where; nothing crashes."""

from __future__ import annotations

import re

import numpy as np
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
        wire.unpack(good + b"\xa0\x06\x01")  # an unknown field 100 after the payload
    # A second version field after the payload is a repeated field, refused where it starts.
    with pytest.raises(WireError, match=f"repeats field 'version' \\(1\\) at byte {len(good)}; it first appeared at byte 0"):
        wire.unpack(good + b"\x08\x01")


def test_every_bit_flip_is_rejected_or_decodes_inside_the_buffer(good: bytes) -> None:
    # Plain frames carry no checksum (integrity is the channel's AEAD/TLS job), so a flipped bit may
    # decode; then every descriptor must lie inside the frame and every uncompressed tensor must
    # hold exactly the frame's bytes at its offset, viewing the buffer itself.
    decoded = 0
    for i in range(len(good)):
        for bit in range(8):
            bad = bytearray(good)
            bad[i] ^= 1 << bit
            try:
                *_, descs = wire._core.wire.decode_header(bad)
            except WireError as e:
                assert re.search(r"byte \d+|frame", str(e)), str(e)
                continue
            decoded += 1
            frame = wire.unpack(bad)
            lo = np.frombuffer(bad, dtype=np.uint8).ctypes.data
            for path, _code, _shape, offset, length, spec in descs:
                assert 0 <= offset and offset + length <= len(bad), (i, bit, path, offset, length)
                t = frame.flat[path]
                if spec[0] == 0 and length:
                    raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                    assert raw == bytes(bad[offset : offset + length]), (i, bit, path)
                    if t.data_ptr() % t.element_size() == 0 and (lo + offset) % t.element_size() == 0:
                        assert t.data_ptr() == lo + offset, (i, bit, path)
    assert decoded > 0  # payload bytes carry no checksum: some flips decode, and were checked above


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
    desc = raw.index(b"\x0a\x01x")  # descriptor content: path "x" first
    # dtype field (tag 0x10) of the tensor: 0x10 0x01 -> 0x10 0x63 (99)
    i = raw.index(b"\x10\x01")
    raw[i + 1] = 99
    with pytest.raises(WireError, match=f"tensor descriptor at byte {desc} has unknown dtype 99"):
        wire.unpack(bytes(raw))
    # A codec type this build does not know (the enum ends at TOPK = 5).
    msg = frame_pb2.Frame(version=1, sender="peer", payload=b"\0" * 64)
    t = msg.tensors.add(dtype=1, offset=0, length=16)
    t.path.append("x")
    t.shape.append(4)
    t.codec.type = 99  # proto3 enums are open: protobuf writes unknown values as they are
    raw = msg.SerializeToString()
    desc = raw.index(b"\x0a\x01x")
    with pytest.raises(
        WireError, match=f"tensor descriptor at byte {desc} uses unknown codec type 99; the sender may run a newer"
    ):
        wire.unpack(raw)
    t.codec.type = 6
    with pytest.raises(WireError, match="unknown codec type 6"):
        wire.unpack(msg.SerializeToString())


def test_control_bytes_in_names_are_escaped_in_messages(frame_pb2) -> None:  # type: ignore[no-untyped-def]
    # Names are the peer's text: a NUL in one used to cut the message short at the name.
    msg = frame_pb2.Frame(version=1, payload=b"\0" * 64)
    t = msg.tensors.add(dtype=1, offset=0, length=15)
    t.path.append("a\x00b\\c\x1b")
    t.shape.append(4)
    with pytest.raises(
        WireError, match=re.escape("tensor 'a\\x00b\\x5cc\\x1b' (descriptor at byte ") + r"\d+\) declares 15 bytes"
    ):
        wire.unpack(msg.SerializeToString())


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
    with pytest.raises(WireError, match=r"tensor #0 \(descriptor at byte 4\) has no name"):
        wire.unpack(b"\x08\x01\x32\x00\x7a\x00")


def _at_bytes(frame: bytes, pattern: str) -> tuple[int, ...]:
    """The numbers the WireError for `frame` puts in `pattern`'s groups."""
    with pytest.raises(WireError) as e:
        wire.unpack(frame)
    m = re.search(pattern, str(e.value))
    assert m, str(e.value)
    return tuple(int(g) for g in m.groups())


def test_error_offsets_point_at_the_bad_byte() -> None:
    v1, pay = b"\x08\x01", b"\x7a\x00"
    # A length prefix past the end: the offset is where the length varint starts.
    head = v1 + b"\x12"
    assert _at_bytes(head + b"\x7fab", r"sender at byte (\d+) declares") == (len(head),)
    # A varint that never ends: the offset is where it starts.
    head = v1 + b"\x18"
    assert _at_bytes(head + b"\xff\xff", r"varint for seq starting at byte (\d+)") == (len(head),)
    # Field number 0 and a group wire type: the offset of the tag.
    head = v1 + b"\x20\x05"
    assert _at_bytes(head + b"\x00" + pay, r"field number 0 at byte (\d+)") == (len(head),)
    assert _at_bytes(head + b"\x3b" + pay, r"wire type 3 for field 7 at byte (\d+)") == (len(head),)
    # A known field with the wrong wire type.
    assert _at_bytes(head + b"\x1a\x00" + pay, r"field 'seq' at byte (\d+) has protobuf wire type 2") == (len(head),)
    # A repeated field: both occurrences.
    head = v1 + b"\x18\x05"
    assert _at_bytes(head + b"\x18\x06" + pay, r"'seq' \(3\) at byte (\d+); it first appeared at byte (\d+)") == (len(head), 2)
    # Invalid UTF-8 in kind: the offset is the string's length prefix.
    head = v1 + b"\x2a"
    assert _at_bytes(head + b"\x02\xc3\x28" + pay, r"kind at byte (\d+) is not valid UTF-8") == (len(head),)


@pytest.mark.parametrize(
    ("field", "tag", "value"),
    [
        ("version", b"\x08", b"\x01"),
        ("sender", b"\x12", b"\x01a"),
        ("seq", b"\x18", b"\x02"),
        ("step", b"\x20", b"\x02"),
        ("kind", b"\x2a", b"\x01k"),
        ("padding", b"\x72", b"\x00"),
        ("payload", b"\x7a", b"\x00"),
    ],
)
def test_repeated_frame_fields_are_refused(field: str, tag: bytes, value: bytes) -> None:
    # Protobuf readers keep the last copy of a repeated singular field; a frame whose meaning
    # depends on which copy a reader keeps is refused instead (unknown fields are still skipped).
    first = b"\x08\x01" if field == "version" else b"\x08\x01" + tag + value
    frame = first + tag + value + b"\x7a\x00"
    assert _at_bytes(frame, rf"'{field}' \(\d+\) at byte (\d+); it first appeared at byte (\d+)") == (
        len(first),
        len(first) - len(tag) - len(value),
    )


def test_repeated_descriptor_and_codec_fields_are_refused(frame_pb2) -> None:  # type: ignore[no-untyped-def]
    raw = _frame_with(frame_pb2, dtype=1, shape=[4], offset=0, length=16)
    desc = raw.index(b"\x0a\x01x")  # the descriptor content starts with its path "x"
    length_at = raw.index(b"\x28\x10", desc)  # length=16, the last field protobuf writes here
    assert raw[desc - 1] == length_at + 2 - desc  # one-byte descriptor length
    for extra, name in (
        (b"\x10\x01", "tensor.dtype"),
        (b"\x28\x10", "tensor.length"),
        (b"\x32\x00\x32\x00", "tensor.codec"),
        (b"\x32\x04\x08\x00\x08\x00", "codec.type"),
    ):
        bad = bytearray(raw)
        bad[length_at + 2 : length_at + 2] = extra
        bad[desc - 1] += len(extra)
        second = length_at + 2 + {"tensor.codec": 2, "codec.type": 4}.get(name, 0)
        pattern = rf"'{re.escape(name)}' \(\d+\) at byte (\d+) \(in the tensor descriptor at byte (\d+)\)"
        assert _at_bytes(bytes(bad), pattern) == (second, desc), name
    # The repeated fields of the schema stay repeatable: path parts and shape runs.
    ok = bytearray(raw)
    ok[length_at + 2 : length_at + 2] = b"\x0a\x01y"
    ok[desc - 1] += 3
    assert list(wire.unpack(bytes(ok)).flat) == [("x", "y")]


def test_unknown_fields_are_skipped() -> None:
    # DEVELOPERS.md: additive schema changes stay compatible. Varint, length-delimited, fixed32
    # and fixed64 fields 100/101, repeated, around a known field, all skipped.
    frame = b"\x08\x01\xa0\x06\x05\xaa\x06\x02hi\xa0\x06\x07\x18\x09\xad\x06" + bytes(4) + b"\xa9\x06" + bytes(8) + b"\x7a\x00"
    got = wire.unpack(frame)
    assert (got.seq, got.tensors) == (9, {})
