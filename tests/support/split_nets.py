"""Small networks cut into sub-networks, for the FLModel equivalence tests and bench_step.

Everything is built from one seed so the split and the unsplit models start from the same weights.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from splitlink import FLYamlData


class Bottom(nn.Module):
    def __init__(self, d_in: int, d_hidden: int) -> None:
        super().__init__()
        self.deep = nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Linear(d_hidden, d_hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.deep(x)


class Middle(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.mid = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, d))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.mid(h) + h


class TopLoss(nn.Module):
    def __init__(self, d: int, n_classes: int) -> None:
        super().__init__()
        self.dense = nn.Sequential(nn.GELU(), nn.Linear(d, n_classes))

    def forward(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.dense(h), y)


def mlp_parts(seed: int = 0, d_in: int = 32, d_hidden: int = 64, n_classes: int = 5) -> tuple[Bottom, Middle, TopLoss]:
    torch.manual_seed(seed)
    return Bottom(d_in, d_hidden), Middle(d_hidden), TopLoss(d_hidden, n_classes)


class Block(nn.Module):
    def __init__(self, d: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.n_head)
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class GPTEmbedding(nn.Module):
    """Party A: token + position embedding; also hands the (tied) word table to the head."""

    def __init__(self, vocab: int, d: int, seq: int) -> None:
        super().__init__()
        self.word_embedding = nn.Embedding(vocab, d)
        self.position_embedding = nn.Embedding(seq, d)

    def forward(self, input_ids: torch.Tensor, position_id: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.word_embedding(input_ids) + self.position_embedding(position_id), self.word_embedding.weight


class GPTBackbone(nn.Module):
    """Party B: the Transformer blocks."""

    def __init__(self, d: int, n_layer: int, n_head: int) -> None:
        super().__init__()
        self.backbone = nn.Sequential(*[Block(d, n_head) for _ in range(n_layer)])

    def forward(self, embedding_table: torch.Tensor) -> torch.Tensor:
        return self.backbone(embedding_table)


class GPTHead(nn.Module):
    """Party A: final layer norm, logits through the tied word table, next-token loss."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.top_ln = nn.LayerNorm(d)

    def forward(self, hidden_states: torch.Tensor, word_table: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        logits = self.top_ln(hidden_states) @ word_table.t()
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1))


def gpt_parts(
    seed: int = 0, vocab: int = 97, d: int = 32, seq: int = 16, n_layer: int = 2, n_head: int = 4
) -> tuple[GPTEmbedding, GPTBackbone, GPTHead]:
    torch.manual_seed(seed)
    return GPTEmbedding(vocab, d, seq), GPTBackbone(d, n_layer, n_head), GPTHead(d)


def gpt_batch(step: int, batch: int = 4, vocab: int = 97, seq: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    return {"input_ids": ids, "position_id": torch.arange(seq).expand(batch, seq).contiguous()}


def mlp_batch(step: int, batch: int = 16, d_in: int = 32, n_classes: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2000 + step)
    return {"x": torch.randn(batch, d_in, generator=g), "y": torch.randint(0, n_classes, (batch,), generator=g)}


def fl_yaml(text: str, name: str = "test", **subs: object) -> FLYamlData:
    """FLYamlData from one of the templates below, with placeholders (LS, HIN) substituted."""
    for k, v in subs.items():
        text = text.replace(k, str(v))
    return FLYamlData(f"<{name}>", text=text)


# YAML of each sub-network (MindSpore's schema).
MLP_BOTTOM = """
role: follower
model:
  train_net:
    name: bottom
    inputs: [{name: x, source: local}]
    outputs: [{name: h, destination: remote}]
opts:
  - type: Adam
    grads: [{inputs: [{name: x}], output: {name: h}, sens: loss}]
    hyper_parameters: {learning_rate: 1.e-3, loss_scale: LS}
hyper_parameters: {epochs: 1, batch_size: 16}
"""
MLP_MIDDLE = """
role: follower
model:
  train_net:
    name: middle
    inputs: [{name: h, source: remote}]
    outputs: [{name: h2, destination: remote}]
opts:
  - type: Adam
    grads: [{inputs: [{name: h}], output: {name: h2}, sens: loss}]
    hyper_parameters: {learning_rate: 1.e-3, loss_scale: LS}
grad_scalers:
  - {inputs: [{name: h}], output: {name: h2}, sens: loss}
hyper_parameters: {epochs: 1, batch_size: 16}
"""
MLP_TOP = """
role: leader
model:
  train_net:
    name: top
    inputs: [{name: HIN, source: remote}, {name: y, source: local}]
    outputs: [{name: loss, destination: local}]
opts:
  - type: Adam
    grads: [{inputs: [{name: HIN}, {name: y}], output: {name: loss}, sens: LS}]
    hyper_parameters: {learning_rate: 1.e-3, loss_scale: LS}
grad_scalers:
  - {inputs: [{name: HIN}], output: {name: loss}, sens: LS}
hyper_parameters: {epochs: 1, batch_size: 16}
"""
GPT_EMBEDDING = """
role: leader
model:
  train_net:
    name: embedding
    inputs: [{name: input_ids, source: local}, {name: position_id, source: local}]
    outputs: [{name: embedding_table, destination: remote}, {name: word_table, destination: local}]
opts:
  - type: AdamW
    grads:
      - {inputs: [{name: input_ids}, {name: position_id}], output: {name: embedding_table}, sens: hidden_states}
      - {inputs: [{name: input_ids}, {name: position_id}], output: {name: word_table}, sens: output}
    params: [{name: word_embedding}, {name: position_embedding}]
    hyper_parameters: {learning_rate: 1.e-3, eps: 1.e-8, weight_decay: 0.01}
hyper_parameters: {epochs: 1, batch_size: 4}
"""
GPT_BACKBONE = """
role: follower
model:
  train_net:
    name: backbone
    inputs: [{name: embedding_table, source: remote}]
    outputs: [{name: hidden_states, destination: remote}]
opts:
  - type: AdamW
    grads: [{inputs: [{name: embedding_table}], output: {name: hidden_states}, sens: output}]
    params: [{name: backbone}]
    hyper_parameters: {learning_rate: 1.e-3, eps: 1.e-8, weight_decay: 0.01}
grad_scalers:
  - {inputs: [{name: embedding_table}], output: {name: hidden_states}, sens: output}
hyper_parameters: {epochs: 1, batch_size: 4}
"""
GPT_HEAD = """
role: leader
model:
  train_net:
    name: head
    inputs: [{name: hidden_states, source: remote}, {name: word_table, source: local}, {name: input_ids, source: local}]
    outputs: [{name: output, destination: local}]
opts:
  - type: AdamW
    grads: [{inputs: [{name: hidden_states}, {name: word_table}, {name: input_ids}], output: {name: output}, sens: 1.0}]
    params: [{name: top_ln}]
    hyper_parameters: {learning_rate: 1.e-3, eps: 1.e-8, weight_decay: 0.01}
grad_scalers:
  - {inputs: [{name: hidden_states}, {name: word_table}, {name: input_ids}], output: {name: output}, sens: 1.0}
hyper_parameters: {epochs: 1, batch_size: 4}
"""
