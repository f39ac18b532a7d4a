// Minimal protobuf wire-format reading and writing (varints, tags, length-delimited fields).
//
// The frame encoder writes protobuf bytes directly from tensor memory, and the decoder reads
// them without a protobuf runtime, so both need only these primitives. The reader never reads
// past its end: every length is checked against the bytes remaining, without overflow.
// Internal to the core (the frame and sealed-frame codecs, and the C++ tests that forge frames).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <utility>

#include "splitlink/errors.h"

namespace splitlink::pb {

enum WireType : uint32_t { kVarint = 0, kFixed64 = 1, kLen = 2, kStartGroup = 3, kEndGroup = 4, kFixed32 = 5 };

constexpr size_t varint_size(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

constexpr uint64_t make_tag(uint32_t field, WireType wt) { return (uint64_t{field} << 3) | wt; }

// Writes v at p and returns the byte after it. The caller has reserved varint_size(v) bytes.
inline uint8_t* put_varint(uint8_t* p, uint64_t v) {
  while (v >= 0x80) {
    *p++ = static_cast<uint8_t>(v | 0x80);
    v >>= 7;
  }
  *p++ = static_cast<uint8_t>(v);
  return p;
}

inline size_t tag_size(uint32_t field) { return varint_size(make_tag(field, kVarint)); }

// Size of a length-delimited field with `len` content bytes.
inline size_t len_field_size(uint32_t field, uint64_t len) { return tag_size(field) + varint_size(len) + len; }

inline uint8_t* put_len_header(uint8_t* p, uint32_t field, uint64_t len) {
  p = put_varint(p, make_tag(field, kLen));
  return put_varint(p, len);
}

inline uint8_t* put_bytes_field(uint8_t* p, uint32_t field, std::string_view s) {
  p = put_len_header(p, field, s.size());
  if (!s.empty()) std::memcpy(p, s.data(), s.size());
  return p + s.size();
}

inline uint8_t* put_varint_field(uint8_t* p, uint32_t field, uint64_t v) {
  p = put_varint(p, make_tag(field, kVarint));
  return put_varint(p, v);
}

// A bounds-checked cursor over [begin, end) of a larger buffer whose first byte is `origin`;
// positions in error messages are byte offsets from `origin` (the start of the frame).
class Reader {
 public:
  Reader(const uint8_t* origin, size_t begin, size_t end) : origin_(origin), pos_(begin), end_(end) {}

  bool done() const { return pos_ >= end_; }
  size_t pos() const { return pos_; }
  size_t end() const { return end_; }
  size_t remaining() const { return end_ - pos_; }

  uint64_t varint(const char* what) {
    uint64_t v = 0;
    const size_t start = pos_;
    for (int shift = 0; shift < 64; shift += 7) {
      SL_CHECK(pos_ < end_, WireError,
               "frame truncated inside the varint for " << what << " starting at byte " << start);
      const uint8_t b = origin_[pos_++];
      if (shift == 63 && b > 1) {
        SL_FAIL(WireError, "varint for " << what << " at byte " << start << " overflows 64 bits");
      }
      v |= uint64_t{static_cast<uint8_t>(b & 0x7F)} << shift;
      if ((b & 0x80) == 0) return v;
    }
    SL_FAIL(WireError, "varint for " << what << " at byte " << start << " is longer than 10 bytes");
  }

  // Reads a length prefix and returns the [begin, end) of the content, advancing past it.
  std::pair<size_t, size_t> len_delimited(const char* what) {
    const size_t at = pos_;
    const uint64_t len = varint(what);
    SL_CHECK(len <= remaining(), WireError,
             what << " at byte " << at << " declares " << len << " bytes but only " << remaining()
                  << " remain in the enclosing message (frame truncated or corrupt)");
    const size_t b = pos_;
    pos_ += static_cast<size_t>(len);
    return {b, pos_};
  }

  // Skips the content of an unknown field whose tag started at byte `at` (error messages name it).
  void skip(WireType wt, uint32_t field, size_t at) {
    switch (wt) {
      case kVarint:
        (void)varint("an unknown field");
        return;
      case kFixed64:
        SL_CHECK(remaining() >= 8, WireError, "frame truncated in unknown field " << field << " at byte " << at);
        pos_ += 8;
        return;
      case kFixed32:
        SL_CHECK(remaining() >= 4, WireError, "frame truncated in unknown field " << field << " at byte " << at);
        pos_ += 4;
        return;
      case kLen:
        (void)len_delimited("an unknown field");
        return;
      default:
        SL_FAIL(WireError, "unsupported protobuf wire type " << wt << " for field " << field << " at byte " << at
                                                             << " (groups are not used by splitlink frames)");
    }
  }

  const uint8_t* origin() const { return origin_; }

  // Reads a field tag: returns the field number and sets *wire_type. Field number 0 and numbers
  // beyond protobuf's 2^29-1 are errors.
  uint32_t field_tag(uint32_t* wire_type) {
    const size_t at = pos_;
    const uint64_t tag = varint("a field tag");
    const uint64_t field = tag >> 3;
    SL_CHECK(field != 0 && field <= 536870911u, WireError,
             "invalid protobuf field number " << field << " at byte " << at);
    *wire_type = static_cast<uint32_t>(tag & 7);
    return static_cast<uint32_t>(field);
  }

 private:
  const uint8_t* origin_;
  size_t pos_;
  size_t end_;
};

}  // namespace splitlink::pb
