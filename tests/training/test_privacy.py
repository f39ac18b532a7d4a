"""Label DP and embedding DP: rates within binomial bounds, one coin per sample, noise scale, from YAML."""

from __future__ import annotations

import math

import pytest
import torch

from splitlink import FLModel, FLYamlData
from splitlink.privacy import GaussianEmbeddingDP, LabelDP, SignEmbeddingDP


def within_binomial(k: int, n: int, p: float, z: float = 5.0) -> bool:
    """k successes out of n at rate p, within z standard deviations (false failure rate < 1e-6)."""
    return abs(k - n * p) <= z * math.sqrt(n * p * (1 - p)) + 1


@pytest.mark.parametrize("eps", [0.0, 0.5, 1.0, 3.0])
def test_binary_flip_rate(eps: float) -> None:
    n = 200_000
    dp = LabelDP(eps, seed=1)
    labels = (torch.arange(n) % 2).float()
    noisy = dp(labels, torch.arange(n))
    flips = int((noisy != labels).sum())
    assert within_binomial(flips, n, 1 / (1 + math.exp(eps))), (flips, n)
    assert noisy.dtype == labels.dtype and set(noisy.unique().tolist()) <= {0.0, 1.0}


def test_each_sample_randomised_once_across_epochs() -> None:
    n = 10_000
    ids = torch.arange(n) * 7 + 3
    labels = torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(0))
    dp = LabelDP(1.0, seed=42)
    first = dp(labels, ids)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    # Another epoch, shuffled and in other batch sizes: every sample gets the same noisy label.
    again = torch.cat([dp(labels[perm[i : i + 333]], ids[perm[i : i + 333]]) for i in range(0, n, 333)])
    assert torch.equal(again, first[perm])
    # A restarted process with the same seed agrees; another seed does not.
    assert torch.equal(LabelDP(1.0, seed=42)(labels, ids), first)
    assert not torch.equal(LabelDP(1.0, seed=43)(labels, ids), first)


def test_k_ary_randomized_response_one_hot_and_indices() -> None:
    n, k, eps = 120_000, 5, 1.0
    idx = torch.arange(n) % k
    one_hot = torch.nn.functional.one_hot(idx, k).float()
    noisy = LabelDP(eps, seed=3)(one_hot, torch.arange(n))
    assert torch.equal(noisy.sum(1), torch.ones(n))
    new = noisy.argmax(1)
    changed = new != idx
    assert within_binomial(int(changed.sum()), n, (k - 1) / (math.exp(eps) + k - 1))
    # The other classes are equally likely.
    shift = ((new - idx) % k)[changed]
    counts = torch.bincount(shift, minlength=k)[1:]
    m = int(changed.sum())
    for c in counts.tolist():
        assert within_binomial(c, m, 1 / (k - 1))
    by_index = LabelDP(eps, seed=3, num_classes=k)(idx, torch.arange(n))
    assert torch.equal(by_index, new)  # same coins whichever label encoding


def test_label_dp_refuses_bad_labels() -> None:
    dp = LabelDP(1.0, seed=0)
    with pytest.raises(ValueError, match="binary labels must be 0 or 1"):
        dp(torch.tensor([0, 2]), torch.arange(2))
    with pytest.raises(ValueError, match="one id per row"):
        dp(torch.tensor([0, 1, 1]), torch.arange(2))
    with pytest.raises(ValueError, match="integer sample ids"):
        dp(torch.tensor([0, 1]), torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match="one-hot"):
        dp(torch.tensor([[1.0, 1.0], [0.0, 1.0]]), torch.arange(2))


@pytest.mark.parametrize("eps", [0.0, 1.0, 2.0])
def test_sign_embedding_dp_rate_and_straight_through(eps: float) -> None:
    x = torch.randn(400, 500, generator=torch.Generator().manual_seed(0), requires_grad=True)
    dp = SignEmbeddingDP(eps, seed=9)
    y = dp(x)
    assert set(y.detach().unique().tolist()) <= {0.0, 1.0}
    flips = int((y.detach() != (x.detach() > 0).float()).sum())
    assert within_binomial(flips, x.numel(), 1 / (1 + math.exp(eps)))
    y.backward(torch.full_like(y, 3.0))
    assert torch.equal(x.grad, torch.full_like(x, 3.0))


def test_gaussian_embedding_dp_clips_and_adds_noise_of_the_right_scale() -> None:
    dp = GaussianEmbeddingDP(clip_norm=2.0, delta=1e-5, noise_multiplier=0.5, num_samples=1000, seed=1)
    x = torch.randn(1000, 64, generator=torch.Generator().manual_seed(2)) * 10
    big = dp(x)
    clipped = x * (2.0 / x.norm(dim=1, keepdim=True))
    noise = big - clipped
    assert abs(float(noise.std()) - 1.0) < 0.02  # sigma * C = 0.5 * 2
    assert abs(float(noise.mean())) < 0.01
    small = torch.full((1000, 64), 1e-3)
    assert abs(float((dp(small) - small).std()) - 1.0) < 0.02  # small rows are not scaled up
    eps2, delta = dp.spent()
    assert delta == 1e-5 and eps2 > 0 and dp.releases_accounted == 2


def test_gaussian_noise_from_eps_meets_the_target() -> None:
    dp = GaussianEmbeddingDP(clip_norm=1.0, delta=1e-5, eps=4.0, releases=3, num_samples=10, seed=0)
    for _ in range(3):
        dp(torch.randn(10, 4))
    eps, _ = dp.spent()
    assert dp.releases_accounted == 3
    assert 3.8 <= eps <= 4.0 + 1e-6


LEADER = """
role: leader
model:
  train_net:
    name: top
    inputs: [{name: h, source: remote}, {name: label, source: local}]
    outputs: [{name: loss}]
  eval_net:
    name: top_eval
    inputs: [{name: h, source: remote}]
    outputs: [{name: logit}]
    gt: label
opts:
  - type: SGD
    grads: [{inputs: [{name: h}], output: {name: loss}, sens: 1.0}]
    hyper_parameters: {learning_rate: 0.0}
grad_scalers: [{inputs: [{name: h}], output: {name: loss}, sens: 1.0}]
hyper_parameters: {epochs: 1, batch_size: 4}
privacy: {label_dp: {eps: 0.0, seed: 5}}
"""


class Recorder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[torch.Tensor] = []

    def forward(self, h: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        self.seen.append(label.clone())
        return ((h.sum(1) + self.w - label) ** 2).mean()


def test_label_dp_applied_from_yaml_and_needs_ids() -> None:
    net = Recorder()
    m = FLModel(FLYamlData("<leader>", text=LEADER), net)
    n = 4000
    labels = (torch.arange(n) % 2).float()
    batch = {"label": labels, "sample_id": torch.arange(n)}
    m.forward_one_step(batch, {"h": torch.zeros(n, 2)})
    m.backward_one_step()
    flips = int((net.seen[0] != labels).sum())
    assert within_binomial(flips, n, 0.5)
    m.forward_one_step(batch, {"h": torch.zeros(n, 2)})
    assert torch.equal(net.seen[1], net.seen[0])  # once per sample id
    with pytest.raises(KeyError, match="sample_id"):
        m.forward_one_step({"label": labels}, {"h": torch.zeros(n, 2)})


def test_embedding_dp_applied_from_yaml_to_remote_outputs_only() -> None:
    text = """
role: follower
model:
  train_net:
    name: bottom
    inputs: [{name: x}]
    outputs: [{name: emb, destination: remote}, {name: reg, destination: local}]
opts:
  - type: SGD
    grads: [{inputs: [{name: x}], output: {name: emb}, sens: loss}, {inputs: [{name: x}], output: {name: reg}, sens: 1.0}]
    hyper_parameters: {learning_rate: 0.1}
hyper_parameters: {epochs: 1, batch_size: 4}
privacy: {embedding_dp: {eps: 1.0, seed: 3}}
"""

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(8, 16)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            e = self.lin(x)
            return e, (e**2).mean()

    m = FLModel(FLYamlData("<bottom>", text=text), Net())
    out = m.forward_one_step({"x": torch.randn(64, 8)})
    assert set(out["emb"].detach().unique().tolist()) <= {0.0, 1.0}
    assert out["reg"].item() > 0 and out["reg"].item() not in (0.0, 1.0)
    m.backward_one_step(sens={"loss": {"emb": torch.ones(64, 16)}})
