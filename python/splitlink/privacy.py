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

__all__ = ["LabelDP", "SignEmbeddingDP", "GaussianEmbeddingDP", "GradientNormDefence", "MarvellNoise", "MarvellSolution"]

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
                    raise ValueError("label DP: binary labels must be 0 or 1 "
                                     "(for class indices set privacy.label_dp.num_classes)")
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
    def forward(ctx: Any, x: torch.Tensor, released: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return released

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
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
        bits = (x.detach() > 0)
        flips = torch.rand(x.shape, generator=self.generator) < self.flip_probability
        released = (bits ^ flips.to(bits.device)).to(x.dtype)
        return _StraightThrough.apply(x, released) if x.requires_grad else released

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


class GaussianEmbeddingDP:
    """Per-sample L2 clipping plus Gaussian noise, with Opacus's RDP accountant (see the module docstring)."""

    def __init__(self, *, clip_norm: float, delta: float, noise_multiplier: float | None = None,
                 eps: float | None = None, releases: int = 1, num_samples: int | None = None,
                 seed: int | None = None) -> None:
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
            noise_multiplier = float(get_noise_multiplier(target_epsilon=eps, target_delta=delta, sample_rate=1.0,
                                                          steps=self.releases_planned, accountant="rdp"))
            log.info("embedding DP: noise multiplier %.4f for (eps=%g, delta=%g) over %d releases per sample",
                     noise_multiplier, eps, delta, self.releases_planned)
        self.noise_multiplier = float(noise_multiplier)
        self.accountant = RDPAccountant()
        self.samples_seen = 0
        self.steps = 0
        self.releases_accounted = 0
        self.generator = torch.Generator().manual_seed(secrets.randbits(63) if seed is None else seed)
        if num_samples is None:
            log.warning("embedding DP: dataset size unknown (privacy.embedding_dp.num_samples); the accountant "
                        "counts every step as a release of every sample, a very loose upper bound")

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
            log.info("embedding DP: %d release(s) per sample so far, privacy spent eps=%.4f at delta=%g",
                     self.releases_accounted, eps, delta)

    def spent(self) -> tuple[float, float]:
        """The (eps, delta) spent so far."""
        if self.releases_accounted == 0:
            return 0.0, self.delta
        return float(self.accountant.get_epsilon(self.delta)), self.delta

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "samples_seen": self.samples_seen, "steps": self.steps,
                "releases_accounted": self.releases_accounted, "history": list(self.accountant.history)}

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
            raise ValueError(f"gradients to defend must share the batch dimension; got shapes "
                             f"{[tuple(t.shape) for t in grads]}")
    flat = torch.cat([g.detach().reshape(rows, -1).to(torch.float64) for g in grads], dim=1)
    return flat, [(g.shape, g.reshape(rows, -1).shape[1]) for g in grads]


def _unflatten_rows(flat: torch.Tensor, layout: list[tuple[torch.Size, int]], like: list[torch.Tensor]) -> list[torch.Tensor]:
    out, at = [], 0
    for (shape, width), g in zip(layout, like):
        out.append(flat[:, at:at + width].reshape(shape).to(device=g.device, dtype=g.dtype))
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
    """The noise covariances of one batch: per class k (1 positive, 0 negative), variance ``lam_k`` along the
    difference of the class means and ``gam_k`` in each of the ``dim - 1`` orthogonal directions."""

    lam1: float
    lam0: float
    gam1: float
    gam0: float
    dim: int
    positive_rate: float
    power: float            # expected noise power per sample, p (lam1 + (d-1) gam1) + (1-p) (lam0 + (d-1) gam0)
    budget: float           # the power constraint P = scale * ||mean_pos - mean_neg||^2
    sum_kl: float           # KL(P1||P0) + KL(P0||P1) of the noisy Gaussian models at the solution
    auc_bound: float        # the bound on any attacker's AUC this sum-KL implies (see MarvellNoise)


class MarvellNoise:
    """Marvell-style optimised gradient noise (Li et al., "Label Leakage and Protection in Two-party Split
    Learning", ICLR 2022), two-Gaussian variant, per batch.

    Model: the per-sample gradients of class k (k = 1 positive, 0 negative) are Gaussian with the batch's
    class mean ``mu_k`` and isotropic variance (``v`` positives, ``u`` negatives, per dimension, estimated
    from the batch). Each sample of class k gets zero-mean Gaussian noise of covariance
    ``Sigma_k = lam_k D D^T + gam_k (I - D D^T)``, D the unit vector along ``mu_1 - mu_0`` (the optimum of
    the problem below has this form: everything it depends on is symmetric about that axis). The four
    variances minimise the symmetrised KL divergence between the noisy class distributions,

        KL(N(mu_1, vI + Sigma_1) || N(mu_0, uI + Sigma_0)) + KL(N(mu_0, uI + Sigma_0) || N(mu_1, vI + Sigma_1)),

    under the power budget ``p tr(Sigma_1) + (1 - p) tr(Sigma_0) <= P`` with ``P = scale * ||mu_1 - mu_0||^2``
    (``p`` the batch's positive rate), solved by SLSQP over the four variances (deterministic starts).

    Leakage bound targeted (under that Gaussian model): for any scoring function an attacker applies to a
    received gradient, ``AUC <= 1/2 + TV - TV^2/2`` where TV is the total variation distance between the
    two noisy class distributions (Li et al., Thm. 1), and by Pinsker's inequality applied to each direction
    ``TV <= sqrt(min(KL_10, KL_01) / 2) <= sqrt(sum_KL / 4)``. ``last.auc_bound`` reports that bound for the
    latest batch. The bound is only as good as the Gaussian model of the gradients; the attacks in
    :mod:`splitlink.attacks` measure what actually leaks.

    A batch with a single class has no class-mean difference: its samples get isotropic noise of the power
    of the latest two-class batch (none on the very first batches, with a warning).
    """

    def __init__(self, scale: float, *, seed: int | None = None) -> None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"Marvell scale (power budget / ||mean gradient difference||^2) must be a finite "
                             f"number > 0, got {scale!r}")
        self.scale = float(scale)
        self.generator = torch.Generator().manual_seed(secrets.randbits(63) if seed is None else seed)
        self.last: MarvellSolution | None = None
        self._warned = False

    @staticmethod
    def sum_kl(lam1: float, lam0: float, gam1: float, gam0: float, *, delta_sq: float, u: float, v: float,
               dim: int) -> float:
        a1, a0, b1, b0 = v + lam1, u + lam0, v + gam1, u + gam0
        out = (a1 / a0 + a0 / a1 - 2.0) + delta_sq * (1.0 / a0 + 1.0 / a1)
        if dim > 1:
            out += (dim - 1) * (b1 / b0 + b0 / b1 - 2.0)
        return 0.5 * out

    @staticmethod
    def auc_bound_of(sum_kl: float) -> float:
        tv = min(1.0, math.sqrt(max(sum_kl, 0.0) / 4.0))
        return 0.5 + tv - tv * tv / 2.0

    def solve(self, *, delta_sq: float, u: float, v: float, p: float, dim: int) -> MarvellSolution:
        """The noise variances for one batch (see the class docstring)."""
        from scipy.optimize import minimize

        budget = self.scale * delta_sq
        # Work in units of the budget; a floor on the data variances keeps the ratios finite (a class of
        # one sample has variance 0).
        unit = budget if budget > 0 else 1.0
        floor = 1e-12
        uu, vv, dd = max(u / unit, floor), max(v / unit, floor), delta_sq / unit
        m = dim - 1

        def f(x: np.ndarray) -> float:
            lam1, lam0, gam1, gam0 = np.maximum(x, 0.0)
            return self.sum_kl(lam1, lam0, gam1, gam0, delta_sq=dd, u=uu, v=vv, dim=dim)

        def jac(x: np.ndarray) -> np.ndarray:
            lam1, lam0, gam1, gam0 = np.maximum(x, 0.0)
            a1, a0, b1, b0 = vv + lam1, uu + lam0, vv + gam1, uu + gam0
            return 0.5 * np.array([1 / a0 - (a0 + dd) / a1**2, 1 / a1 - (a1 + dd) / a0**2,
                                   m * (1 / b0 - b0 / b1**2), m * (1 / b1 - b1 / b0**2)])

        cost = np.array([p, 1 - p, m * p, m * (1 - p)])

        def used(x: np.ndarray) -> float:
            return float(cost @ x)

        cons = [{"type": "ineq", "fun": lambda x: 1.0 - used(x), "jac": lambda x: -cost}]
        bounds = [(0.0, None)] * 2 + [(0.0, None if m > 0 else 0.0)] * 2
        starts = [np.array([1.0, 1.0, 0.0, 0.0])]
        if m > 0:
            starts.append(np.array([0.5, 0.5, 0.5 / m, 0.5 / m]))
        best: np.ndarray | None = None
        for x0 in starts:
            res = minimize(f, x0, jac=jac, method="SLSQP", bounds=bounds, constraints=cons,
                           options={"ftol": 1e-12, "maxiter": 200})
            x = np.maximum(res.x, 0.0)
            if used(x) > 1.0:  # SLSQP may overshoot its constraint by its tolerance
                x = x / used(x)
            if best is None or f(x) < f(best):
                best = x
        assert best is not None
        lam1, lam0, gam1, gam0 = (float(t) * unit for t in best)
        kl = self.sum_kl(lam1, lam0, gam1, gam0, delta_sq=delta_sq, u=max(u, floor * unit), v=max(v, floor * unit),
                         dim=dim)
        power = p * (lam1 + m * gam1) + (1 - p) * (lam0 + m * gam0)
        return MarvellSolution(lam1, lam0, gam1, gam0, dim, p, power, budget, kl, self.auc_bound_of(kl))

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
            v = float(((flat[pos] - mu1) ** 2).sum(1).mean()) / dim
            u = float(((flat[~pos] - mu0) ** 2).sum(1).mean()) / dim
            sol = self.solve(delta_sq=delta_sq, u=u, v=v, p=n_pos / rows, dim=dim)
            self.last = sol
            axis = diff / math.sqrt(delta_sq) if delta_sq > 0 else torch.zeros_like(diff)
            along = z @ axis
            ortho = z - along.unsqueeze(1) * axis
            lam = torch.where(pos, sol.lam1, sol.lam0).to(torch.float64).unsqueeze(1)
            gam = torch.where(pos, sol.gam1, sol.gam0).to(torch.float64).unsqueeze(1)
            noise = lam.sqrt() * along.unsqueeze(1) * axis + gam.sqrt() * ortho
        elif self.last is not None:
            noise = z * math.sqrt(self.last.power / dim)
        else:
            if not self._warned:
                log.warning("Marvell noise: the first batch holds one class only; sent without noise "
                            "(no class-mean difference to size the noise yet)")
                self._warned = True
            noise = torch.zeros_like(flat)
        return _unflatten_rows(flat + noise, layout, grads)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "last": None if self.last is None else asdict(self.last)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.last = None if state.get("last") is None else MarvellSolution(**state["last"])
