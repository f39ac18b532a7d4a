// Dense bit packing of small codes: 8 codes of b bits (1 <= b <= 8) <-> b bytes, LSB first.
// Code i of a stream occupies bits [i*b, (i+1)*b). Internal to the core.
#pragma once

#include <cstdint>
#include <cstring>

#include "../platform/simd.h"

namespace splitlink::codec::detail {

constexpr uint64_t lanes16(unsigned bits) { return 0x0001000100010001ull * ((1ull << bits) - 1); }
constexpr uint64_t lanes32(unsigned bits) { return 0x0000000100000001ull * ((1ull << bits) - 1); }

// v holds 8 codes, one per byte (each < 2^b). Returns them packed into the low 8*b bits.
inline uint64_t pack8(uint64_t v, unsigned b) {
  // Pairs of bytes -> 2b bits per 16-bit lane, pairs of lanes -> 4b bits per 32-bit lane, then
  // the two 32-bit halves -> 8b bits.
  v = (v & 0x00FF00FF00FF00FFull) | ((v & 0xFF00FF00FF00FF00ull) >> (8 - b));
  v = (v & 0x0000FFFF0000FFFFull) | ((v & 0xFFFF0000FFFF0000ull) >> (16 - 2 * b));
  v = (v & 0x00000000FFFFFFFFull) | ((v & 0xFFFFFFFF00000000ull) >> (32 - 4 * b));
  return v;
}

// Inverse of pack8: the low 8*b bits of p -> 8 codes, one per byte.
inline uint64_t unpack8(uint64_t p, unsigned b) {
  p = (p & ((1ull << (4 * b)) - 1)) | (((p >> (4 * b)) & ((1ull << (4 * b)) - 1)) << 32);
  p = (p & lanes32(2 * b)) | (((p >> (2 * b)) & lanes32(2 * b)) << 16);
  p = (p & lanes16(b)) | (((p >> b) & lanes16(b)) << 8);
  return p;
}

inline uint64_t load_le(const uint8_t* p, unsigned n) {
  uint64_t v = 0;
  std::memcpy(&v, p, n);  // little-endian host (checked at build time in codec.cc)
  return v;
}

inline void store_le(uint8_t* p, uint64_t v, unsigned n) { std::memcpy(p, &v, n); }

#ifdef SPLITLINK_SIMD_X86
// One packing stage: 16-bit lanes (a | b << 8) with a, b < 2^s become bytes (a | b << s); two
// input vectors give one output vector. Stages with s = b, 2b, 4b pack b-bit codes into bytes.
inline __m128i pack_stage(__m128i v0, __m128i v1, int s) {
  const __m128i lo = _mm_set1_epi16(0x00FF);
  const __m128i hi = _mm_set1_epi16(static_cast<short>(((1 << s) - 1) << s));
  const __m128i shift = _mm_cvtsi32_si128(8 - s);
  const __m128i t0 = _mm_or_si128(_mm_and_si128(v0, lo), _mm_and_si128(_mm_srl_epi16(v0, shift), hi));
  const __m128i t1 = _mm_or_si128(_mm_and_si128(v1, lo), _mm_and_si128(_mm_srl_epi16(v1, shift), hi));
  return _mm_packus_epi16(t0, t1);
}

// Inverse of pack_stage: bytes (a | b << s) become byte pairs a, b (two output vectors).
inline void unpack_stage(__m128i y, int s, __m128i* out0, __m128i* out1) {
  const __m128i zero = _mm_setzero_si128();
  const __m128i mask = _mm_set1_epi16(static_cast<short>((1 << s) - 1));
  const __m128i shift = _mm_cvtsi32_si128(s);
  const __m128i l = _mm_unpacklo_epi8(y, zero), h = _mm_unpackhi_epi8(y, zero);
  *out0 = _mm_or_si128(_mm_and_si128(l, mask), _mm_slli_epi16(_mm_and_si128(_mm_srl_epi16(l, shift), mask), 8));
  *out1 = _mm_or_si128(_mm_and_si128(h, mask), _mm_slli_epi16(_mm_and_si128(_mm_srl_epi16(h, shift), mask), 8));
}

inline __m128i load16(const uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }
inline void store16(uint8_t* p, __m128i v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), v); }

// Packs whole groups of 128 / B codes into 16 bytes each (B in {1, 2, 4}); returns how many
// codes it packed (a multiple of 8). The rest goes through the scalar path.
template <unsigned B>
inline uint64_t pack_codes_simd(const uint8_t* codes, uint64_t n, uint8_t* out) {
  constexpr uint64_t kGroup = 128 / B;  // codes per 16 output bytes
  constexpr unsigned kVectors = kGroup / 16;
  uint64_t i = 0;
  for (; i + kGroup <= n; i += kGroup, out += 16) {
    __m128i v[kVectors];
    for (unsigned k = 0; k < kVectors; ++k) v[k] = load16(codes + i + 16 * k);
    unsigned live = kVectors;
    for (int s = static_cast<int>(B); s <= 4; s *= 2) {
      for (unsigned k = 0; k < live / 2; ++k) v[k] = pack_stage(v[2 * k], v[2 * k + 1], s);
      live /= 2;
    }
    store16(out, v[0]);
  }
  return i;
}

template <unsigned B>
inline uint64_t unpack_codes_simd(const uint8_t* in, uint64_t n, uint8_t* codes) {
  constexpr uint64_t kGroup = 128 / B;
  constexpr unsigned kVectors = kGroup / 16;
  uint64_t i = 0;
  for (; i + kGroup <= n; i += kGroup, in += 16) {
    __m128i v[kVectors];
    v[0] = load16(in);
    unsigned live = 1;
    for (int s = 4; s >= static_cast<int>(B); s /= 2) {
      for (unsigned k = live; k-- > 0;) unpack_stage(v[k], s, &v[2 * k], &v[2 * k + 1]);
      live *= 2;
    }
    for (unsigned k = 0; k < kVectors; ++k) store16(codes + i + 16 * k, v[k]);
  }
  return i;
}
#endif

template <unsigned B>
inline void pack_codes_t(const uint8_t* codes, uint64_t n, uint8_t* out) {
  uint64_t i = 0;
#ifdef SPLITLINK_SIMD_X86
  if constexpr (B == 1 || B == 2 || B == 4) {
    i = pack_codes_simd<B>(codes, n, out);
    out += i / 8 * B;
  }
#endif
  for (; i + 8 <= n; i += 8) {
    store_le(out, pack8(load_le(codes + i, 8), B), B);
    out += B;
  }
  if (i < n) {
    uint8_t tail[8] = {0};
    std::memcpy(tail, codes + i, n - i);
    const uint64_t bits = (n - i) * B;
    store_le(out, pack8(load_le(tail, 8), B), static_cast<unsigned>((bits + 7) / 8));
  }
}

template <unsigned B>
inline void unpack_codes_t(const uint8_t* in, uint64_t n, uint8_t* codes) {
  uint64_t i = 0;
#ifdef SPLITLINK_SIMD_X86
  if constexpr (B == 1 || B == 2 || B == 4) {
    i = unpack_codes_simd<B>(in, n, codes);
    in += i / 8 * B;
  }
#endif
  // Whole 8-byte loads (masked) while they stay inside the packed data: a B-byte memcpy into a
  // zeroed word costs a store-forwarding stall per group.
  constexpr uint64_t kMask = B == 8 ? ~uint64_t{0} : (uint64_t{1} << (8 * B)) - 1;
  const uint8_t* end = in + (n - i) / 8 * B + ((n - i) % 8 * B + 7) / 8;
  for (; i + 8 <= n && in + 8 <= end; i += 8) {
    store_le(codes + i, unpack8(load_le(in, 8) & kMask, B), 8);
    in += B;
  }
  for (; i + 8 <= n; i += 8) {
    store_le(codes + i, unpack8(load_le(in, B), B), 8);
    in += B;
  }
  if (i < n) {
    const uint64_t bits = (n - i) * B;
    uint8_t tail[8];
    store_le(tail, unpack8(load_le(in, static_cast<unsigned>((bits + 7) / 8)), B), 8);
    std::memcpy(codes + i, tail, n - i);
  }
}

// Packs n codes (bytes, each < 2^b) into ceil(n*b/8) bytes at out.
inline void pack_codes(const uint8_t* codes, uint64_t n, unsigned b, uint8_t* out) {
  switch (b) {
    case 1:
      return pack_codes_t<1>(codes, n, out);
    case 2:
      return pack_codes_t<2>(codes, n, out);
    case 3:
      return pack_codes_t<3>(codes, n, out);
    case 4:
      return pack_codes_t<4>(codes, n, out);
    case 5:
      return pack_codes_t<5>(codes, n, out);
    case 6:
      return pack_codes_t<6>(codes, n, out);
    case 7:
      return pack_codes_t<7>(codes, n, out);
    default:
      std::memcpy(out, codes, n);
  }
}

// Unpacks n codes from ceil(n*b/8) bytes at in into bytes at codes.
inline void unpack_codes(const uint8_t* in, uint64_t n, unsigned b, uint8_t* codes) {
  switch (b) {
    case 1:
      return unpack_codes_t<1>(in, n, codes);
    case 2:
      return unpack_codes_t<2>(in, n, codes);
    case 3:
      return unpack_codes_t<3>(in, n, codes);
    case 4:
      return unpack_codes_t<4>(in, n, codes);
    case 5:
      return unpack_codes_t<5>(in, n, codes);
    case 6:
      return unpack_codes_t<6>(in, n, codes);
    case 7:
      return unpack_codes_t<7>(in, n, codes);
    default:
      std::memcpy(codes, in, n);
  }
}

constexpr uint64_t packed_bytes(uint64_t n, unsigned b) { return (n * b + 7) / 8; }

}  // namespace splitlink::codec::detail
