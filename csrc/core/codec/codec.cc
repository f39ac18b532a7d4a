#include "splitlink/codec/codec.h"

#include <cstring>
#include <vector>

#include "codecs.h"
#include "splitlink/errors.h"
#include "splitlink/memcopy.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "splitlink frames are little-endian; big-endian hosts are not supported");

namespace splitlink::codec {
namespace {

// Codes are at most 8 bits and sizes are computed as numel * bits: keep that far from overflow.
constexpr uint64_t kMaxCodedNumel = uint64_t{1} << 56;

// SL_CHECK for codec parameters: they come from the caller (CodecError) or from a peer's frame
// (WireError, saying so). Used inside validate(), which has `from_wire` and `name` in scope.
#define SL_CHECK_SPEC(cond, msg)                                                                                   \
  do {                                                                                                             \
    if (from_wire) {                                                                                               \
      SL_CHECK(cond, WireError,                                                                                    \
               "tensor '" << name << "': " << msg << " (the frame is corrupt or from an incompatible splitlink)"); \
    } else {                                                                                                       \
      SL_CHECK(cond, CodecError, "tensor '" << name << "': " << msg);                                              \
    }                                                                                                              \
  } while (false)

bool is_int_or_bool(DType dt) { return !is_floating(dt) && dt != DType::kUnspecified; }

}  // namespace

const char* codec_name(CodecType t) {
  switch (t) {
    case CodecType::kNone:
      return "no_compress";
    case CodecType::kMinMax:
      return "min_max";
    case CodecType::kBitPack:
      return "bit_pack";
    case CodecType::kFp16:
      return "fp16";
    case CodecType::kBf16:
      return "bf16";
    case CodecType::kTopK:
      return "topk";
  }
  return "unknown";
}

void validate(const CodecSpec& s, DType dt, uint64_t numel, const std::string& name, bool from_wire) {
  SL_CHECK_SPEC(static_cast<uint32_t>(s.type) <= kMaxCodecType, "unknown codec type " << static_cast<uint32_t>(s.type));
  if (s.type == CodecType::kNone) return;
  const char* cname = codec_name(s.type);
  SL_CHECK_SPEC(numel <= kMaxCodedNumel, cname << " supports at most 2^56 elements per tensor");
  auto check_bits = [&](uint32_t bits, const char* field, uint32_t lo) {
    SL_CHECK_SPEC(bits >= lo && bits <= 8, cname << " needs " << field << " in " << lo << "..8, got " << bits);
  };
  auto check_block = [&] {
    SL_CHECK_SPEC(s.block_size % 8 == 0,
                  cname << " block_size must be 0 (one block) or a multiple of 8, got " << s.block_size);
  };
  switch (s.type) {
    case CodecType::kMinMax:
      SL_CHECK_SPEC(is_floating(dt), cname << " needs a floating-point tensor, got " << dtype_name(dt)
                                           << "; use bit_pack for integers and bools");
      check_bits(s.bit_num, "bit_num", 1);
      check_block();
      return;
    case CodecType::kBitPack:
      SL_CHECK_SPEC(is_int_or_bool(dt), cname << " packs integer and bool tensors, got " << dtype_name(dt)
                                              << "; use min_max, fp16 or bf16 for floats");
      check_bits(s.bit_num, "bit_num", 1);
      return;
    case CodecType::kFp16:
    case CodecType::kBf16:
      SL_CHECK_SPEC(dt == DType::kFloat32 || dt == DType::kFloat64,
                    cname << " downcasts float32 and float64 tensors, got " << dtype_name(dt));
      return;
    case CodecType::kTopK:
      SL_CHECK_SPEC(dt == DType::kFloat32 || dt == DType::kFloat16 || dt == DType::kBFloat16,
                    cname << " ranks float32, float16 and bfloat16 tensors, got " << dtype_name(dt));
      SL_CHECK_SPEC(s.topk_count <= numel,
                    cname << " keeps k=" << s.topk_count << " values of a tensor with " << numel << " elements");
      if (s.value_bits != 0) check_bits(s.value_bits, "value_bit_num", 1);
      check_block();
      return;
    case CodecType::kNone:
      return;
  }
}

#undef SL_CHECK_SPEC

uint64_t encoded_size(const CodecSpec& s, DType dt, uint64_t numel) {
  switch (s.type) {
    case CodecType::kNone:
      return numel * itemsize(dt);
    case CodecType::kMinMax:
      return detail::minmax_size(numel, s.bit_num, s.block_size);
    case CodecType::kBitPack:
      return 8 + (numel * s.bit_num + 7) / 8;
    case CodecType::kFp16:
    case CodecType::kBf16:
      return numel * 2;
    case CodecType::kTopK:
      return detail::topk_size(dt, numel, s.topk_count, s.value_bits, s.block_size);
  }
  return 0;
}

void encode(const CodecSpec& s, DType dt, const void* src, uint64_t numel, uint8_t* dst, const std::string& name,
            float* residual, unsigned threads) {
  validate(s, dt, numel, name, false);
  SL_CHECK(residual == nullptr || s.type == CodecType::kTopK, InvalidArgument,
           "error feedback is only defined for topk (tensor '" << name << "')");
  switch (s.type) {
    case CodecType::kNone:
      stream_copy(dst, src, numel * itemsize(dt));
      return;
    case CodecType::kMinMax:
      detail::minmax_encode(dt, src, numel, s.bit_num, s.block_size, s.stochastic, s.seed, dst, name, threads);
      return;
    case CodecType::kBitPack:
      detail::bitpack_encode(dt, src, numel, s.bit_num, dst, name, threads);
      return;
    case CodecType::kFp16:
    case CodecType::kBf16: {
      // dst may be unaligned for uint16 in theory; frames align every slot to 64 bytes.
      detail::half_encode(s.type == CodecType::kBf16, dt, src, numel, reinterpret_cast<uint16_t*>(dst), threads);
      return;
    }
    case CodecType::kTopK:
      detail::topk_encode(dt, src, numel, s.topk_count, s.value_bits, s.block_size, s.stochastic, s.seed, dst, residual,
                          name, threads);
      return;
  }
}

void decode(const CodecSpec& s, DType dt, const uint8_t* src, uint64_t len, uint64_t numel, void* dst,
            const std::string& name, unsigned threads) {
  validate(s, dt, numel, name, false);
  const uint64_t want = encoded_size(s, dt, numel);
  SL_CHECK(len == want, CodecError,
           "tensor '" << name << "': " << codec_name(s.type) << " data is " << len << " bytes, expected " << want);
  switch (s.type) {
    case CodecType::kNone:
      if (len != 0) std::memcpy(dst, src, len);
      return;
    case CodecType::kMinMax:
      detail::minmax_decode(dt, src, numel, s.bit_num, s.block_size, dst, name, threads);
      return;
    case CodecType::kBitPack:
      detail::bitpack_decode(dt, src, numel, s.bit_num, dst, name, threads);
      return;
    case CodecType::kFp16:
    case CodecType::kBf16: {
      // The source may sit at any address (frames from other encoders); decode from an aligned copy.
      if (reinterpret_cast<uintptr_t>(src) % 2 != 0) {
        std::vector<uint16_t> tmp(numel);
        std::memcpy(tmp.data(), src, len);
        detail::half_decode(s.type == CodecType::kBf16, dt, tmp.data(), numel, dst, threads);
      } else {
        detail::half_decode(s.type == CodecType::kBf16, dt, reinterpret_cast<const uint16_t*>(src), numel, dst,
                            threads);
      }
      return;
    }
    case CodecType::kTopK:
      detail::topk_decode(dt, src, numel, s.topk_count, s.value_bits, s.block_size, dst, name, threads);
      return;
  }
}

}  // namespace splitlink::codec
