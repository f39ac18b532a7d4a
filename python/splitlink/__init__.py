"""splitlink: train one neural network across organisations without sharing data or labels.

The model is cut into sub-networks that run where the data is; parties exchange activations
forward and gradients backward as frames (``splitlink.wire``) over mutual TLS.
"""

from splitlink import codec, errors, optim, privacy, psi, secure, wire
from splitlink.channel import (
    InProcessCommunicator,
    PeerClosedError,
    PeerRestartedError,
    PeerUnavailableError,
    ServerConfig,
    SSLConfig,
    VerticalFederatedCommunicator,
)
from splitlink.codec import CompressConfig, ErrorFeedback
from splitlink.config import FLYamlData, YamlConfigError
from splitlink.model import CheckpointError, FLModel
from splitlink.errors import CodecError, CryptoError, SplitlinkError, WireError

__version__ = "0.1.0"

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
    "wire", "codec", "secure", "errors", "optim", "privacy", "psi", "CompressConfig", "ErrorFeedback", "SplitlinkError", "WireError", "CodecError", "CryptoError", "__version__"]
