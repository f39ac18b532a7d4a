// t-out-of-n Shamir secret sharing of byte strings over the prime field GF(2^61 - 1).
//
// Why this field: the secrets shared by secure aggregation are 32-byte seeds and X25519 private
// keys. Shamir's scheme hides a secret information-theoretically in any field larger than the
// number of shares, so instead of a 256-bit field the secret is cut into 7-byte chunks (56 bits,
// each < p) and every chunk is shared with its own random polynomial of degree t-1. The Mersenne
// prime p = 2^61 - 1 makes a field product one 128-bit multiply and two adds, with no bignum code.
// A 32-byte secret is 5 chunks; its share is 9 + 5 * 8 = 49 bytes.
//
// Share encoding (little endian): u8 version (1) | u32 x | u32 secret length | ceil(len/7) x u64 y.
// x is the holder's public, nonzero, distinct coordinate; y_c = f_c(x) for chunk c. Polynomial
// coefficients come from OpenSSL's RAND_bytes (rejection-sampled to be uniform in [0, p)).
//
// Reconstruction is Lagrange interpolation at 0 over the first `threshold` shares. It refuses
// (InvalidArgument) fewer than `threshold` shares, x = 0, duplicate x, malformed or out-of-field
// shares and shares of different secret lengths. A wrong share is not detectable by the arithmetic
// alone: it gives a different secret (a chunk that decodes to >= 2^56 is reported as inconsistent
// shares). Authenticate shares (AEAD) or check the result against a commitment.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace splitlink::secure::shamir {

constexpr uint64_t kPrime = (uint64_t{1} << 61) - 1;
constexpr size_t kChunkBytes = 7;
constexpr size_t kHeaderBytes = 9;
constexpr size_t kMaxSecretBytes = size_t{1} << 20;
constexpr uint8_t kVersion = 1;

// Field arithmetic mod p (inputs < p). Exposed for the tests.
uint64_t add(uint64_t a, uint64_t b);
uint64_t sub(uint64_t a, uint64_t b);
uint64_t mul(uint64_t a, uint64_t b);
uint64_t inverse(uint64_t a);  // a != 0

// Bytes of one encoded share of a secret of `secret_len` bytes.
size_t share_bytes(size_t secret_len);

// One share per x in `xs` (nonzero, distinct); any `threshold` of them reconstruct the secret,
// fewer reveal nothing about it. 1 <= threshold <= xs.size().
std::vector<std::vector<uint8_t>> split(const uint8_t* secret, size_t len, unsigned threshold,
                                        const std::vector<uint32_t>& xs);

// The secret from the first `threshold` shares.
std::vector<uint8_t> combine(const std::vector<std::vector<uint8_t>>& shares, unsigned threshold);

// The x coordinate of an encoded share (validates the encoding).
uint32_t share_x(const uint8_t* share, size_t len);

}  // namespace splitlink::secure::shamir
