"""Rounds of horizontal federated learning: an aggregator (FATE's arbiter) and N clients.

Every round the aggregator

1. samples the round's clients (``clients_per_round`` of them, from ``numpy.random.default_rng([seed,
   round])``: the same choice in every run, resumed or not);
2. sends each the global state (kind ``fl:train``: the round, the exchanged tensors, and a digest of the
   frozen base weights under PEFT, which a client with different base weights refuses);
3. collects their answers (``fl:update``: the trained tensors, the training rows, the mean loss; or
   ``fl:error``: why local training failed) until the round's deadline. Answers to an earlier round (a
   client that was late) are dropped. Fewer than ``min_clients`` answers is a :class:`RoundError`
   naming the late and failed clients; otherwise the late and failed ones are logged and recorded;
4. combines the answers in sampling order with its strategy (:mod:`splitlink.horizontal.aggregator`);
5. checkpoints (global state, the strategy's state, the round) every ``ckpt_every`` rounds through the
   runtime's :class:`~splitlink.runtime.checkpoints.CheckpointSet`.

With a secure strategy (``aggregator: secure``) steps 3-4 are the SecAgg+ stages of
:mod:`splitlink.horizontal.secure_rounds` over the same transport (``fl:sa:*`` frames, each stage
bounded by the round deadline): the aggregator receives masked updates and unmasks only their sum.

At the end it sends every client the final state (``fl:done``). Clients are stateless between rounds
(torch clients) so the aggregator's checkpoint is the federation's: an aggregator restarted with
``resume`` continues from its newest checkpoint, and the result equals the uninterrupted run's bit for
bit.

The transport is the communicator API (``send_tensors``/``receive`` with frame kinds; the gRPC
mutual-TLS ``VerticalFederatedCommunicator`` between processes, identity = certificate name) through
:class:`NetworkTransport`, or :class:`LocalTransport` that calls the clients' trainers in this process
(same results: the in-process reference the multi-process runs are checked against).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from splitlink.errors import SplitlinkError
from splitlink.horizontal.aggregator import ClientUpdate, Strategy
from splitlink.horizontal.client import LocalTrainer
from splitlink.horizontal.secure_rounds import (
    SA_ROSTER,
    SA_SHARES,
    SA_UNMASK,
    SecureParticipant,
    SecureRoundFailed,
    SecureSettings,
    names_tensor,
    run_secure_round,
)
from splitlink.runtime.checkpoints import CheckpointSet
from splitlink.runtime.metrics import Metrics
from splitlink.util import atomic_write

__all__ = [
    "DONE",
    "ERROR",
    "SA_ROSTER",
    "SA_SHARES",
    "SA_UNMASK",
    "TRAIN",
    "UPDATE",
    "Aggregator",
    "ClientParty",
    "Exchanged",
    "LocalTransport",
    "NetworkTransport",
    "RoundError",
    "RoundOptions",
    "StateFile",
    "base_digest",
    "state_bytes",
]

log = logging.getLogger(__name__)

TRAIN, UPDATE, ERROR, DONE = "fl:train", "fl:update", "fl:error", "fl:done"
State = dict[str, torch.Tensor]


class RoundError(SplitlinkError, RuntimeError):
    """A round could not be completed: too few clients answered in time."""


def state_bytes(state: Mapping[str, torch.Tensor]) -> int:
    """Bytes of tensor data in ``state``."""
    return sum(int(t.numel()) * t.element_size() for t in state.values())


def base_digest(model: nn.Module, exchanged: Sequence[str]) -> bytes:
    """SHA-256 over the names, dtypes, shapes and bytes of every parameter and buffer NOT exchanged (the
    frozen base under PEFT): parties with different base weights must not average adapters."""
    h = hashlib.sha256()
    skip = set(exchanged)
    for k, t in [*model.named_parameters(), *model.named_buffers()]:
        if k in skip:
            continue
        a = t.detach().contiguous().cpu()
        h.update(f"{k}|{a.dtype}|{tuple(a.shape)}".encode())
        h.update(a.view(torch.uint8).numpy().tobytes() if a.numel() else b"")
    return h.digest()


def _bytes_tensor(b: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(b), dtype=torch.uint8) if b else torch.zeros(0, dtype=torch.uint8)


def _text(t: torch.Tensor) -> str:
    return bytes(t.numpy().tobytes()).decode("utf-8", "replace")


def _clone(state: Mapping[str, Any]) -> State:
    return {k: v.clone() for k, v in state.items()}


@dataclass
class RoundOptions:
    rounds: int
    clients_per_round: int | None = None  # None: every client every round
    min_clients: int = 1
    round_deadline: float | None = None  # seconds from sending the global state; None: client_timeout
    client_timeout: float = 3600.0  # a client waits this long for the aggregator's next message
    seed: int = 0
    ckpt_dir: str | None = None
    ckpt_every: int = 0  # rounds; 0: no checkpoints
    resume: bool = False
    run_id: str = "run"
    metrics_path: str | None = None


@dataclass
class Collected:
    updates: dict[str, ClientUpdate] = field(default_factory=dict)
    losses: dict[str, float] = field(default_factory=dict)
    late: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    bytes_up: int = 0


@dataclass
class Exchanged:
    """The answers of one secure-aggregation stage: client -> frame tensors; who was late or failed."""

    answers: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    late: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


class Transport(Protocol):
    def broadcast(
        self,
        round_: int,
        clients: Sequence[str],
        state: Mapping[str, torch.Tensor],
        digest: bytes,
        extra: Mapping[str, torch.Tensor] | None = None,
    ) -> int: ...

    def collect(self, round_: int, clients: Sequence[str], deadline: float | None) -> Collected: ...

    def exchange(
        self,
        round_: int,
        send_kind: str | None,
        messages: Mapping[str, Mapping[str, torch.Tensor]],
        reply_kind: str,
        deadline: float | None,
    ) -> Exchanged:
        """Sends ``messages[c]`` with ``send_kind`` to each client (None: nothing, the answers to the round's
        ``fl:train`` are collected), then each client's ``reply_kind`` frame of this round until the deadline."""
        ...

    def finish(self, clients: Sequence[str], state: Mapping[str, torch.Tensor]) -> None: ...


class NetworkTransport:
    """The aggregator's side over a communicator (gRPC with mutual TLS, or in-process)."""

    def __init__(self, comm: Any) -> None:
        self.comm = comm
        self._unreachable: dict[str, str] = {}
        self._asked: list[str] = []
        self._expected: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}

    def broadcast(
        self,
        round_: int,
        clients: Sequence[str],
        state: Mapping[str, torch.Tensor],
        digest: bytes,
        extra: Mapping[str, torch.Tensor] | None = None,
    ) -> int:
        from splitlink.channel import PeerClosedError, PeerRestartedError, PeerUnavailableError

        msg = {
            "round": torch.tensor(round_, dtype=torch.int64),
            "digest": _bytes_tensor(digest),
            "state": dict(state),
            **(extra or {}),
        }
        self._unreachable = {}
        self._asked = list(clients)
        self._expected = {k: (v.dtype, tuple(v.shape)) for k, v in state.items()}
        sent = 0
        for c in clients:
            try:
                self.comm.send_tensors(c, msg, kind=TRAIN, step=round_)
                sent += 1
            except (PeerUnavailableError, PeerClosedError, PeerRestartedError) as e:
                # a client that is down (or was restarted: the frame was meant for its old process) fails
                # this round only; the restart is acknowledged, so the next round reaches the new process
                self._unreachable[c] = f"unreachable ({type(e).__name__}: {e})"
        return state_bytes(state) * sent

    def _answer(self, client: str, round_: int, end: float | None) -> tuple[str | None, Any]:
        """``client``'s next frame of round ``round_`` as (kind, tensors); (None, None) when the deadline
        ``end`` passed (late), (None, reason) when the client failed. Frames of earlier rounds (a late
        client's stale answers) are dropped."""
        from splitlink.channel import PeerClosedError, PeerRestartedError

        while True:
            timeout = None if end is None else max(end - time.monotonic(), 1e-3)
            try:
                kind, t = self.comm.receive(client, timeout, with_kind=True)
            except TimeoutError:
                return None, None
            except (PeerRestartedError, PeerClosedError) as e:
                return None, f"{type(e).__name__}: {e}"
            got = int(t["round"]) if "round" in t else -1
            if got == round_:
                return kind, t
            log.info("aggregator: dropped %s's %s frame of round %d (now round %d)", client, kind, got, round_)

    def collect(self, round_: int, clients: Sequence[str], deadline: float | None) -> Collected:
        out = Collected()
        end = None if deadline is None else time.monotonic() + deadline
        for c in clients:
            if c in self._unreachable:
                out.failed[c] = self._unreachable[c]
                continue
            kind, t = self._answer(c, round_, end)
            if kind is None:
                if t is None:
                    out.late.append(c)
                else:
                    out.failed[c] = t
            elif kind == UPDATE:
                try:
                    update, loss = _valid_update(c, t, self._expected)
                except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
                    out.failed[c] = f"sent an unusable update ({type(e).__name__}: {e})"
                    continue
                out.updates[c] = update
                out.losses[c] = loss
                out.bytes_up += state_bytes(update.state)
            elif kind == ERROR:
                out.failed[c] = _text(t["message"])
            else:
                out.failed[c] = f"sent an unexpected {kind!r} frame"
        return out

    def exchange(
        self,
        round_: int,
        send_kind: str | None,
        messages: Mapping[str, Mapping[str, torch.Tensor]],
        reply_kind: str,
        deadline: float | None,
    ) -> Exchanged:
        from splitlink.channel import PeerClosedError, PeerRestartedError, PeerUnavailableError

        out = Exchanged()
        targets = list(messages) if send_kind is not None else [c for c in self._asked if c not in self._unreachable]
        if send_kind is None:
            out.failed.update({c: why for c, why in self._unreachable.items() if c in self._asked})
        asked = []
        for c in targets:
            if send_kind is None:
                asked.append(c)
                continue
            try:
                self.comm.send_tensors(c, dict(messages[c]), kind=send_kind, step=round_)
                asked.append(c)
            except (PeerUnavailableError, PeerClosedError, PeerRestartedError) as e:
                out.failed[c] = f"unreachable ({type(e).__name__}: {e})"
        end = None if deadline is None else time.monotonic() + deadline
        for c in asked:
            kind, t = self._answer(c, round_, end)
            if kind is None:
                if t is None:
                    out.late.append(c)
                else:
                    out.failed[c] = t
            elif kind == reply_kind:
                out.answers[c] = t
            elif kind == ERROR:
                out.failed[c] = _text(t["message"])
            else:
                out.failed[c] = f"sent an unexpected {kind!r} frame (expected {reply_kind!r})"
        return out

    def finish(self, clients: Sequence[str], state: Mapping[str, torch.Tensor]) -> None:
        from splitlink.channel import PeerClosedError, PeerRestartedError, PeerUnavailableError

        for c in clients:
            try:
                self.comm.send_tensors(c, {"state": dict(state)}, kind=DONE)
            except (PeerUnavailableError, PeerClosedError, PeerRestartedError) as e:
                log.warning(
                    "aggregator: could not tell client %s the federation is done (%s: %s); it stops after its client_timeout",
                    c,
                    type(e).__name__,
                    e,
                )


def _valid_update(
    client: str, t: Mapping[str, Any], expected: Mapping[str, tuple[torch.dtype, tuple[int, ...]]]
) -> tuple[ClientUpdate, float]:
    """A client's ``fl:update`` frame checked before it can reach the strategy: the tensors the global
    state has (names, dtypes, shapes), finite values, at least one sample, a scalar loss. Raises with
    the reason; the aggregator then counts that client as failed for the round."""
    state = t["state"]
    if not isinstance(state, Mapping):
        raise TypeError(f"state is a {type(state).__name__}, not a mapping of tensors")
    if expected and set(state) != set(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise ValueError(
            f"tensors do not match the global state (missing {missing[:5]}, unexpected {extra[:5]}); is it running the same job?"
        )
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{k!r} is a {type(v).__name__}, not a tensor")
        if k in expected and (v.dtype, tuple(v.shape)) != expected[k]:
            raise ValueError(f"{k!r} is {v.dtype} {tuple(v.shape)}, the global state holds {expected[k][0]} {expected[k][1]}")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ValueError(f"{k!r} holds NaN or infinite values")
    samples, loss = t["samples"], t["loss"]
    if samples.numel() != 1 or loss.numel() != 1:
        raise ValueError("samples and loss must be scalars")
    n = int(samples)
    if n < 1:
        raise ValueError(f"reported {n} samples; an update needs at least one")
    return ClientUpdate(client, _clone(state), n), float(loss)


class LocalTransport:
    """The clients' trainers called in this process, one after the other (the in-process reference)."""

    def __init__(self, trainers: Mapping[str, LocalTrainer]) -> None:
        self.trainers = dict(trainers)
        self._pending: dict[str, State] = {}
        self._extra: dict[str, torch.Tensor] = {}
        self.participants = {c: SecureParticipant(c, t.opts.seed) for c, t in self.trainers.items()}
        self.final: State | None = None

    def broadcast(
        self,
        round_: int,
        clients: Sequence[str],
        state: Mapping[str, torch.Tensor],
        digest: bytes,
        extra: Mapping[str, torch.Tensor] | None = None,
    ) -> int:
        for c in clients:
            if digest and base_digest(self.trainers[c].model, self.trainers[c].exchanged) != digest:
                raise RoundError(f"client {c!r}: its frozen base weights differ from the aggregator's")
            self._pending[c] = _clone(state)
        self._extra = dict(extra or {})
        return state_bytes(state) * len(clients)

    def deliver(self, round_: int, client: str, kind: str, msg: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]] | None:
        """Client ``client``'s answer to one frame (``fl:train`` or a secagg stage); None: no answer (late).
        Tests override it to make a client stop answering."""
        if kind == TRAIN:
            state, n, loss = self.trainers[client].train_round(round_, msg["state"])  # a clone of broadcast's
            return self.participants[client].start(round_, msg, state, n, loss)
        return self.participants[client].handle(kind, msg)

    def exchange(
        self,
        round_: int,
        send_kind: str | None,
        messages: Mapping[str, Mapping[str, torch.Tensor]],
        reply_kind: str,
        deadline: float | None,
    ) -> Exchanged:
        out = Exchanged()
        calls: list[tuple[str, str, Mapping[str, Any]]]
        if send_kind is None:
            pending, self._pending = self._pending, {}
            calls = [(c, TRAIN, {"round": torch.tensor(round_), "state": s, **self._extra}) for c, s in pending.items()]
        else:
            calls = [(c, send_kind, m) for c, m in messages.items()]
        for c, kind, msg in calls:
            try:
                got = self.deliver(round_, c, kind, msg)
            except Exception as e:  # noqa: BLE001 - reported like a remote client's failure
                out.failed[c] = f"{type(e).__name__}: {e}"
                continue
            if got is None:
                out.late.append(c)
            elif got[0] != reply_kind:
                out.failed[c] = f"sent an unexpected {got[0]!r} frame (expected {reply_kind!r})"
            else:
                out.answers[c] = got[1]
        return out

    def collect(self, round_: int, clients: Sequence[str], deadline: float | None) -> Collected:
        out = Collected()
        for c in clients:
            try:
                state, n, loss = self.trainers[c].train_round(round_, self._pending.pop(c))
            except Exception as e:  # noqa: BLE001 - reported like a remote client's failure
                out.failed[c] = f"{type(e).__name__}: {e}"
                continue
            out.updates[c] = ClientUpdate(c, state, n)
            out.losses[c] = loss
            out.bytes_up += state_bytes(state)
        return out

    def finish(self, clients: Sequence[str], state: Mapping[str, torch.Tensor]) -> None:
        self.final = _clone(state)
        for c in clients:
            self.trainers[c].set_state(state)


class StateFile:
    """A mapping of tensors as a checkpointable sub-network of :class:`CheckpointSet`: one
    ``step-<n>.pt`` file per step under ``directory/name``, written atomically."""

    def __init__(self, directory: str | Path, name: str, state: dict[str, torch.Tensor] | None = None) -> None:
        self.dir = Path(directory) / name
        self.state: State = state or {}
        self.step = 0

    def _path(self, step: int) -> Path:
        return self.dir / f"step-{step:010d}.pt"

    def save_ckpt(self, path: Any = None, *, keep: int | None = None) -> Path:
        state = dict(self.state)
        p = atomic_write(self._path(self.step), lambda fh: torch.save(state, fh), binary=True)
        if keep is not None:
            for old in self.checkpoint_steps()[:-keep]:
                self._path(old).unlink(missing_ok=True)
        return p

    def load_ckpt(self, path: Any = None, phase: str = "train", *, step: int | None = None) -> Path:
        s = self.step if step is None else step
        self.state = torch.load(self._path(s), map_location="cpu", weights_only=True)
        self.step = s
        return self._path(s)

    def checkpoint_steps(self, path: Any = None) -> list[int]:
        if not self.dir.is_dir():
            return []
        return sorted(int(p.stem.split("-", 1)[1]) for p in self.dir.glob("step-*.pt") if p.stem.split("-", 1)[1].isdigit())


class Aggregator:
    """The aggregator's rounds. ``clients``: every client's name (the sampling population, in a fixed
    order); ``initial``: the initial global state (exchanged tensors); ``digest``: of the frozen base
    (:func:`base_digest`; empty: not checked)."""

    def __init__(
        self,
        clients: Sequence[str],
        initial: Mapping[str, torch.Tensor],
        strategy: Strategy,
        opts: RoundOptions,
        transport: Transport,
        *,
        digest: bytes = b"",
    ) -> None:
        if len(set(clients)) != len(clients) or not clients:
            raise ValueError(f"clients must be unique names, at least one; got {list(clients)}")
        k = opts.clients_per_round or len(clients)
        if not 1 <= k <= len(clients):
            raise ValueError(f"clients_per_round must be 1..{len(clients)} (the number of clients), got {k}")
        if not 1 <= opts.min_clients <= k:
            raise ValueError(f"min_clients must be 1..{k} (the clients sampled per round), got {opts.min_clients}")
        if opts.rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {opts.rounds}")
        self.clients, self.per_round = list(clients), k
        self.state: State = _clone(initial)
        self.strategy, self.opts, self.transport, self.digest = strategy, opts, transport, digest
        self.round = 0
        self.metrics = Metrics(opts.metrics_path)
        self._ckpt: CheckpointSet | None = None
        if opts.ckpt_every:
            if not opts.ckpt_dir:
                raise ValueError("ckpt_every needs ckpt_dir")
            self._files = {"global": StateFile(opts.ckpt_dir, "global"), "strategy": StateFile(opts.ckpt_dir, "strategy")}
            self._ckpt = CheckpointSet(self._files, opts.ckpt_dir, opts.run_id, extra_state=True)

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.metrics.history

    def sample(self, round_: int) -> list[str]:
        """The clients of ``round_``, in population order (seeded by (seed, round) alone)."""
        if self.per_round == len(self.clients):
            return list(self.clients)
        pick = np.random.default_rng([self.opts.seed, round_]).choice(len(self.clients), self.per_round, replace=False)
        return [self.clients[i] for i in sorted(pick.tolist())]

    def save(self) -> None:
        assert self._ckpt is not None
        self._files["global"].state = self.state
        self._files["strategy"].state = self.strategy.state_dict()
        self._ckpt.save(self.round, extra={"round": self.round, "strategy": self.strategy.name})

    def restore(self) -> bool:
        """Loads the newest complete checkpoint; returns whether there was one."""
        assert self._ckpt is not None
        steps = self._ckpt.steps()
        if not steps:
            return False
        extra = self._ckpt.load(steps[-1])
        if extra.get("strategy") != self.strategy.name:
            raise ValueError(
                f"the checkpoint at round {steps[-1]} was made with strategy {extra.get('strategy')!r}, "
                f"this job uses {self.strategy.name!r}"
            )
        loaded = self._files["global"].state
        if set(loaded) != set(self.state):
            raise ValueError(f"the checkpoint at round {steps[-1]} holds other tensors than this job's global state")
        self.state = _clone(loaded)
        self.strategy.load_state_dict(self._files["strategy"].state)
        self.round = int(extra["round"])
        log.info("aggregator: resumed after round %d", self.round)
        return True

    def run_round(self) -> dict[str, Any]:
        if getattr(self.strategy, "secure", None) is not None:
            return self._run_secure_round()
        r = self.round
        chosen = self.sample(r)
        t0 = time.perf_counter()
        started = time.monotonic()
        down = self.transport.broadcast(r, chosen, self.state, self.digest)
        got = self.transport.collect(r, chosen, max(self._deadline() - (time.monotonic() - started), 1e-3))
        answered = [c for c in chosen if c in got.updates]
        if len(answered) < self.opts.min_clients:
            raise RoundError(self._shortfall(r, chosen, got))
        if got.late or got.failed:
            log.warning("aggregator: round %d goes on without %s", r, self._who(got))
        self.state = self.strategy.aggregate(r, self.state, [got.updates[c] for c in answered])
        self.round = r + 1
        row = {
            "kind": "round",
            "round": r + 1,
            "clients": answered,
            "late": got.late,
            "failed": sorted(got.failed),
            "samples": sum(got.updates[c].samples for c in answered),
            "loss": sum(got.losses[c] * got.updates[c].samples for c in answered)
            / max(1, sum(got.updates[c].samples for c in answered)),
            "bytes_down": down,
            "bytes_up": got.bytes_up,
            "seconds": time.perf_counter() - t0,
        }
        self.metrics.record(**row)
        log.info(
            "aggregator: round %d: %d clients, loss %.4f, %d B down, %d B up",
            r + 1,
            len(answered),
            row["loss"],
            down,
            got.bytes_up,
        )
        if self._ckpt is not None and self.round % self.opts.ckpt_every == 0:
            self.save()
        return row

    def _run_secure_round(self) -> dict[str, Any]:
        r = self.round
        chosen = self.sample(r)
        settings: SecureSettings = self.strategy.secure  # type: ignore[attr-defined]
        t0 = time.perf_counter()
        extra = {
            "secagg": settings.to_tensor(),
            "sa_clients": names_tensor(sorted(chosen)),
            "sa_session": _bytes_tensor(self.opts.run_id.encode()),
        }
        down = self.transport.broadcast(r, chosen, self.state, self.digest, extra)
        try:
            got = run_secure_round(r, chosen, self.state, settings, self.opts.run_id, self.transport, self._deadline())
        except SecureRoundFailed as e:
            raise RoundError(f"round {r + 1}: {e}") from None
        if len(got.survivors) < self.opts.min_clients:
            raise RoundError(
                f"round {r + 1}: only {len(got.survivors)} of {len(chosen)} sampled clients are in the "
                f"secure sum, min_clients is {self.opts.min_clients}; dropped: {got.dropped}; "
                f"failed: {got.failed}"
            )
        if got.late or got.failed:
            log.warning(
                "aggregator: secure round %d goes on without %s", r + 1, self._who(Collected(late=got.late, failed=got.failed))
            )
        self.state = self.strategy.combine(r, self.state, got.mean)  # type: ignore[attr-defined]
        self.round = r + 1
        row = {
            "kind": "round",
            "round": r + 1,
            "clients": got.survivors,
            "late": got.late,
            "failed": sorted(got.failed),
            "samples": got.samples,
            "loss": got.loss,
            "bytes_down": down,
            "bytes_up": got.bytes_up,
            "seconds": time.perf_counter() - t0,
            "secure": True,
            "clipped": got.clipped,
            "dropped": got.dropped,
        }
        self.metrics.record(**row)
        log.info(
            "aggregator: secure round %d: %d clients in the sum, loss %.4f, %d values clipped, %d B down, %d B up",
            r + 1,
            len(got.survivors),
            got.loss,
            got.clipped,
            down,
            got.bytes_up,
        )
        if self._ckpt is not None and self.round % self.opts.ckpt_every == 0:
            self.save()
        return row

    @staticmethod
    def _who(got: Collected) -> str:
        parts = []
        if got.late:
            parts.append(f"late (no answer before the deadline): {', '.join(got.late)}")
        if got.failed:
            parts.append("failed: " + "; ".join(f"{c} ({why})" for c, why in sorted(got.failed.items())))
        return "; ".join(parts)

    def _deadline(self) -> float:
        """Seconds a round may take from sending the global state (round_deadline; default client_timeout,
        so a client killed without a clean shutdown never stalls the federation for ever)."""
        return self.opts.round_deadline if self.opts.round_deadline is not None else self.opts.client_timeout

    def _shortfall(self, r: int, chosen: list[str], got: Collected) -> str:
        limit = f"within the {self.opts.round_deadline:g} s round deadline" if self.opts.round_deadline else "in time"
        return (
            f"round {r + 1}: only {len(got.updates)} of {len(chosen)} sampled clients answered {limit}, "
            f"min_clients is {self.opts.min_clients}; {self._who(got) or 'no client answered'}"
        )

    def run(self) -> State:
        """All rounds (from the newest checkpoint with ``resume``); returns the final global state."""
        if self._ckpt is not None:
            if self.opts.resume:
                self.restore()
            if self.round == 0 and not self._ckpt.steps():
                self.save()  # round 0: the initial state, so a crash in round 1 can resume
        while self.round < self.opts.rounds:
            self.run_round()
        self.transport.finish(self.clients, self.state)
        return self.state


class ClientParty:
    """A client process's loop: answer every ``fl:train`` of the aggregator until ``fl:done``."""

    def __init__(
        self, comm: Any, aggregator: str, trainer: LocalTrainer, *, timeout: float = 3600.0, secure: SecureSettings | None = None
    ) -> None:
        self.comm, self.aggregator, self.trainer, self.timeout = comm, aggregator, trainer, timeout
        self.secure = SecureParticipant(trainer.name, trainer.opts.seed, secure)
        self.digest = base_digest(trainer.model, trainer.exchanged)
        self.rounds: list[int] = []
        self.final: State | None = None

    def run(self) -> State:
        from splitlink.channel import PeerRestartedError

        while True:
            try:
                kind, t = self.comm.receive(self.aggregator, self.timeout, with_kind=True)
            except TimeoutError:
                raise TimeoutError(
                    f"client {self.trainer.name!r}: no message from the aggregator {self.aggregator!r} within {self.timeout:g} s"
                ) from None
            except PeerRestartedError as e:
                # the aggregator was restarted (with resume): clients hold no state between rounds, so
                # wait for the resumed aggregator's next round
                log.warning("client %s: %s; waiting for its next round", self.trainer.name, e)
                continue
            if kind == DONE:
                self.final = _clone(t["state"])
                self.trainer.set_state(self.final)
                return self.final
            if kind not in (TRAIN, SA_ROSTER, SA_SHARES, SA_UNMASK):
                raise ValueError(f"client {self.trainer.name!r}: unexpected {kind!r} frame from the aggregator")
            r = int(t["round"])
            try:
                reply: tuple[str, Mapping[str, Any]] | None
                if kind != TRAIN:
                    reply = self.secure.handle(kind, t)
                else:
                    theirs = bytes(t["digest"].numpy().tobytes())
                    if theirs and theirs != self.digest:
                        raise ValueError(
                            "the frozen base weights differ from the aggregator's (same model config, "
                            "seed and pretrained weights on every party?)"
                        )
                    state, n, loss = self.trainer.train_round(r, _clone(t["state"]))
                    if "secagg" in t:
                        reply = self.secure.start(r, t, state, n, loss)
                    else:
                        reply = (
                            UPDATE,
                            {
                                "round": torch.tensor(r, dtype=torch.int64),
                                "samples": torch.tensor(n, dtype=torch.int64),
                                "loss": torch.tensor(loss, dtype=torch.float64),
                                "state": state,
                            },
                        )
                    self.rounds.append(r)
            except Exception as e:
                log.exception("client %s: round %d (%s) failed", self.trainer.name, r + 1, kind)
                msg = f"{type(e).__name__}: {e}"[:2000].encode()
                self.comm.send_tensors(
                    self.aggregator, {"round": torch.tensor(r), "message": _bytes_tensor(msg)}, kind=ERROR, step=r
                )
                continue
            if reply is not None:
                try:
                    self.comm.send_tensors(self.aggregator, dict(reply[1]), kind=reply[0], step=r)
                except PeerRestartedError as e:  # the answer was for the aggregator's previous process
                    log.warning("client %s: %s; the round's answer is dropped", self.trainer.name, e)
