#include "splitlink/secure/quantise.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "../platform/evp.h"
#include "splitlink/errors.h"
#include "splitlink/parallel.h"

namespace splitlink::secure {
namespace {

constexpr uint64_t kChunk = uint64_t{1} << 16;  // elements per task (a multiple of 4: whole AES blocks)
constexpr uint64_t kBlock = 4096;               // elements per keystream refill (16 KiB, L1)

// Branch-free and without libm calls: the clamps send NaN to -levels (comparisons with NaN are
// false), so every conversion is defined; returns whether any input was not finite.
bool quantise_block(const float* __restrict x, uint64_t m, double clip, double levels, double scale,
                    const uint32_t* __restrict u, float* __restrict q, uint64_t& clipped) {
  bool bad = false;
  uint64_t count = 0;
  for (uint64_t j = 0; j < m; ++j) {
    const double xv = x[j];
    const double a = std::fabs(xv);
    bad |= !(a <= 3.5e38);
    count += a > clip;
    double v = xv * scale;
    v = v > -levels ? v : -levels;
    v = v < levels ? v : levels;
    // floor and fraction without branches: f > 0, so truncation is floor. Adding 2^24 rounds v
    // to a multiple of 2^-28 (a bias below 2^-28 of a step); frac is then exact.
    const double f = v + 16777216.0;
    const int64_t fi = static_cast<int64_t>(f);
    const double frac = f - static_cast<double>(fi);  // [0, 1)
    // round up when (word >> 1) < frac * 2^31: probability frac (to 2^-31), as integer arithmetic
    const int64_t thresh = static_cast<int64_t>(frac * 2147483648.0);
    const int64_t w = static_cast<int64_t>(u[j] >> 1);
    const int64_t up = static_cast<int64_t>(static_cast<uint64_t>(w - thresh) >> 63);
    q[j] = static_cast<float>(fi - 16777216 + up);
  }
  clipped += count;
  return bad;
}

}  // namespace

uint64_t stochastic_quantise(const float* x, uint64_t n, double clip, double levels, const uint8_t* key16, float* q,
                             unsigned threads) {
  SL_CHECK(std::isfinite(clip) && clip > 0, InvalidArgument, "clip must be finite and > 0, got " << clip);
  SL_CHECK(levels >= 1 && levels < 16777216.0 && levels == std::floor(levels), InvalidArgument,
           "levels must be an integer in [1, 2^24), got " << levels);
  SL_CHECK(n < (uint64_t{1} << 34), InvalidArgument, "at most 2^34 values per call");
  const double scale = levels / clip;
  const uint64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<uint64_t> clipped(chunks, 0);
  std::vector<uint64_t> first_bad(chunks, UINT64_MAX);
  parallel_for(chunks, [&](size_t c) {
    const uint64_t b = c * kChunk, e = std::min(n, b + kChunk);
    openssl::CipherCtx ctx = openssl::new_ctx();
    uint8_t iv[16] = {0};
    const uint64_t block = b / 4;  // four 32-bit words per AES block
    for (int i = 0; i < 8; ++i) iv[15 - i] = static_cast<uint8_t>(block >> (8 * i));
    SL_CHECK(EVP_EncryptInit_ex2(ctx.get(), openssl::fetch_cipher("AES-128-CTR"), key16, iv, nullptr) == 1,
             CryptoError, "AES-128-CTR init failed: " << openssl::openssl_error());
    alignas(64) uint32_t u[kBlock];
    uint64_t count = 0;
    for (uint64_t k = b; k < e; k += kBlock) {
      const uint64_t m = std::min(kBlock, e - k);
      const uint64_t words = (m + 3) & ~uint64_t{3};
      std::memset(u, 0, words * 4);
      int outl = 0;
      SL_CHECK(EVP_EncryptUpdate(ctx.get(), reinterpret_cast<uint8_t*>(u), &outl, reinterpret_cast<uint8_t*>(u),
                                 static_cast<int>(words * 4)) == 1,
               CryptoError, "AES-128-CTR failed: " << openssl::openssl_error());
      const bool bad = quantise_block(x + k, m, clip, levels, scale, u, q + k, count);
      if (bad) {
        for (uint64_t j = 0; j < m; ++j) {
          if (!std::isfinite(x[k + j])) {
            first_bad[c] = k + j;
            break;
          }
        }
        return;
      }
    }
    clipped[c] = count;
  }, threads);
  for (uint64_t c = 0; c < chunks; ++c) {
    SL_CHECK(first_bad[c] == UINT64_MAX, InvalidArgument,
             "the update holds a non-finite value (" << x[first_bad[c]] << ") at flat index " << first_bad[c]
                                                     << "; secure aggregation needs finite updates");
  }
  uint64_t total = 0;
  for (uint64_t v : clipped) total += v;
  return total;
}

}  // namespace splitlink::secure
