// splitlink._core: table of contents. Each area registers itself from register_<area>.cc.
#include <pybind11/pybind11.h>

#include <openssl/opensslv.h>
#include <openssl/crypto.h>

#include "../core/cpu.h"
#include "register.h"
#include "splitlink/errors.h"
#include "splitlink/parallel.h"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
  m.doc() = "splitlink native core (private; use the splitlink package)";
  splitlink::py_util::register_errors(m);
  splitlink::py_util::register_wire(m.def_submodule("wire", "frame encoding and decoding"));
  splitlink::py_util::register_codec(m.def_submodule("codec", "tensor codecs on raw buffers"));
  splitlink::py_util::register_secure(m.def_submodule("secure", "AEAD, key agreement and masking"));
  splitlink::py_util::register_psi(m.def_submodule("psi", "ECDH private set intersection primitives"));

  m.def("openssl_version", [] { return std::string(OpenSSL_version(OPENSSL_VERSION)); },
        "Version string of the OpenSSL library the extension runs with.");
  m.def("openssl_headers_version", [] { return std::string(OPENSSL_VERSION_TEXT); },
        "Version of the OpenSSL headers the extension was compiled against.");
  m.def("cpu_features", [] {
    pybind11::dict d;
    d["avx2"] = splitlink::cpu::has_avx2();
    d["f16c"] = splitlink::cpu::has_f16c();
    d["aesni"] = splitlink::cpu::has_aesni();
    return d;
  }, "CPU features the core's run-time dispatch found.");
  m.def("num_threads", &splitlink::default_num_threads, "Threads the core uses for parallel work.");
  m.def("set_num_threads", &splitlink::set_default_num_threads, py::arg("n"),
        "Sets the threads the core uses for parallel work (0: one per available CPU).");
}
