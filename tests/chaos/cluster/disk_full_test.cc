// A full disk under one node of a replicated cluster (issue 17; the fixture: cluster_chaos.h).
// Every node's data directory is a tmpfs of its own (mounted in a private mount namespace;
// root needed: the test fails, never skips, when it cannot mount). Each cycle a seeded node's
// file system is filled with a ballast file: its replicas can no longer make batches durable,
// so they stop (a replica whose WAL cannot grow stops its shard on that node: irisd logs
// "shard replica stopped (restart the node to recover it)"), its leases lapse and the two
// other replicas of every shard, which reach W = 2 between them, go on; clients see
// retryable errors at most. Held until the cluster made progress; then the ballast is
// deleted and the node restarted (the documented recovery), and it must come back. Nothing
// acknowledged may be lost: the checker reads every inbox at the end.

#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/statvfs.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <random>
#include <string>

#include "cluster_chaos.h"
#include "common/clock.h"

namespace iris::chaos {
namespace {

using testing::LocalCluster;
using testing::ServerProcess;

constexpr uint64_t kTmpfsBytes = 512ull << 20;

uint64_t FreeBytes(const std::string& dir) {
  struct statvfs v {};
  if (statvfs(dir.c_str(), &v) != 0) return 0;
  return static_cast<uint64_t>(v.f_bavail) * v.f_frsize;
}

// Fills the file system of `path` (writes until ENOSPC); returns the bytes written.
uint64_t FillWithBallast(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) return 0;
  const std::string chunk(1 << 20, 'b');
  uint64_t written = 0;
  for (;;) {
    const size_t n = std::fwrite(chunk.data(), 1, chunk.size(), f);
    written += n;
    if (n < chunk.size()) break;
  }
  std::fclose(f);
  return written;
}

class DiskFullClusterChaos : public ClusterChaos {
 protected:
  void ConfigureCluster(LocalCluster::Options& o) override {
    ASSERT_EQ(unshare(CLONE_NEWNS), 0)
        << "unshare(CLONE_NEWNS) failed: " << std::strerror(errno)
        << " — the cluster disk-full test needs root (CAP_SYS_ADMIN); it must not be skipped";
    ASSERT_EQ(mount("none", "/", nullptr, MS_REC | MS_PRIVATE, nullptr), 0) << std::strerror(errno);
    o.before_start = [this](NodeId id, ServerProcess& node) {
      const std::string options = "size=" + std::to_string(kTmpfsBytes) + ",mode=0700";
      ASSERT_EQ(mount("tmpfs", node.data_dir().c_str(), "tmpfs", 0, options.c_str()), 0)
          << "node " << id << ": cannot mount a tmpfs on " << node.data_dir() << ": "
          << std::strerror(errno);
      dirs_[id] = node.data_dir();
    };
  }
  void TearDown() override {
    if (run_) run_->StopClients();
    if (cluster_) {
      for (size_t k = 1; k <= cluster_->size(); ++k) {
        cluster_->node(static_cast<NodeId>(k)).Stop(SIGKILL);
      }
    }
    ClusterChaos::TearDown();
    for (const auto& [id, dir] : dirs_) umount2(dir.c_str(), MNT_DETACH);
  }

  std::map<NodeId, std::string> dirs_;
};

class DiskFullNemesis : public Nemesis {
 public:
  DiskFullNemesis(LocalCluster& cluster, std::map<NodeId, std::string>& dirs)
      : cluster_(cluster), dirs_(dirs) {}
  std::string name() const override { return "disk-full"; }
  void Inject(ChaosRun& run, std::mt19937_64& rng) override {
    node_ = static_cast<NodeId>(1 + rng() % cluster_.size());
    const std::string& dir = dirs_.at(node_);
    const int64_t t0 = SystemClock::Instance().MonoMillis();
    const uint64_t written = FillWithBallast(dir + "/ballast");
    ASSERT_GT(written, 0u) << "cannot write a ballast file in " << dir;
    ASSERT_LT(FreeBytes(dir), 1u << 20) << "node " << node_ << "'s file system is not full";
    ++fills_;
    std::cout << "node " << node_ << ": file system full (" << (written >> 20)
              << " MiB of ballast)" << std::endl;
    // The other two replicas of every shard go on (after a failover for the shards it led).
    ExpectProgress(run, "node " + std::to_string(node_) + "'s disk full",
                   4 * static_cast<uint64_t>(run.options().clients));
    std::cout << "node " << node_ << "'s disk full: progress after "
              << SystemClock::Instance().MonoMillis() - t0 << " ms" << std::endl;
  }
  void Heal(ChaosRun& run) override {
    std::error_code ec;
    std::filesystem::remove(dirs_.at(node_) + "/ballast", ec);
    ASSERT_FALSE(ec) << ec.message();
    cluster_.node(node_).KillAndRestart();
    run.ServerUp();  // its new client port
    cluster_.WaitRegistered(node_);
    ExpectFreshReadsThrough(run, cluster_.node(node_), static_cast<int>(node_));
  }
  int fills() const { return fills_; }

 private:
  LocalCluster& cluster_;
  std::map<NodeId, std::string>& dirs_;
  NodeId node_ = 0;
  int fills_ = 0;
};

TEST_F(DiskFullClusterChaos, FullDiskOfOneNodeLosesNothing) {
  const int cycles = ChaosCycles(3, 100);
  DiskFullNemesis nemesis(*cluster_, dirs_);
  run_->StartClients();
  ASSERT_TRUE(run_->RunSchedule(nemesis, cycles));
  const CheckerReport r = run_->FinishAndCheck("cluster-disk-full", cycles,
                                               "\"fills\":" + std::to_string(nemesis.fills()));
  EXPECT_GT(r.acknowledged, 0u);
}

}  // namespace
}  // namespace iris::chaos
