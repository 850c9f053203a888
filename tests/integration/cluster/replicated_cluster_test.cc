// A replicated cluster on loopback (issue 16; CLUSTER.md §2, §5): one etcd and three irisd
// storage nodes, initialised with --replicas 3, so every shard is held by all three and an
// append is acknowledged once two of them hold it durably.
//
// Checked with real processes: the node that is primary of a recipient's shard is killed
// with SIGKILL again and again while a client keeps sending (retrying refused sends with the
// same idempotency key, as clients do); another replica takes the shard over within the
// lease (2 s here) and the killed node comes back as a backup. At the end every
// acknowledged message is in its recipient's inbox exactly once, in id order, read through
// any node. The failover times (kill -> first acknowledged send to that shard) are printed.

#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "../../unit/store/store_test_util.h"
#include "cluster/test_util.h"
#include "cluster_clients.h"
#include "harness/local_cluster.h"
#include "store/inbox_store.h"

namespace iris::testing {
namespace {

// A client that keeps sending through failovers: a refused send (UNAVAILABLE) is retried with
// the same idempotency key, and a session the server ends (the node that held it lost its
// link to the user's shard primary) is reopened on the same node.
enum class Attempt { kAcknowledged, kRefused, kNoSession };

class Sender {
 public:
  Sender(ServerProcess& node, uint64_t user) : node_(node), user_(user) {}

  // One attempt: acknowledged (*id set), refused as retryable, or no session (the
  // connection or HELLO failed). Any other refusal fails the test.
  Attempt TrySend(uint64_t to, const std::string& body, const std::string& key,
                  uint64_t* id = nullptr) {
    if (!client_ && !Connect()) return Attempt::kNoSession;
    v1::Send s;
    s.set_request_id(++request_id_);
    s.set_recipient(to);
    s.set_body(body);
    s.set_idempotency_key(key);
    if (!client_->conn().SendFrame(Op(wire::Opcode::kSend), s).ok()) {
      client_.reset();
      return Attempt::kNoSession;
    }
    for (;;) {
      Result<client::ReceivedFrame> f = client_->conn().ReadFrame(20'000);
      if (!f.ok()) {
        last_ = f.status().ToString();
        client_.reset();
        return Attempt::kNoSession;
      }
      if (f->opcode == Op(wire::Opcode::kSendAck)) {
        v1::SendAck a;
        EXPECT_TRUE(a.ParseFromString(f->payload));
        if (id != nullptr) *id = a.message_id();
        return Attempt::kAcknowledged;
      }
      if (f->opcode == Op(wire::Opcode::kError)) {
        v1::Error e;
        e.ParseFromString(f->payload);
        last_ = e.ShortDebugString();
        EXPECT_EQ(e.code(), static_cast<uint32_t>(StatusCode::kUnavailable))
            << "SEND of " << body << " refused: " << last_;
        return Attempt::kRefused;
      }
    }
  }

  // Retries (same key) until acknowledged; the message id, or 0 (test failed) after 60 s.
  uint64_t SendAcked(uint64_t to, const std::string& body, std::string key = NewKey()) {
    const int64_t deadline = MonoMs() + 60'000;
    while (MonoMs() < deadline) {
      uint64_t id = 0;
      if (TrySend(to, body, key, &id) == Attempt::kAcknowledged) return id;
      if (::testing::Test::HasFailure()) return 0;
    }
    ADD_FAILURE() << "no SEND_ACK for " << body << " within 60 s; last: " << last_;
    return 0;
  }

 private:
  bool Connect() {
    client_ = TestClient::Connect(node_);
    client::ReceivedFrame f = client_->Hello(node_.Token(user_));
    if (f.opcode == Op(wire::Opcode::kWelcome)) return true;
    v1::Error e;
    e.ParseFromString(f.payload);
    last_ = "HELLO: " + e.ShortDebugString();
    client_.reset();
    return false;
  }

  ServerProcess& node_;
  const uint64_t user_;
  std::unique_ptr<TestClient> client_;
  uint64_t request_id_ = 0;
  std::string last_ = "nothing";
};

LocalCluster::Options ReplicatedOptions(int shards_per_node) {
  LocalCluster::Options o;
  o.storage_nodes = 3;
  o.replicas = 3;
  o.shards_per_node = shards_per_node;
  o.vnodes = 64;
  o.name = "replicated";
  // The test's client retries refused sends at once: no rate limit in its way.
  o.node_args = {"--rate-per-sec", "100000", "--rate-burst-per-sec", "100000",
                 "--replication-lease-ttl-s", "2",
                 // Small logs: a replica that missed more than a few batches (a killed
                 // node, a wiped one) is rebuilt by copying the shard's records.
                 "--replication-compact-every", "8"};
  return o;
}

class ReplicatedClusterTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_NO_FATAL_FAILURE(cluster_.Start()); }
  LocalCluster cluster_{ReplicatedOptions(1)};
};

// Four shards per initial node (12 shards of 3 replicas): scale-out and drain.
class ReplicaMovesTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_NO_FATAL_FAILURE(cluster_.Start()); }
  LocalCluster cluster_{ReplicatedOptions(4)};
};

TEST_F(ReplicatedClusterTest, KillingShardPrimariesLosesNothingAcknowledged) {
  const char* cycles_env = std::getenv("IRIS_REPL_CYCLES");
  const int cycles = cycles_env != nullptr ? std::atoi(cycles_env) : 30;
  const char* seed_env = std::getenv("IRIS_SEED");
  const uint32_t seed = seed_env != nullptr
                            ? static_cast<uint32_t>(std::strtoul(seed_env, nullptr, 10))
                            : static_cast<uint32_t>(std::random_device{}());
  std::cout << "seed " << seed << " (replay: IRIS_SEED=" << seed << ")\n";
  std::mt19937 rng(seed);

  const uint64_t sender = 5000;
  const std::vector<uint64_t> recipients = {5001, 5002, 5003, 5004};
  std::map<uint64_t, std::vector<std::string>> want;  // recipient -> bodies acknowledged
  std::map<uint64_t, std::vector<uint64_t>> want_ids;
  int sent = 0;
  std::vector<int64_t> failovers;

  // The client lives on a node that is not about to be killed.
  const auto send_some = [&](Sender& s, int n) {
    for (int i = 0; i < n; ++i) {
      const uint64_t to = recipients[rng() % recipients.size()];
      const std::string body = "m" + std::to_string(sent++);
      const uint64_t id = s.SendAcked(to, body);
      ASSERT_NE(id, 0u) << body;
      want[to].push_back(body);
      want_ids[to].push_back(id);
    }
  };

  // First election: every shard gets a primary through etcd.
  {
    Sender s(cluster_.node(1), sender);
    ASSERT_NO_FATAL_FAILURE(send_some(s, 20));
  }
  for (int cycle = 0; cycle < cycles; ++cycle) {
    const uint64_t target = recipients[rng() % recipients.size()];
    // The shard's primary now (elected by its first write, if none was written yet).
    NodeId victim = 0;
    {
      Sender any(cluster_.node(1 + cycle % 3), sender);
      ASSERT_NO_FATAL_FAILURE(send_some(any, 1));
      const std::string body = "m" + std::to_string(sent++);
      const uint64_t id = any.SendAcked(target, body);
      ASSERT_NE(id, 0u);
      want[target].push_back(body);
      want_ids[target].push_back(id);
      victim = cluster_.OwnerOf(target);
    }
    ASSERT_NE(victim, 0u);
    const NodeId home = victim % 3 + 1;  // another node
    Sender s(cluster_.node(home), sender);
    ASSERT_NO_FATAL_FAILURE(send_some(s, 10 + static_cast<int>(rng() % 20)));
    cluster_.node(victim).Stop(SIGKILL);
    const int64_t killed = MonoMs();
    const std::string body = "m" + std::to_string(sent++);
    const uint64_t id = s.SendAcked(target, body);
    ASSERT_NE(id, 0u) << "cycle " << cycle << ": no failover";
    failovers.push_back(MonoMs() - killed);
    want[target].push_back(body);
    want_ids[target].push_back(id);
    ASSERT_NO_FATAL_FAILURE(send_some(s, 10));
    ASSERT_NO_FATAL_FAILURE(cluster_.node(victim).Start());  // back as a backup
  }
  // Every acknowledged message once, in order, with its acknowledged id, on every node.
  for (NodeId reader : {1u, 2u, 3u}) {
    for (uint64_t to : recipients) {
      std::vector<std::string> bodies;
      std::vector<uint64_t> ids;
      for (const v1::Envelope& e : Inbox(cluster_.node(reader), to)) {
        bodies.push_back(e.body());
        ids.push_back(e.id());
      }
      EXPECT_EQ(bodies, want[to]) << "recipient " << to << " read through node " << reader;
      EXPECT_EQ(ids, want_ids[to]) << "recipient " << to << " read through node " << reader;
    }
  }
  std::sort(failovers.begin(), failovers.end());
  std::cout << "acknowledged " << sent << " messages over " << cycles
            << " kills of a shard primary; failover (kill -> next ack, ms):";
  for (int64_t f : failovers) std::cout << " " << f;
  std::cout << "\n";
}

// The per-shard series of a gauge in the node's /metrics: shard label -> value.
std::map<std::string, double> ShardGauges(ServerProcess& node, const std::string& name) {
  std::string body;
  std::map<std::string, double> out;
  if (AdminRequest(node.admin_port(), "GET", "/metrics", node.admin_token(), "", &body) != 200) {
    return out;
  }
  std::istringstream in(body);
  std::string line;
  const std::string prefix = name + "{shard=\"";
  while (std::getline(in, line)) {
    if (line.rfind(prefix, 0) != 0) continue;
    const size_t end = line.find('"', prefix.size());
    const size_t space = line.rfind(' ');
    if (end == std::string::npos || space == std::string::npos) continue;
    out[line.substr(prefix.size(), end - prefix.size())] = std::stod(line.substr(space + 1));
  }
  return out;
}

// Every message `to` finds in its inbox, read through `reader`.
std::vector<std::string> Bodies(ServerProcess& reader, uint64_t to) {
  std::vector<std::string> bodies;
  for (const v1::Envelope& e : Inbox(reader, to)) bodies.push_back(e.body());
  return bodies;
}

// A primary paused (SIGSTOP) for longer than its lease is replaced; when it resumes, the
// sends its own clients made meanwhile (queued in its sockets) cannot be acknowledged by it
// any more (the backups promised the successor's epoch: it never reaches W), and they are
// retried to the new primary. Nothing acknowledged is lost, nothing is stored twice.
TEST_F(ReplicatedClusterTest, PausedPrimaryIsFencedAndLosesNothing) {
  const uint64_t target = 6001;
  std::vector<std::string> want = {"elect"};
  {
    // The shard's first write elects its primary (the placement's is only a suggestion).
    Sender first(cluster_.node(1), 6100);
    ASSERT_NE(first.SendAcked(target, want.back()), 0u);
  }
  const NodeId victim = cluster_.OwnerOf(target);
  ASSERT_NE(victim, 0u);
  const NodeId home = victim % 3 + 1;
  Sender outside(cluster_.node(home), 6100);
  Sender inside(cluster_.node(victim), 6200);
  for (int i = 0; i < 10; ++i) {
    want.push_back("before-" + std::to_string(i));
    ASSERT_NE(outside.SendAcked(target, want.back()), 0u);
  }
  // The paused node's client has its session open before the pause.
  want.push_back("inside-before");
  ASSERT_NE(inside.SendAcked(target, want.back()), 0u);
  ASSERT_EQ(kill(cluster_.node(victim).pid(), SIGSTOP), 0);
  // A client of the paused node sends: its request waits in the node's socket.
  uint64_t inside_id = 0;
  std::thread paused_client([&] { inside_id = inside.SendAcked(target, "sent-to-paused"); });
  // Meanwhile the shard fails over and takes writes again.
  for (int i = 0; i < 10; ++i) {
    want.push_back("during-" + std::to_string(i));
    ASSERT_NE(outside.SendAcked(target, want.back()), 0u);
  }
  const NodeId successor = cluster_.OwnerOf(target);
  EXPECT_NE(successor, victim) << "no failover while the primary was paused";
  ASSERT_EQ(kill(cluster_.node(victim).pid(), SIGCONT), 0);
  paused_client.join();
  ASSERT_NE(inside_id, 0u);
  for (int i = 0; i < 5; ++i) {
    want.push_back("after-" + std::to_string(i));
    ASSERT_NE(outside.SendAcked(target, want.back()), 0u);
  }
  for (NodeId reader : {1u, 2u, 3u}) {
    std::vector<std::string> got = Bodies(cluster_.node(reader), target);
    // The paused node's send is in there exactly once, between the others (its place
    // depends on when it was retried); everything else in the order acknowledged.
    EXPECT_EQ(std::count(got.begin(), got.end(), "sent-to-paused"), 1) << "reader " << reader;
    got.erase(std::remove(got.begin(), got.end(), "sent-to-paused"), got.end());
    EXPECT_EQ(got, want) << "reader " << reader;
  }
}

// With two of the three replicas down no shard can reach W = 2: sends are refused
// (UNAVAILABLE), never acknowledged. Once a second replica is back they are accepted, and a
// refused send retried with its key is stored once.
TEST_F(ReplicatedClusterTest, OneReplicaLeftRefusesEveryWrite) {
  const uint64_t target = 7001;
  Sender s(cluster_.node(1), 7100);
  ASSERT_NE(s.SendAcked(target, "first"), 0u);
  cluster_.node(2).Stop(SIGKILL);
  cluster_.node(3).Stop(SIGKILL);
  // Past the lease (2 s) and the replication timeout (5 s): every attempt is refused, or
  // finds no session (the user's shard has no primary either).
  const std::string key = NewKey();
  const int64_t until = MonoMs() + 9'000;
  int refused = 0;
  while (MonoMs() < until) {
    const Attempt a = s.TrySend(target, "while-alone", key);
    ASSERT_NE(a, Attempt::kAcknowledged) << "acknowledged with one replica";
    ++refused;
  }
  EXPECT_GT(refused, 0);
  ASSERT_NO_FATAL_FAILURE(cluster_.node(2).Start());
  // The same key again, now that two replicas are up: stored once.
  ASSERT_NE(s.SendAcked(target, "while-alone", key), 0u) << "not accepted with two replicas";
  ASSERT_NO_FATAL_FAILURE(cluster_.node(3).Start());
  ASSERT_NE(s.SendAcked(target, "last"), 0u);
  const std::vector<std::string> want = {"first", "while-alone", "last"};
  for (NodeId reader : {1u, 2u, 3u}) EXPECT_EQ(Bodies(cluster_.node(reader), target), want);
}

// After node `back` restarted with its data lost (wiped, or set aside by irisd): ten more
// sends, then a flush; once it applied every shard's log up to the commit point the others
// had (its /metrics), it stopped and its own store (opened here) must hold `want`, in order.
// It must have been rebuilt by a copy (the logs are compacted every 8 batches here).
void ExpectRebuiltStoreHolds(LocalCluster& cluster, NodeId back, Sender& s, uint64_t target,
                             std::vector<std::string> want) {
  for (int i = 0; i < 10; ++i) {
    want.push_back("after-" + std::to_string(i));
    ASSERT_NE(s.SendAcked(target, want.back()), 0u);
  }
  // The backup applies a batch once the primary's commit point covers it: the last send's
  // batch reaches it with the next one of the shard (which itself may not be applied yet).
  ASSERT_NE(s.SendAcked(target, "flush"), 0u);
  std::map<std::string, double> committed;  // shard label -> highest commit lsn known
  for (NodeId id : {1u, 2u, 3u}) {
    if (id == back) continue;
    for (const auto& [shard, lsn] : ShardGauges(cluster.node(id), "iris_replication_commit_lsn")) {
      committed[shard] = std::max(committed[shard], lsn);
    }
  }
  ASSERT_FALSE(committed.empty()) << "no iris_replication_commit_lsn series";
  EXPECT_TRUE(WaitFor(
      [&] {
        const auto applied = ShardGauges(cluster.node(back), "iris_replication_applied_lsn");
        for (const auto& [shard, lsn] : committed) {
          auto it = applied.find(shard);
          // The flush itself may wait for the next batch: one lsn short is enough.
          if (it == applied.end() || it->second + 1 < lsn) return false;
        }
        return true;
      },
      60'000))
      << "the rebuilt replica did not catch up";
  double rebuilt = 0;
  for (const auto& [shard, n] :
       ShardGauges(cluster.node(back), "iris_replication_rebuilds_installed")) {
    rebuilt += n;
  }
  EXPECT_GE(rebuilt, 1.0) << "no rebuild was installed on the replica";
  const std::string dir = cluster.node(back).data_dir();
  cluster.node(back).Stop(SIGTERM);
  store::StoreOptions o = store::testing::TestOptions(dir + "/store");
  o.vnodes = 64;
  auto st = store::InboxStore::Open(o);
  ASSERT_TRUE(st.ok()) << st.status().ToString();
  auto inbox = store::testing::ScanAll(**st, target);
  ASSERT_TRUE(inbox.ok()) << inbox.status().ToString();
  std::vector<std::string> got;
  for (const v1::Envelope& e : *inbox) got.push_back(e.body());
  if (!got.empty() && got.back() == "flush") got.pop_back();
  EXPECT_EQ(got, want) << "the rebuilt replica's own store";
}

// A replica whose data directory (store and replication log) is wiped while it is down
// comes back empty and is brought level from the primary's log; its own store then holds
// every message (checked by opening it after the node stopped). It does not vote until
// then (docs/replication.md, amnesiac replicas).
TEST_F(ReplicatedClusterTest, WipedReplicaIsRebuiltFromThePrimary) {
  const uint64_t target = 8001;
  std::vector<std::string> want = {"elect"};
  {
    Sender first(cluster_.node(1), 8100);
    ASSERT_NE(first.SendAcked(target, want.back()), 0u);
  }
  {
    // The election's CAS marked the shard: a replica that comes back without a log is amnesiac.
    auto state = cluster_.State();
    ASSERT_TRUE(state.ok()) << state.status().ToString();
    bool elected = false;
    for (const auto& [id, shard] : state->shards) elected = elected || shard.elected;
    EXPECT_TRUE(elected) << "no shard record says a primary was elected";
  }
  const NodeId wiped = cluster_.OwnerOf(target) % 3 + 1;  // a backup of the target's shard
  const NodeId home = wiped % 3 + 1;
  Sender s(cluster_.node(home), 8100);
  for (int i = 0; i < 30; ++i) {
    want.push_back("before-" + std::to_string(i));
    ASSERT_NE(s.SendAcked(target, want.back()), 0u);
  }
  cluster_.node(wiped).Stop(SIGKILL);
  const std::string dir = cluster_.node(wiped).data_dir();
  std::filesystem::remove_all(dir + "/store");
  std::filesystem::remove_all(dir + "/replication");
  for (int i = 0; i < 10; ++i) {
    want.push_back("while-down-" + std::to_string(i));
    ASSERT_NE(s.SendAcked(target, want.back()), 0u);
  }
  ASSERT_NO_FATAL_FAILURE(cluster_.node(wiped).Start());
  ExpectRebuiltStoreHolds(cluster_, wiped, s, target, want);
}

// A replica whose store lost writes it had made durable (its WAL cut short while it was
// down: the durability mark is ahead of what it recovers) would refuse to start as a
// single node does; a node of a replicated cluster sets its data aside in
// <data-dir>/lost-<ms>/ and starts empty (--rebuild-lost-data), and is rebuilt as if wiped.
TEST_F(ReplicatedClusterTest, ReplicaWhoseWalLostWritesIsSetAsideAndRebuilt) {
  const uint64_t target = 8002;
  std::vector<std::string> want = {"elect"};
  {
    Sender first(cluster_.node(1), 8200);
    ASSERT_NE(first.SendAcked(target, want.back()), 0u);
  }
  const NodeId lossy = cluster_.OwnerOf(target) % 3 + 1;  // a backup of the target's shard
  const NodeId home = lossy % 3 + 1;
  Sender s(cluster_.node(home), 8200);
  for (int i = 0; i < 30; ++i) {
    want.push_back("before-" + std::to_string(i));
    ASSERT_NE(s.SendAcked(target, want.back()), 0u);
  }
  // A clean stop writes the durability mark; then the newest WAL loses its second half.
  cluster_.node(lossy).Stop(SIGTERM);
  const std::string dir = cluster_.node(lossy).data_dir();
  std::string newest;
  for (const auto& e : std::filesystem::directory_iterator(dir + "/store")) {
    const std::string name = e.path().filename().string();
    if (name.size() > 4 && name.ends_with(".log") && name > newest) newest = name;
  }
  ASSERT_FALSE(newest.empty()) << "no WAL in " << dir << "/store";
  const std::string wal = dir + "/store/" + newest;
  ASSERT_GT(std::filesystem::file_size(wal), 0u);
  std::filesystem::resize_file(wal, std::filesystem::file_size(wal) / 2);
  for (int i = 0; i < 10; ++i) {
    want.push_back("while-down-" + std::to_string(i));
    ASSERT_NE(s.SendAcked(target, want.back()), 0u);
  }
  ASSERT_NO_FATAL_FAILURE(cluster_.node(lossy).Start());
  bool set_aside = false;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.path().filename().string().starts_with("lost-") &&
        std::filesystem::exists(e.path() / "store")) {
      set_aside = true;
    }
  }
  EXPECT_TRUE(set_aside) << "the damaged store was not set aside in " << dir << "/lost-*";
  ExpectRebuiltStoreHolds(cluster_, lossy, s, target, want);
}

}  // namespace
}  // namespace iris::testing

namespace iris::testing {
namespace {

// Replica counts of the storage nodes in `state` (moves in progress: targets not counted)
// and how many shards name a target.
std::map<NodeId, int> ReplicaCounts(const cluster::ClusterState& state, int* moving) {
  std::map<NodeId, int> out;
  *moving = 0;
  for (const auto& [id, n] : state.nodes) {
    if (n.role == cluster::NodeRole::kStorage) out[id] = 0;
  }
  for (const auto& [id, s] : state.shards) {
    for (NodeId r : s.replicas) ++out[r];
    if (!s.target.empty()) ++*moving;
  }
  return out;
}

std::string Describe(const std::map<NodeId, int>& counts, int moving) {
  std::string s;
  for (const auto& [id, n] : counts)
    s += "node " + std::to_string(id) + ": " + std::to_string(n) + "  ";
  return s + "moves in progress: " + std::to_string(moving);
}

// Scale-out and drain (CLUSTER.md §6), with four shards per initial node (12 shards): while
// two clients keep sending, a 4th and then a 5th storage node join and the controller moves
// replicas to each until the counts differ by at most one (the primary copies each shard to the new
// node as a learner, then switches the replica set in one etcd transaction); then node 2 is drained
// (irisctl cluster drain --wait-s) and ends with no replica, its copies deleted. Every acknowledged
// message is in its recipient's inbox exactly once, in order, read through every node; refused
// sends (retried with the same key) are counted, not lost.
TEST_F(ReplicaMovesTest, ScaleOutAndDrainMoveReplicasAndLoseNothing) {
  const std::vector<uint64_t> recipients = {9001, 9002, 9003, 9004, 9005, 9006};
  std::mutex mu;
  std::map<uint64_t, std::vector<std::string>> want;  // recipient -> acknowledged, in order
  std::atomic<bool> stop{false};
  std::atomic<int> acked{0};
  const auto writer = [&](NodeId home, uint64_t sender, int salt) {
    Sender s(cluster_.node(home), sender);
    std::mt19937 rng(static_cast<uint32_t>(salt));
    for (int i = 0; !stop.load() && !::testing::Test::HasFailure(); ++i) {
      const uint64_t to = recipients[rng() % recipients.size()];
      const std::string body = "w" + std::to_string(salt) + "-" + std::to_string(i);
      const uint64_t id = s.SendAcked(to, body);
      if (id == 0) return;
      std::lock_guard<std::mutex> lock(mu);
      want[to].push_back(body);
      ++acked;
    }
  };
  {
    Sender first(cluster_.node(1), 9100);
    for (uint64_t to : recipients) {  // every shard elects its primary
      ASSERT_NE(first.SendAcked(to, "first"), 0u);
      want[to].push_back("first");
    }
  }
  std::vector<std::thread> writers;
  writers.emplace_back(writer, 1, 9101, 1);
  writers.emplace_back(writer, 3, 9102, 2);
  const auto stop_writers = [&] {
    stop = true;
    for (auto& t : writers) t.join();
    writers.clear();
  };
  const auto wait_counts = [&](const std::function<bool(const std::map<NodeId, int>&)>& done,
                               const char* what) {
    std::string last;
    const bool ok = WaitFor(
        [&] {
          auto state = cluster_.State();
          if (!state.ok()) return false;
          int moving = 0;
          const auto counts = ReplicaCounts(*state, &moving);
          last = Describe(counts, moving);
          return moving == 0 && done(counts);
        },
        180'000);
    EXPECT_TRUE(ok) << what << ": " << last;
    std::cout << what << ": " << last << " (" << acked.load() << " acknowledged so far)\n";
    return ok;
  };

  // Scale-out: nodes 4 and 5 join, one after the other, and each gets its share of the 36
  // replicas (12 shards x 3): 9 each over four nodes, then 8,7,7,7,7 over five — about
  // 1/(n+1) of the replicas move each time.
  const auto even = [](const std::map<NodeId, int>& c) {
    int lo = INT32_MAX, hi = 0;
    for (const auto& [id, n] : c) {
      lo = std::min(lo, n);
      hi = std::max(hi, n);
    }
    return hi - lo <= 1;
  };
  for (const NodeId expected : {4u, 5u}) {
    const int64_t join_ms = MonoMs();
    const NodeId joined = cluster_.AddStorageNode();
    ASSERT_EQ(joined, expected);
    const std::string what = "after node " + std::to_string(joined) + " joined";
    const bool balanced = wait_counts(
        [&](const std::map<NodeId, int>& c) {
          return c.size() == static_cast<size_t>(joined) && c.at(joined) >= 1 && even(c);
        },
        what.c_str());
    std::cout << "scale-out to " << joined << " nodes took " << MonoMs() - join_ms << " ms\n";
    if (balanced) {
      auto state = cluster_.State();
      ASSERT_TRUE(state.ok());
      int moving = 0;
      const int got = ReplicaCounts(*state, &moving).at(joined);
      EXPECT_EQ(got, 36 / static_cast<int>(joined)) << "node " << joined << "'s share";
      std::cout << "node " << joined << " took " << got << " of 36 replicas\n";
    }
    if (!balanced) stop_writers();
    ASSERT_TRUE(balanced);
  }

  // Drain node 2: its replicas move to the other four.
  const int64_t drain_ms = MonoMs();
  std::string out;
  const int code =
      cluster_.Irisctl({"cluster", "drain", "--etcd", cluster_.etcd().endpoint(), "--cluster",
                        cluster_.name(), "--node-id", "2", "--wait-s", "180"},
                       &out);
  EXPECT_EQ(code, 0) << out;
  std::cout << out << "drain took " << MonoMs() - drain_ms << " ms\n";
  const bool drained =
      wait_counts([&](const std::map<NodeId, int>& c) { return c.at(2) == 0; }, "after the drain");
  stop_writers();
  ASSERT_TRUE(drained);

  // Every acknowledged message once, each writer's in the order it sent them, through every
  // node (node 2 routes too). (The two writers' messages interleave in an order the test
  // cannot see: their acknowledgements race to the test's lock.)
  const auto of_writer = [](const std::vector<std::string>& bodies, const std::string& prefix) {
    std::vector<std::string> mine;
    for (const std::string& b : bodies) {
      if (b.rfind(prefix, 0) == 0) mine.push_back(b);
    }
    return mine;
  };
  for (NodeId reader : {1u, 2u, 3u, 4u, 5u}) {
    for (uint64_t to : recipients) {
      std::vector<std::string> got = Bodies(cluster_.node(reader), to);
      for (const char* prefix : {"first", "w1-", "w2-"}) {
        EXPECT_EQ(of_writer(got, prefix), of_writer(want[to], prefix))
            << "recipient " << to << " read through node " << reader << ", writer " << prefix;
      }
      EXPECT_EQ(got.size(), want[to].size()) << "recipient " << to << " through node " << reader;
    }
  }
  std::cout << "acknowledged " << acked.load() << " messages during the moves\n";

  // Node 2's copies are gone: its own store holds none of these inboxes any more.
  ASSERT_TRUE(WaitFor([&] {
    return ShardGauges(cluster_.node(2), "iris_replication_applied_lsn").empty() || [&] {
      for (const auto& [shard, lsn] :
           ShardGauges(cluster_.node(2), "iris_replication_applied_lsn")) {
        if (lsn != 0) return false;
      }
      return true;
    }();
  }));
  const std::string dir = cluster_.node(2).data_dir();
  cluster_.node(2).Stop(SIGTERM);
  store::StoreOptions o = store::testing::TestOptions(dir + "/store");
  o.vnodes = 64;
  auto st = store::InboxStore::Open(o);
  ASSERT_TRUE(st.ok()) << st.status().ToString();
  for (uint64_t to : recipients) {
    auto inbox = store::testing::ScanAll(**st, to);
    ASSERT_TRUE(inbox.ok()) << inbox.status().ToString();
    EXPECT_TRUE(inbox->empty()) << "node 2 still holds " << inbox->size() << " messages of " << to;
  }
}

}  // namespace
}  // namespace iris::testing
