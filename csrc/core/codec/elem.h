// Element access for the floating-point dtypes the lossy codecs accept, and half conversions.
// Internal to the core.
#pragma once

#include <cstdint>
#include <cstring>

#include "splitlink/dtype.h"
#include "splitlink/errors.h"

namespace splitlink::codec::detail {

inline uint32_t f2u(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float u2f(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// float32 -> IEEE binary16, round to nearest even; overflow to +-Inf. A NaN stays a NaN with its
// sign and the top 10 bits of its payload, quieted: the bits the F16C instruction (vcvtps2ph)
// gives, so the software and hardware paths agree on every input.
inline uint16_t f32_to_f16(float f) {
  uint32_t x = f2u(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7FFFFFFFu;
  if (x >= 0x47800000u) {  // >= 65536 (rounds to Inf), Inf or NaN
    return static_cast<uint16_t>(sign | (x > 0x7F800000u ? 0x7E00u | ((x >> 13) & 0x3FFu) : 0x7C00u));
  }
  if (x < 0x38800000u) {  // below 2^-14: the result is subnormal or zero
    // Adding 0.5 aligns the subnormal half's mantissa with the float's low bits; the FPU rounds
    // to nearest even. Subtracting 0.5's bit pattern leaves the half bits.
    const float a = u2f(x) + 0.5f;
    return static_cast<uint16_t>(sign | (f2u(a) - 0x3F000000u));
  }
  const uint32_t mant_odd = (x >> 13) & 1u;
  x += 0xC8000FFFu + mant_odd;  // rebias exponent (127 -> 15) and round half to even
  return static_cast<uint16_t>(sign | (x >> 13));
}

// binary16 -> float32, exact. A NaN keeps its sign and payload and is quieted, as F16C's
// vcvtph2ps does.
inline float f16_to_f32(uint16_t h) {
  uint32_t o = static_cast<uint32_t>(h & 0x7FFFu) << 13;
  const uint32_t exp = o & (0x7C00u << 13);
  o += (127u - 15u) << 23;
  if (exp == (0x7C00u << 13)) {
    o += (128u - 16u) << 23;           // Inf / NaN
    if (h & 0x3FFu) o |= 0x00400000u;  // NaN: set the quiet bit
  } else if (exp == 0) {
    o += 1u << 23;  // zero / subnormal: renormalize through the FPU
    o = f2u(u2f(o) - u2f(113u << 23));
  }
  return u2f(o | (static_cast<uint32_t>(h & 0x8000u) << 16));
}

// float32 -> bfloat16, round to nearest even; NaN stays a (quiet) NaN.
inline uint16_t f32_to_bf16(float f) {
  const uint32_t x = f2u(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
  return static_cast<uint16_t>((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}

inline float bf16_to_f32(uint16_t b) { return u2f(static_cast<uint32_t>(b) << 16); }

struct F32 {
  using T = float;
  static float load(const T* p, uint64_t i) { return p[i]; }
  static void store(T* p, uint64_t i, float v) { p[i] = v; }
};
struct F64 {
  using T = double;
  static float load(const T* p, uint64_t i) { return static_cast<float>(p[i]); }
  static void store(T* p, uint64_t i, float v) { p[i] = static_cast<double>(v); }
};
struct F16 {
  using T = uint16_t;
  static float load(const T* p, uint64_t i) { return f16_to_f32(p[i]); }
  static void store(T* p, uint64_t i, float v) { p[i] = f32_to_f16(v); }
};
struct BF16 {
  using T = uint16_t;
  static float load(const T* p, uint64_t i) { return bf16_to_f32(p[i]); }
  static void store(T* p, uint64_t i, float v) { p[i] = f32_to_bf16(v); }
};

// Calls fn(E{}) with the element accessor of a floating dtype.
template <typename Fn>
auto dispatch_float(DType dt, Fn&& fn) {
  switch (dt) {
    case DType::kFloat32:
      return fn(F32{});
    case DType::kFloat64:
      return fn(F64{});
    case DType::kFloat16:
      return fn(F16{});
    case DType::kBFloat16:
      return fn(BF16{});
    default:
      SL_FAIL(CodecError, "internal: dtype " << dtype_name(dt) << " is not floating point");
  }
}

// A counter-based uniform in [0, 1): the same (seed, index) always gives the same number, so
// stochastic rounding is reproducible and parallel. Not cryptographic (it need not be).
inline float uniform01(uint64_t seed, uint64_t index) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * (index + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<float>(z >> 40) * (1.0f / 16777216.0f);
}

}  // namespace splitlink::codec::detail
