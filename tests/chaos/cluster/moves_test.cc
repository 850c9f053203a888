// Replica moves under kills (issue 16; CLUSTER.md §6; docs/replication.md "Moving a
// replica"): four storage nodes with --replicas 3 (four shards, each on three of them).
// Each cycle drains a seeded node (irisctl cluster drain): the placement controller moves
// its replicas away one shard at a time, each move a copy to the new node (a learner), a
// short freeze and an epoch switch in etcd. While a move is in progress, a seeded
// participant of it is killed with SIGKILL — the shard's primary, the learner or the node
// being moved out — and started again after the cluster made progress without it. Heal: the
// drain completes (the node holds no replica), is cancelled, and the controller moves
// replicas back until every node holds three. The checker finds any acknowledged message
// lost, duplicated or reordered.

#include <gtest/gtest.h>
#include <signal.h>

#include <iostream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "cluster_chaos.h"
#include "common/clock.h"
#include "support/wait_for.h"

namespace iris::chaos {
namespace {

using testing::LocalCluster;

class MovesClusterChaos : public ClusterChaos {
 protected:
  int NodeCount() const override { return 4; }
};

// Replicas per storage node and the shards with a move in progress.
struct Counts {
  std::map<NodeId, int> replicas;
  std::vector<cluster::ShardInfo> moving;
};

std::optional<Counts> Read(LocalCluster& cluster) {
  auto state = cluster.State();
  if (!state.ok()) return std::nullopt;
  Counts c;
  for (const auto& [id, n] : state->nodes) {
    if (n.role == cluster::NodeRole::kStorage) c.replicas[id] = 0;
  }
  for (const auto& [id, s] : state->shards) {
    for (NodeId r : s.replicas) ++c.replicas[r];
    if (!s.target.empty()) c.moving.push_back(s);
  }
  return c;
}

class MoveKillNemesis : public Nemesis {
 public:
  explicit MoveKillNemesis(LocalCluster& cluster) : cluster_(cluster) {}
  std::string name() const override { return "move-kill"; }

  void Inject(ChaosRun& run, std::mt19937_64& rng) override {
    drained_ = static_cast<NodeId>(1 + rng() % cluster_.size());
    ASSERT_EQ(Drain(drained_, false), 0);
    // A move in progress (etcd polled as fast as it answers: a move of this little data
    // takes a few hundred ms).
    std::optional<cluster::ShardInfo> move;
    testing::PollUntil(
        [&] {
          auto c = Read(cluster_);
          if (c && !c->moving.empty()) move = c->moving.front();
          return move.has_value() || (c && c->replicas[drained_] == 0);
        },
        30'000, 1);
    NodeId victim = 0;
    std::string role;
    if (move) {
      const int pick = static_cast<int>(rng() % 3);
      if (pick == 0) {
        victim = move->primary;
        role = "primary";
      } else if (pick == 1) {
        for (NodeId n : move->target) {
          if (std::find(move->replicas.begin(), move->replicas.end(), n) == move->replicas.end()) {
            victim = n;
          }
        }
        role = "learner";
      } else {
        victim = drained_;
        role = "moved out";
      }
      ++kills_in_move_;
    } else {
      victim = static_cast<NodeId>(1 + rng() % cluster_.size());
      role = "no move seen";
    }
    ASSERT_NE(victim, 0u);
    victim_ = victim;
    cluster_.node(victim_).Stop(SIGKILL);
    std::cout << "draining node " << drained_ << ": killed node " << victim_ << " (" << role
              << (move ? ", shard " + std::to_string(move->id) : std::string()) << ")"
              << std::endl;
    ExpectProgress(run, "node " + std::to_string(victim_) + " killed during a move",
                   2 * static_cast<uint64_t>(run.options().clients));
    cluster_.node(victim_).Start();
    run.ServerUp();  // its new client port
    cluster_.WaitRegistered(victim_);
  }

  void Heal(ChaosRun& run) override {
    const int64_t t0 = SystemClock::Instance().MonoMillis();
    std::string last;
    const auto settled = [&](bool drained) {
      return testing::PollUntil(
          [&] {
            auto c = Read(cluster_);
            if (!c) return false;
            last.clear();
            for (const auto& [id, n] : c->replicas) {
              last += "node " + std::to_string(id) + ": " + std::to_string(n) + "  ";
            }
            last += "moving: " + std::to_string(c->moving.size());
            if (!c->moving.empty()) return false;
            if (drained) return c->replicas[drained_] == 0;
            for (const auto& [id, n] : c->replicas) {
              if (n != 3) return false;
            }
            return true;
          },
          180'000, 20);
    };
    EXPECT_TRUE(settled(true)) << "node " << drained_ << " not drained: " << last;
    const int64_t t1 = SystemClock::Instance().MonoMillis();
    ASSERT_EQ(Drain(drained_, true), 0);
    EXPECT_TRUE(settled(false)) << "replicas not moved back: " << last;
    ++cycles_;
    std::cout << "node " << drained_ << " drained " << t1 - t0 << " ms after the kill's heal, "
              << "and refilled in " << SystemClock::Instance().MonoMillis() - t1 << " ms"
              << std::endl;
    ExpectProgress(run, "after moving back", static_cast<uint64_t>(run.options().clients));
  }

  int cycles() const { return cycles_; }
  int kills_in_move() const { return kills_in_move_; }

 private:
  int Drain(NodeId node, bool cancel) {
    std::vector<std::string> args = {"cluster", "drain",     "--etcd",    cluster_.etcd().endpoint(),
                                     "--cluster", cluster_.name(), "--node-id", std::to_string(node)};
    if (cancel) args.push_back("--cancel");
    std::string out;
    const int code = cluster_.Irisctl(args, &out);
    EXPECT_EQ(code, 0) << out;
    return code;
  }

  LocalCluster& cluster_;
  NodeId drained_ = 0;
  NodeId victim_ = 0;
  int cycles_ = 0;
  int kills_in_move_ = 0;
};

TEST_F(MovesClusterChaos, KillsDuringReplicaMovesLoseNothing) {
  const int cycles = ChaosCycles(3, 100);
  MoveKillNemesis nemesis(*cluster_);
  run_->StartClients();
  ASSERT_TRUE(run_->RunSchedule(nemesis, cycles));
  const CheckerReport r = run_->FinishAndCheck(
      "cluster-moves", cycles,
      "\"drains\":" + std::to_string(nemesis.cycles()) +
          ",\"kills_during_a_move\":" + std::to_string(nemesis.kills_in_move()));
  EXPECT_GT(r.acknowledged, 0u);
}

}  // namespace
}  // namespace iris::chaos
