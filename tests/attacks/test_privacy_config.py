"""privacy.grad_norm and privacy.marvell in the YAML: strict validation, errors naming file, line and key,
and FLModel applying them to the gradients it sends for remote inputs only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from splitlink.config import FLYamlData
from splitlink.errors import YamlConfigError
from splitlink.examples import YAML_DIR
from splitlink.model import FLModel
from splitlink.privacy import GradientNormDefence, MarvellNoise

LEADER_TOP = (YAML_DIR / "criteo" / "leader_top.yaml").read_text()
FOLLOWER = (YAML_DIR / "criteo" / "follower_bottom.yaml").read_text()


def bad(tmp_path: Path, text: str) -> str:
    p = tmp_path / "party.yaml"
    p.write_text(text)
    with pytest.raises(YamlConfigError) as e:
        FLYamlData(p)
    msg = str(e.value)
    assert str(p) in msg
    return msg


def line_of(text: str, needle: str) -> int:
    return text.splitlines().index(needle) + 1


@pytest.mark.parametrize(
    "section, key, message",
    [
        ("  marvell:\n    scale: -1\n", "privacy.marvell.scale", "> 0"),
        ("  marvell:\n    scale: 1\n    sead: 3\n", "privacy.marvell.sead", "unknown key"),
        ("  grad_norm:\n    mode: clip\n", "privacy.grad_norm", "exactly one of norm"),
        ("  grad_norm:\n    mode: normalize\n    quantile: 0.5\n", "privacy.grad_norm.quantile", "mode: clip only"),
        ("  grad_norm:\n    mode: scale\n", "privacy.grad_norm.mode", "normalize"),
        ("  grad_norm:\n    mode: clip\n    quantile: 2\n", "privacy.grad_norm.quantile", "<= 1"),
    ],
)
def test_leader_yaml_errors_name_file_line_and_key(tmp_path: Path, section: str, key: str, message: str) -> None:
    text = LEADER_TOP + "privacy:\n" + section
    msg = bad(tmp_path, text)
    assert f"{key}:" in msg and message in msg, msg
    leaf = key.split(".")[-1]
    want_line = max(i + 1 for i, ln in enumerate(text.splitlines()) if ln.strip().startswith(leaf + ":"))
    assert f"line {want_line}: {key}" in msg, msg


def test_marvell_is_the_label_holders(tmp_path: Path) -> None:
    text = FOLLOWER + "privacy:\n  marvell:\n    scale: 1\n"
    msg = bad(tmp_path, text)
    assert f"line {line_of(text, '  marvell:')}: privacy.marvell: Marvell noise protects the labels the leader holds" in msg


def test_gradient_defences_need_a_remote_input_with_a_grad_scaler(tmp_path: Path) -> None:
    text = FOLLOWER + "privacy:\n  grad_norm:\n    mode: normalize\n"
    msg = bad(tmp_path, text)
    assert "privacy.grad_norm: gradient defences act on the gradients sent back for inputs with source: remote" in msg


def test_valid_sections_parse() -> None:
    y = FLYamlData(
        dict(
            FLYamlData(YAML_DIR / "criteo" / "leader_top.yaml").raw,
            privacy={"marvell": {"scale": 2, "seed": 1}, "grad_norm": {"mode": "clip", "norm": 0.5}},
        )
    )
    assert y.privacy is not None and y.privacy.marvell is not None and y.privacy.marvell.scale == 2.0
    assert y.privacy.grad_norm is not None and y.privacy.grad_norm.norm == 0.5


class Top(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.deep = nn.Linear(4, 4)
        self.dense = nn.Linear(4, 1)

    def forward(
        self, lw: torch.Tensor, ld: torch.Tensor, fw: torch.Tensor, fd: torch.Tensor, label: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        z = lw + fw + self.dense(torch.relu(self.deep(ld + fd)))
        return z, nn.functional.binary_cross_entropy_with_logits(z, label)


def test_flmodel_defends_only_the_gradients_it_sends() -> None:
    raw = dict(FLYamlData(YAML_DIR / "criteo" / "leader_top.yaml").raw)
    g = torch.Generator().manual_seed(0)
    batch = {
        "leader_wide_embedding": torch.randn(64, 1, generator=g),
        "leader_deep_embedding": torch.randn(64, 4, generator=g),
        "follower_wide_embedding": torch.randn(64, 1, generator=g),
        "follower_deep_embedding": torch.randn(64, 4, generator=g),
        "label": (torch.rand(64, 1, generator=g) < 0.3).float(),
    }

    def grads(privacy: dict | None) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        m = FLModel(FLYamlData({**raw, "privacy": privacy} if privacy else raw), Top())
        if privacy:
            assert isinstance(m.grad_norm, GradientNormDefence) == ("grad_norm" in privacy)
            assert isinstance(m.marvell, MarvellNoise) == ("marvell" in privacy)
        return dict(m.backward_one_step(batch)["loss"])

    clean = grads(None)
    normed = grads({"grad_norm": {"mode": "normalize", "norm": 3.0}})
    both = grads({"grad_norm": {"mode": "normalize", "norm": 3.0}, "marvell": {"scale": 1.0, "seed": 4}})
    for out in (normed, both):
        for k in ("leader_wide_embedding", "leader_deep_embedding"):  # the leader's own: exact
            assert torch.equal(out[k], clean[k])
    sent = torch.cat([normed["follower_wide_embedding"], normed["follower_deep_embedding"]], dim=1)
    assert torch.allclose(sent.norm(dim=1), torch.full((64,), 3.0), rtol=1e-5)
    noisy = torch.cat([both["follower_wide_embedding"], both["follower_deep_embedding"]], dim=1)
    assert not torch.allclose(noisy, sent)
    assert grads({"marvell": {"scale": 1.0, "seed": 4}})["follower_deep_embedding"].equal(
        grads({"marvell": {"scale": 1.0, "seed": 4}})["follower_deep_embedding"]
    )
