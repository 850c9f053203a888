#include "common/jump_hash.h"

#include <xxhash.h>

#include <algorithm>
#include <string>

namespace iris {

int32_t JumpConsistentHash(uint64_t key, int32_t num_buckets) {
  int64_t b = -1;
  int64_t j = 0;
  while (j < num_buckets) {
    b = j;
    key = key * 2862933555777941757ULL + 1;
    j = static_cast<int64_t>(static_cast<double>(b + 1) *
                             (static_cast<double>(1LL << 31) /
                              static_cast<double>((key >> 33) + 1)));
  }
  return static_cast<int32_t>(b);
}

uint64_t UserPartitionKey(uint64_t user_id) {
  unsigned char le[8];
  for (int i = 0; i < 8; ++i) le[i] = static_cast<unsigned char>(user_id >> (8 * i));
  return XXH64(le, sizeof(le), 0);
}

Result<ShardMap> ShardMap::Create(std::vector<NodeId> nodes, int32_t vnodes_per_node,
                                  int32_t replication) {
  if (nodes.empty()) return BadRequest("shard map needs at least one node");
  if (vnodes_per_node <= 0) return BadRequest("vnodes_per_node must be positive");
  if (replication <= 0) return BadRequest("replication must be positive");
  // Duplicates would make a replica set impossible to fill with distinct nodes (the follower
  // search below would never end) and give one node two blocks of vnodes.
  std::vector<NodeId> sorted = nodes;
  std::sort(sorted.begin(), sorted.end());
  if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) {
    return BadRequest("shard map node ids must be distinct");
  }
  const int64_t total = static_cast<int64_t>(nodes.size()) * vnodes_per_node;
  if (total > (1 << 24)) return BadRequest("too many vnodes");
  ShardMap map;
  const size_t rf = std::min<size_t>(static_cast<size_t>(replication), nodes.size());
  map.replicas_.resize(static_cast<size_t>(total));
  for (size_t v = 0; v < map.replicas_.size(); ++v) {
    const size_t owner = v / static_cast<size_t>(vnodes_per_node);
    auto& set = map.replicas_[v];
    set.reserve(rf);
    // Primary is the owner; followers are the next nodes in ring order, offset by the
    // vnode index so one node's followers are spread over the others.
    set.push_back(nodes[owner]);
    for (size_t k = 1; set.size() < rf; ++k) {
      const size_t idx = (owner + k + v) % nodes.size();
      bool dup = false;
      for (NodeId n : set) dup = dup || n == nodes[idx];
      if (!dup) set.push_back(nodes[idx]);
    }
  }
  return map;
}

int32_t ShardMap::VnodeOf(uint64_t user_id) const {
  return JumpConsistentHash(UserPartitionKey(user_id), total_vnodes());
}

}  // namespace iris
