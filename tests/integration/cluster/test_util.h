#pragma once
// Waiting helpers for the cluster tests: poll an observable condition until a deadline.

#include <functional>

#include "support/wait_for.h"

namespace iris::testing {

// True once `cond` holds; false at the deadline. Polls every 20 ms (most checks read etcd).
inline bool WaitFor(const std::function<bool()>& cond, int timeout_ms = 15'000) {
  return PollUntil(cond, timeout_ms, 20);
}

}  // namespace iris::testing
