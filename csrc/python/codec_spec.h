// The codec spec at the Python boundary: `_core.codec.CodecSpec`, a read-only class with named
// fields bound straight onto codec::CodecSpec (see bind_codec_spec in register_codec.cc).
#pragma once

#include <pybind11/pybind11.h>

#include <string>

#include "splitlink/codec/codec.h"

namespace splitlink::py_util {

// `obj` is a CodecSpec or None (no compression).
inline codec::CodecSpec spec_from_object(const pybind11::handle& obj) {
  if (obj.is_none()) return {};
  if (!pybind11::isinstance<codec::CodecSpec>(obj)) {
    throw pybind11::type_error("codec spec must be a splitlink._core.codec.CodecSpec or None, got " +
                               std::string(pybind11::str(obj.get_type().attr("__name__"))) +
                               " (CompressConfig.spec() makes one)");
  }
  return obj.cast<const codec::CodecSpec&>();
}

// _core.codec.NO_CODEC: the spec of every uncompressed tensor in a decoded header, one shared
// immutable object (set by register_codec, referenced for the life of the process).
inline PyObject*& no_codec_object() {
  static PyObject* obj = nullptr;
  return obj;
}

// Field values in declaration order: what the class's sequence protocol (len, index, unpacking)
// yields, for callers written against the tuple it replaced.
inline pybind11::tuple spec_fields(const codec::CodecSpec& s) {
  return pybind11::make_tuple(static_cast<uint32_t>(s.type), s.bit_num, s.block_size, s.topk_count, s.value_bits,
                              s.stochastic, s.seed);
}

// Adds __len__, __getitem__ and __iter__ over `fields(obj)` to a bound read-only class, so that
// it also unpacks like the positional tuple it replaced (named attributes are the interface).
template <class T, class Fields>
void add_sequence_protocol(pybind11::class_<T>& cls, size_t n, Fields fields) {
  cls.def("__len__", [n](const T&) { return n; })
      .def("__getitem__",
           [fields](const T& self, const pybind11::object& i) { return fields(self).attr("__getitem__")(i); })
      .def("__iter__", [fields](const T& self) { return pybind11::iter(fields(self)); });
}

}  // namespace splitlink::py_util
