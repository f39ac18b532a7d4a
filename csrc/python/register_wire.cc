// Bindings for frames: FrameBuffer (owned aligned memory with the buffer protocol), BufferPool
// (reuse of frame buffers so steady-state packing touches no fresh pages), pack, decode_header.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "codec_spec.h"
#include "py_buffer.h"
#include "register.h"
#include "splitlink/buffer.h"
#include "splitlink/errors.h"
#include "splitlink/wire/frame.h"

namespace py = pybind11;

namespace splitlink::py_util {
namespace {

// A frame's bytes: `size` used bytes at the start of a 64-byte aligned allocation.
struct FrameBuffer {
  AlignedBuffer mem;
  size_t size = 0;

  explicit FrameBuffer(size_t capacity) : mem(capacity) {}
};

constexpr size_t align_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

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

struct PackArgs {
  wire::FrameMeta meta;
  std::vector<wire::TensorInput> inputs;
  std::vector<PyBuffer> views;  // keep the tensors' memory exported while we read or write it
};

// items: sequence of (path: tuple[str, ...], dtype: int, shape: tuple[int, ...], data: buffer,
//                     codec: spec tuple or None, residual: writable float32 buffer or None)
PackArgs parse_items(const py::sequence& items, std::string sender, uint64_t seq, int64_t step, std::string kind) {
  PackArgs a;
  a.meta.sender = std::move(sender);
  a.meta.seq = seq;
  a.meta.step = step;
  a.meta.kind = std::move(kind);
  const size_t n = py::len(items);
  a.inputs.resize(n);
  a.views.reserve(2 * n);  // no reallocation: inputs point into the views
  for (size_t i = 0; i < n; ++i) {
    py::tuple item = items[i].cast<py::tuple>();
    if (item.size() != 6) throw py::value_error("each item must be (path, dtype, shape, data, codec, residual)");
    wire::TensorInput& t = a.inputs[i];
    t.path = item[0].cast<std::vector<std::string>>();
    t.dtype = static_cast<DType>(item[1].cast<uint32_t>());
    t.shape = item[2].cast<std::vector<int64_t>>();
    a.views.emplace_back(item[3], PyBUF_C_CONTIGUOUS, "tensor data");
    t.data = a.views.back().data();
    t.nbytes = a.views.back().size();
    t.codec = spec_from_tuple(item[4]);
    if (!item[5].is_none()) {
      a.views.emplace_back(item[5], PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS, "residual");
      t.residual = reinterpret_cast<float*>(a.views.back().mutable_data());
    }
  }
  return a;
}

py::tuple decode(const py::object& buffer) {
  PyBuffer view(buffer, PyBUF_SIMPLE, "frame");
  wire::FrameHeader h = wire::decode_header(view.data(), view.size());
  py::list descs;
  for (const auto& d : h.tensors) {
    py::tuple path(d.path.size());
    for (size_t k = 0; k < d.path.size(); ++k) path[k] = py::str(d.path[k]);
    py::tuple shape(d.shape.size());
    for (size_t k = 0; k < d.shape.size(); ++k) shape[k] = py::int_(d.shape[k]);
    descs.append(py::make_tuple(path, static_cast<uint32_t>(d.dtype), shape, d.offset, d.length, spec_to_tuple(d.codec)));
  }
  return py::make_tuple(h.meta.version, h.meta.sender, h.meta.seq, h.meta.step, h.meta.kind, h.payload_offset,
                        h.payload_length, descs);
}

}  // namespace

void register_wire(py::module_ m) {
  m.attr("WIRE_VERSION") = wire::kWireVersion;
  m.attr("ALIGNMENT") = wire::kAlignment;
  m.attr("MAX_TENSORS") = wire::kMaxTensors;
  m.attr("MAX_NDIM") = wire::kMaxNdim;
  m.attr("MAX_PATH_DEPTH") = wire::kMaxPathDepth;

  py::class_<FrameBuffer>(m, "FrameBuffer", py::buffer_protocol(),
                          "An encoded frame in 64-byte aligned memory owned by this object. Supports the buffer "
                          "protocol (bytes(f), memoryview(f), numpy.frombuffer(f)) without copying.")
      .def(py::init([](size_t capacity) {
             auto fb = std::make_unique<FrameBuffer>(capacity);
             fb->size = capacity;
             return fb;
           }),
           py::arg("size"))
      .def_buffer([](FrameBuffer& fb) {
        return py::buffer_info(fb.mem.data(), 1, py::format_descriptor<uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(fb.size)}, {1}, /*readonly=*/false);
      })
      .def("__len__", [](const FrameBuffer& fb) { return fb.size; })
      .def_property_readonly("nbytes", [](const FrameBuffer& fb) { return fb.size; })
      .def_property_readonly("capacity", [](const FrameBuffer& fb) { return fb.mem.capacity(); })
      .def_property_readonly("address", [](const FrameBuffer& fb) { return reinterpret_cast<uintptr_t>(fb.mem.data()); },
                             "Address of the first byte (for alignment and zero-copy checks).")
      .def("__repr__", [](const FrameBuffer& fb) { return "<FrameBuffer " + std::to_string(fb.size) + " bytes>"; });

  py::class_<BufferPool>(m, "BufferPool",
                         "Reuses frame buffers once nothing references them any more, so that packing in a loop "
                         "writes into memory that is already mapped.")
      .def(py::init<size_t, size_t>(), py::arg("max_buffers") = 4, py::arg("max_bytes") = size_t{1} << 30)
      .def("acquire", &BufferPool::acquire, py::arg("size"))
      .def("clear", &BufferPool::clear, "Forgets every buffer; memory is freed once nothing else references it.")
      .def("stats", &BufferPool::stats);

  m.def(
      "packed_size",
      [](const py::sequence& items, std::string sender, uint64_t seq, int64_t step, std::string kind) {
        PackArgs a = parse_items(items, std::move(sender), seq, step, std::move(kind));
        return wire::FrameLayout::plan(a.meta, a.inputs).size();
      },
      py::arg("items"), py::arg("sender"), py::arg("seq"), py::arg("step"), py::arg("kind"));

  m.def(
      "pack",
      [](const py::sequence& items, std::string sender, uint64_t seq, int64_t step, std::string kind,
         py::object pool, py::object out, unsigned threads) -> py::object {
        PackArgs a = parse_items(items, std::move(sender), seq, step, std::move(kind));
        const wire::FrameLayout layout = wire::FrameLayout::plan(a.meta, a.inputs);
        if (!out.is_none()) {
          PyBuffer dst(out, PyBUF_WRITABLE, "out");
          if (dst.size() < layout.size()) {
            throw py::value_error("out has " + std::to_string(dst.size()) + " bytes but the frame needs " +
                                  std::to_string(layout.size()) + "; size it with splitlink.wire.packed_size()");
          }
          {
            // Safe without the GIL: the inputs and `out` are pinned by their Py_buffer exports.
            py::gil_scoped_release nogil;
            layout.write(a.meta, a.inputs, dst.mutable_data(), dst.size(), threads);
          }
          return py::int_(layout.size());
        }
        py::object frame = pool.is_none() ? py::cast(std::make_unique<FrameBuffer>(layout.size()))
                                          : pool.cast<BufferPool&>().acquire(layout.size());
        FrameBuffer& fb = frame.cast<FrameBuffer&>();
        fb.size = layout.size();
        {
          // Safe without the GIL: `frame` is referenced only by us until we return it, and the
          // inputs are pinned by their Py_buffer exports.
          py::gil_scoped_release nogil;
          layout.write(a.meta, a.inputs, fb.mem.data(), fb.mem.capacity(), threads);
        }
        return frame;
      },
      py::arg("items"), py::arg("sender"), py::arg("seq"), py::arg("step"), py::arg("kind"), py::arg("pool"),
      py::arg("out"), py::arg("threads") = 0);

  m.def("decode_header", &decode, py::arg("buffer"),
        "Validates a frame and returns (version, sender, seq, step, kind, payload_offset, payload_length, "
        "[(path, dtype, shape, offset, length, codec_spec), ...]) with offsets from the frame start.");
}

}  // namespace splitlink::py_util
