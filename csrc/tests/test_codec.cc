// One conformance suite for every codec: the same sizes, extremes, truncated and corrupt inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "../core/codec/bits.h"
#include "../core/codec/elem.h"
#include "splitlink/codec/codec.h"
#include "splitlink/errors.h"

namespace splitlink::codec {
namespace {

struct Case {
  std::string name;
  CodecSpec spec;
  DType dtype;
};

CodecSpec make(CodecType t, uint32_t bits = 0, uint64_t block = 0, uint32_t value_bits = 0, bool stochastic = false) {
  CodecSpec s;
  s.type = t;
  s.bit_num = bits;
  s.block_size = block;
  s.value_bits = value_bits;
  s.stochastic = stochastic;
  s.seed = 1234;
  return s;
}

std::vector<Case> cases() {
  std::vector<Case> c;
  for (uint32_t b = 1; b <= 8; ++b) {
    c.push_back({"minmax" + std::to_string(b), make(CodecType::kMinMax, b), DType::kFloat32});
    c.push_back({"bitpack" + std::to_string(b), make(CodecType::kBitPack, b), DType::kInt32});
  }
  c.push_back({"minmax4_block64", make(CodecType::kMinMax, 4, 64), DType::kFloat32});
  c.push_back({"minmax8_f64", make(CodecType::kMinMax, 8), DType::kFloat64});
  c.push_back({"minmax6_f16", make(CodecType::kMinMax, 6, 16), DType::kFloat16});
  c.push_back({"minmax8_bf16", make(CodecType::kMinMax, 8), DType::kBFloat16});
  c.push_back({"minmax3_stochastic", make(CodecType::kMinMax, 3, 0, 0, true), DType::kFloat32});
  c.push_back({"bitpack8_int64", make(CodecType::kBitPack, 8), DType::kInt64});
  c.push_back({"bitpack5_int8", make(CodecType::kBitPack, 5), DType::kInt8});
  c.push_back({"bitpack1_bool", make(CodecType::kBitPack, 1), DType::kBool});
  c.push_back({"fp16", make(CodecType::kFp16), DType::kFloat32});
  c.push_back({"bf16", make(CodecType::kBf16), DType::kFloat32});
  c.push_back({"fp16_f64", make(CodecType::kFp16), DType::kFloat64});
  c.push_back({"topk_raw", make(CodecType::kTopK), DType::kFloat32});
  c.push_back({"topk_q8", make(CodecType::kTopK, 0, 0, 8), DType::kFloat32});
  c.push_back({"topk_bf16", make(CodecType::kTopK), DType::kBFloat16});
  return c;
}

// Values of `dtype` as raw bytes plus their float64 view, deterministic per seed.
struct Data {
  std::vector<uint8_t> bytes;
  std::vector<double> values;
};

Data make_data(DType dt, const CodecSpec& spec, uint64_t n, uint32_t seed) {
  std::mt19937_64 rng(seed);
  Data d;
  d.bytes.resize(n * itemsize(dt));
  d.values.resize(n);
  std::normal_distribution<double> normal(0.0, 3.0);
  const uint32_t bits = spec.bit_num == 0 ? 8 : spec.bit_num;
  for (uint64_t i = 0; i < n; ++i) {
    double v;
    if (is_floating(dt)) {
      v = normal(rng);
      if (i % 97 == 5) v *= 50;  // outliers
    } else if (dt == DType::kBool) {
      v = static_cast<double>(rng() & 1);
    } else {
      const int64_t base = dt == DType::kInt8 ? -100 : -(int64_t{1} << 40);
      const int64_t lo = dt == DType::kInt64 ? base : (dt == DType::kInt8 ? -100 : -77);
      v = static_cast<double>(lo + static_cast<int64_t>(rng() % (uint64_t{1} << bits)));
    }
    switch (dt) {
      case DType::kFloat32: {
        const float f = static_cast<float>(v);
        std::memcpy(&d.bytes[i * 4], &f, 4);
        v = f;
        break;
      }
      case DType::kFloat64:
        std::memcpy(&d.bytes[i * 8], &v, 8);
        break;
      case DType::kFloat16: {
        const uint16_t h = detail::f32_to_f16(static_cast<float>(v));
        std::memcpy(&d.bytes[i * 2], &h, 2);
        v = detail::f16_to_f32(h);
        break;
      }
      case DType::kBFloat16: {
        const uint16_t h = detail::f32_to_bf16(static_cast<float>(v));
        std::memcpy(&d.bytes[i * 2], &h, 2);
        v = detail::bf16_to_f32(h);
        break;
      }
      case DType::kInt32: {
        const int32_t x = static_cast<int32_t>(v);
        std::memcpy(&d.bytes[i * 4], &x, 4);
        break;
      }
      case DType::kInt64: {
        const int64_t x = static_cast<int64_t>(v);
        std::memcpy(&d.bytes[i * 8], &x, 8);
        break;
      }
      case DType::kInt8:
      case DType::kBool: {
        const int8_t x = static_cast<int8_t>(v);
        std::memcpy(&d.bytes[i], &x, 1);
        break;
      }
      default:
        ADD_FAILURE() << "unhandled dtype";
    }
    d.values[i] = v;
  }
  return d;
}

double value_at(DType dt, const std::vector<uint8_t>& b, uint64_t i) {
  switch (dt) {
    case DType::kFloat32: { float f; std::memcpy(&f, &b[i * 4], 4); return f; }
    case DType::kFloat64: { double f; std::memcpy(&f, &b[i * 8], 8); return f; }
    case DType::kFloat16: { uint16_t h; std::memcpy(&h, &b[i * 2], 2); return detail::f16_to_f32(h); }
    case DType::kBFloat16: { uint16_t h; std::memcpy(&h, &b[i * 2], 2); return detail::bf16_to_f32(h); }
    case DType::kInt32: { int32_t x; std::memcpy(&x, &b[i * 4], 4); return x; }
    case DType::kInt64: { int64_t x; std::memcpy(&x, &b[i * 8], 8); return static_cast<double>(x); }
    case DType::kInt8: case DType::kBool: { int8_t x; std::memcpy(&x, &b[i], 1); return x; }
    default: return NAN;
  }
}

class CodecConformance : public ::testing::TestWithParam<Case> {};

void check_round_trip(const Case& c, const Data& d, const std::vector<uint8_t>& out, uint64_t n, CodecSpec spec) {
  if (n == 0) return;
  double lo = d.values[0], hi = d.values[0];
  for (double v : d.values) {
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  switch (spec.type) {
    case CodecType::kMinMax: {
      const uint64_t bs = spec.block_size == 0 ? n : spec.block_size;
      for (uint64_t b = 0; b < n; b += bs) {
        double blo = d.values[b], bhi = d.values[b];
        for (uint64_t i = b; i < std::min(n, b + bs); ++i) {
          blo = std::min(blo, d.values[i]);
          bhi = std::max(bhi, d.values[i]);
        }
        const double step = (bhi - blo) / ((1 << spec.bit_num) - 1);
        // Round to nearest: half a step; stochastic: under one step; plus float32 (and, for
        // 16-bit outputs, the output format's) rounding.
        const double out_eps = c.dtype == DType::kFloat16 ? 1e-3 : c.dtype == DType::kBFloat16 ? 8e-3 : 1e-6;
        const double bound = (spec.stochastic ? step : step / 2) + (std::fabs(blo) + std::fabs(bhi)) * out_eps + 1e-6;
        for (uint64_t i = b; i < std::min(n, b + bs); ++i) {
          ASSERT_LE(std::fabs(value_at(c.dtype, out, i) - d.values[i]), bound) << c.name << " i=" << i;
        }
      }
      return;
    }
    case CodecType::kBitPack:
    case CodecType::kNone:
      for (uint64_t i = 0; i < n; ++i) ASSERT_EQ(value_at(c.dtype, out, i), d.values[i]) << c.name << " i=" << i;
      return;
    case CodecType::kFp16:
    case CodecType::kBf16:
      for (uint64_t i = 0; i < n; ++i) {
        const double rel = spec.type == CodecType::kFp16 ? 1.0 / 2048 : 1.0 / 256;
        ASSERT_LE(std::fabs(value_at(c.dtype, out, i) - d.values[i]), std::fabs(d.values[i]) * rel + 6e-8) << i;
      }
      return;
    case CodecType::kTopK: {
      // Exactly k non-zeros at the k largest magnitudes (ties: lowest index).
      std::vector<std::pair<double, int64_t>> order;
      for (uint64_t i = 0; i < n; ++i) order.push_back({-std::fabs(d.values[i]), static_cast<int64_t>(i)});
      std::sort(order.begin(), order.end());
      std::vector<bool> keep(n, false);
      for (uint64_t j = 0; j < spec.topk_count; ++j) keep[static_cast<size_t>(order[j].second)] = true;
      const double step = spec.value_bits ? (2 * std::fabs(order[0].first)) / ((1 << spec.value_bits) - 1) : 0;
      for (uint64_t i = 0; i < n; ++i) {
        const double got = value_at(c.dtype, out, i);
        if (!keep[i]) {
          ASSERT_EQ(got, 0.0) << c.name << " i=" << i;
        } else {
          ASSERT_LE(std::fabs(got - d.values[i]), step / 2 + std::fabs(d.values[i]) * 1e-2 * (c.dtype == DType::kBFloat16) + 1e-5)
              << c.name << " i=" << i;
        }
      }
      return;
    }
  }
}

TEST_P(CodecConformance, RoundTripsEverySize) {
  const Case& c = GetParam();
  for (uint64_t n : {0ull, 1ull, 7ull, 8ull, 9ull, 1000ull, 4097ull, (1ull << 18) + 5}) {
    CodecSpec spec = c.spec;
    if (spec.type == CodecType::kTopK) spec.topk_count = n / 10 + (n > 0);
    const Data d = make_data(c.dtype, spec, n, static_cast<uint32_t>(n));
    // Exactly-sized buffers: AddressSanitizer reports any write or read past them.
    std::vector<uint8_t> enc(encoded_size(spec, c.dtype, n));
    encode(spec, c.dtype, d.bytes.data(), n, enc.data(), c.name);
    std::vector<uint8_t> out(n * itemsize(c.dtype));
    decode(spec, c.dtype, enc.data(), enc.size(), n, out.data(), c.name);
    check_round_trip(c, d, out, n, spec);
    if (HasFailure()) return;
  }
}

TEST_P(CodecConformance, TruncatedOrOversizedInputIsACodecError) {
  const Case& c = GetParam();
  CodecSpec spec = c.spec;
  const uint64_t n = 100;
  if (spec.type == CodecType::kTopK) spec.topk_count = 10;
  const Data d = make_data(c.dtype, spec, n, 7);
  std::vector<uint8_t> enc(encoded_size(spec, c.dtype, n));
  encode(spec, c.dtype, d.bytes.data(), n, enc.data(), c.name);
  std::vector<uint8_t> out(n * itemsize(c.dtype));
  std::vector<uint8_t> cut(enc.begin(), enc.end() - 1);
  EXPECT_THROW(decode(spec, c.dtype, cut.data(), cut.size(), n, out.data(), c.name), CodecError);
  std::vector<uint8_t> longer(enc);
  longer.push_back(0);
  EXPECT_THROW(decode(spec, c.dtype, longer.data(), longer.size(), n, out.data(), c.name), CodecError);
}

TEST_P(CodecConformance, CorruptInputNeverCrashes) {
  const Case& c = GetParam();
  CodecSpec spec = c.spec;
  const uint64_t n = 64;
  if (spec.type == CodecType::kTopK) spec.topk_count = 9;
  std::mt19937 rng(99);
  std::vector<uint8_t> enc(encoded_size(spec, c.dtype, n));
  std::vector<uint8_t> out(n * itemsize(c.dtype));
  for (int trial = 0; trial < 200; ++trial) {
    for (auto& b : enc) b = static_cast<uint8_t>(rng());
    try {
      decode(spec, c.dtype, enc.data(), enc.size(), n, out.data(), c.name);
    } catch (const CodecError&) {
    }
  }
}

TEST_P(CodecConformance, ConstantTensors) {
  const Case& c = GetParam();
  CodecSpec spec = c.spec;
  const uint64_t n = 33;
  if (spec.type == CodecType::kTopK) spec.topk_count = 5;
  std::vector<uint8_t> in(n * itemsize(c.dtype));
  for (uint64_t i = 0; i < n; ++i) {
    switch (itemsize(c.dtype)) {
      case 4: { const float f = 1.5f; if (is_floating(c.dtype)) std::memcpy(&in[i * 4], &f, 4); else { int32_t x = -9; std::memcpy(&in[i * 4], &x, 4); } break; }
      case 8: { const double f = 1.5; if (is_floating(c.dtype)) std::memcpy(&in[i * 8], &f, 8); else { int64_t x = -9; std::memcpy(&in[i * 8], &x, 8); } break; }
      case 2: { const uint16_t h = c.dtype == DType::kFloat16 ? detail::f32_to_f16(1.5f) : detail::f32_to_bf16(1.5f); std::memcpy(&in[i * 2], &h, 2); break; }
      case 1: in[i] = c.dtype == DType::kBool ? 1 : static_cast<uint8_t>(-9); break;
    }
  }
  std::vector<uint8_t> enc(encoded_size(spec, c.dtype, n));
  encode(spec, c.dtype, in.data(), n, enc.data(), c.name);
  std::vector<uint8_t> out(in.size());
  decode(spec, c.dtype, enc.data(), enc.size(), n, out.data(), c.name);
  if (spec.type != CodecType::kTopK) {
    EXPECT_EQ(in, out) << c.name;
  }
}

INSTANTIATE_TEST_SUITE_P(AllCodecs, CodecConformance, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& i) { return i.param.name; });

TEST(MinMax, RejectsNonFiniteAndNamesTheTensor) {
  const std::vector<float> x = {1.0f, std::numeric_limits<float>::infinity(), 2.0f};
  CodecSpec s = make(CodecType::kMinMax, 8);
  std::vector<uint8_t> enc(encoded_size(s, DType::kFloat32, 3));
  try {
    encode(s, DType::kFloat32, x.data(), 3, enc.data(), "emb");
    FAIL();
  } catch (const CodecError& e) {
    EXPECT_NE(std::string(e.what()).find("'emb'"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("index 1"), std::string::npos);
  }
}

TEST(BitPack, NegativeValuesRoundTripAt3Bits) {
  const std::vector<int32_t> x = {-3, -1, 0, 2};  // MindSpore returns [5, 7, 8, 10]
  CodecSpec s = make(CodecType::kBitPack, 3);
  std::vector<uint8_t> enc(encoded_size(s, DType::kInt32, 4));
  encode(s, DType::kInt32, x.data(), 4, enc.data(), "ids");
  std::vector<int32_t> y(4);
  decode(s, DType::kInt32, enc.data(), enc.size(), 4, y.data(), "ids");
  EXPECT_EQ(x, y);
  EXPECT_EQ(enc.size(), 8u + 2u);  // base + 12 bits
}

TEST(BitPack, ExtremesOfInt64) {
  const std::vector<int64_t> x = {std::numeric_limits<int64_t>::max() - 3, std::numeric_limits<int64_t>::max()};
  CodecSpec s = make(CodecType::kBitPack, 2);
  std::vector<uint8_t> enc(encoded_size(s, DType::kInt64, 2));
  encode(s, DType::kInt64, x.data(), 2, enc.data(), "big");
  std::vector<int64_t> y(2);
  decode(s, DType::kInt64, enc.data(), enc.size(), 2, y.data(), "big");
  EXPECT_EQ(x, y);
  const std::vector<int64_t> wide = {std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max()};
  EXPECT_THROW(encode(s, DType::kInt64, wide.data(), 2, enc.data(), "wide"), CodecError);
}

TEST(Half, SoftwareConversionMatchesIEEEOnEveryHalf) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = detail::f16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(detail::f32_to_f16(f), h) << h;
  }
  // Round half to even at the boundary between 1 and the next half (1 + 2^-10).
  EXPECT_EQ(detail::f32_to_f16(1.0f + 0.5f / 1024), detail::f32_to_f16(1.0f));
  EXPECT_EQ(detail::f32_to_f16(65519.0f), 0x7BFFu);
  EXPECT_EQ(detail::f32_to_f16(65520.0f), 0x7C00u);  // overflow to +Inf
  EXPECT_EQ(detail::f32_to_bf16(3.0e38f) & 0x7F80u, 0x7F00u);
}

TEST(Validate, LossyCodecsRefuseIntegersAndSayWhatToUse) {
  try {
    validate(make(CodecType::kMinMax, 8), DType::kInt64, 10, "ids", false);
    FAIL();
  } catch (const CodecError& e) {
    EXPECT_NE(std::string(e.what()).find("bit_pack"), std::string::npos);
  }
  EXPECT_THROW(validate(make(CodecType::kFp16), DType::kInt32, 10, "x", false), CodecError);
  EXPECT_THROW(validate(make(CodecType::kBitPack, 4), DType::kFloat32, 10, "x", false), CodecError);
  EXPECT_THROW(validate(make(CodecType::kMinMax, 9), DType::kFloat32, 10, "x", false), CodecError);
  EXPECT_THROW(validate(make(CodecType::kMinMax, 8, 12), DType::kFloat32, 10, "x", false), CodecError);
  EXPECT_THROW(validate(make(CodecType::kMinMax, 0), DType::kFloat32, 10, "x", true), WireError);
}

}  // namespace
}  // namespace splitlink::codec

namespace splitlink::codec {
namespace {

// The SIMD and scalar bit packers must produce the same LSB-first layout: frames cross machines.
TEST(BitLayout, PackedBitsAreLsbFirstForEveryWidthAndLength) {
  std::mt19937 rng(5);
  for (unsigned b = 1; b <= 8; ++b) {
    for (uint64_t n : {1ull, 7ull, 8ull, 31ull, 32ull, 64ull, 127ull, 128ull, 129ull, 1000ull, 4096ull}) {
      std::vector<uint8_t> codes(n);
      for (auto& c : codes) c = static_cast<uint8_t>(rng() & ((1u << b) - 1));
      std::vector<uint8_t> packed(detail::packed_bytes(n, b));
      detail::pack_codes(codes.data(), n, b, packed.data());
      std::vector<uint8_t> reference(packed.size(), 0);
      for (uint64_t i = 0; i < n; ++i)
        for (unsigned k = 0; k < b; ++k)
          if ((codes[i] >> k) & 1) reference[(i * b + k) / 8] |= static_cast<uint8_t>(1u << ((i * b + k) % 8));
      ASSERT_EQ(packed, reference) << "b=" << b << " n=" << n;
      std::vector<uint8_t> back(n);
      detail::unpack_codes(packed.data(), n, b, back.data());
      ASSERT_EQ(back, codes) << "b=" << b << " n=" << n;
    }
  }
}

}  // namespace
}  // namespace splitlink::codec
