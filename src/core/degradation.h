#pragma once
// DegradationController: graceful degradation under overload (RFC-001 §7.4). A pressure
// signal (1.0 = at capacity; e.g. event-loop lag over its budget, store write latency over
// its budget) drives a level:
//   0  normal
//   1  typing indicators shed
//   2  ... and presence updates shed
//   3  ... and read receipts shed
// Message delivery, SEND_ACK and sync are never shed. The level rises at once when pressure
// rises and falls one step at a time only after pressure stayed below the lower threshold for
// `recover_ms` (hysteresis), so it does not flap. A forced level (configuration, tests)
// overrides the signal.
//
// Thread-safety: Update() from one thread (a ticker); level() and the Shed*() queries from any.

#include <atomic>
#include <cstdint>

namespace iris::core {

class DegradationController {
 public:
  struct Options {
    int forced_level = -1;       // -1: follow the signal
    int64_t recover_ms = 5'000;  // time below threshold before stepping down
  };
  explicit DegradationController(Options o) : options_(o) {
    if (o.forced_level >= 0) level_.store(o.forced_level > 3 ? 3 : o.forced_level);
  }

  // Returns true when the level changed.
  bool Update(double pressure, int64_t now_ms);
  int level() const { return level_.load(std::memory_order_relaxed); }
  bool ShedTyping() const { return level() >= 1; }
  bool ShedPresence() const { return level() >= 2; }
  bool ShedReadReceipts() const { return level() >= 3; }

  // The level a pressure asks for: < 1 → 0, [1, 1.5) → 1, [1.5, 2) → 2, ≥ 2 → 3.
  static int TargetLevel(double pressure);

 private:
  Options options_;
  std::atomic<int> level_{0};
  int64_t below_since_ms_ = -1;
};

}  // namespace iris::core
