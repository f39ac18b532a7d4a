"""The certificate identity check (a gRPC server interceptor): a call passes to its handler only when
the certificate names the party that the call's first message claims, and is not revoked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from splitlink import ServerConfig, SSLConfig, VerticalFederatedCommunicator
from splitlink.certs import make_dev_certs
from splitlink.channel import protocol
from splitlink.channel.identity import CertificateIdentityInterceptor
from splitlink.util import free_ports


class Aborted(Exception):
    pass


class FakeContext:
    def __init__(self, names: dict[str, list[bytes]]) -> None:
        self._auth = names
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise Aborted(details)


class Details:
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def header(sender: str) -> bytes:
    return protocol.StreamHeader(sender, 1, 0, 1, 0, 3).encode()


def follower_cert() -> dict[str, list[bytes]]:
    return {"x509_common_name": [b"follower"], "x509_subject_alternative_name": [b"follower", b"localhost"]}


def unary(method: str, request: bytes, context: FakeContext, revoked: set[int] | None = None) -> list[bytes]:
    seen: list[bytes] = []
    inner = grpc.unary_unary_rpc_method_handler(lambda req, ctx: seen.append(req) or b"answer")
    handler = CertificateIdentityInterceptor(protocol.claimed_party, revoked or set()).intercept_service(
        lambda d: inner, Details(method)
    )
    assert handler.unary_unary(request, context) == b"answer"
    return seen


@pytest.mark.parametrize(
    "method, request_bytes",
    [
        (protocol.SEND_ONE, header("follower") + b"abc"),
        (protocol.ANNOUNCE, protocol.Announcement("follower", 5).encode()),
        (protocol.HELLO, protocol.Hello("follower", bytes(32)).encode()),
    ],
    ids=["SendOne", "Announce", "Hello"],
)
def test_the_named_party_passes_and_an_impostor_is_refused(method: str, request_bytes: bytes) -> None:
    assert unary(method, request_bytes, FakeContext(follower_cert())) == [request_bytes]
    mallory = FakeContext({"x509_common_name": [b"mallory"], "x509_subject_alternative_name": [b"mallory"]})
    with pytest.raises(Aborted):
        unary(method, request_bytes, mallory)
    assert mallory.aborted is not None and mallory.aborted[0] == grpc.StatusCode.PERMISSION_DENIED
    assert "'follower'" in mallory.aborted[1] and "mallory" in mallory.aborted[1]


def test_a_subject_alternative_name_is_enough() -> None:
    context = FakeContext({"x509_common_name": [b"Follower Org"], "x509_subject_alternative_name": [b"follower"]})
    assert unary(protocol.SEND_ONE, header("follower"), context) == [header("follower")]


def test_a_malformed_first_message_is_left_to_the_handler() -> None:
    # it claims nobody, so the handler refuses it with the reason (INVALID_ARGUMENT)
    assert unary(protocol.SEND_ONE, b"junk", FakeContext(follower_cert())) == [b"junk"]


def test_a_revoked_certificate_is_refused_even_for_its_own_name(tmp_path: Path) -> None:
    from cryptography import x509

    make_dev_certs(tmp_path, ["follower"], password="pw")
    pem = (tmp_path / "follower.client.crt").read_bytes()
    serial = x509.load_pem_x509_certificate(pem).serial_number
    context = FakeContext({**follower_cert(), "x509_pem_cert": [pem]})
    assert unary(protocol.SEND_ONE, header("follower"), context, revoked={serial + 1}) == [header("follower")]
    with pytest.raises(Aborted, match="revoked"):
        unary(protocol.SEND_ONE, header("follower"), context, revoked={serial})
    assert context.aborted is not None and context.aborted[0] == grpc.StatusCode.PERMISSION_DENIED


def test_a_stream_reaches_the_handler_whole_after_the_check() -> None:
    received: list[list[bytes]] = []

    def handle(requests: Iterator[bytes], context: Any) -> bytes:
        received.append(list(requests))
        return b"ok"

    inner = grpc.stream_unary_rpc_method_handler(handle)
    wrapped = CertificateIdentityInterceptor(protocol.claimed_party, set()).intercept_service(
        lambda d: inner, Details(protocol.SEND)
    )
    chunks = [header("follower"), b"a", b"bc"]
    assert wrapped.stream_unary(iter(chunks), FakeContext(follower_cert())) == b"ok"
    assert wrapped.stream_unary(iter([]), FakeContext(follower_cert())) == b"ok"  # empty: the handler decides
    assert received == [chunks, []]
    context = FakeContext({"x509_common_name": [b"mallory"]})
    with pytest.raises(Aborted):
        wrapped.stream_unary(iter([header("follower"), b"a"]), context)
    assert len(received) == 2  # the impostor's stream never reached the handler


def test_methods_the_check_cannot_read_are_refused() -> None:
    # Fail closed: a unary method the transport does not have, and kinds of method (unary-stream,
    # stream-stream) from which no claim can be read, never reach their handler.
    reached = []
    interceptor = CertificateIdentityInterceptor(protocol.claimed_party, set())
    unary = interceptor.intercept_service(
        lambda d: grpc.unary_unary_rpc_method_handler(lambda r, c: reached.append(r)), Details("/x.Y/Call")
    )
    with pytest.raises(Aborted):
        unary.unary_unary(header("follower"), FakeContext(follower_cert()))
    for make, call in (
        (grpc.unary_stream_rpc_method_handler, "unary_stream"),
        (grpc.stream_stream_rpc_method_handler, "stream_stream"),
    ):
        wrapped = interceptor.intercept_service(lambda d, make=make: make(lambda r, c: reached.append(r)), Details(protocol.SEND))
        with pytest.raises(Aborted):
            getattr(wrapped, call)(header("follower"), FakeContext(follower_cert()))
    assert reached == []


def test_unknown_methods_stay_unknown() -> None:
    interceptor = CertificateIdentityInterceptor(protocol.claimed_party, set())
    assert interceptor.intercept_service(lambda d: None, Details("/splitlink.v1.Transport/Nope")) is None


def test_every_method_of_a_tls_server_is_guarded(tmp_path: Path) -> None:
    """Over real mutual TLS: mallory's valid certificate claiming to be the follower is refused on
    Announce and Hello too, not only on frames."""
    make_dev_certs(tmp_path, ["leader", "follower", "mallory"], password="pw")

    def ssl(party: str) -> SSLConfig:
        return SSLConfig(
            server_cert_path=str(tmp_path / f"{party}.server.crt"),
            client_cert_path=str(tmp_path / f"{party}.client.crt"),
            ca_cert_path=str(tmp_path / "ca.crt"),
            server_key_path=str(tmp_path / f"{party}.server.key"),
            client_key_path=str(tmp_path / f"{party}.client.key"),
        )

    lp, fp = free_ports(2)
    leader = VerticalFederatedCommunicator(
        ServerConfig("leader", f"127.0.0.1:{lp}"),
        ServerConfig("follower", f"127.0.0.1:{fp}"),
        enable_ssl=True,
        ssl_config=ssl("leader"),
        seal=True,
    ).launch()
    d = tmp_path
    creds = grpc.ssl_channel_credentials(
        (d / "ca.crt").read_bytes(), (d / "mallory.client.key").read_bytes(), (d / "mallory.client.crt").read_bytes()
    )
    channel = grpc.secure_channel(f"127.0.0.1:{lp}", creds, options=[("grpc.ssl_target_name_override", "leader")])
    try:
        for method, request in (
            (protocol.ANNOUNCE, protocol.Announcement("follower", 9).encode()),
            (protocol.HELLO, protocol.Hello("follower", bytes(32)).encode()),
            (protocol.SEND_ONE, header("follower") + b"abc"),
        ):
            with pytest.raises(grpc.RpcError) as err:
                channel.unary_unary(method)(request, timeout=10)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, (method, err.value)
            assert "do not include the claimed sender 'follower'" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            channel.stream_unary(protocol.SEND)(iter([header("follower"), b"abc"]), timeout=10)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(TimeoutError):
            leader.receive("follower", timeout=0.05)
    finally:
        channel.close()
        leader.shutdown()
