#pragma once
// Jittered exponential backoff ("equal jitter"): attempt n waits a uniformly random time in
// [d/2, d] with d = min(max_ms, initial_ms * 2^n); a server-given retry_after_ms is a lower
// bound. Seeded, so tests can reproduce a sequence.
//
// Thread-safety: none; one owner.

#include <cstdint>
#include <random>

#include "iris/client/client.h"

namespace iris::client {

class Backoff {
 public:
  Backoff(const BackoffPolicy& policy, uint64_t seed) : policy_(policy), rng_(seed) {}
  uint32_t DelayMs(uint32_t attempt, uint32_t retry_after_ms = 0);

 private:
  BackoffPolicy policy_;
  std::mt19937_64 rng_;
};

}  // namespace iris::client
