// Frame encode/decode microbenchmarks at 4 KiB, 1 MiB and 64 MiB, steady state (buffers reused).
// Reports GB/s of tensor bytes; run with --benchmark_repetitions=N for median and p90.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "splitlink/buffer.h"
#include "splitlink/wire/frame.h"

namespace {

using namespace splitlink;

struct Fixture {
  std::vector<float> data;
  std::vector<wire::TensorInput> inputs;
  wire::FrameMeta meta;

  explicit Fixture(size_t bytes) : data(bytes / sizeof(float)) {
    for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<float>(i % 1000) * 0.5f;
    wire::TensorInput t;
    t.path = {"activations"};
    t.dtype = DType::kFloat32;
    t.shape = {static_cast<int64_t>(data.size())};
    t.data = reinterpret_cast<const uint8_t*>(data.data());
    t.nbytes = bytes;
    inputs.push_back(t);
    meta.sender = "leader";
    meta.kind = "forward";
  }
};

void BM_Encode(benchmark::State& state) {
  Fixture f(static_cast<size_t>(state.range(0)));
  const auto layout = wire::FrameLayout::plan(f.meta, f.inputs);
  AlignedBuffer out(layout.size());
  std::memset(out.data(), 0, layout.size());  // steady state: the buffer is already mapped
  for (auto _ : state) {
    const auto l = wire::FrameLayout::plan(f.meta, f.inputs);
    l.write(f.meta, f.inputs, out.data(), out.capacity());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * state.range(0));
}

void BM_Decode(benchmark::State& state) {
  Fixture f(static_cast<size_t>(state.range(0)));
  const auto layout = wire::FrameLayout::plan(f.meta, f.inputs);
  AlignedBuffer out(layout.size());
  layout.write(f.meta, f.inputs, out.data(), out.capacity());
  for (auto _ : state) {
    auto h = wire::decode_header(out.data(), layout.size());
    benchmark::DoNotOptimize(h);
  }
  // Decoding is header-only (tensors view the buffer), so "bytes" here are bytes made available.
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * state.range(0));
}

void BM_Memcpy(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  std::vector<uint8_t> src(n, 1), dst(n, 0);
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), n);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * state.range(0));
}

double p90(const std::vector<double>& v) {
  std::vector<double> s(v);
  std::sort(s.begin(), s.end());
  return s[std::min(s.size() - 1, static_cast<size_t>(0.9 * static_cast<double>(s.size())))];
}

#define SIZES Arg(4 << 10)->Arg(1 << 20)->Arg(64 << 20)->UseRealTime()->ComputeStatistics("p90", p90)
BENCHMARK(BM_Memcpy)->SIZES;
BENCHMARK(BM_Encode)->SIZES;
BENCHMARK(BM_Decode)->SIZES;

}  // namespace
