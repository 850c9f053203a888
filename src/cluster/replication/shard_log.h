#pragma once
// ShardLog: the durable half of the replication protocol on one node (docs/replication.md,
// "Wiring into irisd"). For every shard the node replicates it keeps the replica's
// repl::DurableState — the promised and accepted epochs, the snapshot marker and the
// batches after it — so that a restarted node builds each repl::Replica from exactly what
// was synced before the crash.
//
// It carries out the storage effects of repl::Replica, with the contract replica.h gives
// them:
//   WalAppend           Append(): queued, written and synced with whatever else is queued
//                       (one fdatasync for many shards' batches); `done` then reports the
//                       shard's last lsn as of that write, which the caller passes to the
//                       replica as WalSynced.
//   WalTruncate, WalCompact, WalInstallSnapshot, PersistMeta
//                       durable when the call returns ("before any later effect"): each is
//                       queued behind the appends before it and the caller waits for the
//                       synced write that carries it.
// Effects of one shard are written in the order they are given, so an append queued before
// a truncate can never reappear after it.
//
// Storage: a RocksDB of its own at `path` (one column family; the node's inbox store is a
// separate database), with the inbox store's recovery rules (docs/reliability.md,
// "Corruption"): the WAL replays with kTolerateCorruptedTailRecords, so an incomplete last
// record (a write never reported synced) is cut and a damaged record anywhere else fails
// Open; paranoid checks and WAL tracking in the MANIFEST. Keys (big-endian integers):
//   'M' shard(4)          promised(8) accepted(8) [1: amnesiac, DurableState::amnesiac]
//   'S' shard(4)          snapshot: lsn(8) epoch(8) hlc(8) state
//   'B' shard(4) lsn(8)   batch: epoch(8) hlc(8) payload
// Load() checks that the batches continue the snapshot without a hole.
//
// Thread-safety: every method may be called from any thread. One writer thread does all
// writes; `done` callbacks run on it, in write order, each before any waiting call queued
// after its append returns, and must not call the waiting methods (they may call Append).
// A callback can report an lsn that a later truncate (or snapshot install) removed: the
// caller drops reports of appends made before its last truncate of the shard (ReplicaHost
// does, with a generation count). The waiting methods block the caller
// for one synced write: call them from a replication thread, never from an event loop.

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cluster/replication/replica.h"
#include "common/status.h"

namespace rocksdb {
class DB;
}

namespace iris::cluster::repl {

class ShardLog {
 public:
  // `status`: OK when the write is synced; otherwise the write failed and nothing queued
  // with it is known to be durable (the caller must stop replicating the shard: its replica
  // can no longer mirror the log). `last_lsn`: the shard's last lsn as of that write.
  using SyncedFn = std::function<void(Status status, Lsn last_lsn)>;

  // Opens (creating if missing) the log at `path`. INTERNAL with RocksDB's message when the
  // database is damaged (see above) or held by another process.
  static Result<std::unique_ptr<ShardLog>> Open(const std::string& path);
  // Writes what is queued (its callbacks run), then closes the database.
  ~ShardLog();
  ShardLog(const ShardLog&) = delete;
  ShardLog& operator=(const ShardLog&) = delete;

  // Shards with any durable state, ascending.
  Result<std::vector<ShardNo>> Shards() const;
  // The durable state of `shard` (empty for an unknown shard). Call it before writing to the
  // shard: it reads the database, not what is still queued. INTERNAL when the batches do not
  // continue the snapshot (a hole: the log was damaged).
  Result<DurableState> Load(ShardNo shard) const;

  // The batches extend the shard's log (or replace it from their first lsn on: a batch's key
  // is its lsn). `done` runs once, on the writer thread.
  void Append(ShardNo shard, std::vector<Batch> batches, SyncedFn done);
  // Durable on return (see above). Errors: INTERNAL / STORAGE_FULL from the write.
  Status Truncate(ShardNo shard, Lsn after_lsn);
  Status Compact(ShardNo shard, const Snapshot& snapshot);
  Status InstallSnapshot(ShardNo shard, const Snapshot& snapshot);
  Status PersistMeta(ShardNo shard, Epoch promised, Epoch accepted, bool amnesiac = false);
  // Forgets the shard (its replica moved away). Durable on return.
  Status DropShard(ShardNo shard);

  // Carries out one storage effect of `shard`'s replica (WalAppend through Append with
  // `done`; the others by the waiting methods). Returns false, doing nothing, for an effect
  // that is not about storage (Send, Etcd*, Commit, Acknowledge, Refuse, Rebuild).
  bool Carry(ShardNo shard, Effect& effect, const SyncedFn& done, Status* status);

  // Synced writes so far (each carries every operation queued while the previous one ran).
  uint64_t writes() const;

 private:
  struct Op;
  struct Written;
  explicit ShardLog(std::unique_ptr<rocksdb::DB> db);
  // Queues `op` and returns its sequence number in the queue.
  uint64_t Enqueue(Op op);
  Status Wait(uint64_t seq);
  Status Sync(Op op);
  void WriterLoop();
  Lsn& LastLsn(ShardNo shard);  // requires mu_

  std::unique_ptr<rocksdb::DB> db_;
  mutable std::mutex mu_;
  std::condition_variable queued_cv_;
  std::condition_variable written_cv_;
  std::deque<Op> queue_;
  uint64_t next_seq_ = 1;              // of the next op queued
  uint64_t written_seq_ = 0;           // every op up to here is written (or failed)
  std::map<uint64_t, Status> failed_;  // seq -> error, for waiting ops whose write failed
  std::map<ShardNo, Lsn> last_lsn_;    // the shard's last lsn with every queued op applied
  uint64_t writes_ = 0;
  bool stopping_ = false;
  std::thread writer_;
};

}  // namespace iris::cluster::repl
