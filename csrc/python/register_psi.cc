// Bindings for the ECDH-PSI primitives (splitlink.psi builds the protocol on them).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "py_buffer.h"
#include "register.h"
#include "splitlink/errors.h"
#include "splitlink/psi/ecdh.h"

namespace py = pybind11;

namespace splitlink::py_util {
namespace {

// Packs a sequence of ids (bytes-like or str, UTF-8) into one buffer and offsets, with the GIL held.
void pack_ids(const py::sequence& ids, std::vector<uint8_t>& data, std::vector<uint64_t>& offsets) {
  const size_t n = py::len(ids);
  offsets.resize(n + 1);
  offsets[0] = 0;
  data.clear();
  for (size_t i = 0; i < n; ++i) {
    PyObject* o = PySequence_GetItem(ids.ptr(), static_cast<Py_ssize_t>(i));
    if (o == nullptr) throw py::error_already_set();
    py::object item = py::reinterpret_steal<py::object>(o);
    const char* p = nullptr;
    Py_ssize_t len = 0;
    if (PyUnicode_Check(o)) {
      p = PyUnicode_AsUTF8AndSize(o, &len);
      if (p == nullptr) throw py::error_already_set();
    } else if (PyBytes_Check(o)) {
      p = PyBytes_AS_STRING(o);
      len = PyBytes_GET_SIZE(o);
    } else {
      throw py::type_error("id " + std::to_string(i) + " is a " + std::string(Py_TYPE(o)->tp_name) +
                           "; ids are str or bytes (convert numbers with str())");
    }
    data.insert(data.end(), reinterpret_cast<const uint8_t*>(p), reinterpret_cast<const uint8_t*>(p) + len);
    offsets[i + 1] = data.size();
  }
}

py::array_t<uint8_t> points_array(size_t n) {
  return py::array_t<uint8_t>({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(psi::kPointBytes)});
}

}  // namespace

void register_psi(py::module_ m) {
  m.attr("POINT_BYTES") = psi::kPointBytes;
  py::class_<psi::Blinder>(m, "Blinder", "A private X25519 scalar for ECDH-PSI (never exported).")
      .def(py::init([] { return psi::Blinder::generate(); }))
      .def(
          "hash_and_blind",
          [](const psi::Blinder& b, const py::sequence& ids, unsigned threads) {
            std::vector<uint8_t> data;
            std::vector<uint64_t> offsets;
            pack_ids(ids, data, offsets);
            const size_t n = offsets.size() - 1;
            auto out = points_array(n);
            uint8_t* dst = out.mutable_data();
            {
              py::gil_scoped_release nogil;
              b.hash_and_blind(data.data(), offsets.data(), n, dst, threads);
            }
            return out;
          },
          py::arg("ids"), py::arg("threads") = 0, "uint8 array (n, 32): X25519(k, H(id)) per id")
      .def(
          "blind",
          [](const psi::Blinder& b, const py::object& points, unsigned threads) {
            PyBuffer in(points, PyBUF_C_CONTIGUOUS, "points");
            SL_CHECK(in.size() % psi::kPointBytes == 0, InvalidArgument,
                     "points must be a multiple of 32 bytes, got " << in.size());
            const size_t n = in.size() / psi::kPointBytes;
            auto out = points_array(n);
            uint8_t* dst = out.mutable_data();
            {
              py::gil_scoped_release nogil;
              b.blind(in.data(), n, dst, threads);
            }
            return out;
          },
          py::arg("points"), py::arg("threads") = 0, "uint8 array (n, 32): X25519(k, point) per point")
      .def("__repr__", [](const psi::Blinder&) { return std::string("Blinder(<secret scalar>)"); });
  m.def(
      "hash_to_point",
      [](const py::bytes& id) {
        std::string s = id;
        uint8_t out[psi::kPointBytes];
        psi::hash_to_point(reinterpret_cast<const uint8_t*>(s.data()), s.size(), out);
        return py::bytes(reinterpret_cast<const char*>(out), psi::kPointBytes);
      },
      py::arg("id"));
  m.def(
      "x25519_derives_per_second",
      [](double seconds) {
        py::gil_scoped_release nogil;
        return psi::x25519_derives_per_second(seconds);
      },
      py::arg("seconds") = 1.0, "baseline: X25519 derivations per second on one thread (same EVP calls)");
}

}  // namespace splitlink::py_util
