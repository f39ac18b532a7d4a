"""Scenarios by name: the CLI and the runtime look a scenario up here and never import its module.

A scenario module defines a :class:`Scenario` and registers it (``register(SCENARIO)``) when it is
imported. The built-in scenarios are listed below by name and "module:attribute" path and imported
only when first looked up, so ``splitlink train`` loads just the scenario its run file names (and
importing the library loads none). A third-party scenario registers itself, or is added with
:func:`register_lazy`.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel

    from splitlink.runtime.party import Party
    from splitlink.runtime.run_config import RunConfig

__all__ = ["Scenario", "UnknownScenarioError", "register", "register_lazy", "get", "names"]


def _every_party(party: str) -> bool:
    return True


@dataclass(frozen=True)
class Scenario:
    """A scenario: how to build a party of it from a run file, and what its run file must give."""

    name: str
    make_party: Callable[[RunConfig], Party[Any]]  # the party the run file names, communicator not yet set
    needs_data: Callable[[str], bool] = _every_party  # whether this party ("leader"/"follower") must give `data`
    summary: str = ""
    demo: Callable[..., Any] | None = None  # ``splitlink demo``, for the scenario that has one
    # The run file's sections of this scenario: top-level key -> a strict pydantic model, validated (with
    # line numbers) together with the generic keys; an absent section takes the model's defaults. Read
    # one back with ``RunConfig.section(key, Model)``.
    sections: Mapping[str, type[BaseModel]] = field(default_factory=dict)
    path_keys: tuple[tuple[str, ...], ...] = ()  # keys in those sections that are paths (relative to the run file)


class UnknownScenarioError(ValueError):
    """A scenario name nobody registered."""

    def __init__(self, name: object, known: list[str]) -> None:
        self.name, self.known = name, known
        super().__init__(f"unknown scenario {name!r}; known scenarios: {', '.join(known) or '(none)'}")


_BUILTIN: dict[str, str] = {
    "criteo_wide_deep": "splitlink.examples.wide_deep:SCENARIO",
    "wide_deep_nparty": "splitlink.examples.criteo_nparty:SCENARIO",
    "pangu_alpha": "splitlink.examples.pangu:SCENARIO",
}
_lazy: dict[str, str] = dict(_BUILTIN)
_registered: dict[str, Scenario] = {}
_lock = threading.Lock()


def register(scenario: Scenario) -> Scenario:
    """Adds ``scenario`` under its name (re-registering the same name replaces it); returns it."""
    if not isinstance(scenario, Scenario):
        raise TypeError(f"register() takes a splitlink.runtime.registry.Scenario, got {type(scenario).__name__}")
    with _lock:
        _registered[scenario.name] = scenario
    return scenario


def register_lazy(name: str, target: str) -> None:
    """Adds a scenario by ``"package.module:ATTRIBUTE"``, imported at the first :func:`get`."""
    if ":" not in target:
        raise ValueError(f"target must be 'package.module:ATTRIBUTE', got {target!r}")
    with _lock:
        _lazy[name] = target


def names() -> list[str]:
    """Every known scenario name (registered or lazily listed), sorted; imports nothing."""
    with _lock:
        return sorted(set(_registered) | set(_lazy))


def get(name: str) -> Scenario:
    """The scenario called ``name``; :class:`UnknownScenarioError` lists the known ones."""
    with _lock:
        found = _registered.get(name)
        target = _lazy.get(name) if isinstance(name, str) else None
    if found is not None:
        return found
    if target is None:
        raise UnknownScenarioError(name, names())
    module, _, attr = target.partition(":")
    obj = getattr(importlib.import_module(module), attr, None)
    if not isinstance(obj, Scenario) or obj.name != name:
        raise TypeError(f"{target} should be the Scenario named {name!r}; got {obj!r}")
    return register(obj)
