// One conformance suite for both AEAD ciphers, plus key agreement and mask properties.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "splitlink/buffer.h"
#include "splitlink/errors.h"
#include "splitlink/secure/aead.h"
#include "splitlink/secure/kx.h"
#include "splitlink/secure/mask.h"
#include "splitlink/secure/sealed.h"

namespace splitlink::secure {
namespace {

SecretKey key_of(uint8_t seed) {
  std::vector<uint8_t> b(kKeyBytes);
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<uint8_t>(seed + 13 * i);
  return SecretKey(b.data(), b.size());
}

struct Sealed {
  std::vector<uint8_t> bytes;
  SealedLayout layout;
};

Sealed seal(Sealer& s, uint64_t seq, const std::vector<uint8_t>& plain) {
  wire::FrameMeta m;
  m.sender = s.sender();
  m.seq = seq;
  m.step = 5;
  m.kind = "forward";
  s.claim(seq);
  const SealedLayout L = plan_sealed(m, s.cipher(), s.segment_size(), plain.size());
  Sealed out;
  out.layout = L;
  out.bytes.resize(L.total);
  write_sealed_header(L, m, s.cipher(), s.segment_size(), plain.size(), out.bytes.data());
  s.seal_segments(L, m, plain.size(), out.bytes.data(), plain.data(), 2);
  return out;
}

class CipherConformance : public ::testing::TestWithParam<Cipher> {};

TEST_P(CipherConformance, RoundTripsEverySize) {
  for (size_t n : {size_t{0}, size_t{1}, size_t{4095}, size_t{4096}, size_t{4097}, size_t{100000}}) {
    Sealer s(GetParam(), key_of(1), "leader", 4096);
    Opener o(GetParam(), key_of(1), "leader");
    std::vector<uint8_t> plain(n);
    for (size_t i = 0; i < n; ++i) plain[i] = static_cast<uint8_t>(i * 7);
    const Sealed sealed = seal(s, 1, plain);
    std::vector<uint8_t> out(n + 1);
    const SealedHeader h = o.open(sealed.bytes.data(), sealed.bytes.size(), out.data(), out.size(), 2);
    EXPECT_EQ(h.meta.seq, 1u);
    EXPECT_TRUE(std::equal(plain.begin(), plain.end(), out.begin())) << n;
  }
}

std::string open_error(Cipher c, const SecretKey& key, const std::vector<uint8_t>& bytes) {
  std::vector<uint8_t> out(bytes.size());
  Opener o(c, key, "leader");
  try {
    o.open(bytes.data(), bytes.size(), out.data(), out.size(), 1);
  } catch (const CryptoError& e) {
    return e.what();
  }
  return "";
}

TEST_P(CipherConformance, EveryBitOfTheHeaderAndASampleOfTheRestIsChecked) {
  Sealer s(GetParam(), key_of(2), "leader", 4096);
  std::vector<uint8_t> plain(9000, 0x42);
  const Sealed sealed = seal(s, 3, plain);
  ASSERT_EQ(open_error(GetParam(), key_of(2), sealed.bytes), "");  // the untouched frame opens
  // All 8 bits of every byte before the ciphertext (routing fields, framing, tags, padding)...
  std::vector<size_t> positions;
  for (size_t i = 0; i < sealed.layout.ciphertext_offset; ++i) positions.push_back(i);
  // ...and of every 61st ciphertext byte, plus the first and last.
  for (size_t i = sealed.layout.ciphertext_offset; i < sealed.bytes.size(); i += 61) positions.push_back(i);
  positions.push_back(sealed.bytes.size() - 1);
  for (size_t i : positions) {
    for (int bit = 0; bit < 8; ++bit) {
      std::vector<uint8_t> bad = sealed.bytes;
      bad[i] ^= static_cast<uint8_t>(1u << bit);
      EXPECT_NE(open_error(GetParam(), key_of(2), bad), "") << "byte " << i << " bit " << bit << " went unnoticed";
    }
  }
}

// The field tag in front of the padding is 0x72 (field 14, length-delimited). Flipping bit 3 makes
// it field 15 (a first "ciphertext" that the real one would replace), bit 4 field 12 (unknown):
// both used to open.
TEST_P(CipherConformance, FlippedPaddingTagIsRefused) {
  Sealer s(GetParam(), key_of(6), "leader", 4096);
  const Sealed sealed = seal(s, 1, std::vector<uint8_t>(5000, 3));
  const size_t pad_tag = sealed.layout.tags_offset + sealed.layout.segments * kTagBytes;
  ASSERT_EQ(sealed.bytes[pad_tag], 0x72);
  std::vector<uint8_t> as15 = sealed.bytes, as12 = sealed.bytes;
  as15[pad_tag] = 0x7A;
  as12[pad_tag] = 0x62;
  const std::string e15 = open_error(GetParam(), key_of(6), as15), e12 = open_error(GetParam(), key_of(6), as12);
  EXPECT_NE(e15.find("repeats field 'ciphertext' (15) at byte " + std::to_string(sealed.layout.ciphertext_offset - 3)),
            std::string::npos)
      << e15;
  EXPECT_NE(e12.find("unknown field 12 (wire type 2) at byte " + std::to_string(pad_tag)), std::string::npos) << e12;
}

TEST_P(CipherConformance, WrongKeyReplayAndReorderAreRejected) {
  Sealer s(GetParam(), key_of(3), "leader", 4096);
  std::vector<uint8_t> plain(5000, 1), out(5000);
  const Sealed a = seal(s, 1, plain), b = seal(s, 2, plain);
  Opener wrong(GetParam(), key_of(4), "leader");
  EXPECT_THROW(wrong.open(a.bytes.data(), a.bytes.size(), out.data(), out.size(), 1), CryptoError);
  Opener o(GetParam(), key_of(3), "leader");
  o.open(b.bytes.data(), b.bytes.size(), out.data(), out.size(), 1);
  EXPECT_THROW(o.open(a.bytes.data(), a.bytes.size(), out.data(), out.size(), 1), CryptoError);  // older seq
  EXPECT_THROW(o.open(b.bytes.data(), b.bytes.size(), out.data(), out.size(), 1), CryptoError);  // replay
  EXPECT_THROW(s.claim(2), CryptoError);  // the sealer never reuses a seq
}

TEST_P(CipherConformance, FailedOpenLeavesNoPlaintext) {
  Sealer s(GetParam(), key_of(5), "leader", 4096);
  std::vector<uint8_t> plain(10000, 0x77), out(10000, 0);
  Sealed sealed = seal(s, 1, plain);
  sealed.bytes.back() ^= 1;  // last segment fails; earlier ones decrypted fine
  Opener o(GetParam(), key_of(5), "leader");
  EXPECT_THROW(o.open(sealed.bytes.data(), sealed.bytes.size(), out.data(), out.size(), 2), CryptoError);
  for (uint8_t v : out) ASSERT_EQ(v, 0);
}

INSTANTIATE_TEST_SUITE_P(BothCiphers, CipherConformance,
                         ::testing::Values(Cipher::kAes256Gcm, Cipher::kChaCha20Poly1305),
                         [](const ::testing::TestParamInfo<Cipher>& i) {
                           return i.param == Cipher::kAes256Gcm ? std::string("aes256gcm")
                                                                : std::string("chacha20poly1305");
                         });

// Hand-edited sealed frames: each deviation from the encoder's layout is named with its byte.
class SealedLayoutTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Sealer s(Cipher::kAes256Gcm, key_of(8), "leader", 4096);
    sealed_ = seal(s, 300, std::vector<uint8_t>(6000, 9));
    ASSERT_NO_THROW(decode_sealed_header(sealed_.bytes.data(), sealed_.bytes.size()));
  }
  static std::string decode_error(const std::vector<uint8_t>& b) {
    try {
      decode_sealed_header(b.data(), b.size());
    } catch (const WireError& e) {
      return e.what();
    }
    return "";
  }
  std::vector<uint8_t> with(size_t at, size_t erase, std::vector<uint8_t> insert) const {
    std::vector<uint8_t> b = sealed_.bytes;
    b.erase(b.begin() + static_cast<std::ptrdiff_t>(at), b.begin() + static_cast<std::ptrdiff_t>(at + erase));
    b.insert(b.begin() + static_cast<std::ptrdiff_t>(at), insert.begin(), insert.end());
    return b;
  }
  Sealed sealed_;
};

TEST_F(SealedLayoutTest, UnknownFieldIsRefusedWithItsOffset) {
  // The encoder writes sealed_version (0x50 0x01) first; an unknown varint field 100 after it.
  ASSERT_EQ(sealed_.bytes[0], 0x50);
  const std::string e = decode_error(with(2, 0, {0xA0, 0x06, 0x05}));
  EXPECT_NE(e.find("unknown field 100 (wire type 0) at byte 2"), std::string::npos) << e;
}

TEST_F(SealedLayoutTest, RepeatedFieldIsRefusedWithBothOffsets) {
  // A second sealed_version right after the first.
  const std::string e = decode_error(with(2, 0, {0x50, 0x01}));
  EXPECT_NE(e.find("repeats field 'sealed_version' (10) at byte 2; it first appeared at byte 0"), std::string::npos)
      << e;
}

TEST_F(SealedLayoutTest, NonMinimalVarintIsRefusedAtTheFirstDifferingByte) {
  // seq 300 is 0xAC 0x02 after the seq tag 0x18; the same value padded to three bytes parses to
  // the same header but is not the encoder's layout.
  const std::vector<uint8_t> seq_field = {0x18, 0xAC, 0x02};
  const auto it = std::search(sealed_.bytes.begin(), sealed_.bytes.end(), seq_field.begin(), seq_field.end());
  ASSERT_NE(it, sealed_.bytes.end());
  const size_t at = static_cast<size_t>(it - sealed_.bytes.begin());
  const std::string e = decode_error(with(at + 2, 1, {0x82, 0x00}));
  EXPECT_NE(e.find("sealed frame byte " + std::to_string(at + 2) +
                   " is 0x82 where splitlink's encoding of this header has 0x02"),
            std::string::npos)
      << e;
}

TEST_F(SealedLayoutTest, FieldsOutOfOrderAreRefused) {
  // Move sealed_version (2 bytes) to just before the padding field, as protobuf would write it.
  const size_t pad_tag = sealed_.layout.tags_offset + sealed_.layout.segments * kTagBytes;
  std::vector<uint8_t> b(sealed_.bytes.begin() + 2, sealed_.bytes.begin() + static_cast<std::ptrdiff_t>(pad_tag));
  b.insert(b.end(), {0x50, 0x01});
  b.insert(b.end(), sealed_.bytes.begin() + static_cast<std::ptrdiff_t>(pad_tag), sealed_.bytes.end());
  ASSERT_EQ(b.size(), sealed_.bytes.size());
  const std::string e = decode_error(b);
  EXPECT_NE(e.find("sealed frame byte 0 is 0x12 where splitlink's encoding of this header has 0x50"), std::string::npos)
      << e;
}

TEST_F(SealedLayoutTest, NonZeroPaddingIsRefused) {
  const size_t pad_tag = sealed_.layout.tags_offset + sealed_.layout.segments * kTagBytes;
  ASSERT_GT(sealed_.bytes[pad_tag + 1], 0);  // this frame has padding content
  std::vector<uint8_t> b = sealed_.bytes;
  b[pad_tag + 2] = 1;
  const std::string e = decode_error(b);
  EXPECT_NE(e.find("padding byte " + std::to_string(pad_tag + 2) + " is not zero"), std::string::npos) << e;
}

TEST(KeyAgreement, DirectionsPairUp) {
  auto a = X25519KeyPair::generate(), b = X25519KeyPair::generate();
  const std::vector<uint8_t> sid(32, 9);
  const auto pa = a.public_key(), pb = b.public_key();
  const SessionKeys ka = derive_session_keys(a, pb.data(), "leader", "follower", sid, Cipher::kAes256Gcm);
  const SessionKeys kb = derive_session_keys(b, pa.data(), "follower", "leader", sid, Cipher::kAes256Gcm);
  EXPECT_TRUE(ka.send.equals(kb.recv));
  EXPECT_TRUE(ka.recv.equals(kb.send));
  EXPECT_FALSE(ka.send.equals(ka.recv));
  EXPECT_TRUE(derive_mask_key(a, pb.data(), "leader", "follower", sid)
                  .equals(derive_mask_key(b, pa.data(), "follower", "leader", sid)));
}

TEST(Masks, FivePartiesCancelExactly) {
  const int n = 5;
  std::vector<X25519KeyPair> kp;
  for (int i = 0; i < n; ++i) kp.push_back(X25519KeyPair::generate());
  const std::vector<uint8_t> sid(16, 1);
  const uint64_t len = 70001;
  std::vector<std::vector<float>> xs(n, std::vector<float>(len));
  std::vector<std::vector<uint64_t>> ys(n, std::vector<uint64_t>(len));
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  for (int i = 0; i < n; ++i) {
    std::vector<MaskStream> streams;
    for (int j = 0; j < n; ++j) {
      if (j == i) continue;
      const std::string me = "p" + std::to_string(i), peer = "p" + std::to_string(j);
      streams.push_back({derive_mask_key(kp[i], kp[j].public_key().data(), me, peer, sid), me < peer ? 1 : -1});
    }
    for (auto& v : xs[i]) v = nd(rng);
    mask_encode(xs[i].data(), len, 20, streams, 42, ys[i].data(), "x", 2);
  }
  std::vector<const uint64_t*> ptrs;
  for (auto& y : ys) ptrs.push_back(y.data());
  std::vector<float> sum(len);
  sum_decode(ptrs, len, 20, sum.data(), 2);
  for (uint64_t k = 0; k < len; ++k) {
    double exact = 0;
    for (int i = 0; i < n; ++i) exact += xs[i][k];
    ASSERT_NEAR(sum[k], exact, n * std::ldexp(1.0, -21) + std::fabs(exact) * 1e-7) << k;
  }
}

}  // namespace
}  // namespace splitlink::secure
