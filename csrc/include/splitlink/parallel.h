// A small persistent thread pool for data-parallel loops (copies, codecs, ciphers, PSI).
//
// parallel_for(n, fn) runs fn(i) for i in [0, n) on up to num_threads() threads, the calling
// thread included, and returns when all are done. The first exception thrown by any fn(i) is
// rethrown in the caller after every task has finished. Workers are created once, on first use.
#pragma once

#include <cstddef>
#include <functional>

namespace splitlink {

// Threads used by parallel_for when a call does not say: SPLITLINK_NUM_THREADS if set, else the
// number of CPUs this process may run on.
unsigned default_num_threads();
void set_default_num_threads(unsigned n);  // 0 restores the automatic value

// Runs fn(0..n-1). `max_threads` = 0 means default_num_threads(). Tasks are claimed dynamically,
// so uneven tasks balance.
void parallel_for(size_t n, const std::function<void(size_t)>& fn, unsigned max_threads = 0);

}  // namespace splitlink
