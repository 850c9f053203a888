#pragma once
// InboxStore's private implementation, split by concern (as RocksDB's db_impl_*.cc):
//   inbox_store.cc     Open, Stop, the public wrappers, Scan and History;
//   group_commit.cc    the commit queue and the commit thread (appends, dedup, ids);
//   archiver.cc        the background move of old inbox messages to the archive;
//   user_records.cc    settings, last seen, prekeys, groups;
//   vnode_ranges.cc    the layout check and migration at Open, vnode checksums and deletes;
//   lifecycle.cc       account deletion, archive retention, checkpoints (backups).
//
// Threads and ownership:
//  - callers enqueue CommitRequests under queue_mu_;
//  - the commit thread ("iris-commit") builds batches: it owns everything marked "commit
//    thread": the batch under construction, the per-user counters (user_cache_), the dedup
//    hot tier, the HLC; it is the only producer of writes to `inbox`, `archive`, `dedup`
//    and the per-user `meta` records, so ids are assigned in commit order and the counters
//    need no locks;
//  - the sync thread ("iris-sync") writes each built batch (one synced WriteBatch) and then
//    answers its requests. The two form a pipeline: batch N+1 is built while batch N syncs
//    and its memtable inserts run, so the two halves of the work use both cores. Batches are
//    written in build order through a one-slot hand-off (at most two in flight). A failed
//    write fails every batch built on top of it: they are returned to the commit thread,
//    which rolls its in-memory state back (newest first) before building anything else;
//  - the archiver only reads, then hands its moves to the commit thread as a request and
//    waits for them to commit before reading again (so it never moves a message twice).

#include <rocksdb/write_batch.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <variant>
#include <vector>

#include "common/hlc.h"
#include "store/dedup_index.h"
#include "store/inbox_store.h"
#include "store/shard_batch.h"
#include "store/store_db.h"
#include "store/store_keys.h"

namespace iris::store {

// One key-value operation of a small-record write (settings, keys, groups).
struct KvOp {
  Cf cf;
  std::string key;
  std::optional<std::string> value;  // nullopt = delete
  std::string range_end;             // non-empty: delete the range [key, range_end) (value unused)
};

struct AppendRequest {
  uint64_t sender = 0;
  std::string idempotency_key;
  std::vector<v1::Envelope> envelopes;
  std::vector<std::string> bodies;  // EncodeEnvelopeBody of each envelope
  AppendCallback done;
  // Records that the sender wrote to the (one) recipient (InboxStore::AppendAsync).
  bool adds_contact = false;
  // A group message for a throttled fan-out (InboxStore::AppendFanOutJob): the one
  // envelope (recipient 0) is stored as a job record in `groups`, in no inbox.
  bool fanout_job = false;
  // Records written in the same WriteBatch when the append is not a duplicate
  // (InboxStore::AppendFanOutBatch: the job's progress).
  std::vector<KvOp> extra_ops;
};

struct RecordWriteRequest {
  std::vector<KvOp> ops;
  std::function<void(Status)> done;
};

struct ArchiveMove {
  uint64_t user = 0;
  std::vector<std::pair<std::string, std::string>> entries;  // inbox key, stored envelope
  uint64_t last_id = 0;
  // A purge instead of a move: the entries (keys only) are envelopes of devices the user
  // removed, deleted from the inbox and not archived; `purge_done`: the last of them, so
  // the user's purge marker goes too.
  bool purge = false;
  bool purge_done = false;
  DeviceMask purge_mask = 0;  // the removed devices it was read for
};

struct ArchiveRequest {
  std::vector<ArchiveMove> moves;
  std::function<void(Status)> done;
};

// Deletes one vnode's key range; always the last request of its batch, and the batch is
// written before the next one is built (see CommitBatch).
struct VnodeDeleteRequest {
  int32_t vnode = 0;
  std::function<void(Status)> done;
};

// Deletes every record of one user (account deletion): inbox, archive, keys, per-user
// `meta` records and the given dedup entries (the user's as a sender). Always a batch of
// its own, built once the batches before it are written, and written before the next one
// is built (see BuildUserDelete).
//
// Messages are deleted key by key, not with range deletions: RocksDB 7.8 keeps one table of
// memtable insert hints per column family for both the point and the range-deletion
// memtables, so a range deletion whose begin key is in the hint prefix's domain (12 bytes
// or more, as every per-user key is) poisons the hint of the next point insert with that
// prefix (an assertion in InlineSkipList, or a misplaced key without assertions).
struct UserDeleteRequest {
  uint64_t user = 0;
  std::vector<std::string> inbox_keys;    // seen in `inbox` (deleted from both, they may move)
  std::vector<std::string> archive_keys;  // seen in `archive`
  uint64_t seen_through = 0;              // the greatest id seen; newer ones are found later
  std::vector<std::string> dedup_keys;
  std::function<void(Status)> done;
};

// Replicated mode: this node became a shard's primary (InboxStore::TakeOverShard). A batch
// of its own: drops the cached counters of the shard's users and the hot dedup entries.
struct ShardTakeOverRequest {
  uint32_t shard = 0;
  std::function<void(Status)> done;
};

// A read-modify-write of one user's settings (InboxStore::UpdateSettings), built on the
// commit thread from the settings the appends check (CachedUser::settings).
struct SettingsWriteRequest {
  uint64_t user = 0;
  std::function<Status(UserSettings&)> change;
  std::shared_ptr<UserSettings> result;  // filled when built; valid once done(Ok)
  std::function<void(Status)> done;
};

struct CommitRequest {
  std::variant<AppendRequest, RecordWriteRequest, ArchiveRequest, VnodeDeleteRequest,
               UserDeleteRequest, ShardTakeOverRequest, SettingsWriteRequest>
      body;
  size_t bytes = 0;  // approximate size, for the batch byte limit
};

// The per-user counters of `user` in `meta` as `ro` reads them ({0, 0} when absent).
Result<UserState> ReadUserState(const StoreDb::ReadHold& db, const rocksdb::ReadOptions& ro,
                                int32_t vnode, uint64_t user);

class InboxStore::Impl {
 public:
  explicit Impl(const StoreOptions& options);
  ~Impl();

  Status Init();
  void Stop();

  // group_commit.cc
  void Enqueue(CommitRequest request);
  void SetListener(std::function<void(const std::vector<v1::Envelope>&)> listener);
  // Submits a record write and waits until it is durable (or failed).
  Status WriteRecords(std::vector<KvOp> ops);
  Status ApplyShardBatch(std::string_view payload);
  Status ApplyReplicated(uint32_t shard, uint64_t last_lsn,
                         const std::vector<std::string_view>& payloads, uint64_t hlc);
  Result<uint64_t> ReplicatedLsn(uint32_t shard) const;
  Status DropShardCopy(uint32_t shard, const std::vector<int32_t>& vnodes);
  Result<std::string> CopyShardChunk(uint32_t shard, std::string* cursor, size_t max_bytes,
                                     bool* done, uint64_t* read_lsn) const;
  Status InstallShardChunk(std::string_view chunk);
  void TakeOverShard(uint32_t shard, uint64_t hlc_high_water, std::function<void(Status)> done);
  void SetShardOfVnode(const std::function<uint32_t(int32_t)>& shard_of_vnode);
  void SetShardBatchObserver(std::function<void(const std::map<uint32_t, std::string>&)> f) {
    std::lock_guard<std::mutex> lock(observer_mu_);
    shard_batch_observer_ = std::move(f);
  }

  // archiver.cc
  // Hands `user`, whose inbox is `excess` messages over the cap, to the archiver.
  void ScheduleArchive(uint64_t user, uint64_t excess);
  // Hands `user`, whose inbox may hold envelopes of removed devices, to the archiver.
  void SchedulePurge(uint64_t user);
  bool WaitArchiverIdle(int64_t timeout_ms) const;

  // inbox_store.cc
  Result<ScanPage> Scan(uint64_t user, uint64_t after_id, uint32_t limit, size_t max_bytes) const;
  Result<ScanPage> History(uint64_t user, uint64_t before_id, uint32_t limit,
                           size_t max_bytes) const;
  StoreStats Stats() const;
  bool WaitDedupFiltersReady(int64_t timeout_ms) const { return dedup_->WaitRebuild(timeout_ms); }

  // user_records.cc
  Status PutSettings(uint64_t user, const UserSettings& s);
  Result<UserSettings> GetSettings(uint64_t user) const;
  Result<UserSettings> UpdateSettings(uint64_t user, std::function<Status(UserSettings&)> change);
  Result<std::vector<uint64_t>> WhoWrote(uint64_t user,
                                         const std::vector<uint64_t>& candidates) const;
  Status PutLastSeen(uint64_t user, uint64_t last_seen_ms);
  Result<uint64_t> GetLastSeen(uint64_t user) const;
  Status PutRevokedJti(std::string_view jti, int64_t until_ms);
  Status PutRevokedUser(uint64_t user, int64_t before_ms);
  Result<StoredRevocations> LoadRevocations(int64_t now_ms);
  Status UploadKeys(uint64_t user, const v1::KeysUpload& upload);
  // The store keys of a device's one-time prekey pool (caller holds the user's key stripe).
  Result<std::vector<std::string>> PoolKeys(uint64_t user, uint32_t device) const;
  Result<v1::KeysBundle> FetchKeys(uint64_t user);
  // One device's bundle with one one-time prekey taken (its deletion and the bundle's new
  // count added to *ops); nullopt when the device never uploaded. Caller holds the stripe.
  Result<std::optional<v1::KeysBundle>> TakeDeviceBundle(const StoreDb::ReadHold& db, uint64_t user,
                                                         uint32_t device, std::vector<KvOp>* ops);
  Status DropDeviceKeys(uint64_t user, uint32_t device);
  Result<DeviceMask> DevicesWithKeys(uint64_t user, DeviceMask candidates) const;
  Status PutGroup(const v1::GroupInfo& group);
  Result<v1::GroupInfo> GetGroup(uint64_t group_id) const;

  uint64_t LastId() const { return hlc_.Last(); }

  // vnode_ranges.cc
  int32_t Vnode(uint64_t owner) const { return store::VnodeOf(owner, options_.vnodes); }
  // The shard of `vnode` in the current map (0 when it has none).
  uint32_t ShardOfVnode(int32_t vnode) const {
    const std::shared_ptr<const std::vector<uint32_t>> map = ShardMap();
    const auto v = static_cast<size_t>(vnode);
    return map && v < map->size() ? (*map)[v] : 0;
  }
  Result<std::vector<InboxStore::FanOutJob>> LoadFanOutJobs() const;
  Result<uint64_t> VnodeChecksum(int32_t vnode) const;
  Status DeleteVnode(int32_t vnode);

  // lifecycle.cc
  Result<UserDeletion> DeleteUser(uint64_t user);
  Result<ArchiveExpiry> ExpireArchive(int64_t older_than_ms);
  Result<uint64_t> Checkpoint(const std::string& dir) const;
  // Starts the retention thread when options_.archive_retention_ms > 0 (Init).
  void StartRetention();

 private:
  // A user's counters as the commit thread knows them (including unwritten appends).
  struct CachedUser {
    UserState state;
    uint32_t unpersisted = 0;  // appends since `state` was last written to `meta`
    int32_t vnode = 0;         // Vnode(user)
    // The user's settings as stored (nullptr: defaults); shared, since the batch keeps a
    // copy of every touched user for rollback.
    std::shared_ptr<const UserSettings> settings;
    // The sender of the last 1:1 message whose "wrote to" record (meta 'W') this store
    // wrote: a conversation's next messages need not write it again.
    uint64_t last_writer = 0;
  };

  // A request's answer, delivered after the batch's write.
  struct Completion {
    AppendCallback append_done;
    std::function<void(Status)> status_done;
    std::optional<AppendOutcome> outcome;  // for appends answered successfully
    Status error;                          // answered with this error regardless of the write
    bool needs_commit = true;              // fails if the batch's write fails
    bool ignores_write = false;  // answered `error` whatever the write (a shard take-over)
    // Replicated mode: every shard this request writes to (empty: not known, so it stands
    // or falls with the whole batch). A batch whose replication failed in some shards only
    // still answers OK the requests that wrote to committed shards alone: their records are
    // durable on W replicas, and a retry would find them (a duplicate never pushed).
    std::vector<uint32_t> shards;
  };

  // A batch built by the commit thread and written, then answered, by the sync thread.
  struct BuiltBatch {
    uint64_t seq = 0;
    rocksdb::WriteBatch batch;
    bool has_writes = false;
    uint64_t envelopes = 0;
    uint64_t archived = 0;
    uint64_t purged = 0;                                     // envelopes of removed devices deleted
    std::unordered_map<uint64_t, CachedUser> touched;        // user -> counters before it
    std::vector<std::string> remembered;                     // dedup keys it added
    std::vector<std::pair<uint64_t, uint64_t>> over_cap;     // user, excess after it
    std::vector<uint64_t> purge;                             // users who removed a device
    std::vector<uint32_t> shards;                            // shards it assigned ids in
    std::shared_ptr<const std::vector<uint32_t>> shard_map;  // vnode -> shard it was built with
    std::optional<int32_t> deleted_vnode;                    // a VnodeDeleteRequest's
    std::optional<uint64_t> deleted_user;                    // a UserDeleteRequest's
    std::vector<Completion> completions;
    std::vector<v1::Envelope> stored;  // for the listener
    std::vector<size_t> stored_by;     // the completion (index) each of `stored` belongs to
    std::function<void(const std::vector<v1::Envelope>&)> listener;
  };

  // group_commit.cc
  void CommitLoop();
  void SyncLoop();
  void CommitBatch(std::vector<CommitRequest>& requests);
  // Hands a built batch to the sync thread (waits while the slot is taken).
  void HandOff(std::unique_ptr<BuiltBatch> batch);
  // After a failed write: waits until the sync thread has returned every batch in flight,
  // rolls their in-memory effects back and blocks writes until recovery.
  void RollBackFailedBatches();
  // Writes one batch and answers its requests (sync thread).
  void WriteAndAnswer(BuiltBatch& b);
  // Hands a written batch's per-shard parts to the shard batch observer, if any.
  void ObserveShardBatches(const rocksdb::WriteBatch& batch);
  void BuildAppend(AppendRequest& a);
  void BuildRecordWrite(RecordWriteRequest& w);
  void BuildArchive(ArchiveRequest& r);
  void BuildVnodeDelete(VnodeDeleteRequest& r);
  void BuildUserDelete(UserDeleteRequest& r);
  void BuildShardTakeOver(ShardTakeOverRequest& r);
  void BuildSettingsWrite(SettingsWriteRequest& r);
  // MISMATCHED_DEVICES when `envelopes` are a 1:1 message whose copies are not one per
  // device of the recipient (its counters and settings already loaded); OK otherwise.
  Status CheckDevices(const std::vector<v1::Envelope>& envelopes);
  // Replicated mode: hands the batch's shard parts to StoreOptions::replicate, waits for
  // every answer, then writes the node-wide records locally. OK when all are durable.
  // *committed: the shards whose part W replicas acknowledged (also when another failed).
  Status ReplicateBatch(BuiltBatch& b, std::vector<uint32_t>* committed);
  // The shard of `vnode` in the map the batch was built with.
  static uint32_t ShardOf(const BuiltBatch& b, int32_t vnode) {
    return (*b.shard_map)[static_cast<size_t>(vnode)];
  }
  void AddShardOp(const ShardOp& op, rocksdb::WriteBatch* batch) const;
  // Writes the operations of encoded shard batches, plus what extra(batch) adds, in one
  // synced write, and tells the dedup filters about the dedup entries written.
  // vnode_keys_only: refuse (BAD_REQUEST) an operation on a node-wide key.
  template <typename Extra>
  Status WriteShardOps(const std::vector<std::string_view>& payloads, bool vnode_keys_only,
                       Extra extra);
  // Notes that the batch assigns ids in `vnode`'s shard (its high-water mark is written).
  void TouchShard(int32_t vnode);
  // The user's counters, loaded on first use, saved for rollback on first touch in this
  // batch. Errors: INTERNAL when `meta` or `inbox` cannot be read.
  Result<CachedUser*> TouchUser(uint64_t user);
  // The persisted counters plus the inbox entries appended after they were written.
  Result<UserState> LoadUserState(uint64_t user, int32_t vnode) const;
  Result<std::shared_ptr<const UserSettings>> LoadUserSettings(uint64_t user,
                                                               int32_t vnode) const;
  void AddPut(Cf cf, std::string_view key, std::string_view value);
  void AddDelete(Cf cf, std::string_view key);
  Status EnsureWritable();
  // Why resuming after a disk-full error would fail now (nullopt: enough free space).
  std::optional<std::string> ShortOfSpaceForResume() const;
  static void Fail(CommitRequest& request, const Status& status);

  // archiver.cc
  void ArchiverLoop();
  Result<ArchiveMove> ReadMove(const StoreDb::ReadHold& db, uint64_t user, uint64_t excess,
                               const rocksdb::Snapshot* snapshot, bool* more_left) const;
  // The next envelopes of `user`'s removed devices in the inbox (a purge move, at most
  // kPurgePerPass; purge_done when none are left after them).
  Result<ArchiveMove> ReadPurge(const StoreDb::ReadHold& db, uint64_t user,
                                const rocksdb::Snapshot* snapshot) const;
  // Schedules the archiver for every inbox left over the cap (its "archive pending" marker)
  // in the vnodes `in_scope` accepts, and seeds the commit thread's cache with their
  // counters: at open (every vnode, unless replicated: such a node leads no shard yet), and
  // when the node takes a shard over (that shard's vnodes: its predecessor may have left
  // them, or a backup applied them, without archiving). Init or the commit thread. Also
  // schedules the purge of every user there with a "device purge pending" marker.
  Status ScheduleArchivePending(const std::function<bool(int32_t)>& in_scope);

  // lifecycle.cc
  // Runs ExpireArchive every retention_sweep_interval_ms until Stop().
  void RetentionLoop();

  // vnode_ranges.cc
  // Checks the recorded layout version and vnode count, migrating a version-1 store.
  Status EnsureLayout();
  Status MigrateFromVersion1();
  // The greatest persisted HLC high-water mark (0 when none).
  Result<uint64_t> ReadHighWaterMark() const;

  const StoreOptions options_;
  const Clock* const clock_;
  // Shard of each vnode: set in Init, replaced whole by SetShardOfVnode (std::atomic_load /
  // std::atomic_store); a batch keeps the map it was built with (BuiltBatch::shard_map).
  std::shared_ptr<const std::vector<uint32_t>> vnode_shard_;
  std::shared_ptr<const std::vector<uint32_t>> ShardMap() const {
    return std::atomic_load(&vnode_shard_);
  }
  HybridLogicalClock hlc_;
  std::unique_ptr<StoreDb> db_;
  std::unique_ptr<DedupIndex> dedup_;

  // The commit queue.
  std::mutex queue_mu_;
  std::condition_variable queue_cv_;
  std::deque<CommitRequest> queue_;                                 // guarded by queue_mu_
  bool accepting_ = false;                                          // guarded by queue_mu_
  bool stopping_ = false;                                           // guarded by queue_mu_
  std::function<void(const std::vector<v1::Envelope>&)> listener_;  // guarded by queue_mu_
  // InboxStore::SetShardBatchObserver's; guarded by observer_mu_, called on the sync thread.
  std::mutex observer_mu_;
  std::function<void(const std::map<uint32_t, std::string>&)> shard_batch_observer_;
  bool listener_changed_ = false;  // guarded by queue_mu_
  bool rollback_due_ = false;      // a write failed (set by the sync thread); queue_mu_
  // pipe_error_ came from replication (a shard part refused), not from this database: the
  // rollback forgets the failed batches' users instead of reopening. Guarded by pipe_mu_.
  bool pipe_error_replicated_ = false;
  std::thread commit_thread_;

  // Commit thread only.
  std::function<void(const std::vector<v1::Envelope>&)> active_listener_;
  uint64_t batch_seq_ = 0;
  int64_t batch_now_ms_ = 0;
  std::unique_ptr<BuiltBatch> cur_;  // the batch being built
  std::string scratch_;
  std::unordered_map<uint64_t, CachedUser> user_cache_;
  std::vector<uint64_t> moved_users_;  // users with archive moves in the current batch
  // Users touched by the last two batches handed off (possibly not yet written): they stay
  // cached, since reloading them from the database would miss their unwritten appends.
  std::vector<uint64_t> inflight_users_[2];
  bool needs_recovery_ = false;
  Status last_write_error_;
  int64_t last_recovery_mono_ms_ = 0;

  // The hand-off between the commit thread and the sync thread.
  std::mutex pipe_mu_;
  std::condition_variable pipe_cv_;
  std::unique_ptr<BuiltBatch> slot_;                   // guarded by pipe_mu_
  bool sync_busy_ = false;                             // writing a batch; pipe_mu_
  bool sync_stop_ = false;                             // guarded by pipe_mu_
  Status pipe_error_;                                  // first unhandled failure; pipe_mu_
  std::vector<std::unique_ptr<BuiltBatch>> returned_;  // failed, to roll back; pipe_mu_
  std::thread sync_thread_;

  // Archiver.
  mutable std::mutex archive_mu_;
  mutable std::condition_variable archive_cv_;
  std::deque<uint64_t> archive_queue_;                     // guarded by archive_mu_
  std::unordered_map<uint64_t, uint64_t> archive_excess_;  // queued user -> excess; archive_mu_
  std::deque<uint64_t> purge_queue_;                       // guarded by archive_mu_
  std::unordered_set<uint64_t> purge_queued_;              // guarded by archive_mu_
  bool archive_busy_ = false;                              // guarded by archive_mu_
  bool archive_stop_ = false;                              // guarded by archive_mu_
  std::thread archive_thread_;

  // Archive retention (lifecycle.cc).
  std::mutex retention_mu_;
  std::condition_variable retention_cv_;
  bool retention_stop_ = false;  // guarded by retention_mu_
  std::thread retention_thread_;

  std::mutex stop_mu_;
  bool stopped_ = false;  // guarded by stop_mu_

  // Serialises read-modify-write of one user's prekeys (striped by user).
  static constexpr size_t kKeyStripes = 64;
  std::mutex key_stripes_[kKeyStripes];

  // Stats.
  std::atomic<uint64_t> appends_{0};
  std::atomic<uint64_t> envelopes_{0};
  std::atomic<uint64_t> duplicates_{0};
  std::atomic<uint64_t> batches_{0};
  std::atomic<uint64_t> write_errors_{0};
  std::atomic<uint64_t> storage_full_errors_{0};
  std::atomic<uint64_t> archived_{0};
  std::atomic<uint64_t> purged_{0};
};

}  // namespace iris::store
