#include "splitlink/memcopy.h"

#include <cstdint>
#include <cstring>

#include "platform/simd.h"

namespace splitlink {

void stream_copy(void* dst, const void* src, size_t n, bool always) {
  // Below this the data likely stays in cache for whoever reads it next; memcpy is better.
  constexpr size_t kStreamThreshold = size_t{256} << 10;
#ifdef SPLITLINK_SIMD_X86
  if (n >= kStreamThreshold || (always && n >= 64)) {
    auto* d = static_cast<uint8_t*>(dst);
    const auto* s = static_cast<const uint8_t*>(src);
    // Head: reach 16-byte alignment of the destination with a plain copy.
    const size_t head = (16 - (reinterpret_cast<uintptr_t>(d) & 15)) & 15;
    std::memcpy(d, s, head);
    size_t i = head;
    for (; i + 64 <= n; i += 64) {
      const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i));
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 16));
      const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 32));
      const __m128i e = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 48));
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + i), a);
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + i + 16), b);
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + i + 32), c);
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + i + 48), e);
    }
    _mm_sfence();  // order the streaming stores before anything that publishes the buffer
    std::memcpy(d + i, s + i, n - i);
    return;
  }
#endif
  if (n != 0) std::memcpy(dst, src, n);
}

}  // namespace splitlink
