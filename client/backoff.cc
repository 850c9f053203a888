#include "client/backoff.h"

#include <algorithm>

namespace iris::client {

uint32_t Backoff::DelayMs(uint32_t attempt, uint32_t retry_after_ms) {
  const uint64_t initial = std::max<uint32_t>(policy_.initial_ms, 1);
  const uint64_t cap = std::max<uint64_t>(policy_.max_ms, initial);
  const uint64_t d = attempt >= 32 ? cap : std::min<uint64_t>(cap, initial << attempt);
  std::uniform_int_distribution<uint64_t> jitter(0, d / 2);
  const uint64_t wait = d - d / 2 + jitter(rng_);
  return static_cast<uint32_t>(std::max<uint64_t>(wait, retry_after_ms));
}

}  // namespace iris::client
