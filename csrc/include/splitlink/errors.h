// Error taxonomy of the splitlink core.
//
// Every failure the core reports is one of these types; the Python bindings map them to
// splitlink.errors.{WireError, CodecError, CryptoError} and ValueError. Messages say what was
// wrong, where (byte offsets for wire input) and how to fix it; SL_CHECK appends file:line.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace splitlink {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A frame (bytes from a peer or a file) is malformed: truncated, inconsistent or unsupported.
class WireError : public Error {
 public:
  using Error::Error;
};

// A codec was asked to do something it cannot (value out of range, corrupt compressed data).
class CodecError : public Error {
 public:
  using Error::Error;
};

// Authentication or decryption failed, or a cryptographic primitive reported an error.
class CryptoError : public Error {
 public:
  using Error::Error;
};

// A caller passed an invalid argument (maps to Python's ValueError).
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

namespace detail {
// Strips the directory part so messages carry "frame.cc:123", not the build machine's path.
constexpr const char* basename(const char* path) {
  const char* base = path;
  for (const char* p = path; *p != '\0'; ++p) {
    if (*p == '/' || *p == '\\') base = p + 1;
  }
  return base;
}
}  // namespace detail

}  // namespace splitlink

// SL_CHECK(cond, ErrorType, message << parts): throws ErrorType("message [file.cc:line]") when
// cond is false. The message is only formatted on failure.
#define SL_CHECK(cond, ErrorType, msg)                                                                  \
  do {                                                                                                  \
    if (!(cond)) {                                                                                      \
      std::ostringstream sl_check_os_;                                                                  \
      sl_check_os_ << msg << " [" << ::splitlink::detail::basename(__FILE__) << ":" << __LINE__ << "]"; \
      throw ErrorType(sl_check_os_.str());                                                              \
    }                                                                                                   \
  } while (false)

#define SL_FAIL(ErrorType, msg) SL_CHECK(false, ErrorType, msg)
