// Maps the core's exception types to Python classes (re-exported by splitlink.errors).
//
// Everything here is module-local on purpose. A process that imports splitlink usually holds other
// pybind11 modules too (torch._C above all), built by other compilers against other pybind11
// releases. pybind11's *global* exception translators live in the internals structure that every
// module with the same internals id shares, so a global translator list would be walked - and could
// be corrupted or reordered - by code splitlink does not control. Local translators are consulted
// first and only for exceptions thrown by this module's own functions. The build also gives this
// module a private internals id and its own hidden copy of the C++ runtime (CMakeLists.txt,
// DEVELOPERS.md "Native errors"), so a throw never leaves code compiled with splitlink.
#include <pybind11/pybind11.h>

#include <exception>

#include "register.h"
#include "splitlink/errors.h"

namespace py = pybind11;

namespace splitlink::py_util {

void register_errors(py::module_& m) {
  // Registered base first: pybind11 tries translators newest first, so subclasses win.
  auto& base = py::register_local_exception<Error>(m, "SplitlinkError", PyExc_Exception);
  py::register_local_exception<WireError>(m, "WireError", base.ptr());
  py::register_local_exception<CodecError>(m, "CodecError", base.ptr());
  py::register_local_exception<CryptoError>(m, "CryptoError", base.ptr());
  py::register_local_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const InvalidArgument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });

  // Test hooks: raise each native error type exactly the way the core's own code paths do (through
  // SL_CHECK, from C++ frames below the binding), so tests can check translation in any process.
  m.def(
      "_raise_native_error",
      [](const std::string& kind, bool release_gil) {
        auto raise = [&kind] {
          if (kind == "wire") SL_FAIL(WireError, "test WireError");
          if (kind == "codec") SL_FAIL(CodecError, "test CodecError");
          if (kind == "crypto") SL_FAIL(CryptoError, "test CryptoError");
          if (kind == "value") SL_FAIL(InvalidArgument, "test InvalidArgument");
          if (kind == "base") SL_FAIL(Error, "test SplitlinkError");
          if (kind == "std") throw std::runtime_error("test std::runtime_error");
          if (kind == "bad_alloc") throw std::bad_alloc();
          SL_FAIL(InvalidArgument,
                  "unknown kind '" << kind << "'; use wire, codec, crypto, value, base, std or bad_alloc");
        };
        if (release_gil) {
          // Throwing while the GIL is released is what the heavy paths do; the guard's destructor
          // re-takes the GIL during unwinding, before pybind11 translates.
          py::gil_scoped_release nogil;
          raise();
        } else {
          raise();
        }
      },
      py::arg("kind"), py::arg("release_gil") = false, "Raises the named native error from C++ (tests only).");
}

}  // namespace splitlink::py_util
