// Three replicas of one shard as they run on nodes: ReplicaHost (the strand around the state
// machine) over a real ShardLog each (RocksDB, synced) and ShardEpochs on a real etcd (the
// failover CAS, the primary's lease, the watches). Only the transport between the replicas
// is in-process here; irisd carries the same messages over its peer links.
//
// Checked: a primary is elected through etcd; appends are acknowledged only once committed;
// when the primary is killed (its host, log and etcd session gone at once, its lease left to
// expire) a backup takes over within the lease's lifetime plus the failover delay; a killed
// node restarts from its log and catches up; at the end every replica applied the same
// batches in the same order and every acknowledged append is among them (G1-G3 of CLUSTER.md
// section 2 for this shard).

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "../../unit/store/store_test_util.h"
#include "cluster/etcd_client.h"
#include "cluster/placement.h"
#include "cluster/replication/replica_host.h"
#include "cluster/shard_epochs.h"
#include "cluster/test_util.h"
#include "common/clock.h"
#include "delayed_link.h"
#include "harness/etcd_process.h"

namespace iris::cluster {
namespace {

using iris::testing::EtcdProcess;
using iris::testing::WaitFor;
using repl::Batch;
using repl::NodeId;

constexpr ShardId kShard = 1;
constexpr int64_t kLeaseTtlS = 2;

class ReplicationHostTest : public ::testing::Test {
 protected:
  struct Node {
    NodeId id = 0;
    std::string log_path;
    std::unique_ptr<repl::ShardLog> log;
    std::unique_ptr<ShardEpochs> epochs;
    std::unique_ptr<repl::ReplicaHost> host;
    std::vector<Batch> applied;  // guarded by mu_
  };

  void SetUp() override {
    ASSERT_TRUE(etcd_.Start());
    EtcdOptions o;
    o.endpoints = ParseEndpoints(etcd_.endpoint()).value();
    o.request_timeout_ms = 2000;
    client_ = EtcdClient::Create(o).value();
    keys_ = std::make_unique<ClusterKeys>(ClusterKeys::Create("repl-test").value());
    ShardInfo shard{kShard, {1, 2, 3}, 0, 0};
    ASSERT_TRUE(client_->Put(keys_->Shard(kShard), ShardToJson(shard)).ok());
    for (NodeId id : {1u, 2u, 3u}) {
      nodes_[id].id = id;
      nodes_[id].log_path = dir_.Sub("node" + std::to_string(id));
    }
  }

  void TearDown() override {
    StopWriter();
    for (NodeId id : {1u, 2u, 3u}) Kill(id);
    link_.reset();
  }

  // Starts node `id` from its log (fresh or left by a kill).
  void StartNode(NodeId id) {
    Node& n = nodes_[id];
    Result<std::unique_ptr<repl::ShardLog>> log = repl::ShardLog::Open(n.log_path);
    ASSERT_TRUE(log.ok()) << log.status().message();
    {
      std::lock_guard<std::mutex> lock(mu_);
      n.applied.clear();  // in memory only: the host applies the committed log again
    }
    n.log = std::move(log).value();
    n.epochs =
        std::make_unique<ShardEpochs>(*client_, *keys_, kShard, id, kLeaseTtlS,
                                      [this, id](repl::Event e) { Deliver(id, std::move(e)); });
    repl::HostOptions opts;
    opts.shard = kShard;
    opts.replica.self = id;
    opts.replica.replicas = {1, 2, 3};
    opts.replica.write_quorum = 2;
    // The simulation's deliberate bugs, to show this test catches them (docs/replication.md).
    if (const char* m = std::getenv("IRIS_REPL_MUTATION")) {
      const std::string mutation = m;
      opts.replica.mutations.ack_at_w1 = mutation == "ack_at_w1";
      opts.replica.mutations.skip_epoch_check = mutation == "skip_epoch_check";
      opts.replica.mutations.elect_without_majority = mutation == "elect_without_majority";
    }
    ShardEpochs* epochs = n.epochs.get();
    repl::HostEnvironment env;
    env.send = [this, id](NodeId to, repl::Message m) {
      SendDelayed(to, repl::Receive{id, std::move(m)});
    };
    env.etcd_cas = [epochs](const repl::EtcdCas& c) { epochs->Cas(c); };
    env.etcd_keep_alive = [epochs](const repl::EtcdKeepAlive& k) { epochs->KeepAlive(k); };
    env.etcd_revoke = [epochs](const repl::EtcdRevoke& r) { epochs->Revoke(r); };
    env.apply = [this, id](const std::vector<Batch>& batches) {
      std::lock_guard<std::mutex> lock(mu_);
      std::vector<Batch>& applied = nodes_[id].applied;
      for (const Batch& b : batches) {
        EXPECT_EQ(b.lsn, applied.size() + 1) << "node " << id << " applied out of order";
        applied.push_back(b);
      }
      return Status::Ok();
    };
    env.acknowledge = [this](const repl::Acknowledge& a) {
      std::lock_guard<std::mutex> lock(mu_);
      for (uint64_t r : a.request_ids) answered_[r] = true;
    };
    env.refuse = [this](const repl::Refuse& r) {
      std::lock_guard<std::mutex> lock(mu_);
      for (uint64_t request : r.request_ids) answered_.emplace(request, false);
    };
    env.failed = [id](const Status& s) { ADD_FAILURE() << "node " << id << ": " << s.message(); };
    Result<std::unique_ptr<repl::ReplicaHost>> host =
        repl::ReplicaHost::Start(opts, *n.log, std::move(env));
    ASSERT_TRUE(host.ok()) << host.status().message();
    {
      std::lock_guard<std::mutex> lock(net_mu_);
      n.host = std::move(host).value();
    }
    ASSERT_TRUE(n.epochs->Start().ok());
  }

  // Everything of the node goes at once, as in a crash: the host (appends waiting there are
  // refused: never acknowledged), its etcd session (its lease is left to expire) and its log
  // (closed; what was synced stays).
  void Kill(NodeId id) {
    Node& n = nodes_[id];
    std::unique_ptr<repl::ReplicaHost> host;
    {
      std::lock_guard<std::mutex> lock(net_mu_);
      host = std::move(n.host);
    }
    host.reset();  // first: its strand calls into the etcd session and the log
    n.epochs.reset();
    n.log.reset();
  }

  // The link between replicas: every message is delayed by a seeded random 0-30 ms, so
  // messages overtake each other and a killed primary's last batches may not have reached
  // anyone (as on a real network; the protocol tolerates loss, delay and reordering).
  void StartNetwork(uint32_t seed) {
    link_ = std::make_unique<testing::DelayedLink<std::pair<NodeId, repl::Event>>>(
        seed, 30,
        [this](std::pair<NodeId, repl::Event> m) { Deliver(m.first, std::move(m.second)); });
  }
  void SendDelayed(NodeId to, repl::Event e) {
    if (link_) link_->Send(std::make_pair(to, std::move(e)));
  }

  void Deliver(NodeId to, repl::Event e) {
    std::lock_guard<std::mutex> lock(net_mu_);
    if (nodes_[to].host) nodes_[to].host->Post(std::move(e));
  }

  std::optional<NodeId> Primary() {
    std::lock_guard<std::mutex> lock(net_mu_);
    for (auto& [id, n] : nodes_) {
      if (n.host && n.host->view().role == repl::Role::kPrimary) return id;
    }
    return std::nullopt;
  }

  // Sends `count` new appends (ids from next_request_), up to 16 in flight, each to the
  // primary of the moment; an append that is refused or gets no answer within 5 s is sent
  // again under a new request id with the same key (the payload) — so a key may be committed
  // twice, never lost. Returns when every key is acknowledged.
  void AppendKeys(int count) {
    std::vector<std::string> pending;
    for (int i = 0; i < count; ++i) pending.push_back("key-" + std::to_string(next_key_++));
    std::map<uint64_t, std::string> in_flight;  // request id -> key
    std::map<uint64_t, int64_t> sent_at;
    const auto now_ms = [] { return SystemClock::Instance().MonoMillis(); };
    const int64_t deadline = now_ms() + 60'000;
    while (!pending.empty() || !in_flight.empty()) {
      ASSERT_LT(now_ms(), deadline) << "appends not acknowledged within 60 s";
      // Collect answers.
      {
        std::lock_guard<std::mutex> lock(mu_);
        for (auto it = in_flight.begin(); it != in_flight.end();) {
          auto answer = answered_.find(it->first);
          const bool timed_out = now_ms() - sent_at[it->first] > 5'000;
          if (answer != answered_.end() && answer->second) {
            acked_keys_.insert(it->second);
            it = in_flight.erase(it);
          } else if (answer != answered_.end() || timed_out) {
            ++refused_;
            pending.push_back(it->second);  // the same key again
            it = in_flight.erase(it);
          } else {
            ++it;
          }
        }
      }
      std::optional<NodeId> primary = Primary();
      while (primary && !pending.empty() && in_flight.size() < 16) {
        const uint64_t request = next_request_++;
        const std::string key = pending.back();
        pending.pop_back();
        in_flight[request] = key;
        sent_at[request] = now_ms();
        Deliver(*primary, repl::ClientAppend{request, key, ++hlc_});
      }
      // Until an answer arrives or more can be sent (200 ms at most: timeouts are checked).
      (void)WaitFor(
          [&] {
            std::lock_guard<std::mutex> lock(mu_);
            for (const auto& entry : in_flight) {
              if (answered_.count(entry.first)) return true;
            }
            return !pending.empty() && in_flight.size() < 16 && Primary().has_value();
          },
          200);
    }
  }

  // Waits until a primary other than `not_this` serves; returns the milliseconds it took.
  int64_t WaitForNewPrimary(std::optional<NodeId> not_this) {
    const int64_t start = SystemClock::Instance().MonoMillis();
    EXPECT_TRUE(WaitFor(
        [&] {
          std::optional<NodeId> p = Primary();
          return p && p != not_this;
        },
        30'000))
        << "no new primary";
    return SystemClock::Instance().MonoMillis() - start;
  }

  // Waits until every replica holds the primary's committed log durably; returns the
  // primary. (Backups learn the commit point from the primary's next batch, so their applied
  // state may trail it by the last batches: the test compares prefixes.)
  NodeId WaitAllDurable() {
    NodeId primary = 0;
    EXPECT_TRUE(WaitFor(
        [&] {
          std::optional<NodeId> p = Primary();
          if (!p) return false;
          std::lock_guard<std::mutex> net(net_mu_);
          const repl::Lsn commit = nodes_[*p].host->view().commit_lsn;
          for (auto& entry : nodes_) {
            if (!entry.second.host || entry.second.host->view().durable_lsn < commit) return false;
          }
          primary = *p;
          return true;
        },
        30'000))
        << "replicas did not catch up";
    return primary;
  }

  EtcdProcess etcd_;
  store::testing::TempDir dir_;
  std::unique_ptr<EtcdClient> client_;
  std::unique_ptr<ClusterKeys> keys_;
  std::map<NodeId, Node> nodes_;
  std::mutex net_mu_;                  // nodes_[*].host pointers
  std::mutex mu_;                      // applied, answered_
  std::map<uint64_t, bool> answered_;  // request id -> acknowledged (true) / refused (false)
  std::set<std::string> acked_keys_;
  uint64_t next_request_ = 1;
  int next_key_ = 1;
  uint64_t hlc_ = 0;
  int refused_ = 0;

  size_t Acked() {
    std::lock_guard<std::mutex> lock(mu_);
    return acked_keys_.size();
  }

  // A background writer keeps appends in flight (AppendKeys in rounds) until stopped.
  void StartWriter() {
    writer_ = std::thread([this] {
      while (!stop_writer_.load()) AppendKeys(20);
    });
  }
  void StopWriter() {
    stop_writer_ = true;
    if (writer_.joinable()) writer_.join();
  }

  std::thread writer_;
  std::atomic<bool> stop_writer_{false};
  std::unique_ptr<testing::DelayedLink<std::pair<NodeId, repl::Event>>> link_;
};

// Cycles (IRIS_REPL_CYCLES, default 5): with appends in flight, kill the primary, wait for
// the next one, restart the killed node from its log.
TEST_F(ReplicationHostTest, FailoverThroughEtcdKeepsEveryAcknowledgedAppend) {
  const char* cycles_env = std::getenv("IRIS_REPL_CYCLES");
  const int cycles = cycles_env != nullptr ? std::atoi(cycles_env) : 5;
  const char* seed_env = std::getenv("IRIS_SEED");
  const uint32_t seed = seed_env != nullptr
                            ? static_cast<uint32_t>(std::strtoul(seed_env, nullptr, 10))
                            : static_cast<uint32_t>(std::random_device{}());
  std::cout << "seed " << seed << " (replay: IRIS_SEED=" << seed << ")\n";
  std::mt19937 rng(seed);
  StartNetwork(seed + 1);
  for (NodeId id : {1u, 2u, 3u}) StartNode(id);
  const int64_t first_election = WaitForNewPrimary(std::nullopt);
  StartWriter();

  std::vector<int64_t> failovers;
  for (int cycle = 0; cycle < cycles; ++cycle) {
    const size_t before = Acked();
    const size_t more = 20 + rng() % 100;
    ASSERT_TRUE(WaitFor([&] { return Acked() >= before + more; }, 60'000))
        << "cycle " << cycle << ": writes stalled";
    const std::optional<NodeId> old = Primary();
    ASSERT_TRUE(old.has_value());
    Kill(*old);
    failovers.push_back(WaitForNewPrimary(old));
    const size_t after_failover = Acked();
    ASSERT_TRUE(WaitFor([&] { return Acked() >= after_failover + 20; }, 60'000))
        << "cycle " << cycle << ": no writes after the failover";
    StartNode(*old);  // back from its log as a backup
  }
  StopWriter();
  AppendKeys(20);  // a last round with every node up

  const NodeId primary = WaitAllDurable();
  ASSERT_NE(primary, 0u);

  // Every replica applied a prefix of what the primary applied, batch for batch.
  std::lock_guard<std::mutex> lock(mu_);
  const std::vector<Batch>& reference = nodes_[primary].applied;
  for (NodeId id : {1u, 2u, 3u}) {
    const std::vector<Batch>& other = nodes_[id].applied;
    ASSERT_LE(other.size(), reference.size()) << "node " << id << " applied beyond the primary";
    for (size_t i = 0; i < other.size(); ++i) {
      ASSERT_EQ(reference[i], other[i])
          << "replicas " << primary << " and " << id << " differ at lsn " << i + 1;
    }
  }
  // Every acknowledged key is there; a key is there at most twice per refused attempt.
  std::map<std::string, int> seen;
  for (const Batch& b : reference) ++seen[b.payload];
  for (const std::string& key : acked_keys_) {
    EXPECT_GE(seen[key], 1) << key << " was acknowledged and is lost";
  }
  int duplicates = 0;
  int refused = refused_;
  for (const auto& [key, n] : seen) {
    EXPECT_TRUE(acked_keys_.count(key)) << key << " committed but never acknowledged";
    duplicates += n - 1;
  }
  EXPECT_LE(duplicates, refused);
  std::cout << "acknowledged " << acked_keys_.size() << " keys, " << reference.size()
            << " batches, " << refused_ << " attempts refused or timed out, " << duplicates
            << " committed twice (retries); first election " << first_election
            << " ms, failovers (ms):";
  for (int64_t f : failovers) std::cout << " " << f;
  std::cout << "\n";
}

}  // namespace
}  // namespace iris::cluster

namespace iris::cluster {
namespace {

// etcd comes back with a shorter history (restored from an older snapshot, or wiped) while
// ShardEpochs' watches are cut off: their resume revision no longer exists, which the watch
// reports like a compaction. A later change of the shard record must still reach the replica
// (the watch is replaced from a fresh read).
TEST_F(ReplicationHostTest, ShardRecordChangesStillArriveAfterEtcdLostItsHistory) {
  // History well beyond what the new etcd will have when the watches reconnect.
  for (int i = 0; i < 50; ++i) ASSERT_TRUE(client_->Put("/unrelated", std::to_string(i)).ok());
  std::mutex mu;
  std::vector<repl::ShardRecord> records;
  ShardEpochs epochs(*client_, *keys_, kShard, 1, kLeaseTtlS, [&](repl::Event e) {
    if (auto* w = std::get_if<repl::EtcdWatch>(&e)) {
      std::lock_guard<std::mutex> lock(mu);
      records.push_back(w->record);
    }
  });
  ASSERT_TRUE(epochs.Start().ok());
  uint64_t before = 0;
  {
    std::lock_guard<std::mutex> lock(mu);
    ASSERT_FALSE(records.empty());
    before = records.back().revision;
  }
  etcd_.Stop(SIGKILL);
  std::filesystem::remove_all(etcd_.dir() + "/data");  // a new etcd: revision 1
  ASSERT_TRUE(etcd_.Start());
  // The watches find their revision gone and read the record again (now absent: epoch 0).
  ASSERT_TRUE(WaitFor(
      [&] {
        std::lock_guard<std::mutex> lock(mu);
        return records.back().revision < before;
      },
      30'000))
      << "no record read from the new etcd";
  // A failover writes a new epoch and a live leader: the new watches see it.
  ShardInfo shard{kShard, {1, 2, 3}, 2, 7};
  ASSERT_TRUE(client_->Put(keys_->Shard(kShard), ShardToJson(shard)).ok());
  Result<Lease> lease = client_->LeaseGrant(10);
  ASSERT_TRUE(lease.ok());
  ASSERT_TRUE(client_->Put(epochs.LeaderKey(), "{\"epoch\":7,\"primary\":2}", lease->id).ok());
  EXPECT_TRUE(WaitFor(
      [&] {
        std::lock_guard<std::mutex> lock(mu);
        return records.back().epoch == 7 && records.back().primary == 2 &&
               records.back().lease_live;
      },
      30'000))
      << "the replica never heard of epoch 7";
}

// Reads are served only while the primary's lease certainly lives (CLUSTER.md §5). A
// ShardEpochs that won an epoch knows until when: a renewal etcd answered, sent at t, keeps
// the lease alive until t + TTL at least. With etcd unreachable (paused) nothing renews it
// and LeaseValid turns false within a TTL, though nobody said the lease lapsed (the replica
// is told nothing: an unreachable etcd posts nothing).
TEST_F(ReplicationHostTest, LeaseValidityEndsWithinATtlWhenEtcdStopsAnswering) {
  std::mutex mu;
  std::optional<bool> won;
  ShardEpochs epochs(*client_, *keys_, kShard, 1, kLeaseTtlS, [&](repl::Event e) {
    if (auto* r = std::get_if<repl::EtcdTxnResult>(&e)) {
      std::lock_guard<std::mutex> lock(mu);
      won = r->succeeded;
    }
  });
  ASSERT_TRUE(epochs.Start().ok());
  EXPECT_FALSE(epochs.LeaseValid(1));
  epochs.Cas(repl::EtcdCas{0, 1, 1});
  ASSERT_TRUE(WaitFor(
      [&] {
        std::lock_guard<std::mutex> lock(mu);
        return won.has_value();
      },
      10'000));
  ASSERT_TRUE(*won);
  EXPECT_TRUE(epochs.LeaseValid(1));
  EXPECT_FALSE(epochs.LeaseValid(2));
  // Renewed every 200 ms while etcd answers (as the replica does every keep-alive period):
  // it stays valid past two TTLs.
  int64_t last_renewal = 0;
  const auto renew = [&] {
    const int64_t now = SystemClock::Instance().MonoMillis();
    if (now - last_renewal >= 200) {
      epochs.KeepAlive(repl::EtcdKeepAlive{1});
      last_renewal = now;
    }
  };
  const int64_t start = SystemClock::Instance().MonoMillis();
  bool valid_throughout = true;
  ASSERT_TRUE(WaitFor(
      [&] {
        renew();
        valid_throughout = valid_throughout && epochs.LeaseValid(1);
        return SystemClock::Instance().MonoMillis() - start > 2 * kLeaseTtlS * 1000;
      },
      20'000));
  EXPECT_TRUE(valid_throughout) << "a lease renewed all along was not valid at some point";
  // etcd stops answering: no renewal succeeds, and the validity ends within a TTL.
  etcd_.Signal(SIGSTOP);
  const int64_t stopped = SystemClock::Instance().MonoMillis();
  // Every renewal etcd answered was sent before the pause: the validity ends before etcd's
  // own expiry of the lease could.
  EXPECT_GT(epochs.LeaseValidUntilMs(1), 0);
  EXPECT_LT(epochs.LeaseValidUntilMs(1), stopped + kLeaseTtlS * 1000);
  ASSERT_TRUE(WaitFor(
      [&] {
        renew();
        return !epochs.LeaseValid(1);
      },
      10'000));
  EXPECT_LT(epochs.LeaseValidUntilMs(1), stopped + kLeaseTtlS * 1000)
      << "renewed by an answer sent while etcd was paused";
  etcd_.Signal(SIGCONT);
}

// A move's switch (EtcdSwitch) against a real etcd: refused when the shard key changed after
// the record the replica saw (a controller that replaced the target), carried out in one
// transaction otherwise — the primary staying keeps its lease (the leader key says the new
// epoch), a primary leaving deletes the leader key and revokes its lease.
TEST_F(ReplicationHostTest, SwitchIsComparedAgainstTheRecordAndMovesTheLease) {
  std::mutex mu;
  std::vector<repl::EtcdTxnResult> answers;
  std::vector<repl::ShardRecord> records;
  ShardEpochs epochs(*client_, *keys_, kShard, 1, kLeaseTtlS, [&](repl::Event e) {
    std::lock_guard<std::mutex> lock(mu);
    if (auto* r = std::get_if<repl::EtcdTxnResult>(&e)) answers.push_back(*r);
    if (auto* w = std::get_if<repl::EtcdWatch>(&e)) records.push_back(w->record);
  });
  ASSERT_TRUE(epochs.Start().ok());
  const auto answer_for = [&](repl::Epoch e) {
    std::optional<repl::EtcdTxnResult> got;
    EXPECT_TRUE(WaitFor(
        [&] {
          std::lock_guard<std::mutex> lock(mu);
          for (const auto& a : answers) {
            if (a.new_epoch == e) got = a;
          }
          return got.has_value();
        },
        10'000));
    return got.value_or(repl::EtcdTxnResult{});
  };
  epochs.Cas(repl::EtcdCas{0, 1, 1});
  ASSERT_TRUE(answer_for(1).succeeded);
  // The controller names a target; the record the replica reads carries it.
  ShardInfo info = ParseShard(client_->Range(keys_->Shard(kShard))->kvs[0].value).value();
  info.target = {1, 2, 4};
  ASSERT_TRUE(client_->Put(keys_->Shard(kShard), ShardToJson(info)).ok());
  Result<repl::ShardRecord> seen = epochs.ReadRecord();
  ASSERT_TRUE(seen.ok());
  EXPECT_EQ(seen->replicas, (std::vector<repl::NodeId>{1, 2, 3}));
  EXPECT_EQ(seen->target, (std::vector<repl::NodeId>{1, 2, 4}));
  EXPECT_TRUE(seen->lease_live);
  // The controller replaces the target after that read: a switch on the old one is refused.
  info.target = {1, 2, 5};
  ASSERT_TRUE(client_->Put(keys_->Shard(kShard), ShardToJson(info)).ok());
  epochs.Switch(repl::EtcdSwitch{seen->revision, 1, 2, {1, 2, 4}});
  const repl::EtcdTxnResult refused = answer_for(2);
  EXPECT_FALSE(refused.succeeded);
  EXPECT_EQ(refused.current.target, (std::vector<repl::NodeId>{1, 2, 5}));
  EXPECT_EQ(refused.current.epoch, 1u);
  // On the current record it is carried out: epoch 3, the target as replicas, no target,
  // and the same lease now serves epoch 3.
  epochs.Switch(repl::EtcdSwitch{refused.current.revision, 1, 3, {1, 2, 5}});
  const repl::EtcdTxnResult won = answer_for(3);
  ASSERT_TRUE(won.succeeded);
  EXPECT_EQ(won.current.epoch, 3u);
  EXPECT_EQ(won.current.replicas, (std::vector<repl::NodeId>{1, 2, 5}));
  EXPECT_TRUE(won.current.target.empty());
  EXPECT_TRUE(won.current.lease_live);
  EXPECT_EQ(won.current.primary, 1u);
  EXPECT_TRUE(epochs.LeaseValid(3));
  EXPECT_FALSE(epochs.LeaseValid(1));
  epochs.KeepAlive(repl::EtcdKeepAlive{3});
  // A move that takes the primary out: the leader key goes, with the lease.
  info = ParseShard(client_->Range(keys_->Shard(kShard))->kvs[0].value).value();
  info.target = {6, 2, 5};
  ASSERT_TRUE(client_->Put(keys_->Shard(kShard), ShardToJson(info)).ok());
  seen = epochs.ReadRecord();
  ASSERT_TRUE(seen.ok());
  epochs.Switch(repl::EtcdSwitch{seen->revision, 3, 4, {6, 2, 5}});
  const repl::EtcdTxnResult out = answer_for(4);
  ASSERT_TRUE(out.succeeded);
  EXPECT_EQ(out.current.epoch, 4u);
  EXPECT_EQ(out.current.replicas, (std::vector<repl::NodeId>{6, 2, 5}));
  EXPECT_FALSE(out.current.lease_live);
  EXPECT_TRUE(client_->Range(epochs.LeaderKey())->kvs.empty());
  EXPECT_FALSE(epochs.LeaseValid(4));
  EXPECT_FALSE(epochs.LeaseValid(3));
  // A switch without the lease of its epoch is refused at once.
  epochs.Switch(repl::EtcdSwitch{out.current.revision, 4, 5, {6, 2, 7}});
  EXPECT_FALSE(answer_for(5).succeeded);
}

}  // namespace
}  // namespace iris::cluster
