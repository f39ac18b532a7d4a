// RAII holder of a Py_buffer taken with explicit flags.
//
// We never take tensors through py::array_t: its default forcecast silently converts and copies.
// A PyBuffer either views the caller's memory exactly as it is or raises.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <utility>

namespace splitlink::py_util {

namespace py = pybind11;

class PyBuffer {
 public:
  // flags: PyBUF_SIMPLE for read-only bytes, PyBUF_WRITABLE to write, PyBUF_C_CONTIGUOUS for arrays.
  PyBuffer(py::handle obj, int flags, const char* what) {
    if (PyObject_GetBuffer(obj.ptr(), &view_, flags) != 0) {
      PyErr_Clear();
      const std::string type = py::str(py::type::handle_of(obj).attr("__name__"));
      throw py::value_error(
          std::string(what) + " must be a C-contiguous" + ((flags & PyBUF_WRITABLE) ? " writable" : "") +
          " object supporting the buffer protocol (bytes, bytearray, memoryview, numpy array), got " + type);
    }
    held_ = true;
  }
  ~PyBuffer() {
    if (held_) PyBuffer_Release(&view_);
  }
  PyBuffer(const PyBuffer&) = delete;
  PyBuffer& operator=(const PyBuffer&) = delete;
  PyBuffer(PyBuffer&& o) noexcept : view_(o.view_), held_(std::exchange(o.held_, false)) {}

  const uint8_t* data() const { return static_cast<const uint8_t*>(view_.buf); }
  uint8_t* mutable_data() { return static_cast<uint8_t*>(view_.buf); }
  size_t size() const { return static_cast<size_t>(view_.len); }
  bool readonly() const { return view_.readonly != 0; }

 private:
  Py_buffer view_{};
  bool held_ = false;
};

}  // namespace splitlink::py_util
