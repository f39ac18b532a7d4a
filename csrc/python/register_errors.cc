// Maps the core's exception types to Python classes (re-exported by splitlink.errors).
#include <pybind11/pybind11.h>

#include "register.h"
#include "splitlink/errors.h"

namespace py = pybind11;

namespace splitlink::py_util {

void register_errors(py::module_& m) {
  // Registered base first: pybind11 tries translators newest first, so subclasses win.
  auto& base = py::register_exception<Error>(m, "SplitlinkError", PyExc_Exception);
  py::register_exception<WireError>(m, "WireError", base.ptr());
  py::register_exception<CodecError>(m, "CodecError", base.ptr());
  py::register_exception<CryptoError>(m, "CryptoError", base.ptr());
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const InvalidArgument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });
}

}  // namespace splitlink::py_util
