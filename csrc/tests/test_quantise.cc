// Stochastic rounding for secure aggregation: reproducible whatever the thread count, within one
// step, unbiased, clipped values counted, non-finite refused.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "splitlink/errors.h"
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

}  // namespace
}  // namespace splitlink::secure
