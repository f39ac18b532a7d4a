"""Scenarios by name: the CLI and the runtime look them up and never import a scenario module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field

from splitlink.config import YamlConfigError
from splitlink.runtime import registry
from splitlink.runtime.registry import Scenario, UnknownScenarioError
from splitlink.runtime.run_config import load_run_config


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(UnknownScenarioError) as info:
        registry.get("criteo")
    msg = str(info.value)
    assert "unknown scenario 'criteo'" in msg and "criteo_wide_deep" in msg and "pangu_alpha" in msg
    assert isinstance(info.value, ValueError)  # the CLI reports ValueErrors as clean errors


def test_builtin_scenarios_resolve_lazily_by_name() -> None:
    assert {"criteo_wide_deep", "pangu_alpha"} <= set(registry.names())
    s = registry.get("pangu_alpha")
    assert isinstance(s, Scenario) and s.name == "pangu_alpha"
    assert s.needs_data("leader") and not s.needs_data("follower")
    assert registry.get("criteo_wide_deep").demo is not None


def test_registering_a_scenario_and_bad_lazy_targets() -> None:
    mine = registry.register(Scenario("test_only_scenario", make_party=lambda cfg: None))  # type: ignore[arg-type,return-value]
    assert registry.get("test_only_scenario") is mine and "test_only_scenario" in registry.names()
    with pytest.raises(ValueError, match="package.module:ATTRIBUTE"):
        registry.register_lazy("x", "no_colon")
    registry.register_lazy("test_wrong_object", "splitlink.util:free_ports")
    with pytest.raises(TypeError, match="should be the Scenario named 'test_wrong_object'"):
        registry.get("test_wrong_object")
    with pytest.raises(TypeError, match="takes a splitlink.runtime.registry.Scenario"):
        registry.register("not a scenario")  # type: ignore[arg-type]


def test_run_file_with_an_unknown_scenario_names_line_and_choices(tmp_path: Path) -> None:
    f = tmp_path / "run.yaml"
    f.write_text("party: leader\naddress: a\npeer_address: b\nenable_ssl: false\ndata: d\nscenario: wide\n")
    with pytest.raises(YamlConfigError) as info:
        load_run_config(f)
    # other tests of the session may have registered scenarios of their own: the built-in ones must be listed
    assert "line 6: scenario: 'wide' is not a known scenario; known: criteo_wide_deep, " in str(info.value)
    assert ", pangu_alpha" in str(info.value)


def test_run_file_data_requirement_comes_from_the_scenario(tmp_path: Path) -> None:
    f = tmp_path / "run.yaml"
    base = "address: a\npeer_address: b\nenable_ssl: false\n"
    f.write_text(base + "scenario: pangu_alpha\nparty: follower\n")
    assert load_run_config(f).data is None  # party B of the Pangu split holds no data
    f.write_text(base + "scenario: criteo_wide_deep\nparty: follower\n")
    with pytest.raises(YamlConfigError, match="data: missing"):
        load_run_config(f)


def test_importing_the_runtime_and_cli_loads_no_scenario() -> None:
    code = (
        "import sys, splitlink.cli, splitlink.runtime.party, splitlink.runtime.launch, "
        "splitlink.runtime.run_config, splitlink.runtime.registry as r; r.names(); "
        "bad = sorted(m for m in sys.modules if m.startswith('splitlink.examples')); "
        "assert not bad, bad"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


class _ToySection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    width: int = Field(default=4, ge=1)
    table: str | None = None


def test_a_scenario_declares_its_run_file_sections(tmp_path: Path) -> None:
    registry.register(
        Scenario(
            "test_sections_scenario",
            make_party=lambda cfg: None,  # type: ignore[arg-type,return-value]
            needs_data=lambda party: False,
            sections={"toy": _ToySection},
            path_keys=(("toy", "table"),),
        )
    )
    f = tmp_path / "run.yaml"
    base = "scenario: test_sections_scenario\nparty: leader\naddress: a\npeer_address: b\nenable_ssl: false\n"
    f.write_text(base)
    assert load_run_config(f).section("toy", _ToySection).width == 4  # absent: the section's defaults
    f.write_text(base + "toy: {width: 9, table: t.csv}\n")
    cfg = load_run_config(f)
    toy = cfg.section("toy", _ToySection)
    assert toy.width == 9 and toy.table == str(tmp_path / "t.csv")  # a declared path key, relative to the run file
    f.write_text(base + "toy:\n  width: 0\n  colour: red\n")
    with pytest.raises(YamlConfigError) as info:
        load_run_config(f)
    msg = str(info.value)
    assert "line 7: toy.width: 0 is out of range" in msg and "line 8: toy.colour: unknown key" in msg
    with pytest.raises(TypeError, match="no 'pangu' section"):
        cfg.section("pangu", _ToySection)


def test_one_scenarios_section_is_an_unknown_key_in_anothers_run_file(tmp_path: Path) -> None:
    f = tmp_path / "run.yaml"
    base = "scenario: pangu_alpha\nparty: follower\naddress: a\npeer_address: b\nenable_ssl: false\n"
    f.write_text(base + "model: {emb_dim: 8}\n")
    with pytest.raises(YamlConfigError, match="line 6: model: unknown key"):
        load_run_config(f)
    f.write_text(
        "scenario: pangu_alpha\nparty: follower\naddress: a\npeer_address: b\nenable_ssl: false\npangu: {num_layers: 3}\n"
    )
    from splitlink.examples.pangu import PanguSection

    assert load_run_config(f).section("pangu", PanguSection).build().num_layers == 3


def test_a_section_may_not_shadow_a_generic_key() -> None:
    from splitlink.runtime.run_config import run_config_model

    bad = Scenario("test_shadowing", make_party=lambda cfg: None, sections={"train": _ToySection})  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError, match="section 'train' that is a generic run-file key"):
        run_config_model(bad)
