// Bindings for the tensor codecs on raw buffers (the frame path uses them through pack/unpack).
#include <pybind11/pybind11.h>

#include "codec_spec.h"
#include "py_buffer.h"
#include "register.h"
#include "splitlink/errors.h"

namespace py = pybind11;

namespace splitlink::py_util {

void register_codec(py::module_ m) {
  m.def(
      "encoded_size",
      [](const py::object& spec, uint32_t dtype, uint64_t numel, const std::string& name) {
        const codec::CodecSpec s = spec_from_tuple(spec);
        codec::validate(s, static_cast<DType>(dtype), numel, name, false);
        return codec::encoded_size(s, static_cast<DType>(dtype), numel);
      },
      py::arg("spec"), py::arg("dtype"), py::arg("numel"), py::arg("name") = "tensor");

  m.def(
      "encode",
      [](const py::object& spec, uint32_t dtype, const py::object& src, const py::object& out, const std::string& name,
         const py::object& residual, unsigned threads) {
        const codec::CodecSpec s = spec_from_tuple(spec);
        const DType dt = static_cast<DType>(dtype);
        PyBuffer in(src, PyBUF_C_CONTIGUOUS, "src");
        const size_t isz = itemsize(dt);
        if (isz == 0 || in.size() % isz != 0) throw py::value_error("src size does not match the dtype");
        const uint64_t numel = in.size() / isz;
        codec::validate(s, dt, numel, name, false);
        PyBuffer dst(out, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS, "out");
        const uint64_t need = codec::encoded_size(s, dt, numel);
        if (dst.size() < need) {
          throw py::value_error("out has " + std::to_string(dst.size()) + " bytes, encoding needs " + std::to_string(need));
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
        const codec::CodecSpec s = spec_from_tuple(spec);
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
