// Frame encoder/decoder: round trips, layout invariants and every class of malformed input.
#include <gtest/gtest.h>

#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "../core/wire/pbio.h"  // private to the core: the tests forge frames with it
#include "splitlink/buffer.h"
#include "splitlink/errors.h"
#include "splitlink/wire/frame.h"

namespace splitlink::wire {
namespace {

struct Owned {
  std::vector<std::vector<uint8_t>> data;
  std::vector<TensorInput> inputs;
};

Owned make_inputs() {
  Owned o;
  auto add = [&](std::vector<std::string> path, DType dt, std::vector<int64_t> shape) {
    size_t numel = 1;
    for (auto d : shape) numel *= static_cast<size_t>(d);
    std::vector<uint8_t> bytes(numel * itemsize(dt));
    std::iota(bytes.begin(), bytes.end(), static_cast<uint8_t>(o.data.size() * 17));
    o.data.push_back(std::move(bytes));
    TensorInput t;
    t.path = std::move(path);
    t.dtype = dt;
    t.shape = std::move(shape);
    o.inputs.push_back(std::move(t));
  };
  add({"x"}, DType::kFloat32, {3, 5});
  add({"loss", "emb"}, DType::kBFloat16, {7});
  add({"loss", "mask"}, DType::kBool, {2, 2});
  add({"scalar"}, DType::kInt64, {});
  add({"empty"}, DType::kFloat16, {0, 9});
  for (size_t i = 0; i < o.inputs.size(); ++i) {
    o.inputs[i].data = o.data[i].data();
    o.inputs[i].nbytes = o.data[i].size();
  }
  return o;
}

std::vector<uint8_t> encode(const FrameMeta& meta, const std::vector<TensorInput>& in) {
  const FrameLayout layout = FrameLayout::plan(meta, in);
  AlignedBuffer buf(layout.size());
  layout.write(meta, in, buf.data(), buf.capacity());
  return std::vector<uint8_t>(buf.data(), buf.data() + layout.size());
}

FrameMeta meta() {
  FrameMeta m;
  m.sender = "leader";
  m.seq = 42;
  m.step = -3;
  m.kind = "backward";
  return m;
}

TEST(Frame, RoundTripKeepsHeaderOrderAndBytes) {
  Owned o = make_inputs();
  const auto bytes = encode(meta(), o.inputs);
  const FrameHeader h = decode_header(bytes.data(), bytes.size());
  EXPECT_EQ(h.meta.sender, "leader");
  EXPECT_EQ(h.meta.seq, 42u);
  EXPECT_EQ(h.meta.step, -3);
  EXPECT_EQ(h.meta.kind, "backward");
  ASSERT_EQ(h.tensors.size(), o.inputs.size());
  for (size_t i = 0; i < o.inputs.size(); ++i) {
    const TensorDesc& d = h.tensors[i];
    EXPECT_EQ(d.path, o.inputs[i].path);
    EXPECT_EQ(d.dtype, o.inputs[i].dtype);
    EXPECT_EQ(d.shape, o.inputs[i].shape);
    ASSERT_EQ(d.length, o.data[i].size());
    if (d.length != 0) {
      EXPECT_EQ(0, std::memcmp(bytes.data() + d.offset, o.data[i].data(), d.length));
    }
  }
}

TEST(Frame, PayloadAndTensorsAre64ByteAligned) {
  Owned o = make_inputs();
  const FrameLayout layout = FrameLayout::plan(meta(), o.inputs);
  EXPECT_EQ(layout.payload_offset() % kAlignment, 0u);
  for (uint64_t off : layout.tensor_offsets()) EXPECT_EQ(off % kAlignment, 0u);
  const auto bytes = encode(meta(), o.inputs);
  const FrameHeader h = decode_header(bytes.data(), bytes.size());
  for (const auto& d : h.tensors) EXPECT_EQ(d.offset % kAlignment, 0u);
}

TEST(Frame, GapsBetweenTensorsAreZeroedInReusedBuffers) {
  Owned o = make_inputs();
  const FrameLayout layout = FrameLayout::plan(meta(), o.inputs);
  AlignedBuffer buf(layout.size());
  std::memset(buf.data(), 0xAB, buf.capacity());
  layout.write(meta(), o.inputs, buf.data(), buf.capacity());
  std::vector<bool> owned(layout.size(), false);
  for (size_t i = 0; i < layout.payload_offset(); ++i) owned[i] = true;
  const auto& offs = layout.tensor_offsets();
  for (size_t i = 0; i < offs.size(); ++i)
    for (size_t k = 0; k < o.data[i].size(); ++k) owned[layout.payload_offset() + offs[i] + k] = true;
  for (size_t i = 0; i < layout.size(); ++i) {
    if (!owned[i]) {
      ASSERT_EQ(buf.data()[i], 0) << "stale byte at " << i;
    }
  }
}

TEST(Frame, PlanRejectsInconsistentInputs) {
  Owned o = make_inputs();
  o.inputs[0].nbytes -= 1;
  EXPECT_THROW(FrameLayout::plan(meta(), o.inputs), InvalidArgument);
  o = make_inputs();
  o.inputs[1].path = {"x"};  // duplicate
  EXPECT_THROW(FrameLayout::plan(meta(), o.inputs), InvalidArgument);
  o = make_inputs();
  o.inputs[0].path = {"loss"};  // both a tensor and a group
  EXPECT_THROW(FrameLayout::plan(meta(), o.inputs), InvalidArgument);
  o = make_inputs();
  o.inputs[0].shape = {-1, 15};
  EXPECT_THROW(FrameLayout::plan(meta(), o.inputs), InvalidArgument);
  o = make_inputs();
  o.inputs[0].dtype = static_cast<DType>(99);
  EXPECT_THROW(FrameLayout::plan(meta(), o.inputs), InvalidArgument);
}

TEST(Frame, EveryTruncationIsAWireError) {
  Owned o = make_inputs();
  const auto bytes = encode(meta(), o.inputs);
  for (size_t n = 0; n < bytes.size(); ++n) {
    // A copy of exactly n bytes, so AddressSanitizer sees any read past the end.
    std::vector<uint8_t> cut(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(n));
    EXPECT_THROW(decode_header(cut.data(), cut.size()), WireError) << "prefix of " << n << " bytes";
  }
}

TEST(Frame, BitFlipsNeverCrashAndDecodedHeadersStayInBounds) {
  Owned o = make_inputs();
  const auto bytes = encode(meta(), o.inputs);
  std::mt19937 rng(7);
  for (size_t i = 0; i < bytes.size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      std::vector<uint8_t> mutated = bytes;
      mutated[i] ^= static_cast<uint8_t>(1u << bit);
      try {
        const FrameHeader h = decode_header(mutated.data(), mutated.size());
        for (const auto& d : h.tensors) {
          ASSERT_LE(d.offset, mutated.size());
          ASSERT_LE(d.length, mutated.size() - d.offset);
        }
      } catch (const WireError&) {
      }
    }
  }
}

// Hand-built frames for the malformed classes a peer could send.
std::vector<uint8_t> frame_with_tensor(const std::vector<uint8_t>& tensor_msg, uint64_t payload_len) {
  std::vector<uint8_t> out(64 + tensor_msg.size() + payload_len);
  uint8_t* p = out.data();
  p = pb::put_varint_field(p, field::kVersion, 1);
  p = pb::put_len_header(p, field::kTensors, tensor_msg.size());
  std::memcpy(p, tensor_msg.data(), tensor_msg.size());
  p += tensor_msg.size();
  p = pb::put_len_header(p, field::kPayload, payload_len);
  p += payload_len;
  out.resize(static_cast<size_t>(p - out.data()));
  return out;
}

std::vector<uint8_t> tensor_msg(uint32_t dtype, std::vector<uint64_t> shape, uint64_t offset, uint64_t length) {
  std::vector<uint8_t> m(256);
  uint8_t* p = m.data();
  p = pb::put_bytes_field(p, field::kPath, "t");
  p = pb::put_varint_field(p, field::kDType, dtype);
  size_t ssz = 0;
  for (auto d : shape) ssz += pb::varint_size(d);
  p = pb::put_len_header(p, field::kShape, ssz);
  for (auto d : shape) p = pb::put_varint(p, d);
  p = pb::put_varint_field(p, field::kOffset, offset);
  p = pb::put_varint_field(p, field::kLength, length);
  m.resize(static_cast<size_t>(p - m.data()));
  return m;
}

void expect_wire_error(const std::vector<uint8_t>& f, const std::string& fragment) {
  try {
    decode_header(f.data(), f.size());
    FAIL() << "expected WireError containing '" << fragment << "'";
  } catch (const WireError& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

TEST(Frame, MalformedClassesHavePreciseMessages) {
  // A valid hand-built frame decodes.
  auto ok = frame_with_tensor(tensor_msg(1, {4}, 0, 16), 16);
  EXPECT_EQ(decode_header(ok.data(), ok.size()).tensors.size(), 1u);

  expect_wire_error({}, "empty frame");
  expect_wire_error(frame_with_tensor(tensor_msg(99, {4}, 0, 16), 16), "unknown dtype 99");
  expect_wire_error(frame_with_tensor(tensor_msg(1, {4}, 0, 15), 16), "declares 15 bytes");
  expect_wire_error(frame_with_tensor(tensor_msg(1, {4}, 64, 16), 16), "but the payload has 16");
  expect_wire_error(frame_with_tensor(tensor_msg(1, {4}, 8, 16), 32), "not a multiple of 64");
  expect_wire_error(frame_with_tensor(tensor_msg(1, {1ull << 40, 1ull << 40}, 0, 16), 16), "overflows");
  expect_wire_error(frame_with_tensor(tensor_msg(8, {1ull << 62}, 0, 0), 16), "overflows");
  expect_wire_error(frame_with_tensor(tensor_msg(1, std::vector<uint64_t>(33, 1), 0, 4), 16),
                    "more than 32 dimensions");
  // Offset + length wrapping around 2^64 must not pass the bounds check.
  expect_wire_error(frame_with_tensor(tensor_msg(9, {16}, ~uint64_t{0} - 63, 16), 16), "payload");

  // Wrong or missing version.
  std::vector<uint8_t> v2(8);
  uint8_t* p = pb::put_varint_field(v2.data(), field::kVersion, 2);
  v2.resize(static_cast<size_t>(p - v2.data()));
  expect_wire_error(v2, "wire version 2");
  std::vector<uint8_t> nov(8);
  p = pb::put_bytes_field(nov.data(), field::kSender, "a");
  nov.resize(static_cast<size_t>(p - nov.data()));
  expect_wire_error(nov, "no wire version");

  // A varint that never ends, and one longer than 10 bytes.
  expect_wire_error({0x08, 0xFF, 0xFF}, "truncated inside the varint");
  expect_wire_error({0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01}, "varint");
  // A length past the end.
  expect_wire_error({0x08, 0x01, 0x12, 0x7F, 'a'}, "only 1 remain");
  // Invalid UTF-8 in the sender.
  expect_wire_error({0x08, 0x01, 0x12, 0x02, 0xC0, 0x80}, "not valid UTF-8");
  // Field number 0 and group wire types.
  expect_wire_error({0x08, 0x01, 0x00}, "field number 0");
  expect_wire_error({0x08, 0x01, 0x3B}, "wire type 3");
  // Cut at a field boundary, before the payload: still detected.
  expect_wire_error({0x08, 0x01}, "no payload field");
  expect_wire_error({0x08, 0x01, 0x7A, 0x00, 0xA0, 0x06, 0x05}, "does not end with its payload");
  // A known field with the wrong wire type.
  expect_wire_error({0x0A, 0x00}, "wire type 2, expected 0");
}

TEST(Frame, OverlappingTensorsAreRejected) {
  auto a = tensor_msg(1, {16}, 0, 64);
  auto b = tensor_msg(1, {16}, 0, 64);
  b[2] = 'u';  // rename path "t" -> "u"
  std::vector<uint8_t> f(512);
  uint8_t* p = f.data();
  p = pb::put_varint_field(p, field::kVersion, 1);
  for (auto* m : {&a, &b}) {
    p = pb::put_len_header(p, field::kTensors, m->size());
    std::memcpy(p, m->data(), m->size());
    p += m->size();
  }
  p = pb::put_len_header(p, field::kPayload, 64);
  p += 64;
  f.resize(static_cast<size_t>(p - f.data()));
  expect_wire_error(f, "overlap");
}

TEST(Frame, UnknownFieldsAreSkipped) {
  // Forward compatibility: fields this build does not know are skipped, not fatal, even when they
  // repeat, and whatever their wire type (varint, length-delimited, fixed32, fixed64).
  std::vector<uint8_t> f = {0x08, 0x01, 0xA0, 0x06, 0x05, 0xAA, 0x06, 0x02, 'h', 'i',  0xA0,
                            0x06, 0x07, 0x18, 0x09, 0xAD, 0x06, 1,    2,    3,   4,    0xA9,
                            0x06, 1,    2,    3,    4,    5,    6,    7,    8,   0x7A, 0x00};
  const FrameHeader h = decode_header(f.data(), f.size());
  EXPECT_EQ(h.tensors.size(), 0u);
  EXPECT_EQ(h.meta.seq, 9u);  // the known field between the unknown ones was read
  EXPECT_EQ(h.payload_offset, f.size());
}

// A singular field that appears twice is refused, naming the field and both byte offsets; a
// protobuf reader would silently keep one copy (or merge them), so the frame's meaning would
// depend on the reader.
TEST(Frame, RepeatedSingularFieldsAreRefused) {
  expect_wire_error({0x08, 0x01, 0x08, 0x01, 0x7A, 0x00},
                    "repeats field 'version' (1) at byte 2; it first appeared at byte 0");
  expect_wire_error({0x08, 0x01, 0x12, 0x01, 'a', 0x12, 0x01, 'b', 0x7A, 0x00},
                    "repeats field 'sender' (2) at byte 5; it first appeared at byte 2");
  expect_wire_error({0x08, 0x01, 0x18, 0x01, 0x18, 0x02, 0x7A, 0x00}, "repeats field 'seq' (3) at byte 4");
  expect_wire_error({0x08, 0x01, 0x20, 0x01, 0x20, 0x02, 0x7A, 0x00}, "repeats field 'step' (4) at byte 4");
  expect_wire_error({0x08, 0x01, 0x2A, 0x00, 0x2A, 0x00, 0x7A, 0x00}, "repeats field 'kind' (5) at byte 4");
  expect_wire_error({0x08, 0x01, 0x72, 0x00, 0x72, 0x00, 0x7A, 0x00}, "repeats field 'padding' (14) at byte 4");
  // A second payload: the first would otherwise be silently replaced.
  expect_wire_error({0x08, 0x01, 0x7A, 0x01, 0x00, 0x7A, 0x00},
                    "repeats field 'payload' (15) at byte 5; it first appeared at byte 2");

  // Inside a tensor descriptor (which starts at byte 4 of frame_with_tensor's frames).
  const std::vector<uint8_t> base = tensor_msg(1, {4}, 0, 16);
  auto twice = [&](std::vector<uint8_t> extra) {
    std::vector<uint8_t> m = base;
    m.insert(m.end(), extra.begin(), extra.end());
    return frame_with_tensor(m, 16);
  };
  const size_t end_of_base = 4 + base.size();  // frame byte where the appended field starts
  expect_wire_error(twice({0x10, 0x01}), "repeats field 'tensor.dtype' (2) at byte " + std::to_string(end_of_base) +
                                             " (in the tensor descriptor at byte 4)");
  expect_wire_error(twice({0x20, 0x00}), "repeats field 'tensor.offset' (4) at byte " + std::to_string(end_of_base));
  expect_wire_error(twice({0x28, 0x10}), "repeats field 'tensor.length' (5) at byte " + std::to_string(end_of_base));
  expect_wire_error(twice({0x32, 0x00, 0x32, 0x00}),
                    "repeats field 'tensor.codec' (6) at byte " + std::to_string(end_of_base + 2));
  // Inside a codec message: codec.type twice (the codec content starts 2 bytes after its tag).
  expect_wire_error(twice({0x32, 0x04, 0x08, 0x00, 0x08, 0x00}),
                    "repeats field 'codec.type' (1) at byte " + std::to_string(end_of_base + 4));

  // Repeated fields of the schema stay repeatable: two path parts, shape in two packed runs.
  std::vector<uint8_t> m(64);
  uint8_t* p = m.data();
  p = pb::put_bytes_field(p, field::kPath, "a");
  p = pb::put_bytes_field(p, field::kPath, "b");
  p = pb::put_varint_field(p, field::kDType, 1);
  p = pb::put_len_header(p, field::kShape, 1);
  *p++ = 2;
  p = pb::put_len_header(p, field::kShape, 1);
  *p++ = 2;
  p = pb::put_varint_field(p, field::kOffset, 0);
  p = pb::put_varint_field(p, field::kLength, 16);
  m.resize(static_cast<size_t>(p - m.data()));
  const auto ok = frame_with_tensor(m, 16);
  const FrameHeader h = decode_header(ok.data(), ok.size());
  ASSERT_EQ(h.tensors.size(), 1u);
  EXPECT_EQ(h.tensors[0].path, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(h.tensors[0].shape, (std::vector<int64_t>{2, 2}));
}

TEST(Frame, PeerTextInMessagesIsEscaped) {
  EXPECT_EQ(printable(std::string("a\0b\\c\x1b\x7f\xc3\xa9", 9)), "a\\x00b\\x5cc\\x1b\\x7f\xc3\xa9");
  std::vector<uint8_t> m(64);
  uint8_t* p = m.data();
  p = pb::put_bytes_field(p, field::kPath, std::string_view("n\0x", 3));
  p = pb::put_varint_field(p, field::kDType, 1);
  p = pb::put_varint_field(p, field::kLength, 3);
  m.resize(static_cast<size_t>(p - m.data()));
  expect_wire_error(frame_with_tensor(m, 16), "tensor 'n\\x00x' (descriptor at byte 4) declares 3 bytes");
}

TEST(Utf8, AcceptsValidRejectsInvalid) {
  EXPECT_TRUE(is_valid_utf8("plain"));
  EXPECT_TRUE(is_valid_utf8("\xE4\xB8\xAD\xE6\x96\x87"));
  EXPECT_TRUE(is_valid_utf8("\xF0\x9F\x98\x80"));
  EXPECT_FALSE(is_valid_utf8("\xC0\xAF"));          // overlong
  EXPECT_FALSE(is_valid_utf8("\xED\xA0\x80"));      // surrogate
  EXPECT_FALSE(is_valid_utf8("\xF4\x90\x80\x80"));  // > U+10FFFF
  EXPECT_FALSE(is_valid_utf8("\xE4\xB8"));          // truncated
}

}  // namespace
}  // namespace splitlink::wire
