#include "net/event_loop.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "common/assert.h"
#include "common/clock.h"

namespace iris::net {
namespace {
// Marker handler for the wake-up eventfd.
class WakeHandler final : public EventLoop::Handler {
 public:
  void OnEvents(uint32_t) override {}
};
WakeHandler g_wake;
}  // namespace

EventLoop::EventLoop() : scratch_(64 * 1024 + 1024) {}

EventLoop::~EventLoop() {
  if (wakefd_ >= 0) close(wakefd_);
  if (epfd_ >= 0) close(epfd_);
}

Status EventLoop::Init() {
  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epfd_ < 0) return Internal(std::string("epoll_create1: ") + strerror(errno));
  wakefd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wakefd_ < 0) return Internal(std::string("eventfd: ") + strerror(errno));
  return Add(wakefd_, EPOLLIN, &g_wake);
}

Status EventLoop::Add(int fd, uint32_t events, Handler* h) {
  epoll_event ev{};
  ev.events = events;
  ev.data.ptr = h;
  if (epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
    return Internal(std::string("epoll_ctl add: ") + strerror(errno));
  }
  return Status::Ok();
}

Status EventLoop::Modify(int fd, uint32_t events, Handler* h) {
  epoll_event ev{};
  ev.events = events;
  ev.data.ptr = h;
  if (epoll_ctl(epfd_, EPOLL_CTL_MOD, fd, &ev) != 0) {
    return Internal(std::string("epoll_ctl mod: ") + strerror(errno));
  }
  return Status::Ok();
}

void EventLoop::CancelFlush(Handler* h) {
  for (Handler*& f : flush_) {
    if (f == h) f = nullptr;
  }
}

void EventLoop::Remove(int fd) { epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, nullptr); }

void EventLoop::Post(std::function<void()> fn) {
  bool wake;
  {
    std::lock_guard<std::mutex> lock(mu_);
    wake = posted_.empty();
    posted_.push_back(std::move(fn));
  }
  if (wake) {
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = write(wakefd_, &one, sizeof(one));
  }
}

void EventLoop::Stop() {
  stop_.store(true);
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = write(wakefd_, &one, sizeof(one));
}

void EventLoop::DrainPosted() {
  std::vector<std::function<void()>> batch;
  {
    std::lock_guard<std::mutex> lock(mu_);
    batch.swap(posted_);
  }
  for (auto& fn : batch) fn();
}

void EventLoop::Run() {
  running_.store(true);
  // This thread must never wait for the disk or another process from here on.
  SetLoopThread(true);
  constexpr int kMaxEvents = 256;
  epoll_event events[kMaxEvents];
  const Clock& clock = SystemClock::Instance();
  int64_t next_tick = clock.MonoMillis() + kTickMillis;
  while (!stop_.load(std::memory_order_relaxed)) {
    int64_t now = clock.MonoMillis();
    const int timeout = static_cast<int>(std::max<int64_t>(0, next_tick - now));
    const int n = epoll_wait(epfd_, events, kMaxEvents, timeout);
    const int64_t busy_start = clock.MonoNanos();
    for (int i = 0; i < n; ++i) {
      auto* h = static_cast<Handler*>(events[i].data.ptr);
      if (h == &g_wake) {
        uint64_t v;
        [[maybe_unused]] ssize_t r = read(wakefd_, &v, sizeof(v));
        continue;
      }
      h->OnEvents(events[i].events);
    }
    DrainPosted();
    now = clock.MonoMillis();
    if (now >= next_tick) {
      for (auto& t : tickers_) t();
      next_tick = now + kTickMillis;
    }
    while (!deferred_.empty() || !flush_.empty()) {
      std::vector<std::function<void()>> d;
      d.swap(deferred_);
      for (auto& fn : d) fn();
      // One at a time: a flush may cancel another's (a connection closing another).
      for (size_t i = 0; i < flush_.size(); ++i) {
        Handler* h = flush_[i];
        if (h != nullptr) h->OnFlush();
      }
      flush_.clear();
    }
    const int64_t busy = clock.MonoNanos() - busy_start;
    // Exponentially decaying maximum: recent spikes show, old ones fade.
    const int64_t prev = lag_ns_.load(std::memory_order_relaxed);
    lag_ns_.store(std::max(busy, prev - prev / 16), std::memory_order_relaxed);
  }
  DrainPosted();
  SetLoopThread(false);
  running_.store(false);
}

}  // namespace iris::net
