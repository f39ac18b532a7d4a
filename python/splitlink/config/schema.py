"""The schema of one party's sub-network YAML (MindSpore Federated's vertical YAML plus splitlink's
additions; see :mod:`splitlink.config`), as strict pydantic models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from splitlink.codec import COMPRESS_TYPES

if TYPE_CHECKING:
    _CompressType = str
else:  # a Literal of the codec names the native core exports
    _CompressType = Literal.__getitem__(tuple(COMPRESS_TYPES))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True, allow_inf_nan=False)


class TensorSpec(_Strict):
    name: str = Field(min_length=1)
    compress_type: _CompressType | None = None
    bit_num: int | None = Field(default=None, ge=1, le=8)
    compress_params: dict[str, Any] | None = None


class InputSpec(TensorSpec):
    source: Literal["local", "remote"] = "local"
    # N parties (leader YAML, see ``followers``): the follower(s) that send this remote input; with
    # several, ``aggregate`` says how their tensors are combined (``secure``: pairwise-masked sum/mean).
    party: str | list[str] | None = None
    aggregate: Literal["concat", "sum", "mean"] | None = None
    secure: bool = Field(default=False, strict=True)
    frac_bits: int = Field(default=16, ge=0, le=40, strict=True)


class OutputSpec(TensorSpec):
    destination: Literal["local", "remote"] = "local"


class NetSpec(_Strict):
    name: str = Field(min_length=1)
    inputs: list[InputSpec] = Field(min_length=1)
    outputs: list[OutputSpec] = Field(min_length=1)
    gt: str | None = None


class ModelSpec(_Strict):
    train_net: NetSpec
    eval_net: NetSpec | None = None


class NameRef(_Strict):
    name: str = Field(min_length=1)


class GradSpec(_Strict):
    inputs: list[NameRef] = Field(min_length=1)
    output: NameRef
    sens: float | str = 1.0


class OptSpec(_Strict):
    type: str = Field(min_length=1)
    grads: list[GradSpec] = Field(min_length=1)
    params: list[NameRef] | None = None
    hyper_parameters: dict[str, Any] = Field(default_factory=dict)


class DatasetSpec(_Strict):
    name: str | None = None
    path: str | None = None
    features: list[str] | None = None
    labels: list[str] | None = None
    num_samples: int | None = Field(default=None, ge=1)


class HyperParameters(_Strict):
    """The training loop's settings. As in MindSpore Federated, the section and each key in it are optional
    (defaults: epochs 1, batch_size 1, is_eval False); many scripts take epochs and batch size from their own
    configuration. What is given must still be valid: unknown keys, wrong types and values < 1 are refused."""

    # strict: YAML gives real integers and booleans; ``epochs: true`` or ``batch_size: 2.5`` is a mistake.
    epochs: int = Field(default=1, ge=1, strict=True)
    batch_size: int = Field(default=1, ge=1, strict=True)
    is_eval: bool = Field(default=False, strict=True)


class LabelDPSpec(_Strict):
    eps: float = Field(ge=0)
    seed: int | None = Field(default=None, ge=0)
    id_key: str = "sample_id"
    num_classes: int | None = Field(default=None, ge=2)


class EmbeddingDPSpec(_Strict):
    mechanism: Literal["sign_rr", "gaussian"] = "sign_rr"
    eps: float | None = Field(default=None, ge=0)
    seed: int | None = Field(default=None, ge=0)
    clip_norm: float | None = Field(default=None, gt=0)
    noise_multiplier: float | None = Field(default=None, ge=0)
    delta: float | None = Field(default=None, gt=0, lt=1)
    num_samples: int | None = Field(default=None, ge=1)
    releases: int | None = Field(default=None, ge=1)


class GradNormSpec(_Strict):
    """Per-sample clipping or normalisation of the gradients sent for remote inputs (privacy.GradientNormDefence)."""

    mode: Literal["normalize", "clip"]
    norm: float | None = Field(default=None, gt=0)
    quantile: float | None = Field(default=None, gt=0, le=1)


class MarvellSpec(_Strict):
    """Optimised per-class gradient noise with power budget ``scale * ||mean_pos - mean_neg||^2``
    (privacy.MarvellNoise); binary labels from model.eval_net.gt."""

    scale: float = Field(gt=0)
    seed: int | None = Field(default=None, ge=0)


class PrivacySpec(_Strict):
    label_dp: LabelDPSpec | None = None
    embedding_dp: EmbeddingDPSpec | None = None
    grad_norm: GradNormSpec | None = None
    marvell: MarvellSpec | None = None


class RootSpec(_Strict):
    role: Literal["leader", "follower"]
    model: ModelSpec
    opts: list[OptSpec] = Field(default_factory=list)
    grad_scalers: list[GradSpec] = Field(default_factory=list)
    dataset: DatasetSpec | None = None
    hyper_parameters: HyperParameters = Field(default_factory=HyperParameters)
    privacy: PrivacySpec | None = None
    ckpt_path: str = "./checkpoints"
    deepspeed: dict[str, Any] | str | None = None
    followers: list[str] | None = Field(default=None, min_length=1)  # leader: its followers' names (N parties)
