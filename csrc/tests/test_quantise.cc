// Stochastic rounding for secure aggregation: reproducible whatever the thread count, within one
// step, unbiased, clipped values counted, non-finite refused.
#include <gtest/gtest.h>

#include <cmath>
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
