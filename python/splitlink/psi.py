"""Private set intersection: align two parties' rows without revealing the ids outside the intersection.

ECDH-PSI over X25519 (the group choice and the security argument are in ``csrc/include/splitlink/psi/ecdh.h``).
Each party, with a fresh secret scalar ``k``:

1. hashes its (deduplicated) ids to points and blinds them, ``B = k * H(id)``, shuffles them and sends
   them (frame kind ``"psi"``);
2. blinds the peer's points again, ``E = k * B_peer`` (the peer's ids double-blinded, in the peer's
   shuffled order) and sends back their first ``L`` bytes, where ``L`` makes a false match between
   any of the n x m pairs at most 2^-40 likely;
3. compares the truncated double-blinded values of its own ids (step 2 of the peer) with the
   truncations of ``E``; for the candidate matches it asks the peer for the full 32-byte values and
   keeps only exact matches, so false positives never reach the result;
4. orders the intersection by the full double-blinded value, which both parties hold, so both
   return the intersection in the same order without any further exchange.

Traffic per id is 32 + L bytes each way plus 36 bytes per candidate. A party learns the
intersection and the size of the other's set; the frames it receives hold only blinded values.

Large inputs go in buckets by a keyed hash both parties agree on (each contributes half the key),
one intersection per bucket; with ``state_dir`` every finished bucket is written atomically, and a
restarted run skips the buckets both parties finished.

``splitlink psi`` joins CSV files on a key column this way (see :func:`join_csv`).

More than two parties (:func:`intersect_parties`): the leader runs this two-party PSI with each
follower in turn (each with its own resumable state under ``state_dir/<follower>``), intersects the
pairwise intersections, and sends each follower the positions of the final rows in the pairwise result
that follower holds (in the same order on both sides), so every party ends with the rows all parties
hold, in the leader's order. The leader learns each pairwise intersection (as in two-party PSI); a
follower learns its intersection with the leader and which of those rows every party holds; followers
learn nothing about each other's ids beyond that.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from splitlink import _core
from splitlink.util import atomic_write

__all__ = ["intersect", "intersect_parties", "insecure_plaintext_intersect", "join_csv", "digest_bytes"]

log = logging.getLogger("splitlink.psi")
KIND = "psi"
POINT = 32


def digest_bytes(n: int, m: int, fp_bits: int = 40) -> int:
    """Bytes of a truncated double-blinded value so that a false match among n*m pairs has
    probability at most 2^-fp_bits."""
    return max(8, min(POINT, math.ceil((fp_bits + math.log2(max(1, n) * max(1, m))) / 8)))


def _as_bytes(ids: Sequence[Any]) -> list[bytes]:
    out = []
    for i, v in enumerate(ids):
        if isinstance(v, bytes):
            out.append(v)
        elif isinstance(v, str):
            out.append(v.encode("utf-8"))
        else:
            raise TypeError(f"id {i} is a {type(v).__name__}; ids are str or bytes (convert numbers with str())")
    return out


def _dump_ids(ids: list[str], fh: Any) -> None:
    json.dump({"ids": ids}, fh)


def _send(comm: Any, peer: str, tensors: dict[str, Any]) -> None:
    comm.send_tensors(peer, {"psi": tensors}, kind=KIND)


def _recv(comm: Any, peer: str, timeout: float | None) -> dict[str, Any]:
    got = comm.receive(peer, timeout, kind=KIND)
    if not isinstance(got, dict) or "psi" not in got:
        raise ValueError(f"malformed PSI message from {peer!r}: expected a 'psi' mapping")
    return dict(got["psi"])


def _points(t: Any, what: str, peer: str) -> np.ndarray:
    a = t.numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    if a.dtype != np.uint8 or a.ndim != 2 or a.shape[1] not in range(8, POINT + 1):
        raise ValueError(f"malformed PSI message from {peer!r}: {what} must be uint8 (n, 8..32), got {a.dtype} {a.shape}")
    return np.ascontiguousarray(a)


def _dedupe(ids: Sequence[Any]) -> tuple[list[Any], int]:
    seen: dict[Any, None] = {}
    for v in ids:
        seen.setdefault(v, None)
    return list(seen), len(ids) - len(seen)


def _intersect_once(
    ids: list[Any], raw: list[bytes], comm: Any, peer: str, threads: int, timeout: float | None
) -> list[tuple[bytes, Any]]:
    """One PSI run over deduplicated ids (``raw``: their bytes); returns (full double-blinded value, id)
    for the intersection. Large arrays are dropped as soon as the protocol is done with them."""
    blinder = _core.psi.Blinder()
    n = len(ids)
    perm = np.random.default_rng(secrets.randbits(128)).permutation(n)
    _send(comm, peer, {"blinded": torch.from_numpy(blinder.hash_and_blind(raw, threads)[perm])})
    theirs = _points(_recv(comm, peer, timeout)["blinded"], "blinded", peer)
    if theirs.shape[1] != POINT:
        raise ValueError(f"malformed PSI message from {peer!r}: blinded points must be 32 bytes")
    m = len(theirs)
    L = digest_bytes(n, m)
    double_theirs = blinder.blind(theirs, threads) if m else np.zeros((0, POINT), np.uint8)
    del theirs
    _send(comm, peer, {"double": torch.from_numpy(np.ascontiguousarray(double_theirs[:, :L]))})
    got = _points(_recv(comm, peer, timeout)["double"], "double", peer)
    if got.shape != (n, L):
        raise ValueError(f"malformed PSI message from {peer!r}: expected {n} double-blinded values of {L} bytes, got {got.shape}")
    # Candidates: my shuffled positions whose truncated value occurs among the peer's. (Fixed-width
    # byte strings compare exactly at equal length, so numpy's "S" views are exact here.)
    cand = np.flatnonzero(np.isin(got.view(f"S{L}").ravel(), np.ascontiguousarray(double_theirs[:, :L]).view(f"S{L}").ravel()))
    _send(comm, peer, {"request": torch.from_numpy(cand.astype(np.int64))})
    req = _recv(comm, peer, timeout)["request"]
    req = req.numpy() if isinstance(req, torch.Tensor) else np.asarray(req)
    if req.dtype != np.int64 or req.ndim != 1 or (len(req) and (req.min() < 0 or req.max() >= m)):
        raise ValueError(f"malformed PSI message from {peer!r}: bad candidate positions")
    _send(comm, peer, {"full": torch.from_numpy(np.ascontiguousarray(double_theirs[req]))})
    full = _points(_recv(comm, peer, timeout)["full"], "full", peer)
    if full.shape != (len(cand), POINT):
        raise ValueError(f"malformed PSI message from {peer!r}: expected {len(cand)} full values")
    # Exact matches only: a truncated-digest false positive never reaches the result.
    exact = np.isin(full.view("S32").ravel(), double_theirs.view("S32").ravel()) if len(cand) else np.zeros(0, bool)
    if int((~exact).sum()):
        log.info("PSI: %d truncated-digest false positive(s) removed", int((~exact).sum()))
    keep, values = cand[exact], full[exact]
    order = np.argsort(values.view("S32").ravel(), kind="stable")
    return [(values[o].tobytes(), ids[int(perm[keep[o]])]) for o in order]


def _bucket_key(comm: Any, peer: str, role: str, buckets: int, timeout: float | None) -> bytes:
    mine = secrets.token_bytes(32)
    _send(
        comm,
        peer,
        {"hello": torch.tensor([buckets], dtype=torch.int64), "nonce": torch.frombuffer(bytearray(mine), dtype=torch.uint8)},
    )
    got = _recv(comm, peer, timeout)
    theirs_b = int(got["hello"][0])
    if theirs_b != buckets:
        raise ValueError(f"the parties disagree on the number of buckets ({buckets} here, {theirs_b} at {peer!r})")
    theirs = bytes(got["nonce"].numpy().tobytes())
    first, second = (mine, theirs) if role == "leader" else (theirs, mine)
    return hashlib.sha256(b"splitlink psi buckets v1" + first + second).digest()


def bucket_of(key: bytes, ids: Iterable[bytes], buckets: int) -> np.ndarray:
    """Bucket index of each id: HMAC-SHA256(key, id) mod buckets."""
    return np.fromiter((int.from_bytes(hmac.new(key, i, "sha256").digest()[:8], "little") % buckets for i in ids), dtype=np.int64)


def intersect(
    ids: Sequence[Any],
    communicator: Any,
    peer: str,
    *,
    role: str,
    buckets: int = 1,
    state_dir: str | os.PathLike[str] | None = None,
    threads: int = 0,
    timeout: float | None = 600.0,
) -> list[Any]:
    """The ids both parties hold, in the same order on both sides.

    ``ids``: str or bytes (str compare by their UTF-8 bytes); duplicates are ignored. ``role`` is
    ``"leader"`` or ``"follower"`` (the two parties must differ). ``buckets`` > 1 splits large inputs by
    a keyed hash both agree on; with ``state_dir`` finished buckets survive a crash and are skipped
    when both parties restart with the same ``state_dir``.
    """
    if role not in ("leader", "follower"):
        raise ValueError(f"role must be 'leader' or 'follower', got {role!r}")
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    unique, dups = _dedupe(ids)
    if dups:
        log.warning("PSI: %d duplicate id(s) ignored", dups)
    as_bytes = _as_bytes(unique)  # also the type check, before any traffic
    state = Path(state_dir) if state_dir is not None else None
    key = None
    if state is not None:
        state.mkdir(parents=True, exist_ok=True)
        meta = state / "psi_state.json"
        saved = json.loads(meta.read_text()) if meta.exists() else None
        # Resume only if both parties kept the same bucket key (and the same input size).
        fingerprint = hashlib.sha256(b"".join(sorted(as_bytes))).hexdigest()
        claim = (
            hashlib.sha256(bytes.fromhex(saved["key"])).digest()
            if saved and saved["buckets"] == buckets and saved["fingerprint"] == fingerprint
            else bytes(32)
        )
        _send(communicator, peer, {"resume_claim": torch.frombuffer(bytearray(claim), dtype=torch.uint8)})
        theirs = bytes(_recv(communicator, peer, timeout)["resume_claim"].numpy().tobytes())
        if saved and claim == theirs and claim != bytes(32):
            key = bytes.fromhex(saved["key"])
            log.info("PSI: resuming with the saved bucket key")
        else:
            for old in state.glob("bucket-*.json"):
                old.unlink()
    if key is None:
        key = _bucket_key(communicator, peer, role, buckets, timeout)
        if state is not None:
            meta_text = json.dumps({"key": key.hex(), "buckets": buckets, "fingerprint": fingerprint})
            atomic_write(state / "psi_state.json", lambda fh: fh.write(meta_text))
    where = bucket_of(key, as_bytes, buckets) if buckets > 1 else np.zeros(len(unique), np.int64)
    # which buckets both parties already finished
    done_here = sorted(int(p.stem.split("-")[1]) for p in state.glob("bucket-*.json")) if state is not None else []
    _send(communicator, peer, {"done": torch.tensor(done_here, dtype=torch.int64)})
    done = set(done_here) & set(_recv(communicator, peer, timeout)["done"].tolist())
    result: list[Any] = []
    for b in range(buckets):
        if b in done:
            assert state is not None
            result.extend(json.loads((state / f"bucket-{b:06d}.json").read_text())["ids"])
            continue
        if buckets > 1:
            pick = np.flatnonzero(where == b)
            members, raw = [unique[i] for i in pick], [as_bytes[i] for i in pick]
        else:
            members, raw = unique, as_bytes
        found = _intersect_once(members, raw, communicator, peer, threads, timeout)
        ordered = [v for _, v in found]
        if state is not None:
            serial = [v if isinstance(v, str) else v.decode("latin-1") for v in ordered]
            if any(isinstance(v, bytes) for v in ordered):
                raise TypeError("state_dir stores ids as text; give str ids (or no state_dir)")
            atomic_write(state / f"bucket-{b:06d}.json", functools.partial(_dump_ids, serial))
        result.extend(ordered)
        log.info("PSI bucket %d/%d: %d of %d ids in the intersection", b + 1, buckets, len(ordered), len(members))
    return result


def intersect_parties(
    ids: Sequence[Any],
    communicator: Any,
    peers: Sequence[str] | str,
    *,
    role: str,
    buckets: int = 1,
    state_dir: str | os.PathLike[str] | None = None,
    threads: int = 0,
    timeout: float | None = 600.0,
) -> list[Any]:
    """The ids the leader and every follower hold, in the same order at every party.

    The leader passes ``peers`` = every follower's name (its order fixes the run order), a follower the
    leader's name. ``buckets``/``state_dir``/``threads``/``timeout`` as in :func:`intersect` (the leader
    keeps one state directory per follower, ``state_dir/<follower>``; a restarted run skips what both
    ends of each pair finished).
    """
    names = [peers] if isinstance(peers, str) else list(peers)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"peers must name distinct parties, got {names}")
    if role == "follower":
        if len(names) != 1:
            raise ValueError(f"a follower runs PSI with the leader only; got peers {names}")
        leader = names[0]
        mine = intersect(
            ids, communicator, leader, role="follower", buckets=buckets, state_dir=state_dir, threads=threads, timeout=timeout
        )
        pos = _recv(communicator, leader, timeout).get("final")
        pos = pos.numpy() if isinstance(pos, torch.Tensor) else np.asarray(pos)
        if (
            pos.dtype != np.int64
            or pos.ndim != 1
            or (len(pos) and (pos.min() < 0 or pos.max() >= len(mine)))
            or len(np.unique(pos)) != len(pos)
        ):
            raise ValueError(
                f"malformed PSI message from {leader!r}: the final positions must be distinct int64 "
                f"indices into the {len(mine)} ids both hold"
            )
        return [mine[int(i)] for i in pos]
    if role != "leader":
        raise ValueError(f"role must be 'leader' or 'follower', got {role!r}")
    per: dict[str, list[Any]] = {}
    for p in names:
        sub = Path(state_dir) / p if state_dir is not None else None
        per[p] = intersect(ids, communicator, p, role="leader", buckets=buckets, state_dir=sub, threads=threads, timeout=timeout)
        log.info("PSI with %s: %d ids in common", p, len(per[p]))
    index = {p: {v: i for i, v in enumerate(found)} for p, found in per.items()}
    final = [v for v in per[names[0]] if all(v in index[p] for p in names[1:])]
    for p in names:
        _send(communicator, p, {"final": torch.tensor([index[p][v] for v in final], dtype=torch.int64)})
    log.info("PSI over %d parties: %d ids every party holds", len(names) + 1, len(final))
    return final


def insecure_plaintext_intersect(ids: Sequence[Any], communicator: Any, peer: str, *, role: str) -> list[Any]:
    """INSECURE: sends every id in the clear. For tests and debugging only."""
    unique, _ = _dedupe(ids)
    raw = _as_bytes(unique)
    blob = b"".join(len(r).to_bytes(4, "little") + r for r in raw)
    _send(
        communicator,
        peer,
        {"plaintext": torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob else torch.zeros(0, dtype=torch.uint8)},
    )
    got = bytes(_recv(communicator, peer, None)["plaintext"].numpy().tobytes())
    theirs, at = set(), 0
    while at < len(got):
        n = int.from_bytes(got[at : at + 4], "little")
        theirs.add(got[at + 4 : at + 4 + n])
        at += 4 + n
    both = [(r, v) for r, v in zip(raw, unique) if r in theirs]
    both.sort(key=lambda t: hashlib.sha256(t[0]).digest())
    return [v for _, v in both]


def join_csv(
    input_path: str | os.PathLike[str],
    key: str,
    output_path: str | os.PathLike[str],
    communicator: Any,
    peer: str,
    *,
    role: str,
    buckets: int = 1,
    state_dir: str | os.PathLike[str] | None = None,
    threads: int = 0,
) -> int:
    """Writes the rows of ``input_path`` whose ``key`` both parties hold, in the same order on both sides.

    Returns the number of rows written. Rows with a duplicate key keep the first. The output has the
    input's header; run it on both sides with the same ``buckets``.
    """
    src = Path(input_path)
    with open(src, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(f"{src} is empty; expected a header row with a {key!r} column") from None
        if key not in header:
            raise ValueError(f"{src} has no column {key!r}; its columns: {', '.join(header)}")
        k = header.index(key)
        rows: dict[str, list[str]] = {}
        for lineno, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise ValueError(f"{src}:{lineno}: {len(row)} fields, the header has {len(header)}")
            rows.setdefault(row[k], row)
    order = intersect(list(rows), communicator, peer, role=role, buckets=buckets, state_dir=state_dir, threads=threads)

    def write(fh: Any) -> None:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows[ident] for ident in order)

    atomic_write(output_path, write)
    return len(order)
