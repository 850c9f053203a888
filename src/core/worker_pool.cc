#include "core/worker_pool.h"

#include <pthread.h>

#include <string>

namespace iris::core {

WorkerPool::WorkerPool(size_t threads, const char* name) {
  if (threads == 0) threads = 1;
  threads_.reserve(threads);
  for (size_t i = 0; i < threads; ++i) {
    threads_.emplace_back([this] { Loop(); });
    const std::string n = std::string(name) + "-" + std::to_string(i);
    pthread_setname_np(threads_.back().native_handle(), n.substr(0, 15).c_str());
  }
}

WorkerPool::~WorkerPool() { Stop(); }

void WorkerPool::Submit(std::function<void()> job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopping_) {
      jobs_.push_back(std::move(job));
      cv_.notify_one();
      return;
    }
  }
  job();  // stopped: nobody else will run it, and its completion must still happen
}

void WorkerPool::SubmitOrdered(uint64_t key, std::function<void()> job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopping_) {
      Stripe& s = stripes_[key % kOrderStripes];
      if (s.busy) {
        s.waiting.push_back(std::move(job));
      } else {
        s.busy = true;
        QueueStripeJobLocked(key % kOrderStripes, std::move(job));
      }
      return;
    }
  }
  job();
}

void WorkerPool::QueueStripeJobLocked(size_t i, std::function<void()> job) {
  jobs_.push_back([this, i, job = std::move(job)] {
    job();
    std::lock_guard<std::mutex> lock(mu_);
    Stripe& s = stripes_[i];
    if (s.waiting.empty()) {
      s.busy = false;
      return;
    }
    std::function<void()> next = std::move(s.waiting.front());
    s.waiting.pop_front();
    QueueStripeJobLocked(i, std::move(next));  // even while stopping: Loop drains jobs_
  });
  cv_.notify_one();
}

void WorkerPool::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  cv_.notify_all();
  for (std::thread& t : threads_) {
    if (t.joinable()) t.join();
  }
}

size_t WorkerPool::queued() const {
  std::lock_guard<std::mutex> lock(mu_);
  return jobs_.size();
}

void WorkerPool::Loop() {
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !jobs_.empty(); });
      if (jobs_.empty()) return;  // stopping and drained
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    job();
  }
}

}  // namespace iris::core
