"""One party of a split: what every scenario's party shares, so a scenario only adds networks, data and
the per-step math.

A :class:`Party` owns

* its sub-networks' **checkpoint set** (``self.models`` -> :class:`~splitlink.runtime.checkpoints.CheckpointSet`:
  all saved as one step, every ``ckpt_every`` steps, and step 0 at the start of a fresh run);
* the **resume agreement** with its peer: both send the steps they hold complete checkpoints for
  (a ``resume:<run_id>`` frame) and both load the newest step in both lists, so neither needs the other's
  answer; a scenario can add a ``hello`` frame exchanged first (Wide&Deep: a digest of the sample ids).
  With more than two parties (:mod:`splitlink.runtime.multiparty`) every party does this with every
  peer of :meth:`Party.agreement_peers` and loads the newest step ALL parties hold;
* **restart ride-through**: when the communicator reports that the peer's process was replaced
  (``PeerRestartedError``), the party agrees again and reloads that step in this process (DeepSpeed
  engines included, through ``FLModel.load_ckpt``), and trains on (:func:`ride_through_restarts`);
* the **schedule** of its data (:class:`~splitlink.runtime.schedule.Schedule`, from (seed, epoch));
* **metrics** (:class:`~splitlink.runtime.metrics.Metrics`) and log lines prefixed with its name;
* **control messages by frame kind**: ``send(tensors, kind=...)``, ``receive(kind=...)`` (a frame of
  another kind is a protocol error) and ``receive_any()`` -> (kind, tensors) for a party that
  dispatches on the kind (Pangu's party B serves "tensors" steps, "eval" batches and "done").

A subclass sets ``role``/``peer`` (the names on the channel), fills ``self.models`` and implements
:meth:`train_loop`; :meth:`run` does the rest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch

from splitlink.runtime.checkpoints import CheckpointSet, newest_common_step
from splitlink.runtime.metrics import Metrics
from splitlink.runtime.schedule import Schedule

__all__ = ["TrainOptions", "Party", "ride_through_restarts", "agree_locally", "RESUME_KIND", "HELLO_KIND"]

log = logging.getLogger(__name__)
T = TypeVar("T")

HELLO_KIND = "hello"
RESUME_KIND = "resume"  # the frame's kind is "resume:<run_id>"


@dataclass
class TrainOptions:
    """The training options every scenario shares (scenarios subclass it with their own)."""

    epochs: int | None = None  # default: the first sub-network's YAML (hyper_parameters)
    batch_size: int | None = None
    seed: int = 0
    log_every: int = 100
    max_steps: int | None = None  # stop early (tests)
    ckpt_every: int = 0  # 0: no periodic checkpoints
    ckpt_dir: str | None = None  # default: the first sub-network's YAML ckpt_path
    resume: bool = False
    metrics_path: str | None = None  # one JSON line per recorded row
    peer_timeout: float | None = 600.0  # seconds to wait for the peer's next message before failing
    micro_batches: int = 1  # >1: each step pipelined over this many micro-batches (runtime.pipeline)
    auto_codec_budget_ms: float | None = None  # the auto codec policy's step exchange budget (runtime.codec_policy)
    run_id: str = "run"  # checkpoints of one run: both parties must use the same
    device: str | None = None  # where this party computes: cpu, cuda, cuda:N; None/auto: cuda if available


def ride_through_restarts(who: str, agree: Callable[[bool], object], train: Callable[[], T]) -> T:
    """Runs ``agree(False)`` (the start-up agreement on the step to resume from), then ``train()``.
    When the communicator raises ``PeerRestartedError`` (the peer crashed and was restarted with
    resume), runs ``agree(True)`` (both go back to their newest common checkpoint) and trains on, so
    this process keeps running and ends where an uninterrupted run would. ``agree(True)`` must fail
    with a clear error when there is no common checkpoint."""
    from splitlink.channel import PeerRestartedError

    rejoin = False
    while True:
        try:
            agree(rejoin)
            return train()
        except PeerRestartedError as e:
            log.warning("%s: %s: going back to the newest common checkpoint", who, e)
            rejoin = True


O = TypeVar("O", bound="TrainOptions")


class Party(Generic[O]):
    """A party; ``O`` is the scenario's options dataclass (a :class:`TrainOptions`)."""

    role: ClassVar[str] = ""  # this party's name on the channel
    peer: ClassVar[str] = ""  # the peer's
    label: ClassVar[str] = ""  # in log lines and errors (default: role)
    peer_label: ClassVar[str] = ""  # the peer in messages (default: "the <peer>")
    manifest_tag: ClassVar[str | None] = None  # manifest id "<run_id>.<tag>" (parties sharing a directory)
    keep_checkpoints: ClassVar[int | None] = None  # keep the newest N steps (None: all)
    logger: ClassVar[logging.Logger] = log

    def __init__(self, comm: Any, train: O) -> None:
        self.comm, self.train = comm, train
        self.step = 0
        self.models: dict[str, Any] = {}  # name -> FLModel, in load order
        self.metrics = Metrics(train.metrics_path)
        self._checkpoints: CheckpointSet | None = None
        self._offered: list[int] = []
        self.group: Any = None  # splitlink.runtime.ranks.RankGroup: this party runs over several processes
        self.codec_policy: Any = None  # splitlink.runtime.codec_policy.AutoCodecPolicy (train.auto_codec)
        if train.auto_codec_budget_ms is not None:
            from splitlink.runtime.codec_policy import AutoCodecPolicy

            self.codec_policy = AutoCodecPolicy(train.auto_codec_budget_ms / 1e3, name=self.name)

    @property
    def sens_scale(self) -> float:
        """What received gradients are multiplied by before the backward (1 but for party B's ranks in
        scatter mode, see :mod:`splitlink.runtime.ranks`)."""
        return float(self.group.sens_scale) if self.group is not None else 1.0

    @property
    def launched_rank(self) -> bool:
        return self.group is not None and self.group.launched

    @property
    def device(self) -> Any:
        """The ``torch.device`` this party's networks run on (``train.device``; default: cuda when
        available, else cpu)."""
        from splitlink.model.device import resolve_device

        return resolve_device(self.train.device)

    def compress_configs(self) -> dict[str, Any]:
        """Codec settings by tensor name for this party's communicator (its sub-networks' YAMLs); none
        by default."""
        return {}

    # ---- names, logging, metrics ------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.label or self.role

    @property
    def peer_name(self) -> str:
        return self.peer_label or f"the {self.peer}"

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.metrics.history

    def record(self, **row: Any) -> None:
        self.metrics.record(**row)

    def info(self, msg: str, *args: Any) -> None:
        self.logger.info("%s: " + msg, self.name, *args)

    # ---- data -----------------------------------------------------------------------------------
    def make_schedule(self, n_rows: int, *, drop_last: bool = False) -> Schedule:
        """The schedule over ``n_rows`` training rows; epochs and batch size default to the first
        sub-network's YAML."""
        first = next(iter(self.models.values()))
        return Schedule(
            n_rows,
            self.train.batch_size or first.yaml.batch_size,
            seed=self.train.seed,
            epochs=self.train.epochs or first.yaml.epochs,
            max_steps=self.train.max_steps,
            drop_last=drop_last,
        )

    # ---- control messages -------------------------------------------------------------------------
    def send(
        self, tensors: Mapping[str, Any], *, kind: str = "tensors", step: int | None = None, peer: str | None = None
    ) -> None:
        """To the peer (or, with several, to ``peer``); tensor frames feed the auto codec policy, if any."""
        policy = self.codec_policy if kind == "tensors" else None
        if policy is None:
            self.comm.send_tensors(peer or self.peer, tensors, step=step, kind=kind)
            return
        nbytes = policy.frame_bytes(tensors, self.comm.compress_configs)
        t0 = time.perf_counter()
        self.comm.send_tensors(peer or self.peer, tensors, step=step, kind=kind)
        policy.frame_sent(tensors, nbytes, time.perf_counter() - t0)

    def receive(self, kind: str | None = None, *, peer: str | None = None) -> dict[str, Any]:
        """The peer's next frame; with ``kind``, a frame of another kind is a protocol error."""
        got: dict[str, Any] = self.comm.receive(peer or self.peer, self.train.peer_timeout, kind=kind, **self._placement())
        return got

    def receive_any(self, *, peer: str | None = None) -> tuple[str, dict[str, Any]]:
        """The peer's next frame as (kind, tensors)."""
        kind, tensors = self.comm.receive(peer or self.peer, self.train.peer_timeout, with_kind=True, **self._placement())
        return str(kind), tensors

    def _placement(self) -> dict[str, Any]:
        """On an accelerator, received frames are unpacked straight onto it (one copy of the payload from
        pinned memory, codecs decoded there); on the CPU they stay zero-copy views of the received bytes."""
        device = self.device
        return {"device": device} if device.type != "cpu" else {}

    # ---- checkpoints ------------------------------------------------------------------------------
    @property
    def checkpoints(self) -> CheckpointSet:
        if self._checkpoints is None:
            if not self.models:
                raise RuntimeError(f"{type(self).__name__}: fill self.models before using checkpoints")
            first = next(iter(self.models.values()))
            root = Path(self.train.ckpt_dir) if self.train.ckpt_dir else first.yaml.ckpt_path
            tag = f"{self.train.run_id}.{self.manifest_tag}" if self.manifest_tag else self.train.run_id
            self._checkpoints = CheckpointSet(
                self.models, root, tag, keep=self.keep_checkpoints, rank=self.group.rank if self.launched_rank else None
            )
        return self._checkpoints

    def checkpoint_steps(self) -> list[int]:
        """Steps this party recorded as complete (every sub-network durable) whose files are still there;
        over several processes, those every rank holds (a collective: every rank asks together)."""
        steps = self.checkpoints.steps()
        if self.launched_rank:
            from splitlink.runtime.ranks import intersect_over_group

            steps = intersect_over_group(steps)
        return steps

    def save(self) -> None:
        self.checkpoints.save(self.step)

    def restore(self, step: int) -> None:
        for m in self.models.values():
            if hasattr(m, "discard_accumulation"):  # a pipelined step the peer's restart interrupted
                m.discard_accumulation()
        self.checkpoints.load(step)
        self.step = step
        self.info("resumed at step %d", step)

    def save_start(self) -> None:
        """A fresh run with periodic checkpoints first writes step 0 (the seeded initial state), so a party
        killed before the first periodic checkpoint still has a step to rejoin its peer at."""
        if self.train.ckpt_every and self.step == 0 and not self.checkpoint_steps():
            self.save()

    def advance(self) -> None:
        """One step done: count it, and checkpoint every ``ckpt_every`` steps."""
        self.step += 1
        if self.codec_policy is not None:
            self.codec_policy.end_step(self.comm.compress_configs)
        if self.train.ckpt_every and self.step % self.train.ckpt_every == 0:
            self.save()

    # ---- the resume agreement ----------------------------------------------------------------------
    def hello(self) -> Mapping[str, Any] | None:
        """Tensors both parties exchange (kind "hello") before agreeing, or None (no hello frame)."""
        return None

    def check_hello(self, theirs: Mapping[str, Any]) -> None:
        """Raises if the peer's hello shows the parties cannot train together."""

    def agreement_peers(self) -> list[str]:
        """The parties the resume agreement runs with: the newest step ALL of them (and this party) hold
        is loaded. Two parties: the peer; N parties (:mod:`splitlink.runtime.multiparty`): every peer."""
        return [self.peer]

    def hello_for(self, peer: str) -> Mapping[str, Any] | None:
        """The hello sent to ``peer`` (default :meth:`hello`, the same for every peer)."""
        return self.hello()

    def check_hello_from(self, peer: str, theirs: Mapping[str, Any]) -> None:
        """Checks ``peer``'s hello (default :meth:`check_hello`)."""
        self.check_hello(theirs)

    def offer(self, rejoin: bool = False) -> None:
        """Sends the hello and the steps this party holds complete checkpoints for (none unless resuming
        or rejoining a restarted peer), to every peer of the agreement."""
        self._offered = self.checkpoint_steps() if self.train.resume or rejoin else []
        for peer in self.agreement_peers():
            hello = self.hello_for(peer)
            if hello is not None:
                self._agreement_send(peer, hello, HELLO_KIND)
            self._agreement_send(
                peer, {"steps": torch.tensor(self._offered, dtype=torch.int64)}, f"{RESUME_KIND}:{self.train.run_id}"
            )

    def _agreement_send(self, peer: str, tensors: Mapping[str, Any], kind: str) -> None:
        self.send(tensors, kind=kind, peer=peer)

    def _agreement_receive(self, peer: str) -> tuple[str, dict[str, Any]]:
        return self.receive_any(peer=peer)

    def settle(self, rejoin: bool = False) -> int:
        """Receives every peer's offer and loads the newest step all hold. ``rejoin``: a peer restarted;
        this party goes back to that step whatever ``resume`` says, and fails if there is none."""
        lists = [self._offered]
        peers = self.agreement_peers()
        for peer in peers:
            label = self.peer_name if len(peers) == 1 else f"'{peer}'"
            if self.hello_for(peer) is not None:
                kind, got = self._agreement_receive(peer)
                if kind != HELLO_KIND:
                    raise ValueError(
                        f"{self.name}: expected the hello of {label} but got a {kind!r} frame: the "
                        "parties are at different stages of the protocol (is the peer running the same program?)"
                    )
                self.check_hello_from(peer, got)
            kind, got = self._agreement_receive(peer)
            prefix = f"{RESUME_KIND}:"
            if not kind.startswith(prefix):
                raise ValueError(
                    f"{self.name}: expected the resume offer of {label} but got a {kind!r} frame: "
                    "the parties are at different stages of the protocol (is the peer running the same program?)"
                )
            peer_run = kind[len(prefix) :]
            if peer_run != self.train.run_id:
                raise RuntimeError(
                    f"{self.name}: this party runs {self.train.run_id!r} but {label} runs {peer_run!r}; give both the same run_id"
                )
            lists.append([int(s) for s in got["steps"].tolist()])
        common = newest_common_step(*lists)
        if common is not None:
            self.restore(common)
        elif rejoin:
            label = self.peer_name if len(peers) == 1 else "a peer"
            hint = f" (was {label} restarted with resume: true?)" if any(not s for s in lists[1:]) else ""
            raise RuntimeError(
                f"{self.name}: {label} restarted, but the parties hold no common checkpoint "
                f"to continue from{hint}; restart {'both parties' if len(peers) == 1 else 'every party'} "
                "with resume"
            )
        elif self.train.resume:
            self.logger.warning(
                "%s: --resume but no checkpoint step %s parties hold; starting from step 0",
                self.name,
                "both" if len(peers) == 1 else "all",
            )
        return self.step

    def agree(self, rejoin: bool = False) -> int:
        """The resume agreement with the peer (over a communicator whose sends do not wait for the peer's
        receive, as both of splitlink's do); returns the step to continue from."""
        self.offer(rejoin)
        return self.settle(rejoin)

    # ---- the run ----------------------------------------------------------------------------------
    def train_loop(self) -> Any:
        """Trains from ``self.step`` to the end (the scenario's steps)."""
        raise NotImplementedError

    def run(self) -> Any:
        """Trains to the end. If the peer's process is replaced (crashed, restarted with resume), both go
        back to their newest common checkpoint and continue; this process keeps running."""
        self.save_start()
        if self.launched_rank:
            # One rank of a group never rides through a peer's restart: a rank could be blocked in a
            # collective the others will not join. It fails; the launcher restarts the whole group.
            self.agree(False)
            return self.train_loop()
        return ride_through_restarts(self.name, self.agree, self.train_loop)


def agree_locally(*parties: Party[Any]) -> None:
    """The resume agreement of parties that share one process (in-process communicators): every
    party offers, then every party settles, in the order given (each load sets the process's torch
    RNG state, so the last one's wins)."""
    for p in parties:
        p.offer()
    for p in parties:
        p.settle()
