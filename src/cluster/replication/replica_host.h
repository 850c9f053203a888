#pragma once
// ReplicaHost: one shard's repl::Replica running on a node — the runtime around the pure
// state machine (docs/replication.md, "Wiring into irisd"). It owns the replica and one
// thread (the shard's strand) that steps every event in arrival order and carries out the
// effects in order before the next event:
//   storage (WalAppend ... PersistMeta)   the node's ShardLog (shard_log.h);
//   Send                                  env.send (the peer links in irisd);
//   EtcdCas / EtcdSwitch / EtcdKeepAlive  env.etcd_* (ShardEpochs in irisd), which answer
//   / EtcdRevoke
//                                         later through Post();
//   Commit, and a backup's commit point   env.apply: the committed batches, in lsn order,
//                                         each exactly once per host (from applied_lsn on);
//   Acknowledge / Refuse                  env.acknowledge / env.refuse (SEND_ACK / ERROR);
//   Rebuild                               env.rebuild (state transfer of the shard's data,
//                                         rebuild.h; the copy's chunks arrive at the
//                                         rebuilt replica through PostRebuildChunk).
// Time: a Tick from the monotonic clock every tick_ms (timers only; never safety).
//
// Apply at commit: a batch reaches the store (env.apply) only once it is committed — at the
// primary when the Commit effect names it (before the Acknowledge that follows), at a
// backup once the primary's commit point covers it and it is durable here. Batches that a
// later primary truncates were therefore never applied anywhere, and reads of the store
// never see an append that failover can undo.
//
// Stale sync reports: an append's sync callback can report an lsn that a truncate carried out
// after it removed. The host counts truncates and snapshot installs (a generation) and drops
// reports from an older generation; after a truncate returns, everything up to its lsn is
// durable (the log writes in order), which the host reports itself.
//
// Thread-safety: Post() and view() may be called from any thread. The env callbacks run on
// the host's thread, except that env.etcd_* answers arrive through Post(). A storage error
// stops the shard: the host refuses everything afterwards (env.failed says why) — its
// replica can no longer mirror the log; the node restarts it from the log.

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "cluster/replication/rebuild.h"
#include "cluster/replication/replica.h"
#include "cluster/replication/shard_log.h"
#include "common/clock.h"

namespace iris::cluster::repl {

struct HostEnvironment {
  std::function<void(NodeId to, Message message)> send;
  std::function<void(const EtcdCas&)> etcd_cas;               // answer: Post(EtcdTxnResult)
  std::function<void(const EtcdKeepAlive&)> etcd_keep_alive;  // Post(LeaseLapsed) when gone
  std::function<void(const EtcdRevoke&)> etcd_revoke;
  std::function<void(const EtcdSwitch&)> etcd_switch;  // answer: Post(EtcdTxnResult)
  // Makes the batches part of the shard's applied state; durable on return. A failure stops
  // the shard (as a storage error).
  std::function<Status(const std::vector<Batch>& batches)> apply;
  std::function<void(const Acknowledge&)> acknowledge;
  std::function<void(const Refuse&)> refuse;
  std::function<void(const Rebuild&)> rebuild;
  std::function<void(const Status&)> failed;  // optional
  // Rebuild, the replica's side (rebuild.h). Optional: without install_chunk, chunks are
  // refused and an InstallSnapshot is taken as it comes (its state carries the data).
  // install_chunk writes one chunk into the store, durably; send_ack answers the sender.
  std::function<Status(const std::string& payload)> install_chunk;
  std::function<void(NodeId to, const RebuildAck& ack)> send_ack;
  // Optional: the log is not compacted beyond this lsn (the primary keeps what a rebuild in
  // progress will level its replica from; else a copy slower than the log's turnover would
  // start over forever).
  std::function<Lsn()> compaction_floor;
  // Optional. The replica became the primary of `epoch` and has applied every batch it
  // inherited (so the store shows the whole committed log), or stopped being it (epoch 0).
  // Until OpenForAppends(epoch) the host refuses ClientAppends with UNAVAILABLE: whoever
  // builds the batches first drops what it derived from an older view of the shard and
  // starts its ids above hlc_high_water. Without this callback appends are open at once.
  std::function<void(Role role, Epoch epoch, uint64_t hlc_high_water)> role_changed;
};

struct HostOptions {
  ShardNo shard = 0;
  Options replica;      // the state machine's options (self, replicas, W, timers)
  Lsn applied_lsn = 0;  // what env.apply has made durable before this start
  // Whether the shard has had a primary (etcd, cluster::ShardInfo::elected) when the
  // replica starts: then a replica without any durable state starts amnesiac
  // (DurableState::amnesiac). So does one whose store holds data of the shard
  // (applied_lsn > 0) while its log is gone.
  bool shard_elected = false;
  int64_t tick_ms = 20;
  // Compact the log once this many applied batches follow its snapshot (0: never).
  Lsn compact_every = 0;
  const Clock* clock = nullptr;  // nullptr: SystemClock
};

class ReplicaHost {
 public:
  // Loads the shard's durable state from `log` and starts the strand. `log` must outlive the
  // host. INTERNAL when the log cannot be read.
  static Result<std::unique_ptr<ReplicaHost>> Start(HostOptions options, ShardLog& log,
                                                    HostEnvironment env);
  // Stops the strand (events still queued are dropped, appends waiting for a commit are
  // refused with UNAVAILABLE) and waits for it. Sync callbacks still in the log's queue
  // find the host gone and do nothing.
  ~ReplicaHost();
  ReplicaHost(const ReplicaHost&) = delete;
  ReplicaHost& operator=(const ReplicaHost&) = delete;

  void Post(Event event);
  // A chunk of a rebuild of this replica, from the primary `from` (rebuild.h).
  void PostRebuildChunk(NodeId from, RebuildChunk chunk);
  // Lets ClientAppends in while this replica is the primary of `epoch` (see
  // HostEnvironment::role_changed); a later epoch needs a new call.
  void OpenForAppends(Epoch epoch);

  struct View {
    Role role = Role::kBackup;
    Epoch promised = 0;
    Epoch accepted = 0;
    Lsn last_lsn = 0;
    Lsn durable_lsn = 0;
    Lsn commit_lsn = 0;
    Lsn applied_lsn = 0;
    Lsn snapshot_lsn = 0;  // the log starts after this (compacted or installed)
    uint64_t hlc_high_water = 0;
    uint64_t rebuilds_installed = 0;  // InstallSnapshots of a rebuild taken by this host
    bool failed = false;
    // The replica lost its log (or is new to a running shard): it neither votes nor counts
    // until a primary has levelled it (DurableState::amnesiac).
    bool amnesiac = false;
    // The shard record leaves this node out (a move took it out): its host may go.
    bool removed = false;
    std::vector<NodeId> members;  // the replica set as this node knows it
    bool switching = false;       // primary: a move's switch is in flight
  };
  View view() const;

 private:
  struct Shared;
  ReplicaHost(HostOptions options, ShardLog& log, HostEnvironment env, DurableState durable);
  void Run();
  void Carry(std::vector<Effect> effects);
  void ApplyUpTo(Lsn lsn);
  void OnRebuildChunk(NodeId from, RebuildChunk& chunk);
  // Whether an InstallSnapshot from `from` may reach the replica (see rebuild.h).
  bool InstallAllowed(NodeId from, const InstallSnapshot& m) const;
  void Fail(const Status& status);
  void Publish();
  // Reports role changes (HostEnvironment::role_changed), the primary's once it has applied
  // its whole inherited log.
  void ReportRole();

  const HostOptions opts_;
  ShardLog& log_;
  HostEnvironment env_;
  Replica replica_;
  const Clock& clock_;
  uint64_t generation_ = 0;  // truncates + installs carried out
  Lsn applied_ = 0;
  bool failed_ = false;
  Epoch reported_epoch_ = 0;    // the primary epoch last reported to role_changed (0: none)
  Epoch open_epoch_ = 0;        // ClientAppends are taken while primary of this epoch
  std::set<uint64_t> waiting_;  // request ids not answered yet (refused at stop)
  // The rebuild being received (rebuild.h): chunks next_seq.. are expected from `from`.
  // clean: nothing was applied since its first chunk (an apply of an older batch after a
  // chunk would survive the install, which skips the log up to the rebuild's lsn).
  struct IncomingRebuild {
    uint64_t id = 0;
    NodeId from = 0;
    uint64_t next_seq = 0;
    bool complete = false;
    bool clean = false;
    // The lowest read_lsn of its chunks: an install at a higher lsn would skip batches
    // some chunk lacks.
    Lsn min_read_lsn = ~Lsn{0};
  };
  IncomingRebuild rebuild_;
  uint64_t rebuilds_installed_ = 0;
  uint64_t installed_rebuild_ = 0;  // the last rebuild installed (a repeat of its install is
                                    // not answered as refused)
  // Shared with the log's sync callbacks, which may outlive the host.
  std::shared_ptr<Shared> shared_;
  std::thread thread_;
};

}  // namespace iris::cluster::repl
