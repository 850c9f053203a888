#pragma once
// An in-process network for replication tests: every message is delivered by one thread
// after a seeded random delay of 0..max_delay_ms, so messages overtake each other and a
// killed sender's last messages may reach no one (as on a real network; the replication
// protocol tolerates loss, delay and reordering).

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <utility>

#include "common/clock.h"

namespace iris::cluster::testing {

template <typename Message>
class DelayedLink {
 public:
  // `deliver` runs on the link's thread, one message at a time.
  DelayedLink(uint32_t seed, int64_t max_delay_ms, std::function<void(Message)> deliver)
      : rng_(seed), max_delay_ms_(max_delay_ms), deliver_(std::move(deliver)) {
    thread_ = std::thread([this] { Run(); });
  }
  ~DelayedLink() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  DelayedLink(const DelayedLink&) = delete;
  DelayedLink& operator=(const DelayedLink&) = delete;

  void Send(Message m) {
    std::lock_guard<std::mutex> lock(mu_);
    const int64_t at = SystemClock::Instance().MonoMillis() +
                       static_cast<int64_t>(rng_() % static_cast<uint64_t>(max_delay_ms_ + 1));
    queue_.emplace(std::make_pair(at, seq_++), std::move(m));
    cv_.notify_one();
  }

 private:
  void Run() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
      if (queue_.empty()) {
        cv_.wait(lock);
        continue;
      }
      const int64_t now = SystemClock::Instance().MonoMillis();
      auto first = queue_.begin();
      if (first->first.first > now) {
        cv_.wait_for(lock, std::chrono::milliseconds(first->first.first - now));
        continue;
      }
      Message m = std::move(first->second);
      queue_.erase(first);
      lock.unlock();
      deliver_(std::move(m));
      lock.lock();
    }
  }

  std::mt19937_64 rng_;
  const int64_t max_delay_ms_;
  std::function<void(Message)> deliver_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::pair<int64_t, uint64_t>, Message> queue_;
  uint64_t seq_ = 0;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace iris::cluster::testing
