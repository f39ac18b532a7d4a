"""What the channel raises to the application (re-exported by ``splitlink.channel`` and ``splitlink``)."""

from __future__ import annotations

from splitlink.errors import SplitlinkError

__all__ = ["PeerUnavailableError", "PeerClosedError", "PeerRestartedError"]


class PeerUnavailableError(SplitlinkError):
    """A peer could not be reached within the retry deadline."""


class PeerClosedError(SplitlinkError):
    """The peer shut down; no more frames will come from it."""


class PeerRestartedError(SplitlinkError):
    """The peer is a new process now (it crashed or was restarted): what this party sent to the old one
    and had not been answered is gone, and frames the old one sent but were not received yet are
    discarded. Agree with the peer on where to resume (e.g. the newest common checkpoint) and go on;
    raised once per restart."""

    def __init__(self, peer: str, detail: str) -> None:
        super().__init__(f"'{peer}' restarted ({detail}); agree with it on where to resume")
        self.peer = peer
