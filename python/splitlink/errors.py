"""Every exception splitlink raises to applications, in one hierarchy under ``SplitlinkError``.

::

    SplitlinkError                      (Exception)
    ├── WireError                       a frame is malformed (truncated, inconsistent, unsupported version)
    ├── CodecError                      a codec cannot encode or decode a tensor
    ├── CryptoError                     authentication or decryption failed
    ├── PeerUnavailableError            a peer could not be reached within the retry deadline
    ├── PeerClosedError                 the peer shut down
    ├── PeerRestartedError              the peer is a new process now; agree on where to resume
    ├── YamlConfigError    (ValueError) what is wrong with a YAML file, each problem with its line
    ├── CheckpointError    (ValueError) a checkpoint cannot be loaded into this model
    └── HyperParameterError (TypeError) an optimizer hyper-parameter is not accepted

The first three come from the native core (``splitlink._core``). The last three are also
``ValueError`` / ``TypeError``, as they were before they joined the hierarchy, so existing
``except ValueError`` handlers still catch them. Other invalid arguments raise ``ValueError`` (or
``TypeError`` for a wrong type).

The classes are also importable from where they were first defined (``splitlink.channel``,
``splitlink.config``, ``splitlink.model``, ``splitlink.optim``) and from ``splitlink``.
This module imports nothing but the native core, so any module may import it.
"""

from __future__ import annotations

import typing

from splitlink._core import CodecError, CryptoError, SplitlinkError, WireError

__all__ = [
    "SplitlinkError",
    "WireError",
    "CodecError",
    "CryptoError",
    "PeerUnavailableError",
    "PeerClosedError",
    "PeerRestartedError",
    "YamlConfigError",
    "Problem",
    "CheckpointError",
    "HyperParameterError",
]


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


class Problem(typing.NamedTuple):
    """One thing wrong in a YAML file: where (line, key path) and what."""

    line: int | None  # 1-based
    path: str
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.path or '<top level>'}: {self.message}"


class YamlConfigError(SplitlinkError, ValueError):
    """Everything wrong with one YAML file, each problem with its line and key path."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = sorted(problems, key=lambda p: (p.line or 0, p.path))
        n = len(self.problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"invalid splitlink config {source} ({n} problem{'s' if n != 1 else ''}):\n{lines}")


class CheckpointError(SplitlinkError, ValueError):
    """A checkpoint cannot be loaded into this model (wrong network, corrupt or missing file)."""


class HyperParameterError(SplitlinkError, TypeError):
    """An optimizer hyper-parameter is not accepted; ``key`` names it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
