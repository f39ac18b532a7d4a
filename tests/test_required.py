"""SPLITLINK_TEST_REQUIRE: a required optional dependency that is missing or broken fails, never skips."""

from __future__ import annotations

import importlib

import pytest
import required


def test_missing_skips_unless_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    monkeypatch.delenv(required.ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="deepspeed is not installed"):
        required.require_deepspeed()
    monkeypatch.setenv(required.ENV, " deepspeed ,")
    with pytest.raises(pytest.fail.Exception, match="deepspeed is required .*SPLITLINK_TEST_REQUIRE"):
        required.require_deepspeed()


def test_installed_but_broken_always_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())

    def broken(name: str) -> None:
        raise AttributeError("module 'torch' has no attribute 'something_removed'")

    monkeypatch.setattr(importlib, "import_module", broken)
    monkeypatch.delenv(required.ENV, raising=False)
    with pytest.raises(pytest.fail.Exception, match="installed but cannot be imported .*AttributeError"):
        required.require_deepspeed()


def test_unknown_name_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(required.ENV, "deepspeed,deepsped")
    with pytest.raises(ValueError, match="'deepsped', which the test suite does not know; known: deepspeed"):
        required.required()
