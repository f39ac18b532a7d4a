// The bindings' one sealing path, shared by Sealer.seal (seals an encoded frame) and
// pack(..., sealer=) (packs and seals in one pass, straight from tensor memory).
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <functional>
#include <string>

#include "frame_buffer.h"
#include "splitlink/secure/sealed.h"
#include "splitlink/wire/frame.h"

namespace splitlink::py_util {

namespace py = pybind11;

// A sealed frame, in a FrameBuffer from `pool` (or fresh), of a `plain_size`-byte plain frame whose
// routing fields are `meta`. Checks the sender, reserves meta.seq (Sealer::claim), then without the
// GIL writes the sealed header, calls `write_plain(ct)` when given (it may write plaintext straight
// into the ciphertext region `ct`, encrypted there in place) and seals every segment: the
// plaintext of bytes [b, e) is plain + b when `plain` is not null, else what `spans` lists.
// The caller keeps everything `plain`, `write_plain` and `spans` read pinned (Py_buffer exports).
inline py::object seal_frame(secure::Sealer& s, const wire::FrameMeta& meta, uint64_t plain_size,
                             const py::object& pool, unsigned threads, const uint8_t* plain,
                             const std::function<void(uint8_t* ct)>& write_plain = nullptr,
                             const secure::Sealer::SpanFn& spans = nullptr) {
  if (meta.sender != s.sender()) {
    throw py::value_error("frame sender '" + meta.sender + "' does not match the sealer's sender '" + s.sender() + "'");
  }
  const secure::SealedLayout L = secure::plan_sealed(meta, s.cipher(), s.segment_size(), plain_size);
  py::object frame = new_frame_buffer(pool, L.total);
  uint8_t* base = frame.cast<FrameBuffer&>().mem.data();
  s.claim(meta.seq);
  {
    // Safe without the GIL: `frame` is referenced only by us until returned; the inputs are pinned.
    py::gil_scoped_release nogil;
    secure::write_sealed_header(L, meta, s.cipher(), s.segment_size(), plain_size, base);
    if (write_plain) write_plain(base + L.ciphertext_offset);
    s.seal_segments(L, meta, plain_size, base, plain, threads, spans);
  }
  return frame;
}

}  // namespace splitlink::py_util
