"""Published known-answer vectors, through splitlink's own API (OpenSSL underneath)."""

from __future__ import annotations

import pytest

from splitlink import secure

H = bytes.fromhex


def test_nist_aes_256_gcm_test_case_16() -> None:
    # McGrew & Viega GCM spec test case 16 (AES-256, 96-bit IV, with AAD), as used by NIST CAVP.
    key = secure.Key(H("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308"))
    pt = H(
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39"
    )
    aad = H("feedfacedeadbeeffeedfacedeadbeefabaddad2")
    iv = H("cafebabefacedbaddecaf888")
    ct = H(
        "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"
    )
    tag = H("76fc6ece0f4e1768cddf8853bb2d551b")
    assert secure.aead_encrypt("aes-256-gcm", key, iv, aad, pt) == ct + tag
    assert secure.aead_decrypt("aes-256-gcm", key, iv, aad, ct + tag) == pt


def test_rfc8439_chacha20_poly1305_aead() -> None:
    # RFC 8439 section 2.8.2.
    key = secure.Key(bytes(range(0x80, 0xA0)))
    nonce = H("070000004041424344454647")
    aad = H("50515253c0c1c2c3c4c5c6c7")
    pt = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it."
    ct = H(
        "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92728b"
        "1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
        "3ff4def08e4b7a9de576d26586cec64b6116"
    )
    tag = H("1ae10b594f09e26a7e902ecbd0600691")
    assert secure.aead_encrypt("chacha20-poly1305", key, nonce, aad, pt) == ct + tag
    assert secure.aead_decrypt("chacha20-poly1305", key, nonce, aad, ct + tag) == pt


def test_rfc7748_x25519() -> None:
    # RFC 7748 section 6.1.
    alice = secure.KeyPair.from_private_bytes(H("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
    bob = secure.KeyPair.from_private_bytes(H("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"))
    assert alice.public_bytes == H("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert bob.public_bytes == H("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = secure.Key(H("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"))
    assert alice.exchange(bob.public_bytes).equals(shared)
    assert bob.exchange(alice.public_bytes).equals(shared)


def test_rfc5869_hkdf_sha256_test_case_1() -> None:
    okm = secure.hkdf_sha256(bytes([0x0B] * 22), H("000102030405060708090a0b0c"), H("f0f1f2f3f4f5f6f7f8f9"), 42)
    assert okm == H("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")


def test_low_order_public_key_is_rejected() -> None:
    # u = 0 is a low-order point: the shared secret would be all zero; OpenSSL refuses it.
    with pytest.raises(secure.CryptoError, match="low-order"):
        secure.KeyPair.generate().exchange(bytes(32))


def test_cross_check_against_the_cryptography_package() -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

    raw = bytes(range(32))
    key = secure.Key(raw)
    for name, ref in (("aes-256-gcm", AESGCM(raw)), ("chacha20-poly1305", ChaCha20Poly1305(raw))):
        for n in (0, 1, 15, 16, 17, 1000):
            pt = bytes((i * 7) % 256 for i in range(n))
            assert secure.aead_encrypt(name, key, b"\x01" * 12, b"hdr", pt) == ref.encrypt(b"\x01" * 12, pt, b"hdr")
