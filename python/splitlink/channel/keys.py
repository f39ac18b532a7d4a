"""Session keys for end-to-end sealed frames (``seal=True``).

Each party makes a fresh X25519 key pair per process. The first frame to a peer triggers a ``Hello``
exchange of public keys over the mutually authenticated channel; both sides derive per-direction
keys (``splitlink.secure``) bound to both names, both public keys and the cipher. A restarted peer
has a new key pair, so its old keys stop opening frames and the sender agrees on keys again.
"""

from __future__ import annotations

import hashlib
import logging
import threading

from splitlink import secure

__all__ = ["KeySession"]

logger = logging.getLogger(__name__)


class KeySession:
    """This process's key pair and the sealer/opener agreed with each peer (thread-safe)."""

    def __init__(self, me: str, cipher: str) -> None:
        if cipher not in secure.CIPHERS:
            raise ValueError(f"cipher must be one of {', '.join(secure.CIPHERS)}; got {cipher!r}")
        self.me = me
        self.cipher = cipher
        self._keypair: secure.KeyPair | None = None
        self._sealers: dict[str, secure.Sealer] = {}
        self._openers: dict[str, secure.Opener] = {}
        self._peer_keys: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        """Makes this process's key pair (at ``launch``)."""
        self._keypair = secure.KeyPair.generate()

    @property
    def public_bytes(self) -> bytes:
        assert self._keypair is not None, "KeySession.start() first"
        return self._keypair.public_bytes

    def sealer(self, peer: str) -> secure.Sealer | None:
        """The sealer for frames to ``peer``, or None until keys are agreed."""
        with self._lock:
            return self._sealers.get(peer)

    def opener(self, peer: str) -> secure.Opener | None:
        """The opener for frames from ``peer``, or None until keys are agreed."""
        with self._lock:
            return self._openers.get(peer)

    def forget(self, peer: str) -> None:
        """``peer`` could not open our frames (it restarted or lost our keys): agree again next time."""
        with self._lock:
            self._sealers.pop(peer, None)

    def install(self, peer: str, peer_public: bytes) -> secure.Sealer:
        """Derives the keys shared with ``peer`` from its public key; returns the sealer towards it."""
        assert self._keypair is not None, "KeySession.start() first"
        mine = self._keypair.public_bytes
        # Both fresh public keys make the session id: a new one whenever either party restarts.
        pairs = sorted([(self.me.encode(), mine), (peer.encode(), peer_public)])
        session_id = hashlib.sha256(b"splitlink channel session v1" + b"".join(n + b"\0" + k for n, k in pairs)).digest()
        keys = secure.derive_session_keys(
            self._keypair, peer_public, me=self.me, peer=peer, session_id=session_id, cipher=self.cipher
        )
        with self._lock:
            if self._peer_keys.get(peer) == peer_public and peer in self._sealers:
                return self._sealers[peer]
            self._peer_keys[peer] = peer_public
            self._sealers[peer] = sealer = secure.Sealer(keys.send, self.me, cipher=self.cipher)
            self._openers[peer] = secure.Opener(keys.recv, peer, cipher=self.cipher)
        logger.info("[%s] agreed %s session keys with '%s'", self.me, self.cipher, peer)
        return sealer
