// The archiver: keeps every inbox at the newest `inbox_cap` messages (RFC-001 §8) by moving
// older ones to the `archive` column family, in the background.
//
// The commit thread schedules a user whenever a batch leaves its inbox over the cap (and
// writes a persistent "archive pending" marker, so a crash does not forget the work). The
// archiver reads the oldest excess messages from a snapshot — never blocking appends — and
// hands the move (delete from `inbox`, put into `archive`, counters, marker) to the commit
// thread as one request, which lands atomically in the next group-committed batch. It waits
// for that batch before reading again, so nothing is moved twice or lost in between.
//
// It also drops the envelopes of devices a user removed (docs/protocol.md appendix 20): the
// settings write that removes a device marks the user ("purge pending") and schedules it;
// the archiver reads the inbox from a snapshot, picks the envelopes addressed to removed
// devices and hands their deletion to the commit thread, in the same one-at-a-time way as
// its moves (so a move and a purge never race on one inbox).
#include <algorithm>
#include <chrono>

#include "common/assert.h"
#include "common/bytes.h"
#include "store/inbox_store_impl.h"

namespace iris::store {
namespace {
constexpr size_t kUsersPerPass = 64;
constexpr size_t kBytesPerPass = 4u << 20;
constexpr size_t kPurgePerPass = 4096;  // envelopes one purge request deletes at most
}  // namespace

void InboxStore::Impl::SchedulePurge(uint64_t user) {
  std::lock_guard<std::mutex> lock(archive_mu_);
  if (archive_stop_) return;
  if (purge_queued_.insert(user).second) {
    purge_queue_.push_back(user);
    archive_cv_.notify_all();
  }
}

void InboxStore::Impl::ScheduleArchive(uint64_t user, uint64_t excess) {
  std::lock_guard<std::mutex> lock(archive_mu_);
  if (archive_stop_) return;
  auto [it, inserted] = archive_excess_.try_emplace(user, excess);
  if (inserted) {
    archive_queue_.push_back(user);
    archive_cv_.notify_all();
  } else {
    it->second = excess;  // the newest count wins
  }
}

bool InboxStore::Impl::WaitArchiverIdle(int64_t timeout_ms) const {
  std::unique_lock<std::mutex> lock(archive_mu_);
  return archive_cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] {
    return archive_queue_.empty() && purge_queue_.empty() && !archive_busy_;
  });
}

Status InboxStore::Impl::ScheduleArchivePending(const std::function<bool(int32_t)>& in_scope) {
  // Runs in Init, before the commit thread, or on it: the counters loaded here seed its cache.
  // Purges left undone (a crash, or a shard taken over): first, so that an error reading
  // the archive markers below does not lose them.
  {
    std::unique_ptr<rocksdb::Iterator> it(
        db_->db()->NewIterator(rocksdb::ReadOptions(), db_->cf(Cf::kMeta)));
    for (int32_t vnode = 0; vnode < options_.vnodes; ++vnode) {
      if (!in_scope(vnode)) continue;
      std::string prefix = VnodePrefix(vnode);
      prefix.push_back(kMetaDevicePurgeTag);
      for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
        const std::optional<uint64_t> user = ParseMetaUserKey(
            std::string_view(it->key().data(), it->key().size()), kMetaDevicePurgeTag);
        if (user) SchedulePurge(*user);
      }
    }
    if (!it->status().ok()) return FromRocks(it->status(), "store: read purge markers");
  }
  std::vector<std::pair<uint64_t, int32_t>> users;  // user, vnode
  {
    // The markers are vnode(4) 'A' user(8): one seek per vnode that has `meta` records
    // (a seek that lands in a later vnode skips to it).
    std::unique_ptr<rocksdb::Iterator> it(
        db_->db()->NewIterator(rocksdb::ReadOptions(), db_->cf(Cf::kMeta)));
    int32_t vnode = 0;
    while (vnode < options_.vnodes) {
      if (!in_scope(vnode)) {
        ++vnode;
        continue;
      }
      std::string prefix = VnodePrefix(vnode);
      prefix.push_back(kMetaArchivePendingTag);
      it->Seek(prefix);
      if (!it->Valid() || it->key().size() < kVnodePrefixBytes) break;
      const uint32_t at_vnode = *DecodeU32(std::string_view(it->key().data(), kVnodePrefixBytes));
      if (at_vnode >= static_cast<uint32_t>(options_.vnodes)) break;  // node-wide records
      const auto at = static_cast<int32_t>(at_vnode);
      if (at > vnode) {
        vnode = at;
        continue;
      }
      for (; it->Valid() && it->key().starts_with(prefix); it->Next()) {
        const std::optional<uint64_t> user = ParseMetaUserKey(
            std::string_view(it->key().data(), it->key().size()), kMetaArchivePendingTag);
        if (user) users.emplace_back(*user, vnode);
      }
      ++vnode;
    }
    if (!it->status().ok()) return FromRocks(it->status(), "store: read archive markers");
  }
  for (const auto& [user, vnode] : users) {
    IRIS_ASSIGN_OR_RETURN(const UserState state, LoadUserState(user, vnode));
    IRIS_ASSIGN_OR_RETURN(std::shared_ptr<const UserSettings> settings,
                          LoadUserSettings(user, vnode));
    user_cache_[user] = CachedUser{state, 0, vnode, std::move(settings)};
    if (state.count > options_.inbox_cap) ScheduleArchive(user, state.count - options_.inbox_cap);
  }
  return Status::Ok();
}

Result<ArchiveMove> InboxStore::Impl::ReadMove(const StoreDb::ReadHold& db, uint64_t user,
                                               uint64_t excess, const rocksdb::Snapshot* snapshot,
                                               bool* more_left) const {
  *more_left = false;
  ArchiveMove move;
  move.user = user;
  rocksdb::ReadOptions ro;
  ro.snapshot = snapshot;
  const int32_t vnode = Vnode(user);
  IRIS_ASSIGN_OR_RETURN(const UserState state, ReadUserState(db, ro, vnode, user));
  const uint64_t n = std::min<uint64_t>(excess, std::max<uint32_t>(options_.archive_chunk, 1));
  *more_left = excess > n;

  ro.fill_cache = false;
  const std::string upper = InboxUpperBound(vnode, user);
  const rocksdb::Slice upper_slice(upper);
  ro.iterate_upper_bound = &upper_slice;
  std::unique_ptr<rocksdb::Iterator> it(db.db()->NewIterator(ro, db.cf(Cf::kInbox)));
  // archived_through is written with every move, so everything up to it is gone already.
  const uint64_t start =
      state.archived_through == UINT64_MAX ? UINT64_MAX : state.archived_through + 1;
  for (it->Seek(InboxKey(vnode, user, start)); it->Valid() && move.entries.size() < n; it->Next()) {
    const std::optional<InboxKeyParts> parts =
        ParseInboxKey(std::string_view(it->key().data(), it->key().size()));
    if (!parts) return Internal("store: malformed inbox key");
    move.entries.emplace_back(it->key().ToString(), it->value().ToString());
    move.last_id = parts->id;
  }
  if (!it->status().ok()) return FromRocks(it->status(), "store: archiver read inbox");
  if (move.entries.size() < n) *more_left = false;  // the newest are not committed yet
  return move;
}

Result<ArchiveMove> InboxStore::Impl::ReadPurge(const StoreDb::ReadHold& db, uint64_t user,
                                                const rocksdb::Snapshot* snapshot) const {
  ArchiveMove purge;
  purge.user = user;
  purge.purge = true;
  rocksdb::ReadOptions ro;
  ro.snapshot = snapshot;
  const int32_t vnode = Vnode(user);
  std::string v;
  // No marker: done already, the account was deleted, or this node does not hold the list
  // that set it. Nothing to submit (purge_done stays false, no entries).
  rocksdb::Status s = db.db()->Get(ro, db.cf(Cf::kMeta), MetaDevicePurgeKey(vnode, user), &v);
  if (s.IsNotFound()) return purge;
  if (!s.ok()) return FromRocks(s, "store: purge read marker");
  purge.purge_done = true;
  s = db.db()->Get(ro, db.cf(Cf::kMeta), MetaSettingsKey(vnode, user), &v);
  DeviceMask removed = 0;
  if (s.ok()) {
    const std::optional<UserSettings> settings = DecodeUserSettings(v);
    if (!settings) return Internal("store: malformed settings of user " + std::to_string(user));
    removed = settings->removed_devices;
  } else if (!s.IsNotFound()) {
    return FromRocks(s, "store: purge read settings");
  }
  purge.purge_mask = removed;
  if (removed == 0) return purge;  // nothing to drop (a list that was never written)
  IRIS_ASSIGN_OR_RETURN(const UserState state, ReadUserState(db, ro, vnode, user));
  ro.fill_cache = false;
  const std::string upper = InboxUpperBound(vnode, user);
  const rocksdb::Slice upper_slice(upper);
  ro.iterate_upper_bound = &upper_slice;
  std::unique_ptr<rocksdb::Iterator> it(db.db()->NewIterator(ro, db.cf(Cf::kInbox)));
  const uint64_t start =
      state.archived_through == UINT64_MAX ? UINT64_MAX : state.archived_through + 1;
  v1::Envelope e;
  for (it->Seek(InboxKey(vnode, user, start)); it->Valid(); it->Next()) {
    if (!e.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      IRIS_BUG("store: a malformed inbox entry (left in place by the device purge)");
      continue;
    }
    if (e.recipient_device() == 0 || !HasDevice(removed, e.recipient_device())) continue;
    if (purge.entries.size() == kPurgePerPass) {
      purge.purge_done = false;  // more after these: the next pass
      break;
    }
    purge.entries.emplace_back(it->key().ToString(), std::string());
  }
  if (!it->status().ok()) return FromRocks(it->status(), "store: purge read inbox");
  return purge;
}

void InboxStore::Impl::ArchiverLoop() {
  for (;;) {
    std::vector<std::pair<uint64_t, uint64_t>> users;  // user, excess
    std::vector<uint64_t> purges;
    {
      std::unique_lock<std::mutex> lock(archive_mu_);
      archive_cv_.wait(
          lock, [&] { return archive_stop_ || !archive_queue_.empty() || !purge_queue_.empty(); });
      if (archive_stop_) break;
      while (!purge_queue_.empty() && purges.size() < kUsersPerPass) {
        purges.push_back(purge_queue_.front());
        purge_queue_.pop_front();
        purge_queued_.erase(purges.back());
      }
      while (!archive_queue_.empty() && users.size() < kUsersPerPass) {
        const uint64_t u = archive_queue_.front();
        archive_queue_.pop_front();
        users.emplace_back(u, archive_excess_[u]);
        archive_excess_.erase(u);
      }
      archive_busy_ = true;
    }

    ArchiveRequest request;
    std::vector<std::pair<uint64_t, uint64_t>> again;
    std::vector<uint64_t> purge_again;
    size_t bytes = 0;
    Status error;
    {
      const StoreDb::ReadHold db = db_->Hold();  // released before waiting for the commit
      if (!db.ok()) {
        error = StoreDb::ReadHold::Closed();
        again = users;
        users.clear();
      }
      const rocksdb::Snapshot* snapshot = db.ok() ? db.db()->GetSnapshot() : nullptr;
      if (!db.ok()) {
        purge_again = purges;
        purges.clear();
      }
      for (size_t i = 0; i < purges.size(); ++i) {
        const uint64_t user = purges[i];
        if (bytes >= kBytesPerPass) {
          purge_again.insert(purge_again.end(), purges.begin() + static_cast<std::ptrdiff_t>(i),
                             purges.end());
          break;
        }
        Result<ArchiveMove> purge = ReadPurge(db, user, snapshot);
        if (!purge.ok()) {
          error = purge.status();
          purge_again.push_back(user);
          continue;
        }
        if (!purge->purge_done && purge->entries.empty()) continue;  // no marker: nothing to do
        if (!purge->purge_done) purge_again.push_back(user);
        for (const auto& [k, unused] : purge->entries) bytes += k.size();
        request.moves.push_back(std::move(purge).value());
      }
      // A user purged in this pass is moved in the next one: its move read from the same
      // snapshot could name envelopes the purge deletes.
      std::vector<std::pair<uint64_t, uint64_t>> movable;
      for (const auto& entry : users) {
        const bool purged =
            std::any_of(request.moves.begin(), request.moves.end(),
                        [&](const ArchiveMove& m) { return m.purge && m.user == entry.first; });
        (purged ? again : movable).push_back(entry);
      }
      users = std::move(movable);
      for (size_t i = 0; i < users.size(); ++i) {
        if (bytes >= kBytesPerPass) {
          again.insert(again.end(), users.begin() + static_cast<std::ptrdiff_t>(i), users.end());
          break;
        }
        const auto [user, excess] = users[i];
        bool more = false;
        Result<ArchiveMove> move = ReadMove(db, user, excess, snapshot, &more);
        if (!move.ok()) {
          error = move.status();
          again.push_back(users[i]);
          continue;
        }
        if (more) again.emplace_back(user, excess - move->entries.size());
        if (move->entries.empty()) continue;
        for (const auto& [k, val] : move->entries) bytes += k.size() + val.size();
        request.moves.push_back(std::move(move).value());
      }
      if (snapshot != nullptr) db.db()->ReleaseSnapshot(snapshot);
    }

    if (!request.moves.empty()) {
      auto promise = std::make_shared<std::promise<Status>>();
      std::future<Status> done = promise->get_future();
      request.done = [promise](Status s) { promise->set_value(s); };
      CommitRequest r;
      r.bytes = bytes;
      r.body = std::move(request);
      Enqueue(std::move(r));
      const Status s = done.get();
      if (!s.ok()) {
        error = s;
        again.insert(again.end(), users.begin(), users.end());  // nothing was applied: later
        // A replicated node may have lost the shard (its new primary purges after the take-
        // over, from the marker): its purges are not retried here.
        purge_again = options_.replicate ? std::vector<uint64_t>() : purges;
      }
    }

    std::unique_lock<std::mutex> lock(archive_mu_);
    for (const auto& [u, excess] : again) {
      // A newer count from the commit thread, if any, wins over this estimate.
      if (archive_excess_.try_emplace(u, excess).second) archive_queue_.push_back(u);
    }
    for (uint64_t u : purge_again) {
      if (purge_queued_.insert(u).second) purge_queue_.push_back(u);
    }
    if (!error.ok() && !archive_stop_) {
      // Disk full or an I/O error: back off instead of spinning; appends are unaffected.
      archive_cv_.wait_for(
          lock, std::chrono::milliseconds(std::max<int64_t>(options_.resume_interval_ms, 50)),
          [&] { return archive_stop_; });
    }
    archive_busy_ = false;
    archive_cv_.notify_all();
  }
  std::lock_guard<std::mutex> lock(archive_mu_);
  archive_busy_ = false;
  archive_cv_.notify_all();
}

}  // namespace iris::store
