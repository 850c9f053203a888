// Clock skew of one node of a replicated cluster (issue 17; the fixture: cluster_chaos.h).
// Node 2 runs under libfaketime (harness/faketime.h, strobe mode: its wall clock jumps while
// it runs, CLOCK_MONOTONIC untouched, as a real step of the system clock would); nodes 1
// and 3 keep the true time. Each cycle steps node 2's clock to the next of -30 s, +30 s,
// 0 (a handshake: the step counts once a WELCOME through node 2 shows it), then isolates one
// node until its shards failed over (node 2 when it is ahead, another when it is behind, a
// seeded one at 0), and heals.
//
// What it exercises: message ids are HLC timestamps drawn by each shard's primary from its
// own wall clock. When a shard moves from a node that runs 30 s ahead to one that does not
// (or the reverse), the new primary must still draw ids above every id of the shard (the
// high-water mark travels in the replicated batches), so ids keep increasing within every
// inbox; leases, lease-fenced reads and the step-down timers use the monotonic clock and
// must not care. The checker fails the run on any lost, duplicated, reordered (ids not
// increasing within a session or an inbox) or unexpected message.

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <random>
#include <string>

#include "cluster_chaos.h"
#include "common/clock.h"
#include "harness/faketime.h"
#include "support/wait_for.h"

namespace iris::chaos {
namespace {

constexpr uint64_t kSkewedNode = 2;
constexpr uint64_t kProbeUser = 990;

class SkewedClusterChaos : public ClusterChaos {
 protected:
  void PrepareNodes() override {
    ft_ = std::make_unique<FaketimeIrisd>(kSkewedNode);
    ASSERT_TRUE(ft_->error().empty()) << ft_->error();
    ft_->SetMode("strobe");
  }
  void TearDown() override {
    ClusterChaos::TearDown();
    ft_.reset();
  }

  std::unique_ptr<FaketimeIrisd> ft_;
};

class SkewAndIsolateNemesis : public Nemesis {
 public:
  SkewAndIsolateNemesis(const FaketimeIrisd& ft, testing::NetworkLab& lab,
                        testing::LocalCluster& cluster)
      : ft_(ft), isolate_(lab, cluster) {}
  std::string name() const override { return "skew-and-isolate"; }

  void Inject(ChaosRun& run, std::mt19937_64& rng) override {
    static constexpr int kOffsets[] = {-30, 30, 0};
    const int offset_s = kOffsets[steps_ % 3];
    ++steps_;
    ft_.SetStrobe(offset_s);
    int64_t skew_ms = 0;
    const bool stepped = testing::PollUntil(
        [&] {
          const auto w = run.TryProbe(kProbeUser, kSkewedNode - 1);
          if (!w) return false;
          skew_ms = static_cast<int64_t>(w->server_time_ms()) -
                    SystemClock::Instance().WallMillis();
          return std::llabs(skew_ms - offset_s * 1000) < 5000;
        },
        15'000, 100);
    ASSERT_TRUE(stepped) << "node " << kSkewedNode << "'s clock did not step to " << offset_s
                         << " s (off by " << skew_ms << " ms)";
    ++confirmed_;
    std::cout << "node " << kSkewedNode << "'s clock at " << offset_s << " s (seen "
              << skew_ms << " ms)" << std::endl;
    // Ahead (+30 s): node 2 is isolated, so its shards, whose ids ran 30 s ahead, move to
    // nodes on the true time. Behind (-30 s): another node is, so its shards may move to
    // node 2, whose clock is behind their ids. At 0: any node (seeded).
    if (offset_s > 0) {
      isolate_.set_next(static_cast<int>(kSkewedNode));
    } else if (offset_s < 0) {
      isolate_.set_next(rng() % 2 == 0 ? 1 : 3);
    }
    isolate_.Inject(run, rng);
  }
  void Heal(ChaosRun& run) override { isolate_.Heal(run); }

  int confirmed() const { return confirmed_; }
  int isolations() const { return isolate_.isolations(); }

 private:
  const FaketimeIrisd& ft_;
  IsolateNemesis isolate_;
  int steps_ = 0;
  int confirmed_ = 0;
};

TEST_F(SkewedClusterChaos, OneNodesClockJumpingKeepsIdsIncreasingAndLosesNothing) {
  const int cycles = ChaosCycles(3, 60);
  SkewAndIsolateNemesis nemesis(*ft_, *lab_, *cluster_);
  run_->StartClients();
  ASSERT_TRUE(run_->RunSchedule(nemesis, cycles));
  EXPECT_EQ(nemesis.confirmed(), cycles);
  const CheckerReport r = run_->FinishAndCheck(
      "cluster-clock-skew", cycles,
      "\"clock_steps\":" + std::to_string(nemesis.confirmed()) +
          ",\"isolations\":" + std::to_string(nemesis.isolations()));
  EXPECT_GT(r.acknowledged, 0u);
}

}  // namespace
}  // namespace iris::chaos
