"""Models for horizontal FL: a GPT-2-architecture sequence classifier from a config (nothing downloads),
optionally wrapped with PEFT adapters (LoRA, IA3) so that only the adapter tensors are trained and exchanged.

Needs the ``horizontal`` extra (``transformers``, ``peft``); imported only when a job uses them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

__all__ = ["AdapterSpec", "GPT2Spec", "build_classifier", "exchanged_names", "parameter_fraction"]


@dataclass
class GPT2Spec:
    """A small GPT-2 (random init from ``seed``): sizes as ``transformers.GPT2Config``."""

    vocab_size: int = 260
    n_positions: int = 128
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    num_labels: int = 2
    pad_token_id: int = 0
    dropout: float = 0.0


@dataclass
class AdapterSpec:
    """``type: none`` (full fine-tuning), ``lora`` or ``ia3`` (``peft``'s LoraConfig / IA3Config)."""

    type: Literal["none", "lora", "ia3"] = "none"
    r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["c_attn"])
    feedforward_modules: list[str] = field(default_factory=list)  # ia3: which targets scale inputs


def build_classifier(spec: GPT2Spec, adapter: AdapterSpec | None = None, *, seed: int = 0) -> nn.Module:
    """``GPT2ForSequenceClassification`` from ``spec``, weights from ``torch.manual_seed(seed)`` (the same on
    every party), wrapped with the adapter (PEFT task SEQ_CLS: the classification head trains too)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        from transformers import GPT2Config, GPT2ForSequenceClassification

    # (the ignore: PretrainedConfig takes its fields as **kwargs)
    cfg = GPT2Config(
        vocab_size=spec.vocab_size,  # type: ignore[call-arg]
        n_positions=spec.n_positions,
        n_embd=spec.n_embd,
        n_layer=spec.n_layer,
        n_head=spec.n_head,
        num_labels=spec.num_labels,
        pad_token_id=spec.pad_token_id,
        bos_token_id=spec.vocab_size - 1,
        eos_token_id=spec.vocab_size - 1,
        resid_pdrop=spec.dropout,
        embd_pdrop=spec.dropout,
        attn_pdrop=spec.dropout,
        summary_first_dropout=spec.dropout,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model: nn.Module = GPT2ForSequenceClassification(cfg)
    model.config.pad_token_id = spec.pad_token_id  # type: ignore[union-attr]
    if adapter is None or adapter.type == "none":
        return model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        from peft import IA3Config, LoraConfig, TaskType, get_peft_model

    pcfg: Any
    if adapter.type == "lora":
        pcfg = LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=adapter.r,
            lora_alpha=adapter.lora_alpha,
            lora_dropout=adapter.lora_dropout,
            target_modules=list(adapter.target_modules),
            fan_in_fan_out=True,
        )  # GPT-2's Conv1D stores weights transposed
    elif adapter.type == "ia3":
        pcfg = IA3Config(
            task_type=TaskType.SEQ_CLS,
            target_modules=list(adapter.target_modules),
            feedforward_modules=list(adapter.feedforward_modules),
            fan_in_fan_out=True,
        )
    else:
        raise ValueError(f"adapter type must be none, lora or ia3, got {adapter.type!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # fan_in_fan_out notices
            warnings.simplefilter("ignore", FutureWarning)  # peft asks transformers a deprecated property
            wrapped: nn.Module = get_peft_model(model, pcfg)
    return wrapped


def exchanged_names(model: nn.Module) -> list[str]:
    """The tensors that travel: every parameter that requires grad (all of them in full fine-tuning;
    the adapters and the classification head under PEFT)."""
    return [k for k, p in model.named_parameters() if p.requires_grad]


def parameter_fraction(model: nn.Module) -> float:
    """Trainable (exchanged) parameters / all parameters."""
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trained / total
