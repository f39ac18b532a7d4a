// Tensor codecs: how a tensor's values become the bytes of its payload slot and back.
//
// Every codec has a deterministic encoded size that depends only on (spec, dtype, numel), so a
// frame is planned before any data is read and each codec writes straight into its slot of the
// frame in one pass. Encoded layouts (little-endian):
//
//   none      raw elements.
//   min_max   nblocks x {float32 min, float32 scale}, then ceil(numel * bits / 8) bytes of codes,
//             value i in bits [i*bits, (i+1)*bits) of the code stream (LSB first). Decoded value
//             = min + code * scale, where scale = (max - min) / (2^bits - 1) of the block. One
//             block holds the whole tensor unless block_size is set (a multiple of 8).
//             Round-to-nearest error <= scale / 2 (+ float32 rounding); stochastic rounding is
//             unbiased with error < scale. NaN or +-Inf input is rejected (CodecError).
//   bit_pack  int64 base, then codes (value - base) packed as above. Lossless; values must span
//             fewer than 2^bits distinct steps (max - min < 2^bits) or CodecError names the
//             range found. Negative values work (the base carries the sign).
//   fp16/bf16 IEEE binary16 / bfloat16 elements, round-to-nearest-even. Finite values beyond the
//             target's range become +-Inf (what numpy and torch casts do; bf16 has float32's
//             range so only values within rounding of FLT_MAX overflow); NaN stays NaN.
//   topk      k indices (uint32, or uint64 when numel > 2^32), strictly increasing, then the k
//             kept values: raw elements of the tensor's dtype, or min_max-encoded (value_bits).
//             Keeps exactly the k largest magnitudes; ties at the threshold go to lower indices.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "splitlink/dtype.h"

namespace splitlink::codec {

// Wire values of frame.proto `enum CodecType`; never renumber.
enum class CodecType : uint32_t {
  kNone = 0,
  kMinMax = 1,
  kBitPack = 2,
  kFp16 = 3,
  kBf16 = 4,
  kTopK = 5,
};
constexpr uint32_t kMaxCodecType = 5;

const char* codec_name(CodecType t);

struct CodecSpec {
  CodecType type = CodecType::kNone;
  uint32_t bit_num = 0;     // min_max, bit_pack: 1..8
  uint64_t block_size = 0;  // min_max (and topk values): 0 = one block, else a multiple of 8
  uint64_t topk_count = 0;  // topk: values kept (k)
  uint32_t value_bits = 0;  // topk: 0 = raw values, 1..8 = min_max-quantized values
  // Encoder-only settings (not on the wire).
  bool stochastic = false;  // min_max: stochastic rounding
  uint64_t seed = 0;        // min_max: seed of the stochastic rounding stream

  bool is_none() const { return type == CodecType::kNone; }
};

// Checks that `spec` can encode/decode a tensor of `dtype` with `numel` elements. Throws
// CodecError (or WireError when `from_wire`) naming `name` and what is allowed.
void validate(const CodecSpec& spec, DType dtype, uint64_t numel, const std::string& name, bool from_wire);

// Bytes the encoding occupies (valid specs only).
uint64_t encoded_size(const CodecSpec& spec, DType dtype, uint64_t numel);

// Encodes numel elements of `dtype` at `src` into exactly encoded_size() bytes at `dst`.
// `residual` (optional, topk only, float32[numel]) receives what the encoding dropped:
// src - decode(encode(src)), for error feedback. Throws CodecError naming `name`.
void encode(const CodecSpec& spec, DType dtype, const void* src, uint64_t numel, uint8_t* dst, const std::string& name,
            float* residual = nullptr, unsigned threads = 0);

// Decodes `len` bytes at `src` into numel elements of `dtype` at `dst`. Validates everything it
// reads (lengths, index ranges and order, finite parameters): CodecError on corrupt input.
void decode(const CodecSpec& spec, DType dtype, const uint8_t* src, uint64_t len, uint64_t numel, void* dst,
            const std::string& name, unsigned threads = 0);

}  // namespace splitlink::codec
