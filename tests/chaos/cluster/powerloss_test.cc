// Power loss of one node at a time in a replicated cluster (issue 17; the fixture:
// cluster_chaos.h). Every node's data directory is on its own iris_lossyfs (a FUSE file
// system that keeps what was not fsynced in memory and drops it on "crash":
// chaos/powerloss/lossy_mount.h). Each cycle a seeded node loses power while the chaos
// clients send through every node: its file system drops everything not synced, irisd is
// SIGKILLed, the file system remounted and irisd restarted on what survived; it must find
// its place again (its replicas levelled or rebuilt from the others) while the cluster
// keeps acknowledging. With W = 2 an acknowledged append is durable on two nodes, so losing
// one node's unsynced writes loses nothing acknowledged; a replica that answered before its
// WAL or its promise was durable, or that cannot recover from its own synced prefix, shows
// up as a lost, duplicated or reordered message or as a node that does not come back.

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <cstdint>
#include <filesystem>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "chaos/powerloss/lossy_mount.h"
#include "cluster_chaos.h"
#include "common/clock.h"

namespace iris::chaos {
namespace {

class PowerLossClusterChaos : public ClusterChaos {
 protected:
  void ConfigureCluster(testing::LocalCluster::Options& o) override {
    char tmpl[] = "/tmp/iris-chaos-lossy-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    backing_root_ = tmpl;
    o.before_start = [this](NodeId id, testing::ServerProcess& node) {
      auto m = std::make_unique<powerloss::LossyMount>(
          backing_root_ + "/node-" + std::to_string(id), node.data_dir());
      std::string err;
      ASSERT_TRUE(m->Mount(&err)) << "node " << id << ": " << err;
      mounts_.push_back(std::move(m));
    };
  }
  void TearDown() override {
    // The nodes go first (nothing may hold a mount), then the mounts.
    if (run_) run_->StopClients();
    if (cluster_) {
      for (size_t k = 1; k <= cluster_->size(); ++k) {
        cluster_->node(static_cast<NodeId>(k)).Stop(SIGKILL);
      }
    }
    ClusterChaos::TearDown();
    mounts_.clear();
    std::error_code ec;
    if (!backing_root_.empty()) std::filesystem::remove_all(backing_root_, ec);
  }

  std::string backing_root_;
  std::vector<std::unique_ptr<powerloss::LossyMount>> mounts_;  // node k: mounts_[k - 1]
};

class PowerLossNemesis : public Nemesis {
 public:
  PowerLossNemesis(testing::LocalCluster& cluster,
                   std::vector<std::unique_ptr<powerloss::LossyMount>>& mounts)
      : cluster_(cluster), mounts_(mounts) {}
  std::string name() const override { return "power-loss"; }
  void Start(ChaosRun& /*run*/) override {
    // What irisd wrote before the first loss (its generated TLS key, its secrets) stands for
    // files an operator installs: synced once.
    for (auto& m : mounts_) ASSERT_TRUE(m->Sync());
  }
  void Inject(ChaosRun& run, std::mt19937_64& rng) override {
    // One node, or (every third cycle) two at once: a shared power feed. W = 2 copies are
    // durable, so even then nothing acknowledged may be lost.
    victims_.clear();
    const int n = static_cast<int>(mounts_.size());
    victims_.push_back(1 + static_cast<int>(rng() % static_cast<uint64_t>(n)));
    if (++cycles_ % 3 == 0) victims_.push_back(1 + victims_[0] % n);
    // Let the clients write for a while first (a seeded number of acknowledgements).
    const uint64_t want = 20 + rng() % 200;
    ASSERT_TRUE(run.WaitAcks(run.acks() + want, 30'000)) << "no progress before the power loss";
    // The processes stop first, all at once (a node whose disk vanished under it would
    // otherwise abort on the I/O errors before its turn), then whatever they had not synced
    // is dropped.
    for (int k : victims_) kill(cluster_.node(static_cast<NodeId>(k)).pid(), SIGKILL);
    for (int k : victims_) {
      ASSERT_TRUE(mounts_[static_cast<size_t>(k - 1)]->Crash()) << "node " << k;
    }
    for (int k : victims_) {
      const int status = cluster_.node(static_cast<NodeId>(k)).Stop(SIGKILL);
      ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << status;
      ++losses_;
      std::cout << "node " << k << " lost power after " << want << " more acknowledgements"
                << std::endl;
    }
  }
  void Heal(ChaosRun& run) override {
    for (int k : victims_) {
      powerloss::LossyMount& m = *mounts_[static_cast<size_t>(k - 1)];
      m.Unmount();
      std::string err;
      ASSERT_TRUE(m.Mount(&err)) << "node " << k << ": " << err;
      cluster_.node(static_cast<NodeId>(k)).Start();
      if (::testing::Test::HasFatalFailure()) return;
    }
    run.ServerUp();
    for (int k : victims_) cluster_.WaitRegistered(static_cast<NodeId>(k));
  }
  int losses() const { return losses_; }

 private:
  testing::LocalCluster& cluster_;
  std::vector<std::unique_ptr<powerloss::LossyMount>>& mounts_;
  std::vector<int> victims_;
  int cycles_ = 0;
  int losses_ = 0;
};

TEST_F(PowerLossClusterChaos, PowerLossOfOneNodeAtATimeLosesNothing) {
  const int cycles = ChaosCycles(3, 100);
  PowerLossNemesis nemesis(*cluster_, mounts_);
  run_->StartClients();
  ASSERT_TRUE(run_->RunSchedule(nemesis, cycles));
  const CheckerReport r = run_->FinishAndCheck(
      "cluster-power-loss", cycles, "\"power_losses\":" + std::to_string(nemesis.losses()));
  EXPECT_GT(r.acknowledged, 0u);
}

}  // namespace
}  // namespace iris::chaos
