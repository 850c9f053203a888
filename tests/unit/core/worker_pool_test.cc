// core::WorkerPool: the threads that take blocking store work off the event loops.
#include "core/worker_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <random>
#include <vector>

namespace iris::core {
namespace {

// Jobs with the same key run one at a time, in submission order, even with many threads
// and keys that share a stripe.
TEST(WorkerPoolTest, OrderedJobsOfOneKeyRunInSubmissionOrderOneAtATime) {
  std::mt19937_64 rng(20261205);
  std::mutex mu;
  std::map<uint64_t, std::vector<int>> seen;
  std::map<uint64_t, int> running;
  std::atomic<int> overlaps{0};
  {
    WorkerPool pool(8, "test");
    for (int i = 0; i < 20'000; ++i) {
      const uint64_t key = rng() % 200;
      pool.SubmitOrdered(key, [&, key, i] {
        {
          std::lock_guard<std::mutex> lock(mu);
          if (++running[key] > 1) overlaps.fetch_add(1);
          seen[key].push_back(i);
        }
        std::lock_guard<std::mutex> lock(mu);
        --running[key];
      });
    }
  }  // the destructor drains every queued job
  EXPECT_EQ(overlaps.load(), 0);
  size_t total = 0;
  for (const auto& [key, order] : seen) {
    total += order.size();
    for (size_t j = 1; j < order.size(); ++j) {
      ASSERT_LT(order[j - 1], order[j]) << "key " << key << " ran out of order";
    }
  }
  EXPECT_EQ(total, 20'000u);
}

// A job blocked on one key does not hold up other keys (other stripes) or plain jobs.
TEST(WorkerPoolTest, ABlockedKeyDoesNotBlockOthers) {
  WorkerPool pool(2, "test");
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  bool other_ran = false;
  pool.SubmitOrdered(1, [&] {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return release; });
  });
  pool.SubmitOrdered(2, [&] {
    std::lock_guard<std::mutex> lock(mu);
    other_ran = true;
    cv.notify_all();
  });
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(10), [&] { return other_ran; }));
    release = true;
  }
  cv.notify_all();
}

// After Stop, jobs run inline on the caller: a completion is never lost.
TEST(WorkerPoolTest, JobsAfterStopRunInline) {
  WorkerPool pool(1, "test");
  pool.Stop();
  int ran = 0;
  pool.Submit([&] { ++ran; });
  pool.SubmitOrdered(7, [&] { ++ran; });
  EXPECT_EQ(ran, 2);
}

}  // namespace
}  // namespace iris::core
