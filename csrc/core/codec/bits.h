// Dense bit packing of small codes: 8 codes of b bits (1 <= b <= 8) <-> b bytes, LSB first.
// Code i of a stream occupies bits [i*b, (i+1)*b). Internal to the core.
#pragma once

#include <cstdint>
#include <cstring>

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

// Packs n codes (bytes) into ceil(n*b/8) bytes at out.
inline void pack_codes(const uint8_t* codes, uint64_t n, unsigned b, uint8_t* out) {
  if (b == 8) {
    std::memcpy(out, codes, n);
    return;
  }
  uint64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    store_le(out, pack8(load_le(codes + i, 8), b), b);
    out += b;
  }
  if (i < n) {
    uint8_t tail[8] = {0};
    std::memcpy(tail, codes + i, n - i);
    const uint64_t bits = (n - i) * b;
    store_le(out, pack8(load_le(tail, 8), b), static_cast<unsigned>((bits + 7) / 8));
  }
}

// Unpacks n codes from ceil(n*b/8) bytes at in into bytes at codes.
inline void unpack_codes(const uint8_t* in, uint64_t n, unsigned b, uint8_t* codes) {
  if (b == 8) {
    std::memcpy(codes, in, n);
    return;
  }
  uint64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    store_le(codes + i, unpack8(load_le(in, b), b), 8);
    in += b;
  }
  if (i < n) {
    const uint64_t bits = (n - i) * b;
    uint8_t tail[8];
    store_le(tail, unpack8(load_le(in, static_cast<unsigned>((bits + 7) / 8)), b), 8);
    std::memcpy(codes + i, tail, n - i);
  }
}

constexpr uint64_t packed_bytes(uint64_t n, unsigned b) { return (n * b + 7) / 8; }

}  // namespace splitlink::codec::detail
