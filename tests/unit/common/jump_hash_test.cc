// Jump consistent hash and the user -> vnode -> node mapping (common/jump_hash.h).

#include "common/jump_hash.h"

#include <gtest/gtest.h>
#include <xxhash.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <set>
#include <vector>

namespace iris {
namespace {

// The C++ code published in Lamping & Veach, "A Fast, Minimal Memory, Consistent Hash
// Algorithm" (2014), figure 1, transcribed independently of src/common/jump_hash.cc.
int32_t PaperJumpConsistentHash(uint64_t key, int32_t num_buckets) {
  int64_t b = -1, j = 0;
  while (j < num_buckets) {
    b = j;
    key = key * 2862933555777941757ULL + 1;
    j = static_cast<int64_t>((b + 1) * (double(1LL << 31) / double((key >> 33) + 1)));
  }
  return static_cast<int32_t>(b);
}

TEST(JumpHashTest, AgreesWithThePaperOnAFixedTable) {
  const uint64_t keys[] = {0,
                           1,
                           2,
                           3,
                           42,
                           255,
                           256,
                           0xDEAD10CC,
                           0x0123456789abcdefULL,
                           0x8000000000000000ULL,
                           0xfedcba9876543210ULL,
                           0xffffffffffffffffULL};
  const int32_t buckets[] = {1,   2,   3,    7,    10,    16,      57,      100,
                             255, 256, 1000, 1024, 65536, 100'001, 1 << 24, 2'147'483'647};
  for (uint64_t k : keys) {
    for (int32_t n : buckets) {
      ASSERT_EQ(JumpConsistentHash(k, n), PaperJumpConsistentHash(k, n))
          << "key " << k << " buckets " << n;
    }
  }
  // And on many pseudo-random keys (fixed seed) and bucket counts.
  std::mt19937_64 rng(20140601);
  for (int i = 0; i < 20'000; ++i) {
    const uint64_t k = rng();
    const auto n = static_cast<int32_t>(1 + rng() % (i % 2 == 0 ? 2000 : 0x7fffffff));
    ASSERT_EQ(JumpConsistentHash(k, n), PaperJumpConsistentHash(k, n))
        << "key " << k << " buckets " << n;
  }
}

// Known values published by other implementations of the paper's algorithm: the Go
// packages dgryski/go-jump and lithammer/go-jump-consistent-hash, Python
// jump-consistent-hash, and Guava's Hashing.consistentHash golden values.
TEST(JumpHashTest, MatchesPublishedKnownValues) {
  struct Known {
    uint64_t key;
    int32_t buckets;
    int32_t expected;
  };
  const Known known[] = {
      {1, 1, 0},
      {42, 57, 43},
      {0xDEAD10CC, 1, 0},
      {0xDEAD10CC, 666, 361},
      {256, 1024, 520},
      {0, 1, 0},
      {3, 1, 0},
      {0, 2, 0},
      {4, 2, 1},
      {7, 2, 0},
      {1, 128, 55},
      {129, 128, 120},
      {128, 100'000'000, 38'172'097},
      {0xffffffffffffffffULL, 128, 92},
      {static_cast<uint64_t>(-42), 57, 8},
      {10863919174838991ULL, 11, 6},
      {2016238256797177309ULL, 11, 3},
      {1673758223894951030ULL, 11, 5},
      {2, 100'001, 80'343},
      {2201, 100'001, 22'152},
      {2202, 100'001, 15'018},
  };
  for (const Known& k : known) {
    EXPECT_EQ(JumpConsistentHash(k.key, k.buckets), k.expected)
        << "key " << k.key << " buckets " << k.buckets;
    EXPECT_EQ(PaperJumpConsistentHash(k.key, k.buckets), k.expected);
  }
  // Guava's golden values for keys 0..19 over 100 buckets.
  const int32_t golden100[] = {0,  55, 62, 8,  45, 59, 86, 97, 82, 59,
                               73, 37, 17, 56, 86, 21, 90, 37, 38, 83};
  for (uint64_t key = 0; key < 20; ++key) {
    EXPECT_EQ(JumpConsistentHash(key, 100), golden100[key]) << "key " << key;
  }
}

TEST(JumpHashTest, SingleBucketIsAlwaysZero) {
  std::mt19937_64 rng(1);
  for (int i = 0; i < 1000; ++i) EXPECT_EQ(JumpConsistentHash(rng(), 1), 0);
}

// 1M keys spread evenly: every bucket within 1% of N/n for small n (there the binomial
// standard deviation is well under 1%), and a chi-square test for the vnode-sized counts.
TEST(JumpHashTest, BalancedOverOneMillionKeys) {
  constexpr int kKeys = 1'000'000;
  std::mt19937_64 rng(0x1ace);
  std::vector<uint64_t> keys(kKeys);
  for (auto& k : keys) k = rng();
  for (int32_t n : {2, 3, 5, 10}) {
    std::vector<int64_t> count(n, 0);
    for (uint64_t k : keys) ++count[JumpConsistentHash(k, n)];
    const double even = static_cast<double>(kKeys) / n;
    for (int32_t b = 0; b < n; ++b) {
      EXPECT_LE(std::abs(count[b] - even) / even, 0.01) << "n " << n << " bucket " << b;
    }
  }
  for (int32_t n : {256, 1024}) {
    std::vector<int64_t> count(n, 0);
    for (uint64_t k : keys) ++count[JumpConsistentHash(k, n)];
    const double even = static_cast<double>(kKeys) / n;
    double chi2 = 0;
    for (int64_t c : count) chi2 += (c - even) * (c - even) / even;
    // chi-square with n-1 degrees of freedom: mean n-1, sd sqrt(2(n-1)); allow 5 sd.
    EXPECT_LT(chi2, (n - 1) + 5 * std::sqrt(2.0 * (n - 1))) << "n " << n;
    const auto [lo, hi] = std::minmax_element(count.begin(), count.end());
    EXPECT_GT(*lo, even * 0.85) << "n " << n;
    EXPECT_LT(*hi, even * 1.15) << "n " << n;
  }
}

TEST(JumpHashTest, BalancedOverSequentialUserIds) {
  // The real partition key: xxh64 of small sequential user ids.
  constexpr int kUsers = 1'000'000;
  constexpr int32_t kBuckets = 4;
  std::vector<int64_t> count(kBuckets, 0);
  for (uint64_t u = 1; u <= kUsers; ++u) ++count[JumpConsistentHash(UserPartitionKey(u), kBuckets)];
  for (int64_t c : count) EXPECT_NEAR(c, kUsers / kBuckets, kUsers / kBuckets * 0.01);
}

// Growing from n to n+1 buckets moves about 1/(n+1) of the keys, all into bucket n.
TEST(JumpHashTest, GrowingMovesMinimalFractionOnlyIntoNewBucket) {
  constexpr int kKeys = 200'000;
  std::mt19937_64 rng(0x9e37);
  std::vector<uint64_t> keys(kKeys);
  for (auto& k : keys) k = rng();
  for (int32_t n : {1, 2, 3, 9, 10, 63, 100, 767, 1000}) {
    int64_t moved = 0;
    for (uint64_t k : keys) {
      const int32_t before = JumpConsistentHash(k, n);
      const int32_t after = JumpConsistentHash(k, n + 1);
      if (before != after) {
        ++moved;
        ASSERT_EQ(after, n) << "key " << k << " moved from " << before << " to an old bucket";
      }
    }
    const double p = 1.0 / (n + 1);
    const double expected = kKeys * p;
    const double sd = std::sqrt(kKeys * p * (1 - p));
    EXPECT_NEAR(static_cast<double>(moved), expected, 5 * sd + 1) << "n " << n;
  }
}

TEST(JumpHashTest, GrowingByManyBucketsNeverMovesKeysBetweenOldBuckets) {
  std::mt19937_64 rng(0xbeef);
  for (int i = 0; i < 100'000; ++i) {
    const uint64_t k = rng();
    const int32_t before = JumpConsistentHash(k, 768);
    const int32_t after = JumpConsistentHash(k, 1024);
    ASSERT_TRUE(after == before || after >= 768) << "key " << k;
  }
}

TEST(UserPartitionKeyTest, IsXxh64OfLittleEndianUserId) {
  for (uint64_t u : {0ULL, 1ULL, 42ULL, 0x0102030405060708ULL, ~0ULL}) {
    unsigned char le[8];
    for (int i = 0; i < 8; ++i) le[i] = static_cast<unsigned char>(u >> (8 * i));
    EXPECT_EQ(UserPartitionKey(u), XXH64(le, 8, 0)) << u;
  }
}

TEST(ShardMapTest, RejectsInvalidConfigurations) {
  EXPECT_EQ(ShardMap::Create({}, 256).status().code(), StatusCode::kBadRequest);
  EXPECT_EQ(ShardMap::Create({1}, 0).status().code(), StatusCode::kBadRequest);
  EXPECT_EQ(ShardMap::Create({1}, -5).status().code(), StatusCode::kBadRequest);
  EXPECT_EQ(ShardMap::Create({1, 2}, 256, 0).status().code(), StatusCode::kBadRequest);
  EXPECT_EQ(ShardMap::Create({1, 2}, 256, -1).status().code(), StatusCode::kBadRequest);
  EXPECT_EQ(ShardMap::Create({1, 2, 1}, 4).status().code(), StatusCode::kBadRequest);
  EXPECT_EQ(ShardMap::Create({7, 7, 7}, 4, 3).status().code(), StatusCode::kBadRequest);
  EXPECT_EQ(ShardMap::Create({1, 2}, (1 << 23) + 1).status().code(), StatusCode::kBadRequest);
}

TEST(ShardMapTest, ReplicaSetsAreDistinctWithPrimaryFirst) {
  const std::vector<NodeId> nodes = {10, 20, 30, 40, 50};
  constexpr int32_t kVnodesPerNode = 64;
  for (int32_t rf : {1, 2, 3, 5, 7}) {
    auto map = ShardMap::Create(nodes, kVnodesPerNode, rf);
    ASSERT_TRUE(map.ok()) << map.status().ToString();
    ASSERT_EQ(map->total_vnodes(), 5 * kVnodesPerNode);
    const size_t want = std::min<size_t>(rf, nodes.size());
    std::vector<int> primaries(nodes.size(), 0);
    std::vector<int> follower_load(nodes.size(), 0);
    for (int32_t v = 0; v < map->total_vnodes(); ++v) {
      const auto& set = map->ReplicasOf(v);
      ASSERT_EQ(set.size(), want) << "vnode " << v;
      // Primary: the node owning the block the vnode falls in.
      EXPECT_EQ(set.front(), nodes[v / kVnodesPerNode]) << "vnode " << v;
      ++primaries[v / kVnodesPerNode];
      EXPECT_EQ(std::set<NodeId>(set.begin(), set.end()).size(), set.size()) << "vnode " << v;
      for (NodeId n : set) {
        const auto it = std::find(nodes.begin(), nodes.end(), n);
        ASSERT_NE(it, nodes.end());
        if (n != set.front()) ++follower_load[it - nodes.begin()];
      }
    }
    for (int p : primaries) EXPECT_EQ(p, kVnodesPerNode);
    // Followers are spread: with rf > 1 every node follows for some vnodes.
    if (want > 1) {
      for (int f : follower_load) EXPECT_GT(f, 0) << "rf " << rf;
    }
  }
}

TEST(ShardMapTest, SingleNodeOwnsEverything) {
  auto map = ShardMap::Create({99}, 16, 3);
  ASSERT_TRUE(map.ok());
  for (int32_t v = 0; v < map->total_vnodes(); ++v) {
    EXPECT_EQ(map->ReplicasOf(v), std::vector<NodeId>{99});
  }
  for (uint64_t u = 1; u < 100; ++u) EXPECT_EQ(map->PrimaryOf(u), 99u);
}

TEST(ShardMapTest, VnodeOfIsJumpHashOfPartitionKey) {
  auto map = ShardMap::Create({1, 2, 3}, 256);
  ASSERT_TRUE(map.ok());
  for (uint64_t u = 1; u <= 1000; ++u) {
    const int32_t v = map->VnodeOf(u);
    ASSERT_GE(v, 0);
    ASSERT_LT(v, 768);
    EXPECT_EQ(v, PaperJumpConsistentHash(UserPartitionKey(u), 768));
    EXPECT_EQ(map->PrimaryOf(u), map->ReplicasOf(v).front());
  }
}

// Adding a node appends its block of vnodes: users move only onto the new vnodes (whose
// primary is the new node), about 1/(nodes+1) of them.
TEST(ShardMapTest, GrowthMovesUsersOnlyOntoNewVnodes) {
  constexpr int32_t kVnodesPerNode = 256;
  auto small = ShardMap::Create({1, 2, 3}, kVnodesPerNode);
  auto big = ShardMap::Create({1, 2, 3, 4}, kVnodesPerNode);
  ASSERT_TRUE(small.ok());
  ASSERT_TRUE(big.ok());
  constexpr int kUsers = 100'000;
  int moved = 0;
  for (uint64_t u = 1; u <= kUsers; ++u) {
    const int32_t before = small->VnodeOf(u);
    const int32_t after = big->VnodeOf(u);
    if (before == after) {
      EXPECT_EQ(small->PrimaryOf(u), big->PrimaryOf(u));
      continue;
    }
    ++moved;
    ASSERT_GE(after, small->total_vnodes()) << "user " << u << " moved between old vnodes";
    EXPECT_EQ(big->PrimaryOf(u), 4u);
  }
  const double sd = std::sqrt(kUsers * 0.25 * 0.75);
  EXPECT_NEAR(moved, kUsers / 4, 5 * sd);
}

}  // namespace
}  // namespace iris
