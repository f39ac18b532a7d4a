"""PEFT adapters on a GPT-2 classifier (only adapters travel, the base never changes), the job file,
and a federation of three processes over mutual TLS that reproduces the in-process run bit for bit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from splitlink.certs import make_dev_certs
from splitlink.channel import InProcessCommunicator, ServerConfig
from splitlink.errors import YamlConfigError
from splitlink.horizontal.job import build_trainer, load_job, make_aggregator
from splitlink.horizontal.rounds import LocalTransport, NetworkTransport, state_bytes
from splitlink.util import free_ports

SMALL = {"vocab_size": 260, "n_positions": 16, "n_embd": 16, "n_layer": 1, "n_head": 2, "num_labels": 2}


def _data(seed: int, n: int = 12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 257, (n, 16))
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": (ids[:, 0] > 128).astype(np.int64)}


def _job(tmp: Path, mode: str, *, ssl: bool = False, ports: list[int] | None = None, extra: str = "") -> Path:
    ports = ports or [1, 2, 3]
    for i, c in enumerate(("guest", "host")):
        np.savez(tmp / f"{c}.npz", **_data(i))
    np.savez(tmp / "eval.npz", **_data(9))
    text = f"""session_id: t
aggregator: {{name: arbiter, address: "127.0.0.1:{ports[0]}"}}
clients:
  - {{name: guest, address: "127.0.0.1:{ports[1]}", data: guest.npz, eval_data: eval.npz}}
  - {{name: host, address: "127.0.0.1:{ports[2]}", data: host.npz}}
enable_ssl: {str(ssl).lower()}
{"ssl: {cert_dir: certs, ca_cert_path: certs/ca.crt, password: splitlink}" if ssl else ""}
fed_args: {{aggregate_strategy: step, aggregate_freq: 2, round_deadline: 120}}
training_args: {{max_steps: 4, per_device_train_batch_size: 4, learning_rate: 0.01, optim: adam, seed: 3}}
model: {json.dumps(SMALL)}
peft: {{type: {mode}, r: 2, lora_alpha: 4}}
{extra}
"""
    p = tmp / "job.yaml"
    p.write_text(text)
    return p


def _in_process(job: Path) -> tuple[dict[str, torch.Tensor], dict[str, object], list[dict[str, object]]]:
    cfg = load_job(job)
    trainers = {c.name: build_trainer(cfg, c.name) for c in cfg.clients}
    agg = make_aggregator(cfg, LocalTransport(trainers))
    return agg.run(), trainers, agg.history


@pytest.mark.parametrize("mode", ["lora", "ia3"])
def test_only_adapters_cross_the_wire_and_the_base_never_changes(tmp_path: Path, mode: str) -> None:
    torch.set_num_threads(1)
    cfg = load_job(_job(tmp_path, mode))
    trainers = {c.name: build_trainer(cfg, c.name) for c in cfg.clients}
    base_before = {k: v.detach().clone() for k, v in trainers["guest"].model.named_parameters() if not v.requires_grad}
    sent: list[dict[str, torch.Tensor]] = []

    class Recording(InProcessCommunicator):
        def send_tensors(self, target, tensors, **kw):  # type: ignore[no-untyped-def]
            if "state" in tensors:
                sent.append(dict(tensors["state"]))
            super().send_tensors(target, tensors, **kw)

    hub: dict[str, object] = {}
    comm = Recording(ServerConfig("arbiter", "x:1"), [ServerConfig("guest", "x:1"), ServerConfig("host", "x:1")], hub=hub)
    agg = make_aggregator(cfg, NetworkTransport(comm))
    # the clients answer from this process through the same communicator API
    import threading

    from splitlink.horizontal.rounds import ClientParty

    parties = []
    for name, t in trainers.items():
        cc = Recording(ServerConfig(name, "x:1"), ServerConfig("arbiter", "x:1"), hub=hub)
        parties.append(ClientParty(cc, "arbiter", t, timeout=60))
    threads = [threading.Thread(target=p.run, daemon=True) for p in parties]
    for th in threads:
        th.start()
    agg.run()
    for th in threads:
        th.join(60)
    cfg_model = trainers["guest"].model.config
    assert (cfg_model.n_embd, cfg_model.n_layer, cfg_model.vocab_size) == (16, 1, 260)  # the job's sizes, not GPT-2's
    names = set(trainers["guest"].exchanged)
    adapter_key = "lora_" if mode == "lora" else "ia3_"
    assert names and all(adapter_key in k or ".score." in k for k in names)
    assert all(set(s) == names for s in sent) and len(sent) == 2 * 2 * 2 + 2  # 2 rounds x 2 clients x (down, up) + done
    exchanged_bytes = sum(p.numel() * 4 for k, p in trainers["guest"].model.named_parameters() if k in names)
    total_bytes = sum(p.numel() * 4 for p in trainers["guest"].model.parameters())
    assert all(state_bytes(s) == exchanged_bytes for s in sent)
    assert exchanged_bytes < total_bytes / 5
    assert [r["bytes_up"] for r in agg.history] == [2 * exchanged_bytes] * 2
    for t in trainers.values():
        after = {k: v for k, v in t.model.named_parameters() if not v.requires_grad}
        assert set(after) == set(base_before)
        for k, v in after.items():
            assert torch.equal(v, base_before[k]), k
    assert any(not torch.equal(agg.state[k], v) for k, v in sent[0].items())  # the adapters did train


def test_job_errors_name_file_line_and_key(tmp_path: Path) -> None:
    p = _job(tmp_path, "lora", extra="checkpoint: {every: -1}\n")
    text = p.read_text().replace("optim: adam", "optim: lion").replace("aggregate_freq: 2", "aggregate_freq: 3")
    p.write_text(text)
    with pytest.raises(YamlConfigError) as e:
        load_job(p)
    msg = str(e.value)
    assert str(p) in msg and "training_args.optim" in msg and "checkpoint.every" in msg
    p.write_text(text.replace("optim: lion", "optim: adam").replace("checkpoint: {every: -1}", "fed_args2: 1"))
    with pytest.raises(YamlConfigError, match="fed_args2"):
        load_job(p)
    p.write_text(text.replace("optim: lion", "optim: adam").replace("checkpoint: {every: -1}", ""))
    with pytest.raises(YamlConfigError, match=r"max_steps.*aggregate_freq 3"):
        load_job(p)
    p.write_text(p.read_text().replace("aggregate_freq: 3", "aggregate_freq: 2, aggregator: secure"))
    with pytest.raises(YamlConfigError, match=r"fed_args.*give fed_args.secure"):
        load_job(p)


def test_deepspeed_config_of_the_seed_resolves() -> None:
    from splitlink.horizontal.client import LocalOptions, resolve_deepspeed_config

    seed = {
        "train_micro_batch_size_per_gpu": 16,
        "train_batch_size": "auto",
        "optimizer": {"type": "Adam", "params": {"lr": 5e-4}},
        "scheduler": {"type": "WarmupLR", "params": {"warmup_min_lr": 0}},
        "fp16": {"enabled": False},
        "zero_optimization": {"stage": 2, "allgather_partitions": True},
    }
    cfg = resolve_deepspeed_config(seed, LocalOptions(batch_size=8, lr=1e-3))
    assert cfg["train_batch_size"] == 16 and cfg["gradient_clipping"] == 0.0
    assert cfg["scheduler"]["params"] == {"warmup_min_lr": 0}  # absent values: DeepSpeed's defaults, as under FATE
    auto = {**seed, "scheduler": {"type": "WarmupLR", "params": {"warmup_max_lr": "auto", "warmup_num_steps": "auto"}}}
    assert resolve_deepspeed_config(auto, LocalOptions(lr=1e-3))["scheduler"]["params"] == {
        "warmup_max_lr": 1e-3,
        "warmup_num_steps": 1,
    }
    with pytest.raises(ValueError, match="zero_optimization.reduce_bucket_size"):
        resolve_deepspeed_config({**seed, "zero_optimization": {"stage": 2, "reduce_bucket_size": "auto"}}, LocalOptions())


@pytest.mark.slow
def test_three_processes_over_mtls_reproduce_the_in_process_run(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    ports = free_ports(3)
    make_dev_certs(tmp_path / "certs", ["arbiter", "guest", "host"])
    job = _job(tmp_path, "lora", ssl=True, ports=ports)
    cmds = {"arbiter": ["aggregator"], "guest": ["client", "--name", "guest"], "host": ["client", "--name", "host"]}
    procs = {
        n: subprocess.Popen(
            [sys.executable, "-m", "splitlink", "fl", *c, "--job", str(job), "--save-state", str(tmp_path / f"{n}.pt")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n, c in cmds.items()
    }
    outs = {n: p.communicate(timeout=240) for n, p in procs.items()}
    for n, p in procs.items():
        assert p.returncode == 0, f"{n}: {outs[n][1][-3000:]}"
    ref, _, history = _in_process(job)
    for n in cmds:
        got = torch.load(tmp_path / f"{n}.pt", weights_only=True)
        assert set(got) == set(ref)
        for k in ref:
            assert torch.equal(got[k], ref[k]), (n, k)
    summary = json.loads(outs["guest"][0].strip().splitlines()[-1])
    assert summary["rounds"] == [0, 1] and 0.0 <= summary["eval"]["accuracy"] <= 1.0
    agg = json.loads(outs["arbiter"][0].strip().splitlines()[-1])
    assert [r["loss"] for r in agg["history"]] == [r["loss"] for r in history]
