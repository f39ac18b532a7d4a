// Bindings for frames: FrameBuffer (owned aligned memory with the buffer protocol), BufferPool
// (reuse of frame buffers so steady-state packing touches no fresh pages), pack, decode_header.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <optional>
#include <stdexcept>
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

// A decoded header as Python sees it: `_core.wire.FrameHeader` and `_core.wire.TensorDesc` are
// struct sequences (like os.stat_result): read-only named fields that are also tuples, built in
// one pass at decode. Attribute access is a C member read, as cheap as indexing the tuples these
// types replace (pybind11 properties cost several times more per access on the unpack hot path).
PyStructSequence_Field kDescFields[] = {
    {"path", "names from the outermost group in (tuple of str)"},
    {"dtype", "element type code (a value of DTYPES)"},
    {"shape", "tuple of int"},
    {"offset", "bytes from the frame's start to the tensor's bytes"},
    {"length", "bytes the tensor occupies in the frame (encoded size when compressed)"},
    {"codec", "the tensor's splitlink._core.codec.CodecSpec (type 0: raw bytes)"},
    {nullptr, nullptr}};
PyStructSequence_Desc kDescDesc = {"splitlink._core.wire.TensorDesc",
                                   "One tensor of a decoded frame header (read-only named tuple).", kDescFields, 6};

PyStructSequence_Field kHeaderFields[] = {{"version", "wire version"},
                                          {"sender", "sending party"},
                                          {"seq", "sender's sequence number"},
                                          {"step", "training step"},
                                          {"kind", "application-defined frame kind"},
                                          {"payload_offset", "bytes from the frame's start to the payload"},
                                          {"payload_length", "payload bytes"},
                                          {"tensors", "tuple of TensorDesc"},
                                          {nullptr, nullptr}};
PyStructSequence_Desc kHeaderDesc = {
    "splitlink._core.wire.FrameHeader",
    "A validated frame header (read-only named tuple): routing fields, where the payload lies and one TensorDesc "
    "per tensor.",
    kHeaderFields, 8};

PyTypeObject* g_desc_type = nullptr;  // owned by the module (its attribute)
PyTypeObject* g_header_type = nullptr;
PyObject* g_no_codec = nullptr;  // _core.codec.NO_CODEC, shared by uncompressed tensors (immutable)

py::object new_struct(PyTypeObject* type) {
  PyObject* o = PyStructSequence_New(type);
  if (o == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(o);
}

// Sets item i of a fresh struct sequence to `value` (a reference is stolen from the object).
void set_item(const py::object& s, Py_ssize_t i, py::object value) {
  PyStructSequence_SetItem(s.ptr(), i, value.release().ptr());
}

py::object decode(const py::object& buffer) {
  PyBuffer view(buffer, PyBUF_SIMPLE, "frame");
  wire::FrameHeader h;
  try {
    h = wire::decode_header(view.data(), view.size());
  } catch (const WireError& e) {
    if (secure::looks_sealed(view.data(), view.size())) {
      throw WireError(std::string("this is a sealed frame: open it with unpack(..., opener=Opener(...)) (") + e.what() +
                      ")");
    }
    throw;
  }
  py::tuple descs(h.tensors.size());
  for (size_t i = 0; i < h.tensors.size(); ++i) {
    const wire::TensorDesc& d = h.tensors[i];
    py::tuple path(d.path.size());
    for (size_t k = 0; k < d.path.size(); ++k) path[k] = py::str(d.path[k]);
    py::tuple shape(d.shape.size());
    for (size_t k = 0; k < d.shape.size(); ++k) shape[k] = py::int_(d.shape[k]);
    py::object desc = new_struct(g_desc_type);
    set_item(desc, 0, std::move(path));
    set_item(desc, 1, py::int_(static_cast<uint32_t>(d.dtype)));
    set_item(desc, 2, std::move(shape));
    set_item(desc, 3, py::int_(d.offset));
    set_item(desc, 4, py::int_(d.length));
    set_item(desc, 5, d.codec.is_none() ? py::reinterpret_borrow<py::object>(g_no_codec) : py::cast(d.codec));
    descs[i] = std::move(desc);
  }
  py::object out = new_struct(g_header_type);
  set_item(out, 0, py::int_(h.meta.version));
  set_item(out, 1, py::str(h.meta.sender));
  set_item(out, 2, py::int_(h.meta.seq));
  set_item(out, 3, py::int_(h.meta.step));
  set_item(out, 4, py::str(h.meta.kind));
  set_item(out, 5, py::int_(h.payload_offset));
  set_item(out, 6, py::int_(h.payload_length));
  set_item(out, 7, std::move(descs));
  return out;
}

void bind_header_types(py::module_& m) {
  g_desc_type = PyStructSequence_NewType(&kDescDesc);
  if (g_desc_type == nullptr) throw py::error_already_set();
  m.attr("TensorDesc") = py::reinterpret_steal<py::object>(reinterpret_cast<PyObject*>(g_desc_type));
  g_header_type = PyStructSequence_NewType(&kHeaderDesc);
  if (g_header_type == nullptr) throw py::error_already_set();
  m.attr("FrameHeader") = py::reinterpret_steal<py::object>(reinterpret_cast<PyObject*>(g_header_type));
  g_no_codec = no_codec_object();  // module.cc registers codec first
  if (g_no_codec == nullptr) throw std::logic_error("register_codec must run before register_wire");
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
      .def_property_readonly(
          "address", [](const FrameBuffer& fb) { return reinterpret_cast<uintptr_t>(fb.mem.data()); },
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
      [](const py::sequence& items, std::string sender, uint64_t seq, int64_t step, std::string kind, py::object pool,
         py::object out, unsigned threads, py::object sealer) -> py::object {
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
