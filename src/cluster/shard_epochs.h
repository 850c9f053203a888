#pragma once
// ShardEpochs: the etcd half of one shard's replication (CLUSTER.md §3, §5): the record a
// repl::Replica reads (shards/<s> and leaders/<s>) and the three etcd effects it asks for.
// Every consensus decision is this etcd transaction; Iris decides nothing alone.
//
//   shards/<s>    {"id","replicas","primary","epoch",  changed only by compare-and-swap
//                  "target"}
//                                                     (its mod revision) — here by failover,
//                                                     by the placement controller on moves
//   leaders/<s>   {"epoch":e,"primary":p}             under the primary's lease (TTL
//                                                     lease_ttl_s): exists while it lives
//
// Record: ShardRecord{revision, epoch, primary, lease_live, replicas, target}, where lease_live
// means leaders/<s> exists AND names the current epoch (a leftover of an older epoch is a lapsed
// lease). It is read once at Start(), then after every change of either key (two watches),
// and posted to the replica as EtcdWatch; `revision` is the etcd revision of the read, so the
// replica can ignore an older record.
//
// Cas(EtcdCas{expected, new, primary}): reads shards/<s>; unless its epoch is `expected`,
// answers failed with the current record. Otherwise grants a lease and runs ONE transaction:
// if shards/<s>'s mod revision is the one read and leaders/<s> is absent, then put shards/<s>
// with epoch = new and primary = self, and leaders/<s> under the lease. A lost race revokes
// the lease. Answers EtcdTxnResult through `post`.
// KeepAlive(EtcdKeepAlive{e}): renews the lease this node won for epoch e once; when etcd
// says it is gone (or this node holds none for e) posts LeaseLapsed{e}. An unreachable etcd
// posts nothing: the lease lapses on etcd's side and the replicas' promises fence this
// primary (a deposed primary never reaches W).
// Revoke(EtcdRevoke{e}): revokes the lease of epoch e (none: nothing).
// Switch(EtcdSwitch{revision, e, e', replicas}): a move's switch. Reads both keys; unless
// neither changed after `revision`, the record's epoch is e and leaders/<s> is under this
// node's lease of e, answers failed. Otherwise ONE transaction, compared against both keys'
// mod revisions: shards/<s> gets epoch e', replicas = `replicas` and no target; if this node
// is among them, leaders/<s> says e' under the same lease (which then serves e'), else
// leaders/<s> is deleted and the lease revoked (the new replicas elect a primary). An
// answer lost in transit is settled by reading the shard key back. Answers
// EtcdTxnResult{e'}.
//
// Compaction: a watch whose history etcd compacted away is replaced from a fresh read (the
// record is posted again), so the replica never stops hearing of new epochs and leases.
//
// Threading: the etcd calls block, so they run on ShardEpochs' own thread, in order; `post`
// is called from that thread and from the watches' threads (ReplicaHost::Post is
// thread-safe). Cas/KeepAlive/Revoke may be called from any thread.

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "cluster/etcd_client.h"
#include "cluster/placement.h"
#include "cluster/replication/replica.h"

namespace iris::cluster {

class ShardEpochs {
 public:
  ShardEpochs(EtcdClient& client, ClusterKeys keys, ShardId shard, NodeId self, int64_t lease_ttl_s,
              std::function<void(repl::Event)> post);
  // Stops the watches and the thread (queued etcd calls are dropped; a lease won is left to
  // expire, as after a crash).
  ~ShardEpochs();
  ShardEpochs(const ShardEpochs&) = delete;
  ShardEpochs& operator=(const ShardEpochs&) = delete;

  // Reads the record (posted), then follows both keys. UNAVAILABLE when etcd cannot be read.
  Status Start();

  void Cas(const repl::EtcdCas& cas);
  void KeepAlive(const repl::EtcdKeepAlive& keep_alive);
  void Revoke(const repl::EtcdRevoke& revoke);
  void Switch(const repl::EtcdSwitch& sw);

  // Whether this node's lease for `epoch` is certainly still alive in etcd: a grant or
  // renewal that etcd answered, sent at t, keeps it so until t + TTL less a margin (the
  // lease cannot have expired earlier on etcd's side). A primary serves reads only while
  // this holds (CLUSTER.md §5): one cut off from etcd stops within a TTL, before a
  // successor can have written anything it would miss. Any thread.
  bool LeaseValid(repl::Epoch epoch) const;
  // Until when (monotonic ms) LeaseValid(epoch) holds at most; 0 when it does not (tests).
  int64_t LeaseValidUntilMs(repl::Epoch epoch) const;

  // The leaders/<s> key (tests).
  std::string LeaderKey() const;

  // Reads the record now (tests, and Start).
  Result<repl::ShardRecord> ReadRecord();

 private:
  void Run();
  void Queue(std::function<void()> call);
  std::string WatchedKey(int which) const;
  // Follows WatchedKey(which) from etcd revision `from`, replacing the previous watch.
  void StartWatch(int which, int64_t from);
  // After a compaction: reads the record (posted) and watches again from that read.
  void RestartWatch(int which);
  void DoCas(const repl::EtcdCas& cas);
  void DoSwitch(const repl::EtcdSwitch& sw);
  void PostRecord();

  EtcdClient& client_;
  const ClusterKeys keys_;
  const ShardId shard_;
  const NodeId self_;
  const int64_t lease_ttl_s_;
  std::function<void(repl::Event)> post_;

  std::map<repl::Epoch, int64_t> leases_;  // epoch -> lease id won by this node (thread_ only)
  // LeaseValid: the epoch of the lease last granted or renewed, and until when (monotonic
  // ms) it is known to live. Written on thread_.
  std::atomic<repl::Epoch> valid_epoch_{0};
  std::atomic<int64_t> valid_until_ms_{0};
  // Sets valid_* after etcd answered a grant or renewal sent at `sent_ms` with `ttl_s`.
  void Renewed(repl::Epoch epoch, int64_t sent_ms, int64_t ttl_s);
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> calls_;
  bool stopping_ = false;
  std::thread thread_;
  // [0] follows shards/<s>, [1] leaders/<s>; replaced after a compaction (on thread_).
  std::mutex watch_mu_;
  std::unique_ptr<EtcdWatch> watches_[2];
};

}  // namespace iris::cluster
