// topk sparsification: exact selection of the k largest magnitudes over the magnitude bit patterns
// (monotonic for non-negative floats): a histogram of the top bits, then nth_element within the one
// bin that holds the k-th largest. Three passes over the data, parallel.
#include <algorithm>
#include <cmath>
#include <functional>
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
  uint32_t threshold = 0;        // keys above are kept
  uint64_t ties = 0;             // how many keys equal to the threshold are kept (lowest indices first)
  std::vector<uint64_t> gt, eq;  // per chunk: keys above the threshold, keys equal to it
};

// Finds the k-th largest key among [0, numel) in two passes over the data: a histogram of the top
// 11 key bits (per chunk) names the bin that holds the k-th largest; a second pass gathers that
// bin's keys (a few percent of the tensor), where nth_element finds the exact threshold. The per-chunk
// counts above/equal to the threshold fall out of the histogram and the gathered keys.
template <class E>
Selection select(const typename E::T* src, uint64_t numel, uint64_t k, const std::string& name, unsigned threads) {
  SL_CHECK(k >= 1 && k <= numel, Error, "internal: topk select of " << k << " among " << numel);
  const uint64_t chunks = (numel + kChunk - 1) / kChunk;
  constexpr unsigned kShift = 21;  // keys are < 2^31: 1024 bins of the top bits
  constexpr uint32_t kBins = 1u << 10;
  std::vector<uint32_t> hist(chunks * kBins, 0);  // a chunk holds < 2^32 keys
  std::vector<char> nan(chunks, 0);
  parallel_for(
      chunks,
      [&](size_t c) {
        uint32_t* h = hist.data() + c * kBins;
        uint32_t saw_nan = 0;
        for (uint64_t i = c * kChunk; i < std::min(numel, (c + 1) * kChunk); ++i) {
          const uint32_t key = key_of<E>(src, i);
          saw_nan |= key > 0x7F800000u;
          ++h[key >> kShift];
        }
        nan[c] = saw_nan != 0;
      },
      threads);
  SL_CHECK(std::find(nan.begin(), nan.end(), 1) == nan.end(), CodecError,
           "tensor '" << name << "' contains NaN; topk cannot rank it: fix the values or use no_compress");
  uint64_t above = 0;
  uint32_t bin = kBins;
  while (bin > 0) {
    --bin;
    uint64_t count = 0;
    for (uint64_t c = 0; c < chunks; ++c) count += hist[c * kBins + bin];
    if (above + count >= k) break;
    above += count;
  }
  const uint64_t need = k - above;  // taken from `bin`, largest first

  // Gather the boundary bin's keys, each chunk into its own slot (one spare entry: the loop always
  // writes and advances only on a match, so it never branches on the data).
  std::vector<uint64_t> start(chunks + 1, 0);
  for (uint64_t c = 0; c < chunks; ++c) start[c + 1] = start[c] + hist[c * kBins + bin] + 1;
  std::vector<uint32_t> cand(start[chunks]);
  parallel_for(
      chunks,
      [&](size_t c) {
        uint64_t o = start[c];
        for (uint64_t i = c * kChunk; i < std::min(numel, (c + 1) * kChunk); ++i) {
          const uint32_t key = key_of<E>(src, i);
          cand[o] = key;
          o += (key >> kShift) == bin;
        }
      },
      threads);
  std::vector<uint32_t> all;
  all.reserve(start[chunks] - chunks);
  for (uint64_t c = 0; c < chunks; ++c) {
    all.insert(all.end(), cand.begin() + static_cast<std::ptrdiff_t>(start[c]),
               cand.begin() + static_cast<std::ptrdiff_t>(start[c + 1] - 1));
  }
  std::nth_element(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(need - 1), all.end(), std::greater<>());
  Selection sel;
  sel.threshold = all[need - 1];
  uint64_t greater_in_bin = 0;
  for (uint32_t key : all) greater_in_bin += key > sel.threshold;
  sel.ties = need - greater_in_bin;
  sel.gt.assign(chunks, 0);
  sel.eq.assign(chunks, 0);
  for (uint64_t c = 0; c < chunks; ++c) {
    uint64_t g = 0, q = 0;
    for (uint32_t b = bin + 1; b < kBins; ++b) g += hist[c * kBins + b];
    for (uint64_t j = start[c]; j + 1 < start[c + 1]; ++j) {
      g += cand[j] > sel.threshold;
      q += cand[j] == sel.threshold;
    }
    sel.gt[c] = g;
    sel.eq[c] = q;
  }
  return sel;
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
      parallel_for((numel + kChunk - 1) / kChunk,
                   [&](size_t c) {
                     for (uint64_t i = c * kChunk; i < std::min(numel, (c + 1) * kChunk); ++i)
                       residual[i] = E::load(src, i);
                   },
                   threads);
    }
    if (k == 0) return;
    const Selection sel = select<E>(src, numel, k, name, threads);

    // Per chunk: how many keys lie above the threshold and how many equal it (from the selection);
    // ties are granted to chunks in index order, so output offsets follow from a prefix sum.
    const uint64_t chunks = (numel + kChunk - 1) / kChunk;
    const std::vector<uint64_t>& gt = sel.gt;
    const std::vector<uint64_t>& eq = sel.eq;
    std::vector<uint64_t> quota(chunks, 0), offset(chunks, 0);
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
    parallel_for(
        chunks,
        [&](size_t c) {
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
        },
        threads);
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
      for (uint64_t j = 0; j < k; ++j)
        std::memcpy(dst + index(j), vals + j * sizeof(typename E::T), sizeof(typename E::T));
      return;
    }
    std::vector<float> dec(k);
    minmax_decode(DType::kFloat32, vals, k, value_bits, block_size, dec.data(), name, threads);
    for (uint64_t j = 0; j < k; ++j) E::store(dst, index(j), dec[j]);
  });
}

}  // namespace splitlink::codec::detail
