// fp16 / bf16 downcasts. fp16 uses the F16C instructions when the CPU has them (checked at run
// time; the wheel is built for baseline x86-64), else the bit-exact software conversion.
#include <algorithm>

#include "../platform/simd.h"
#include "codecs.h"
#include "elem.h"
#include "kernels.h"
#include "splitlink/parallel.h"

namespace splitlink::codec::detail {
namespace {

constexpr uint64_t kChunk = uint64_t{1} << 18;

#ifdef SPLITLINK_SIMD_X86
SPLITLINK_TARGET_F16C void f32_to_f16_hw(const float* s, uint16_t* d, uint64_t n) {
  uint64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm_prefetch(reinterpret_cast<const char*>(s + i + kPrefetchFloats), _MM_HINT_T0);
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(s + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i), h);
  }
  for (; i < n; ++i) d[i] = f32_to_f16(s[i]);
}

SPLITLINK_TARGET_F16C void f16_to_f32_hw(const uint16_t* s, float* d, uint64_t n) {
  uint64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i))));
  }
  for (; i < n; ++i) d[i] = f16_to_f32(s[i]);
}

// bf16: the scalar f32_to_bf16's integer rounding (nearest, ties to even; NaN kept quiet), 16 at a time.
SPLITLINK_TARGET_AVX2 inline __m256i bf16_bits_avx2(__m256i x) {
  const __m256i nan =
      _mm256_cmpgt_epi32(_mm256_and_si256(x, _mm256_set1_epi32(0x7FFFFFFF)), _mm256_set1_epi32(0x7F800000));
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(x, _mm256_set1_epi32(0x7FFF)), lsb), 16);
  const __m256i quieted = _mm256_or_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(0x40));
  return _mm256_blendv_epi8(rounded, quieted, nan);
}

SPLITLINK_TARGET_AVX2 void f32_to_bf16_avx2(const float* s, uint16_t* d, uint64_t n) {
  uint64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm_prefetch(reinterpret_cast<const char*>(s + i + kPrefetchFloats), _MM_HINT_T0);
    const __m256i a = bf16_bits_avx2(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i)));
    const __m256i b = bf16_bits_avx2(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i + 8)));
    // packus works per 128-bit lane: [a0-3 b0-3 | a4-7 b4-7]; put the quarters back in order.
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xD8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + i), packed);
  }
  for (; i < n; ++i) d[i] = f32_to_bf16(s[i]);
}
#endif

}  // namespace

void half_encode(bool bf16, DType dt, const void* src, uint64_t numel, uint16_t* dst, unsigned threads) {
  const uint64_t chunks = (numel + kChunk - 1) / kChunk;
  parallel_for(
      chunks,
      [&](size_t c) {
        const uint64_t b = c * kChunk, e = std::min(numel, b + kChunk);
        if (dt == DType::kFloat32) {
          const float* s = static_cast<const float*>(src);
#ifdef SPLITLINK_SIMD_X86
          if (!bf16 && cpu::has_f16c()) {
            f32_to_f16_hw(s + b, dst + b, e - b);
            return;
          }
          if (bf16 && cpu::has_avx2()) {
            f32_to_bf16_avx2(s + b, dst + b, e - b);
            return;
          }
#endif
          for (uint64_t i = b; i < e; ++i) dst[i] = bf16 ? f32_to_bf16(s[i]) : f32_to_f16(s[i]);
        } else {
          // float64: round to float32 first (documented: double rounding can differ from a direct
          // float64 -> half rounding in the last bit for values exactly between two halves).
          const double* s = static_cast<const double*>(src);
          for (uint64_t i = b; i < e; ++i) {
            const float f = static_cast<float>(s[i]);
            dst[i] = bf16 ? f32_to_bf16(f) : f32_to_f16(f);
          }
        }
      },
      threads);
}

void half_decode(bool bf16, DType dt, const uint16_t* src, uint64_t numel, void* dst, unsigned threads) {
  const uint64_t chunks = (numel + kChunk - 1) / kChunk;
  parallel_for(
      chunks,
      [&](size_t c) {
        const uint64_t b = c * kChunk, e = std::min(numel, b + kChunk);
        if (dt == DType::kFloat32) {
          float* d = static_cast<float*>(dst);
#ifdef SPLITLINK_SIMD_X86
          if (!bf16 && cpu::has_f16c()) {
            f16_to_f32_hw(src + b, d + b, e - b);
            return;
          }
#endif
          for (uint64_t i = b; i < e; ++i) d[i] = bf16 ? bf16_to_f32(src[i]) : f16_to_f32(src[i]);
        } else {
          double* d = static_cast<double*>(dst);
          for (uint64_t i = b; i < e; ++i) d[i] = static_cast<double>(bf16 ? bf16_to_f32(src[i]) : f16_to_f32(src[i]));
        }
      },
      threads);
}

}  // namespace splitlink::codec::detail
