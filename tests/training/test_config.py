"""FLYamlData: the seed scenarios' YAML loads; every broken file gets its precise error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from splitlink import CompressConfig, FLYamlData, YamlConfigError

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).with_name("yaml_corpus")
EXPECTED = json.loads((CORPUS / "expected.json").read_text())
SEED_YAMLS = sorted(ROOT.glob("examples/*/yaml_files/*.yaml"))


def test_seed_scenario_yamls_are_present() -> None:
    names = {p.name for p in SEED_YAMLS}
    assert {
        "leader_top.yaml",
        "leader_bottom.yaml",
        "follower_bottom.yaml",
        "embedding.yaml",
        "backbone.yaml",
        "head.yaml",
    } <= names


@pytest.mark.parametrize("path", SEED_YAMLS, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_seed_yaml_loads(path: Path) -> None:
    data = FLYamlData(path)
    assert data.train_net_ins and data.train_net_outs
    assert data.ckpt_path.is_absolute()
    for name, cfg in data.compress_configs().items():
        assert isinstance(cfg, CompressConfig) and name


def test_leader_top_fields() -> None:
    d = FLYamlData(ROOT / "examples/splitnn_criteo/yaml_files/leader_top_label_dp.yaml")
    assert d.role == "leader"
    assert [i.name for i in d.train_net_ins][-1] == "label"
    assert d.eval_net_gt == "label" and d.label_dp_eps == 1.0 and d.embedding_dp_eps is None
    assert d.opts[0].type == "Adam" and d.opts[0].grads[0].sens == 1024.0
    assert d.grad_scalers[0].output.name == "loss"
    assert (d.epochs, d.batch_size, d.is_eval) == (20, 16000, True)
    cfg = d.compress_configs()["follower_deep_embedding"]
    assert (cfg.compress_type, cfg.bit_num) == ("min_max", 6)


def test_string_sens_stays_a_string() -> None:
    d = FLYamlData(ROOT / "examples/splitnn_pangu_alpha/yaml_files/embedding.yaml")
    assert [g.sens for g in d.opts[0].grads] == ["hidden_states", "output"]


def test_corpus_is_complete() -> None:
    assert sorted(EXPECTED) == sorted(p.name for p in CORPUS.glob("*.yaml"))
    assert len(EXPECTED) >= 15


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_broken_yaml_gets_its_precise_error(name: str) -> None:
    with pytest.raises(YamlConfigError) as info:
        FLYamlData(CORPUS / name)
    err = info.value
    got = [(p.line, p.path) for p in err.problems]
    assert got == [(line, path) for line, path, _ in EXPECTED[name]], str(err)
    for (line, path, fragment), p in zip(EXPECTED[name], err.problems):
        assert fragment in p.message
        assert f"line {line}: {path}" in str(err)
    assert str(CORPUS / name) in str(err)  # the message names the file


def test_hyper_parameters_section_is_optional_as_in_mindspore() -> None:
    # MindSpore Federated's schema marks hyper_parameters and each of its keys optional (epochs 1, batch_size 1,
    # is_eval False); a file without the section loads with those defaults.
    path = CORPUS / "valid" / "no_hyper_parameters.yaml"
    assert not any(line.startswith("hyper_parameters") for line in path.read_text().splitlines())
    d = FLYamlData(path)
    assert (d.epochs, d.batch_size, d.is_eval) == (1, 1, False)
    assert d.hyper_parameters.model_dump() == {"epochs": 1, "batch_size": 1, "is_eval": False}
    assert d.role == "leader" and d.compress_configs()["follower_deep_embedding"].bit_num == 6


@pytest.mark.parametrize(
    ("section", "want"),
    [
        ("hyper_parameters: {}\n", (1, 1, False)),
        ("hyper_parameters:\n  batch_size: 64\n", (1, 64, False)),
        ("hyper_parameters:\n  epochs: 3\n", (3, 1, False)),
        ("hyper_parameters:\n  is_eval: true\n", (1, 1, True)),
    ],
)
def test_each_hyper_parameter_is_optional(tmp_path: Path, section: str, want: tuple[int, int, bool]) -> None:
    (tmp_path / "h.yaml").write_text((CORPUS / "valid" / "no_hyper_parameters.yaml").read_text() + section)
    d = FLYamlData(tmp_path / "h.yaml")
    assert (d.epochs, d.batch_size, d.is_eval) == want


@pytest.mark.parametrize(
    ("section", "path", "fragment"),
    [
        ("hyper_parameters:\n", "hyper_parameters", "leave the section out for the defaults"),
        ("hyper_parameters:\n  epochs: true\n", "hyper_parameters.epochs", "wrong type (bool True); expected a valid integer"),
        ("hyper_parameters:\n  batch_size: 2.5\n", "hyper_parameters.batch_size", "wrong type (float 2.5)"),
        ("hyper_parameters:\n  epochs: 0\n", "hyper_parameters.epochs", "0 is out of range; allowed: an integer >= 1"),
        ("hyper_parameters:\n  is_eval: maybe\n", "hyper_parameters.is_eval", "expected a valid boolean"),
    ],
)
def test_given_hyper_parameters_are_still_checked(tmp_path: Path, section: str, path: str, fragment: str) -> None:
    (tmp_path / "h.yaml").write_text((CORPUS / "valid" / "no_hyper_parameters.yaml").read_text() + section)
    with pytest.raises(YamlConfigError) as info:
        FLYamlData(tmp_path / "h.yaml")
    [problem] = info.value.problems
    assert problem.path == path and fragment in problem.message, str(info.value)


def test_all_problems_reported_at_once() -> None:
    with pytest.raises(YamlConfigError) as info:
        FLYamlData(CORPUS / "many_problems.yaml")
    assert "(4 problems)" in str(info.value)


def test_mapping_and_text_sources(tmp_path: Path) -> None:
    base = {
        "role": "follower",
        "model": {"train_net": {"name": "n", "inputs": [{"name": "x"}], "outputs": [{"name": "y"}]}},
        "hyper_parameters": {"epochs": 1, "batch_size": 2},
    }
    d = FLYamlData(base)
    assert d.train_net.inputs[0].source == "local" and d.opts == []
    with pytest.raises(YamlConfigError, match=r"<mapping> \(1 problem\)"):
        FLYamlData({**base, "hyper_parameters": {"epochs": 0, "batch_size": 2}})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FLYamlData(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(YamlConfigError, match="must be a mapping"):
        FLYamlData(tmp_path / "list.yaml")


def test_deepspeed_section_inline_and_file(tmp_path: Path) -> None:
    text = (ROOT / "examples/splitnn_pangu_alpha/yaml_files/embedding.yaml").read_text()
    (tmp_path / "ds.json").write_text('{"zero_optimization": {"stage": 2}}')
    (tmp_path / "a.yaml").write_text(text + "deepspeed: ds.json\n")
    assert FLYamlData(tmp_path / "a.yaml").deepspeed_config() == {"zero_optimization": {"stage": 2}}
    (tmp_path / "b.yaml").write_text(text + "deepspeed:\n  zero_optimization:\n    stage: 3\n")
    assert FLYamlData(tmp_path / "b.yaml").deepspeed_config() == {"zero_optimization": {"stage": 3}}
    (tmp_path / "ds_bad.json").write_text("[1, 2]")
    (tmp_path / "d.yaml").write_text(text + "deepspeed: ds_bad.json\n")
    with pytest.raises(YamlConfigError, match="not a JSON object"):
        FLYamlData(tmp_path / "d.yaml")


def test_embedding_dp_options_are_checked(tmp_path: Path) -> None:
    text = (ROOT / "examples/splitnn_criteo/yaml_files/follower_bottom.yaml").read_text()
    (tmp_path / "g.yaml").write_text(text + "privacy:\n  embedding_dp:\n    mechanism: gaussian\n    noise_multiplier: 1.0\n")
    with pytest.raises(YamlConfigError) as info:
        FLYamlData(tmp_path / "g.yaml")
    assert "clip_norm: missing" in str(info.value) and "delta: missing" in str(info.value)
    (tmp_path / "s.yaml").write_text(text + "privacy:\n  embedding_dp:\n    eps: 1.0\n    clip_norm: 2.0\n")
    with pytest.raises(YamlConfigError, match="applies to mechanism: gaussian only"):
        FLYamlData(tmp_path / "s.yaml")
