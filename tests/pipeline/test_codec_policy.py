"""The auto codec policy (issue 19 item 4), driven by fake link rates: deterministic choices, the error
of each choice measured, the choice installed in the communicator, the run file's validation."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import yaml

from splitlink.config import YamlConfigError
from splitlink.examples import criteo
from splitlink.examples import demo as demo_mod
from splitlink.examples import wide_deep as wd
from splitlink.runtime.codec_policy import LEVELS, AutoCodecPolicy, choose, encoded_bytes, relative_rms_error
from splitlink.runtime.run_config import load_run_config


def test_encoded_bytes_per_level() -> None:
    n = 1000
    assert encoded_bytes(0, n) == 4000 and encoded_bytes(1, n) == 2000
    assert n <= encoded_bytes(2, n) <= n + 64  # 8 bits a value plus the min/scale header
    assert n // 2 <= encoded_bytes(3, n) <= n // 2 + 64


def test_choose_moves_the_costliest_tensor_down_until_the_step_fits() -> None:
    numels = {"big": 1_000_000, "small": 1_000}
    assert choose(numels, 1e9, 1.0) == {"big": 0, "small": 0}  # everything fits in fp32
    # 2 MB allowed: big at fp16 (2 MB) plus small (4 kB) is still over, so big goes to 8 bits; small stays
    assert choose(numels, 1e6, 2.0) == {"big": 2, "small": 0}
    assert choose(numels, 1e6, 1e-6) == {"big": 3, "small": 3}  # cannot fit: everything at 4 bits
    # ties go to the first name, deterministically
    assert choose({"b": 1000, "a": 1000}, 1.0, 6000.0) == {"a": 1, "b": 0}
    with pytest.raises(ValueError, match="positive rate and budget"):
        choose(numels, 0.0, 1.0)


def test_relative_rms_error_orders_the_levels() -> None:
    x = torch.randn(4096, generator=torch.Generator().manual_seed(0))
    errs = [relative_rms_error(x, lv) for lv in range(len(LEVELS))]
    assert errs[0] == 0.0 and 0 < errs[1] < errs[2] < errs[3]
    # 8-bit min_max: uniform rounding error of step (max-min)/255, RMS step/sqrt(12)
    step = float(x.max() - x.min()) / 255
    assert errs[2] == pytest.approx(step / 12**0.5 / float(x.pow(2).mean().sqrt()), rel=0.1)


def test_policy_installs_its_choice_and_logs_the_error(caplog: pytest.LogCaptureFixture) -> None:
    policy = AutoCodecPolicy(0.010, name="test")  # 10 ms per step
    configs: dict = {}
    x = torch.randn(250_000, generator=torch.Generator().manual_seed(1))  # 1 MB in fp32
    policy.frame_sent({"h": x}, 1_000_000, 0.1)  # a fake link: 10 MB/s -> 100 kB per step allowed
    assert policy.end_step(configs) == {"h": 3} and configs["h"].bit_num == 4  # 125 kB at 4 bits: over, the last level
    with caplog.at_level(logging.INFO, logger="splitlink.runtime.codec_policy"):
        policy.frame_sent({"h": x}, 125_000, 0.0125)
    assert policy.errors["h"][0] == "4-bit" and 0.01 < policy.errors["h"][1] < 0.2
    assert "h sent as 4-bit, relative RMS error" in caplog.text
    policy.frame_sent({"h": x}, 125_000, 0.000125)  # the link got 100x faster: 1 GB/s -> fp32 fits
    for _ in range(16):
        policy.meter.record(1_000_000, 0.001)
    assert policy.end_step(configs) == {"h": 0} and "h" not in configs


def test_auto_codec_in_training_compresses_what_the_link_cannot_carry(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    demo_mod.prepare_data(tmp_path, 600, seed=3, vocab_size=2000)
    L = criteo.load_party(tmp_path / "leader.npz", "leader")
    F = criteo.load_party(tmp_path / "follower.npz", "follower")
    cfg = wd.WideDeepConfig(vocab_size=2000, emb_dim=8, deep_layers=(16, 8))
    # a budget no link meets: after the first (fp32) step every exchanged tensor goes to 4 bits
    train = wd.TrainConfig(
        epochs=1,
        batch_size=100,
        max_steps=3,
        log_every=1,
        progress=False,
        compress=False,
        eval_fraction=0.0,
        auto_codec_budget_ms=1e-6,
        micro_batches=2,
    )
    with caplog.at_level(logging.INFO, logger="splitlink.runtime.codec_policy"):
        hist = wd.train_local(L, F, cfg, train, through_codecs=True)
    assert len([r for r in hist if r["kind"] == "train"]) == 3
    for name in ("follower_deep_embedding", "follower_wide_embedding"):  # the follower's sends
        assert f"follower: auto codec: {name} -> 4-bit" in caplog.text
        assert f"follower: auto codec: {name} sent as 4-bit, relative RMS error" in caplog.text
    assert "leader: auto codec: follower_deep_embedding -> 4-bit" in caplog.text  # its gradients, the other way


def write_run(tmp_path: Path, train: dict) -> Path:
    f = tmp_path / "run.yaml"
    f.write_text(
        yaml.safe_dump(
            {
                "scenario": "criteo_wide_deep",
                "party": "leader",
                "address": "127.0.0.1:1",
                "peer_address": "127.0.0.1:2",
                "enable_ssl": False,
                "data": "x.npz",
                "train": train,
            }
        )
    )
    return f


def test_run_file_pipeline_and_auto_codec_sections(tmp_path: Path) -> None:
    cfg = load_run_config(
        write_run(tmp_path, {"batch_size": 8, "pipeline": {"micro_batches": 4}, "auto_codec": {"budget_ms": 30}})
    )
    opts = cfg.train.options(wd.TrainConfig)
    assert opts.micro_batches == 4 and opts.auto_codec_budget_ms == 30
    assert cfg.train.options(wd.TrainConfig).micro_batches == 4
    for train, msg in (
        ({"pipeline": {"micro_batches": 0}}, "micro_batches"),
        ({"batch_size": 4, "pipeline": {"micro_batches": 8}}, "at most one micro-batch per row"),
        ({"pipeline": {"micro_batche": 2}}, "micro_batche"),
        ({"auto_codec": {"budget_ms": -1}}, "budget_ms"),
    ):
        with pytest.raises(YamlConfigError, match=msg):
            load_run_config(write_run(tmp_path, train))
