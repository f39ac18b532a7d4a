// Frames: the protobuf encoding of protos/splitlink/v1/frame.proto, written and read directly.
//
// Encoding is plan-then-write: `FrameLayout::plan` computes every size and offset from the
// tensors' descriptors, the caller provides a buffer of `layout.size()` bytes (usually a reused
// one), and `FrameLayout::write` fills it in one pass from tensor memory.
//
// Decoding is descriptor-first: `decode_header` parses and validates the whole header (every
// length, offset, count, dtype and shape product, overflow-safe) before anyone touches the
// payload, and returns offsets into the caller's buffer so tensors can view it in place.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "splitlink/codec/codec.h"
#include "splitlink/dtype.h"

namespace splitlink::wire {

constexpr uint32_t kWireVersion = 1;
// Alignment of the payload inside the frame and of each tensor inside the payload: a cache line,
// and enough for any SIMD load and for DMA from pinned memory.
constexpr size_t kAlignment = 64;

// Limits that keep a hostile frame from making the decoder allocate without bound.
constexpr size_t kMaxTensors = 1 << 20;
constexpr size_t kMaxNdim = 32;
constexpr size_t kMaxPathDepth = 8;
constexpr size_t kMaxStringBytes = 4096;

namespace field {
// message Frame
constexpr uint32_t kVersion = 1, kSender = 2, kSeq = 3, kStep = 4, kKind = 5, kTensors = 6, kPadding = 14,
                   kPayload = 15;
// message Tensor
constexpr uint32_t kPath = 1, kDType = 2, kShape = 3, kOffset = 4, kLength = 5, kCodec = 6;
// message Codec
constexpr uint32_t kCodecType = 1, kBitNum = 2, kBlockSize = 3, kTopKCount = 4, kValueBits = 5;
}  // namespace field

using codec::CodecSpec;
using codec::CodecType;

struct FrameMeta {
  uint32_t version = kWireVersion;
  std::string sender;
  uint64_t seq = 0;
  int64_t step = 0;
  std::string kind;
};

// One tensor to encode. `data` points at `nbytes` bytes of C-contiguous elements. `residual`
// (topk with error feedback only) receives float32[numel] of what the encoding dropped.
struct TensorInput {
  std::vector<std::string> path;
  DType dtype = DType::kUnspecified;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  uint64_t nbytes = 0;
  CodecSpec codec;
  float* residual = nullptr;
};

// One decoded tensor descriptor; `offset` is relative to the start of the frame buffer.
struct TensorDesc {
  std::vector<std::string> path;
  DType dtype = DType::kUnspecified;
  std::vector<int64_t> shape;
  uint64_t numel = 0;
  uint64_t offset = 0;
  uint64_t length = 0;
  CodecSpec codec;
};

struct FrameHeader {
  FrameMeta meta;
  std::vector<TensorDesc> tensors;
  uint64_t payload_offset = 0;  // where payload bytes start in the frame
  uint64_t payload_length = 0;
};

class FrameLayout {
 public:
  // Validates the inputs (dtype, shape vs nbytes, names, limits) and computes the layout.
  // Throws InvalidArgument naming the offending tensor.
  static FrameLayout plan(const FrameMeta& meta, const std::vector<TensorInput>& tensors);

  size_t size() const { return total_size_; }
  size_t header_size() const { return header_size_; }
  size_t payload_offset() const { return payload_offset_; }
  // Index of the first tensor slot that ends after frame byte `pos` (or the count).
  size_t first_slot_after(uint64_t pos) const;
  const std::vector<uint64_t>& tensor_offsets() const { return offsets_; }  // within the payload

  // Writes the frame into out[0, size()). `tensors` must be the ones given to plan(). Uses up
  // to `threads` threads for large copies (0: the core's default).
  void write(const FrameMeta& meta, const std::vector<TensorInput>& tensors, uint8_t* out, size_t out_size,
             unsigned threads = 0) const;

  // write() in two parts, for writers that consume the frame in ranges without materializing it
  // (sealing encrypts straight from tensor memory): write_prefix writes everything except the
  // bytes of uncompressed tensors (header, padding, zeroed gaps, codec outputs) into `out`;
  // for frame bytes [begin, end), spans() then lists (pointer, length) pieces in order: pointers
  // into the uncompressed tensors' own memory, or into `out` for everything write_prefix wrote.
  void write_prefix(const FrameMeta& meta, const std::vector<TensorInput>& tensors, uint8_t* out, size_t out_size,
                    unsigned threads = 0) const;
  template <typename SpanT>
  void spans(const std::vector<TensorInput>& tensors, const uint8_t* out, uint64_t begin, uint64_t end,
             std::vector<SpanT>& list) const;

 private:
  size_t total_size_ = 0;
  size_t header_size_ = 0;  // bytes of fields 1..6
  size_t padding_len_ = 0;  // content bytes of the padding field
  size_t payload_offset_ = 0;
  uint64_t payload_length_ = 0;
  std::vector<uint64_t> offsets_;
  std::vector<uint64_t> encoded_lengths_;
  std::vector<uint64_t> numels_;
  std::vector<size_t> tensor_msg_sizes_;
  std::vector<size_t> codec_msg_sizes_;
  std::vector<size_t> shape_sizes_;
};

template <typename SpanT>
void FrameLayout::spans(const std::vector<TensorInput>& tensors, const uint8_t* out, uint64_t begin, uint64_t end,
                        std::vector<SpanT>& list) const {
  // Tensor slots are in increasing offset order; walk those that overlap [begin, end).
  uint64_t pos = begin;
  auto from_out = [&](uint64_t upto) {
    if (upto > pos) list.push_back(SpanT{out + pos, static_cast<size_t>(upto - pos)});
    pos = upto;
  };
  for (size_t i = first_slot_after(begin); i < tensors.size(); ++i) {
    const uint64_t tb = payload_offset_ + offsets_[i];
    if (tb >= end) break;
    if (!tensors[i].codec.is_none() || encoded_lengths_[i] == 0) continue;
    const uint64_t te = tb + encoded_lengths_[i];
    if (te <= pos) continue;
    const uint64_t b = std::max(pos, tb), e = std::min(end, te);
    from_out(b);
    list.push_back(SpanT{tensors[i].data + (b - tb), static_cast<size_t>(e - b)});
    pos = e;
  }
  from_out(end);
}

// Parses and validates a frame. Throws WireError naming the problem and its byte offset.
FrameHeader decode_header(const uint8_t* data, size_t size);

// `s` with control bytes and backslashes written as \xNN: for error messages that quote text a
// peer sent (a NUL would cut a C-string message short).
std::string printable(std::string_view s);

// Validates UTF-8 (no overlongs, no surrogates, <= U+10FFFF).
bool is_valid_utf8(std::string_view s);

}  // namespace splitlink::wire
