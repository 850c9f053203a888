#pragma once
// WorkerPool: a fixed set of threads that run the core's blocking work (RocksDB reads, and
// writes that wait for the group commit's fdatasync) off the event loops. Jobs run in FIFO
// order of submission, several at a time (one per thread), so a job must not assume it runs
// after an earlier one has finished.
//
// Why a pool and not the store's own threads: the commit thread must stay a pure batch
// builder (a read there would delay every append of the node), and Scan/History/GetGroup
// reads and the prekey read-modify-write are blocking calls on RocksDB that need a thread
// to wait on. Writes issued from a worker still share one sync with everything else in
// the group commit, so N workers waiting on a sync cost one fdatasync, not N.
//
// Thread-safety: Submit from any thread. Stop() (also run by the destructor) runs every job
// already queued, then joins; jobs submitted after Stop() run inline on the caller.

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace iris::core {

class WorkerPool {
 public:
  // `threads` >= 1; `name` is the threads' name prefix (at most 10 characters).
  WorkerPool(size_t threads, const char* name);
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  void Submit(std::function<void()> job);
  // Like Submit, but jobs with the same `key` (modulo kOrderStripes) run one at a time in
  // submission order: for read-modify-writes of one user's records (settings, prekeys)
  // whose outcome must follow the order the client sent them in.
  void SubmitOrdered(uint64_t key, std::function<void()> job);
  void Stop();
  // Jobs queued and not yet started (metrics, tests).
  size_t queued() const;

 private:
  static constexpr size_t kOrderStripes = 64;
  struct Stripe {
    bool busy = false;                          // a job of this stripe is queued or running
    std::deque<std::function<void()>> waiting;  // behind it, in order
  };
  void Loop();
  // Queues `job` of stripe `i` to run, then the stripe's next waiting job. mu_ held.
  void QueueStripeJobLocked(size_t i, std::function<void()> job);

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  bool stopping_ = false;
  Stripe stripes_[kOrderStripes];
  std::vector<std::thread> threads_;
};

}  // namespace iris::core
