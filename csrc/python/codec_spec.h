// Conversion between the Python-side codec tuple and codec::CodecSpec.
// Tuple: (type, bit_num, block_size, topk_count, value_bits, stochastic, seed).
#pragma once

#include <pybind11/pybind11.h>

#include "splitlink/codec/codec.h"

namespace splitlink::py_util {

inline codec::CodecSpec spec_from_tuple(const pybind11::handle& obj) {
  codec::CodecSpec s;
  if (obj.is_none()) return s;
  auto t = obj.cast<pybind11::tuple>();
  if (t.size() != 7) throw pybind11::value_error("codec spec must be a 7-tuple");
  const uint32_t type = t[0].cast<uint32_t>();
  if (type > codec::kMaxCodecType) throw pybind11::value_error("unknown codec type " + std::to_string(type));
  s.type = static_cast<codec::CodecType>(type);
  s.bit_num = t[1].cast<uint32_t>();
  s.block_size = t[2].cast<uint64_t>();
  s.topk_count = t[3].cast<uint64_t>();
  s.value_bits = t[4].cast<uint32_t>();
  s.stochastic = t[5].cast<bool>();
  s.seed = t[6].cast<uint64_t>();
  return s;
}

inline pybind11::tuple spec_to_tuple(const codec::CodecSpec& s) {
  return pybind11::make_tuple(static_cast<uint32_t>(s.type), s.bit_num, s.block_size, s.topk_count, s.value_bits,
                              s.stochastic, s.seed);
}

}  // namespace splitlink::py_util
