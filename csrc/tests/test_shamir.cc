// Shamir secret sharing over GF(2^61-1): field laws, every t-subset reconstructs, refusals.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

#include "splitlink/errors.h"
#include "splitlink/secure/shamir.h"

namespace splitlink::secure::shamir {
namespace {

std::vector<uint8_t> random_bytes(std::mt19937_64& rng, size_t n) {
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

TEST(ShamirField, LawsHoldOnRandomElements) {
  std::mt19937_64 rng(7);
  for (int i = 0; i < 2000; ++i) {
    const uint64_t a = rng() % kPrime, b = rng() % kPrime, c = rng() % kPrime;
    EXPECT_EQ(mul(a, b), mul(b, a));
    EXPECT_EQ(mul(a, add(b, c)), add(mul(a, b), mul(a, c)));
    EXPECT_EQ(sub(add(a, b), b), a);
    EXPECT_EQ(mul(mul(a, b), c), mul(a, mul(b, c)));
    if (a != 0) EXPECT_EQ(mul(a, inverse(a)), 1u);
    // Reference product by 128-bit remainder (independent of the folding reduction).
    EXPECT_EQ(mul(a, b), static_cast<uint64_t>((static_cast<unsigned __int128>(a) * b) % kPrime));
  }
  EXPECT_EQ(mul(kPrime - 1, kPrime - 1), 1u);  // (-1)^2
  EXPECT_THROW(inverse(0), InvalidArgument);
}

TEST(Shamir, EverySubsetOfThresholdSharesReconstructs) {
  std::mt19937_64 rng(11);
  for (unsigned n = 1; n <= 7; ++n) {
    for (unsigned t = 1; t <= n; ++t) {
      const auto secret = random_bytes(rng, 1 + rng() % 40);
      std::vector<uint32_t> xs;
      for (unsigned i = 0; i < n; ++i) xs.push_back(static_cast<uint32_t>(1 + rng() % 1000000) * 7 + i);
      const auto shares = split(secret.data(), secret.size(), t, xs);
      ASSERT_EQ(shares.size(), n);
      for (const auto& s : shares) ASSERT_EQ(s.size(), share_bytes(secret.size()));
      for (uint32_t mask = 0; mask < (1u << n); ++mask) {
        if (static_cast<unsigned>(__builtin_popcount(mask)) < t) continue;
        std::vector<std::vector<uint8_t>> subset;
        for (unsigned i = 0; i < n; ++i)
          if (mask & (1u << i)) subset.push_back(shares[i]);
        std::shuffle(subset.begin(), subset.end(), rng);
        EXPECT_EQ(combine(subset, t), secret) << "n=" << n << " t=" << t << " mask=" << mask;
      }
    }
  }
}

TEST(Shamir, AllByteValuesAndLengthsRoundTrip) {
  for (size_t len : {1u, 6u, 7u, 8u, 14u, 32u, 33u}) {
    std::vector<uint8_t> secret(len, 0xFF);
    const auto shares = split(secret.data(), len, 3, {1, 2, 3});
    EXPECT_EQ(combine({shares[2], shares[0], shares[1]}, 3), secret);
    std::fill(secret.begin(), secret.end(), 0);
    EXPECT_EQ(combine(split(secret.data(), len, 2, {5, 9}), 2), secret);
  }
}

TEST(Shamir, RefusesBadArgumentsAndShares) {
  const std::vector<uint8_t> secret(32, 42);
  EXPECT_THROW(split(secret.data(), secret.size(), 0, {1, 2}), InvalidArgument);
  EXPECT_THROW(split(secret.data(), secret.size(), 3, {1, 2}), InvalidArgument);
  EXPECT_THROW(split(secret.data(), secret.size(), 2, {0, 2}), InvalidArgument);
  EXPECT_THROW(split(secret.data(), secret.size(), 2, {3, 3}), InvalidArgument);
  EXPECT_THROW(split(secret.data(), 0, 1, {1}), InvalidArgument);
  auto shares = split(secret.data(), secret.size(), 3, {1, 2, 3, 4});
  EXPECT_THROW(combine({shares[0], shares[1]}, 3), InvalidArgument);             // too few
  EXPECT_THROW(combine({shares[0], shares[1], shares[0]}, 3), InvalidArgument);  // duplicate x
  auto zero = shares[2];
  zero[1] = zero[2] = zero[3] = zero[4] = 0;  // x = 0
  EXPECT_THROW(combine({shares[0], shares[1], zero}, 3), InvalidArgument);
  auto truncated = shares[2];
  truncated.pop_back();
  EXPECT_THROW(combine({shares[0], shares[1], truncated}, 3), InvalidArgument);
  auto out_of_field = shares[2];
  std::fill(out_of_field.begin() + kHeaderBytes, out_of_field.begin() + kHeaderBytes + 8, 0xFF);
  EXPECT_THROW(combine({shares[0], shares[1], out_of_field}, 3), InvalidArgument);
  auto other_len = split(secret.data(), 31, 3, {3, 5, 6});
  EXPECT_THROW(combine({shares[0], shares[1], other_len[0]}, 3), InvalidArgument);
  EXPECT_THROW(share_x(shares[0].data(), 3), InvalidArgument);
  EXPECT_EQ(share_x(shares[3].data(), shares[3].size()), 4u);
}

TEST(Shamir, TamperedShareGivesADifferentSecretOrIsRefused) {
  std::mt19937_64 rng(5);
  const auto secret = random_bytes(rng, 32);
  const auto shares = split(secret.data(), secret.size(), 3, {1, 2, 3});
  for (size_t byte = kHeaderBytes; byte < shares[1].size(); ++byte) {
    auto bad = shares[1];
    bad[byte] ^= 0x01;
    try {
      EXPECT_NE(combine({shares[0], bad, shares[2]}, 3), secret) << "byte " << byte;
    } catch (const InvalidArgument&) {
      // refused as inconsistent: also acceptable
    }
  }
}

TEST(Shamir, FewerThanThresholdSharesAreUniform) {
  // With t = 2, one share's y of a fixed secret is f(x) = s + a x with a uniform: its low bits
  // must be balanced. 4000 splits: each bit's frequency within 0.5 +- 0.05 (about 6 sigma).
  const std::vector<uint8_t> secret(7, 0);
  std::vector<int> ones(61, 0);
  const int trials = 4000;
  for (int i = 0; i < trials; ++i) {
    const auto shares = split(secret.data(), secret.size(), 2, {1, 2});
    uint64_t y = 0;
    for (int k = 7; k >= 0; --k) y = (y << 8) | shares[0][kHeaderBytes + k];
    for (int b = 0; b < 61; ++b) ones[b] += (y >> b) & 1;
  }
  for (int b = 0; b < 60; ++b) {  // bit 60 is slightly biased: p is just under 2^61
    EXPECT_NEAR(ones[b] / double(trials), 0.5, 0.05) << "bit " << b;
  }
}

}  // namespace
}  // namespace splitlink::secure::shamir
