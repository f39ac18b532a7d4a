"""The transport's messages: the one place that encodes and decodes them.

The service ``splitlink.v1.Transport`` and the exact bytes of every message are documented in
``protos/splitlink/v1/transport.proto``. The messages are fixed little-endian structs, not protobuf
(gRPC carries them with identity serializers); the frames inside ``Send``/``SendOne`` are the protobuf
``Frame`` of ``frame.proto``.

Every ``decode`` takes bytes from the network and either returns a message or raises
``ProtocolError`` with a reason fit for a gRPC status; it never reads out of bounds.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from splitlink import wire
from splitlink.errors import WireError

__all__ = [
    "SERVICE",
    "SEND",
    "SEND_ONE",
    "SEND_RANGE",
    "HELLO",
    "ANNOUNCE",
    "MAGIC",
    "RANGE_MAGIC",
    "STREAM_HEADER",
    "RANGE_HEADER",
    "ANNOUNCEMENT",
    "INCARNATION",
    "PUBLIC_KEY_BYTES",
    "ProtocolError",
    "StreamHeader",
    "RangeHeader",
    "Announcement",
    "Hello",
    "Ack",
    "ACK_OK",
    "ACK_DUP",
    "ACK_STALE",
    "ACK_PART",
    "encode_incarnation",
    "decode_incarnation",
    "frame_origin",
    "claimed_party",
    "check_kind",
]

SERVICE = "splitlink.v1.Transport"
SEND = f"/{SERVICE}/Send"  # client stream: a StreamHeader, then the frame in chunks
SEND_ONE = f"/{SERVICE}/SendOne"  # a frame that fits one chunk: StreamHeader and frame in one message
# client stream: a RangeHeader, then the bytes [offset, offset + length) of a frame; the ranges of one
# frame travel as parallel calls and the receiver assembles them (added in transport version 1.1)
SEND_RANGE = f"/{SERVICE}/SendRange"
HELLO = f"/{SERVICE}/Hello"  # X25519 public keys, when frames are sealed
ANNOUNCE = f"/{SERVICE}/Announce"  # which process a party is (sent at launch)

MAGIC = b"SLC2"
# magic, sender incarnation, receiver incarnation the frame is meant for (0: not known yet), seq, step,
# total bytes, sender name length; the sender's name follows.
STREAM_HEADER = struct.Struct("<4sQQQQQH")
# The same fields as STREAM_HEADER, then the range's offset and length in the frame; its own magic, so
# no receiver can take a range for a whole frame or the reverse.
RANGE_MAGIC = b"SLR1"
RANGE_HEADER = struct.Struct("<4sQQQQQQQH")
ANNOUNCEMENT = struct.Struct("<4sQH")  # magic, incarnation, name length; the name follows
_NAME_LEN = struct.Struct("<H")  # Hello: name length; the name and the public key follow
INCARNATION = struct.Struct("<Q")
PUBLIC_KEY_BYTES = 32  # X25519
ACK_OK, ACK_DUP, ACK_STALE = b"OK", b"DUP", b"STALE"
ACK_PART = b"PART"  # SendRange only: the range is stored, the frame is not complete yet
_U64 = 0xFFFFFFFFFFFFFFFF


class ProtocolError(ValueError):
    """Bytes that are not a well-formed transport message; the text says what is wrong."""


def _name(buf: Any) -> str:
    return bytes(buf).decode("utf-8", "replace")


@dataclass(frozen=True)
class StreamHeader:
    """First message of a ``Send`` stream (and the start of a ``SendOne`` message)."""

    sender: str
    incarnation: int  # the sending process's random id
    meant_for: int  # the receiver process the frame is meant for; 0 before first contact
    seq: int
    step: int
    total: int  # bytes of the frame that follows

    def encode(self) -> bytes:
        name = self.sender.encode()
        return (
            STREAM_HEADER.pack(MAGIC, self.incarnation, self.meant_for, self.seq, self.step & _U64, self.total, len(name)) + name
        )

    @classmethod
    def decode(cls, buf: Any, what: str = "stream") -> tuple[StreamHeader, int]:
        """The header at the start of ``buf`` and its length in bytes (what follows is frame data)."""
        if len(buf) < STREAM_HEADER.size or bytes(buf[:4]) != MAGIC:
            raise ProtocolError(f"{what} does not start with a splitlink chunk header")
        _, incarnation, meant_for, seq, step, total, name_len = STREAM_HEADER.unpack_from(buf)
        end = STREAM_HEADER.size + name_len
        if end > len(buf):
            raise ProtocolError("chunk header longer than the message")
        return cls(_name(buf[STREAM_HEADER.size : end]), incarnation, meant_for, seq, step, total), end


@dataclass(frozen=True)
class RangeHeader:
    """First message of a ``SendRange`` stream: which frame (as ``StreamHeader``) and which of its bytes
    follow. Decoding checks the range lies inside the frame (0 < length, offset + length <= total)."""

    sender: str
    incarnation: int
    meant_for: int
    seq: int
    step: int
    total: int  # bytes of the whole frame
    offset: int  # where this range starts in the frame
    length: int  # bytes of this range (the stream's further messages, concatenated)

    def encode(self) -> bytes:
        name = self.sender.encode()
        return (
            RANGE_HEADER.pack(
                RANGE_MAGIC,
                self.incarnation,
                self.meant_for,
                self.seq,
                self.step & _U64,
                self.total,
                self.offset,
                self.length,
                len(name),
            )
            + name
        )

    @classmethod
    def decode(cls, buf: Any) -> RangeHeader:
        if len(buf) < RANGE_HEADER.size or bytes(buf[:4]) != RANGE_MAGIC:
            what = "a whole-frame header" if bytes(buf[:4]) == MAGIC else "not a splitlink range header"
            raise ProtocolError(f"range stream starts with {what} (expected magic {RANGE_MAGIC!r})")
        _, incarnation, meant_for, seq, step, total, offset, length, name_len = RANGE_HEADER.unpack_from(buf)
        if RANGE_HEADER.size + name_len != len(buf):
            raise ProtocolError("range header length does not match its name length")
        if length == 0 or offset + length > total:
            raise ProtocolError(f"range [{offset}, {offset + length}) is empty or outside the {total}-byte frame")
        return cls(_name(buf[RANGE_HEADER.size :]), incarnation, meant_for, seq, step, total, offset, length)


@dataclass(frozen=True)
class Announcement:
    """``Announce`` request: the sending party's name and its process's incarnation."""

    sender: str
    incarnation: int

    def encode(self) -> bytes:
        name = self.sender.encode()
        return ANNOUNCEMENT.pack(MAGIC, self.incarnation, len(name)) + name

    @classmethod
    def decode(cls, buf: Any) -> Announcement:
        if len(buf) < ANNOUNCEMENT.size or bytes(buf[:4]) != MAGIC:
            raise ProtocolError("malformed announcement")
        _, incarnation, name_len = ANNOUNCEMENT.unpack_from(buf)
        if len(buf) != ANNOUNCEMENT.size + name_len:
            raise ProtocolError("malformed announcement")
        return cls(_name(buf[ANNOUNCEMENT.size :]), incarnation)


@dataclass(frozen=True)
class Hello:
    """``Hello`` request: the sending party's name and its fresh X25519 public key (the answer is the
    receiver's public key, 32 bytes)."""

    sender: str
    public_key: bytes

    def encode(self) -> bytes:
        name = self.sender.encode()
        return _NAME_LEN.pack(len(name)) + name + self.public_key

    @classmethod
    def decode(cls, buf: Any) -> Hello:
        if len(buf) < _NAME_LEN.size + PUBLIC_KEY_BYTES:
            raise ProtocolError("malformed key agreement request")
        (name_len,) = _NAME_LEN.unpack_from(buf)
        if len(buf) != _NAME_LEN.size + name_len + PUBLIC_KEY_BYTES:
            raise ProtocolError("malformed key agreement request")
        return cls(_name(buf[_NAME_LEN.size : _NAME_LEN.size + name_len]), bytes(buf[_NAME_LEN.size + name_len :]))


@dataclass(frozen=True)
class Ack:
    """Answer to ``Send``/``SendOne``/``SendRange``: OK (queued), DUP (already had it), STALE (meant for
    this party's previous process) or, to ``SendRange`` only, PART (range stored, frame incomplete),
    then the receiver's incarnation."""

    status: bytes
    incarnation: int

    def encode(self) -> bytes:
        return self.status + INCARNATION.pack(self.incarnation)

    @classmethod
    def decode(cls, buf: Any) -> Ack:
        status = bytes(buf[: -INCARNATION.size])
        if len(buf) <= INCARNATION.size or status not in (ACK_OK, ACK_DUP, ACK_STALE, ACK_PART):
            raise ProtocolError(f"answered {bytes(buf[:16])!r}, not a splitlink acknowledgement")
        return cls(status, INCARNATION.unpack(buf[-INCARNATION.size :])[0])


def encode_incarnation(incarnation: int) -> bytes:
    """``Announce`` answer: the receiver's incarnation."""
    return INCARNATION.pack(incarnation)


def decode_incarnation(buf: Any) -> int | None:
    """The incarnation in an ``Announce`` answer, or None when the answer is not one (ignored)."""
    return INCARNATION.unpack(buf)[0] if len(buf) == INCARNATION.size else None


def frame_origin(frame: Any) -> tuple[str, int]:
    """(sender, seq) from the header of an assembled frame, to match against its stream header."""
    try:
        header = wire.peek_header(frame)
    except WireError as e:
        raise ProtocolError(f"malformed frame: {e}") from None
    return header.sender, header.seq


def claimed_party(method: str, first: Any) -> str | None:
    """The party that the first request message of ``method`` claims to come from; None when the
    message is malformed (the handler refuses it with the reason); KeyError for a method the
    transport does not have (the identity check refuses the call)."""
    try:
        if method in (SEND, SEND_ONE):
            return StreamHeader.decode(first)[0].sender
        if method == SEND_RANGE:
            return RangeHeader.decode(first).sender
        if method == ANNOUNCE:
            return Announcement.decode(first).sender
        if method == HELLO:
            return Hello.decode(first).sender
    except ProtocolError:
        return None
    raise KeyError(f"{method}: not a method of the transport service")


def check_kind(got: str, want: str | None, peer: str) -> None:
    """A frame of kind ``got`` arrived where the application expects ``want`` (None: any)."""
    if want is not None and got != want:
        raise ValueError(
            f"expected a {want!r} frame from {peer!r} but got a {got!r} frame: the parties are at "
            "different stages of the protocol (is the peer running the same program?)"
        )
