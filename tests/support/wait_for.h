#pragma once
// Waiting in tests: poll an observable condition until a deadline (RFC-001 §13.2: never
// sleep to synchronise). The poll interval only paces the checks.

#include <chrono>
#include <cstdint>
#include <functional>
#include <thread>

namespace iris::testing {

// True once `cond` holds; false when it still does not hold at the deadline. `poll_ms`
// paces the checks (raise it when a check is a network round trip).
inline bool PollUntil(const std::function<bool()>& cond, int64_t timeout_ms = 20'000,
                    int64_t poll_ms = 2) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (!cond()) {
    if (std::chrono::steady_clock::now() > deadline) return cond();
    std::this_thread::sleep_for(std::chrono::milliseconds(poll_ms));
  }
  return true;
}

}  // namespace iris::testing
