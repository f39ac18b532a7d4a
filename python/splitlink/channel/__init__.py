"""How parties exchange frames: over gRPC with mutual TLS between processes, or in one process.

* ``config``: ``ServerConfig``, ``SSLConfig`` and the loading of certificates, PKCS#12 bundles, CRLs.
* ``protocol``: the transport's messages (stream headers, announcements, hellos, acks), encoded and
  decoded in one place; documented in ``protos/splitlink/v1/transport.proto``.
* ``retry``: the one retry/backoff policy every repeated call uses.
* ``keys``: session keys for sealed frames (X25519 agreement per peer).
* ``inbox``: the bounded, exactly-once receive queue of one peer, and its restarts.
* ``assembly``: frames that arrive as byte ranges over parallel calls, assembled in one buffer.
* ``work``: ``Work`` (what ``isend``/``irecv`` return) and the per-peer queues behind them.
* ``identity``: the certificate identity check, a gRPC server interceptor.
* ``communicator``: ``VerticalFederatedCommunicator`` (gRPC) and the one place that creates its
  servers and channels (``GrpcEndpoints``).
* ``inprocess``: ``InProcessCommunicator``, the same API inside one process.
* ``errors``: ``PeerUnavailableError``, ``PeerClosedError``, ``PeerRestartedError``.
"""

from __future__ import annotations

from splitlink.channel.communicator import VerticalFederatedCommunicator
from splitlink.channel.config import ServerConfig, SSLConfig
from splitlink.channel.errors import PeerClosedError, PeerRestartedError, PeerUnavailableError
from splitlink.channel.inprocess import InProcessCommunicator
from splitlink.channel.work import FrameNotSentError, Work

__all__ = [
    "ServerConfig",
    "SSLConfig",
    "VerticalFederatedCommunicator",
    "InProcessCommunicator",
    "PeerUnavailableError",
    "PeerClosedError",
    "PeerRestartedError",
    "Work",
    "FrameNotSentError",
]
