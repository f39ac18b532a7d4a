"""The gradient defences do what they say: normalised gradients all have the norm, clipped ones stay under
it, Marvell's noise has the power of its budget and the covariance structure it solved for, and every
run is deterministic given a seed. Fast, no training."""

from __future__ import annotations

import math

import pytest
import torch

from splitlink.attacks import direction_attack, norm_attack
from splitlink.privacy import GradientNormDefence, MarvellNoise


def bce_like(rows: int = 2000, dim: int = 16, pos_rate: float = 0.25, seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Cut-layer gradients as BCE makes them: (p - y) times a shared Jacobian plus a little per-sample
    variation, in a wide (B, 1) and a deep (B, dim) tensor; the model predicts p ~ the base rate."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(rows, generator=g) < pos_rate).float()
    p = (pos_rate + 0.05 * torch.randn(rows, generator=g)).clamp(0.01, 0.99)
    jac = torch.randn(dim, generator=g)
    deep = (p - y).unsqueeze(1) * (jac + 0.3 * torch.randn(rows, dim, generator=g))
    wide = (p - y).unsqueeze(1)
    return [wide, deep], y


def flat(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(len(t), -1).double() for t in grads], dim=1)


def test_normalize_gives_every_nonzero_sample_the_norm_and_keeps_directions() -> None:
    grads, _ = bce_like()
    grads[1][:3] = 0.0
    grads[0][:3] = 0.0  # three all-zero samples stay zero
    for target in (None, 2.5):
        d = GradientNormDefence("normalize", norm=target)
        out = d(grads)
        assert [t.shape for t in out] == [t.shape for t in grads] and all(t.dtype == torch.float32 for t in out)
        n = flat(out).norm(dim=1)
        want = target if target is not None else float(flat(grads).norm(dim=1)[3:].mean())
        assert d.last_target == pytest.approx(want, rel=1e-12)
        assert torch.all(n[:3] == 0)
        # float32 outputs: each norm within a few float32 ulps of the target
        assert torch.allclose(n[3:], torch.full_like(n[3:], want), rtol=1e-6, atol=0)
        cos = torch.nn.functional.cosine_similarity(flat(out)[3:], flat(grads)[3:], dim=1)
        assert torch.all(cos > 1 - 1e-6)


def test_clip_bounds_the_norm_and_leaves_smaller_gradients_alone() -> None:
    grads, _ = bce_like()
    before = flat(grads).norm(dim=1)
    for d, bound in (
        (GradientNormDefence("clip", norm=2.0), 2.0),
        (GradientNormDefence("clip", quantile=0.5), float(torch.quantile(before, 0.5))),
    ):
        after = flat(d(grads)).norm(dim=1)
        assert d.last_target == pytest.approx(bound, rel=1e-12)
        assert torch.all(after <= bound * (1 + 1e-6))
        small = before <= bound
        assert small.any() and (~small).any()
        assert torch.allclose(after[small], before[small], rtol=1e-6)
        assert torch.allclose(after[~small], torch.full_like(after[~small], bound), rtol=1e-6)


def test_norm_defence_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="mode"):
        GradientNormDefence("scale")
    with pytest.raises(ValueError, match="exactly one"):
        GradientNormDefence("clip")
    with pytest.raises(ValueError, match="exactly one"):
        GradientNormDefence("clip", norm=1.0, quantile=0.5)
    with pytest.raises(ValueError, match="quantile"):
        GradientNormDefence("clip", quantile=1.5)
    with pytest.raises(ValueError, match="finite number > 0"):
        GradientNormDefence("normalize", norm=-1.0)
    with pytest.raises(ValueError, match="batch dimension"):
        GradientNormDefence("normalize")([torch.ones(3, 2), torch.ones(4, 2)])


def test_marvell_spends_its_power_budget_and_the_noise_has_that_power() -> None:
    grads, y = bce_like(rows=4000)
    for scale in (0.25, 1.0, 4.0):
        m = MarvellNoise(scale, seed=3)
        out = m(grads, y)
        sol = m.last
        assert sol is not None
        x = flat(grads)
        delta = x[y == 1].mean(0) - x[y == 0].mean(0)
        assert sol.budget == pytest.approx(scale * float(delta.dot(delta)), rel=1e-9)
        # the optimum spends the whole budget (more noise only brings the classes closer)
        assert sol.power == pytest.approx(sol.budget, rel=1e-4)
        assert min(sol.noise1 + sol.noise0) >= 0 and sum(sol.mult) == sol.dim
        noise = flat(out) - x
        pos = y == 1
        # per class, E||noise||^2 = sum_j mult_j noise_k[j]; the mean of n squared norms of a Gaussian
        # vector has relative sd <= sqrt(2 / n) (sum of chi-squares), so 6 sd is a < 1e-8 false failure
        for k, mask in ((1, pos), (0, ~pos)):
            want = sol.class_power(k)
            got = float(noise[mask].pow(2).sum(1).mean())
            assert abs(got - want) <= 6 * want * math.sqrt(2 / int(mask.sum())) + 1e-12, (scale, k, got, want)
        # the along-axis part of the noise has variance lam_k (same tolerance, one dimension)
        axis = delta / delta.norm()
        along = noise @ axis
        assert abs(float(along[pos].pow(2).mean()) - sol.lam1) <= 6 * sol.lam1 * math.sqrt(2 / int(pos.sum())) + 1e-12


def test_marvell_leakage_bound_and_kl_fall_as_the_budget_grows() -> None:
    grads, y = bce_like()
    sols = []
    for scale in (0.1, 1.0, 10.0):
        m = MarvellNoise(scale, seed=0)
        m(grads, y)
        assert m.last is not None
        sols.append(m.last)
    kls = [s.sum_kl for s in sols]
    bounds = [s.auc_bound for s in sols]
    assert kls[0] > kls[1] > kls[2] > 0
    assert bounds[0] >= bounds[1] >= bounds[2] >= 0.5
    assert bounds[2] < 0.75


def test_marvell_is_deterministic_given_a_seed() -> None:
    grads, y = bce_like()
    a = MarvellNoise(1.0, seed=11)(grads, y)
    b = MarvellNoise(1.0, seed=11)(grads, y)
    c = MarvellNoise(1.0, seed=12)(grads, y)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not all(torch.equal(p, q) for p, q in zip(a, c))
    # the generator state round-trips (a restored run draws what the uninterrupted one would)
    m = MarvellNoise(1.0, seed=5)
    m(grads, y)
    state = m.state_dict()
    nxt = m(grads, y)
    m2 = MarvellNoise(1.0, seed=99)
    m2.load_state_dict(state)
    assert all(torch.equal(p, q) for p, q in zip(nxt, m2(grads, y)))


def test_marvell_hides_the_norm_and_direction_of_bce_gradients() -> None:
    grads, y = bce_like()
    assert norm_attack(grads, y) > 0.95 and direction_attack(grads, y) > 0.95
    noisy = MarvellNoise(4.0, seed=1)(grads, y)
    assert max(norm_attack(noisy, y), 1 - norm_attack(noisy, y)) < 0.65
    assert max(direction_attack(noisy, y), 1 - direction_attack(noisy, y)) < 0.65


def test_marvell_single_class_batches_and_bad_input() -> None:
    grads, y = bce_like(rows=200)
    m = MarvellNoise(1.0, seed=0)
    ones = torch.ones_like(y)
    # first batch has one class: nothing to size the noise with yet, sent as is (with a warning)
    out = m(grads, torch.zeros_like(y))
    assert all(torch.equal(p, q) for p, q in zip(out, grads))
    m(grads, y)
    power = m.last.power if m.last else math.nan
    # later single-class batches: isotropic noise of the latest two-class batch's power
    big = [t.repeat(20, 1) for t in grads]
    noise = flat(m(big, ones.repeat(20))) - flat(big)
    got = float(noise.pow(2).sum(1).mean())
    assert abs(got - power) <= 6 * power * math.sqrt(2 / len(noise))
    with pytest.raises(ValueError, match="binary"):
        m(grads, y * 2)
    with pytest.raises(ValueError, match="one label per row"):
        m(grads, y[:-1])
    for bad in (0, -1.0, math.inf, True):
        with pytest.raises(ValueError, match="Marvell scale"):
            MarvellNoise(bad)  # type: ignore[arg-type]


def test_auc_bound_matches_theory() -> None:
    assert MarvellNoise.auc_bound_of(0.0) == 0.5
    assert MarvellNoise.auc_bound_of(1e9) == 1.0
    tv = math.sqrt(0.4 / 4)
    assert MarvellNoise.auc_bound_of(0.4) == pytest.approx(0.5 + tv - tv * tv / 2)


def test_marvell_solution_beats_the_obvious_allocations() -> None:
    """The solver's optimum is no worse than spending the budget isotropically or only along the axis."""
    m = MarvellNoise(1.0, seed=0)
    kw = {"delta_sq": 2.0, "var1": [0.2, 0.4, 0.1], "var0": [0.05, 0.02, 0.05], "mult": [1, 1, 15]}
    d, p = 17, 0.25
    sol = m.solve(p=p, **kw)
    assert sol.dim == d
    iso = [sol.budget / d] * 3
    axis_only = [sol.budget, 0.0, 0.0]  # lam1 = lam0 = P (p + (1 - p) = 1)
    assert sol.sum_kl <= MarvellNoise.sum_kl(iso, iso, **kw) + 1e-9
    assert sol.sum_kl <= MarvellNoise.sum_kl(axis_only, axis_only, **kw) + 1e-9
    assert sol.power <= sol.budget * (1 + 1e-9)
    assert p * sol.class_power(1) + (1 - p) * sol.class_power(0) == pytest.approx(sol.power, rel=1e-12)


def test_marvell_direction_attack_falls_as_predicted_by_the_linear_bound() -> None:
    """Over a set of small BCE-like batches, the direction attack's AUC falls clearly with the defence, and
    it tracks the model's linear-attack AUC Phi(delta / sqrt(a1 + a0)) (the cosine to a reference is a
    projection on it, so the attack is that linear test up to the per-sample norm)."""
    batches = [bce_like(rows=500, seed=s) for s in range(12)]
    clean = [max(direction_attack(g, y), 1 - direction_attack(g, y)) for g, y in batches]
    assert min(clean) > 0.95
    for scale, below in ((1.0, 0.8), (8.0, 0.63)):
        m = MarvellNoise(scale, seed=2)
        got, predicted = [], []
        for g, y in batches:
            noisy = m(g, y)
            assert m.last is not None
            got.append(max(direction_attack(noisy, y), 1 - direction_attack(noisy, y)))
            predicted.append(m.last.linear_auc)
        mean_got, mean_pred = sum(got) / len(got), sum(predicted) / len(predicted)
        assert mean_got < below, (scale, mean_got)
        # one batch's AUC over ~150 x 350 pairs has sd ~0.03; the mean of 12 ~0.01; the normalisation by the
        # noisy per-sample norm and the noisy reference only lower the attack's AUC (0.03 margin)
        assert mean_got <= mean_pred + 0.03, (scale, mean_got, mean_pred)
        assert mean_got >= mean_pred - 0.08, (scale, mean_got, mean_pred)
    # the prediction itself: scale 8 puts a1 + a0 ~ 16 delta^2 on the axis, Phi(1/4) ~ 0.6
    assert 0.58 < mean_pred < 0.62


def test_marvell_models_per_class_spread_in_principal_directions() -> None:
    """Classes that differ in their spread along a direction orthogonal to the mean difference: the solver
    tops up the tighter class there (the isotropic model would spread that power over every dimension), the
    noise has the solved variance along it, and a quadratic attack on that direction is hidden."""
    g = torch.Generator().manual_seed(4)
    rows, dim = 3000, 12
    y = (torch.rand(rows, generator=g) < 0.4).float()
    x = 0.05 * torch.randn(rows, dim, generator=g, dtype=torch.float64)
    x[:, 0] += torch.where(y == 1, -1.0, 0.5).double()  # the mean difference, along e0
    x[:, 3] += torch.randn(rows, generator=g, dtype=torch.float64) * torch.where(y == 1, 2.0, 0.2).double()
    grads = [x[:, :1], x[:, 1:]]
    spread = torch.cat([t.reshape(rows, -1) for t in grads], 1)[:, 3].abs()
    assert norm_attack([spread.unsqueeze(1)], y) > 0.9
    m = MarvellNoise(6.0, seed=0, directions=2)
    out = m(grads, y)
    sol = m.last
    assert sol is not None and sol.mult[:3] == (1, 1, 1) and sol.mult[3] == dim - 3
    # the first principal direction is e3 (up to sign): the negatives get ~ 4 - 0.04 there, positives nothing
    assert sol.noise0[1] == pytest.approx(4.0 - 0.04, rel=0.15) and sol.noise1[1] < 0.05 * sol.noise0[1]
    noise = flat(out) - flat(grads)
    neg = y == 0
    got = float(noise[neg, 3].pow(2).mean())
    # chi-square mean of n draws: relative sd sqrt(2 / n); 6 sd, plus the PC's tilt off e3 (|cos| > 0.99)
    assert abs(got - sol.noise0[1]) <= 6 * sol.noise0[1] * math.sqrt(2 / int(neg.sum())) + 0.03 * sol.noise0[1]
    noisy_spread = flat(out)[:, 3].abs()
    q = norm_attack([noisy_spread.unsqueeze(1)], y)
    assert max(q, 1 - q) < 0.6
    assert sol.power <= sol.budget * (1 + 1e-9)


@pytest.mark.parametrize("rows, dims", [(2, (1,)), (2, (1, 6)), (5, (1,)), (40, (3, 2))])
def test_marvell_small_batches_and_widths(rows: int, dims: tuple[int, ...]) -> None:
    """One sample per class, a 1-dimensional gradient, fewer samples than modelled directions: finite noise
    of the budget's power, the basis never larger than the gradient."""
    g = torch.Generator().manual_seed(rows)
    grads = [torch.randn(rows, d, generator=g) for d in dims]
    y = torch.tensor([1.0, 0.0] * (rows // 2) + [1.0] * (rows % 2))
    m = MarvellNoise(2.0, seed=1)
    out = m(grads, y)
    sol = m.last
    assert sol is not None and sol.dim == sum(dims) and sum(sol.mult) == sol.dim
    assert len(sol.mult) <= min(sol.dim, 1 + 4 + 1)
    assert all(torch.isfinite(t).all() for t in out)
    assert sol.power == pytest.approx(sol.budget, rel=1e-4)


def test_normalize_then_marvell_hides_both_attacks() -> None:
    """The combination the audit runs as norm+marvell: normalisation leaves the norm attack nothing (every
    norm equal), Marvell on the normalised gradients then lowers the direction attack, which normalisation
    alone leaves untouched."""
    grads, y = bce_like(rows=2000, seed=5)
    assert norm_attack(grads, y) > 0.95 and direction_attack(grads, y) > 0.95
    normed = GradientNormDefence("normalize")(grads)
    # float32 norms equal to ~1e-7 relative: the rank order among them is rounding, so the AUC is near 1/2
    # (a chance ranking of ~500 x 1500 pairs has sd ~0.015; 0.08 is > 5 sd)
    assert abs(norm_attack(normed, y) - 0.5) < 0.08
    assert direction_attack(normed, y) > 0.95
    noisy = MarvellNoise(4.0, seed=1)(normed, y)
    assert max(norm_attack(noisy, y), 1 - norm_attack(noisy, y)) < 0.6
    assert max(direction_attack(noisy, y), 1 - direction_attack(noisy, y)) < 0.65
