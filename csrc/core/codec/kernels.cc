#include "kernels.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "../platform/simd.h"

namespace splitlink::codec::detail {
namespace {

inline uint8_t quantize_one(float x, float lo, float inv, float levels) {
  float y = (x - lo) * inv + 0.5f;
  y = std::min(std::max(y, 0.0f), levels);
  return static_cast<uint8_t>(static_cast<int>(y));
}

Range scan_scalar(const float* x, uint64_t n, Range r) {
  for (uint64_t i = 0; i < n; ++i) {
    if (!std::isfinite(x[i])) r.nonfinite = true;
    r.lo = std::min(r.lo, x[i]);
    r.hi = std::max(r.hi, x[i]);
  }
  return r;
}

#ifdef SPLITLINK_SIMD_X86
Range scan_sse2(const float* x, uint64_t n) {
  Range r{std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(), false};
  __m128 lo0 = _mm_set1_ps(r.lo), lo1 = lo0, hi0 = _mm_set1_ps(r.hi), hi1 = hi0, bad = _mm_setzero_ps();
  const __m128 inf = _mm_set1_ps(std::numeric_limits<float>::infinity());
  const __m128 absmask = _mm_castsi128_ps(_mm_set1_epi32(0x7FFFFFFF));
  uint64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128 a = _mm_loadu_ps(x + i), c = _mm_loadu_ps(x + i + 4);
    lo0 = _mm_min_ps(lo0, a);
    lo1 = _mm_min_ps(lo1, c);
    hi0 = _mm_max_ps(hi0, a);
    hi1 = _mm_max_ps(hi1, c);
    // !(|x| < inf) holds for NaN and +-Inf.
    bad = _mm_or_ps(bad, _mm_cmpnlt_ps(_mm_and_ps(a, absmask), inf));
    bad = _mm_or_ps(bad, _mm_cmpnlt_ps(_mm_and_ps(c, absmask), inf));
  }
  alignas(16) float l[4], h[4];
  _mm_store_ps(l, _mm_min_ps(lo0, lo1));
  _mm_store_ps(h, _mm_max_ps(hi0, hi1));
  for (int k = 0; k < 4; ++k) {
    r.lo = std::min(r.lo, l[k]);
    r.hi = std::max(r.hi, h[k]);
  }
  r.nonfinite = _mm_movemask_ps(bad) != 0;
  return scan_scalar(x + i, n - i, r);
}

SPLITLINK_TARGET_AVX2 Range scan_avx2(const float* x, uint64_t n) {
  Range r{std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(), false};
  __m256 lo0 = _mm256_set1_ps(r.lo), lo1 = lo0, hi0 = _mm256_set1_ps(r.hi), hi1 = hi0, bad = _mm256_setzero_ps();
  const __m256 inf = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  uint64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm_prefetch(reinterpret_cast<const char*>(x + i + kPrefetchFloats), _MM_HINT_T0);
    const __m256 a = _mm256_loadu_ps(x + i), c = _mm256_loadu_ps(x + i + 8);
    lo0 = _mm256_min_ps(lo0, a);
    lo1 = _mm256_min_ps(lo1, c);
    hi0 = _mm256_max_ps(hi0, a);
    hi1 = _mm256_max_ps(hi1, c);
    bad = _mm256_or_ps(bad, _mm256_cmp_ps(_mm256_and_ps(a, absmask), inf, _CMP_NLT_UQ));
    bad = _mm256_or_ps(bad, _mm256_cmp_ps(_mm256_and_ps(c, absmask), inf, _CMP_NLT_UQ));
  }
  alignas(32) float l[8], h[8];
  _mm256_store_ps(l, _mm256_min_ps(lo0, lo1));
  _mm256_store_ps(h, _mm256_max_ps(hi0, hi1));
  for (int k = 0; k < 8; ++k) {
    r.lo = std::min(r.lo, l[k]);
    r.hi = std::max(r.hi, h[k]);
  }
  r.nonfinite = _mm256_movemask_ps(bad) != 0;
  return scan_scalar(x + i, n - i, r);
}

void quantize_sse2(const float* x, uint64_t n, float lo, float inv, float levels, uint8_t* codes) {
  const __m128 vlo = _mm_set1_ps(lo), vinv = _mm_set1_ps(inv), half = _mm_set1_ps(0.5f);
  const __m128 vmax = _mm_set1_ps(levels), zero = _mm_setzero_ps();
  uint64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m128i q[4];
    for (int j = 0; j < 4; ++j) {
      __m128 y = _mm_add_ps(_mm_mul_ps(_mm_sub_ps(_mm_loadu_ps(x + i + 4 * j), vlo), vinv), half);
      q[j] = _mm_cvttps_epi32(_mm_max_ps(_mm_min_ps(y, vmax), zero));
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + i),
                     _mm_packus_epi16(_mm_packs_epi32(q[0], q[1]), _mm_packs_epi32(q[2], q[3])));
  }
  for (; i < n; ++i) codes[i] = quantize_one(x[i], lo, inv, levels);
}

SPLITLINK_TARGET_AVX2 void quantize_avx2(const float* x, uint64_t n, float lo, float inv, float levels, uint8_t* codes,
                                         bool stream) {
  const __m256 vlo = _mm256_set1_ps(lo), vinv = _mm256_set1_ps(inv), half = _mm256_set1_ps(0.5f);
  const __m256 vmax = _mm256_set1_ps(levels), zero = _mm256_setzero_ps();
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  // undo the per-lane packing
  uint64_t i = 0;
  if (stream) {
    // Peel to a 32-byte aligned destination so the streaming stores can be used.
    for (; i < n && reinterpret_cast<uintptr_t>(codes + i) % 32 != 0; ++i)
      codes[i] = quantize_one(x[i], lo, inv, levels);
  }
  for (; i + 32 <= n; i += 32) {
    _mm_prefetch(reinterpret_cast<const char*>(x + i + kPrefetchFloats), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(x + i + kPrefetchFloats + 16), _MM_HINT_T0);
    __m256i q[4];
    for (int j = 0; j < 4; ++j) {
      __m256 y = _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8 * j), vlo), vinv), half);
      q[j] = _mm256_cvttps_epi32(_mm256_max_ps(_mm256_min_ps(y, vmax), zero));
    }
    const __m256i b = _mm256_packus_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    const __m256i v = _mm256_permutevar8x32_epi32(b, order);
    if (stream) {
      _mm256_stream_si256(reinterpret_cast<__m256i*>(codes + i), v);
    } else {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes + i), v);
    }
  }
  if (stream) _mm_sfence();
  for (; i < n; ++i) codes[i] = quantize_one(x[i], lo, inv, levels);
}

SPLITLINK_TARGET_AVX2 void dequantize_avx2(const uint8_t* codes, uint64_t n, float lo, float scale, float* out,
                                           bool stream) {
  const __m256 vlo = _mm256_set1_ps(lo), vs = _mm256_set1_ps(scale);
  uint64_t i = 0;
  if (stream) {
    if (reinterpret_cast<uintptr_t>(out) % 4 != 0) {
      stream = false;  // not even float-aligned: peeling cannot reach a 32-byte boundary
    } else {
      for (; i < n && reinterpret_cast<uintptr_t>(out + i) % 32 != 0; ++i)
        out[i] = lo + static_cast<float>(codes[i]) * scale;
    }
  }
  for (; i + 8 <= n; i += 8) {
    const __m128i c = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + i));
    const __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(c));
    const __m256 y = _mm256_add_ps(vlo, _mm256_mul_ps(f, vs));
    if (stream) {
      _mm256_stream_ps(out + i, y);
    } else {
      _mm256_storeu_ps(out + i, y);
    }
  }
  if (stream) _mm_sfence();
  for (; i < n; ++i) out[i] = lo + static_cast<float>(codes[i]) * scale;
}
#endif

}  // namespace

Range scan_f32(const float* x, uint64_t n) {
#ifdef SPLITLINK_SIMD_X86
  return cpu::has_avx2() ? scan_avx2(x, n) : scan_sse2(x, n);
#else
  return scan_scalar(x, n, {std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(), false});
#endif
}

void quantize_f32(const float* x, uint64_t n, float lo, float inv, float levels, uint8_t* codes, bool stream) {
#ifdef SPLITLINK_SIMD_X86
  if (cpu::has_avx2()) {
    quantize_avx2(x, n, lo, inv, levels, codes, stream);
  } else {
    quantize_sse2(x, n, lo, inv, levels, codes);
  }
#else
  (void)stream;
  for (uint64_t i = 0; i < n; ++i) codes[i] = quantize_one(x[i], lo, inv, levels);
#endif
}

void dequantize_f32(const uint8_t* codes, uint64_t n, float lo, float scale, float* out, bool stream) {
#ifdef SPLITLINK_SIMD_X86
  if (cpu::has_avx2()) {
    dequantize_avx2(codes, n, lo, scale, out, stream);
    return;
  }
#endif
  (void)stream;
  for (uint64_t i = 0; i < n; ++i) out[i] = lo + static_cast<float>(codes[i]) * scale;
}

}  // namespace splitlink::codec::detail
