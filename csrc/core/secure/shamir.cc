#include "splitlink/secure/shamir.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <algorithm>
#include <cstring>
#include <set>

#include "../platform/evp.h"
#include "splitlink/errors.h"

namespace splitlink::secure::shamir {
namespace {

using u128 = unsigned __int128;

uint64_t load64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
uint32_t load32(const uint8_t* p) {
  return uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24;
}
void store64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void store32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

size_t chunks_of(size_t len) { return (len + kChunkBytes - 1) / kChunkBytes; }

// Uniform in [0, p): 61 random bits, rejecting the single value p itself.
uint64_t random_element() {
  for (;;) {
    uint8_t b[8];
    SL_CHECK(RAND_bytes(b, sizeof b) == 1, CryptoError, "RAND_bytes failed: " << openssl::openssl_error());
    const uint64_t v = load64(b) & kPrime;
    OPENSSL_cleanse(b, sizeof b);
    if (v != kPrime) return v;
  }
}

struct Decoded {
  uint32_t x;
  uint32_t len;
  const uint8_t* ys;
};

Decoded decode(const uint8_t* s, size_t n, size_t index) {
  SL_CHECK(n >= kHeaderBytes, InvalidArgument,
           "Shamir share #" << index << " is " << n << " bytes, shorter than its " << kHeaderBytes << "-byte header");
  SL_CHECK(s[0] == kVersion, InvalidArgument,
           "Shamir share #" << index << " has version " << int{s[0]} << ", expected " << int{kVersion});
  Decoded d{load32(s + 1), load32(s + 5), s + kHeaderBytes};
  SL_CHECK(d.len >= 1 && d.len <= kMaxSecretBytes, InvalidArgument,
           "Shamir share #" << index << " declares a secret of " << d.len << " bytes (1.." << kMaxSecretBytes
                            << " allowed)");
  SL_CHECK(n == share_bytes(d.len), InvalidArgument,
           "Shamir share #" << index << " is " << n << " bytes; a share of a " << d.len << "-byte secret is "
                            << share_bytes(d.len));
  SL_CHECK(d.x != 0, InvalidArgument,
           "Shamir share #" << index << " has x = 0 (x = 0 is the secret itself; holders use 1..2^32-1)");
  return d;
}

}  // namespace

uint64_t add(uint64_t a, uint64_t b) {
  uint64_t s = a + b;  // < 2^62, no overflow
  return s >= kPrime ? s - kPrime : s;
}
uint64_t sub(uint64_t a, uint64_t b) { return a >= b ? a - b : a + kPrime - b; }
uint64_t mul(uint64_t a, uint64_t b) {
  const u128 p = static_cast<u128>(a) * b;  // < 2^122
  // 2^61 = 1 (mod p): fold the high bits onto the low 61.
  uint64_t r = static_cast<uint64_t>(p & kPrime) + static_cast<uint64_t>(p >> 61);  // < 2^62
  r = (r & kPrime) + (r >> 61);
  return r >= kPrime ? r - kPrime : r;
}
uint64_t inverse(uint64_t a) {
  SL_CHECK(a % kPrime != 0, InvalidArgument, "zero has no inverse mod 2^61-1");
  uint64_t result = 1, base = a % kPrime, e = kPrime - 2;  // Fermat: a^(p-2)
  while (e) {
    if (e & 1) result = mul(result, base);
    base = mul(base, base);
    e >>= 1;
  }
  return result;
}

size_t share_bytes(size_t secret_len) { return kHeaderBytes + 8 * chunks_of(secret_len); }

std::vector<std::vector<uint8_t>> split(const uint8_t* secret, size_t len, unsigned threshold,
                                        const std::vector<uint32_t>& xs) {
  SL_CHECK(len >= 1 && len <= kMaxSecretBytes, InvalidArgument,
           "a Shamir secret must be 1.." << kMaxSecretBytes << " bytes, got " << len);
  SL_CHECK(threshold >= 1 && threshold <= xs.size(), InvalidArgument,
           "Shamir threshold must be 1.." << xs.size() << " (the number of holders), got " << threshold);
  std::set<uint32_t> seen;
  for (uint32_t x : xs) {
    SL_CHECK(x != 0, InvalidArgument, "Shamir holder coordinate x = 0 would reveal the secret; use 1..2^32-1");
    SL_CHECK(seen.insert(x).second, InvalidArgument, "Shamir holder coordinate x = " << x << " appears twice");
  }
  const size_t nc = chunks_of(len);
  std::vector<std::vector<uint8_t>> out(xs.size(), std::vector<uint8_t>(share_bytes(len)));
  for (size_t i = 0; i < xs.size(); ++i) {
    out[i][0] = kVersion;
    store32(out[i].data() + 1, xs[i]);
    store32(out[i].data() + 5, static_cast<uint32_t>(len));
  }
  std::vector<uint64_t> coef(threshold);
  for (size_t c = 0; c < nc; ++c) {
    uint64_t s = 0;
    const size_t b = c * kChunkBytes, e = std::min(len, b + kChunkBytes);
    for (size_t k = e; k > b; --k) s = (s << 8) | secret[k - 1];
    coef[0] = s;  // < 2^56 < p
    for (unsigned j = 1; j < threshold; ++j) coef[j] = random_element();
    for (size_t i = 0; i < xs.size(); ++i) {
      uint64_t y = 0;  // Horner
      for (unsigned j = threshold; j-- > 0;) y = add(mul(y, xs[i]), coef[j]);
      store64(out[i].data() + kHeaderBytes + 8 * c, y);
    }
  }
  OPENSSL_cleanse(coef.data(), coef.size() * sizeof(uint64_t));
  return out;
}

uint32_t share_x(const uint8_t* share, size_t len) { return decode(share, len, 0).x; }

std::vector<uint8_t> combine(const std::vector<std::vector<uint8_t>>& shares, unsigned threshold) {
  SL_CHECK(threshold >= 1, InvalidArgument, "Shamir threshold must be at least 1");
  SL_CHECK(shares.size() >= threshold, InvalidArgument,
           "Shamir reconstruction needs " << threshold << " shares, got " << shares.size());
  std::vector<Decoded> d;
  std::set<uint32_t> seen;
  for (unsigned i = 0; i < threshold; ++i) {
    d.push_back(decode(shares[i].data(), shares[i].size(), i));
    SL_CHECK(seen.insert(d.back().x).second, InvalidArgument,
             "Shamir shares #" << i << " and an earlier one both have x = " << d.back().x
                               << "; each holder's share counts once");
    SL_CHECK(d.back().len == d[0].len, InvalidArgument,
             "Shamir share #" << i << " is of a " << d.back().len << "-byte secret, share #0 of a " << d[0].len
                              << "-byte one");
  }
  // Lagrange basis at 0: l_j = prod_{m != j} x_m / (x_m - x_j).
  std::vector<uint64_t> lag(threshold);
  for (unsigned j = 0; j < threshold; ++j) {
    uint64_t num = 1, den = 1;
    for (unsigned m = 0; m < threshold; ++m) {
      if (m == j) continue;
      num = mul(num, d[m].x);
      den = mul(den, sub(d[m].x, d[j].x));
    }
    lag[j] = mul(num, inverse(den));
  }
  const size_t len = d[0].len, nc = chunks_of(len);
  std::vector<uint8_t> secret(len);
  for (size_t c = 0; c < nc; ++c) {
    uint64_t s = 0;
    for (unsigned j = 0; j < threshold; ++j) {
      const uint64_t y = load64(d[j].ys + 8 * c);
      SL_CHECK(y < kPrime, InvalidArgument,
               "Shamir share #" << j << " (x = " << d[j].x << ") holds a value outside the field");
      s = add(s, mul(y, lag[j]));
    }
    const size_t b = c * kChunkBytes, e = std::min(len, b + kChunkBytes);
    const unsigned bits = static_cast<unsigned>(8 * (e - b));
    if (s >> bits) {
      OPENSSL_cleanse(secret.data(), secret.size());
      SL_FAIL(InvalidArgument,
              "Shamir shares are inconsistent (the reconstructed value does not fit the secret): "
              "a share is corrupted or from another secret");
    }
    for (size_t k = b; k < e; ++k) {
      secret[k] = static_cast<uint8_t>(s);
      s >>= 8;
    }
  }
  return secret;
}

}  // namespace splitlink::secure::shamir
