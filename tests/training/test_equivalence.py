"""Split training equals unsplit training: same seed, same optimizer, FLModels passing tensors in-process."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from required import require_deepspeed
from split_nets import (
    GPT_BACKBONE,
    GPT_EMBEDDING,
    GPT_HEAD,
    MLP_BOTTOM,
    MLP_MIDDLE,
    MLP_TOP,
    fl_yaml,
    gpt_batch,
    gpt_parts,
    mlp_batch,
    mlp_parts,
)

from splitlink import FLModel

STEPS = 12


def assert_close_rel(a: torch.Tensor, b: torch.Tensor, rel: float, what: str) -> None:
    a = a.to(b.device)  # a GPU party's parameters against the CPU reference
    scale = max(float(b.abs().max()), 1e-12)
    err = float((a - b).abs().max()) / scale
    assert err <= rel, f"{what}: max relative difference {err:.3g} > {rel:g}"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|, computed in fp32."""
    return float((a.float().to(b.device) - b).abs().max()) / max(float(b.abs().max()), 1e-30)


def central_mlp(parts, three: bool, steps: int):
    bottom, middle, top = (copy.deepcopy(p) for p in parts)
    mods = [bottom, middle, top] if three else [bottom, top]
    # The same optimizer as the FLModels build from the YAML (fused: splitlink.optim.build_optimizer).
    opt = torch.optim.Adam([p for m in mods for p in m.parameters()], lr=1e-3, fused=True)
    losses = []
    for s in range(steps):
        b = mlp_batch(s)
        h = bottom(b["x"])
        if three:
            h = middle(h)
        loss = top(h, b["y"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, mods


@pytest.mark.parametrize("three", [False, True], ids=["2-way", "3-way"])
@pytest.mark.parametrize("loss_scale", [1.0, 1024.0])
def test_mlp_split_equals_central(three: bool, loss_scale: float) -> None:
    parts = mlp_parts(seed=3)
    ref_losses, ref_mods = central_mlp(parts, three, STEPS)

    bottom, middle, top = (copy.deepcopy(p) for p in parts)
    fb = FLModel(fl_yaml(MLP_BOTTOM, "bottom", LS=loss_scale), bottom)
    fm = FLModel(fl_yaml(MLP_MIDDLE, "middle", LS=loss_scale), middle) if three else None
    ft = FLModel(fl_yaml(MLP_TOP, "top", LS=loss_scale, HIN="h2" if three else "h"), top)
    losses = []
    for s in range(STEPS):
        b = mlp_batch(s)
        h = fb.forward_one_step({"x": b["x"]})  # follower -> leader ("sent")
        if fm is not None:
            h = {"h2": fm.forward_one_step(None, h)["h2"]}
        out = ft.forward_one_step({"y": b["y"]}, h)
        losses.append(out["loss"].item())
        scale = ft.backward_one_step({"y": b["y"]}, h)  # {"loss": {h: grad}}
        assert list(scale) == ["loss"]
        if fm is not None:
            mid_scale = fm.backward_one_step(sens={"loss": {"h2": scale["loss"]["h2"]}})
            scale = {"loss": {"h": mid_scale["h2"]["h"]}}
        assert fb.backward_one_step({"x": b["x"]}, sens=scale) == {}
    # Same operations, same fused optimizer; 1e-6 rather than bitwise because the split sums some
    # gradients in another order than the central graph (each party's backward is its own pass, e.g.
    # the residual's two paths into h, and the loss-scaled runs scale and unscale them).
    for a, r in zip(losses, ref_losses):
        assert abs(a - r) <= 1e-6 * abs(r), (losses, ref_losses)
    got = [bottom, middle, top] if three else [bottom, top]
    for m, r in zip(got, ref_mods):
        for (n, p), (_, q) in zip(m.named_parameters(), r.named_parameters()):
            assert_close_rel(p.detach(), q.detach(), 1e-6, n)
    assert fb.step == STEPS and ft.step == STEPS


def run_split_gpt(parts, steps: int, backbone_ds: dict | None = None, check=None, setup=None):
    """Trains the three-way split; ``check(hidden, out, head_scale, bb_scale)`` sees every step's tensors,
    ``setup(backbone FLModel)`` the backbone before training."""
    emb, bb, head = parts
    fe = FLModel(fl_yaml(GPT_EMBEDDING, "embedding"), emb)
    fb = FLModel(fl_yaml(GPT_BACKBONE, "backbone"), bb, deepspeed_config=backbone_ds)
    if setup is not None:
        setup(fb)
    fh = FLModel(fl_yaml(GPT_HEAD, "head"), head)
    losses = []
    for s in range(steps):
        batch = gpt_batch(s)
        e = fe.forward_one_step(batch)  # party A
        hidden = fb.forward_one_step(None, {"embedding_table": e["embedding_table"]})  # party B
        out = fh.forward_one_step({"input_ids": batch["input_ids"], "word_table": e["word_table"]}, hidden)
        losses.append(out["output"].item())
        head_scale = fh.backward_one_step()  # {"output": {...}}
        bb_scale = fb.backward_one_step(sens=head_scale)  # uses sens["output"]["hidden_states"]
        assert set(bb_scale) == {"hidden_states"}
        assert head_scale["output"]["input_ids"].abs().sum() == 0  # integer input: zero gradient
        if check is not None:
            check(hidden, out, head_scale, bb_scale)
        fe.backward_one_step(sens={**bb_scale, **head_scale})
    return losses, fe, fb, fh


def grad_norm(params) -> float:
    """L2 norm of the parameters' gradients, in fp64."""
    return math.sqrt(sum(float(p.grad.double().square().sum()) for p in params if p.grad is not None))


def central_gpt(parts, steps: int, grads: list | None = None, backbone_gas: int = 1, bb_grad_norms: list | None = None):
    """Unsplit training; ``grads`` (if given) receives each step's gradients at the cuts:
    {"embedding_table": d loss/d embedding output, "hidden_states": d loss/d backbone output};
    ``bb_grad_norms`` (if given) the L2 norm of the gradient each backbone optimizer step takes.

    ``backbone_gas`` > 1: the backbone accumulates that many micro-batches' gradients, each divided
    by ``backbone_gas`` (as DeepSpeed's gradient_accumulation_steps does), and steps once per group;
    the embedding and the head step on every micro-batch (their parties run no DeepSpeed)."""
    emb, bb, head = (copy.deepcopy(p) for p in parts)
    kw = dict(lr=1e-3, eps=1e-8, weight_decay=0.01, fused=True)  # as the FLModels build it
    eh_params = [p for m in (emb, head) for p in m.parameters()]
    opts = [torch.optim.AdamW(eh_params, **kw), torch.optim.AdamW(bb.parameters(), **kw)]
    losses = []
    for s in range(steps):
        batch = gpt_batch(s)
        x, table = emb(batch["input_ids"], batch["position_id"])
        hidden = bb(x)
        if grads is not None:
            x.retain_grad()
            hidden.retain_grad()
        loss = head(hidden, table, batch["input_ids"])
        opts[0].zero_grad()
        loss.backward()
        opts[0].step()
        if (s + 1) % backbone_gas == 0:
            if backbone_gas > 1:
                for p in bb.parameters():
                    p.grad.div_(backbone_gas)
            if bb_grad_norms is not None:
                bb_grad_norms.append(grad_norm(bb.parameters()))
            opts[1].step()
            opts[1].zero_grad()
        losses.append(loss.item())
        if grads is not None:
            grads.append({"embedding_table": x.grad, "hidden_states": hidden.grad})
    return losses, (emb, bb, head)


def compare_gpt(losses, ref_losses, mods, ref_mods, rel: float) -> None:
    for a, r in zip(losses, ref_losses):
        assert abs(a - r) <= rel * abs(r), (losses, ref_losses)
    for m, r in zip(mods, ref_mods):
        for (n, p), (_, q) in zip(m.named_parameters(), r.named_parameters()):
            assert_close_rel(p.detach(), q.detach(), rel, n)


def test_tiny_gpt_three_way_tied_embedding_equals_central() -> None:
    parts = gpt_parts(seed=5)
    ref_losses, ref_mods = central_gpt(parts, STEPS)
    mine = tuple(copy.deepcopy(p) for p in parts)
    losses, *_ = run_split_gpt(mine, STEPS)
    assert ref_losses[-1] < ref_losses[0]
    # 1e-6, not bitwise: the tied word table's two gradients (lookup and logits) are summed by the
    # embedding party's one backward pass, in another order than the central graph sums them.
    compare_gpt(losses, ref_losses, mine, ref_mods, 1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_tiny_gpt_backbone_under_deepspeed_zero_equals_central(stage: int) -> None:
    require_deepspeed()
    parts = gpt_parts(seed=5)
    ref_losses, ref_mods = central_gpt(parts, STEPS)
    mine = tuple(copy.deepcopy(p) for p in parts)
    ds = {"zero_optimization": {"stage": stage}, "train_micro_batch_size_per_gpu": 4}
    losses, fe, fb, fh = run_split_gpt(mine, STEPS, backbone_ds=ds)
    assert fb.engine is not None and fb.engine.zero_optimization_stage() == stage
    if stage == 3:  # parameters are partitioned: compare the gathered ones
        # and the process's torch.nn.functional.linear is still torch's (DeepSpeed's memory-efficient
        # linear would replace it for every other model in the process)
        assert torch.nn.functional.linear is torch._C._nn.linear
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(fb.engine.module.parameters())):
            gathered = {n: p.detach().clone() for n, p in fb.engine.module.named_parameters()}
        backbone = gpt_parts(seed=0)[1]
        backbone.load_state_dict(gathered)
        # ZeRO-3 gathers parameters in its own forward; eval_one_step runs through it.
        x = torch.randn(4, 16, 32)
        got = fb.eval_one_step(None, {"embedding_table": x})["hidden_states"]
        with torch.no_grad():  # on the engine's device (cuda on a GPU machine), as the engine computes
            want = backbone.to(got.device).eval()(x.to(got.device))
        assert torch.equal(got, want)
    else:
        backbone = fb.engine.module
    compare_gpt(losses, ref_losses, (mine[0], backbone, mine[2]), ref_mods, 1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("gas", [1, 2])
def test_bf16_backbone_talks_to_fp32_parties(gas: int) -> None:
    # Party B runs its backbone in bf16 (DeepSpeed bf16), party A in fp32: hidden states arrive as
    # bf16 and are computed on in fp32 by the head; their gradient goes back in bf16, the backbone's
    # input gradient in fp32. Training tracks the fp32 run to bf16 precision, and so does every
    # gradient sent across a cut (the loss alone would not notice a missing one: cutting the
    # backbone's gradient to the embedding moves it by 3.4e-3 relative). gas 2: the backbone
    # accumulates two micro-batches per step, as the reference does.
    require_deepspeed()
    parts = gpt_parts(seed=5)
    ref_grads: list = []
    ref_norms: list = []
    ref_losses, _ = central_gpt(parts, STEPS, ref_grads, backbone_gas=gas, bb_grad_norms=ref_norms)
    mine = tuple(copy.deepcopy(p) for p in parts)
    ds = {
        "zero_optimization": {"stage": 2},
        "bf16": {"enabled": True},
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": gas,
    }

    seen: list = []
    norms: list = []

    def check(hidden, out, head_scale, bb_scale) -> None:
        assert hidden["hidden_states"].dtype == torch.bfloat16
        assert out["output"].dtype == torch.float32
        assert head_scale["output"]["hidden_states"].dtype == torch.bfloat16
        assert bb_scale["hidden_states"]["embedding_table"].dtype == torch.float32
        # The gradients each party sends back, against the fp32 run's at the same cut and step. bf16
        # keeps 8 significant bits (2^-9 = 0.2% rounding per operation) and its weights drift from
        # the fp32 run's: measured 0.5-1.3% of the gradient's largest element over these 12 steps.
        # 5% is 4x that; a cut gradient is off by 100%, one missing the engine's scaling by 50% or more.
        ref = ref_grads[len(seen)]
        errs = {
            "hidden_states": rel_err(head_scale["output"]["hidden_states"], ref["hidden_states"]),
            "embedding_table": rel_err(bb_scale["hidden_states"]["embedding_table"], ref["embedding_table"]),
        }
        seen.append(errs)
        assert max(errs.values()) <= 5e-2, (len(seen), errs)

    def setup(fb: FLModel) -> None:  # the gradient each backbone step takes, as in the fp16 test
        fb.engine.optimizer.optimizer.register_step_pre_hook(
            lambda opt, args, kwargs: norms.append(grad_norm(p for g in opt.param_groups for p in g["params"]))
        )

    losses, _, fb, _ = run_split_gpt(mine, STEPS, backbone_ds=ds, check=check, setup=setup)
    assert fb.engine.gradient_accumulation_steps() == gas
    assert losses[-1] < losses[0]
    for a, r in zip(losses, ref_losses):
        assert abs(a - r) <= 5e-3 * abs(r), (losses, ref_losses)
    assert len(seen) == STEPS
    # The L2 norm of the gradient each backbone step takes: measured within 0.17% of the reference's
    # (gas 1 and 2); 1% is 6x that, a gradient divided by the accumulation steps once too often is 50% off.
    assert len(norms) == len(ref_norms) == STEPS // gas
    for a, r in zip(norms, ref_norms):
        assert abs(a / r - 1) <= 1e-2, (norms, ref_norms)


def gathered(fm: FLModel) -> dict[str, torch.Tensor]:
    """The engine's full parameters (ZeRO-3 partitions them: gather first)."""
    params = list(fm.engine.module.named_parameters())
    if fm.engine.zero_optimization_stage() == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters([p for _, p in params]):
            return {n: p.detach().clone() for n, p in params}
    return {n: p.detach().clone() for n, p in params}


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_backbone_checkpoint_round_trip(tmp_path, stage: int) -> None:
    require_deepspeed()
    ds = {"zero_optimization": {"stage": stage}, "train_micro_batch_size_per_gpu": 4}
    parts = gpt_parts(seed=5)
    mine = tuple(copy.deepcopy(p) for p in parts)
    _, _, fb, _ = run_split_gpt(mine, 3, backbone_ds=ds)
    saved = fb.save_ckpt(tmp_path)
    assert saved.name == "step-0000000003" and saved.is_dir()
    assert not list(tmp_path.glob(".tmp-*"))
    other = gpt_parts(seed=11)[1]
    fb2 = FLModel(fl_yaml(GPT_BACKBONE, "backbone"), other, deepspeed_config=ds)
    before = gathered(fb2)
    fb2.load_ckpt(tmp_path)
    assert fb2.step == 3
    a, b = gathered(fb), gathered(fb2)
    assert a.keys() == b.keys() and all(p.numel() > 0 for p in a.values())
    assert any(not torch.equal(before[n], b[n]) for n in b)  # the load changed something
    for n in a:
        assert torch.equal(a[n], b[n]), n
    # Both continue identically (optimizer state restored too).
    x = torch.randn(4, 16, 32)
    g = torch.randn(4, 16, 32)
    for m in (fb, fb2):
        m.forward_one_step(None, {"embedding_table": x})
        m.backward_one_step(sens={"output": {"hidden_states": g}})
    a, b = gathered(fb), gathered(fb2)
    for n in a:
        assert torch.equal(a[n], b[n]), n


def cut_grad_errors(ref_grads: list, seen: list):
    """A ``check`` for run_split_gpt: each step's gradients sent across the cuts against ``ref_grads``'."""

    def check(hidden, out, head_scale, bb_scale) -> None:
        ref = ref_grads[len(seen)]
        seen.append(
            {
                "hidden_states": rel_err(head_scale["output"]["hidden_states"], ref["hidden_states"]),
                "embedding_table": rel_err(bb_scale["hidden_states"]["embedding_table"], ref["embedding_table"]),
            }
        )

    return check


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 2])
def test_backbone_gradient_accumulation_equals_central(stage: int) -> None:
    # Only the backbone's party accumulates (the others step every micro-batch), against central_gpt
    # doing the same. gas = 2: dividing by a power of two is exact, so the reference's division after
    # summing rounds as DeepSpeed's division before it; the 1e-5 tolerance is the other ZeRO tests'
    # (ZeRO flattens parameters and gradients into buckets, which moves which elements the fused
    # optimizer kernel's vector and scalar paths take).
    require_deepspeed()
    gas = 2
    parts = gpt_parts(seed=5)
    ref_grads: list = []
    ref_losses, ref_mods = central_gpt(parts, STEPS, ref_grads, backbone_gas=gas)
    mine = tuple(copy.deepcopy(p) for p in parts)
    ds = {"zero_optimization": {"stage": stage}, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": gas}
    seen: list = []
    losses, fe, fb, fh = run_split_gpt(mine, STEPS, backbone_ds=ds, check=cut_grad_errors(ref_grads, seen))
    assert fb.engine.gradient_accumulation_steps() == gas and fb.engine.global_steps == STEPS // gas
    # The gradients sent upstream are the full micro-batch gradients (the engine's 1/gas undone).
    assert max(max(e.values()) for e in seen) <= 1e-5, seen
    compare_gpt(losses, ref_losses, (mine[0], fb.engine.module, mine[2]), ref_mods, 1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("scale_power", "gas", "stage"),
    [
        pytest.param(16, 1, 2, id="overflowing-first-step"),
        pytest.param(10, 1, 2, id="no-overflow"),
        pytest.param(16, 2, 2, id="overflowing-first-step-gas2"),
        pytest.param(10, 2, 2, id="no-overflow-gas2"),
        pytest.param(10, 2, 0, id="no-overflow-gas2-zero0"),
    ],
)
def test_fp16_backbone_talks_to_fp32_parties(scale_power: int, gas: int, stage: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # DeepSpeed refuses fp16 on CPUs without fp16 arithmetic in oneDNN (AVX512-FP16/AMX-FP16); torch
    # computes fp16 on any CPU, so the check is lifted: the test must not depend on the instruction set.
    require_deepspeed()
    from deepspeed.accelerator import get_accelerator

    monkeypatch.setattr(get_accelerator(), "is_fp16_supported", lambda: True)
    parts = gpt_parts(seed=5)
    ref_grads: list = []
    ref_norms: list = []
    ref_losses, _ = central_gpt(parts, STEPS, ref_grads, backbone_gas=gas, bb_grad_norms=ref_norms)
    mine = tuple(copy.deepcopy(p) for p in parts)
    ds = {
        "zero_optimization": {"stage": stage},
        "fp16": {"enabled": True, "initial_scale_power": scale_power},
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": gas,
    }
    seen: list = []
    norms: list = []

    def setup(fb: FLModel) -> None:
        # The gradient each backbone step takes, unscaled, as the torch optimizer inside the engine sees it.
        fb.engine.optimizer.optimizer.register_step_pre_hook(
            lambda opt, args, kwargs: norms.append(grad_norm(p for g in opt.param_groups for p in g["params"]))
        )

    losses, _, fb, _ = run_split_gpt(mine, STEPS, backbone_ds=ds, check=cut_grad_errors(ref_grads, seen), setup=setup)
    assert fb.engine.gradient_accumulation_steps() == gas and fb.engine.zero_optimization_stage() == stage
    assert losses[-1] < losses[0]
    assert all(math.isfinite(v) for e in seen for v in e.values()) and all(math.isfinite(x) for x in losses)
    # fp16 keeps 11 significant bits (2^-12 = 0.02% rounding per operation): the gradients sent across
    # the cuts measured at most 0.28% of their max off the fp32 run's over the 12 steps (losses 1.1e-4
    # relative); 1% is 3.6x that, while a gradient still multiplied by the loss scale (2^10..2^16),
    # divided by the accumulation steps once too often (0.5x) or cut is off by >= 50%. The first
    # backbone step's micro-batches are computed at the initial weights in both runs: checked always.
    for k, e in enumerate(seen[:gas]):
        assert max(e.values()) <= 1e-2, (k, e)
    if scale_power == 16:
        # 2^16 overflows the first backward: DeepSpeed skips that step (the backbone's weights stay)
        # and halves the scale; the embedding must still get each batch's true gradient, not inf/NaN
        # (with accumulation the engine notices at the boundary: every micro-batch up to it overflows).
        assert fb.engine.skipped_steps >= 1
        return
    assert fb.engine.skipped_steps == 0  # like the fp32 run, step for step
    # The backbone's own steps: the L2 norm of the gradient each takes (its micro-batches accumulated,
    # divided by gas, unscaled), measured within 2.7e-4 of the reference's; 1% as above. The norm, not
    # the weights: AdamW's update is nearly blind to a constant factor on the gradient (DeepSpeed 0.19's
    # ZeRO-0 fp16 optimizer, left alone, steps with the gradient / the loss scale), and fp16 noise on
    # elements whose true gradient is 0 (the attention's key bias) moves them by +-lr per step.
    assert len(norms) == len(ref_norms) == STEPS // gas
    assert abs(norms[0] / ref_norms[0] - 1) <= 1e-2, (norms, ref_norms)
    if stage == 0:
        # DeepSpeed's ZeRO-0 fp16 optimizer (FP16_UnfusedOptimizer) steps its torch optimizer once with
        # zero gradients when it is built, so AdamW's bias correction makes its first update 0.74x plain
        # AdamW's: from there the runs part ways (4% at the cuts) for reasons of DeepSpeed's, not
        # splitlink's.
        return
    for k, e in enumerate(seen):
        assert max(e.values()) <= 1e-2, (k, e)
    for a, r in zip(losses, ref_losses):
        assert abs(a - r) <= 1e-3 * abs(r), (losses, ref_losses)
    for a, r in zip(norms, ref_norms):
        assert abs(a / r - 1) <= 1e-2, (norms, ref_norms)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 2])
def test_deepspeed_grad_scaler_with_its_own_sens_under_accumulation(stage: int) -> None:
    # A grad scaler whose terms differ from the optimizer's gets its input gradients from a backward of
    # its own through the engine's outputs, which DeepSpeed's per-output hooks divide by
    # gradient_accumulation_steps (they take any backward but engine.backward for a user's
    # loss.backward()) and, at ZeRO 0, refuse when it comes before engine.backward: FLModel must return
    # the plain vector-Jacobian product all the same.
    require_deepspeed()
    own = MLP_MIDDLE.replace(
        "grad_scalers:\n  - {inputs: [{name: h}], output: {name: h2}, sens: loss}",
        "grad_scalers:\n  - {inputs: [{name: h}], output: {name: h2}, sens: 3.0}",
    )
    assert own != MLP_MIDDLE
    middle = mlp_parts(seed=3)[1]
    ref = copy.deepcopy(middle)
    fm = FLModel(
        fl_yaml(own, "middle", LS=1.0),
        middle,
        deepspeed_config={
            "train_micro_batch_size_per_gpu": 16,
            "gradient_accumulation_steps": 2,
            "zero_optimization": {"stage": stage},
        },
    )
    g = torch.Generator().manual_seed(7)
    for step in range(2):  # the first accumulation: both micro-batches at the initial weights
        h = torch.randn(16, 64, generator=g)
        fm.forward_one_step(None, {"h": h})
        got = fm.backward_one_step(sens={"loss": {"h2": torch.randn(16, 64, generator=g)}})["h2"]["h"]
        x = h.clone().requires_grad_(True)
        y = ref(x)
        (want,) = torch.autograd.grad(y, x, torch.full_like(y, 3.0))
        # the same module, operations and order: equal but for summation order inside the kernels
        assert_close_rel(got, want, 1e-6, f"micro-batch {step}")
    assert fm.engine.global_steps == 1 and fm.engine.zero_optimization_stage() == stage


LOSS_OF_AN_OUTPUT = """
role: leader
model:
  train_net:
    name: top
    inputs: [{name: h, source: remote}, {name: y, source: local}]
    outputs: [{name: logits, destination: local}, {name: loss, destination: local}]
opts:
  - type: Adam
    grads: [{inputs: [{name: h}, {name: y}], output: {name: loss}, sens: 1.0}]
    hyper_parameters: {learning_rate: 1.e-3}
grad_scalers:
  - {inputs: [{name: h}], output: {name: loss}, sens: 2.0}
hyper_parameters: {epochs: 1, batch_size: 16}
"""


@pytest.mark.slow
def test_deepspeed_grad_scaler_through_an_output_the_loss_is_computed_from() -> None:
    # With a loss_fn the engine returns (logits, loss), both hooked by DeepSpeed, and the loss is
    # computed from the logits: the scaler's own backward (sens 2.0, not the optimizer's 1.0) starts
    # at the loss and passes the logits' hook too, which must be undone as well.
    require_deepspeed()
    dense = mlp_parts(seed=3)[2].dense
    ref = copy.deepcopy(dense)
    fm = FLModel(
        fl_yaml(LOSS_OF_AN_OUTPUT, "top"),
        dense,
        loss_fn=torch.nn.functional.cross_entropy,
        deepspeed_config={"train_micro_batch_size_per_gpu": 16, "gradient_accumulation_steps": 2},
    )
    for step in range(2):  # the first accumulation: both micro-batches at the initial weights
        b = mlp_batch(step, d_in=64)
        fm.forward_one_step({"y": b["y"]}, {"h": b["x"]})
        got = fm.backward_one_step()["loss"]["h"]
        x = b["x"].clone().requires_grad_(True)
        (want,) = torch.autograd.grad(2.0 * torch.nn.functional.cross_entropy(ref(x), b["y"]), x)
        # the same module and operations; 1e-6 for the order of the kernels' sums
        assert_close_rel(got, want, 1e-6, f"micro-batch {step}")
    assert fm.engine.global_steps == 1
