// The store on replicated nodes: three InboxStores, each with a NodeReplication (ReplicaHost
// + ShardLog + ShardEpochs on a real etcd) holding one shard's replica. Appends go through
// the primary's store: its group commit hands each batch to the shard's replica, which
// acknowledges once two replicas hold it durably and writes it into every replica's store
// at commit. Only the transport between the nodes is in-process (seeded delays).
//
// Checked, with appends in flight while the primary is killed again and again (its
// replication and store gone at once, its lease left to expire) and restarted:
//  - every acknowledged message is in every replica's store exactly once, with the id its
//    acknowledgement gave (G1, and dedup across failovers: retries carry the same key);
//  - the replicas' inboxes are identical;
//  - ids increase in real-time order: a message acknowledged before another was sent has
//    the smaller id (G2), across failovers;
//  - nothing is stored that was never sent.

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <shared_mutex>
#include <thread>

#include "../../unit/store/store_test_util.h"
#include "cluster/etcd_client.h"
#include "cluster/placement.h"
#include "cluster/replication/node_replication.h"
#include "cluster/test_util.h"
#include "common/clock.h"
#include "delayed_link.h"
#include "harness/etcd_process.h"
#include "store/inbox_store.h"

namespace iris::cluster {
namespace {

using iris::testing::EtcdProcess;
using iris::testing::WaitFor;
using repl::NodeId;

constexpr repl::ShardNo kShard = 1;
constexpr uint64_t kSender = 1000;
constexpr uint64_t kRecipients = 8;  // users 1..8

struct Wire {
  NodeId from = 0;
  NodeId to = 0;
  repl::ShardNo shard = 0;
  repl::Message message;
  std::optional<repl::Transfer> transfer;  // a rebuild's chunk or ack instead of a message
};

int64_t NowMs() { return SystemClock::Instance().MonoMillis(); }

class ReplicatedStoreTest : public ::testing::Test {
 protected:
  struct Node {
    NodeId id = 0;
    std::string dir;
    // The store's replicate hook goes through this gate, so that a killed node's store can
    // outlive its replication for a moment without calling into it.
    struct Gate {
      std::shared_mutex mu;
      NodeReplication* repl = nullptr;
    };
    std::shared_ptr<Gate> gate;
    std::unique_ptr<NodeReplication> repl;
    std::unique_ptr<store::InboxStore> store;
  };

  void SetUp() override {
    const char* seed_env = std::getenv("IRIS_SEED");
    seed_ = seed_env != nullptr ? static_cast<uint32_t>(std::strtoul(seed_env, nullptr, 10))
                                : static_cast<uint32_t>(std::random_device{}());
    std::cout << "seed " << seed_ << " (replay: IRIS_SEED=" << seed_ << ")\n";
    ASSERT_TRUE(etcd_.Start());
    EtcdOptions o;
    o.endpoints = ParseEndpoints(etcd_.endpoint()).value();
    o.request_timeout_ms = 2000;
    client_ = EtcdClient::Create(o).value();
    keys_ = std::make_unique<ClusterKeys>(ClusterKeys::Create("repl-store-test").value());
    ShardInfo shard{kShard, {1, 2, 3}, 0, 0};
    ASSERT_TRUE(client_->Put(keys_->Shard(kShard), ShardToJson(shard)).ok());
    for (NodeId id : {1u, 2u, 3u}) {
      nodes_[id].id = id;
      nodes_[id].dir = dir_.Sub("node" + std::to_string(id));
    }
    link_ = std::make_unique<testing::DelayedLink<Wire>>(seed_, 20, [this](Wire w) {
      std::lock_guard<std::mutex> lock(nodes_mu_);
      Node& n = nodes_[w.to];
      if (!n.repl) return;
      if (w.transfer) {
        n.repl->ReceiveTransfer(w.from, w.shard, std::move(*w.transfer));
      } else {
        n.repl->Receive(w.from, w.shard, std::move(w.message));
      }
    });
  }

  void TearDown() override {
    StopWriter();
    for (NodeId id : {1u, 2u, 3u}) Kill(id);
    link_.reset();
  }

  void StartNode(NodeId id) {
    Node& n = nodes_[id];
    std::filesystem::create_directories(n.dir);
    n.gate = std::make_shared<Node::Gate>();
    Node* node = &n;
    NodeReplicationOptions ro;
    ro.self = id;
    ro.log_path = n.dir + "/repl";
    ro.lease_ttl_s = lease_ttl_s_;
    ro.compact_every = compact_every_;
    ro.rebuild_chunk_bytes = 512;
    ro.rebuild_bytes_per_sec = rebuild_bytes_per_sec_;
    // The simulation's deliberate bugs, to show this test catches them (docs/replication.md).
    if (const char* m = std::getenv("IRIS_REPL_MUTATION")) {
      ro.replica.mutations.ack_at_w1 = std::string(m) == "ack_at_w1";
    }
    NodeReplicationEnv env;
    env.send = [this, id](NodeId to, repl::ShardNo shard, repl::Message m) {
      link_->Send(Wire{id, to, shard, std::move(m)});
    };
    // The store is set before the shard starts and reset only after the replication is
    // gone (Kill), so the hosts' threads always find it.
    env.apply = [node](repl::ShardNo shard, const std::vector<repl::Batch>& batches) {
      std::vector<std::string_view> payloads;
      for (const repl::Batch& b : batches) payloads.push_back(b.payload);
      return node->store->ApplyReplicated(shard, batches.back().lsn, payloads, batches.back().hlc);
    };
    env.applied_lsn = [node](repl::ShardNo shard) { return node->store->ReplicatedLsn(shard); };
    env.take_over = [node](repl::ShardNo shard, uint64_t hlc, std::function<void(Status)> done) {
      node->store->TakeOverShard(shard, hlc, std::move(done));
    };
    env.copy_chunk = [node](repl::ShardNo shard, std::string* cursor, size_t max_bytes,
                            bool* done, repl::Lsn* read_lsn) {
      return node->store->CopyShardChunk(shard, cursor, max_bytes, done, read_lsn);
    };
    env.install_chunk = [node](repl::ShardNo, const std::string& payload) {
      return node->store->InstallShardChunk(payload);
    };
    env.send_transfer = [this, id](NodeId to, repl::ShardNo shard, repl::Transfer t) {
      link_->Send(Wire{id, to, shard, repl::Message{}, std::move(t)});
      return true;
    };
    env.failed = [id](repl::ShardNo shard, const Status& s) {
      ADD_FAILURE() << "node " << id << " shard " << shard << ": " << s.message();
    };
    Result<std::unique_ptr<NodeReplication>> r =
        NodeReplication::Open(ro, *client_, *keys_, std::move(env));
    ASSERT_TRUE(r.ok()) << r.status().message();

    store::StoreOptions so = store::testing::TestOptions(n.dir + "/store");
    so.node_id = static_cast<uint8_t>(id);
    so.vnodes = 16;
    so.shard_of_vnode = [](int32_t) { return kShard; };
    if (inbox_cap_ != 0) so.inbox_cap = inbox_cap_;
    if (auto a = archiver_.find(id); a != archiver_.end()) so.run_archiver = a->second;
    std::shared_ptr<Node::Gate> gate = n.gate;
    so.replicate = [gate](uint32_t shard, std::string payload, uint64_t hlc,
                          std::function<void(Status)> done) {
      std::shared_lock<std::shared_mutex> lock(gate->mu);
      if (gate->repl == nullptr) {
        lock.unlock();
        done(Unavailable("node killed"));
        return;
      }
      gate->repl->Replicate(shard, std::move(payload), hlc, std::move(done));
    };
    Result<std::unique_ptr<store::InboxStore>> st = store::InboxStore::Open(so);
    ASSERT_TRUE(st.ok()) << st.status().message();
    {
      std::unique_lock<std::shared_mutex> lock(gate->mu);
      gate->repl = r->get();
    }
    {
      std::lock_guard<std::mutex> lock(nodes_mu_);
      n.store = std::move(st).value();
      n.repl = std::move(r).value();
    }
    ASSERT_TRUE(n.repl->AddShard(kShard, {1, 2, 3}).ok());
  }

  // As in a crash: replication goes first (waiting appends are refused, the lease is left to
  // expire), then the store.
  void Kill(NodeId id) {
    Node& n = nodes_[id];
    std::unique_ptr<NodeReplication> r;
    {
      std::lock_guard<std::mutex> lock(nodes_mu_);
      r = std::move(n.repl);
    }
    if (r) {
      if (std::optional<repl::ReplicaHost::View> v = r->view(kShard)) {
        rebuilds_ += v->rebuilds_installed;
      }
    }
    if (n.gate) {
      std::unique_lock<std::shared_mutex> lock(n.gate->mu);
      n.gate->repl = nullptr;
    }
    r.reset();
    std::unique_ptr<store::InboxStore> st;
    {
      std::lock_guard<std::mutex> lock(nodes_mu_);
      st = std::move(n.store);
    }
    st.reset();
  }

  std::optional<NodeId> Primary() {
    std::lock_guard<std::mutex> lock(nodes_mu_);
    for (auto& entry : nodes_) {
      if (entry.second.repl && entry.second.repl->Serving(kShard)) return entry.first;
    }
    return std::nullopt;
  }

  int64_t WaitForNewPrimary(std::optional<NodeId> not_this) {
    const int64_t start = NowMs();
    EXPECT_TRUE(WaitFor(
        [&] {
          std::optional<NodeId> p = Primary();
          return p && p != not_this;
        },
        30'000))
        << "no new primary";
    return NowMs() - start;
  }

  struct Sent {
    uint64_t recipient = 0;
    int64_t first_sent_ms = 0;
    int64_t acked_ms = -1;
    uint64_t id = 0;
  };

  // Sends `count` new keys, up to 16 in flight, each to the primary of the moment; a key
  // refused or unanswered within 5 s is sent again with the same idempotency key.
  void AppendKeys(int count) {
    std::vector<std::string> pending;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (int i = 0; i < count; ++i) {
        const std::string key = "key-" + std::to_string(next_key_++);
        sent_[key] = Sent{1 + static_cast<uint64_t>(next_key_) % kRecipients, 0, -1, 0};
        pending.push_back(key);
      }
    }
    struct InFlight {
      std::string key;
      int64_t at = 0;
    };
    std::map<uint64_t, InFlight> in_flight;  // request -> key
    const int64_t deadline = NowMs() + 60'000;
    while (!pending.empty() || !in_flight.empty()) {
      ASSERT_LT(NowMs(), deadline) << "appends not acknowledged within 60 s";
      {
        std::lock_guard<std::mutex> lock(mu_);
        for (auto it = in_flight.begin(); it != in_flight.end();) {
          auto answer = answers_.find(it->first);
          if (answer != answers_.end() && answer->second.ok()) {
            it = in_flight.erase(it);
          } else if (answer != answers_.end() || NowMs() - it->second.at > 5'000) {
            ++refused_;
            pending.push_back(it->second.key);
            it = in_flight.erase(it);
          } else {
            ++it;
          }
        }
      }
      while (!pending.empty() && in_flight.size() < 16) {
        std::lock_guard<std::mutex> nodes(nodes_mu_);
        std::optional<NodeId> primary;
        for (auto& entry : nodes_) {
          if (entry.second.repl && entry.second.repl->Serving(kShard)) primary = entry.first;
        }
        if (!primary) break;
        const std::string key = pending.back();
        pending.pop_back();
        const uint64_t request = next_request_++;
        uint64_t recipient = 0;
        {
          std::lock_guard<std::mutex> lock(mu_);
          Sent& s = sent_[key];
          if (s.first_sent_ms == 0) s.first_sent_ms = NowMs();
          recipient = s.recipient;
        }
        in_flight[request] = InFlight{key, NowMs()};
        nodes_[*primary].store->AppendAsync(
            kSender, key, store::testing::One(kSender, recipient, key),
            [this, request, key](Result<store::AppendOutcome> r) {
              std::lock_guard<std::mutex> lock(mu_);
              if (r.ok()) {
                Sent& s = sent_[key];
                if (s.acked_ms < 0) {
                  s.acked_ms = NowMs();
                  s.id = r->message_id;
                  ++acked_;
                } else if (s.id != r->message_id) {
                  ADD_FAILURE() << key << " acknowledged with ids " << s.id << " and "
                                << r->message_id << " (dedup across a failover failed)";
                }
                answers_.emplace(request, Status::Ok());
              } else {
                answers_.emplace(request, r.status());
              }
            });
      }
      (void)WaitFor(
          [&] {
            std::lock_guard<std::mutex> lock(mu_);
            for (const auto& entry : in_flight) {
              if (answers_.count(entry.first)) return true;
            }
            return !pending.empty() && in_flight.size() < 16 && Primary().has_value();
          },
          200);
    }
  }

  // Backups learn the commit point from the primary's next batch: one more append makes
  // everything acknowledged so far committed, and then applied, everywhere.
  void AppendUntilEveryReplicaApplied() {
    const std::optional<NodeId> primary = Primary();
    ASSERT_TRUE(primary.has_value());
    const repl::Lsn committed = nodes_[*primary].repl->view(kShard)->commit_lsn;
    AppendKeys(1);
    ASSERT_TRUE(WaitFor(
        [&] {
          for (NodeId id : {1u, 2u, 3u}) {
            if (nodes_[id].repl->view(kShard)->applied_lsn < committed) return false;
          }
          return true;
        },
        30'000))
        << "backups did not apply the committed log";
  }

  size_t Acked() {
    std::lock_guard<std::mutex> lock(mu_);
    return acked_;
  }
  void StartWriter() {
    writer_ = std::thread([this] {
      while (!stop_writer_.load()) AppendKeys(20);
    });
  }
  void StopWriter() {
    stop_writer_ = true;
    if (writer_.joinable()) writer_.join();
  }

  uint32_t seed_ = 0;
  int lease_ttl_s_ = 2;
  // Small logs: a replica that missed more than a few batches is rebuilt from a store.
  repl::Lsn compact_every_ = 8;
  uint64_t rebuilds_ = 0;              // rebuilds installed by replicas killed since SetUp
  int64_t rebuild_bytes_per_sec_ = 64 << 20;
  uint32_t inbox_cap_ = 0;             // 0: the store's default
  std::map<NodeId, bool> archiver_;    // run_archiver per node (default: on)
  EtcdProcess etcd_;
  store::testing::TempDir dir_;
  std::unique_ptr<EtcdClient> client_;
  std::unique_ptr<ClusterKeys> keys_;
  std::mutex nodes_mu_;  // nodes_[*].repl / .store pointers
  std::map<NodeId, Node> nodes_;
  std::unique_ptr<testing::DelayedLink<Wire>> link_;
  std::mutex mu_;  // sent_, answers_, counters
  std::map<std::string, Sent> sent_;
  std::map<uint64_t, Status> answers_;
  uint64_t next_request_ = 1;
  int next_key_ = 1;
  size_t acked_ = 0;
  int refused_ = 0;
  std::thread writer_;
  std::atomic<bool> stop_writer_{false};
};

TEST_F(ReplicatedStoreTest, KillingThePrimaryLosesNoAcknowledgedMessage) {
  const char* cycles_env = std::getenv("IRIS_REPL_CYCLES");
  const int cycles = cycles_env != nullptr ? std::atoi(cycles_env) : 5;
  std::mt19937 rng(seed_);
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
    const size_t after = Acked();
    ASSERT_TRUE(WaitFor([&] { return Acked() >= after + 20; }, 60'000))
        << "cycle " << cycle << ": no writes after the failover";
    StartNode(*old);  // back from its log and store as a backup
  }
  StopWriter();
  AppendKeys(20);  // a round with every node up

  ASSERT_NO_FATAL_FAILURE(AppendUntilEveryReplicaApplied());

  std::lock_guard<std::mutex> lock(mu_);
  const std::string last_key = "key-" + std::to_string(next_key_ - 1);
  // Per node: key -> (id, recipient) of every stored message, and each inbox in id order.
  std::map<NodeId, std::map<std::string, std::vector<uint64_t>>> stored;
  for (NodeId id : {1u, 2u, 3u}) {
    for (uint64_t user = 1; user <= kRecipients; ++user) {
      Result<std::vector<v1::Envelope>> inbox = store::testing::ScanAll(*nodes_[id].store, user);
      ASSERT_TRUE(inbox.ok()) << inbox.status().message();
      uint64_t last_id = 0;
      for (const v1::Envelope& e : *inbox) {
        EXPECT_GT(e.id(), last_id) << "node " << id << " inbox " << user << " out of order";
        last_id = e.id();
        if (e.body() == last_key) continue;  // may not be committed on the backups yet
        ASSERT_TRUE(sent_.count(e.body())) << e.body() << " stored, never sent";
        EXPECT_EQ(sent_[e.body()].recipient, user);
        stored[id][e.body()].push_back(e.id());
      }
    }
  }
  for (NodeId id : {2u, 3u}) {
    EXPECT_EQ(stored[id], stored[1]) << "replicas 1 and " << id << " hold different inboxes";
  }
  size_t acked = 0;
  for (const auto& [key, s] : sent_) {
    if (s.acked_ms < 0 || key == last_key) continue;
    ++acked;
    for (NodeId id : {1u, 2u, 3u}) {
      auto it = stored[id].find(key);
      ASSERT_TRUE(it != stored[id].end()) << key << " acknowledged, lost on node " << id;
      ASSERT_EQ(it->second.size(), 1u) << key << " stored " << it->second.size() << " times";
      EXPECT_EQ(it->second[0], s.id) << key << " stored under another id than acknowledged";
    }
  }
  // Real-time order (G2): per inbox, a message acknowledged before another was first sent
  // has the smaller id.
  for (uint64_t user = 1; user <= kRecipients; ++user) {
    std::vector<const Sent*> by_sent;
    std::vector<const Sent*> by_ack;
    for (const auto& entry : sent_) {
      if (entry.second.recipient != user || entry.second.acked_ms < 0) continue;
      by_sent.push_back(&entry.second);
      by_ack.push_back(&entry.second);
    }
    std::sort(by_sent.begin(), by_sent.end(),
              [](const Sent* a, const Sent* b) { return a->first_sent_ms < b->first_sent_ms; });
    std::sort(by_ack.begin(), by_ack.end(),
              [](const Sent* a, const Sent* b) { return a->acked_ms < b->acked_ms; });
    size_t a = 0;
    uint64_t max_acked_id = 0;
    for (const Sent* b : by_sent) {
      while (a < by_ack.size() && by_ack[a]->acked_ms < b->first_sent_ms) {
        max_acked_id = std::max(max_acked_id, by_ack[a]->id);
        ++a;
      }
      EXPECT_GT(b->id, max_acked_id) << "inbox " << user << ": an id below one acknowledged "
                                     << "before it was sent";
    }
  }
  uint64_t rebuilds = rebuilds_;
  for (NodeId id : {1u, 2u, 3u}) rebuilds += nodes_[id].repl->view(kShard)->rebuilds_installed;
  std::cout << "acknowledged " << acked << " messages (" << sent_.size() << " sent), " << refused_
            << " attempts refused or timed out; " << rebuilds
            << " replicas rebuilt; first election " << first_election << " ms, failovers (ms):";
  for (int64_t f : failovers) std::cout << " " << f;
  std::cout << "\n";
}

// A backup that misses more batches than the primary's log keeps (compact_every_) is
// rebuilt: the primary copies the shard's records from its store in chunks (small ones
// here, so that there are many, some ending inside a vnode's range), and the backup then
// follows the log. Its store ends up holding exactly the primary's records.
TEST_F(ReplicatedStoreTest, BackupBehindTheCompactedLogIsRebuiltFromThePrimarysStore) {
  for (NodeId id : {1u, 2u, 3u}) StartNode(id);
  WaitForNewPrimary(std::nullopt);
  AppendKeys(10);
  const NodeId primary = *Primary();
  const NodeId behind = primary % 3 + 1;
  Kill(behind);
  for (int i = 0; i < 40; ++i) AppendKeys(1);  // 40 batches, each compacted away soon
  ASSERT_GT(nodes_[primary].repl->view(kShard)->snapshot_lsn, 8u) << "the log was not compacted";
  StartNode(behind);
  ASSERT_TRUE(WaitFor(
      [&] { return nodes_[behind].repl->view(kShard)->rebuilds_installed >= 1; }, 30'000))
      << "the backup was not rebuilt";
  AppendKeys(10);
  ASSERT_NO_FATAL_FAILURE(AppendUntilEveryReplicaApplied());
  // The last append (AppendUntilEveryReplicaApplied's) may not be committed on the backups.
  std::string last_key;
  uint64_t last_recipient = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    last_key = "key-" + std::to_string(next_key_ - 1);
    last_recipient = sent_[last_key].recipient;
  }
  const auto inboxes = [&](NodeId id) {
    std::map<uint64_t, std::vector<std::pair<uint64_t, std::string>>> out;
    for (uint64_t user = 1; user <= kRecipients; ++user) {
      Result<std::vector<v1::Envelope>> inbox = store::testing::ScanAll(*nodes_[id].store, user);
      EXPECT_TRUE(inbox.ok()) << inbox.status().message();
      if (!inbox.ok()) continue;
      for (const v1::Envelope& e : *inbox) {
        if (e.body() != last_key) out[user].emplace_back(e.id(), e.body());
      }
    }
    return out;
  };
  const auto want = inboxes(primary);
  size_t total = 0;
  for (const auto& entry : want) total += entry.second.size();
  EXPECT_EQ(total, 60u);  // 10 + 40 + 10
  EXPECT_EQ(inboxes(behind), want) << "the rebuilt backup's store differs from the primary's";

  // Every record of every other vnode (dedup entries, counters, settings) is the same on all
  // three.
  for (int32_t v = 0; v < 16; ++v) {
    if (v == nodes_[primary].store->VnodeOf(last_recipient)) continue;
    const uint64_t sum = nodes_[primary].store->VnodeChecksum(v).value();
    for (NodeId id : {1u, 2u, 3u}) {
      EXPECT_EQ(nodes_[id].store->VnodeChecksum(v).value(), sum) << "vnode " << v << " node " << id;
    }
  }
}

// A rebuild slower than the log's turnover: the copy is throttled to a few KiB/s while a
// writer keeps appending, so the primary's log moves far past the rebuild's lsn during the
// copy. The primary keeps its log from that lsn (compaction_floor), so the replica is
// levelled from there after the install and catches up with that one rebuild; without the
// floor it finds itself behind the snapshot again and the copy starts over.
TEST_F(ReplicatedStoreTest, RebuildSlowerThanTheLogTurnoverCatchesUpWithOneCopy) {
  rebuild_bytes_per_sec_ = 16384;
  // A 10 s lease keeps the primary in place on a loaded machine: a new primary would rebuild
  // the backup again from its own log, legitimately.
  lease_ttl_s_ = 10;
  for (NodeId id : {1u, 2u, 3u}) StartNode(id);
  WaitForNewPrimary(std::nullopt);
  const NodeId primary = *Primary();
  const NodeId behind = primary % 3 + 1;
  Kill(behind);
  for (int i = 0; i < 40; ++i) AppendKeys(1);
  StartNode(behind);
  StartWriter();
  ASSERT_TRUE(WaitFor(
      [&] { return nodes_[behind].repl->view(kShard)->rebuilds_installed >= 1; }, 60'000))
      << "the backup was not rebuilt";
  // (The primary may have changed under load: read the highest commit point known.)
  repl::Lsn committed = 0;
  repl::Lsn snapshot_then = 0;
  for (NodeId id : {1u, 2u, 3u}) {
    committed = std::max(committed, nodes_[id].repl->view(kShard)->commit_lsn);
    if (id != behind) {
      snapshot_then = std::max(snapshot_then, nodes_[id].repl->view(kShard)->snapshot_lsn);
    }
  }
  const repl::Lsn installed_at = nodes_[behind].repl->view(kShard)->snapshot_lsn;
  ASSERT_TRUE(WaitFor(
      [&] { return nodes_[behind].repl->view(kShard)->applied_lsn >= committed; }, 60'000))
      << "the rebuilt backup did not catch up";
  StopWriter();
  EXPECT_EQ(nodes_[behind].repl->view(kShard)->rebuilds_installed, 1u)
      << "the copy started over (installed at " << installed_at << ", the others' snapshots "
      << "reach " << snapshot_then << ")";
}

// A node that takes a shard over archives the inboxes its predecessor left over the cap
// (docs/replication.md, "The store on a replicated node"). The first primary runs no
// archiver, so its batches leave "archive pending" markers, which both backups apply
// without scheduling anything; their archivers run from before the markers arrived (so the
// old store's scheduling at open, which a restarted node would do, cannot be what archives
// them). A 10 s lease keeps the first primary in place on a loaded machine until it is
// killed.
TEST_F(ReplicatedStoreTest, NewPrimaryArchivesTheInboxesItsPredecessorLeftOverTheCap) {
  constexpr uint32_t kCap = 5;
  inbox_cap_ = kCap;
  lease_ttl_s_ = 10;
  archiver_ = {{1, false}, {2, false}, {3, true}};
  StartNode(1);
  StartNode(2);
  WaitForNewPrimary(std::nullopt);  // node 1 or 2: no archiver
  const NodeId first = *Primary();
  const NodeId other = first == 1 ? 2 : 1;
  StartNode(3);
  Kill(other);  // back with an archiver, before there is any marker
  archiver_[other] = true;
  StartNode(other);

  AppendKeys(8 * static_cast<int>(kRecipients));  // 8 messages to each inbox
  ASSERT_NO_FATAL_FAILURE(AppendUntilEveryReplicaApplied());
  ASSERT_EQ(Primary(), std::optional<NodeId>(first)) << "the first primary lost its lease";
  for (uint64_t user = 1; user <= kRecipients; ++user) {
    auto inbox = store::testing::ScanAll(*nodes_[first].store, user);
    ASSERT_TRUE(inbox.ok());
    ASSERT_GT(inbox->size(), kCap) << "the first primary archived (it should not run an archiver)";
  }

  Kill(first);
  WaitForNewPrimary(first);
  const NodeId next = *Primary();
  size_t over = 0;
  EXPECT_TRUE(WaitFor(
      [&] {
        over = 0;
        for (uint64_t user = 1; user <= kRecipients; ++user) {
          auto inbox = store::testing::ScanAll(*nodes_[next].store, user);
          if (!inbox.ok() || inbox->size() > kCap) ++over;
        }
        return over == 0;
      },
      30'000))
      << over << " inboxes still over the cap of " << kCap << " on the new primary (node " << next
      << ")";
}

}  // namespace
}  // namespace iris::cluster
