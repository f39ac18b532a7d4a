// splitlink._core: table of contents. Each area registers itself from register_<area>.cc.
#include <openssl/crypto.h>
#include <openssl/opensslv.h>
#include <pybind11/pybind11.h>

#include <string>

#include "../core/platform/cpu.h"
#include "register.h"
#include "splitlink/errors.h"
#include "splitlink/parallel.h"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
  m.doc() = "splitlink native core (private; use the splitlink package)";
  splitlink::py_util::register_errors(m);
  splitlink::py_util::register_codec(
      m.def_submodule("codec", "tensor codecs on raw buffers"));  // before wire: its TensorDesc holds a CodecSpec
  splitlink::py_util::register_wire(m.def_submodule("wire", "frame encoding and decoding"));
  splitlink::py_util::register_secure(m.def_submodule("secure", "AEAD, key agreement and masking"));
  splitlink::py_util::register_psi(m.def_submodule("psi", "ECDH private set intersection primitives"));

  m.def(
      "openssl_version", [] { return std::string(OpenSSL_version(OPENSSL_VERSION)); },
      "Version string of the OpenSSL library the extension runs with.");
  m.def(
      "openssl_headers_version", [] { return std::string(OPENSSL_VERSION_TEXT); },
      "Version of the OpenSSL headers the extension was compiled against.");
  m.def(
      "build_info",
      [] {
        pybind11::dict d;
#if defined(__clang__)
        d["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
        d["compiler"] = std::string("gcc ") + __VERSION__;
#else
        d["compiler"] = std::string("unknown");
#endif
        d["pybind11"] = std::to_string(PYBIND11_VERSION_MAJOR) + "." + std::to_string(PYBIND11_VERSION_MINOR) + "." +
                        std::to_string(PYBIND11_VERSION_PATCH);
        d["pybind11_internals_id"] = std::string(PYBIND11_INTERNALS_ID);
#ifdef SPLITLINK_STATIC_CXX_RUNTIME
        d["static_cxx_runtime"] = true;
#else
        d["static_cxx_runtime"] = false;
#endif
#ifdef SPLITLINK_SANITIZED
        d["sanitizers"] = std::string("address,undefined");
#else
        d["sanitizers"] = std::string();
#endif
        return d;
      },
      "How this extension was built: compiler, pybind11, its internals id, C++ runtime linkage.");
  m.def(
      "cpu_features",
      [] {
        namespace cpu = splitlink::cpu;
        const unsigned on = cpu::in_force(), found = cpu::detected();
        pybind11::dict d, det;
        d["avx2"] = (on & cpu::kAvx2) != 0;
        d["f16c"] = (on & cpu::kF16c) != 0;
        d["aesni"] = (on & cpu::kAesni) != 0;
        det["avx2"] = (found & cpu::kAvx2) != 0;
        det["f16c"] = (found & cpu::kF16c) != 0;
        det["aesni"] = (found & cpu::kAesni) != 0;
        d["forced"] = cpu::forced();
        d["detected"] = det;
        return d;
      },
      "CPU features the core's run-time dispatch uses (avx2, f16c, aesni: the CPU's, limited by "
      "SPLITLINK_CPU_FEATURES), whether that variable chose them (forced) and what the CPU has "
      "(detected). Raises ValueError if SPLITLINK_CPU_FEATURES is invalid.");
  m.def("num_threads", &splitlink::default_num_threads, "Threads the core uses for parallel work.");
  m.def("set_num_threads", &splitlink::set_default_num_threads, py::arg("n"),
        "Sets the threads the core uses for parallel work (0: one per available CPU).");
}
