// ShardLog (cluster/replication/shard_log.h): the replicas' durable state on a real RocksDB,
// including a SIGKILL of a process in the middle of appends.

#include "cluster/replication/shard_log.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <future>
#include <mutex>
#include <random>

#include "../store/store_test_util.h"

namespace iris::cluster::repl {
namespace {

using store::testing::TempDir;

Batch MakeBatch(Lsn lsn, Epoch epoch = 1) {
  return Batch{epoch, lsn, 1000 + lsn, "payload-" + std::to_string(lsn)};
}

std::vector<Batch> Range(Lsn first, Lsn last, Epoch epoch = 1) {
  std::vector<Batch> out;
  for (Lsn l = first; l <= last; ++l) out.push_back(MakeBatch(l, epoch));
  return out;
}

// Appends and waits for the callback: (status, last lsn reported).
std::pair<Status, Lsn> AppendAndWait(ShardLog& log, ShardNo shard, std::vector<Batch> batches) {
  std::promise<std::pair<Status, Lsn>> p;
  std::future<std::pair<Status, Lsn>> f = p.get_future();
  log.Append(shard, std::move(batches), [&p](Status s, Lsn last) { p.set_value({s, last}); });
  return f.get();
}

std::unique_ptr<ShardLog> OpenLog(const std::string& path) {
  Result<std::unique_ptr<ShardLog>> log = ShardLog::Open(path);
  EXPECT_TRUE(log.ok()) << log.status().message();
  return log.ok() ? std::move(log).value() : nullptr;
}

TEST(ShardLogTest, AppendsAreReportedSyncedAndSurviveReopen) {
  TempDir dir;
  {
    auto log = OpenLog(dir.Sub("repl"));
    auto [s1, last1] = AppendAndWait(*log, 1, Range(1, 2));
    ASSERT_TRUE(s1.ok()) << s1.message();
    EXPECT_EQ(last1, 2u);
    auto [s2, last2] = AppendAndWait(*log, 1, Range(3, 3));
    ASSERT_TRUE(s2.ok());
    EXPECT_EQ(last2, 3u);
    auto [s3, last3] = AppendAndWait(*log, 7, Range(1, 1, 4));
    ASSERT_TRUE(s3.ok());
    EXPECT_EQ(last3, 1u);
    ASSERT_TRUE(log->PersistMeta(1, 5, 4).ok());
    ASSERT_TRUE(log->PersistMeta(7, 3, 0, /*amnesiac=*/true).ok());
  }
  auto log = OpenLog(dir.Sub("repl"));
  Result<std::vector<ShardNo>> shards = log->Shards();
  ASSERT_TRUE(shards.ok());
  EXPECT_EQ(*shards, (std::vector<ShardNo>{1, 7}));
  Result<DurableState> one = log->Load(1);
  ASSERT_TRUE(one.ok()) << one.status().message();
  EXPECT_EQ(one->promised, 5u);
  EXPECT_EQ(one->accepted, 4u);
  EXPECT_FALSE(one->amnesiac);
  EXPECT_EQ(one->snapshot.lsn, 0u);
  EXPECT_EQ(one->batches, Range(1, 3));
  Result<DurableState> seven = log->Load(7);
  ASSERT_TRUE(seven.ok());
  EXPECT_EQ(seven->batches, Range(1, 1, 4));
  EXPECT_TRUE(seven->amnesiac);
  EXPECT_EQ(seven->promised, 3u);
  Result<DurableState> unknown = log->Load(9);
  ASSERT_TRUE(unknown.ok());
  EXPECT_TRUE(unknown->batches.empty());
  EXPECT_EQ(unknown->promised, 0u);
  // The next append continues the reopened log.
  auto [s4, last4] = AppendAndWait(*log, 1, Range(4, 4));
  ASSERT_TRUE(s4.ok());
  EXPECT_EQ(last4, 4u);
}

TEST(ShardLogTest, TruncateCompactAndInstallAreDurableWhenTheyReturn) {
  TempDir dir;
  {
    auto log = OpenLog(dir.Sub("repl"));
    ASSERT_TRUE(AppendAndWait(*log, 2, Range(1, 10)).first.ok());
    ASSERT_TRUE(log->Truncate(2, 6).ok());
    ASSERT_TRUE(log->Compact(2, Snapshot{3, 1, 1003, "state-3"}).ok());
    ASSERT_TRUE(AppendAndWait(*log, 3, Range(1, 5)).first.ok());
    ASSERT_TRUE(log->InstallSnapshot(3, Snapshot{40, 2, 5000, "installed"}).ok());
  }
  auto log = OpenLog(dir.Sub("repl"));
  Result<DurableState> two = log->Load(2);
  ASSERT_TRUE(two.ok()) << two.status().message();
  EXPECT_EQ(two->snapshot.lsn, 3u);
  EXPECT_EQ(two->snapshot.state, "state-3");
  EXPECT_EQ(two->batches, Range(4, 6));
  Result<DurableState> three = log->Load(3);
  ASSERT_TRUE(three.ok());
  EXPECT_EQ(three->snapshot.lsn, 40u);
  EXPECT_EQ(three->snapshot.epoch, 2u);
  EXPECT_EQ(three->snapshot.hlc, 5000u);
  EXPECT_TRUE(three->batches.empty());
  // After an installed snapshot the log continues from it.
  auto [s, last] = AppendAndWait(*log, 3, Range(41, 42, 2));
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(last, 42u);
  ASSERT_TRUE(log->DropShard(2).ok());
  Result<std::vector<ShardNo>> shards = log->Shards();
  ASSERT_TRUE(shards.ok());
  EXPECT_EQ(*shards, std::vector<ShardNo>{3});
}

TEST(ShardLogTest, AnAppendThatLeavesAHoleIsRefusedAndWritesNothing) {
  TempDir dir;
  auto log = OpenLog(dir.Sub("repl"));
  ASSERT_TRUE(AppendAndWait(*log, 1, Range(1, 2)).first.ok());
  auto [s, last] = AppendAndWait(*log, 1, Range(4, 5));
  EXPECT_EQ(s.code(), StatusCode::kInternal);
  EXPECT_NE(s.message().find("append of lsn 4 after lsn 2"), std::string::npos) << s.message();
  EXPECT_EQ(last, 2u);
  Result<DurableState> state = log->Load(1);
  ASSERT_TRUE(state.ok());
  EXPECT_EQ(state->batches, Range(1, 2));
}

// A truncate waits for the appends queued before it, so none of them reappears after it
// (and their callbacks report no lsn the truncate removed once it returned).
TEST(ShardLogTest, AnAppendQueuedBeforeATruncateDoesNotComeBack) {
  TempDir dir;
  std::mutex mu;
  std::vector<Lsn> reported;
  {
    auto log = OpenLog(dir.Sub("repl"));
    for (Lsn l = 1; l <= 10; ++l) {
      log->Append(1, {MakeBatch(l)}, [&](Status s, Lsn last) {
        ASSERT_TRUE(s.ok());
        std::lock_guard<std::mutex> lock(mu);
        reported.push_back(last);
      });
    }
    ASSERT_TRUE(log->Truncate(1, 4).ok());
    {
      std::lock_guard<std::mutex> lock(mu);
      EXPECT_EQ(reported.size(), 10u);  // every earlier append was written before it
    }
    ASSERT_TRUE(AppendAndWait(*log, 1, Range(5, 5, 2)).first.ok());
  }
  auto log = OpenLog(dir.Sub("repl"));
  Result<DurableState> state = log->Load(1);
  ASSERT_TRUE(state.ok());
  std::vector<Batch> want = Range(1, 4);
  want.push_back(MakeBatch(5, 2));
  EXPECT_EQ(state->batches, want);
}

// A child process appends one batch at a time and reports every synced lsn on a pipe; the
// parent SIGKILLs it mid-stream, then reopens the log: every reported batch is there, the
// log has no hole, and its content is what was appended. Repeated on the same directory,
// so a later child also recovers what an earlier kill left.
TEST(ShardLogTest, EverySyncedAppendSurvivesASigkill) {
  TempDir dir;
  const std::string path = dir.Sub("repl");
  std::mt19937 rng(20261205);
  Lsn reported_max = 0;
  for (int cycle = 0; cycle < 5; ++cycle) {
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      close(fds[0]);
      Result<std::unique_ptr<ShardLog>> log = ShardLog::Open(path);
      if (!log.ok()) _exit(2);
      Result<DurableState> state = (*log)->Load(1);
      if (!state.ok()) _exit(3);
      Lsn next = state->snapshot.lsn + state->batches.size() + 1;
      for (;; ++next) {
        std::promise<Lsn> p;
        std::future<Lsn> f = p.get_future();
        (*log)->Append(1, {MakeBatch(next)}, [&p](Status s, Lsn last) {
          if (!s.ok()) _exit(4);
          p.set_value(last);
        });
        const Lsn last = f.get();
        if (write(fds[1], &last, sizeof last) != sizeof last) _exit(5);
      }
    }
    close(fds[1]);
    const size_t stop_after = 50 + rng() % 200;
    size_t seen = 0;
    Lsn last = 0;
    while (seen < stop_after && read(fds[0], &last, sizeof last) == sizeof last) {
      ++seen;
      reported_max = std::max(reported_max, last);
    }
    ASSERT_EQ(seen, stop_after) << "the child stopped early";
    kill(pid, SIGKILL);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "status " << status;
    close(fds[0]);

    auto log = OpenLog(path);
    ASSERT_NE(log, nullptr);
    Result<DurableState> state = log->Load(1);
    ASSERT_TRUE(state.ok()) << state.status().message();
    ASSERT_GE(state->batches.size(), reported_max) << "cycle " << cycle;
    for (Lsn l = 1; l <= state->batches.size(); ++l) {
      ASSERT_EQ(state->batches[l - 1], MakeBatch(l)) << "lsn " << l;
    }
  }
}

// The replication state machine runs on the log: a single-replica shard (N = W = 1) wins its
// epoch, takes appends, and a Replica rebuilt from Load() after the log is reopened holds the
// same epochs and batches.
TEST(ShardLogTest, AReplicaRebuiltFromTheLogHoldsWhatItAcknowledged) {
  TempDir dir;
  Options opts;
  opts.self = 1;
  opts.replicas = {1};
  opts.write_quorum = 1;
  std::vector<uint64_t> acked;
  std::vector<Batch> log_at_end;
  Epoch promised = 0, accepted = 0;
  {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<Event> events;  // WalSynced from the writer thread, etcd answers
    auto post = [&](Event e) {
      std::lock_guard<std::mutex> lock(mu);
      events.push_back(std::move(e));
      cv.notify_one();
    };
    auto log = OpenLog(dir.Sub("repl"));
    Replica replica(opts, DurableState{});
    auto carry = [&](std::vector<Effect> effects) {
      for (Effect& e : effects) {
        Status s;
        const ShardLog::SyncedFn synced = [&](Status st, Lsn last) {
          EXPECT_TRUE(st.ok()) << st.message();
          post(WalSynced{last});
        };
        if (log->Carry(1, e, synced, &s)) {
          ASSERT_TRUE(s.ok()) << s.message();
        } else if (auto* cas = std::get_if<EtcdCas>(&e)) {
          post(EtcdTxnResult{cas->new_epoch, true, ShardRecord{2, cas->new_epoch, 1, true}});
        } else if (auto* ack = std::get_if<Acknowledge>(&e)) {
          acked.insert(acked.end(), ack->request_ids.begin(), ack->request_ids.end());
        }
      }
    };
    // Steps queued events until `done` holds (deadline 10 s per event).
    auto run_until = [&](const std::function<bool()>& done) {
      while (!done()) {
        std::unique_lock<std::mutex> lock(mu);
        if (!cv.wait_for(lock, std::chrono::seconds(10), [&] { return !events.empty(); })) {
          return false;
        }
        Event e = std::move(events.front());
        events.pop_front();
        lock.unlock();
        carry(replica.Step(std::move(e)));
      }
      return true;
    };
    carry(replica.Step(Tick{0}));
    carry(replica.Step(EtcdWatch{ShardRecord{1, 0, 0, false}}));
    carry(replica.Step(Tick{1000}));
    ASSERT_TRUE(run_until([&] { return replica.role() == Role::kPrimary; }));
    for (uint64_t id = 1; id <= 50; ++id) {
      carry(replica.Step(ClientAppend{id, "m" + std::to_string(id), replica.HlcHighWater() + 1}));
    }
    ASSERT_TRUE(run_until([&] { return acked.size() >= 50; }));
    log_at_end = replica.batches();
    promised = replica.promised();
    accepted = replica.accepted();
    log.reset();  // runs the last callbacks while `events` still exists
  }
  EXPECT_EQ(acked.size(), 50u);
  auto log = OpenLog(dir.Sub("repl"));
  Result<DurableState> state = log->Load(1);
  ASSERT_TRUE(state.ok()) << state.status().message();
  Replica restarted(opts, *state);
  EXPECT_EQ(restarted.promised(), promised);
  EXPECT_EQ(restarted.accepted(), accepted);
  EXPECT_GE(restarted.batches().size(), 50u);
  EXPECT_EQ(restarted.batches(), log_at_end);
}

}  // namespace
}  // namespace iris::cluster::repl
