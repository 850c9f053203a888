// InboxStore: Open, Stop, the public wrappers, and the read paths (Scan, History).
#include "store/inbox_store.h"

#include <pthread.h>
#include <rocksdb/perf_level.h>

#include <algorithm>
#include <future>

#include "common/assert.h"
#include "common/bytes.h"
#include "obs/trace.h"
#include "store/inbox_store_impl.h"

namespace iris::store {
namespace {

constexpr size_t kEnvelopeFrameOverhead = 6;

DedupIndexOptions DedupOptionsOf(const StoreOptions& o) {
  DedupIndexOptions d;
  d.window_ms = o.dedup_window_ms;
  d.hot_window_ms = o.dedup_hot_window_ms;
  d.hot_max_entries = o.dedup_hot_max_entries;
  d.bloom_keys_per_day = o.dedup_bloom_keys_per_day;
  d.bloom_bits_per_key = o.dedup_bloom_bits_per_key;
  return d;
}

// Appends the envelope at the iterator to `page` unless a limit is reached; returns false
// (and sets has_more) when the page is full.
Result<bool> TakeMessage(const rocksdb::Iterator& it, uint32_t limit, size_t max_bytes,
                         size_t* bytes, ScanPage* page) {
  if (page->messages.size() >= limit) {
    page->has_more = true;
    return false;
  }
  v1::Envelope e;
  if (!e.ParseFromArray(it.value().data(), static_cast<int>(it.value().size()))) {
    return Internal("store: malformed envelope");
  }
  const size_t size = e.ByteSizeLong() + kEnvelopeFrameOverhead;
  if (!page->messages.empty() && *bytes + size > max_bytes) {
    page->has_more = true;
    return false;
  }
  *bytes += size;
  page->messages.push_back(std::move(e));
  return true;
}

}  // namespace

// Reads the per-user counters from `meta` ({0, 0} when absent).
Result<UserState> ReadUserState(const StoreDb::ReadHold& db, const rocksdb::ReadOptions& ro,
                                int32_t vnode, uint64_t user) {
  std::string v;
  const rocksdb::Status s = db.db()->Get(ro, db.cf(Cf::kMeta), MetaUserStateKey(vnode, user), &v);
  if (s.IsNotFound()) return UserState{};
  if (!s.ok()) return FromRocks(s, "store: read inbox state");
  const std::optional<UserState> state = DecodeUserState(v);
  if (!state) return Internal("store: malformed inbox state");
  return *state;
}

InboxStore::Impl::Impl(const StoreOptions& options)
    : options_(options),
      clock_(options.clock != nullptr ? options.clock : &SystemClock::Instance()),
      hlc_(*clock_, options.node_id) {}

InboxStore::Impl::~Impl() {
  Stop();
  dedup_.reset();  // joins the rebuild before the database closes
  db_.reset();
}

Status InboxStore::Impl::Init() {
  StoreDbOptions db_options;
  db_options.path = options_.path;
  db_options.clock = clock_;
  db_options.dedup_window_ms = options_.dedup_window_ms;
  db_options.write_buffer_bytes = options_.write_buffer_bytes;
  db_options.block_cache_bytes = options_.block_cache_bytes;
  db_options.max_background_jobs = options_.max_background_jobs;
  db_options.verify_checksums_on_open = options_.verify_checksums_on_open;
  IRIS_ASSIGN_OR_RETURN(db_, StoreDb::Open(db_options));

  SetShardOfVnode(options_.shard_of_vnode
                      ? options_.shard_of_vnode
                      : std::function<uint32_t(int32_t)>([](int32_t) { return 0u; }));
  IRIS_RETURN_IF_ERROR(EnsureLayout());
  IRIS_ASSIGN_OR_RETURN(const uint64_t high_water, ReadHighWaterMark());
  hlc_.Restore(high_water);

  // One synced write (the layout version, unchanged): the first write after opening pays
  // for setting up the WAL (file extension, first preallocation: 25-35 ms measured on
  // tmpfs), and it is better paid here than by the first appends. A failure here (a full
  // disk) is left to the commit thread's recovery, as for any failed write.
  {
    rocksdb::WriteOptions wo;
    wo.sync = true;
    const rocksdb::Status w =
        db_->db()->Put(wo, db_->cf(Cf::kMeta), kMetaLayoutVersionKey, EncodeU32(kLayoutVersion));
    if (w.ok()) db_->NoteDurable(db_->db());
    if (!w.ok()) {
      needs_recovery_ = true;
      last_write_error_ = FromRocks(w, "store: write at open");
    }
  }

  dedup_ = std::make_unique<DedupIndex>(DedupOptionsOf(options_), *clock_, *db_);
  dedup_->StartRebuild();
  if (!options_.replicate) {
    IRIS_RETURN_IF_ERROR(ScheduleArchivePending([](int32_t) { return true; }));
  }
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    accepting_ = true;
  }
  user_cache_.reserve(std::min<size_t>(options_.user_cache_max_entries + 1, size_t{1} << 20));
  commit_thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "iris-commit");
    // RocksDB's per-thread perf counters cost a few percent of every memtable insert.
    rocksdb::SetPerfLevel(rocksdb::PerfLevel::kDisable);
    CommitLoop();
  });
  sync_thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "iris-sync");
    rocksdb::SetPerfLevel(rocksdb::PerfLevel::kDisable);
    SyncLoop();
  });
  if (options_.run_archiver) {
    archive_thread_ = std::thread([this] {
      pthread_setname_np(pthread_self(), "iris-archiver");
      ArchiverLoop();
    });
  }
  StartRetention();
  return Status::Ok();
}

void InboxStore::Impl::Stop() {
  std::lock_guard<std::mutex> stop_lock(stop_mu_);
  if (stopped_) return;
  stopped_ = true;
  {
    // The retention sweep writes through the commit thread: it goes first.
    std::lock_guard<std::mutex> lock(retention_mu_);
    retention_stop_ = true;
  }
  retention_cv_.notify_all();
  if (retention_thread_.joinable()) retention_thread_.join();
  {
    std::lock_guard<std::mutex> lock(archive_mu_);
    archive_stop_ = true;
  }
  archive_cv_.notify_all();
  // The archiver may wait for a move to commit: the commit thread still runs.
  if (archive_thread_.joinable()) archive_thread_.join();
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    accepting_ = false;
    stopping_ = true;
  }
  queue_cv_.notify_all();
  if (commit_thread_.joinable()) commit_thread_.join();  // hands off its last batch, then
  if (sync_thread_.joinable()) sync_thread_.join();      // the sync thread drains the slot
}

Result<ScanPage> InboxStore::Impl::Scan(uint64_t user, uint64_t after_id, uint32_t limit,
                                        size_t max_bytes) const {
  const StoreDb::ReadHold db = db_->Hold();
  if (!db.ok()) return StoreDb::ReadHold::Closed();
  rocksdb::ManagedSnapshot snapshot(db.db());
  rocksdb::ReadOptions ro;
  ro.snapshot = snapshot.snapshot();
  const int32_t vnode = Vnode(user);
  IRIS_ASSIGN_OR_RETURN(const UserState state, ReadUserState(db, ro, vnode, user));

  ScanPage page;
  page.gap = state.archived_through > after_id;
  // Everything up to archived_through lives in the archive: start past it, which also skips
  // the tombstones the archiver left in `inbox`.
  const uint64_t from = std::max(after_id, state.archived_through);
  if (from == UINT64_MAX) return page;

  const std::string upper = InboxUpperBound(vnode, user);
  const rocksdb::Slice upper_slice(upper);
  ro.iterate_upper_bound = &upper_slice;
  std::unique_ptr<rocksdb::Iterator> it(db.db()->NewIterator(ro, db.cf(Cf::kInbox)));
  size_t bytes = 0;
  for (it->Seek(InboxKey(vnode, user, from + 1)); it->Valid(); it->Next()) {
    IRIS_ASSIGN_OR_RETURN(const bool taken, TakeMessage(*it, limit, max_bytes, &bytes, &page));
    if (!taken) break;
  }
  if (!it->status().ok()) return FromRocks(it->status(), "store: scan");
  return page;
}

Result<ScanPage> InboxStore::Impl::History(uint64_t user, uint64_t before_id, uint32_t limit,
                                           size_t max_bytes) const {
  ScanPage page;
  if (before_id == 1) return page;  // ids start above 0
  const StoreDb::ReadHold db = db_->Hold();
  if (!db.ok()) return StoreDb::ReadHold::Closed();
  rocksdb::ReadOptions ro;
  const int32_t vnode = Vnode(user);
  const std::string lower = InboxKey(vnode, user, 0);
  const rocksdb::Slice lower_slice(lower);
  ro.iterate_lower_bound = &lower_slice;
  std::unique_ptr<rocksdb::Iterator> it(db.db()->NewIterator(ro, db.cf(Cf::kArchive)));
  size_t bytes = 0;
  const uint64_t last = before_id == 0 ? UINT64_MAX : before_id - 1;
  for (it->SeekForPrev(InboxKey(vnode, user, last)); it->Valid(); it->Prev()) {
    IRIS_ASSIGN_OR_RETURN(const bool taken, TakeMessage(*it, limit, max_bytes, &bytes, &page));
    if (!taken) break;
  }
  if (!it->status().ok()) return FromRocks(it->status(), "store: history");
  return page;
}

StoreStats InboxStore::Impl::Stats() const {
  StoreStats s;
  s.appends = appends_.load(std::memory_order_relaxed);
  s.envelopes = envelopes_.load(std::memory_order_relaxed);
  s.duplicates = duplicates_.load(std::memory_order_relaxed);
  s.batches = batches_.load(std::memory_order_relaxed);
  s.write_errors = write_errors_.load(std::memory_order_relaxed);
  s.storage_full_errors = storage_full_errors_.load(std::memory_order_relaxed);
  s.archived = archived_.load(std::memory_order_relaxed);
  s.purged = purged_.load(std::memory_order_relaxed);
  if (dedup_) {
    const DedupStats d = dedup_->stats();
    s.dedup_hot_hits = d.hot_hits;
    s.dedup_bloom_negatives = d.bloom_negatives;
    s.dedup_db_lookups = d.db_lookups;
    s.dedup_bloom_keys_today = d.bloom_keys_today;
    s.dedup_bloom_keys_per_day = d.bloom_keys_per_day;
  }
  return s;
}

// ---- public wrappers ----

InboxStore::InboxStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

InboxStore::~InboxStore() = default;

Result<std::unique_ptr<InboxStore>> InboxStore::Open(const StoreOptions& options) {
  if (options.path.empty()) return BadRequest("store: path is empty");
  if (options.inbox_cap == 0) return BadRequest("store: inbox_cap must be positive");
  if (options.dedup_window_ms <= 0) return BadRequest("store: dedup_window_ms must be positive");
  if (options.max_batch_requests == 0 || options.max_batch_bytes == 0) {
    return BadRequest("store: batch limits must be positive");
  }
  if (options.vnodes <= 0 || options.vnodes > kMaxVnodes) {
    return BadRequest("store: vnodes must be in 1.." + std::to_string(kMaxVnodes) + ", not " +
                      std::to_string(options.vnodes));
  }
  auto impl = std::make_unique<Impl>(options);
  IRIS_RETURN_IF_ERROR(impl->Init());
  return std::unique_ptr<InboxStore>(new InboxStore(std::move(impl)));
}

void InboxStore::AppendAsync(uint64_t sender, std::string idempotency_key,
                             std::vector<v1::Envelope> envelopes, AppendCallback done) {
  AppendAsync(sender, std::move(idempotency_key), std::move(envelopes), std::move(done), false);
}

void InboxStore::AppendAsync(uint64_t sender, std::string idempotency_key,
                             std::vector<v1::Envelope> envelopes, AppendCallback done,
                             bool adds_contact) {
  if (envelopes.empty()) {
    done(BadRequest("store: append without envelopes"));
    return;
  }
  if (idempotency_key.size() > kMaxIdempotencyKeyBytes) {
    done(BadRequest("store: idempotency key over 255 bytes"));
    return;
  }
  CommitRequest r;
  AppendRequest a;
  a.bodies.reserve(envelopes.size());
  for (v1::Envelope& e : envelopes) {
    if (e.recipient() == 0) {
      done(BadRequest("store: envelope without recipient"));
      return;
    }
    a.bodies.push_back(EncodeEnvelopeBody(&e));
    r.bytes += a.bodies.back().size() + 32;
  }
  a.sender = sender;
  a.idempotency_key = std::move(idempotency_key);
  // A 1:1 message: one envelope, or one per device of its one recipient (appendix 20).
  a.adds_contact = adds_contact && !envelopes.empty() &&
                   std::all_of(envelopes.begin(), envelopes.end(), [&](const v1::Envelope& e) {
                     return e.group_id() == 0 && e.kind() == v1::MESSAGE &&
                            e.recipient() == envelopes[0].recipient();
                   });
  a.envelopes = std::move(envelopes);
  a.done = std::move(done);
  r.body = std::move(a);
  impl_->Enqueue(std::move(r));
}

void InboxStore::AppendFanOutJob(uint64_t sender, std::string idempotency_key, v1::Envelope message,
                                 AppendCallback done) {
  if (message.group_id() == 0) {
    done(BadRequest("store: fan-out job without group"));
    return;
  }
  if (idempotency_key.size() > kMaxIdempotencyKeyBytes) {
    done(BadRequest("store: idempotency key over 255 bytes"));
    return;
  }
  CommitRequest r;
  AppendRequest a;
  message.set_recipient(0);
  r.bytes += message.ByteSizeLong() + 64;
  a.sender = sender;
  a.idempotency_key = std::move(idempotency_key);
  a.envelopes.push_back(std::move(message));
  a.bodies.emplace_back();
  a.fanout_job = true;
  a.done = std::move(done);
  r.body = std::move(a);
  impl_->Enqueue(std::move(r));
}

void InboxStore::AppendFanOutBatch(const FanOutJob& job, uint64_t done_through, bool finished,
                                   std::vector<v1::Envelope> envelopes, AppendCallback done) {
  CommitRequest r;
  AppendRequest a;
  a.bodies.reserve(envelopes.size());
  for (v1::Envelope& e : envelopes) {
    if (e.recipient() == 0) {
      done(BadRequest("store: envelope without recipient"));
      return;
    }
    a.bodies.push_back(EncodeEnvelopeBody(&e));
    r.bytes += a.bodies.back().size() + 32;
  }
  const std::string key = FanOutJobKey(VnodeOf(job.group_id), job.group_id, job.job_id);
  if (finished) {
    a.extra_ops.push_back(KvOp{Cf::kGroups, key, std::nullopt});
  } else {
    std::string value;
    AppendBigEndian64(&value, done_through);
    value += job.message.SerializeAsString();
    r.bytes += value.size();
    a.extra_ops.push_back(KvOp{Cf::kGroups, key, std::move(value)});
  }
  a.sender = job.message.sender();
  a.envelopes = std::move(envelopes);
  a.done = std::move(done);
  r.body = std::move(a);
  impl_->Enqueue(std::move(r));
}

Result<std::vector<InboxStore::FanOutJob>> InboxStore::LoadFanOutJobs() const {
  IRIS_ASSERT_NOT_ON_LOOP_THREAD();
  return impl_->LoadFanOutJobs();
}

void InboxStore::AppendAsync(uint64_t sender, std::string idempotency_key,
                             std::vector<v1::Envelope> envelopes, AppendCallback done,
                             const obs::SpanContext& parent, bool adds_contact) {
  if (parent.valid()) {
    if (obs::SharedSpan span = obs::StartSharedSpan("store.append", parent)) {
      span->SetInt("iris.envelopes", static_cast<int64_t>(envelopes.size()));
      done = obs::EndSpanBefore(std::move(span), std::move(done));
    }
  }
  AppendAsync(sender, std::move(idempotency_key), std::move(envelopes), std::move(done),
              adds_contact);
}

Result<AppendOutcome> InboxStore::Append(uint64_t sender, std::string idempotency_key,
                                         std::vector<v1::Envelope> envelopes) {
  IRIS_ASSERT_NOT_ON_LOOP_THREAD();
  auto promise = std::make_shared<std::promise<Result<AppendOutcome>>>();
  std::future<Result<AppendOutcome>> result = promise->get_future();
  AppendAsync(sender, std::move(idempotency_key), std::move(envelopes),
              [promise](Result<AppendOutcome> r) { promise->set_value(std::move(r)); });
  return result.get();
}

void InboxStore::SetShardBatchObserver(
    std::function<void(const std::map<uint32_t, std::string>&)> f) {
  impl_->SetShardBatchObserver(std::move(f));
}

Status InboxStore::ApplyShardBatch(std::string_view payload) {
  IRIS_ASSERT_NOT_ON_LOOP_THREAD();  // waits for the group commit's fdatasync
  return impl_->ApplyShardBatch(payload);
}

Status InboxStore::ApplyReplicated(uint32_t shard, uint64_t last_lsn,
                                   const std::vector<std::string_view>& payloads, uint64_t hlc) {
  IRIS_ASSERT_NOT_ON_LOOP_THREAD();  // a synced write
  return impl_->ApplyReplicated(shard, last_lsn, payloads, hlc);
}

Result<uint64_t> InboxStore::ReplicatedLsn(uint32_t shard) const {
  return impl_->ReplicatedLsn(shard);
}
Status InboxStore::DropShardCopy(uint32_t shard, const std::vector<int32_t>& vnodes) {
  IRIS_ASSERT_NOT_ON_LOOP_THREAD();
  return impl_->DropShardCopy(shard, vnodes);
}

Result<std::string> InboxStore::CopyShardChunk(uint32_t shard, std::string* cursor,
                                               size_t max_bytes, bool* done,
                                               uint64_t* read_lsn) const {
  IRIS_ASSERT_NOT_ON_LOOP_THREAD();
  return impl_->CopyShardChunk(shard, cursor, max_bytes, done, read_lsn);
}

Status InboxStore::InstallShardChunk(std::string_view chunk) {
  IRIS_ASSERT_NOT_ON_LOOP_THREAD();  // a synced write
  return impl_->InstallShardChunk(chunk);
}

void InboxStore::SetShardOfVnode(const std::function<uint32_t(int32_t)>& shard_of_vnode) {
  impl_->SetShardOfVnode(shard_of_vnode);
}

void InboxStore::TakeOverShard(uint32_t shard, uint64_t hlc_high_water,
                               std::function<void(Status)> done) {
  impl_->TakeOverShard(shard, hlc_high_water, std::move(done));
}

void InboxStore::SetCommitListener(std::function<void(const std::vector<v1::Envelope>&)> l) {
  impl_->SetListener(std::move(l));
}

Result<ScanPage> InboxStore::Scan(uint64_t user, uint64_t after_id, uint32_t limit,
                                  size_t max_bytes) const {
  IRIS_ASSERT_NOT_ON_LOOP_THREAD();
  return impl_->Scan(user, after_id, limit, max_bytes);
}

Result<ScanPage> InboxStore::History(uint64_t user, uint64_t before_id, uint32_t limit,
                                     size_t max_bytes) const {
  IRIS_ASSERT_NOT_ON_LOOP_THREAD();
  return impl_->History(user, before_id, limit, max_bytes);
}

Status InboxStore::PutSettings(uint64_t user, const UserSettings& s) {
  IRIS_ASSERT_NOT_ON_LOOP_THREAD();
  return impl_->PutSettings(user, s);
}
Result<UserSettings> InboxStore::GetSettings(uint64_t user) const {
  IRIS_ASSERT_NOT_ON_LOOP_THREAD();
  return impl_->GetSettings(user);
}
Result<UserSettings> InboxStore::UpdateSettings(uint64_t user,
                                                std::function<Status(UserSettings&)> change) {
  IRIS_ASSERT_NOT_ON_LOOP_THREAD();
  return impl_->UpdateSettings(user, std::move(change));
}
Result<std::vector<uint64_t>> InboxStore::WhoWrote(uint64_t user,
                                                   const std::vector<uint64_t>& candidates) const {
  IRIS_ASSERT_NOT_ON_LOOP_THREAD();
  return impl_->WhoWrote(user, candidates);
}
Status InboxStore::PutRevokedJti(std::string_view jti, int64_t until_ms) {
  IRIS_ASSERT_NOT_ON_LOOP_THREAD();
  return impl_->PutRevokedJti(jti, until_ms);
}
Status InboxStore::PutRevokedUser(uint64_t user, int64_t before_ms) {
  IRIS_ASSERT_NOT_ON_LOOP_THREAD();
  return impl_->PutRevokedUser(user, before_ms);
}
Result<StoredRevocations> InboxStore::LoadRevocations(int64_t now_ms) {
  IRIS_ASSERT_NOT_ON_LOOP_THREAD();
  return impl_->LoadRevocations(now_ms);
}

Status InboxStore::PutLastSeen(uint64_t user, uint64_t last_seen_ms) {
  IRIS_ASSERT_NOT_ON_LOOP_THREAD();
  return impl_->PutLastSeen(user, last_seen_ms);
}
Result<uint64_t> InboxStore::GetLastSeen(uint64_t user) const {
  IRIS_ASSERT_NOT_ON_LOOP_THREAD();
  return impl_->GetLastSeen(user);
}
Status InboxStore::UploadKeys(uint64_t user, const v1::KeysUpload& upload) {
  IRIS_ASSERT_NOT_ON_LOOP_THREAD();
  return impl_->UploadKeys(user, upload);
}
Result<v1::KeysBundle> InboxStore::FetchKeys(uint64_t user) {
  IRIS_ASSERT_NOT_ON_LOOP_THREAD();
  return impl_->FetchKeys(user);
}
Status InboxStore::DropDeviceKeys(uint64_t user, uint32_t device) {
  IRIS_ASSERT_NOT_ON_LOOP_THREAD();
  return impl_->DropDeviceKeys(user, device);
}
Result<DeviceMask> InboxStore::DevicesWithKeys(uint64_t user, DeviceMask candidates) const {
  return impl_->DevicesWithKeys(user, candidates);
}
Status InboxStore::PutGroup(const v1::GroupInfo& group) {
  IRIS_ASSERT_NOT_ON_LOOP_THREAD();
  return impl_->PutGroup(group);
}
Result<v1::GroupInfo> InboxStore::GetGroup(uint64_t group_id) const {
  IRIS_ASSERT_NOT_ON_LOOP_THREAD();
  return impl_->GetGroup(group_id);
}
uint64_t InboxStore::LastId() const { return impl_->LastId(); }
int32_t InboxStore::VnodeOf(uint64_t owner) const { return impl_->Vnode(owner); }
uint32_t InboxStore::ShardOf(uint64_t owner) const {
  return impl_->ShardOfVnode(impl_->Vnode(owner));
}
Result<uint64_t> InboxStore::VnodeChecksum(int32_t vnode) const {
  IRIS_ASSERT_NOT_ON_LOOP_THREAD();
  return impl_->VnodeChecksum(vnode);
}
Status InboxStore::DeleteVnode(int32_t vnode) {
  IRIS_ASSERT_NOT_ON_LOOP_THREAD();
  return impl_->DeleteVnode(vnode);
}
Result<UserDeletion> InboxStore::DeleteUser(uint64_t user) {
  IRIS_ASSERT_NOT_ON_LOOP_THREAD();
  return impl_->DeleteUser(user);
}
Result<ArchiveExpiry> InboxStore::ExpireArchive(int64_t older_than_ms) {
  IRIS_ASSERT_NOT_ON_LOOP_THREAD();
  return impl_->ExpireArchive(older_than_ms);
}
Result<uint64_t> InboxStore::Checkpoint(const std::string& dir) const {
  IRIS_ASSERT_NOT_ON_LOOP_THREAD();
  return impl_->Checkpoint(dir);
}
void InboxStore::Stop() { impl_->Stop(); }
StoreStats InboxStore::Stats() const { return impl_->Stats(); }
bool InboxStore::WaitArchiverIdle(int64_t timeout_ms) const {
  return impl_->WaitArchiverIdle(timeout_ms);
}
bool InboxStore::WaitDedupFiltersReady(int64_t timeout_ms) const {
  return impl_->WaitDedupFiltersReady(timeout_ms);
}

}  // namespace iris::store
