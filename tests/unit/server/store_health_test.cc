// StoreHealthWatch: disk-full entered and left, other write errors counted, once each.

#include "server/store_health.h"

#include <gtest/gtest.h>

namespace iris::server {
namespace {

using Counters = StoreHealthWatch::Counters;

TEST(StoreHealthWatchTest, FullIsEnteredOnceAndLeftAtTheFirstSuccessfulWrite) {
  StoreHealthWatch w;
  auto e = w.Observe(Counters{10, 0, 0});
  EXPECT_FALSE(e.entered_full || e.left_full);
  e = w.Observe(Counters{10, 3, 3});  // three writes failed: disk full
  EXPECT_TRUE(e.entered_full);
  EXPECT_EQ(e.full_errors, 3u);
  EXPECT_EQ(e.other_errors, 0u);
  EXPECT_TRUE(w.full());
  e = w.Observe(Counters{10, 5, 5});  // still full: no second "entered"
  EXPECT_FALSE(e.entered_full);
  EXPECT_FALSE(e.left_full);
  e = w.Observe(Counters{10, 5, 5});  // quiet: nothing written, still full
  EXPECT_FALSE(e.left_full);
  EXPECT_TRUE(w.full());
  e = w.Observe(Counters{11, 5, 5});  // a write succeeded
  EXPECT_TRUE(e.left_full);
  EXPECT_FALSE(w.full());
  e = w.Observe(Counters{12, 5, 5});
  EXPECT_FALSE(e.left_full);  // once
}

TEST(StoreHealthWatchTest, OtherWriteErrorsAreCountedApartFromDiskFull) {
  StoreHealthWatch w;
  auto e = w.Observe(Counters{1, 4, 1});
  EXPECT_EQ(e.other_errors, 3u);
  EXPECT_EQ(e.full_errors, 1u);
  EXPECT_TRUE(e.entered_full);
  e = w.Observe(Counters{1, 6, 1});
  EXPECT_EQ(e.other_errors, 2u);
  EXPECT_FALSE(e.entered_full);
}

TEST(StoreHealthWatchTest, SuccessInTheSameIntervalAsAFullErrorStaysFull) {
  StoreHealthWatch w;
  auto e = w.Observe(Counters{5, 1, 1});
  EXPECT_TRUE(e.entered_full);
  e = w.Observe(Counters{6, 2, 2});  // order unknown within the interval
  EXPECT_FALSE(e.left_full);
  EXPECT_TRUE(w.full());
  e = w.Observe(Counters{7, 2, 2});
  EXPECT_TRUE(e.left_full);
}

}  // namespace
}  // namespace iris::server
