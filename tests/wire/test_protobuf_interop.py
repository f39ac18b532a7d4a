"""Frames are protobuf messages: protoc-generated classes read ours, and we read theirs."""

from __future__ import annotations

import torch
from wire_cases import every_dtype, grad_scale

from splitlink import wire

DTYPE_NAMES = {
    torch.float32: "FLOAT32",
    torch.float64: "FLOAT64",
    torch.float16: "FLOAT16",
    torch.bfloat16: "BFLOAT16",
    torch.int8: "INT8",
    torch.int16: "INT16",
    torch.int32: "INT32",
    torch.int64: "INT64",
    torch.uint8: "UINT8",
    torch.bool: "BOOL",
}


def _bytes_of(t: torch.Tensor) -> bytes:
    t = t.contiguous()
    return bytes((t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes())


def test_protobuf_reads_our_frames(frame_pb2) -> None:  # type: ignore[no-untyped-def]
    tensors = {**every_dtype(), **grad_scale()}
    raw = bytes(wire.pack(tensors, sender="leader", step=-2, kind="forward", seq=77))
    msg = frame_pb2.Frame()
    msg.ParseFromString(raw)
    assert (msg.version, msg.sender, msg.step, msg.kind, msg.seq) == (1, "leader", -2, "forward", 77)
    ours = wire.unpack(raw).flat
    assert [tuple(t.path) for t in msg.tensors] == list(ours)
    for desc, (path, t) in zip(msg.tensors, ours.items()):
        assert frame_pb2.DType.Name(desc.dtype) == DTYPE_NAMES[t.dtype], path
        assert list(desc.shape) == list(t.shape)
        assert msg.payload[desc.offset : desc.offset + desc.length] == _bytes_of(t)


def test_we_read_frames_protobuf_wrote(frame_pb2) -> None:  # type: ignore[no-untyped-def]
    tensors = every_dtype()
    msg = frame_pb2.Frame(version=1, sender="go-client", seq=5, step=9, kind="forward")
    payload = bytearray()
    for name, t in tensors.items():
        offset = (len(payload) + 63) // 64 * 64
        payload.extend(b"\0" * (offset - len(payload)))
        data = _bytes_of(t)
        payload.extend(data)
        desc = msg.tensors.add(dtype=frame_pb2.DType.Value(DTYPE_NAMES[t.dtype]), offset=offset, length=len(data))
        desc.path.append(name)
        desc.shape.extend(t.shape)
    msg.payload = bytes(payload)
    got = wire.unpack(msg.SerializeToString())
    assert (got.sender, got.seq, got.step, got.kind) == ("go-client", 5, 9, "forward")
    for name, t in tensors.items():
        assert torch.equal(got.tensors[name], t), name


def test_reserialized_frame_still_decodes(frame_pb2) -> None:  # type: ignore[no-untyped-def]
    # protobuf drops our alignment padding on re-serialization; tensors may then be unaligned in
    # memory and are copied, but values are unchanged.
    tensors = grad_scale()
    msg = frame_pb2.Frame()
    msg.ParseFromString(bytes(wire.pack(tensors)))
    got = wire.unpack(msg.SerializeToString())
    for group, inner in tensors.items():
        for name, t in inner.items():
            assert torch.equal(got.tensors[group][name], t)


def test_empty_frame_from_protobuf_needs_explicit_payload(frame_pb2) -> None:  # type: ignore[no-untyped-def]
    msg = frame_pb2.Frame(version=1, payload=b"")
    assert msg.HasField("payload")
    assert wire.unpack(msg.SerializeToString()).tensors == {}
