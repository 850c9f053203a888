#pragma once
// Cluster metadata as stored in etcd (CLUSTER.md §3) and the immutable Placement snapshot
// built from it (§4).
//
// Keys, all under /iris/<cluster>/ (values are JSON):
//
//   key                       value                                          lifetime
//   config                    {"vnodes":V,"replicas":R,"initial_nodes":N,    written once (init)
//                              "shards_per_node":S}
//   nodes/<id>                {"id","peer","client","admin","role"}          node's lease
//   controller                {"id":n}                                       controller's lease
//   placement                 {"version":n,"shards":[shard id per vnode]}    controller writes
//   shards/<s>                {"id","replicas":[ids],"primary":id,"epoch":e, controller writes
//                              "elected":b,"target":[ids]}                   (target), primary
//                                                                            (failover, switch)
//   drain/<id>                {"since_ms":t}                                 irisctl cluster drain
//   leaders/<s>               {"epoch":e,"primary":id}                       primary's lease
//   revocations/jti/<jti>     {"until_ms":t}                                 lease: longest token
//   revocations/user/<id>     {"before_ms":t}                                lease: longest token
//
// Placement model: a shard is a set of vnodes with one replica list (primary first); shards
// are numbered in the order their primary joined, one per storage node, and the replica
// list of shard k is the primary followed by the next min(R, n) - 1 storage nodes in join
// order (ring copysets: n distinct replica sets for n nodes). A joining node gets a new
// shard that takes the highest-numbered excess vnodes of every other shard, so the shards
// stay within one vnode of V/n and only ~V/(n+1) vnodes change shard; the replica lists
// of the few shards whose ring window now includes the new node change (with an epoch
// bump). Nothing here removes a node: a node that is down keeps its shards.
//
// Thread-safety: Placement is immutable once built; share it through
// std::shared_ptr<const Placement>.

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/jump_hash.h"
#include "common/status.h"

namespace iris::cluster {

using ShardId = uint32_t;

struct ClusterConfig {
  int32_t vnodes = 4096;
  int32_t replicas = 3;
  // Storage nodes that must be registered before the controller writes the first placement
  // (all of them are placed at once). Nodes joining after that hold no vnodes until
  // rebalancing (issue 16) moves data to them. A config without it means 1.
  int32_t initial_nodes = 1;
  // Shards of the first placement per initial node (1..64; absent in a config: 1). More
  // shards let a replicated cluster spread over more nodes later: nodes that join get
  // replicas moved to them, whole shards at a time (scale-out moves replicas, not vnodes),
  // so a cluster can use at most replicas x initial_nodes x shards_per_node nodes, and each
  // move carries 1 / shards of the data. Each shard costs every node that holds a replica
  // of it a replication strand, a log and two etcd watches.
  int32_t shards_per_node = 1;
  bool operator==(const ClusterConfig&) const = default;
};

enum class NodeRole { kStorage, kEdge };
std::string_view NodeRoleName(NodeRole role);

struct NodeInfo {
  NodeId id = 0;
  std::string peer;    // host:port of the peer (mTLS) listener
  std::string client;  // host:port clients connect to
  std::string admin;   // host:port of the admin HTTP listener
  NodeRole role = NodeRole::kStorage;
  // The process holding the registration: random per process start (Membership's claim
  // rule, docs/operations.md "Node ids"). Empty in records of older versions.
  std::string incarnation;
  bool alive = false;  // registered now (its key exists); not serialised
};

struct ShardInfo {
  ShardId id = 0;
  std::vector<NodeId> replicas;  // primary first
  NodeId primary = 0;
  int64_t epoch = 0;
  // A primary has been elected in this shard at least once (set by the election's CAS,
  // ShardEpochs; kept by later placements): a replica that starts without a log then has
  // lost one (repl::DurableState::amnesiac).
  bool elected = false;
  // A replica move the placement controller wants (CLUSTER.md §6; docs/replication.md
  // "Moving a replica"): the replica set that should replace `replicas`, differing from it
  // in one node; empty when none. The primary carries it out and clears it with the switch.
  std::vector<NodeId> target;
  bool operator==(const ShardInfo&) const = default;
};

struct PlacementMap {
  int64_t version = 0;                  // 0: no placement yet
  std::vector<ShardId> shard_of_vnode;  // size V once placed
};

// Key names under /iris/<cluster>/.
class ClusterKeys {
 public:
  // BAD_REQUEST unless `cluster` is 1..64 characters of [A-Za-z0-9_.-].
  static Result<ClusterKeys> Create(const std::string& cluster);
  const std::string& prefix() const { return prefix_; }  // "/iris/<cluster>/"
  std::string Config() const { return prefix_ + "config"; }
  std::string NodesPrefix() const { return prefix_ + "nodes/"; }
  std::string Node(NodeId id) const { return NodesPrefix() + std::to_string(id); }
  std::string Controller() const { return prefix_ + "controller"; }
  std::string Placement() const { return prefix_ + "placement"; }
  std::string ShardsPrefix() const { return prefix_ + "shards/"; }
  std::string Shard(ShardId s) const { return ShardsPrefix() + std::to_string(s); }
  std::string DrainPrefix() const { return prefix_ + "drain/"; }
  std::string Drain(NodeId id) const { return DrainPrefix() + std::to_string(id); }
  std::string LeadersPrefix() const { return prefix_ + "leaders/"; }
  std::string Leader(ShardId s) const { return LeadersPrefix() + std::to_string(s); }
  std::string RevokedJtiPrefix() const { return prefix_ + "revocations/jti/"; }
  std::string RevokedJti(const std::string& jti) const { return RevokedJtiPrefix() + jti; }
  std::string RevokedUserPrefix() const { return prefix_ + "revocations/user/"; }
  std::string RevokedUser(uint64_t user) const {
    return RevokedUserPrefix() + std::to_string(user);
  }

 private:
  explicit ClusterKeys(std::string prefix) : prefix_(std::move(prefix)) {}
  std::string prefix_;
};

// JSON values. Parse* return BAD_REQUEST for malformed values.
std::string ConfigToJson(const ClusterConfig& c);
Result<ClusterConfig> ParseConfig(const std::string& json);
// BAD_REQUEST unless 1 <= vnodes <= 2^24, 1 <= replicas <= 7 and
// 1 <= initial_nodes <= vnodes, 1 <= shards_per_node <= 64 and
// initial_nodes x shards_per_node <= vnodes.
Status ValidateConfig(const ClusterConfig& c);
std::string NodeToJson(const NodeInfo& n);
Result<NodeInfo> ParseNode(const std::string& json);
std::string ShardToJson(const ShardInfo& s);
Result<ShardInfo> ParseShard(const std::string& json);
std::string PlacementToJson(const PlacementMap& p);
Result<PlacementMap> ParsePlacement(const std::string& json);

// Everything a Placement snapshot is built from.
struct ClusterState {
  std::optional<ClusterConfig> config;
  std::map<NodeId, NodeInfo> nodes;  // registered nodes and (alive=false) remembered ones
  PlacementMap placement;
  std::map<ShardId, ShardInfo> shards;
  std::optional<NodeId> controller;
  std::set<NodeId> draining;                   // drain/<id> keys: nodes being emptied of replicas
  std::map<std::string, int64_t> revoked_jti;  // jti -> until_ms
  std::map<uint64_t, int64_t> revoked_users;   // user -> before_ms
  int64_t revision = 0;                        // etcd revision reflected
};

// Applies one key (put or delete) under keys.prefix() to *state; unknown keys are ignored.
// A malformed value is logged and ignored (returns BAD_REQUEST so the caller may count it).
Status ApplyKey(const ClusterKeys& keys, const std::string& key, const std::string& value,
                bool deleted, ClusterState* state);

class Placement {
 public:
  explicit Placement(ClusterState state);

  bool configured() const { return state_.config.has_value(); }
  int32_t vnodes() const { return state_.config ? state_.config->vnodes : 0; }
  int32_t replicas() const { return state_.config ? state_.config->replicas : 0; }
  // Version of the placement map (0 before the controller placed anything).
  int64_t version() const { return state_.placement.version; }
  int64_t revision() const { return state_.revision; }

  // vnode of a user or group id; precondition: configured().
  int32_t VnodeOf(uint64_t id) const;
  // The shard of a vnode, or nullptr when not placed yet (or out of range).
  const ShardInfo* ShardOfVnode(int32_t vnode) const;
  const ShardInfo* Shard(ShardId id) const;
  std::optional<NodeId> PrimaryOf(uint64_t id) const;
  // A node (alive or remembered), or nullptr.
  const NodeInfo* Node(NodeId id) const;
  bool Alive(NodeId id) const {
    const NodeInfo* n = Node(id);
    return n != nullptr && n->alive;
  }
  const std::map<NodeId, NodeInfo>& nodes() const { return state_.nodes; }
  const std::map<ShardId, ShardInfo>& shards() const { return state_.shards; }
  std::optional<NodeId> controller() const { return state_.controller; }
  bool Draining(NodeId id) const { return state_.draining.count(id) != 0; }
  // Number of vnodes per shard.
  std::map<ShardId, int32_t> VnodeCounts() const;
  const ClusterState& state() const { return state_; }

 private:
  ClusterState state_;
};

// The controller's pure placement step: `current` (map + shards, possibly empty) with
// `joining` storage nodes added, in order, as described at the top. Shards whose replica
// list changed get epoch + 1 (new shards epoch 1); the map's version is current + 1.
// Precondition: ValidateConfig(config).ok(); `joining` holds no node already placed.
struct PlacementPlan {
  PlacementMap map;
  std::map<ShardId, ShardInfo> shards;
};
PlacementPlan AddNodes(const ClusterConfig& config, const PlacementMap& current,
                       const std::map<ShardId, ShardInfo>& current_shards,
                       const std::vector<NodeId>& joining);

// The controller's pure step for a replicated cluster once placed (CLUSTER.md §6;
// docs/replication.md "Moving a replica"): at most one replica move at a time, cluster-wide.
// Nodes that count are the alive storage nodes; `draining` ones only give replicas away.
//  1. A shard that names a target keeps it while the target's new node is alive and not
//     draining, and every other node of the target is still a replica (nothing to do);
//     otherwise the move is replanned for that shard (another target, or none: cancelled).
//  2. Drain: a shard with a draining node among its replicas gets a target that replaces it
//     by the counting node outside the shard with the fewest replicas (ties: lowest id).
//  3. Balance (scale-out): when the counting nodes' replica counts differ by more than one,
//     a replica of the most loaded one (the shard it holds with the lowest id whose
//     replicas exclude the least loaded; ties: lowest id) moves to the least loaded one.
// A node that is down is neither a source nor a destination: it keeps its replicas.
// `stuck`: shards that have had no primary for a while (the controller's observation): no
// move is planned for them, and a move in progress on one is cancelled (nobody would carry
// it out, and it would hold up every other move).
// `shard` names the shard to write; `target` empty means cancel the shard's move.
struct MovePlan {
  ShardId shard = 0;
  std::vector<NodeId> target;
  std::string why;  // "drain", "balance", "replan" (for the log)
};
std::optional<MovePlan> PlanMove(const ClusterState& state, const std::set<ShardId>& stuck = {});

}  // namespace iris::cluster
