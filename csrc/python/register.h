// One registration function per area of the core; module.cc calls them in order.
#pragma once

#include <pybind11/pybind11.h>

namespace splitlink::py_util {

void register_errors(pybind11::module_& m);
void register_wire(pybind11::module_ m);
void register_codec(pybind11::module_ m);
void register_secure(pybind11::module_ m);
void register_psi(pybind11::module_ m);

}  // namespace splitlink::py_util
