// Additive masking in the ring Z/2^64 for secure aggregation.
//
// Fixed point: a float x becomes round(x * 2^f) (round half to even), a 64-bit two's-complement
// ring element. Encoding requires |x * 2^f| < 2^51, so up to 2^12 parties can be summed without
// wrapping; larger values are an error naming the tensor and index, never wraparound garbage.
// Decoding a sum of n parties' encodings is off by at most n * 2^-(f+1) from the float sum (plus
// float32 rounding of the result).
//
// Masks: party i adds, for every other party j, sign(i, j) * PRG(k_ij, stream) where k_ij is the
// pairwise mask key (kx.h), sign = +1 when name(i) < name(j) else -1, and PRG is AES-128-CTR keyed
// with the first 16 bytes of k_ij, with a 16-byte IV of (u64 stream id, 4 zero bytes, 32-bit
// big-endian block counter); each element consumes 8 keystream bytes. Over all parties the masks
// cancel exactly, so the sum of the masked tensors is the sum of the fixed-point tensors. A
// stream id must never be reused with the same keys (use one per step and tensor): two tensors
// masked with the same stream would reveal their difference.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "splitlink/secure/aead.h"

namespace splitlink::secure {

constexpr unsigned kMaxFracBits = 40;
constexpr double kFixedLimit = 2251799813685248.0;  // 2^51

struct MaskStream {
  SecretKey key;
  int sign = 1;  // +1 or -1
};

// y[k] = fixed(x[k]) + sum over streams of sign * keystream[k] (mod 2^64). One pass.
void mask_encode(const float* x, uint64_t n, unsigned frac_bits, const std::vector<MaskStream>& streams,
                 uint64_t stream_id, uint64_t* y, const std::string& name, unsigned threads = 0);

// x[k] = signed(sum_i ys[i][k]) / 2^f. One pass over all inputs.
void sum_decode(const std::vector<const uint64_t*>& ys, uint64_t n, unsigned frac_bits, float* x, unsigned threads = 0);

// x[k] = signed(y[k] - sum over streams of sign * keystream[k]) / 2^f: removes this party's own
// masks (for a party that must read back its own contribution, and for tests).
void unmask_decode(const uint64_t* y, uint64_t n, unsigned frac_bits, const std::vector<MaskStream>& streams,
                   uint64_t stream_id, float* x, unsigned threads = 0);

}  // namespace splitlink::secure
