// HybridLogicalClock (common/hlc.h, RFC-001 section 5.4).

#include "common/hlc.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

#include "common/clock.h"

namespace iris {
namespace {

constexpr int64_t kT0 = 1'700'000'000'000;

TEST(HlcIdTest, LayoutIs48BitMillisThen8BitLogicalThen8BitNode) {
  constexpr uint64_t id = MakeHlcId(0x0123456789ab, 0xcd, 0xef);
  static_assert(id == 0x0123456789abcdefULL);
  const HlcParts p = SplitHlcId(id);
  EXPECT_EQ(p.millis, 0x0123456789abULL);
  EXPECT_EQ(p.logical, 0xcdu);
  EXPECT_EQ(p.node, 0xefu);
  // Out-of-range logical and node values are masked to 8 bits, never spill into millis.
  EXPECT_EQ(MakeHlcId(1, 0x1ff, 0x2fe), MakeHlcId(1, 0xff, 0xfe));
  // Numeric order of ids is (millis, logical, node) order.
  EXPECT_LT(MakeHlcId(5, 255, 255), MakeHlcId(6, 0, 0));
  EXPECT_LT(MakeHlcId(5, 3, 255), MakeHlcId(5, 4, 0));
}

TEST(HlcTest, FirstIdUsesWallClockAndNodeId) {
  ManualClock clock(kT0);
  HybridLogicalClock hlc(clock, 7);
  EXPECT_EQ(hlc.node_id(), 7);
  EXPECT_EQ(hlc.Last(), 0u);
  const uint64_t id = hlc.Next();
  EXPECT_EQ(id, MakeHlcId(kT0, 0, 7));
  EXPECT_EQ(hlc.Last(), id);
}

TEST(HlcTest, SameMillisecondCountsLogicalUp) {
  ManualClock clock(kT0);
  HybridLogicalClock hlc(clock, 1);
  for (uint32_t i = 0; i < 10; ++i) {
    const HlcParts p = SplitHlcId(hlc.Next());
    EXPECT_EQ(p.millis, static_cast<uint64_t>(kT0));
    EXPECT_EQ(p.logical, i);
    EXPECT_EQ(p.node, 1u);
  }
}

TEST(HlcTest, NextRangeTakesConsecutiveIdsAboveEveryEarlierOne) {
  ManualClock clock(kT0);
  HybridLogicalClock hlc(clock, 3);
  const uint64_t before = hlc.Next();
  // 300 ids in one millisecond: the logical part overflows into the next millisecond.
  const uint64_t first = hlc.NextRange(300);
  EXPECT_GT(first, before);
  EXPECT_EQ(first, HlcIdAfter(before, 1));
  const uint64_t last = HlcIdAfter(first, 299);
  EXPECT_EQ(SplitHlcId(last).node, 3u);
  EXPECT_EQ(SplitHlcId(last).millis, static_cast<uint64_t>(kT0) + 1);
  EXPECT_EQ(hlc.Last(), last);
  EXPECT_EQ(hlc.Next(), HlcIdAfter(last, 1));
  // A range of one is Next().
  EXPECT_EQ(hlc.NextRange(1), HlcIdAfter(last, 2));
}

TEST(HlcTest, NewMillisecondResetsLogical) {
  ManualClock clock(kT0);
  HybridLogicalClock hlc(clock, 1);
  hlc.Next();
  hlc.Next();
  clock.AdvanceMillis(1);
  EXPECT_EQ(hlc.Next(), MakeHlcId(kT0 + 1, 0, 1));
  clock.AdvanceMillis(1000);
  EXPECT_EQ(hlc.Next(), MakeHlcId(kT0 + 1001, 0, 1));
}

TEST(HlcTest, StrictlyIncreasingWhenWallClockStepsBackwards) {
  ManualClock clock(kT0);
  HybridLogicalClock hlc(clock, 3);
  const uint64_t before = hlc.Next();
  clock.SetWallMillis(kT0 - 60'000);  // NTP step one minute back
  uint64_t prev = before;
  for (int i = 0; i < 5; ++i) {
    const uint64_t id = hlc.Next();
    EXPECT_GT(id, prev);
    // The clock keeps its last millisecond and counts the logical part up.
    EXPECT_EQ(SplitHlcId(id).millis, static_cast<uint64_t>(kT0));
    EXPECT_EQ(SplitHlcId(id).logical, static_cast<uint32_t>(i + 1));
    prev = id;
  }
  // Once the wall clock is past the last millisecond again, it is followed.
  clock.SetWallMillis(kT0 + 5);
  EXPECT_EQ(hlc.Next(), MakeHlcId(kT0 + 5, 0, 3));
}

TEST(HlcTest, LogicalOverflowBorrowsTheNextMillisecond) {
  ManualClock clock(kT0);
  HybridLogicalClock hlc(clock, 9);
  uint64_t prev = 0;
  for (uint32_t i = 0; i < 256; ++i) {
    const uint64_t id = hlc.Next();
    EXPECT_EQ(id, MakeHlcId(kT0, i, 9));
    EXPECT_GT(id, prev);
    prev = id;
  }
  // The 257th id within one wall millisecond borrows the next millisecond.
  const uint64_t borrowed = hlc.Next();
  EXPECT_EQ(borrowed, MakeHlcId(kT0 + 1, 0, 9));
  EXPECT_EQ(hlc.Next(), MakeHlcId(kT0 + 1, 1, 9));
  // When the wall reaches the borrowed millisecond the clock continues after it.
  clock.AdvanceMillis(1);
  EXPECT_EQ(hlc.Next(), MakeHlcId(kT0 + 1, 2, 9));
  clock.AdvanceMillis(1);
  EXPECT_EQ(hlc.Next(), MakeHlcId(kT0 + 2, 0, 9));
}

TEST(HlcTest, ObserveMakesLaterIdsGreater) {
  ManualClock clock(kT0);
  HybridLogicalClock hlc(clock, 1);
  hlc.Next();
  // A remote id 5 s ahead, with a larger node id than ours.
  const uint64_t remote = MakeHlcId(kT0 + 5'000, 17, 200);
  EXPECT_TRUE(hlc.Observe(remote));
  const uint64_t next = hlc.Next();
  EXPECT_GT(next, remote);
  EXPECT_EQ(next, MakeHlcId(kT0 + 5'000, 18, 1));
  EXPECT_EQ(hlc.SkewRejections(), 0u);
}

TEST(HlcTest, ObserveOfSameStateWithHigherNodeStillOrdersAfter) {
  ManualClock clock(kT0);
  HybridLogicalClock hlc(clock, 1);
  const uint64_t local = hlc.Next();  // (kT0, 0, 1)
  const uint64_t remote = MakeHlcId(kT0, 0, 255);
  ASSERT_GT(remote, local);
  EXPECT_TRUE(hlc.Observe(remote));
  EXPECT_GT(hlc.Next(), remote);
}

TEST(HlcTest, ObserveOfOlderIdChangesNothing) {
  ManualClock clock(kT0);
  HybridLogicalClock hlc(clock, 1);
  hlc.Next();
  hlc.Next();
  const uint64_t last = hlc.Last();
  EXPECT_TRUE(hlc.Observe(MakeHlcId(kT0 - 10'000, 5, 2)));
  EXPECT_EQ(hlc.Last(), last);
  EXPECT_EQ(hlc.Next(), MakeHlcId(kT0, 2, 1));
}

TEST(HlcTest, ObserveAcceptsSkewUpToThirtySeconds) {
  ManualClock clock(kT0);
  HybridLogicalClock hlc(clock, 1);
  const uint64_t remote = MakeHlcId(kT0 + 30'000, 255, 4);
  EXPECT_TRUE(hlc.Observe(remote));
  EXPECT_EQ(hlc.SkewRejections(), 0u);
  EXPECT_GT(hlc.Next(), remote);
}

TEST(HlcTest, ObserveRejectsAndCountsSkewBeyondThirtySeconds) {
  ManualClock clock(kT0);
  HybridLogicalClock hlc(clock, 1);
  const uint64_t before = hlc.Next();
  EXPECT_FALSE(hlc.Observe(MakeHlcId(kT0 + 30'001, 0, 4)));
  EXPECT_EQ(hlc.SkewRejections(), 1u);
  EXPECT_FALSE(hlc.Observe(MakeHlcId(kT0 + 3'600'000, 0, 4)));
  EXPECT_EQ(hlc.SkewRejections(), 2u);
  EXPECT_FALSE(hlc.Observe(~0ULL));
  EXPECT_EQ(hlc.SkewRejections(), 3u);
  // Not merged: the clock was not dragged into the future.
  EXPECT_EQ(hlc.Last(), before);
  EXPECT_EQ(hlc.Next(), MakeHlcId(kT0, 1, 1));
  // Skew is measured against the local wall clock at the time of the observe.
  clock.AdvanceMillis(2);
  EXPECT_TRUE(hlc.Observe(MakeHlcId(kT0 + 30'001, 0, 4)));
  EXPECT_EQ(hlc.SkewRejections(), 3u);
}

TEST(HlcTest, SkewBoundIsConfigurable) {
  ManualClock clock(kT0);
  HybridLogicalClock hlc(clock, 1, /*max_skew_ms=*/100);
  EXPECT_TRUE(hlc.Observe(MakeHlcId(kT0 + 100, 0, 2)));
  EXPECT_FALSE(hlc.Observe(MakeHlcId(kT0 + 101, 0, 2)));
  EXPECT_EQ(hlc.SkewRejections(), 1u);
  EXPECT_EQ(HybridLogicalClock::kDefaultMaxSkewMillis, 30'000);
}

TEST(HlcTest, RestoreMakesLaterIdsGreaterThanHighWater) {
  ManualClock clock(kT0);
  // A previous incarnation wrote ids up to 10 s ahead of our (stepped back) clock.
  const uint64_t high_water = MakeHlcId(kT0 + 10'000, 42, 5);
  HybridLogicalClock hlc(clock, 5);
  hlc.Restore(high_water);
  EXPECT_EQ(hlc.Last(), high_water);
  const uint64_t next = hlc.Next();
  EXPECT_GT(next, high_water);
  EXPECT_EQ(next, MakeHlcId(kT0 + 10'000, 43, 5));
}

TEST(HlcTest, RestoreNeverMovesTheClockBack) {
  ManualClock clock(kT0);
  HybridLogicalClock hlc(clock, 5);
  hlc.Next();
  const uint64_t last = hlc.Next();
  hlc.Restore(MakeHlcId(kT0 - 1, 200, 5));
  EXPECT_EQ(hlc.Last(), last);
  EXPECT_GT(hlc.Next(), last);
  hlc.Restore(0);
  EXPECT_GT(hlc.Next(), last);
}

TEST(HlcTest, RestoreIsNotSubjectToSkewBound) {
  // Restore trusts the persisted high-water mark (our own ids), however far ahead.
  ManualClock clock(kT0);
  HybridLogicalClock hlc(clock, 5);
  const uint64_t high_water = MakeHlcId(kT0 + 86'400'000, 0, 5);
  hlc.Restore(high_water);
  EXPECT_GT(hlc.Next(), high_water);
  EXPECT_EQ(hlc.SkewRejections(), 0u);
}

TEST(HlcTest, WallClockBeforeEpochIsTreatedAsZero) {
  ManualClock clock(-1000);
  HybridLogicalClock hlc(clock, 2);
  const uint64_t a = hlc.Next();
  const uint64_t b = hlc.Next();
  EXPECT_EQ(SplitHlcId(a).millis, 0u);
  EXPECT_EQ(SplitHlcId(b).millis, 0u);
  EXPECT_EQ(SplitHlcId(a).node, 2u);
  EXPECT_GT(b, a);
}

TEST(HlcTest, ConcurrentNextIsUniqueAndPerThreadIncreasing) {
  ManualClock clock(kT0);
  HybridLogicalClock hlc(clock, 1);
  constexpr int kThreads = 4;
  constexpr int kPerThread = 20'000;
  std::vector<std::vector<uint64_t>> ids(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      ids[t].reserve(kPerThread);
      for (int i = 0; i < kPerThread; ++i) {
        if (t == 0 && i % 1000 == 0) clock.AdvanceMillis(1);
        ids[t].push_back(hlc.Next());
      }
    });
  }
  for (auto& th : threads) th.join();
  std::vector<uint64_t> all;
  for (const auto& v : ids) {
    EXPECT_TRUE(std::is_sorted(v.begin(), v.end()));
    EXPECT_EQ(std::adjacent_find(v.begin(), v.end()), v.end());
    all.insert(all.end(), v.begin(), v.end());
  }
  std::sort(all.begin(), all.end());
  EXPECT_EQ(std::adjacent_find(all.begin(), all.end()), all.end());
  EXPECT_EQ(hlc.Last(), all.back());
}

}  // namespace
}  // namespace iris
