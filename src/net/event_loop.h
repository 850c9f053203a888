#pragma once
// EventLoop: one epoll reactor per thread (DESIGN.md section 2, "one event loop per core").
//
// Concurrency model: every method except Post(), Stop() and the constructor must be called on
// the loop's own thread (the thread running Run()). Post() is how other threads (the store's
// sync thread, core workers, link I/O threads, other loops, the admin thread) hand work to a
// loop: the closure runs on the loop thread, in the order posted. Handlers are not owned by the loop.

#include <sys/epoll.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"

namespace iris::net {

class EventLoop {
 public:
  class Handler {
   public:
    virtual ~Handler() = default;
    // `events` is the epoll mask (EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP, EPOLLRDHUP).
    virtual void OnEvents(uint32_t events) = 0;
    // Called once per ScheduleFlush(), at the end of the loop turn.
    virtual void OnFlush() {}
  };

  EventLoop();
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  Status Init();
  // Runs until Stop(). Calls tickers about every tick_ms.
  void Run();
  // Thread-safe. Run() returns after the current iteration.
  void Stop();
  // Thread-safe. `fn` runs on the loop thread.
  void Post(std::function<void()> fn);

  Status Add(int fd, uint32_t events, Handler* h);
  Status Modify(int fd, uint32_t events, Handler* h);
  void Remove(int fd);

  // Called on the loop thread roughly every tick (100 ms), e.g. to expire idle sessions.
  void AddTicker(std::function<void()> fn) { tickers_.push_back(std::move(fn)); }
  // Runs `fn` after the current batch of events (deferred destruction of connections).
  void Defer(std::function<void()> fn) { deferred_.push_back(std::move(fn)); }
  // Calls h->OnFlush() at the end of this loop turn, after its events, posted closures,
  // tickers and deferred work: output produced anywhere in one turn leaves in one write.
  // A handler destroyed before then must CancelFlush() itself first.
  void ScheduleFlush(Handler* h) { flush_.push_back(h); }
  void CancelFlush(Handler* h);

  // A read buffer shared by every connection of this loop (loop thread only): connections
  // decrypt into it and never keep per-connection read buffers while idle.
  std::span<uint8_t> scratch() { return {scratch_.data(), scratch_.size()}; }
  // A buffer shared by every connection of this loop (loop thread only) to seal outgoing
  // records into; a connection copies out only what the socket did not take.
  std::string& seal_buffer() { return seal_; }

  bool running() const { return running_.load(std::memory_order_relaxed); }
  // Approximate loop lag: the longest time one iteration's work took recently (ns).
  int64_t recent_lag_ns() const { return lag_ns_.load(std::memory_order_relaxed); }

  static constexpr int kTickMillis = 100;

 private:
  void DrainPosted();

  int epfd_ = -1;
  int wakefd_ = -1;
  std::atomic<bool> running_{false};
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::vector<std::function<void()>> posted_;
  std::vector<std::function<void()>> tickers_;
  std::vector<std::function<void()>> deferred_;
  std::vector<Handler*> flush_;
  std::vector<uint8_t> scratch_;
  std::string seal_;
  std::atomic<int64_t> lag_ns_{0};
};

}  // namespace iris::net
