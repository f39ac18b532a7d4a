"""N-party split training (criteo_nparty, in process) against the same model unsplit."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch

from splitlink.examples import criteo_nparty as cn
from splitlink.examples.wide_deep import WideDeepConfig
from splitlink.model import FLModel

CFG = WideDeepConfig(vocab_size=1000, emb_dim=4, deep_layers=(8,))
STEPS = 5


def parties(data: Any, n: int, **train: Any) -> tuple[cn.NLeader, list[cn.NFollower]]:
    leader_data, follower_data, _ = data
    t = cn.NPartyConfig(epochs=1, batch_size=100, progress=False, eval_fraction=0.0, max_steps=STEPS, log_every=1, **train)
    return cn.make_local(leader_data, cn.split_follower(follower_data, n), CFG, t)


def unsplit_run(leader: cn.NLeader, followers: list[cn.NFollower], aggregate: str) -> tuple[list[float], dict[str, Any]]:
    """The same networks (copied before any step) trained as one model: one loss (the top's loss plus every
    bottom's L2 term, which is what the YAMLs' optimizers differentiate), loss.backward(), each optimizer of
    the YAMLs over the same parameters (built by FLModel from the same YAML)."""
    nets = [copy.deepcopy(leader.bottom_net)] + [copy.deepcopy(f.net) for f in followers]
    top = copy.deepcopy(leader.top_net)
    model = cn.UnsplitModel(nets[0], nets[1:], top, aggregate)
    opts = [
        o
        for m, net in (
            (leader.models["bottom"], nets[0]),
            (leader.models["top"], top),
            *((f.models["bottom"], n) for f, n in zip(followers, nets[1:])),
        )
        for o in FLModel(m.yaml, net).optimizers
    ]
    losses = []
    for _, idx in leader.schedule.steps(0):
        feats = [(torch.from_numpy(leader.data.ids[idx]), torch.from_numpy(leader.data.wts[idx]))]
        feats += [(torch.from_numpy(f.data.ids[idx]), torch.from_numpy(f.data.wts[idx])) for f in followers]
        label = torch.from_numpy(np.ascontiguousarray(leader.data.labels[idx])).unsqueeze(1)
        for o in opts:
            o.zero_grad()
        loss, l2 = model(feats, label)
        (loss + l2).backward()
        for o in opts:
            o.step()
        losses.append(float(loss.detach()))
    state = {
        "leader_bottom": nets[0].state_dict(),
        "top": top.state_dict(),
        **{f"f{k}": n.state_dict() for k, n in enumerate(nets[1:])},
    }
    return losses, state


def split_state(leader: cn.NLeader, followers: list[cn.NFollower]) -> dict[str, Any]:
    return {
        "leader_bottom": leader.bottom_net.state_dict(),
        "top": leader.top_net.state_dict(),
        **{f"f{k}": f.net.state_dict() for k, f in enumerate(followers)},
    }


def max_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    return max(float((a[m][k].double() - b[m][k].double()).abs().max()) for m in a for k in a[m])


@pytest.mark.parametrize(("n", "aggregate"), [(3, "sum"), (3, "mean"), (2, "concat"), (1, "sum")])
def test_split_training_equals_the_unsplit_model(criteo_small: Any, n: int, aggregate: str) -> None:
    leader, followers = parties(criteo_small, n, aggregate=aggregate)
    ref_losses, ref_state = unsplit_run(leader, followers, aggregate)
    hist = leader.train_loop()
    losses = [r["wide_loss"] for r in hist if r["kind"] == "train"]
    assert len(losses) == STEPS == len(ref_losses)
    # fp32 throughout; the split run accumulates the same gradients in a different order (per-party
    # backward passes, gradients weighted by the YAMLs' sens and divided by the same power-of-two
    # loss_scale), so allow a few float32 ulps of parameters of size ~1: 1e-6.
    assert np.allclose(losses, ref_losses, rtol=0, atol=1e-6), (losses, ref_losses)
    assert max_diff(split_state(leader, followers), ref_state) <= 1e-6


def test_secure_sum_trains_like_the_plain_sum_within_the_quantisation_bound(criteo_small: Any) -> None:
    """Each step the leader's decoded sum is within the stated fixed-point bound of the float sum of the
    followers' embeddings; the whole run stays close to the plain (unmasked) sum's (reported)."""
    masked, followers = parties(criteo_small, 3, aggregate="sum", secure=True, frac_bits=16)
    plain, plain_followers = parties(criteo_small, 3, aggregate="sum")
    bound = masked.max_quantisation_error
    assert bound == 3 * 2.0**-17
    seen: list[dict[str, torch.Tensor]] = []
    gather = masked.gather

    def spy(aggs: Any, kind: str) -> Any:
        got = gather(aggs, kind)
        seen.append(got[0])
        return got

    masked.gather = spy  # type: ignore[method-assign]
    errors, loss_gaps = [], []
    for _, idx in masked.schedule.steps(0):
        with torch.no_grad():
            exact = {
                k: sum(f.net(*f.features(idx, "").values())[j].double() for f in followers) for j, k in enumerate(cn.EMBEDDINGS)
            }
        for f in followers:
            f.forward(idx)
        loss, _ = masked.train_step(idx)
        for f in followers:
            f.backward()
        for f in plain_followers:
            f.forward(idx)
        ref, _ = plain.train_step(idx)
        for f in plain_followers:
            f.backward()
        for k in cn.EMBEDDINGS:
            err = float((seen[-1][k].double() - exact[k]).abs().max())
            # the bound holds before the decoded sum is rounded to float32: one float32 ulp on top
            ulp = float(torch.finfo(torch.float32).eps) * float(exact[k].abs().max())
            assert err <= bound + ulp, (k, err, bound)
            errors.append(err)
        loss_gaps.append(abs(loss - ref))
    # the masked run differs from the plain one only by the quantisation, whose effect on the loss after
    # these few steps stays far below the loss's own step-to-step change (~1e-2)
    assert max(loss_gaps) < 1e-3, loss_gaps
    assert all(v.dtype == torch.float32 for v in seen[-1].values())
    print(
        f"secure sum: max |decoded - float sum| {max(errors):.3g} (bound {bound:.3g}); "
        f"max |loss - plain-sum loss| over {len(loss_gaps)} steps {max(loss_gaps):.3g}"
    )


def test_the_leader_inbox_holds_masked_frames_only(criteo_small: Any) -> None:
    """What actually reaches the leader's inbox (through the real frame codec) from a follower in a secure
    run: int64 ring elements, uncorrelated with that follower's embedding."""
    leader_data, follower_data, _ = criteo_small
    t = cn.NPartyConfig(epochs=1, batch_size=200, progress=False, eval_fraction=0.0, max_steps=1, aggregate="sum", secure=True)
    leader, followers = cn.make_local(leader_data, cn.split_follower(follower_data, 3), CFG, t, through_codecs=True)
    _, idx = next(iter(leader.schedule.steps(0)))
    f = followers[1]
    f.forward(idx)
    frame = leader.comm.receive(f.me, 5.0)
    emb = f.models["bottom"]._pending["outputs"][1].detach()
    got = frame["follower_deep_embedding"]
    assert got.dtype == torch.int64 and got.shape == emb.shape
    corr = torch.corrcoef(torch.stack([got.double().reshape(-1), emb.double().reshape(-1)]))[0, 1].abs().item()
    assert corr < 6 / np.sqrt(emb.numel()), corr  # > 6 standard deviations of independent values
    assert frame["follower_wide_embedding"].dtype == torch.int64
