#include "core/degradation.h"

namespace iris::core {

int DegradationController::TargetLevel(double pressure) {
  if (pressure >= 2.0) return 3;
  if (pressure >= 1.5) return 2;
  if (pressure >= 1.0) return 1;
  return 0;
}

bool DegradationController::Update(double pressure, int64_t now_ms) {
  if (options_.forced_level >= 0) return false;
  const int current = level();
  const int target = TargetLevel(pressure);
  if (target > current) {
    level_.store(target);
    below_since_ms_ = -1;
    return true;
  }
  // Step down only when pressure is clearly (30%) below the current level's threshold.
  const double threshold[] = {0.0, 1.0, 1.5, 2.0};
  if (current > 0 && pressure < threshold[current] * 0.7) {
    if (below_since_ms_ < 0) below_since_ms_ = now_ms;
    if (now_ms - below_since_ms_ >= options_.recover_ms) {
      level_.store(current - 1);
      below_since_ms_ = now_ms;  // the next step needs another full period
      return true;
    }
  } else {
    below_since_ms_ = -1;
  }
  return false;
}

}  // namespace iris::core
