// Group commit: the commit queue and the commit thread.
//
// The commit thread takes everything queued while the previous write+sync ran (bounded by
// max_batch_requests / max_batch_bytes), builds ONE WriteBatch — envelopes with their HLC
// ids, dedup entries, per-user counters, archive moves, small records and the HLC
// high-water mark — writes it with sync=true, and only then answers every request of the
// batch and calls the commit listener. A batch that fails to write is rolled back in
// memory (counters reloaded, hot dedup entries forgotten) and every request in it fails
// with the same status; RocksDB applies a WriteBatch atomically, so nothing of it is
// visible.
#include <sys/statvfs.h>

#include <chrono>

#include "store/inbox_store_impl.h"

namespace iris::store {

void InboxStore::Impl::Fail(CommitRequest& request, const Status& status) {
  std::visit(
      [&](auto& r) {
        if (r.done) r.done(status);
      },
      request.body);
}

void InboxStore::Impl::Enqueue(CommitRequest request) {
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    if (accepting_) {
      queue_.push_back(std::move(request));
      queue_cv_.notify_one();
      return;
    }
  }
  Fail(request, Unavailable("store: stopping"));
}

void InboxStore::Impl::SetListener(std::function<void(const std::vector<v1::Envelope>&)> l) {
  std::lock_guard<std::mutex> lock(queue_mu_);
  listener_ = std::move(l);
  listener_changed_ = true;
}

Status InboxStore::Impl::WriteRecords(std::vector<KvOp> ops) {
  auto promise = std::make_shared<std::promise<Status>>();
  std::future<Status> result = promise->get_future();
  CommitRequest r;
  for (const KvOp& op : ops) r.bytes += op.key.size() + (op.value ? op.value->size() : 0);
  r.body = RecordWriteRequest{std::move(ops), [promise](Status s) { promise->set_value(s); }};
  Enqueue(std::move(r));
  return result.get();
}

void InboxStore::Impl::CommitLoop() {
  std::vector<CommitRequest> taken;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(queue_mu_);
      queue_cv_.wait(lock, [&] { return !queue_.empty() || stopping_; });
      if (queue_.empty()) break;  // stopping and drained
      if (listener_changed_) {
        active_listener_ = listener_;
        listener_changed_ = false;
      }
      size_t bytes = 0;
      while (!queue_.empty() && taken.size() < options_.max_batch_requests &&
             (taken.empty() || bytes + queue_.front().bytes <= options_.max_batch_bytes)) {
        bytes += queue_.front().bytes;
        taken.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    CommitBatch(taken);
    taken.clear();
  }
}

Result<UserState*> InboxStore::Impl::TouchUser(uint64_t user) {
  auto it = user_cache_.find(user);
  if (it == user_cache_.end()) {
    std::string v;
    const rocksdb::Status s =
        db_->db()->Get(rocksdb::ReadOptions(), db_->cf(Cf::kMeta), MetaUserStateKey(user), &v);
    UserState state;
    if (s.ok()) {
      const std::optional<UserState> decoded = DecodeUserState(v);
      if (!decoded) return Internal("store: malformed inbox state of user " + std::to_string(user));
      state = *decoded;
    } else if (!s.IsNotFound()) {
      return FromRocks(s, "store: read inbox state");
    }
    it = user_cache_.emplace(user, state).first;
  }
  touched_.try_emplace(user, it->second);
  return &it->second;
}

void InboxStore::Impl::BuildAppend(AppendRequest& a) {
  std::string dedup_key;
  if (!a.idempotency_key.empty()) {
    dedup_key = DedupKey(a.sender, a.idempotency_key);
    Result<std::optional<DedupIndex::Hit>> hit = dedup_->Lookup(dedup_key);
    if (!hit.ok()) {
      completions_.push_back(Completion{std::move(a.done), nullptr, std::nullopt, hit.status()});
      return;
    }
    if (hit->has_value()) {
      const DedupIndex::Hit& h = **hit;
      Completion c{
          std::move(a.done), nullptr,
          AppendOutcome{h.entry.first_id, static_cast<uint64_t>(h.entry.accepted_ms), true},
          Status::Ok()};
      // A retry of a send made earlier in this very batch is durable only with the batch.
      c.needs_commit = h.batch_seq == batch_seq_;
      completions_.push_back(std::move(c));
      return;
    }
  }
  // Load every recipient's counters before adding anything, so a failed read leaves the
  // batch without a partial request.
  for (const v1::Envelope& e : a.envelopes) {
    Result<UserState*> st = TouchUser(e.recipient());
    if (!st.ok()) {
      completions_.push_back(Completion{std::move(a.done), nullptr, std::nullopt, st.status()});
      return;
    }
  }
  const uint64_t now = static_cast<uint64_t>(std::max<int64_t>(batch_now_ms_, 0));
  uint64_t first_id = 0;
  for (size_t i = 0; i < a.envelopes.size(); ++i) {
    v1::Envelope& e = a.envelopes[i];
    const uint64_t id = hlc_.Next();
    if (i == 0) first_id = id;
    e.set_id(id);
    e.set_sent_at_ms(now);
    EncodeStoredEnvelope(id, now, a.bodies[i], &scratch_);
    batch_.Put(db_->cf(Cf::kInbox), InboxKey(e.recipient(), id), scratch_).PermitUncheckedError();
    ++user_cache_[e.recipient()].count;
  }
  if (!dedup_key.empty()) {
    const DedupEntry entry{first_id, static_cast<int64_t>(now)};
    batch_.Put(db_->cf(Cf::kDedup), dedup_key, EncodeDedupEntry(entry)).PermitUncheckedError();
    dedup_->Remember(dedup_key, entry, batch_seq_);
    remembered_.push_back(std::move(dedup_key));
  }
  batch_has_writes_ = true;
  completions_.push_back(
      Completion{std::move(a.done), nullptr, AppendOutcome{first_id, now, false}, Status::Ok()});
  batch_envelopes_ += a.envelopes.size();
  if (active_listener_) {
    for (v1::Envelope& e : a.envelopes) stored_.push_back(std::move(e));
  }
}

void InboxStore::Impl::BuildRecordWrite(RecordWriteRequest& w) {
  for (const KvOp& op : w.ops) {
    if (op.value) {
      batch_.Put(db_->cf(op.cf), op.key, *op.value).PermitUncheckedError();
    } else {
      batch_.Delete(db_->cf(op.cf), op.key).PermitUncheckedError();
    }
  }
  batch_has_writes_ = batch_has_writes_ || !w.ops.empty();
  completions_.push_back(Completion{nullptr, std::move(w.done), std::nullopt, Status::Ok()});
}

void InboxStore::Impl::BuildArchive(ArchiveRequest& r) {
  for (const ArchiveMove& m : r.moves) {
    if (!TouchUser(m.user).ok()) {
      completions_.push_back(Completion{nullptr, std::move(r.done), std::nullopt,
                                        Internal("store: cannot read inbox state")});
      return;
    }
  }
  for (const ArchiveMove& m : r.moves) {
    UserState& st = user_cache_[m.user];
    for (const auto& [key, value] : m.entries) {
      batch_.Delete(db_->cf(Cf::kInbox), key).PermitUncheckedError();
      batch_.Put(db_->cf(Cf::kArchive), key, value).PermitUncheckedError();
    }
    st.count -= std::min<uint64_t>(st.count, m.entries.size());
    st.archived_through = std::max(st.archived_through, m.last_id);
    batch_has_writes_ = batch_has_writes_ || !m.entries.empty();
  }
  completions_.push_back(Completion{nullptr, std::move(r.done), std::nullopt, Status::Ok()});
}

std::optional<std::string> InboxStore::Impl::ShortOfSpaceForResume() const {
  struct statvfs fs {};
  if (statvfs(options_.path.c_str(), &fs) != 0) return std::nullopt;  // unknown: try
  const uint64_t free_bytes = static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize;
  uint64_t memtables = 0;
  if (!db_->db()->GetAggregatedIntProperty("rocksdb.cur-size-all-mem-tables", &memtables)) {
    memtables = 0;
  }
  // Room to flush every memtable twice over (SST plus a new MANIFEST and WAL), plus slack.
  const uint64_t needed = 2 * memtables + (4u << 20);
  if (free_bytes >= needed) return std::nullopt;
  return std::to_string(free_bytes) + " bytes free, " + std::to_string(needed) +
         " needed to resume";
}

Status InboxStore::Impl::EnsureWritable() {
  if (!needs_resume_) return Status::Ok();
  const int64_t mono = clock_->MonoMillis();
  if (options_.resume_interval_ms > 0 &&
      mono - last_resume_mono_ms_ < options_.resume_interval_ms) {
    return last_write_error_;
  }
  last_resume_mono_ms_ = mono;
  // After a background error (disk full, failed WAL write) RocksDB refuses writes until
  // Resume() succeeds: it flushes the memtables and switches to a new WAL, which needs the
  // space back. Resume() on a disk that is still full can block inside RocksDB (its flush
  // fails during recovery), so it is only tried once there is room for the flush.
  if (last_write_error_.code() == StatusCode::kStorageFull) {
    const std::optional<std::string> short_of_space = ShortOfSpaceForResume();
    if (short_of_space) {
      last_write_error_ = StorageFull("store: disk full (" + *short_of_space + ")");
      return last_write_error_;
    }
  }
  const rocksdb::Status s = db_->db()->Resume();
  if (!s.ok()) {
    if (s.IsNoSpace() || last_write_error_.code() == StatusCode::kStorageFull) {
      last_write_error_ = StorageFull("store: disk full (resume: " + s.ToString() + ")");
    } else {
      last_write_error_ = FromRocks(s, "store: resume after write error");
    }
    return last_write_error_;
  }
  needs_resume_ = false;
  last_write_error_ = Status::Ok();
  return Status::Ok();
}

void InboxStore::Impl::CommitBatch(std::vector<CommitRequest>& requests) {
  ++batch_seq_;
  batch_.Clear();
  batch_has_writes_ = false;
  touched_.clear();
  remembered_.clear();
  completions_.clear();
  stored_.clear();
  batch_envelopes_ = 0;
  batch_now_ms_ = clock_->WallMillis();

  for (CommitRequest& r : requests) {
    std::visit(
        [&](auto& body) {
          using T = std::decay_t<decltype(body)>;
          if constexpr (std::is_same_v<T, AppendRequest>) {
            BuildAppend(body);
          } else if constexpr (std::is_same_v<T, RecordWriteRequest>) {
            BuildRecordWrite(body);
          } else {
            BuildArchive(body);
          }
        },
        r.body);
  }

  // Per-user counters and the archive-pending markers of users that crossed the cap.
  std::vector<uint64_t> over_cap;
  for (const auto& [user, before] : touched_) {
    const UserState& now = user_cache_[user];
    batch_.Put(db_->cf(Cf::kMeta), MetaUserStateKey(user), EncodeUserState(now))
        .PermitUncheckedError();
    const bool was_over = before.count > options_.inbox_cap;
    const bool is_over = now.count > options_.inbox_cap;
    if (is_over && !was_over) {
      batch_.Put(db_->cf(Cf::kMeta), MetaArchivePendingKey(user), "").PermitUncheckedError();
    } else if (!is_over && was_over) {
      batch_.Delete(db_->cf(Cf::kMeta), MetaArchivePendingKey(user)).PermitUncheckedError();
    }
    if (is_over) over_cap.push_back(user);
  }

  Status write_status;
  if (batch_has_writes_) {
    batch_.Put(db_->cf(Cf::kMeta), MetaHlcKey(), EncodeU64(hlc_.Last())).PermitUncheckedError();
    write_status = EnsureWritable();
    if (write_status.ok()) {
      rocksdb::WriteOptions wo;
      wo.sync = true;
      const auto start = std::chrono::steady_clock::now();
      const rocksdb::Status s = db_->db()->Write(wo, &batch_);
      const int64_t nanos = std::chrono::duration_cast<std::chrono::nanoseconds>(
                                std::chrono::steady_clock::now() - start)
                                .count();
      if (options_.write_latency_observer) options_.write_latency_observer(nanos);
      if (!s.ok()) {
        needs_resume_ = true;
        last_write_error_ = FromRocks(s, "store: write");
        write_status = last_write_error_;
      }
    }
    if (write_status.ok()) {
      batches_.fetch_add(1, std::memory_order_relaxed);
      envelopes_.fetch_add(batch_envelopes_, std::memory_order_relaxed);
    } else {
      write_errors_.fetch_add(1, std::memory_order_relaxed);
      if (write_status.code() == StatusCode::kStorageFull) {
        storage_full_errors_.fetch_add(1, std::memory_order_relaxed);
      }
    }
  }

  if (!write_status.ok()) {
    // Nothing of this batch was applied: forget what it changed in memory.
    for (const auto& [user, before] : touched_) user_cache_[user] = before;
    for (const std::string& k : remembered_) dedup_->Forget(k);
    stored_.clear();
  } else {
    // Schedule before answering, so a caller that saw its append complete also sees the
    // archiver busy (WaitArchiverIdle) until the inbox is back under the cap.
    for (uint64_t user : over_cap) ScheduleArchive(user);
  }

  // Count first, so a caller that saw its answer also sees it in Stats().
  uint64_t appended = 0;
  uint64_t dups = 0;
  for (Completion& c : completions_) {
    if (c.append_done && c.error.ok() && (write_status.ok() || !c.needs_commit)) {
      ++(c.outcome->duplicate ? dups : appended);
    }
  }
  appends_.fetch_add(appended, std::memory_order_relaxed);
  duplicates_.fetch_add(dups, std::memory_order_relaxed);
  for (Completion& c : completions_) {
    Status s = c.error;
    if (s.ok() && c.needs_commit) s = write_status;
    if (c.append_done) {
      if (s.ok()) {
        c.append_done(*c.outcome);
      } else {
        c.append_done(s);
      }
    } else if (c.status_done) {
      c.status_done(s);
    }
  }
  if (!stored_.empty()) active_listener_(stored_);

  dedup_->Evict();
  if (user_cache_.size() > options_.user_cache_max_entries) {
    // Between batches every cached counter equals what `meta` holds: any can be dropped.
    auto it = user_cache_.begin();
    while (it != user_cache_.end() &&
           user_cache_.size() > options_.user_cache_max_entries * 9 / 10) {
      it = user_cache_.erase(it);
    }
  }
}

}  // namespace iris::store
