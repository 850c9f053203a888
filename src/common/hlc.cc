#include "common/hlc.h"

#include <algorithm>

namespace iris {

HybridLogicalClock::HybridLogicalClock(const Clock& clock, uint8_t node_id, int64_t max_skew_ms)
    : clock_(clock), node_id_(node_id), max_skew_ms_(max_skew_ms) {}

uint64_t HybridLogicalClock::Next() {
  const int64_t wall = std::max<int64_t>(0, clock_.WallMillis());
  const uint64_t wall_state = static_cast<uint64_t>(wall) << 8;  // logical 0
  uint64_t prev = state_.load(std::memory_order_relaxed);
  uint64_t next;
  do {
    // Either the wall clock moved past the last millisecond (logical restarts at 0), or we
    // count up from the last state; a logical overflow carries into the millisecond bits,
    // which is exactly "borrow the next millisecond".
    next = std::max(wall_state, prev + 1);
  } while (!state_.compare_exchange_weak(prev, next, std::memory_order_acq_rel,
                                         std::memory_order_relaxed));
  return (next << 8) | node_id_;
}

uint64_t HybridLogicalClock::NextRange(uint32_t n) {
  const int64_t wall = std::max<int64_t>(0, clock_.WallMillis());
  const uint64_t wall_state = static_cast<uint64_t>(wall) << 8;
  const uint64_t extra = n > 1 ? n - 1 : 0;
  uint64_t prev = state_.load(std::memory_order_relaxed);
  uint64_t first;
  do {
    first = std::max(wall_state, prev + 1);
  } while (!state_.compare_exchange_weak(prev, first + extra, std::memory_order_acq_rel,
                                         std::memory_order_relaxed));
  return (first << 8) | node_id_;
}

bool HybridLogicalClock::Observe(uint64_t remote_id) {
  const HlcParts r = SplitHlcId(remote_id);
  const int64_t wall = clock_.WallMillis();
  if (static_cast<int64_t>(r.millis) > wall + max_skew_ms_) {
    skew_rejections_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  const uint64_t remote_state = remote_id >> 8;
  uint64_t prev = state_.load(std::memory_order_relaxed);
  while (prev < remote_state &&
         !state_.compare_exchange_weak(prev, remote_state, std::memory_order_acq_rel,
                                       std::memory_order_relaxed)) {
  }
  return true;
}

void HybridLogicalClock::Restore(uint64_t high_water) {
  const uint64_t s = high_water >> 8;
  uint64_t prev = state_.load(std::memory_order_relaxed);
  while (prev < s && !state_.compare_exchange_weak(prev, s, std::memory_order_acq_rel,
                                                   std::memory_order_relaxed)) {
  }
}

uint64_t HybridLogicalClock::Last() const {
  const uint64_t s = state_.load(std::memory_order_acquire);
  return s == 0 ? 0 : (s << 8) | node_id_;
}

}  // namespace iris
