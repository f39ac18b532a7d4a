"""Secure aggregation with dropout recovery: SecAgg (Bonawitz et al. 2017) with SecAgg+ neighbourhoods
(Bell et al. 2020), as transport-agnostic state machines.

The aggregator learns the sum of the surviving clients' quantised updates and nothing else about any
single update (semi-honest aggregator, clients honest but possibly dropping out at any stage; the
channel that carries the messages authenticates who sent them, as splitlink's mutual-TLS channel does).

Protocol (one round; every message is ``bytes`` or, for the masked input, a 1-D integer tensor)
----------------------------------------------------------------------------------------------
0. ``SecAggClient.advertise() -> bytes``: two fresh X25519 public keys (one for pairwise masks, one
   for encrypting shares) and a SHA-256 commitment to the client's self-mask seed. The server
   collects them (``SecAggServer.receive_advert``) and sends each client its ``roster(client)``.
1. ``share(roster) -> {neighbour: bytes}``: the self-mask seed ``b`` and the mask private key are
   split t-out-of-(k+1) with Shamir (native, GF(2^61-1), ``splitlink._core.secure.shamir_*``) among
   the client and its k neighbours; each neighbour's pair of shares is encrypted with AES-256-GCM
   (or ChaCha20-Poly1305) under a per-direction key from X25519 + HKDF bound to the round, the client
   list and the configuration, with the message header as associated data. The server routes them
   (``receive_shares``, then ``shares_for(client)``).
2. ``masked_input(update, shares_for_me) -> tensor``: the update is clipped to [-clip, clip] and
   stochastically rounded to integers in [-(2^(bits-1)-1), 2^(bits-1)-1]; two extra elements carry
   the number of clipped values (low 16 bits, high bits), so the server learns only the round's total;
   the client adds +-PRG(pairwise key) for every neighbour it received shares from and +PRG(self key),
   AES-128-CTR keystreams of the keys ``splitlink.secure`` derives for its pairwise masks. In Z/2^32
   rounding and masking are one native pass (``_core.secure.quantise_mask32``, 32-bit keystream
   words); in Z/2^64 the update is rounded natively and masked by the existing 64-bit masker
   (``PairwiseMasker``'s ``mask_encode`` with frac_bits = 0). Four clear trailer words (magic, round id low/high,
   client index) let the
   server refuse a tensor from another round or client. ``receive_masked`` checks each and adds it to a
   running ring sum (one vector held, whatever the number of clients).
3. ``unmask(survivors, dropped) -> bytes``: the server announces who sent a masked input
   (``unmask_request()``); each survivor reveals, for every client whose shares it holds, the share
   of the self-mask seed if that client survived or the share of its mask key if it dropped, never
   both (a client answers once per round).
4. ``SecAggServer.result() -> (sum, report)``: the server reconstructs each survivor's self-mask seed
   (checked against its commitment) and each dropped client's mask key (checked against its
   advertised public key); with more than t shares it tries other t-subsets if one is inconsistent.
   It removes the self masks and the dropped clients' pairwise masks with their surviving neighbours
   from the ring sum of the masked inputs (added up as they arrived) in one native pass, in place
   (``ring32_add_masks``; Z/2^64: ``mask_encode``), and decodes ``sum * clip / (2^(bits-1)-1)``.
   ``exact_sum()`` gives the integer sum of the quantised updates (exact; tests compare it).

Ring and quantisation: ``ring_bits=32`` (default) sends 4 bytes per element, as many as the
float32 update, so the traffic overhead is only the keys and shares (a few hundred bytes per
neighbour); the range check ``n * (2^(bits-1)-1) <= 2^(ring_bits-1)-1`` (``SecAggConfig.validate``)
guarantees the sum of n clients cannot wrap. ``ring_bits=64`` allows more clients or bits at twice
the traffic. Quantised values must be exact float32 integers for the native masker, so bits <= 24.

Neighbourhoods: the public graph is a Harary graph over the sorted client ids (client i is linked to
i +- 1 .. i +- k//2, and to i + n/2 when k is odd, which then needs an even n); k = n-1 (the default)
is the complete graph, i.e. classic SecAgg. Each client's secrets are shared among k+1 holders (its
neighbours and itself), so the threshold must satisfy (k+1)/2 < t <= k+1: more than half, so that a
server that lies about who dropped cannot collect both secrets of one client from honest holders.

Randomness: keys and seeds from the OS / OpenSSL; stochastic rounding (native, one pass) from an
AES-128-CTR keystream keyed by SHA-256 of ``rounding_seed`` (reproducible, whatever the thread
count) or by 16 random bytes.

Secrets of a round (the self-mask seed and the mask private key) pass through Python ``bytes``
while they are split; they live for one round only.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import secrets
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from splitlink import _core
from splitlink.errors import CryptoError, SplitlinkError
from splitlink.secure import (
    CIPHERS,
    Key,
    KeyPair,
    aead_decrypt,
    aead_encrypt,
    derive_session_keys,
    hkdf_sha256,
)

__all__ = [
    "SecAggClient",
    "SecAggConfig",
    "SecAggError",
    "SecAggReport",
    "SecAggServer",
    "harary_neighbours",
    "quantise",
]

MAGIC = b"SLSA"
VERSION = 1
ADVERTISE, SHARE, MASKED, UNMASK = 1, 2, 3, 4
_STAGE_NAMES = {ADVERTISE: "advertise", SHARE: "share", MASKED: "masked input", UNMASK: "unmask"}
_TRAILER_MAGIC = 0x53414731  # "SAG1"
_TRAILER = 4  # magic, round low 32 bits, round high 32 bits, client index
_EXTRA = 2  # clipped count: low 16 bits, high bits
_KEY = 32
_NONCE = bytes(12)  # every share key encrypts exactly one message
_MAX_SUBSETS = 4096  # t-subsets tried per secret when shares disagree
_SHARE_BYTES = _core.secure.shamir_share_bytes(_KEY)


class SecAggError(SplitlinkError, ValueError):
    """A secure-aggregation message or call is refused, or the round cannot complete."""


# --- configuration and the public graph -------------------------------------------------------


@dataclass(frozen=True)
class SecAggConfig:
    """Parameters every party of a round must share.

    threshold: shares needed to reconstruct a client's secret (t).
    clip: updates are clipped to [-clip, clip] (finite, > 0); clipped values are counted.
    neighbours: k, the size of each client's neighbourhood; None = n-1 (classic SecAgg).
    bits: signed width of one quantised value (2..24): values become integers in +-(2^(bits-1)-1).
    ring_bits: 32 or 64, the modulus of the masked values (and their bytes on the wire).
    cipher: AEAD for the shares.
    session: bytes binding the round's keys to one federation (e.g. a job id).
    """

    threshold: int
    clip: float
    neighbours: int | None = None
    bits: int = 16
    ring_bits: int = 32
    cipher: str = "aes-256-gcm"
    session: bytes = b""

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int) or self.threshold < 1:
            raise SecAggError(f"threshold must be an integer >= 1, got {self.threshold!r}")
        if (
            not isinstance(self.clip, (int, float))
            or isinstance(self.clip, bool)
            or not math.isfinite(self.clip)
            or self.clip <= 0
        ):
            raise SecAggError(f"clip must be a finite number > 0 (updates are clipped to [-clip, clip]), got {self.clip!r}")
        if self.neighbours is not None and (not isinstance(self.neighbours, int) or self.neighbours < 1):
            raise SecAggError(f"neighbours must be an integer >= 1 or None (all other clients), got {self.neighbours!r}")
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 24:
            raise SecAggError(f"bits must be 2..24 (quantised values are exact float32 integers), got {self.bits!r}")
        if self.ring_bits not in (32, 64):
            raise SecAggError(f"ring_bits must be 32 or 64, got {self.ring_bits!r}")
        if self.cipher not in CIPHERS:
            raise SecAggError(f"cipher must be one of {', '.join(CIPHERS)}, got {self.cipher!r}")
        if not isinstance(self.session, bytes):
            raise SecAggError("session must be bytes")

    @property
    def levels(self) -> int:
        """Largest |quantised value| of one client: 2^(bits-1) - 1."""
        return (1 << (self.bits - 1)) - 1

    @property
    def scale(self) -> float:
        """Quantisation step: one unit of the ring is clip / levels of the update."""
        return self.levels / float(self.clip)

    def neighbourhood_size(self, n: int) -> int:
        return n - 1 if self.neighbours is None else self.neighbours

    def validate(self, n: int) -> None:
        """Checks the neighbourhood, threshold and ring range for n clients (clear errors naming the numbers)."""
        if n < 2:
            raise SecAggError(f"secure aggregation needs at least 2 clients, got {n}")
        k = self.neighbourhood_size(n)
        if k > n - 1:
            raise SecAggError(f"neighbours = {k} but there are only {n - 1} other clients; use neighbours <= {n - 1}")
        if k % 2 == 1 and k != n - 1 and n % 2 == 1:
            raise SecAggError(
                f"an odd neighbourhood size ({k}) needs an even number of clients (got {n}); use neighbours = {k - 1} or {k + 1}"
            )
        t = self.threshold
        if not (2 * t > k + 1 and t <= k + 1):
            lo = (k + 1) // 2 + 1
            raise SecAggError(
                f"threshold {t} is invalid for neighbourhoods of {k} (secrets shared among {k + 1} "
                f"holders): it must satisfy (k+1)/2 < t <= k+1, i.e. {lo} <= t <= {k + 1}"
            )
        limit = (1 << (self.ring_bits - 1)) - 1
        if n * self.levels > limit:
            raise SecAggError(
                f"the sum of {n} clients' quantised values can reach {n} x {self.levels} = {n * self.levels} "
                f"(bits = {self.bits}), beyond the ring's signed range 2^{self.ring_bits - 1}-1 = {limit}: it would "
                f"overflow; lower bits to at most {min(24, (limit // n + 1).bit_length())} or use ring_bits = 64"
            )
        if n > (1 << 14):
            raise SecAggError(f"at most {1 << 14} clients per round (the clipped-value count must not overflow), got {n}")


def harary_neighbours(clients: Sequence[str], k: int) -> dict[str, tuple[str, ...]]:
    """The public neighbourhood graph: a k-regular Harary graph over the sorted client ids."""
    order = sorted(clients)
    n = len(order)
    if k >= n - 1:
        return {c: tuple(x for x in order if x != c) for c in order}
    offsets = set()
    for d in range(1, k // 2 + 1):
        offsets |= {d, n - d}
    if k % 2:
        offsets.add(n // 2)
    return {c: tuple(sorted(order[(i + d) % n] for d in offsets)) for i, c in enumerate(order)}


class _Plan:
    """What every party derives alike from (config, round id, clients)."""

    def __init__(self, config: SecAggConfig, round_id: int, clients: Sequence[str]) -> None:
        if not isinstance(config, SecAggConfig):
            raise TypeError(f"config must be a SecAggConfig, got {type(config).__name__}")
        if isinstance(round_id, bool) or not isinstance(round_id, int) or not 0 <= round_id < 2**64:
            raise SecAggError(f"round_id must be an integer in [0, 2^64), got {round_id!r}")
        names = list(clients)
        for c in names:
            if not isinstance(c, str) or not c or len(c.encode()) > 255:
                raise SecAggError(f"client ids must be non-empty strings of at most 255 bytes, got {c!r}")
        if len(set(names)) != len(names):
            dup = sorted({c for c in names if names.count(c) > 1})
            raise SecAggError(f"client ids must be distinct; repeated: {dup}")
        config.validate(len(names))
        self.config = config
        self.round_id = round_id
        self.clients = tuple(sorted(names))
        self.index = {c: i for i, c in enumerate(self.clients)}
        self.k = config.neighbourhood_size(len(names))
        self.neighbours = harary_neighbours(self.clients, self.k)
        info = b"".join(_lp(c.encode()) for c in self.clients)
        info += struct.pack(
            "<QIIIIB", round_id, config.threshold, self.k, config.bits, config.ring_bits, CIPHERS[config.cipher]
        ) + struct.pack("<d", float(config.clip))
        self.session_id = hkdf_sha256(config.session or b"\0", b"splitlink secagg v1", info, 32)

    def x(self, client: str) -> int:
        return self.index[client] + 1

    def holders(self, client: str) -> tuple[str, ...]:
        return tuple(sorted((client, *self.neighbours[client])))

    def commitment(self, client: str, seed: bytes) -> bytes:
        return hashlib.sha256(b"splitlink secagg commit" + self.session_id + _lp(client.encode()) + seed).digest()

    def self_key(self, seed: bytes) -> Key:
        return Key(hkdf_sha256(seed, self.session_id, b"splitlink secagg self mask", 32))

    def check_client(self, client: str, what: str) -> None:
        if client not in self.index:
            raise SecAggError(f"{what}: '{client}' is not a client of round {self.round_id}")


# --- messages ------------------------------------------------------------------------------------


def _lp(b: bytes) -> bytes:
    return struct.pack("<H", len(b)) + b


def _header(stage: int, round_id: int, sender: str, recipient: str = "") -> bytes:
    return MAGIC + struct.pack("<BBQ", VERSION, stage, round_id) + _lp(sender.encode()) + _lp(recipient.encode())


class _Reader:
    def __init__(self, data: object, what: str) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise SecAggError(f"{what}: expected bytes, got {type(data).__name__}")
        self.data = bytes(data)
        self.pos = 0
        self.what = what

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise SecAggError(f"{self.what}: truncated ({len(self.data)} bytes, needed {self.pos + n})")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack("<H", self.take(2))[0])

    def lp(self) -> bytes:
        return self.take(self.u16())

    def name(self) -> str:
        raw = self.lp()
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise SecAggError(f"{self.what}: a client id is not UTF-8") from None

    def end(self) -> None:
        if self.pos != len(self.data):
            raise SecAggError(f"{self.what}: {len(self.data) - self.pos} unexpected trailing bytes")


def _open(data: object, stage: int, plan: _Plan, sender: str, recipient: str, what: str) -> tuple[_Reader, bytes]:
    """Parses and checks a message header; returns the reader at the payload and the header bytes."""
    r = _Reader(data, what)
    if r.take(4) != MAGIC:
        raise SecAggError(f"{what}: not a secure-aggregation message (bad magic)")
    version, got_stage, got_round = struct.unpack("<BBQ", r.take(10))
    if version != VERSION:
        raise SecAggError(f"{what}: protocol version {version}, expected {VERSION}")
    if got_round != plan.round_id:
        raise SecAggError(f"{what}: message of round {got_round}, this is round {plan.round_id} (a replay or a late message)")
    if got_stage != stage:
        raise SecAggError(
            f"{what}: a message of stage '{_STAGE_NAMES.get(got_stage, got_stage)}' where stage "
            f"'{_STAGE_NAMES[stage]}' is expected"
        )
    got_sender, got_recipient = r.name(), r.name()
    if got_sender != sender:
        raise SecAggError(f"{what}: the message says it is from '{got_sender}', it came from '{sender}'")
    if got_recipient != recipient:
        raise SecAggError(f"{what}: the message is addressed to '{got_recipient}', not '{recipient}'")
    return r, r.data[: r.pos]


@dataclass(frozen=True)
class _Advert:
    cipher_pub: bytes
    mask_pub: bytes
    commitment: bytes


def _parse_advert(data: object, plan: _Plan, sender: str) -> _Advert:
    what = f"advertisement of '{sender}'"
    r, _ = _open(data, ADVERTISE, plan, sender, "", what)
    sid = r.take(32)
    if sid != plan.session_id:
        raise SecAggError(
            f"{what}: it was made for a different configuration, client list or session than this "
            "round's; every party must use the same SecAggConfig and clients"
        )
    adv = _Advert(r.take(32), r.take(32), r.take(32))
    r.end()
    return adv


# --- quantisation --------------------------------------------------------------------------------


def _flat_f32(update: torch.Tensor) -> torch.Tensor:
    if not isinstance(update, torch.Tensor) or not update.is_floating_point():
        raise SecAggError(
            f"the update must be a floating-point torch.Tensor, got {getattr(update, 'dtype', type(update).__name__)}"
        )
    return update.detach().to(device="cpu", dtype=torch.float32).contiguous().view(-1)


def _rounding_key(seed: int) -> bytes:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise SecAggError(f"rounding_seed must be an integer in [0, 2^64), got {seed!r}")
    return hashlib.sha256(b"splitlink secagg rounding" + seed.to_bytes(8, "little")).digest()[:16]


def _quantise_into(x: torch.Tensor, config: SecAggConfig, key: bytes, out: torch.Tensor, threads: int = 0) -> int:
    """Stochastic rounding of clip(x) * scale into out[:len(x)] (float32 integers); returns the clipped count.
    Native, one pass; the rounding randomness is AES-128-CTR under ``key`` (reproducible)."""
    try:
        return int(
            _core.secure.stochastic_quantise(x.numpy(), float(config.clip), float(config.levels), key, out.numpy(), threads)
        )
    except ValueError as e:
        raise SecAggError(str(e).split(" [")[0]) from None


def quantise(update: torch.Tensor, config: SecAggConfig, *, seed: int) -> tuple[torch.Tensor, int]:
    """(int64 quantised update, flat; clipped count): what a ``SecAggClient`` with ``rounding_seed=seed`` adds."""
    x = _flat_f32(update)
    out = torch.empty(x.numel(), dtype=torch.float32)
    clipped = _quantise_into(x, config, _rounding_key(seed), out)
    return out.to(torch.int64), clipped


def _ring_dtype(config: SecAggConfig) -> torch.dtype:
    return torch.int32 if config.ring_bits == 32 else torch.int64


def _unsigned(t: torch.Tensor) -> np.ndarray:
    a = t.numpy()
    return a.view(np.uint32 if a.dtype == np.int32 else np.uint64)


# --- client --------------------------------------------------------------------------------------


class SecAggClient:
    """One client's side of one round. Call the stages in order, each once."""

    EXTRA_ELEMENTS = _EXTRA + _TRAILER  # ring elements of a masked input after the update's values

    def __init__(
        self,
        client_id: str,
        config: SecAggConfig,
        round_id: int,
        clients: Sequence[str],
        *,
        rounding_seed: int | None = None,
        threads: int = 0,
    ) -> None:
        self._plan = _Plan(config, round_id, clients)
        self._plan.check_client(client_id, "SecAggClient")
        self.client_id = client_id
        self.config = config
        self.round_id = round_id
        self.threads = threads
        self.clipped: int | None = None  # values clipped in this client's update (after masked_input)
        self._rounding_key = secrets.token_bytes(16) if rounding_seed is None else _rounding_key(rounding_seed)
        self._stage = 0
        self._cipher_kp = KeyPair.generate()
        self._mask_priv = secrets.token_bytes(_KEY)
        self._mask_kp = KeyPair.from_private_bytes(self._mask_priv)
        self._self_seed = secrets.token_bytes(_KEY)
        self._adverts: dict[str, _Advert] = {}
        self._held: dict[str, tuple[bytes, bytes]] = {}  # client -> (share of its seed, share of its mask key)
        self._advert_bytes = b""

    @property
    def neighbours(self) -> tuple[str, ...]:
        return self._plan.neighbours[self.client_id]

    def _enter(self, stage: int, method: str) -> None:
        if self._stage != stage - 1:
            done = _STAGE_NAMES.get(self._stage, "none")
            raise SecAggError(
                f"{self.client_id}: {method}() called out of order (last completed stage: {done}); "
                "the stages are advertise, share, masked_input, unmask, each once"
            )
        self._stage = stage

    def advertise(self) -> bytes:
        """Stage 0: this client's public keys and seed commitment."""
        self._enter(ADVERTISE, "advertise")
        p = self._plan
        self._advert_bytes = (
            _header(ADVERTISE, p.round_id, self.client_id)
            + p.session_id
            + self._cipher_kp.public_bytes
            + self._mask_kp.public_bytes
            + p.commitment(self.client_id, self._self_seed)
        )
        return self._advert_bytes

    def share(self, roster: Mapping[str, bytes]) -> dict[str, bytes]:
        """Stage 1: encrypted shares for each neighbour in the roster (the advertisements the server relays)."""
        self._enter(SHARE, "share")
        p, me = self._plan, self.client_id
        if roster.get(me) != self._advert_bytes:
            raise SecAggError(f"{me}: the roster does not hold this client's own advertisement unchanged")
        for name in roster:
            p.check_client(name, f"{me}: roster")
        live = [v for v in self.neighbours if v in roster]
        for v in live:
            self._adverts[v] = _parse_advert(roster[v], p, v)
        holders = sorted([me, *live])
        t = self.config.threshold
        if len(holders) < t:
            raise SecAggError(
                f"{me}: only {len(holders) - 1} of its {p.k} neighbours advertised; its secrets need "
                f"{t} holders (threshold), so it cannot take part in round {p.round_id}"
            )
        xs = [p.x(h) for h in holders]
        seed_shares = _core.secure.shamir_split(self._self_seed, t, xs)
        key_shares = _core.secure.shamir_split(self._mask_priv, t, xs)
        out = {}
        for h, bs, ks in zip(holders, seed_shares, key_shares):
            if h == me:
                self._held[me] = (bs, ks)
                continue
            key = derive_session_keys(
                self._cipher_kp, self._adverts[h].cipher_pub, me=me, peer=h, session_id=p.session_id, cipher=self.config.cipher
            ).send
            head = _header(SHARE, p.round_id, me, h)
            out[h] = head + aead_encrypt(self.config.cipher, key, _NONCE, head, bs + ks)
        return out

    def masked_input(
        self,
        update: torch.Tensor | Sequence[torch.Tensor],
        shares_for_me: Mapping[str, bytes],
        *,
        out: torch.Tensor | None = None,
        base: Sequence[torch.Tensor] | None = None,
        weight: float = 1.0,
    ) -> torch.Tensor:
        """Stage 2: the masked, quantised update (1-D int32 for ring_bits=32, int64 for 64).

        ``shares_for_me``: the encrypted shares the server relays, by sender. A share that fails to
        decrypt (tampered, replayed from another round or pair) is refused with ``SecAggError``.
        ``out`` (ring_bits=32 only): a contiguous 1-D int32 tensor of ``update.numel() + 6`` elements to
        write the result into and return; it may be the flat float32 update's own memory (the update is then
        overwritten), which saves a fresh buffer of the update's size.
        ``base`` (ring_bits=32 only): ``update`` and ``base`` are sequences of float32 tensors of equal shapes
        (a client's trained and global tensors) and the update masked is the flat concatenation of
        ``(update_i - base_i) * float32(weight)``, each operation rounded to float32 as torch's ``sub`` then
        ``mul`` would: computed inside the native pass, without a buffer of the update's size.
        """
        self._enter(MASKED, "masked_input")
        p, me, cfg = self._plan, self.client_id, self.config
        for sender, data in shares_for_me.items():
            if sender not in self._adverts:
                raise SecAggError(f"{me}: a share from '{sender}', which is not an advertised neighbour of this client")
            what = f"{me}: share from '{sender}'"
            r, head = _open(data, SHARE, p, sender, me, what)
            key = derive_session_keys(
                self._cipher_kp, self._adverts[sender].cipher_pub, me=me, peer=sender, session_id=p.session_id, cipher=cfg.cipher
            ).recv
            try:
                plain = aead_decrypt(cfg.cipher, key, _NONCE, head, r.data[r.pos :])
            except CryptoError:
                raise SecAggError(
                    f"{what} failed authentication: it was tampered with, or is not the one "
                    f"'{sender}' encrypted for '{me}' in round {p.round_id}"
                ) from None
            if len(plain) != 2 * _SHARE_BYTES:
                raise SecAggError(f"{what}: holds {len(plain)} bytes, expected {2 * _SHARE_BYTES}")
            bs, ks = plain[:_SHARE_BYTES], plain[_SHARE_BYTES:]
            for s in (bs, ks):
                if _core.secure.shamir_share_x(s) != p.x(me):
                    raise SecAggError(f"{what}: the share is for another holder")
            self._held[sender] = (bs, ks)
        pieces: list[tuple[torch.Tensor, torch.Tensor]] = []
        if base is not None:
            if cfg.ring_bits != 32 or isinstance(update, torch.Tensor) or len(update) != len(base):
                raise SecAggError(
                    f"{me}: base needs ring_bits = 32 and update and base as sequences of tensors of the same length"
                )
            if not isinstance(weight, (int, float)) or not (math.isfinite(weight) and weight > 0):
                raise SecAggError(f"{me}: weight must be a finite number > 0, got {weight!r}")
            for i, (a, b) in enumerate(zip(update, base)):
                if not (
                    isinstance(a, torch.Tensor)
                    and isinstance(b, torch.Tensor)
                    and a.dtype == b.dtype == torch.float32
                    and a.shape == b.shape
                    and a.device.type == b.device.type == "cpu"
                ):
                    raise SecAggError(f"{me}: update and base tensors #{i} must be CPU float32 tensors of the same shape")
                pieces.append((a.detach().contiguous().view(-1), b.detach().contiguous().view(-1)))
            n = sum(a.numel() for a, _ in pieces)
        elif weight != 1.0:
            raise SecAggError(f"{me}: weight is applied with base only; multiply the update instead")
        else:
            if not isinstance(update, torch.Tensor):
                raise SecAggError(f"{me}: the update must be a tensor (a sequence of tensors needs base)")
            x = _flat_f32(update)
            n = x.numel()
        streams = [
            (_core.secure.derive_mask_key(self._mask_kp._kp, self._adverts[v].mask_pub, me, v, p.session_id), 1 if me < v else -1)
            for v in sorted(shares_for_me)
        ]
        streams.append((p.self_key(self._self_seed), 1))
        dtype = _ring_dtype(cfg)
        if out is None:
            out = torch.empty(n + _EXTRA + _TRAILER, dtype=dtype)
        elif (
            not isinstance(out, torch.Tensor)
            or dtype != torch.int32
            or out.dtype != dtype
            or out.dim() != 1
            or not out.is_contiguous()
            or out.device.type != "cpu"
            or out.numel() != n + _EXTRA + _TRAILER
        ):
            raise SecAggError(
                f"{me}: out must be a contiguous 1-D CPU int32 tensor of {n + _EXTRA + _TRAILER} elements "
                f"(ring_bits = 32), got {getattr(out, 'dtype', type(out).__name__)} {tuple(getattr(out, 'shape', ()))}"
            )
        if dtype == torch.int32:
            # one native pass: stochastic rounding, pairwise and self masks, in Z/2^32
            try:
                parts: list[tuple[torch.Tensor, torch.Tensor | None, int]] = []
                if base is None:
                    parts.append((x, None, 0))
                else:
                    at = 0
                    for a, b in pieces:
                        parts.append((a, b, at))
                        at += a.numel()
                w32 = float(np.float32(weight))
                self.clipped = 0
                for a, bp, pos in parts:
                    self.clipped += int(
                        _core.secure.quantise_mask32(
                            a.numpy(),
                            float(cfg.clip),
                            float(cfg.levels),
                            self._rounding_key,
                            streams,
                            0,
                            out[pos : pos + a.numel()].numpy(),
                            self.threads,
                            pos,
                            None if bp is None else bp.numpy(),
                            w32,
                        )
                    )
            except ValueError as e:
                raise SecAggError(str(e).split(" [")[0]) from None
            limbs = np.array([self.clipped & 0xFFFF, self.clipped >> 16], dtype=np.uint32)
            _core.secure.ring32_add_masks([limbs], streams, 0, n, _unsigned(out[n : n + _EXTRA]), self.threads)
        else:
            # Z/2^64: quantise to exact float32 integers, then the native 64-bit masker (frac_bits = 0)
            buf = torch.empty(n + _EXTRA, dtype=torch.float32)
            self.clipped = _quantise_into(x, cfg, self._rounding_key, buf, self.threads)
            buf[n] = float(self.clipped & 0xFFFF)
            buf[n + 1] = float(self.clipped >> 16)
            _core.secure.mask_encode(buf.numpy(), 0, streams, 0, out[: n + _EXTRA].numpy(), f"{me}'s update", self.threads)
        trailer = [_TRAILER_MAGIC, p.round_id & 0xFFFFFFFF, p.round_id >> 32, p.index[me]]
        _unsigned(out[n + _EXTRA :])[:] = trailer
        return out

    def unmask(self, survivors: Sequence[str], dropped: Sequence[str]) -> bytes:
        """Stage 3: for each client whose shares this client holds, the seed share if it survived or
        the mask-key share if it dropped. Refuses a request that names a client in both lists."""
        self._enter(UNMASK, "unmask")
        p, me = self._plan, self.client_id
        surv, drop = set(survivors), set(dropped)
        if surv & drop:
            raise SecAggError(
                f"{me}: the server names {sorted(surv & drop)} as both surviving and dropped; "
                "revealing both shares would unmask them, refused"
            )
        for c in surv | drop:
            p.check_client(c, f"{me}: unmask request")
        if me not in surv:
            raise SecAggError(f"{me}: the unmask request does not list this client as a survivor")
        if len(surv) < self.config.threshold:
            raise SecAggError(
                f"{me}: only {len(surv)} survivors, fewer than the threshold {self.config.threshold}; refusing to reveal shares"
            )
        for v in self.neighbours:
            if v in surv and v not in self._held:
                raise SecAggError(
                    f"{me}: the server lists '{v}' as a survivor but this client never received its "
                    "shares, so it did not mask with it"
                )
        entries = []
        for v, (bs, ks) in sorted(self._held.items()):
            if v in surv:
                entries.append(_lp(v.encode()) + b"b" + _lp(bs))
            elif v in drop:
                entries.append(_lp(v.encode()) + b"s" + _lp(ks))
        self._held.clear()
        return _header(UNMASK, p.round_id, me) + struct.pack("<H", len(entries)) + b"".join(entries)

    def __repr__(self) -> str:
        return f"SecAggClient({self.client_id!r}, round={self.round_id}, stage={_STAGE_NAMES.get(self._stage, 'new')})"


# --- server --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SecAggReport:
    """What happened in one round. ``dropped_at_*``: clients that sent nothing at that stage."""

    round_id: int
    clients: tuple[str, ...]
    survivors: tuple[str, ...]  # clients whose update is in the sum
    dropped_at_advertise: tuple[str, ...]
    dropped_at_share: tuple[str, ...]
    dropped_at_masking: tuple[str, ...]  # shared, then dropped: their pairwise masks were reconstructed
    dropped_at_unmask: tuple[str, ...]  # in the sum, but sent no shares at the last stage
    clipped: int  # values clipped to [-clip, clip] over the survivors' updates
    neighbours: int
    threshold: int
    numel: int
    bytes_received: dict[str, int] = field(default_factory=dict)  # per client, all stages


class SecAggServer:
    """The aggregator's side of one round. Each ``receive_*`` checks stage, round, sender and
    duplicates; the first call of ``roster``, ``shares_for``, ``unmask_request``, ``result`` closes the
    stage before it (later messages of a closed stage are refused as late)."""

    def __init__(
        self, config: SecAggConfig, round_id: int, clients: Sequence[str], *, numel: int | None = None, threads: int = 0
    ) -> None:
        self._plan = _Plan(config, round_id, clients)
        self.config = config
        self.round_id = round_id
        self.threads = threads
        self._numel = numel
        self._stage = ADVERTISE  # the stage now collecting
        self._adverts: dict[str, _Advert] = {}
        self._advert_bytes: dict[str, bytes] = {}
        self._shares: dict[str, dict[str, bytes]] = {}  # sender -> recipient -> message
        self._masked: dict[str, int] = {}  # client -> bytes of its masked input (summed on receipt)
        self._acc: np.ndarray | None = None  # ring sum of the masked inputs received so far
        self._unmask: dict[str, dict[str, tuple[str, bytes]]] = {}  # responder -> target -> (kind, share)
        self._bytes: dict[str, int] = {}
        self._sum: np.ndarray | None = None
        self._report: SecAggReport | None = None

    @property
    def clients(self) -> tuple[str, ...]:
        return self._plan.clients

    def _receiving(self, stage: int, client: str, seen: Mapping[str, object], method: str) -> None:
        self._plan.check_client(client, method)
        if self._stage != stage:
            state = "closed" if self._stage > stage else "not open yet"
            raise SecAggError(
                f"{method}: a {_STAGE_NAMES[stage]} message from '{client}' but that stage is {state} "
                f"(collecting: {_STAGE_NAMES.get(self._stage, 'nothing, the round is over')})"
            )
        if client in seen:
            raise SecAggError(
                f"{method}: '{client}' already sent its {_STAGE_NAMES[stage]} message this round (a replay or duplicate); refused"
            )

    def _count(self, client: str, n: int) -> None:
        self._bytes[client] = self._bytes.get(client, 0) + n

    def _close(self, stage: int) -> None:
        if self._stage == stage:
            self._stage = stage + 1
        elif self._stage < stage:
            raise SecAggError(
                f"the {_STAGE_NAMES[stage]} stage has not started (still collecting {_STAGE_NAMES[self._stage]} messages)"
            )

    # stage 0
    def receive_advert(self, client_id: str, data: bytes) -> None:
        self._receiving(ADVERTISE, client_id, self._adverts, "receive_advert")
        self._adverts[client_id] = _parse_advert(data, self._plan, client_id)
        self._advert_bytes[client_id] = bytes(data)
        self._count(client_id, len(data))

    def roster(self, client_id: str) -> dict[str, bytes]:
        """The advertisements ``client_id`` needs (its own and its neighbours'); closes stage 0."""
        self._close(ADVERTISE)
        if len(self._adverts) < self.config.threshold:
            raise SecAggError(
                f"round {self.round_id}: only {len(self._adverts)} clients advertised "
                f"({sorted(self._adverts)}), fewer than the threshold {self.config.threshold}; "
                f"missing: {self._missing(set(self.clients), self._adverts)}"
            )
        if client_id not in self._adverts:
            raise SecAggError(f"roster: '{client_id}' did not advertise in time and is out of round {self.round_id}")
        return {c: self._advert_bytes[c] for c in self._plan.holders(client_id) if c in self._adverts}

    # stage 1
    def receive_shares(self, client_id: str, shares: Mapping[str, bytes]) -> None:
        self._receiving(SHARE, client_id, self._shares, "receive_shares")
        if client_id not in self._adverts:
            raise SecAggError(f"receive_shares: '{client_id}' did not advertise, so it cannot share")
        expected = {v for v in self._plan.neighbours[client_id] if v in self._adverts}
        if set(shares) != expected:
            raise SecAggError(
                f"receive_shares: '{client_id}' sent shares for {sorted(shares)}, expected exactly its "
                f"advertised neighbours {sorted(expected)}"
            )
        for v, data in shares.items():
            _open(data, SHARE, self._plan, client_id, v, f"share from '{client_id}' to '{v}'")
        self._shares[client_id] = dict(shares)
        self._count(client_id, sum(len(d) for d in shares.values()))

    def shares_for(self, client_id: str) -> dict[str, bytes]:
        """The encrypted shares addressed to ``client_id`` by clients that shared; closes stage 1."""
        self._close(SHARE)
        if client_id not in self._shares:
            raise SecAggError(f"shares_for: '{client_id}' did not send its shares in time and is out of round {self.round_id}")
        return {u: self._shares[u][client_id] for u in self._plan.neighbours[client_id] if u in self._shares}

    # stage 2
    def receive_masked(self, client_id: str, masked: torch.Tensor) -> None:
        self._receiving(MASKED, client_id, self._masked, "receive_masked")
        what = f"masked input from '{client_id}'"
        if client_id not in self._shares:
            raise SecAggError(f"{what}: it did not send shares, so its masks could not be removed; refused")
        dtype = _ring_dtype(self.config)
        if not isinstance(masked, torch.Tensor) or masked.dtype != dtype or masked.dim() != 1:
            raise SecAggError(
                f"{what}: expected a 1-D {dtype} tensor, got "
                f"{getattr(masked, 'dtype', type(masked).__name__)} {tuple(getattr(masked, 'shape', ()))}"
            )
        n = masked.numel() - _EXTRA - _TRAILER
        if n < 1:
            raise SecAggError(f"{what}: {masked.numel()} elements, too short")
        if self._numel is None:
            self._numel = n
        elif n != self._numel:
            raise SecAggError(f"{what}: holds {n} values, the others {self._numel}")
        masked = masked.detach().cpu().contiguous()
        trailer = [int(v) for v in _unsigned(masked[n + _EXTRA :])]
        if trailer[0] != _TRAILER_MAGIC:
            raise SecAggError(f"{what}: not a secure-aggregation masked input (bad trailer)")
        got_round = trailer[1] | (trailer[2] << 32)
        if got_round != self.round_id:
            raise SecAggError(f"{what}: made for round {got_round}, this is round {self.round_id} (a replay)")
        if trailer[3] != self._plan.index[client_id]:
            got = self._plan.clients[trailer[3]] if trailer[3] < len(self.clients) else f"#{trailer[3]}"
            raise SecAggError(f"{what}: made by '{got}', not by the client that sent it")
        # Only the survivors' sum is ever needed (dropouts change which masks come off, not the sum of what
        # arrived), so each input is added on receipt: one vector held, whatever the number of clients.
        y = _unsigned(masked)[: n + _EXTRA]
        if self._acc is None:
            self._acc = y.copy()
        elif self.config.ring_bits == 32:
            _core.secure.ring32_add_masks([self._acc, y], [], 0, 0, self._acc, self.threads)
        else:
            np.add(self._acc, y, out=self._acc)
        self._masked[client_id] = masked.numel() * masked.element_size()
        self._count(client_id, self._masked[client_id])

    def unmask_request(self) -> tuple[list[str], list[str]]:
        """(survivors, dropped): who sent a masked input, and who shared but did not; closes stage 2.
        Send both lists to every survivor. Fewer survivors than the threshold is an error."""
        self._close(MASKED)
        survivors = sorted(self._masked)
        dropped = sorted(set(self._shares) - set(self._masked))
        if len(survivors) < self.config.threshold:
            raise SecAggError(
                f"round {self.round_id}: {len(survivors)} clients sent masked inputs ({survivors}), fewer than the "
                f"threshold {self.config.threshold}; "
                f"dropped before advertising: {self._missing(set(self.clients), self._adverts)}, "
                f"before sharing: {self._missing(set(self._adverts), self._shares)}, before masking: {dropped}"
            )
        return survivors, dropped

    @staticmethod
    def _missing(expected: set[str], got: Mapping[str, object]) -> list[str]:
        return sorted(expected - set(got))

    # stage 3
    def receive_unmask(self, client_id: str, data: bytes) -> None:
        self._receiving(UNMASK, client_id, self._unmask, "receive_unmask")
        what = f"unmask response from '{client_id}'"
        if client_id not in self._masked:
            raise SecAggError(f"{what}: it is not a survivor of round {self.round_id}; refused")
        r, _ = _open(data, UNMASK, self._plan, client_id, "", what)
        x = self._plan.x(client_id)
        entries: dict[str, tuple[str, bytes]] = {}
        for _ in range(r.u16()):
            target = r.name()
            kind = r.take(1).decode("latin-1")
            share = r.lp()
            if target in entries:
                raise SecAggError(f"{what}: two shares for '{target}'")
            if target not in self._shares:
                raise SecAggError(f"{what}: a share for '{target}', which did not share in this round")
            if client_id not in self._plan.holders(target):
                raise SecAggError(f"{what}: a share for '{target}', whose shares it does not hold")
            want = "b" if target in self._masked else "s"
            if kind != want:
                raise SecAggError(
                    f"{what}: a {'seed' if kind == 'b' else 'mask-key'} share for '{target}', "
                    f"which {'survived' if want == 'b' else 'dropped'}; refused"
                )
            try:
                ok = len(share) == _SHARE_BYTES and _core.secure.shamir_share_x(share) == x
            except ValueError:
                ok = False
            if not ok:
                raise SecAggError(f"{what}: the share for '{target}' is malformed or not at this holder's coordinate")
            entries[target] = (kind, share)
        r.end()
        self._unmask[client_id] = entries
        self._count(client_id, len(data))

    def _reconstruct(self, target: str, kind: str, check: object) -> bytes:
        shares = [(h, e[target][1]) for h, e in sorted(self._unmask.items()) if target in e]
        t = self.config.threshold
        label = "self-mask seed" if kind == "b" else "mask key"
        if len(shares) < t:
            raise SecAggError(
                f"round {self.round_id}: the {label} of '{target}' needs {t} shares, only {len(shares)} holders "
                f"answered ({[h for h, _ in shares]}); dropped at unmasking: "
                f"{sorted(set(self._masked) - set(self._unmask))}"
            )
        for i, subset in enumerate(itertools.combinations(shares, t)):
            if i >= _MAX_SUBSETS:
                break
            try:
                secret = _core.secure.shamir_combine([s for _, s in subset], t)
            except ValueError:
                continue
            if check(secret):  # type: ignore[operator]
                return secret
        raise SecAggError(
            f"round {self.round_id}: the shares of the {label} of '{target}' from "
            f"{[h for h, _ in shares]} are inconsistent (a corrupted or malicious share): no {t} of them "
            "reconstruct the committed value"
        )

    def result(self) -> tuple[torch.Tensor, SecAggReport]:
        """(float32 sum of the survivors' dequantised updates, flat; report); closes stage 3."""
        if self._report is not None:
            raise SecAggError(f"round {self.round_id}: result() was already computed")
        self._close(UNMASK)
        p, cfg = self._plan, self.config
        survivors = sorted(self._masked)
        dropped = sorted(set(self._shares) - set(self._masked))
        streams = []
        for u in survivors:
            adv = self._adverts[u]
            seed = self._reconstruct(u, "b", lambda s, u=u, adv=adv: p.commitment(u, s) == adv.commitment)
            streams.append((p.self_key(seed), -1))
        for v in dropped:
            adv = self._adverts[v]
            priv = self._reconstruct(v, "s", lambda s, adv=adv: KeyPair.from_private_bytes(s).public_bytes == adv.mask_pub)
            kp = KeyPair.from_private_bytes(priv)
            for w in p.neighbours[v]:
                if w in self._masked:  # w added sign(w, v) * PRG(k_vw); take it off
                    key = _core.secure.derive_mask_key(kp._kp, self._adverts[w].mask_pub, v, w, p.session_id)
                    streams.append((key, -1 if w < v else 1))
        n = int(self._numel or 0)
        acc = self._acc
        assert acc is not None  # unmask_request() refused a round without masked inputs
        self._acc = None
        if cfg.ring_bits == 32:  # one native pass over the survivors' sum: every mask to remove, in place
            _core.secure.ring32_add_masks([acc], streams, 0, 0, acc, self.threads)
        else:
            zeros = torch.zeros(n + _EXTRA, dtype=torch.float32)
            corr = torch.empty(n + _EXTRA, dtype=torch.int64)
            _core.secure.mask_encode(zeros.numpy(), 0, streams, 0, corr.numpy(), "correction", self.threads)
            del zeros
            np.add(acc, _unsigned(corr), out=acc)
            del corr
        signed = acc.view(np.int32 if cfg.ring_bits == 32 else np.int64)
        self._sum = signed
        clipped = int(signed[n]) + (int(signed[n + 1]) << 16)
        total = torch.from_numpy(signed[:n]).to(torch.float32).mul_(1.0 / cfg.scale)
        self._stage = UNMASK + 1
        self._report = SecAggReport(
            round_id=self.round_id,
            clients=self.clients,
            survivors=tuple(survivors),
            dropped_at_advertise=tuple(self._missing(set(self.clients), self._adverts)),
            dropped_at_share=tuple(self._missing(set(self._adverts), self._shares)),
            dropped_at_masking=tuple(dropped),
            dropped_at_unmask=tuple(self._missing(set(self._masked), self._unmask)),
            clipped=clipped,
            neighbours=p.k,
            threshold=cfg.threshold,
            numel=n,
            bytes_received=dict(self._bytes),
        )
        self._masked.clear()
        return total, self._report

    def exact_sum(self) -> torch.Tensor:
        """The integer sum of the survivors' quantised updates (int64, flat), after ``result()``."""
        if self._sum is None or self._report is None:
            raise SecAggError("exact_sum() is available after result()")
        return torch.from_numpy(self._sum[: self._report.numel]).to(torch.int64)

    def __repr__(self) -> str:
        return (
            f"SecAggServer(round={self.round_id}, clients={len(self.clients)}, "
            f"collecting={_STAGE_NAMES.get(self._stage, 'done')!r})"
        )
