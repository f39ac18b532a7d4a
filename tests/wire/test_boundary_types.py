"""The C++/Python boundary passes named, read-only types (FrameHeader, TensorDesc, CodecSpec)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from splitlink import _core, wire
from splitlink.codec import CompressConfig


def _frame() -> bytes:
    tensors = {"g": {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4)}, "ids": np.arange(5, dtype=np.int64)}
    return bytes(
        wire.pack(tensors, sender="leader", seq=9, step=-2, kind="fwd", compress={"g/w": CompressConfig("min_max", bit_num=4)})
    )


def test_frame_header_fields_are_named_and_match_the_frame() -> None:
    buf = _frame()
    h = _core.wire.decode_header(buf)
    assert isinstance(h, _core.wire.FrameHeader)
    assert (h.version, h.sender, h.seq, h.step, h.kind) == (wire.WIRE_VERSION, "leader", 9, -2, "fwd")
    assert 0 < h.payload_offset and h.payload_offset + h.payload_length <= len(buf)
    assert isinstance(h.tensors, tuple) and len(h.tensors) == 2
    w, ids = h.tensors
    assert isinstance(w, _core.wire.TensorDesc)
    assert (w.path, w.dtype, w.shape) == (("g", "w"), _core.wire.DTYPES["float32"], (3, 4))
    assert (ids.path, ids.dtype, ids.shape) == (("ids",), _core.wire.DTYPES["int64"], (5,))
    assert ids.length == 5 * 8 and ids.codec.type == 0 and ids.codec.name == "no_compress"
    assert w.codec.name == "min_max" and w.codec.type == _core.codec.CODEC_TYPES["min_max"] and w.codec.bit_num == 4
    # The raw tensor's bytes are where its descriptor says.
    assert buf[ids.offset : ids.offset + ids.length] == np.arange(5, dtype=np.int64).tobytes()
    frame = wire.unpack(buf)
    assert (frame.sender, frame.seq, frame.step, frame.kind) == (h.sender, h.seq, h.step, h.kind)


@pytest.mark.parametrize("field", ["sender", "seq", "tensors", "payload_offset"])
def test_frame_header_is_read_only(field: str) -> None:
    h = _core.wire.decode_header(_frame())
    with pytest.raises(AttributeError):
        setattr(h, field, getattr(h, field))


def test_tensor_desc_and_codec_spec_are_read_only() -> None:
    d = _core.wire.decode_header(_frame()).tensors[0]
    for obj, field in ((d, "offset"), (d, "path"), (d, "codec"), (d.codec, "bit_num"), (d.codec, "type")):
        with pytest.raises(AttributeError):
            setattr(obj, field, getattr(obj, field))


def test_reprs_name_the_fields() -> None:
    h = _core.wire.decode_header(_frame())
    d = h.tensors[1]
    desc = (
        f"splitlink._core.wire.TensorDesc(path=('ids',), dtype=8, shape=(5,), offset={d.offset}, length=40, "
        "codec=CodecSpec(type=no_compress, bit_num=0, block_size=0, topk_count=0, value_bits=0, stochastic=False, "
        "seed=0))"
    )
    assert repr(d) == desc
    assert repr(h) == (
        f"splitlink._core.wire.FrameHeader(version={wire.WIRE_VERSION}, sender='leader', seq=9, step=-2, "
        f"kind='fwd', payload_offset={h.payload_offset}, payload_length={h.payload_length}, "
        f"tensors=({h.tensors[0]!r}, {desc}))"
    )
    assert repr(h.tensors[0].codec) == (
        "CodecSpec(type=min_max, bit_num=4, block_size=0, topk_count=0, value_bits=0, stochastic=False, seed=0)"
    )


def test_codec_spec_from_compress_config() -> None:
    spec = CompressConfig("topk", k=3, value_bit_num=8, block_size=16).spec(10)
    assert isinstance(spec, _core.codec.CodecSpec)
    assert (spec.type, spec.topk_count, spec.value_bits, spec.block_size) == (_core.codec.CODEC_TYPES["topk"], 3, 8, 16)
    assert spec == _core.codec.CodecSpec(spec.type, topk_count=3, value_bits=8, block_size=16)
    assert spec != _core.codec.CodecSpec(spec.type, topk_count=4, value_bits=8, block_size=16)
    assert hash(spec) == hash(_core.codec.CodecSpec(spec.type, topk_count=3, value_bits=8, block_size=16))
    seeded = CompressConfig("min_max", stochastic=True, seed=5)
    assert seeded.spec(8, seq=1, name="a").seed != seeded.spec(8, seq=2, name="a").seed  # fresh stream per frame


def test_codec_spec_rejects_unknown_types_and_positional_parameters() -> None:
    with pytest.raises(ValueError, match="unknown codec type 99; codes are the values of splitlink._core.codec.CODEC_TYPES"):
        _core.codec.CodecSpec(99)
    with pytest.raises(TypeError):
        _core.codec.CodecSpec(1, 8)  # parameters are keyword-only


def test_bindings_refuse_a_tuple_as_codec_spec() -> None:
    x = np.ones(8, dtype=np.float32)
    with pytest.raises(
        TypeError,
        match=r"codec spec must be a splitlink._core.codec.CodecSpec or None, got tuple "
        r"\(CompressConfig.spec\(\) makes one\)",
    ):
        _core.codec.encoded_size((1, 8, 0, 0, 0, False, 0), 1, x.size)
    item = (("x",), 1, (8,), x, (1, 8, 0, 0, 0, False, 0), None)
    with pytest.raises(TypeError, match="codec spec must be a splitlink._core.codec.CodecSpec"):
        _core.wire.packed_size([item], "", 0, 0, "")


def test_named_types_still_unpack_like_the_tuples_they_replace() -> None:
    # Callers written against the positional tuples keep working while they move to the names.
    h = _core.wire.decode_header(_frame())
    version, sender, seq, step, kind, payload_offset, payload_length, descs = h
    assert (version, sender, seq, step, kind, payload_offset, payload_length, descs) == (
        h.version,
        h.sender,
        h.seq,
        h.step,
        h.kind,
        h.payload_offset,
        h.payload_length,
        h.tensors,
    )
    path, dtype, shape, offset, length, spec = descs[1]
    assert (path, dtype, shape, offset, length, spec) == (("ids",), 8, (5,), descs[1].offset, 40, descs[1].codec)
    assert len(h) == 8 and len(descs[1]) == 6 and len(spec) == 7 and h[1] == "leader" and h[-1] is h.tensors
    assert tuple(descs[0].codec) == (1, 4, 0, 0, 0, False, 0) and descs[0].codec[0] == 1


def _proto_enum(name: str) -> dict[str, int]:
    """``enum <name>`` of protos/splitlink/v1/frame.proto as {lower-case name: value}, UNSPECIFIED left out."""
    text = (Path(__file__).resolve().parents[2] / "protos" / "splitlink" / "v1" / "frame.proto").read_text()
    body = re.search(r"enum " + name + r" \{(.*?)\}", text, re.S)
    assert body is not None, f"frame.proto has no enum {name}"
    return {
        k.lower(): int(v)
        for k, v in re.findall(r"^\s*([A-Z0-9_]+) = (\d+);", body.group(1), re.M)
        if not k.endswith("UNSPECIFIED")
    }


def test_the_core_exports_the_wire_enums_of_frame_proto() -> None:
    assert _core.wire.DTYPES == _proto_enum("DType")
    assert _core.codec.CODEC_TYPES == _proto_enum("CodecType")
    assert {k.replace("-", "_"): v for k, v in _core.secure.CIPHERS.items()} == _proto_enum("Cipher")


def test_python_tables_are_the_cores() -> None:
    from splitlink import codec, secure

    assert codec.COMPRESS_TYPES == _core.codec.CODEC_TYPES
    assert secure.CIPHERS == _core.secure.CIPHERS
    assert {code: str(t).removeprefix("torch.") for code, t, _ in wire._DTYPES} == {
        code: name for name, code in _core.wire.DTYPES.items()
    }
    # Every dtype the core knows round-trips through a frame as the torch dtype of that name.
    for name in _core.wire.DTYPES:
        t = torch.zeros(3, dtype=getattr(torch, name))
        assert wire.unpack(wire.pack({"t": t})).tensors["t"].dtype == t.dtype


def test_peek_header_reads_the_header_unpack_reads() -> None:
    buf = _frame()
    h = wire.peek_header(buf)
    assert isinstance(h, wire.FrameHeader) and wire.FrameHeader is _core.wire.FrameHeader
    frame = wire.unpack(buf)
    assert (h.version, h.sender, h.seq, h.step, h.kind) == (frame.version, frame.sender, frame.seq, frame.step, frame.kind)
    assert [d.path for d in h.tensors] == list(frame.flat)
    assert {d.path: d.codec.name for d in h.tensors if d.codec.type} == frame.codecs
    # Any bytes-like object, including a C-contiguous array of more than one dimension.
    assert wire.peek_header(np.frombuffer(buf, dtype=np.uint8).reshape(1, -1)).sender == "leader"
    assert wire.peek_header(bytearray(buf)).seq == 9 and wire.peek_header(memoryview(buf)).kind == "fwd"


def test_peek_header_validates_like_unpack() -> None:
    from splitlink.errors import WireError

    bad = bytearray(_frame())
    bad[0:2] = b"\x08\x07"  # version 7
    with pytest.raises(WireError) as peeked:
        wire.peek_header(bad)
    with pytest.raises(WireError) as unpacked:
        wire.unpack(bad)
    assert str(peeked.value) == str(unpacked.value)
    with pytest.raises(WireError):
        wire.peek_header(_frame()[:-1])  # a payload cut short is caught from the header's lengths
    with pytest.raises(TypeError, match=r"peek_header\(\) needs a bytes-like object \(buffer protocol\), got str"):
        wire.peek_header("frame")


def test_peek_header_names_a_sealed_frame() -> None:
    from splitlink import secure
    from splitlink.errors import WireError

    key = secure.Key(bytes(range(32)))
    sealed = bytes(wire.pack({"x": torch.ones(4)}, sender="a", sealer=secure.Sealer(key, "a")))
    with pytest.raises(WireError, match="this is a sealed frame"):
        wire.peek_header(sealed)


def _stub_names(body: list[ast.stmt]) -> dict[str, ast.stmt]:
    names: dict[str, ast.stmt] = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
        elif isinstance(node, ast.Assign):
            names.update((t.id, node) for t in node.targets if isinstance(t, ast.Name))
    return names


def _public(names: object) -> set[str]:
    return {n for n in names if not n.startswith("_")}  # type: ignore[attr-defined]


def test_core_stub_names_what_the_compiled_module_has() -> None:
    # python/splitlink/_core.pyi describes the extension (submodules as classes): every public name of
    # _core, of its submodules and of their classes is in the stub, and the stub names nothing else.
    stub = ast.parse((Path(wire.__file__).parent / "_core.pyi").read_text())
    top = _stub_names(stub.body)
    problems = []
    submodules = [n for n in _public(vars(_core)) if type(getattr(_core, n)) is type(_core)]
    assert sorted(submodules) == ["codec", "psi", "secure", "wire"]
    stub_top = {n for n, node in top.items() if not n.startswith("_") or isinstance(node, ast.FunctionDef)}
    runtime_top = _public(vars(_core)) | {"_raise_native_error"}
    problems += [f"_core.{n}: missing from the stub" for n in runtime_top - stub_top]
    problems += [f"_core.{n}: in the stub, not in the module" for n in stub_top - runtime_top]
    for sub in submodules:
        module = getattr(_core, sub)
        node = top.get(sub)
        assert isinstance(node, ast.ClassDef), f"the stub has no class standing for _core.{sub}"
        members = _stub_names(node.body)
        problems += [f"_core.{sub}.{n}: missing from the stub" for n in _public(vars(module)) - set(members)]
        problems += [f"_core.{sub}.{n}: in the stub, not in the module" for n in _public(members) - _public(vars(module))]
        for name, member in members.items():
            if isinstance(member, ast.ClassDef) and hasattr(module, name):
                cls = getattr(module, name)
                have, declared = _public(vars(cls)), _public(_stub_names(member.body))
                problems += [f"_core.{sub}.{name}.{n}: missing from the stub" for n in have - declared]
                problems += [f"_core.{sub}.{name}.{n}: in the stub, not in the class" for n in declared - have]
    assert problems == []


def test_uncompressed_tensors_share_the_no_codec_spec() -> None:
    w, ids = _core.wire.decode_header(_frame()).tensors
    assert ids.codec is _core.codec.NO_CODEC and w.codec is not _core.codec.NO_CODEC
    assert _core.codec.NO_CODEC == _core.codec.CodecSpec(0) and _core.codec.NO_CODEC.name == "no_compress"
