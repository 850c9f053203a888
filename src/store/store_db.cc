#include "store/store_db.h"

#include <rocksdb/cache.h>
#include <rocksdb/convenience.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/listener.h>
#include <rocksdb/options.h>
#include <rocksdb/slice_transform.h>
#include <rocksdb/table.h>
#include <rocksdb/utilities/table_properties_collectors.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdarg>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <optional>
#include <system_error>

#include "store/store_keys.h"

namespace iris::store {
namespace {

bool Supported(rocksdb::CompressionType t) {
  static const std::vector<rocksdb::CompressionType> supported =
      rocksdb::GetSupportedCompressions();
  return std::find(supported.begin(), supported.end(), t) != supported.end();
}

rocksdb::BlockBasedTableOptions TableOptions(const std::shared_ptr<rocksdb::Cache>& cache,
                                             size_t block_size) {
  rocksdb::BlockBasedTableOptions t;
  t.block_cache = cache;
  t.block_size = block_size;
  t.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  t.cache_index_and_filter_blocks = true;
  t.pin_l0_filter_and_index_blocks_in_cache = true;
  t.format_version = 5;
  return t;
}

// After a hard background error (disk full on a WAL write or a flush) RocksDB stops writes.
// Its own recovery polls the free space every few seconds; the store instead calls
// DB::Resume() itself from the commit thread (InboxStore::Impl::EnsureWritable), so writes
// come back on the first batch after space is freed and a test can observe it without
// waiting on RocksDB's timer. Soft errors keep RocksDB's automatic recovery: writes still
// succeed then, so nothing would call Resume().
class ManualHardErrorRecovery final : public rocksdb::EventListener {
 public:
  void OnErrorRecoveryBegin(rocksdb::BackgroundErrorReason /*reason*/, rocksdb::Status bg_error,
                            bool* auto_recovery) override {
    if (bg_error.severity() >= rocksdb::Status::Severity::kHardError) *auto_recovery = false;
    bg_error.PermitUncheckedError();
  }
  const char* Name() const override { return "iris.ManualHardErrorRecovery"; }
};

// RocksDB's info LOG, written so that a full disk cannot hurt: RocksDB's own file logger
// asserts on a write after a failed one in builds with assertions on (Debian's librocksdb
// is one), which turned "disk full" into an abort. Lines that do not fit are dropped.
// The file is rotated to LOG.old at 4 MiB.
class TolerantFileLogger final : public rocksdb::Logger {
 public:
  explicit TolerantFileLogger(std::string path)
      : rocksdb::Logger(rocksdb::InfoLogLevel::INFO_LEVEL), path_(std::move(path)) {
    file_ = std::fopen(path_.c_str(), "a");
  }
  ~TolerantFileLogger() override {
    if (file_ != nullptr) std::fclose(file_);
  }
  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override {
    char line[1024];
    const int n = std::vsnprintf(line, sizeof line, format, ap);
    if (n < 0) return;
    const size_t len = std::min(static_cast<size_t>(n), sizeof line - 1);
    std::lock_guard<std::mutex> lock(mu_);
    if (file_ == nullptr) return;
    if (std::fwrite(line, 1, len, file_) != len || std::fputc('\n', file_) == EOF ||
        std::fflush(file_) != 0) {
      std::clearerr(file_);
      return;
    }
    written_ += len + 1;
    if (written_ > kRotateBytes) {
      std::fclose(file_);
      std::rename(path_.c_str(), (path_ + ".old").c_str());
      file_ = std::fopen(path_.c_str(), "a");
      written_ = 0;
    }
  }

 private:
  static constexpr size_t kRotateBytes = 4u << 20;
  const std::string path_;
  std::mutex mu_;
  FILE* file_ = nullptr;  // guarded by mu_
  size_t written_ = 0;    // guarded by mu_
};

// The durability mark: 8 bytes of sequence number and 8 of check, little-endian, at offset 0.
// A torn or foreign file fails the check and is ignored (as if there were no mark).
constexpr uint64_t kMarkMagic = 0x4952'4953'4455'5241ULL;  // "IRISDURA"

uint64_t MarkCheck(uint64_t seq) {
  uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a over the 8 bytes, then the magic
  for (int i = 0; i < 8; ++i) {
    h ^= (seq >> (8 * i)) & 0xff;
    h *= 0x100000001b3ULL;
  }
  return h ^ kMarkMagic;
}

std::string MarkPath(const std::string& dir) { return dir + "/" + std::string(kDurabilityMarkFile); }

// The recorded mark, or nullopt when there is none (or it is unreadable: torn, foreign).
std::optional<uint64_t> ReadMark(const std::string& dir) {
  const int fd = ::open(MarkPath(dir).c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  unsigned char b[16];
  const ssize_t n = ::pread(fd, b, sizeof b, 0);
  ::close(fd);
  if (n != static_cast<ssize_t>(sizeof b)) return std::nullopt;
  uint64_t seq = 0, check = 0;
  for (int i = 0; i < 8; ++i) {
    seq |= static_cast<uint64_t>(b[i]) << (8 * i);
    check |= static_cast<uint64_t>(b[8 + i]) << (8 * i);
  }
  if (check != MarkCheck(seq)) return std::nullopt;
  return seq;
}

Status WriteMark(const std::string& dir, uint64_t seq) {
  const std::string path = MarkPath(dir);
  const bool existed = ::access(path.c_str(), F_OK) == 0;
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return Internal("store: open " + path + ": " + std::strerror(errno));
  unsigned char b[16];
  const uint64_t check = MarkCheck(seq);
  for (int i = 0; i < 8; ++i) {
    b[i] = static_cast<unsigned char>(seq >> (8 * i));
    b[8 + i] = static_cast<unsigned char>(check >> (8 * i));
  }
  Status out = Status::Ok();
  if (::pwrite(fd, b, sizeof b, 0) != static_cast<ssize_t>(sizeof b) || ::fdatasync(fd) != 0) {
    out = Internal("store: write " + path + ": " + std::strerror(errno));
  }
  ::close(fd);
  if (out.ok() && !existed) {
    // A new file: make its directory entry durable too (once).
    const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      ::fsync(dfd);
      ::close(dfd);
    }
  }
  return out;
}

}  // namespace

bool DedupExpiryFilter::Filter(int /*level*/, const rocksdb::Slice& /*key*/,
                               const rocksdb::Slice& existing_value, std::string* /*new_value*/,
                               bool* /*value_changed*/) const {
  const std::optional<DedupEntry> e =
      DecodeDedupEntry(std::string_view(existing_value.data(), existing_value.size()));
  if (!e) return false;  // never drop what we cannot read
  return e->accepted_ms + window_ms_ <= clock_.WallMillis();
}

Status FromRocks(const rocksdb::Status& s, std::string_view what) {
  if (s.ok()) return Status::Ok();
  if (s.IsNoSpace()) return StorageFull(std::string(what) + ": disk full: " + s.ToString());
  return Internal(std::string(what) + ": " + s.ToString());
}

Status LayoutTooNew(const std::string& path, uint32_t version) {
  return Status(StatusCode::kUnsupportedVersion,
                "store: " + path + " has layout version " + std::to_string(version) +
                    "; this build reads layout version " + std::to_string(kLayoutVersion) +
                    " and older (written by a newer irisd: run that version or newer, or "
                    "restore a backup made by this one)");
}

Result<StoreFacts> ReadStoreFacts(const std::string& path) {
  StoreFacts facts;
  const rocksdb::Status listed =
      rocksdb::DB::ListColumnFamilies(rocksdb::DBOptions(), path, &facts.column_families);
  if (!listed.ok()) {
    if (!std::filesystem::exists(path + "/CURRENT")) {
      return NotFound("store: no database in " + path);
    }
    return FromRocks(listed, "store: list column families of " + path);
  }
  rocksdb::DBOptions db_options;
  db_options.info_log = std::make_shared<TolerantFileLogger>("/dev/null");
  // As the store writes it: with tracking off, recovery would drop the MANIFEST's WAL
  // records, which a read-only open cannot (RocksDB 7.8 asserts, recovery_ctx == nullptr).
  db_options.track_and_verify_wals_in_manifest = true;
  db_options.wal_recovery_mode = rocksdb::WALRecoveryMode::kTolerateCorruptedTailRecords;
  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
  for (const std::string& name : facts.column_families) {
    descriptors.emplace_back(name, rocksdb::ColumnFamilyOptions());
  }
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  IRIS_RETURN_IF_ERROR(
      FromRocks(rocksdb::DB::OpenForReadOnly(db_options, path, descriptors, &handles, &raw),
                "store: open " + path + " read-only"));
  std::unique_ptr<rocksdb::DB> db(raw);
  Status error;
  rocksdb::ColumnFamilyHandle* meta = nullptr;
  for (rocksdb::ColumnFamilyHandle* h : handles) {
    if (h->GetName() == kCfNames[static_cast<int>(Cf::kMeta)]) meta = h;
  }
  if (meta != nullptr) {
    std::string v;
    rocksdb::Status s = db->Get(rocksdb::ReadOptions(), meta, kMetaLayoutVersionKey, &v);
    if (s.ok()) {
      facts.layout_version = DecodeU32(v);
      if (!facts.layout_version) error = Internal("store: malformed layout version in " + path);
    } else if (!s.IsNotFound()) {
      error = FromRocks(s, "store: read the layout version");
    }
    s = db->Get(rocksdb::ReadOptions(), meta, kMetaVnodesKey, &v);
    if (s.ok()) {
      facts.vnodes = DecodeU32(v);
    } else if (!s.IsNotFound() && error.ok()) {
      error = FromRocks(s, "store: read the vnode count");
    }
    const std::string prefix(1, kMetaHlcPrefix);
    std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions(), meta));
    for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
      const std::optional<uint64_t> mark =
          DecodeU64(std::string_view(it->value().data(), it->value().size()));
      if (mark) facts.last_id = std::max(facts.last_id, *mark);
    }
    if (!it->status().ok() && error.ok()) error = FromRocks(it->status(), "store: read HLC marks");
  }
  for (rocksdb::ColumnFamilyHandle* h : handles)
    db->DestroyColumnFamilyHandle(h).PermitUncheckedError();
  db->Close().PermitUncheckedError();
  if (!error.ok()) return error;
  return facts;
}

Status StoreDb::OpenLocked(bool first_open) {
  const StoreDbOptions& options = options_;
  std::error_code ec;
  std::filesystem::create_directories(options.path, ec);
  if (ec) {
    if (ec == std::errc::no_space_on_device) {
      return StorageFull("store: cannot create " + options.path + ": " + ec.message());
    }
    return Internal("store: cannot create " + options.path + ": " + ec.message());
  }

  rocksdb::DBOptions db_options;
  db_options.create_if_missing = true;
  db_options.create_missing_column_families = true;
  db_options.paranoid_checks = true;
  db_options.wal_recovery_mode = rocksdb::WALRecoveryMode::kTolerateCorruptedTailRecords;
  db_options.track_and_verify_wals_in_manifest = true;
  db_options.max_background_jobs = options.max_background_jobs;
  // Bound the WAL: column families that rarely fill a memtable (meta, keys) get flushed so
  // old WAL files can be deleted and recovery stays short.
  db_options.max_total_wal_size = 4 * options.write_buffer_bytes;
  db_options.max_manifest_file_size = 64u << 20;
  db_options.bytes_per_sync = 1u << 20;
  // No fallocate: RocksDB preallocates each new WAL in blocks of 1.1 x write_buffer_size,
  // inside the synced write that switches the memtable. On tmpfs that zeroes ~70 MiB there
  // and then (a measured 22-26 ms stall of every append in flight, once per memtable), and on
  // ext4 every synced write into the preallocated range must also convert an unwritten
  // extent. Growing the files as they are written costs neither (an append still updates
  // the file size, as it did before).
  db_options.allow_fallocate = false;
  // One writer (the store's sync thread): no concurrent memtable inserts, which would also
  // disable the insert hints below.
  db_options.allow_concurrent_memtable_write = false;
  db_options.listeners.push_back(std::make_shared<ManualHardErrorRecovery>());
  db_options.info_log = std::make_shared<TolerantFileLogger>(options.path + "/LOG");

  const auto cache = rocksdb::NewLRUCache(options.block_cache_bytes);
  const rocksdb::CompressionType hot_compression =
      Supported(rocksdb::kLZ4Compression) ? rocksdb::kLZ4Compression : rocksdb::kNoCompression;
  const rocksdb::CompressionType cold_compression =
      Supported(rocksdb::kZSTD) ? rocksdb::kZSTD : hot_compression;

  auto base = [&](size_t write_buffer, size_t block_size) {
    rocksdb::ColumnFamilyOptions cf;
    cf.write_buffer_size = write_buffer;
    cf.max_write_buffer_number = 4;
    cf.target_file_size_base = std::max<uint64_t>(write_buffer, 4u << 20);
    cf.max_bytes_for_level_base = 4 * cf.target_file_size_base;
    cf.level_compaction_dynamic_level_bytes = true;
    cf.compression = hot_compression;
    cf.table_factory.reset(rocksdb::NewBlockBasedTableFactory(TableOptions(cache, block_size)));
    return cf;
  };
  const size_t small_buffer = std::max<size_t>(options.write_buffer_bytes / 4, 1u << 20);

  if (dedup_filter_ == nullptr && options.clock != nullptr) {
    dedup_filter_ = std::make_unique<DedupExpiryFilter>(*options.clock, options.dedup_window_ms);
  }
  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
  descriptors.emplace_back(rocksdb::kDefaultColumnFamilyName, base(small_buffer, 4096));
  // Keys of one user (inbox, archive) or one sender (dedup, with time-ordered UUIDv7
  // idempotency keys) arrive in increasing order: the memtable keeps an insert position per
  // 12-byte prefix (vnode + user or sender), so most inserts skip the skip-list search.
  const std::shared_ptr<const rocksdb::SliceTransform> user_prefix(
      rocksdb::NewFixedPrefixTransform(12));
  {
    // inbox: hot, read by sync. The archiver deletes its oldest entries, so files dense in
    // tombstones are compacted early (scans never wade through them).
    rocksdb::ColumnFamilyOptions cf = base(options.write_buffer_bytes, 16 * 1024);
    cf.memtable_insert_with_hint_prefix_extractor = user_prefix;
    // Bodies are end-to-end-encrypted ciphertext: compressing them spends flush and
    // compaction CPU for no saving (RocksDB then stores the block uncompressed anyway).
    cf.compression = rocksdb::kNoCompression;
    cf.table_properties_collector_factories.emplace_back(
        rocksdb::NewCompactOnDeletionCollectorFactory(128, 64, 0.5));
    descriptors.emplace_back(std::string(kCfNames[static_cast<int>(Cf::kInbox)]), cf);
  }
  {
    // archive: cold, written in bulk by the archiver, read by HISTORY: zstd, big blocks.
    rocksdb::ColumnFamilyOptions cf = base(small_buffer, 64 * 1024);
    cf.memtable_insert_with_hint_prefix_extractor = user_prefix;
    cf.compression = cold_compression;
    cf.bottommost_compression = cold_compression;
    descriptors.emplace_back(std::string(kCfNames[static_cast<int>(Cf::kArchive)]), cf);
  }
  {
    // dedup: point lookups only; expired entries dropped by the compaction filter, and
    // every file is compacted at least daily so expiry happens without writes.
    rocksdb::ColumnFamilyOptions cf = base(small_buffer, 4096);
    cf.memtable_insert_with_hint_prefix_extractor = user_prefix;
    cf.compaction_filter = dedup_filter_.get();
    cf.compression = rocksdb::kNoCompression;  // random idempotency keys do not compress
    cf.periodic_compaction_seconds = 24 * 3600;
    descriptors.emplace_back(std::string(kCfNames[static_cast<int>(Cf::kDedup)]), cf);
  }
  for (Cf c : {Cf::kMeta, Cf::kKeys, Cf::kGroups}) {
    descriptors.emplace_back(std::string(kCfNames[static_cast<int>(c)]), base(small_buffer, 4096));
  }

  // A store written by a newer layout may have column families this build does not know,
  // which RocksDB refuses to open read-write without: read its version read-only first, so
  // the refusal names it.
  {
    std::vector<std::string> existing;
    if (rocksdb::DB::ListColumnFamilies(rocksdb::DBOptions(), options.path, &existing).ok()) {
      std::string unknown;
      for (const std::string& name : existing) {
        if (name == rocksdb::kDefaultColumnFamilyName ||
            std::find(std::begin(kCfNames), std::end(kCfNames), name) != std::end(kCfNames)) {
          continue;
        }
        unknown += (unknown.empty() ? "" : ", ") + name;
      }
      if (!unknown.empty()) {
        const Result<StoreFacts> facts = ReadStoreFacts(options.path);
        if (facts.ok() && facts->layout_version && *facts->layout_version > kLayoutVersion) {
          return LayoutTooNew(options.path, *facts->layout_version);
        }
        return Status(StatusCode::kUnsupportedVersion,
                      "store: " + options.path + " has column families this build does not know (" +
                          unknown + "); this build reads layout version " +
                          std::to_string(kLayoutVersion) + " and older");
      }
    }
  }

  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  const rocksdb::Status s =
      rocksdb::DB::Open(rocksdb::DBOptions(db_options), options.path, descriptors, &handles, &raw);
  if (!s.ok()) {
    if (s.IsCorruption()) {
      return Status(StatusCode::kDataLoss,
                    "store: " + options.path + " is damaged and was not opened (" + s.ToString() +
                        "); nothing was changed. Restore this node's data directory from a "
                        "backup (docs/operations.md, \"Backup and restore\")");
    }
    return FromRocks(s, "store: open " + options.path);
  }

  db_.reset(raw);
  // handles[0] is the default column family; ours follow in Cf order.
  raw->DestroyColumnFamilyHandle(handles[0]).PermitUncheckedError();
  handles_.assign(handles.begin() + 1, handles.end());

  // Never serve fewer writes than were durable: the recovered database must reach the mark.
  const uint64_t recovered = raw->GetLatestSequenceNumber();
  const std::optional<uint64_t> mark = ReadMark(options.path);
  if (mark && *mark > recovered) {
    CloseLocked();
    return Status(StatusCode::kDataLoss,
                  "store: " + options.path + " recovered writes up to sequence " +
                      std::to_string(recovered) + ", but writes up to sequence " +
                      std::to_string(*mark) + " were durable before it stopped (" +
                      std::string(kDurabilityMarkFile) +
                      "): the write-ahead log was truncated or lost. Refusing to open rather "
                      "than serve fewer acknowledged messages; restore this node's data "
                      "directory from a backup (docs/operations.md, \"Backup and restore\")");
  }
  {
    std::lock_guard<std::mutex> lock(mark_mu_);
    mark_written_ = mark.value_or(0);
  }
  // What was recovered is not known to be synced (a killed process leaves its last writes in
  // the page cache): only later synced writes advance the mark.
  uint64_t cur = durable_seq_.load(std::memory_order_relaxed);
  while (mark_written_ > cur &&
         !durable_seq_.compare_exchange_weak(cur, mark_written_, std::memory_order_relaxed)) {
  }
  if (first_open && options.verify_checksums_on_open) {
    rocksdb::ReadOptions ro;
    ro.fill_cache = false;
    ro.readahead_size = 2u << 20;
    const rocksdb::Status v = raw->VerifyChecksum(ro);
    if (!v.ok()) {
      CloseLocked();
      return Status(StatusCode::kDataLoss,
                    "store: " + options.path + " failed its checksum verification (" +
                        v.ToString() +
                        "); refusing to open. Restore this node's data directory from a backup "
                        "(docs/operations.md, \"Backup and restore\")");
    }
  }
  return Status::Ok();
}

void StoreDb::NoteDurable(rocksdb::DB* db) {
  const uint64_t seq = db->GetLatestSequenceNumber();
  uint64_t cur = durable_seq_.load(std::memory_order_relaxed);
  while (seq > cur && !durable_seq_.compare_exchange_weak(cur, seq, std::memory_order_relaxed)) {
  }
}

Status StoreDb::UpdateDurabilityMark() {
  std::lock_guard<std::mutex> lock(mark_mu_);
  const uint64_t seq = durable_seq_.load(std::memory_order_relaxed);
  if (seq <= mark_written_) return Status::Ok();
  IRIS_RETURN_IF_ERROR(WriteMark(options_.path, seq));
  mark_written_ = seq;
  return Status::Ok();
}

void StoreDb::MarkLoop() {
  const auto interval = std::chrono::milliseconds(options_.durability_mark_interval_ms);
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mark_mu_);
      // Pacing only (not synchronisation): the mark trails the WAL by at most this much.
      mark_cv_.wait_for(lock, interval, [this] { return mark_stop_; });
      if (mark_stop_) return;
    }
    // Errors (a full disk) leave the previous mark, which is still true.
    UpdateDurabilityMark().IgnoreError();
  }
}

void StoreDb::CloseLocked() {
  if (db_ == nullptr) return;
  for (rocksdb::ColumnFamilyHandle* h : handles_) {
    db_->DestroyColumnFamilyHandle(h).PermitUncheckedError();
  }
  handles_.clear();
  db_->Close().PermitUncheckedError();
  db_.reset();
}

Result<std::unique_ptr<StoreDb>> StoreDb::Open(const StoreDbOptions& options) {
  auto out = std::unique_ptr<StoreDb>(new StoreDb(options));
  IRIS_RETURN_IF_ERROR(out->OpenLocked(/*first_open=*/true));
  if (options.durability_mark_interval_ms > 0) {
    StoreDb* self = out.get();
    out->mark_thread_ = std::thread([self] { self->MarkLoop(); });
  }
  return out;
}

Status StoreDb::Reopen() {
  std::unique_lock<WriterPreferringLock> lock(lock_);
  UpdateDurabilityMark().IgnoreError();
  CloseLocked();
  return OpenLocked(/*first_open=*/false);
}

StoreDb::~StoreDb() {
  {
    std::lock_guard<std::mutex> lock(mark_mu_);
    mark_stop_ = true;
  }
  mark_cv_.notify_all();
  if (mark_thread_.joinable()) mark_thread_.join();
  std::unique_lock<WriterPreferringLock> lock(lock_);
  // The last mark: every synced write so far.
  UpdateDurabilityMark().IgnoreError();
  CloseLocked();
}

Status StoreDb::ReadHold::Closed() {
  return Unavailable("store: the database is closed after a write error; retrying to reopen");
}

WriterPreferringLock::WriterPreferringLock() {
  pthread_rwlockattr_t attr;
  pthread_rwlockattr_init(&attr);
  pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  pthread_rwlock_init(&rw_, &attr);
  pthread_rwlockattr_destroy(&attr);
}
WriterPreferringLock::~WriterPreferringLock() { pthread_rwlock_destroy(&rw_); }
void WriterPreferringLock::lock() { pthread_rwlock_wrlock(&rw_); }
void WriterPreferringLock::unlock() { pthread_rwlock_unlock(&rw_); }
void WriterPreferringLock::lock_shared() { pthread_rwlock_rdlock(&rw_); }
void WriterPreferringLock::unlock_shared() { pthread_rwlock_unlock(&rw_); }

}  // namespace iris::store
