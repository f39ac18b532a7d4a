"""The communicator API inside one process: parties are objects sharing a hub, not processes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from splitlink import wire
from splitlink.channel.config import ServerConfig
from splitlink.channel.inbox import Inbox
from splitlink.channel.protocol import check_kind
from splitlink.channel.work import PostedReceives, ReceiveQueue, Work
from splitlink.codec import CompressConfig, ErrorFeedback

__all__ = ["InProcessCommunicator"]


class InProcessCommunicator(PostedReceives):
    """The communicator API inside one process (the seed's run_*_local scripts).

    Tensors pass by reference, or with ``through_codecs=True`` through the real pack/unpack path
    (compression included), to study compression effects without processes. Create one per party
    with a shared ``hub`` dict.

    ``isend``/``irecv``/``flush`` work as the gRPC communicator's: a send is complete as soon as the
    frame is in the peer's queue (immediately here, so ``isend`` returns a completed ``Work``);
    posted receives take frames in the order they were posted.
    """

    def __init__(
        self,
        http_server_config: ServerConfig,
        remote_server_config: ServerConfig | Sequence[ServerConfig],
        compress_configs: Mapping[str, CompressConfig] | None = None,
        *,
        hub: dict[str, Any],
        through_codecs: bool = False,
    ) -> None:
        remotes = [remote_server_config] if isinstance(remote_server_config, ServerConfig) else list(remote_server_config)
        self.me = http_server_config.server_name
        self.peers = [r.server_name for r in remotes]
        self.compress_configs = dict(compress_configs or {})
        self.through_codecs = through_codecs
        self._hub = hub
        self._feedback = {p: ErrorFeedback() for p in self.peers}
        self._receives = {p: ReceiveQueue(p, f"splitlink-irecv-{p}") for p in self.peers}
        hub.setdefault("queues", {})
        for p in self.peers:
            hub["queues"].setdefault((p, self.me), Inbox(p, 1 << 30, 1 << 62))
            hub["queues"].setdefault((self.me, p), Inbox(self.me, 1 << 30, 1 << 62))

    def launch(self) -> InProcessCommunicator:
        return self

    def shutdown(self) -> None:
        for p in self.peers:
            self._hub["queues"][(self.me, p)].close()

    def __enter__(self) -> InProcessCommunicator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def send_tensors(
        self, target_server_name: str, tensors: Mapping[str, Any], *, step: int | None = None, kind: str = "tensors"
    ) -> None:
        if target_server_name not in self.peers:
            raise ValueError(f"unknown peer {target_server_name!r}; peers: {', '.join(self.peers)}")
        inbox = self._hub["queues"][(self.me, target_server_name)]
        if self.through_codecs:
            payload: Any = wire.pack(
                tensors,
                sender=self.me,
                step=step or 0,
                kind=kind,
                compress=self.compress_configs,
                error_feedback=self._feedback[target_server_name],
            )
        else:
            payload = (kind, tensors)
        inbox.append(payload)

    def isend(
        self, target_server_name: str, tensors: Mapping[str, Any], *, step: int | None = None, kind: str = "tensors"
    ) -> Work:
        """As ``VerticalFederatedCommunicator.isend``; the frame is queued at once (an error is raised
        by ``wait()``, as there)."""
        work = Work(f"isend to '{target_server_name}'")
        try:
            self.send_tensors(target_server_name, tensors, step=step, kind=kind)
        except ValueError:
            raise  # a bad argument, not a failed send: raised at the call, as by the gRPC communicator
        except Exception as e:  # noqa: BLE001 - handed to the application by wait()
            work._resolve(error=e)
        else:
            work._resolve(None)
        return work

    def flush(self, timeout: float | None = None) -> None:
        """As ``VerticalFederatedCommunicator.flush`` (nothing is ever in flight here)."""

    def _receive_now(
        self, target_server_name: str, timeout: float | None, kind: str | None, with_kind: bool, device: Any = None
    ) -> Any:
        """The next frame from the peer (``receive``). ``device`` (e.g. ``"cuda:0"``) places the tensors
        there: through the codecs, the frame is unpacked onto it (``wire.unpack(device=)``); by
        reference, each tensor is moved (``.to(device)``, a no-op for one already there)."""
        payload = self._hub["queues"][(target_server_name, self.me)].get(timeout)
        if self.through_codecs:
            frame = wire.unpack(payload, device=device)
            payload = (frame.kind, frame.tensors)
        elif device is not None:
            payload = (payload[0], _moved(payload[1], device))
        got_kind, tensors = payload
        check_kind(got_kind, kind, target_server_name)
        return (got_kind, tensors) if with_kind else tensors


def _moved(tree: Any, device: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _moved(v, device) for k, v in tree.items()}
    return tree.to(device) if hasattr(tree, "to") and hasattr(tree, "device") else tree
