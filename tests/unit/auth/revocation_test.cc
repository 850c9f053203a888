#include "auth/revocation.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "auth/jwt.h"

namespace iris::auth {
namespace {

Claims Token(uint64_t user, int64_t iat_s, std::string jti) {
  Claims c;
  c.user_id = user;
  c.iat = iat_s;
  c.exp = iat_s + 3600;
  c.jti = std::move(jti);
  return c;
}

constexpr int64_t kNowMs = 1'700'000'000'000;

// "w<writer>-<i>" (snprintf rather than string concatenation, which trips GCC 12's
// -Wrestrict false positive at -O3).
std::string JtiName(int writer, int i) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "w%d-%d", writer, i);
  return buf;
}

TEST(RevocationListTest, RevokesByJti) {
  RevocationList r;
  EXPECT_FALSE(r.IsRevoked(Token(1, 1'700'000'000, "a")));
  r.RevokeJti("a", kNowMs + kJtiRetentionMs);
  EXPECT_TRUE(r.IsRevoked(Token(1, 1'700'000'000, "a")));
  EXPECT_TRUE(r.IsRevoked(Token(2, 1'600'000'000, "a")));  // jti alone decides
  EXPECT_FALSE(r.IsRevoked(Token(1, 1'700'000'000, "b")));
}

TEST(RevocationListTest, RevokesUserTokensIssuedBeforeTime) {
  RevocationList r;
  r.RevokeUserBefore(7, 1'700'000'000'500);
  EXPECT_TRUE(r.IsRevoked(Token(7, 1'700'000'000, "a")));    // 1'700'000'000'000 < ...500
  EXPECT_FALSE(r.IsRevoked(Token(7, 1'700'000'001, "b")));   // issued after
  EXPECT_FALSE(r.IsRevoked(Token(8, 1'600'000'000, "c")));   // another user
  r.RevokeUserBefore(9, 1'700'000'000'000);
  EXPECT_FALSE(r.IsRevoked(Token(9, 1'700'000'000, "d")));   // iat * 1000 == before: kept
  EXPECT_TRUE(r.IsRevoked(Token(9, 1'699'999'999, "e")));
}

TEST(RevocationListTest, UserCutOffOnlyMovesForward) {
  RevocationList r;
  r.RevokeUserBefore(7, 2'000'000'000'000);
  const uint64_t g = r.generation();
  r.RevokeUserBefore(7, 1'000'000'000'000);  // earlier: no effect
  EXPECT_EQ(r.generation(), g);
  EXPECT_TRUE(r.IsRevoked(Token(7, 1'500'000'000, "a")));
}

TEST(RevocationListTest, GenerationChangesOnEveryNewRevocation) {
  RevocationList r;
  const uint64_t g0 = r.generation();
  r.RevokeJti("a", kNowMs + 1000);
  const uint64_t g1 = r.generation();
  EXPECT_GT(g1, g0);
  r.RevokeJti("a", kNowMs + 500);  // not later: nothing changes
  EXPECT_EQ(r.generation(), g1);
  r.RevokeJti("a", kNowMs + 2000);  // extended
  const uint64_t g2 = r.generation();
  EXPECT_GT(g2, g1);
  r.RevokeUserBefore(3, kNowMs);
  EXPECT_GT(r.generation(), g2);
}

TEST(RevocationListTest, PruneForgetsExpiredJtisAndKeepsUsers) {
  RevocationList r;
  r.RevokeJti("old", kNowMs + 1000);
  r.RevokeJti("new", kNowMs + 5000);
  r.RevokeUserBefore(3, kNowMs);
  const uint64_t g = r.generation();
  r.Prune(kNowMs + 1000);  // until_ms == now is kept
  EXPECT_EQ(r.jti_count(), 2u);
  r.Prune(kNowMs + 1001);
  EXPECT_EQ(r.jti_count(), 1u);
  EXPECT_FALSE(r.IsRevoked(Token(1, 1'700'000'000, "old")));
  EXPECT_TRUE(r.IsRevoked(Token(1, 1'700'000'000, "new")));
  r.Prune(kNowMs + 10 * kJtiRetentionMs);
  EXPECT_EQ(r.jti_count(), 0u);
  EXPECT_EQ(r.user_count(), 1u);
  EXPECT_TRUE(r.IsRevoked(Token(3, 1'600'000'000, "x")));
  EXPECT_EQ(r.generation(), g);  // pruning revokes nothing new
}

TEST(RevocationListTest, ClampsHandMadeExtremeIat) {
  RevocationList r;
  r.RevokeUserBefore(1, INT64_MAX);
  Claims c = Token(1, 0, "a");
  c.iat = INT64_MAX;
  EXPECT_TRUE(r.IsRevoked(c));  // no overflow: clamped, still before the cut-off
  c.iat = INT64_MIN;
  EXPECT_TRUE(r.IsRevoked(c));
}

TEST(RevocationListTest, ConcurrentRevokeAndCheck) {
  RevocationList r;
  constexpr int kWriters = 2;
  constexpr int kPerWriter = 2000;
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> reads{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < kWriters; ++w) {
    threads.emplace_back([&r, w] {
      for (int i = 0; i < kPerWriter; ++i) {
        r.RevokeJti(JtiName(w, i), kNowMs + i);
        if (i % 100 == 0) r.RevokeUserBefore(static_cast<uint64_t>(w * 100000 + i), kNowMs);
        if (i % 500 == 0) r.Prune(kNowMs - 1);  // prunes nothing (all until >= kNowMs)
      }
    });
  }
  // Readers: a revocation, once seen, must stay seen (entries are only pruned by time).
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&r, &stop, &reads] {
      Claims c = Token(1, 1'700'000'000, "w0-0");
      bool seen = false;
      do {
        const bool now = r.IsRevoked(c);
        EXPECT_FALSE(seen && !now);
        seen = seen || now;
        (void)r.generation();
        reads.fetch_add(1);
      } while (!stop.load());
    });
  }
  for (int w = 0; w < kWriters; ++w) threads[static_cast<size_t>(w)].join();
  stop.store(true);
  for (size_t t = kWriters; t < threads.size(); ++t) threads[t].join();
  EXPECT_EQ(r.jti_count(), static_cast<size_t>(kWriters * kPerWriter));
  EXPECT_EQ(r.user_count(), static_cast<size_t>(kWriters * kPerWriter / 100));
  EXPECT_GE(r.generation(), static_cast<uint64_t>(kWriters * kPerWriter));
  for (int w = 0; w < kWriters; ++w) {
    for (int i = 0; i < kPerWriter; i += 97) {
      EXPECT_TRUE(r.IsRevoked(Token(5, 1, JtiName(w, i))));
    }
  }
  EXPECT_GT(reads.load(), 0u);
}

}  // namespace
}  // namespace iris::auth
