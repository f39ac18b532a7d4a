#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>
#include <vector>

#include "splitlink/memcopy.h"
#include "splitlink/parallel.h"

namespace splitlink {
namespace {

TEST(ParallelFor, RunsEveryIndexExactlyOnce) {
  for (unsigned threads : {1u, 2u, 4u}) {
    std::vector<std::atomic<int>> hits(1000);
    parallel_for(hits.size(), [&](size_t i) { hits[i].fetch_add(1); }, threads);
    for (auto& h : hits) ASSERT_EQ(h.load(), 1);
  }
}

TEST(ParallelFor, RethrowsTheFirstErrorAfterAllTasksFinish) {
  std::atomic<int> ran{0};
  EXPECT_THROW(parallel_for(
                   64,
                   [&](size_t i) {
                     ran.fetch_add(1);
                     if (i % 7 == 3) throw std::runtime_error("boom");
                   },
                   2),
               std::runtime_error);
  EXPECT_EQ(ran.load(), 64);
}

TEST(ParallelFor, NestedCallsComplete) {
  std::atomic<int> total{0};
  parallel_for(8, [&](size_t) { parallel_for(8, [&](size_t) { total.fetch_add(1); }, 2); }, 2);
  EXPECT_EQ(total.load(), 64);
}

TEST(StreamCopy, CopiesEverySizeAndAlignment) {
  std::vector<uint8_t> src((1 << 20) + 300), dst(src.size() + 64);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint8_t>(i * 31 + 7);
  for (size_t n : {size_t{0}, size_t{1}, size_t{63}, size_t{300000}, src.size() - 5}) {
    for (size_t shift : {0, 1, 13}) {
      std::fill(dst.begin(), dst.end(), 0);
      stream_copy(dst.data() + shift, src.data() + 5, n);
      ASSERT_TRUE(std::equal(src.begin() + 5, src.begin() + 5 + static_cast<std::ptrdiff_t>(n),
                             dst.begin() + static_cast<std::ptrdiff_t>(shift)));
      ASSERT_EQ(dst[shift + n], 0);
    }
  }
}

}  // namespace
}  // namespace splitlink
