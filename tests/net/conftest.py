"""Fixtures of the network-emulation tests: a skip WITH the reason where namespaces cannot be made."""

from __future__ import annotations

import pytest
from netem import Netns, NetnsUnavailable, netns_support


@pytest.fixture(scope="session")
def netns_ok() -> None:
    """Skips (saying why) where this machine cannot create a network namespace; the reason is the
    tool, privilege or kernel error that stopped it, never a silent pass."""
    why = netns_support()
    if why:
        pytest.skip(why)
    try:
        Netns().close()
    except NetnsUnavailable as e:
        pytest.skip(str(e))
