// The placement step (AddNodes), the key/value codecs and the snapshot built from etcd keys.

#include "cluster/placement.h"

#include <gtest/gtest.h>

#include <map>
#include <set>

namespace iris::cluster {
namespace {

// Joins nodes 1..n one at a time.
std::vector<PlacementPlan> Grow(int32_t vnodes, int32_t replicas, int n) {
  std::vector<PlacementPlan> steps;
  PlacementPlan cur;
  for (int i = 1; i <= n; ++i) {
    cur = AddNodes({vnodes, replicas}, cur.map, cur.shards, {static_cast<NodeId>(i)});
    steps.push_back(cur);
  }
  return steps;
}

std::map<NodeId, int> PrimaryCounts(const PlacementPlan& p) {
  std::map<NodeId, int> out;
  for (ShardId s : p.map.shard_of_vnode) ++out[p.shards.at(s).primary];
  return out;
}

TEST(PlacementTest, GrowingOneNodeAtATimeKeepsShardsEvenAndMovesAboutOneOverNPlusOne) {
  for (int32_t r : {1, 2, 3}) {
    const auto steps = Grow(4096, r, 12);
    for (size_t i = 0; i < steps.size(); ++i) {
      const PlacementPlan& p = steps[i];
      const size_t n = i + 1;
      ASSERT_EQ(p.map.shard_of_vnode.size(), 4096u);
      EXPECT_EQ(p.map.version, static_cast<int64_t>(n));
      ASSERT_EQ(p.shards.size(), n);
      std::set<std::set<NodeId>> replica_sets;
      for (const auto& [id, s] : p.shards) {
        ASSERT_EQ(s.replicas.size(), std::min<size_t>(static_cast<size_t>(r), n)) << id;
        EXPECT_EQ(s.replicas.front(), s.primary);
        EXPECT_EQ(std::set<NodeId>(s.replicas.begin(), s.replicas.end()).size(), s.replicas.size());
        replica_sets.insert(std::set<NodeId>(s.replicas.begin(), s.replicas.end()));
      }
      EXPECT_LE(replica_sets.size(), n);  // copysets: at most one replica set per node
      for (const auto& [node, count] : PrimaryCounts(p)) {
        EXPECT_LE(std::abs(count - static_cast<int>(4096 / n)), 1) << "node " << node;
      }
      // Replica load is even too: every node holds r/n of the vnode copies (± rounding).
      std::map<NodeId, int> held;
      for (ShardId s : p.map.shard_of_vnode) {
        for (NodeId node : p.shards.at(s).replicas) ++held[node];
      }
      const double expect = 4096.0 * static_cast<double>(p.shards.begin()->second.replicas.size()) /
                            static_cast<double>(n);
      for (const auto& [node, count] : held) EXPECT_NEAR(count, expect, 3.0) << node;
      if (i == 0) continue;
      int changed = 0;
      for (size_t v = 0; v < 4096; ++v) {
        if (steps[i - 1].map.shard_of_vnode[v] != p.map.shard_of_vnode[v]) ++changed;
      }
      // Only the vnodes the new node's shard takes: 4096/(n) (± rounding).
      EXPECT_LE(changed, static_cast<int>(4096 / n) + 1) << "n=" << n;
      if (n >= 3) {
        EXPECT_LT(changed, 4096 / 2);  // the second node takes half, by design
      }
    }
  }
}

TEST(PlacementTest, EpochsChangeOnlyWhenAReplicaListChanges) {
  const auto steps = Grow(1024, 3, 5);
  for (size_t i = 1; i < steps.size(); ++i) {
    for (const auto& [id, s] : steps[i].shards) {
      auto old = steps[i - 1].shards.find(id);
      if (old == steps[i - 1].shards.end()) {
        EXPECT_EQ(s.epoch, 1);
      } else if (old->second.replicas == s.replicas) {
        EXPECT_EQ(s.epoch, old->second.epoch);
      } else {
        EXPECT_EQ(s.epoch, old->second.epoch + 1);
      }
      EXPECT_EQ(s.primary, static_cast<NodeId>(id + 1));  // a shard keeps its primary
    }
  }
}

TEST(PlacementTest, SeveralNodesAtOnceEqualOneAtATime) {
  const auto one = Grow(512, 3, 4).back();
  const auto all = AddNodes({512, 3}, {}, {}, {1, 2, 3, 4});
  EXPECT_EQ(all.map.shard_of_vnode, one.map.shard_of_vnode);
  EXPECT_EQ(all.shards.size(), one.shards.size());
}

TEST(PlacementTest, CodecsRoundTripAndRejectMalformedValues) {
  EXPECT_EQ(ParseConfig(ConfigToJson({4096, 3}))->vnodes, 4096);
  EXPECT_EQ(ParseConfig("{\"vnodes\":0,\"replicas\":3}").status().code(), StatusCode::kBadRequest);
  EXPECT_EQ(ParseConfig("nope").status().code(), StatusCode::kBadRequest);
  // initial_nodes round-trips; a config written before it existed means 1.
  EXPECT_EQ(ParseConfig(ConfigToJson({4096, 3, 5}))->initial_nodes, 5);
  EXPECT_EQ(ParseConfig("{\"vnodes\":64,\"replicas\":3}")->initial_nodes, 1);
  EXPECT_EQ(ParseConfig("{\"vnodes\":64,\"replicas\":3,\"initial_nodes\":0}").status().code(),
            StatusCode::kBadRequest);
  EXPECT_EQ(ParseConfig("{\"vnodes\":64,\"replicas\":3,\"initial_nodes\":65}").status().code(),
            StatusCode::kBadRequest);
  NodeInfo n{7, "127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", NodeRole::kEdge, "", true};
  auto back = ParseNode(NodeToJson(n));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->peer, n.peer);
  EXPECT_EQ(back->role, NodeRole::kEdge);
  EXPECT_EQ(ParseNode("{\"id\":1,\"role\":\"king\"}").status().code(), StatusCode::kBadRequest);
  ShardInfo s{3, {1, 2, 3}, 1, 9};
  EXPECT_EQ(*ParseShard(ShardToJson(s)), s);
  EXPECT_EQ(ShardToJson(s).find("elected"), std::string::npos);  // as before `elected`
  s.elected = true;
  EXPECT_EQ(*ParseShard(ShardToJson(s)), s);
  // A record of an earlier build has no "elected": never elected as far as it says.
  EXPECT_FALSE(ParseShard("{\"id\":3,\"replicas\":[1],\"primary\":1,\"epoch\":4}")->elected);
  EXPECT_EQ(ParseShard("{\"id\":1}").status().code(), StatusCode::kBadRequest);
  PlacementMap p{4, {0, 1, 1}};
  EXPECT_EQ(ParsePlacement(PlacementToJson(p))->shard_of_vnode, p.shard_of_vnode);
  EXPECT_EQ(ClusterKeys::Create("a/b").status().code(), StatusCode::kBadRequest);
  EXPECT_EQ(ClusterKeys::Create("").status().code(), StatusCode::kBadRequest);
}

TEST(PlacementTest, SnapshotFromKeysAnswersPrimaryOfAndRemembersDownNodes) {
  const ClusterKeys keys = ClusterKeys::Create("demo").value();
  EXPECT_EQ(keys.Node(3), "/iris/demo/nodes/3");
  ClusterState st;
  const auto plan = AddNodes({64, 3}, {}, {}, {1, 2, 3});
  ASSERT_TRUE(ApplyKey(keys, keys.Config(), ConfigToJson({64, 3}), false, &st).ok());
  ASSERT_TRUE(ApplyKey(keys, keys.Placement(), PlacementToJson(plan.map), false, &st).ok());
  for (const auto& [id, s] : plan.shards) {
    ASSERT_TRUE(ApplyKey(keys, keys.Shard(id), ShardToJson(s), false, &st).ok());
  }
  NodeInfo n{2, "p", "c", "a", NodeRole::kStorage, "", false};
  ASSERT_TRUE(ApplyKey(keys, keys.Node(2), NodeToJson(n), false, &st).ok());
  EXPECT_TRUE(st.nodes.at(2).alive);
  ASSERT_TRUE(ApplyKey(keys, keys.Node(2), "", true, &st).ok());
  EXPECT_FALSE(st.nodes.at(2).alive);
  EXPECT_EQ(st.nodes.at(2).peer, "p");
  ASSERT_TRUE(ApplyKey(keys, keys.RevokedUser(5), "{\"before_ms\":10}", false, &st).ok());
  EXPECT_EQ(st.revoked_users.at(5), 10);
  EXPECT_EQ(ApplyKey(keys, keys.Node(1), "garbage", false, &st).code(), StatusCode::kBadRequest);
  ApplyKey(keys, "/iris/other/nodes/1", "garbage", false, &st).IgnoreError();  // not ours

  const Placement p(st);
  EXPECT_EQ(p.vnodes(), 64);
  EXPECT_EQ(p.version(), 1);
  for (uint64_t user = 1; user < 200; ++user) {
    const int32_t v = p.VnodeOf(user);
    ASSERT_NE(p.ShardOfVnode(v), nullptr);
    EXPECT_EQ(p.PrimaryOf(user), p.ShardOfVnode(v)->primary);
  }
  EXPECT_EQ(p.ShardOfVnode(64), nullptr);
  EXPECT_FALSE(Placement(ClusterState{}).PrimaryOf(1).has_value());
}

// ---- PlanMove: replica moves (drain, balance) ---------------------------------------------

void AddNode(ClusterState& st, NodeId id);

// A placed cluster of `n` storage nodes (all alive) with R = 3.
ClusterState Placed(int n) {
  ClusterState st;
  st.config = ClusterConfig{512, 3, n};
  PlacementPlan plan;
  std::vector<NodeId> ids;
  for (int i = 1; i <= n; ++i) ids.push_back(static_cast<NodeId>(i));
  plan = AddNodes(*st.config, {}, {}, ids);
  st.placement = plan.map;
  st.shards = plan.shards;
  for (NodeId id : ids) AddNode(st, id);
  return st;
}

void AddNode(ClusterState& st, NodeId id) {
  NodeInfo info;
  info.id = id;
  info.alive = true;
  st.nodes[id] = info;
}

// Carries out moves as a primary would (switch: replicas = target, epoch + 1) until the
// controller plans none; returns how many it made.
int Settle(ClusterState& st, int limit = 100) {
  int moves = 0;
  while (moves < limit) {
    std::optional<MovePlan> plan = PlanMove(st);
    if (!plan) return moves;
    ShardInfo& s = st.shards.at(plan->shard);
    EXPECT_FALSE(plan->target.empty()) << "nothing here needs a cancel";
    EXPECT_EQ(plan->target.size(), s.replicas.size());
    int differ = 0;
    for (NodeId n : plan->target)
      differ += std::count(s.replicas.begin(), s.replicas.end(), n) ? 0 : 1;
    EXPECT_EQ(differ, 1) << "a move replaces exactly one node";
    s.target = plan->target;
    EXPECT_FALSE(PlanMove(st).has_value()) << "one move at a time";
    s.replicas = s.target;
    s.target.clear();
    ++s.epoch;
    ++moves;
  }
  return moves;
}

std::map<NodeId, int> ReplicaCounts(const ClusterState& st) {
  std::map<NodeId, int> out;
  for (const auto& [id, n] : st.nodes) out[id] = 0;
  for (const auto& [id, s] : st.shards) {
    for (NodeId r : s.replicas) ++out[r];
  }
  return out;
}

TEST(PlanMoveTest, ABalancedClusterPlansNothing) {
  for (int n : {3, 4, 5}) {
    ClusterState st = Placed(n);
    EXPECT_FALSE(PlanMove(st).has_value()) << n;
  }
}

TEST(PlanMoveTest, JoiningNodesGetTheirShareOfReplicas) {
  ClusterState st = Placed(3);  // 3 shards x 3 replicas
  AddNode(st, 4);
  EXPECT_EQ(Settle(st), 2);  // 3,3,3,0 -> 3,2,2,2
  AddNode(st, 5);
  Settle(st);
  for (const auto& [id, count] : ReplicaCounts(st)) {
    EXPECT_GE(count, 1) << id;
    EXPECT_LE(count, 2) << id;
  }
  for (const auto& [id, s] : st.shards) {
    EXPECT_EQ(std::set<NodeId>(s.replicas.begin(), s.replicas.end()).size(), 3u) << id;
  }
}

TEST(PlanMoveTest, DrainEmptiesTheNodeAndADownNodeKeepsItsReplicas) {
  ClusterState st = Placed(4);
  st.draining.insert(2);
  Settle(st);
  EXPECT_EQ(ReplicaCounts(st)[2], 0);
  for (const auto& [id, s] : st.shards) {
    EXPECT_EQ(std::set<NodeId>(s.replicas.begin(), s.replicas.end()).size(), 3u) << id;
  }
  // A node that is down is neither a source nor a destination.
  ClusterState down = Placed(4);
  down.nodes[3].alive = false;
  down.draining.insert(3);
  EXPECT_FALSE(PlanMove(down).has_value());
  // Draining with nowhere to go (3 nodes, 3 replicas each shard): nothing planned.
  ClusterState full = Placed(3);
  full.draining.insert(1);
  EXPECT_FALSE(PlanMove(full).has_value());
}

TEST(PlanMoveTest, AMoveWaitsAndIsReplannedWhenItsNewNodeGoesAway) {
  ClusterState st = Placed(3);
  AddNode(st, 4);
  std::optional<MovePlan> plan = PlanMove(st);
  ASSERT_TRUE(plan.has_value());
  EXPECT_EQ(plan->why, "balance");
  st.shards.at(plan->shard).target = plan->target;
  EXPECT_FALSE(PlanMove(st).has_value());  // in progress: wait
  st.nodes[4].alive = false;
  std::optional<MovePlan> replan = PlanMove(st);
  ASSERT_TRUE(replan.has_value());
  EXPECT_EQ(replan->shard, plan->shard);
  EXPECT_TRUE(replan->target.empty()) << "a balance move to a node that left is cancelled";
  // A drain's move is given another destination instead.
  ClusterState d = Placed(5);
  AddNode(d, 6);
  d.draining.insert(1);
  plan = PlanMove(d);
  ASSERT_TRUE(plan.has_value());
  EXPECT_EQ(plan->why, "drain");
  d.shards.at(plan->shard).target = plan->target;
  NodeId added = 0;
  for (NodeId n : plan->target) {
    const auto& r = d.shards.at(plan->shard).replicas;
    if (std::find(r.begin(), r.end(), n) == r.end()) added = n;
  }
  d.nodes[added].alive = false;
  replan = PlanMove(d);
  ASSERT_TRUE(replan.has_value());
  EXPECT_EQ(replan->shard, plan->shard);
  ASSERT_EQ(replan->target.size(), 3u);
  EXPECT_EQ(std::count(replan->target.begin(), replan->target.end(), NodeId{1}), 0);
  EXPECT_EQ(std::count(replan->target.begin(), replan->target.end(), added), 0);
}

// With several shards per initial node (irisctl cluster init --shards-per-node), replica
// moves spread a growing cluster evenly: each joining node takes about 1/(n+1) of the
// replicas, as vnode moves would (CLUSTER.md section 6).
TEST(PlanMoveTest, WithFourShardsPerNodeEachJoinMovesAboutOneOverNPlusOne) {
  ClusterState st;
  st.config = ClusterConfig{512, 3, 3, 4};
  ASSERT_TRUE(ValidateConfig(*st.config).ok());
  const PlacementPlan plan = AddNodes(*st.config, {}, {}, {1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3});
  st.placement = plan.map;
  st.shards = plan.shards;
  ASSERT_EQ(st.shards.size(), 12u);
  std::map<ShardId, int> vnodes;
  for (ShardId sid : st.placement.shard_of_vnode) ++vnodes[sid];
  for (const auto& [id, s] : st.shards) {
    EXPECT_EQ(std::set<NodeId>(s.replicas.begin(), s.replicas.end()).size(), 3u) << id;
    EXPECT_NEAR(vnodes[id], 512 / 12, 1) << id;
  }
  for (NodeId id : {1u, 2u, 3u}) AddNode(st, id);
  EXPECT_FALSE(PlanMove(st).has_value());
  const int total = 36;
  for (NodeId joining : {4u, 5u, 6u}) {
    AddNode(st, joining);
    const int moves = Settle(st);
    const int n = static_cast<int>(joining);
    EXPECT_EQ(moves, ReplicaCounts(st)[joining]);
    EXPECT_EQ(moves, total / n) << "node " << joining << " takes 1/" << n << " of the replicas";
    for (const auto& [id, count] : ReplicaCounts(st)) {
      EXPECT_GE(count, total / n) << id;
      EXPECT_LE(count, total / n + 1) << id;
    }
  }
  // A config with shards_per_node out of range, or more shards than vnodes, is refused.
  EXPECT_FALSE(ValidateConfig({512, 3, 3, 0}).ok());
  EXPECT_FALSE(ValidateConfig({512, 3, 3, 65}).ok());
  EXPECT_FALSE(ValidateConfig({16, 3, 3, 8}).ok());
  EXPECT_EQ(ParseConfig(ConfigToJson({512, 3, 3, 4})).value(), (ClusterConfig{512, 3, 3, 4}));
  EXPECT_EQ(ConfigToJson({512, 3, 3, 1}).find("shards_per_node"), std::string::npos);
}

// A shard without a primary for a while (the controller's `stuck`) gets no move, and a move
// in progress on it is cancelled: nobody would carry it out, and it would hold up the rest.
TEST(PlanMoveTest, AStuckShardGetsNoMoveAndItsMoveIsCancelled) {
  ClusterState st = Placed(3);
  AddNode(st, 4);
  std::optional<MovePlan> plan = PlanMove(st);
  ASSERT_TRUE(plan.has_value());
  const ShardId first = plan->shard;
  std::optional<MovePlan> other = PlanMove(st, {first});
  ASSERT_TRUE(other.has_value());
  EXPECT_NE(other->shard, first);
  std::set<ShardId> all;
  for (const auto& [id, s] : st.shards) all.insert(id);
  EXPECT_FALSE(PlanMove(st, all).has_value());
  st.shards.at(first).target = plan->target;
  std::optional<MovePlan> cancel = PlanMove(st, {first});
  ASSERT_TRUE(cancel.has_value());
  EXPECT_EQ(cancel->shard, first);
  EXPECT_TRUE(cancel->target.empty());
  EXPECT_EQ(cancel->why, "stuck");
}

TEST(PlanMoveTest, ShardRecordsCarryTheTargetAndDrainKeysAreFollowed) {
  ShardInfo s;
  s.id = 2;
  s.replicas = {1, 2, 3};
  s.primary = 1;
  s.epoch = 4;
  s.target = {1, 2, 4};
  auto parsed = ParseShard(ShardToJson(s));
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(*parsed, s);
  s.target.clear();
  EXPECT_EQ(ShardToJson(s).find("target"), std::string::npos);
  const ClusterKeys keys = ClusterKeys::Create("c").value();
  ClusterState st;
  ASSERT_TRUE(ApplyKey(keys, keys.Drain(7), "{\"since_ms\":1}", false, &st).ok());
  EXPECT_EQ(st.draining, std::set<NodeId>{7});
  ASSERT_TRUE(ApplyKey(keys, keys.Drain(7), "", true, &st).ok());
  EXPECT_TRUE(st.draining.empty());
}

}  // namespace
}  // namespace iris::cluster
