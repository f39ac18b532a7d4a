"""Control messages travel by frame kind (no tensors standing for "done" or "eval"), over both
communicators."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from splitlink.channel import InProcessCommunicator, ServerConfig, VerticalFederatedCommunicator
from splitlink.util import free_ports


def in_process(through_codecs: bool) -> tuple[Any, Any]:
    hub: dict[str, Any] = {}
    lc, fc = ServerConfig("leader", "127.0.0.1:1"), ServerConfig("follower", "127.0.0.1:2")
    return (
        InProcessCommunicator(lc, fc, hub=hub, through_codecs=through_codecs),
        InProcessCommunicator(fc, lc, hub=hub, through_codecs=through_codecs),
    )


def over_grpc() -> tuple[Any, Any]:
    lp, fp = free_ports(2)
    lc, fc = ServerConfig("leader", f"127.0.0.1:{lp}"), ServerConfig("follower", f"127.0.0.1:{fp}")
    return (
        VerticalFederatedCommunicator(lc, fc, enable_ssl=False).launch(),
        VerticalFederatedCommunicator(fc, lc, enable_ssl=False).launch(),
    )


@pytest.mark.parametrize(
    "make", [lambda: in_process(False), lambda: in_process(True), over_grpc], ids=["in-process", "in-process-codecs", "grpc"]
)
def test_the_receiver_learns_each_frames_kind(make: Any) -> None:
    a, b = make()
    try:
        a.send_tensors("follower", {"x": torch.arange(3)}, step=1)
        a.send_tensors("follower", {"embedding_table": torch.ones(2, 2)}, kind="eval")
        a.send_tensors("follower", {}, kind="done")  # a control message needs no tensor at all
        kind, got = b.receive("leader", 10, with_kind=True)
        assert kind == "tensors" and torch.equal(got["x"], torch.arange(3))
        kind, got = b.receive("leader", 10, with_kind=True)
        assert kind == "eval" and list(got) == ["embedding_table"]
        assert b.receive("leader", 10, with_kind=True) == ("done", {})
        a.send_tensors("follower", {}, kind="done")
        with pytest.raises(ValueError, match="expected a 'eval' frame .* got a 'done' frame"):
            b.receive("leader", 10, kind="eval")
    finally:
        a.shutdown()
        b.shutdown()
