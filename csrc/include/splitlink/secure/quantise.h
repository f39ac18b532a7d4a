// Stochastic rounding of float32 updates into integers, for secure aggregation.
//
// q[k] = floor(v) + (u_k < v - floor(v)),  v = clamp(x[k] * levels / clip, -levels, levels)
//
// computed in double, so E[q[k]] = v up to 2^-27 (the 2^-31 resolution of u_k and the 2^-28 grid
// of the branch-free floor). u_k is element k of the 32-bit keystream below under `key` (16 bytes)
// with stream id 0, shifted right by one and divided
// by 2^31: reproducible for a given key whatever the thread count, and the randomness comes from
// OpenSSL. |q| <= levels < 2^24, so q is written as an exact float32 (the input of the native masker
// with frac_bits = 0). Returns how many |x[k]| > clip (values clipped). A non-finite x is an error
// naming its index; clip must be finite and > 0, levels an integer in [1, 2^24).
#pragma once

#include <cstdint>
#include <vector>

#include "splitlink/secure/mask.h"

namespace splitlink::secure {

uint64_t stochastic_quantise(const float* x, uint64_t n, double clip, double levels, const uint8_t* key16, float* q,
                             unsigned threads = 0);

// Secure aggregation in the ring Z/2^32 (4 bytes per value on the wire, as float32).
//
// Masks are keystreams of the pair keys of mask.h (derive_mask_key) in 32-bit words: element e of
// stream (key, stream_id) is the little-endian word e % 4 of AES-128-CTR block e / 4 under the
// first 16 bytes of the key, IV = (u64 stream id LE, u32 1, u32 block counter BE). The IV's third
// word is 1 where mask.h's 64-bit masks have 0, so the two kinds of stream never share keystream.

// y[k] = q[k] + sum over streams of sign * ks[k] (mod 2^32) for k in [0, n), q as
// stochastic_quantise (rounding key `key16`), in one pass. Returns the clipped count. y may be
// x's own memory (each block is read before it is written; a non-finite x is found before then).
//
// Pieces of one long vector: `first` is x[0]'s position in the rounding and mask streams (and in
// the flat index of an error). With `base`, the value rounded is the float32 (x[k] - base[k]) *
// weight (each operation rounded to float32, as torch's sub then mul): a client's update from its
// trained and global tensors without a buffer of the update's size. Without base, x[k] * 1.
uint64_t quantise_mask32(const float* x, uint64_t n, double clip, double levels, const uint8_t* key16,
                         const std::vector<MaskStream>& streams, uint64_t stream_id, uint32_t* y, unsigned threads = 0,
                         uint64_t first = 0, const float* base = nullptr, float weight = 1.0f);

// out[k] = sum_i ys[i][k] + sum over streams of sign * ks[first + k] (mod 2^32), k in [0, n), one
// pass. The server's unmasking (negated signs) and a client's masking of extra values. out may be
// one of the ys (each block is summed before it is written).
void ring32_add_masks(const std::vector<const uint32_t*>& ys, uint64_t n, const std::vector<MaskStream>& streams,
                      uint64_t stream_id, uint64_t first, uint32_t* out, unsigned threads = 0);

}  // namespace splitlink::secure
