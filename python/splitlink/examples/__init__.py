"""The seed scenarios: Wide&Deep on Criteo (``criteo_wide_deep``) and the Pangu-alpha GPT split
(``pangu_alpha``): their networks, data and per-step math, on top of :class:`splitlink.runtime.Party`.

Each scenario module registers itself in :mod:`splitlink.runtime.registry` when imported; the registry
also lists them by dotted path, so ``splitlink train`` and ``splitlink demo`` find them by name and the
library never imports this package. The scripts in the repository's ``examples/`` folder are thin
wrappers around these modules; the YAML files of each scenario ship in ``splitlink/examples/yaml``.
"""

from pathlib import Path

YAML_DIR = Path(__file__).with_name("yaml")
