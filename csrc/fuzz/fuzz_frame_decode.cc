// libFuzzer target: decode_header must never crash, hang or read out of bounds, whatever it
// accepts must describe tensors that lie inside the input, and every codec must decode the
// accepted tensors without touching memory outside their slots (CodecError is fine).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "splitlink/codec/codec.h"
#include "splitlink/errors.h"
#include "splitlink/wire/frame.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  splitlink::wire::FrameHeader h;
  try {
    h = splitlink::wire::decode_header(data, size);
  } catch (const splitlink::WireError&) {
    return 0;
  }
  for (const auto& d : h.tensors) {
    if (d.offset > size || d.length > size - d.offset) std::abort();
    if (d.codec.is_none() || d.numel > (1u << 20)) continue;
    std::vector<uint8_t> out(d.numel * splitlink::itemsize(d.dtype));
    try {
      splitlink::codec::decode(d.codec, d.dtype, data + d.offset, d.length, d.numel, out.data(), "fuzz", 1);
    } catch (const splitlink::CodecError&) {
    }
  }
  return 0;
}
