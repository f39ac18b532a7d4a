"""Optimizers built from YAML: torch's fused kernels where they compute what torch's default
implementation computes (equal up to rounding), and the user's explicit choice otherwise."""

from __future__ import annotations

import copy

import pytest
import torch
from split_nets import MLP_BOTTOM, MLP_TOP, fl_yaml, mlp_batch, mlp_parts

from splitlink import FLModel
from splitlink.optim import FTRL, build_optimizer


def _steps(
    opt_cls: type[torch.optim.Optimizer], kw: dict[str, object], fused: bool | None, size: int, n: int = 30
) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    p = torch.nn.Parameter(torch.randn(size, generator=gen))
    opt = opt_cls([p], lr=1e-2, **kw) if fused is None else opt_cls([p], lr=1e-2, fused=fused, **kw)
    for _ in range(n):
        p.grad = torch.randn(size, generator=gen)
        opt.step()
    return p.detach()


@pytest.mark.parametrize(
    "opt_cls, kw",
    [
        (torch.optim.Adam, {}),
        (torch.optim.Adam, {"amsgrad": True, "weight_decay": 0.1}),
        (torch.optim.Adam, {"maximize": True}),
        (torch.optim.AdamW, {"weight_decay": 0.01}),
        (torch.optim.SGD, {}),
        (torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    ],
)
@pytest.mark.parametrize("size", [7, 257, 4096, 65537])
def test_fused_cpu_kernels_compute_torchs_default_update(
    opt_cls: type[torch.optim.Optimizer], kw: dict[str, object], size: int
) -> None:
    # The premise of building fused optimizers by default: the same update, differing at most by
    # rounding (the vectorised kernel may contract a multiply-add where the loop rounds twice).
    ref, fused = _steps(opt_cls, kw, None, size), _steps(opt_cls, kw, True, size)
    assert float((fused - ref).abs().max()) <= 1e-6 * float(ref.abs().max())


def test_build_optimizer_fuses_fp32_and_respects_explicit_choices() -> None:
    p32 = [torch.nn.Parameter(torch.zeros(3))]
    assert build_optimizer(torch.optim.Adam, p32, {"lr": 0.1}).defaults["fused"] is True
    assert build_optimizer(torch.optim.AdamW, p32, {"lr": 0.1}).defaults["fused"] is True
    assert build_optimizer(torch.optim.SGD, p32, {"lr": 0.1}).defaults["fused"] is True
    assert not build_optimizer(torch.optim.Adam, p32, {"lr": 0.1, "fused": False}).defaults["fused"]
    assert build_optimizer(torch.optim.Adam, p32, {"lr": 0.1, "foreach": True}).defaults["foreach"] is True
    assert not build_optimizer(torch.optim.Adam, p32, {"lr": 0.1, "foreach": True}).defaults["fused"]
    # bf16 parameters: the fused kernels compute in fp32, so other numbers: only when asked.
    pbf = [torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))]
    assert not build_optimizer(torch.optim.Adam, pbf, {"lr": 0.1}).defaults["fused"]
    assert build_optimizer(torch.optim.Adam, pbf, {"lr": 0.1, "fused": True}).defaults["fused"] is True
    # No fused implementation: the class as it is.
    assert isinstance(build_optimizer(FTRL, p32, {"lr": 0.1}), FTRL)
    assert not build_optimizer(torch.optim.RMSprop, p32, {"lr": 0.1}).defaults.get("fused")


def test_flmodel_yaml_optimizers_are_fused_and_train_like_torchs_default() -> None:
    # FLModel's fused optimizers against the same split with torch's default Adam (fused: false).
    bottom, _, top = mlp_parts(0, d_in=8, d_hidden=16, n_classes=3)
    fb = FLModel(fl_yaml(MLP_BOTTOM, LS=1.0), copy.deepcopy(bottom))
    ft = FLModel(fl_yaml(MLP_TOP, LS=1.0, HIN="h"), copy.deepcopy(top))
    assert all(o.defaults["fused"] is True for o in (*fb.optimizers, *ft.optimizers))
    plain = [
        FLModel(fl_yaml(MLP_BOTTOM.replace("{learning_rate", "{fused: false, learning_rate"), LS=1.0), copy.deepcopy(bottom)),
        FLModel(fl_yaml(MLP_TOP.replace("{learning_rate", "{fused: false, learning_rate"), LS=1.0, HIN="h"), copy.deepcopy(top)),
    ]
    assert not any(o.defaults["fused"] for m in plain for o in m.optimizers)
    for s in range(6):
        b = mlp_batch(s, batch=16, d_in=8, n_classes=3)
        for pb, pt in ((fb, ft), plain):
            h = pb.forward_one_step({"x": b["x"]})
            pt.forward_one_step({"y": b["y"]}, h)
            pb.backward_one_step({"x": b["x"]}, sens=pt.backward_one_step({"y": b["y"]}, h))
    for a, b in ((fb, plain[0]), (ft, plain[1])):
        for (n, pa), (_, pb_) in zip(a.train_network.named_parameters(), b.train_network.named_parameters()):
            d, r = (pa - pb_).detach().abs().max(), pb_.detach().abs().max()
            assert float(d) <= 1e-6 * float(r), n
