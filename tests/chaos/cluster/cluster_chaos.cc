#include "cluster_chaos.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>
#include <utility>
#include <vector>

#include "common/clock.h"
#include "iris/client/connection.h"
#include "support/wait_for.h"
#include "wire/opcode.h"

namespace iris::chaos {

using testing::LocalCluster;
using testing::NetworkLab;

void ClusterChaos::SetUp() {
  PrepareNodes();
  if (HasFatalFailure()) return;
  const int nodes = NodeCount();
  lab_ = std::make_unique<NetworkLab>(nodes);
  ASSERT_TRUE(lab_->ok()) << lab_->status().ToString();
  LocalCluster::Options o;
  o.storage_nodes = nodes;
  o.replicas = 3;
  o.vnodes = 64;
  o.name = "partitions";
  o.lab = lab_.get();
  // Each node's log in its own file, in a directory per test under IRIS_CHAOS_LOG_DIR
  // (default: the working directory), kept for a failed run.
  const char* logs = std::getenv("IRIS_CHAOS_LOG_DIR");
  o.log_dir = std::string(logs != nullptr && *logs != '\0' ? logs : ".") + "/" +
              ::testing::UnitTest::GetInstance()->current_test_info()->name();
  std::filesystem::create_directories(o.log_dir);
  for (int k = 1; k <= nodes; ++k) {
    std::remove((o.log_dir + "/node-" + std::to_string(k) + ".log").c_str());
  }
  o.node_args = ChaosServerArgs();
  o.node_args.insert(o.node_args.end(), {"--rate-per-sec", "100000", "--rate-burst-per-sec",
                                         "100000", "--replication-lease-ttl-s", "2",
                                         "--replication-compact-every", "64"});
  ConfigureCluster(o);
  cluster_ = std::make_unique<LocalCluster>(o);
  ASSERT_NO_FATAL_FAILURE(cluster_->Start());
  options_.seed = ChaosSeed();
  options_.clients = 6;
  std::vector<testing::ServerProcess*> servers;
  for (int k = 1; k <= nodes; ++k) servers.push_back(&cluster_->node(static_cast<NodeId>(k)));
  run_ = std::make_unique<ChaosRun>(servers, options_);
}

void ClusterChaos::TearDown() {
  if (run_) run_->StopClients();
  if (lab_ && lab_->ok()) {
    EXPECT_TRUE(lab_->HealAll().ok());
  }
  run_.reset();
  cluster_.reset();
  lab_.reset();
}

// Progress while the fault holds: `want` more acknowledgements (30 s).
void ExpectProgress(ChaosRun& run, const std::string& what, uint64_t want) {
  const uint64_t before = run.acks();
  EXPECT_TRUE(run.WaitAcks(before + want, 30'000))
      << what << ": no progress while it held (" << run.acks() - before << " of " << want
      << " acknowledgements)";
}

// The ids in `user`'s inbox read through `node` from cursor 0 (a fresh session, every page
// acknowledged), or nullopt when the read did not complete (refused, connection lost, no
// SYNC_DONE within 10 s): a read that completes is a claim about the inbox.
std::optional<std::set<uint64_t>> InboxThrough(testing::ServerProcess& node, uint64_t user,
                                               std::string* why) {
  client::ConnectOptions o;
  o.host = node.host();
  o.port = node.port();
  o.ca_file = node.cert_file();
  o.timeout_ms = 2'000;
  auto c = client::Connection::Connect(o);
  if (!c.ok()) {
    *why = c.status().ToString();
    return std::nullopt;
  }
  v1::Hello h;
  h.add_versions(1);
  h.set_token(ChaosToken(node, user));  // whatever the node's clock
  h.set_cursor(0);
  if (!(*c)->SendFrame(static_cast<uint8_t>(wire::Opcode::kHello), h).ok()) return std::nullopt;
  std::set<uint64_t> ids;
  const int64_t deadline = SystemClock::Instance().MonoMillis() + 10'000;
  for (;;) {
    const int64_t left = deadline - SystemClock::Instance().MonoMillis();
    if (left <= 0) return std::nullopt;
    auto f = (*c)->ReadFrame(static_cast<int>(left));
    if (!f.ok()) {
      *why = f.status().ToString();
      return std::nullopt;
    }
    if (f->opcode == static_cast<uint8_t>(wire::Opcode::kError)) {
      v1::Error e;
      e.ParseFromString(f->payload);
      *why = e.ShortDebugString();
      return std::nullopt;
    }
    if (f->opcode == static_cast<uint8_t>(wire::Opcode::kSyncDone)) return ids;
    if (f->opcode == static_cast<uint8_t>(wire::Opcode::kSyncPage)) {
      v1::SyncPage page;
      if (!page.ParseFromString(f->payload)) return std::nullopt;
      for (const auto& env : page.messages()) ids.insert(env.id());
      if (page.has_more()) {
        v1::SyncAck ack;
        ack.set_cursor(page.cursor());
        if (!(*c)->SendFrame(static_cast<uint8_t>(wire::Opcode::kSyncAck), ack).ok()) {
          return std::nullopt;
        }
      }
    }
  }
}

// Reads started after a message was acknowledged must return it, through any node: right
// after node `k` comes back (its view of the shard map possibly stale, its replicas deposed
// while it was cut off), every user's inbox read through it holds every message
// acknowledged before the read began. Reads that do not complete (the node refuses or is
// not reachable yet) are tried again for up to 20 s; a completed read missing an
// acknowledged message fails the test (a stale read). The chaos clients do not reconnect
// meanwhile: each read's session replaces the user's client session, which would otherwise
// take it back at once (one session per user).
void ExpectFreshReadsThrough(ChaosRun& run, testing::ServerProcess& node, int k) {
  run.PauseReconnects();
  std::map<uint64_t, std::set<uint64_t>> acked;  // recipient -> ids acknowledged so far
  for (const Event& e : run.history().Snapshot()) {
    if (e.type == EventType::kSendAck) acked[e.recipient].insert(e.message_id);
  }
  for (int i = 0; i < run.options().clients; ++i) {
    const uint64_t user = run.options().first_user + static_cast<uint64_t>(i);
    std::optional<std::set<uint64_t>> got;
    const int64_t t0 = SystemClock::Instance().MonoMillis();
    int attempts = 0;
    std::string why;
    testing::PollUntil(
        [&] {
          ++attempts;
          return (got = InboxThrough(node, user, &why)).has_value();
        },
        20'000, 100);
    std::cout << "read of user " << user << " through node " << k << " (just back): "
              << (got ? "completed" : "never completed (" + why + ")") << " after "
              << SystemClock::Instance().MonoMillis() - t0 << " ms, " << attempts << " attempts"
              << std::endl;
    if (!got) continue;  // never completed: no claim made
    size_t missing = 0;
    for (uint64_t id : acked[user]) missing += got->count(id) == 0 ? 1 : 0;
    EXPECT_EQ(missing, 0u) << "a read through node " << k << " (just back) of user " << user
                           << "'s inbox missed " << missing << " of " << acked[user].size()
                           << " messages acknowledged before it began: a stale read";
  }
  run.ResumeReconnects();
}

// Node `me` is primary of no shard (per etcd), within `timeout_ms`; else a test failure.
bool WaitNotPrimary(LocalCluster& cluster, NodeId me, bool also_unregistered, int64_t timeout_ms,
                    const std::string& what) {
  std::string why;
  const bool done = cluster.WaitForState(
      [&](const cluster::ClusterState& state, std::string* not_yet) {
        if (auto it = state.nodes.find(me);
            also_unregistered && it != state.nodes.end() && it->second.alive) {
          *not_yet = "still registered";
          return false;
        }
        for (const auto& [id, shard] : state.shards) {
          if (shard.primary == me) {
            *not_yet = "still primary of shard " + std::to_string(id);
            return false;
          }
        }
        return true;
      },
      timeout_ms, &why);
  EXPECT_TRUE(done) << what << ": " << why;
  return done;
}

bool WaitEveryReplicaVotes(LocalCluster& cluster, int64_t timeout_ms, const std::string& what) {
  std::string why;
  const bool done = cluster.WaitForState(
      [&](const cluster::ClusterState& state, std::string* not_yet) {
        for (const auto& [id, shard] : state.shards) {
          for (NodeId n : shard.replicas) {
            const std::string series =
                "iris_replication_amnesiac{shard=\"" + std::to_string(id) + "\"}";
            const std::optional<double> v =
                n >= 1 && n <= cluster.size() && cluster.node(n).running()
                    ? testing::FreshMetric(cluster.node(n), series)
                    : std::nullopt;
            if (v != std::optional<double>(0.0)) {
              *not_yet = "node " + std::to_string(n) + "'s replica of shard " + std::to_string(id) +
                         (v ? " does not vote yet (amnesiac)" : " is not reported");
              return false;
            }
          }
        }
        return true;
      },
      timeout_ms, &why);
  EXPECT_TRUE(done) << what << ": " << why;
  return done;
}

void IsolateNemesis::Inject(ChaosRun& run, std::mt19937_64& rng) {
  ASSERT_TRUE(WaitEveryReplicaVotes(cluster_, 30'000, "before an isolation"));
  node_ = 1 + static_cast<int>(rng() % kNodes);
  if (next_ != 0) node_ = std::exchange(next_, 0);
  const int64_t t0 = SystemClock::Instance().MonoMillis();
  ASSERT_TRUE(lab_.Isolate(node_).ok());
  ++isolations_;
  // Held until etcd has seen the node go (its lease lapsed) and every shard it was
  // primary of has another primary: the failover happened while it was cut off.
  ASSERT_TRUE(WaitNotPrimary(cluster_, static_cast<NodeId>(node_), true, 30'000,
                             "node " + std::to_string(node_) + " isolated"));
  const int64_t took = SystemClock::Instance().MonoMillis() - t0;
  std::cout << "isolated node " << node_ << ": gone from etcd, its shards failed over, after "
            << took << " ms" << std::endl;
  ExpectProgress(run, "node " + std::to_string(node_) + " isolated",
                 2 * static_cast<uint64_t>(run.options().clients));
}

void IsolateNemesis::Heal(ChaosRun& run) {
  ASSERT_TRUE(lab_.Reconnect(node_).ok());
  ExpectFreshReadsThrough(run, cluster_.node(static_cast<NodeId>(node_)), node_);
  // Back in the cluster: registered again (its lease lapsed while it was cut off).
  cluster_.WaitRegistered(static_cast<NodeId>(node_));
}

}  // namespace iris::chaos
