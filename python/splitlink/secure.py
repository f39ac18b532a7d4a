"""End-to-end protection of frames, key agreement, and additive masks for secure aggregation.

Everything cryptographic runs in OpenSSL 3 (through the native core's EVP wrappers); nothing here
is hand-written cryptography.

Threat model
------------
*Sealing* (``Sealer`` / ``Opener``, or ``wire.pack(..., sealer=)`` / ``wire.unpack(..., opener=)``)
protects a frame end to end, also across relays and brokers that terminate TLS (FATE routes
through its federation services). It guarantees confidentiality of the tensors, integrity and
authenticity of the whole frame (any flipped bit, truncation, dropped, reordered or spliced
segment is detected), and rejects replayed or reordered frames (seq must increase per sender).
The routing fields (sender, seq, step, kind) stay readable so relays can route; they are
authenticated. Bytes outside the tags and ciphertext that are framing rather than data (field tags,
lengths, padding) are accepted only exactly as the Sealer writes them: a sealed frame must travel
byte for byte (a relay that parses and re-serializes it with protobuf produces a frame that is
refused). It does not hide frame sizes or timing, and it does not protect a party from its
peer: whoever holds the session key reads the tensors. Keys are per session and per direction
(``derive_session_keys``): never reuse a session id, or nonces could repeat.

*Key agreement* (``KeyPair``, ``derive_session_keys``): X25519 + HKDF-SHA256. It is only as
authentic as the channel that carries the public keys: splitlink exchanges them over mutual TLS,
so the parties' certificates authenticate them. Keys are wiped from memory when freed and never
appear in reprs, logs or exception messages; they cannot be pickled.

*Additive masks* (``PairwiseMasker``, ``sum_masked``): each party sends x_i + m_i where the
pairwise masks m_i cancel in the sum, so an aggregator learns only the sum of the parties'
tensors (in 2^-frac_bits fixed point), not any single one, provided parties do not collude with
it and every party's masked tensor arrives (a dropped party leaves its masks in the sum: this is
the semi-honest, no-dropout setting; there is no dropout recovery). Masks are keyed per pair
and per stream id (AES-128-CTR keystreams): use a fresh stream id for every tensor and step.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from splitlink import _core
from splitlink.buffers import default_pool
from splitlink.errors import CryptoError

__all__ = [
    "CIPHERS",
    "Key",
    "KeyPair",
    "SessionKeys",
    "Sealer",
    "Opener",
    "PairwiseMasker",
    "best_cipher",
    "new_session_id",
    "derive_session_keys",
    "hkdf_sha256",
    "aead_encrypt",
    "aead_decrypt",
    "sum_masked",
    "fixed_point_error_bound",
    "CryptoError",
]

CIPHERS: dict[str, int] = dict(_core.secure.CIPHERS)  # name -> the core's cipher code
Key = _core.secure.Key
DEFAULT_SEGMENT: int = _core.secure.DEFAULT_SEGMENT


def _cipher_code(cipher: str) -> int:
    try:
        return CIPHERS[cipher]
    except KeyError:
        raise ValueError(f"cipher must be one of {', '.join(CIPHERS)}; got {cipher!r}") from None


def best_cipher() -> str:
    """AES-256-GCM on CPUs with AES-NI, ChaCha20-Poly1305 elsewhere (faster in software)."""
    return "aes-256-gcm" if _core.cpu_features()["aesni"] else "chacha20-poly1305"


def new_session_id() -> bytes:
    """32 fresh random bytes (from the OS) for one session."""
    return secrets.token_bytes(32)


class KeyPair:
    """An X25519 key pair whose private half stays in native memory."""

    __slots__ = ("_kp",)

    def __init__(self, native: _core.secure.X25519KeyPair) -> None:
        self._kp = native

    @classmethod
    def generate(cls) -> KeyPair:
        return cls(_core.secure.X25519KeyPair.generate())

    @classmethod
    def from_private_bytes(cls, data: bytes) -> KeyPair:
        return cls(_core.secure.X25519KeyPair.from_private_bytes(data))

    @property
    def public_bytes(self) -> bytes:
        return bytes(self._kp.public_bytes())

    def exchange(self, peer_public: bytes) -> Key:
        """The raw X25519 shared secret (use ``derive_session_keys`` for traffic keys)."""
        return self._kp.exchange(peer_public)

    def __repr__(self) -> str:
        return repr(self._kp)

    def __reduce__(self) -> Any:
        raise TypeError("key pairs cannot be pickled")


@dataclass(frozen=True)
class SessionKeys:
    """The key this party seals with (``send``) and the key it opens the peer's frames with."""

    send: Key
    recv: Key
    cipher: str

    def __repr__(self) -> str:
        return f"SessionKeys(cipher={self.cipher!r}, keys hidden)"


def derive_session_keys(
    keypair: KeyPair, peer_public: bytes, *, me: str, peer: str, session_id: bytes, cipher: str = "aes-256-gcm"
) -> SessionKeys:
    """Per-direction AEAD keys bound to both names, both public keys, the cipher and the session.

    Both parties call it with their own names swapped: ``a.send`` equals ``b.recv``.
    """
    send, recv = _core.secure.derive_session_keys(keypair._kp, peer_public, me, peer, session_id, _cipher_code(cipher))
    return SessionKeys(send, recv, cipher)


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF (RFC 5869) with SHA-256, from OpenSSL."""
    return bytes(_core.secure.hkdf_sha256(ikm, salt, info, length))


def aead_encrypt(cipher: str, key: Key, nonce: bytes, aad: bytes, plaintext: bytes) -> bytes:
    """One AEAD message: ciphertext followed by the 16-byte tag. The caller owns nonce uniqueness."""
    return bytes(_core.secure.aead_seal(_cipher_code(cipher), key, nonce, aad, plaintext))


def aead_decrypt(cipher: str, key: Key, nonce: bytes, aad: bytes, sealed: bytes) -> bytes:
    """Inverse of ``aead_encrypt``; ``CryptoError`` when authentication fails."""
    return bytes(_core.secure.aead_open(_cipher_code(cipher), key, nonce, aad, sealed))


class Sealer:
    """Seals frames of one sender under one key. Sequence numbers must increase (never repeat)."""

    def __init__(self, key: Key, sender: str, *, cipher: str = "aes-256-gcm", segment_size: int = DEFAULT_SEGMENT) -> None:
        if not isinstance(key, Key):
            raise TypeError("key must be a splitlink.secure.Key (from derive_session_keys or Key(bytes))")
        self.cipher = cipher
        self._native = _core.secure.Sealer(_cipher_code(cipher), key, sender, segment_size)

    @property
    def sender(self) -> str:
        return str(self._native.sender)

    def seal(self, frame: Any, *, pool: Any = None, threads: int = 0) -> Any:
        """Seals an encoded frame (from ``wire.pack``) into a new buffer."""
        return self._native.seal(frame, default_pool() if pool is None else pool, threads)

    def __repr__(self) -> str:
        return f"Sealer(sender={self.sender!r}, cipher={self.cipher!r})"


class Opener:
    """Opens frames from one peer under one key; rejects replays and reordering."""

    def __init__(self, key: Key, peer: str, *, cipher: str = "aes-256-gcm") -> None:
        if not isinstance(key, Key):
            raise TypeError("key must be a splitlink.secure.Key (from derive_session_keys or Key(bytes))")
        self.cipher = cipher
        self._native = _core.secure.Opener(_cipher_code(cipher), key, peer)

    @property
    def peer(self) -> str:
        return str(self._native.peer)

    @property
    def last_seq(self) -> int:
        return int(self._native.last_seq)

    def open(self, sealed: Any, *, pool: Any = None, threads: int = 0) -> tuple[Any, str, int, int, str]:
        """(plain frame buffer, sender, seq, step, kind); ``CryptoError`` on any failure."""
        return self._native.open(sealed, default_pool() if pool is None else pool, threads)

    def __repr__(self) -> str:
        return f"Opener(peer={self.peer!r}, cipher={self.cipher!r}, last_seq={self.last_seq})"


def fixed_point_error_bound(parties: int, frac_bits: int) -> float:
    """Largest |decoded sum - float sum| of ``parties`` tensors, before float32 rounding."""
    return parties * 2.0 ** -(frac_bits + 1)


class PairwiseMasker:
    """Masks this party's float32 tensors so that only the sum over all parties can be read.

    ``peers`` maps every other party's name to its X25519 public key (exchanged over mutual TLS).
    """

    def __init__(self, me: str, keypair: KeyPair, peers: Mapping[str, bytes], *, session_id: bytes, frac_bits: int = 16) -> None:
        if not 0 <= frac_bits <= 40:
            raise ValueError(f"frac_bits must be 0..40, got {frac_bits}")
        if me in peers:
            raise ValueError(f"peers must not include this party ('{me}')")
        if not peers:
            raise ValueError("masking needs at least one peer")
        self.me = me
        self.frac_bits = frac_bits
        self._streams = [
            (_core.secure.derive_mask_key(keypair._kp, pub, me, name, session_id), 1 if me < name else -1)
            for name, pub in sorted(peers.items())
        ]

    @property
    def range(self) -> float:
        """Largest |x| that can be masked: 2^51 / 2^frac_bits."""
        return float(_core.secure.FIXED_LIMIT) / 2.0**self.frac_bits

    def mask(
        self, x: torch.Tensor, *, stream_id: int, name: str = "tensor", out: torch.Tensor | None = None, threads: int = 0
    ) -> torch.Tensor:
        """int64 ring elements fixed(x) + masks, in one pass. ``stream_id``: unique per tensor and step.

        ``out`` (int64, x's shape) is written instead of a new tensor: reuse it in loops, since
        first touch of fresh memory is slower than the masking itself.
        """
        x = _as_f32(x, name)
        out = _out(out, x.shape, torch.int64)
        _core.secure.mask_encode(x.numpy(), self.frac_bits, self._streams, _stream(stream_id), out.numpy(), name, threads)
        return out

    def unmask(self, y: torch.Tensor, *, stream_id: int, out: torch.Tensor | None = None, threads: int = 0) -> torch.Tensor:
        """Removes this party's own masks from ``y`` and decodes it (reads back its own input)."""
        y = _as_i64(y)
        out = _out(out, y.shape, torch.float32)
        _core.secure.unmask_decode(y.numpy(), self.frac_bits, self._streams, _stream(stream_id), out.numpy(), threads)
        return out

    def __repr__(self) -> str:
        return f"PairwiseMasker(me={self.me!r}, peers={len(self._streams)}, frac_bits={self.frac_bits})"


def sum_masked(
    tensors: Sequence[torch.Tensor], *, frac_bits: int = 16, out: torch.Tensor | None = None, threads: int = 0
) -> torch.Tensor:
    """Sums every party's masked tensor in the ring (the masks cancel) and decodes the sum."""
    if not tensors:
        raise ValueError("sum_masked needs at least one tensor")
    ys = [_as_i64(t) for t in tensors]
    shape = ys[0].shape
    for i, y in enumerate(ys):
        if y.shape != shape:
            raise ValueError(f"masked tensor #{i} has shape {tuple(y.shape)}, expected {tuple(shape)}")
    out = _out(out, shape, torch.float32)
    _core.secure.sum_decode([y.numpy() for y in ys], frac_bits, out.numpy(), threads)
    return out


def _out(out: torch.Tensor | None, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    if out is None:
        return torch.empty(shape, dtype=dtype)
    if out.dtype != dtype or out.shape != shape or out.device.type != "cpu" or not out.is_contiguous():
        raise ValueError(
            f"out must be a contiguous CPU {dtype} tensor of shape {tuple(shape)}, got {out.dtype} {tuple(out.shape)}"
        )
    return out


def _stream(stream_id: int) -> int:
    if not 0 <= stream_id < 2**64:
        raise ValueError(f"stream_id must be in [0, 2^64), got {stream_id}")
    return stream_id


def _as_f32(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32:
        raise TypeError(f"'{name}' must be a float32 torch.Tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    return x.detach().cpu().contiguous()


def _as_i64(y: torch.Tensor) -> torch.Tensor:
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int64:
        raise TypeError(f"masked tensors are int64 torch.Tensors, got {getattr(y, 'dtype', type(y).__name__)}")
    return y.detach().cpu().contiguous()
