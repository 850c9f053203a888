#pragma once
// NodeReplication: every shard replica a node holds, wired to its store, its peers and etcd
// (docs/replication.md, "The store on a replicated node"). Per shard it runs a ReplicaHost
// (the state machine's strand) over the node's one ShardLog, and a ShardEpochs (the shard's
// etcd record, lease and failover CAS). It is what the store's replicate hook calls:
//
//   store sync thread --Replicate(shard, part)--> the shard's host: ClientAppend
//       (refused UNAVAILABLE unless this node is the shard's primary and has taken it over)
//   host Commit        --env.apply-->     store ApplyReplicated (primary and backups alike)
//   host Acknowledge   --> the part's done(OK);  host Refuse --> done(error)
//   host role_changed(primary e) --env.take_over--> store TakeOverShard, then the host
//       takes appends of epoch e (OpenForAppends)
//   host Send          --env.send-->      the peer link to that replica
//   peer link          --Receive-->       the host of that shard
//
// Thread-safety: every method may be called from any thread. The env callbacks run on the
// hosts' threads (take_over's done on the store's sync thread).

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "cluster/etcd_client.h"
#include "cluster/placement.h"
#include "cluster/replication/replica_host.h"
#include "cluster/replication/shard_log.h"
#include "cluster/shard_epochs.h"

namespace iris::cluster {

struct NodeReplicationOptions {
  repl::NodeId self = 0;
  std::string log_path;     // the ShardLog's RocksDB directory
  int64_t lease_ttl_s = 2;  // the primary's etcd lease (CLUSTER.md §5: TTL about 2 s)
  // The state machine's timers and W; self and replicas are set per shard.
  repl::Options replica;
  int64_t tick_ms = 20;
};

struct NodeReplicationEnv {
  // Sends a message to the replica `to` of `shard` (the peer link); may drop it.
  std::function<void(repl::NodeId to, repl::ShardNo shard, repl::Message message)> send;
  // Makes committed batches of `shard` durable in the store (InboxStore::ApplyReplicated).
  std::function<Status(repl::ShardNo shard, const std::vector<repl::Batch>& batches)> apply;
  // The last lsn of `shard` the store applied (InboxStore::ReplicatedLsn).
  std::function<Result<repl::Lsn>(repl::ShardNo shard)> applied_lsn;
  // This node became the primary of `shard`: the store starts its ids above
  // hlc_high_water and drops what it cached of the shard, then calls done
  // (InboxStore::TakeOverShard).
  std::function<void(repl::ShardNo shard, uint64_t hlc_high_water,
                     std::function<void(Status)> done)>
      take_over;
  // Optional: a shard's replica stopped on a storage error (it refuses everything).
  std::function<void(repl::ShardNo shard, const Status& status)> failed;
};

class NodeReplication {
 public:
  // Opens the ShardLog at options.log_path. `etcd` must outlive this object.
  static Result<std::unique_ptr<NodeReplication>> Open(NodeReplicationOptions options,
                                                       EtcdClient& etcd, ClusterKeys keys,
                                                       NodeReplicationEnv env);
  // Stops every shard (appends waiting for a commit are refused UNAVAILABLE; leases won are
  // left to expire, as after a crash), then closes the log.
  ~NodeReplication();
  NodeReplication(const NodeReplication&) = delete;
  NodeReplication& operator=(const NodeReplication&) = delete;

  // Starts this node's replica of `shard` (`replicas` lists all of them, this node among
  // them) from the log and the store's applied lsn, and follows the shard's etcd record.
  // A shard already started is left as it is. Errors: BAD_REQUEST when self is not among
  // `replicas`; INTERNAL when the log cannot be read; UNAVAILABLE when etcd cannot be read.
  Status AddShard(repl::ShardNo shard, std::vector<repl::NodeId> replicas);

  // The store's replicate hook (StoreOptions::replicate). `done` runs exactly once.
  void Replicate(repl::ShardNo shard, std::string payload, uint64_t hlc,
                 std::function<void(Status)> done);

  // A message from the peer link of node `from`. Messages of a shard this node does not
  // replicate are dropped.
  void Receive(repl::NodeId from, repl::ShardNo shard, repl::Message message);

  // The shard's replica as of now (nullopt: not replicated here).
  std::optional<repl::ReplicaHost::View> view(repl::ShardNo shard) const;
  // Whether this node is the shard's primary and takes appends.
  bool Serving(repl::ShardNo shard) const;

 private:
  struct Shard {
    std::unique_ptr<ShardEpochs> epochs;
    std::unique_ptr<repl::ReplicaHost> host;
    repl::Epoch serving_epoch = 0;  // taken over by the store and open for appends
  };
  NodeReplication(NodeReplicationOptions options, EtcdClient& etcd, ClusterKeys keys,
                  NodeReplicationEnv env, std::unique_ptr<repl::ShardLog> log);
  void Answer(const std::vector<uint64_t>& request_ids, const Status& status);
  void OnRoleChanged(repl::ShardNo shard, repl::Epoch epoch, uint64_t hlc_high_water);

  const NodeReplicationOptions options_;
  EtcdClient& etcd_;
  const ClusterKeys keys_;
  const NodeReplicationEnv env_;
  std::unique_ptr<repl::ShardLog> log_;

  mutable std::mutex mu_;
  std::map<repl::ShardNo, Shard> shards_;                    // guarded by mu_
  std::map<uint64_t, std::function<void(Status)>> waiting_;  // request id -> done; mu_
  uint64_t next_request_ = 1;                                // mu_
};

}  // namespace iris::cluster
