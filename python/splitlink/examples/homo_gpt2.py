"""The FATE Homo-NN GPT-2 scenario (seed 003) on data every machine has: an aggregator and clients
fine-tune a GPT-2-architecture sequence classifier together (``splitlink fl``), full or with LoRA.

Data: the docstrings of the public functions, classes and methods of four standard-library package
families (asyncio, email, unittest, xml), labelled by family: a real, labelled text task present
wherever Python is, the same on every machine with the same Python version, nothing downloaded. Texts
are byte-tokenised (ids 1..256 for bytes, 257 end of text, 0 padding), truncated to ``max_len``.
Rows are shuffled with a seed, 20% held out, the rest split over the clients IID or non-IID (each
client holds mostly two of the four families: a Dirichlet-free, deterministic label skew).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FAMILIES",
    "docstring_corpus",
    "encode",
    "make_splits",
    "write_job",
    "prepare",
    "central_baseline",
    "run_processes",
    "SCENARIO",
]

FAMILIES = ("asyncio", "email", "unittest", "xml")
PAD, EOT = 0, 257
VOCAB = 260


def _modules(package: str) -> list[Any]:
    root = importlib.import_module(package)
    mods = [root]
    for info in pkgutil.walk_packages(getattr(root, "__path__", []), prefix=package + "."):
        if any(part.startswith("_") or part in ("test", "tests", "__main__") for part in info.name.split(".")[1:]):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mods.append(importlib.import_module(info.name))
        except Exception:  # noqa: BLE001 - a platform-specific submodule (e.g. windows_events)
            continue
    return mods


def docstring_corpus(min_chars: int = 40) -> tuple[list[str], list[int]]:
    """(texts, labels): one row per distinct docstring of a public object defined in a family's modules."""
    texts: list[str] = []
    labels: list[int] = []
    seen: set[str] = set()
    for label, fam in enumerate(FAMILIES):
        rows = []
        for mod in _modules(fam):
            for name, obj in sorted(vars(mod).items()):
                if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                    continue
                members = [obj]
                if inspect.isclass(obj):
                    members += [v for k, v in sorted(vars(obj).items()) if not k.startswith("_") and callable(v)]
                for m in members:
                    doc = inspect.getdoc(m) if callable(m) or inspect.isclass(m) else None
                    if doc and len(doc) >= min_chars and doc not in seen:
                        seen.add(doc)
                        rows.append(" ".join(doc.split()))
        for r in sorted(rows):
            texts.append(r)
            labels.append(label)
    return texts, labels


def encode(texts: list[str], max_len: int) -> dict[str, np.ndarray]:
    """Byte-level ids, right-padded: input_ids, attention_mask (int64)."""
    ids = np.full((len(texts), max_len), PAD, dtype=np.int64)
    mask = np.zeros((len(texts), max_len), dtype=np.int64)
    for i, t in enumerate(texts):
        b = list(t.encode("utf-8")[: max_len - 1])
        row = [x + 1 for x in b] + [EOT]
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def make_splits(
    n_clients: int, *, max_len: int = 64, seed: int = 0, non_iid: bool = False, eval_fraction: float = 0.2
) -> tuple[list[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """(per-client training rows, held-out rows)."""
    texts, labels = docstring_corpus()
    enc = encode(texts, max_len)
    y = np.asarray(labels, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_eval = int(len(y) * eval_fraction)
    ev, tr = order[:n_eval], order[n_eval:]
    held = {**{k: v[ev] for k, v in enc.items()}, "labels": y[ev]}
    if non_iid:
        # client i prefers families (2i, 2i+1) mod 4: 80% of their rows are shared among the clients that
        # prefer them, the rest spread evenly
        k = len(FAMILIES)
        pref = np.array([[0.8 / 2 if (f - 2 * i) % k in (0, 1) else 0.2 / (k - 2) for f in range(k)] for i in range(n_clients)])
        share = pref / pref.sum(0, keepdims=True)  # per family: the fraction of its rows each client gets
        owner = np.empty(len(tr), dtype=np.int64)
        for f in range(k):
            rows = np.flatnonzero(y[tr] == f)
            cuts = np.floor(np.cumsum(share[:, f]) * len(rows)).astype(int)
            owner[rows] = np.searchsorted(cuts, np.arange(len(rows)), side="right")
        parts = [tr[owner == i] for i in range(n_clients)]
    else:
        parts = np.array_split(tr, n_clients)
    clients = [{**{k: v[p] for k, v in enc.items()}, "labels": y[p]} for p in parts]
    return clients, held


def write_job(
    workdir: Path,
    clients: list[str],
    ports: list[int],
    *,
    mode: str = "lora",
    epochs: int = 2,
    batch_size: int = 16,
    lr: float = 1e-3,
    enable_ssl: bool = True,
    seed: int = 0,
    model: dict[str, Any] | None = None,
    deepspeed: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    secure: bool = True,
    clip: float = 1.0,
) -> Path:
    """The job file of an aggregator ``arbiter`` and ``clients`` (data in ``<name>.npz``, held-out rows in
    ``eval.npz``) on 127.0.0.1 ``ports`` (aggregator first). ``secure``: SecAgg+ aggregation (the default, as
    the seed's ``aggregator="secure_aggregate"``), each element of a client's weighted round update clipped to
    [-clip, clip] and quantised to 16 bits (step clip / 32767); the threshold is the smallest valid (with two
    clients both must finish a round; with 3+, rounds survive clients dropping)."""
    import yaml

    job: dict[str, Any] = {
        "session_id": "homo_gpt2",
        "aggregator": {"name": "arbiter", "address": f"127.0.0.1:{ports[0]}"},
        "clients": [
            {"name": c, "address": f"127.0.0.1:{p}", "data": f"{c}.npz", "eval_data": "eval.npz"}
            for c, p in zip(clients, ports[1:])
        ],
        "enable_ssl": enable_ssl,
        "fed_args": {
            "aggregate_strategy": "epoch",
            "aggregate_freq": 1,
            "aggregator": "secure" if secure else "fedavg",
            "round_deadline": 600,
            "min_clients": len(clients),
            **({"secure": {"clip": clip, "bits": 16}} if secure else {}),
        },
        "training_args": {
            "num_train_epochs": epochs,
            "per_device_train_batch_size": batch_size,
            "learning_rate": lr,
            "optim": "adam",
            "seed": seed,
        },
        "model": model
        or {"vocab_size": VOCAB, "n_positions": 64, "n_embd": 64, "n_layer": 2, "n_head": 4, "num_labels": len(FAMILIES)},
        "peft": {"type": mode if mode != "full" else "none", "r": 8, "lora_alpha": 16, "target_modules": ["c_attn"]},
        "metrics_path": "metrics.jsonl",
    }
    if enable_ssl:
        job["ssl"] = {"cert_dir": "certs", "ca_cert_path": "certs/ca.crt", "password": "splitlink"}
    if deepspeed is not None:
        job["training_args"]["deepspeed"] = deepspeed
    for k, v in (extra or {}).items():
        job[k] = {**job.get(k, {}), **v} if isinstance(v, dict) else v
    path = workdir / "job.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def prepare(
    workdir: str | Path,
    *,
    clients: int = 2,
    mode: str = "lora",
    non_iid: bool = False,
    epochs: int = 3,
    max_len: int = 64,
    seed: int = 0,
    enable_ssl: bool = True,
    **job: Any,
) -> Path:
    """Writes the clients' data (``<name>.npz``), the held-out rows (``eval.npz``), the union of the clients'
    rows (``union.npz``, for the central baseline), certificates and ``job.yaml`` under ``workdir``."""
    from splitlink.certs import make_dev_certs
    from splitlink.util import free_ports

    w = Path(workdir)
    w.mkdir(parents=True, exist_ok=True)
    names = ["guest"] + [f"host{i}" if clients > 2 else "host" for i in range(1, clients)]
    parts, held = make_splits(clients, max_len=max_len, seed=seed, non_iid=non_iid)
    for n, p in zip(names, parts):
        np.savez(w / f"{n}.npz", **p)  # type: ignore[arg-type]
    np.savez(w / "eval.npz", **held)  # type: ignore[arg-type]
    np.savez(w / "union.npz", **{k: np.concatenate([p[k] for p in parts]) for k in parts[0]})  # type: ignore[arg-type]
    if enable_ssl:
        make_dev_certs(w / "certs", ["arbiter", *names])
    model = {"vocab_size": VOCAB, "n_positions": max_len, "n_embd": 64, "n_layer": 2, "n_head": 4, "num_labels": len(FAMILIES)}
    return write_job(
        w, names, free_ports(clients + 1), mode=mode, epochs=epochs, enable_ssl=enable_ssl, seed=seed, model=model, **job
    )


def central_baseline(job_path: str | Path) -> dict[str, float]:
    """The same model, options and epochs trained in one place on the union of the clients' rows
    (a one-client federation: FedAvg of one is plain training, so no secure aggregation); held-out loss and accuracy."""
    from splitlink.horizontal.job import (
        build_trainer,
        load_job,
        load_npz,
        make_aggregator,
    )
    from splitlink.horizontal.rounds import LocalTransport

    cfg = load_job(job_path)
    w = Path(cfg.source).parent
    one = cfg.model_copy(
        update={
            "clients": [cfg.clients[0].model_copy(update={"data": str(w / "union.npz")})],
            "fed_args": cfg.fed_args.model_copy(
                update={"min_clients": 1, "clients_per_round": None, "aggregator": "fedavg", "secure": None}
            ),
            "checkpoint": cfg.checkpoint.model_copy(update={"every": 0}),
            "metrics_path": None,
        }
    )
    t = build_trainer(one, one.clients[0].name)
    make_aggregator(one, LocalTransport({t.name: t})).run()
    result: dict[str, float] = t.evaluate(load_npz(str(w / "eval.npz")))
    return result


def run_processes(job_path: str | Path, *, timeout: float = 1800) -> dict[str, Any]:
    """``splitlink fl`` for the aggregator and every client, each its own process; their JSON summaries."""
    import json
    import subprocess
    import sys

    from splitlink.horizontal.job import load_job

    cfg = load_job(job_path)
    cmds = {cfg.aggregator.name: ["aggregator"], **{c.name: ["client", "--name", c.name] for c in cfg.clients}}
    procs = {
        n: subprocess.Popen(
            [sys.executable, "-m", "splitlink", "fl", *c, "--job", str(job_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n, c in cmds.items()
    }
    outs = {n: p.communicate(timeout=timeout) for n, p in procs.items()}
    for n, p in procs.items():
        if p.returncode != 0:
            raise RuntimeError(f"splitlink fl ({n}) failed:\n{outs[n][1][-3000:]}")
    return {n: json.loads(o[0].strip().splitlines()[-1]) for n, o in outs.items()}


def _not_a_split(cfg: Any) -> Any:
    raise ValueError(
        "homo_gpt2 is a horizontal federation (an aggregator and N clients), not a two-party split: "
        "describe it in a job file and run `splitlink fl aggregator --job job.yaml` and "
        "`splitlink fl client --job job.yaml --name <client>` (examples/homo_gpt2/prepare.py writes one)"
    )


def _demo(workdir: str | Path, **kw: Any) -> dict[str, Any]:
    job = prepare(workdir, **{k: v for k, v in kw.items() if k in ("clients", "mode", "non_iid", "epochs", "seed")})
    return {"federated": run_processes(job), "central": central_baseline(job)}


def _scenario() -> Any:
    from splitlink.runtime.registry import Scenario

    return Scenario(
        "homo_gpt2",
        make_party=_not_a_split,
        needs_data=lambda party: False,
        summary="FATE Homo-NN GPT-2: FedAvg with secure aggregation (SecAgg+) over mTLS, LoRA/IA3 adapters (splitlink fl)",
        demo=_demo,
    )


SCENARIO = _scenario()
