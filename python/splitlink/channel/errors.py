"""What the channel raises to the application (re-exported by ``splitlink.channel`` and ``splitlink``).

The classes are defined in ``splitlink.errors`` with every other public exception; this module
keeps the channel's names importable from here.
"""

from __future__ import annotations

from splitlink.errors import PeerClosedError, PeerRestartedError, PeerUnavailableError

__all__ = ["PeerUnavailableError", "PeerClosedError", "PeerRestartedError"]
