// topk sparsification: exact selection of the k largest magnitudes by a three-level radix select
// over the magnitude bit patterns (monotonic for non-negative floats), O(numel) and parallel.
#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include "codecs.h"
#include "elem.h"
#include "splitlink/parallel.h"

namespace splitlink::codec::detail {
namespace {

constexpr uint64_t kChunk = uint64_t{1} << 18;

template <class E>
inline uint32_t key_of(const typename E::T* src, uint64_t i) {
  return f2u(E::load(src, i)) & 0x7FFFFFFFu;
}

struct Selection {
  uint32_t threshold = 0;  // keys above are kept
  uint64_t ties = 0;       // how many keys equal to the threshold are kept (lowest indices first)
};

// Finds the k-th largest key among [0, numel), 11 + 11 + 10 bits at a time, most significant first.
template <class E>
Selection select(const typename E::T* src, uint64_t numel, uint64_t k, const std::string& name, unsigned threads) {
  const uint64_t chunks = (numel + kChunk - 1) / kChunk;
  struct Level {
    unsigned shift, width;
  };
  const std::array<Level, 3> levels = {{{21, 11}, {10, 11}, {0, 10}}};
  uint32_t prefix = 0;     // key bits fixed so far
  unsigned fixed_from = 32;  // bits [fixed_from, 32) of the key are fixed to `prefix`
  uint64_t need = k;
  std::vector<char> nan(chunks, 0);
  for (const Level& lv : levels) {
    const uint32_t nbins = 1u << lv.width;
    std::vector<uint64_t> hist(chunks * nbins, 0);
    parallel_for(chunks, [&](size_t c) {
      uint64_t* h = hist.data() + c * nbins;
      bool saw_nan = false;
      for (uint64_t i = c * kChunk; i < std::min(numel, (c + 1) * kChunk); ++i) {
        const uint32_t key = key_of<E>(src, i);
        saw_nan |= key > 0x7F800000u;
        if (fixed_from < 32 && (key >> fixed_from) != (prefix >> fixed_from)) continue;
        ++h[(key >> lv.shift) & (nbins - 1)];
      }
      if (saw_nan) nan[c] = 1;
    }, threads);
    SL_CHECK(std::find(nan.begin(), nan.end(), 1) == nan.end(), CodecError,
             "tensor '" << name << "' contains NaN; topk cannot rank it: fix the values or use no_compress");
    uint64_t cum = 0;
    uint32_t bin = nbins;
    while (bin > 0) {
      --bin;
      uint64_t count = 0;
      for (uint64_t c = 0; c < chunks; ++c) count += hist[c * nbins + bin];
      if (cum + count >= need) break;
      cum += count;
    }
    need -= cum;
    prefix |= bin << lv.shift;
    fixed_from = lv.shift;
  }
  return {prefix, need};
}

}  // namespace

uint64_t topk_size(DType dt, uint64_t numel, uint64_t k, unsigned value_bits, uint64_t block_size) {
  const uint64_t iw = numel > (uint64_t{1} << 32) ? 8 : 4;
  const uint64_t values = value_bits == 0 ? k * itemsize(dt) : minmax_size(k, value_bits, block_size);
  return k * iw + values;
}

void topk_encode(DType dt, const void* src_v, uint64_t numel, uint64_t k, unsigned value_bits, uint64_t block_size,
                 bool stochastic, uint64_t seed, uint8_t* dst, float* residual, const std::string& name,
                 unsigned threads) {
  dispatch_float(dt, [&](auto e) {
    using E = decltype(e);
    const auto* src = static_cast<const typename E::T*>(src_v);
    const bool wide = numel > (uint64_t{1} << 32);
    const uint64_t iw = wide ? 8 : 4;
    if (residual != nullptr) {
      parallel_for((numel + kChunk - 1) / kChunk, [&](size_t c) {
        for (uint64_t i = c * kChunk; i < std::min(numel, (c + 1) * kChunk); ++i) residual[i] = E::load(src, i);
      }, threads);
    }
    if (k == 0) return;
    const Selection sel = select<E>(src, numel, k, name, threads);

    // Per chunk: how many keys lie above the threshold and how many equal it; ties are granted to
    // chunks in index order, so output offsets follow from a prefix sum.
    const uint64_t chunks = (numel + kChunk - 1) / kChunk;
    std::vector<uint64_t> gt(chunks, 0), eq(chunks, 0), quota(chunks, 0), offset(chunks, 0);
    parallel_for(chunks, [&](size_t c) {
      uint64_t g = 0, q = 0;  // locals: neighbouring counters share cache lines across threads
      for (uint64_t i = c * kChunk; i < std::min(numel, (c + 1) * kChunk); ++i) {
        const uint32_t key = key_of<E>(src, i);
        g += key > sel.threshold;
        q += key == sel.threshold;
      }
      gt[c] = g;
      eq[c] = q;
    }, threads);
    uint64_t ties_left = sel.ties, pos = 0;
    for (uint64_t c = 0; c < chunks; ++c) {
      quota[c] = std::min(eq[c], ties_left);
      ties_left -= quota[c];
      offset[c] = pos;
      pos += gt[c] + quota[c];
    }
    SL_CHECK(pos == k, Error, "internal: topk selected " << pos << " of " << k);

    uint8_t* idx_out = dst;
    uint8_t* val_out = dst + k * iw;
    std::vector<float> kept(value_bits != 0 ? k : 0);
    parallel_for(chunks, [&](size_t c) {
      uint64_t o = offset[c], q = quota[c];
      for (uint64_t i = c * kChunk; i < std::min(numel, (c + 1) * kChunk); ++i) {
        const uint32_t key = key_of<E>(src, i);
        if (key < sel.threshold) continue;
        if (key == sel.threshold) {
          if (q == 0) continue;
          --q;
        }
        if (wide) {
          std::memcpy(idx_out + o * 8, &i, 8);
        } else {
          const uint32_t i32 = static_cast<uint32_t>(i);
          std::memcpy(idx_out + o * 4, &i32, 4);
        }
        if (value_bits == 0) {
          std::memcpy(val_out + o * sizeof(typename E::T), src + i, sizeof(typename E::T));
          if (residual != nullptr) residual[i] = 0.0f;
        } else {
          kept[o] = E::load(src, i);
        }
        ++o;
      }
    }, threads);
    if (value_bits == 0) return;
    minmax_encode(DType::kFloat32, kept.data(), k, value_bits, block_size, stochastic, seed, val_out, name, threads);
    if (residual != nullptr) {
      std::vector<float> dec(k);
      minmax_decode(DType::kFloat32, val_out, k, value_bits, block_size, dec.data(), name, threads);
      for (uint64_t j = 0; j < k; ++j) {
        uint64_t i;
        if (wide) {
          std::memcpy(&i, idx_out + j * 8, 8);
        } else {
          uint32_t i32;
          std::memcpy(&i32, idx_out + j * 4, 4);
          i = i32;
        }
        residual[i] = kept[j] - dec[j];
      }
    }
  });
}

void topk_decode(DType dt, const uint8_t* src, uint64_t numel, uint64_t k, unsigned value_bits, uint64_t block_size,
                 void* dst_v, const std::string& name, unsigned threads) {
  dispatch_float(dt, [&](auto e) {
    using E = decltype(e);
    auto* dst = static_cast<typename E::T*>(dst_v);
    if (numel != 0) std::memset(dst_v, 0, numel * sizeof(typename E::T));  // +0.0 in every float format
    if (k == 0) return;
    const bool wide = numel > (uint64_t{1} << 32);
    const uint64_t iw = wide ? 8 : 4;
    auto index = [&](uint64_t j) {
      if (wide) {
        uint64_t i;
        std::memcpy(&i, src + j * 8, 8);
        return i;
      }
      uint32_t i32;
      std::memcpy(&i32, src + j * 4, 4);
      return static_cast<uint64_t>(i32);
    };
    uint64_t prev = 0;
    for (uint64_t j = 0; j < k; ++j) {
      const uint64_t i = index(j);
      SL_CHECK(i < numel && (j == 0 || i > prev), CodecError,
               "tensor '" << name << "': topk index #" << j << " is " << i << " (previous " << prev << ", numel "
                          << numel << "); indices must be increasing and in range: the frame is corrupt");
      prev = i;
    }
    const uint8_t* vals = src + k * iw;
    if (value_bits == 0) {
      for (uint64_t j = 0; j < k; ++j) std::memcpy(dst + index(j), vals + j * sizeof(typename E::T), sizeof(typename E::T));
      return;
    }
    std::vector<float> dec(k);
    minmax_decode(DType::kFloat32, vals, k, value_bits, block_size, dec.data(), name, threads);
    for (uint64_t j = 0; j < k; ++j) E::store(dst, index(j), dec[j]);
  });
}

}  // namespace splitlink::codec::detail
