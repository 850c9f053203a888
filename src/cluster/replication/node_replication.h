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
//   host Rebuild       --> the rebuild thread: env.copy_chunk, one chunk in flight to the
//       replica (env.send_transfer), throttled; then the InstallSnapshot (rebuild.h)
//   peer link          --ReceiveTransfer--> a chunk to the host (env.install_chunk), or an
//       ack to the rebuild thread
//
// Thread-safety: every method may be called from any thread. The env callbacks run on the
// hosts' threads (take_over's done on the store's sync thread).

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "cluster/etcd_client.h"
#include "cluster/placement.h"
#include "cluster/replication/rebuild.h"
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
  // Compact a shard's log once this many applied batches follow its snapshot (0: never). A
  // replica further behind than the log is rebuilt by copying the shard's records.
  repl::Lsn compact_every = 4096;
  // Rebuilds: bytes of records copied per second, over all rebuilds this node sends
  // (--rebalance-bytes-per-sec), the size of one chunk, and how long a chunk may wait for
  // its ack before the rebuild is dropped (the primary starts another).
  int64_t rebuild_bytes_per_sec = 64 << 20;
  size_t rebuild_chunk_bytes = 256 << 10;
  int64_t rebuild_ack_timeout_ms = 5000;
  // After a chunk could not be sent (no link to the replica), orders for that replica and
  // shard are ignored this long: a replica that is down is not read for every order.
  int64_t rebuild_no_link_hold_ms = 1000;
  // After a rebuild's last chunk, the primary keeps its log from the rebuild's lsn this long
  // more, for the Level (in pieces) of what was written during the copy.
  int64_t rebuild_level_grace_ms = 60'000;
  // This node set lost data aside (irisd --rebuild-lost-data): every replica it starts
  // without a log is amnesiac (repl::DurableState::amnesiac), whatever etcd's record says.
  bool lost_data = false;
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
  // Rebuilds (rebuild.h). Optional: without copy_chunk this node rebuilds nobody, without
  // install_chunk it cannot be rebuilt. copy_chunk reads the next chunk of the shard's
  // records from *cursor (empty: the start; opaque, advanced) and sets *done after the last
  // (InboxStore::CopyShardChunk); install_chunk writes one (InboxStore::InstallShardChunk).
  // *read_lsn: the shard's applied lsn in the store as of the chunk's read.
  std::function<Result<std::string>(repl::ShardNo shard, std::string* cursor, size_t max_bytes,
                                    bool* done, repl::Lsn* read_lsn)>
      copy_chunk;
  std::function<Status(repl::ShardNo shard, const std::string& payload)> install_chunk;
  // Sends a rebuild transfer to `to` (the peer link); may drop it. False when it surely
  // did (no link): the rebuild is dropped at once and the primary orders another.
  std::function<bool(repl::NodeId to, repl::ShardNo shard, repl::Transfer transfer)>
      send_transfer;
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

  // Starts this node's replica of `shard` (`replicas` lists all of them) from the log and
  // the store's applied lsn, and follows the shard's etcd record. This node is among
  // `replicas`, or among `target` (the replica set a move wants: it starts as the move's
  // learner, docs/replication.md "Moving a replica"). A shard already started is left as
  // it is. Errors: BAD_REQUEST when self is in neither; INTERNAL when the log cannot be
  // read; UNAVAILABLE when etcd cannot be read. `shard_elected`: the shard has had a
  // primary, as etcd's record says (HostOptions).
  Status AddShard(repl::ShardNo shard, std::vector<repl::NodeId> replicas,
                  bool shard_elected = false, const std::vector<repl::NodeId>& target = {});
  // Stops this node's replica of `shard`, if it runs, and drops its log (a move took it
  // out: etcd's record names this node neither as a replica nor as a target). Appends
  // waiting for a commit are refused UNAVAILABLE. Errors: the log's write errors.
  Status RemoveShard(repl::ShardNo shard);
  // The shards this node runs a replica of.
  std::vector<repl::ShardNo> Shards() const;

  // The store's replicate hook (StoreOptions::replicate). `done` runs exactly once.
  void Replicate(repl::ShardNo shard, std::string payload, uint64_t hlc,
                 std::function<void(Status)> done);

  // A message from the peer link of node `from`. Messages of a shard this node does not
  // replicate are dropped.
  void Receive(repl::NodeId from, repl::ShardNo shard, repl::Message message);
  // A rebuild transfer from the peer link of node `from` (rebuild.h).
  void ReceiveTransfer(repl::NodeId from, repl::ShardNo shard, repl::Transfer transfer);

  // The shard's replica as of now (nullopt: not replicated here).
  std::optional<repl::ReplicaHost::View> view(repl::ShardNo shard) const;
  // Whether this node is the shard's primary, has taken it over, and its lease is certainly
  // alive (ShardEpochs::LeaseValid): what serving the shard's reads and writes needs.
  bool Serving(repl::ShardNo shard) const;

 private:
  struct Shard {
    std::unique_ptr<ShardEpochs> epochs;
    std::unique_ptr<repl::ReplicaHost> host;
    repl::Epoch serving_epoch = 0;  // taken over by the store and open for appends
  };
  NodeReplication(NodeReplicationOptions options, EtcdClient& etcd, ClusterKeys keys,
                  NodeReplicationEnv env, std::unique_ptr<repl::ShardLog> log);
  // A rebuild this node sends (the primary's side of rebuild.h).
  struct OutgoingRebuild {
    repl::ShardNo shard = 0;
    repl::Rebuild order;
    uint64_t id = 0;
    uint64_t seq = 0;     // the chunk in flight, or the next one
    std::string cursor;   // where the next chunk starts
    // The chunk in flight (or the one acked last) is the last. Also set, with no chunk in
    // flight, when the rebuild is over or had no link: the entry then holds off new orders
    // for the pair until deadline_ms.
    bool copied = false;
    bool awaiting = false;
    int64_t deadline_ms = 0;  // for the ack of the chunk in flight
    int64_t started_ms = 0;
    uint64_t bytes = 0;  // acknowledged so far
    uint64_t in_flight_bytes = 0;
    // The store had not yet applied the order's lsn when the next chunk was read (the
    // chunk was dropped): it is read again from not_before_ms on; behind_since_ms is when
    // that first happened (0: it did not), for giving up.
    int64_t not_before_ms = 0;
    int64_t behind_since_ms = 0;
  };
  void StartRebuild(repl::ShardNo shard, const repl::Rebuild& order);
  static int64_t NowMs();
  void RebuildLoop();
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

  // Rebuilds sent, by (shard, replica); one in flight per pair. Served by rebuild_thread_.
  std::mutex rebuild_mu_;
  std::condition_variable rebuild_cv_;
  std::map<std::pair<repl::ShardNo, repl::NodeId>, OutgoingRebuild> rebuilds_;  // rebuild_mu_
  bool rebuild_stopping_ = false;                                               // rebuild_mu_
  uint64_t next_rebuild_ = 0;                                                   // rebuild_mu_
  std::map<std::pair<repl::ShardNo, repl::NodeId>, int64_t> rebuild_logged_ms_;  // rebuild_mu_
  std::thread rebuild_thread_;
};

}  // namespace iris::cluster
