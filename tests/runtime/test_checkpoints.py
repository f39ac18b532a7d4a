"""The checkpoint set: a step counts only when every sub-network (and the extra state) is durable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakes import FakeModel

from splitlink.runtime.checkpoints import CheckpointSet, Manifest, newest_common_step


def models(d: Path, **kw: object) -> dict[str, FakeModel]:
    loads: list[str] = []
    return {"embedding": FakeModel(d, "embedding", loads=loads), "head": FakeModel(d, "head", loads=loads, **kw)}  # type: ignore[arg-type]


def test_saved_steps_are_listed_and_load_restores_every_model_in_order(tmp_path: Path) -> None:
    ms = models(tmp_path)
    cs = CheckpointSet(ms, tmp_path, "run")
    for step, w in ((0, 0.5), (5, 1.5), (10, 2.5)):
        for m in ms.values():
            m.weight = w
        cs.save(step)
    assert cs.steps() == [0, 5, 10]
    for m in ms.values():
        m.weight = -1.0
    assert cs.load(5) == {}
    assert [m.weight for m in ms.values()] == [1.5, 1.5]
    assert ms["embedding"].loads == ["embedding", "head"]  # the order the set was given


def test_a_crash_between_two_models_saves_leaves_the_previous_step_the_newest(tmp_path: Path) -> None:
    ms = models(tmp_path, fail_at=10)
    cs = CheckpointSet(ms, tmp_path, "run")
    cs.save(5)
    with pytest.raises(OSError, match="disk full"):
        cs.save(10)
    assert ms["embedding"].checkpoint_steps() == [5, 10]  # the first model's file of step 10 is there...
    assert cs.steps() == [5]  # ...but step 10 was never recorded


def test_a_step_whose_files_went_missing_is_not_listed(tmp_path: Path) -> None:
    ms = models(tmp_path)
    cs = CheckpointSet(ms, tmp_path, "run")
    cs.save(1)
    cs.save(2)
    (tmp_path / "head" / f"step-{2:010d}.json").unlink()
    assert cs.steps() == [1]


def test_keep_prunes_files_and_manifest_together(tmp_path: Path) -> None:
    ms = models(tmp_path)
    cs = CheckpointSet(ms, tmp_path, "run", keep=2)
    for s in (1, 2, 3, 4):
        cs.save(s)
    assert cs.steps() == [3, 4]
    assert json.loads(cs.manifest.path.read_text())["steps"] == [3, 4]
    assert ms["head"].checkpoint_steps() == [3, 4]


def test_extra_state_is_part_of_the_step(tmp_path: Path) -> None:
    ms = models(tmp_path)
    cs = CheckpointSet(ms, tmp_path, "run", extra_state=True)
    cs.save(3, extra={"samples_seen": 300})
    cs.save(6, extra={"samples_seen": 600})
    assert cs.steps() == [3, 6] and cs.load(3) == {"samples_seen": 300}
    next(tmp_path.glob("state-run/step-*6.json")).unlink()
    assert cs.steps() == [3]
    with pytest.raises(ValueError, match="pass extra"):
        cs.save(9)
    with pytest.raises(TypeError):  # not JSON: fails before the step is recorded
        cs.save(9, extra={"x": object()})
    assert cs.steps() == [3]
    with pytest.raises(ValueError, match="without extra_state"):
        CheckpointSet(ms, tmp_path, "other").save(1, extra={})


def test_two_parties_sharing_a_directory_keep_separate_manifests(tmp_path: Path) -> None:
    a = CheckpointSet({"m": FakeModel(tmp_path, "a")}, tmp_path, "run.A")
    b = CheckpointSet({"m": FakeModel(tmp_path, "b")}, tmp_path, "run.B")
    a.save(4)
    b.save(8)
    assert (a.steps(), b.steps()) == ([4], [8])


def test_manifest_errors_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="run_id must be"):
        Manifest(tmp_path, "no spaces")
    m = Manifest(tmp_path, "run")
    m.path.write_text("{not json")
    with pytest.raises(ValueError, match="unreadable.*move it away"):
        m.steps()
    m.path.write_text(json.dumps({"run_id": "other", "steps": [1]}))
    with pytest.raises(ValueError, match="not the manifest of run 'run'"):
        m.steps()
    with pytest.raises(ValueError, match="at least one model"):
        CheckpointSet({}, tmp_path, "run")


def test_newest_common_step() -> None:
    assert newest_common_step([0, 5, 10], [0, 5]) == 5
    assert newest_common_step([0, 5], []) is None
    assert newest_common_step() is None
