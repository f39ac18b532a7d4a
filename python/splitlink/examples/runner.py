"""Compatibility names for the seed-style scripts in the repository's ``examples/``: the run file and
``run_party`` now live in the runtime (:mod:`splitlink.runtime.run_config`, :mod:`splitlink.runtime.launch`)."""

from __future__ import annotations

from splitlink.runtime.launch import run_party
from splitlink.runtime.run_config import RunConfig, load_run_config, ssl_section

__all__ = ["RunConfig", "load_run_config", "run_party", "ssl_section"]
