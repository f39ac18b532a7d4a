"""The seed scenarios as importable code: Wide&Deep on Criteo and the Pangu-alpha GPT split.

The scripts in the repository's ``examples/`` folder and ``splitlink demo`` / ``splitlink train`` are
thin wrappers around these modules; the YAML files of each scenario ship in ``splitlink/examples/yaml``.
"""

from pathlib import Path

YAML_DIR = Path(__file__).with_name("yaml")
