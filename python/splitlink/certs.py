"""Development certificates for mutual TLS between parties (``splitlink certs``).

Creates one certificate authority and, per party, a server and a client certificate whose subject
common name and subject alternative names carry the party name, as PEM files and as PKCS#12
bundles protected by a password (MindSpore Federated's format). For production, issue
certificates from your organisation's CA with the same names; the channel accepts either.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["PartyFiles", "make_dev_certs"]


@dataclass(frozen=True)
class PartyFiles:
    """Paths of one party's credentials."""

    name: str
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    server_p12: Path
    client_p12: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "splitlink dev"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    party: str,
    usage: x509.ObjectIdentifier,
    hosts: Sequence[str],
    days: int,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    sans: list[x509.GeneralName] = [x509.DNSName(party)]
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(party))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def make_dev_certs(
    out_dir: str | Path,
    parties: Sequence[str],
    *,
    password: str = "splitlink",
    hosts: Sequence[str] = ("localhost", "127.0.0.1", "::1"),
    days: int = 365,
) -> dict[str, PartyFiles]:
    """Writes ``ca.crt``/``ca.key`` and per-party credentials under ``out_dir``; returns their paths."""
    if not parties:
        raise ValueError("name at least one party, e.g. leader follower")
    if len(set(parties)) != len(parties):
        raise ValueError(f"party names must be unique: {list(parties)}")
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("splitlink dev CA"))
        .issuer_name(_name("splitlink dev CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (out / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(out / "ca.key", ca_key)
    files: dict[str, PartyFiles] = {}
    enc = serialization.BestAvailableEncryption(password.encode())
    for party in parties:
        paths = {}
        for role, usage in (("server", ExtendedKeyUsageOID.SERVER_AUTH), ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):
            key, cert = _issue(ca_key, ca_cert, party, usage, hosts, days)
            cert_path, key_path, p12_path = (
                out / f"{party}.{role}.crt",
                out / f"{party}.{role}.key",
                out / f"{party}.{role}.p12",
            )
            cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            _write_key(key_path, key)
            p12_path.write_bytes(pkcs12.serialize_key_and_certificates(party.encode(), key, cert, [ca_cert], enc))
            p12_path.chmod(0o600)
            paths[role] = (cert_path, key_path, p12_path)
        files[party] = PartyFiles(
            party,
            paths["server"][0],
            paths["server"][1],
            paths["client"][0],
            paths["client"][1],
            paths["server"][2],
            paths["client"][2],
        )
    return files
