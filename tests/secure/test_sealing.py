"""Sealed frames: round trips, and every attack the format must detect."""

from __future__ import annotations

import pickle
import re

import pytest
import torch

from splitlink import CryptoError, WireError, secure, wire
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
    return (Sealer(ka.send, "leader", cipher=request.param, segment_size=SEG), Opener(kb.recv, "leader", cipher=request.param))


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


def _varint(v: int) -> bytes:
    v &= (1 << 64) - 1  # negative int64 values are encoded as their two's complement
    out = bytearray()
    while v >= 0x80:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _encode_sealed(
    *,
    sender: str,
    seq: int,
    step: int,
    kind: str,
    cipher: int,
    segment_size: int,
    tags: bytes,
    ciphertext: bytes,
    plaintext_length: int | None = None,
) -> bytes:
    """The sealed-frame layout, written independently of the native encoder: the fields in the
    order the Sealer writes them, every varint field present, then zero padding that puts the
    ciphertext at a 64-byte aligned offset (aead.h)."""

    def var(field: int, v: int) -> bytes:
        return _varint(field << 3) + _varint(v)

    def blob(field: int, b: bytes) -> bytes:
        return _varint(field << 3 | 2) + _varint(len(b)) + b

    plen = len(ciphertext) if plaintext_length is None else plaintext_length
    head = (
        var(10, 1)
        + blob(2, sender.encode())
        + var(3, seq)
        + var(4, step)
        + blob(5, kind.encode())
        + var(6, cipher)
        + var(7, segment_size)
        + var(8, plen)
        + blob(9, tags)
    )
    tail = _varint(15 << 3 | 2) + _varint(len(ciphertext))
    pad = -(len(head) + 2 + len(tail)) % 64
    return head + blob(14, bytes(pad)) + tail + ciphertext


def _fields(msg) -> dict:  # type: ignore[no-untyped-def]
    return {
        "sender": msg.sender,
        "seq": msg.seq,
        "step": msg.step,
        "kind": msg.kind,
        "cipher": msg.cipher,
        "segment_size": msg.segment_size,
        "tags": bytes(msg.tags),
        "ciphertext": bytes(msg.ciphertext),
    }


# An Opener's CryptoError names the sender and seq once the header parses ("frame from 'leader'
# seq 1 ..."), and otherwise the peer it expected ("sealed frame from 'leader' rejected: ...").
NAMES_SENDER = re.compile(r"frame from '[^']*' seq \d+|sealed frame from 'leader' rejected: ")


@pytest.mark.parametrize("cipher", ["aes-256-gcm", "chacha20-poly1305"])
def test_every_bit_of_the_header_and_a_sample_of_the_ciphertext_is_checked(cipher: str) -> None:
    ka, kb = keys(cipher)
    sealer = Sealer(ka.send, "leader", cipher=cipher, segment_size=SEG)
    n = 1500
    frame = bytes(_sealed(sealer, n=n))
    ct_offset = len(frame) - wire.packed_size(tensors(n), sender="leader", seq=1, step=7, kind="forward")
    assert ct_offset % 64 == 0 and ct_offset > 2 * 16  # two segments: the header holds two tags
    assert wire.unpack(frame, opener=Opener(kb.recv, "leader", cipher=cipher)).seq == 1
    # All 8 bits of every byte before the ciphertext (routing fields, field tags and lengths, tags,
    # padding), and all 8 bits of every 97th ciphertext byte and of the last one.
    positions = [*range(ct_offset), *range(ct_offset, len(frame), 97), len(frame) - 1]
    accepted = []
    for i in positions:
        for bit in range(8):
            bad = bytearray(frame)
            bad[i] ^= 1 << bit
            try:
                wire.unpack(bytes(bad), opener=Opener(kb.recv, "leader", cipher=cipher))
            except (CryptoError, WireError) as e:
                assert NAMES_SENDER.search(str(e)), str(e)
            else:
                accepted.append((i, bit))
    assert accepted == [], f"(byte, bit) flips that still opened: {accepted[:20]}"


def test_flipped_padding_tag_is_refused(sealed_pb2) -> None:  # type: ignore[no-untyped-def]
    # Reported: the padding's field tag 0x72 (field 14) with bit 3 flipped reads as field 15 (a
    # first ciphertext the real one replaced), with bit 4 as field 12 (skipped as unknown); both
    # frames opened and returned their tensors.
    ka, kb = keys()
    frame = bytes(_sealed(Sealer(ka.send, "leader", segment_size=SEG), n=1500))
    msg = sealed_pb2.SealedFrame()
    msg.ParseFromString(frame)
    at = frame.index(bytes(msg.tags)) + len(msg.tags)  # the padding field follows the tags
    assert frame[at] == 0x72
    ct_tag = len(frame) - len(msg.ciphertext) - len(_varint(len(msg.ciphertext))) - 1
    for flipped, why in (
        (0x7A, f"repeats field 'ciphertext' \\(15\\) at byte {ct_tag}; it first appeared at byte {at}"),
        (0x62, f"unknown field 12 \\(wire type 2\\) at byte {at}"),
    ):
        bad = bytearray(frame)
        bad[at] = flipped
        with pytest.raises(CryptoError, match=why):
            wire.unpack(bytes(bad), opener=Opener(kb.recv, "leader"))
    assert wire.unpack(frame, opener=Opener(kb.recv, "leader")).seq == 1


def test_the_layout_is_exactly_the_documented_one(sealed_pb2) -> None:  # type: ignore[no-untyped-def]
    ka, kb = keys()
    frame = bytes(
        wire.pack(
            tensors(3000), sender="leader", seq=5, step=-2, kind="backward", sealer=Sealer(ka.send, "leader", segment_size=SEG)
        )
    )
    msg = sealed_pb2.SealedFrame()
    msg.ParseFromString(frame)
    assert msg.sealed_version == 1 and msg.plaintext_length == len(msg.ciphertext)
    assert _encode_sealed(**_fields(msg)) == frame
    # protobuf writes the same fields in field-number order (sealed_version after the tags); that
    # is not the layout the Sealer writes, and the framing is not authenticated, so it is refused.
    reserialized = msg.SerializeToString()
    assert reserialized != frame and len(reserialized) == len(frame)
    with pytest.raises(CryptoError, match="sealed frame byte 0 is 0x12 where splitlink's encoding of this header has 0x50"):
        wire.unpack(reserialized, opener=Opener(kb.recv, "leader"))
    # So is an extra unknown field, even one a protobuf reader would skip.
    with pytest.raises(CryptoError, match="unknown field 100 \\(wire type 0\\) at byte 2"):
        wire.unpack(frame[:2] + b"\xa0\x06\x01" + frame[2:], opener=Opener(kb.recv, "leader"))
    assert wire.unpack(frame, opener=Opener(kb.recv, "leader")).step == -2


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

    def rebuild(new_ct: bytes, new_tags: bytes) -> bytes:
        # In the exact layout the Sealer writes, so that only the AEAD can refuse the frame.
        return _encode_sealed(**{**_fields(msg), "ciphertext": new_ct, "tags": new_tags})

    seg = [ct[i * SEG : (i + 1) * SEG] for i in range(n)]
    tag = [tags[i * 16 : (i + 1) * 16] for i in range(n)]
    # The untouched rebuild is the frame itself, and opens.
    assert rebuild(ct, tags) == frame
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
    outcome = {}
    for name, bad in cases.items():
        try:
            wire.unpack(bad, opener=Opener(kb.recv, "leader"))
            outcome[name] = "opened"
        except CryptoError as e:
            outcome[name] = str(e)
    # A reordered or spliced frame fails at its first altered segment (0 here); a shortened one in
    # segment 0 already (the segment count and plaintext length are in every segment's AAD).
    expected = re.compile(r"authentication failed for frame from 'leader' seq 1 \(segment 0 of ")
    assert all(expected.search(m) for m in outcome.values()), outcome


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
