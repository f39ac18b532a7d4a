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

import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from splitlink.checkpoint import Manifest, ride_through_restarts
from splitlink.config import FLYamlData
from splitlink.examples import YAML_DIR
from splitlink.model import FLModel

__all__ = ["PanguConfig", "CONFIGS", "EmbeddingNet", "BackboneNet", "HeadNet", "TokenDataset", "preprocess_corpus",
           "stdlib_corpus", "PartyA", "PartyB", "train_local", "train_unsplit"]

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
        return x + self.mlp(self.ln2(x))


class EmbeddingNet(nn.Module):
    """Party A: word + position embeddings. Returns the embedding features, the word table (tied with
    the Head, stays at A) and the attention mask (passed on to B)."""

    def __init__(self, cfg: PanguConfig) -> None:
        super().__init__()
        self.word_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.seq_length, cfg.hidden_size)
        for e in (self.word_embedding, self.position_embedding):
            nn.init.normal_(e.weight, std=cfg.init_std)

    def forward(self, input_ids: torch.Tensor, position_id: torch.Tensor,
                attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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
        return self.backbone_ln(x)


class HeadNet(nn.Module):
    """Party A: the top query layer, then logits through the tied word table, next-token loss."""

    def __init__(self, cfg: PanguConfig) -> None:
        super().__init__()
        self.top_query_embedding = nn.Embedding(cfg.seq_length, cfg.hidden_size)
        nn.init.normal_(self.top_query_embedding.weight, std=cfg.init_std)
        self.top_query_layer = Block(cfg)
        self.top_query_ln = nn.LayerNorm(cfg.hidden_size)

    def logits(self, hidden_states: torch.Tensor, word_table: torch.Tensor, position_id: torch.Tensor,
               attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.top_query_layer(hidden_states, attention_mask, query=self.top_query_embedding(position_id))
        return self.top_query_ln(x) @ word_table.t()

    def forward(self, hidden_states: torch.Tensor, input_ids: torch.Tensor, word_table: torch.Tensor,
                position_id: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
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


def preprocess_corpus(text_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, vocab_size: int = 2048,
                      tokenizer: str | os.PathLike[str] | None = None) -> Path:
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
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<eod>"], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
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
    (out / "meta.json").write_text(json.dumps({"vocab_size": tok.get_vocab_size(), "eod": eod, "tokens": int(len(tokens)),
                                               "documents": len(files)}))
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
        ids = np.stack([np.asarray(self.tokens[r * s:(r + 1) * s], dtype=np.int64) for r in rows])
        # document index of each token: a new document starts after an EOD
        doc = np.concatenate([np.zeros((len(rows), 1), np.int64), np.cumsum(ids[:, :-1] == self.eod, axis=1)], axis=1)
        starts = np.maximum.accumulate(np.where(np.diff(doc, prepend=-1, axis=1) != 0, np.arange(s), 0), axis=1)
        pos = np.arange(s) - starts
        causal = np.tril(np.ones((s, s), dtype=bool))
        mask = (doc[:, :, None] == doc[:, None, :]) & causal
        return {"input_ids": torch.from_numpy(ids), "position_id": torch.from_numpy(pos),
                "attention_mask": torch.from_numpy(mask)}


# ---- the parties --------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    epochs: int | None = None
    batch_size: int | None = None
    seed: int = 0
    log_every: int = 10
    max_steps: int | None = None
    compress: bool = False          # the YAML's codecs on hidden states and their gradients
    embedding_dp: bool = False
    deepspeed: bool = True          # party B's backbone under DeepSpeed (the YAML's config)
    ckpt_every: int = 0
    ckpt_dir: str | None = None
    resume: bool = False
    lr: float | None = None
    metrics_path: str | None = None
    peer_timeout: float | None = 600.0  # seconds to wait for the peer's next message before failing
    run_id: str = "run"                 # checkpoints of one run: both parties must use the same


def _yaml(name: str, train: TrainConfig, *, drop_deepspeed: bool = False, extra: dict[str, Any] | None = None) -> FLYamlData:
    data = FLYamlData(YAMLS / name)
    raw = dict(data.raw)
    ds = data.deepspeed_config()
    raw.pop("deepspeed", None)
    if ds is not None and not drop_deepspeed:
        raw["deepspeed"] = ds
    if train.ckpt_dir is not None:
        raw["ckpt_path"] = str(Path(train.ckpt_dir).resolve())
    if train.lr is not None:
        raw["opts"] = [{**o, "hyper_parameters": {**o["hyper_parameters"], "learning_rate": train.lr}} for o in raw["opts"]]
    if extra:
        raw.update(extra)
    return FLYamlData(raw)


def _rows(n: int, batch: int, seed: int, epoch: int) -> list[np.ndarray]:
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return [order[i:i + batch] for i in range(0, n - batch + 1, batch)]  # full batches only


class PartyA:
    """Embedding + Head, holds the text."""

    role, peer = "leader", "follower"

    def __init__(self, cfg: PanguConfig, data: TokenDataset, comm: Any, train: TrainConfig,
                 eval_data: TokenDataset | None = None) -> None:
        self.cfg, self.data, self.comm, self.train, self.eval_data = cfg, data, comm, train, eval_data
        torch.manual_seed(train.seed)
        self.embedding = EmbeddingNet(cfg)
        torch.manual_seed(train.seed + 2)
        self.head = HeadNet(cfg)
        extra = {"privacy": {"embedding_dp": {"mechanism": "gaussian", "clip_norm": 1.0, "noise_multiplier": 1.0,
                                              "delta": 1e-5, "seed": train.seed}}} if train.embedding_dp else None
        self.emb_model = FLModel(_yaml("embedding.yaml", train, extra=extra), self.embedding)
        self.head_model = FLModel(_yaml("head.yaml", train), self.head)
        self.batch_size = train.batch_size or self.emb_model.yaml.batch_size
        self.epochs = train.epochs or self.emb_model.yaml.epochs
        self.steps_per_epoch = len(data) // self.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(data)} sequences are fewer than one batch of {self.batch_size}")
        self.total = self.epochs * self.steps_per_epoch
        if train.max_steps:
            self.total = min(self.total, train.max_steps)
        self.step = 0
        self.history: list[dict[str, Any]] = []

    def compress_configs(self) -> dict[str, Any]:
        if not self.train.compress:
            return {"attention_mask": self.emb_model.get_compress_configs()["attention_mask"]}
        return {**self.emb_model.get_compress_configs(), **self.head_model.get_compress_configs()}

    def schedule(self) -> Iterator[tuple[int, np.ndarray]]:
        step = self.step
        while step < self.total:
            epoch, first = divmod(step, self.steps_per_epoch)
            for rows in _rows(len(self.data), self.batch_size, self.train.seed, epoch)[first:]:
                if step >= self.total:
                    return
                yield epoch, rows
                step += 1

    def forward(self, rows: np.ndarray) -> None:
        self._batch = self.data.batch(rows)
        e = self.emb_model.forward_one_step(self._batch)
        self._word_table = e["word_table"]
        self.comm.send_tensors(self.peer, {"embedding_table": e["embedding_table"],
                                           "attention_mask": e["attention_mask"]}, step=self.step)

    def head_step(self) -> float:
        hidden = self.comm.receive(self.peer, self.train.peer_timeout)
        local = {"input_ids": self._batch["input_ids"], "position_id": self._batch["position_id"],
                 "attention_mask": self._batch["attention_mask"], "word_table": self._word_table}
        out = self.head_model.forward_one_step(local, hidden)
        scale = self.head_model.backward_one_step(local, hidden)["output"]
        self._word_grad = scale["word_table"]
        self.comm.send_tensors(self.peer, {"output": {"hidden_states": scale["hidden_states"]}}, step=self.step)
        return float(out["output"].detach())

    def backward(self) -> None:
        bb_scale = self.comm.receive(self.peer, self.train.peer_timeout)  # {"hidden_states": {"embedding_table": g}}
        self.emb_model.backward_one_step(self._batch, sens={**bb_scale, "output": {"word_table": self._word_grad}})
        self.step += 1
        if self.train.ckpt_every and self.step % self.train.ckpt_every == 0:
            self.save()

    def save(self) -> None:
        for m in (self.emb_model, self.head_model):
            m.step = self.step
            m.save_ckpt()
        self.manifest().record(self.step)  # both of A's sub-networks are durable at this step

    @torch.no_grad()
    def evaluate(self, max_batches: int = 20) -> float:
        """Mean next-token loss on the eval data (party B runs its backbone in eval mode)."""
        assert self.eval_data is not None
        losses = []
        n = min(len(self.eval_data) // self.batch_size, max_batches)
        for i in range(n):
            b = self.eval_data.batch(np.arange(i * self.batch_size, (i + 1) * self.batch_size))
            e = self.emb_model.eval_one_step(b)
            self.comm.send_tensors(self.peer, {"eval": {"embedding_table": e["embedding_table"],
                                                        "attention_mask": e["attention_mask"]}})
            hidden = self.comm.receive(self.peer, self.train.peer_timeout)["hidden_states"]
            losses.append(float(self.head(hidden, b["input_ids"], e["word_table"], b["position_id"], b["attention_mask"])))
        return float(np.mean(losses)) if losses else float("nan")

    def record(self, **row: Any) -> None:
        self.history.append(row)
        if self.train.metrics_path:
            with open(self.train.metrics_path, "a") as fh:
                fh.write(json.dumps(row) + "\n")

    def manifest(self) -> Manifest:
        return Manifest(Path(self.train.ckpt_dir) if self.train.ckpt_dir else self.emb_model.yaml.ckpt_path,
                        f"{self.train.run_id}.A")

    def checkpoint_steps(self) -> list[int]:
        a, b = set(self.emb_model.checkpoint_steps()), set(self.head_model.checkpoint_steps())
        return self.manifest().steps(lambda s: s in a and s in b)

    def restore(self, step: int) -> None:
        for m in (self.emb_model, self.head_model):
            m.load_ckpt(step=step)
        self.step = step
        log.info("party A: resumed at step %d", step)

    def agree_resume(self, rejoin: bool = False) -> None:
        """Sends the steps A holds checkpoints for; B answers with the newest step both hold (or -1).
        ``rejoin``: B restarted; A goes back to that step whatever ``resume`` says."""
        mine = self.checkpoint_steps() if self.train.resume or rejoin else []
        self.comm.send_tensors(self.peer, {"ckpt_steps": torch.tensor(mine, dtype=torch.int64)})
        step = int(self.comm.receive(self.peer, self.train.peer_timeout)["resume_step"])
        if step >= 0:
            self.restore(step)
        elif rejoin:
            raise RuntimeError("party A: party B restarted, but the parties hold no common checkpoint to continue from "
                               "(was it restarted with resume: true?); restart both parties with resume")
        elif self.train.resume:
            log.warning("party A: --resume but no checkpoint step both parties hold; starting from step 0")

    def run(self) -> list[dict[str, Any]]:
        """Trains to the end. If party B's process is replaced (crashed, restarted with resume), both go
        back to their newest common checkpoint and continue; this process keeps running."""
        if self.train.ckpt_every and self.step == 0 and not self.checkpoint_steps():
            self.save()  # step 0: a party killed before the first periodic checkpoint can still rejoin
        return ride_through_restarts("party A", self.agree_resume, self._train)

    def _train(self) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        for epoch, rows in self.schedule():
            self.forward(rows)
            loss = self.head_step()
            self.backward()
            self.record(kind="train", epoch=epoch, step=self.step, loss=loss, seconds=time.perf_counter() - t0)
            if self.step % self.train.log_every == 0 or self.step == self.total:
                log.info("epoch %d step %d/%d loss: %.6f", epoch, (self.step - 1) % self.steps_per_epoch + 1,
                         self.steps_per_epoch, loss)
            if self.eval_data is not None and (self.step % self.steps_per_epoch == 0 or self.step == self.total):
                ev = self.evaluate()
                log.info("epoch %d eval loss: %.6f (perplexity %.1f)", epoch, ev, float(np.exp(ev)))
                self.record(kind="eval", epoch=epoch, step=self.step, loss=ev, seconds=time.perf_counter() - t0)
        self.comm.send_tensors(self.peer, {"done": torch.ones(1)})
        return self.history


class PartyB:
    """The Transformer backbone (the computing centre)."""

    role, peer = "follower", "leader"

    def __init__(self, cfg: PanguConfig, comm: Any, train: TrainConfig, total_steps: int | None = None) -> None:
        self.cfg, self.comm, self.train = cfg, comm, train
        torch.manual_seed(train.seed + 1)
        self.backbone = BackboneNet(cfg)
        self.model = FLModel(_yaml("backbone.yaml", train, drop_deepspeed=not train.deepspeed), self.backbone)
        self.step = 0
        self.total = total_steps

    def compress_configs(self) -> dict[str, Any]:
        return self.model.get_compress_configs() if self.train.compress else {}

    def forward(self, got: dict[str, Any] | None = None) -> None:
        self._remote = got if got is not None else self.comm.receive(self.peer, self.train.peer_timeout)
        out = self.model.forward_one_step(None, self._remote)
        self.comm.send_tensors(self.peer, {"hidden_states": out["hidden_states"]}, step=self.step)

    def backward(self) -> None:
        sens = self.comm.receive(self.peer, self.train.peer_timeout)
        scale = self.model.backward_one_step(None, self._remote, sens=sens)
        self.comm.send_tensors(self.peer, {"hidden_states": {"embedding_table": scale["hidden_states"]["embedding_table"]}},
                               step=self.step)
        self.step += 1
        if self.train.ckpt_every and self.step % self.train.ckpt_every == 0:
            self.save()

    def save(self) -> None:
        self.model.step = self.step
        self.model.save_ckpt()
        self.manifest().record(self.step)

    def manifest(self) -> Manifest:
        return Manifest(Path(self.train.ckpt_dir) if self.train.ckpt_dir else self.model.yaml.ckpt_path,
                        f"{self.train.run_id}.B")

    def checkpoint_steps(self) -> list[int]:
        present = set(self.model.checkpoint_steps())
        return self.manifest().steps(lambda s: s in present)

    def restore(self, step: int) -> None:
        self.model.load_ckpt(step=step)
        self.step = step
        log.info("party B: resumed at step %d", step)

    def answer_resume(self, rejoin: bool = False) -> None:
        theirs = set(self.comm.receive(self.peer, self.train.peer_timeout)["ckpt_steps"].tolist())
        common = sorted(theirs & set(self.checkpoint_steps())) if self.train.resume or rejoin else []
        step = common[-1] if common else -1
        if step >= 0:
            self.restore(step)
        self.comm.send_tensors(self.peer, {"resume_step": torch.tensor(step)})
        if step < 0 and rejoin:
            hint = " (was it restarted with resume: true?)" if not theirs else ""
            raise RuntimeError(f"party B: party A restarted, but the parties hold no common checkpoint to continue "
                               f"from{hint}; restart both parties with resume")

    def run(self) -> None:
        """Serves steps until party A says it is done (party B does not need to know the schedule). If
        party A's process is replaced, both go back to their newest common checkpoint and continue."""
        if self.train.ckpt_every and self.step == 0 and not self.checkpoint_steps():
            self.save()  # step 0: a party killed before the first periodic checkpoint can still rejoin
        ride_through_restarts("party B", self.answer_resume, self._serve)

    def _serve(self) -> None:
        while True:
            got = self.comm.receive(self.peer, self.train.peer_timeout)
            if "done" in got:
                return
            if "eval" in got:
                out = self.model.eval_one_step(None, got["eval"])
                self.comm.send_tensors(self.peer, {"hidden_states": out["hidden_states"]})
                continue
            self.forward(got)
            self.backward()


def train_local(cfg: PanguConfig, data: TokenDataset, train: TrainConfig, *,
                through_codecs: bool = False) -> list[dict[str, Any]]:
    """Party A and party B in one process (in-process communicator), the seed's run_pangu_train_local."""
    from splitlink.channel import InProcessCommunicator, ServerConfig

    hub: dict[str, Any] = {}
    a_cfg, b_cfg = ServerConfig("leader", "127.0.0.1:1"), ServerConfig("follower", "127.0.0.1:2")
    a = PartyA(cfg, data, None, train)
    b = PartyB(cfg, None, train)
    a.comm = InProcessCommunicator(a_cfg, b_cfg, a.compress_configs(), hub=hub, through_codecs=through_codecs)
    b.comm = InProcessCommunicator(b_cfg, a_cfg, b.compress_configs(), hub=hub, through_codecs=through_codecs)
    mine = a.checkpoint_steps() if train.resume else []
    a.comm.send_tensors(a.peer, {"ckpt_steps": torch.tensor(mine, dtype=torch.int64)})
    b.answer_resume()
    step = int(a.comm.receive(a.peer, a.train.peer_timeout)["resume_step"])
    if step >= 0:
        a.restore(step)
    t0 = time.perf_counter()
    for epoch, rows in a.schedule():
        a.forward(rows)
        b.forward()
        loss = a.head_step()
        b.backward()
        a.backward()
        a.record(kind="train", epoch=epoch, step=a.step, loss=loss, seconds=time.perf_counter() - t0)
        if a.step % train.log_every == 0 or a.step == a.total:
            log.info("epoch %d step %d/%d loss: %.6f", epoch, (a.step - 1) % a.steps_per_epoch + 1, a.steps_per_epoch, loss)
    return a.history


def train_unsplit(cfg: PanguConfig, data: TokenDataset, train: TrainConfig) -> list[dict[str, Any]]:
    """The same model trained in one piece (same seeds, same AdamW settings): the reference curve."""
    torch.manual_seed(train.seed)
    emb = EmbeddingNet(cfg)
    torch.manual_seed(train.seed + 2)
    head = HeadNet(cfg)
    torch.manual_seed(train.seed + 1)
    bb = BackboneNet(cfg)
    ref = FLYamlData(YAMLS / "embedding.yaml").opts[0].hyper_parameters
    lr = train.lr if train.lr is not None else ref["learning_rate"]
    opt = torch.optim.AdamW([*emb.parameters(), *bb.parameters(), *head.parameters()], lr=lr, eps=ref.get("eps", 1e-8))
    a = PartyA.__new__(PartyA)  # reuse the schedule
    a.data, a.train, a.step = data, train, 0
    a.batch_size = train.batch_size or FLYamlData(YAMLS / "embedding.yaml").batch_size
    a.steps_per_epoch = len(data) // a.batch_size
    a.total = (train.epochs or FLYamlData(YAMLS / "embedding.yaml").epochs) * a.steps_per_epoch
    if train.max_steps:
        a.total = min(a.total, train.max_steps)
    history = []
    for epoch, rows in a.schedule():
        b = data.batch(rows)
        x, table, mask = emb(b["input_ids"], b["position_id"], b["attention_mask"])
        loss = head(bb(x, mask), b["input_ids"], table, b["position_id"], mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        a.step += 1
        history.append({"kind": "train", "epoch": epoch, "step": a.step, "loss": float(loss.detach())})
    return history



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
