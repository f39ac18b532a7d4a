// bit_pack: lossless packing of integer and bool tensors as (value - base) in `bits` bits.
#include <algorithm>
#include <limits>
#include <vector>

#include "bits.h"
#include "codecs.h"
#include "splitlink/errors.h"
#include "splitlink/parallel.h"

namespace splitlink::codec::detail {
namespace {

constexpr uint64_t kChunk = uint64_t{1} << 18;  // a multiple of 8
constexpr uint64_t kStage = 4096;

template <typename Fn>
auto dispatch_int(DType dt, Fn&& fn) {
  switch (dt) {
    case DType::kInt8:
      return fn(int8_t{});
    case DType::kInt16:
      return fn(int16_t{});
    case DType::kInt32:
      return fn(int32_t{});
    case DType::kInt64:
      return fn(int64_t{});
    case DType::kUInt8:
      return fn(uint8_t{});
    case DType::kBool:
      return fn(uint8_t{});
    default:
      SL_FAIL(CodecError, "internal: bit_pack got dtype " << dtype_name(dt));
  }
}

}  // namespace

void bitpack_encode(DType dt, const void* src_v, uint64_t numel, unsigned bits, uint8_t* dst, const std::string& name,
                    unsigned threads) {
  dispatch_int(dt, [&](auto tag) {
    using T = decltype(tag);
    const T* src = static_cast<const T*>(src_v);
    const uint64_t chunks = (numel + kChunk - 1) / kChunk;
    std::vector<int64_t> lo(chunks, std::numeric_limits<int64_t>::max()),
        hi(chunks, std::numeric_limits<int64_t>::min());
    parallel_for(
        chunks,
        [&](size_t c) {
          int64_t l = lo[c], h = hi[c];
          for (uint64_t i = c * kChunk; i < std::min(numel, (c + 1) * kChunk); ++i) {
            l = std::min<int64_t>(l, src[i]);
            h = std::max<int64_t>(h, src[i]);
          }
          lo[c] = l;
          hi[c] = h;
        },
        threads);
    int64_t base = numel == 0 ? 0 : *std::min_element(lo.begin(), lo.end());
    const int64_t top = numel == 0 ? 0 : *std::max_element(hi.begin(), hi.end());
    if (dt == DType::kBool) {
      SL_CHECK(top <= 1, CodecError, "tensor '" << name << "' is bool but holds byte value " << top);
      base = 0;  // bools always pack as 0/1, whatever subset occurs
    }
    // Span in uint64 arithmetic: top - base cannot overflow there.
    const uint64_t span = static_cast<uint64_t>(top) - static_cast<uint64_t>(base);
    SL_CHECK(span < (uint64_t{1} << bits), CodecError,
             "tensor '" << name << "': values range over [" << base << ", " << top << "], " << span + 1
                        << " distinct steps, which do not fit in bit_num=" << bits << " (at most " << (1u << bits)
                        << "); raise bit_num to " << std::min<uint64_t>(64, 64 - __builtin_clzll(span | 1))
                        << " or more, or use no_compress");
    std::memcpy(dst, &base, 8);
    uint8_t* out = dst + 8;
    parallel_for(
        chunks,
        [&](size_t c) {
          uint8_t codes[kStage];
          const uint64_t b = c * kChunk, e = std::min(numel, b + kChunk);
          for (uint64_t s = b; s < e; s += kStage) {
            const uint64_t n = std::min(kStage, e - s);
            for (uint64_t k = 0; k < n; ++k) {
              codes[k] = static_cast<uint8_t>(static_cast<uint64_t>(static_cast<int64_t>(src[s + k])) -
                                              static_cast<uint64_t>(base));
            }
            pack_codes(codes, n, bits, out + s / 8 * bits);
          }
        },
        threads);
  });
}

void bitpack_decode(DType dt, const uint8_t* src, uint64_t numel, unsigned bits, void* dst_v, const std::string& name,
                    unsigned threads) {
  dispatch_int(dt, [&](auto tag) {
    using T = decltype(tag);
    T* dst = static_cast<T*>(dst_v);
    int64_t base;
    std::memcpy(&base, src, 8);
    if (numel == 0) return;
    // Every decoded value must be representable: base and base + 2^bits - 1 bound them.
    const int64_t tmin = dt == DType::kBool ? 0 : static_cast<int64_t>(std::numeric_limits<T>::min());
    const int64_t tmax = dt == DType::kBool ? 1 : static_cast<int64_t>(std::numeric_limits<T>::max());
    SL_CHECK(base >= tmin && base <= tmax, CodecError,
             "tensor '" << name << "': bit_pack base " << base << " is outside " << dtype_name(dt)
                        << "; the frame is corrupt");
    const uint64_t room = static_cast<uint64_t>(tmax) - static_cast<uint64_t>(base);
    const uint8_t* in = src + 8;
    const uint64_t chunks = (numel + kChunk - 1) / kChunk;
    std::vector<char> bad(chunks, 0);
    parallel_for(
        chunks,
        [&](size_t c) {
          uint8_t codes[kStage];
          const uint64_t b = c * kChunk, e = std::min(numel, b + kChunk);
          for (uint64_t s = b; s < e; s += kStage) {
            const uint64_t n = std::min(kStage, e - s);
            unpack_codes(in + s / 8 * bits, n, bits, codes);
            for (uint64_t k = 0; k < n; ++k) {
              if (codes[k] > room) bad[c] = 1;
              // Unsigned arithmetic: defined even for the corrupt codes flagged above.
              dst[s + k] = static_cast<T>(static_cast<uint64_t>(base) + codes[k]);
            }
          }
        },
        threads);
    SL_CHECK(
        std::find(bad.begin(), bad.end(), 1) == bad.end(), CodecError,
        "tensor '" << name << "': bit_pack codes exceed the range of " << dtype_name(dt) << "; the frame is corrupt");
  });
}

}  // namespace splitlink::codec::detail
