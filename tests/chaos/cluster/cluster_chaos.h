#pragma once
// The cluster chaos fixture (issue 17; CLUSTER.md §2): three irisd storage nodes with
// --replicas 3 (an append is acknowledged once two replicas hold it) and etcd, in a private
// network of namespaces the test builds (harness/network_lab.h; the binary's main enters
// it before any thread). The chaos clients (harness/chaos.h) are spread over the nodes and
// move to the next node whenever they reconnect; every SEND that meets a timeout or a
// retryable error is sent again with the same idempotency key. On a seeded schedule a fault
// is injected while SENDs are in flight, the test waits until the cluster has made progress
// despite it (acknowledgements from the clients), and heals it. At the end every user
// catches up from cursor 0 and the checker judges the history: nothing acknowledged lost,
// nothing duplicated or reordered, ids increasing within every inbox.

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>

#include "harness/chaos.h"
#include "harness/local_cluster.h"
#include "harness/network_lab.h"

namespace iris::chaos {

inline constexpr int kNodes = 3;

class ClusterChaos : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;
  // Called first in SetUp, before any node starts (e.g. to set up libfaketime).
  virtual void PrepareNodes() {}
  // Called with the cluster's options before it is made (e.g. Options::before_start).
  virtual void ConfigureCluster(testing::LocalCluster::Options& /*options*/) {}
  // How many storage nodes (each with --replicas 3).
  virtual int NodeCount() const { return kNodes; }

  std::unique_ptr<testing::NetworkLab> lab_;
  std::unique_ptr<testing::LocalCluster> cluster_;
  ChaosOptions options_;
  std::unique_ptr<ChaosRun> run_;
};

// Progress while the fault holds: `want` more acknowledgements (30 s).
void ExpectProgress(ChaosRun& run, const std::string& what, uint64_t want);

// The ids in `user`'s inbox read through `node` from cursor 0 (a fresh session, every page
// acknowledged), or nullopt when the read did not complete (refused, connection lost, no
// SYNC_DONE within 10 s): a read that completes is a claim about the inbox.
std::optional<std::set<uint64_t>> InboxThrough(testing::ServerProcess& node, uint64_t user,
                                               std::string* why);

// Reads started after a message was acknowledged must return it, through any node: right
// after node `k` comes back (its view of the shard map possibly stale, its replicas deposed
// while it was cut off), every user's inbox read through it holds every message
// acknowledged before the read began. Reads that do not complete (the node refuses or is
// not reachable yet) are tried again for up to 20 s; a completed read missing an
// acknowledged message fails the test (a stale read). The chaos clients do not reconnect
// meanwhile: each read's session replaces the user's client session, which would otherwise
// take it back at once (one session per user).
void ExpectFreshReadsThrough(ChaosRun& run, testing::ServerProcess& node, int k);

// Node `me` is primary of no shard (per etcd), within `timeout_ms`; else a test failure.
bool WaitNotPrimary(testing::LocalCluster& cluster, NodeId me, bool also_unregistered,
                    int64_t timeout_ms, const std::string& what);

// Within `timeout_ms`, every replica of every shard (as etcd places them) may vote: its node
// runs and reports iris_replication_amnesiac = 0 for the shard. A replica that joined a shard
// after its first election (a node that registered late) or set lost data aside votes only
// once the primary has levelled it (docs/replication.md), and until then the shard cannot
// fail over without its primary: a nemesis that takes a primary away waits for this first.
// A test failure (and false) otherwise.
bool WaitEveryReplicaVotes(testing::LocalCluster& cluster, int64_t timeout_ms,
                           const std::string& what);

// One node at a time (seeded) loses its only link: it reaches neither its peers, nor etcd,
// nor the clients. Held until etcd shows it gone and its shards failed over; after the heal,
// reads through it must be fresh (ExpectFreshReadsThrough).
class IsolateNemesis : public Nemesis {
 public:
  IsolateNemesis(testing::NetworkLab& lab, testing::LocalCluster& cluster)
      : lab_(lab), cluster_(cluster) {}
  std::string name() const override { return "isolate"; }
  void Inject(ChaosRun& run, std::mt19937_64& rng) override;
  void Heal(ChaosRun& run) override;
  int isolations() const { return isolations_; }
  // The next Inject isolates this node rather than a seeded one.
  void set_next(int node) { next_ = node; }

 private:
  testing::NetworkLab& lab_;
  testing::LocalCluster& cluster_;
  int next_ = 0;
  int node_ = 0;
  int isolations_ = 0;
};

}  // namespace iris::chaos
