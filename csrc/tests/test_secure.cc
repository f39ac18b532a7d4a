// One conformance suite for both AEAD ciphers, plus key agreement and mask properties.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "splitlink/buffer.h"
#include "splitlink/errors.h"
#include "splitlink/secure/aead.h"
#include "splitlink/secure/kx.h"
#include "splitlink/secure/mask.h"

namespace splitlink::secure {
namespace {

SecretKey key_of(uint8_t seed) {
  std::vector<uint8_t> b(kKeyBytes);
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<uint8_t>(seed + 13 * i);
  return SecretKey(b.data(), b.size());
}

struct Sealed {
  std::vector<uint8_t> bytes;
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

TEST_P(CipherConformance, EveryByteFlipIsRejected) {
  Sealer s(GetParam(), key_of(2), "leader", 4096);
  std::vector<uint8_t> plain(9000, 0x42);
  const Sealed sealed = seal(s, 3, plain);
  std::vector<uint8_t> out(plain.size());
  for (size_t i = 0; i < sealed.bytes.size(); i += 7) {
    std::vector<uint8_t> bad = sealed.bytes;
    bad[i] ^= 0x10;
    Opener o(GetParam(), key_of(2), "leader");
    EXPECT_THROW(o.open(bad.data(), bad.size(), out.data(), out.size(), 1), CryptoError) << "byte " << i;
  }
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

INSTANTIATE_TEST_SUITE_P(BothCiphers, CipherConformance, ::testing::Values(Cipher::kAes256Gcm, Cipher::kChaCha20Poly1305),
                         [](const ::testing::TestParamInfo<Cipher>& i) {
                           return i.param == Cipher::kAes256Gcm ? std::string("aes256gcm") : std::string("chacha20poly1305");
                         });

TEST(KeyAgreement, DirectionsPairUp) {
  auto a = X25519KeyPair::generate(), b = X25519KeyPair::generate();
  const std::vector<uint8_t> sid(32, 9);
  const auto pa = a.public_key(), pb = b.public_key();
  const SessionKeys ka = derive_session_keys(a, pb.data(), "leader", "follower", sid, Cipher::kAes256Gcm);
  const SessionKeys kb = derive_session_keys(b, pa.data(), "follower", "leader", sid, Cipher::kAes256Gcm);
  EXPECT_TRUE(ka.send.equals(kb.recv));
  EXPECT_TRUE(ka.recv.equals(kb.send));
  EXPECT_FALSE(ka.send.equals(ka.recv));
  EXPECT_TRUE(derive_mask_key(a, pb.data(), "leader", "follower", sid).equals(derive_mask_key(b, pa.data(), "follower", "leader", sid)));
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
