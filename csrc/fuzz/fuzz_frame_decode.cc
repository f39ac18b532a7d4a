// libFuzzer target: decode_header must never crash, hang or read out of bounds, and whatever it
// accepts must describe tensors that lie inside the input.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "splitlink/errors.h"
#include "splitlink/wire/frame.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const splitlink::wire::FrameHeader h = splitlink::wire::decode_header(data, size);
    for (const auto& d : h.tensors) {
      if (d.offset > size || d.length > size - d.offset) std::abort();
    }
  } catch (const splitlink::WireError&) {
  }
  return 0;
}
