#include "splitlink/buffer.h"

#include <sys/mman.h>

#include <cstdlib>
#include <new>
#include <utility>

#include "splitlink/errors.h"

namespace splitlink {
namespace {
constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kMmapThreshold = size_t{1} << 20;
}  // namespace

AlignedBuffer::AlignedBuffer(size_t capacity) : capacity_(capacity) {
  if (capacity == 0) return;
  if (capacity >= kMmapThreshold) {
    // Round up to whole huge pages so the kernel can back the range with 2 MiB pages.
    const size_t len = align_up(capacity, kHugePage);
    void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    (void)madvise(p, len, MADV_HUGEPAGE);  // advisory: ignored where THP is disabled
#endif
    data_ = static_cast<uint8_t*>(p);
    mapped_ = len;
    return;
  }
  void* p = nullptr;
  if (posix_memalign(&p, 64, capacity) != 0) throw std::bad_alloc();
  data_ = static_cast<uint8_t*>(p);
}

AlignedBuffer::~AlignedBuffer() { release(); }

AlignedBuffer::AlignedBuffer(AlignedBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      capacity_(std::exchange(other.capacity_, 0)),
      mapped_(std::exchange(other.mapped_, 0)) {}

AlignedBuffer& AlignedBuffer::operator=(AlignedBuffer&& other) noexcept {
  if (this != &other) {
    release();
    data_ = std::exchange(other.data_, nullptr);
    capacity_ = std::exchange(other.capacity_, 0);
    mapped_ = std::exchange(other.mapped_, 0);
  }
  return *this;
}

void AlignedBuffer::release() noexcept {
  if (data_ == nullptr) return;
  if (mapped_ != 0) {
    munmap(data_, mapped_);
  } else {
    std::free(data_);
  }
  data_ = nullptr;
  capacity_ = 0;
  mapped_ = 0;
}

}  // namespace splitlink
