"""Secure aggregation (SecAgg+, :mod:`splitlink.horizontal.secagg`) inside the FedAvg rounds.

With ``aggregator: secure`` a round runs the SecAgg stages over the rounds' own transport, every frame
carrying the round id (the secagg messages inside carry it too, so a replay or a late frame is refused):

==================  ========================================  =====================================
stage               aggregator -> client                      client -> aggregator
==================  ========================================  =====================================
train + advertise   ``fl:train`` (global state, round's       ``fl:sa:advert`` (public keys, seed
                    clients, secagg parameters)               commitment, sample count, mean loss)
share               ``fl:sa:roster`` (neighbours' adverts,    ``fl:sa:shares`` (encrypted shares)
                    this client's weight)
masked input        ``fl:sa:shares`` (shares addressed to     ``fl:sa:masked`` (masked, quantised
                    this client)                              update: ring integers)
unmask              ``fl:sa:unmask`` (survivors, dropped)     ``fl:sa:unmask`` (seed / key shares)
==================  ========================================  =====================================

Every stage waits at most the round deadline; who has not answered by then is out of the round (secagg
recovers the masks of clients that dropped after sharing when at least ``threshold`` survive; fewer is a
:class:`~splitlink.horizontal.rounds.RoundError` naming who dropped at which stage).

What a client masks: its update ``delta = local - global`` of the exchanged floating-point tensors,
flattened in sorted name order (float64 difference rounded to float32), multiplied (float32) by the weight
the aggregator announces in its roster, ``w_i = samples_i / max_j samples_j`` over the clients that advertised
(so ``w_i <= 1``: equal sample counts lose no quantisation resolution), clipped to ``[-clip, clip]`` and
stochastically rounded to ``bits``-bit integers (the rounding keystream is seeded by the client's training
seed, the round and its name: reruns and the multi-process run reproduce the in-process run bit for bit).
The aggregator unmasks ``S = sum_i w_i delta_i`` over the survivors and takes ``mean = global + S / sum_i w_i``
(float64, cast back to each tensor's dtype): the survivors' sample-weighted mean, as FedAvg's, within the
quantisation step ``clip / (2^(bits-1)-1)`` per element and client. The strategy's server optimizer
(FedAvgM, FedAdam) then works on that mean as on FedAvg's. Non-floating tensors keep the global value
(an individual client's integer buffer would reveal it).

The aggregator learns each client's sample count and mean training loss (as plain FedAvg does), the
number of values clipped over the round (reported per round), and the sum; never an individual update.
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from splitlink.horizontal.client import seed_of
from splitlink.horizontal.secagg import (
    SecAggClient,
    SecAggConfig,
    SecAggError,
    SecAggServer,
)

__all__ = [
    "SA_ADVERT",
    "SA_MASKED",
    "SA_ROSTER",
    "SA_SHARES",
    "SA_UNMASK",
    "SecureParticipant",
    "SecureSettings",
    "flatten_delta",
    "pack_map",
    "unpack_map",
    "weighted",
]

log = logging.getLogger(__name__)

SA_ADVERT, SA_ROSTER, SA_SHARES, SA_MASKED, SA_UNMASK = (
    "fl:sa:advert",
    "fl:sa:roster",
    "fl:sa:shares",
    "fl:sa:masked",
    "fl:sa:unmask",
)
State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class SecureSettings:
    """The job's ``fed_args.secure``: threshold t (None: the smallest valid, ``(k+1)//2 + 1``), neighbours k
    (None: all other sampled clients up to 8 clients, else the smallest even k >= 2 log2(n) (SecAgg+)),
    clip (bound on each element of a client's weighted update), bits of one quantised value, ring bits."""

    clip: float
    threshold: int | None = None
    neighbours: int | None = None
    bits: int = 16
    ring_bits: int = 32

    def neighbourhood(self, n: int) -> int:
        if self.neighbours is not None:
            return self.neighbours
        if n <= 8:
            return n - 1
        k = 2 * max(1, (n - 1).bit_length())  # ~2 log2 n, even (a Harary graph for any n)
        return min(n - 1, k + (k % 2))

    def config(self, n: int, session: str) -> SecAggConfig:
        """The SecAggConfig of a round of ``n`` clients (validated: clear errors naming the numbers)."""
        k = self.neighbourhood(n)
        t = self.threshold if self.threshold is not None else (k + 1) // 2 + 1
        cfg = SecAggConfig(
            threshold=t,
            clip=float(self.clip),
            neighbours=None if k == n - 1 else k,
            bits=self.bits,
            ring_bits=self.ring_bits,
            session=session.encode(),
        )
        cfg.validate(n)
        return cfg

    def to_tensor(self) -> torch.Tensor:
        return torch.tensor(
            [
                self.clip,
                -1 if self.threshold is None else self.threshold,
                -1 if self.neighbours is None else self.neighbours,
                self.bits,
                self.ring_bits,
            ],
            dtype=torch.float64,
        )

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> SecureSettings:
        v = [float(x) for x in t.reshape(-1).tolist()]
        if len(v) != 5 or not all(math.isfinite(x) for x in v):
            raise ValueError(f"malformed secure-aggregation parameters ({len(v)} values)")
        return cls(
            clip=v[0],
            threshold=None if v[1] < 0 else int(v[1]),
            neighbours=None if v[2] < 0 else int(v[2]),
            bits=int(v[3]),
            ring_bits=int(v[4]),
        )


# --- framing helpers ---------------------------------------------------------------------------------


def bytes_tensor(b: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(b), dtype=torch.uint8) if b else torch.zeros(0, dtype=torch.uint8)


def tensor_bytes(t: Any, what: str) -> bytes:
    if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 or t.dim() != 1:
        raise ValueError(f"{what}: expected a 1-D uint8 tensor")
    return bytes(t.numpy().tobytes())


def pack_map(m: Mapping[str, bytes]) -> bytes:
    """name -> bytes as one blob: u16 count, then (u16 name length, name, u32 length, bytes) each."""
    out = [struct.pack("<H", len(m))]
    for k in sorted(m):
        kb = k.encode()
        out += [struct.pack("<H", len(kb)), kb, struct.pack("<I", len(m[k])), m[k]]
    return b"".join(out)


def unpack_map(blob: bytes, what: str) -> dict[str, bytes]:
    """The inverse of :func:`pack_map`; a malformed blob is a ValueError naming ``what`` (never an overread)."""
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(blob):
            raise ValueError(f"{what}: truncated ({len(blob)} bytes)")
        pos += n
        return blob[pos - n : pos]

    out: dict[str, bytes] = {}
    for _ in range(struct.unpack("<H", take(2))[0]):
        try:
            k = take(struct.unpack("<H", take(2))[0]).decode()
        except UnicodeDecodeError:
            raise ValueError(f"{what}: a name is not UTF-8") from None
        if k in out:
            raise ValueError(f"{what}: {k!r} appears twice")
        out[k] = take(struct.unpack("<I", take(4))[0])
    if pos != len(blob):
        raise ValueError(f"{what}: {len(blob) - pos} trailing bytes")
    return out


def names_tensor(names: Sequence[str]) -> torch.Tensor:
    return bytes_tensor("\n".join(names).encode())


def tensor_names(t: Any, what: str) -> list[str]:
    raw = tensor_bytes(t, what)
    try:
        return raw.decode().split("\n") if raw else []
    except UnicodeDecodeError:
        raise ValueError(f"{what}: client names are not UTF-8") from None


def float_names(state: Mapping[str, torch.Tensor]) -> list[str]:
    """The tensors that are aggregated securely, in the fixed order every party uses: floating, sorted by name."""
    return sorted(k for k, v in state.items() if v.is_floating_point())


def flatten_delta(local: Mapping[str, torch.Tensor], global_state: Mapping[str, torch.Tensor], *, spare: int = 0) -> torch.Tensor:
    """``local - global`` of the floating tensors in :func:`float_names` order, flat float32 (each difference
    taken in float64 and rounded once; one tensor's float64 temporaries at a time). ``spare``: elements
    allocated after the returned view (``view._base``), so that the masked input can be written over it."""
    names = float_names(global_state)
    if set(local) != set(global_state):
        raise ValueError("the trained state does not hold the global state's tensors")
    numel = sum(global_state[k].numel() for k in names)
    out = torch.empty(numel + spare, dtype=torch.float32)[:numel]
    pos = 0
    for k in names:
        g, x = global_state[k].detach(), local[k].detach()
        if tuple(x.shape) != tuple(g.shape):
            raise ValueError(f"tensor {k!r}: trained shape {tuple(x.shape)}, global {tuple(g.shape)}")
        n = g.numel()
        if x.dtype == g.dtype == torch.float32:  # float32 - float32 rounded once equals the float64 difference
            torch.sub(x.reshape(-1), g.reshape(-1), out=out[pos : pos + n])  # rounded (double rounding is exact here)
        else:
            out[pos : pos + n].copy_(x.reshape(-1).to(torch.float64) - g.reshape(-1).to(torch.float64))
        pos += n
    return out


def weighted(delta: torch.Tensor, weight: float) -> torch.Tensor:
    """What a client masks: its flat float32 update times its announced weight, in place (float32 product)."""
    return delta if weight == 1.0 else delta.mul_(torch.tensor(weight, dtype=torch.float32))


_MEAN_CHUNK = 1 << 20  # elements per step of secure_mean's float64 temporaries (8 MiB each, reused)


def secure_mean(global_state: Mapping[str, torch.Tensor], total: torch.Tensor, weight_sum: float) -> State:
    """``global + total / weight_sum`` reshaped per tensor (float64, cast back); non-floating tensors unchanged.
    Element-wise, in chunks: the float64 temporaries are a few MiB reused, never the model's size (a fresh
    buffer of hundreds of MB costs more to touch than the arithmetic)."""
    names = float_names(global_state)
    numel = sum(global_state[k].numel() for k in names)
    if total.numel() != numel:
        raise ValueError(f"the secure sum holds {total.numel()} values, the global state {numel}")
    flat = total.reshape(-1)
    d64 = torch.empty(min(_MEAN_CHUNK, max(numel, 1)), dtype=torch.float64)
    g64 = torch.empty_like(d64)
    out: State = {}
    pos = 0
    for k in names:
        g = global_state[k]
        res = torch.empty(g.shape, dtype=g.dtype)
        gf, rf = g.reshape(-1), res.view(-1)
        for a in range(0, g.numel(), _MEAN_CHUNK):
            m = min(_MEAN_CHUNK, g.numel() - a)
            d, h = d64[:m], g64[:m]
            d.copy_(flat[pos + a : pos + a + m]).div_(weight_sum)
            h.copy_(gf[a : a + m]).add_(d)
            rf[a : a + m].copy_(h)
        out[k] = res
        pos += g.numel()
    return {k: out.get(k, v.clone()) for k, v in global_state.items()}


# --- the client's side -------------------------------------------------------------------------------


class SecureParticipant:
    """One client's secure-aggregation stages, driven by the aggregator's frames (shared by
    :class:`~splitlink.horizontal.rounds.ClientParty` and the in-process transport).

    ``expected``: the settings this client's own job file names; a round announcing other ones is refused."""

    def __init__(self, name: str, seed: int, expected: SecureSettings | None = None, *, threads: int = 0) -> None:
        self.name, self.seed, self.expected, self.threads = name, seed, expected, threads
        self.round: int | None = None
        self._client: SecAggClient | None = None
        self._delta: torch.Tensor | None = None
        self._pieces: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None  # (trained, global) float32
        self._weight: float | None = None

    def start(
        self, round_: int, msg: Mapping[str, Any], local: Mapping[str, torch.Tensor], samples: int, loss: float
    ) -> tuple[str, dict[str, torch.Tensor]]:
        """After local training on ``msg`` (an ``fl:train`` frame with secagg parameters): the advert."""
        settings = SecureSettings.from_tensor(msg["secagg"])
        if self.expected is not None and settings != self.expected:
            raise ValueError(
                f"the aggregator announces secure aggregation {settings}, this client's job file says "
                f"{self.expected}; every party must use the same job file"
            )
        clients = tensor_names(msg["sa_clients"], "fl:train clients")
        session = tensor_bytes(msg["sa_session"], "fl:train session").decode("utf-8", "replace")
        cfg = settings.config(len(clients), session)
        self.round = round_
        self._client = SecAggClient(
            self.name, cfg, round_, clients, rounding_seed=seed_of("secagg", self.seed, round_, self.name), threads=self.threads
        )
        self._pieces = None
        self._delta = None
        names = float_names(msg["state"])
        if set(local) != set(msg["state"]):
            raise ValueError("the trained state does not hold the global state's tensors")
        if cfg.ring_bits == 32 and all(
            local[k].dtype == msg["state"][k].dtype == torch.float32 and local[k].shape == msg["state"][k].shape for k in names
        ):
            # float32 in Z/2^32: the native pass takes (trained - global) * weight itself, no delta buffer
            self._pieces = ([local[k].detach() for k in names], [msg["state"][k].detach() for k in names])
        else:  # room for the masked input's extra elements: in Z/2^32 it is written over the update itself
            self._delta = flatten_delta(local, msg["state"], spare=SecAggClient.EXTRA_ELEMENTS)
        self._weight = None
        return SA_ADVERT, {
            "round": torch.tensor(round_, dtype=torch.int64),
            "advert": bytes_tensor(self._client.advertise()),
            "samples": torch.tensor(samples, dtype=torch.int64),
            "loss": torch.tensor(loss, dtype=torch.float64),
        }

    def handle(self, kind: str, msg: Mapping[str, Any]) -> tuple[str, dict[str, torch.Tensor]] | None:
        """The answer to one of the aggregator's secagg frames; None for a frame of another round (stale)."""
        r = int(msg["round"])
        if self._client is None or r != self.round:
            log.info("client %s: dropped a %s frame of round %d (now round %s)", self.name, kind, r, self.round)
            return None
        c, head = self._client, {"round": torch.tensor(r, dtype=torch.int64)}
        if kind == SA_ROSTER:
            w = float(msg["weight"])
            if not 0 < w <= 1:
                raise SecAggError(f"{self.name}: the announced weight {w} is not in (0, 1]")
            self._weight = w
            shares = c.share(unpack_map(tensor_bytes(msg["roster"], "roster"), "roster"))
            return SA_SHARES, {**head, "shares": bytes_tensor(pack_map(shares))}
        if kind == SA_SHARES and self._pieces is not None:
            assert self._weight is not None
            shares = unpack_map(tensor_bytes(msg["shares"], "shares"), "shares")
            masked = c.masked_input(self._pieces[0], shares, base=self._pieces[1], weight=self._weight)
            self._pieces = None
            return SA_MASKED, {**head, "masked": masked}
        if kind == SA_SHARES:
            assert self._delta is not None and self._weight is not None
            update = weighted(self._delta, self._weight)
            base = update._base
            out = None
            if c.config.ring_bits == 32 and base is not None and base.numel() == update.numel() + SecAggClient.EXTRA_ELEMENTS:
                out = base.view(torch.int32)  # the update's own memory: no fresh buffer of the model's size
            masked = c.masked_input(update, unpack_map(tensor_bytes(msg["shares"], "shares"), "shares"), out=out)
            self._delta = None
            return SA_MASKED, {**head, "masked": masked}
        if kind == SA_UNMASK:
            data = c.unmask(tensor_names(msg["survivors"], "survivors"), tensor_names(msg["dropped"], "dropped"))
            self._client = None
            return SA_UNMASK, {**head, "unmask": bytes_tensor(data)}
        raise ValueError(f"client {self.name}: unexpected {kind!r} frame from the aggregator")


# --- the aggregator's side ---------------------------------------------------------------------------


@dataclass
class SecureOutcome:
    mean: State
    survivors: list[str]
    failed: dict[str, str]
    late: list[str]
    samples: int
    loss: float
    bytes_up: int
    clipped: int
    dropped: dict[str, list[str]]


class SecureRoundFailed(Exception):
    """Raised inside :func:`run_secure_round` with the message the rounds turn into a RoundError."""


def run_secure_round(
    round_: int,
    chosen: Sequence[str],
    state: Mapping[str, torch.Tensor],
    settings: SecureSettings,
    session: str,
    transport: Any,
    deadline: float | None,
    *,
    threads: int = 0,
) -> SecureOutcome:
    """The aggregator's stages of one secure round over ``transport`` (after ``broadcast`` of the fl:train
    frames with the secagg parameters). Returns the survivors' weighted mean state."""
    cfg = settings.config(len(chosen), session)
    numel = sum(state[k].numel() for k in float_names(state))
    server = SecAggServer(cfg, round_, list(chosen), numel=numel, threads=threads)
    failed: dict[str, str] = {}
    late: list[str] = []
    stage_of: dict[str, str] = {}

    def gather(stage: str, got: Any) -> dict[str, Mapping[str, Any]]:
        for c in got.late:
            late.append(c)
            stage_of[c] = stage
        for c, why in got.failed.items():
            failed[c] = why
            stage_of[c] = stage
        return dict(got.answers)

    # stage 0: adverts (after local training)
    samples: dict[str, int] = {}
    losses: dict[str, float] = {}
    for c, t in gather("advertise", transport.exchange(round_, None, {}, SA_ADVERT, deadline)).items():
        try:
            n = int(t["samples"])
            if n < 1:
                raise ValueError(f"reported {n} samples")
            server.receive_advert(c, tensor_bytes(t["advert"], "advert"))
            samples[c], losses[c] = n, float(t["loss"])
        except (ValueError, KeyError) as e:
            failed[c], stage_of[c] = f"refused advert: {e}", "advertise"

    def short(stage: str, have: Sequence[str]) -> SecureRoundFailed:
        gone = {c: stage_of.get(c, "?") for c in chosen if c not in have}
        return SecureRoundFailed(
            f"secure aggregation needs {cfg.threshold} clients (threshold) but only {len(have)} of {len(chosen)} "
            f"remained after the {stage} stage ({', '.join(have) or 'none'}); dropped: "
            + ", ".join(f"{c} (at {s}{': ' + failed[c] if c in failed else ', late'})" for c, s in gone.items())
        )

    if len(samples) < cfg.threshold:
        raise short("advertise", sorted(samples))
    top = max(samples.values())
    weights = {c: n / top for c, n in samples.items()}
    # stage 1: roster and weight out, encrypted shares back
    out = {
        c: {
            "round": torch.tensor(round_, dtype=torch.int64),
            "roster": bytes_tensor(pack_map(server.roster(c))),
            "weight": torch.tensor(weights[c], dtype=torch.float64),
        }
        for c in sorted(samples)
    }
    for c, t in gather("share", transport.exchange(round_, SA_ROSTER, out, SA_SHARES, deadline)).items():
        try:
            server.receive_shares(c, unpack_map(tensor_bytes(t["shares"], "shares"), f"shares of {c}"))
        except (ValueError, KeyError) as e:
            failed[c], stage_of[c] = f"refused shares: {e}", "share"
    sharers = sorted(c for c in samples if c not in stage_of)
    if len(sharers) < cfg.threshold:
        raise short("share", sharers)
    # stage 2: relayed shares out, masked inputs back
    out = {
        c: {"round": torch.tensor(round_, dtype=torch.int64), "shares": bytes_tensor(pack_map(server.shares_for(c)))}
        for c in sharers
    }
    for c, t in gather("masked input", transport.exchange(round_, SA_SHARES, out, SA_MASKED, deadline)).items():
        try:
            server.receive_masked(c, t["masked"])
        except (ValueError, KeyError) as e:
            failed[c], stage_of[c] = f"refused masked input: {e}", "masked input"
    try:
        survivors, dropped = server.unmask_request()
    except SecAggError:
        raise short("masked input", sorted(c for c in sharers if c not in stage_of)) from None
    # stage 3: unmask request out, shares of seeds / keys back
    out = {
        c: {
            "round": torch.tensor(round_, dtype=torch.int64),
            "survivors": names_tensor(survivors),
            "dropped": names_tensor(dropped),
        }
        for c in survivors
    }
    for c, t in gather("unmask", transport.exchange(round_, SA_UNMASK, out, SA_UNMASK, deadline)).items():
        try:
            server.receive_unmask(c, tensor_bytes(t["unmask"], "unmask"))
        except (ValueError, KeyError) as e:
            failed[c], stage_of[c] = f"refused unmask response: {e}", "unmask"
    try:
        total, report = server.result()
    except SecAggError as e:
        raise SecureRoundFailed(f"secure aggregation could not unmask the sum: {e}") from None
    wsum = sum(weights[c] for c in survivors)
    n_samples = sum(samples[c] for c in survivors)
    return SecureOutcome(
        mean=secure_mean(state, total, wsum),
        survivors=list(survivors),
        failed={c: w for c, w in failed.items() if c not in survivors},
        late=[c for c in late if c not in survivors],
        samples=n_samples,
        loss=sum(losses[c] * samples[c] for c in survivors) / max(1, n_samples),
        bytes_up=sum(report.bytes_received.values()),
        clipped=report.clipped,
        dropped={
            "advertise": list(report.dropped_at_advertise),
            "share": list(report.dropped_at_share),
            "masked_input": list(report.dropped_at_masking),
            "unmask": list(report.dropped_at_unmask),
        },
    )
