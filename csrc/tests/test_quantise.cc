// Stochastic rounding for secure aggregation: reproducible whatever the thread count, within one
// step, unbiased, clipped values counted, non-finite refused.
#include <gtest/gtest.h>
#include <openssl/evp.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "splitlink/errors.h"
#include "splitlink/secure/aead.h"
#include "splitlink/secure/quantise.h"

namespace splitlink::secure {
namespace {

const uint8_t kKey[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};

TEST(StochasticQuantise, SameOutputOnAnyThreadCountAndWithinOneStep) {
  std::mt19937 rng(3);
  std::normal_distribution<float> d(0.f, 1.f);
  const uint64_t n = 300001;  // several tasks and a ragged tail
  std::vector<float> x(n), q1(n), q4(n);
  for (auto& v : x) v = d(rng);
  const double clip = 2.5, levels = 32767;
  const uint64_t c1 = stochastic_quantise(x.data(), n, clip, levels, kKey, q1.data(), 1);
  const uint64_t c4 = stochastic_quantise(x.data(), n, clip, levels, kKey, q4.data(), 4);
  EXPECT_EQ(q1, q4);
  EXPECT_EQ(c1, c4);
  uint64_t expect_clipped = 0;
  for (uint64_t k = 0; k < n; ++k) {
    expect_clipped += std::fabs(x[k]) > clip;
    const double v = std::min(std::max(double(x[k]) * levels / clip, -levels), levels);
    ASSERT_EQ(q1[k], std::floor(q1[k]));
    ASSERT_TRUE(q1[k] == std::floor(v) || q1[k] == std::floor(v) + 1) << k;
    ASSERT_LE(std::fabs(q1[k]), levels);
  }
  EXPECT_EQ(c1, expect_clipped);
  EXPECT_GT(c1, 0u);
}

// The documented formula evaluated element by element in the test, with the rounding words taken
// straight from OpenSSL (AES-128-CTR, IV = (u64 stream id 0, u32 1, u32 block counter BE)): the
// library's vectorised and scalar paths must both give exactly these integers.
std::vector<uint32_t> rounding_words(const uint8_t* key16, uint64_t n) {
  std::vector<uint32_t> w((n + 3) / 4 * 4, 0);
  uint8_t iv[16] = {0};
  iv[8] = 1;
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  int outl = 0;
  EXPECT_EQ(EVP_EncryptInit_ex(ctx, EVP_aes_128_ctr(), nullptr, key16, iv), 1);
  auto* p = reinterpret_cast<unsigned char*>(w.data());
  EXPECT_EQ(EVP_EncryptUpdate(ctx, p, &outl, p, static_cast<int>(w.size() * 4)), 1);
  EVP_CIPHER_CTX_free(ctx);
  return w;
}

int32_t reference_q(float x, double clip, double levels, uint32_t word) {
  double v = static_cast<double>(x) * (levels / clip);
  v = std::isnan(v) ? -levels : std::min(std::max(v, -levels), levels);
  const double f = v + 16777216.0;
  const double fl = std::floor(f);
  const double thresh = std::floor((f - fl) * 2147483648.0);
  return static_cast<int32_t>(fl - 16777216.0) + (static_cast<double>(word >> 1) < thresh ? 1 : 0);
}

TEST(StochasticQuantise, MatchesTheFormulaExactlyOnEveryElement) {
  const uint64_t n = 70003;  // whole vector blocks and a ragged scalar tail
  std::mt19937 rng(11);
  std::normal_distribution<float> d(0.f, 1.f);
  std::vector<float> x(n);
  for (auto& v : x) v = d(rng);
  // edges: exactly on the clip, just past it, huge, zero, negative zero, tiny, exact grid points
  const float edges[] = {2.5f, -2.5f, 2.5000002f, -1e30f, 1e30f, 0.f, -0.f, 1e-30f, -1e-30f, 1.f / 32767.f};
  for (size_t i = 0; i < sizeof edges / sizeof edges[0]; ++i) {
    x[i] = edges[i];
    x[n - 1 - i] = edges[i];
  }
  const double clip = 2.5, levels = 32767;
  const auto words = rounding_words(kKey, n);
  std::vector<float> q(n);
  std::vector<uint32_t> y(n);
  stochastic_quantise(x.data(), n, clip, levels, kKey, q.data(), 2);
  quantise_mask32(x.data(), n, clip, levels, kKey, {}, 0, y.data(), 3);  // no streams: y = q in the ring
  for (uint64_t k = 0; k < n; ++k) {
    const int32_t want = reference_q(x[k], clip, levels, words[k]);
    ASSERT_EQ(q[k], static_cast<float>(want)) << "element " << k << " x = " << x[k];
    ASSERT_EQ(static_cast<int32_t>(y[k]), want) << "element " << k;
  }
}

TEST(StochasticQuantise, Unbiased) {
  const uint64_t n = 1 << 20;
  std::vector<float> x(n, 0.3f), q(n);
  stochastic_quantise(x.data(), n, 1.0, 127, kKey, q.data());
  double sum = 0;
  for (float v : q) sum += v;
  const double v = double(0.3f) * 127;  // 38.1: rounds up with probability 0.1
  // sd of the mean: sqrt(0.09 / 2^20) = 2.9e-4; allow 2e-3 (about 7 sd)
  EXPECT_NEAR(sum / n, v, 2e-3);
}

TEST(StochasticQuantise, RefusesNonFiniteAndBadRanges) {
  std::vector<float> x(70000, 0.f), q(70000);
  x[65541] = std::nanf("");
  try {
    stochastic_quantise(x.data(), x.size(), 1.0, 127, kKey, q.data());
    FAIL() << "NaN accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("flat index 65541"), std::string::npos) << e.what();
  }
  x[65541] = 0;
  EXPECT_THROW(stochastic_quantise(x.data(), x.size(), 0.0, 127, kKey, q.data()), InvalidArgument);
  EXPECT_THROW(stochastic_quantise(x.data(), x.size(), INFINITY, 127, kKey, q.data()), InvalidArgument);
  EXPECT_THROW(stochastic_quantise(x.data(), x.size(), 1.0, 1 << 24, kKey, q.data()), InvalidArgument);
}

SecretKey key_of(uint8_t seed) {
  uint8_t b[kKeyBytes];
  for (size_t i = 0; i < kKeyBytes; ++i) b[i] = static_cast<uint8_t>(seed * 31 + i);
  return SecretKey(b, kKeyBytes);
}

TEST(Ring32, PairwiseMasksCancelAndSelfMasksComeOff) {
  const uint64_t n = 200003;
  std::mt19937 rng(9);
  std::normal_distribution<float> d(0.f, 1.f);
  std::vector<float> xa(n), xb(n), qa(n), qb(n);
  for (auto& v : xa) v = d(rng);
  for (auto& v : xb) v = d(rng);
  const SecretKey pair = key_of(1), self_a = key_of(2), self_b = key_of(3);
  const uint8_t ka[16] = {7}, kb[16] = {8};
  std::vector<uint32_t> ya(n), yb(n), sum(n);
  quantise_mask32(xa.data(), n, 3.0, 32767, ka, {{pair, 1}, {self_a, 1}}, 5, ya.data(), 3);
  quantise_mask32(xb.data(), n, 3.0, 32767, kb, {{pair, -1}, {self_b, 1}}, 5, yb.data(), 1);
  stochastic_quantise(xa.data(), n, 3.0, 32767, ka, qa.data());
  stochastic_quantise(xb.data(), n, 3.0, 32767, kb, qb.data());
  // The server: masked inputs summed, the self masks taken off, in one pass.
  ring32_add_masks({ya.data(), yb.data()}, n, {{self_a, -1}, {self_b, -1}}, 5, 0, sum.data(), 2);
  size_t same_as_plain = 0;
  for (uint64_t k = 0; k < n; ++k) {
    ASSERT_EQ(static_cast<int32_t>(sum[k]), static_cast<int32_t>(qa[k]) + static_cast<int32_t>(qb[k])) << k;
    same_as_plain += ya[k] == static_cast<uint32_t>(static_cast<int32_t>(qa[k]));
  }
  EXPECT_LT(same_as_plain, 3u);  // a masked value equals the plain one with probability 2^-32
}

TEST(Ring32, InPlaceEqualsOutOfPlace) {
  const uint64_t n = 140001;
  std::mt19937 rng(5);
  std::normal_distribution<float> d(0.f, 1.f);
  std::vector<float> x(n);
  for (auto& v : x) v = d(rng);
  const SecretKey pair = key_of(6), self = key_of(7);
  std::vector<uint32_t> y(n);
  quantise_mask32(x.data(), n, 2.0, 32767, kKey, {{pair, -1}, {self, 1}}, 3, y.data(), 2);
  std::vector<float> inplace = x;  // the masked values overwrite the update
  auto* iy = reinterpret_cast<uint32_t*>(inplace.data());
  quantise_mask32(inplace.data(), n, 2.0, 32767, kKey, {{pair, -1}, {self, 1}}, 3, iy, 2);
  ASSERT_EQ(std::memcmp(iy, y.data(), n * 4), 0);
  // the server's sum into the first input's memory
  std::vector<uint32_t> other(n, 12345), sum(n);
  ring32_add_masks({y.data(), other.data()}, n, {{self, -1}}, 3, 0, sum.data(), 2);
  ring32_add_masks({y.data(), other.data()}, n, {{self, -1}}, 3, 0, y.data(), 2);
  EXPECT_EQ(y, sum);
  // a non-finite value is still reported with its index when the output is the input's memory
  inplace = x;
  inplace[100003] = std::numeric_limits<float>::infinity();
  try {
    quantise_mask32(inplace.data(), n, 2.0, 32767, kKey, {{self, 1}}, 3, reinterpret_cast<uint32_t*>(inplace.data()),
                    2);
    FAIL() << "inf accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("(inf) at flat index 100003"), std::string::npos) << e.what();
  }
}

TEST(Ring32, KeystreamPositionsAreConsistentAcrossCallsAndThreads) {
  const uint64_t n = 150001;
  const SecretKey k = key_of(4);
  std::vector<uint32_t> whole(n), parts(n), t1(n);
  ring32_add_masks({}, n, {{k, 1}}, 9, 0, whole.data(), 4);
  ring32_add_masks({}, n, {{k, 1}}, 9, 0, t1.data(), 1);
  EXPECT_EQ(whole, t1);
  // split at unaligned offsets: each piece continues the same stream
  ring32_add_masks({}, 7, {{k, 1}}, 9, 0, parts.data(), 1);
  ring32_add_masks({}, 70001, {{k, 1}}, 9, 7, parts.data() + 7, 2);
  ring32_add_masks({}, n - 70008, {{k, 1}}, 9, 70008, parts.data() + 70008, 3);
  EXPECT_EQ(whole, parts);
  std::vector<uint32_t> other(n);
  ring32_add_masks({}, n, {{k, 1}}, 10, 0, other.data());
  EXPECT_NE(whole, other);  // another stream id, another keystream
  EXPECT_THROW(ring32_add_masks({}, n, {{k, 2}}, 9, 0, other.data()), InvalidArgument);
}

}  // namespace
}  // namespace splitlink::secure
