from __future__ import annotations

import pytest
from required import require


@pytest.fixture(autouse=True)
def _horizontal_deps() -> None:
    require("transformers")
    require("peft")
