#pragma once
// Injectable time source (LevelDB's Env, Envoy's TimeSource). Logic takes a Clock& so
// tests can drive time by hand; production uses SystemClock.
//
// Thread-safety: every method of every Clock here may be called from any thread.

#include <atomic>
#include <cstdint>

namespace iris {

class Clock {
 public:
  virtual ~Clock() = default;
  // Wall-clock time, milliseconds since the Unix epoch. May step backwards.
  virtual int64_t WallMillis() const = 0;
  // Monotonic time in nanoseconds from an arbitrary origin. Never decreases.
  virtual int64_t MonoNanos() const = 0;

  int64_t MonoMillis() const { return MonoNanos() / 1'000'000; }
};

// The real clocks: CLOCK_REALTIME and CLOCK_MONOTONIC.
class SystemClock final : public Clock {
 public:
  int64_t WallMillis() const override;
  int64_t MonoNanos() const override;
  // A process-wide instance.
  static SystemClock& Instance();
};

// A clock moved only by the test. Wall time may be set to any value (including backwards);
// monotonic time only advances.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(int64_t wall_ms = 1'700'000'000'000, int64_t mono_ns = 1'000'000'000)
      : wall_ms_(wall_ms), mono_ns_(mono_ns) {}

  int64_t WallMillis() const override { return wall_ms_.load(std::memory_order_relaxed); }
  int64_t MonoNanos() const override { return mono_ns_.load(std::memory_order_relaxed); }

  void SetWallMillis(int64_t ms) { wall_ms_.store(ms, std::memory_order_relaxed); }
  // Advances both clocks by the same amount.
  void AdvanceMillis(int64_t ms) {
    wall_ms_.fetch_add(ms, std::memory_order_relaxed);
    mono_ns_.fetch_add(ms * 1'000'000, std::memory_order_relaxed);
  }

 private:
  std::atomic<int64_t> wall_ms_;
  std::atomic<int64_t> mono_ns_;
};

}  // namespace iris
