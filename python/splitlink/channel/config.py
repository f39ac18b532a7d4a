"""Where a party listens and which certificates it shows: ``ServerConfig``, ``SSLConfig`` and the
loading of PEM files, PKCS#12 bundles and CRLs."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ServerConfig", "SSLConfig", "revoked_serials", "is_loopback"]


@dataclass(frozen=True)
class ServerConfig:
    """A party's name and the ``host:port`` its server listens on."""

    server_name: str
    server_address: str

    def __post_init__(self) -> None:
        if not self.server_name or not isinstance(self.server_name, str):
            raise ValueError("server_name must be a non-empty string")
        host, sep, port = self.server_address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"server_address must be host:port, got {self.server_address!r} (for {self.server_name})")

    @property
    def host(self) -> str:
        return self.server_address.rpartition(":")[0].strip("[]")


@dataclass(frozen=True)
class SSLConfig:
    """Certificates for mutual TLS: PEM files (``*_key_path`` beside ``*_cert_path``) or PKCS#12
    bundles (``.p12``/``.pfx``, opened with ``server_password``/``client_password``)."""

    server_password: str | None = None
    client_password: str | None = None
    server_cert_path: str | None = None
    client_cert_path: str | None = None
    ca_cert_path: str | None = None
    crl_path: str | None = None
    server_key_path: str | None = None
    client_key_path: str | None = None

    def load(self) -> dict[str, bytes]:
        """PEM bytes: server_key, server_cert, client_key, client_cert, ca (and crl when given)."""
        missing = [n for n in ("server_cert_path", "client_cert_path", "ca_cert_path") if not getattr(self, n)]
        if missing:
            raise ValueError(f"SSLConfig needs {', '.join(missing)} for mutual TLS")
        out: dict[str, bytes] = {}
        for role in ("server", "client"):
            key, cert = _load_identity(
                getattr(self, f"{role}_cert_path"), getattr(self, f"{role}_key_path"), getattr(self, f"{role}_password"), role
            )
            out[f"{role}_key"], out[f"{role}_cert"] = key, cert
        out["ca"] = _read(self.ca_cert_path, "ca_cert_path")
        if self.crl_path:
            out["crl"] = _read(self.crl_path, "crl_path")
        return out


def _read(path: str | None, what: str) -> bytes:
    try:
        return Path(str(path)).read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read {what} {path!r}: {e.strerror}") from None


def _load_identity(cert_path: str, key_path: str | None, password: str | None, role: str) -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    if cert_path.endswith((".p12", ".pfx")):
        try:
            key, cert, _ = pkcs12.load_key_and_certificates(
                _read(cert_path, f"{role}_cert_path"), password.encode() if password else None
            )
        except ValueError as e:
            raise ValueError(f"cannot open {role} PKCS#12 bundle {cert_path!r}: {e} (wrong {role}_password?)") from None
        if key is None or cert is None:
            raise ValueError(f"{role} PKCS#12 bundle {cert_path!r} holds no key and certificate")
        return (
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
            cert.public_bytes(serialization.Encoding.PEM),
        )
    if key_path is None:
        guess = cert_path.replace(".crt", ".key").replace("cert", "key")
        if guess == cert_path or not Path(guess).exists():
            raise ValueError(f"{role}_cert_path {cert_path!r} is PEM: also give {role}_key_path")
        key_path = guess
    return _read(key_path, f"{role}_key_path"), _read(cert_path, f"{role}_cert_path")


def revoked_serials(crl_pem: bytes, ca_pem: bytes, path: str | None) -> set[int]:
    """Serial numbers a CRL revokes, after checking the CRL is signed by the configured CA."""
    from cryptography import x509

    try:
        crl = x509.load_pem_x509_crl(crl_pem) if b"-----BEGIN" in crl_pem else x509.load_der_x509_crl(crl_pem)
    except ValueError as e:
        raise ValueError(f"crl_path {path!r} is not a PEM or DER CRL: {e}") from None
    ca = x509.load_pem_x509_certificate(ca_pem)
    if not crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
        raise ValueError(f"crl_path {path!r} is not signed by the CA in ca_cert_path")
    return {r.serial_number for r in crl}


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine (plaintext is allowed only between such addresses)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
