#include "client/backoff.h"

#include <gtest/gtest.h>

namespace iris::client {
namespace {

TEST(BackoffTest, GrowsExponentiallyWithinJitterBoundsAndCaps) {
  const uint64_t seed = 42;
  Backoff b(BackoffPolicy{100, 3000}, seed);
  for (uint32_t attempt = 0; attempt < 40; ++attempt) {
    const uint64_t d = std::min<uint64_t>(3000, attempt >= 32 ? 3000 : uint64_t{100} << attempt);
    const uint32_t got = b.DelayMs(attempt);
    EXPECT_GE(got, d - d / 2) << "attempt " << attempt << " seed " << seed;
    EXPECT_LE(got, d) << "attempt " << attempt << " seed " << seed;
  }
}

TEST(BackoffTest, HonoursRetryAfterAsLowerBound) {
  Backoff b(BackoffPolicy{100, 3000}, 7);
  EXPECT_EQ(b.DelayMs(0, 10'000), 10'000u);
}

TEST(BackoffTest, JitterVariesAndIsReproducibleFromSeed) {
  Backoff a(BackoffPolicy{1000, 60'000}, 99), c(BackoffPolicy{1000, 60'000}, 99);
  std::set<uint32_t> seen;
  for (int i = 0; i < 20; ++i) {
    const uint32_t x = a.DelayMs(5);
    EXPECT_EQ(x, c.DelayMs(5));
    seen.insert(x);
  }
  EXPECT_GT(seen.size(), 5u);
}

}  // namespace
}  // namespace iris::client
