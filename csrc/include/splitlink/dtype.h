// Element types a frame can carry. The numeric values are the wire values of
// protos/splitlink/v1/frame.proto `enum DType`; never renumber them.
#pragma once

#include <cstddef>
#include <cstdint>

namespace splitlink {

enum class DType : uint32_t {
  kUnspecified = 0,
  kFloat32 = 1,
  kFloat64 = 2,
  kFloat16 = 3,
  kBFloat16 = 4,
  kInt8 = 5,
  kInt16 = 6,
  kInt32 = 7,
  kInt64 = 8,
  kUInt8 = 9,
  kBool = 10,
};

constexpr uint32_t kMaxDType = 10;

// Size of one element in bytes; 0 for kUnspecified or a value outside the enum.
constexpr size_t itemsize(DType dt) {
  switch (dt) {
    case DType::kFloat64:
    case DType::kInt64:
      return 8;
    case DType::kFloat32:
    case DType::kInt32:
      return 4;
    case DType::kFloat16:
    case DType::kBFloat16:
    case DType::kInt16:
      return 2;
    case DType::kInt8:
    case DType::kUInt8:
    case DType::kBool:
      return 1;
    default:
      return 0;
  }
}

constexpr const char* dtype_name(DType dt) {
  switch (dt) {
    case DType::kFloat32:
      return "float32";
    case DType::kFloat64:
      return "float64";
    case DType::kFloat16:
      return "float16";
    case DType::kBFloat16:
      return "bfloat16";
    case DType::kInt8:
      return "int8";
    case DType::kInt16:
      return "int16";
    case DType::kInt32:
      return "int32";
    case DType::kInt64:
      return "int64";
    case DType::kUInt8:
      return "uint8";
    case DType::kBool:
      return "bool";
    default:
      return "unspecified";
  }
}

constexpr bool is_valid_dtype(uint64_t v) { return v >= 1 && v <= kMaxDType; }

constexpr bool is_floating(DType dt) {
  return dt == DType::kFloat32 || dt == DType::kFloat64 || dt == DType::kFloat16 || dt == DType::kBFloat16;
}

}  // namespace splitlink
