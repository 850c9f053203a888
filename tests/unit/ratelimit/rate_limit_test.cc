#include "edge/rate_limit.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace iris::edge {
namespace {

constexpr int64_t kMs = 1'000'000;
constexpr int64_t kSec = 1'000'000'000;
constexpr int64_t kT0 = 1'000 * kSec;  // an arbitrary monotonic origin
constexpr uint64_t kSeed = 12345;      // hash seed: fixed so shard placement is reproducible

// --- TokenBucket -----------------------------------------------------------------------

TEST(TokenBucketTest, IsSixteenBytes) { EXPECT_EQ(sizeof(TokenBucket), 16u); }

TEST(TokenBucketTest, StartsFullAndAllowsCapacityAtOnce) {
  TokenBucket b(5, 10);
  EXPECT_TRUE(b.IsFull(kT0));
  EXPECT_DOUBLE_EQ(b.Available(kT0), 10);
  for (int i = 0; i < 10; ++i) EXPECT_TRUE(b.TryTake(kT0, nullptr)) << i;
  uint32_t retry = 0;
  EXPECT_FALSE(b.TryTake(kT0, &retry));
  EXPECT_EQ(retry, 200u);  // one token every 200 ms
  EXPECT_NEAR(b.Available(kT0), 0, 1e-9);
  EXPECT_FALSE(b.IsFull(kT0));
}

TEST(TokenBucketTest, RefillsAtTheRate) {
  TokenBucket b(5, 1);
  ASSERT_TRUE(b.TryTake(kT0, nullptr));
  uint32_t retry = 0;
  EXPECT_FALSE(b.TryTake(kT0 + 199 * kMs, &retry));
  EXPECT_EQ(retry, 1u);
  EXPECT_TRUE(b.TryTake(kT0 + 200 * kMs, nullptr));
  EXPECT_FALSE(b.TryTake(kT0 + 200 * kMs, nullptr));
}

TEST(TokenBucketTest, RetryAfterRoundsUpToWholeMilliseconds) {
  TokenBucket b(5, 1);
  ASSERT_TRUE(b.TryTake(kT0, nullptr));
  uint32_t retry = 0;
  EXPECT_FALSE(b.TryTake(kT0 + 49'500'000, &retry));  // 150.5 ms left
  EXPECT_EQ(retry, 151u);
  EXPECT_EQ(b.WaitNanos(kT0 + 49'500'000), 150'500'000);
  EXPECT_FALSE(b.TryTake(kT0 + 200 * kMs - 1, &retry));  // 1 ns left
  EXPECT_EQ(retry, 1u);
}

TEST(TokenBucketTest, NeverHoldsMoreThanCapacity) {
  TokenBucket b(5, 3);
  const int64_t later = kT0 + 3600 * kSec;
  EXPECT_DOUBLE_EQ(b.Available(later), 3);
  int taken = 0;
  while (b.TryTake(later, nullptr)) ++taken;
  EXPECT_EQ(taken, 3);
}

TEST(TokenBucketTest, FractionalRate) {
  TokenBucket b(5.0 / 60.0, 5);  // 5 per minute
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(b.TryTake(kT0, nullptr));
  uint32_t retry = 0;
  EXPECT_FALSE(b.TryTake(kT0, &retry));
  EXPECT_EQ(retry, 12'000u);
  EXPECT_FALSE(b.TryTake(kT0 + 11'999 * kMs, nullptr));
  EXPECT_TRUE(b.TryTake(kT0 + 12'000 * kMs, nullptr));
}

TEST(TokenBucketTest, LongRunRateMatches) {
  // Offered load 50/s for 100 s against 5/s with capacity 10: accepted = 10 + 5 * 100.
  TokenBucket b(5, 10);
  int accepted = 0;
  for (int64_t t = 0; t <= 100 * kSec; t += 20 * kMs) {
    if (b.TryTake(kT0 + t, nullptr)) ++accepted;
  }
  EXPECT_EQ(accepted, 10 + 5 * 100);
}

TEST(TokenBucketTest, TimeGoingBackwardsGrantsNothingEarly) {
  TokenBucket b(1, 1);
  ASSERT_TRUE(b.TryTake(kT0, nullptr));
  uint32_t retry = 0;
  EXPECT_FALSE(b.TryTake(kT0 - 10 * kSec, &retry));
  EXPECT_EQ(retry, 11'000u);
  EXPECT_TRUE(b.TryTake(kT0 + kSec, nullptr));
}

TEST(TokenBucketTest, ClampsNonsenseConfiguration) {
  TokenBucket b(0, 0);  // rate and capacity clamped to their minimums
  EXPECT_GE(b.capacity(), 1);
  EXPECT_GT(b.rate_per_sec(), 0);
  EXPECT_TRUE(b.TryTake(kT0, nullptr));
  uint32_t retry = 0;
  EXPECT_FALSE(b.TryTake(kT0, &retry));
  EXPECT_GE(retry, 999'999'000u);  // 1e-6 per second: about 11.6 days, without overflow
}

TEST(TokenBucketTest, StartsFullAtAnyClockOrigin) {
  TokenBucket b(1, 2);
  EXPECT_TRUE(b.TryTake(0, nullptr));
  TokenBucket c(1, 2);
  EXPECT_TRUE(c.TryTake(-5 * kSec, nullptr));
  EXPECT_TRUE(c.TryTake(-5 * kSec, nullptr));
  EXPECT_FALSE(c.TryTake(-5 * kSec, nullptr));
}

// --- SendRateLimiter -------------------------------------------------------------------

TEST(SendRateLimiterTest, DefaultCapacitiesFollowTheDerivation) {
  SendRateConfig c;
  EXPECT_DOUBLE_EQ(c.SustainedCapacity(), 150);  // (20 - 5) * 10
  EXPECT_DOUBLE_EQ(c.PeakCapacity(), 20);
  SendRateLimiter l(c);
  EXPECT_DOUBLE_EQ(l.sustained().rate_per_sec(), 5);
  EXPECT_DOUBLE_EQ(l.sustained().capacity(), 150);
  EXPECT_DOUBLE_EQ(l.peak().rate_per_sec(), 20);
  EXPECT_DOUBLE_EQ(l.peak().capacity(), 20);
}

TEST(SendRateLimiterTest, AllowsTwentyAtOnceThenOneEvery50Ms) {
  SendRateLimiter l;
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(l.TryTake(kT0, nullptr)) << i;
  uint32_t retry = 0;
  EXPECT_FALSE(l.TryTake(kT0, &retry));
  EXPECT_EQ(retry, 50u);
  EXPECT_FALSE(l.TryTake(kT0 + 49 * kMs, nullptr));
  EXPECT_TRUE(l.TryTake(kT0 + 50 * kMs, nullptr));
}

TEST(SendRateLimiterTest, BurstAtTwentyPerSecondLastsTenSeconds) {
  // A sender offering exactly 20/s from a rested state: the n-th send (t = n * 50 ms) finds
  // 150 + 5 t - n = 150 - 0.75 n sustained tokens, so n = 0..198 pass (199 sends, 9.9 s).
  SendRateLimiter l;
  int64_t t = kT0;
  int accepted = 0;
  while (l.TryTake(t, nullptr)) {
    ++accepted;
    t += 50 * kMs;
  }
  EXPECT_EQ(accepted, 199);
  EXPECT_EQ(t - kT0, 199 * 50 * kMs);

  // From then on the same offered load is held to 5/s sustained.
  int later = 0;
  const int64_t start = t;
  for (; t < start + 60 * kSec; t += 50 * kMs) {
    if (l.TryTake(t, nullptr)) ++later;
  }
  EXPECT_GE(later, 5 * 60 - 1);
  EXPECT_LE(later, 5 * 60 + 1);
}

TEST(SendRateLimiterTest, SustainedRateIsFivePerSecond) {
  // Offered 10/s for 200 s: 150 (the burst allowance) + 5/s.
  SendRateLimiter l;
  int accepted = 0;
  for (int64_t t = 0; t < 200 * kSec; t += 100 * kMs) {
    if (l.TryTake(kT0 + t, nullptr)) ++accepted;
  }
  EXPECT_GE(accepted, 150 + 5 * 200 - 1);
  EXPECT_LE(accepted, 150 + 5 * 200 + 1);
}

TEST(SendRateLimiterTest, RefusalTakesFromNeitherBucket) {
  SendRateLimiter l;
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(l.TryTake(kT0, nullptr));
  const double sustained_before = l.sustained().Available(kT0);
  EXPECT_FALSE(l.TryTake(kT0, nullptr));  // peak empty
  EXPECT_DOUBLE_EQ(l.sustained().Available(kT0), sustained_before);
}

TEST(SendRateLimiterTest, RetryAfterIsTheLongerOfBothWaits) {
  SendRateConfig c;
  c.sustained_per_sec = 1;
  c.burst_per_sec = 2;
  c.burst_seconds = 1;  // sustained capacity (2 - 1) * 1 = 1, peak capacity 2
  SendRateLimiter l(c);
  ASSERT_TRUE(l.TryTake(kT0, nullptr));
  uint32_t retry = 0;
  EXPECT_FALSE(l.TryTake(kT0, &retry));  // sustained empty for 1 s; peak has a token
  EXPECT_EQ(retry, 1000u);
}

TEST(SendRateLimiterTest, FullAgainAfterQuietPeriod) {
  SendRateLimiter l;
  while (l.TryTake(kT0, nullptr)) {
  }
  EXPECT_FALSE(l.IsFull(kT0));
  // 20 sustained tokens taken at 5/s refill: full after 4 s.
  EXPECT_FALSE(l.IsFull(kT0 + 4 * kSec - 1));
  EXPECT_TRUE(l.IsFull(kT0 + 4 * kSec));
  EXPECT_EQ(l.FullAtNanos(), kT0 + 4 * kSec);
}

// --- KeyedSendLimiter ------------------------------------------------------------------

TEST(KeyedSendLimiterTest, UsersHaveSeparateBudgets) {
  KeyedSendLimiter k({}, 1024, kSeed);
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(k.TryTake(1, kT0).ok());
  Status s = k.TryTake(1, kT0);
  EXPECT_EQ(s.code(), StatusCode::kRateLimited);
  EXPECT_EQ(s.retry_after_ms(), 50u);
  EXPECT_TRUE(k.TryTake(2, kT0).ok());
  EXPECT_EQ(k.size(), 2u);
}

TEST(KeyedSendLimiterTest, BudgetSurvivesReconnect) {
  // The budget is keyed by user, not by session: a "new session" of user 1 (the same
  // limiter used by another caller) is still limited.
  KeyedSendLimiter k({}, 1024, kSeed);
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(k.TryTake(1, kT0).ok());
  k.Sweep(kT0 + 10 * kMs);  // a sweep must not forget a limited user
  EXPECT_EQ(k.TryTake(1, kT0 + 10 * kMs).code(), StatusCode::kRateLimited);
}

// Cluster (issue 15): a user's debt moves between nodes' tables. Taking it leaves the user
// rested here; adding it elsewhere (another clock origin) limits the user exactly as the
// original table would have.
TEST(KeyedSendLimiterTest, DebtTakenFromOneTableLimitsTheUserInAnother) {
  KeyedSendLimiter here({}, 1024, kSeed);
  KeyedSendLimiter there({}, 1024, kSeed + 1);
  const int64_t there_t0 = 77 * kSec;  // another node's monotonic clock
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(here.TryTake(1, kT0).ok());
  const std::array<int64_t, 2> debt = here.TakeDebt(1, kT0);
  EXPECT_EQ(debt[0], 20 * 200 * kMs);      // sustained: 20 tokens at 5/s
  EXPECT_EQ(debt[1], 20 * 50 * kMs);       // peak: 20 tokens at 20/s
  EXPECT_TRUE(here.TryTake(1, kT0).ok());  // taken out: nothing owed here any more
  EXPECT_EQ(here.TakeDebt(2, kT0), (std::array<int64_t, 2>{0, 0}));  // never seen: no debt

  ASSERT_TRUE(there.AddDebt(1, there_t0, debt));
  Status s = there.TryTake(1, there_t0);
  EXPECT_EQ(s.code(), StatusCode::kRateLimited);
  EXPECT_EQ(s.retry_after_ms(), 50u);  // as the first table would have said
  EXPECT_TRUE(there.TryTake(1, there_t0 + 50 * kMs).ok());
}

TEST(KeyedSendLimiterTest, DebtsAddUp) {
  // Spent in two places (a replaced session and its successor): both count.
  KeyedSendLimiter k({}, 1024, kSeed);
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(k.TryTake(1, kT0).ok());
  ASSERT_TRUE(k.AddDebt(1, kT0, {10 * 200 * kMs, 10 * 50 * kMs}));
  EXPECT_EQ(k.TryTake(1, kT0).code(), StatusCode::kRateLimited);
}

TEST(KeyedSendLimiterTest, SweepDropsOnlyRestedUsers) {
  KeyedSendLimiter k({}, 1024, kSeed);
  ASSERT_TRUE(k.TryTake(1, kT0).ok());
  ASSERT_TRUE(k.TryTake(2, kT0 + kSec).ok());
  EXPECT_EQ(k.size(), 2u);
  // One send is refilled after 200 ms (sustained) / 50 ms (peak).
  k.Sweep(kT0 + 200 * kMs);
  EXPECT_EQ(k.size(), 1u);
  k.Sweep(kT0 + kSec + 200 * kMs);
  EXPECT_EQ(k.size(), 0u);
}

// Issue 18: KEYS_FETCH is also limited per (requester, target): a requester that asks for
// one user's bundle as often as its own budget allows (every 2 s) for an hour takes at most
// 3 + 6 of that user's one-time prekeys, and is not slowed down for other targets.
TEST(KeyedSendLimiterTest, KeysFetchPairBudgetKeepsOneRequesterFromDrainingAPool) {
  KeyedSendLimiter pair(kKeysFetchPairRate, 1024, kSeed);
  const uint64_t key = KeysFetchPairKey(7, 8);
  int at_once = 0;
  for (int i = 0; i < 10; ++i) at_once += pair.TryTake(key, kT0).ok() ? 1 : 0;
  EXPECT_EQ(at_once, 3);
  int granted = at_once;
  for (int64_t t = 2 * kSec; t < 3600 * kSec; t += 2 * kSec) {
    Status s = pair.TryTake(key, kT0 + t);
    if (s.ok()) {
      ++granted;
    } else {
      EXPECT_EQ(s.code(), StatusCode::kRateLimited);
      EXPECT_GT(s.retry_after_ms(), 0u);
    }
  }
  EXPECT_LE(granted, 3 + 6 + 1);
  EXPECT_GE(granted, 3 + 5);
  // Other pairs have their own budget (including the reverse direction).
  EXPECT_TRUE(pair.TryTake(KeysFetchPairKey(7, 9), kT0 + 3600 * kSec).ok());
  EXPECT_TRUE(pair.TryTake(KeysFetchPairKey(8, 7), kT0 + 3600 * kSec).ok());
  EXPECT_NE(KeysFetchPairKey(7, 8), KeysFetchPairKey(8, 7));
}

// Security issue 14: KEYS_FETCH is limited per requester, so one user cannot drain another
// user's one-time prekey pool: a requester that asks every 10 ms (as many as it is given
// each time) for 10 minutes gets at
// most 5 at once, at most 48 in any minute and 30 a minute in the long run.
TEST(KeyedSendLimiterTest, KeysFetchBudgetCapsPrekeysPerMinute) {
  KeyedSendLimiter k(kKeysFetchRate, 1024, kSeed);
  std::vector<int64_t> granted;
  for (int64_t t = 0; t < 600 * kSec; t += 10 * kMs) {
    for (;;) {  // as many as it will give at this instant
      Status s = k.TryTake(1, kT0 + t);
      if (!s.ok()) {
        EXPECT_EQ(s.code(), StatusCode::kRateLimited);
        EXPECT_GT(s.retry_after_ms(), 0u);
        break;
      }
      granted.push_back(t);
    }
  }
  int at_once = 0;
  for (int64_t t : granted) at_once += t == 0;
  EXPECT_EQ(at_once, 5);
  size_t max_in_minute = 0;
  for (size_t i = 0, j = 0; i < granted.size(); ++i) {
    while (granted[i] - granted[j] >= 60 * kSec) ++j;
    max_in_minute = std::max(max_in_minute, i - j + 1);
  }
  EXPECT_LE(max_in_minute, 48u);
  EXPECT_GE(max_in_minute, 40u);
  // 10 minutes: 18 burst + 30 per minute (one more for rounding).
  EXPECT_LE(granted.size(), 18u + 300u + 1u);
  EXPECT_GE(granted.size(), 300u);
  // The budget is the requester's: another requester is not affected.
  EXPECT_TRUE(k.TryTake(2, kT0 + 600 * kSec).ok());
}

TEST(KeyedSendLimiterTest, SettingsBudgetRefusesAPipelinedFlood) {
  KeyedSendLimiter k(kSettingsRate, 1024, kSeed);
  int ok = 0;
  for (int i = 0; i < 4000; ++i) ok += k.TryTake(1, kT0).ok() ? 1 : 0;
  EXPECT_EQ(ok, 5);
}

TEST(KeyedSendLimiterTest, MemoryIsBoundedAndLimitedUsersAreNeverForgotten) {
  // 32 entries in 16 shards: 2 per shard.
  KeyedSendLimiter k({}, 32, kSeed);
  int overloaded = 0;
  uint32_t overload_retry = 0;
  for (uint64_t u = 1; u <= 1000; ++u) {
    Status s = k.TryTake(u, kT0);
    if (s.code() == StatusCode::kOverloaded) {
      ++overloaded;
      overload_retry = s.retry_after_ms();
    } else {
      ASSERT_TRUE(s.ok()) << s.ToString();
    }
    ASSERT_LE(k.size(), 32u);
  }
  EXPECT_EQ(k.size(), 32u);
  EXPECT_EQ(overloaded, 1000 - 32);
  EXPECT_GE(overload_retry, 50u);   // not before the sweep interval
  EXPECT_LE(overload_retry, 200u);  // a one-send user is rested after 200 ms

  // Exhaust one tracked user; pressure from new users must not evict it.
  uint64_t tracked = 0;
  for (uint64_t u = 1; u <= 1000 && tracked == 0; ++u) {
    if (k.TryTake(u, kT0).ok()) tracked = u;  // still tracked: its take succeeds
  }
  ASSERT_NE(tracked, 0u);
  while (k.TryTake(tracked, kT0).ok()) {
  }
  for (uint64_t u = 2000; u < 3000; ++u) (void)k.TryTake(u, kT0 + 300 * kMs);
  // Other users are rested by now and were swapped for new ones; this one kept its state:
  // 300 ms refill 6 peak tokens (a forgotten user would get 20).
  int passed = 0;
  while (k.TryTake(tracked, kT0 + 300 * kMs).ok()) ++passed;
  EXPECT_EQ(passed, 6);
  EXPECT_EQ(k.TryTake(tracked, kT0 + 300 * kMs).code(), StatusCode::kRateLimited);

  // Once users rest, new users are admitted again without an explicit Sweep.
  EXPECT_TRUE(k.TryTake(5000, kT0 + 3600 * kSec).ok());
  EXPECT_LE(k.size(), 32u);
}

TEST(KeyedSendLimiterTest, ConcurrentTakesNeverExceedTheBudget) {
  KeyedSendLimiter k({}, 1024, kSeed);
  std::atomic<int> accepted_shared{0};
  std::atomic<int> accepted_own{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 100; ++i) {
        if (k.TryTake(7, kT0).ok()) accepted_shared.fetch_add(1);
        if (k.TryTake(100 + static_cast<uint64_t>(t), kT0).ok()) accepted_own.fetch_add(1);
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(accepted_shared.load(), 20);   // one user's peak capacity, shared by 4 threads
  EXPECT_EQ(accepted_own.load(), 4 * 20);  // each thread's own user
}

// --- IpAddress -------------------------------------------------------------------------

TEST(IpAddressTest, ParsesAndPrints) {
  EXPECT_EQ(IpAddress::Parse("192.0.2.1")->ToString(), "192.0.2.1");
  EXPECT_EQ(IpAddress::Parse("2001:db8::1")->ToString(), "2001:db8::1");
  EXPECT_EQ(IpAddress::Parse("[2001:db8::1]")->ToString(), "2001:db8::1");
  EXPECT_TRUE(IpAddress::Parse("192.0.2.1")->is_v4());
  EXPECT_FALSE(IpAddress::Parse("::1")->is_v4());
  EXPECT_EQ(IpAddress::Parse("::ffff:192.0.2.1"), IpAddress::Parse("192.0.2.1"));
  for (const char* bad : {"", "1.2.3", "1.2.3.256", "1.2.3.4.5", "::g", "localhost", "[::1",
                          " 1.2.3.4", "1.2.3.4 ", "fe80::1%eth0"}) {
    EXPECT_FALSE(IpAddress::Parse(bad)) << bad;
  }
}

TEST(IpAddressTest, FromSocketStructs) {
  in_addr v4{};
  ASSERT_EQ(inet_pton(AF_INET, "10.1.2.3", &v4), 1);
  EXPECT_EQ(IpAddress::FromIn4(v4), IpAddress::Parse("10.1.2.3"));
  in6_addr v6{};
  ASSERT_EQ(inet_pton(AF_INET6, "2001:db8::7", &v6), 1);
  EXPECT_EQ(IpAddress::FromIn6(v6), IpAddress::Parse("2001:db8::7"));
}

TEST(IpAddressTest, Masks) {
  EXPECT_EQ(IpAddress::Parse("2001:db8:1:2:3:4:5:6")->Masked(64).ToString(), "2001:db8:1:2::");
  EXPECT_EQ(IpAddress::Parse("2001:db8::1")->Masked(28).ToString(), "2001:db0::");
  EXPECT_EQ(IpAddress::Parse("10.1.2.3")->Masked(96 + 8).ToString(), "10.0.0.0");
  EXPECT_EQ(IpAddress::Parse("::1")->Masked(0).ToString(), "::");
  EXPECT_EQ(IpAddress::Parse("::1")->Masked(128).ToString(), "::1");
}

// --- ConnectionRateLimiter -------------------------------------------------------------

TEST(ConnectionRateLimiterTest, FiveConnectionsPerMinutePerAddress) {
  ConnectionRateLimiter c({}, kSeed);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(c.Admit("198.51.100.7", kT0).ok()) << i;
  Status s = c.Admit("198.51.100.7", kT0);
  EXPECT_EQ(s.code(), StatusCode::kRateLimited);
  EXPECT_EQ(s.retry_after_ms(), 12'000u);
  EXPECT_TRUE(c.Admit("198.51.100.8", kT0).ok());  // another address
  EXPECT_EQ(c.Admit("198.51.100.7", kT0 + 11 * kSec).code(), StatusCode::kRateLimited);
  EXPECT_TRUE(c.Admit("198.51.100.7", kT0 + 12 * kSec).ok());
  EXPECT_EQ(c.Admit("198.51.100.7", kT0 + 12 * kSec).code(), StatusCode::kRateLimited);
}

TEST(ConnectionRateLimiterTest, MappedIpv4CountsAsIpv4) {
  ConnectionRateLimiter c({}, kSeed);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(c.Admit("198.51.100.7", kT0).ok());
  EXPECT_EQ(c.Admit("::ffff:198.51.100.7", kT0).code(), StatusCode::kRateLimited);
}

TEST(ConnectionRateLimiterTest, Ipv6IsLimitedPerSlash64) {
  ConnectionRateLimiter c({}, kSeed);
  for (int i = 0; i < 5; ++i) {
    char addr[64];
    std::snprintf(addr, sizeof(addr), "2001:db8:1:2::%x", i + 1);
    ASSERT_TRUE(c.Admit(addr, kT0).ok()) << addr;
  }
  EXPECT_EQ(c.Admit("2001:db8:1:2:ffff::9", kT0).code(), StatusCode::kRateLimited);
  EXPECT_TRUE(c.Admit("2001:db8:1:3::1", kT0).ok());

  ConnectionLimitConfig per_address;
  per_address.ipv6_prefix_bits = 128;
  ConnectionRateLimiter d(per_address, kSeed);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(d.Admit("2001:db8::1", kT0).ok());
  EXPECT_TRUE(d.Admit("2001:db8::2", kT0).ok());
}

TEST(ConnectionRateLimiterTest, AllowListExemptsAddressesAndRanges) {
  ConnectionRateLimiter c({}, kSeed);
  ASSERT_TRUE(c.AllowCidr("127.0.0.0/8").ok());
  ASSERT_TRUE(c.AllowCidr("::1").ok());
  ASSERT_TRUE(c.AllowCidr("2001:db8::/32").ok());
  ASSERT_TRUE(c.AllowCidr("203.0.113.9").ok());
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(c.Admit("127.0.0.1", kT0).ok());
    ASSERT_TRUE(c.Admit("127.200.3.4", kT0).ok());
    ASSERT_TRUE(c.Admit("::1", kT0).ok());
    ASSERT_TRUE(c.Admit("2001:db8:ffff::1", kT0).ok());
    ASSERT_TRUE(c.Admit("203.0.113.9", kT0).ok());
  }
  EXPECT_EQ(c.size(), 0u);  // allow-listed addresses are not tracked
  EXPECT_TRUE(c.IsAllowListed(*IpAddress::Parse("::ffff:127.0.0.1")));
  EXPECT_FALSE(c.IsAllowListed(*IpAddress::Parse("128.0.0.1")));
  EXPECT_FALSE(c.IsAllowListed(*IpAddress::Parse("203.0.113.10")));
  EXPECT_FALSE(c.IsAllowListed(*IpAddress::Parse("2001:db9::1")));
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(c.Admit("128.0.0.1", kT0).ok());
  EXPECT_EQ(c.Admit("128.0.0.1", kT0).code(), StatusCode::kRateLimited);
}

TEST(ConnectionRateLimiterTest, AllowEverythingWithZeroPrefix) {
  ConnectionRateLimiter c({}, kSeed);
  ASSERT_TRUE(c.AllowCidr("0.0.0.0/0").ok());
  EXPECT_TRUE(c.IsAllowListed(*IpAddress::Parse("8.8.8.8")));
  EXPECT_FALSE(c.IsAllowListed(*IpAddress::Parse("2001:db8::1")));  // only IPv4
}

TEST(ConnectionRateLimiterTest, RejectsMalformedAllowListEntries) {
  ConnectionRateLimiter c({}, kSeed);
  for (const char* bad : {"1.2.3.4/33", "::1/129", "foo", "1.2.3.4/", "1.2.3.4/-1", "1.2.3.4/8x",
                          "/8", "1.2.3.0/ 24", "1.2.3.0/0024", ""}) {
    EXPECT_EQ(c.AllowCidr(bad).code(), StatusCode::kBadRequest) << bad;
  }
}

TEST(ConnectionRateLimiterTest, RejectsUnparsableAddress) {
  ConnectionRateLimiter c({}, kSeed);
  EXPECT_EQ(c.Admit("not-an-ip", kT0).code(), StatusCode::kBadRequest);
}

TEST(ConnectionRateLimiterTest, MemoryIsBoundedUnderAFloodOfAddresses) {
  ConnectionLimitConfig cfg;
  cfg.max_entries = 64;
  ConnectionRateLimiter c(cfg, kSeed);
  int admitted = 0;
  int overloaded = 0;
  for (uint32_t i = 0; i < 5000; ++i) {
    in_addr a{};
    a.s_addr = htonl(0x0A000000u + i);  // 10.0.x.y
    Status s = c.Admit(IpAddress::FromIn4(a), kT0);
    if (s.ok()) ++admitted;
    if (s.code() == StatusCode::kOverloaded) ++overloaded;
    ASSERT_LE(c.size(), 64u);
  }
  EXPECT_EQ(admitted, 64);
  EXPECT_EQ(overloaded, 5000 - 64);
  // One connection is refilled after 12 s: the table frees up on demand.
  in_addr a{};
  a.s_addr = htonl(0x0B000001u);
  EXPECT_TRUE(c.Admit(IpAddress::FromIn4(a), kT0 + 12 * kSec).ok());
  c.Sweep(kT0 + 12 * kSec);
  EXPECT_LE(c.size(), 1u);
}

TEST(ConnectionRateLimiterTest, ConcurrentAdmitsNeverExceedTheLimit) {
  ConnectionRateLimiter c({}, kSeed);
  std::atomic<int> admitted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 50; ++i) {
        if (c.Admit("192.0.2.50", kT0).ok()) admitted.fetch_add(1);
        (void)c.IsAllowListed(*IpAddress::Parse("192.0.2.50"));
      }
    });
  }
  threads.emplace_back([&] { ASSERT_TRUE(c.AllowCidr("198.51.100.0/24").ok()); });
  for (auto& th : threads) th.join();
  EXPECT_EQ(admitted.load(), 5);
}

// --- FailedLoginLimiter ----------------------------------------------------------------

std::optional<IpAddress> Ip(const char* text) { return IpAddress::Parse(text); }

// An address far from every other one used, so its failures do not limit by address.
std::optional<IpAddress> FreshIp(int i) {
  return Ip(("10.9." + std::to_string(i / 256) + "." + std::to_string(i % 256)).c_str());
}

TEST(FailedLoginLimiterTest, TenFailuresPerHourPerAccount) {
  FailedLoginLimiter f({}, kSeed);
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(f.WouldAdmitFailure(FreshIp(i), 42, kT0)) << i;
    ASSERT_TRUE(f.RecordFailure(FreshIp(i), 42, kT0).ok()) << i;
  }
  uint32_t retry = 0;
  EXPECT_FALSE(f.WouldAdmitFailure(FreshIp(10), 42, kT0, &retry));
  EXPECT_EQ(retry, 360'000u);  // one more try every 6 minutes
  Status s = f.RecordFailure(FreshIp(10), 42, kT0);
  EXPECT_EQ(s.code(), StatusCode::kRateLimited);
  EXPECT_EQ(s.retry_after_ms(), 360'000u);
  EXPECT_TRUE(f.RecordFailure(FreshIp(11), 43, kT0).ok());  // another account
  EXPECT_FALSE(f.WouldAdmitFailure(std::nullopt, 42, kT0 + 359 * kSec));
  EXPECT_TRUE(f.WouldAdmitFailure(std::nullopt, 42, kT0 + 360 * kSec));
  EXPECT_TRUE(f.RecordFailure(std::nullopt, 42, kT0 + 360 * kSec).ok());
  EXPECT_EQ(f.RecordFailure(std::nullopt, 42, kT0 + 360 * kSec).code(), StatusCode::kRateLimited);
  EXPECT_TRUE(f.WouldAdmitFailure(std::nullopt, 42, kT0 + 3600 * kSec + 360 * kSec));
}

TEST(FailedLoginLimiterTest, ThirtyFailuresPerHourPerAddress) {
  FailedLoginLimiter f({}, kSeed);
  const auto attacker = Ip("192.0.2.7");
  for (uint64_t u = 1; u <= 30; ++u) {
    ASSERT_TRUE(f.RecordFailure(attacker, u, kT0).ok()) << u;  // a new account each time
  }
  Status s = f.RecordFailure(attacker, 31, kT0);
  EXPECT_EQ(s.code(), StatusCode::kRateLimited);
  EXPECT_EQ(s.retry_after_ms(), 120'000u);  // 30 per hour: one every 2 minutes
  // Without an account either (a token whose sub cannot be read).
  EXPECT_EQ(f.RecordFailure(attacker, 0, kT0).code(), StatusCode::kRateLimited);
  // Other addresses, and the accounts the attacker named, are not limited by it.
  EXPECT_TRUE(f.RecordFailure(Ip("192.0.2.8"), 31, kT0).ok());
  EXPECT_TRUE(f.RecordFailure(Ip("198.51.100.1"), 1, kT0).ok());
  EXPECT_TRUE(f.RecordFailure(attacker, 32, kT0 + 120 * kSec).ok());
}

TEST(FailedLoginLimiterTest, Ipv6CountsPerSlash64) {
  FailedLoginConfig cfg;
  cfg.per_ip_per_hour = 2;
  FailedLoginLimiter f(cfg, kSeed);
  EXPECT_TRUE(f.RecordFailure(Ip("2001:db8:1:2::1"), 0, kT0).ok());
  EXPECT_TRUE(f.RecordFailure(Ip("2001:db8:1:2::ffff"), 0, kT0).ok());
  EXPECT_EQ(f.RecordFailure(Ip("2001:db8:1:2:abcd::9"), 0, kT0).code(), StatusCode::kRateLimited);
  EXPECT_TRUE(f.RecordFailure(Ip("2001:db8:1:3::1"), 0, kT0).ok());  // another /64
}

// Each table has its own budget: a failure refused for the address's sake is not charged to
// the account it names (and the other way round).
TEST(FailedLoginLimiterTest, ARefusedFailureIsChargedToNeitherKey) {
  FailedLoginConfig cfg;
  cfg.per_hour = 2;
  cfg.per_ip_per_hour = 2;
  FailedLoginLimiter f(cfg, kSeed);
  const auto a = Ip("203.0.113.1");
  ASSERT_TRUE(f.RecordFailure(a, 1, kT0).ok());
  ASSERT_TRUE(f.RecordFailure(a, 2, kT0).ok());
  for (int i = 0; i < 10; ++i)
    EXPECT_EQ(f.RecordFailure(a, 3, kT0).code(), StatusCode::kRateLimited);
  EXPECT_TRUE(f.RecordFailure(Ip("203.0.113.2"), 3, kT0).ok());
  EXPECT_TRUE(f.RecordFailure(Ip("203.0.113.3"), 3, kT0).ok());
  EXPECT_EQ(f.RecordFailure(Ip("203.0.113.4"), 3, kT0).code(), StatusCode::kRateLimited);
}

TEST(FailedLoginLimiterTest, FailuresWhileLimitedDoNotExtendTheLimit) {
  FailedLoginLimiter f({}, kSeed);
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(f.RecordFailure(std::nullopt, 7, kT0).ok());
  for (int i = 0; i < 100; ++i) {
    EXPECT_EQ(f.RecordFailure(std::nullopt, 7, kT0 + kSec).code(), StatusCode::kRateLimited);
  }
  EXPECT_TRUE(f.WouldAdmitFailure(std::nullopt, 7, kT0 + 360 * kSec));
}

TEST(FailedLoginLimiterTest, CheckingDoesNotTrackKeys) {
  FailedLoginLimiter f({}, kSeed);
  for (uint64_t u = 1; u < 100; ++u) EXPECT_TRUE(f.WouldAdmitFailure(FreshIp(int(u)), u, kT0));
  EXPECT_EQ(f.size(), 0u);
  ASSERT_TRUE(f.RecordFailure(Ip("192.0.2.1"), 1, kT0).ok());
  EXPECT_EQ(f.size(), 2u);  // the account and the address
  f.Sweep(kT0 + 3600 * kSec);
  EXPECT_EQ(f.size(), 0u);
}

TEST(FailedLoginLimiterTest, MemoryIsBounded) {
  FailedLoginConfig cfg;
  cfg.max_entries = 16;
  FailedLoginLimiter f(cfg, kSeed);
  for (int u = 1; u <= 1000; ++u) {
    (void)f.RecordFailure(FreshIp(u), static_cast<uint64_t>(u), kT0);
    ASSERT_LE(f.size(), 32u);
  }
  EXPECT_EQ(f.size(), 32u);
}

}  // namespace
}  // namespace iris::edge
