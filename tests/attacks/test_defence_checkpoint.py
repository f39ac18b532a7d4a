"""The gradient defences' random state lives in FLModel checkpoints: a run resumed mid-way with Marvell noise
on sends bitwise the gradients an uninterrupted run sends (the noise sequence continues, it does not restart
from the seed)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from splitlink.config import FLYamlData
from splitlink.examples import YAML_DIR
from splitlink.model import FLModel


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


def batches(n: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        b = {
            "leader_wide_embedding": torch.randn(32, 1, generator=g),
            "leader_deep_embedding": torch.randn(32, 4, generator=g),
            "follower_wide_embedding": torch.randn(32, 1, generator=g),
            "follower_deep_embedding": torch.randn(32, 4, generator=g),
            "label": (torch.rand(32, 1, generator=g) < 0.3).float(),
        }
        if i == 2:
            b["label"] = torch.zeros(32, 1)  # one class: noise sized by the previous batch's solution (saved state)
        out.append(b)
    return out


def model(privacy: dict) -> FLModel:
    raw = dict(FLYamlData(YAML_DIR / "criteo" / "leader_top.yaml").raw)
    torch.manual_seed(0)
    return FLModel(FLYamlData({**raw, "privacy": privacy}), Top())


def sent(m: FLModel, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    scale = m.backward_one_step(batch)["loss"]
    return [scale["follower_wide_embedding"].clone(), scale["follower_deep_embedding"].clone()]


def test_resumed_run_continues_the_marvell_noise_bitwise(tmp_path: Path) -> None:
    privacy = {"marvell": {"scale": 2.0, "seed": 3}, "grad_norm": {"mode": "clip", "quantile": 0.5}}
    data = batches(5)
    whole = model(privacy)
    ref = [sent(whole, b) for b in data]

    first = model(privacy)
    for b in data[:2]:
        sent(first, b)
    ckpt = first.save_ckpt(tmp_path)
    resumed = model(privacy)
    resumed.load_ckpt(ckpt)
    assert resumed.step == first.step
    got = [sent(resumed, b) for b in data[2:]]
    for want, have in zip(ref[2:], got):
        assert all(torch.equal(w, h) for w, h in zip(want, have))

    # without the saved defence state the noise would restart from the seed: the check above can fail
    fresh = model(privacy)
    fresh.load_ckpt(ckpt)
    assert fresh.marvell is not None
    fresh.marvell.generator.manual_seed(3)
    fresh.marvell.last = None
    assert not all(torch.equal(w, h) for w, h in zip(ref[3], [sent(fresh, b) for b in data[2:4]][1]))
