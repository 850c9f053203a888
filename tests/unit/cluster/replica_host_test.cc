// ReplicaHost, the replica's side of a rebuild (cluster/replication/rebuild.h): which chunks
// it takes and when an InstallSnapshot may reach the state machine. A real ShardLog; the
// peers are this test, which plays the primary (node 2).
#include "cluster/replication/replica_host.h"

#include <gtest/gtest.h>

#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "../../support/wait_for.h"
#include "../store/store_test_util.h"

namespace iris::cluster::repl {
namespace {

using iris::testing::PollUntil;
using store::testing::TempDir;

constexpr NodeId kPrimary = 2;

class ReplicaHostRebuildTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Result<std::unique_ptr<ShardLog>> log = ShardLog::Open(dir_.path());
    ASSERT_TRUE(log.ok()) << log.status().message();
    log_ = std::move(log).value();
    HostOptions o;
    o.shard = 1;
    o.replica.self = 1;
    o.replica.replicas = {1, 2, 3};
    o.replica.fetch_snapshots = false;
    HostEnvironment env;
    env.apply = [this](const std::vector<Batch>& batches) {
      std::lock_guard<std::mutex> lock(mu_);
      for (const Batch& b : batches) applied_.push_back(b.lsn);
      return Status::Ok();
    };
    env.install_chunk = [this](const std::string& payload) {
      std::lock_guard<std::mutex> lock(mu_);
      installed_.push_back(payload);
      return Status::Ok();
    };
    env.send_ack = [this](NodeId to, const RebuildAck& ack) {
      std::lock_guard<std::mutex> lock(mu_);
      EXPECT_EQ(to, kPrimary);
      acks_.push_back(ack);
    };
    Result<std::unique_ptr<ReplicaHost>> host = ReplicaHost::Start(o, *log_, std::move(env));
    ASSERT_TRUE(host.ok()) << host.status().message();
    host_ = std::move(host).value();
  }

  // Sends a chunk and returns the host's answer.
  std::optional<bool> Chunk(uint64_t id, uint64_t seq, bool last, Epoch epoch = 1,
                            Lsn read_lsn = 9) {
    size_t before = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      before = acks_.size();
    }
    host_->PostRebuildChunk(kPrimary, RebuildChunk{id, seq, epoch, last, "chunk", read_lsn});
    if (!PollUntil([&] {
          std::lock_guard<std::mutex> lock(mu_);
          return acks_.size() > before;
        })) {
      return std::nullopt;
    }
    std::lock_guard<std::mutex> lock(mu_);
    EXPECT_EQ(acks_.back().rebuild, id);
    EXPECT_EQ(acks_.back().seq, seq);
    return acks_.back().ok;
  }
  void Install(uint64_t id, Lsn lsn) {
    host_->Post(Receive{kPrimary, InstallSnapshot{1, Snapshot{lsn, 1, 500, RebuildState(id)}}});
  }
  // An install the host must refuse: it answers so (the sender then drops that rebuild and
  // the primary's next order starts another, instead of waiting out the level grace).
  void InstallRefused(uint64_t id, Lsn lsn) {
    size_t before = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      before = acks_.size();
    }
    Install(id, lsn);
    ASSERT_TRUE(PollUntil([&] {
      std::lock_guard<std::mutex> lock(mu_);
      return acks_.size() > before;
    })) << "install of rebuild "
        << id << " not answered";
    std::lock_guard<std::mutex> lock(mu_);
    EXPECT_EQ(acks_.back().rebuild, id);
    EXPECT_EQ(acks_.back().seq, kInstallRefusedSeq);
    EXPECT_FALSE(acks_.back().ok);
  }

  TempDir dir_;
  std::unique_ptr<ShardLog> log_;
  std::unique_ptr<ReplicaHost> host_;
  std::mutex mu_;
  std::vector<Lsn> applied_;
  std::vector<std::string> installed_;
  std::vector<RebuildAck> acks_;
};

TEST_F(ReplicaHostRebuildTest, AnInstallIsTakenOnlyAfterEveryChunkAndNoApplySinceTheFirst) {
  // Rebuild 5: a chunk, then the host applies a committed batch (levelled by the primary).
  // That batch may have put back a record older than the chunk's, so the install (which
  // skips the log up to its lsn) must not happen: the rest of the rebuild is refused, and
  // an install naming it too.
  ASSERT_EQ(Chunk(5, 0, false), std::optional<bool>(true));
  host_->Post(Receive{kPrimary, Level{1, 0, 0, {Batch{1, 1, 10, "b1"}}, 1}});
  ASSERT_TRUE(PollUntil([&] { return host_->view().applied_lsn == 1; }));
  EXPECT_EQ(Chunk(5, 1, true), std::optional<bool>(false));
  InstallRefused(5, 9);
  // A chunk read before what this store applied would put back older records: refused.
  EXPECT_EQ(Chunk(6, 0, false, 1, /*read_lsn=*/0), std::optional<bool>(false));
  // Out of order, a later chunk of an unknown rebuild, and a fenced epoch are refused.
  EXPECT_EQ(Chunk(6, 2, false), std::optional<bool>(false));
  EXPECT_EQ(Chunk(7, 1, false), std::optional<bool>(false));
  EXPECT_EQ(Chunk(8, 0, false, /*epoch=*/0), std::optional<bool>(false));
  EXPECT_EQ(host_->view().snapshot_lsn, 0u) << "installed over a batch applied mid-rebuild";
  EXPECT_EQ(host_->view().rebuilds_installed, 0u);

  // Rebuild 9: incomplete (no last chunk): its install is refused too.
  ASSERT_EQ(Chunk(9, 0, false), std::optional<bool>(true));
  InstallRefused(9, 9);
  // A resent chunk is acknowledged again and not installed twice.
  size_t installed = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    installed = installed_.size();
  }
  ASSERT_EQ(Chunk(9, 0, false), std::optional<bool>(true));
  {
    std::lock_guard<std::mutex> lock(mu_);
    EXPECT_EQ(installed_.size(), installed);
  }
  EXPECT_EQ(host_->view().snapshot_lsn, 0u) << "installed before the last chunk";

  // Rebuild 10, complete and clean; an install naming another rebuild is still refused.
  ASSERT_EQ(Chunk(10, 0, false), std::optional<bool>(true));
  ASSERT_EQ(Chunk(10, 1, true), std::optional<bool>(true));
  InstallRefused(9, 9);
  Install(10, 9);
  ASSERT_TRUE(PollUntil([&] { return host_->view().rebuilds_installed == 1; }));
  const ReplicaHost::View v = host_->view();
  EXPECT_EQ(v.snapshot_lsn, 9u);
  EXPECT_EQ(v.applied_lsn, 9u);  // the store holds the copy: nothing up to 9 is applied again
  std::lock_guard<std::mutex> lock(mu_);
  EXPECT_EQ(applied_, std::vector<Lsn>{1});
}

// Each chunk is read from the primary's store at its applied lsn (read_lsn); the replica is
// levelled from the install's lsn on, so a chunk read before that lsn lacks batches nothing
// would replay: the install is refused (seen as lost messages in the cluster's power-loss
// chaos test, where a new primary's store had not yet applied the commit it rebuilt from).
TEST_F(ReplicaHostRebuildTest, AnInstallBeyondWhatAChunkWasReadAtIsRefused) {
  ASSERT_EQ(Chunk(11, 0, false, 1, /*read_lsn=*/9), std::optional<bool>(true));
  ASSERT_EQ(Chunk(11, 1, true, 1, /*read_lsn=*/7), std::optional<bool>(true));
  InstallRefused(11, 9);
  // The next rebuild's chunks were all read at 9 or later: taken. (The refused install
  // changed nothing: the host goes on taking chunks.)
  ASSERT_EQ(Chunk(12, 0, false, 1, /*read_lsn=*/9), std::optional<bool>(true));
  ASSERT_EQ(Chunk(12, 1, true, 1, /*read_lsn=*/12), std::optional<bool>(true));
  EXPECT_EQ(host_->view().snapshot_lsn, 0u) << "installed at 9 with a chunk read at 7";
  EXPECT_EQ(host_->view().rebuilds_installed, 0u);
  Install(12, 9);
  ASSERT_TRUE(PollUntil([&] { return host_->view().rebuilds_installed == 1; }));
  EXPECT_EQ(host_->view().snapshot_lsn, 9u);
  // A repeat of the install taken is not answered as refused.
  size_t acks = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    acks = acks_.size();
  }
  Install(12, 9);
  ASSERT_EQ(Chunk(13, 0, false, 1, /*read_lsn=*/9), std::optional<bool>(true));
  std::lock_guard<std::mutex> lock(mu_);
  EXPECT_EQ(acks_.size(), acks + 1) << "the repeated install was answered";
}

}  // namespace
}  // namespace iris::cluster::repl
