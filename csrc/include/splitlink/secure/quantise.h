// Stochastic rounding of float32 updates into integers, for secure aggregation.
//
// q[k] = floor(v) + (u_k < v - floor(v)),  v = clamp(x[k] * levels / clip, -levels, levels)
//
// computed in double, so E[q[k]] = v up to 2^-27 (the 2^-31 resolution of u_k and the 2^-28 grid
// of the branch-free floor). u_k is the k-th little-endian 32-bit word of the AES-128-CTR keystream
// under `key` (16 bytes; IV = block counter, big endian, from 0), shifted right by one and divided
// by 2^31: reproducible for a given key whatever the thread count, and the randomness comes from
// OpenSSL. |q| <= levels < 2^24, so q is written as an exact float32 (the input of the native masker
// with frac_bits = 0). Returns how many |x[k]| > clip (values clipped). A non-finite x is an error
// naming its index; clip must be finite and > 0, levels an integer in [1, 2^24).
#pragma once

#include <cstdint>

namespace splitlink::secure {

uint64_t stochastic_quantise(const float* x, uint64_t n, double clip, double levels, const uint8_t* key16, float* q,
                             unsigned threads = 0);

}  // namespace splitlink::secure
