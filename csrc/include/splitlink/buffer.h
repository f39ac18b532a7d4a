// Bytes in memory: owned, 64-byte aligned buffers for frames, and views of bytes owned elsewhere.
//
// Large buffers are backed by anonymous mmap and advised for transparent huge pages, which cuts
// the first-touch page-fault cost that dominates writing into fresh memory; callers keep and
// reuse buffers (see the Python layer's BufferPool) so steady state touches no new pages.
#pragma once

#include <cstddef>
#include <cstdint>

namespace splitlink {

// `v` rounded up to a multiple of `a` (a > 0).
constexpr size_t align_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

// A run of bytes that lives somewhere else (e.g. a tensor's own memory): lets a writer encrypt
// or copy a message straight from its pieces without first gathering them into one buffer.
struct Span {
  const uint8_t* src;
  size_t len;
};

class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t capacity);
  ~AlignedBuffer();

  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  AlignedBuffer(AlignedBuffer&& other) noexcept;
  AlignedBuffer& operator=(AlignedBuffer&& other) noexcept;

  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  size_t capacity() const { return capacity_; }

 private:
  void release() noexcept;

  uint8_t* data_ = nullptr;
  size_t capacity_ = 0;
  size_t mapped_ = 0;  // non-zero when data_ came from mmap
};

}  // namespace splitlink
