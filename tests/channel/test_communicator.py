"""The communicator on loopback: mutual TLS, streaming, exactly-once, back-pressure, failures."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest
import torch

from splitlink import (
    CompressConfig,
    InProcessCommunicator,
    PeerClosedError,
    PeerRestartedError,
    PeerUnavailableError,
    ServerConfig,
    SSLConfig,
    VerticalFederatedCommunicator,
)
from splitlink.certs import make_dev_certs
from splitlink.util import free_ports


def free_port() -> int:
    return free_ports(1)[0]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    make_dev_certs(out, ["leader", "follower", "mallory"], password="pw")
    return out


def ssl_for(d: Path, party: str, p12: bool = False, ca: Path | None = None) -> SSLConfig:
    if p12:
        return SSLConfig(
            server_password="pw",
            client_password="pw",
            server_cert_path=str(d / f"{party}.server.p12"),
            client_cert_path=str(d / f"{party}.client.p12"),
            ca_cert_path=str(ca or d / "ca.crt"),
        )
    return SSLConfig(
        server_cert_path=str(d / f"{party}.server.crt"),
        server_key_path=str(d / f"{party}.server.key"),
        client_cert_path=str(d / f"{party}.client.crt"),
        client_key_path=str(d / f"{party}.client.key"),
        ca_cert_path=str(ca or d / "ca.crt"),
    )


def configs() -> tuple[ServerConfig, ServerConfig]:
    """A leader and a follower on free loopback ports."""
    lp, fp = free_ports(2)
    return ServerConfig("leader", f"127.0.0.1:{lp}"), ServerConfig("follower", f"127.0.0.1:{fp}")


def pair(ssl: tuple[SSLConfig, SSLConfig] | None = None, **kw):  # type: ignore[no-untyped-def]
    lc, fc = configs()
    leader = VerticalFederatedCommunicator(lc, fc, enable_ssl=ssl is not None, ssl_config=ssl and ssl[0], **kw)
    follower = VerticalFederatedCommunicator(fc, lc, enable_ssl=ssl is not None, ssl_config=ssl and ssl[1], **kw)
    return leader.launch(), follower.launch()


def grads() -> dict:
    return {"loss": {"emb": torch.randn(64, 8), "wide": torch.randn(64, 1)}, "ids": torch.arange(10)}


def test_round_trip_insecure_loopback_with_compression() -> None:
    leader, follower = pair(compress_configs={"emb": CompressConfig("min_max", bit_num=8)})
    try:
        g = grads()
        leader.send_tensors("follower", g, step=3)
        got = follower.receive("leader", timeout=10)
        assert list(got) == ["loss", "ids"] and list(got["loss"]) == ["emb", "wide"]
        assert torch.equal(got["loss"]["wide"], g["loss"]["wide"]) and torch.equal(got["ids"], g["ids"])
        step = (g["loss"]["emb"].max() - g["loss"]["emb"].min()) / 255
        assert (got["loss"]["emb"] - g["loss"]["emb"]).abs().max() <= step / 2 + 1e-6
        follower.send_tensors("leader", {"x": torch.ones(3)})
        assert torch.equal(leader.receive("follower", timeout=10)["x"], torch.ones(3))
    finally:
        leader.shutdown()
        follower.shutdown()


@pytest.mark.parametrize("p12", [False, True], ids=["pem", "p12"])
def test_mutual_tls(certs: Path, p12: bool) -> None:
    leader, follower = pair((ssl_for(certs, "leader", p12), ssl_for(certs, "follower", p12)))
    try:
        x = torch.randn(1000)
        follower.send_tensors("leader", {"x": x})
        assert torch.equal(leader.receive("follower", timeout=10)["x"], x)
    finally:
        leader.shutdown()
        follower.shutdown()


def test_plaintext_refused_off_loopback() -> None:
    with pytest.raises(ValueError, match="only allowed between loopback addresses.*allow_insecure"):
        VerticalFederatedCommunicator(ServerConfig("a", "10.1.2.3:5000"), ServerConfig("b", "127.0.0.1:5001"))


def _tls_server(certs: Path):  # type: ignore[no-untyped-def]
    lc, fc = configs()
    leader = VerticalFederatedCommunicator(
        lc, [fc, ServerConfig("mallory", f"127.0.0.1:{free_port()}")], enable_ssl=True, ssl_config=ssl_for(certs, "leader")
    ).launch()
    return leader, lc, fc


def test_client_claiming_another_partys_name_is_refused(certs: Path) -> None:
    leader, lc, fc = _tls_server(certs)
    # "follower" by name, but holding mallory's (valid, same-CA) certificate.
    impostor = VerticalFederatedCommunicator(
        fc, lc, enable_ssl=True, ssl_config=ssl_for(certs, "mallory"), retry_deadline=2
    ).launch()
    try:
        with pytest.raises(PeerUnavailableError, match="PERMISSION_DENIED.*do not include the claimed sender 'follower'"):
            impostor.send_tensors("leader", {"x": torch.ones(2)})
        with pytest.raises(TimeoutError, match="'follower'"):
            leader.receive("follower", timeout=0.2)
    finally:
        impostor.shutdown()
        leader.shutdown()


def test_client_from_another_ca_and_without_certificate_are_refused(certs: Path, tmp_path: Path) -> None:
    make_dev_certs(tmp_path, ["follower"], password="pw")
    leader, lc, fc = _tls_server(certs)
    foreign = VerticalFederatedCommunicator(
        fc, lc, enable_ssl=True, retry_deadline=1, ssl_config=ssl_for(tmp_path, "follower", ca=certs / "ca.crt")
    ).launch()
    try:
        with pytest.raises(PeerUnavailableError, match="unreachable"):
            foreign.send_tensors("leader", {"x": torch.ones(2)})
        # TLS without a client certificate, and plaintext to the TLS port: both fail the handshake.
        no_cert = grpc.secure_channel(
            lc.server_address,
            grpc.ssl_channel_credentials((certs / "ca.crt").read_bytes()),
            options=[("grpc.ssl_target_name_override", "leader")],
        )
        plain = grpc.insecure_channel(lc.server_address)
        for channel in (no_cert, plain):
            with pytest.raises(grpc.RpcError) as e:
                channel.stream_unary("/splitlink.v1.Transport/Send")(iter([b"SLC1"]), timeout=5)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            channel.close()
    finally:
        foreign.shutdown()
        leader.shutdown()


def test_large_frame_through_many_chunks_arrives_intact() -> None:
    leader, follower = pair(chunk_size=64 * 1024)
    try:
        x = torch.randn(3_000_000)  # 12 MB in ~180 chunks
        leader.send_tensors("follower", {"x": x})
        assert torch.equal(follower.receive("leader", timeout=30)["x"], x)
    finally:
        leader.shutdown()
        follower.shutdown()


def test_back_pressure_blocks_the_sender_and_drops_nothing() -> None:
    leader, follower = pair(max_queue_frames=2)
    sent: list[int] = []
    try:

        def produce() -> None:
            for i in range(6):
                leader.send_tensors("follower", {"i": torch.tensor([i])})
                sent.append(i)

        t = threading.Thread(target=produce)
        t.start()
        time.sleep(1.5)
        assert len(sent) <= 3, f"sender was not held back: {sent}"  # 2 queued + at most 1 accepted on wake-up
        got = [int(follower.receive("leader", timeout=10)["i"]) for _ in range(6)]
        t.join(10)
        assert got == list(range(6)) and sent == list(range(6))
    finally:
        leader.shutdown()
        follower.shutdown()


def test_receive_timeout_and_unknown_peer() -> None:
    leader, follower = pair()
    try:
        with pytest.raises(TimeoutError, match="no frame from 'follower' within 0.1 s"):
            leader.receive("follower", timeout=0.1)
        with pytest.raises(ValueError, match="unknown peer 'nobody'"):
            leader.receive("nobody")
    finally:
        leader.shutdown()
        follower.shutdown()


def test_peer_down_raises_naming_peer_and_address() -> None:
    lc, fc = configs()
    leader = VerticalFederatedCommunicator(lc, fc, retry_deadline=1.0).launch()
    try:
        t0 = time.monotonic()
        with pytest.raises(PeerUnavailableError, match=rf"'follower' at {fc.server_address} unreachable"):
            leader.send_tensors("follower", {"x": torch.ones(1)})
        assert time.monotonic() - t0 < 10
    finally:
        leader.shutdown()


def test_retried_frame_is_delivered_once() -> None:
    from splitlink import wire

    leader, follower = pair()
    try:
        frame = wire.pack({"x": torch.ones(2)}, sender="leader", seq=1)
        leader._send_frame("follower", 1, 0, memoryview(frame))
        leader._send_frame("follower", 1, 0, memoryview(frame))  # a retry after a lost ack
        assert torch.equal(follower.receive("leader", timeout=5)["x"], torch.ones(2))
        with pytest.raises(TimeoutError):
            follower.receive("leader", timeout=0.3)
    finally:
        leader.shutdown()
        follower.shutdown()


def test_receiver_restart_mid_run_loses_and_duplicates_nothing() -> None:
    """A frame sent while the receiver is down is retried; when a new receiver process comes up, the
    sender is told (PeerRestartedError: the frame was meant for the old process, which the new one
    cannot continue), resends, and the new process gets every frame exactly once."""
    lc, fc = configs()
    leader = VerticalFederatedCommunicator(lc, fc, retry_deadline=30).launch()
    follower = VerticalFederatedCommunicator(fc, lc).launch()
    got: list[int] = []
    outcome: list[BaseException] = []

    def send_rest() -> None:
        pending = [1, 2]
        while pending:
            try:
                leader.send_tensors("follower", {"i": torch.tensor([pending[0]])})
                pending.pop(0)
            except PeerRestartedError as e:
                outcome.append(e)  # resend the same frame to the new process

    try:
        leader.send_tensors("follower", {"i": torch.tensor([0])})
        got.append(int(follower.receive("leader", timeout=5)["i"]))
        follower.shutdown(grace=0)
        t = threading.Thread(target=send_rest)
        t.start()
        time.sleep(0.5)  # the sender is now retrying against a dead port
        follower = VerticalFederatedCommunicator(fc, lc).launch()
        got += [int(follower.receive("leader", timeout=20)["i"]) for _ in range(2)]
        t.join(20)
        assert got == [0, 1, 2]
        assert len(outcome) == 1 and "follower" in str(outcome[0]) and outcome[0].peer == "follower"
        with pytest.raises(TimeoutError):
            follower.receive("leader", timeout=0.3)
    finally:
        leader.shutdown()
        follower.shutdown()


def test_clean_shutdown_wakes_blocked_receivers() -> None:
    leader, follower = pair()
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            leader.receive("follower")
        except PeerClosedError as e:
            errors.append(e)

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.2)
    leader.shutdown()
    t.join(5)
    follower.shutdown()
    assert errors and "follower" in str(errors[0])


@pytest.mark.parametrize("through_codecs", [False, True])
def test_in_process_communicator(through_codecs: bool) -> None:
    hub: dict = {}
    lc, fc = ServerConfig("leader", "127.0.0.1:1"), ServerConfig("follower", "127.0.0.1:2")
    leader = InProcessCommunicator(lc, fc, {"emb": CompressConfig("fp16")}, hub=hub, through_codecs=through_codecs)
    follower = InProcessCommunicator(fc, lc, hub=hub, through_codecs=through_codecs)
    g = grads()
    leader.send_tensors("follower", g)
    got = follower.receive("leader", timeout=1)
    if through_codecs:
        assert not torch.equal(got["loss"]["emb"], g["loss"]["emb"])
        assert torch.allclose(got["loss"]["emb"], g["loss"]["emb"], atol=1e-2)
    else:
        assert got is g
    with pytest.raises(TimeoutError, match="'leader'"):
        follower.receive("leader", timeout=0.05)


def test_revoked_client_certificate_is_refused(certs: Path, tmp_path: Path) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    ca_key = serialization.load_pem_private_key((certs / "ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((certs / "ca.crt").read_bytes())
    revoked = x509.load_pem_x509_certificate((certs / "follower.client.crt").read_bytes())
    now = datetime.datetime.now(datetime.timezone.utc)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now)
        .next_update(now + datetime.timedelta(days=1))
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(revoked.serial_number).revocation_date(now).build()
        )
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    (tmp_path / "ca.crl").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    lc, fc = configs()
    base = ssl_for(certs, "leader")
    with_crl = SSLConfig(**{**base.__dict__, "crl_path": str(tmp_path / "ca.crl")})
    leader = VerticalFederatedCommunicator(lc, fc, enable_ssl=True, ssl_config=with_crl).launch()
    follower = VerticalFederatedCommunicator(
        fc, lc, enable_ssl=True, ssl_config=ssl_for(certs, "follower"), retry_deadline=1
    ).launch()
    try:
        with pytest.raises(PeerUnavailableError, match="revoked"):
            follower.send_tensors("leader", {"x": torch.ones(1)})
    finally:
        leader.shutdown()
        follower.shutdown()


@pytest.mark.slow
def test_frame_larger_than_2_gib_arrives_intact() -> None:
    # protobuf cannot hold a message this large; the chunked stream must.
    leader, follower = pair(retry_deadline=120)
    try:
        n = (2 << 30) // 4 + 4096  # 2 GiB + 16 KiB of float32
        x = torch.arange(n, dtype=torch.int32).view(torch.float32)  # distinct bit patterns everywhere
        leader.send_tensors("follower", {"x": x})
        got = follower.receive("leader", timeout=300)["x"]
        assert got.shape == x.shape and torch.equal(got.view(torch.int32), x.view(torch.int32))
    finally:
        leader.shutdown()
        follower.shutdown()


def test_restarted_sender_is_announced_once_and_not_mistaken_for_duplicates() -> None:
    lc, fc = configs()
    follower = VerticalFederatedCommunicator(fc, lc).launch()
    try:
        for generation in range(3):  # the leader process "restarts": its seq begins at 1 again
            leader = VerticalFederatedCommunicator(lc, fc).launch()
            leader.send_tensors("follower", {"g": torch.tensor([generation])})
            leader.shutdown()
            if generation:
                with pytest.raises(PeerRestartedError, match="'leader' restarted"):
                    follower.receive("leader", timeout=10)
            assert int(follower.receive("leader", timeout=10)["g"]) == generation
    finally:
        follower.shutdown()


def test_restart_discards_the_old_processs_unread_frames() -> None:
    """The follower dies with two frames the leader has not read yet; the leader learns of the new
    process from its announcement (before it sends anything), once; the old process's unread frames
    are discarded, the new process's frames follow, and the leader's frames now reach the new one."""
    lc, fc = configs()
    leader = VerticalFederatedCommunicator(lc, fc).launch()
    follower = VerticalFederatedCommunicator(fc, lc).launch()
    try:
        follower.send_tensors("leader", {"old": torch.tensor([0])})
        assert int(leader.receive("follower", timeout=5)["old"]) == 0
        leader.send_tensors("follower", {"x": torch.tensor([1])})
        for i in (1, 2):
            follower.send_tensors("leader", {"old": torch.tensor([i])})
        follower.shutdown(grace=0)
        follower = VerticalFederatedCommunicator(fc, lc).launch()
        deadline = time.monotonic() + 10
        while leader._inboxes["follower"].frames and time.monotonic() < deadline:
            time.sleep(0.01)  # the announcement arrives
        with pytest.raises(PeerRestartedError, match="'follower' restarted"):
            leader.receive("follower", timeout=10)  # not the old process's unread frames
        follower.send_tensors("leader", {"new": torch.tensor([7])})
        assert int(leader.receive("follower", timeout=5)["new"]) == 7  # told once; old frames gone
        leader.send_tensors("follower", {"x": torch.tensor([2])})  # addressed to the new process now
        assert int(follower.receive("leader", timeout=5)["x"]) == 2
    finally:
        leader.shutdown()
        follower.shutdown()


def test_blocked_receiver_is_woken_by_the_restart_announcement() -> None:
    lc, fc = configs()
    leader = VerticalFederatedCommunicator(lc, fc).launch()
    follower = VerticalFederatedCommunicator(fc, lc).launch()
    try:
        follower.send_tensors("leader", {"a": torch.tensor([0])})
        leader.receive("follower", timeout=5)
        woke: list[tuple[float, BaseException]] = []

        def wait() -> None:
            t0 = time.monotonic()
            try:
                leader.receive("follower", timeout=60)
            except BaseException as e:  # noqa: BLE001
                woke.append((time.monotonic() - t0, e))

        t = threading.Thread(target=wait)
        t.start()
        follower.shutdown(grace=0)
        time.sleep(0.3)
        follower = VerticalFederatedCommunicator(fc, lc).launch()  # announces itself; sends nothing
        t.join(20)
        assert woke and isinstance(woke[0][1], PeerRestartedError) and woke[0][0] < 15, woke
    finally:
        leader.shutdown()
        follower.shutdown()


@pytest.mark.parametrize("tls", [False, True], ids=["loopback", "mtls"])
def test_sealed_frames_end_to_end_and_rekey_after_restart(certs: Path, tls: bool) -> None:
    lc, fc = configs()
    kw = {"seal": True, "retry_deadline": 20}
    ssl = (ssl_for(certs, "leader"), ssl_for(certs, "follower")) if tls else (None, None)
    leader = VerticalFederatedCommunicator(lc, fc, enable_ssl=tls, ssl_config=ssl[0], **kw).launch()
    follower = VerticalFederatedCommunicator(fc, lc, enable_ssl=tls, ssl_config=ssl[1], **kw)
    seen: list[bytes] = []
    original = follower._receive_frame

    def spy(first, it, context):  # type: ignore[no-untyped-def]
        chunks = [bytes(c) for c in it]
        seen.append(b"".join(chunks))  # what crossed the wire
        return original(first, iter(chunks), context)

    follower._receive_frame = spy  # type: ignore[method-assign]
    follower.launch()
    try:
        secret = torch.full((4096,), 1234.5678)
        leader.send_tensors("follower", {"secret_tensor": secret})
        assert torch.equal(follower.receive("leader", timeout=10)["secret_tensor"], secret)
        assert seen and b"secret_tensor" not in seen[0] and secret.numpy().tobytes()[:64] not in seen[0]
        follower.send_tensors("leader", {"x": torch.ones(3)})
        assert torch.equal(leader.receive("follower", timeout=10)["x"], torch.ones(3))
        # The follower restarts with new keys: the leader re-agrees and re-seals on its own.
        follower.shutdown(grace=0)
        follower = VerticalFederatedCommunicator(fc, lc, enable_ssl=tls, ssl_config=ssl[1], **kw).launch()
        with pytest.raises(PeerRestartedError):  # told once (whichever is first: the announcement or this frame)
            leader.send_tensors("follower", {"y": torch.arange(5)})
            leader.receive("follower", timeout=20)
        leader.send_tensors("follower", {"y": torch.arange(5)})
        assert torch.equal(follower.receive("leader", timeout=20)["y"], torch.arange(5))
    finally:
        leader.shutdown()
        follower.shutdown()


@pytest.mark.parametrize("which", ["client", "server"])
def test_expired_certificate_is_refused(certs: Path, tmp_path: Path, which: str) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key = serialization.load_pem_private_key((certs / "ca.key").read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate((certs / "ca.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    party = "follower" if which == "client" else "leader"
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if which == "client" else ExtendedKeyUsageOID.SERVER_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, party)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=30))
        .not_valid_after(now - datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(party), x509.DNSName("localhost"), x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # type: ignore[arg-type]
    d = tmp_path / "expired"
    d.mkdir()
    for f in certs.iterdir():
        if f.is_file():
            (d / f.name).write_bytes(f.read_bytes())
    (d / f"{party}.{which}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / f"{party}.{which}.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    lc, fc = configs()
    leader = VerticalFederatedCommunicator(lc, fc, enable_ssl=True, ssl_config=ssl_for(d, "leader"), retry_deadline=1)
    follower = VerticalFederatedCommunicator(fc, lc, enable_ssl=True, ssl_config=ssl_for(d, "follower"), retry_deadline=1)
    leader.launch()
    follower.launch()
    try:
        # The follower's expired client certificate, or the leader's expired server certificate: no frame passes.
        with pytest.raises(PeerUnavailableError, match="leader"):
            follower.send_tensors("leader", {"x": torch.ones(2)})
        with pytest.raises(TimeoutError):
            leader.receive("follower", timeout=0.5)
    finally:
        follower.shutdown()
        leader.shutdown()
