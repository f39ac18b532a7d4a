// FrameBuffer (owned, aligned frame memory with the buffer protocol) and BufferPool (reuse of
// frame buffers), shared by the wire and secure bindings.
#pragma once

#include <pybind11/pybind11.h>

#include <memory>
#include <vector>

#include "splitlink/buffer.h"

namespace splitlink::py_util {

namespace py = pybind11;

// A frame's bytes: `size` used bytes at the start of a 64-byte aligned allocation.
struct FrameBuffer {
  AlignedBuffer mem;
  size_t size = 0;

  explicit FrameBuffer(size_t capacity) : mem(capacity) {}
};

// Keeps frame buffers for reuse. A buffer is free when the pool holds the only reference to its
// Python object: memoryviews, numpy arrays and torch tensors that view it all hold a reference,
// so a buffer is never handed out again while anything can still see its memory.
class BufferPool {
 public:
  BufferPool(size_t max_buffers, size_t max_bytes) : max_buffers_(max_buffers), max_bytes_(max_bytes) {}

  py::object acquire(size_t size) {
    // Caller holds the GIL: reference counts and entries_ are stable for this whole call.
    py::object* best = nullptr;
    size_t best_cap = 0;
    for (auto& obj : entries_) {
      if (Py_REFCNT(obj.ptr()) != 1) continue;
      const size_t cap = obj.cast<FrameBuffer&>().mem.capacity();
      if (cap >= size && (best == nullptr || cap < best_cap)) {
        best = &obj;
        best_cap = cap;
      }
    }
    if (best != nullptr) {
      ++hits_;
      best->cast<FrameBuffer&>().size = size;
      return *best;
    }
    ++misses_;
    // Headroom so that frames which grow a little (a longer name, a bigger last batch) still
    // fit; untouched headroom costs no physical memory.
    const size_t cap = align_up(size + size / 16, 4096);
    py::object fresh = py::cast(std::make_unique<FrameBuffer>(cap));
    fresh.cast<FrameBuffer&>().size = size;
    // Make room by dropping free buffers, smallest first.
    while (entries_.size() >= max_buffers_ || retained_ + cap > max_bytes_) {
      auto victim = entries_.end();
      for (auto it = entries_.begin(); it != entries_.end(); ++it) {
        if (Py_REFCNT(it->ptr()) != 1) continue;
        if (victim == entries_.end() || capacity_of(*it) < capacity_of(*victim)) victim = it;
      }
      if (victim == entries_.end()) break;
      retained_ -= capacity_of(*victim);
      entries_.erase(victim);
    }
    if (entries_.size() < max_buffers_ && retained_ + cap <= max_bytes_) {
      entries_.push_back(fresh);
      retained_ += cap;
    }
    return fresh;
  }

  void clear() {
    entries_.clear();
    retained_ = 0;
  }

  py::dict stats() const {
    py::dict d;
    size_t free_count = 0;
    for (const auto& obj : entries_) free_count += Py_REFCNT(obj.ptr()) == 1 ? 1 : 0;
    d["buffers"] = entries_.size();
    d["free"] = free_count;
    d["retained_bytes"] = retained_;
    d["hits"] = hits_;
    d["misses"] = misses_;
    d["max_buffers"] = max_buffers_;
    d["max_bytes"] = max_bytes_;
    return d;
  }

 private:
  static size_t capacity_of(const py::object& o) { return o.cast<FrameBuffer&>().mem.capacity(); }

  size_t max_buffers_;
  size_t max_bytes_;
  size_t retained_ = 0;
  size_t hits_ = 0;
  size_t misses_ = 0;
  std::vector<py::object> entries_;
};

// A frame buffer of `size` bytes: from `pool` when it is a BufferPool, else freshly allocated.
inline py::object new_frame_buffer(const py::object& pool, size_t size) {
  py::object frame =
      pool.is_none() ? py::cast(std::make_unique<FrameBuffer>(size)) : pool.cast<BufferPool&>().acquire(size);
  frame.cast<FrameBuffer&>().size = size;
  return frame;
}

}  // namespace splitlink::py_util
