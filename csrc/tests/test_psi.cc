#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "splitlink/errors.h"
#include "splitlink/psi/ecdh.h"

namespace splitlink::psi {
namespace {

void pack(const std::vector<std::string>& ids, std::vector<uint8_t>& data, std::vector<uint64_t>& off) {
  off = {0};
  for (const auto& s : ids) {
    data.insert(data.end(), s.begin(), s.end());
    off.push_back(data.size());
  }
}

TEST(Psi, BlindingCommutes) {
  std::vector<std::string> ids;
  for (int i = 0; i < 500; ++i) ids.push_back("id-" + std::to_string(i));
  ids.push_back("");
  ids.push_back(std::string(10000, 'x'));
  std::vector<uint8_t> data;
  std::vector<uint64_t> off;
  pack(ids, data, off);
  const size_t n = ids.size();
  Blinder a = Blinder::generate(), b = Blinder::generate();
  std::vector<uint8_t> ha(n * kPointBytes), hb(n * kPointBytes), hab(n * kPointBytes), hba(n * kPointBytes);
  a.hash_and_blind(data.data(), off.data(), n, ha.data());
  b.hash_and_blind(data.data(), off.data(), n, hb.data());
  b.blind(ha.data(), n, hab.data());
  a.blind(hb.data(), n, hba.data(), 1);
  EXPECT_EQ(hab, hba);
  EXPECT_NE(ha, hb);
  std::vector<uint8_t> again(n * kPointBytes);
  a.hash_and_blind(data.data(), off.data(), n, again.data(), 1);  // one thread, same result
  EXPECT_EQ(ha, again);
}

TEST(Psi, HashIsDeterministicAndCanonical) {
  uint8_t x[kPointBytes], y[kPointBytes], z[kPointBytes];
  hash_to_point(reinterpret_cast<const uint8_t*>("a"), 1, x);
  hash_to_point(reinterpret_cast<const uint8_t*>("a"), 1, y);
  hash_to_point(reinterpret_cast<const uint8_t*>("a"), 1, z, 1);
  EXPECT_EQ(0, std::memcmp(x, y, kPointBytes));
  EXPECT_NE(0, std::memcmp(x, z, kPointBytes));
  EXPECT_EQ(0, x[31] & 0x80);
}

TEST(Psi, SmallOrderPointsFromAPeerAreRefused) {
  Blinder a = Blinder::generate();
  std::vector<uint8_t> pts(2 * kPointBytes, 0), out(2 * kPointBytes);
  pts[kPointBytes] = 1;
  EXPECT_THROW(a.blind(pts.data(), 2, out.data()), CryptoError);
}

TEST(Psi, DecreasingOffsetsAreRejected) {
  Blinder a = Blinder::generate();
  const uint8_t data[4] = {1, 2, 3, 4};
  const uint64_t off[3] = {0, 3, 2};
  std::vector<uint8_t> out(2 * kPointBytes);
  EXPECT_THROW(a.hash_and_blind(data, off, 2, out.data()), InvalidArgument);
}

TEST(Psi, BaselineRateIsPositive) { EXPECT_GT(x25519_derives_per_second(0.05), 100.0); }

}  // namespace
}  // namespace splitlink::psi
