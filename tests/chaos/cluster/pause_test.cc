// SIGSTOP / SIGCONT of a shard's primary in a replicated cluster (issue 17; the fixture:
// cluster_chaos.h). A stopped primary keeps its peer links and sockets open but answers
// nothing: its etcd lease lapses, the two other replicas elect a successor of a higher
// epoch and the clients go on through them. When it continues, it still believes it is the
// primary of the old epoch and has batches and SEND_ACKs of that epoch in flight: the
// successor's replicas refuse them (fencing), so it acknowledges nothing that the new
// epoch does not hold (CLUSTER.md G4), steps down and is levelled as a backup. The checker
// finds any acknowledged message that was lost; reads through the node just continued must
// be fresh.

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "cluster_chaos.h"
#include "common/clock.h"

namespace iris::chaos {
namespace {

using testing::LocalCluster;

class PausePrimaryNemesis : public Nemesis {
 public:
  explicit PausePrimaryNemesis(LocalCluster& cluster) : cluster_(cluster) {}
  std::string name() const override { return "pause-primary"; }
  void Inject(ChaosRun& run, std::mt19937_64& rng) override {
    ASSERT_TRUE(WaitEveryReplicaVotes(cluster_, 30'000, "before a pause"));
    auto state = cluster_.State();
    ASSERT_TRUE(state.ok()) << state.status().ToString();
    std::vector<NodeId> primaries;
    for (const auto& [id, shard] : state->shards) primaries.push_back(shard.primary);
    ASSERT_FALSE(primaries.empty());
    node_ = primaries[rng() % primaries.size()];
    const pid_t pid = cluster_.node(node_).pid();
    const int64_t t0 = SystemClock::Instance().MonoMillis();
    ASSERT_EQ(kill(pid, SIGSTOP), 0);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, WUNTRACED), pid);
    ASSERT_TRUE(WIFSTOPPED(status)) << "irisd did not stop (wait status " << status << ")";
    ++pauses_;
    // Stopped for longer than its lease: etcd drops its registration and every shard it led
    // has another primary; the others make progress meanwhile.
    ASSERT_TRUE(WaitNotPrimary(cluster_, node_, true, 30'000,
                               "node " + std::to_string(node_) + " stopped"));
    std::cout << "node " << node_ << " stopped: its shards failed over after "
              << SystemClock::Instance().MonoMillis() - t0 << " ms" << std::endl;
    ExpectProgress(run, "node " + std::to_string(node_) + " stopped",
                   2 * static_cast<uint64_t>(run.options().clients));
  }
  void Heal(ChaosRun& run) override {
    const pid_t pid = cluster_.node(node_).pid();
    ASSERT_EQ(kill(pid, SIGCONT), 0);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, WCONTINUED), pid);
    ASSERT_TRUE(WIFCONTINUED(status)) << "irisd did not continue (wait status " << status << ")";
    cluster_.WaitRegistered(node_);
    ExpectFreshReadsThrough(run, cluster_.node(node_), static_cast<int>(node_));
  }
  int pauses() const { return pauses_; }

 private:
  LocalCluster& cluster_;
  NodeId node_ = 0;
  int pauses_ = 0;
};

TEST_F(ClusterChaos, PausedPrimaryLosesNothing) {
  const int cycles = ChaosCycles(3, 100);
  PausePrimaryNemesis nemesis(*cluster_);
  run_->StartClients();
  ASSERT_TRUE(run_->RunSchedule(nemesis, cycles));
  const CheckerReport r = run_->FinishAndCheck("cluster-pause", cycles,
                                               "\"pauses\":" + std::to_string(nemesis.pauses()));
  EXPECT_GT(r.acknowledged, 0u);
}

}  // namespace
}  // namespace iris::chaos
