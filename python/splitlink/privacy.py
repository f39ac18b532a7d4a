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

Randomness: every mechanism takes ``seed``; without one it draws a fresh secret seed from the OS (a
seed the peer knows would let it subtract the noise, so production runs should not put one in a file
the peer can read). Nothing uses global random state.
"""

from __future__ import annotations

import logging
import math
import secrets
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["LabelDP", "SignEmbeddingDP", "GaussianEmbeddingDP"]

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
