"""A Pangu-alpha-style GPT cut into Embedding / Backbone / Head, as in the seed.

Party A (the service side, holds the text) runs the Embedding and the Head; party B (a computing
centre) runs the Transformer backbone, under DeepSpeed when its YAML has a ``deepspeed`` section. The
step is exactly the seed's:

    A: input_ids, position_id, attention_mask -> Embedding -> embedding_table ------------> B
       (and the attention mask, 1-bit packed on the wire)
    B: Backbone(embedding_table, attention_mask) -> hidden_states ------------------------> A
    A: Head(hidden_states, input_ids, word_table, position_id, attention_mask) -> loss
       backward: the gradient of hidden_states -------------------------------------------> B
    B: backbone update; the gradient of embedding_table ----------------------------------> A
    A: Embedding update with the embedding_table gradient from B plus the word_table gradient
       from its own Head (the word embedding is tied and never leaves A).

The model follows Pangu-alpha: learned word and position embeddings, pre-LayerNorm Transformer blocks,
then the "top query" layer, whose attention query comes from a separate learned embedding of the
position rather than from the hidden state, and logits through the tied word embedding.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from splitlink.config import FLYamlData
from splitlink.examples import YAML_DIR
from splitlink.model import FLModel
from splitlink.model.device import resolve_device, to_device
from splitlink.runtime import pipeline
from splitlink.runtime.party import Party, TrainOptions, agree_locally
from splitlink.runtime.registry import Scenario, register
from splitlink.runtime.run_config import RunConfig, Section
from splitlink.runtime.schedule import Schedule

__all__ = [
    "PanguConfig",
    "CONFIGS",
    "EmbeddingNet",
    "BackboneNet",
    "HeadNet",
    "TokenDataset",
    "preprocess_corpus",
    "stdlib_corpus",
    "PartyA",
    "PartyB",
    "train_local",
    "train_unsplit",
]

log = logging.getLogger("splitlink.examples.pangu")
YAMLS = YAML_DIR / "pangu_alpha"


@dataclass
class PanguConfig:
    vocab_size: int = 40_000
    hidden_size: int = 1280
    num_layers: int = 16
    num_heads: int = 32
    seq_length: int = 1024
    ffn_mult: int = 4
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}")


CONFIGS = {
    "tiny": PanguConfig(vocab_size=2048, hidden_size=128, num_layers=2, num_heads=4, seq_length=64),
    "350M": PanguConfig(vocab_size=40_000, hidden_size=1280, num_layers=16, num_heads=32, seq_length=1024),
    "2.6B": PanguConfig(vocab_size=40_000, hidden_size=2560, num_layers=32, num_heads=32, seq_length=1024),
}


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, heads: int) -> torch.Tensor:
    b, t, d = q.shape
    q, k, v = (z.view(b, t, heads, d // heads).transpose(1, 2) for z in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.unsqueeze(1))
    return out.transpose(1, 2).reshape(b, t, d)


class Block(nn.Module):
    def __init__(self, cfg: PanguConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.heads = cfg.num_heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, cfg.ffn_mult * d), nn.GELU(), nn.Linear(cfg.ffn_mult * d, d))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, query: torch.Tensor | None = None) -> torch.Tensor:
        h = self.ln1(x)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        if query is not None:  # the top query layer: the query is a learned function of the position
            q = F.linear(query, self.qkv.weight[: x.shape[-1]], self.qkv.bias[: x.shape[-1]])
        x = x + self.proj(_attention(q, k, v, mask, self.heads))
        out: torch.Tensor = x + self.mlp(self.ln2(x))
        return out


class EmbeddingNet(nn.Module):
    """Party A: word + position embeddings. Returns the embedding features, the word table (tied with
    the Head, stays at A) and the attention mask (passed on to B)."""

    def __init__(self, cfg: PanguConfig) -> None:
        super().__init__()
        self.word_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.seq_length, cfg.hidden_size)
        for e in (self.word_embedding, self.position_embedding):
            nn.init.normal_(e.weight, std=cfg.init_std)

    def forward(
        self, input_ids: torch.Tensor, position_id: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.word_embedding(input_ids) + self.position_embedding(position_id)
        return x, self.word_embedding.weight, attention_mask


class BackboneNet(nn.Module):
    """Party B: the Transformer blocks."""

    def __init__(self, cfg: PanguConfig) -> None:
        super().__init__()
        self.backbone = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.backbone_ln = nn.LayerNorm(cfg.hidden_size)

    def forward(self, embedding_table: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = embedding_table
        for block in self.backbone:
            x = block(x, attention_mask)
        out: torch.Tensor = self.backbone_ln(x)
        return out


class HeadNet(nn.Module):
    """Party A: the top query layer, then logits through the tied word table, next-token loss."""

    def __init__(self, cfg: PanguConfig) -> None:
        super().__init__()
        self.top_query_embedding = nn.Embedding(cfg.seq_length, cfg.hidden_size)
        nn.init.normal_(self.top_query_embedding.weight, std=cfg.init_std)
        self.top_query_layer = Block(cfg)
        self.top_query_ln = nn.LayerNorm(cfg.hidden_size)

    def logits(
        self, hidden_states: torch.Tensor, word_table: torch.Tensor, position_id: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        x = self.top_query_layer(hidden_states, attention_mask, query=self.top_query_embedding(position_id))
        out: torch.Tensor = self.top_query_ln(x) @ word_table.t()
        return out

    def forward(
        self,
        hidden_states: torch.Tensor,
        input_ids: torch.Tensor,
        word_table: torch.Tensor,
        position_id: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        logits = self.logits(hidden_states, word_table, position_id, attention_mask)
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), input_ids[:, 1:].reshape(-1))


# ---- data -------------------------------------------------------------------------------------


def stdlib_corpus(out_dir: str | os.PathLike[str], max_bytes: int = 4 << 20) -> Path:
    """Copies Python standard-library sources (present offline on every machine) into a text folder."""
    import sysconfig

    src = Path(sysconfig.get_paths()["stdlib"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    total = 0
    for f in sorted(src.glob("*.py")):
        text = f.read_text(encoding="utf-8", errors="ignore")
        (out / f"{f.stem}.txt").write_text(text, encoding="utf-8")
        total += len(text)
        if total >= max_bytes:
            break
    return out


def preprocess_corpus(
    text_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    vocab_size: int = 2048,
    tokenizer: str | os.PathLike[str] | None = None,
) -> Path:
    """Text files -> ``tokens.npy`` (one stream, documents separated by the EOD token), ``tokenizer.json``.

    The tokenizer is a byte-level BPE trained on the corpus with the ``tokenizers`` package, or the
    one given by path (no downloads).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    files = sorted(str(p) for p in Path(text_dir).rglob("*") if p.is_file())
    if not files:
        raise ValueError(f"no text files under {text_dir}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer is not None:
        tok = Tokenizer.from_file(str(tokenizer))
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=["<eod>"],
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tok.train(files, trainer)
    eod = tok.token_to_id("<eod>")
    if eod is None:
        raise ValueError("the tokenizer has no <eod> token (documents are separated by it)")
    pieces = []
    for f in files:
        ids = tok.encode(Path(f).read_text(encoding="utf-8", errors="ignore")).ids
        pieces.append(np.asarray(ids, dtype=np.int32))
        pieces.append(np.asarray([eod], dtype=np.int32))
    tokens = np.concatenate(pieces)
    np.save(out / "tokens.npy", tokens.astype(np.uint16 if tok.get_vocab_size() < 65536 else np.int32))
    tok.save(str(out / "tokenizer.json"))
    (out / "meta.json").write_text(
        json.dumps({"vocab_size": tok.get_vocab_size(), "eod": eod, "tokens": int(len(tokens)), "documents": len(files)})
    )
    return out


class TokenDataset:
    """Fixed-length windows of a token stream with Pangu's EOD reset: position ids restart and
    attention does not cross a document boundary."""

    def __init__(self, data_dir: str | os.PathLike[str], seq_length: int) -> None:
        d = Path(data_dir)
        self.tokens = np.load(d / "tokens.npy", mmap_mode="r")
        meta = json.loads((d / "meta.json").read_text())
        self.eod, self.vocab_size = int(meta["eod"]), int(meta["vocab_size"])
        self.seq = seq_length
        self.n = len(self.tokens) // seq_length
        if self.n == 0:
            raise ValueError(f"{d}: {len(self.tokens)} tokens are fewer than one sequence of {seq_length}")

    def __len__(self) -> int:
        return self.n

    def batch(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        s = self.seq
        ids = np.stack([np.asarray(self.tokens[r * s : (r + 1) * s], dtype=np.int64) for r in rows])
        # document index of each token: a new document starts after an EOD
        doc = np.concatenate([np.zeros((len(rows), 1), np.int64), np.cumsum(ids[:, :-1] == self.eod, axis=1)], axis=1)
        starts = np.maximum.accumulate(np.where(np.diff(doc, prepend=-1, axis=1) != 0, np.arange(s), 0), axis=1)
        pos = np.arange(s) - starts
        causal = np.tril(np.ones((s, s), dtype=bool))
        mask = (doc[:, :, None] == doc[:, None, :]) & causal
        return {
            "input_ids": torch.from_numpy(ids),
            "position_id": torch.from_numpy(pos),
            "attention_mask": torch.from_numpy(mask),
        }


# ---- the parties --------------------------------------------------------------------------------


@dataclass
class TrainConfig(TrainOptions):
    log_every: int = 10
    compress: bool = False  # the YAML's codecs on hidden states and their gradients
    embedding_dp: bool = False
    deepspeed: bool = True  # party B's backbone under DeepSpeed (the YAML's config)
    lr: float | None = None
    zero_stage: int | None = None  # party B: the DeepSpeed config's ZeRO stage instead of the YAML's


def _yaml(name: str, train: TrainConfig, *, drop_deepspeed: bool = False, extra: dict[str, Any] | None = None) -> FLYamlData:
    data = FLYamlData(YAMLS / name)
    raw = dict(data.raw)
    ds = data.deepspeed_config()
    raw.pop("deepspeed", None)
    if ds is not None and not drop_deepspeed:
        if train.zero_stage is not None:
            ds = {**ds, "zero_optimization": {**ds.get("zero_optimization", {}), "stage": train.zero_stage}}
        raw["deepspeed"] = ds
    if train.ckpt_dir is not None:
        raw["ckpt_path"] = str(Path(train.ckpt_dir).resolve())
    if train.lr is not None:
        raw["opts"] = [{**o, "hyper_parameters": {**o["hyper_parameters"], "learning_rate": train.lr}} for o in raw["opts"]]
    if extra:
        raw.update(extra)
    return FLYamlData(raw)


class PartyA(Party[TrainConfig]):
    """Embedding + Head, holds the text."""

    role, peer = "leader", "follower"
    label, peer_label, manifest_tag = "party A", "party B", "A"
    logger = log

    def __init__(
        self, cfg: PanguConfig, data: TokenDataset, comm: Any, train: TrainConfig, eval_data: TokenDataset | None = None
    ) -> None:
        super().__init__(comm, train)
        self.cfg, self.data, self.eval_data = cfg, data, eval_data
        dev = self.device
        torch.manual_seed(train.seed)
        self.embedding = EmbeddingNet(cfg).to(dev)  # initialised on the CPU (same weights on any device)
        torch.manual_seed(train.seed + 2)
        self.head = HeadNet(cfg).to(dev)
        extra = (
            {
                "privacy": {
                    "embedding_dp": {
                        "mechanism": "gaussian",
                        "clip_norm": 1.0,
                        "noise_multiplier": 1.0,
                        "delta": 1e-5,
                        "seed": train.seed,
                    }
                }
            }
            if train.embedding_dp
            else None
        )
        self.emb_model = FLModel(_yaml("embedding.yaml", train, extra=extra), self.embedding)
        self.head_model = FLModel(_yaml("head.yaml", train), self.head)
        self.models.update(embedding=self.emb_model, head=self.head_model)
        self.schedule = _schedule(len(data), train)
        self.batch_size, self.steps_per_epoch = self.schedule.batch_size, self.schedule.steps_per_epoch
        self.total = self.schedule.total_steps
        self.local_peer: PartyB | None = None  # train_local: party B in this process, stepped in turn

    def compress_configs(self) -> dict[str, Any]:
        if not self.train.compress:
            return {"attention_mask": self.emb_model.get_compress_configs()["attention_mask"]}
        return {**self.emb_model.get_compress_configs(), **self.head_model.get_compress_configs()}

    def forward(self, rows: np.ndarray) -> None:
        self._batch = self.data.batch(rows)
        e = self.emb_model.forward_one_step(self._batch)
        self._word_table = e["word_table"]
        self.send({"embedding_table": e["embedding_table"], "attention_mask": e["attention_mask"]}, step=self.step)

    def head_step(self) -> float:
        hidden = self.receive()
        local = {
            "input_ids": self._batch["input_ids"],
            "position_id": self._batch["position_id"],
            "attention_mask": self._batch["attention_mask"],
            "word_table": self._word_table,
        }
        out = self.head_model.forward_one_step(local, hidden)
        scale = self.head_model.backward_one_step(local, hidden)["output"]
        self._word_grad = scale["word_table"]
        self.send({"output": {"hidden_states": scale["hidden_states"]}}, step=self.step)
        return float(out["output"].detach())

    def backward(self) -> None:
        bb_scale = self.receive()  # {"hidden_states": {"embedding_table": g}}
        self.emb_model.backward_one_step(self._batch, sens={**bb_scale, "output": {"word_table": self._word_grad}})
        self.advance()

    # ---- pipelined step (train.micro_batches > 1, splitlink.runtime.pipeline) ------------------------
    def pipeline_stages(self, rows: np.ndarray) -> list[list[pipeline.Stage]]:
        """Party A's stages of one pipelined step, in three groups (embedding forward, head, embedding
        backward) between which party B runs its forward and its backward; ``self._loss`` collects the
        step's loss (the micro-batches' losses weighted by their rows: the full batch's mean)."""
        parts = pipeline.split_rows(rows, self.train.micro_batches)
        w = pipeline.weights(parts)
        n, last = len(parts), len(parts) - 1
        batches: list[dict[str, Any]] = [{} for _ in parts]
        tables: list[Any] = [None] * n
        pend: list[Any] = [None] * n
        word_grads: list[Any] = [None] * n
        self._loss = 0.0

        def emb_forward(i: int, _: Any) -> dict[str, Any]:
            batches[i] = self.data.batch(parts[i])
            e = self.emb_model.forward_one_step(batches[i])
            tables[i], pend[i] = e["word_table"], self.emb_model.take_pending()
            return {
                "embedding_table": e["embedding_table"],
                "attention_mask": e["attention_mask"],
                pipeline.MICRO_KEY: pipeline.micro_tag(i, n, self.train.micro_batches),
            }

        def head(i: int, hidden: Any) -> dict[str, Any]:
            b = batches[i]
            local = {
                "input_ids": b["input_ids"],
                "position_id": b["position_id"],
                "attention_mask": b["attention_mask"],
                "word_table": tables[i],
            }
            out = self.head_model.forward_one_step(local, hidden)
            scale = self.head_model.backward_one_step(local, hidden, step=i == last, loss_weight=w[i])["output"]
            word_grads[i] = scale["word_table"]
            self._loss += w[i] * float(out["output"].detach())
            return {"output": {"hidden_states": scale["hidden_states"]}}

        def emb_backward(i: int, bb_scale: Any) -> None:
            self.emb_model.put_pending(pend[i])
            pend[i] = None
            self.emb_model.backward_one_step(
                batches[i], sens={**bb_scale, "output": {"word_table": word_grads[i]}}, step=i == last, loss_weight=w[i]
            )

        return [
            [pipeline.Stage("embedding forward", emb_forward, sends=True)],
            [pipeline.Stage("head", head, receives=True, sends=True)],
            [pipeline.Stage("embedding backward", emb_backward, receives=True)],
        ]

    def pipelined_step(self, rows: np.ndarray) -> float:
        stages = self.pipeline_stages(rows)
        count = len(pipeline.split_rows(rows, self.train.micro_batches))
        b = self.local_peer
        if b is None:
            pipeline.run_stages(self, [s for group in stages for s in group], count)
        else:
            b_stages = b.pipeline_stages(count)
            pipeline.run_local(
                [(self, stages[0][0]), (b, b_stages[0]), (self, stages[1][0]), (b, b_stages[1]), (self, stages[2][0])], count
            )
            b.finish_pipelined_step()
            b.advance()
        self.advance()
        return self._loss

    @torch.no_grad()
    def evaluate(self, max_batches: int = 20) -> float:
        """Mean next-token loss on the eval data (party B runs its backbone in eval mode)."""
        assert self.eval_data is not None
        losses = []
        n = min(len(self.eval_data) // self.batch_size, max_batches)
        for i in range(n):
            b = self.eval_data.batch(np.arange(i * self.batch_size, (i + 1) * self.batch_size))
            e = self.emb_model.eval_one_step(b)
            self.send({"embedding_table": e["embedding_table"], "attention_mask": e["attention_mask"]}, kind="eval")
            hidden = self.receive(kind="eval")["hidden_states"]
            dev = self.emb_model.device
            losses.append(
                float(
                    self.head(
                        to_device(hidden, dev),
                        to_device(b["input_ids"], dev),
                        e["word_table"],
                        to_device(b["position_id"], dev),
                        to_device(b["attention_mask"], dev),
                    )
                )
            )
        return float(np.mean(losses)) if losses else float("nan")

    def train_loop(self) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        b = self.local_peer
        for epoch, rows in self.schedule.steps(self.step):
            if self.train.micro_batches > 1:
                loss = self.pipelined_step(rows)
            else:
                self.forward(rows)
                if b is not None:
                    b.forward()
                loss = self.head_step()
                if b is not None:
                    b.backward()
                self.backward()
            self.record(kind="train", epoch=epoch, step=self.step, loss=loss, seconds=time.perf_counter() - t0)
            if self.step % self.train.log_every == 0 or self.step == self.total:
                log.info("epoch %d step %d/%d loss: %.6f", epoch, self.schedule.in_epoch(self.step), self.steps_per_epoch, loss)
            if self.eval_data is not None and b is None and self.schedule.epoch_done(self.step):
                ev = self.evaluate()
                log.info("epoch %d eval loss: %.6f (perplexity %.1f)", epoch, ev, float(np.exp(ev)))
                self.record(kind="eval", epoch=epoch, step=self.step, loss=ev, seconds=time.perf_counter() - t0)
        if b is None:
            self.send({}, kind="done")  # party B serves until told
        return self.history


class PartyB(Party[TrainConfig]):
    """The Transformer backbone (the computing centre). It serves party A's frames by their kind:
    "tensors" (a training step), "eval" (a batch in eval mode), "done"; it needs no schedule."""

    role, peer = "follower", "leader"
    label, peer_label, manifest_tag = "party B", "party A", "B"
    logger = log

    def __init__(self, cfg: PanguConfig, comm: Any, train: TrainConfig, total_steps: int | None = None) -> None:
        super().__init__(comm, train)
        self.cfg = cfg
        dev = self.device
        if train.deepspeed and dev.type == "cpu" and torch.cuda.is_available():
            raise ValueError(
                "party B: under DeepSpeed the backbone runs on DeepSpeed's accelerator (cuda on this "
                "machine); pass --no-deepspeed (train.deepspeed: false) to run it on the cpu"
            )
        torch.manual_seed(train.seed + 1)
        self.backbone = BackboneNet(cfg).to(dev)  # under DeepSpeed its engine places it (engine.device)
        self.model = FLModel(_yaml("backbone.yaml", train, drop_deepspeed=not train.deepspeed), self.backbone)
        self.models["backbone"] = self.model
        self.total = total_steps
        self._step_at_finish = False  # pipeline_stages: the optimizer step deferred to the step's end

    def compress_configs(self) -> dict[str, Any]:
        return self.model.get_compress_configs() if self.train.compress else {}

    def forward(self, got: dict[str, Any] | None = None) -> None:
        self._remote = got if got is not None else self.receive()
        out = self.model.forward_one_step(None, self._remote)
        self.send({"hidden_states": out["hidden_states"]}, step=self.step)

    def backward(self) -> None:
        # sens_scale: 1, or B's world size for a rank fed by a scattering party A (splitlink.runtime.ranks:
        # DeepSpeed averages the ranks' gradients, the global-batch mean needs their sum).
        k = self.sens_scale
        sens = self.receive()
        if k != 1.0:
            sens = {s: {n: g * k for n, g in inner.items()} for s, inner in sens.items()}
        g = self.model.backward_one_step(None, self._remote, sens=sens)["hidden_states"]["embedding_table"]
        self.send({"hidden_states": {"embedding_table": g / k if k != 1.0 else g}}, step=self.step)
        self.advance()

    def pipeline_stages(self, count: int) -> list[pipeline.Stage]:
        """Party B's stages of one pipelined step of ``count`` micro-batches: backbone forward, backbone
        backward. The optimizer steps once, in :meth:`finish_pipelined_step` once the step's frames are
        acknowledged (party A's embedding backward and its next step's first micro-batch do not wait for
        it, and it does not slow the last frame's sending); under DeepSpeed in the last micro-batch's
        backward instead (the engine's accumulation boundary)."""
        remote: list[Any] = [None] * count
        pend: list[Any] = [None] * count
        k = self.sens_scale
        defer = self._step_at_finish = pipeline.defers_step(self.model)

        def forward(i: int, got: Any) -> dict[str, Any]:
            pipeline.check_micro(got, i, self.train.micro_batches, self.name, self.peer_name)
            remote[i] = got
            out = self.model.forward_one_step(None, got)
            pend[i] = self.model.take_pending()
            return {"hidden_states": out["hidden_states"]}

        def backward(i: int, sens: Any) -> dict[str, Any]:
            if k != 1.0:
                sens = {s: {n: g * k for n, g in inner.items()} for s, inner in sens.items()}
            self.model.put_pending(pend[i])
            pend[i] = None
            scales = self.model.backward_one_step(None, remote[i], sens=sens, step=i == count - 1 and not defer)
            remote[i] = None
            g = scales["hidden_states"]["embedding_table"]
            return {"hidden_states": {"embedding_table": g / k if k != 1.0 else g}}

        return [
            pipeline.Stage("backbone forward", forward, receives=True, sends=True),
            pipeline.Stage("backbone backward", backward, receives=True, sends=True),
        ]

    def finish_pipelined_step(self) -> None:
        """The end of a pipelined step, once its frames are acknowledged: the optimizer step deferred from
        the last micro-batch's backward (:meth:`pipeline_stages`)."""
        if self._step_at_finish:
            self._step_at_finish = False
            self.model.optimizer_step()

    def train_loop(self) -> None:
        while True:
            kind, got = self.receive_any()
            if kind == "done":
                return
            if kind == "eval":
                out = self.model.eval_one_step(None, got)
                self.send({"hidden_states": out["hidden_states"]}, kind="eval")
            elif kind == "tensors" and pipeline.MICRO_KEY in got:
                count = pipeline.check_micro(dict(got), 0, self.train.micro_batches, self.name, self.peer_name)
                pipeline.run_stages(self, self.pipeline_stages(count), count, first=got, finish=self.finish_pipelined_step)
                self.advance()
            elif kind == "tensors":
                if self.train.micro_batches > 1:
                    pipeline.check_micro(got, 0, self.train.micro_batches, self.name, self.peer_name)
                self.forward(got)
                self.backward()
            else:
                raise ValueError(
                    f"party B: party A sent a {kind!r} frame; expected 'tensors', 'eval' or 'done' "
                    "(is it running the same program?)"
                )


def _schedule(n_rows: int, train: TrainConfig) -> Schedule:
    """Party A's schedule: full batches only, epochs and batch size by default from embedding.yaml."""
    ref = FLYamlData(YAMLS / "embedding.yaml")
    return Schedule(
        n_rows,
        train.batch_size or ref.batch_size,
        seed=train.seed,
        epochs=train.epochs or ref.epochs,
        max_steps=train.max_steps,
        drop_last=True,
    )


def train_local(
    cfg: PanguConfig, data: TokenDataset, train: TrainConfig, *, through_codecs: bool = False, device_b: str | None = None
) -> list[dict[str, Any]]:
    """Party A and party B in one process (in-process communicator), the seed's run_pangu_train_local.
    Party A runs on ``train.device``, party B on ``device_b`` (default: the same)."""
    from splitlink.channel import InProcessCommunicator, ServerConfig

    hub: dict[str, Any] = {}
    a_cfg, b_cfg = ServerConfig("leader", "127.0.0.1:1"), ServerConfig("follower", "127.0.0.1:2")
    a = PartyA(cfg, data, None, train)
    b = PartyB(cfg, None, train if device_b is None else dataclasses.replace(train, device=device_b))
    a.comm = InProcessCommunicator(a_cfg, b_cfg, a.compress_configs(), hub=hub, through_codecs=through_codecs)
    b.comm = InProcessCommunicator(b_cfg, a_cfg, b.compress_configs(), hub=hub, through_codecs=through_codecs)
    agree_locally(b, a)  # B loads first, as party B answered first in the seed's driver
    a.local_peer = b
    return a.train_loop()


def train_unsplit(cfg: PanguConfig, data: TokenDataset, train: TrainConfig) -> list[dict[str, Any]]:
    """The same model trained in one piece (same seeds, same AdamW settings): the reference curve."""
    dev = resolve_device(train.device)
    torch.manual_seed(train.seed)
    emb = EmbeddingNet(cfg).to(dev)
    torch.manual_seed(train.seed + 2)
    head = HeadNet(cfg).to(dev)
    torch.manual_seed(train.seed + 1)
    bb = BackboneNet(cfg).to(dev)
    ref = FLYamlData(YAMLS / "embedding.yaml").opts[0].hyper_parameters
    lr = train.lr if train.lr is not None else ref["learning_rate"]
    opt = torch.optim.AdamW([*emb.parameters(), *bb.parameters(), *head.parameters()], lr=lr, eps=ref.get("eps", 1e-8))
    history = []
    for step, (epoch, rows) in enumerate(_schedule(len(data), train).steps(), start=1):
        b = {k: v.to(dev) for k, v in data.batch(rows).items()}
        x, table, mask = emb(b["input_ids"], b["position_id"], b["attention_mask"])
        loss = head(bb(x, mask), b["input_ids"], table, b["position_id"], mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append({"kind": "train", "epoch": epoch, "step": step, "loss": float(loss.detach())})
    return history


class PanguSection(Section):
    """The run file's ``pangu`` section: a named size (``CONFIGS``) and any field of it overridden."""

    config: Literal["tiny", "350M", "2.6B"] = "tiny"
    vocab_size: int | None = Field(default=None, ge=2)
    hidden_size: int | None = Field(default=None, ge=1)
    num_layers: int | None = Field(default=None, ge=1)
    num_heads: int | None = Field(default=None, ge=1)
    seq_length: int | None = Field(default=None, ge=2)

    def build(self) -> PanguConfig:
        overrides = {k: v for k, v in self.model_dump().items() if k != "config" and v is not None}
        return dataclasses.replace(CONFIGS[self.config], **overrides)


def make_party(cfg: RunConfig) -> Party[TrainConfig]:
    """The party of a ``pangu_alpha`` run file: party A is the leader (holds the text), party B the follower."""
    model_cfg = cfg.section("pangu", PanguSection).build()
    train = cfg.train.options(TrainConfig)
    if cfg.party == "leader":
        assert cfg.data is not None
        data = TokenDataset(cfg.data, model_cfg.seq_length)
        if data.vocab_size > model_cfg.vocab_size:
            raise ValueError(
                f"the tokenizer of {cfg.data} has {data.vocab_size} tokens but the model's vocabulary "
                f"is {model_cfg.vocab_size}; set pangu.vocab_size"
            )
        eval_data = TokenDataset(cfg.eval_data, model_cfg.seq_length) if cfg.eval_data else None
        return PartyA(model_cfg, data, None, train, eval_data)
    return PartyB(model_cfg, None, train)


SCENARIO = register(
    Scenario(
        "pangu_alpha",
        make_party,
        needs_data=lambda party: party == "leader",
        summary="Pangu-alpha GPT: party A (embedding + head) + party B (backbone)",
        sections={"pangu": PanguSection},
    )
)


def plot_losses(split: list[float], unsplit: list[float], out: str | os.PathLike[str], title: str) -> Path:
    """The seed's figure: split and unsplit training loss over steps (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(range(1, len(unsplit) + 1), unsplit, color="tab:red", label="unsplit (one process, plain PyTorch)")
    ax.plot(range(1, len(split) + 1), split, color="tab:blue", linestyle="--", label="split (party A + party B)")
    ax.set_xlabel("step")
    ax.set_ylabel("next-token loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)
