// ManualClock and SystemClock (common/clock.h).

#include "common/clock.h"

#include <gtest/gtest.h>

namespace iris {
namespace {

TEST(ManualClockTest, StartsAtGivenTimes) {
  ManualClock c(1234, 5'000'000'000);
  EXPECT_EQ(c.WallMillis(), 1234);
  EXPECT_EQ(c.MonoNanos(), 5'000'000'000);
  EXPECT_EQ(c.MonoMillis(), 5000);
}

TEST(ManualClockTest, DefaultsArePlausible) {
  ManualClock c;
  EXPECT_EQ(c.WallMillis(), 1'700'000'000'000);
  EXPECT_EQ(c.MonoNanos(), 1'000'000'000);
}

TEST(ManualClockTest, AdvanceMovesBothClocks) {
  ManualClock c(1000, 0);
  c.AdvanceMillis(250);
  EXPECT_EQ(c.WallMillis(), 1250);
  EXPECT_EQ(c.MonoNanos(), 250'000'000);
  EXPECT_EQ(c.MonoMillis(), 250);
  c.AdvanceMillis(0);
  EXPECT_EQ(c.WallMillis(), 1250);
  EXPECT_EQ(c.MonoMillis(), 250);
}

TEST(ManualClockTest, WallMayStepBackwardsWhileMonotonicStays) {
  ManualClock c(10'000, 7'000'000);
  c.SetWallMillis(3'000);
  EXPECT_EQ(c.WallMillis(), 3'000);
  EXPECT_EQ(c.MonoNanos(), 7'000'000);
  c.SetWallMillis(-5);  // before the epoch: allowed for a manual clock
  EXPECT_EQ(c.WallMillis(), -5);
  EXPECT_EQ(c.MonoNanos(), 7'000'000);
}

TEST(ManualClockTest, UsableThroughTheInterface) {
  ManualClock manual(42, 0);
  const Clock& clock = manual;
  manual.AdvanceMillis(8);
  EXPECT_EQ(clock.WallMillis(), 50);
  EXPECT_EQ(clock.MonoMillis(), 8);
}

TEST(SystemClockTest, WallIsAfter2023AndMonotonicNeverDecreases) {
  SystemClock& c = SystemClock::Instance();
  EXPECT_EQ(&c, &SystemClock::Instance());
  EXPECT_GT(c.WallMillis(), 1'672'531'200'000);  // 2023-01-01
  int64_t prev = c.MonoNanos();
  for (int i = 0; i < 10'000; ++i) {
    const int64_t now = c.MonoNanos();
    ASSERT_GE(now, prev);
    prev = now;
  }
}

}  // namespace
}  // namespace iris
