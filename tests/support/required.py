"""Optional dependencies the suite may be told to require.

Run alone, a test whose optional dependency is not installed skips with the reason. With
``SPLITLINK_TEST_REQUIRE=<name>[,<name>...]`` in the environment (``make test`` sets it) such a test
fails instead: a broken or missing install must not silently drop the tests that need it. An
installed dependency that fails to import always fails the test, required or not.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import warnings
from types import ModuleType

import pytest

ENV = "SPLITLINK_TEST_REQUIRE"

# name -> how to install it
KNOWN: dict[str, str] = {
    "deepspeed": "the deepspeed extra: pip install splitlink[deepspeed]",
    "transformers": "the horizontal extra: pip install splitlink[horizontal]",
    "peft": "the horizontal extra: pip install splitlink[horizontal]",
}


def required() -> frozenset[str]:
    """The names in SPLITLINK_TEST_REQUIRE (comma separated); an unknown name is an error."""
    names = frozenset(n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip())
    unknown = sorted(names - KNOWN.keys())
    if unknown:
        raise ValueError(
            f"{ENV}={os.environ[ENV]!r} names {', '.join(map(repr, unknown))}, which the test suite "
            f"does not know; known: {', '.join(sorted(KNOWN))}"
        )
    return names


def require(name: str) -> ModuleType:
    """Imports ``name``; skips the test when it is not installed, unless SPLITLINK_TEST_REQUIRE names it."""
    if name not in KNOWN:
        raise ValueError(f"require({name!r}): add it to KNOWN in {__file__} first")
    if importlib.util.find_spec(name) is None:
        if name in required():
            pytest.fail(f"{name} is required ({ENV} names it) but is not installed; install {KNOWN[name]}", pytrace=False)
        pytest.skip(f"{name} is not installed ({KNOWN[name]})")
    try:
        # Its import touches deprecated torch APIs: the library's noise, not the test's failure.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            return importlib.import_module(name)
    except Exception as e:  # installed but broken: never a skip
        pytest.fail(
            f"{name} is installed but cannot be imported ({type(e).__name__}: {e}); reinstall {KNOWN[name]}", pytrace=False
        )


def require_deepspeed() -> ModuleType:
    """``deepspeed``, or a skip (a failure when SPLITLINK_TEST_REQUIRE includes deepspeed)."""
    return require("deepspeed")
