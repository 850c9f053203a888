#pragma once
// StoreDb: the node's one RocksDB instance with the column families of DESIGN.md §3, its
// tuning (docs/storage.md, "RocksDB configuration") and the mapping of RocksDB statuses
// onto Iris status codes.
//
// Recovery: the WAL is replayed with WALRecoveryMode::kPointInTimeRecovery (RocksDB's
// recommendation and default), with paranoid checks and WAL tracking in the MANIFEST, so a
// torn or corrupted tail (a write whose sync never returned, hence never acknowledged) is
// cut off, while a missing or shortened synced WAL makes Open fail instead of silently
// dropping data.
//
// Thread-safety: a StoreDb is immutable after Open; rocksdb::DB is thread-safe. The
// destructor closes the database; no other thread may use it then.

#include <rocksdb/compaction_filter.h>
#include <rocksdb/db.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
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
  size_t write_buffer_bytes = 64u << 20;
  size_t block_cache_bytes = 128u << 20;
  int max_background_jobs = 2;
};

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

class StoreDb {
 public:
  // Creates the directory and the column families when missing.
  // Errors: STORAGE_FULL (no space), INTERNAL (anything else, with RocksDB's message).
  static Result<std::unique_ptr<StoreDb>> Open(const StoreDbOptions& options);
  ~StoreDb();

  rocksdb::DB* db() const { return db_.get(); }
  rocksdb::ColumnFamilyHandle* cf(Cf c) const { return handles_[static_cast<int>(c)]; }

 private:
  StoreDb() = default;
  std::unique_ptr<DedupExpiryFilter> dedup_filter_;
  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;  // indexed by Cf
};

// RocksDB status -> Iris status: no space -> STORAGE_FULL; everything else -> INTERNAL,
// prefixed with `what`. OK stays OK.
Status FromRocks(const rocksdb::Status& s, std::string_view what);

}  // namespace iris::store
