// Vectorized float32 kernels of min_max, with AVX2 variants chosen at run time. Every variant
// performs the same float operations in the same order (no FMA), so results are bit-identical
// whichever runs. Internal to the core.
#pragma once

#include <cstdint>

namespace splitlink::codec::detail {

struct Range {
  float lo;
  float hi;
  bool nonfinite;
};

// min, max and whether any element is NaN or +-Inf, over n floats.
Range scan_f32(const float* x, uint64_t n);
// codes[i] = trunc(clamp((x[i] - lo) * inv + 0.5, 0, levels)), levels <= 255. `stream`: write
// with non-temporal stores (for outputs far larger than the cache; no read-for-ownership).
void quantize_f32(const float* x, uint64_t n, float lo, float inv, float levels, uint8_t* codes, bool stream = false);
// out[i] = lo + codes[i] * scale.
void dequantize_f32(const uint8_t* codes, uint64_t n, float lo, float scale, float* out, bool stream = false);

// Software prefetch distance (floats) for loops that stream through a tensor: the hardware
// prefetchers stop at 4 KiB page boundaries, which ordinary tensor memory hits every 1024 floats.
constexpr uint64_t kPrefetchFloats = 1024;

// Tensors at least this large (bytes of float32) have their codec output streamed past the cache.
constexpr uint64_t kStreamBytes = uint64_t{8} << 20;

}  // namespace splitlink::codec::detail
