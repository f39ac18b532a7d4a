#include "splitlink/secure/quantise.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "../platform/evp.h"
#include "splitlink/errors.h"
#include "splitlink/parallel.h"

namespace splitlink::secure {
namespace {

constexpr uint64_t kChunk = uint64_t{1} << 16;  // elements per task (a multiple of 4: whole AES blocks)
constexpr uint64_t kBlock = 4096;               // elements per keystream refill (16 KiB, L1)

// Stochastic rounding of x[0, m) with rounding words u into two's-complement integers q[0, m).
// Branch-free and without libm calls: the clamps send NaN to -levels (comparisons with NaN are
// false), so every conversion is defined; returns whether any input was not finite.
//
// floor and fraction without branches: f = v + 2^24 > 0, so truncation is floor. Adding 2^24
// rounds v to a multiple of 2^-28 (a bias below 2^-28 of a step); frac is then exact. Round up
// when (word >> 1) < frac * 2^31: probability frac (to 2^-31), as integer arithmetic. Every value
// fits an int32 (f < 2^25, frac * 2^31 < 2^31), so the SSE2 path (two doubles per instruction,
// the same IEEE operations in the same order) and the scalar path give identical results.
template <typename Out>
bool quantise_block(const float* __restrict x, uint64_t m, double clip, double levels, double scale,
                    const uint32_t* __restrict u, Out* __restrict q, uint64_t& clipped) {
  uint64_t j = 0;
  uint64_t count = 0;
  bool bad = false;
#if defined(__SSE2__)
  const __m128d vscale = _mm_set1_pd(scale), vclip = _mm_set1_pd(clip), vhi = _mm_set1_pd(levels),
                vlo = _mm_set1_pd(-levels), voff = _mm_set1_pd(16777216.0), v31 = _mm_set1_pd(2147483648.0),
                vmax = _mm_set1_pd(3.5e38);
  const __m128d vabs = _mm_castsi128_pd(_mm_set1_epi64x(0x7FFFFFFFFFFFFFFF));
  const __m128i ioff = _mm_set1_epi32(16777216);
  int badmask = 0;
  for (; j + 4 <= m; j += 4) {
    const __m128 xf = _mm_loadu_ps(x + j);
    const __m128d xs[2] = {_mm_cvtps_pd(xf), _mm_cvtps_pd(_mm_movehl_ps(xf, xf))};
    __m128i fi[2], th[2];
    for (int h = 0; h < 2; ++h) {
      const __m128d a = _mm_and_pd(xs[h], vabs);
      badmask |= _mm_movemask_pd(_mm_cmpnle_pd(a, vmax));  // not (a <= 3.5e38): also NaN
      count +=
          static_cast<uint64_t>(__builtin_popcount(static_cast<unsigned>(_mm_movemask_pd(_mm_cmpgt_pd(a, vclip)))));
      // max/min return their second operand when either is NaN: NaN -> -levels as the scalar path
      const __m128d v = _mm_min_pd(_mm_max_pd(_mm_mul_pd(xs[h], vscale), vlo), vhi);
      const __m128d f = _mm_add_pd(v, voff);
      fi[h] = _mm_cvttpd_epi32(f);
      const __m128d frac = _mm_sub_pd(f, _mm_cvtepi32_pd(fi[h]));
      th[h] = _mm_cvttpd_epi32(_mm_mul_pd(frac, v31));
    }
    const __m128i fi4 = _mm_unpacklo_epi64(fi[0], fi[1]), th4 = _mm_unpacklo_epi64(th[0], th[1]);
    const __m128i w = _mm_srli_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(u + j)), 1);
    const __m128i up = _mm_cmplt_epi32(w, th4);                      // -1 where rounding up
    const __m128i qi = _mm_sub_epi32(_mm_sub_epi32(fi4, ioff), up);  // fi - 2^24 + 1 where up
    if constexpr (std::is_same_v<Out, float>) {
      _mm_storeu_ps(q + j, _mm_cvtepi32_ps(qi));
    } else {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + j), qi);
    }
  }
  bad = badmask != 0;
#endif
  for (; j < m; ++j) {
    const double xv = x[j];
    const double a = std::fabs(xv);
    bad |= !(a <= 3.5e38);
    count += a > clip;
    double v = xv * scale;
    v = v > -levels ? v : -levels;
    v = v < levels ? v : levels;
    const double f = v + 16777216.0;
    const int32_t fi = static_cast<int32_t>(f);
    const double frac = f - static_cast<double>(fi);  // [0, 1)
    const int32_t thresh = static_cast<int32_t>(frac * 2147483648.0);
    const int32_t w = static_cast<int32_t>(u[j] >> 1);
    const int32_t qi = fi - 16777216 + (w < thresh ? 1 : 0);
    if constexpr (std::is_same_v<Out, float>) {
      q[j] = static_cast<float>(qi);
    } else {
      q[j] = static_cast<Out>(qi);
    }
  }
  clipped += count;
  return bad;
}

// 32-bit keystream words of one mask stream from element `first` on.
class Keystream32 {
 public:
  Keystream32(const uint8_t* key16, uint64_t stream_id, uint64_t first) : ctx_(openssl::new_ctx()) {
    uint8_t iv[16] = {0};
    for (int i = 0; i < 8; ++i) iv[i] = static_cast<uint8_t>(stream_id >> (8 * i));
    iv[8] = 1;
    const uint64_t block = first / 4;
    SL_CHECK(block < (uint64_t{1} << 32), InvalidArgument, "a 32-bit mask stream holds at most 2^34 values");
    for (int i = 0; i < 4; ++i) iv[15 - i] = static_cast<uint8_t>(block >> (8 * i));
    SL_CHECK(EVP_EncryptInit_ex2(ctx_.get(), openssl::fetch_cipher("AES-128-CTR"), key16, iv, nullptr) == 1,
             CryptoError, "AES-128-CTR init failed: " << openssl::openssl_error());
    if (first % 4) {  // start inside a block: keep its words from `first` on
      crypt(reinterpret_cast<uint8_t*>(spare_), sizeof spare_);
      have_ = first % 4;
    }
  }
  // out[0, m): the next m words (m <= kBlock).
  void next(uint32_t* out, uint64_t m) {
    // Whole blocks are generated; a partial block's rest is kept for the next call.
    uint64_t done = 0;
    while (done < m && have_ < 4) out[done++] = spare_[have_++];
    const uint64_t rest = m - done, whole = rest / 4 * 4;
    if (whole) {
      std::memset(out + done, 0, whole * 4);
      crypt(reinterpret_cast<uint8_t*>(out + done), whole * 4);
      done += whole;
    }
    if (done < m) {
      std::memset(spare_, 0, sizeof spare_);
      crypt(reinterpret_cast<uint8_t*>(spare_), 16);
      have_ = 0;
      while (done < m) out[done++] = spare_[have_++];
    }
  }

 private:
  void crypt(uint8_t* p, uint64_t len) {
    int outl = 0;
    SL_CHECK(EVP_EncryptUpdate(ctx_.get(), p, &outl, p, static_cast<int>(len)) == 1, CryptoError,
             "AES-128-CTR failed: " << openssl::openssl_error());
  }
  openssl::CipherCtx ctx_;
  uint32_t spare_[4] = {0, 0, 0, 0};
  uint64_t have_ = 4;
};

void check_streams(const std::vector<MaskStream>& streams) {
  for (const auto& s : streams) {
    SL_CHECK(s.sign == 1 || s.sign == -1, InvalidArgument, "mask sign must be +1 or -1");
  }
}

void apply_streams(std::vector<Keystream32>& prgs, const std::vector<MaskStream>& streams, uint32_t* acc, uint32_t* ks,
                   uint64_t m) {
  for (size_t j = 0; j < streams.size(); ++j) {
    prgs[j].next(ks, m);
    if (streams[j].sign > 0) {
      for (uint64_t t = 0; t < m; ++t) acc[t] += ks[t];
    } else {
      for (uint64_t t = 0; t < m; ++t) acc[t] -= ks[t];
    }
  }
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
  parallel_for(
      chunks,
      [&](size_t c) {
        const uint64_t b = c * kChunk, e = std::min(n, b + kChunk);
        Keystream32 rounding(key16, 0, b);
        alignas(64) uint32_t u[kBlock];
        uint64_t count = 0;
        for (uint64_t k = b; k < e; k += kBlock) {
          const uint64_t m = std::min(kBlock, e - k);
          rounding.next(u, m);
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
      },
      threads);
  for (uint64_t c = 0; c < chunks; ++c) {
    SL_CHECK(first_bad[c] == UINT64_MAX, InvalidArgument,
             "the update holds a non-finite value (" << x[first_bad[c]] << ") at flat index " << first_bad[c]
                                                     << "; secure aggregation needs finite updates");
  }
  uint64_t total = 0;
  for (uint64_t v : clipped) total += v;
  return total;
}

uint64_t quantise_mask32(const float* x, uint64_t n, double clip, double levels, const uint8_t* key16,
                         const std::vector<MaskStream>& streams, uint64_t stream_id, uint32_t* y, unsigned threads,
                         uint64_t first, const float* base, float weight) {
  SL_CHECK(std::isfinite(clip) && clip > 0, InvalidArgument, "clip must be finite and > 0, got " << clip);
  SL_CHECK(levels >= 1 && levels < 16777216.0 && levels == std::floor(levels), InvalidArgument,
           "levels must be an integer in [1, 2^24), got " << levels);
  SL_CHECK(first + n < (uint64_t{1} << 34), InvalidArgument, "at most 2^34 values per mask stream");
  SL_CHECK(std::isfinite(weight) && weight > 0, InvalidArgument, "weight must be finite and > 0, got " << weight);
  check_streams(streams);
  const double scale = levels / clip;
  const uint64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<uint64_t> clipped(chunks, 0);
  std::vector<uint64_t> first_bad(chunks, UINT64_MAX);
  std::vector<float> bad_value(chunks, 0.f);
  parallel_for(
      chunks,
      [&](size_t c) {
        const uint64_t b = c * kChunk, e = std::min(n, b + kChunk);
        Keystream32 rounding(key16, 0, first + b);
        std::vector<Keystream32> prgs;
        prgs.reserve(streams.size());
        for (const auto& s : streams) prgs.emplace_back(s.key.data(), stream_id, first + b);
        alignas(64) uint32_t u[kBlock];
        alignas(64) uint32_t ks[kBlock];
        alignas(64) uint32_t acc[kBlock];
        alignas(64) float delta[kBlock];
        uint64_t count = 0;
        for (uint64_t k = b; k < e; k += kBlock) {
          const uint64_t m = std::min(kBlock, e - k);
          const float* in = x + k;
          if (base != nullptr) {  // float32 (x - base) * weight, as torch's sub and mul would round it
            const float* __restrict xb = x + k;
            const float* __restrict bb = base + k;
            for (uint64_t j = 0; j < m; ++j) delta[j] = (xb[j] - bb[j]) * weight;
            in = delta;
          }
          rounding.next(u, m);
          if (quantise_block(in, m, clip, levels, scale, u, acc, count)) {
            // found before y[k, k+m) is written: y may be x's own memory
            for (uint64_t j = 0; j < m; ++j) {
              if (!std::isfinite(in[j])) {
                first_bad[c] = first + k + j;
                bad_value[c] = in[j];
                break;
              }
            }
            return;
          }
          apply_streams(prgs, streams, acc, ks, m);
          std::memcpy(y + k, acc, m * 4);
        }
        clipped[c] = count;
      },
      threads);
  for (uint64_t c = 0; c < chunks; ++c) {
    SL_CHECK(first_bad[c] == UINT64_MAX, InvalidArgument,
             "the update holds a non-finite value (" << bad_value[c] << ") at flat index " << first_bad[c]
                                                     << "; secure aggregation needs finite updates");
  }
  uint64_t total = 0;
  for (uint64_t v : clipped) total += v;
  return total;
}

void ring32_add_masks(const std::vector<const uint32_t*>& ys, uint64_t n, const std::vector<MaskStream>& streams,
                      uint64_t stream_id, uint64_t first, uint32_t* out, unsigned threads) {
  SL_CHECK(first + n < (uint64_t{1} << 34), InvalidArgument, "at most 2^34 values per mask stream");
  check_streams(streams);
  const uint64_t chunks = (n + kChunk - 1) / kChunk;
  parallel_for(
      chunks,
      [&](size_t c) {
        const uint64_t b = c * kChunk, e = std::min(n, b + kChunk);
        std::vector<Keystream32> prgs;
        prgs.reserve(streams.size());
        for (const auto& s : streams) prgs.emplace_back(s.key.data(), stream_id, first + b);
        alignas(64) uint32_t ks[kBlock];
        alignas(64) uint32_t acc[kBlock];
        for (uint64_t k = b; k < e; k += kBlock) {
          const uint64_t m = std::min(kBlock, e - k);
          std::memset(acc, 0, m * 4);
          for (const uint32_t* y : ys) {
            for (uint64_t t = 0; t < m; ++t) acc[t] += y[k + t];
          }
          apply_streams(prgs, streams, acc, ks, m);
          std::memcpy(out + k, acc, m * 4);
        }
      },
      threads);
}

}  // namespace splitlink::secure
