// Lifecycle: account deletion (DeleteUser), archive retention (ExpireArchive and the
// retention thread) and consistent copies of the database (Checkpoint) for backups.
//
// Reads run on the caller's thread from a snapshot under a ReadHold; every write goes
// through the commit queue (the commit thread is the only writer, inbox_store_impl.h). A
// ReadHold is never held while waiting for a write: the commit thread may need the
// database exclusively to reopen it after a write error.
#include <pthread.h>
#include <rocksdb/utilities/checkpoint.h>

#include <chrono>

#include "common/assert.h"
#include "obs/log.h"
#include "store/inbox_store_impl.h"

namespace iris::store {
namespace {

// Archived messages one ExpireArchive write deletes.
constexpr size_t kExpireKeysPerBatch = 8192;

std::string_view View(const rocksdb::Slice& s) { return {s.data(), s.size()}; }

}  // namespace

Result<UserDeletion> InboxStore::Impl::DeleteUser(uint64_t user) {
  if (user == 0) return BadRequest("store: user 0 does not exist");
  IRIS_ASSERT_NOT_ON_LOOP_THREAD();  // waits for the group commit's fdatasync
  UserDeletion out;
  UserDeleteRequest request;
  request.user = user;
  {
    const StoreDb::ReadHold db = db_->Hold();
    if (!db.ok()) return StoreDb::ReadHold::Closed();
    rocksdb::ManagedSnapshot snapshot(db.db());
    rocksdb::ReadOptions ro;
    ro.snapshot = snapshot.snapshot();
    ro.fill_cache = false;
    const int32_t vnode = Vnode(user);
    const std::string upper = InboxUpperBound(vnode, user);
    const rocksdb::Slice upper_slice(upper);
    {
      rocksdb::ReadOptions bounded = ro;
      bounded.iterate_upper_bound = &upper_slice;
      for (Cf c : {Cf::kInbox, Cf::kArchive}) {
        std::vector<std::string>& keys =
            c == Cf::kInbox ? request.inbox_keys : request.archive_keys;
        std::unique_ptr<rocksdb::Iterator> it(db.db()->NewIterator(bounded, db.cf(c)));
        for (it->Seek(InboxKey(vnode, user, 0)); it->Valid(); it->Next()) {
          const std::optional<InboxKeyParts> parts = ParseInboxKey(View(it->key()));
          if (!parts) return Internal("store: malformed message key");
          request.seen_through = std::max(request.seen_through, parts->id);
          keys.push_back(it->key().ToString());
        }
        if (!it->status().ok()) return FromRocks(it->status(), "store: find messages");
      }
      // Every device's one-time prekeys ('P' for device 1, 'q' device(1) for the others;
      // store_keys.h): all inside the user's key range.
      const std::string first = InboxKey(vnode, user, 0).substr(0, kVnodePrefixBytes + 8);
      std::unique_ptr<rocksdb::Iterator> it(db.db()->NewIterator(bounded, db.cf(Cf::kKeys)));
      for (it->Seek(first); it->Valid() && it->key().starts_with(first); it->Next()) {
        const rocksdb::Slice k = it->key();
        if (k.size() > first.size() && (k[first.size()] == 'P' || k[first.size()] == 'q')) {
          ++out.prekeys;
        }
      }
      if (!it->status().ok()) return FromRocks(it->status(), "store: count prekeys");
    }
    // The user's idempotency keys live under the vnode of each message's owner: one seek
    // per vnode (a seek that lands in a later vnode skips to it).
    std::unique_ptr<rocksdb::Iterator> it(db.db()->NewIterator(ro, db.cf(Cf::kDedup)));
    int32_t v = 0;
    while (v < options_.vnodes) {
      const std::string prefix = DedupKey(v, user, "");  // vnode(4) sender(8)
      it->Seek(prefix);
      if (!it->Valid() || it->key().size() < kVnodePrefixBytes) break;
      const uint32_t at = *DecodeU32(View(it->key()).substr(0, kVnodePrefixBytes));
      if (at >= static_cast<uint32_t>(options_.vnodes)) break;
      if (static_cast<int32_t>(at) > v) {
        v = static_cast<int32_t>(at);
        continue;
      }
      for (; it->Valid() && it->key().starts_with(prefix); it->Next()) {
        request.dedup_keys.push_back(it->key().ToString());
      }
      ++v;
    }
    if (!it->status().ok()) return FromRocks(it->status(), "store: find dedup entries");
  }
  out.messages = request.inbox_keys.size() + request.archive_keys.size();
  out.dedup_entries = request.dedup_keys.size();

  auto promise = std::make_shared<std::promise<Status>>();
  std::future<Status> result = promise->get_future();
  CommitRequest r;
  r.bytes = 64 + 20 * out.messages;
  for (const std::string& k : request.dedup_keys) r.bytes += k.size();
  request.done = [promise](Status s) { promise->set_value(s); };
  r.body = std::move(request);
  Enqueue(std::move(r));
  IRIS_RETURN_IF_ERROR(result.get());
  return out;
}

Result<ArchiveExpiry> InboxStore::Impl::ExpireArchive(int64_t older_than_ms) {
  IRIS_ASSERT_NOT_ON_LOOP_THREAD();  // waits for the group commit's fdatasync
  ArchiveExpiry out;
  if (older_than_ms <= 0) return out;
  // An id is (accepted ms << 16 | logical << 8 | node): every id below this is older.
  const uint64_t cutoff_id = static_cast<uint64_t>(older_than_ms) << 16;
  std::string resume;  // where the next chunk starts; empty: the beginning
  uint64_t last_user = 0;
  int32_t last_vnode = -1;
  for (;;) {
    // Key by key (see UserDeleteRequest on range deletions and memtable insert hints).
    std::vector<KvOp> ops;
    bool done = false;
    {
      const StoreDb::ReadHold db = db_->Hold();
      if (!db.ok()) return StoreDb::ReadHold::Closed();
      rocksdb::ReadOptions ro;
      ro.fill_cache = false;
      std::unique_ptr<rocksdb::Iterator> it(db.db()->NewIterator(ro, db.cf(Cf::kArchive)));
      if (resume.empty()) {
        it->SeekToFirst();
      } else {
        it->Seek(resume);
      }
      while (it->Valid() && ops.size() < kExpireKeysPerBatch) {
        const std::optional<InboxKeyParts> k = ParseInboxKey(View(it->key()));
        if (!k) return Internal("store: malformed archive key");
        if (k->id >= cutoff_id) {
          // The rest of this user's archive is newer (ids ascend): the next user.
          it->Seek(InboxUpperBound(k->vnode, k->user));
          continue;
        }
        if (k->user != last_user || k->vnode != last_vnode) {
          ++out.users;
          last_user = k->user;
          last_vnode = k->vnode;
        }
        ops.push_back(KvOp{Cf::kArchive, it->key().ToString(), std::nullopt});
        ++out.messages;
        it->Next();
      }
      if (!it->status().ok()) return FromRocks(it->status(), "store: scan the archive");
      done = !it->Valid();
      if (!done) resume = it->key().ToString();
    }
    if (!ops.empty()) IRIS_RETURN_IF_ERROR(WriteRecords(std::move(ops)));
    if (done) return out;
    std::lock_guard<std::mutex> lock(retention_mu_);
    if (retention_stop_) return Unavailable("store: stopping");
  }
}

Result<uint64_t> InboxStore::Impl::Checkpoint(const std::string& dir) const {
  const StoreDb::ReadHold db = db_->Hold();
  if (!db.ok()) return StoreDb::ReadHold::Closed();
  rocksdb::Checkpoint* raw = nullptr;
  IRIS_RETURN_IF_ERROR(FromRocks(rocksdb::Checkpoint::Create(db.db(), &raw), "store: checkpoint"));
  const std::unique_ptr<rocksdb::Checkpoint> checkpoint(raw);
  uint64_t sequence = 0;
  // log_size_for_flush 0: flush the memtables first, so the copy is mostly immutable SST
  // files (hard links on the same filesystem) and a short WAL.
  IRIS_RETURN_IF_ERROR(
      FromRocks(checkpoint->CreateCheckpoint(dir, 0, &sequence), "store: checkpoint to " + dir));
  return sequence;
}

void InboxStore::Impl::StartRetention() {
  if (options_.archive_retention_ms <= 0) return;
  retention_thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "iris-retention");
    RetentionLoop();
  });
}

void InboxStore::Impl::RetentionLoop() {
  const auto interval =
      std::chrono::milliseconds(std::max<int64_t>(options_.retention_sweep_interval_ms, 1000));
  for (;;) {
    const int64_t older_than = clock_->WallMillis() - options_.archive_retention_ms;
    const Result<ArchiveExpiry> r = ExpireArchive(older_than);
    if (!r.ok()) {
      obs::LogWarn("archive retention sweep failed", {{"error", r.status().ToString()}});
    } else if (r->messages > 0) {
      obs::LogInfo(
          "archive retention sweep",
          {{"deleted_messages", r->messages}, {"users", r->users}, {"older_than_ms", older_than}});
    }
    std::unique_lock<std::mutex> lock(retention_mu_);
    if (retention_cv_.wait_for(lock, interval, [&] { return retention_stop_; })) return;
  }
}

}  // namespace iris::store
