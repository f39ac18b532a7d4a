"""The N-party runtime in one process: the resume agreement over every peer, a lost follower."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from splitlink.examples import criteo_nparty as cn
from splitlink.examples.wide_deep import WideDeepConfig

CFG = WideDeepConfig(vocab_size=1000, emb_dim=4, deep_layers=(8,))


def make(data: Any, ckpt: Path, **kw: Any) -> tuple[cn.NLeader, list[cn.NFollower]]:
    leader_data, follower_data, _ = data
    t = cn.NPartyConfig(
        epochs=1,
        batch_size=100,
        progress=False,
        eval_fraction=0.0,
        log_every=1,
        ckpt_dir=str(ckpt),
        aggregate="sum",
        secure=True,
        **kw,
    )
    return cn.make_local(leader_data, cn.split_follower(follower_data, 3), CFG, t)


def test_resume_takes_the_newest_step_all_parties_hold(criteo_small: Any, tmp_path: Path) -> None:
    leader, followers = make(criteo_small, tmp_path, ckpt_every=2, max_steps=6)
    leader.train_loop()
    assert leader.checkpoint_steps() == [2, 4, 6]  # keep_checkpoints = 3
    state6 = {k: v.clone() for k, v in followers[0].net.state_dict().items()}
    # follower2 lost its newest checkpoint: every party must go back to step 4, the newest all hold
    gone = [f for f in (tmp_path / "follower2").rglob("step-0000000006*") if f.is_file()]
    assert gone
    for f in gone:
        f.unlink()
    leader2, followers2 = make(criteo_small, tmp_path, ckpt_every=2, max_steps=6, resume=True)
    assert [p.step for p in (leader2, *followers2)] == [4, 4, 4, 4]
    leader2.train_loop()  # replays steps 5, 6 with fresh masking keys: the same sums, so the same weights
    assert all(torch.equal(v, state6[k]) for k, v in followers2[0].net.state_dict().items())


def test_a_follower_that_sends_nothing_stops_the_step_naming_it(criteo_small: Any, tmp_path: Path) -> None:
    leader, followers = make(criteo_small, tmp_path, peer_timeout=0.3)
    _, idx = next(iter(leader.schedule.steps(0)))
    for f in (followers[0], followers[2]):  # follower2 is lost
        f.forward(idx)
    with pytest.raises(RuntimeError, match=r"no embeddings from 'follower2'.*no partial sum.*resume"):
        leader.train_step(idx)
    assert leader.step == 0
