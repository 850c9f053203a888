// Property tests of JumpConsistentHash and ShardMap (common/jump_hash.h). Seeded through
// RC_PARAMS.

#include <gtest/gtest.h>
#include <rapidcheck.h>
#include <rapidcheck/gtest.h>

#include <algorithm>
#include <cstdint>
#include <set>
#include <vector>

#include "common/jump_hash.h"

namespace iris {
namespace {

// The paper's published code (Lamping & Veach 2014), transcribed independently.
int32_t PaperJumpConsistentHash(uint64_t key, int32_t num_buckets) {
  int64_t b = -1, j = 0;
  while (j < num_buckets) {
    b = j;
    key = key * 2862933555777941757ULL + 1;
    j = static_cast<int64_t>((b + 1) * (double(1LL << 31) / double((key >> 33) + 1)));
  }
  return static_cast<int32_t>(b);
}

rc::Gen<int32_t> Buckets() {
  return rc::gen::weightedOneOf<int32_t>(
      {{3, rc::gen::inRange<int32_t>(1, 2'000)}, {1, rc::gen::inRange<int32_t>(1, 0x7fffffff)}});
}

RC_GTEST_PROP(JumpHashProperty, InRangeAndEqualToThePaper, (uint64_t key)) {
  const int32_t n = *Buckets();
  const int32_t b = JumpConsistentHash(key, n);
  RC_ASSERT(b >= 0);
  RC_ASSERT(b < n);
  RC_ASSERT(b == PaperJumpConsistentHash(key, n));
  RC_ASSERT(JumpConsistentHash(key, 1) == 0);
}

// Adding buckets moves a key only into a new bucket: for n < m, a key whose bucket under m
// is an old one (< n) had that same bucket under n.
RC_GTEST_PROP(JumpHashProperty, GrowthMovesKeysOnlyToNewBuckets, (uint64_t key)) {
  const int32_t n = *rc::gen::inRange<int32_t>(1, 100'000);
  const int32_t m = n + *rc::gen::inRange<int32_t>(0, 100'000);
  const int32_t before = JumpConsistentHash(key, n);
  const int32_t after = JumpConsistentHash(key, m);
  RC_ASSERT(after == before || after >= n);
  const int32_t next = JumpConsistentHash(key, n + 1);
  RC_ASSERT(next == before || next == n);
}

RC_GTEST_PROP(ShardMapProperty, ReplicaSetsDistinctPrimaryFirst, ()) {
  const auto nodes = *rc::gen::unique<std::vector<NodeId>>(rc::gen::inRange<NodeId>(1, 1000));
  RC_PRE(!nodes.empty() && nodes.size() <= 16);
  const auto per_node = *rc::gen::inRange<int32_t>(1, 65);
  const auto rf = *rc::gen::inRange<int32_t>(1, 6);
  auto map = ShardMap::Create(nodes, per_node, rf);
  RC_ASSERT(map.ok());
  RC_ASSERT(map->total_vnodes() == static_cast<int32_t>(nodes.size()) * per_node);
  const size_t want = std::min<size_t>(static_cast<size_t>(rf), nodes.size());
  for (int32_t v = 0; v < map->total_vnodes(); ++v) {
    const auto& set = map->ReplicasOf(v);
    RC_ASSERT(set.size() == want);
    RC_ASSERT(set.front() == nodes[static_cast<size_t>(v / per_node)]);
    RC_ASSERT(std::set<NodeId>(set.begin(), set.end()).size() == set.size());
    for (NodeId n : set) RC_ASSERT(std::find(nodes.begin(), nodes.end(), n) != nodes.end());
  }
}

RC_GTEST_PROP(ShardMapProperty, GrowthMovesUsersOnlyOntoTheNewNode, ()) {
  const auto nodes = *rc::gen::unique<std::vector<NodeId>>(rc::gen::inRange<NodeId>(1, 1000));
  RC_PRE(!nodes.empty() && nodes.size() <= 12);
  const auto newcomer = *rc::gen::inRange<NodeId>(1000, 2000);
  const auto per_node = *rc::gen::inRange<int32_t>(1, 257);
  auto small = ShardMap::Create(nodes, per_node);
  std::vector<NodeId> grown = nodes;
  grown.push_back(newcomer);
  auto big = ShardMap::Create(grown, per_node);
  RC_ASSERT(small.ok());
  RC_ASSERT(big.ok());
  const auto users =
      *rc::gen::container<std::vector<uint64_t>>(200, rc::gen::arbitrary<uint64_t>());
  for (uint64_t u : users) {
    const int32_t before = small->VnodeOf(u);
    const int32_t after = big->VnodeOf(u);
    if (after != before) {
      RC_ASSERT(after >= small->total_vnodes());
      RC_ASSERT(big->PrimaryOf(u) == newcomer);
    } else {
      RC_ASSERT(big->PrimaryOf(u) == small->PrimaryOf(u));
    }
  }
}

}  // namespace
}  // namespace iris
