#pragma once
// InboxStore: the node's durable, ordered, per-user inbox log on RocksDB (RFC-001 §0, §1,
// §5.3, §6; DESIGN.md §3). Design notes: docs/storage.md.
//
// What it keeps (one RocksDB, column families `inbox`, `archive`, `dedup`, `meta`, `keys`,
// `groups`, big-endian keys so iteration order is id order):
//  - every user's inbox: the newest `inbox_cap` messages in `inbox`, older ones in
//    `archive` (moved in the background, zstd-compressed);
//  - the dedup index (sender, idempotency key) -> first message id, for `dedup_window_ms`;
//  - settings, last-seen times, prekey bundles and groups for the services that need them;
//  - the HLC high-water mark of every shard a batch appended to (one `meta` record per
//    shard, written in the batch), so ids keep increasing across restarts.
// Every per-user and per-group key is prefixed with its owner's vnode (store_keys.h), so a
// vnode is a key range (VnodeChecksum, DeleteVnode). A store of the previous layout is
// migrated on Open.
//
// Durability: an append (and every other write) is reported done only after its WAL record
// is synced (fdatasync). Writes are group-committed: the commit thread builds everything
// queued while the previous sync ran into one RocksDB WriteBatch, which the sync thread
// writes with sync=true, so many appends share one sync.
//
// Thread-safety and threads: every public method may be called from any thread
// concurrently. The store runs its own threads: the commit thread (builds batches), the
// sync thread (writes each batch with sync=true, then runs its AppendCallbacks and the
// commit listener), the archiver (moves old inbox messages to the archive) and, right
// after Open, a thread that rebuilds the dedup Bloom filters. AppendCallbacks and the
// commit listener run on the sync thread (a request refused before it is written, while
// the store stops or is not writable, is answered on the commit thread or the caller's
// thread): they must be quick and must not call back into the store's write methods (Append*, Put*,
// UploadKeys, FetchKeys, PutGroup), which would deadlock; reads (Scan, Get*) are allowed.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/devices.h"
#include "common/status.h"
#include "iris/v1/client.pb.h"

namespace iris::obs {
struct SpanContext;
}  // namespace iris::obs

namespace iris::store {

struct StoreOptions {
  std::string path;     // the RocksDB directory (created if missing)
  uint8_t node_id = 1;  // HLC node id
  // Partitioning (CLUSTER.md §4): every per-user and per-group key starts with the owner's
  // vnode = JumpConsistentHash(UserPartitionKey(owner), vnodes). 1..2^24. Recorded in the
  // store on first open; opening it with another value fails (BAD_REQUEST).
  int32_t vnodes = 4096;
  // The shard of each vnode (its replica set, CLUSTER.md §4), for the per-shard HLC
  // high-water marks: called once per vnode during Open. Empty = every vnode in shard 0,
  // which is what a single node uses.
  std::function<uint32_t(int32_t vnode)> shard_of_vnode;
  const Clock* clock = nullptr;  // nullptr = SystemClock::Instance(); must outlive the store
  uint32_t inbox_cap = 10000;    // newest N stay in `inbox`, older move to `archive`
  int64_t dedup_window_ms = 7LL * 24 * 3600 * 1000;

  // Dedup tiers (docs/storage.md): the hot tier remembers keys of the last
  // `dedup_hot_window_ms` in memory (at most `dedup_hot_max_entries`); the warm tier is a
  // ring of daily Bloom filters sized for `dedup_bloom_keys_per_day` keys each at
  // `dedup_bloom_bits_per_key` (10 bits: about 1% false positives, which cost one read).
  int64_t dedup_hot_window_ms = 5LL * 60 * 1000;
  size_t dedup_hot_max_entries = 1'000'000;
  uint64_t dedup_bloom_keys_per_day = 1'000'000;
  uint32_t dedup_bloom_bits_per_key = 10;

  // Group commit: the most requests and bytes one batch takes (the rest waits for the next).
  size_t max_batch_requests = 4096;
  size_t max_batch_bytes = 8u << 20;

  // How often a write blocked by a background error (disk full) retries DB::Resume().
  // 0 = on every batch.
  int64_t resume_interval_ms = 1000;

  // Read every SST block when opening and refuse a damaged file (StoreDbOptions).
  bool verify_checksums_on_open = false;

  // The archiver moves at most this many messages per user per pass. run_archiver = false
  // leaves inboxes over the cap (their "archive pending" markers stay) until a later Open
  // with the archiver running: for tests and maintenance.
  uint32_t archive_chunk = 1024;
  bool run_archiver = true;

  // The most one-time prekeys one user's pool holds (PROTOCOL.md KEYS_UPLOAD; docs/protocol.md
  // "Limits"): an upload that would take the pool past it is refused whole (TOO_LARGE).
  uint32_t max_one_time_prekeys = 1000;

  // Archive retention: archived messages whose id (HLC: the time they were accepted, in ms)
  // is more than archive_retention_ms older than the clock's wall time are deleted by a
  // background sweep every retention_sweep_interval_ms (thread "iris-retention"). 0 keeps
  // the archive forever (no thread). The inbox (the newest inbox_cap) is never expired.
  int64_t archive_retention_ms = 0;
  int64_t retention_sweep_interval_ms = 3600LL * 1000;

  // Per-user inbox counters kept in memory by the commit thread (reloaded from `meta` when
  // evicted).
  size_t user_cache_max_entries = 1'000'000;

  // RocksDB sizing. Defaults suit a server; tests shrink them.
  size_t write_buffer_bytes = 64u << 20;  // per column family memtable
  size_t block_cache_bytes = 128u << 20;  // shared by all column families
  int max_background_jobs = 2;

  // Called on the sync thread after every batch with the wall time of its synced write
  // (RocksDB Write with sync=true), in nanoseconds: the iris_db_write_latency_seconds
  // histogram. Optional.
  std::function<void(int64_t nanos)> write_latency_observer;
  // Replication (docs/replication.md, "The store on a replicated node"). When set, the store
  // does not write a batch itself: the sync thread splits it by shard and hands each part to
  // `replicate` (shard, encoded operations as store/shard_batch.h, an HLC id greater than
  // every id of the part, done). The shard's replica writes the part through
  // ApplyReplicated once two replicas hold it durably and then calls done(OK); the batch's
  // requests are answered once every part is done — with the first error if any part was
  // refused (in which case parts of other shards may still have been committed: a retry
  // with the same idempotency key finds them). Node-wide records (token revocations) are
  // written locally after the parts. `done` may run on any thread, also inside the call.
  std::function<void(uint32_t shard, std::string payload, uint64_t hlc,
                     std::function<void(Status)> done)>
      replicate;
  // A batch whose parts are not all answered within this time is refused UNAVAILABLE (its
  // parts may still commit later; retries find them by their idempotency keys).
  int64_t replicate_timeout_ms = 5'000;
};

struct AppendOutcome {
  uint64_t message_id;
  uint64_t accepted_at_ms;
  bool duplicate;
};
using AppendCallback = std::function<void(Result<AppendOutcome>)>;

struct ScanPage {
  std::vector<v1::Envelope> messages;
  bool has_more = false;
  bool gap = false;
};

// A user's settings (PROTOCOL.md SETTINGS; docs/protocol.md appendix 19 for consent).
struct UserSettings {
  static constexpr size_t kMaxBlocked = 1024;
  bool read_receipts = true;
  bool share_presence = true;
  // GROUP_INVITES_CONTACTS: only users this user has sent a 1:1 message to may add it to a
  // group.
  bool group_invites_contacts_only = false;
  std::vector<uint64_t> blocked;  // ascending, no duplicates, at most kMaxBlocked
  bool Blocks(uint64_t user) const {
    return std::binary_search(blocked.begin(), blocked.end(), user);
  }
  // Devices (docs/protocol.md appendix 20), from the last device list the primary device
  // set: the listed devices, the devices ever removed (ids are never reused), the list's
  // version and the list as signed (a serialized v1::SignedDeviceList; "" = never set).
  DeviceMask devices = 0;
  DeviceMask removed_devices = 0;
  uint64_t device_list_version = 0;
  std::string device_list;
  // The devices a 1:1 message to this user needs a copy for: device 1 alone until a device
  // list is set.
  DeviceMask Devices() const { return device_list.empty() ? DeviceBit(kPrimaryDevice) : devices; }
};

// Counters since Open (monotonic unless marked). For metrics and benchmarks.
struct StoreStats {
  uint64_t appends = 0;                // append requests committed (not duplicates)
  uint64_t envelopes = 0;              // envelopes stored
  uint64_t duplicates = 0;             // appends answered as duplicates
  uint64_t batches = 0;                // synced WriteBatches
  uint64_t write_errors = 0;           // failed batches
  uint64_t storage_full_errors = 0;    // of which disk full
  uint64_t dedup_hot_hits = 0;         // duplicates found in the hot tier
  uint64_t dedup_bloom_negatives = 0;  // keyed appends the Bloom filters cleared without a read
  uint64_t dedup_db_lookups = 0;       // reads of the `dedup` column family
  // Not monotonic: keys in the current day's Bloom filter, and what each filter is sized
  // for (dedup_bloom_keys_per_day). Past it, more and more new keys cost a read.
  uint64_t dedup_bloom_keys_today = 0;
  uint64_t dedup_bloom_keys_per_day = 0;
  uint64_t archived = 0;  // messages moved from `inbox` to `archive`
  uint64_t purged = 0;    // envelopes of removed devices deleted from `inbox`
};

// What DeleteUser removed.
struct UserDeletion {
  uint64_t messages = 0;       // inbox and archive entries
  uint64_t dedup_entries = 0;  // idempotency keys the user had sent with
  uint64_t prekeys = 0;        // one-time prekeys left in the pool
};

// What one ExpireArchive pass removed.
struct ArchiveExpiry {
  uint64_t users = 0;     // users whose archive lost entries
  uint64_t messages = 0;  // archived messages deleted
};

struct StoredRevocations {
  std::vector<std::pair<std::string, int64_t>> jtis;  // jti, keep until (unix ms)
  std::vector<std::pair<uint64_t, int64_t>> users;    // user, revoked before (unix ms)
};

class InboxStore {
 public:
  // Opens (creating if missing) the store at options.path, recovering from a crash: RocksDB
  // replays the WAL (point-in-time recovery, see docs/storage.md), the HLC starts above
  // every persisted high-water mark and interrupted archive moves are resumed. A store of
  // layout version 1 (no vnode prefixes) is migrated in place first (crash-safe: an
  // interrupted migration is finished by the next Open).
  // Errors: BAD_REQUEST for invalid options, or a store recorded with another vnode count;
  // UNSUPPORTED_VERSION for a store written by a newer layout; STORAGE_FULL when the disk
  // is full; INTERNAL otherwise (e.g. the directory is locked by another process, or
  // corruption).
  static Result<std::unique_ptr<InboxStore>> Open(const StoreOptions& options);

  ~InboxStore();  // Stop()s
  InboxStore(const InboxStore&) = delete;
  InboxStore& operator=(const InboxStore&) = delete;

  // One logical send: `envelopes` holds one envelope per destination inbox (its `recipient`
  // field names the inbox; 1 for a 1:1 send, N for a group fan-out), all written atomically
  // in one WriteBatch and made durable (WAL synced) before `done` runs. The store assigns
  // each envelope's `id` (HLC, strictly increasing per inbox) and `sent_at_ms`. When
  // idempotency_key is non-empty, (sender, idempotency_key) is deduplicated over the
  // window: a retry calls done with the FIRST message id, duplicate=true, and stores
  // nothing. message_id = id of the first envelope. `done` runs on the store's commit
  // thread (or, for a request refused before it is queued, on the caller's thread), must
  // be quick and must not call back into Append. Errors: BAD_REQUEST (no envelopes, a zero
  // recipient, an idempotency key over 255 bytes), STORAGE_FULL on disk full, UNAVAILABLE
  // when stopping, INTERNAL otherwise; nothing is written on error.
  void AppendAsync(uint64_t sender, std::string idempotency_key,
                   std::vector<v1::Envelope> envelopes, AppendCallback done);
  // The same, traced: when tracing is on (obs::Tracer::Global()) and `parent` is valid, a
  // "store.append" span, child of `parent`, covers the request from here to its durable
  // completion (WAL synced) or failure.
  // `adds_contact` (one 1:1 MESSAGE): also records that the sender wrote to the recipient
  // (meta 'W', WhoWrote), in the same write.
  void AppendAsync(uint64_t sender, std::string idempotency_key,
                   std::vector<v1::Envelope> envelopes, AppendCallback done,
                   const obs::SpanContext& parent, bool adds_contact = false);
  // The untraced form of the above.
  void AppendAsync(uint64_t sender, std::string idempotency_key,
                   std::vector<v1::Envelope> envelopes, AppendCallback done, bool adds_contact);
  // Blocking wrapper of AppendAsync. Must not be called from a callback or the listener.
  Result<AppendOutcome> Append(uint64_t sender, std::string idempotency_key,
                               std::vector<v1::Envelope> envelopes);

  // Called on the sync thread after every durable batch with the envelopes it stored (ids
  // set), in commit order: for any one inbox, calls come in strictly increasing id order
  // and only after the data is visible to Scan. Set before the first append. Duplicates are
  // not reported.
  void SetCommitListener(std::function<void(const std::vector<v1::Envelope>&)> listener);

  // Messages of `user`'s inbox with id > after_id, ascending, at most `limit` messages and
  // at most `max_bytes` of summed envelope ByteSizeLong()+6 (always at least one message if
  // any exists and limit > 0). has_more: more remain after this page. gap: messages newer
  // than after_id exist only in the archive (the cursor is older than the oldest retained
  // inbox message). Reads one consistent snapshot. Errors: INTERNAL.
  Result<ScanPage> Scan(uint64_t user, uint64_t after_id, uint32_t limit, size_t max_bytes) const;
  // Archived messages with id < before_id (0 = newest first from the top of the archive),
  // DESCENDING id order, same limits; has_more when older archived messages remain.
  Result<ScanPage> History(uint64_t user, uint64_t before_id, uint32_t limit,
                           size_t max_bytes) const;

  // Durable (synced) small records. Write errors: STORAGE_FULL, UNAVAILABLE when stopped,
  // INTERNAL.
  Status PutSettings(uint64_t user, const UserSettings& s);
  Result<UserSettings> GetSettings(uint64_t user) const;  // defaults when never set
  // Read-modify-write of `user`'s settings on the commit thread, so that appends see a
  // block in the order it was made: `change` gets the current settings (it must not block
  // and may refuse with an error: nothing is written), the result is stored and returned
  // once durable. `blocked` is sorted and deduplicated before it is stored; more than
  // UserSettings::kMaxBlocked entries is TOO_LARGE. Write errors as PutSettings.
  Result<UserSettings> UpdateSettings(uint64_t user,
                                      std::function<Status(UserSettings&)> change);
  // Consent (docs/protocol.md appendix 19). A 1:1 MESSAGE or RECEIPT whose recipient blocks
  // its sender is refused by the append (FORBIDDEN, nothing written); a 1:1 MESSAGE appended
  // with adds_contact records that its sender wrote to its recipient (meta 'W', in the
  // recipient's vnode).
  // The `candidates` that have sent `user` a 1:1 message (ever, while both accounts exist),
  // in the order given. Errors: INTERNAL.
  Result<std::vector<uint64_t>> WhoWrote(uint64_t user,
                                         const std::vector<uint64_t>& candidates) const;
  Status PutLastSeen(uint64_t user, uint64_t last_seen_ms);
  Result<uint64_t> GetLastSeen(uint64_t user) const;  // 0 when unknown

  // Token revocations, kept so that a restart does not bring revoked tokens back. A jti
  // entry is kept until `until_ms` (unix ms); a user entry keeps the latest `before_ms`
  // ever given for the user (tokens issued before it are revoked). Durable on return.
  Status PutRevokedJti(std::string_view jti, int64_t until_ms);
  Status PutRevokedUser(uint64_t user, int64_t before_ms);
  // Every stored revocation still in force at `now_ms`; jti entries past their until_ms
  // are deleted (durably) instead of returned. Errors: INTERNAL, and write errors.
  Result<StoredRevocations> LoadRevocations(int64_t now_ms);

  // Replaces the identity key (when non-empty), the registration id (when non-zero) and the
  // signed prekey (when present) and appends the one-time prekeys to the pool. TOO_LARGE
  // (nothing stored) when the pool would then hold more than max_one_time_prekeys.
  Status UploadKeys(uint64_t user, const v1::KeysUpload& upload);
  // The bundle with at most one one-time prekey, consumed atomically and durably (never
  // the same one twice, even under concurrent calls or across a crash); NOT_FOUND when the
  // user never uploaded. Devices (docs/protocol.md appendix 20): the keys are the
  // uploading device's (KeysUpload.device_id, 0 = 1); a fetch returns device 1's bundle in
  // the top-level fields and every other device of the user's device list in `devices`,
  // each with its own one-time prekey, and the signed device list.
  Result<v1::KeysBundle> FetchKeys(uint64_t user);
  // Deletes a removed device's bundle and one-time prekeys. Durable on return.
  Status DropDeviceKeys(uint64_t user, uint32_t device);
  // The devices of `candidates` that have uploaded keys. Errors: INTERNAL.
  Result<DeviceMask> DevicesWithKeys(uint64_t user, DeviceMask candidates) const;

  // Throttled group fan-out (docs/architecture.md, "Group fan-out").
  //
  // A group message accepted for a fan-out that runs after SEND_ACK: `message` (group_id,
  // sender, body, trace id; recipient 0) is stored as ONE job record in the group's shard,
  // deduplicated by (sender, idempotency_key) like an append (a retry answers the first
  // job's id, duplicate=true, and stores nothing). message_id = the job id (HLC). Stored in
  // no inbox: AppendFanOutBatch delivers it. Errors as AppendAsync.
  void AppendFanOutJob(uint64_t sender, std::string idempotency_key, v1::Envelope message,
                       AppendCallback done);
  struct FanOutJob {
    uint64_t group_id = 0;
    uint64_t job_id = 0;
    uint64_t done_through = 0;  // members with an id <= this one have it (0: none)
    v1::Envelope message;       // as given to AppendFanOutJob, id = job id
  };
  // Appends `envelopes` (one per member, possibly none) and, in the same WriteBatch, moves
  // the job's progress to `done_through`, or deletes the job when `finished`: a crash
  // leaves either both or neither, so the job resumes exactly after the last batch written.
  // Not deduplicated (the job record is the dedup). Errors as AppendAsync.
  void AppendFanOutBatch(const FanOutJob& job, uint64_t done_through, bool finished,
                         std::vector<v1::Envelope> envelopes, AppendCallback done);
  // Every job record (after a restart: the fan-outs to resume), in key order (per group,
  // job id order). Errors: INTERNAL.
  Result<std::vector<FanOutJob>> LoadFanOutJobs() const;

  // Stores the group (request_id is not stored). BAD_REQUEST for group_id 0.
  Status PutGroup(const v1::GroupInfo& group);
  Result<v1::GroupInfo> GetGroup(uint64_t group_id) const;  // NOT_FOUND

  uint64_t LastId() const;  // HLC high-water mark

  // Vnode ranges (CLUSTER.md §4, §6: copy, verify, delete a vnode).
  // The vnode of a user or group id in this store (options.vnodes).
  int32_t VnodeOf(uint64_t owner) const;
  // The shard of that vnode in the store's current vnode -> shard map (0 on a single node).
  uint32_t ShardOf(uint64_t owner) const;
  // A deterministic 64-bit hash (XXH3) over every key and value of `vnode`, column family
  // by column family, from one snapshot: two stores holding the same records for the vnode
  // give the same value. Node-wide records (HLC marks, revocations) are not part of any
  // vnode. Expired dedup entries count until compaction drops them. BAD_REQUEST for a
  // vnode out of range; INTERNAL on read errors.
  Result<uint64_t> VnodeChecksum(int32_t vnode) const;
  // Deletes every record of `vnode` (range deletions in every column family, one synced
  // batch, ordered after every write queued before it). The caller stops routing writes to
  // the vnode first; a write for it that is queued after this call is stored again.
  // BAD_REQUEST for a vnode out of range; write errors as PutSettings.
  Status DeleteVnode(int32_t vnode);

  // Replication (docs/replication.md, "What is left"; store/shard_batch.h). The observer is
  // called on the sync thread after every successful batch write, in commit order, with the
  // batch's operations split by shard and encoded (node-wide records are in no part). It must
  // not block; nullptr removes it.
  void SetShardBatchObserver(std::function<void(const std::map<uint32_t, std::string>&)> f);
  // Applies one shard batch another store's observer produced, durably, as one write ordered
  // after every write queued before it. BAD_REQUEST for a malformed payload (nothing is
  // written); write errors as PutSettings. The store's in-memory caches are not updated: the
  // caller applies batches only to shards this store does not write itself.
  Status ApplyShardBatch(std::string_view payload);
  // Replicated mode (StoreOptions::replicate): writes committed batches of `shard`'s
  // replication log (their payloads, in lsn order, the last one numbered last_lsn) in one
  // synced write that also records last_lsn (ReplicatedLsn), directly — not through the
  // commit queue, since the sync thread may be waiting for this very commit. Later ids
  // exceed `hlc`. Called by the shard's replica thread only (one writer per shard); on a
  // backup and on the primary alike. BAD_REQUEST for a malformed payload (nothing written);
  // write errors INTERNAL / STORAGE_FULL.
  Status ApplyReplicated(uint32_t shard, uint64_t last_lsn,
                         const std::vector<std::string_view>& payloads, uint64_t hlc);
  // The last lsn ApplyReplicated recorded for `shard` (0: none). Errors: INTERNAL.
  Result<uint64_t> ReplicatedLsn(uint32_t shard) const;
  // Replicated mode: forgets this node's copy of `shard`, whose replica a move took away
  // (docs/replication.md, "Moving a replica"): deletes every record of `vnodes` (the shard's)
  // and the shard's ReplicatedLsn in one synced write, directly (as ApplyReplicated). The
  // caller runs no replica of the shard any more, and this node is not its primary.
  // BAD_REQUEST for a vnode out of range; write errors INTERNAL / STORAGE_FULL.
  Status DropShardCopy(uint32_t shard, const std::vector<int32_t>& vnodes);
  // Rebuilds (cluster/replication/rebuild.h): a shard's records copied into another store
  // chunk by chunk. CopyShardChunk reads the next chunk of the vnodes the vnode -> shard map
  // gives `shard`, from *cursor on (empty: the start; an opaque position it advances), of
  // about max_bytes: an encoded shard batch (shard_batch.h) that replaces the key ranges it
  // covers (a range deletion of each, then a put of every record in it), read from one
  // snapshot, in which ReplicatedLsn(shard) was *read_lsn (when given). *done after the
  // last chunk (which may be empty). Successive chunks are read at
  // different times (the receiver replays the log from the rebuild's lsn). BAD_REQUEST for
  // a malformed cursor; INTERNAL on read errors; UNAVAILABLE while the database is closed.
  Result<std::string> CopyShardChunk(uint32_t shard, std::string* cursor, size_t max_bytes,
                                     bool* done, uint64_t* read_lsn = nullptr) const;
  // Writes one CopyShardChunk result in one synced write, directly (as ApplyReplicated; the
  // shard's replica thread). BAD_REQUEST for a malformed chunk or one that touches a key
  // outside the vnodes (nothing written); write errors INTERNAL / STORAGE_FULL.
  Status InstallShardChunk(std::string_view chunk);
  // This node became `shard`'s primary: ids start above hlc_high_water at once, and the
  // commit thread drops what it cached of the shard's users (counters, hot dedup entries;
  // they are reloaded from what ApplyReplicated wrote) in a batch of its own. `done` runs
  // once batches built before it have been answered, so every batch replicated after it was
  // built from the store's applied state. UNAVAILABLE when stopping.
  void TakeOverShard(uint32_t shard, uint64_t hlc_high_water, std::function<void(Status)> done);
  // Replaces StoreOptions::shard_of_vnode (a cluster's placement arrived or changed): batches
  // built afterwards use the new map. Called once per vnode, on the caller's thread.
  void SetShardOfVnode(const std::function<uint32_t(int32_t)>& shard_of_vnode);

  // Lifecycle (docs/operations.md, "Account deletion and archive retention").
  //
  // Deletes everything stored for `user`: inbox, archive, key bundle and one-time prekeys,
  // settings, last seen, inbox counters, and the dedup entries of the keys the user sent
  // with (found with one seek per vnode). Token revocations of the user are kept. Written
  // in one synced batch ordered after every write queued before it (a barrier: writes
  // queued after it are built once it is written); the user's cached counters are dropped
  // and the dedup hot tier is emptied (lookups read the column family meanwhile). Messages
  // stored for the user afterwards are kept as for any user: revoke the user's tokens first.
  // Errors: BAD_REQUEST for user 0; read errors INTERNAL; write errors as PutSettings.
  Result<UserDeletion> DeleteUser(uint64_t user);
  // Deletes every archived message whose id is older than `older_than_ms` (unix ms; an
  // id's time is its upper 48 bits), one range deletion per user that has any, written
  // through the commit queue in synced batches. What the background sweep runs with
  // now - archive_retention_ms. Errors: read errors INTERNAL; write errors as PutSettings.
  Result<ArchiveExpiry> ExpireArchive(int64_t older_than_ms);
  // A consistent point-in-time copy of the whole database in `dir` (which must not exist;
  // its parent must), made with RocksDB's Checkpoint while writes continue: every write
  // acknowledged before the call is in it. Files are hard-linked when `dir` is on the
  // same filesystem, copied otherwise; memtables are flushed first. Returns the RocksDB
  // sequence number the copy holds. Errors: INTERNAL (with RocksDB's message),
  // STORAGE_FULL, UNAVAILABLE while the database is closed after a write error.
  Result<uint64_t> Checkpoint(const std::string& dir) const;

  // Stops accepting writes (they fail with UNAVAILABLE), finishes queued appends (their
  // callbacks run), joins the store's threads. Idempotent; the destructor calls it. Reads
  // keep working until the store is destroyed.
  void Stop();

  StoreStats Stats() const;

  // Waits until the archiver has nothing left to move (every inbox holds at most
  // inbox_cap messages) or `timeout_ms` passes; returns whether it is idle. For tests and
  // orderly shutdown.
  bool WaitArchiverIdle(int64_t timeout_ms) const;
  // Waits until the dedup Bloom filters have been refilled after Open (before that, every
  // keyed append that misses the hot tier reads the `dedup` column family) or `timeout_ms`
  // passes; returns whether they are ready.
  bool WaitDedupFiltersReady(int64_t timeout_ms) const;

  class Impl;

 private:
  explicit InboxStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace iris::store
