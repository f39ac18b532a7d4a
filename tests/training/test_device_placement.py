"""Device placement on a CPU-only machine: choosing the device, and FLModel moving a batch and a peer's
tensors to its network's device. A second device type is needed to see a move; torch's ``meta`` device
(shapes and dtypes, no data) is one every build has, and it runs a forward pass. tests/gpu/ runs the
same placement with CUDA."""

from __future__ import annotations

import pytest
import torch
from split_nets import MLP_BOTTOM, MLP_TOP, fl_yaml, mlp_batch, mlp_parts

from splitlink import FLModel
from splitlink.model.device import default_device, module_device, resolve_device, to_device


def test_resolve_device() -> None:
    assert resolve_device(None) == default_device() == resolve_device("auto") == resolve_device(" AUTO ")
    assert default_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_refused_without_a_gpu_with_what_to_pass() -> None:
    with pytest.raises(ValueError, match="--device cpu"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="--device cpu"):
        resolve_device("cuda:1")


def test_to_device_moves_only_when_needed() -> None:
    x = torch.arange(6, dtype=torch.float64).view(2, 3)
    assert to_device(x, torch.device("cpu")) is x
    m = to_device(x, torch.device("meta"))
    assert m.device.type == "meta" and m.dtype == x.dtype and m.shape == x.shape
    assert to_device("not a tensor", torch.device("meta")) == "not a tensor"


def test_module_device() -> None:
    bottom, _, _ = mlp_parts()
    assert module_device(bottom) == torch.device("cpu")
    assert module_device(bottom.to("meta")).type == "meta"
    assert module_device(torch.nn.ReLU()) == torch.device("cpu")
    buffers_only = torch.nn.BatchNorm1d(3, affine=False).to("meta")
    assert module_device(buffers_only).type == "meta"


def test_flmodel_moves_batch_and_remote_inputs_to_its_network() -> None:
    _, _, top = mlp_parts()
    ft = FLModel(fl_yaml(MLP_TOP, "top", LS=1.0, HIN="h"), top.to("meta"))
    assert ft.device.type == "meta"
    b = mlp_batch(0)
    remote = {"h": torch.randn(16, 64, dtype=torch.float64)}  # the peer's precision differs: cast here too
    out = ft.forward_one_step({"y": b["y"]}, remote)
    assert out["loss"].device.type == "meta"
    prepared = ft._pending["inputs"]  # type: ignore[index]
    assert [t.device.type for t in prepared] == ["meta", "meta"]
    assert prepared[0].dtype == torch.float32 and prepared[0].requires_grad  # grad scaler input: a leaf
    assert prepared[1].dtype == b["y"].dtype
    # The peer's tensor is checked as received (before the move and cast): a changed dtype is named.
    with pytest.raises(ValueError, match="wrong shape or dtype"):
        ft.forward_one_step({"y": b["y"]}, {"h": torch.randn(16, 64)})
    ev = ft.eval_one_step({"y": b["y"]}, remote)
    assert next(iter(ev.values())).device.type == "meta"


def test_flmodel_on_cpu_keeps_inputs_and_returns_grad_scales_on_cpu() -> None:
    bottom, _, top = mlp_parts()
    fb = FLModel(fl_yaml(MLP_BOTTOM, "bottom", LS=1.0), bottom)
    ft = FLModel(fl_yaml(MLP_TOP, "top", LS=1.0, HIN="h"), top)
    b = mlp_batch(1)
    x = b["x"]
    h = fb.forward_one_step({"x": x})
    assert fb._pending["inputs"][0] is x  # type: ignore[index]  # no copy when already there
    ft.forward_one_step({"y": b["y"]}, h)
    scale = ft.backward_one_step({"y": b["y"]}, h)
    assert scale["loss"]["h"].device == torch.device("cpu") == fb.device == ft.device
