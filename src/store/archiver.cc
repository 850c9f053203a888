// The archiver: keeps every inbox at the newest `inbox_cap` messages (RFC-001 §8) by moving
// older ones to the `archive` column family, in the background.
//
// The commit thread schedules a user whenever a batch leaves its inbox over the cap (and
// writes a persistent "archive pending" marker, so a crash does not forget the work). The
// archiver reads the oldest excess messages from a snapshot — never blocking appends — and
// hands the move (delete from `inbox`, put into `archive`, counters, marker) to the commit
// thread as one request, which lands atomically in the next group-committed batch. It waits
// for that batch before reading again, so nothing is moved twice or lost in between.
#include <chrono>

#include "common/assert.h"
#include "common/bytes.h"
#include "store/inbox_store_impl.h"

namespace iris::store {
namespace {
constexpr size_t kUsersPerPass = 64;
constexpr size_t kBytesPerPass = 4u << 20;
}  // namespace

void InboxStore::Impl::ScheduleArchive(uint64_t user) {
  std::lock_guard<std::mutex> lock(archive_mu_);
  if (archive_stop_) return;
  if (archive_queued_.insert(user).second) {
    archive_queue_.push_back(user);
    archive_cv_.notify_all();
  }
}

bool InboxStore::Impl::WaitArchiverIdle(int64_t timeout_ms) const {
  std::unique_lock<std::mutex> lock(archive_mu_);
  return archive_cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                              [&] { return archive_queue_.empty() && !archive_busy_; });
}

void InboxStore::Impl::ResumeInterruptedArchiving() {
  rocksdb::ReadOptions ro;
  std::unique_ptr<rocksdb::Iterator> it(db_->db()->NewIterator(ro, db_->cf(Cf::kMeta)));
  const std::string prefix(1, kMetaArchivePendingPrefix);
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    if (it->key().size() != 9) continue;
    ScheduleArchive(GetBigEndian64(it->key().data() + 1));
  }
}

Result<ArchiveMove> InboxStore::Impl::ReadMove(uint64_t user, const rocksdb::Snapshot* snapshot,
                                               bool* more_left) const {
  *more_left = false;
  rocksdb::ReadOptions ro;
  ro.snapshot = snapshot;
  std::string v;
  const rocksdb::Status s = db_->db()->Get(ro, db_->cf(Cf::kMeta), MetaUserStateKey(user), &v);
  ArchiveMove move;
  move.user = user;
  if (s.IsNotFound()) return move;
  if (!s.ok()) return FromRocks(s, "store: archiver read inbox state");
  const std::optional<UserState> state = DecodeUserState(v);
  if (!state) return Internal("store: malformed inbox state");
  if (state->count <= options_.inbox_cap) return move;
  const uint64_t excess = state->count - options_.inbox_cap;
  const uint64_t n = std::min<uint64_t>(excess, std::max<uint32_t>(options_.archive_chunk, 1));
  *more_left = excess > n;

  ro.fill_cache = false;
  const std::string upper = InboxUpperBound(user);
  const rocksdb::Slice upper_slice(upper);
  ro.iterate_upper_bound = &upper_slice;
  std::unique_ptr<rocksdb::Iterator> it(db_->db()->NewIterator(ro, db_->cf(Cf::kInbox)));
  const uint64_t start =
      state->archived_through == UINT64_MAX ? UINT64_MAX : state->archived_through + 1;
  for (it->Seek(InboxKey(user, start)); it->Valid() && move.entries.size() < n; it->Next()) {
    const std::optional<InboxKeyParts> parts =
        ParseInboxKey(std::string_view(it->key().data(), it->key().size()));
    if (!parts) return Internal("store: malformed inbox key");
    move.entries.emplace_back(it->key().ToString(), it->value().ToString());
    move.last_id = parts->id;
  }
  if (!it->status().ok()) return FromRocks(it->status(), "store: archiver read inbox");
  if (move.entries.size() < n) {
    // The counter says more than the inbox holds: never expected. Move what exists.
    IRIS_BUG("store: inbox counter exceeds the inbox");
    *more_left = false;
  }
  return move;
}

void InboxStore::Impl::ArchiverLoop() {
  for (;;) {
    std::vector<uint64_t> users;
    {
      std::unique_lock<std::mutex> lock(archive_mu_);
      archive_cv_.wait(lock, [&] { return archive_stop_ || !archive_queue_.empty(); });
      if (archive_stop_) break;
      while (!archive_queue_.empty() && users.size() < kUsersPerPass) {
        const uint64_t u = archive_queue_.front();
        archive_queue_.pop_front();
        archive_queued_.erase(u);
        users.push_back(u);
      }
      archive_busy_ = true;
    }

    ArchiveRequest request;
    std::vector<uint64_t> again;
    size_t bytes = 0;
    Status error;
    const rocksdb::Snapshot* snapshot = db_->db()->GetSnapshot();
    for (size_t i = 0; i < users.size(); ++i) {
      if (bytes >= kBytesPerPass) {
        again.insert(again.end(), users.begin() + static_cast<std::ptrdiff_t>(i), users.end());
        break;
      }
      bool more = false;
      Result<ArchiveMove> move = ReadMove(users[i], snapshot, &more);
      if (!move.ok()) {
        error = move.status();
        again.push_back(users[i]);
        continue;
      }
      if (more) again.push_back(users[i]);
      if (move->entries.empty()) continue;
      for (const auto& [k, val] : move->entries) bytes += k.size() + val.size();
      request.moves.push_back(std::move(move).value());
    }
    db_->db()->ReleaseSnapshot(snapshot);

    if (!request.moves.empty()) {
      size_t moved = 0;
      for (const ArchiveMove& m : request.moves) moved += m.entries.size();
      auto promise = std::make_shared<std::promise<Status>>();
      std::future<Status> done = promise->get_future();
      request.done = [promise](Status s) { promise->set_value(s); };
      CommitRequest r;
      r.bytes = bytes;
      r.body = std::move(request);
      Enqueue(std::move(r));
      const Status s = done.get();
      if (s.ok()) {
        archived_.fetch_add(moved, std::memory_order_relaxed);
      } else {
        error = s;
        again = users;  // nothing was applied: retry the whole pass later
      }
    }

    std::unique_lock<std::mutex> lock(archive_mu_);
    for (uint64_t u : again) {
      if (archive_queued_.insert(u).second) archive_queue_.push_back(u);
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
