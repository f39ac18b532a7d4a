// min_max quantization: per block {float32 min, float32 scale} + densely packed codes.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "bits.h"
#include "codecs.h"
#include "elem.h"
#include "kernels.h"
#include "splitlink/parallel.h"

namespace splitlink::codec::detail {
namespace {

constexpr uint64_t kChunk = uint64_t{1} << 18;  // elements per parallel task (1 MiB of float32)
constexpr uint64_t kStage = 4096;               // codes staged on the stack before packing

template <class E>
Range scan(const typename E::T* src, uint64_t b, uint64_t e) {
  if constexpr (std::is_same_v<E, F32>) {
    return scan_f32(src + b, e - b);
  } else {
    Range r{std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(), false};
    for (uint64_t i = b; i < e; ++i) {
      const float v = E::load(src, i);
      if (!std::isfinite(v)) r.nonfinite = true;
      r.lo = std::min(r.lo, v);
      r.hi = std::max(r.hi, v);
    }
    return r;
  }
}

Range empty_range() { return {std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(), false}; }

template <class E>
uint64_t first_nonfinite(const typename E::T* src, uint64_t n) {
  for (uint64_t i = 0; i < n; ++i) {
    if (!std::isfinite(E::load(src, i))) return i;
  }
  return n;
}

struct Params {
  float lo;
  float scale;
  float inv;
};

Params params_for(const Range& r, unsigned bits, const std::string& name) {
  const double levels = static_cast<double>((1u << bits) - 1);
  const double scale = (static_cast<double>(r.hi) - static_cast<double>(r.lo)) / levels;
  SL_CHECK(scale <= static_cast<double>(std::numeric_limits<float>::max()), CodecError,
           "tensor '" << name << "': value range [" << r.lo << ", " << r.hi << "] is too wide for " << bits
                      << "-bit min_max (scale overflows float32); use more bits or no_compress");
  Params p;
  // -0 and +0 compare equal, so which one a scan keeps depends on its lane order (and so on the
  // variant); adding +0 makes both +0. Decoded values do not change (lo + 0 * scale is +0 either way).
  p.lo = r.lo + 0.0f;
  p.scale = static_cast<float>(scale);
  // A range so narrow that 1/scale overflows float32 (hi - lo below ~levels * 2.9e-39, inside the
  // subnormal range) is quantized as a constant block: every code 0, decoded error <= hi - lo
  // (< 1e-36). An infinite inverse made (x - lo) * inv NaN for x == lo (0 * inf): an undefined
  // float-to-int conversion in the scalar path and code `levels` in the AVX2 one (found by the
  // ASan+UBSan build of _core running the codec property tests).
  const double inv = scale > 0 ? 1.0 / scale : 0.0;
  p.inv = inv <= static_cast<double>(std::numeric_limits<float>::max()) ? static_cast<float>(inv) : 0.0f;
  return p;
}

// Codes for elements [b, e) (b relative to its block is a multiple of 8) into `out` (the packed
// position of element b).
template <class E>
void quantize(const typename E::T* src, uint64_t b, uint64_t e, const Params& p, unsigned bits, bool stochastic,
              uint64_t seed, uint8_t* out, bool stream) {
  const float levels = static_cast<float>((1u << bits) - 1);
  if constexpr (std::is_same_v<E, F32>) {
    if (!stochastic && bits == 8) {
      quantize_f32(src + b, e - b, p.lo, p.inv, levels, out, stream);  // 8-bit codes are the output
      return;
    }
  }
  uint8_t codes[kStage];
  for (uint64_t s = b; s < e; s += kStage) {
    const uint64_t n = std::min(kStage, e - s);
    if (stochastic) {
      for (uint64_t k = 0; k < n; ++k) {
        float y = (E::load(src, s + k) - p.lo) * p.inv + uniform01(seed, s + k);
        y = std::min(std::max(y, 0.0f), levels);
        codes[k] = static_cast<uint8_t>(static_cast<int>(y));
      }
    } else if constexpr (std::is_same_v<E, F32>) {
      quantize_f32(src + s, n, p.lo, p.inv, levels, codes);
    } else {
      for (uint64_t k = 0; k < n; ++k) {
        float y = (E::load(src, s + k) - p.lo) * p.inv + 0.5f;
        y = std::min(std::max(y, 0.0f), levels);
        codes[k] = static_cast<uint8_t>(static_cast<int>(y));
      }
    }
    pack_codes(codes, n, bits, out + (s - b) / 8 * bits);
  }
}

template <class E>
void dequantize(const uint8_t* in, uint64_t b, uint64_t e, const Params& p, unsigned bits, typename E::T* dst,
                bool stream) {
  uint8_t codes[kStage];
  for (uint64_t s = b; s < e; s += kStage) {
    const uint64_t n = std::min(kStage, e - s);
    const uint8_t* c = in + (s - b) / 8 * bits;
    if (bits != 8) {
      unpack_codes(c, n, bits, codes);
      c = codes;
    }
    if constexpr (std::is_same_v<E, F32>) {
      dequantize_f32(c, n, p.lo, p.scale, dst + s, stream);
    } else {
      for (uint64_t k = 0; k < n; ++k) E::store(dst, s + k, p.lo + static_cast<float>(c[k]) * p.scale);
    }
  }
}

uint64_t num_blocks(uint64_t numel, uint64_t block_size) {
  if (numel == 0) return 0;
  return block_size == 0 ? 1 : (numel + block_size - 1) / block_size;
}

}  // namespace

uint64_t minmax_size(uint64_t numel, unsigned bits, uint64_t block_size) {
  return num_blocks(numel, block_size) * 8 + packed_bytes(numel, bits);
}

void minmax_encode(DType dt, const void* src_v, uint64_t numel, unsigned bits, uint64_t block_size, bool stochastic,
                   uint64_t seed, uint8_t* dst, const std::string& name, unsigned threads) {
  dispatch_float(dt, [&](auto e) {
    using E = decltype(e);
    const auto* src = static_cast<const typename E::T*>(src_v);
    const uint64_t nb = num_blocks(numel, block_size);
    uint8_t* codes = dst + nb * 8;
    // Streaming stores pay a fence per call: only for large tensors written in large pieces.
    const bool stream = numel * 4 >= kStreamBytes && (nb <= 1 || block_size >= kChunk);
    auto fail_nonfinite = [&]() {
      SL_FAIL(CodecError, "tensor '" << name << "' contains NaN or Inf (first at flat index "
                                     << first_nonfinite<E>(src, numel)
                                     << "); min_max cannot encode non-finite values: fix them or send this tensor "
                                        "with no_compress, fp16 or bf16");
    };
    auto put_params = [&](uint64_t blk, const Params& p) {
      std::memcpy(dst + blk * 8, &p.lo, 4);
      std::memcpy(dst + blk * 8 + 4, &p.scale, 4);
    };
    if (nb == 0) return;
    if (nb == 1) {
      // Whole tensor: parallel min/max, then parallel quantization of 8-aligned chunks.
      const uint64_t chunks = (numel + kChunk - 1) / kChunk;
      std::vector<Range> ranges(chunks);
      parallel_for(
          chunks, [&](size_t c) { ranges[c] = scan<E>(src, c * kChunk, std::min(numel, (c + 1) * kChunk)); }, threads);
      Range r = empty_range();
      for (const auto& x : ranges) {
        r.lo = std::min(r.lo, x.lo);
        r.hi = std::max(r.hi, x.hi);
        r.nonfinite |= x.nonfinite;
      }
      if (r.nonfinite) fail_nonfinite();
      const Params p = params_for(r, bits, name);
      put_params(0, p);
      parallel_for(
          chunks,
          [&](size_t c) {
            const uint64_t b = c * kChunk;
            quantize<E>(src, b, std::min(numel, b + kChunk), p, bits, stochastic, seed, codes + b / 8 * bits, stream);
          },
          threads);
      return;
    }
    // Blocks: each task takes whole blocks, about kChunk elements per task.
    const uint64_t per_task = std::max<uint64_t>(1, kChunk / block_size);
    const uint64_t tasks = (nb + per_task - 1) / per_task;
    std::vector<char> bad(tasks, 0);
    parallel_for(
        tasks,
        [&](size_t t) {
          for (uint64_t blk = t * per_task; blk < std::min(nb, (t + 1) * per_task); ++blk) {
            const uint64_t b = blk * block_size, e = std::min(numel, b + block_size);
            const Range r = scan<E>(src, b, e);
            if (r.nonfinite) {
              bad[t] = 1;
              return;
            }
            const Params p = params_for(r, bits, name);
            put_params(blk, p);
            quantize<E>(src, b, e, p, bits, stochastic, seed, codes + b / 8 * bits, stream);
          }
        },
        threads);
    if (std::find(bad.begin(), bad.end(), 1) != bad.end()) fail_nonfinite();
  });
}

void minmax_decode(DType dt, const uint8_t* src, uint64_t numel, unsigned bits, uint64_t block_size, void* dst_v,
                   const std::string& name, unsigned threads) {
  dispatch_float(dt, [&](auto e) {
    using E = decltype(e);
    auto* dst = static_cast<typename E::T*>(dst_v);
    const uint64_t nb = num_blocks(numel, block_size);
    const uint64_t bs = nb <= 1 ? numel : block_size;
    const uint8_t* codes = src + nb * 8;
    const bool stream = numel * 4 >= kStreamBytes && (nb <= 1 || block_size >= kChunk);
    auto params = [&](uint64_t blk) {
      Params p;
      std::memcpy(&p.lo, src + blk * 8, 4);
      std::memcpy(&p.scale, src + blk * 8 + 4, 4);
      SL_CHECK(std::isfinite(p.lo) && std::isfinite(p.scale) && p.scale >= 0, CodecError,
               "tensor '" << name << "': min_max block " << blk << " has invalid parameters (min " << p.lo << ", scale "
                          << p.scale << "); the frame is corrupt");
      return p;
    };
    if (nb == 0) return;
    // Tasks of about kChunk elements that start at 8-aligned positions inside their block.
    const uint64_t step = nb == 1 ? kChunk : std::max<uint64_t>(1, kChunk / bs) * bs;
    const uint64_t tasks = (numel + step - 1) / step;
    parallel_for(
        tasks,
        [&](size_t t) {
          const uint64_t tb = t * step, te = std::min(numel, tb + step);
          for (uint64_t b = tb; b < te;) {
            const uint64_t blk = b / bs;
            const uint64_t e = std::min({te, (blk + 1) * bs, numel});
            dequantize<E>(codes + b / 8 * bits, b, e, params(blk), bits, dst, stream);
            b = e;
          }
        },
        threads);
  });
}

}  // namespace splitlink::codec::detail
