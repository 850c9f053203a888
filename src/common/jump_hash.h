#pragma once
// Partitioning (DESIGN.md section 2, RFC-001 section 5.2):
//
//   vnode = JumpConsistentHash(xxh64(user_id), total_vnodes)
//
// and a ShardMap that assigns each vnode a replica set of nodes, primary first. Nodes are
// numbered in the order they joined; node k owns the k-th block of vnodes_per_node vnodes,
// so adding a node appends vnodes at the end and jump hash moves only the minimal fraction
// of users, all onto the new vnodes.
//
// Thread-safety: ShardMap is immutable after construction; share it freely.

#include <cstdint>
#include <vector>

#include "common/status.h"

namespace iris {

// Lamping & Veach, "A Fast, Minimal Memory, Consistent Hash Algorithm" (2014).
// Returns a bucket in [0, num_buckets). Precondition: num_buckets > 0.
int32_t JumpConsistentHash(uint64_t key, int32_t num_buckets);

// xxh64 of the user id's 8 bytes (little-endian, seed 0): the partition key of a user.
uint64_t UserPartitionKey(uint64_t user_id);

using NodeId = uint32_t;

class ShardMap {
 public:
  // `nodes` in join order, distinct; each gets vnodes_per_node vnodes (RFC: 256..1024).
  // Replica sets hold min(replication, nodes.size()) distinct nodes, primary first.
  // BAD_REQUEST for no nodes, a repeated node id, a non-positive count, or more than
  // 2^24 vnodes in total.
  static Result<ShardMap> Create(std::vector<NodeId> nodes, int32_t vnodes_per_node,
                                 int32_t replication = 3);

  int32_t total_vnodes() const { return static_cast<int32_t>(replicas_.size()); }
  int32_t VnodeOf(uint64_t user_id) const;
  // Replica set of a vnode, primary first. Precondition: 0 <= vnode < total_vnodes().
  const std::vector<NodeId>& ReplicasOf(int32_t vnode) const { return replicas_[vnode]; }
  NodeId PrimaryOf(uint64_t user_id) const { return replicas_[VnodeOf(user_id)].front(); }

 private:
  std::vector<std::vector<NodeId>> replicas_;
};

}  // namespace iris
