// Bindings for frames: FrameBuffer (owned aligned memory with the buffer protocol), BufferPool
// (reuse of frame buffers so steady-state packing touches no fresh pages), pack, decode_header.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "codec_spec.h"
#include "frame_buffer.h"
#include "py_buffer.h"
#include "register.h"
#include "sealing.h"
#include "splitlink/buffer.h"
#include "splitlink/errors.h"
#include "splitlink/secure/sealed.h"
#include "splitlink/wire/frame.h"

namespace py = pybind11;

namespace splitlink::py_util {
namespace {

struct PackArgs {
  wire::FrameMeta meta;
  std::vector<wire::TensorInput> inputs;
  std::vector<PyBuffer> views;  // keep the tensors' memory exported while we read or write it
};

// items: sequence of (path: tuple[str, ...], dtype: int, shape: tuple[int, ...], data: buffer,
//                     codec: CodecSpec or None, residual: writable float32 buffer or None)
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
    t.codec = spec_from_object(item[4]);
    if (!item[5].is_none()) {
      a.views.emplace_back(item[5], PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS, "residual");
      t.residual = reinterpret_cast<float*>(a.views.back().mutable_data());
    }
  }
  return a;
}

// A frame produced piecewise for streaming: the header, gaps and codec outputs are written once
// into a (pooled) prefix buffer; each chunk is a new bytes object filled straight from the
// uncompressed tensors' memory and the prefix. The frame as a whole is never materialized, so a
// sender copies each tensor byte once (into the chunk the transport sends). Chunks can be made again
// (a retried send) as long as the tensors are unchanged; this object pins their memory.
class FrameChunks {
 public:
  FrameChunks(PackArgs&& a, const py::object& pool, size_t chunk_size, unsigned threads)
      : args_(std::move(a)), layout_(wire::FrameLayout::plan(args_.meta, args_.inputs)), chunk_size_(chunk_size) {
    if (chunk_size_ == 0) throw py::value_error("chunk_size must be > 0");
    prefix_ = new_frame_buffer(pool, layout_.size());
    uint8_t* out = prefix_.cast<FrameBuffer&>().mem.data();
    py::gil_scoped_release nogil;  // inputs pinned by their Py_buffer exports, prefix_ is ours
    layout_.write_prefix(args_.meta, args_.inputs, out, layout_.size(), threads);
  }

  size_t size() const { return layout_.size(); }
  size_t count() const { return (layout_.size() + chunk_size_ - 1) / chunk_size_; }

  // Chunk `index`, optionally preceded by `prefix` in the same bytes object (a transport header).
  py::bytes chunk(size_t index, const py::object& prefix) {
    if (index >= count()) throw py::index_error("chunk index " + std::to_string(index) + " out of range");
    const uint64_t b = uint64_t{index} * chunk_size_, e = std::min<uint64_t>(layout_.size(), b + chunk_size_);
    std::optional<PyBuffer> pre;
    if (!prefix.is_none()) pre.emplace(prefix, PyBUF_SIMPLE, "prefix");
    const size_t pre_len = pre ? pre->size() : 0;
    PyObject* raw = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(pre_len + (e - b)));
    if (raw == nullptr) throw py::error_already_set();
    py::bytes out = py::reinterpret_steal<py::bytes>(raw);
    uint8_t* dst = reinterpret_cast<uint8_t*>(PyBytes_AS_STRING(raw));
    if (pre_len != 0) {
      std::memcpy(dst, pre->data(), pre_len);
      dst += pre_len;
    }
    const uint8_t* written = prefix_.cast<FrameBuffer&>().mem.data();
    {
      py::gil_scoped_release nogil;  // the new bytes object is referenced only by us
      spans_.clear();
      layout_.spans(args_.inputs, written, b, e, spans_);
      for (const auto& sp : spans_) {
        std::memcpy(dst, sp.src, sp.len);
        dst += sp.len;
      }
    }
    return out;
  }

 private:
  PackArgs args_;
  wire::FrameLayout layout_;
  size_t chunk_size_;
  py::object prefix_;
  std::vector<Span> spans_;
};

// A decoded header as Python sees it (`_core.wire.FrameHeader`, `_core.wire.TensorDesc`): read-only,
// named fields; paths, shapes and the descriptors are built once, at decode, as Python tuples.
struct PyTensorDesc {
  py::tuple path;
  uint32_t dtype = 0;
  py::tuple shape;
  uint64_t offset = 0;
  uint64_t length = 0;
  codec::CodecSpec codec;
};

struct PyFrameHeader {
  wire::FrameMeta meta;
  uint64_t payload_offset = 0;
  uint64_t payload_length = 0;
  py::tuple tensors;  // of PyTensorDesc
};

py::tuple desc_fields(const PyTensorDesc& d) {
  return py::make_tuple(d.path, d.dtype, d.shape, d.offset, d.length, d.codec);
}

py::tuple header_fields(const PyFrameHeader& h) {
  return py::make_tuple(h.meta.version, h.meta.sender, h.meta.seq, h.meta.step, h.meta.kind, h.payload_offset,
                        h.payload_length, h.tensors);
}

std::string repr(const PyTensorDesc& d) {
  return "TensorDesc(path=" + std::string(py::repr(d.path)) + ", dtype=" + dtype_name(static_cast<DType>(d.dtype)) +
         ", shape=" + std::string(py::repr(d.shape)) + ", offset=" + std::to_string(d.offset) +
         ", length=" + std::to_string(d.length) + ", codec=" + codec::codec_name(d.codec.type) + ")";
}

std::string repr(const PyFrameHeader& h) {
  return "FrameHeader(version=" + std::to_string(h.meta.version) + ", sender=" + std::string(py::repr(py::str(h.meta.sender))) +
         ", seq=" + std::to_string(h.meta.seq) + ", step=" + std::to_string(h.meta.step) +
         ", kind=" + std::string(py::repr(py::str(h.meta.kind))) + ", payload_offset=" + std::to_string(h.payload_offset) +
         ", payload_length=" + std::to_string(h.payload_length) + ", tensors=" + std::to_string(py::len(h.tensors)) + ")";
}

PyFrameHeader decode(const py::object& buffer) {
  PyBuffer view(buffer, PyBUF_SIMPLE, "frame");
  wire::FrameHeader h;
  try {
    h = wire::decode_header(view.data(), view.size());
  } catch (const WireError& e) {
    if (secure::looks_sealed(view.data(), view.size())) {
      throw WireError(std::string("this is a sealed frame: open it with unpack(..., opener=Opener(...)) (") + e.what() + ")");
    }
    throw;
  }
  PyFrameHeader out;
  out.meta = std::move(h.meta);
  out.payload_offset = h.payload_offset;
  out.payload_length = h.payload_length;
  out.tensors = py::tuple(h.tensors.size());
  for (size_t i = 0; i < h.tensors.size(); ++i) {
    const wire::TensorDesc& d = h.tensors[i];
    PyTensorDesc pd;
    pd.path = py::tuple(d.path.size());
    for (size_t k = 0; k < d.path.size(); ++k) pd.path[k] = py::str(d.path[k]);
    pd.shape = py::tuple(d.shape.size());
    for (size_t k = 0; k < d.shape.size(); ++k) pd.shape[k] = py::int_(d.shape[k]);
    pd.dtype = static_cast<uint32_t>(d.dtype);
    pd.offset = d.offset;
    pd.length = d.length;
    pd.codec = d.codec;
    out.tensors[i] = py::cast(std::move(pd));
  }
  return out;
}

void bind_header_types(py::module_& m) {
  py::class_<PyTensorDesc> desc(m, "TensorDesc",
                                "One tensor of a decoded frame header (read-only). offset and length are bytes from "
                                "the frame's start; codec says how the bytes are encoded (type 0: raw).");
  desc.def_property_readonly("path", [](const PyTensorDesc& d) { return d.path; }, "Names from the outermost group in.")
      .def_readonly("dtype", &PyTensorDesc::dtype, "Element type code (a value of DTYPES).")
      .def_property_readonly("shape", [](const PyTensorDesc& d) { return d.shape; })
      .def_readonly("offset", &PyTensorDesc::offset)
      .def_readonly("length", &PyTensorDesc::length)
      .def_readonly("codec", &PyTensorDesc::codec, "The tensor's CodecSpec.")
      .def("__repr__", [](const PyTensorDesc& d) { return repr(d); });
  add_sequence_protocol(desc, 6, desc_fields);

  py::class_<PyFrameHeader> header(m, "FrameHeader",
                                   "A validated frame header (read-only): routing fields, where the payload lies and "
                                   "one TensorDesc per tensor.");
  header.def_property_readonly("version", [](const PyFrameHeader& h) { return h.meta.version; })
      .def_property_readonly("sender", [](const PyFrameHeader& h) { return h.meta.sender; })
      .def_property_readonly("seq", [](const PyFrameHeader& h) { return h.meta.seq; })
      .def_property_readonly("step", [](const PyFrameHeader& h) { return h.meta.step; })
      .def_property_readonly("kind", [](const PyFrameHeader& h) { return h.meta.kind; })
      .def_readonly("payload_offset", &PyFrameHeader::payload_offset)
      .def_readonly("payload_length", &PyFrameHeader::payload_length)
      .def_property_readonly("tensors", [](const PyFrameHeader& h) { return h.tensors; }, "tuple of TensorDesc.")
      .def("__repr__", [](const PyFrameHeader& h) { return repr(h); });
  add_sequence_protocol(header, 8, header_fields);
}

}  // namespace

void register_wire(py::module_ m) {
  m.attr("WIRE_VERSION") = wire::kWireVersion;
  m.attr("ALIGNMENT") = wire::kAlignment;
  m.attr("MAX_TENSORS") = wire::kMaxTensors;
  m.attr("MAX_NDIM") = wire::kMaxNdim;
  m.attr("MAX_PATH_DEPTH") = wire::kMaxPathDepth;
  py::dict dtypes;
  for (uint32_t c = 1; c <= kMaxDType; ++c) dtypes[py::str(dtype_name(static_cast<DType>(c)))] = c;
  m.attr("DTYPES") = dtypes;  // name -> frame.proto `enum DType` code
  bind_header_types(m);

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
         py::object pool, py::object out, unsigned threads, py::object sealer) -> py::object {
        PackArgs a = parse_items(items, std::move(sender), seq, step, std::move(kind));
        const wire::FrameLayout layout = wire::FrameLayout::plan(a.meta, a.inputs);
        if (!sealer.is_none()) {
          // Pack and seal in one pass: the header, gaps and codec outputs are written where the
          // ciphertext goes, and each segment is encrypted straight from the tensors' memory.
          uint8_t* prefix = nullptr;  // where write_prefix wrote (the ciphertext region)
          return seal_frame(
              sealer.cast<secure::Sealer&>(), a.meta, layout.size(), pool, threads, nullptr,
              [&](uint8_t* ct) {
                prefix = ct;
                layout.write_prefix(a.meta, a.inputs, ct, layout.size(), threads);
              },
              [&](uint64_t b, uint64_t e, std::vector<Span>& list) { layout.spans(a.inputs, prefix, b, e, list); });
        }
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
        py::object frame = new_frame_buffer(pool, layout.size());
        FrameBuffer& fb = frame.cast<FrameBuffer&>();
        {
          // Safe without the GIL: `frame` is referenced only by us until we return it, and the
          // inputs are pinned by their Py_buffer exports.
          py::gil_scoped_release nogil;
          layout.write(a.meta, a.inputs, fb.mem.data(), fb.mem.capacity(), threads);
        }
        return frame;
      },
      py::arg("items"), py::arg("sender"), py::arg("seq"), py::arg("step"), py::arg("kind"), py::arg("pool"),
      py::arg("out"), py::arg("threads") = 0, py::arg("sealer") = py::none());

  py::class_<FrameChunks>(m, "FrameChunks",
                          "A frame made chunk by chunk from tensor memory (see splitlink.wire.pack_chunks).")
      .def_property_readonly("nbytes", &FrameChunks::size)
      .def("__len__", &FrameChunks::count)
      .def("chunk", &FrameChunks::chunk, py::arg("index"), py::arg("prefix") = py::none(),
           "Chunk `index` as a new bytes object, preceded by `prefix` (bytes-like) when given.");

  m.def(
      "pack_chunks",
      [](const py::sequence& items, std::string sender, uint64_t seq, int64_t step, std::string kind, py::object pool,
         size_t chunk_size, unsigned threads) {
        return std::make_unique<FrameChunks>(parse_items(items, std::move(sender), seq, step, std::move(kind)), pool,
                                             chunk_size, threads);
      },
      py::arg("items"), py::arg("sender"), py::arg("seq"), py::arg("step"), py::arg("kind"), py::arg("pool"),
      py::arg("chunk_size"), py::arg("threads") = 0);

  m.def("decode_header", &decode, py::arg("buffer"),
        "Validates a frame's header and returns it as a FrameHeader; offsets are from the frame start.");
}

}  // namespace splitlink::py_util
