"""splitlink: train one neural network across organisations without sharing data or labels.

The model is cut into sub-networks that run where the data is; parties exchange activations
forward and gradients backward as frames (``splitlink.wire``) over mutual TLS.

The names below are imported on first use (PEP 562), so ``import splitlink.wire`` loads what
frames need and not gRPC, pydantic or cryptography.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ below imports on first use
    from splitlink import codec, errors, optim, privacy, psi, secure, wire
    from splitlink.channel import InProcessCommunicator, ServerConfig, SSLConfig, VerticalFederatedCommunicator
    from splitlink.codec import CompressConfig, ErrorFeedback
    from splitlink.config import FLYamlData
    from splitlink.errors import (
        CheckpointError,
        CodecError,
        CryptoError,
        PeerClosedError,
        PeerRestartedError,
        PeerUnavailableError,
        SplitlinkError,
        WireError,
        YamlConfigError,
    )
    from splitlink.model import FLModel

__version__ = "0.1.0"

# public name -> module that defines it
_ATTRS: dict[str, str] = {
    "FLYamlData": "splitlink.config",
    "FLModel": "splitlink.model",
    "ServerConfig": "splitlink.channel",
    "SSLConfig": "splitlink.channel",
    "VerticalFederatedCommunicator": "splitlink.channel",
    "InProcessCommunicator": "splitlink.channel",
    "CompressConfig": "splitlink.codec",
    "ErrorFeedback": "splitlink.codec",
    "SplitlinkError": "splitlink.errors",
    "WireError": "splitlink.errors",
    "CodecError": "splitlink.errors",
    "CryptoError": "splitlink.errors",
    "PeerUnavailableError": "splitlink.errors",
    "PeerClosedError": "splitlink.errors",
    "PeerRestartedError": "splitlink.errors",
    "YamlConfigError": "splitlink.errors",
    "CheckpointError": "splitlink.errors",
}
# submodules reachable as attributes of the package (``splitlink.wire`` after ``import splitlink``)
_SUBMODULES = frozenset(
    {
        "_core",
        "buffers",
        "certs",
        "channel",
        "checkpoint",
        "codec",
        "config",
        "errors",
        "model",
        "optim",
        "privacy",
        "psi",
        "secure",
        "util",
        "wire",
    }
)

__all__ = [
    "FLYamlData",
    "FLModel",
    "YamlConfigError",
    "CheckpointError",
    "ServerConfig",
    "SSLConfig",
    "VerticalFederatedCommunicator",
    "InProcessCommunicator",
    "PeerUnavailableError",
    "PeerClosedError",
    "PeerRestartedError",
    "wire",
    "codec",
    "secure",
    "errors",
    "optim",
    "privacy",
    "psi",
    "CompressConfig",
    "ErrorFeedback",
    "SplitlinkError",
    "WireError",
    "CodecError",
    "CryptoError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    module = _ATTRS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_ATTRS) | _SUBMODULES)
