"""The party runtime: what every scenario's party shares.

* :mod:`~splitlink.runtime.party`: the :class:`Party` base (checkpoint set, resume agreement, restart
  ride-through, schedule, metrics, control messages by frame kind);
* :mod:`~splitlink.runtime.checkpoints`: a party's checkpoint set and manifest;
* :mod:`~splitlink.runtime.schedule`: the data schedule from (seed, epoch);
* :mod:`~splitlink.runtime.metrics`: history rows, JSON-lines metrics, progress bar;
* :mod:`~splitlink.runtime.run_config`: the run file of ``splitlink train`` (:class:`RunConfig`);
* :mod:`~splitlink.runtime.registry`: scenarios by name (the runtime never imports a scenario module);
* :mod:`~splitlink.runtime.launch`: one party from its run file, over gRPC.

The submodules are imported on first use, so ``import splitlink.runtime`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "Party",
    "TrainOptions",
    "CheckpointSet",
    "Manifest",
    "Schedule",
    "Metrics",
    "RunConfig",
    "load_run_config",
    "Scenario",
    "run_party",
    "ride_through_restarts",
    "agree_locally",
]

_WHERE = {
    "Party": "party",
    "TrainOptions": "party",
    "ride_through_restarts": "party",
    "agree_locally": "party",
    "CheckpointSet": "checkpoints",
    "Manifest": "checkpoints",
    "Schedule": "schedule",
    "Metrics": "metrics",
    "RunConfig": "run_config",
    "load_run_config": "run_config",
    "Scenario": "registry",
    "run_party": "launch",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"splitlink.runtime.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'splitlink.runtime' has no attribute {name!r}")
