#pragma once
// StoreDb: the node's one RocksDB instance with the column families of DESIGN.md §3, its
// tuning (docs/storage.md, "RocksDB configuration") and the mapping of RocksDB statuses
// onto Iris status codes.
//
// Recovery refuses to serve fewer acknowledged writes than were durable (docs/reliability.md,
// "Corruption"):
// - The WAL is replayed with WALRecoveryMode::kTolerateCorruptedTailRecords: an incomplete
//   record at the end of a WAL (a write whose sync never returned, hence never acknowledged)
//   is cut off, but a record that fails its checksum anywhere makes Open fail. (RocksDB's
//   default, kPointInTimeRecovery, would stop the replay there and silently drop every
//   later, synced and acknowledged, record.)
// - Paranoid checks and WAL tracking in the MANIFEST make a missing or shortened closed WAL,
//   a damaged MANIFEST or a missing SST fail Open.
// - The durability mark (<path>/IRIS-DURABLE): every writer reports, after each successful
//   synced write, the latest sequence number (NoteDurable; every write of the store is
//   synced, so every write up to it is durable); a background thread records the highest in
//   the mark file about once a second, and Close records the last one. Open fails when the
//   recovered database ends before the mark: the live WAL, which RocksDB cannot check
//   against anything, was truncated or lost. (The thread never calls into RocksDB: a WAL
//   sync after a failed WAL write trips an assertion in Debian's librocksdb.)
// - With verify_checksums_on_open, Open also reads every SST block (DB::VerifyChecksum), so
//   a damaged table file is found at start rather than by the first read that needs it.
//
// Reopening: after a hard write error (disk full, a failed WAL write) RocksDB stops
// writes until DB::Resume(). RocksDB 7.8's Resume() can block forever when the flush that
// failed on the full disk left its memtable "queued" but unscheduled (facebook/rocksdb
// #15030, #11643), so the store does not call it: it closes and reopens the database
// instead (Reopen), which replays the WAL as after a crash.
//
// Thread-safety: rocksdb::DB is thread-safe. Every thread except the one that calls
// Reopen (the commit thread) reads through a ReadHold, which keeps the database from being
// reopened under it; the reopening thread uses db()/cf() directly. The destructor closes
// the database; no other thread may use it then.

#include <pthread.h>
#include <rocksdb/compaction_filter.h>
#include <rocksdb/db.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "common/status.h"

namespace iris::store {

enum class Cf : int { kInbox = 0, kArchive, kDedup, kMeta, kKeys, kGroups, kCount };
inline constexpr std::string_view kCfNames[] = {"inbox", "archive", "dedup",
                                                "meta",  "keys",    "groups"};

struct StoreDbOptions {
  std::string path;
  const Clock* clock = nullptr;  // for dedup expiry; must outlive the StoreDb
  int64_t dedup_window_ms = 0;
  // The inbox memtable (others get a quarter). InboxStore passes StoreOptions::
  // write_buffer_bytes (64 MiB); this smaller default serves tests that open a StoreDb alone.
  size_t write_buffer_bytes = 8u << 20;
  size_t block_cache_bytes = 128u << 20;
  int max_background_jobs = 2;
  // Read every SST block at Open (not at Reopen) and fail on a bad checksum. Costs a full
  // read of the data (docs/performance.md, "Start-up checksum verification").
  bool verify_checksums_on_open = false;
  // How often the durability mark is brought up to date (0: only at Close).
  int64_t durability_mark_interval_ms = 1000;
};

// The durability mark's file name inside the database directory.
inline constexpr std::string_view kDurabilityMarkFile = "IRIS-DURABLE";

// Drops dedup entries whose accepted time is more than `window_ms` in the past when
// RocksDB compacts the `dedup` column family (periodic compaction runs it at least daily).
class DedupExpiryFilter final : public rocksdb::CompactionFilter {
 public:
  DedupExpiryFilter(const Clock& clock, int64_t window_ms) : clock_(clock), window_ms_(window_ms) {}
  bool Filter(int level, const rocksdb::Slice& key, const rocksdb::Slice& existing_value,
              std::string* new_value, bool* value_changed) const override;
  const char* Name() const override { return "iris.DedupExpiryFilter"; }

 private:
  const Clock& clock_;
  const int64_t window_ms_;
};

// A readers-writer lock that prefers the writer (glibc's default prefers readers, which
// could starve a reopen under a steady stream of reads). Not recursive.
class WriterPreferringLock {
 public:
  WriterPreferringLock();
  ~WriterPreferringLock();
  WriterPreferringLock(const WriterPreferringLock&) = delete;
  WriterPreferringLock& operator=(const WriterPreferringLock&) = delete;
  void lock();
  void unlock();
  void lock_shared();
  void unlock_shared();

 private:
  pthread_rwlock_t rw_;
};

class StoreDb {
 public:
  // Creates the directory and the column families when missing.
  // Errors: STORAGE_FULL (no space), INTERNAL (anything else, with RocksDB's message).
  static Result<std::unique_ptr<StoreDb>> Open(const StoreDbOptions& options);
  ~StoreDb();

  // A shared hold on the database for one read (and its iterators and snapshots).
  class ReadHold {
   public:
    // False while the database is closed (a reopen failed); then nothing else may be used.
    bool ok() const { return store_->db_ != nullptr; }
    rocksdb::DB* db() const { return store_->db_.get(); }
    rocksdb::ColumnFamilyHandle* cf(Cf c) const { return store_->cf(c); }
    // UNAVAILABLE, for callers to return when !ok().
    static Status Closed();

   private:
    friend class StoreDb;
    explicit ReadHold(const StoreDb* store) : lock_(store->lock_), store_(store) {}
    std::shared_lock<WriterPreferringLock> lock_;
    const StoreDb* store_;
  };
  ReadHold Hold() const { return ReadHold(this); }

  // Unlocked access, for the thread that alone calls Reopen.
  rocksdb::DB* db() const { return db_.get(); }
  rocksdb::ColumnFamilyHandle* cf(Cf c) const { return handles_[static_cast<int>(c)]; }
  bool is_open() const { return db_ != nullptr; }

  // Closes and reopens the database (waiting for every ReadHold to end). On error the
  // database stays closed until a later Reopen succeeds. Errors as Open.
  Status Reopen();

  // Called by a writer right after a synced write to `db` (this database) succeeded: every
  // write up to the latest sequence number is durable. Precondition: every write to this
  // database is synced (WriteOptions::sync), so no unsynced sequence number is visible.
  void NoteDurable(rocksdb::DB* db);
  // Writes the durability mark now (the background thread does it periodically, Close at
  // the end). Errors: INTERNAL (the file could not be written; the old mark stays true).
  Status UpdateDurabilityMark();

 private:
  explicit StoreDb(const StoreDbOptions& options) : options_(options) {}
  Status OpenLocked(bool first_open);
  void CloseLocked();
  // The mark's thread body.
  void MarkLoop();

  const StoreDbOptions options_;
  std::atomic<uint64_t> durable_seq_{0};  // highest NoteDurable sequence (or the mark read)
  std::mutex mark_mu_;  // serialises mark updates; guards the fields below
  uint64_t mark_written_ = 0;
  bool mark_stop_ = false;
  std::condition_variable mark_cv_;
  std::thread mark_thread_;
  mutable WriterPreferringLock lock_;
  std::unique_ptr<DedupExpiryFilter> dedup_filter_;
  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;  // indexed by Cf
};

// What the node-wide `meta` records of a database say, read without changing it.
struct StoreFacts {
  std::vector<std::string> column_families;  // every one the database has
  std::optional<uint32_t> layout_version;    // absent: a new store, or layout version 1
  std::optional<uint32_t> vnodes;
  uint64_t last_id = 0;  // the greatest HLC high-water mark (0: none)
};
// Opens the database at `path` read-only, with whatever column families it has (a newer
// layout may have more), and reads its `meta` records; replays its WAL in memory only.
// Writes nothing (may run while another process has the database open).
// Errors: NOT_FOUND when `path` holds no database; INTERNAL otherwise.
Result<StoreFacts> ReadStoreFacts(const std::string& path);

// UNSUPPORTED_VERSION for a store at `path` written with layout `version`, newer than
// this build's (kLayoutVersion): names both and what to do.
Status LayoutTooNew(const std::string& path, uint32_t version);

// RocksDB status -> Iris status: no space -> STORAGE_FULL; everything else -> INTERNAL,
// prefixed with `what`. OK stays OK.
Status FromRocks(const rocksdb::Status& s, std::string_view what);

}  // namespace iris::store
