// Membership, the placement controller and ClusterView against a real etcd.

#include "cluster/cluster_view.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <set>

#include "cluster/cluster_node.h"
#include "cluster/membership.h"
#include "cluster/placement_controller.h"
#include "cluster/test_util.h"
#include "harness/etcd_process.h"

namespace iris::cluster {
namespace {

using iris::testing::EtcdProcess;
using iris::testing::WaitFor;

NodeInfo Node(NodeId id, NodeRole role = NodeRole::kStorage) {
  NodeInfo n;
  n.id = id;
  n.peer = "127.0.0.1:" + std::to_string(7540 + id);
  n.client = "127.0.0.1:" + std::to_string(7440 + id);
  n.admin = "127.0.0.1:" + std::to_string(9090 + id);
  n.role = role;
  return n;
}

// What the view reported, for assertions.
struct Recorder {
  std::mutex mu;
  std::vector<NodeId> up, down;
  int placements = 0;
  std::map<std::string, int64_t> jti;
  std::map<uint64_t, int64_t> users;
  std::vector<bool> stale;
  ClusterView::Callbacks Callbacks() {
    ClusterView::Callbacks cb;
    cb.on_node_up = [this](const NodeInfo& n) {
      std::lock_guard<std::mutex> l(mu);
      up.push_back(n.id);
    };
    cb.on_node_down = [this](const NodeInfo& n) {
      std::lock_guard<std::mutex> l(mu);
      down.push_back(n.id);
    };
    cb.on_placement = [this](const std::shared_ptr<const Placement>&) {
      std::lock_guard<std::mutex> l(mu);
      ++placements;
    };
    cb.on_revoked_jti = [this](const std::string& j, int64_t until) {
      std::lock_guard<std::mutex> l(mu);
      jti[j] = until;
    };
    cb.on_revoked_user = [this](uint64_t u, int64_t before) {
      std::lock_guard<std::mutex> l(mu);
      users[u] = before;
    };
    cb.on_stale = [this](bool s) {
      std::lock_guard<std::mutex> l(mu);
      stale.push_back(s);
    };
    return cb;
  }
};

class ClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(etcd_.Start());
    EtcdOptions o;
    o.endpoints = {etcd_.endpoint()};
    o.request_timeout_ms = 2000;
    client_ = EtcdClient::Create(o).value();
  }
  ClusterKeys Keys() { return ClusterKeys::Create("test").value(); }

  EtcdProcess etcd_;
  std::unique_ptr<EtcdClient> client_;
};

// Vnodes per primary node.
std::map<NodeId, int> PrimaryVnodes(const Placement& p) {
  std::map<NodeId, int> out;
  for (int32_t v = 0; v < p.vnodes(); ++v) {
    const ShardInfo* s = p.ShardOfVnode(v);
    if (s != nullptr) ++out[s->primary];
  }
  return out;
}

bool AllPlaced(const Placement& p, const std::set<NodeId>& nodes) {
  std::set<NodeId> placed;
  for (const auto& [id, s] : p.shards()) placed.insert(s.replicas.begin(), s.replicas.end());
  return p.version() > 0 && placed == nodes;
}

TEST_F(ClusterTest, ControllerElectionHandsOverWhenTheWinnersLeaseIsRevoked) {
  PlacementController a(*client_, Keys(), 1, 2), b(*client_, Keys(), 2, 2);
  a.Start();
  b.Start();
  ASSERT_TRUE(WaitFor([&] { return a.leader() || b.leader(); }));
  PlacementController& winner = a.leader() ? a : b;
  PlacementController& other = a.leader() ? b : a;
  EXPECT_FALSE(other.leader());
  const NodeId other_id = &other == &a ? 1 : 2;
  auto holder = [&]() -> std::optional<NodeId> {
    auto s = ClusterView::Load(*client_, Keys());
    return s.ok() ? s->controller : std::nullopt;
  };
  EXPECT_EQ(holder(), &winner == &a ? NodeId{1} : NodeId{2});
  ASSERT_TRUE(client_->LeaseRevoke(winner.lease_id()).ok());
  ASSERT_TRUE(WaitFor([&] { return other.leader(); }));
  EXPECT_EQ(holder(), other_id);
  ASSERT_TRUE(WaitFor([&] { return !winner.leader(); }));
  // A stopped leader revokes its lease: the first one takes over again.
  other.Stop();
  ASSERT_TRUE(WaitFor([&] { return winner.leader(); }));
  EXPECT_EQ(holder(), &winner == &a ? NodeId{1} : NodeId{2});
}

TEST_F(ClusterTest, FirstPlacementWaitsForInitialNodesAndALaterNodeGetsAReplicaMove) {
  ASSERT_TRUE(InitClusterConfig(*client_, Keys(), {4096, 3, 3}).ok());
  Recorder rec;
  ClusterView view(*client_, Keys(), rec.Callbacks());
  ASSERT_TRUE(view.Start().ok());
  PlacementController controller(*client_, Keys(), 1);
  controller.Start();
  std::vector<std::unique_ptr<Membership>> members;
  auto join = [&](NodeId id) {
    members.push_back(std::make_unique<Membership>(*client_, Keys(), Node(id), 2));
    ASSERT_TRUE(members.back()->Start().ok());
  };
  // An edge node holds no shard and does not count towards the initial nodes.
  Membership edge(*client_, Keys(), Node(9, NodeRole::kEdge), 2);
  ASSERT_TRUE(edge.Start().ok());
  // (a) With two of three storage nodes registered the controller looks and places nothing.
  join(1);
  join(2);
  ASSERT_TRUE(WaitFor([&] { return controller.leader() && controller.waiting_have() == 2; }));
  ASSERT_TRUE(WaitFor([&] { return view.snapshot()->Alive(9); }));
  EXPECT_EQ(view.snapshot()->version(), 0);
  EXPECT_TRUE(view.snapshot()->shards().empty());
  EXPECT_TRUE(client_->Range(Keys().Placement())->kvs.empty());
  EXPECT_EQ(controller.placements_written(), 0);

  // (b) The third one: all three are placed at once, ~1/3 of the vnodes each.
  join(3);
  ASSERT_TRUE(WaitFor([&] { return AllPlaced(*view.snapshot(), {1, 2, 3}); }));
  const auto three = view.snapshot();
  EXPECT_EQ(three->version(), 1);
  EXPECT_EQ(controller.placements_written(), 1);
  EXPECT_EQ(controller.waiting_have(), -1);
  EXPECT_EQ(three->vnodes(), 4096);
  for (int32_t v = 0; v < three->vnodes(); ++v) {
    const ShardInfo* s = three->ShardOfVnode(v);
    ASSERT_NE(s, nullptr) << v;
    ASSERT_EQ(s->replicas.size(), 3u) << v;
    EXPECT_EQ(std::set<NodeId>(s->replicas.begin(), s->replicas.end()).size(), 3u);
    EXPECT_EQ(s->replicas.front(), s->primary);
  }
  EXPECT_EQ(PrimaryVnodes(*three).size(), 3u);
  for (const auto& [node, count] : PrimaryVnodes(*three)) {
    EXPECT_NEAR(count, 4096 / 3, 4096 * 0.02) << "node " << node;
  }
  // Node info reaches the view; PrimaryOf answers for any id.
  ASSERT_NE(three->Node(2), nullptr);
  EXPECT_EQ(three->Node(2)->peer, "127.0.0.1:7542");
  EXPECT_TRUE(three->PrimaryOf(42).has_value());
  EXPECT_EQ(three->controller(), NodeId{1});

  // (c) A fourth storage node joining later: the vnode map stays as it was (the number of
  // shards is fixed) and the controller moves replicas to it until the counts differ by at
  // most one (3,2,2,2). No primary was ever elected here (no irisd runs), so each move
  // changes the shard's replicas at once, with a new epoch.
  join(4);
  const auto replicas_of = [](const Placement& p, NodeId n) {
    int count = 0;
    for (const auto& [id, s] : p.shards()) {
      count += static_cast<int>(std::count(s.replicas.begin(), s.replicas.end(), n));
    }
    return count;
  };
  ASSERT_TRUE(WaitFor([&] {
    const auto p = view.snapshot();
    return p->Alive(4) && replicas_of(*p, 4) == 2;
  }));
  const auto four = view.snapshot();
  EXPECT_EQ(controller.moves_planned(), 2);
  EXPECT_EQ(four->version(), three->version());
  EXPECT_EQ(four->state().placement.shard_of_vnode, three->state().placement.shard_of_vnode);
  for (const auto& [id, s] : four->shards()) {
    EXPECT_TRUE(s.target.empty()) << id;
    ASSERT_EQ(std::set<NodeId>(s.replicas.begin(), s.replicas.end()).size(), 3u) << id;
    const bool moved = s.replicas != three->Shard(id)->replicas;
    EXPECT_EQ(s.epoch, three->Shard(id)->epoch + (moved ? 1 : 0)) << id;
    EXPECT_NE(std::find(s.replicas.begin(), s.replicas.end(), s.primary), s.replicas.end()) << id;
  }
  for (NodeId n : {1u, 2u, 3u}) {
    EXPECT_GE(replicas_of(*four, n), 2) << n;
    EXPECT_LE(replicas_of(*four, n), 3) << n;
  }
  EXPECT_EQ(controller.placements_written(), 1);

  // A node that goes down keeps its shards (no failover yet) and is reported down.
  members[1]->Stop();  // node 2 revokes its lease
  ASSERT_TRUE(WaitFor([&] { return !view.snapshot()->Alive(2); }));
  // The down callback runs after the snapshot is published: wait for it too.
  EXPECT_TRUE(WaitFor([&] {
    std::lock_guard<std::mutex> l(rec.mu);
    return !rec.down.empty();
  }));
  {
    std::lock_guard<std::mutex> l(rec.mu);
    EXPECT_EQ(rec.down, std::vector<NodeId>{2});
  }
  EXPECT_EQ(view.snapshot()->version(), three->version());
  EXPECT_EQ(view.snapshot()->Node(2)->peer, "127.0.0.1:7542");  // remembered
  controller.Stop();
  view.Stop();
}

TEST_F(ClusterTest, RevocationsReachTheViewCallbacks) {
  Recorder rec;
  // One revocation exists before the view starts: it is reported at Start().
  ASSERT_TRUE(ClusterView::RevokeJti(*client_, Keys(), "early", 111, 3600).ok());
  ClusterView view(*client_, Keys(), rec.Callbacks());
  ASSERT_TRUE(view.Start().ok());
  ASSERT_TRUE(ClusterView::RevokeJti(*client_, Keys(), "tok-1", 1234, 3600).ok());
  ASSERT_TRUE(ClusterView::RevokeUser(*client_, Keys(), 42, 5678, 3600).ok());
  ASSERT_TRUE(WaitFor([&] {
    std::lock_guard<std::mutex> l(rec.mu);
    return rec.jti.size() == 2 && rec.users.size() == 1;
  }));
  std::lock_guard<std::mutex> l(rec.mu);
  EXPECT_EQ(rec.jti["early"], 111);
  EXPECT_EQ(rec.jti["tok-1"], 1234);
  EXPECT_EQ(rec.users[42], 5678);
  EXPECT_EQ(ClusterView::RevokeJti(*client_, Keys(), "a/b", 1, 60).code(), StatusCode::kBadRequest);
  // Each revocation lives under a lease of the given TTL.
  auto r = client_->Range(Keys().RevokedJti("tok-1"));
  ASSERT_EQ(r->kvs.size(), 1u);
  EXPECT_NE(r->kvs[0].lease, 0);
}

TEST_F(ClusterTest, ViewGoesStaleWhileEtcdIsDownAndCatchesUpAfter) {
  Recorder rec;
  ClusterView view(*client_, Keys(), rec.Callbacks());
  ASSERT_TRUE(view.Start().ok());
  Membership m(*client_, Keys(), Node(5), 3);
  ASSERT_TRUE(m.Start().ok());
  ASSERT_TRUE(WaitFor([&] { return view.snapshot()->Alive(5); }));
  EXPECT_FALSE(view.stale());
  etcd_.Stop(SIGKILL);
  ASSERT_TRUE(WaitFor([&] { return view.stale(); }));
  EXPECT_TRUE(view.snapshot()->Alive(5));  // the last snapshot is kept
  ASSERT_TRUE(etcd_.Start());
  ASSERT_TRUE(WaitFor([&] { return !view.stale(); }));
  ASSERT_TRUE(ClusterView::RevokeUser(*client_, Keys(), 7, 1, 60).ok());
  ASSERT_TRUE(WaitFor([&] {
    std::lock_guard<std::mutex> l(rec.mu);
    return rec.users.count(7) == 1;
  }));
  m.Stop();
  view.Stop();
}

// One node id, one live process (docs/operations.md, "Node ids"): another incarnation is
// refused while the holder renews its lease; the node's next process (which knows the
// holder's incarnation from its data directory) takes the key over at once, and the old
// process's lease going away then leaves the key alone.
TEST_F(ClusterTest, MembershipRefusesAnotherLiveIncarnationAndLetsTheNextProcessTakeOver) {
  NodeInfo first_process = Node(8);
  first_process.incarnation = "aaaa";
  Membership holder(*client_, Keys(), first_process, 1);
  ASSERT_TRUE(holder.Start().ok());
  ASSERT_TRUE(holder.registered());

  NodeInfo stranger = Node(8);
  stranger.incarnation = "bbbb";
  Membership twin(*client_, Keys(), stranger, 1, /*previous_incarnation=*/"");
  const Status refused = twin.Start();  // waits one TTL (+1 s) for the key to lapse
  EXPECT_EQ(refused.code(), StatusCode::kBadRequest) << refused.ToString();
  EXPECT_NE(refused.message().find("node id 8 is already held by another live node "
                                   "(incarnation aaaa"),
            std::string::npos)
      << refused.ToString();
  EXPECT_FALSE(twin.registered());
  auto held = client_->Range(Keys().Node(8));
  ASSERT_TRUE(held.ok() && held->kvs.size() == 1);
  EXPECT_EQ(ParseNode(held->kvs[0].value)->incarnation, "aaaa");
  EXPECT_EQ(held->kvs[0].lease, holder.lease_id());

  NodeInfo next_process = Node(8);
  next_process.incarnation = "cccc";
  Membership restarted(*client_, Keys(), next_process, 1, /*previous_incarnation=*/"aaaa");
  ASSERT_TRUE(restarted.Start().ok());
  ASSERT_TRUE(restarted.registered());
  auto taken = client_->Range(Keys().Node(8));
  ASSERT_TRUE(taken.ok() && taken->kvs.size() == 1);
  EXPECT_EQ(ParseNode(taken->kvs[0].value)->incarnation, "cccc");
  EXPECT_EQ(taken->kvs[0].lease, restarted.lease_id());
  holder.Stop();  // revokes the old lease: the key is no longer under it
  auto kept = client_->Range(Keys().Node(8));
  ASSERT_TRUE(kept.ok());
  EXPECT_EQ(kept->kvs.size(), 1u);
  restarted.Stop();
}

TEST_F(ClusterTest, MembershipRegistersAgainAfterItsLeaseIsLost) {
  Recorder rec;
  ClusterView view(*client_, Keys(), rec.Callbacks());
  ASSERT_TRUE(view.Start().ok());
  Membership m(*client_, Keys(), Node(6), 2);
  ASSERT_TRUE(m.Start().ok());
  ASSERT_TRUE(m.WaitRegistered(10'000));
  const int64_t first = m.lease_id();
  ASSERT_TRUE(client_->LeaseRevoke(first).ok());  // the node's key disappears
  ASSERT_TRUE(WaitFor([&] { return m.registrations() == 2 && m.registered(); }));
  EXPECT_NE(m.lease_id(), first);
  ASSERT_TRUE(WaitFor([&] { return view.snapshot()->Alive(6); }));
  auto r = client_->Range(Keys().Node(6));
  ASSERT_EQ(r->kvs.size(), 1u);
  EXPECT_EQ(r->kvs[0].lease, m.lease_id());
  m.Stop();
  ASSERT_TRUE(WaitFor([&] { return !view.snapshot()->Alive(6); }));
  view.Stop();
}

TEST_F(ClusterTest, InitWritesTheConfigOnceAndRefusesOtherValues) {
  EXPECT_TRUE(InitClusterConfig(*client_, Keys(), {1024, 3}).ok());
  EXPECT_TRUE(InitClusterConfig(*client_, Keys(), {1024, 3}).ok());  // same: fine
  const Status s = InitClusterConfig(*client_, Keys(), {4096, 3});
  EXPECT_EQ(s.code(), StatusCode::kBadRequest);
  EXPECT_NE(s.message().find("already initialised"), std::string::npos) << s.message();
  EXPECT_EQ(InitClusterConfig(*client_, Keys(), {1024, 3, 2}).code(), StatusCode::kBadRequest);
  EXPECT_EQ(InitClusterConfig(*client_, Keys(), {0, 3}).code(), StatusCode::kBadRequest);
}

TEST_F(ClusterTest, ClusterNodesJoinAnInitialisedClusterAndSeeOneAnother) {
  auto make = [&](NodeId id, const std::string& cluster) {
    ClusterNodeOptions o;
    o.etcd.endpoints = {etcd_.endpoint()};
    o.cluster = cluster;
    o.self = Node(id);
    o.lease_ttl_s = 2;
    return ClusterNode::Create(o, {}).value();
  };
  auto lonely = make(1, "uninitialised");
  const Status s = lonely->Start();
  EXPECT_EQ(s.code(), StatusCode::kBadRequest);
  EXPECT_NE(s.message().find("irisctl cluster init"), std::string::npos) << s.message();

  ASSERT_TRUE(InitClusterConfig(*client_, Keys(), {256, 3, 2}).ok());
  auto a = make(1, "test");
  auto b = make(2, "test");
  ASSERT_TRUE(a->Start().ok());
  ASSERT_TRUE(b->Start().ok());
  for (ClusterNode* n : {a.get(), b.get()}) {
    ASSERT_TRUE(WaitFor([&] { return AllPlaced(*n->snapshot(), {1, 2}); }));
    EXPECT_TRUE(n->snapshot()->Alive(1));
    EXPECT_TRUE(n->snapshot()->Alive(2));
  }
  EXPECT_TRUE(a->controller() != b->controller());  // exactly one
  for (const auto& [id, shard] : a->snapshot()->shards()) EXPECT_EQ(shard.replicas.size(), 2u);
  ASSERT_TRUE(b->RevokeUser(77, 1000).ok());
  ASSERT_TRUE(WaitFor([&] { return a->snapshot()->state().revoked_users.count(77) == 1; }));
  b->Stop();
  ASSERT_TRUE(WaitFor([&] { return !a->snapshot()->Alive(2) && a->controller(); }));
  a->Stop();
}

}  // namespace
}  // namespace iris::cluster
