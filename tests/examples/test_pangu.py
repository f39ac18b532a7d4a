"""The Pangu-alpha split example: data, split == unsplit (DeepSpeed backbone), two processes over mTLS, resume."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from splitlink.examples import demo as demo_mod
from splitlink.examples import pangu
from splitlink.util import free_ports

ROOT = Path(__file__).resolve().parents[2]
TINY = dataclasses.replace(pangu.CONFIGS["tiny"], hidden_size=64, num_heads=4, num_layers=2, seq_length=32, vocab_size=512)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pangu")
    corpus = pangu.stdlib_corpus(d / "corpus", max_bytes=300_000)
    return pangu.preprocess_corpus(corpus, d / "data", vocab_size=512)


def test_dataset_resets_positions_and_attention_at_document_ends(data: Path) -> None:
    ds = pangu.TokenDataset(data, 32)
    assert ds.vocab_size <= 512 and len(ds) > 100
    tokens = np.load(data / "tokens.npy")
    rows = np.flatnonzero([(tokens[r * 32 : (r + 1) * 32 - 1] == ds.eod).any() for r in range(len(ds))])[:3]
    b = ds.batch(rows)
    for i, _r in enumerate(rows):
        ids = b["input_ids"][i].numpy()
        e = int(np.flatnonzero(ids[:-1] == ds.eod)[0])
        assert b["position_id"][i, 0] == 0 and b["position_id"][i, e] == e  # e is the first EOD in the window
        assert b["position_id"][i, e + 1] == 0  # the next document starts at 0
        mask = b["attention_mask"][i].numpy()
        assert not mask[e + 1, : e + 1].any()  # the next document does not see the previous one
        assert mask[e, : e + 1].all()  # within a document: causal
        assert not np.triu(mask, 1).any()
    with pytest.raises(ValueError, match="fewer than one sequence"):
        pangu.TokenDataset(data, 10**9)


def test_top_query_layer_uses_the_position_query() -> None:
    torch.manual_seed(0)
    head = pangu.HeadNet(TINY)
    h = torch.randn(2, 8, 64)
    table = torch.randn(512, 64)
    mask = torch.ones(8, 8, dtype=torch.bool).tril().expand(2, 8, 8)
    pos = torch.arange(8).expand(2, 8)
    a = head.logits(h, table, pos, mask)
    b = head.logits(h, table, (pos + 1) % 8, mask)
    assert not torch.allclose(a, b)  # the query depends on the position embedding


@pytest.mark.slow
def test_split_with_deepspeed_backbone_equals_unsplit_and_plots(data: Path, tmp_path: Path) -> None:
    from required import require_deepspeed

    require_deepspeed()
    ds = pangu.TokenDataset(data, TINY.seq_length)
    train = pangu.TrainConfig(epochs=1, batch_size=4, max_steps=25, lr=1e-3, log_every=100)
    split = [r["loss"] for r in pangu.train_local(TINY, ds, train)]
    unsplit = [r["loss"] for r in pangu.train_unsplit(TINY, ds, train)]
    assert len(split) == 25 and split[-1] < split[0]
    for s, u in zip(split, unsplit):
        assert abs(s - u) <= 1e-5 * abs(u), (split, unsplit)
    png = pangu.plot_losses(split, unsplit, tmp_path / "pangu.png", title="test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.slow
def test_two_processes_over_mtls_reproduce_the_in_process_run(data: Path, tmp_path: Path) -> None:
    from required import require_deepspeed

    require_deepspeed()
    demo_mod.make_dev_certs(tmp_path / "certs", ["leader", "follower"])
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = dataclasses.replace(pangu.CONFIGS["tiny"], vocab_size=512, seq_length=32)
        ds = pangu.TokenDataset(data, 32)
        local = [
            r["loss"]
            for r in pangu.train_local(cfg, ds, pangu.TrainConfig(epochs=1, batch_size=4, max_steps=12, lr=1e-3, log_every=100))
        ]
    finally:
        torch.set_num_threads(n)
    # The scripts use the tiny config (vocabulary 2048 >= the tokenizer's 512: same initial weights
    # only if the vocabulary matches, so both runs use the run file's model below).
    p1, p2 = free_ports(2)
    c = tmp_path / "certs"
    procs = {}
    for role, me, peer in (("follower", p2, p1), ("leader", p1, p2)):
        run = {
            "scenario": "pangu_alpha",
            "party": role,
            "address": f"127.0.0.1:{me}",
            "peer_address": f"127.0.0.1:{peer}",
            "enable_ssl": True,
            "threads": 1,
            "pangu": {"config": "tiny", "vocab_size": 512, "seq_length": 32},
            "ssl": {
                "server_cert_path": str(c / f"{role}.server.p12"),
                "client_cert_path": str(c / f"{role}.client.p12"),
                "ca_cert_path": str(c / "ca.crt"),
                "server_password": "splitlink",
                "client_password": "splitlink",
            },
            "train": {
                "epochs": 1,
                "batch_size": 4,
                "max_steps": 12,
                "lr": 1e-3,
                "log_every": 100,
                "metrics_path": str(tmp_path / "m.jsonl"),
            },
        }
        if role == "leader":
            run["data"] = str(data)
        f = tmp_path / f"{role}.yaml"
        f.write_text(__import__("yaml").safe_dump(run))
        procs[role] = subprocess.Popen(
            [sys.executable, "-m", "splitlink", "train", role, "--config", str(f)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    outs = {r: p.communicate(timeout=300)[0] for r, p in procs.items()}
    assert all(p.returncode == 0 for p in procs.values()), outs
    remote = [r["loss"] for r in demo_mod.read_metrics(tmp_path / "m.jsonl") if r["kind"] == "train"]
    assert remote == local


@pytest.mark.slow
def test_resume_with_deepspeed_backbone_continues_exactly(data: Path, tmp_path: Path) -> None:
    from required import require_deepspeed

    require_deepspeed()
    ds = pangu.TokenDataset(data, TINY.seq_length)
    base = dict(epochs=1, batch_size=4, lr=1e-3, log_every=100)
    full = [r["loss"] for r in pangu.train_local(TINY, ds, pangu.TrainConfig(**base, max_steps=12))]
    pangu.train_local(TINY, ds, pangu.TrainConfig(**base, max_steps=8, ckpt_every=4, ckpt_dir=str(tmp_path)))
    resumed = pangu.train_local(TINY, ds, pangu.TrainConfig(**base, max_steps=12, resume=True, ckpt_dir=str(tmp_path)))
    assert [r["step"] for r in resumed][0] == 9
    assert [r["loss"] for r in resumed] == full[8:]


def test_compression_and_embedding_dp_flags_run(data: Path) -> None:
    ds = pangu.TokenDataset(data, TINY.seq_length)
    hist = pangu.train_local(
        TINY,
        ds,
        pangu.TrainConfig(epochs=1, batch_size=4, max_steps=4, lr=1e-3, compress=True, embedding_dp=True, deepspeed=False),
        through_codecs=True,
    )
    assert all(np.isfinite([r["loss"] for r in hist]))


def test_scripts_have_help() -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    for script in ("run_pangu_train_leader.sh", "run_pangu_train_follower.sh", "run_pangu_train_local.sh"):
        out = subprocess.run(
            ["bash", str(ROOT / "examples/splitnn_pangu_alpha" / script), "--help"], env=env, capture_output=True, text=True
        )
        assert out.returncode == 0 and "usage:" in out.stdout, (script, out.stderr)


@pytest.mark.parametrize("name,expected", [("350M", 350e6), ("2.6B", 2.6e9)])
def test_seed_sized_configs_have_the_seed_sizes(name: str, expected: float) -> None:
    cfg = pangu.CONFIGS[name]
    with torch.device("meta"):  # shapes only, no memory
        parts = (pangu.EmbeddingNet(cfg), pangu.BackboneNet(cfg), pangu.HeadNet(cfg))
    n = sum(p.numel() for m in parts for p in m.parameters())
    assert 0.85 * expected < n < 1.25 * expected, n
