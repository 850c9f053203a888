#pragma once
// Waiting helpers for the cluster tests: poll an observable condition until a deadline.

#include <chrono>
#include <functional>
#include <thread>

#include "common/clock.h"

namespace iris::testing {

// True once `cond` holds; false at the deadline. Polls every 20 ms (a poll interval, not a
// synchronisation by sleeping).
inline bool WaitFor(const std::function<bool()>& cond, int timeout_ms = 15'000) {
  const int64_t deadline = SystemClock::Instance().MonoMillis() + timeout_ms;
  while (SystemClock::Instance().MonoMillis() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return cond();
}

}  // namespace iris::testing
