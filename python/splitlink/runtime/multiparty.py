"""More than two parties: one leader (labels, top network) and any number of followers, each with its own
bottom network and columns, and the aggregation layer that combines the followers' embeddings.

The leader's YAML declares the followers and, per remote input, who sends it and how several followers'
tensors are combined::

    followers: [follower1, follower2, follower3]
    model:
      train_net:
        inputs:
          - name: follower_deep_embedding
            source: remote
            party: [follower1, follower2, follower3]
            aggregate: sum        # concat (along dim 1, in the order listed) | sum | mean
            secure: true          # sum/mean only: the leader sees only the masked ring elements
            frac_bits: 16         # fixed point of the masks (quantisation step 2^-16)
          - name: follower1_extra
            source: remote
            party: follower1      # one follower's tensor, as is

The leader tells every follower the plan (which of its outputs go into which aggregation, masked or
not) in its hello, so the followers' YAMLs stay two-party ones. The gradient of a sum is the same for
every follower (of a mean: divided by N), of a concatenation the follower's slice; the leader sends
each follower its gradients as in the two-party split.

Secure aggregation: threat model
--------------------------------
Followers holding a securely aggregated input agree per run (and again after every restart, as part of
the resume agreement) on pairwise X25519 keys over the mutually authenticated channel (mutual TLS: the
certificates authenticate the public keys; the leader does not relay them). Each follower sends
``fixed(x_i) + sum_j +-PRG(k_ij, stream)`` in Z/2^64, :class:`splitlink.secure.PairwiseMasker`'s
masks, re-keyed per step and tensor by the stream id (a fresh AES-CTR keystream per (pair, stream)).
The leader sums the N ring elements (:func:`splitlink.secure.sum_masked`): the masks cancel exactly and
it decodes ``sum_i fixed(x_i)``; ``|decoded - float sum| <= N * 2^-(frac_bits+1)`` per element
(:func:`splitlink.secure.fixed_point_error_bound`), a mean divides that by N.

* Honest-but-curious leader, followers that do not collude with it: each masked tensor the leader
  receives is uniformly distributed in the ring whatever the embedding (every follower shares a mask
  with at least one other follower), so the leader learns the sum and nothing else about any single
  follower's embedding.
* A coalition of the leader and a set C of followers, |C| <= N-2: the masks between the >= 2 honest
  followers stay unknown, so the coalition learns the sum of the honest followers' embeddings
  (the total minus its own) and nothing about any single honest one. With |C| = N-1 the one honest
  follower's embedding is the total minus the coalition's: inherent to publishing a sum.
* Not hidden: frame sizes and timing, the sum itself (the leader trains on it), the gradient the
  leader sends back (the same to every follower). Followers are semi-honest too: a follower that
  sends garbage corrupts the sum undetected. |x| must stay below ``PairwiseMasker.range``
  (2^51 / 2^frac_bits; larger values are refused).
* A follower lost mid-run: the leader waits for every follower's tensor before it sums anything; a
  follower that sends nothing within ``peer_timeout`` stops the step with an error naming it (no
  partial sum is ever decoded: with a missing share the masks do not cancel). A follower restarted
  with resume makes every party go back to the newest checkpoint all of them hold (the leader tells
  the followers that were waiting for it with a ``rejoin`` frame) and re-agree the masking keys.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from splitlink import secure
from splitlink.runtime.party import Party, TrainOptions

__all__ = [
    "Aggregation",
    "aggregations",
    "followers_of",
    "combine",
    "split_grad",
    "Plan",
    "plan_for",
    "MaskingSession",
    "MultiParty",
    "RejoinRequested",
    "train_stream",
    "eval_stream",
    "REJOIN_KIND",
]

log = logging.getLogger(__name__)
REJOIN_KIND = "rejoin"
# frames of the training loop a party may find from a peer when a restart interrupted a step
STALE_KINDS = ("tensors", "eval", REJOIN_KIND)
_MAX_TENSORS = 256
SMALL = 1 << 18  # elements: below this, masking and summing run on one thread


@dataclass(frozen=True)
class Aggregation:
    """How the leader gets one remote input: ``kind`` "single" (one follower's tensor), "concat", "sum"
    or "mean" of ``parties``' tensors of that name."""

    name: str
    parties: tuple[str, ...]
    kind: str
    secure: bool = False
    frac_bits: int = 16

    def error_bound(self) -> float:
        """Largest |decoded - float| per element the fixed-point masking adds (0 when not secure)."""
        if not self.secure:
            return 0.0
        b = secure.fixed_point_error_bound(len(self.parties), self.frac_bits)
        return b / len(self.parties) if self.kind == "mean" else b


def followers_of(yaml: Any) -> list[str]:
    """The leader YAML's ``followers`` ([] for a two-party YAML)."""
    return list(yaml.raw.get("followers") or [])


def aggregations(yaml: Any, net: str = "train_net") -> dict[str, Aggregation]:
    """The remote inputs of ``net`` that name their party, by input name, in YAML order."""
    spec = yaml.train_net if net == "train_net" else (yaml.eval_net or yaml.train_net)
    out: dict[str, Aggregation] = {}
    for i in spec.inputs:
        if i.source != "remote" or i.party is None:
            continue
        parties = (i.party,) if isinstance(i.party, str) else tuple(i.party)
        kind = i.aggregate or ("single" if len(parties) == 1 else "concat")
        if kind == "concat" and len(parties) == 1:
            kind = "single"
        out[i.name] = Aggregation(i.name, parties, kind, bool(i.secure), i.frac_bits)
    return out


def combine(agg: Aggregation, parts: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The leader's input ``agg.name`` from every follower's tensor (masked int64 ones when secure).
    Every follower's tensor must be there: a sum is never decoded from a partial set."""
    missing = [p for p in agg.parties if p not in parts]
    if missing:
        raise RuntimeError(
            f"{agg.name!r}: no tensor from {', '.join(map(repr, missing))}; the step stops here "
            "(a sum is never formed from a partial set of followers)"
        )
    xs = [parts[p] for p in agg.parties]
    if agg.kind == "single":
        return xs[0]
    if agg.kind == "concat":
        return torch.cat(xs, dim=1)
    shapes = {tuple(x.shape) for x in xs}
    if len(shapes) != 1:
        raise ValueError(
            f"{agg.name!r}: the followers' tensors have shapes "
            f"{', '.join(f'{p}: {tuple(x.shape)}' for p, x in zip(agg.parties, xs))}; a {agg.kind} needs "
            "one shape (do the followers' bottom networks have the same output width?)"
        )
    if agg.secure:
        for p, x in zip(agg.parties, xs):
            if x.dtype != torch.int64:
                raise ValueError(
                    f"{agg.name!r} from {p!r} is {x.dtype}, not the masked int64 ring elements secure "
                    "aggregation needs (is the follower running the same plan?)"
                )
        total = secure.sum_masked(xs, frac_bits=agg.frac_bits, threads=1 if xs[0].numel() < SMALL else 0)
    else:
        total = xs[0] + xs[1]
        for x in xs[2:]:
            total += x
    return total / len(xs) if agg.kind == "mean" else total


def split_grad(agg: Aggregation, grad: torch.Tensor, widths: Mapping[str, int] | None = None) -> dict[str, torch.Tensor]:
    """Each follower's gradient of the leader's input ``agg.name``: the same for a sum (divided by N for a
    mean), its columns for a concatenation (``widths``: each follower's dim-1 width)."""
    if agg.kind == "single":
        return {agg.parties[0]: grad}
    if agg.kind == "concat":
        assert widths is not None
        return dict(zip(agg.parties, torch.split(grad, [widths[p] for p in agg.parties], dim=1)))
    g = grad / len(agg.parties) if agg.kind == "mean" else grad
    return dict.fromkeys(agg.parties, g)


# ---- the plan the leader sends every follower --------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What one follower must know of the leader's YAML: its outputs that go into secure aggregations
    (name -> (index, frac_bits, the group of followers))."""

    masked: dict[str, tuple[int, int, tuple[str, ...]]]

    def encode(self) -> torch.Tensor:
        blob = json.dumps({k: [i, f, list(g)] for k, (i, f, g) in sorted(self.masked.items())}).encode()
        return torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob else torch.zeros(0, dtype=torch.uint8)

    @classmethod
    def decode(cls, t: Any, sender: str) -> Plan:
        try:
            raw = json.loads(bytes(t.numpy().tobytes()).decode())
            masked = {str(k): (int(v[0]), int(v[1]), tuple(str(x) for x in v[2])) for k, v in raw.items()}
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
            raise ValueError(f"malformed aggregation plan from {sender!r}: {e}") from None
        for k, (i, f, g) in masked.items():
            if not 0 <= i < _MAX_TENSORS or not 0 <= f <= 40 or len(g) < 2:
                raise ValueError(f"malformed aggregation plan from {sender!r}: entry {k!r}")
        return cls(masked)


def plan_for(follower: str, aggs: Mapping[str, Aggregation]) -> Plan:
    """The plan of ``follower`` from the leader's aggregations (index: position among the secure ones)."""
    secure_aggs = [a for a in aggs.values() if a.secure]
    if len(secure_aggs) > _MAX_TENSORS:
        raise ValueError(f"at most {_MAX_TENSORS} securely aggregated inputs")
    return Plan({a.name: (i, a.frac_bits, a.parties) for i, a in enumerate(secure_aggs) if follower in a.parties})


def train_stream(step: int, index: int) -> int:
    """The mask stream of secure tensor ``index`` at training step ``step`` (unique per key agreement)."""
    if not 0 <= step < 2**55:
        raise ValueError(f"step {step} out of the stream id range")
    return step * _MAX_TENSORS + index


def eval_stream(step: int, batch: int, index: int) -> int:
    """The mask stream of an evaluation batch after training step ``step`` (the top bit set: never a
    training stream)."""
    if not 0 <= step < 2**31 or not 0 <= batch < 2**24:
        raise ValueError(f"eval stream (step {step}, batch {batch}) out of range")
    return (1 << 63) | (((step << 24) | batch) * _MAX_TENSORS + index)


class MaskingSession:
    """One follower's masks for one run (or one rejoin): a fresh X25519 key pair whose public half goes to
    every other follower in the hello; :meth:`start` derives the pairwise mask keys of each group."""

    def __init__(self, me: str, run_id: str) -> None:
        self.me, self.run_id = me, run_id
        self.keypair = secure.KeyPair.generate()
        self.public = self.keypair.public_bytes
        self.peer_publics: dict[str, bytes] = {}
        self.maskers: dict[str, secure.PairwiseMasker] = {}
        self.plan = Plan({})

    def start(self, plan: Plan) -> None:
        self.plan = plan
        self.maskers = {}
        for name, (_, frac_bits, group) in plan.masked.items():
            if self.me not in group:
                raise ValueError(f"{self.me}: the leader's plan masks {name!r} in a group without this party")
            missing = [p for p in group if p != self.me and p not in self.peer_publics]
            if missing:
                raise RuntimeError(
                    f"{self.me}: no masking key from {', '.join(missing)}; every follower of a secure "
                    "aggregation must list the others as peers"
                )
            pubs = {p: self.peer_publics[p] for p in group if p != self.me}
            everyone = {self.me: self.public, **pubs}
            # The session id binds the run, the group and every member's fresh public key: both ends of a
            # pair derive the same mask key, and a new agreement (new keys) never repeats a keystream.
            sid = hashlib.sha256(
                b"splitlink nparty masks v1\0"
                + self.run_id.encode()
                + b"\0"
                + name.encode()
                + b"\0"
                + b"".join(p.encode() + b"\0" + everyone[p] for p in sorted(everyone))
            ).digest()
            self.maskers[name] = secure.PairwiseMasker(self.me, self.keypair, pubs, session_id=sid, frac_bits=frac_bits)

    def mask(self, tensors: Mapping[str, torch.Tensor], stream: Callable[[int], int]) -> dict[str, torch.Tensor]:
        """``tensors`` with the planned ones replaced by their masked ring elements."""
        out = dict(tensors)
        for name, masker in self.maskers.items():
            if name in out:
                x = out[name].detach()
                # a step's embeddings are small: waking the native thread pool between training steps
                # costs more than it saves (bench_nparty), so one thread below 2^18 elements
                out[name] = masker.mask(
                    x.float() if x.dtype != torch.float32 else x,
                    stream_id=stream(self.plan.masked[name][0]),
                    name=name,
                    threads=1 if x.numel() < SMALL else 0,
                )
        return out


class RejoinRequested(Exception):
    """The leader says a party restarted: go back to the newest checkpoint all parties hold."""


O = TypeVar("O", bound=TrainOptions)


class MultiParty(Party[O]):
    """A party among N: ``me`` is its name on the channel, ``peers`` every party it talks to (the leader:
    its followers; a follower: the leader and the other followers). The resume agreement runs with every
    peer (the newest step all parties hold); a restart anywhere makes every party rejoin."""

    leader_name = "leader"

    def __init__(self, comm: Any, train: O, me: str, peers: Sequence[str]) -> None:
        super().__init__(comm, train)
        if me in peers or len(set(peers)) != len(peers):
            raise ValueError(f"{me}: peers must be distinct other parties, got {list(peers)}")
        self.me, self.peers = me, list(peers)

    @property
    def name(self) -> str:
        return self.label or self.me

    @property
    def is_leader(self) -> bool:
        return self.me == self.leader_name

    def agreement_peers(self) -> list[str]:
        return list(self.peers)

    def _agreement_send(self, peer: str, tensors: Mapping[str, Any], kind: str) -> None:
        from splitlink.channel import PeerRestartedError

        for _ in range(3):
            try:
                return self.send(tensors, kind=kind, peer=peer)
            except PeerRestartedError as e:  # learnt now; the new process gets this offer
                log.info("%s: %s during the agreement; sending again", self.name, e)
        raise RuntimeError(f"{self.name}: {peer!r} kept restarting during the resume agreement")

    def _agreement_receive(self, peer: str) -> tuple[str, dict[str, Any]]:
        from splitlink.channel import PeerRestartedError

        for _ in range(10_000):
            try:
                kind, got = self.receive_any(peer=peer)
            except PeerRestartedError as e:  # the old process's frames are gone; the new one's offer follows
                log.info("%s: %s during the agreement", self.name, e)
                continue
            if kind in STALE_KINDS:  # a step the restart interrupted
                log.info("%s: dropped a %r frame of an interrupted step from %s", self.name, kind, peer)
                continue
            return kind, got
        raise RuntimeError(f"{self.name}: no resume offer from {peer!r}")

    def broadcast_rejoin(self, except_for: str | None) -> None:
        """The leader: tell every other follower to go back to the newest common checkpoint."""
        from splitlink.channel import PeerRestartedError

        for p in self.peers:
            if p != except_for:
                try:
                    self.send({}, kind=REJOIN_KIND, peer=p)
                except PeerRestartedError:
                    pass  # it restarted too: it agrees anyway

    def receive_step(self, peer: str, what: str, kind: str = "tensors") -> dict[str, Any]:
        """A step's frame from ``peer``; a follower told to rejoin raises :class:`RejoinRequested`; a peer
        that sends nothing within ``peer_timeout`` stops the step with an error naming it."""
        from splitlink.channel import PeerClosedError, PeerUnavailableError

        try:
            got_kind, got = self.receive_any(peer=peer)
        except (TimeoutError, PeerUnavailableError, PeerClosedError) as e:
            raise RuntimeError(
                f"{self.name}: step {self.step}: no {what} from {peer!r} ({e}); the step stops here "
                f"(no partial sum). Restart {peer!r} with resume: true to continue from the newest "
                "checkpoint every party holds"
            ) from e
        if got_kind == REJOIN_KIND:
            raise RejoinRequested(f"{peer} asks every party to go back to the newest common checkpoint")
        if got_kind != kind:
            raise ValueError(f"{self.name}: expected a {kind!r} frame from {peer!r} ({what}), got {got_kind!r}")
        return got

    def run(self) -> Any:
        """As :meth:`Party.run`, for N parties: a restart of any party (or a ``rejoin`` from the leader)
        makes this one agree again with every peer and train on."""
        from splitlink.channel import PeerRestartedError

        self.save_start()
        rejoin = False
        while True:
            try:
                self.agree(rejoin)
                return self.train_loop()
            except PeerRestartedError as e:
                log.warning("%s: %s: going back to the newest common checkpoint", self.name, e)
                if self.is_leader:
                    self.broadcast_rejoin(e.peer)
            except RejoinRequested as e:
                log.warning("%s: %s: going back to the newest common checkpoint", self.name, e)
            rejoin = True
