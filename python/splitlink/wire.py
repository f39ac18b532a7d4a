"""Frames: named tensors to bytes and back, without copying tensor data more than once.

A frame is one message between parties: routing fields (sender, seq, step, kind), one descriptor
per tensor and a payload with the tensors' bytes. Its encoding is the protobuf message
``splitlink.v1.Frame`` (``protos/splitlink/v1/frame.proto``), so any protobuf library can read it;
splitlink writes and reads that encoding directly in C++.

>>> frame = pack({"loss": {"emb": torch.ones(2, 3)}}, sender="leader", step=7)
>>> unpack(frame).tensors["loss"]["emb"].shape
torch.Size([2, 3])

Memory:

* ``pack`` writes the frame in one pass from tensor memory into a buffer from a pool
  (``BufferPool``); a buffer is reused as soon as nothing references the previous frame in it,
  so a training loop packs into memory that is already mapped. ``pack(..., out=buf)`` writes
  into a buffer of yours instead. Non-contiguous tensors are made contiguous first (a copy).
* Frames holding CUDA tensors are built on a device path: their compressed tensors are encoded
  on the GPU (``splitlink.codec_torch``, byte-identical to the C++ codecs), then each tensor's
  payload is copied device-to-host once, straight into its slot of a pinned pooled frame buffer
  (``buffers.pinned_pool()``), after the header is written; the call waits for the copies (the
  current stream) before it returns. Codecs the GPU path does not cover (``bit_pack``, error
  feedback) run on the host as before.
* ``unpack(..., device="cuda:0")`` places the tensors on a device: the payload goes into a pinned
  pooled buffer (unless the frame already is pinned), then one host-to-device copy; compressed
  tensors are copied encoded and decoded on the device. The call returns once the tensors are
  complete. ``device=None`` (default) or ``"cpu"`` keeps the zero-copy CPU path.
* ``unpack`` validates the whole header, then returns tensors that VIEW the frame buffer: no
  copy, and each view keeps the buffer alive. Tensors from a read-only buffer (``bytes``) must
  not be written to; pass ``copy=True`` to get tensors that own their memory. A tensor whose
  data is not aligned to its element size in memory (possible only for frames that other
  encoders produced, or buffers sliced at odd offsets) is copied.
* Compressed tensors (``pack(..., compress=...)``) are decoded into tensors of their original
  dtype and shape that own their memory (the frame header says how, so ``unpack`` needs no
  configuration). Decoding into freshly allocated memory is bound by page faults (a fresh 64 MiB
  tensor costs more to fault in than to decode), so tensors of 64 KiB and more are decoded into
  memory from a second pool (``decode_pool()``): a buffer goes back to it when the last tensor
  (or view, or NumPy array) using it dies, and is never handed out while one lives.
  ``unpack(..., pool=None)`` allocates fresh tensors instead.
* Malformed frames raise ``splitlink.errors.WireError`` naming the problem and its byte offset.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from splitlink import _core

# The pools live in splitlink.buffers (below wire and secure); wire re-exports them.
from splitlink.buffers import DECODE_POOL_MIN_BYTES as _DECODE_POOL_MIN_BYTES
from splitlink.buffers import BufferPool, FrameBuffer, decode_pool, default_pool, pinned_pool
from splitlink.codec import CompressConfig, ErrorFeedback
from splitlink.errors import CryptoError

if TYPE_CHECKING:
    from splitlink.secure import Opener, Sealer

__all__ = [
    "Frame",
    "BufferPool",
    "pack_chunks",
    "FrameBuffer",
    "pack",
    "packed_size",
    "unpack",
    "peek_header",
    "FrameHeader",
    "TensorDesc",
    "default_pool",
    "decode_pool",
    "WIRE_VERSION",
    "SUPPORTED_DTYPES",
]

WIRE_VERSION: int = _core.wire.WIRE_VERSION
# A decoded frame header and its tensor descriptors (read-only, from the native core); see peek_header.
FrameHeader = _core.wire.FrameHeader
TensorDesc = _core.wire.TensorDesc

TensorLike = torch.Tensor | np.ndarray
TensorTree = Mapping[str, Any]  # values: TensorLike or a nested TensorTree

# (wire code, torch dtype, numpy dtype or None), from the core's table of frame.proto's `enum DType`
# (name -> code); the names are torch's and numpy's dtype names (numpy has no bfloat16).
_DTYPES: tuple[tuple[int, torch.dtype, Any], ...] = tuple(
    (code, getattr(torch, name), None if name == "bfloat16" else np.dtype(name)) for name, code in _core.wire.DTYPES.items()
)
_CODE_BY_TORCH = {t: c for c, t, _ in _DTYPES}
_TORCH_BY_CODE = {c: t for c, t, _ in _DTYPES}
_CODE_BY_NUMPY = {n: c for c, _, n in _DTYPES if n is not None}
SUPPORTED_DTYPES: tuple[torch.dtype, ...] = tuple(t for _, t, _ in _DTYPES)

_USE_DEFAULT: Any = object()
_NO_CODEC = _core.codec.NO_CODEC


def _name(path: tuple[str, ...]) -> str:
    return "/".join(path)


def _flatten(tree: TensorTree, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if not isinstance(tree, Mapping):
        where = f" at '{_name(prefix)}'" if prefix else ""
        raise TypeError(f"tensors{where} must be a mapping of names to tensors, got {type(tree).__name__}")
    for key, value in tree.items():
        if not isinstance(key, str):
            raise TypeError(f"tensor names must be str; got {key!r} ({type(key).__name__}) under '{_name(prefix)}'")
        path = prefix + (key,)
        if isinstance(value, Mapping):
            yield from _flatten(value, path)
        else:
            yield path, value


def _host_buffer(path: tuple[str, ...], value: Any) -> tuple[int, tuple[int, ...], Any]:
    """(dtype code, shape, C-contiguous host object with the buffer protocol) for one tensor."""
    if isinstance(value, torch.Tensor):
        t = value
        if t.layout != torch.strided:
            raise ValueError(f"tensor '{_name(path)}' has layout {t.layout}; send dense tensors (call .to_dense())")
        code = _CODE_BY_TORCH.get(t.dtype)
        if code is None:
            raise ValueError(f"tensor '{_name(path)}' has dtype {t.dtype}; frames carry {', '.join(map(str, SUPPORTED_DTYPES))}")
        t = t.detach()
        if t.is_neg():
            t = t.resolve_neg()
        if t.device.type != "cpu":  # (frames of device tensors take the device path: _pack_device)
            t = t.to("cpu")
        if not t.is_contiguous():
            t = t.contiguous()  # copies: frames hold C-contiguous data
        host_view = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
        return code, tuple(t.shape), host_view.numpy()
    if isinstance(value, np.ndarray):
        a = value
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))  # frames are little-endian
        code = _CODE_BY_NUMPY.get(a.dtype)
        if code is None:
            raise ValueError(
                f"array '{_name(path)}' has dtype {a.dtype}; frames carry "
                f"{', '.join(str(n) for _, _, n in _DTYPES if n is not None)} (and torch.bfloat16)"
            )
        if not a.flags.c_contiguous:
            a = a.copy(order="C")  # copies: frames hold C-contiguous data
        return code, tuple(a.shape), a
    raise TypeError(f"'{_name(path)}' must be a torch.Tensor or numpy.ndarray, got {type(value).__name__}")


def _config_for(compress: Mapping[str, CompressConfig] | None, path: tuple[str, ...]) -> CompressConfig | None:
    if not compress:
        return None
    config = compress.get(_name(path))
    if config is None:
        config = compress.get(path[-1])  # MindSpore addresses nested tensors by their inner name
    if config is not None and not isinstance(config, CompressConfig):
        raise TypeError(f"compress['{_name(path)}'] must be a CompressConfig, got {type(config).__name__}")
    return config


def _items(
    tensors: TensorTree,
    compress: Mapping[str, CompressConfig] | None = None,
    error_feedback: ErrorFeedback | None = None,
    seq: int = 0,
) -> list[tuple[Any, ...]]:
    items = []
    for path, value in _flatten(tensors):
        config = _config_for(compress, path)
        residual = None
        if config is not None and config.error_feedback:
            if error_feedback is None:
                raise ValueError(
                    f"compress config for '{_name(path)}' uses error_feedback: pass error_feedback=ErrorFeedback() "
                    "(one store per peer, kept across calls)"
                )
            if not isinstance(value, torch.Tensor):
                value = torch.from_numpy(value)
            value, residual_t = error_feedback.prepare(_name(path), value)
            residual = residual_t.numpy()
        code, shape, buf = _host_buffer(path, value)
        spec = None
        if config is not None and config.compress_type != "no_compress":
            spec = config.spec(math.prod(shape), seq, _name(path))
        items.append((path, code, shape, buf, spec, residual))
    return items


def packed_size(
    tensors: TensorTree,
    *,
    sender: str = "",
    step: int = 0,
    kind: str = "",
    seq: int = 0,
    compress: Mapping[str, CompressConfig] | None = None,
) -> int:
    """Bytes that ``pack`` with the same arguments produces (to size an ``out`` buffer)."""
    if _on_device(tensors):
        return _DevicePlan(tensors, compress, None, seq, sender, step, kind, plan_only=True).total
    items = [item[:5] + (None,) for item in _items(tensors, compress, ErrorFeedback(), seq)]
    return int(_core.wire.packed_size(items, sender, seq, step, kind))


def pack(
    tensors: TensorTree,
    *,
    sender: str = "",
    step: int = 0,
    kind: str = "",
    seq: int = 0,
    compress: Mapping[str, CompressConfig] | None = None,
    error_feedback: ErrorFeedback | None = None,
    out: Any = None,
    pool: Any = _USE_DEFAULT,
    threads: int = 0,
    sealer: Sealer | None = None,
) -> Any:
    """Encodes a mapping ``{name: tensor}`` or ``{group: {name: tensor}}`` (any nesting up to 8
    levels, order kept) into a frame.

    ``compress`` maps tensor names to ``CompressConfig`` s (see ``splitlink.codec``): a nested
    tensor is looked up by its full path ``"group/name"`` first, then by its inner name, as
    MindSpore Federated does. Compression runs in the same pass that writes the frame.
    ``error_feedback`` is the residual store for configs with ``error_feedback=True``.
    ``sealer`` (a ``splitlink.secure.Sealer``) seals the frame in the same pass: each segment's
    bytes are written and encrypted while in cache; ``unpack(..., opener=)`` opens it.

    Returns a ``FrameBuffer`` (buffer protocol: ``bytes(f)``, ``memoryview(f)``) drawn from
    ``pool`` (default: the module's pool; ``None`` allocates a fresh buffer). With ``out`` (a
    writable buffer of at least ``packed_size(...)`` bytes) the frame is written there and a
    memoryview of the written bytes is returned. ``threads`` caps the threads used to copy large
    tensors (0: all available).

    Frames holding CUDA tensors are built on the device path (module docstring): compressed on the
    GPU, one device-to-host copy per tensor into a pinned pooled buffer; the result is then a NumPy
    uint8 array over that buffer (buffer protocol, like a ``FrameBuffer``).
    """
    if _on_device(tensors):
        if out is not None and pool is not _USE_DEFAULT:
            raise ValueError("pass either out= or pool=, not both")
        if sealer is not None and out is not None:
            raise ValueError("pack(..., sealer=) writes into a pooled buffer; out= is not supported with sealing")
        frame = _pack_device(tensors, compress, error_feedback, seq, sender, step, kind, out)
        if sealer is not None:
            return sealer.seal(frame, pool=None if pool is _USE_DEFAULT else pool, threads=threads)
        return frame
    items, use_pool = _pack_inputs(tensors, compress, error_feedback, seq, pool)
    if sealer is not None:
        if out is not None:
            raise ValueError("pack(..., sealer=) writes into a pooled buffer; out= is not supported with sealing")
        return _core.wire.pack(items, sender, seq, step, kind, use_pool, None, threads, sealer._native)
    if out is not None:
        if pool is not _USE_DEFAULT:
            raise ValueError("pass either out= or pool=, not both")
        n = _core.wire.pack(items, sender, seq, step, kind, None, out, threads)
        return memoryview(out).cast("B")[:n]
    return _core.wire.pack(items, sender, seq, step, kind, use_pool, None, threads)


def _pack_inputs(
    tensors: TensorTree, compress: Mapping[str, CompressConfig] | None, error_feedback: ErrorFeedback | None, seq: int, pool: Any
) -> tuple[list[Any], Any]:
    """The native encoder's items and the pool to draw from (the module's unless given)."""
    if seq < 0:
        raise ValueError(f"seq must be >= 0, got {seq}")
    return _items(tensors, compress, error_feedback, seq), (default_pool() if pool is _USE_DEFAULT else pool)


def pack_chunks(
    tensors: TensorTree,
    *,
    chunk_size: int,
    sender: str = "",
    step: int = 0,
    kind: str = "",
    seq: int = 0,
    compress: Mapping[str, CompressConfig] | None = None,
    error_feedback: ErrorFeedback | None = None,
    pool: Any = _USE_DEFAULT,
    threads: int = 0,
) -> Any:
    """The frame ``pack`` would produce, as ``len(result)`` chunks of ``chunk_size`` bytes (the last
    one shorter) for streaming: ``result.chunk(i)`` is a new ``bytes`` filled straight from the
    tensors' memory, so the whole frame never exists on the sending side and each tensor byte is
    copied once. Header and codec outputs are written once, at this call (error feedback is
    updated once); chunks can be made again for a retry while the tensors are unchanged.
    ``b"".join(r.chunk(i) for i in range(len(r))) == bytes(pack(...))``."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
    if _on_device(tensors):
        return DeviceFrameChunks(_pack_device(tensors, compress, error_feedback, seq, sender, step, kind, None), chunk_size)
    items, use_pool = _pack_inputs(tensors, compress, error_feedback, seq, pool)
    return _core.wire.pack_chunks(items, sender, seq, step, kind, use_pool, chunk_size, threads)


class Frame:
    """A decoded frame: header fields and ``tensors`` (the nested mapping as sent).

    ``flat`` maps each key path (a tuple) to its tensor; ``codecs`` maps the paths of compressed
    tensors to their codec name (those tensors were decoded into their own memory, see
    ``decode_pool``). ``buffer`` is the memoryview the other tensors view; it stays alive as long
    as any of them does.
    """

    __slots__ = ("version", "sender", "seq", "step", "kind", "tensors", "flat", "nbytes", "buffer", "codecs")

    def __init__(
        self,
        version: int,
        sender: str,
        seq: int,
        step: int,
        kind: str,
        tensors: dict[str, Any],
        flat: dict[tuple[str, ...], torch.Tensor],
        buffer: memoryview,
        codecs: dict[tuple[str, ...], str] | None = None,
    ) -> None:
        self.version = version
        self.sender = sender
        self.seq = seq
        self.step = step
        self.kind = kind
        self.tensors = tensors
        self.flat = flat
        self.nbytes = buffer.nbytes
        self.buffer = buffer
        self.codecs = codecs or {}

    def __repr__(self) -> str:
        names = ", ".join(f"{_name(p)}:{tuple(t.shape)}:{str(t.dtype).removeprefix('torch.')}" for p, t in self.flat.items())
        return (
            f"Frame(version={self.version}, sender={self.sender!r}, seq={self.seq}, step={self.step}, "
            f"kind={self.kind!r}, nbytes={self.nbytes}, tensors=[{names}])"
        )


def _byte_view(mv: memoryview) -> torch.Tensor:
    if mv.readonly:
        # torch has no read-only tensors and warns once per process; the module docstring
        # documents that tensors from read-only buffers must not be written.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given buffer is not writable")
            return torch.frombuffer(mv, dtype=torch.uint8)
    return torch.frombuffer(mv, dtype=torch.uint8)


def _decode_target(shape: tuple[int, ...], dtype: torch.dtype, pool: Any) -> tuple[torch.Tensor, Any]:
    """(tensor of ``shape``/``dtype`` that owns its memory, writable buffer of its bytes for the
    decoder). Large tensors view a pooled buffer; the tensor's storage holds a reference to it, so
    the pool hands the buffer out again only after the tensor and all its views are gone."""
    nbytes = math.prod(shape) * dtype.itemsize
    if pool is not None and nbytes >= _DECODE_POOL_MIN_BYTES:
        buf = pool.acquire(nbytes)
        return torch.frombuffer(buf, dtype=dtype).view(shape), buf
    t = torch.empty(shape, dtype=dtype)
    return t, (t.view(torch.int16) if dtype == torch.bfloat16 else t).numpy()


def _byte_view_of(buffer: Any, caller: str) -> memoryview:
    """``buffer`` as a flat memoryview of bytes (no copy)."""
    try:
        mv = memoryview(buffer)
    except TypeError:
        raise TypeError(f"{caller}() needs a bytes-like object (buffer protocol), got {type(buffer).__name__}") from None
    if mv.ndim != 1 or mv.itemsize != 1:
        if not mv.c_contiguous:
            raise ValueError(f"{caller}() needs a C-contiguous buffer")
        mv = mv.cast("B")
    return mv


def peek_header(buffer: Any) -> FrameHeader:
    """The header of the frame in ``buffer`` (bytes-like), validated as ``unpack`` validates it, without
    creating any tensor: a read-only ``FrameHeader`` with ``version``, ``sender``, ``seq``, ``step``,
    ``kind``, ``payload_offset``, ``payload_length`` and ``tensors`` (one ``TensorDesc`` each: ``path``,
    ``dtype`` code, ``shape``, ``offset``, ``length``, ``codec``). Raises ``WireError`` for a malformed
    frame (and names a sealed one as such)."""
    return _core.wire.decode_header(_byte_view_of(buffer, "peek_header"))


def unpack(
    buffer: Any, *, copy: bool = False, opener: Opener | None = None, pool: Any = _USE_DEFAULT, device: Any = None
) -> Frame:
    """Decodes a frame. Tensors view ``buffer`` (zero-copy) unless ``copy=True``.

    Compressed tensors are decoded into memory of their own, drawn from ``pool`` for tensors of
    64 KiB and more (default: ``decode_pool()``; ``None``: freshly allocated tensors).
    Raises ``WireError`` for a malformed frame, before any tensor is created. With ``opener`` (a
    ``splitlink.secure.Opener``) the buffer is a sealed frame: it is authenticated and decrypted
    into a pooled buffer (one pass), which the returned tensors then view; any failure raises
    ``CryptoError`` naming sender and seq.

    ``device`` (e.g. ``"cuda:0"``, a ``torch.device``): the tensors are placed there (one pinned
    host-to-device copy of the payload; compressed tensors decoded on the device); the call returns
    once they are complete. ``None`` or a CPU device: CPU tensors as described above.
    """
    dev = None if device is None else torch.device(device)
    if dev is not None and dev.type == "cpu":
        dev = None
    decode_into = decode_pool() if pool is _USE_DEFAULT else pool
    if decode_into is not None and not isinstance(decode_into, BufferPool):
        raise TypeError(f"pool must be a splitlink.wire.BufferPool or None, got {type(pool).__name__}")
    if opener is not None:
        plain, sender, seq, step, kind = opener.open(buffer)
        frame = unpack(plain, copy=copy, pool=decode_into, device=dev)
        if (frame.sender, frame.seq, frame.step, frame.kind) != (sender, seq, step, kind):
            raise CryptoError(
                f"frame from '{sender}' seq {seq}: the sealed frame's header differs from its authenticated routing "
                f"fields (inner sender={frame.sender!r} seq={frame.seq} step={frame.step} kind={frame.kind!r})"
            )
        return frame
    mv = _byte_view_of(buffer, "unpack")
    header = _core.wire.decode_header(mv)
    if dev is not None:
        return _unpack_device(mv, header, dev)
    base: torch.Tensor | None = None
    tensors: dict[str, Any] = {}
    flat: dict[tuple[str, ...], torch.Tensor] = {}
    codecs: dict[tuple[str, ...], str] = {}
    for desc in header.tensors:
        path, code, shape, offset, length, spec = desc.path, desc.dtype, desc.shape, desc.offset, desc.length, desc.codec
        dtype = _TORCH_BY_CODE[code]
        if spec is not _NO_CODEC and spec.type != 0:  # identity first: the uncompressed tensors' shared spec
            # Compressed: decode into a tensor of the original dtype and shape with memory of its own.
            t, target = _decode_target(shape, dtype, decode_into)
            _core.codec.decode(spec, code, mv, offset, length, target, _name(path))
            del target
            codecs[path] = spec.name
        elif length == 0:
            t = torch.empty(shape, dtype=dtype)
        else:
            if base is None:
                base = _byte_view(mv)
            t = base[offset : offset + length]
            if copy or (base.data_ptr() + offset) % dtype.itemsize:
                t = t.clone()
            t = t.view(dtype).view(shape)
        flat[path] = t
        node = tensors
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = t
    return Frame(header.version, header.sender, header.seq, header.step, header.kind, tensors, flat, mv, codecs)


# -- frames of GPU tensors ------------------------------------------------------------------------

_CODEC_FIELDS = ("type", "bit_num", "block_size", "topk_count", "value_bits")  # frame.proto message Codec, 1..5


def _on_device(tensors: TensorTree) -> bool:
    """Whether any tensor in the tree lives outside host memory (then the device path packs it)."""
    return any(isinstance(v, torch.Tensor) and v.device.type not in ("cpu", "meta") for _, v in _flatten(tensors))


def _is_pinned(t: torch.Tensor) -> bool:
    return bool(t.numel()) and torch.cuda.is_available() and t.is_pinned()


def _varint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _vfield(field: int, v: int) -> bytes:
    return _varint(field << 3) + _varint(v)


def _lfield(field: int, data: bytes) -> bytes:
    return _varint((field << 3) | 2) + _varint(len(data)) + data


_ALIGN = 64  # every tensor slot and the payload start on 64-byte boundaries (the C++ FrameLayout)


def frame_header(
    sender: str, seq: int, step: int, kind: str, tensors: list[tuple[tuple[str, ...], int, tuple[int, ...], int, Any]]
) -> tuple[bytes, list[int], int]:
    """The bytes of a frame up to its payload, as the C++ encoder writes them, for tensors given as
    (path, dtype code, shape, encoded length, CodecSpec or None): returns (header bytes, each
    tensor's offset in the payload, payload length). Validation (names, shapes, codec parameters)
    is the caller's: ``_DevicePlan`` checks the same tensors with the C++ ``packed_size``."""
    msgs = []
    offsets = []
    cursor = 0
    for path, code, shape, length, spec in tensors:
        off = -(-cursor // _ALIGN) * _ALIGN
        offsets.append(off)
        cursor = off + length
        m = b"".join(_lfield(1, part.encode()) for part in path) + _vfield(2, code)
        if shape:
            m += _lfield(3, b"".join(_varint(d) for d in shape))
        m += _vfield(4, off) + _vfield(5, length)
        if spec is not None and spec.type != 0:
            m += _lfield(
                6,
                b"".join(
                    _vfield(i + 1, int(getattr(spec, f))) for i, f in enumerate(_CODEC_FIELDS) if int(getattr(spec, f)) != 0
                ),
            )
        msgs.append(_lfield(6, m))
    head = (
        _vfield(1, WIRE_VERSION)
        + _lfield(2, sender.encode())
        + _vfield(3, seq)
        + _vfield(4, step % (1 << 64))
        + _lfield(5, kind.encode())
        + b"".join(msgs)
    )
    fixed = len(head) + 3 + len(_varint(cursor))
    pad = (_ALIGN - fixed % _ALIGN) % _ALIGN
    head += bytes([14 << 3 | 2, pad]) + bytes(pad) + _varint(15 << 3 | 2) + _varint(cursor)
    return head, offsets, cursor


class _DevicePlan:
    """The tensors of a frame with device tensors, each as (path, code, shape, source, spec, where):
    ``where`` is "device" (``source``: the bytes to copy, a uint8 tensor on the device, encoded there
    when compressed), "host" (``source``: a C-contiguous host buffer, raw) or "host_codec" (``source``:
    a host buffer the C++ codec encodes into the slot; ``residual`` for error feedback)."""

    def __init__(
        self,
        tensors: TensorTree,
        compress: Mapping[str, CompressConfig] | None,
        error_feedback: ErrorFeedback | None,
        seq: int,
        sender: str,
        step: int,
        kind: str,
        plan_only: bool = False,
        all_tensors: bool = False,
    ) -> None:
        if seq < 0:
            raise ValueError(f"seq must be >= 0, got {seq}")
        from splitlink import codec_torch

        self.entries: list[tuple[Any, ...]] = []
        proxies = []
        largest = 0
        for path, value in _flatten(tensors):
            config = _config_for(compress, path)
            name = _name(path)
            # all_tensors: CPU tensors take the device path too (how CPU tests exercise it).
            on_dev = isinstance(value, torch.Tensor) and (all_tensors or value.device.type not in ("cpu", "meta"))
            residual = None
            if config is not None and config.error_feedback and not plan_only:
                if error_feedback is None:
                    raise ValueError(
                        f"compress config for '{name}' uses error_feedback: pass error_feedback=ErrorFeedback() "
                        "(one store per peer, kept across calls)"
                    )
                if not isinstance(value, torch.Tensor):
                    value = torch.from_numpy(value)
                value, residual_t = error_feedback.prepare(name, value)  # host: the C++ codec keeps the residual
                residual = residual_t.numpy()
                on_dev = False
            if on_dev:
                t = value.detach()
                if t.layout != torch.strided:
                    raise ValueError(f"tensor '{name}' has layout {t.layout}; send dense tensors (call .to_dense())")
                code = _CODE_BY_TORCH.get(t.dtype)
                if code is None:
                    raise ValueError(f"tensor '{name}' has dtype {t.dtype}; frames carry {', '.join(map(str, SUPPORTED_DTYPES))}")
                if t.is_neg():
                    t = t.resolve_neg()
                if t.is_conj():
                    t = t.resolve_conj()
                shape = tuple(t.shape)
                numel = math.prod(shape)
                nbytes = numel * t.element_size()
                spec = None
                if config is not None and config.compress_type != "no_compress":
                    spec = config.spec(numel, seq, name)
                if plan_only:
                    src, where = None, "device"
                elif spec is not None and t.device.type in ("cuda", "cpu") and codec_torch.supports(spec, t.dtype):
                    src, where = codec_torch.encode(spec, t, name), "device"
                elif spec is not None:  # a codec the GPU path does not cover: on the host
                    src, where = _host_buffer(path, t.to("cpu"))[2], "host_codec"
                else:
                    src, where = t.contiguous().reshape(-1).view(torch.uint8), "device"
            else:
                code, shape, src = _host_buffer(path, value)
                nbytes = src.nbytes
                spec = None
                if config is not None and config.compress_type != "no_compress":
                    spec = config.spec(math.prod(shape), seq, name)
                where = "host_codec" if spec is not None else "host"
            largest = max(largest, nbytes)
            self.entries.append((path, code, shape, src, spec, where, residual))
            proxies.append((path, code, shape, nbytes, spec))
        # The C++ encoder validates the tensors (names, shapes, codec parameters) and sizes the frame
        # from placeholders of the right size that it never reads; the header written here must agree.
        placeholder = memoryview(cast(Any, np.empty(largest, dtype=np.uint8)))
        native = int(
            _core.wire.packed_size(
                [(p, c, sh, placeholder[:nb], sp, None) for p, c, sh, nb, sp in proxies], sender, seq, step, kind
            )
        )
        self.lengths = [
            int(_core.codec.encoded_size(sp, c, math.prod(sh), _name(p))) if sp is not None else nb
            for p, c, sh, nb, sp in proxies
        ]
        self.header, self.offsets, self.payload_length = frame_header(
            sender, seq, step, kind, [(p, c, sh, ln, sp) for (p, c, sh, _, sp), ln in zip(proxies, self.lengths)]
        )
        self.total = len(self.header) + self.payload_length
        if self.total != native:
            raise RuntimeError(
                f"internal error: the device frame layout has {self.total} bytes, the C++ encoder "
                f"plans {native}; please report this"
            )


def _pack_device(
    tensors: TensorTree,
    compress: Mapping[str, CompressConfig] | None,
    error_feedback: ErrorFeedback | None,
    seq: int,
    sender: str,
    step: int,
    kind: str,
    out: Any,
    all_tensors: bool = False,
) -> Any:
    """A frame with device tensors: header, then each slot filled once (device-to-host straight into
    the frame buffer for device tensors). Returns a NumPy uint8 array over a pinned pooled buffer
    (buffer protocol), or a memoryview of ``out``'s written bytes."""
    plan = _DevicePlan(tensors, compress, error_feedback, seq, sender, step, kind, all_tensors=all_tensors)
    if out is not None:
        mv = memoryview(out).cast("B")
        if mv.readonly:
            raise ValueError("out= must be a writable buffer")
        if mv.nbytes < plan.total:
            raise ValueError(f"out= has {mv.nbytes} bytes but the frame needs {plan.total}")
        frame = torch.frombuffer(mv, dtype=torch.uint8)[: plan.total] if plan.total else torch.empty(0, dtype=torch.uint8)
    else:
        frame = pinned_pool().acquire(plan.total)
    h = len(plan.header)
    frame_np = frame.numpy()
    frame_np[:h] = np.frombuffer(plan.header, dtype=np.uint8)
    payload_np = frame_np[h:]
    cursor = 0
    devices = set()
    pinned = _is_pinned(frame)
    try:
        for (path, code, _shape, src, spec, where, residual), off, length in zip(plan.entries, plan.offsets, plan.lengths):
            payload_np[cursor:off] = 0  # gaps: a reused buffer must not leak an older frame's bytes
            cursor = off + length
            if length == 0:
                continue
            if where == "device":
                # On the current stream, after the kernels that produced src (or encoded it) there.
                frame[h + off : h + off + length].copy_(src, non_blocking=pinned)
                devices.add(src.device)
            elif where == "host":
                payload_np[off : off + length] = np.frombuffer(memoryview(src).cast("B"), dtype=np.uint8)
            else:
                _core.codec.encode(spec, code, src, payload_np[off : off + length], _name(path), residual)
        payload_np[cursor:] = 0
    finally:
        # The frame is complete before anyone reads it; on an error, no copy into the buffer is still
        # running when the pool hands it out again.
        for d in devices:
            if d.type == "cuda":
                torch.cuda.current_stream(d).synchronize()
    if out is not None:
        return memoryview(out).cast("B")[: plan.total]
    return frame_np


class DeviceFrameChunks:
    """``pack_chunks``' result for a frame with device tensors: the frame was built whole in a pinned
    pooled buffer (each tensor byte copied from the device once); chunks are slices of it."""

    def __init__(self, frame: Any, chunk_size: int) -> None:
        self._frame = memoryview(frame).cast("B")
        self._chunk = chunk_size

    @property
    def nbytes(self) -> int:
        return self._frame.nbytes

    def __len__(self) -> int:
        return -(-self._frame.nbytes // self._chunk)

    def chunk(self, index: int, prefix: Any = None) -> bytes:
        if not 0 <= index < len(self):
            raise IndexError(f"chunk index {index} out of range")
        part = self._frame[index * self._chunk : (index + 1) * self._chunk]
        return bytes(prefix) + bytes(part) if prefix is not None else bytes(part)


def _unpack_device(mv: memoryview, header: Any, device: torch.device) -> Frame:
    """The frame's tensors on ``device``: the payload in (pinned) host memory, one host-to-device
    copy, compressed tensors decoded there (``codec_torch``; on the host where it does not cover the
    codec). Works for any device (tests run it with a CPU device)."""
    from splitlink import codec_torch

    base = _byte_view(mv)
    p0, plen = header.payload_offset, header.payload_length
    src = base[p0 : p0 + plen]
    staged_here = device.type != "cpu" and not _is_pinned(src)
    if staged_here:
        staged = pinned_pool().acquire(plen)  # pinned where CUDA is available, never on a CPU-only machine
        staged.copy_(src)
        src = staged
    pinned = _is_pinned(src)
    on_dev = torch.empty(plen, dtype=torch.uint8, device=device)
    if plen:
        on_dev.copy_(src, non_blocking=pinned)
        if staged_here and pinned and device.type == "cuda":
            done = torch.cuda.Event()  # type: ignore[no-untyped-call]
            done.record(torch.cuda.current_stream(device))
            pinned_pool().record(src, done)  # the staging buffer is not handed out before the copy ends
    tensors: dict[str, Any] = {}
    flat: dict[tuple[str, ...], torch.Tensor] = {}
    codecs: dict[tuple[str, ...], str] = {}
    for desc in header.tensors:
        path, code, shape, offset, length, spec = desc.path, desc.dtype, desc.shape, desc.offset, desc.length, desc.codec
        dtype = _TORCH_BY_CODE[code]
        rel = offset - p0
        if spec is not _NO_CODEC and spec.type != 0:
            name = _name(path)
            if codec_torch.supports(spec, dtype):
                t = codec_torch.decode(spec, on_dev[rel : rel + length], dtype, tuple(shape), name)
            else:
                t, target = _decode_target(tuple(shape), dtype, None)
                _core.codec.decode(spec, code, mv, offset, length, target, name)
                t = t.to(device)
            codecs[path] = spec.name
        elif length == 0:
            t = torch.empty(shape, dtype=dtype, device=device)
        else:
            t = on_dev[rel : rel + length]
            if rel % dtype.itemsize:
                t = t.clone()  # only frames of other encoders: a slot not aligned to its element size
            t = t.view(dtype).view(shape)
        flat[path] = t
        node = tensors
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = t
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()  # complete tensors; the staging buffer is free again
    return Frame(header.version, header.sender, header.seq, header.step, header.kind, tensors, flat, mv, codecs)
