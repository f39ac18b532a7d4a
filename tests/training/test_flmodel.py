"""FLModel behaviour: gradients exactly as the YAML says, clear errors, atomic checkpoints."""

from __future__ import annotations

import copy
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from split_nets import MLP_BOTTOM, MLP_TOP, fl_yaml, mlp_batch, mlp_parts
from torch import nn

from splitlink import CheckpointError, FLModel
from splitlink.optim import FTRL, build_optimizer


def count_backward_passes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every backward pass over the graph (torch.autograd.grad and torch.autograd.backward)."""
    calls: list[str] = []
    for name in ("grad", "backward"):
        real = getattr(torch.autograd, name)

        def spy(*a: object, _real: object = real, _name: str = name, **k: object) -> object:
            calls.append(_name)
            return _real(*a, **k)  # type: ignore[operator]

        spy.__wrapped__ = real  # type: ignore[attr-defined]
        monkeypatch.setattr(torch.autograd, name, spy)
    return calls


TWO_OPTS = """
role: follower
model:
  train_net:
    name: two
    inputs: [{name: x}]
    outputs: [{name: o1, destination: remote}, {name: o2, destination: local}]
opts:
  - type: SGD
    grads: [{inputs: [{name: x}], output: {name: o1}, sens: up}]
    params: [{name: wide}]
    hyper_parameters: {learning_rate: 0.5}
  - type: SGD
    grads: [{inputs: [{name: x}], output: {name: o2}, sens: 3.0}]
    params: [{name: deep}]
    hyper_parameters: {learning_rate: 0.25, loss_scale: 2.0}
hyper_parameters: {epochs: 1, batch_size: 4}
"""


class TwoHeads(nn.Module):
    def __init__(self, shared_b_in_o1: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.wide = nn.Linear(3, 3)
        self.deep = nn.Linear(3, 3)
        self.shared = shared_b_in_o1

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        o1 = self.wide(x) + (self.deep(x) if self.shared else 0)
        o2 = (self.deep(x) * self.wide.weight.sum()).sum()  # o2 always reaches a's parameters
        return o1, o2


@pytest.mark.parametrize("overlap", [False, True], ids=["disjoint", "overlapping"])
def test_each_optimizer_gets_exactly_its_own_gradient(overlap: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    net = TwoHeads(overlap)
    ref = copy.deepcopy(net)
    m = FLModel(fl_yaml(TWO_OPTS), net)
    x = torch.randn(4, 3)
    up = torch.randn(4, 3)
    calls = count_backward_passes(monkeypatch)
    m.forward_one_step({"x": x})
    m.backward_one_step(sens={"up": {"o1": up}})
    # Reference: opt 0 (a) gets d(o1 . up)/da only; opt 1 (b) gets d(3 * o2)/db / loss_scale 2.
    o1, o2 = ref(x)
    real = torch.autograd.grad.__wrapped__  # type: ignore[attr-defined]
    ga = real(o1, list(ref.wide.parameters()), up, retain_graph=True)
    gb = real(o2, list(ref.deep.parameters()), torch.tensor(3.0))
    # One SGD step by hand against torch's fused SGD kernel (FLModel's default): the same formula,
    # but the kernel may contract the multiply-add into an FMA (one rounding instead of two), so the
    # two differ by up to an ulp of |p| < 1 (6e-8); atol 1e-6 is far above that and far below a
    # wrong gradient (lr * |g| ~ 1e-2 here).
    for p, q, g in zip(net.wide.parameters(), ref.wide.parameters(), ga):
        assert torch.allclose(p, q - 0.5 * g, rtol=0, atol=1e-6)
    for p, q, g in zip(net.deep.parameters(), ref.deep.parameters(), gb):
        assert torch.allclose(p, q - 0.25 * g / 2.0, rtol=0, atol=1e-6)
    # o2 reaches wide's parameters (and, when overlapping, o1 reaches deep's): one pass per term set.
    assert len(calls) == 2


def test_disjoint_terms_take_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    bottom_text = MLP_BOTTOM.replace("LS", "1.0")
    net = mlp_parts()[0]
    m = FLModel(fl_yaml(bottom_text), net)
    calls = count_backward_passes(monkeypatch)
    h = m.forward_one_step({"x": mlp_batch(0)["x"]})["h"]
    m.backward_one_step(sens={"loss": {"h": torch.ones_like(h)}})
    assert len(calls) == 1


def test_wide_deep_style_disjoint_optimizers_use_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    text = TWO_OPTS

    class Disjoint(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wide, self.deep = nn.Linear(3, 3), nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.wide(x), (self.deep(x) ** 2).sum()

    m = FLModel(fl_yaml(text), Disjoint())
    calls = count_backward_passes(monkeypatch)
    for _ in range(3):
        m.forward_one_step({"x": torch.randn(4, 3)})
        m.backward_one_step(sens={"up": {"o1": torch.randn(4, 3)}})
    assert len(calls) == 3


def test_backward_without_forward_runs_it_and_detects_a_new_batch() -> None:
    bottom, _, top = mlp_parts()
    ft = FLModel(fl_yaml(MLP_TOP, LS=1.0, HIN="h"), top)
    b0, b1 = mlp_batch(0), mlp_batch(1)
    h0, h1 = {"h": torch.randn(16, 64)}, {"h": torch.randn(16, 64)}
    ref = copy.deepcopy(top)
    # Like with like: the optimizer FLModel builds from the YAML (torch's fused Adam), not torch's
    # default for-loop Adam. The two are not the same computation: the fused kernel orders the
    # parameter update's operations differently, so a few parameters in 10^4 land one ulp apart
    # after one step (on every CPU build, FMA or not), which elements depending on the gradients'
    # last bits, and those come from BLAS kernels chosen per CPU model. A bitwise comparison between
    # them passes or fails by chance; tests/training/test_optim.py compares the two with a tolerance.
    opt = build_optimizer(torch.optim.Adam, list(ref.parameters()), {"lr": 1e-3})
    assert [o.defaults["fused"] for o in ft.optimizers] == [opt.defaults["fused"]]
    ft.forward_one_step({"y": b0["y"]}, h0)  # forward on batch 0 ...
    scale = ft.backward_one_step({"y": b1["y"]}, h1)  # ... backward on batch 1 must use batch 1
    hg = h1["h"].clone().requires_grad_(True)
    loss = ref(hg, b1["y"])
    opt.zero_grad()
    loss.backward()
    assert torch.allclose(scale["loss"]["h"], hg.grad, atol=1e-7)
    opt.step()
    for p, q in zip(top.parameters(), ref.parameters()):
        assert torch.equal(p, q)
    assert ft.step == 1


def test_clear_errors() -> None:
    bottom, _, top = mlp_parts()
    with pytest.raises(ValueError, match=r"lists 2 input\(s\).*forward takes 1"):
        FLModel(fl_yaml(MLP_TOP, LS=1.0, HIN="h"), bottom)
    with pytest.raises(ValueError, match="2 optimizer.s. given but the YAML.s opts lists 1"):
        FLModel(
            fl_yaml(MLP_BOTTOM, LS=1.0),
            bottom,
            optimizers=[torch.optim.SGD(bottom.parameters(), lr=1), torch.optim.SGD(bottom.parameters(), lr=1)],
        )
    with pytest.raises(ValueError, match="match no trainable parameter"):
        FLModel(fl_yaml(TWO_OPTS.replace("{name: wide}", "{name: zzz}")), TwoHeads(False))
    ft = FLModel(fl_yaml(MLP_TOP, LS=1.0, HIN="h"), top)
    with pytest.raises(KeyError, match=r"input\(s\) 'h' missing"):
        ft.forward_one_step({"y": mlp_batch(0)["y"]})
    fb = FLModel(fl_yaml(MLP_BOTTOM, LS=1.0), bottom)
    x = mlp_batch(0)["x"]
    fb.forward_one_step({"x": x})
    with pytest.raises(KeyError, match=r"needs sens=\{'loss'"):
        fb.backward_one_step()
    fb.forward_one_step({"x": x})
    with pytest.raises(ValueError, match=r"has shape \(3,\) but output 'h' has shape \(16, 64\)"):
        fb.backward_one_step(sens={"loss": {"h": torch.ones(3)}})
    fb.forward_one_step({"x": x})
    with pytest.raises(KeyError, match="has no tensor for output 'h'"):
        fb.backward_one_step(sens={"loss": {"g": torch.ones(3)}})

    class Three(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return x, x, x

    with pytest.raises(ValueError, match=r"lists 1 output\(s\) \(h\) but the network returned 3"):
        FLModel(
            fl_yaml(MLP_BOTTOM.replace("hyper_parameters: {learning", "params: []\n    hyper_parameters: {learning"), LS=1.0),
            Three(),
            optimizers=[torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1)],
        ).forward_one_step({"x": x})


def test_loss_fn_eval_and_metrics() -> None:
    text = """
role: leader
model:
  train_net:
    name: clf
    inputs: [{name: x}, {name: y}]
    outputs: [{name: logits}, {name: loss}]
  eval_net:
    name: clf_eval
    inputs: [{name: x}]
    outputs: [{name: logits}]
    gt: y
opts:
  - type: SGD
    grads: [{inputs: [{name: x}, {name: y}], output: {name: loss}, sens: 1.0}]
    hyper_parameters: {learning_rate: 0.5}
hyper_parameters: {epochs: 1, batch_size: 8}
"""

    class Acc:
        def __init__(self) -> None:
            self.right = self.total = 0

        def update(self, logits: torch.Tensor, y: torch.Tensor) -> None:
            self.right += int((logits.argmax(1) == y).sum())
            self.total += len(y)

    torch.manual_seed(0)
    net = nn.Linear(4, 2)
    acc = Acc()
    m = FLModel(fl_yaml(text), net, loss_fn=nn.CrossEntropyLoss(), metrics=acc)
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()
    losses = []
    for _ in range(30):
        out = m.forward_one_step({"x": x, "y": y})
        assert list(out) == ["logits", "loss"]
        losses.append(out["loss"].item())
        m.backward_one_step()
    assert losses[-1] < 0.5 * losses[0]
    ev = m.eval_one_step({"x": x, "y": y})
    assert list(ev) == ["logits"] and not ev["logits"].requires_grad
    assert acc.total == 64 and acc.right >= 60


def test_remote_inputs_are_leaves_and_integer_inputs_get_zero_gradients() -> None:
    text = """
role: leader
model:
  train_net:
    name: t
    inputs: [{name: e, source: remote}, {name: ids, source: remote}]
    outputs: [{name: loss}]
opts:
  - type: SGD
    grads: [{inputs: [{name: e}], output: {name: loss}, sens: 1.0}]
    hyper_parameters: {learning_rate: 0.1}
grad_scalers: [{inputs: [{name: e}, {name: ids}], output: {name: loss}, sens: 1.0}]
hyper_parameters: {epochs: 1, batch_size: 8}
"""

    class T(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(3))

        def forward(self, e: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
            return (e * self.w).sum() + ids.float().sum() * 0

    upstream = nn.Linear(3, 3)
    e = upstream(torch.randn(2, 3))  # carries the peer's graph in-process
    m = FLModel(fl_yaml(text), T())
    scale = m.backward_one_step(None, {"e": e, "ids": torch.tensor([1, 2])})
    assert upstream.weight.grad is None  # the graph was cut: the peer gets gradients through the scale
    assert torch.equal(scale["loss"]["e"], torch.ones(2, 3))
    assert scale["loss"]["ids"].dtype == torch.float32 and not scale["loss"]["ids"].any()
    assert isinstance(scale["loss"], OrderedDict) and list(scale["loss"]) == ["e", "ids"]


def train_mlp(fb: FLModel, ft: FLModel, steps: range) -> list[float]:
    losses = []
    for s in steps:
        b = mlp_batch(s)
        h = fb.forward_one_step({"x": b["x"]})
        losses.append(ft.forward_one_step({"y": b["y"]}, h)["loss"].item())
        fb.backward_one_step({"x": b["x"]}, sens=ft.backward_one_step({"y": b["y"]}, h))
    return losses


def make_pair(tmp: Path, seed: int = 0) -> tuple[FLModel, FLModel]:
    bottom, _, top = mlp_parts(seed)
    text_b = MLP_BOTTOM.replace("LS", "1.0") + f"ckpt_path: {tmp}\n"
    text_t = MLP_TOP.replace("LS", "1.0").replace("HIN", "h") + f"ckpt_path: {tmp}\n"
    return FLModel(fl_yaml(text_b), bottom), FLModel(fl_yaml(text_t), top)


def test_checkpoint_resume_is_bitwise_identical(tmp_path: Path) -> None:
    fb, ft = make_pair(tmp_path)
    ref_losses = train_mlp(fb, ft, range(10))
    ref_params = [p.clone() for m in (fb.network, ft.network) for p in m.parameters()]

    fb, ft = make_pair(tmp_path)
    train_mlp(fb, ft, range(4))
    pb, pt = fb.save_ckpt(), ft.save_ckpt()
    assert pb == tmp_path / "bottom" / "step-0000000004.pt" and pt.is_file()
    del fb, ft
    fb, ft = make_pair(tmp_path, seed=99)  # different initial weights: all must come from the checkpoint
    fb.load_ckpt()
    ft.load_ckpt()
    assert fb.step == 4
    losses = train_mlp(fb, ft, range(4, 10))
    assert losses == ref_losses[4:]
    got = [p for m in (fb.network, ft.network) for p in m.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(got, ref_params))


def test_crash_mid_write_keeps_the_newest_good_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fb, ft = make_pair(tmp_path)
    train_mlp(fb, ft, range(2))
    good = fb.save_ckpt()
    train_mlp(fb, ft, range(2, 3))
    real_save = torch.save

    def crash(obj: object, f: object, *a: object, **k: object) -> None:
        real_save(obj, f, *a, **k)
        f.truncate(100)  # type: ignore[attr-defined]
        raise OSError("simulated power loss during the write")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="simulated"):
        fb.save_ckpt()
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(p.name for p in good.parent.iterdir()) == [good.name]  # no partial or temporary file
    fresh, _ = make_pair(tmp_path, seed=5)
    assert fresh.load_ckpt() == good and fresh.step == 2


def test_checkpoint_of_another_network_is_refused(tmp_path: Path) -> None:
    fb, ft = make_pair(tmp_path)
    path = ft.save_ckpt()
    with pytest.raises(CheckpointError, match=r"different network.*missing from the checkpoint: deep\.0\.bias"):
        fb.load_ckpt(path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        fb.load_ckpt(tmp_path / "junk.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        fb.load_ckpt(tmp_path / "empty")
    fb.save_ckpt(keep=1)
    train_mlp(fb, ft, range(1))
    fb.save_ckpt(keep=1)
    assert [p.name for p in (tmp_path / "bottom").iterdir()] == ["step-0000000001.pt"]
    fb.load_ckpt(phase="eval")


def test_ftrl_sparsity_and_progress() -> None:
    torch.manual_seed(0)
    x = torch.randn(512, 20)
    w_true = torch.zeros(20)
    w_true[:3] = torch.tensor([2.0, -1.5, 1.0])
    y = (x @ w_true > 0).float()
    w = nn.Parameter(torch.zeros(20))
    opt = FTRL([w], lr=0.5, l1=2.0, l2=0.0, initial_accum=0.1)
    first = None
    for _ in range(60):
        loss = nn.functional.binary_cross_entropy_with_logits(x @ w, y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.6 * first
    assert (w[:3].detach().sign() == w_true[:3].sign()).all()
    assert int((w.detach() == 0).sum()) >= 10  # L1 gives exact zeros
    with pytest.raises(ValueError, match="initial_accum"):
        FTRL([w], initial_accum=0)


def test_wrong_shape_or_dtype_from_the_peer_is_named() -> None:
    _, _, top = mlp_parts()
    ft = FLModel(fl_yaml(MLP_TOP, LS=1.0, HIN="h"), top)
    y = mlp_batch(0)["y"]
    ft.forward_one_step({"y": y}, {"h": torch.randn(16, 64)})
    ft.forward_one_step({"y": y[:8]}, {"h": torch.randn(8, 64)})  # a smaller last batch is fine
    with pytest.raises(
        ValueError,
        match=r"remote input 'h' from the peer has dtype torch.float32 and shape \(16, 32\), "
        r"but it had dtype torch.float32 and shape \(batch, 64\)",
    ):
        ft.forward_one_step({"y": y}, {"h": torch.randn(16, 32)})
    with pytest.raises(ValueError, match="has dtype torch.float64"):
        ft.forward_one_step({"y": y}, {"h": torch.randn(16, 64, dtype=torch.float64)})


def test_a_peers_bf16_activations_are_computed_on_in_this_networks_precision() -> None:
    # A bf16 backbone's hidden states reach an fp32 head: computed in fp32 (exactly as the fp32 copy
    # of the same values would be), the gradient sent back in the peer's bf16.
    _, _, top = mlp_parts()
    ref = copy.deepcopy(top)
    ft = FLModel(fl_yaml(MLP_TOP, LS=1.0, HIN="h"), top)
    y = mlp_batch(0)["y"]
    h16 = torch.randn(16, 64).to(torch.bfloat16)
    loss = ft.forward_one_step({"y": y}, {"h": h16})["loss"]
    assert loss.dtype == torch.float32
    h32 = h16.float().requires_grad_(True)
    want = ref(h32, y)
    want.backward()
    assert torch.equal(loss.detach(), want.detach())
    grad = ft.backward_one_step({"y": y}, {"h": h16})["loss"]["h"]
    assert grad.dtype == torch.bfloat16 and torch.equal(grad, h32.grad.to(torch.bfloat16))
    assert ft.eval_one_step({"y": y}, {"h": h16})["loss"].dtype == torch.float32
    # Still one dtype per peer tensor: a switch mid-run is named, not cast away.
    with pytest.raises(ValueError, match=r"has dtype torch.float32 .* but it had dtype torch.bfloat16"):
        ft.forward_one_step({"y": y}, {"h": torch.randn(16, 64)})
