#include "splitlink/parallel.h"

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace splitlink {
namespace {

std::atomic<unsigned> g_override{0};

unsigned detect_threads() {
  if (const char* env = std::getenv("SPLITLINK_NUM_THREADS")) {
    const long v = std::strtol(env, nullptr, 10);
    if (v > 0 && v <= 1024) return static_cast<unsigned>(v);
  }
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return static_cast<unsigned>(n);
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

// One parallel_for call: tasks are claimed from `next` by the caller and by pool workers.
struct Job {
  size_t n = 0;
  const std::function<void(size_t)>* fn = nullptr;
  std::atomic<size_t> next{0};
  std::atomic<size_t> done{0};
  std::mutex mu;
  std::condition_variable cv;
  std::exception_ptr error;

  void run_some() {
    for (;;) {
      const size_t i = next.fetch_add(1, std::memory_order_relaxed);
      if (i >= n) return;
      try {
        (*fn)(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu);
        if (!error) error = std::current_exception();
      }
      if (done.fetch_add(1, std::memory_order_acq_rel) + 1 == n) {
        std::lock_guard<std::mutex> lock(mu);
        cv.notify_all();
      }
    }
  }
};

class Pool {
 public:
  static Pool& instance() {
    // Leaked on purpose: workers may still be parked at process exit, and joining them from a
    // static destructor after Python has finalized would deadlock.
    static Pool* pool = new Pool();
    return *pool;
  }

  // Asks up to `helpers` workers to join `job`; they leave when it has no tasks left.
  void help(Job* job, unsigned helpers) {
    ensure_workers(helpers);
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (unsigned i = 0; i < helpers; ++i) queue_.push_back(job);
    }
    if (helpers == 1) {
      cv_.notify_one();
    } else {
      cv_.notify_all();
    }
  }

  // Removes queued requests for `job` that no worker picked up (the caller finished them).
  // Returns after every worker that did pick `job` up has let go of it.
  void retire(Job* job) {
    std::unique_lock<std::mutex> lock(mu_);
    queue_.erase(std::remove(queue_.begin(), queue_.end(), job), queue_.end());
    idle_cv_.wait(lock, [&] { return std::count(active_.begin(), active_.end(), job) == 0; });
  }

 private:
  void ensure_workers(unsigned n) {
    std::lock_guard<std::mutex> lock(mu_);
    while (workers_.size() < n) {
      const size_t slot = workers_.size();
      active_.push_back(nullptr);
      workers_.emplace_back([this, slot] { loop(slot); });
      workers_.back().detach();
    }
  }

  void loop(size_t slot) {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return !queue_.empty(); });
      Job* job = queue_.front();
      queue_.pop_front();
      active_[slot] = job;
      lock.unlock();
      job->run_some();
      lock.lock();
      active_[slot] = nullptr;
      idle_cv_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable idle_cv_;
  std::deque<Job*> queue_;
  std::vector<std::thread> workers_;
  std::vector<Job*> active_;
};

}  // namespace

unsigned default_num_threads() {
  const unsigned o = g_override.load(std::memory_order_relaxed);
  if (o != 0) return o;
  static const unsigned detected = detect_threads();
  return detected;
}

void set_default_num_threads(unsigned n) { g_override.store(n, std::memory_order_relaxed); }

void parallel_for(size_t n, const std::function<void(size_t)>& fn, unsigned max_threads) {
  if (n == 0) return;
  const unsigned threads = max_threads == 0 ? default_num_threads() : max_threads;
  if (threads <= 1 || n == 1) {
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  Job job;
  job.n = n;
  job.fn = &fn;
  const unsigned helpers = static_cast<unsigned>(std::min<size_t>(threads - 1, n - 1));
  Pool& pool = Pool::instance();
  pool.help(&job, helpers);
  job.run_some();
  {
    std::unique_lock<std::mutex> lock(job.mu);
    job.cv.wait(lock, [&] { return job.done.load(std::memory_order_acquire) == n; });
  }
  pool.retire(&job);
  if (job.error) std::rethrow_exception(job.error);
}

}  // namespace splitlink
