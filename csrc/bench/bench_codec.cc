// Codec microbenchmarks: every codec at 1 MiB and 64 MiB of float32 (int32 for bit_pack), one
// thread and all threads. Reports GB/s of uncompressed input.
#include <benchmark/benchmark.h>

#include <cmath>
#include <random>
#include <vector>

#include "splitlink/codec/codec.h"

namespace {

using namespace splitlink;
using codec::CodecSpec;
using codec::CodecType;

CodecSpec spec_for(int id, uint64_t numel) {
  CodecSpec s;
  switch (id) {
    case 0:
      s.type = CodecType::kMinMax;
      s.bit_num = 8;
      break;
    case 1:
      s.type = CodecType::kMinMax;
      s.bit_num = 4;
      break;
    case 2:
      s.type = CodecType::kMinMax;
      s.bit_num = 2;
      break;
    case 3:
      s.type = CodecType::kMinMax;
      s.bit_num = 8;
      s.block_size = 256;
      break;
    case 4:
      s.type = CodecType::kMinMax;
      s.bit_num = 8;
      s.stochastic = true;
      s.seed = 1;
      break;
    case 5:
      s.type = CodecType::kFp16;
      break;
    case 6:
      s.type = CodecType::kBf16;
      break;
    case 7:
      s.type = CodecType::kTopK;
      s.topk_count = numel / 100;
      break;
    case 8:
      s.type = CodecType::kBitPack;
      s.bit_num = 4;
      break;
  }
  return s;
}

const char* kNames[] = {"min_max8", "min_max4", "min_max2", "min_max8_block256", "min_max8_stochastic",
                        "fp16",     "bf16",     "topk1pct", "bit_pack4"};

struct Input {
  std::vector<float> f;
  std::vector<int32_t> i;
  explicit Input(uint64_t n) : f(n), i(n) {
    std::mt19937 rng(3);
    std::normal_distribution<float> nd;
    for (uint64_t k = 0; k < n; ++k) {
      f[k] = nd(rng);
      i[k] = static_cast<int32_t>(rng() % 16) - 8;
    }
  }
};

void run(benchmark::State& state, bool decode_side) {
  const int id = static_cast<int>(state.range(0));
  const uint64_t bytes = static_cast<uint64_t>(state.range(1));
  const unsigned threads = static_cast<unsigned>(state.range(2));
  const uint64_t n = bytes / 4;
  static Input* in = nullptr;  // largest input, shared by all cases
  if (in == nullptr || in->f.size() < n) {
    delete in;
    in = new Input(n);
  }
  const CodecSpec s = spec_for(id, n);
  const DType dt = s.type == CodecType::kBitPack ? DType::kInt32 : DType::kFloat32;
  const void* src = dt == DType::kInt32 ? static_cast<const void*>(in->i.data()) : in->f.data();
  std::vector<uint8_t> enc(codec::encoded_size(s, dt, n));
  std::vector<float> out(n);
  codec::encode(s, dt, src, n, enc.data(), "x", nullptr, threads);
  for (auto _ : state) {
    if (decode_side) {
      codec::decode(s, dt, enc.data(), enc.size(), n, out.data(), "x", threads);
    } else {
      codec::encode(s, dt, src, n, enc.data(), "x", nullptr, threads);
    }
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes));
  state.SetLabel(std::string(kNames[id]) + (threads == 1 ? " 1 thread" : " all threads"));
}

void BM_CodecEncode(benchmark::State& state) { run(state, false); }
void BM_CodecDecode(benchmark::State& state) { run(state, true); }

void args(benchmark::internal::Benchmark* b) {
  for (int id = 0; id < 9; ++id)
    for (int64_t size : {int64_t{1} << 20, int64_t{64} << 20})
      for (int64_t threads : {1, 0}) b->Args({id, size, threads});
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}

BENCHMARK(BM_CodecEncode)->Apply(args);
BENCHMARK(BM_CodecDecode)->Apply(args);

}  // namespace
