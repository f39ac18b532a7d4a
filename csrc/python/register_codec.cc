// Bindings for the tensor codecs on raw buffers (the frame path uses them through pack/unpack).
#include <pybind11/pybind11.h>

#include <string>

#include "codec_spec.h"
#include "py_buffer.h"
#include "register.h"
#include "splitlink/errors.h"

namespace py = pybind11;

namespace splitlink::py_util {

namespace {

std::string repr(const codec::CodecSpec& s) {
  return std::string("CodecSpec(type=") + codec::codec_name(s.type) + ", bit_num=" + std::to_string(s.bit_num) +
         ", block_size=" + std::to_string(s.block_size) + ", topk_count=" + std::to_string(s.topk_count) +
         ", value_bits=" + std::to_string(s.value_bits) + ", stochastic=" + (s.stochastic ? "True" : "False") +
         ", seed=" + std::to_string(s.seed) + ")";
}

void bind_codec_spec(py::module_& m) {
  py::class_<codec::CodecSpec> cls(m, "CodecSpec",
                                   "How one tensor is encoded (read-only): codec type code (see CODEC_TYPES) and its "
                                   "parameters. splitlink.codec.CompressConfig.spec() makes one for a tensor.");
  cls.def(py::init([](uint32_t type, uint32_t bit_num, uint64_t block_size, uint64_t topk_count, uint32_t value_bits,
                      bool stochastic, uint64_t seed) {
            if (type > codec::kMaxCodecType) {
              throw py::value_error("unknown codec type " + std::to_string(type) +
                                    "; codes are the values of "
                                    "splitlink._core.codec.CODEC_TYPES");
            }
            codec::CodecSpec s;
            s.type = static_cast<codec::CodecType>(type);
            s.bit_num = bit_num;
            s.block_size = block_size;
            s.topk_count = topk_count;
            s.value_bits = value_bits;
            s.stochastic = stochastic;
            s.seed = seed;
            return s;
          }),
          py::arg("type"), py::kw_only(), py::arg("bit_num") = 0, py::arg("block_size") = 0, py::arg("topk_count") = 0,
          py::arg("value_bits") = 0, py::arg("stochastic") = false, py::arg("seed") = 0)
      .def_property_readonly(
          "type", [](const codec::CodecSpec& s) { return static_cast<uint32_t>(s.type); },
          "Codec type code (frame.proto `enum CodecType`; 0: uncompressed).")
      .def_property_readonly(
          "name", [](const codec::CodecSpec& s) { return std::string(codec::codec_name(s.type)); },
          "Codec name, a key of CODEC_TYPES.")
      .def_readonly("bit_num", &codec::CodecSpec::bit_num, "min_max, bit_pack: bits per value (1..8).")
      .def_readonly("block_size", &codec::CodecSpec::block_size, "min_max, topk values: values per block (0: one).")
      .def_readonly("topk_count", &codec::CodecSpec::topk_count, "topk: values kept.")
      .def_readonly("value_bits", &codec::CodecSpec::value_bits, "topk: 0 raw values, 1..8 quantized values.")
      .def_readonly("stochastic", &codec::CodecSpec::stochastic, "Stochastic rounding (encoder only, not on the wire).")
      .def_readonly("seed", &codec::CodecSpec::seed, "Seed of the stochastic rounding stream (encoder only).")
      .def("__repr__", &repr)
      .def("__eq__",
           [](const codec::CodecSpec& a, const py::object& b) -> py::object {
             if (!py::isinstance<codec::CodecSpec>(b)) return py::reinterpret_borrow<py::object>(Py_NotImplemented);
             return py::bool_(spec_fields(a).equal(spec_fields(b.cast<const codec::CodecSpec&>())));
           })
      .def("__hash__", [](const codec::CodecSpec& s) { return py::hash(spec_fields(s)); });
  add_sequence_protocol(cls, 7, spec_fields);

  py::dict types;
  for (uint32_t t = 0; t <= codec::kMaxCodecType; ++t) {
    types[py::str(codec::codec_name(static_cast<codec::CodecType>(t)))] = t;
  }
  m.attr("CODEC_TYPES") = types;
  // The spec of every uncompressed tensor in a decoded header (one shared immutable object).
  py::object none = py::cast(codec::CodecSpec{});
  m.attr("NO_CODEC") = none;
  no_codec_object() = none.release().ptr();
}

}  // namespace

void register_codec(py::module_ m) {
  bind_codec_spec(m);
  m.def(
      "encoded_size",
      [](const py::object& spec, uint32_t dtype, uint64_t numel, const std::string& name) {
        const codec::CodecSpec s = spec_from_object(spec);
        codec::validate(s, static_cast<DType>(dtype), numel, name, false);
        return codec::encoded_size(s, static_cast<DType>(dtype), numel);
      },
      py::arg("spec"), py::arg("dtype"), py::arg("numel"), py::arg("name") = "tensor");

  m.def(
      "encode",
      [](const py::object& spec, uint32_t dtype, const py::object& src, const py::object& out, const std::string& name,
         const py::object& residual, unsigned threads) {
        const codec::CodecSpec s = spec_from_object(spec);
        const DType dt = static_cast<DType>(dtype);
        PyBuffer in(src, PyBUF_C_CONTIGUOUS, "src");
        const size_t isz = itemsize(dt);
        if (isz == 0 || in.size() % isz != 0) throw py::value_error("src size does not match the dtype");
        const uint64_t numel = in.size() / isz;
        codec::validate(s, dt, numel, name, false);
        PyBuffer dst(out, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS, "out");
        const uint64_t need = codec::encoded_size(s, dt, numel);
        if (dst.size() < need) {
          throw py::value_error("out has " + std::to_string(dst.size()) + " bytes, encoding needs " +
                                std::to_string(need));
        }
        float* res = nullptr;
        std::unique_ptr<PyBuffer> res_buf;
        if (!residual.is_none()) {
          res_buf = std::make_unique<PyBuffer>(residual, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS, "residual");
          if (res_buf->size() != numel * sizeof(float)) throw py::value_error("residual must be float32[numel]");
          res = reinterpret_cast<float*>(res_buf->mutable_data());
        }
        {
          // Safe without the GIL: every buffer is pinned by its Py_buffer export.
          py::gil_scoped_release nogil;
          codec::encode(s, dt, in.data(), numel, dst.mutable_data(), name, res, threads);
        }
        return need;
      },
      py::arg("spec"), py::arg("dtype"), py::arg("src"), py::arg("out"), py::arg("name") = "tensor",
      py::arg("residual") = py::none(), py::arg("threads") = 0);

  m.def(
      "decode",
      [](const py::object& spec, uint32_t dtype, const py::object& src, uint64_t offset, uint64_t length,
         const py::object& out, const std::string& name, unsigned threads) {
        const codec::CodecSpec s = spec_from_object(spec);
        const DType dt = static_cast<DType>(dtype);
        PyBuffer in(src, PyBUF_SIMPLE, "src");
        if (offset > in.size() || length > in.size() - offset) {
          throw py::value_error("offset/length lie outside src");
        }
        PyBuffer dst(out, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS, "out");
        const size_t isz = itemsize(dt);
        if (isz == 0 || dst.size() % isz != 0) throw py::value_error("out size does not match the dtype");
        {
          // Safe without the GIL: both buffers are pinned by their Py_buffer exports.
          py::gil_scoped_release nogil;
          codec::decode(s, dt, in.data() + offset, length, dst.size() / isz, dst.mutable_data(), name, threads);
        }
      },
      py::arg("spec"), py::arg("dtype"), py::arg("src"), py::arg("offset"), py::arg("length"), py::arg("out"),
      py::arg("name") = "tensor", py::arg("threads") = 0);
}

}  // namespace splitlink::py_util
