#include "splitlink/secure/mask.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "../platform/evp.h"
#include "../platform/simd.h"
#include "splitlink/errors.h"
#include "splitlink/memcopy.h"
#include "splitlink/parallel.h"

namespace splitlink::secure {
namespace {

constexpr uint64_t kChunk = uint64_t{1} << 16;        // elements per task: 512 KiB of keystream
constexpr uint64_t kBlock = 2048;                     // elements per inner block (16 KiB, stays in L1/L2)
constexpr uint64_t kMaxElements = uint64_t{1} << 33;  // 2^32 AES blocks of 16 bytes per stream

// AES-128-CTR keystream for elements [begin, begin + count) of a stream, appended to `acc` with
// the given sign, in blocks. Each element consumes 8 keystream bytes.
class Keystream {
 public:
  Keystream(const SecretKey& key, uint64_t stream_id, uint64_t first_element) : ctx_(openssl::new_ctx()) {
    uint8_t iv[16] = {0};
    for (int i = 0; i < 8; ++i) iv[i] = static_cast<uint8_t>(stream_id >> (8 * i));
    const uint64_t block = first_element / 2;  // two elements per 16-byte AES block
    for (int i = 0; i < 4; ++i) iv[15 - i] = static_cast<uint8_t>(block >> (8 * i));
    // AES-128 (the first 16 bytes of the 32-byte pair key, itself an HKDF output): 128-bit
    // security, and 10 rounds instead of 14 make the keystream, the cost of masking, ~1.4x faster.
    SL_CHECK(EVP_EncryptInit_ex2(ctx_.get(), openssl::fetch_cipher("AES-128-CTR"), key.data(), iv, nullptr) == 1,
             CryptoError, "AES-128-CTR init failed: " << openssl::openssl_error());
  }
  // Fills out[0, n) (n even) with the next keystream words.
  void next(uint64_t* out, uint64_t n) {
    std::memset(out, 0, n * 8);
    int outl = 0;
    SL_CHECK(EVP_EncryptUpdate(ctx_.get(), reinterpret_cast<uint8_t*>(out), &outl, reinterpret_cast<uint8_t*>(out),
                               static_cast<int>(n * 8)) == 1,
             CryptoError, "AES-128-CTR failed: " << openssl::openssl_error());
  }

 private:
  openssl::CipherCtx ctx_;
};

// Fixed point by the magic-number trick: for |d| < 2^51, the bits of d + 1.5 * 2^52 minus the bits
// of 1.5 * 2^52 are round-half-even(d) as a two's-complement ring element, and back.
constexpr double kMagic = 6755399441055744.0;           // 1.5 * 2^52
constexpr uint64_t kMagicBits = 0x4338000000000000ull;  // its bits

// round(x * scale) as a ring element; `bad` is set when |x * scale| >= 2^51 or x is not finite.
inline uint64_t to_fixed_one(float x, double scale, bool& bad) {
  const double d = static_cast<double>(x) * scale;
  bad |= !(std::fabs(d) < kFixedLimit);  // also true for NaN
  const double r = d + kMagic;
  uint64_t bits;
  std::memcpy(&bits, &r, 8);
  return bits - kMagicBits;
}

#ifdef SPLITLINK_SIMD_X86
// Same arithmetic as the scalar loop (multiply, then add the rounding constant), 8 at a time.
// Returns whether any value was out of range or not finite.
SPLITLINK_TARGET_AVX2 bool to_fixed_avx2(const float* x, uint64_t n, double scale, uint64_t* y) {
  const __m256d vs = _mm256_set1_pd(scale), magic = _mm256_set1_pd(kMagic);
  const __m256d limit = _mm256_set1_pd(kFixedLimit);
  const __m256d absmask = _mm256_castsi256_pd(_mm256_set1_epi64x(0x7FFFFFFFFFFFFFFFll));
  const __m256i magic_bits = _mm256_castpd_si256(magic);
  __m256d bad = _mm256_setzero_pd();
  uint64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 f = _mm256_loadu_ps(x + i);
    const __m256d lo = _mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(f)), vs);
    const __m256d hi = _mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(f, 1)), vs);
    bad = _mm256_or_pd(bad, _mm256_cmp_pd(_mm256_and_pd(lo, absmask), limit, _CMP_NLT_UQ));
    bad = _mm256_or_pd(bad, _mm256_cmp_pd(_mm256_and_pd(hi, absmask), limit, _CMP_NLT_UQ));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i),
                        _mm256_sub_epi64(_mm256_castpd_si256(_mm256_add_pd(lo, magic)), magic_bits));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i + 4),
                        _mm256_sub_epi64(_mm256_castpd_si256(_mm256_add_pd(hi, magic)), magic_bits));
  }
  bool out = _mm256_movemask_pd(bad) != 0;
  for (; i < n; ++i) y[i] = to_fixed_one(x[i], scale, out);
  return out;
}
#endif

// round(x * scale) as ring elements; returns whether any |x * scale| >= 2^51 or is not finite.
bool to_fixed(const float* x, uint64_t n, double scale, uint64_t* y) {
#ifdef SPLITLINK_SIMD_X86
  if (cpu::has_avx2()) return to_fixed_avx2(x, n, scale, y);
#endif
  bool out = false;
  for (uint64_t i = 0; i < n; ++i) y[i] = to_fixed_one(x[i], scale, out);
  return out;
}

// Ring element (two's complement) back to float: v * 2^-frac_bits. Exact int64 -> double for
// |v| < 2^51 (every unmasked value: encoding refuses larger ones) by the same magic-number trick as
// to_fixed, so the scalar and AVX2 paths give identical bits for every input.
inline float from_fixed_one(uint64_t v, double inv) {
  double d;
  const uint64_t bits = v + kMagicBits;
  std::memcpy(&d, &bits, 8);
  return static_cast<float>((d - kMagic) * inv);
}

#ifdef SPLITLINK_SIMD_X86
SPLITLINK_TARGET_AVX2 void from_fixed_avx2(const uint64_t* v, uint64_t n, double inv, float* x) {
  const __m256i magic_bits = _mm256_set1_epi64x(static_cast<long long>(kMagicBits));
  const __m256d magic = _mm256_set1_pd(kMagic), vi = _mm256_set1_pd(inv);
  uint64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + i));
    const __m256d d = _mm256_sub_pd(_mm256_castsi256_pd(_mm256_add_epi64(a, magic_bits)), magic);
    _mm_storeu_ps(x + i, _mm256_cvtpd_ps(_mm256_mul_pd(d, vi)));
  }
  for (; i < n; ++i) x[i] = from_fixed_one(v[i], inv);
}
#endif

void from_fixed(const uint64_t* v, uint64_t n, double inv, float* x) {
#ifdef SPLITLINK_SIMD_X86
  if (cpu::has_avx2()) return from_fixed_avx2(v, n, inv, x);
#endif
  for (uint64_t i = 0; i < n; ++i) x[i] = from_fixed_one(v[i], inv);
}

void check_args(uint64_t n, unsigned frac_bits, const std::vector<MaskStream>& streams) {
  SL_CHECK(frac_bits <= kMaxFracBits, InvalidArgument,
           "frac_bits must be 0.." << kMaxFracBits << ", got " << frac_bits);
  SL_CHECK(n < kMaxElements, InvalidArgument, "a masked tensor holds at most 2^33 elements; split it");
  for (const auto& s : streams) {
    SL_CHECK(s.sign == 1 || s.sign == -1, InvalidArgument, "mask sign must be +1 or -1");
  }
}

// Chunks start at even elements so each starts on an AES block boundary.
template <typename Fn>
void for_chunks(uint64_t n, unsigned threads, Fn&& fn) {
  parallel_for((n + kChunk - 1) / kChunk, [&](size_t c) { fn(c * kChunk, std::min(n, (c + 1) * kChunk)); }, threads);
}

}  // namespace

void mask_encode(const float* x, uint64_t n, unsigned frac_bits, const std::vector<MaskStream>& streams,
                 uint64_t stream_id, uint64_t* y, const std::string& name, unsigned threads) {
  check_args(n, frac_bits, streams);
  const double scale = std::ldexp(1.0, static_cast<int>(frac_bits));
  std::vector<char> bad((n + kChunk - 1) / kChunk, 0);
  // One pass: per block of kBlock elements (L1-resident), fixed point, then every peer's
  // keystream added, then the block written out once with streaming stores.
  for_chunks(n, threads, [&](uint64_t b, uint64_t e) {
    std::vector<Keystream> prgs;
    prgs.reserve(streams.size());
    for (const auto& s : streams) prgs.emplace_back(s.key, stream_id, b);
    alignas(64) uint64_t acc[kBlock];
    alignas(64) uint64_t ks[kBlock];
    bool out_of_range = false;
    for (uint64_t k = b; k < e; k += kBlock) {
      const uint64_t m = std::min(kBlock, e - k);
      out_of_range |= to_fixed(x + k, m, scale, acc);
      for (size_t j = 0; j < streams.size(); ++j) {
        prgs[j].next(ks, (m + 1) & ~uint64_t{1});
        if (streams[j].sign > 0) {
          for (uint64_t t = 0; t < m; ++t) acc[t] += ks[t];
        } else {
          for (uint64_t t = 0; t < m; ++t) acc[t] -= ks[t];
        }
      }
      stream_copy(y + k, acc, m * 8, /*always=*/n >= (uint64_t{1} << 20));
    }
    if (out_of_range) bad[b / kChunk] = 1;
  });
  for (uint64_t c = 0; c < bad.size(); ++c) {
    if (!bad[c]) continue;
    for (uint64_t k = c * kChunk; k < std::min(n, (c + 1) * kChunk); ++k) {
      const double d = static_cast<double>(x[k]) * scale;
      SL_CHECK(std::fabs(d) < kFixedLimit, InvalidArgument,
               "tensor '" << name << "' value " << x[k] << " at flat index " << k
                          << " is outside the fixed-point range +-2^51 / 2^" << frac_bits << " = +-"
                          << kFixedLimit / scale << "; lower frac_bits or scale the tensor down");
    }
  }
}

void sum_decode(const std::vector<const uint64_t*>& ys, uint64_t n, unsigned frac_bits, float* x, unsigned threads) {
  check_args(n, frac_bits, {});
  SL_CHECK(!ys.empty(), InvalidArgument, "sum_decode needs at least one input");
  const double inv = std::ldexp(1.0, -static_cast<int>(frac_bits));
  for_chunks(n, threads, [&](uint64_t b, uint64_t e) {
    for (uint64_t k = b; k < e; k += kBlock) {
      const uint64_t m = std::min(kBlock, e - k);
      uint64_t acc[kBlock];
      std::memcpy(acc, ys[0] + k, m * 8);
      for (size_t i = 1; i < ys.size(); ++i) {
        const uint64_t* y = ys[i] + k;
        for (uint64_t j = 0; j < m; ++j) acc[j] += y[j];
      }
      for (uint64_t j = 0; j < m; ++j)
        x[k + j] = static_cast<float>(static_cast<double>(static_cast<int64_t>(acc[j])) * inv);
    }
  });
}

void unmask_decode(const uint64_t* y, uint64_t n, unsigned frac_bits, const std::vector<MaskStream>& streams,
                   uint64_t stream_id, float* x, unsigned threads) {
  check_args(n, frac_bits, streams);
  const double inv = std::ldexp(1.0, -static_cast<int>(frac_bits));
  // One pass, as in mask_encode: per L1-resident block, every peer's keystream taken off, then
  // decoded and written out once.
  for_chunks(n, threads, [&](uint64_t b, uint64_t e) {
    std::vector<Keystream> prgs;
    prgs.reserve(streams.size());
    for (const auto& s : streams) prgs.emplace_back(s.key, stream_id, b);
    alignas(64) uint64_t acc[kBlock];
    alignas(64) uint64_t ks[kBlock];
    alignas(64) float out[kBlock];
    for (uint64_t k = b; k < e; k += kBlock) {
      const uint64_t m = std::min(kBlock, e - k);
      std::memcpy(acc, y + k, m * 8);
      for (size_t j = 0; j < streams.size(); ++j) {
        prgs[j].next(ks, (m + 1) & ~uint64_t{1});
        if (streams[j].sign > 0) {
          for (uint64_t t = 0; t < m; ++t) acc[t] -= ks[t];
        } else {
          for (uint64_t t = 0; t < m; ++t) acc[t] += ks[t];
        }
      }
      from_fixed(acc, m, inv, out);
      stream_copy(x + k, out, m * 4, /*always=*/n >= (uint64_t{1} << 20));
    }
  });
}

}  // namespace splitlink::secure
