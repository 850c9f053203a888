#pragma once
// PlacementController: one per storage node; at most one of them — the holder of
// /iris/<cluster>/controller — acts at a time.
//
// States:
//   candidate --(txn: controller absent -> put {"id":self} under my lease)--> leader
//   candidate --(txn failed)--> wait for a change under the cluster prefix (the holder's key
//                               disappears when its lease lapses or is revoked) --> candidate
//   leader --(my lease lost)--> candidate (with a new lease)
//
// The leader reconciles after every change under the prefix. Before the first placement it
// waits until config.initial_nodes storage nodes are registered (logging how many it has),
// then places all of them at once with AddNodes() (placement.h), writing the placement and
// the shard records in one transaction that also checks that it still holds the controller
// key (mod revision of its win) and that the placement is the one it read (mod revision),
// so a deposed controller can never overwrite a newer placement.
//
// Once placed, a replicated cluster (config.replicas > 1) moves replicas (CLUSTER.md §6,
// docs/replication.md "Moving a replica"): the controller writes one shard's `target` at a
// time, as PlanMove() (placement.h) says — off draining nodes (drain/<id>, irisctl cluster
// drain), then onto nodes holding fewer replicas (a storage node that joins later gets its
// share this way); the shard's primary copies the data and switches. The number of shards
// (one per initial node) does not change. Without replication a storage node that
// registers later is NOT given vnodes (its users' inboxes would move to an empty store): it
// is logged once and holds nothing. The controller never removes a node that is down: it
// keeps its shards.
//
// Thread-safety: Start/Stop from one thread; leader() from any.

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <set>
#include <thread>

#include "cluster/etcd_client.h"
#include "cluster/placement.h"

namespace iris::cluster {

// `irisctl cluster init`: writes the config key if absent (one transaction). OK when it is
// absent or holds the same values; BAD_REQUEST (naming both) when it holds other values, or
// when `config` is invalid; UNAVAILABLE when etcd is unreachable.
Status InitClusterConfig(EtcdClient& client, const ClusterKeys& keys, const ClusterConfig& config);

class PlacementController {
 public:
  // `client` must outlive this object.
  PlacementController(EtcdClient& client, ClusterKeys keys, NodeId self, int64_t lease_ttl_s = 3);
  ~PlacementController();

  void Start();
  // Stops; when leader, revokes its lease so another candidate takes over at once.
  void Stop();

  bool leader() const { return leader_.load(); }
  // The controller lease (0 when not leader); tests revoke it to force a hand-over.
  int64_t lease_id() const { return lease_id_.load(); }
  // Placement changes this controller wrote.
  int64_t placements_written() const { return placements_written_.load(); }
  // While no placement exists: the storage nodes registered at the last look (-1 when not
  // waiting). Tests use it to see that the controller looked and chose not to place.
  int64_t waiting_have() const { return waiting_have_.load(); }
  // Storage nodes that joined after the first placement and were left without vnodes.
  int64_t unplaced_reported() const { return unplaced_reported_.load(); }
  // Shard targets this controller wrote (moves planned, replanned or cancelled).
  int64_t moves_planned() const { return moves_planned_.load(); }

 private:
  void Run();
  Status Campaign();
  Status Reconcile();
  // A replicated cluster once placed: writes the next move PlanMove() gives (one at a time:
  // a shard's target, compared against its record's mod revision and the controller key).
  Status PlanMoves(const ClusterState& state, const std::map<std::string, int64_t>& mod_revision,
                   const std::set<std::string>& leader_keys);
  void StepDown();
  void Wake();

  EtcdClient& client_;
  const ClusterKeys keys_;
  const NodeId self_;
  const int64_t ttl_s_;
  std::atomic<bool> leader_{false};
  std::atomic<int64_t> lease_id_{0};
  std::atomic<int64_t> placements_written_{0};
  std::atomic<int64_t> waiting_have_{-1};
  std::atomic<int64_t> unplaced_reported_{0};
  std::atomic<int64_t> moves_planned_{0};
  std::set<NodeId> reported_unplaced_;  // thread-owned: late joiners already logged
  // Thread-owned: since when (monotonic ms) each shard has had no leader key. An elected
  // shard leaderless for stuck_after_ms_ gets no move, and its move in progress is
  // cancelled (PlanMove's `stuck`).
  std::map<ShardId, int64_t> leaderless_since_ms_;
  int64_t stuck_after_ms_ = 60'000;
  int64_t won_revision_ = 0;            // thread-owned: mod revision of the controller key
  // Thread-owned: no campaign before this (monotonic ms). A node that was the controller
  // and stopped being it (its lease ended, or the key lapsed or went to another node)
  // lets the others campaign first for one TTL rather than race to win again at once.
  int64_t quiet_until_ms_ = 0;
  std::unique_ptr<LeaseKeeper> keeper_;  // thread-owned
  std::unique_ptr<EtcdWatch> watch_;     // thread-owned
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;     // guarded by mu_
  bool changed_ = false;  // guarded by mu_: something under the prefix changed
  bool lost_ = false;     // guarded by mu_: the controller lease was lost
  bool rewatch_ = false;  // guarded by mu_: the watch ended (compaction)
  std::thread thread_;
};

}  // namespace iris::cluster
