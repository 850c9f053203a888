#pragma once
// Hybrid Logical Clock message ids (RFC-001 section 5.4, PROTOCOL.md section 3):
//
//   id = (unix_ms << 16) | (logical << 8) | node_id      48 + 8 + 8 bits
//
// Guarantees of one HybridLogicalClock:
//  - Next() is strictly increasing, also when the wall clock steps backwards (the clock
//    keeps its last millisecond and counts the logical part up).
//  - When the logical counter would pass 255 within one millisecond, the clock borrows the
//    next millisecond (logical 0), running slightly ahead of the wall until it catches up.
//  - Observe(remote) merges a received id: every later Next() is greater than it (causality),
//    unless the remote's physical part is more than max_skew ahead of the local wall clock.
//    Such an id is REJECTED, not clamped: it is not merged (the local clock is never dragged
//    far into the future by one peer with a wrong clock), Observe returns false and the
//    rejection is counted (SkewRejections()). Callers treat that as a peer fault.
//  - Restore(high_water) after a restart makes every later id greater than high_water; the
//    store persists the last id it wrote, so ids keep increasing across restarts.
//
// Thread-safety: all methods may be called concurrently (lock-free compare-and-swap).

#include <atomic>
#include <cstdint>

#include "common/clock.h"

namespace iris {

struct HlcParts {
  uint64_t millis;
  uint32_t logical;
  uint32_t node;
};

constexpr uint64_t MakeHlcId(uint64_t millis, uint32_t logical, uint32_t node) {
  return (millis << 16) | (static_cast<uint64_t>(logical & 0xff) << 8) | (node & 0xff);
}
// The id k steps of one clock after `id` (same node; logical overflow carries into millis).
constexpr uint64_t HlcIdAfter(uint64_t id, uint32_t k) {
  return id + (static_cast<uint64_t>(k) << 8);
}
constexpr HlcParts SplitHlcId(uint64_t id) {
  return {id >> 16, static_cast<uint32_t>((id >> 8) & 0xff), static_cast<uint32_t>(id & 0xff)};
}

class HybridLogicalClock {
 public:
  static constexpr int64_t kDefaultMaxSkewMillis = 30'000;

  // `clock` must outlive this object. node_id must fit in 8 bits.
  HybridLogicalClock(const Clock& clock, uint8_t node_id,
                     int64_t max_skew_ms = kDefaultMaxSkewMillis);

  // A new id, greater than every id returned or observed (or restored) before.
  uint64_t Next();

  // The first of n >= 1 ids taken at once: the k-th (from 0) is HlcIdAfter(first, k), and
  // every one of them is greater than all ids before. The copies of one multi-device SEND
  // get their ids this way, so SEND_ACK can name each copy's id (also for a duplicate).
  uint64_t NextRange(uint32_t n);

  // Merges a remote id (see the class comment). Returns false when rejected for skew.
  bool Observe(uint64_t remote_id);

  // Makes later ids greater than `high_water` (an id persisted before a restart).
  void Restore(uint64_t high_water);

  // The greatest id issued, observed or restored so far (0 when none).
  uint64_t Last() const;

  uint8_t node_id() const { return node_id_; }
  uint64_t SkewRejections() const { return skew_rejections_.load(std::memory_order_relaxed); }

 private:
  // state_ holds (millis << 8 | logical) of the last id: the id without its node byte.
  const Clock& clock_;
  const uint8_t node_id_;
  const int64_t max_skew_ms_;
  std::atomic<uint64_t> state_{0};
  std::atomic<uint64_t> skew_rejections_{0};
};

}  // namespace iris
