"""The Wide&Deep split example end to end: in-process, two processes over mTLS, resume, DP flags, CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from splitlink.config import YamlConfigError
from splitlink.examples import criteo
from splitlink.examples import demo as demo_mod
from splitlink.examples import wide_deep as wd
from splitlink.runtime.run_config import load_run_config
from splitlink.util import free_ports

TINY = wd.WideDeepConfig(vocab_size=5000, emb_dim=8, deep_layers=(32, 16))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("wd")
    demo_mod.make_dev_certs(d / "certs", ["leader", "follower"])
    demo_mod.prepare_data(d, 4000, seed=3, vocab_size=5000)
    return d


def parties(d: Path) -> tuple[criteo.PartyData, criteo.PartyData]:
    return criteo.load_party(d / "leader.npz", "leader"), criteo.load_party(d / "follower.npz", "follower")


def one_thread() -> int:
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the two-process run uses one thread per party: same reductions, same bits
    return n


def losses(history: list[dict]) -> list[float]:
    return [r["wide_loss"] for r in history if r["kind"] == "train"]


@pytest.mark.slow
def test_two_processes_over_mtls_reproduce_the_in_process_run_exactly(workdir: Path) -> None:
    n = one_thread()
    try:
        local = wd.train_local(
            *parties(workdir), TINY, wd.TrainConfig(epochs=2, batch_size=400, log_every=1, compress=False, progress=False, seed=0)
        )
    finally:
        torch.set_num_threads(n)
    runs = demo_mod.write_run_files(
        workdir,
        epochs=2,
        batch_size=400,
        vocab_size=5000,
        compress=False,
        log_every=1,
        progress=False,
        model=wd.config_dict(TINY),
    )
    (workdir / "metrics.jsonl").unlink(missing_ok=True)
    demo_mod.launch(runs, quiet_leader=True, timeout=600)
    remote = demo_mod.read_metrics(workdir / "metrics.jsonl")
    assert len(losses(local)) == 18 == len(losses(remote))
    assert losses(remote) == losses(local)  # bit for bit
    assert [r["auc"] for r in remote if r["kind"] == "eval"] == [r["auc"] for r in local if r["kind"] == "eval"]


@pytest.mark.slow
def test_in_process_training_learns_from_the_followers_columns(tmp_path: Path) -> None:
    info = demo_mod.prepare_data(tmp_path, 40_000, seed=1, vocab_size=50_000)
    L, F = parties(tmp_path)
    cfg = wd.WideDeepConfig(vocab_size=50_000, emb_dim=16, deep_layers=(64, 32))
    hist = wd.train_local(L, F, cfg, wd.TrainConfig(epochs=3, batch_size=500, log_every=20, progress=False, seed=0))
    aucs = [r["auc"] for r in hist if r["kind"] == "eval"]
    assert losses(hist)[-1] < losses(hist)[0]
    # Above what the leader's own columns allow: the model uses the follower's features.
    assert aucs[-1] > info["leader_only_auc"] + 0.01, (aucs, info)


def test_resume_continues_exactly(workdir: Path, tmp_path: Path) -> None:
    L, F = parties(workdir)
    base = dict(epochs=2, batch_size=400, log_every=1, progress=False, seed=0)
    full = wd.train_local(L, F, TINY, wd.TrainConfig(**base, ckpt_dir=str(tmp_path / "a")))
    wd.train_local(L, F, TINY, wd.TrainConfig(**base, max_steps=12, ckpt_every=5, ckpt_dir=str(tmp_path / "b")))
    resumed = wd.train_local(L, F, TINY, wd.TrainConfig(**base, resume=True, ckpt_dir=str(tmp_path / "b")))
    # Checkpoints at steps 5 and 10: the resumed run starts after step 10 and ends where the full run ends.
    steps = [r["step"] for r in resumed if r["kind"] == "train"]
    assert steps[0] == 11
    assert losses(resumed) == losses(full)[10:]


def test_dp_flags_and_compression_run(workdir: Path) -> None:
    L, F = parties(workdir)
    hist = wd.train_local(
        L,
        F,
        TINY,
        wd.TrainConfig(epochs=1, batch_size=400, log_every=3, progress=False, label_dp=True, embedding_dp=True),
        through_codecs=True,
    )
    assert all(torch.isfinite(torch.tensor(losses(hist))))


def test_misaligned_rows_are_refused(workdir: Path) -> None:
    L, F = parties(workdir)
    F.sample_ids = F.sample_ids[::-1].copy()
    with pytest.raises(RuntimeError, match="align the rows with PSI"):
        wd.train_local(L, F, TINY, wd.TrainConfig(epochs=1, batch_size=400, progress=False))


def test_run_file_errors_are_reported_at_once(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(
        "scenario: criteo\nparty: boss\naddress: 1\npeer_address: x\ndata: d\ntrain: {epochs: 0, learning_rat: 1}\n"
    )
    with pytest.raises(YamlConfigError) as info:
        load_run_config(tmp_path / "r.yaml")
    text = str(info.value)
    for fragment in ("line 1: scenario", "line 2: party", "line 6: train.epochs", "line 6: train.learning_rat: unknown key"):
        assert fragment in text, text


def test_cli_help_for_every_subcommand() -> None:
    for sub in ("certs", "demo", "train"):
        out = subprocess.run([sys.executable, "-m", "splitlink", sub, "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and "usage: splitlink" in out.stdout, out.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "splitlink", "train", "leader", "--config", "/nonexistent.yaml"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "does not exist" in bad.stderr


@pytest.mark.slow
def test_seed_style_launch_scripts_over_mtls(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2] / "examples" / "splitnn_criteo"
    env = {**__import__("os").environ, "PYTHON": sys.executable}
    subprocess.run(
        [
            sys.executable,
            str(root / "preprocess.py"),
            "--synthetic",
            "3000",
            "--out",
            str(tmp_path / "data"),
            "--vocab-size",
            "5000",
        ],
        check=True,
        capture_output=True,
    )
    demo_mod.make_dev_certs(tmp_path / "certs", ["leader", "follower"])
    p1, p2 = free_ports(2)
    common = [
        "--epochs",
        "1",
        "--batch-size",
        "500",
        "--vocab-size",
        "5000",
        "--emb-dim",
        "8",
        "--deep-layers",
        "16",
        "--log-every",
        "1",
        "--threads",
        "1",
        "--ckpt-dir",
        str(tmp_path / "ck"),
    ]
    procs = {}
    for role, me, peer in (("follower", p2, p1), ("leader", p1, p2)):
        c = tmp_path / "certs"
        args = [
            "bash",
            str(root / f"run_vfl_train_{role}.sh"),
            f"127.0.0.1:{me}",
            f"127.0.0.1:{peer}",
            str(tmp_path / "data"),
            "True",
            "splitlink",
            "splitlink",
            str(c / f"{role}.server.p12"),
            str(c / f"{role}.client.p12"),
            str(c / "ca.crt"),
            *common,
        ]
        if role == "leader":
            args += ["--metrics", str(tmp_path / "m.jsonl")]
        procs[role] = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outs = {r: p.communicate(timeout=300)[0] for r, p in procs.items()}
    assert all(p.returncode == 0 for p in procs.values()), outs
    rows = demo_mod.read_metrics(tmp_path / "m.jsonl")
    assert [r["step"] for r in rows if r["kind"] == "train"] == list(range(1, 7))  # 2700 train rows / 500
    assert "epoch 0 step 6/6 wide_loss:" in outs["leader"]
    assert "connected with certificate names" in outs["leader"]
    help_ = subprocess.run(["bash", str(root / "run_vfl_train_leader.sh"), "--help"], env=env, capture_output=True, text=True)
    assert help_.returncode == 0 and "local_address" in help_.stdout
