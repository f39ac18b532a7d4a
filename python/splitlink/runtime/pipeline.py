"""Micro-batch pipelining of a split step, exact (issue 19 item 2).

A step's batch is cut into ``m`` micro-batches (:func:`split_rows`: sizes differ by at most one row, the
first ones larger; a batch of fewer than ``m`` rows becomes one-row micro-batches). Each party runs its
share of the step as a list of :class:`Stage` s, *stage-major*: every micro-batch through its first
stage, then every micro-batch through the next, and so on. A stage may take one frame from the peer per
micro-batch (``receives``) and send one (``sends``, asynchronously: ``comm.isend``, so the party computes
micro-batch i+1 while micro-batch i's frame is on the wire). Frames of one direction arrive in the
order they were sent, so the two parties agree on the schedule without any other message. Pangu's
three-module split (party A: Embedding, Head; party B: Backbone) runs

    A: embedding forward 0..m-1 -> | B: backbone forward 0..m-1 -> | A: head forward+backward 0..m-1 -> |
    B: backbone backward 0..m-1 -> | A: embedding backward 0..m-1

so party B forwards micro-batch i+1 while party A runs the head on i and the head's gradients stream back
while B still forwards; Wide&Deep's two-module split runs follower forward -> leader top -> follower
backward the same way.

Exactness: every sub-network accumulates its micro-batches' parameter gradients
(``FLModel.backward_one_step(step=False)``) and steps once, after the last micro-batch: in its backward
(``step=True``; always under DeepSpeed, the engine's accumulation boundary) or, where the peer's next work
waits for the frame that backward sends, later (:func:`defers_step`: ``optimizer_step()`` in
:func:`run_stages`'s ``finish``, party B's backbone); each mean-reduced loss is weighted by micro-batch rows /
batch rows (``loss_weight``, :func:`weights`), so the accumulated gradient is the full batch's up to the
rounding of the sum's order. Checkpoints stay at step boundaries (the party's ``advance()`` after the step).

The first frame a party sends in a step carries :data:`MICRO_KEY` = (index, count, configured m) so that the
receiver checks the parties agree (a party B with ``micro_batches`` unset follows party A's count).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "Stage",
    "split_rows",
    "weights",
    "run_stages",
    "run_local",
    "micro_tag",
    "check_micro",
    "MICRO_KEY",
    "check_micro_batches",
    "defers_step",
    "TRACE_ENV",
]

MICRO_KEY = "pipeline_micro"

# Diagnostics: with this environment variable naming a file, every party appends one JSON line per stage
# call (party, step, stage, whether it receives, micro-batch, start time on the monotonic clock shared by the
# processes of a machine, seconds blocked receiving, computing, queueing the send, in ``then``, and the computing
# thread's CPU seconds) and one per step for the wait for the sent frames' acknowledgements; the
# parties' lines merge into one timeline (benchmarks/bench_wan.py --trace prints the breakdown).
TRACE_ENV = "SPLITLINK_PIPELINE_TRACE"
_trace_lock = threading.Lock()


def _trace(row: dict[str, Any]) -> None:
    path = os.environ.get(TRACE_ENV)
    if path:
        with _trace_lock, open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def check_micro_batches(m: Any, what: str = "micro_batches") -> int:
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
        raise ValueError(f"{what} must be an integer >= 1 (1: no pipelining), got {m!r}")
    return int(m)


def split_rows(rows: np.ndarray, m: int) -> list[np.ndarray]:
    """``rows`` cut into ``min(m, len(rows))`` consecutive micro-batches whose sizes differ by at most one."""
    m = check_micro_batches(m)
    if len(rows) == 0:
        raise ValueError("cannot cut an empty batch into micro-batches")
    return [np.asarray(p) for p in np.array_split(np.asarray(rows), min(m, len(rows)))]


def weights(parts: Sequence[Any]) -> list[float]:
    """Each micro-batch's share of the batch's rows: the weight of its mean-reduced losses."""
    total = sum(len(p) for p in parts)
    return [len(p) / total for p in parts]


def micro_tag(i: int, count: int, configured: int) -> torch.Tensor:
    return torch.tensor([i, count, configured], dtype=torch.int64)


def check_micro(got: Mapping[str, Any], i: int, configured: int, who: str, peer: str) -> int:
    """The micro-batch count of a received frame tagged by :func:`micro_tag` (removed from ``got``);
    raises when the parties disagree."""
    tag = got.pop(MICRO_KEY, None) if isinstance(got, dict) else None
    if tag is None:
        raise ValueError(
            f"{who}: {peer} sent an unpipelined step frame but this party pipelines with "
            f"micro_batches={configured}; give both parties the same train.pipeline.micro_batches"
        )
    index, count, theirs = (int(v) for v in torch.as_tensor(tag).reshape(-1).tolist()[:3])
    if configured > 1 and theirs != configured:
        raise ValueError(
            f"{who}: {peer} pipelines with micro_batches={theirs}, this party with {configured}; "
            "give both parties the same train.pipeline.micro_batches"
        )
    if index != i or not 1 <= count <= 65536:
        raise ValueError(
            f"{who}: {peer} sent micro-batch {index} of {count} where micro-batch {i} was due (the parties are out of step)"
        )
    return count


@dataclass
class Stage:
    """One party's part of a step, run for each micro-batch in turn: ``fn(i, received)`` returns the
    tensors to send (``sends``) or None; ``received`` is the peer's frame for micro-batch i
    (``receives``) or None; ``then(i)`` runs after the send is queued (work that need not delay it)."""

    name: str
    fn: Callable[[int, dict[str, Any] | None], Mapping[str, Any] | None]
    receives: bool = False
    sends: bool = False
    then: Callable[[int], None] | None = None


def defers_step(model: Any) -> bool:
    """Whether ``model`` (an FLModel) can take its last micro-batch's backward with ``step=False`` and
    step its optimizers once the step's frames are sent (``optimizer_step()`` in :func:`run_stages`'s
    ``finish``), keeping the optimizer step off the peer's critical path: with plain torch optimizers, yes
    (the same arithmetic in the same order, only later); under DeepSpeed the last backward must be the
    engine's accumulation boundary (``step=True``)."""
    return getattr(model, "engine", None) is None


def _run_one(party: Any, stage: Stage, i: int, got: dict[str, Any] | None, sends: list[Any], sync: bool) -> None:
    trace = os.environ.get(TRACE_ENV)
    t0, c0 = time.perf_counter(), time.thread_time()
    if stage.receives and got is None:
        got = party.receive(kind="tensors")
    t1 = time.perf_counter()
    out = stage.fn(i, got)
    t2 = time.perf_counter()
    if stage.sends:
        if out is None:
            raise RuntimeError(f"{party.name}: pipeline stage {stage.name!r} sends but returned nothing")
        comm = party.comm
        if sync or not hasattr(comm, "isend"):
            party.send(out, step=party.step)
        else:
            policy = party.codec_policy
            nbytes = policy.frame_bytes(out, comm.compress_configs) if policy is not None else 0
            sends.append((comm.isend(party.peer, out, step=party.step, kind="tensors"), out, nbytes, time.perf_counter()))
    t3 = time.perf_counter()
    if stage.then is not None:
        stage.then(i)
    if trace:
        t4 = time.perf_counter()
        _trace(
            {
                "party": party.name,
                "step": party.step,
                "stage": stage.name,
                "receives": stage.receives,
                "i": i,
                "t": t0,
                "recv_s": t1 - t0,
                "compute_s": t2 - t1,
                "send_s": t3 - t2,
                "then_s": t4 - t3,
                "cpu_s": time.thread_time() - c0,
            }
        )


def run_stages(
    party: Any,
    stages: Sequence[Stage],
    count: int,
    *,
    first: dict[str, Any] | None = None,
    finish: Callable[[], None] | None = None,
) -> None:
    """``party``'s side of one pipelined step over its communicator, stage-major; ``first``: the frame
    of micro-batch 0 of the first receiving stage when the caller has already taken it. Returns when
    every frame it sent has been accepted by the peer, after ``finish()`` (work of the step that no
    frame waits for, e.g. a deferred optimizer step: run then, it does not compete with the sending
    threads for the interpreter and the cores while the step's last frame is packed and sent)."""
    sends: list[Any] = []
    for stage in stages:
        for i in range(count):
            got, first = (first, None) if (stage.receives and first is not None) else (None, first)
            _run_one(party, stage, i, got, sends, sync=False)
    # The frames' times on the link for the auto codec policy: from when a frame could start (submitted,
    # and the one before it accepted) to when it was seen accepted; frames accepted before this loop
    # reached them count until now, which underestimates the rate (a conservative policy).
    policy = party.codec_policy
    t0, done = time.perf_counter(), 0.0
    for w, out, nbytes, submitted in sends:
        w.wait()
        now = time.perf_counter()
        if policy is not None:
            policy.frame_sent(out, nbytes, now - max(submitted, done))
        done = now
    if os.environ.get(TRACE_ENV):
        _trace(
            {
                "party": party.name,
                "step": party.step,
                "stage": "wait for acks",
                "i": -1,
                "t": t0,
                "recv_s": time.perf_counter() - t0,
            }
        )
    if finish is not None:
        t0 = time.perf_counter()
        finish()
        if os.environ.get(TRACE_ENV):
            _trace(
                {"party": party.name, "step": party.step, "stage": "finish", "i": -2, "t": t0, "then_s": time.perf_counter() - t0}
            )


def run_local(order: Sequence[tuple[Any, Stage]], count: int) -> None:
    """Both parties' stages of one step in one thread (in-process communicators): ``order`` lists
    (party, stage) in an order where every frame is sent before it is received."""
    for party, stage in order:
        for i in range(count):
            _run_one(party, stage, i, None, [], sync=True)
