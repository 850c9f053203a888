#pragma once
// AdminWorker: one thread that runs the admin listener's blocking work (a revocation's
// write to etcd or the store) off the admin HTTP server's poll thread, one job at a time,
// in the order posted. Jobs answer their requests through an HttpResponder.
//
// Thread-safety: Post() from any thread; Start()/Stop() from the controlling thread.

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

namespace iris::server {

class AdminWorker {
 public:
  // At most `max_queued` jobs wait at once (the admin server's connection cap bounds them
  // anyway); Post() refuses more.
  explicit AdminWorker(size_t max_queued = 64) : max_queued_(max_queued) {}
  ~AdminWorker() { Stop(); }
  AdminWorker(const AdminWorker&) = delete;
  AdminWorker& operator=(const AdminWorker&) = delete;

  void Start();
  // Queues `job`; false (the job is dropped) when the queue is full or the worker stopped.
  bool Post(std::function<void()> job);
  // Finishes the job running now, drops the queued ones (destroying them, so their
  // responders are never completed: the HTTP server answers those itself) and joins.
  // Idempotent.
  void Stop();

 private:
  void Run();

  const size_t max_queued_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;  // guarded by mu_
  bool started_ = false;                    // guarded by mu_
  bool stopping_ = false;                   // guarded by mu_
  std::thread thread_;
};

}  // namespace iris::server
