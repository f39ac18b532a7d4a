"""Differential privacy for split learning: label DP and embedding DP, applied from the YAML ``privacy``.

**Label DP** (leader): randomized response on the training labels. Binary labels flip with probability
``1/(1+e^eps)``; one-hot or class-index labels keep their class with probability
``e^eps/(e^eps+k-1)`` and otherwise take one of the other ``k-1`` classes uniformly (k-ary randomized
response). Each label is randomised ONCE per sample id: the coin for a sample is a pseudorandom function
of (secret key, sample id), AES-128 keyed from the seed, so every epoch (and every restart) sees the same
noisy label and the guarantee stays ``eps`` however long training runs. (MindSpore draws fresh coins
each epoch, so an observer averaging over epochs learns the true label; its privacy loss grows with the
number of epochs.) The batch carries the ids under ``privacy.label_dp.id_key`` (default ``sample_id``).

**Embedding DP** (any party, on outputs with ``destination: remote``):

* ``mechanism: sign_rr`` (MindSpore's): each value becomes 1 if > 0 else 0, then randomized response
  with ``eps`` flips it with probability ``1/(1+e^eps)``. Gradients pass straight through (the peer's
  gradient with respect to the released tensor is applied to the pre-release output).
* ``mechanism: gaussian``: each sample's embedding (all dims but the batch dim) is clipped to L2 norm
  ``clip_norm`` and gets N(0, (noise_multiplier * clip_norm)^2) noise. ``noise_multiplier`` is given or
  derived from (eps, delta) for the planned number of releases per sample (``releases``, default the
  YAML's epochs) by Opacus's RDP accountant, which also reports the (eps, delta) spent so far. The
  party receiving the embeddings knows which sample each row is (rows were aligned by PSI), so no
  amplification by subsampling applies: each epoch is one full Gaussian release per sample, accounted
  with sample rate 1.

**Gradient defences** (the label holder, on the gradients it sends back for a peer's embeddings, i.e. for
train_net inputs with ``source: remote``): ``grad_norm`` (per-sample clipping or normalisation, see
:class:`GradientNormDefence`) and ``marvell`` (optimised per-class Gaussian noise under a power budget, see
:class:`MarvellNoise`), applied in that order. What each leaves to an attacker is measured by
:mod:`splitlink.attacks` (``splitlink audit``).

Randomness: every mechanism takes ``seed``; without one it draws a fresh secret seed from the OS (a
seed the peer knows would let it subtract the noise, so production runs should not put one in a file
the peer can read). Nothing uses global random state.
"""

from __future__ import annotations

import logging
import math
import secrets
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["GaussianEmbeddingDP", "GradientNormDefence", "LabelDP", "MarvellNoise", "MarvellSolution", "SignEmbeddingDP"]

log = logging.getLogger("splitlink.privacy")


def _seed_key(seed: int | None, info: bytes) -> bytes:
    material = secrets.token_bytes(32) if seed is None else int(seed).to_bytes(32, "little")
    return HKDF(algorithm=hashes.SHA256(), length=16, salt=None, info=info).derive(material)


class LabelDP:
    """Randomized response on labels, one fixed coin per sample id (see the module docstring)."""

    def __init__(self, eps: float, *, seed: int | None = None, num_classes: int | None = None) -> None:
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0 or math.isinf(eps):
            raise ValueError(f"label DP eps must be a finite number >= 0, got {eps!r}")
        self.eps = float(eps)
        self.num_classes = num_classes
        self._cipher = Cipher(algorithms.AES(_seed_key(seed, b"splitlink label-dp v1")), modes.ECB())

    def flip_probability(self, k: int = 2) -> float:
        """Probability that a label is changed, for k classes."""
        return (k - 1) / (math.exp(self.eps) + k - 1)

    def _uniforms(self, ids: Any) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(ids, torch.Tensor):
            ids = ids.detach().cpu().numpy()
        arr = np.asarray(ids)
        if arr.dtype.kind not in "iu":
            raise ValueError(f"label DP needs integer sample ids (one per label), got dtype {arr.dtype}")
        arr = arr.reshape(-1).astype("<i8")
        blocks = np.zeros((arr.size, 2), dtype="<u8")
        blocks[:, 0] = arr.view("<u8")
        enc = self._cipher.encryptor()
        out = np.frombuffer(enc.update(blocks.tobytes()) + enc.finalize(), dtype="<u8").reshape(-1, 2)
        scale = 1.0 / float(1 << 53)
        return (out[:, 0] >> np.uint64(11)).astype(np.float64) * scale, (out[:, 1] >> np.uint64(11)).astype(np.float64) * scale

    def __call__(self, label: torch.Tensor, sample_ids: Any) -> torch.Tensor:
        """The randomised labels (same shape and dtype) for a batch; ``sample_ids`` has one id per row."""
        if not isinstance(label, torch.Tensor):
            label = torch.as_tensor(np.asarray(label))
        rows = label.shape[0] if label.dim() else 1
        u_flip, u_class = self._uniforms(sample_ids)
        if u_flip.size != rows:
            raise ValueError(f"label DP got {u_flip.size} sample ids for {rows} labels; give one id per row")
        dev = label.device
        one_hot = label.dim() == 2 and label.shape[1] > 1
        if one_hot:
            k = int(label.shape[1])
            ok = ((label == 0) | (label == 1)).all() and (label.sum(dim=1) == 1).all()
            if not bool(ok):
                raise ValueError("label DP: 2-D labels must be one-hot (one 1 per row, zeros elsewhere)")
            idx = label.argmax(dim=1).cpu().numpy()
        else:
            flat = label.reshape(rows)
            k = self.num_classes or 2
            vals = flat.cpu().numpy()
            if k == 2:
                if not np.isin(vals, (0, 1)).all():
                    raise ValueError(
                        "label DP: binary labels must be 0 or 1 (for class indices set privacy.label_dp.num_classes)"
                    )
            elif label.dtype.is_floating_point or label.dtype == torch.bool or vals.min() < 0 or vals.max() >= k:
                raise ValueError(f"label DP: class-index labels must be integers in [0, {k}) (num_classes={k})")
            idx = vals.astype(np.int64)
        change = u_flip < self.flip_probability(k)
        shift = 1 + np.minimum((u_class * (k - 1)).astype(np.int64), k - 2)
        new_idx = np.where(change, (idx + shift) % k, idx)
        if one_hot:
            out = torch.zeros_like(label)
            out[torch.arange(rows, device=dev), torch.from_numpy(new_idx).to(dev)] = 1
            return out
        return torch.from_numpy(new_idx).to(device=dev, dtype=label.dtype).reshape(label.shape)


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, released: torch.Tensor) -> torch.Tensor:
        return released

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class SignEmbeddingDP:
    """MindSpore's embedding DP: 1-bit sign quantization, then randomized response with ``eps``."""

    def __init__(self, eps: float, *, seed: int | None = None) -> None:
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0 or math.isinf(eps):
            raise ValueError(f"embedding DP eps must be a finite number >= 0, got {eps!r}")
        self.eps = float(eps)
        self.flip_probability = 1.0 / (1.0 + math.exp(self.eps))
        self.generator = torch.Generator().manual_seed(secrets.randbits(63) if seed is None else seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        bits = x.detach() > 0
        flips = torch.rand(x.shape, generator=self.generator) < self.flip_probability
        released = (bits ^ flips.to(bits.device)).to(x.dtype)
        return _StraightThrough.apply(x, released) if x.requires_grad else released  # type: ignore[no-untyped-call]

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


class GaussianEmbeddingDP:
    """Per-sample L2 clipping plus Gaussian noise, with Opacus's RDP accountant (see the module docstring)."""

    def __init__(
        self,
        *,
        clip_norm: float,
        delta: float,
        noise_multiplier: float | None = None,
        eps: float | None = None,
        releases: int = 1,
        num_samples: int | None = None,
        seed: int | None = None,
    ) -> None:
        if not clip_norm > 0:
            raise ValueError(f"clip_norm must be > 0, got {clip_norm}")
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        if (noise_multiplier is None) == (eps is None):
            raise ValueError("give exactly one of noise_multiplier or eps (with delta) for the Gaussian mechanism")
        from opacus.accountants import RDPAccountant
        from opacus.accountants.utils import get_noise_multiplier

        self.clip_norm = float(clip_norm)
        self.delta = float(delta)
        self.releases_planned = int(releases)
        self.num_samples = num_samples
        if noise_multiplier is None:
            assert eps is not None
            noise_multiplier = float(
                get_noise_multiplier(
                    target_epsilon=eps, target_delta=delta, sample_rate=1.0, steps=self.releases_planned, accountant="rdp"
                )
            )
            log.info(
                "embedding DP: noise multiplier %.4f for (eps=%g, delta=%g) over %d releases per sample",
                noise_multiplier,
                eps,
                delta,
                self.releases_planned,
            )
        self.noise_multiplier = float(noise_multiplier)
        self.accountant = RDPAccountant()
        self.samples_seen = 0
        self.steps = 0
        self.releases_accounted = 0
        self.generator = torch.Generator().manual_seed(secrets.randbits(63) if seed is None else seed)
        if num_samples is None:
            log.warning(
                "embedding DP: dataset size unknown (privacy.embedding_dp.num_samples); the accountant "
                "counts every step as a release of every sample, a very loose upper bound"
            )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        flat = x.reshape(rows, -1)
        norms = flat.detach().norm(dim=1, keepdim=True)
        factor = self.clip_norm / torch.clamp(norms, min=self.clip_norm)
        clipped = (flat * factor).reshape(x.shape)
        noise = torch.randn(x.shape, generator=self.generator, dtype=torch.float32)
        noise = noise.to(device=x.device, dtype=x.dtype) * (self.noise_multiplier * self.clip_norm)
        self._account(rows)
        return clipped + noise

    def _account(self, rows: int) -> None:
        self.steps += 1
        self.samples_seen += rows
        releases = math.ceil(self.samples_seen / self.num_samples) if self.num_samples else self.steps
        while self.releases_accounted < releases:
            self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=1.0)
            self.releases_accounted += 1
            eps, delta = self.spent()
            log.info(
                "embedding DP: %d release(s) per sample so far, privacy spent eps=%.4f at delta=%g",
                self.releases_accounted,
                eps,
                delta,
            )

    def spent(self) -> tuple[float, float]:
        """The (eps, delta) spent so far."""
        if self.releases_accounted == 0:
            return 0.0, self.delta
        return float(self.accountant.get_epsilon(self.delta)), self.delta

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.get_state(),
            "samples_seen": self.samples_seen,
            "steps": self.steps,
            "releases_accounted": self.releases_accounted,
            "history": list(self.accountant.history),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.samples_seen = int(state["samples_seen"])
        self.steps = int(state["steps"])
        self.releases_accounted = int(state["releases_accounted"])
        self.accountant.history = [tuple(h) for h in state["history"]]


# Gradient-side defences (the label holder, on the gradients it sends for a peer's embeddings) -------------


def _flatten_rows(grads: list[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[torch.Size, int]]]:
    """The per-sample gradient: each tensor's row ``i`` (all dims but the batch dim), concatenated, in float64."""
    if not grads:
        raise ValueError("no gradients to defend")
    rows = grads[0].shape[0]
    for g in grads:
        if g.dim() == 0 or g.shape[0] != rows:
            raise ValueError(f"gradients to defend must share the batch dimension; got shapes {[tuple(t.shape) for t in grads]}")
    flat = torch.cat([g.detach().reshape(rows, -1).to(torch.float64) for g in grads], dim=1)
    return flat, [(g.shape, g.reshape(rows, -1).shape[1]) for g in grads]


def _unflatten_rows(flat: torch.Tensor, layout: list[tuple[torch.Size, int]], like: list[torch.Tensor]) -> list[torch.Tensor]:
    out, at = [], 0
    for (shape, width), g in zip(layout, like):
        out.append(flat[:, at : at + width].reshape(shape).to(device=g.device, dtype=g.dtype))
        at += width
    return out


class GradientNormDefence:
    """Per-sample gradient norm clipping or normalisation before the gradients are sent.

    A sample's gradient is its rows of every defended tensor, concatenated. ``mode="normalize"`` gives
    every nonzero per-sample gradient the same L2 norm: ``norm`` if given, else the batch's mean per-sample
    norm (so the overall scale, and the learning rate that suits it, stays the same); the norm attack then
    sees one value for every sample. ``mode="clip"`` scales down the per-sample gradients whose norm exceeds
    ``norm``, or the batch's ``quantile`` of per-sample norms when that is given instead. Neither adds
    noise: the direction of each gradient, and so the direction (cosine) attack, is untouched.
    """

    def __init__(self, mode: str, *, norm: float | None = None, quantile: float | None = None) -> None:
        if mode not in ("normalize", "clip"):
            raise ValueError(f"gradient norm defence mode must be 'normalize' or 'clip', got {mode!r}")
        if norm is not None and not (isinstance(norm, (int, float)) and math.isfinite(norm) and norm > 0):
            raise ValueError(f"gradient norm must be a finite number > 0, got {norm!r}")
        if quantile is not None and not (isinstance(quantile, (int, float)) and 0 < quantile <= 1):
            raise ValueError(f"gradient clipping quantile must be in (0, 1], got {quantile!r}")
        if mode == "clip" and (norm is None) == (quantile is None):
            raise ValueError("gradient clipping needs exactly one of norm (absolute) or quantile (of the batch's norms)")
        if mode == "normalize" and quantile is not None:
            raise ValueError("quantile applies to mode 'clip' only")
        self.mode, self.norm, self.quantile = mode, norm, quantile
        self.last_target: float | None = None

    def __call__(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        flat, layout = _flatten_rows(grads)
        norms = flat.norm(dim=1, keepdim=True)
        nonzero = norms > 0
        if self.mode == "normalize":
            target = self.norm if self.norm is not None else float(norms[nonzero].mean()) if bool(nonzero.any()) else 0.0
            factor = torch.where(nonzero, target / norms.clamp(min=1e-300), torch.zeros_like(norms))
        else:
            q = self.quantile if self.quantile is not None else 1.0  # (clip has norm or quantile: __init__)
            target = self.norm if self.norm is not None else float(torch.quantile(norms.reshape(-1), q))
            factor = torch.where(norms > target, target / norms.clamp(min=1e-300), torch.ones_like(norms))
        self.last_target = float(target)
        return _unflatten_rows(flat * factor, layout, grads)


@dataclass(frozen=True)
class MarvellSolution:
    """The noise covariances of one batch, in the batch's modelled basis: entry 0 is the unit vector along the
    difference of the class means, entries 1..r the top principal directions of the within-class spread
    orthogonal to it, the last entry (when ``r < dim - 1``) each of the remaining ``dim - 1 - r`` dimensions.
    ``noise1[j]`` / ``noise0[j]``: the noise variance positives / negatives get along entry j (per dimension
    for the last); ``mult[j]``: how many dimensions entry j covers."""

    noise1: tuple[float, ...]
    noise0: tuple[float, ...]
    mult: tuple[int, ...]
    dim: int
    positive_rate: float
    power: float  # expected noise power per sample, p sum_j mult_j noise1_j + (1 - p) sum_j mult_j noise0_j
    budget: float  # the power constraint P = scale * ||mean_pos - mean_neg||^2
    sum_kl: float  # KL(P1||P0) + KL(P0||P1) of the noisy Gaussian models at the solution
    auc_bound: float  # the bound on any attacker's AUC this sum-KL implies (see MarvellNoise)
    linear_auc: float  # the AUC of the best linear score under the model (see MarvellNoise)

    @property
    def lam1(self) -> float:
        """Positives' noise variance along the class-mean difference."""
        return self.noise1[0]

    @property
    def lam0(self) -> float:
        """Negatives' noise variance along the class-mean difference."""
        return self.noise0[0]

    def class_power(self, k: int) -> float:
        """E||noise||^2 of a class-k sample (k = 1 positive, 0 negative)."""
        return float(sum(m * n for m, n in zip(self.mult, self.noise1 if k else self.noise0)))


def _normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


class MarvellNoise:
    """Marvell-style optimised gradient noise (Li et al., "Label Leakage and Protection in Two-party Split
    Learning", ICLR 2022), per batch, with per-class covariances modelled in a low-dimensional basis.

    Model: the per-sample gradients of class k (k = 1 positive, 0 negative) are Gaussian with the batch's
    class mean ``mu_k`` and a class covariance that is diagonal in the basis ``D, u_1..u_r, rest``: D the unit
    vector along ``mu_1 - mu_0`` (length ``delta``), u_1..u_r the top ``r = directions`` principal directions
    of the batch's within-class deviations orthogonal to D, and the remaining ``dim - 1 - r`` dimensions
    isotropic. Each class's variances along D and each u_j, and its mean variance per remaining dimension,
    are estimated from the batch. A class-k sample gets zero-mean Gaussian noise whose covariance is diagonal
    in the same basis (variances ``noise_k[j]``). The variances minimise the symmetrised KL divergence between
    the noisy class distributions, which separates over the basis:

        sum_KL = 1/2 sum_j mult_j (a1_j / a0_j + a0_j / a1_j - 2) + 1/2 delta^2 (1 / a1_D + 1 / a0_D),
        a_k_j = (class k's data variance + noise variance) along entry j,

    under the power budget ``p tr(Sigma_1) + (1 - p) tr(Sigma_0) <= P`` with ``P = scale * delta^2`` (``p`` the
    batch's positive rate), solved by SLSQP on each variable's share of the budget from deterministic starts
    (all along D; isotropic; half along D, half spread; each class topped up to the other's variance), the
    best of the starts and the solutions kept. Li et al.'s formulation (Sec. 4: class covariances ``v_k I``,
    noise ``(lam1_k - lam2_k) D D^T + lam2_k I``, four scalars) is the special case ``directions=0`` with the
    same data variance along D as off it; ``tests/attacks/test_marvell_solver.py`` checks the solver against
    a dense-grid solve of that problem. So ``scale`` is the expected noise power
    per sample in units of the squared distance between the class means: ``scale = 1`` adds, on average, as
    much noise energy per sample as the squared gap the noise must hide.

    Leakage bounds (under that Gaussian model, per batch):

    * any scoring function: ``AUC <= 1/2 + TV - TV^2/2`` with TV the total variation distance between the two
      noisy class distributions (Li et al., Thm. 1), and by Pinsker ``TV <= sqrt(sum_KL / 4)``
      (``last.auc_bound``);
    * linear scores ``w . g`` (what the direction attacks amount to: cosine similarity to a reference gradient
      is, up to the per-sample norm, a projection on the reference): the model makes D the best projection,
      with ``AUC = Phi(delta / sqrt(a1_D + a0_D))`` (``last.linear_auc``). Noise orthogonal to D cannot lower
      this: only the noise variance along D can, so hiding the direction to ``AUC <= 0.6`` needs
      ``a1_D + a0_D >= 15.6 delta^2``, i.e. ``scale`` of about 8 when split evenly between the classes.

    The bounds are only as good as the Gaussian model of the gradients; the attacks in
    :mod:`splitlink.attacks` measure what actually leaks.

    A batch with a single class has no class-mean difference: its samples get isotropic noise of the power
    of the latest two-class batch (none on the very first batches, with a warning).
    """

    def __init__(self, scale: float, *, seed: int | None = None, directions: int = 4) -> None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            raise ValueError(
                f"Marvell scale (power budget / ||mean gradient difference||^2) must be a finite number > 0, got {scale!r}"
            )
        if isinstance(directions, bool) or not isinstance(directions, int) or directions < 0:
            raise ValueError(
                f"Marvell directions (principal directions modelled per class) must be an integer >= 0, got {directions!r}"
            )
        self.scale = float(scale)
        self.directions = directions
        self.generator = torch.Generator().manual_seed(secrets.randbits(63) if seed is None else seed)
        self.last: MarvellSolution | None = None
        self._warned = False

    @staticmethod
    def sum_kl(noise1: Any, noise0: Any, *, var1: Any, var0: Any, mult: Any, delta_sq: float) -> float:
        """The symmetrised KL of the model (entry 0 is the mean-difference axis; see the class docstring)."""
        a1 = np.asarray(var1, dtype=np.float64) + np.asarray(noise1, dtype=np.float64)
        a0 = np.asarray(var0, dtype=np.float64) + np.asarray(noise0, dtype=np.float64)
        m = np.asarray(mult, dtype=np.float64)
        return float(0.5 * (m @ (a1 / a0 + a0 / a1 - 2.0)) + 0.5 * delta_sq * (1.0 / a0[0] + 1.0 / a1[0]))

    @staticmethod
    def auc_bound_of(sum_kl: float) -> float:
        tv = min(1.0, math.sqrt(max(sum_kl, 0.0) / 4.0))
        return 0.5 + tv - tv * tv / 2.0

    @staticmethod
    def linear_auc_of(delta_sq: float, a1: float, a0: float) -> float:
        """AUC of the projection on the mean difference for class variances a1, a0 along it."""
        return _normal_cdf(math.sqrt(delta_sq / (a1 + a0))) if a1 + a0 > 0 else (1.0 if delta_sq > 0 else 0.5)

    def solve(self, *, delta_sq: float, var1: Any, var0: Any, mult: Any, p: float) -> MarvellSolution:
        """The noise variances for one batch: ``var1`` / ``var0`` the classes' data variances per modelled
        entry (0: the mean-difference axis), ``mult`` the dimensions each entry covers (see the class docstring)."""
        from scipy.optimize import minimize

        mult_a = np.asarray(mult, dtype=np.float64)
        n = mult_a.size
        if not (len(var1) == len(var0) == n and n >= 1 and mult_a[0] == 1):
            raise ValueError(
                "Marvell solve: var1, var0 and mult need one entry per modelled direction, "
                "the first (the mean-difference axis) covering one dimension"
            )
        dim = int(mult_a.sum())
        budget = self.scale * delta_sq
        # Work in units of the budget; a floor on the data variances keeps the ratios finite (a class of
        # one sample has variance 0).
        unit = budget if budget > 0 else 1.0
        floor = 1e-12
        v1 = np.maximum(np.asarray(var1, dtype=np.float64) / unit, floor)
        v0 = np.maximum(np.asarray(var0, dtype=np.float64) / unit, floor)
        dd = delta_sq / unit

        def f(x: np.ndarray) -> float:
            x = np.maximum(x, 0.0)
            return self.sum_kl(x[:n], x[n:], var1=v1, var0=v0, mult=mult_a, delta_sq=dd)

        def jac(x: np.ndarray) -> np.ndarray:
            x = np.maximum(x, 0.0)
            a1, a0 = v1 + x[:n], v0 + x[n:]
            e = np.zeros(n)
            e[0] = dd
            return 0.5 * np.concatenate([mult_a * (1 / a0 - (a0 + e) / a1**2), mult_a * (1 / a1 - (a1 + e) / a0**2)])

        cost = np.concatenate([p * mult_a, (1 - p) * mult_a])

        def used(x: np.ndarray) -> float:
            return float(cost @ x)

        bounds = [(0.0, None) if mult_a[j % n] > 0 else (0.0, 0.0) for j in range(2 * n)]
        axis_only = np.zeros(2 * n)
        axis_only[0] = axis_only[n] = 1.0
        starts = [axis_only]
        if dim > 1:
            # the budget spread evenly over every dimension, both classes alike (isotropic noise)
            starts.append(np.where(mult_a > 0, 1.0 / dim, 0.0)[np.arange(2 * n) % n])
            # half along the axis, half spread evenly over the other dimensions
            spread = np.where(mult_a > 0, 0.5 / max(dim - 1, 1), 0.0)
            spread[0] = 0.5
            starts.append(np.concatenate([spread, spread]))
            # each class topped up to the other's data variance off the axis, the rest along it (or as much
            # of the topping up as the budget allows)
            match = np.concatenate([np.maximum(v0 - v1, 0.0), np.maximum(v1 - v0, 0.0)])
            match[0] = match[n] = 0.0
            if used(match) < 1.0:
                match[0] = match[n] = 1.0 - used(match)
                starts.append(match)
            elif used(match) > 0.0:
                starts.append(match / used(match))
        # SLSQP works on each variable's share of the budget (the constraint: shares sum to <= 1), which
        # keeps the steps comparable when the dimensions' multiplicities differ by orders of magnitude; the
        # starts themselves are candidates too (SLSQP can stop without improving on a badly scaled start).
        share = np.where(cost > 0, cost, 1.0)
        cons_s = [{"type": "ineq", "fun": lambda y: 1.0 - float(np.sum(y)), "jac": lambda y: -np.ones_like(y)}]
        best: np.ndarray | None = None
        for x0 in starts:
            res = minimize(
                lambda y: f(y / share),
                x0 * share,
                jac=lambda y: jac(y / share) / share,
                method="SLSQP",
                bounds=bounds,
                constraints=cons_s,
                options={"ftol": 1e-12, "maxiter": 500},
            )
            for x in (np.maximum(res.x / share, 0.0), x0):
                if used(x) > 1.0:  # SLSQP may overshoot its constraint by its tolerance
                    x = x / used(x)
                if best is None or f(x) < f(best):
                    best = x
        assert best is not None
        noise1 = tuple(float(t) * unit for t in best[:n])
        noise0 = tuple(float(t) * unit for t in best[n:])
        data1, data0 = v1 * unit, v0 * unit
        kl = self.sum_kl(noise1, noise0, var1=data1, var0=data0, mult=mult_a, delta_sq=delta_sq)
        power = p * float(mult_a @ np.asarray(noise1)) + (1 - p) * float(mult_a @ np.asarray(noise0))
        lin = self.linear_auc_of(delta_sq, float(data1[0] + noise1[0]), float(data0[0] + noise0[0]))
        return MarvellSolution(
            noise1, noise0, tuple(int(m) for m in mult_a), dim, p, power, budget, kl, self.auc_bound_of(kl), lin
        )

    def _basis(self, dev: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
        """(r, dim) orthonormal rows: the top principal directions of the deviations ``dev`` orthogonal to ``axis``."""
        rows, dim = dev.shape
        r = min(self.directions, dim - 1, rows)
        if r <= 0:
            return dev.new_zeros((0, dim))
        perp = dev - (dev @ axis).unsqueeze(1) * axis
        _, s, vh = torch.linalg.svd(perp, full_matrices=False)
        r = min(r, int((s > s[0] * 1e-9).sum()) if s.numel() and float(s[0]) > 0 else 0)
        basis = vh[:r]
        # re-orthogonalise against the axis (the SVD leaves rounding-level components along it)
        basis = basis - (basis @ axis).unsqueeze(1) * axis
        q, _ = torch.linalg.qr(basis.T)
        out: torch.Tensor = q.T[:r]
        return out

    def __call__(self, grads: list[torch.Tensor], labels: torch.Tensor) -> list[torch.Tensor]:
        flat, layout = _flatten_rows(grads)
        rows, dim = flat.shape
        y = labels.detach().reshape(-1).to(torch.float64).cpu()
        if y.numel() != rows:
            raise ValueError(f"Marvell noise got {y.numel()} labels for {rows} gradients; give one label per row")
        if not bool(((y == 0) | (y == 1)).all()):
            raise ValueError("Marvell noise needs binary labels (0 or 1)")
        pos = (y == 1).to(flat.device)
        n_pos = int(pos.sum())
        z = torch.randn((rows, dim), generator=self.generator, dtype=torch.float64).to(flat.device)
        if 0 < n_pos < rows:
            mu1, mu0 = flat[pos].mean(0), flat[~pos].mean(0)
            diff = mu1 - mu0
            delta_sq = float(diff.dot(diff))
            if delta_sq > 0:
                axis = diff / math.sqrt(delta_sq)
            else:  # identical class means: nothing along an axis to hide; any unit vector serves
                axis = torch.zeros_like(diff)
                axis[0] = 1.0
            dev = flat - torch.where(pos.unsqueeze(1), mu1, mu0)
            pcs = self._basis(dev, axis)
            basis = torch.cat([axis.unsqueeze(0), pcs])  # (1 + r, dim), orthonormal
            proj = dev @ basis.T  # per-sample coordinates
            rest = dev.pow(2).sum(1) - proj.pow(2).sum(1)  # squared norm outside the basis
            m_rest = dim - basis.shape[0]
            var1 = proj[pos].pow(2).mean(0).tolist()
            var0 = proj[~pos].pow(2).mean(0).tolist()
            mult = [1] * basis.shape[0]
            if m_rest > 0:
                var1.append(float(rest[pos].clamp(min=0).mean()) / m_rest)
                var0.append(float(rest[~pos].clamp(min=0).mean()) / m_rest)
                mult.append(m_rest)
            sol = self.solve(delta_sq=delta_sq, var1=var1, var0=var0, mult=mult, p=n_pos / rows)
            self.last = sol
            zc = z @ basis.T
            z_rest = z - zc @ basis
            k = basis.shape[0]
            sd1 = torch.tensor(sol.noise1, dtype=torch.float64, device=flat.device).sqrt()
            sd0 = torch.tensor(sol.noise0, dtype=torch.float64, device=flat.device).sqrt()
            sd = torch.where(pos.unsqueeze(1), sd1, sd0)  # (rows, entries)
            noise = (zc * sd[:, :k]) @ basis
            if m_rest > 0:
                noise = noise + sd[:, k:] * z_rest
        elif self.last is not None:
            noise = z * math.sqrt(self.last.power / dim)
        else:
            if not self._warned:
                log.warning(
                    "Marvell noise: the first batch holds one class only; sent without noise "
                    "(no class-mean difference to size the noise yet)"
                )
                self._warned = True
            noise = torch.zeros_like(flat)
        return _unflatten_rows(flat + noise, layout, grads)

    def state_dict(self) -> dict[str, Any]:
        last = None
        if self.last is not None:
            last = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.last).items()}
        return {"generator": self.generator.get_state(), "last": last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        last: dict[str, Any] | None = state.get("last")
        if last is not None:
            fields: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in last.items()}
            last = fields
        self.last = None if last is None else MarvellSolution(**last)
