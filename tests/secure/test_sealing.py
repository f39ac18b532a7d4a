"""Sealed frames: round trips, and every attack the format must detect."""

from __future__ import annotations

import pickle

import pytest
import torch

from splitlink import CryptoError, secure, wire
from splitlink.secure import Opener, Sealer

SEG = 4096  # small segments so small frames span many


def keys(cipher: str = "aes-256-gcm") -> tuple[secure.SessionKeys, secure.SessionKeys]:
    a, b = secure.KeyPair.generate(), secure.KeyPair.generate()
    sid = secure.new_session_id()
    ka = secure.derive_session_keys(a, b.public_bytes, me="leader", peer="follower", session_id=sid, cipher=cipher)
    kb = secure.derive_session_keys(b, a.public_bytes, me="follower", peer="leader", session_id=sid, cipher=cipher)
    return ka, kb


@pytest.fixture(params=["aes-256-gcm", "chacha20-poly1305"])
def pair(request):  # type: ignore[no-untyped-def]
    ka, kb = keys(request.param)
    return (Sealer(ka.send, "leader", cipher=request.param, segment_size=SEG),
            Opener(kb.recv, "leader", cipher=request.param))


def tensors(n: int = 5000) -> dict:
    g = torch.Generator().manual_seed(n)
    return {"loss": {"emb": torch.randn(n, generator=g)}, "ids": torch.arange(n // 10)}


def test_session_keys_pair_up_per_direction() -> None:
    ka, kb = keys()
    assert ka.send.equals(kb.recv) and ka.recv.equals(kb.send)
    assert not ka.send.equals(ka.recv)
    sid = secure.new_session_id()
    a, b = secure.KeyPair.generate(), secure.KeyPair.generate()
    k1 = secure.derive_session_keys(a, b.public_bytes, me="leader", peer="follower", session_id=sid)
    k2 = secure.derive_session_keys(a, b.public_bytes, me="leader", peer="follower", session_id=secure.new_session_id())
    k3 = secure.derive_session_keys(a, b.public_bytes, me="leader", peer="follower2", session_id=sid)
    assert not k1.send.equals(k2.send) and not k1.send.equals(k3.send)


def test_session_key_derivation_matches_its_specification() -> None:
    # send key of A to B = HKDF(X25519(a, B), salt=session_id, info="splitlink v1 aead"||cipher||lp(A)||lp(B)||lp(pubA)||lp(pubB))
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    raw_a, raw_b = bytes(range(1, 33)), bytes(range(33, 65))
    a, b = secure.KeyPair.from_private_bytes(raw_a), secure.KeyPair.from_private_bytes(raw_b)
    sid = bytes(range(16))
    keys_a = secure.derive_session_keys(a, b.public_bytes, me="A", peer="B", session_id=sid)
    shared = X25519PrivateKey.from_private_bytes(raw_a).exchange(X25519PublicKey.from_public_bytes(b.public_bytes))

    def lp(x: bytes) -> bytes:
        return len(x).to_bytes(4, "little") + x

    info = b"splitlink v1 aead" + (1).to_bytes(4, "little") + lp(b"A") + lp(b"B") + lp(a.public_bytes) + lp(b.public_bytes)
    expected = HKDF(hashes.SHA256(), 32, sid, info).derive(shared)
    assert keys_a.send.equals(secure.Key(expected))


@pytest.mark.parametrize("n", [0, 1, 1000, 5000, 200_000])
def test_round_trip_sizes_fused_and_separate(pair, n: int) -> None:  # type: ignore[no-untyped-def]
    sealer, opener = pair
    t = tensors(n) if n else {}
    fused = wire.pack(t, sender="leader", seq=1, step=3, kind="forward", sealer=sealer)
    got = wire.unpack(fused, opener=opener)
    assert (got.sender, got.seq, got.step, got.kind) == ("leader", 1, 3, "forward")
    if n:
        assert torch.equal(got.tensors["loss"]["emb"], t["loss"]["emb"])
        assert torch.equal(got.tensors["ids"], t["ids"])
    plain = wire.pack(t, sender="leader", seq=2, step=3, kind="forward")
    separate = sealer.seal(plain)
    assert len(separate) == len(wire.pack(t, sender="leader", seq=3, step=3, kind="forward", sealer=sealer))
    got2 = wire.unpack(separate, opener=opener)
    assert got2.seq == 2


def test_fused_and_separate_sealing_produce_identical_bytes() -> None:
    ka, _ = keys()
    t = {**tensors(30_000), "c": torch.randn(999)}
    compress = {"c": wire.CompressConfig("min_max", bit_num=4)}
    s1, s2 = Sealer(ka.send, "leader", segment_size=SEG), Sealer(ka.send, "leader", segment_size=SEG)
    fused = bytes(wire.pack(t, sender="leader", seq=9, compress=compress, sealer=s1))
    separate = bytes(s2.seal(wire.pack(t, sender="leader", seq=9, compress=compress)))
    assert fused == separate


def test_ciphertext_hides_the_tensors(pair) -> None:  # type: ignore[no-untyped-def]
    sealer, _ = pair
    marker = torch.full((4096,), 1234.5678)
    raw = bytes(marker.numpy().tobytes())
    sealed = bytes(wire.pack({"secret_name": marker}, sender="leader", seq=1, sealer=sealer))
    assert raw[:64] not in sealed and b"secret_name" not in sealed
    assert b"leader" in sealed  # routing fields stay readable (authenticated)


def _sealed(sealer: Sealer, seq: int = 1, n: int = 20_000) -> bytearray:
    return bytearray(wire.pack(tensors(n), sender="leader", seq=seq, step=7, kind="forward", sealer=sealer))


def test_every_single_bit_flip_is_rejected_with_sender_and_seq() -> None:
    ka, kb = keys()
    sealer = Sealer(ka.send, "leader", segment_size=SEG)
    frame = _sealed(sealer, n=1500)
    # Every byte, one bit each (rotating): header, tags, padding, ciphertext.
    for i in range(len(frame)):
        bad = bytearray(frame)
        bad[i] ^= 1 << (i % 8)
        opener = Opener(kb.recv, "leader")
        with pytest.raises(CryptoError) as e:
            wire.unpack(bytes(bad), opener=opener)
        assert "from '" in str(e.value)  # names the sender (and seq once the header parses)


def test_truncation_and_extension_are_rejected(pair) -> None:  # type: ignore[no-untyped-def]
    sealer, opener = pair
    frame = bytes(_sealed(sealer))
    for cut in (0, 10, len(frame) // 2, len(frame) - 1):
        with pytest.raises(CryptoError):
            wire.unpack(frame[:cut], opener=opener)
    with pytest.raises(CryptoError):
        wire.unpack(frame + b"\x00", opener=opener)
    assert wire.unpack(frame, opener=opener).seq == 1  # failures did not consume the seq


def _segments(frame: bytes, frame_pb2_sealed):  # type: ignore[no-untyped-def]
    msg = frame_pb2_sealed.SealedFrame()
    msg.ParseFromString(frame)
    return msg


@pytest.fixture(scope="module")
def sealed_pb2(frame_pb2):  # type: ignore[no-untyped-def]
    return frame_pb2


def test_reordered_dropped_and_spliced_segments_are_rejected(sealed_pb2) -> None:  # type: ignore[no-untyped-def]
    ka, kb = keys()
    sealer = Sealer(ka.send, "leader", segment_size=SEG)
    frame = bytes(_sealed(sealer, seq=1))
    msg = sealed_pb2.SealedFrame()
    msg.ParseFromString(frame)
    n = len(msg.tags) // 16
    assert n >= 4
    ct, tags = bytes(msg.ciphertext), bytes(msg.tags)

    def rebuild(new_ct: bytes, new_tags: bytes, plaintext_length: int | None = None) -> bytes:
        m = sealed_pb2.SealedFrame()
        m.CopyFrom(msg)
        m.ciphertext = new_ct
        m.tags = new_tags
        m.plaintext_length = len(new_ct) if plaintext_length is None else plaintext_length
        return m.SerializeToString()

    seg = [ct[i * SEG : (i + 1) * SEG] for i in range(n)]
    tag = [tags[i * 16 : (i + 1) * 16] for i in range(n)]
    # The untouched re-serialization still opens (protobuf drops only our alignment padding).
    assert wire.unpack(rebuild(ct, tags), opener=Opener(kb.recv, "leader")).seq == 1
    swapped = seg[1] + seg[0] + b"".join(seg[2:])
    swapped_tags = tag[1] + tag[0] + b"".join(tag[2:])
    dropped_last = b"".join(seg[:-1])
    dropped_middle = seg[0] + b"".join(seg[2:])
    cases = {
        "reordered": rebuild(swapped, swapped_tags),
        "dropped last": rebuild(dropped_last, b"".join(tag[:-1])),
        "dropped middle": rebuild(dropped_middle, tag[0] + b"".join(tag[2:])),
    }
    other = bytes(_sealed(sealer, seq=2))
    omsg = sealed_pb2.SealedFrame()
    omsg.ParseFromString(other)
    cases["spliced from another frame"] = rebuild(bytes(omsg.ciphertext[:SEG]) + ct[SEG:], bytes(omsg.tags[:16]) + tags[16:])
    for name, bad in cases.items():
        with pytest.raises(CryptoError, match="authentication failed|declares|tag bytes"):
            wire.unpack(bad, opener=Opener(kb.recv, "leader"))
        assert name


def test_wrong_key_wrong_direction_and_wrong_peer() -> None:
    ka, kb = keys()
    other, _ = keys()
    frame = bytes(_sealed(Sealer(ka.send, "leader", segment_size=SEG)))
    with pytest.raises(CryptoError, match="authentication failed"):
        wire.unpack(frame, opener=Opener(other.recv, "leader"))
    with pytest.raises(CryptoError, match="authentication failed"):
        wire.unpack(frame, opener=Opener(kb.send, "leader"))  # the other direction's key
    with pytest.raises(CryptoError, match="receives only from 'follower'"):
        wire.unpack(frame, opener=Opener(kb.recv, "follower"))
    with pytest.raises(CryptoError, match="uses aes-256-gcm"):
        wire.unpack(frame, opener=Opener(kb.recv, "leader", cipher="chacha20-poly1305"))


def test_replay_and_reordering_are_rejected(pair) -> None:  # type: ignore[no-untyped-def]
    sealer, opener = pair
    f1, f2, f3 = (bytes(_sealed(sealer, seq=s, n=100)) for s in (1, 2, 5))
    assert wire.unpack(f1, opener=opener).seq == 1
    with pytest.raises(CryptoError, match="replay"):
        wire.unpack(f1, opener=opener)
    assert wire.unpack(f3, opener=opener).seq == 5  # gaps are fine (lost frames are the channel's job)
    with pytest.raises(CryptoError, match=r"seq 2 rejected as a replay or out of order: last accepted seq is 5"):
        wire.unpack(f2, opener=opener)


def test_sealer_refuses_to_reuse_a_seq() -> None:
    ka, _ = keys()
    sealer = Sealer(ka.send, "leader")
    wire.pack({}, sender="leader", seq=4, sealer=sealer)
    with pytest.raises(CryptoError, match="repeated seq would repeat a nonce"):
        wire.pack({}, sender="leader", seq=4, sealer=sealer)
    with pytest.raises(ValueError, match="does not match the sealer"):
        wire.pack({}, sender="follower", seq=5, sealer=sealer)


def test_keys_never_show_up_in_text_or_pickles() -> None:
    raw = bytes(range(100, 132))
    key = secure.Key(raw)
    text = repr(key) + str(key) + repr(secure.SessionKeys(key, key, "aes-256-gcm")) + repr(Sealer(key, "leader"))
    assert raw.hex() not in text and "hidden" in repr(key)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(key)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(secure.KeyPair.generate())
    with pytest.raises(CryptoError) as e:
        secure.aead_decrypt("aes-256-gcm", key, bytes(12), b"", bytes(20))
    assert raw.hex() not in str(e.value)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        secure.Key(b"short")
    with pytest.raises(ValueError, match="cipher must be one of"):
        Sealer(secure.Key(bytes(32)), "x", cipher="rot13")
    with pytest.raises(ValueError, match="segment_size"):
        Sealer(secure.Key(bytes(32)), "x", segment_size=100)
    a, b = secure.KeyPair.generate(), secure.KeyPair.generate()
    with pytest.raises(ValueError, match="at least 16 random bytes"):
        secure.derive_session_keys(a, b.public_bytes, me="x", peer="y", session_id=b"short")
    with pytest.raises(TypeError, match="splitlink.secure.Key"):
        Sealer(bytes(32), "x")  # type: ignore[arg-type]
