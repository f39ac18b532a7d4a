// One conformance suite for every codec: the same sizes, extremes, truncated and corrupt inputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "../core/codec/bits.h"
#include "../core/codec/elem.h"
#include "../core/platform/cpu.h"
#include "splitlink/codec/codec.h"
#include "splitlink/errors.h"
#include "splitlink/secure/mask.h"

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
    case DType::kFloat32: {
      float f;
      std::memcpy(&f, &b[i * 4], 4);
      return f;
    }
    case DType::kFloat64: {
      double f;
      std::memcpy(&f, &b[i * 8], 8);
      return f;
    }
    case DType::kFloat16: {
      uint16_t h;
      std::memcpy(&h, &b[i * 2], 2);
      return detail::f16_to_f32(h);
    }
    case DType::kBFloat16: {
      uint16_t h;
      std::memcpy(&h, &b[i * 2], 2);
      return detail::bf16_to_f32(h);
    }
    case DType::kInt32: {
      int32_t x;
      std::memcpy(&x, &b[i * 4], 4);
      return x;
    }
    case DType::kInt64: {
      int64_t x;
      std::memcpy(&x, &b[i * 8], 8);
      return static_cast<double>(x);
    }
    case DType::kInt8:
    case DType::kBool: {
      int8_t x;
      std::memcpy(&x, &b[i], 1);
      return x;
    }
    default:
      return NAN;
  }
}

// Instruction-set variants the codecs dispatch on; every one the CPU has runs the conformance
// suite (the others skip, saying what the CPU lacks).
struct Isa {
  const char* name;
  unsigned mask;
};
const std::vector<Isa>& isas() {
  static const std::vector<Isa> v = {
      {"scalar", 0}, {"f16c", cpu::kF16c}, {"avx2", cpu::kAvx2}, {"avx2_f16c", cpu::kAvx2 | cpu::kF16c}};
  return v;
}

class CodecConformance : public ::testing::TestWithParam<std::tuple<Case, Isa>> {
 protected:
  void SetUp() override {
    const unsigned want = std::get<1>(GetParam()).mask, missing = want & ~cpu::detected();
    if (missing != 0) GTEST_SKIP() << "this CPU lacks " << cpu::feature_names(missing);
    cpu::override_features(want);
  }
  void TearDown() override { cpu::clear_override(); }
  const Case& param() const { return std::get<0>(GetParam()); }
};

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
          ASSERT_LE(std::fabs(got - d.values[i]),
                    step / 2 + std::fabs(d.values[i]) * 1e-2 * (c.dtype == DType::kBFloat16) + 1e-5)
              << c.name << " i=" << i;
        }
      }
      return;
    }
  }
}

TEST_P(CodecConformance, RoundTripsEverySize) {
  const Case& c = param();
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
  const Case& c = param();
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
  const Case& c = param();
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
  const Case& c = param();
  CodecSpec spec = c.spec;
  const uint64_t n = 33;
  if (spec.type == CodecType::kTopK) spec.topk_count = 5;
  std::vector<uint8_t> in(n * itemsize(c.dtype));
  for (uint64_t i = 0; i < n; ++i) {
    switch (itemsize(c.dtype)) {
      case 4: {
        const float f = 1.5f;
        if (is_floating(c.dtype))
          std::memcpy(&in[i * 4], &f, 4);
        else {
          int32_t x = -9;
          std::memcpy(&in[i * 4], &x, 4);
        }
        break;
      }
      case 8: {
        const double f = 1.5;
        if (is_floating(c.dtype))
          std::memcpy(&in[i * 8], &f, 8);
        else {
          int64_t x = -9;
          std::memcpy(&in[i * 8], &x, 8);
        }
        break;
      }
      case 2: {
        const uint16_t h = c.dtype == DType::kFloat16 ? detail::f32_to_f16(1.5f) : detail::f32_to_bf16(1.5f);
        std::memcpy(&in[i * 2], &h, 2);
        break;
      }
      case 1:
        in[i] = c.dtype == DType::kBool ? 1 : static_cast<uint8_t>(-9);
        break;
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

INSTANTIATE_TEST_SUITE_P(AllCodecs, CodecConformance,
                         ::testing::Combine(::testing::ValuesIn(cases()), ::testing::ValuesIn(isas())),
                         [](const ::testing::TestParamInfo<std::tuple<Case, Isa>>& i) {
                           return std::get<0>(i.param).name + "_" + std::get<1>(i.param).name;
                         });

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

// ---- Instruction-set variants: the same bits from every variant, and SPLITLINK_CPU_FEATURES ----

float bits_f(uint32_t u) { return detail::u2f(u); }

// Float32 values that stress the variants where they could differ: signed zeros, subnormals,
// rounding ties of fp16 / bf16 / the min_max grid, the ends of the range and, unless finite_only,
// infinities and NaNs with quiet, signaling and negative payloads.
std::vector<float> edge_values(bool finite_only) {
  std::vector<float> v = {0.0f,
                          -0.0f,
                          bits_f(1),
                          bits_f(0x80000001u),
                          bits_f(0x007FFFFFu),
                          std::numeric_limits<float>::min(),
                          bits_f(0x33800000u) /* 2^-24: smallest fp16 subnormal */,
                          bits_f(0x33000000u) /* 2^-25: tie to 0 */,
                          bits_f(0x33C00000u) /* 1.5 * 2^-24: tie */,
                          1.0f + 1.0f / 2048 /* fp16 tie to even (down) */,
                          1.0f + 3.0f / 2048 /* fp16 tie to even (up) */,
                          bits_f(0x3F808000u) /* bf16 tie (down) */,
                          bits_f(0x3F818000u) /* bf16 tie (up) */,
                          65504.0f,
                          65519.0f,
                          65520.0f /* fp16 overflow tie */,
                          -65520.0f,
                          0.5f,
                          1.5f,
                          2.5f,
                          -2.5f,
                          1e30f,
                          -1e30f,
                          std::numeric_limits<float>::max(),
                          std::numeric_limits<float>::lowest()};
  if (!finite_only) {
    for (uint32_t u : {0x7F800000u, 0xFF800000u, 0x7FC00000u, 0xFFC00000u, 0x7FC12345u, 0x7F800001u, 0x7FA00000u,
                       0xFFBFFFFFu, 0x7FFFFFFFu, 0x7F802000u}) {
      v.push_back(bits_f(u));
    }
  }
  return v;
}

// Named float32 inputs of n elements, specials scattered over the SIMD bodies and the tails.
std::vector<std::pair<std::string, std::vector<float>>> float_inputs(uint64_t n) {
  std::mt19937_64 rng(n * 7 + 1);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<std::pair<std::string, std::vector<float>>> out;
  auto sprinkle = [&](std::vector<float> x, const std::vector<float>& specials) {
    for (uint64_t i = 0; i < n; ++i) {
      if (rng() % 4 == 0) x[i] = specials[rng() % specials.size()];
    }
    return x;
  };
  std::vector<float> normals(n);
  for (auto& f : normals) f = normal(rng);
  const std::vector<float> small = {
      0.0f, -0.0f, bits_f(1), bits_f(0x80000001u), bits_f(0x007FFFFFu), std::numeric_limits<float>::min(), 0.5f, -1.5f};
  out.push_back({"normal_zeros_subnormals", sprinkle(normals, small)});
  // Values halfway between the points of the 8-bit grid 0..255 (pinned by 0 and 255 below), so
  // nearest rounding meets exact ties; coarser grids meet other exact fractions.
  std::vector<float> ties(n);
  for (auto& f : ties) f = static_cast<float>(rng() % 255) + 0.5f;
  ties[0] = 0.0f;
  if (n > 1) ties[n - 1] = 255.0f;
  out.push_back({"grid_ties", ties});
  out.push_back({"signed_zeros", sprinkle(std::vector<float>(n, 0.0f), {-0.0f})});
  out.push_back({"edges_finite", sprinkle(normals, edge_values(true))});
  out.push_back({"edges_all", sprinkle(normals, edge_values(false))});
  std::vector<float> raw(n);
  for (auto& f : raw) f = bits_f(static_cast<uint32_t>(rng()));
  out.push_back({"random_bits", raw});
  return out;
}

// The float32 input as `dt` bytes; 16-bit dtypes also get every bit pattern, NaN payloads included.
std::vector<uint8_t> as_dtype(const std::vector<float>& x, DType dt, bool raw_bits, uint64_t seed) {
  const uint64_t n = x.size();
  std::vector<uint8_t> b(n * itemsize(dt));
  std::mt19937_64 rng(seed);
  for (uint64_t i = 0; i < n; ++i) {
    switch (dt) {
      case DType::kFloat32:
        std::memcpy(&b[i * 4], &x[i], 4);
        break;
      case DType::kFloat64: {
        double d = x[i];
        if (raw_bits) {
          const uint64_t u = rng();
          std::memcpy(&d, &u, 8);
        }
        std::memcpy(&b[i * 8], &d, 8);
        break;
      }
      case DType::kFloat16:
      case DType::kBFloat16: {
        uint16_t h = dt == DType::kFloat16 ? detail::f32_to_f16(x[i]) : detail::f32_to_bf16(x[i]);
        if (raw_bits) h = static_cast<uint16_t>(rng());
        std::memcpy(&b[i * 2], &h, 2);
        break;
      }
      default:
        break;
    }
  }
  return b;
}

// What one variant did with one input: the encoding and its decoding, or the error message.
struct Outcome {
  std::string error;
  std::vector<uint8_t> enc, dec;
  bool operator==(const Outcome& o) const { return error == o.error && enc == o.enc && dec == o.dec; }
};

Outcome run_codec(const CodecSpec& spec, DType dt, const std::vector<uint8_t>& in, uint64_t n) {
  Outcome o;
  try {
    o.enc.resize(encoded_size(spec, dt, n));
    encode(spec, dt, in.data(), n, o.enc.data(), "x");
    o.dec.resize(n * itemsize(dt));
    decode(spec, dt, o.enc.data(), o.enc.size(), n, o.dec.data(), "x");
  } catch (const Error& e) {
    o.error = e.what();
  }
  return o;
}

Outcome run_mask(const std::vector<float>& x, unsigned frac_bits) {
  Outcome o;
  std::vector<uint64_t> y(x.size());
  std::vector<float> back(x.size());
  try {
    secure::mask_encode(x.data(), x.size(), frac_bits, {}, 0, y.data(), "x");
    secure::sum_decode({y.data()}, x.size(), frac_bits, back.data());
    o.enc.resize(y.size() * 8);
    std::memcpy(o.enc.data(), y.data(), o.enc.size());
    o.dec.resize(back.size() * 4);
    std::memcpy(o.dec.data(), back.data(), o.dec.size());
  } catch (const Error& e) {
    o.error = e.what();
  }
  return o;
}

// Runs `fn` under the scalar variant and every other one the CPU has; all must agree bit for bit.
template <class Fn>
void expect_same_under_every_variant(const std::string& what, Fn fn, int* compared) {
  cpu::ScopedFeatures scalar(0);
  const Outcome want = fn();
  for (const Isa& isa : isas()) {
    if (isa.mask == 0 || (isa.mask & ~cpu::detected()) != 0) continue;
    cpu::override_features(isa.mask);
    const Outcome got = fn();
    cpu::override_features(0);
    EXPECT_EQ(got.error, want.error) << what << " under " << isa.name;
    EXPECT_TRUE(got.enc == want.enc) << what << ": encoding under " << isa.name << " differs from scalar";
    EXPECT_TRUE(got.dec == want.dec) << what << ": decoding under " << isa.name << " differs from scalar";
    ++*compared;
  }
}

TEST(IsaVariants, EveryCodecGivesTheSameBitsUnderEveryVariant) {
  int compared = 0;
  for (uint64_t n : {uint64_t{13}, uint64_t{4133}, (uint64_t{1} << 18) + 77}) {
    const auto inputs = float_inputs(n);
    for (const Case& c : cases()) {
      if (!is_floating(c.dtype)) continue;  // bit_pack has no variants (BitLayout checks its packer)
      CodecSpec spec = c.spec;
      if (spec.type == CodecType::kTopK) spec.topk_count = n / 10 + 1;
      for (const auto& input : inputs) {
        const std::string& name = input.first;
        const std::vector<float>& x = input.second;  // not a structured binding: C++17 lambdas cannot capture those
        if (n > 5000 && name != "edges_finite") continue;  // the big size is for the parallel chunking only
        const auto in = as_dtype(x, c.dtype, name == "random_bits", n);
        expect_same_under_every_variant(
            c.name + "/" + name + "/n=" + std::to_string(n), [&] { return run_codec(spec, c.dtype, in, n); },
            &compared);
        if (HasFailure()) return;
      }
    }
    for (const auto& input : inputs) {
      const std::string& name = input.first;
      const std::vector<float>& x = input.second;
      for (unsigned frac : {0u, 16u, 40u}) {
        expect_same_under_every_variant(
            "mask/" + name + "/frac=" + std::to_string(frac) + "/n=" + std::to_string(n),
            [&] { return run_mask(x, frac); }, &compared);
      }
    }
  }
  if (compared == 0)
    GTEST_SKIP() << "this CPU has no variant besides scalar (it has: " << cpu::feature_names(cpu::detected()) << ")";
}

// The fp16 conversion in software gives the F16C instructions' bits for NaNs too (the variants
// meet on every value; this pins the software side independently of the CPU).
TEST(Half, SoftwareNaNsKeepSignAndPayloadAndAreQuieted) {
  EXPECT_EQ(detail::f32_to_f16(bits_f(0x7FC00000u)), 0x7E00u);
  EXPECT_EQ(detail::f32_to_f16(bits_f(0xFFC00000u)), 0xFE00u);
  EXPECT_EQ(detail::f32_to_f16(bits_f(0x7F802000u)), 0x7E01u);  // signaling, payload in the top bits: quieted
  EXPECT_EQ(detail::f32_to_f16(bits_f(0x7F801FFFu)), 0x7E00u);  // payload only in the low 13 bits: dropped
  EXPECT_EQ(detail::f2u(detail::f16_to_f32(0x7C01u)), 0x7FC02000u);
  EXPECT_EQ(detail::f2u(detail::f16_to_f32(0xFE05u)), 0xFFC0A000u);
  EXPECT_EQ(detail::f2u(detail::f16_to_f32(0x7C00u)), 0x7F800000u);  // Inf stays Inf
}

TEST(CpuFeatures, ParseKeepsOnlyListedFeatures) {
  const unsigned all = cpu::kAllFeatures;
  EXPECT_EQ(cpu::parse_features("scalar", all), 0u);
  EXPECT_EQ(cpu::parse_features("none", all), 0u);
  EXPECT_EQ(cpu::parse_features("native", all), all);
  EXPECT_EQ(cpu::parse_features("native", cpu::kF16c), unsigned{cpu::kF16c});
  EXPECT_EQ(cpu::parse_features("avx2", all), unsigned{cpu::kAvx2});
  EXPECT_EQ(cpu::parse_features(" AVX2 , f16c", all), unsigned{cpu::kAvx2 | cpu::kF16c});
  EXPECT_EQ(cpu::parse_features("scalar,aesni", all), unsigned{cpu::kAesni});
  EXPECT_EQ(cpu::feature_names(0), "none");
  EXPECT_EQ(cpu::feature_names(all), "avx2,f16c,aesni");
}

std::string parse_error(const std::string& spec, unsigned available) {
  try {
    cpu::parse_features(spec, available);
  } catch (const InvalidArgument& e) {
    return e.what();
  }
  return "";
}

TEST(CpuFeatures, UnknownNamesAndMissingFeaturesAreClearErrors) {
  const std::string unknown = parse_error("avx512", cpu::kAllFeatures);
  EXPECT_NE(unknown.find("SPLITLINK_CPU_FEATURES='avx512'"), std::string::npos) << unknown;
  EXPECT_NE(unknown.find("unknown feature 'avx512'"), std::string::npos) << unknown;
  for (const char* allowed : {"avx2", "f16c", "aesni", "native", "scalar"})
    EXPECT_NE(unknown.find(allowed), std::string::npos) << unknown;
  EXPECT_NE(parse_error("avx2,", cpu::kAllFeatures).find("unknown feature ''"), std::string::npos);
  const std::string missing = parse_error("f16c,avx2", cpu::kF16c | cpu::kAesni);
  EXPECT_NE(missing.find("asks for avx2, which this CPU lacks (it has: f16c,aesni)"), std::string::npos) << missing;
  EXPECT_NE(missing.find("can only remove features"), std::string::npos) << missing;
}

// tests/native/test_cpp_suites.py runs this binary with SPLITLINK_CPU_FEATURES set too.
TEST(CpuFeatures, EnvironmentVariableDecidesWhatIsInForce) {
  const char* env = std::getenv("SPLITLINK_CPU_FEATURES");
  if (env == nullptr || *env == '\0') {
    EXPECT_EQ(cpu::in_force(), cpu::detected());
    EXPECT_FALSE(cpu::forced());
  } else {
    EXPECT_EQ(cpu::in_force(), cpu::parse_features(env, cpu::detected())) << env;
    EXPECT_TRUE(cpu::forced());
  }
  EXPECT_EQ(cpu::has_avx2(), (cpu::in_force() & cpu::kAvx2) != 0);
  EXPECT_EQ(cpu::has_f16c(), (cpu::in_force() & cpu::kF16c) != 0);
  EXPECT_EQ(cpu::has_aesni(), (cpu::in_force() & cpu::kAesni) != 0);
}

TEST(CpuFeatures, OverrideChangesDispatchAndRefusesFeaturesTheCpuLacks) {
  {
    cpu::ScopedFeatures none(0);
    EXPECT_FALSE(cpu::has_avx2());
    EXPECT_FALSE(cpu::has_f16c());
    EXPECT_FALSE(cpu::has_aesni());
    EXPECT_TRUE(cpu::forced());
    EXPECT_EQ(cpu::in_force(), 0u);
  }
  {
    cpu::ScopedFeatures all(cpu::detected());
    EXPECT_EQ(cpu::in_force(), cpu::detected());
    EXPECT_EQ(cpu::has_avx2(), (cpu::detected() & cpu::kAvx2) != 0);
  }
  const unsigned lacking = cpu::kAllFeatures & ~cpu::detected();
  if (lacking != 0) {
    EXPECT_THROW(cpu::override_features(lacking), InvalidArgument);
  }
  EXPECT_THROW(cpu::override_features(1u << 20), InvalidArgument);
}

}  // namespace
}  // namespace splitlink::codec
