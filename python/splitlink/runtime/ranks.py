"""A party bigger than one process: party B (and, paired, party A) over N ranks of a launcher.

Party B's backbone trains data-parallel under DeepSpeed over the ranks that ``torchrun`` (or
``deepspeed``) starts, one process per rank, each with its own communicator and gRPC server. The run
file's ``ranks`` section chooses how party A talks to them::

    ranks: {mode: scatter, world_size: 2}               # A: one process; B: 2 ranks
    ranks: {mode: paired, world_size: 2}                # A: 2 ranks too; A rank r <-> B rank r
    ranks: {mode: scatter, world_size: 2,               # several machines: every rank's address
            follower_addresses: [hostA:7000, hostB:7000]}

* **scatter**: party A is one process. Every batch-major frame it sends ("tensors", "eval") is cut
  along dimension 0 into ``world_size`` equal slices, slice r to B's rank r; what the ranks answer is
  concatenated in rank order (:class:`ScatterComm`). A runs its head on the whole global batch, so
  its loss is the mean over the *global* batch and the gradient slice rank r receives already
  carries 1/global_batch. DeepSpeed averages parameter gradients over B's ranks (divides their sum
  by the world size), so B multiplies the received gradients by the world size before its backward
  (the sum over ranks is then the one-process gradient) and divides the input gradients it returns
  by the same factor (they are per-sample and need no reduction). For a power-of-two world size
  both scalings are exact in binary floating point. (DeepSpeed's ``gradient_predivide_factor`` only
  moves where the division happens; it cannot turn the average into a sum.)
* **paired**: party A is launched with ``world_size`` ranks too; rank r trains on slice r of every
  global batch and talks only to B's rank r (:class:`AliasComm`). Each A rank's loss is the mean over
  its slice, so averaging gradients is right on both sides: DeepSpeed averages B's, and A's
  sub-networks average theirs over A's own process group (gloo/NCCL, all-reduce before every
  optimizer step: :func:`average_gradients`). A's update then equals the unsplit model's at the
  global batch. A's ranks hold replicas: rank 0 writes A's checkpoints and manifest.

**Identity.** Exactly-once delivery and restart detection are per sender *process* (sender name,
incarnation, seq), so every rank needs a name of its own on the channel: ``<party>-r<rank>``
(``follower-r0``, ``follower-r1``; paired: ``leader-r0`` ...). The trust boundary is the
organisation, which the certificate authority speaks for: a rank's certificate must name the rank's
channel name (common name or DNS subject alternative name): one certificate per rank, or one party
certificate listing every rank name (``follower``, ``follower-r0``, ...) as alternative names. Both
checks of mutual TLS already work this way unchanged: the client verifies the rank server's
certificate against the rank's name, and the server's identity interceptor checks the name a frame
claims against the client certificate. A party certificate accepted for rank names by the
interceptor alone would not do: the other direction (a client checking a rank's *server*
certificate) would still need the rank's name on it. SSL paths in the run file may contain
``{rank}``, replaced by the process's rank, to give each rank its own files.

**Checkpoints and restarts.** B's ranks save DeepSpeed's sharded checkpoint together (every rank
its shards, one barrier, then rank 0 renames the step directory) and rank 0 records the step in
B's one manifest. At the resume agreement B's ranks first intersect their step lists over their
process group, so every B rank offers (and loads) the same step; party A in scatter mode intersects
the lists of all B ranks: both sides load the newest step that A and *every* B rank hold. A rank of a
multi-rank group does not ride through a peer's restart in-process: a rank could be blocked in a
collective its partner will never join, so it exits with an error and the launcher
(``torchrun --max-restarts``) restarts the whole group, which resumes from the agreed step. Party A
in scatter mode (one process) rides through the restart of B's group: when one rank reports a new
process, it waits until every rank has (the launcher restarts them all) and agrees again. When party A
is the one restarted (with resume), B's ranks exit on learning it and the launcher restarts them too
(one of its ``--max-restarts``). A launched rank joins its process group itself, before DeepSpeed, under
a key prefix naming the launcher's restart count (:func:`ensure_process_group`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

if TYPE_CHECKING:
    from splitlink.runtime.run_config import RanksSection, RunConfig

__all__ = [
    "RankGroup",
    "rank_name",
    "rank_addresses",
    "ScatterComm",
    "AliasComm",
    "group_of",
    "channel_plan",
    "average_gradients",
    "intersect_over_group",
    "RankSlicedSchedule",
    "launcher_env",
]

log = logging.getLogger(__name__)

SPLIT_KINDS = frozenset({"tensors", "eval"})  # batch-major frames: cut along dimension 0 in scatter mode
RESUME_PREFIX = "resume:"


def rank_name(party: str, rank: int) -> str:
    """The channel (and certificate) name of ``party``'s rank ``rank``: ``follower-r3``."""
    return f"{party}-r{rank}"


def rank_addresses(base: str, world_size: int, given: Sequence[str] | None) -> list[str]:
    """Every rank's ``host:port``: the list the run file gives, or ``base``'s port + rank (one machine)."""
    if given:
        return list(given)
    host, _, port = base.rpartition(":")
    return [f"{host}:{int(port) + r}" for r in range(world_size)]


def launcher_env() -> tuple[int, int, int] | None:
    """(rank, local rank, world size) that ``torchrun``/``deepspeed`` put in the environment, or None."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    try:
        return int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"])), int(os.environ["WORLD_SIZE"])
    except ValueError:
        raise ValueError(
            f"the launcher's RANK/LOCAL_RANK/WORLD_SIZE are not integers: RANK={os.environ['RANK']!r}, "
            f"WORLD_SIZE={os.environ['WORLD_SIZE']!r}"
        ) from None


@dataclass(frozen=True)
class RankGroup:
    """This process's place in a multi-rank party."""

    mode: Literal["scatter", "paired"]
    world_size: int
    rank: int | None  # None: party A of scatter mode (one process talking to every B rank)
    party: str  # "leader" | "follower"

    @property
    def launched(self) -> bool:
        """Whether this process is one rank of a launcher's group (B's ranks; A's in paired mode)."""
        return self.rank is not None

    @property
    def sens_scale(self) -> float:
        """What B multiplies received gradients by: DeepSpeed averages over ranks, a scatter A's
        gradients need the sum (see the module docstring)."""
        return float(self.world_size) if self.mode == "scatter" and self.party == "follower" else 1.0


def group_of(cfg: RunConfig) -> RankGroup | None:
    """The rank group of this run file's process (None: no ``ranks`` section, a one-process party).

    Checks what the launcher says against the run file: a process of a multi-rank party must be
    started by the launcher with the run file's world size."""
    r = cfg.ranks
    if r is None:
        return None
    env = launcher_env()
    needs_launcher = cfg.party == "follower" or r.mode == "paired"
    if not needs_launcher:
        if env is not None and env[2] > 1:
            raise ValueError(
                f"ranks.mode is 'scatter': party A is one process, but the launcher started {env[2]} ranks "
                "of it; start party A without torchrun (or use mode: paired)"
            )
        return RankGroup(r.mode, r.world_size, None, cfg.party)
    if env is None:
        raise ValueError(
            f"the run file's ranks section says this party ({cfg.party}) runs over {r.world_size} ranks, "
            f"but no launcher set RANK/WORLD_SIZE; start it with "
            f"`torchrun --nproc_per_node {r.world_size} -m splitlink train {cfg.party} --config ...`"
        )
    rank, _, world = env
    if world != r.world_size:
        raise ValueError(
            f"the launcher started {world} ranks but the run file's ranks.world_size is {r.world_size}; "
            "make them equal (party A slices every global batch into world_size parts)"
        )
    return RankGroup(r.mode, r.world_size, rank, cfg.party)


@dataclass(frozen=True)
class ChannelPlan:
    """Who this process is on the channel and whom it talks to."""

    me: tuple[str, str]  # (name, address)
    peers: list[tuple[str, str]]  # (name, address) of every peer process, in rank order
    alias: str  # the one peer name the party's code uses ("follower"/"leader")


def channel_plan(cfg: RunConfig, group: RankGroup) -> ChannelPlan:
    r: RanksSection = cfg.ranks  # type: ignore[assignment]
    peer = "follower" if cfg.party == "leader" else "leader"
    if cfg.peer_address is None:
        raise ValueError("a party over ranks is one of two parties: give peer_address, not peers")
    n = group.world_size
    if cfg.party == "follower":
        mine = rank_addresses(cfg.address, n, r.follower_addresses)
        assert group.rank is not None
        me = (rank_name("follower", group.rank), mine[group.rank])
        if group.mode == "scatter":
            return ChannelPlan(me, [("leader", cfg.peer_address)], peer)
        theirs = rank_addresses(cfg.peer_address, n, r.leader_addresses)
        return ChannelPlan(me, [(rank_name("leader", group.rank), theirs[group.rank])], peer)
    theirs = rank_addresses(cfg.peer_address, n, r.follower_addresses)
    if group.mode == "scatter":
        return ChannelPlan(("leader", cfg.address), [(rank_name("follower", k), theirs[k]) for k in range(n)], peer)
    assert group.rank is not None
    mine = rank_addresses(cfg.address, n, r.leader_addresses)
    return ChannelPlan(
        (rank_name("leader", group.rank), mine[group.rank]), [(rank_name("follower", group.rank), theirs[group.rank])], peer
    )


def ssl_for_rank(ssl: Mapping[str, Any], rank: int | None) -> dict[str, Any]:
    """The ssl section with ``{rank}`` in its paths replaced by this process's rank."""
    out = dict(ssl)
    for k, v in out.items():
        if isinstance(v, str) and k.endswith("_path") and "{rank}" in v:
            if rank is None:
                raise ValueError(f"ssl.{k} {v!r} contains {{rank}} but this process is not a rank of a launcher")
            out[k] = v.replace("{rank}", str(rank))
    return out


# ---- the communicators a party's code sees ------------------------------------------------------------


class AliasComm:
    """A communicator whose one peer the party's code calls by its party name (paired mode, and B's
    rank talking to party A): ``follower`` is sent to ``follower-r3``."""

    def __init__(self, comm: Any, alias: str, real: str) -> None:
        self.comm, self.alias, self.real = comm, alias, real

    def _name(self, peer: str) -> str:
        if peer != self.alias:
            raise ValueError(f"unknown peer {peer!r}; this rank talks to {self.alias!r} ({self.real})")
        return self.real

    def send_tensors(self, peer: str, tensors: Mapping[str, Any], *, step: int | None = None, kind: str = "tensors") -> None:
        self.comm.send_tensors(self._name(peer), tensors, step=step, kind=kind)

    def receive(
        self, peer: str, timeout: float | None = None, *, kind: str | None = None, with_kind: bool = False, **placement: Any
    ) -> Any:
        return self.comm.receive(self._name(peer), timeout, kind=kind, with_kind=with_kind, **placement)


def _split(tensors: Mapping[str, Any], n: int, kind: str) -> list[dict[str, Any]]:
    def parts(t: torch.Tensor, path: str) -> list[torch.Tensor]:
        if t.dim() == 0 or t.shape[0] % n:
            raise ValueError(
                f"scatter mode cuts every tensor of a {kind!r} frame along dimension 0 into {n} equal "
                f"slices (one per rank of party B), but {path} has shape {tuple(t.shape)}; make the "
                f"global batch size a multiple of ranks.world_size ({n})"
            )
        return [p.contiguous() for p in t.chunk(n, dim=0)]

    out: list[dict[str, Any]] = [{} for _ in range(n)]

    def walk(src: Mapping[str, Any], dst: list[dict[str, Any]], path: str) -> None:
        for k, v in src.items():
            if isinstance(v, Mapping):
                subs: list[dict[str, Any]] = [{} for _ in range(n)]
                walk(v, subs, f"{path}{k}.")
                for d, s in zip(dst, subs):
                    d[k] = s
            elif isinstance(v, torch.Tensor):
                for d, p in zip(dst, parts(v, f"{path}{k}")):
                    d[k] = p
            else:
                raise TypeError(f"{path}{k}: frames hold tensors and mappings of them, got {type(v).__name__}")

    walk(tensors, out, "")
    return out


def _concat(pieces: list[Mapping[str, Any]], where: str) -> dict[str, Any]:
    first = pieces[0]
    out: dict[str, Any] = {}
    for k, v in first.items():
        if any(k not in p for p in pieces):
            raise ValueError(f"the ranks of party B answered with different tensors ({where}: {k!r} missing from some)")
        if isinstance(v, Mapping):
            out[k] = _concat([p[k] for p in pieces], f"{where}.{k}")
        else:
            out[k] = torch.cat([p[k] for p in pieces], dim=0)
    return out


class ScatterComm:
    """Party A's communicator in scatter mode: the party's code talks to one peer (``alias``); frames
    go to and come from every rank of B (``ranks``, in rank order).

    * "tensors"/"eval" frames: every tensor cut along dimension 0, slice r to rank r; the answers
      concatenated in rank order.
    * "resume:<run>" offers: sent to every rank; the answer is the steps *every* rank holds.
    * other frames ("done", "hello"): sent to every rank; rank 0's answer is returned.

    When a rank reports a new process (``PeerRestartedError``), the launcher restarted B's whole
    group: every other rank's new process is waited for (its restart acknowledged, the frames of its
    previous process dropped) before the error reaches the party, which then agrees again with all
    ranks at once.
    """

    def __init__(self, comm: Any, alias: str, ranks: Sequence[str], timeout: float | None) -> None:
        self.comm, self.alias, self.ranks, self.timeout = comm, alias, list(ranks), timeout

    def _check(self, peer: str) -> None:
        if peer != self.alias:
            raise ValueError(f"unknown peer {peer!r}; party A talks to {self.alias!r} (ranks {', '.join(self.ranks)})")

    def _whole_group_restarted(self, first: str, error: BaseException) -> None:
        from splitlink.channel import PeerRestartedError

        log.warning("%s restarted: waiting for the other ranks of the group to restart too", first)
        for other in self.ranks:
            if other == first:
                continue
            try:
                while True:  # drop what its previous process sent until its new process announces itself
                    self.comm.receive(other, self.timeout)
            except PeerRestartedError:
                continue
            except TimeoutError:
                raise TimeoutError(
                    f"{first} restarted, but {other} did not restart within {self.timeout} s: the ranks "
                    "of party B must be restarted together (torchrun --max-restarts does)"
                ) from None
        raise error

    def _each(self, fn: Callable[[str], Any]) -> list[Any]:
        from splitlink.channel import PeerRestartedError

        out = []
        for r in self.ranks:
            try:
                out.append(fn(r))
            except PeerRestartedError as e:
                self._whole_group_restarted(r, e)
        return out

    def send_tensors(self, peer: str, tensors: Mapping[str, Any], *, step: int | None = None, kind: str = "tensors") -> None:
        self._check(peer)
        parts = _split(tensors, len(self.ranks), kind) if kind in SPLIT_KINDS else [tensors] * len(self.ranks)
        it = iter(parts)
        self._each(lambda r: self.comm.send_tensors(r, next(it), step=step, kind=kind))

    def receive(
        self, peer: str, timeout: float | None = None, *, kind: str | None = None, with_kind: bool = False, **placement: Any
    ) -> Any:
        self._check(peer)
        got = self._each(lambda r: self.comm.receive(r, timeout, kind=kind, with_kind=True, **placement))
        kinds = {k for k, _ in got}
        if len(kinds) != 1:
            raise ValueError(
                f"the ranks of party B sent frames of different kinds ({', '.join(sorted(kinds))}) at the "
                "same point: are they all running the same program?"
            )
        k = got[0][0]
        if k in SPLIT_KINDS:
            tensors: Any = _concat([t for _, t in got], k)
        elif k.startswith(RESUME_PREFIX):
            common = set.intersection(*(set(int(s) for s in t["steps"].tolist()) for _, t in got))
            tensors = {"steps": torch.tensor(sorted(common), dtype=torch.int64)}
        else:
            tensors = got[0][1]
        return (k, tensors) if with_kind else tensors


# ---- process-group helpers -----------------------------------------------------------------------------


def intersect_over_group(steps: list[int]) -> list[int]:
    """The steps every rank of the default process group lists (collective: every rank calls it)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return steps
    lists: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(lists, [int(s) for s in steps])
    return sorted(set.intersection(*(set(x) for x in lists)))


def ensure_process_group() -> None:
    """Joins the launcher's process group (gloo on CPU, NCCL on GPUs) if nothing has yet, before
    DeepSpeed (which then uses it).

    The keys go under a prefix naming the launcher's restart count: torchrun keeps one key-value
    store for all the restarts of a group, and a restarted group that registered its addresses under
    the same keys as the killed one read the dead ranks' addresses (gloo: "connectFullMesh failed ...
    Connection refused" in the first new_group of the restarted group)."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    from torch.distributed import PrefixStore, rendezvous  # type: ignore[attr-defined]

    store, rank, world = next(rendezvous("env://"))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    dist.init_process_group(
        "nccl" if torch.cuda.is_available() else "gloo",
        store=PrefixStore(f"splitlink/attempt-{attempt}", store),
        rank=rank,
        world_size=world,
    )


def average_gradients(optimizers: Sequence[torch.optim.Optimizer]) -> list[Any]:
    """Before every step of ``optimizers``, their parameters' gradients are averaged over the default
    process group (one flat all-reduce per optimizer, parameters in a fixed order): data-parallel
    replicas of a plain (non-DeepSpeed) sub-network then step identically, as DeepSpeed's ranks do."""
    import torch.distributed as dist

    def hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        world = dist.get_world_size()
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        if world == 1 or not params:
            return
        flat = torch.cat([p.grad.reshape(-1) for p in params if p.grad is not None])
        dist.all_reduce(flat)
        flat.div_(world)
        off = 0
        for p in params:
            g = p.grad
            assert g is not None
            g.copy_(flat[off : off + g.numel()].view_as(g))
            off += g.numel()

    return [o.register_step_pre_hook(hook) for o in optimizers]


class RankSlicedSchedule:
    """A schedule's global batches, each cut to this rank's slice (paired mode: rank r of A trains on
    rows ``[r*m, (r+1)*m)`` of every global batch of ``m*world_size`` rows)."""

    def __init__(self, schedule: Any, rank: int, world_size: int) -> None:
        if schedule.batch_size % world_size:
            raise ValueError(
                f"the global batch size {schedule.batch_size} is not a multiple of ranks.world_size "
                f"{world_size}; every rank takes an equal slice"
            )
        self._s, self.rank, self.world_size = schedule, rank, world_size
        self.micro = schedule.batch_size // world_size

    def __getattr__(self, name: str) -> Any:
        return getattr(self._s, name)

    def steps(self, start: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        for epoch, rows in self._s.steps(start):
            yield epoch, rows[self.rank * self.micro : (self.rank + 1) * self.micro]


# ---- one process of a multi-rank run ---------------------------------------------------------------------


def _rank_file(path: str | None, rank: int | None) -> str | None:
    """A per-rank file for rank > 0 (``{rank}`` replaced, else ``name.r<rank>.ext``); rank 0 keeps the name."""
    if path is None or rank is None:
        return path
    if "{rank}" in path:
        return path.replace("{rank}", str(rank))
    if rank == 0:
        return path
    root, ext = os.path.splitext(path)
    return f"{root}.r{rank}{ext}"


def run_rank_party(cfg: RunConfig) -> int:
    """Runs one process of a party with a ``ranks`` section: a rank started by the launcher (B's ranks,
    A's in paired mode), or party A of scatter mode. A launched rank ends with ``os._exit`` after
    flushing its logs, whatever happened: torch/gloo can abort during interpreter teardown after a
    finished run, and a rank whose run failed must exit so that the launcher restarts the group."""
    group = group_of(cfg)
    assert group is not None
    if not group.launched:
        return _run(cfg, group)
    code = 1
    try:
        code = _run(cfg, group)
    except BaseException as e:  # noqa: BLE001 - reported, then the process ends with a failure code
        log.error("%s rank %s: %s: %s", cfg.party, group.rank, type(e).__name__, e, exc_info=True)
    finally:
        import sys

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _run(cfg: RunConfig, group: RankGroup) -> int:
    from splitlink.channel import ServerConfig, SSLConfig, VerticalFederatedCommunicator
    from splitlink.runtime import registry
    from splitlink.runtime.launch import setup_process
    from splitlink.runtime.metrics import Metrics

    setup_process(cfg, _rank_file(cfg.log_file, group.rank))
    plan = channel_plan(cfg, group)
    who = f"{cfg.party} {plan.me[0]}"
    if group.launched:
        ensure_process_group()  # before DeepSpeed, which joins it
    party: Any = registry.get(cfg.scenario).make_party(cfg)
    party.group = group
    if group.launched:
        for m in party.models.values():
            if getattr(m, "engine", None) is None:  # replicas without DeepSpeed (A's ranks when paired)
                average_gradients(m.optimizers)
        if group.rank != 0:
            party.metrics = Metrics(_rank_file(party.train.metrics_path, group.rank))
        if cfg.party == "leader":  # paired: rank r trains on slice r of every global batch
            assert group.rank is not None
            party.schedule = RankSlicedSchedule(party.schedule, group.rank, group.world_size)
    ssl = None
    if cfg.ssl is not None:
        ssl = SSLConfig(**ssl_for_rank(cfg.ssl.model_dump(), group.rank))
    retry = cfg.train.peer_timeout or 60.0
    with VerticalFederatedCommunicator(
        ServerConfig(*plan.me),
        [ServerConfig(*p) for p in plan.peers],
        enable_ssl=cfg.enable_ssl,
        ssl_config=ssl,
        retry_deadline=retry,
        compress_configs=party.compress_configs(),
        seal=cfg.seal,
    ) as comm:
        if len(plan.peers) > 1:
            party.comm = ScatterComm(comm, plan.alias, [n for n, _ in plan.peers], cfg.train.peer_timeout)
        else:
            party.comm = AliasComm(comm, plan.alias, plan.peers[0][0])
        log.info(
            "%s: %s mode, %d rank(s) of party B%s",
            who,
            group.mode,
            group.world_size,
            f", this is rank {group.rank}" if group.launched else "",
        )
        party.run()
    log.info("%s: finished at step %d", who, party.step)
    return 0
