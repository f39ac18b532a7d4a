"""Split training with parties on CUDA: placement (a CPU party with a GPU peer, both ways), the exchange
through pack/unpack onto the device, DeepSpeed ZeRO-2/3 in fp32 and bf16 against the plain split on
the GPU, and bitwise checkpoint/resume with the CUDA RNG. Skipped without CUDA (tests/conftest.py)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from split_nets import (
    GPT_BACKBONE,
    GPT_EMBEDDING,
    GPT_HEAD,
    MLP_BOTTOM,
    MLP_TOP,
    fl_yaml,
    gpt_batch,
    gpt_parts,
    mlp_batch,
    mlp_parts,
)
from torch import nn

from splitlink import CompressConfig, FLModel
from splitlink.channel import InProcessCommunicator, ServerConfig

pytestmark = pytest.mark.gpu


def mlp_split(bottom_dev: str, top_dev: str, steps: int, through: dict | None = None) -> list[float]:
    """Bottom (party A) on ``bottom_dev``, top (party B) on ``top_dev``; with ``through`` (compress
    configs) the tensors cross as frames (InProcessCommunicator(through_codecs=True)) and are received
    onto the receiver's device."""
    bottom, _, top = mlp_parts(seed=3)
    fb = FLModel(fl_yaml(MLP_BOTTOM, "bottom", LS=1.0), bottom.to(bottom_dev))
    ft = FLModel(fl_yaml(MLP_TOP, "top", LS=1.0, HIN="h"), top.to(top_dev))
    hub: dict = {}
    a, b = ServerConfig("a", "127.0.0.1:1"), ServerConfig("b", "127.0.0.1:2")
    ca = InProcessCommunicator(a, b, through or {}, hub=hub, through_codecs=through is not None)
    cb = InProcessCommunicator(b, a, through or {}, hub=hub, through_codecs=through is not None)
    losses = []
    for s in range(steps):
        batch = mlp_batch(s)
        x = batch["x"].pin_memory()  # a loader's pinned batch: moved non-blocking
        ca.send_tensors("b", dict(fb.forward_one_step({"x": x})))
        h = cb.receive("a", device=ft.device)
        assert h["h"].device == ft.device
        out = ft.forward_one_step({"y": batch["y"]}, h)
        assert out["loss"].device == ft.device
        scale = ft.backward_one_step({"y": batch["y"]}, h)
        assert scale["loss"]["h"].device == ft.device  # grad scales on the party's device
        cb.send_tensors("a", scale)
        fb.backward_one_step({"x": x}, sens=ca.receive("b", device=fb.device))
        losses.append(float(out["loss"]))
    return losses


@pytest.mark.parametrize(("bottom_dev", "top_dev"), [("cpu", "cuda"), ("cuda", "cpu"), ("cuda", "cuda")])
def test_mlp_split_with_parties_on_cpu_and_gpu_tracks_the_cpu_run(bottom_dev: str, top_dev: str) -> None:
    ref = mlp_split("cpu", "cpu", 8)
    got = mlp_split(bottom_dev, top_dev, 8)
    # CPU and GPU kernels sum in other orders (fp32: ~1e-7 relative per operation); over 8 Adam steps
    # the losses drift apart by ~1e-6 relative. 1e-4 leaves room; a missing gradient or a wrong
    # device copy moves the loss curve by far more.
    for a, r in zip(got, ref):
        assert abs(a - r) <= 1e-4 * abs(r), (got, ref)
    assert got[-1] < got[0]


def test_mlp_split_through_8bit_frames_onto_the_gpu_trains() -> None:
    cfg = {"h": CompressConfig("min_max", bit_num=8)}
    got = mlp_split("cpu", "cuda", 12, through=cfg)
    ref = mlp_split("cpu", "cpu", 12, through=cfg)
    # 8-bit activations: the codes may differ where a value sits on a rounding boundary (GPU vs CPU
    # fp32 rounding), one step of 1/255 of the range; the curves agree to ~1e-3.
    for a, r in zip(got, ref):
        assert abs(a - r) <= 1e-2 * abs(r), (got, ref)
    assert got[-1] < got[0]


def run_gpt(
    backbone_ds: dict | None, steps: int, emb_dev: str = "cpu", head_dev: str = "cpu", bb_dev: str = "cuda"
) -> list[float]:
    emb, bb, head = (copy.deepcopy(p) for p in gpt_parts(seed=5))
    fe = FLModel(fl_yaml(GPT_EMBEDDING, "embedding"), emb.to(emb_dev))
    fb = FLModel(fl_yaml(GPT_BACKBONE, "backbone"), bb.to(bb_dev), deepspeed_config=backbone_ds)
    fh = FLModel(fl_yaml(GPT_HEAD, "head"), head.to(head_dev))
    if backbone_ds is not None:
        assert fb.device.type == "cuda"  # the engine placed it
    losses = []
    for s in range(steps):
        batch = gpt_batch(s)
        e = fe.forward_one_step(batch)
        hidden = fb.forward_one_step(None, {"embedding_table": e["embedding_table"]})
        assert hidden["hidden_states"].device.type == "cuda"
        out = fh.forward_one_step({"input_ids": batch["input_ids"], "word_table": e["word_table"]}, hidden)
        losses.append(float(out["output"]))
        head_scale = fh.backward_one_step()
        bb_scale = fb.backward_one_step(sens=head_scale)
        fe.backward_one_step(sens={**bb_scale, **head_scale})
    return losses


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_backbone_on_gpu_fp32_tracks_the_plain_split(stage: int) -> None:
    pytest.importorskip("deepspeed")
    ref = run_gpt(None, 6, "cuda", "cuda", "cuda")
    got = run_gpt({"zero_optimization": {"stage": stage}, "train_micro_batch_size_per_gpu": 4}, 6)
    # Same fp32 arithmetic, other kernels and summation orders (CPU parties, ZeRO's flat buffers):
    # ~1e-6 relative per step; 1e-4 over 6 steps.
    for a, r in zip(got, ref):
        assert abs(a - r) <= 1e-4 * abs(r), (got, ref)
    assert got[-1] < got[0]


def test_deepspeed_backbone_on_gpu_bf16_tracks_fp32() -> None:
    pytest.importorskip("deepspeed")
    ref = run_gpt(None, 6, "cuda", "cuda", "cuda")
    got = run_gpt({"zero_optimization": {"stage": 2}, "bf16": {"enabled": True}, "train_micro_batch_size_per_gpu": 4}, 6)
    # bf16 keeps 8 significant bits; the CPU bf16 test bounds the cut gradients by 5%: so the losses.
    for a, r in zip(got, ref):
        assert abs(a - r) <= 5e-2 * abs(r), (got, ref)


class DropMLP(nn.Module):
    """Uses the CUDA RNG in every step (dropout), so a resume must restore it to be bitwise."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 64), nn.Dropout(0.3), nn.ReLU(), nn.Linear(64, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_checkpoint_resume_on_gpu_is_bitwise_with_the_cuda_rng(tmp_path: Path) -> None:
    def make(seed: int) -> tuple[FLModel, FLModel]:
        torch.manual_seed(seed)
        bottom = DropMLP().cuda()
        _, _, top = mlp_parts(seed=seed)
        y_b = fl_yaml(MLP_BOTTOM, "bottom", LS=1.0)
        y_t = fl_yaml(MLP_TOP, "top", LS=1.0, HIN="h")
        raw_b, raw_t = dict(y_b.raw), dict(y_t.raw)
        raw_b["ckpt_path"] = raw_t["ckpt_path"] = str(tmp_path)
        from splitlink import FLYamlData

        return FLModel(FLYamlData(raw_b), bottom), FLModel(FLYamlData(raw_t), top.cuda())

    def train(fb: FLModel, ft: FLModel, steps: range) -> list[float]:
        out = []
        for s in steps:
            b = mlp_batch(s)
            h = fb.forward_one_step({"x": b["x"]})
            loss = ft.forward_one_step({"y": b["y"]}, h)["loss"]
            fb.backward_one_step({"x": b["x"]}, sens=ft.backward_one_step({"y": b["y"]}, h))
            out.append(float(loss))
        return out

    torch.cuda.manual_seed_all(7)
    fb, ft = make(0)
    ref = train(fb, ft, range(8))
    ref_params = [p.detach().clone() for m in (fb.network, ft.network) for p in m.parameters()]
    torch.cuda.manual_seed_all(7)
    fb, ft = make(0)
    train(fb, ft, range(4))
    fb.save_ckpt()
    ft.save_ckpt()
    torch.cuda.manual_seed_all(12345)  # the resumed run must take the CUDA RNG from the checkpoint
    fb, ft = make(99)
    fb.load_ckpt()
    ft.load_ckpt()
    assert train(fb, ft, range(4, 8)) == ref[4:]
    got = [p for m in (fb.network, ft.network) for p in m.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(got, ref_params))
