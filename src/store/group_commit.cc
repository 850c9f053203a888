// Group commit: the commit queue, the commit thread and the sync thread.
//
// The commit thread takes everything queued while the sync thread wrote the previous batch
// (bounded by max_batch_requests / max_batch_bytes) and builds ONE WriteBatch — envelopes
// with their HLC ids, dedup entries, per-user counters, archive moves, small records and
// the HLC high-water mark. The sync thread writes it with sync=true, and only then answers
// every request of the batch and calls the commit listener; meanwhile the commit thread
// builds the next batch. A batch that fails to write is rolled back in memory (counters
// restored, hot dedup entries forgotten) together with every batch built after it, and
// every request in them fails with the same status; RocksDB applies a WriteBatch
// atomically, so nothing of it is visible.
//
// Per-user counters are written to `meta` only every kPersistEvery appends to a user (and
// whenever the user crosses the cap or an archive move applies), not on every append:
// loading a user counts the inbox entries newer than the persisted `counted_through`.
#include <sys/statvfs.h>

#include <algorithm>
#include <chrono>

#include "common/assert.h"
#include "common/bytes.h"
#include "obs/log.h"
#include "store/inbox_store_impl.h"
#include "store/shard_batch.h"

namespace iris::store {
namespace {
constexpr uint32_t kPersistEvery = 64;
}  // namespace

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
  IRIS_ASSERT_NOT_ON_LOOP_THREAD();  // waits for the group commit's fdatasync
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
      // Take requests only once the sync thread has picked up the previous batch: what
      // arrives while it writes goes into the next batch, built meanwhile — the batch fills
      // while the previous one syncs. A replicated batch is one round trip to the backups
      // (many local syncs long), so there the next batch is built only once the sync thread
      // is idle: a batch built early would wait a whole round in the slot, and what arrived
      // during that round a second one.
      std::unique_lock<std::mutex> lock(pipe_mu_);
      pipe_cv_.wait(lock, [&] {
        return slot_ == nullptr && !(options_.replicate && sync_busy_);
      });
    }
    {
      std::unique_lock<std::mutex> lock(queue_mu_);
      auto ready = [&] { return !queue_.empty() || stopping_ || rollback_due_; };
      if (rollback_due_) {
        // A write failed: restore the state now (and start recovering) even without writes.
        rollback_due_ = false;
        lock.unlock();
        RollBackFailedBatches();
        continue;
      }
      if (needs_recovery_) {
        // Blocked by a write error: retry recovery now and then even without writes, so
        // reads come back too when the database had to be closed.
        const int64_t interval = std::max<int64_t>(options_.resume_interval_ms, 100);
        if (!queue_cv_.wait_for(lock, std::chrono::milliseconds(interval), ready)) {
          lock.unlock();
          EnsureWritable().IgnoreError();
          continue;
        }
      } else {
        queue_cv_.wait(lock, ready);
      }
      if (rollback_due_) continue;
      if (queue_.empty()) break;  // stopping and drained
      if (listener_changed_) {
        active_listener_ = listener_;
        listener_changed_ = false;
      }
      size_t bytes = 0;
      while (!queue_.empty() && taken.size() < options_.max_batch_requests &&
             (taken.empty() || bytes + queue_.front().bytes <= options_.max_batch_bytes)) {
        // A user delete is a batch of its own (see BuildUserDelete), and so is a shard
        // take-over (see BuildShardTakeOver).
        if (!taken.empty() && (std::holds_alternative<UserDeleteRequest>(queue_.front().body) ||
                               std::holds_alternative<ShardTakeOverRequest>(queue_.front().body))) {
          break;
        }
        bytes += queue_.front().bytes;
        taken.push_back(std::move(queue_.front()));
        queue_.pop_front();
        // A vnode delete ends its batch: nothing after it may be built on counters the
        // database does not show yet (see BuildVnodeDelete).
        if (std::holds_alternative<VnodeDeleteRequest>(taken.back().body) ||
            std::holds_alternative<UserDeleteRequest>(taken.back().body) ||
            std::holds_alternative<ShardTakeOverRequest>(taken.back().body)) {
          break;
        }
      }
    }
    CommitBatch(taken);
    taken.clear();
  }
  {
    std::lock_guard<std::mutex> lock(pipe_mu_);
    sync_stop_ = true;
  }
  pipe_cv_.notify_all();
}

void InboxStore::Impl::HandOff(std::unique_ptr<BuiltBatch> batch) {
  inflight_users_[batch->seq % 2].clear();
  for (const auto& [user, before] : batch->touched) inflight_users_[batch->seq % 2].push_back(user);
  std::unique_lock<std::mutex> lock(pipe_mu_);
  pipe_cv_.wait(lock, [&] { return slot_ == nullptr; });
  slot_ = std::move(batch);
  pipe_cv_.notify_all();
}

void InboxStore::Impl::SyncLoop() {
  for (;;) {
    std::unique_ptr<BuiltBatch> b;
    {
      std::unique_lock<std::mutex> lock(pipe_mu_);
      pipe_cv_.wait(lock, [&] { return slot_ != nullptr || sync_stop_; });
      if (slot_ == nullptr) return;  // stopping and drained
      b = std::move(slot_);
      sync_busy_ = true;
    }
    pipe_cv_.notify_all();  // the slot is free for the next batch
    WriteAndAnswer(*b);
    {
      std::lock_guard<std::mutex> lock(pipe_mu_);
      sync_busy_ = false;
      // A failed batch goes back for rollback; a written one is released here, off the
      // commit thread (its envelopes and strings are many small frees).
      if (!pipe_error_.ok()) returned_.push_back(std::move(b));
    }
    pipe_cv_.notify_all();
    b.reset();
  }
}

void InboxStore::Impl::RollBackFailedBatches() {
  std::vector<std::unique_ptr<BuiltBatch>> failed;
  Status error;
  bool replicated = false;
  {
    std::unique_lock<std::mutex> lock(pipe_mu_);
    if (pipe_error_.ok()) return;
    // Every batch handed off has to come back before the state can be restored.
    pipe_cv_.wait(lock, [&] { return slot_ == nullptr && !sync_busy_; });
    failed.swap(returned_);
    error = pipe_error_;
    pipe_error_ = Status::Ok();
    replicated = pipe_error_replicated_;
    pipe_error_replicated_ = false;
  }
  if (replicated) {
    // Parts of other shards may have been committed (and applied) despite the refusal, so
    // the state before the batches is not what the database holds: the users are reloaded
    // from it. Nothing is wrong with this database: no reopen.
    for (const auto& b : failed) {
      for (const auto& [user, before] : b->touched) user_cache_.erase(user);
      for (const std::string& k : b->remembered) dedup_->Forget(k);
    }
    return;
  }
  // Newest first: each batch's "before" state is the state after the ones older than it.
  std::sort(failed.begin(), failed.end(),
            [](const auto& a, const auto& b) { return a->seq > b->seq; });
  for (const auto& b : failed) {
    for (const auto& [user, before] : b->touched) user_cache_[user] = before;
    for (const std::string& k : b->remembered) dedup_->Forget(k);
  }
  needs_recovery_ = true;
  last_write_error_ = error;
}

Result<UserState> InboxStore::Impl::LoadUserState(uint64_t user, int32_t vnode) const {
  rocksdb::ReadOptions ro;
  std::string v;
  const rocksdb::Status s =
      db_->db()->Get(ro, db_->cf(Cf::kMeta), MetaUserStateKey(vnode, user), &v);
  UserState state;
  if (s.ok()) {
    const std::optional<UserState> decoded = DecodeUserState(v);
    if (!decoded) return Internal("store: malformed inbox state of user " + std::to_string(user));
    state = *decoded;
  } else if (!s.IsNotFound()) {
    return FromRocks(s, "store: read inbox state");
  }
  // Count what was appended after the state was last written.
  const uint64_t from = std::max(state.counted_through, state.archived_through);
  if (from == UINT64_MAX) return state;
  const std::string upper = InboxUpperBound(vnode, user);
  const rocksdb::Slice upper_slice(upper);
  ro.iterate_upper_bound = &upper_slice;
  std::unique_ptr<rocksdb::Iterator> it(db_->db()->NewIterator(ro, db_->cf(Cf::kInbox)));
  for (it->Seek(InboxKey(vnode, user, from + 1)); it->Valid(); it->Next()) {
    const std::optional<InboxKeyParts> parts =
        ParseInboxKey(std::string_view(it->key().data(), it->key().size()));
    if (!parts) return Internal("store: malformed inbox key");
    ++state.count;
    state.counted_through = parts->id;
  }
  if (!it->status().ok()) return FromRocks(it->status(), "store: count inbox");
  return state;
}

Result<std::shared_ptr<const UserSettings>> InboxStore::Impl::LoadUserSettings(
    uint64_t user, int32_t vnode) const {
  std::string v;
  const rocksdb::Status s =
      db_->db()->Get(rocksdb::ReadOptions(), db_->cf(Cf::kMeta), MetaSettingsKey(vnode, user), &v);
  if (s.IsNotFound()) return std::shared_ptr<const UserSettings>();
  if (!s.ok()) return FromRocks(s, "store: read settings");
  std::optional<UserSettings> decoded = DecodeUserSettings(v);
  if (!decoded) return Internal("store: malformed settings of user " + std::to_string(user));
  return std::make_shared<const UserSettings>(std::move(*decoded));
}

Result<InboxStore::Impl::CachedUser*> InboxStore::Impl::TouchUser(uint64_t user) {
  auto it = user_cache_.find(user);
  if (it == user_cache_.end()) {
    const int32_t vnode = Vnode(user);
    IRIS_ASSIGN_OR_RETURN(const UserState state, LoadUserState(user, vnode));
    IRIS_ASSIGN_OR_RETURN(std::shared_ptr<const UserSettings> settings,
                          LoadUserSettings(user, vnode));
    // Loaded state counts appends never persisted: persist it with the next batch.
    const bool recounted = state.counted_through > 0;
    it = user_cache_
             .emplace(user, CachedUser{state, recounted ? kPersistEvery : 0, vnode,
                                       std::move(settings)})
             .first;
  }
  cur_->touched.try_emplace(user, it->second);
  return &it->second;
}

void InboxStore::Impl::AddPut(Cf cf, std::string_view key, std::string_view value) {
  cur_->batch
      .Put(db_->cf(cf), rocksdb::Slice(key.data(), key.size()),
           rocksdb::Slice(value.data(), value.size()))
      .PermitUncheckedError();
  cur_->has_writes = true;
}

void InboxStore::Impl::AddDelete(Cf cf, std::string_view key) {
  cur_->batch.Delete(db_->cf(cf), rocksdb::Slice(key.data(), key.size())).PermitUncheckedError();
  cur_->has_writes = true;
}

void InboxStore::Impl::TouchShard(int32_t vnode) {
  const uint32_t shard = (*cur_->shard_map)[static_cast<size_t>(vnode)];
  std::vector<uint32_t>& shards = cur_->shards;
  if (std::find(shards.begin(), shards.end(), shard) == shards.end()) shards.push_back(shard);
}

void InboxStore::Impl::BuildAppend(AppendRequest& a) {
  std::string dedup_key;
  uint64_t dedup_hash = 0;
  int32_t dedup_vnode = 0;
  if (!a.idempotency_key.empty()) {
    // The entry lives in a shard the append writes (in a replicated cluster, one this node
    // leads; the core splits appends by shard): a fan-out job's, the group's; a 1:1 send's,
    // the recipient's; a group message's, the group's when its first recipient is in the
    // group's shard (always on a single node), else the first vnode of that recipient's
    // shard (whoever the members are, so that a retry finds it). A key is thus scoped per
    // (vnode, sender, key).
    const v1::Envelope& first = a.envelopes.front();
    const auto vnode_of = [&](uint64_t owner) {
      const auto cached = user_cache_.find(owner);  // a known user's vnode costs no hashing
      return cached != user_cache_.end() ? cached->second.vnode : Vnode(owner);
    };
    if (first.group_id() == 0) {
      dedup_vnode = vnode_of(first.recipient());
    } else {
      dedup_vnode = vnode_of(first.group_id());
      if (!a.fanout_job) {
        const std::vector<uint32_t>& map = *cur_->shard_map;
        const uint32_t shard = map[static_cast<size_t>(vnode_of(first.recipient()))];
        if (map[static_cast<size_t>(dedup_vnode)] != shard) {
          dedup_vnode =
              static_cast<int32_t>(std::find(map.begin(), map.end(), shard) - map.begin());
        }
      }
    }
    dedup_key = DedupKey(dedup_vnode, a.sender, a.idempotency_key);
    dedup_hash = DedupIndex::Hash(dedup_key);
    Result<std::optional<DedupIndex::Hit>> hit = dedup_->Lookup(dedup_key, dedup_hash);
    if (!hit.ok()) {
      cur_->completions.push_back(
          Completion{std::move(a.done), nullptr, std::nullopt, hit.status()});
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
      cur_->completions.push_back(std::move(c));
      return;
    }
  }
  const uint64_t now = static_cast<uint64_t>(std::max<int64_t>(batch_now_ms_, 0));
  if (a.fanout_job) {
    // The job record, in the group's shard; no inbox, so no listener push.
    v1::Envelope& e = a.envelopes.front();
    const uint64_t id = hlc_.Next();
    e.set_id(id);
    e.set_sent_at_ms(now);
    const int32_t vnode = Vnode(e.group_id());
    std::string value;
    AppendBigEndian64(&value, 0);  // no member done yet
    value += e.SerializeAsString();
    AddPut(Cf::kGroups, FanOutJobKey(vnode, e.group_id(), id), value);
    TouchShard(vnode);
    if (!dedup_key.empty()) {
      const DedupEntry entry{id, static_cast<int64_t>(now)};
      AddPut(Cf::kDedup, dedup_key, EncodeDedupEntry(entry));
      TouchShard(dedup_vnode);
      dedup_->Remember(dedup_key, dedup_hash, entry, batch_seq_);
      cur_->remembered.push_back(std::move(dedup_key));
    }
    cur_->completions.push_back(
        Completion{std::move(a.done), nullptr, AppendOutcome{id, now, false}, Status::Ok()});
    return;
  }
  // Load every recipient's counters before adding anything, so a failed read leaves the
  // batch without a partial request.
  for (const v1::Envelope& e : a.envelopes) {
    Result<CachedUser*> st = TouchUser(e.recipient());
    if (!st.ok()) {
      cur_->completions.push_back(
          Completion{std::move(a.done), nullptr, std::nullopt, st.status()});
      return;
    }
  }
  // Consent: a 1:1 message or receipt to a user who blocks its sender is refused, whole.
  for (const v1::Envelope& e : a.envelopes) {
    if (e.group_id() != 0 || e.kind() == v1::GROUP_EVENT) continue;
    const CachedUser& u = user_cache_[e.recipient()];
    if (u.settings && u.settings->Blocks(e.sender())) {
      cur_->completions.push_back(Completion{
          std::move(a.done), nullptr, std::nullopt,
          Forbidden("user " + std::to_string(e.recipient()) + " does not accept your messages")});
      return;
    }
  }
  // Devices (docs/protocol.md appendix 20): a 1:1 message carries one copy for every device
  // of its recipient (to oneself: every other device), checked against the device list in
  // force here, in order with its changes. A single copy for device 0 is an older client's
  // message and stands for device 1; to oneself it is not checked.
  {
    Status devices = CheckDevices(a.envelopes);
    if (!devices.ok()) {
      cur_->completions.push_back(Completion{std::move(a.done), nullptr, std::nullopt, devices});
      return;
    }
  }
  // One range of ids: the copies of a multi-device SEND have consecutive clock steps, so
  // SEND_ACK names each copy's id from the first (also for a duplicate: appendix 20).
  const uint64_t first_id = hlc_.NextRange(static_cast<uint32_t>(a.envelopes.size()));
  for (size_t i = 0; i < a.envelopes.size(); ++i) {
    v1::Envelope& e = a.envelopes[i];
    const uint64_t id = HlcIdAfter(first_id, static_cast<uint32_t>(i));
    e.set_id(id);
    e.set_sent_at_ms(now);
    EncodeStoredEnvelope(id, now, a.bodies[i], &scratch_);
    CachedUser& u = user_cache_[e.recipient()];
    AddPut(Cf::kInbox, InboxKey(u.vnode, e.recipient(), id), scratch_);
    TouchShard(u.vnode);
    if (a.adds_contact && u.last_writer != e.sender()) {
      // The recipient may now accept group invitations from the sender (contacts only).
      AddPut(Cf::kMeta, MetaWroteKey(u.vnode, e.recipient(), e.sender()), "");
      u.last_writer = e.sender();
    }
    ++u.state.count;
    u.state.counted_through = id;
    ++u.unpersisted;
  }
  // The shards this request writes to (extra records: not known, all or nothing).
  std::vector<uint32_t> shards;
  const auto add_shard = [&](int32_t vnode) {
    const uint32_t s = (*cur_->shard_map)[static_cast<size_t>(vnode)];
    if (std::find(shards.begin(), shards.end(), s) == shards.end()) shards.push_back(s);
  };
  if (options_.replicate && a.extra_ops.empty()) {
    for (const v1::Envelope& e : a.envelopes) add_shard(user_cache_[e.recipient()].vnode);
    if (!dedup_key.empty()) add_shard(dedup_vnode);
  }
  if (!dedup_key.empty()) {
    const DedupEntry entry{first_id, static_cast<int64_t>(now)};
    AddPut(Cf::kDedup, dedup_key, EncodeDedupEntry(entry));
    TouchShard(dedup_vnode);
    dedup_->Remember(dedup_key, dedup_hash, entry, batch_seq_);
    cur_->remembered.push_back(std::move(dedup_key));
  }
  for (const KvOp& op : a.extra_ops) {
    if (op.value) {
      AddPut(op.cf, op.key, *op.value);
    } else {
      AddDelete(op.cf, op.key);
    }
  }
  cur_->envelopes += a.envelopes.size();
  Completion done{std::move(a.done), nullptr, AppendOutcome{first_id, now, false}, Status::Ok()};
  done.shards = std::move(shards);
  cur_->completions.push_back(std::move(done));
  if (active_listener_) {
    for (v1::Envelope& e : a.envelopes) {
      cur_->stored.push_back(std::move(e));
      cur_->stored_by.push_back(cur_->completions.size() - 1);
    }
  }
}

Status InboxStore::Impl::CheckDevices(const std::vector<v1::Envelope>& envelopes) {
  // A 1:1 send's envelopes all go to one recipient; anything else is not a 1:1 message.
  uint64_t recipient = 0;
  uint64_t sender = 0;
  uint32_t sender_device = 0;
  DeviceMask got = 0;
  bool legacy_to_self = false;
  for (const v1::Envelope& e : envelopes) {
    if (e.kind() != v1::MESSAGE || e.group_id() != 0) return Status::Ok();
    if (recipient != 0 && e.recipient() != recipient) return Status::Ok();
    recipient = e.recipient();
    sender = e.sender();
    sender_device = e.sender_device() == 0 ? kPrimaryDevice : e.sender_device();
    if (e.recipient_device() == 0 && recipient == sender) legacy_to_self = true;
    got |= DeviceBit(e.recipient_device() == 0 ? kPrimaryDevice : e.recipient_device());
  }
  if (recipient == 0 || legacy_to_self) return Status::Ok();
  const CachedUser& u = user_cache_[recipient];
  DeviceMask expected = u.settings ? u.settings->Devices() : DeviceBit(kPrimaryDevice);
  if (recipient == sender) expected &= ~DeviceBit(sender_device);
  if (got == expected) return Status::Ok();
  return MismatchedDevices(expected & ~got, got & ~expected);
}

void InboxStore::Impl::BuildSettingsWrite(SettingsWriteRequest& r) {
  Result<CachedUser*> u = TouchUser(r.user);
  if (!u.ok()) {
    cur_->completions.push_back(Completion{nullptr, std::move(r.done), std::nullopt, u.status()});
    return;
  }
  CachedUser& cached = **u;
  UserSettings s = cached.settings ? *cached.settings : UserSettings{};
  Status changed = r.change(s);
  if (changed.ok()) {
    std::sort(s.blocked.begin(), s.blocked.end());
    s.blocked.erase(std::unique(s.blocked.begin(), s.blocked.end()), s.blocked.end());
    std::erase(s.blocked, uint64_t{0});
    if (s.blocked.size() > UserSettings::kMaxBlocked) {
      changed = TooLarge("at most " + std::to_string(UserSettings::kMaxBlocked) +
                         " users can be blocked");
    }
  }
  if (!changed.ok()) {
    cur_->completions.push_back(Completion{nullptr, std::move(r.done), std::nullopt, changed});
    return;
  }
  // Devices removed now: their envelopes leave the inbox (the archiver purges them; the
  // marker keeps that work across a crash or a fail-over).
  const DeviceMask removed_before = cached.settings ? cached.settings->removed_devices : 0;
  if ((s.removed_devices & ~removed_before) != 0) {
    AddPut(Cf::kMeta, MetaDevicePurgeKey(cached.vnode, r.user), std::string());
    cur_->purge.push_back(r.user);
  }
  AddPut(Cf::kMeta, MetaSettingsKey(cached.vnode, r.user), EncodeUserSettings(s));
  TouchShard(cached.vnode);
  *r.result = s;
  cached.settings = std::make_shared<const UserSettings>(std::move(s));
  cur_->completions.push_back(Completion{nullptr, std::move(r.done), std::nullopt, Status::Ok()});
}

void InboxStore::Impl::BuildRecordWrite(RecordWriteRequest& w) {
  for (const KvOp& op : w.ops) {
    if (!op.range_end.empty()) {
      cur_->batch.DeleteRange(db_->cf(op.cf), op.key, op.range_end).PermitUncheckedError();
      cur_->has_writes = true;
    } else if (op.value) {
      AddPut(op.cf, op.key, *op.value);
    } else {
      AddDelete(op.cf, op.key);
    }
  }
  cur_->completions.push_back(Completion{nullptr, std::move(w.done), std::nullopt, Status::Ok()});
}

void InboxStore::Impl::BuildArchive(ArchiveRequest& r) {
  for (const ArchiveMove& m : r.moves) {
    Result<CachedUser*> st = TouchUser(m.user);
    if (!st.ok()) {
      cur_->completions.push_back(
          Completion{nullptr, std::move(r.done), std::nullopt, st.status()});
      return;
    }
  }
  for (ArchiveMove& m : r.moves) {
    CachedUser& u = user_cache_[m.user];
    if (m.purge) {
      // Envelopes of removed devices: deleted. The archiver read them after its last move
      // of this user was written and does not move this user in the same pass, so each is
      // still in the inbox (ids above archived_through) and counted there.
      for (const auto& [key, unused] : m.entries) {
        const std::optional<InboxKeyParts> parts = ParseInboxKey(key);
        AddDelete(Cf::kInbox, key);
        if (parts && parts->id > u.state.archived_through && u.state.count > 0) --u.state.count;
      }
      cur_->purged += m.entries.size();
      if (!m.entries.empty()) moved_users_.push_back(m.user);
      // The marker goes with the last pass, unless a device was removed since it was read
      // (that removal's purge, already scheduled, deletes it).
      const DeviceMask now = u.settings ? u.settings->removed_devices : 0;
      if (m.purge_done && now == m.purge_mask) {
        AddDelete(Cf::kMeta, MetaDevicePurgeKey(u.vnode, m.user));
      }
      continue;
    }
    // The archiver read its excess earlier; the counter here is authoritative. Move only
    // what still exceeds the cap (the oldest first), never more.
    const uint64_t allowed =
        u.state.count > options_.inbox_cap ? u.state.count - options_.inbox_cap : 0;
    const size_t n = static_cast<size_t>(std::min<uint64_t>(allowed, m.entries.size()));
    for (size_t i = 0; i < n; ++i) {
      auto& [key, value] = m.entries[i];
      const std::optional<InboxKeyParts> parts = ParseInboxKey(key);
      if (parts) u.state.archived_through = std::max(u.state.archived_through, parts->id);
      AddDelete(Cf::kInbox, key);
      AddPut(Cf::kArchive, key, value);
    }
    u.state.count -= n;
    cur_->archived += n;
    if (n > 0) moved_users_.push_back(m.user);
  }
  cur_->completions.push_back(Completion{nullptr, std::move(r.done), std::nullopt, Status::Ok()});
}

void InboxStore::Impl::BuildVnodeDelete(VnodeDeleteRequest& r) {
  // Everything written before this request (in this batch or an earlier one) is deleted by
  // the range deletions, which RocksDB applies in batch order.
  const std::string begin = VnodePrefix(r.vnode);
  const std::string end = VnodePrefix(r.vnode + 1);
  for (int c = 0; c < static_cast<int>(Cf::kCount); ++c) {
    cur_->batch.DeleteRange(db_->cf(static_cast<Cf>(c)), begin, end).PermitUncheckedError();
  }
  cur_->has_writes = true;
  // The vnode's users are reloaded (empty) from the database once this batch is written:
  // it is the last of its batch, and the next batch is built only after it is written.
  for (auto it = user_cache_.begin(); it != user_cache_.end();) {
    if (it->second.vnode == r.vnode) {
      cur_->touched.try_emplace(it->first, it->second);  // restored if the write fails
      it = user_cache_.erase(it);
    } else {
      ++it;
    }
  }
  // Hot dedup entries of the vnode would answer retries with deleted ids; the hot tier has
  // no index by vnode, so it is emptied (lookups read the column family meanwhile).
  dedup_->ForgetAllHot();
  cur_->deleted_vnode = r.vnode;
  cur_->completions.push_back(Completion{nullptr, std::move(r.done), std::nullopt, Status::Ok()});
}

void InboxStore::Impl::BuildUserDelete(UserDeleteRequest& r) {
  // The batch holds only this request. Once every earlier batch is written, the database
  // shows every message of the user: the caller found those up to seen_through from a
  // snapshot; the few stored since are found here.
  {
    std::unique_lock<std::mutex> lock(pipe_mu_);
    pipe_cv_.wait(lock, [&] { return slot_ == nullptr && !sync_busy_; });
  }
  const int32_t vnode = Vnode(r.user);
  const std::string upper = InboxUpperBound(vnode, r.user);
  const rocksdb::Slice upper_slice(upper);
  rocksdb::ReadOptions ro;
  ro.iterate_upper_bound = &upper_slice;
  for (Cf c : {Cf::kInbox, Cf::kArchive}) {
    std::vector<std::string>& keys = c == Cf::kInbox ? r.inbox_keys : r.archive_keys;
    std::unique_ptr<rocksdb::Iterator> it(db_->db()->NewIterator(ro, db_->cf(c)));
    for (it->Seek(InboxKey(vnode, r.user, r.seen_through + 1)); it->Valid(); it->Next()) {
      keys.push_back(it->key().ToString());
    }
    if (!it->status().ok()) {
      cur_->completions.push_back(Completion{nullptr, std::move(r.done), std::nullopt,
                                             FromRocks(it->status(), "store: find messages")});
      return;
    }
  }
  // Who wrote to the user (consent): key by key, as the messages.
  std::vector<std::string> wrote_keys;
  {
    const std::string wrote_upper = r.user == UINT64_MAX
                                        ? MetaWroteKey(vnode, r.user, UINT64_MAX) + '\xff'
                                        : MetaWroteKey(vnode, r.user + 1, 0);
    const rocksdb::Slice wrote_upper_slice(wrote_upper);
    rocksdb::ReadOptions wro;
    wro.iterate_upper_bound = &wrote_upper_slice;
    std::unique_ptr<rocksdb::Iterator> it(db_->db()->NewIterator(wro, db_->cf(Cf::kMeta)));
    for (it->Seek(MetaWroteKey(vnode, r.user, 0)); it->Valid(); it->Next()) {
      wrote_keys.push_back(it->key().ToString());
    }
    if (!it->status().ok()) {
      cur_->completions.push_back(Completion{nullptr, std::move(r.done), std::nullopt,
                                             FromRocks(it->status(), "store: find contacts")});
      return;
    }
  }
  for (const std::string& k : wrote_keys) AddDelete(Cf::kMeta, k);
  for (const std::string& k : r.inbox_keys) {
    AddDelete(Cf::kInbox, k);
    AddDelete(Cf::kArchive, k);  // the archiver may have moved it since
  }
  for (const std::string& k : r.archive_keys) AddDelete(Cf::kArchive, k);
  // keys (no insert hints): vnode(4) user(8) 'B' and vnode(4) user(8) 'P' seq(8).
  cur_->batch
      .DeleteRange(db_->cf(Cf::kKeys), InboxKey(vnode, r.user, 0).substr(0, kVnodePrefixBytes + 8),
                   upper)
      .PermitUncheckedError();
  for (const std::string& k :
       {MetaUserStateKey(vnode, r.user), MetaArchivePendingKey(vnode, r.user),
        MetaDevicePurgeKey(vnode, r.user), MetaSettingsKey(vnode, r.user),
        MetaLastSeenKey(vnode, r.user)}) {
    AddDelete(Cf::kMeta, k);
  }
  for (const std::string& k : r.dedup_keys) AddDelete(Cf::kDedup, k);
  cur_->has_writes = true;
  // Reloaded (empty) from the database once this batch is written: the next batch is built
  // only after it is written.
  if (auto it = user_cache_.find(r.user); it != user_cache_.end()) {
    cur_->touched.try_emplace(it->first, it->second);  // restored if the write fails
    user_cache_.erase(it);
  }
  // Hot entries of the user's sends would answer retries with deleted ids; the hot tier has
  // no index by sender, so it is emptied (lookups read the column family meanwhile).
  dedup_->ForgetAllHot();
  cur_->deleted_user = r.user;
  cur_->completions.push_back(Completion{nullptr, std::move(r.done), std::nullopt, Status::Ok()});
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
  if (!needs_recovery_) return Status::Ok();
  const int64_t mono = clock_->MonoMillis();
  if (options_.resume_interval_ms > 0 &&
      mono - last_recovery_mono_ms_ < options_.resume_interval_ms) {
    return last_write_error_;
  }
  last_recovery_mono_ms_ = mono;
  // After a hard write error RocksDB refuses writes until it is resumed. The store reopens
  // the database instead of calling DB::Resume() (see store_db.h); reopening writes a new
  // MANIFEST and flushes the replayed WAL, so on a full disk it waits for room first.
  if (last_write_error_.code() == StatusCode::kStorageFull) {
    const std::optional<std::string> short_of_space = ShortOfSpaceForResume();
    if (short_of_space) {
      last_write_error_ = StorageFull("store: disk full (" + *short_of_space + ")");
      return last_write_error_;
    }
  }
  const Status s = db_->Reopen();
  if (!s.ok()) {
    last_write_error_ = s.code() == StatusCode::kStorageFull
                            ? s
                            : Internal("store: reopen after a write error: " + s.message());
    return last_write_error_;
  }
  // The reopened database holds exactly what survived the failed write: reload what the
  // commit thread derived from it.
  user_cache_.clear();
  if (const Result<uint64_t> high_water = ReadHighWaterMark(); high_water.ok()) {
    hlc_.Restore(*high_water);
  }
  needs_recovery_ = false;
  last_write_error_ = Status::Ok();
  return Status::Ok();
}

void InboxStore::Impl::CommitBatch(std::vector<CommitRequest>& requests) {
  // A failed write in flight invalidates what this thread derived from it: restore first.
  RollBackFailedBatches();
  ++batch_seq_;
  moved_users_.clear();
  batch_now_ms_ = clock_->WallMillis();

  // A store blocked by a write error refuses the whole batch until it has recovered.
  if (const Status ready = EnsureWritable(); !ready.ok()) {
    write_errors_.fetch_add(1, std::memory_order_relaxed);
    if (ready.code() == StatusCode::kStorageFull) {
      storage_full_errors_.fetch_add(1, std::memory_order_relaxed);
    }
    for (CommitRequest& r : requests) Fail(r, ready);
    return;
  }

  cur_ = std::make_unique<BuiltBatch>();
  cur_->seq = batch_seq_;
  cur_->shard_map = ShardMap();
  cur_->listener = active_listener_;
  for (CommitRequest& r : requests) {
    std::visit(
        [&](auto& body) {
          using T = std::decay_t<decltype(body)>;
          if constexpr (std::is_same_v<T, AppendRequest>) {
            BuildAppend(body);
          } else if constexpr (std::is_same_v<T, RecordWriteRequest>) {
            BuildRecordWrite(body);
          } else if constexpr (std::is_same_v<T, ArchiveRequest>) {
            BuildArchive(body);
          } else if constexpr (std::is_same_v<T, VnodeDeleteRequest>) {
            BuildVnodeDelete(body);
          } else if constexpr (std::is_same_v<T, UserDeleteRequest>) {
            BuildUserDelete(body);
          } else if constexpr (std::is_same_v<T, SettingsWriteRequest>) {
            BuildSettingsWrite(body);
          } else {
            BuildShardTakeOver(body);
          }
        },
        r.body);
  }

  // Per-user counters (when due) and the archive-pending markers of users that crossed the
  // cap; users over the cap are handed to the archiver after the write.
  std::sort(moved_users_.begin(), moved_users_.end());
  for (auto& [user, before] : cur_->touched) {
    if (before.vnode == cur_->deleted_vnode) continue;  // nothing of it may be written again
    if (user == cur_->deleted_user) continue;
    CachedUser& now = user_cache_[user];
    const bool was_over = before.state.count > options_.inbox_cap;
    const bool is_over = now.state.count > options_.inbox_cap;
    const bool moved = std::binary_search(moved_users_.begin(), moved_users_.end(), user);
    if (now.unpersisted >= kPersistEvery || was_over != is_over || moved) {
      AddPut(Cf::kMeta, MetaUserStateKey(now.vnode, user), EncodeUserState(now.state));
      now.unpersisted = 0;
    }
    if (is_over && !was_over) {
      AddPut(Cf::kMeta, MetaArchivePendingKey(now.vnode, user), std::string());
    } else if (!is_over && was_over) {
      AddDelete(Cf::kMeta, MetaArchivePendingKey(now.vnode, user));
    }
    if (is_over) cur_->over_cap.emplace_back(user, now.state.count - options_.inbox_cap);
  }
  // The high-water mark of every shard this batch assigned ids in: a node that takes the
  // shard over (or this one after a restart) starts its clock above it.
  if (!cur_->shards.empty()) {
    const std::string mark = EncodeU64(hlc_.Last());
    for (const uint32_t shard : cur_->shards) AddPut(Cf::kMeta, MetaHlcKey(shard), mark);
  }
  const bool barrier = cur_->deleted_vnode.has_value() || cur_->deleted_user.has_value();
  HandOff(std::move(cur_));
  if (barrier) {
    // Users of a deleted vnode are reloaded from the database: wait until it shows the
    // deletion (or the write failed, which the next batch rolls back first).
    std::unique_lock<std::mutex> lock(pipe_mu_);
    pipe_cv_.wait(lock, [&] { return slot_ == nullptr && !sync_busy_; });
  }

  dedup_->Evict();
  if (user_cache_.size() > options_.user_cache_max_entries) {
    // A cached user can be dropped between batches — loading recounts what its persisted
    // state does not cover — unless a batch still in flight touched it.
    std::unordered_set<uint64_t> inflight;
    for (const auto& v : inflight_users_) inflight.insert(v.begin(), v.end());
    auto it = user_cache_.begin();
    while (it != user_cache_.end() &&
           user_cache_.size() > options_.user_cache_max_entries * 9 / 10) {
      it = inflight.count(it->first) != 0 ? std::next(it) : user_cache_.erase(it);
    }
  }
}

void InboxStore::Impl::ObserveShardBatches(const rocksdb::WriteBatch& batch) {
  std::function<void(const std::map<uint32_t, std::string>&)> observer;
  {
    std::lock_guard<std::mutex> lock(observer_mu_);
    observer = shard_batch_observer_;
  }
  if (!observer) return;
  Result<std::map<uint32_t, std::string>> parts = SplitByShard(batch, *db_, *ShardMap());
  IRIS_RELEASE_ASSERT(parts.ok());  // the store writes only puts, deletes and range deletes
  if (!parts->empty()) observer(*parts);
}

Status InboxStore::Impl::ApplyShardBatch(std::string_view payload) {
  IRIS_ASSIGN_OR_RETURN(std::vector<ShardOp> ops, DecodeShardOps(payload));
  std::vector<KvOp> kv;
  kv.reserve(ops.size());
  for (ShardOp& op : ops) {
    KvOp k{op.cf, std::move(op.key), std::nullopt, std::string()};
    if (op.kind == 'P') {
      k.value = std::move(op.value);
    } else if (op.kind == 'R') {
      if (op.value.empty()) return BadRequest("shard batch: range deletion without an end");
      k.range_end = std::move(op.value);
    }
    kv.push_back(std::move(k));
  }
  if (kv.empty()) return Status::Ok();
  return WriteRecords(std::move(kv));
}

void InboxStore::Impl::BuildShardTakeOver(ShardTakeOverRequest& r) {
  // The batch holds only this request; batches built before it are answered before its
  // `done` runs (they were built on the old view and are refused by the shard's replica,
  // which takes appends only once `done` has run).
  for (auto it = user_cache_.begin(); it != user_cache_.end();) {
    const auto vnode = static_cast<size_t>(it->second.vnode);
    if (vnode < cur_->shard_map->size() && (*cur_->shard_map)[vnode] == r.shard) {
      it = user_cache_.erase(it);
    } else {
      ++it;
    }
  }
  // Hot entries are all durable or forgotten, but the hot tier has no index by shard and a
  // take-over is rare: empty it (lookups read the column family, which the replica filled).
  dedup_->ForgetAllHot();
  // Inboxes of the shard over the cap: the previous primary may have died before archiving
  // them, and this node applied their markers as a backup without scheduling anything.
  const std::vector<uint32_t>& map = *cur_->shard_map;
  const Status pending = ScheduleArchivePending([&map, &r](int32_t v) {
    return static_cast<size_t>(v) < map.size() && map[static_cast<size_t>(v)] == r.shard;
  });
  if (!pending.ok()) {
    // Only the archiving waits: the next write to each such inbox schedules it again.
    obs::LogWarn("store: cannot read the archive markers of a shard taken over",
                 {{"shard", r.shard}, {"error", pending.message()}});
  }
  Completion c{nullptr, std::move(r.done), std::nullopt, Status::Ok()};
  c.ignores_write = true;
  cur_->completions.push_back(std::move(c));
}

Status InboxStore::Impl::ReplicateBatch(BuiltBatch& b, std::vector<uint32_t>* committed) {
  std::string node_wide;
  IRIS_ASSIGN_OR_RETURN(auto parts, SplitByShard(b.batch, *db_, *b.shard_map, &node_wide));
  struct Pending {
    std::mutex mu;
    std::condition_variable cv;
    size_t left = 0;
    Status first_error;
    std::vector<uint32_t> committed;
  };
  auto pending = std::make_shared<Pending>();
  pending->left = parts.size();
  for (auto& part : parts) {
    const uint32_t shard = part.first;
    options_.replicate(shard, std::move(part.second), hlc_.Next(), [pending, shard](Status s) {
      std::lock_guard<std::mutex> lock(pending->mu);
      if (s.ok()) pending->committed.push_back(shard);
      if (!s.ok() && pending->first_error.ok()) pending->first_error = s;
      if (--pending->left == 0) pending->cv.notify_all();
    });
  }
  {
    std::unique_lock<std::mutex> lock(pending->mu);
    const bool answered =
        pending->cv.wait_for(lock, std::chrono::milliseconds(options_.replicate_timeout_ms),
                             [&] { return pending->left == 0; });
    *committed = pending->committed;
    if (!answered) {
      return Unavailable("not replicated within " + std::to_string(options_.replicate_timeout_ms) +
                             " ms (fewer than W replicas reachable?); retry with the same key",
                         100);
    }
    if (!pending->first_error.ok()) return pending->first_error;
  }
  if (node_wide.empty()) return Status::Ok();
  IRIS_ASSIGN_OR_RETURN(std::vector<ShardOp> ops, DecodeShardOps(node_wide));
  rocksdb::WriteBatch local;
  for (const ShardOp& op : ops) AddShardOp(op, &local);
  rocksdb::WriteOptions wo;
  wo.sync = true;
  const rocksdb::Status s = db_->db()->Write(wo, &local);
  if (!s.ok()) return FromRocks(s, "store: write");
  db_->NoteDurable(db_->db());
  return Status::Ok();
}

void InboxStore::Impl::AddShardOp(const ShardOp& op, rocksdb::WriteBatch* batch) const {
  rocksdb::ColumnFamilyHandle* cf = db_->cf(op.cf);
  if (op.kind == 'P') {
    batch->Put(cf, op.key, op.value).PermitUncheckedError();
  } else if (op.kind == 'R') {
    batch->DeleteRange(cf, op.key, op.value).PermitUncheckedError();
  } else {
    batch->Delete(cf, op.key).PermitUncheckedError();
  }
}

template <typename Extra>
Status InboxStore::Impl::WriteShardOps(const std::vector<std::string_view>& payloads,
                                       bool vnode_keys_only, Extra extra) {
  rocksdb::WriteBatch batch;
  std::vector<std::string> dedup_keys;
  const std::string vnodes_end = VnodePrefix(options_.vnodes);
  // A key of a vnode of this store: 4-byte prefix below VnodePrefix(vnodes).
  const auto in_vnodes = [&](const std::string& key, bool end) {
    return key.size() >= kVnodePrefixBytes &&
           (end ? key <= vnodes_end : key.compare(0, kVnodePrefixBytes, vnodes_end) < 0);
  };
  for (std::string_view payload : payloads) {
    IRIS_ASSIGN_OR_RETURN(std::vector<ShardOp> ops, DecodeShardOps(payload));
    for (ShardOp& op : ops) {
      if (op.kind == 'R' && op.value.empty()) {
        return BadRequest("shard batch: range deletion without an end");
      }
      if (vnode_keys_only &&
          (!in_vnodes(op.key, false) || (op.kind == 'R' && !in_vnodes(op.value, true)))) {
        return BadRequest("shard chunk: a key outside the store's vnodes");
      }
      if (vnode_keys_only && op.kind == 'R') {
        // A chunk's range starts at any key: deleted key by key, since RocksDB's memtable
        // insert hint (the 12-byte prefix of inbox, archive and dedup keys) must not see a
        // range tombstone of that length.
        if (op.key >= op.value) return BadRequest("shard chunk: an empty or inverted range");
        const rocksdb::Slice end(op.value);
        rocksdb::ReadOptions ro;
        ro.fill_cache = false;
        ro.iterate_upper_bound = &end;
        std::unique_ptr<rocksdb::Iterator> it(db_->db()->NewIterator(ro, db_->cf(op.cf)));
        for (it->Seek(op.key); it->Valid(); it->Next()) {
          batch.Delete(db_->cf(op.cf), it->key()).PermitUncheckedError();
        }
        if (!it->status().ok()) return FromRocks(it->status(), "store: read a range to replace");
        continue;
      }
      AddShardOp(op, &batch);
      if (op.cf == Cf::kDedup && op.kind == 'P') dedup_keys.push_back(std::move(op.key));
    }
  }
  extra(batch);
  rocksdb::WriteOptions wo;
  wo.sync = true;
  const rocksdb::Status s = db_->db()->Write(wo, &batch);
  if (!s.ok()) return FromRocks(s, "store: apply replicated batches");
  db_->NoteDurable(db_->db());
  // The Bloom filters are a negative cache over every dedup entry, also these.
  for (const std::string& k : dedup_keys) dedup_->NoteApplied(k);
  return Status::Ok();
}

Status InboxStore::Impl::ApplyReplicated(uint32_t shard, uint64_t last_lsn,
                                         const std::vector<std::string_view>& payloads,
                                         uint64_t hlc) {
  IRIS_RETURN_IF_ERROR(WriteShardOps(payloads, /*vnode_keys_only=*/false, [&](auto& batch) {
    batch.Put(db_->cf(Cf::kMeta), MetaReplicatedLsnKey(shard), EncodeU64(last_lsn))
        .PermitUncheckedError();
  }));
  hlc_.Restore(hlc);
  return Status::Ok();
}

Status InboxStore::Impl::InstallShardChunk(std::string_view chunk) {
  return WriteShardOps({chunk}, /*vnode_keys_only=*/true, [](auto&) {});
}

Status InboxStore::Impl::DropShardCopy(uint32_t shard, const std::vector<int32_t>& vnodes) {
  std::vector<int32_t> sorted = vnodes;
  std::sort(sorted.begin(), sorted.end());
  for (int32_t v : sorted) {
    if (v < 0 || v >= options_.vnodes) {
      return BadRequest("store: vnode " + std::to_string(v) + " out of range");
    }
  }
  rocksdb::WriteBatch batch;
  // One range deletion per run of consecutive vnodes, in every column family.
  for (size_t i = 0; i < sorted.size();) {
    size_t j = i + 1;
    while (j < sorted.size() && sorted[j] <= sorted[j - 1] + 1) ++j;
    const std::string begin = VnodePrefix(sorted[i]);
    const std::string end = VnodePrefix(sorted[j - 1] + 1);
    for (int c = 0; c < static_cast<int>(Cf::kCount); ++c) {
      batch.DeleteRange(db_->cf(static_cast<Cf>(c)), begin, end).PermitUncheckedError();
    }
    i = j;
  }
  batch.Delete(db_->cf(Cf::kMeta), MetaReplicatedLsnKey(shard)).PermitUncheckedError();
  rocksdb::WriteOptions wo;
  wo.sync = true;
  const rocksdb::Status s = db_->db()->Write(wo, &batch);
  if (!s.ok()) return FromRocks(s, "store: drop a shard's copy");
  db_->NoteDurable(db_->db());
  return Status::Ok();
}

Result<uint64_t> InboxStore::Impl::ReplicatedLsn(uint32_t shard) const {
  std::string v;
  const rocksdb::Status s =
      db_->db()->Get(rocksdb::ReadOptions(), db_->cf(Cf::kMeta), MetaReplicatedLsnKey(shard), &v);
  if (s.IsNotFound()) return uint64_t{0};
  if (!s.ok()) return FromRocks(s, "store: read the replicated lsn");
  const std::optional<uint64_t> lsn = DecodeU64(v);
  if (!lsn) return Internal("store: malformed replicated lsn of shard " + std::to_string(shard));
  return *lsn;
}

void InboxStore::Impl::SetShardOfVnode(const std::function<uint32_t(int32_t)>& shard_of_vnode) {
  auto map = std::make_shared<std::vector<uint32_t>>(static_cast<size_t>(options_.vnodes), 0);
  for (int32_t v = 0; v < options_.vnodes; ++v) (*map)[static_cast<size_t>(v)] = shard_of_vnode(v);
  std::atomic_store(&vnode_shard_, std::shared_ptr<const std::vector<uint32_t>>(std::move(map)));
}

void InboxStore::Impl::TakeOverShard(uint32_t shard, uint64_t hlc_high_water,
                                     std::function<void(Status)> done) {
  hlc_.Restore(hlc_high_water);
  CommitRequest r;
  r.body = ShardTakeOverRequest{shard, std::move(done)};
  Enqueue(std::move(r));
}

void InboxStore::Impl::WriteAndAnswer(BuiltBatch& b) {
  Status write_status;
  {
    std::lock_guard<std::mutex> lock(pipe_mu_);
    write_status = pipe_error_;  // an earlier batch failed: this one was built on it
  }
  const bool first_failure = write_status.ok();
  bool replication_failed = false;
  std::vector<uint32_t> committed;  // shards whose part is durable on W replicas
  if (write_status.ok() && b.has_writes && options_.replicate) {
    write_status = ReplicateBatch(b, &committed);
    replication_failed = !write_status.ok();
  } else if (write_status.ok() && b.has_writes) {
    rocksdb::WriteOptions wo;
    wo.sync = true;
    const auto start = std::chrono::steady_clock::now();
    const rocksdb::Status s = db_->db()->Write(wo, &b.batch);
    const int64_t nanos = std::chrono::duration_cast<std::chrono::nanoseconds>(
                              std::chrono::steady_clock::now() - start)
                              .count();
    if (options_.write_latency_observer) options_.write_latency_observer(nanos);
    if (s.ok()) {
      db_->NoteDurable(db_->db());
      ObserveShardBatches(b.batch);
    } else {
      write_status = FromRocks(s, "store: write");
    }
  }
  if (write_status.ok()) {
    if (b.has_writes) {
      batches_.fetch_add(1, std::memory_order_relaxed);
      envelopes_.fetch_add(b.envelopes, std::memory_order_relaxed);
      archived_.fetch_add(b.archived, std::memory_order_relaxed);
      purged_.fetch_add(b.purged, std::memory_order_relaxed);
    }
    // Schedule before answering, so a caller that saw its append complete also sees the
    // archiver busy (WaitArchiverIdle) until the inbox is back under the cap.
    for (const auto& [user, excess] : b.over_cap) ScheduleArchive(user, excess);
    for (uint64_t user : b.purge) SchedulePurge(user);
  } else {
    // A replicated batch refused by its shard's replica (failover, too few replicas) is not
    // a failed write of this database: the client retries it elsewhere.
    const bool refused = options_.replicate && (write_status.code() == StatusCode::kUnavailable ||
                                                write_status.code() == StatusCode::kOverloaded);
    if (!refused) write_errors_.fetch_add(1, std::memory_order_relaxed);
    if (write_status.code() == StatusCode::kStorageFull) {
      storage_full_errors_.fetch_add(1, std::memory_order_relaxed);
    }
    {
      std::lock_guard<std::mutex> lock(pipe_mu_);
      if (pipe_error_.ok()) {
        pipe_error_ = write_status;
        pipe_error_replicated_ = replication_failed;
      }
    }
    {
      std::lock_guard<std::mutex> lock(queue_mu_);
      rollback_due_ = true;
    }
    queue_cv_.notify_all();
    // A purge reads the device list from the database: one scheduled for a list that was
    // not written finds nothing to do.
    if (replication_failed && !committed.empty()) {
      for (uint64_t user : b.purge) SchedulePurge(user);
      // Inboxes of committed shards that went over the cap: archived as after a success
      // (BuildArchive checks again against the counters reloaded from the database).
      for (const auto& [user, excess] : b.over_cap) {
        const uint32_t shard = ShardOf(b, Vnode(user));
        if (std::find(committed.begin(), committed.end(), shard) != committed.end()) {
          ScheduleArchive(user, excess);
        }
      }
    }
  }

  // A request answered without a write of its own (a retry of an older, durable send)
  // stands even if this write failed — unless the batch failed because an earlier one did,
  // which that retry may depend on.
  const auto in_committed_shards = [&](const Completion& c) {
    if (!replication_failed || c.shards.empty()) return false;
    for (uint32_t s : c.shards) {
      if (std::find(committed.begin(), committed.end(), s) == committed.end()) return false;
    }
    return true;
  };
  const auto answer_of = [&](const Completion& c) {
    if (!c.error.ok() || c.ignores_write) return c.error;
    if (write_status.ok() || (first_failure && !c.needs_commit)) return Status::Ok();
    if (in_committed_shards(c)) return Status::Ok();
    return write_status;
  };
  if (!write_status.ok()) {
    // After a failed write only the messages of requests answered OK (those that wrote to
    // committed shards alone) are pushed: a refused request is retried, and its retry is
    // what stores or finds its messages.
    std::vector<v1::Envelope> pushed;
    for (size_t i = 0; i < b.stored.size() && i < b.stored_by.size(); ++i) {
      if (answer_of(b.completions[b.stored_by[i]]).ok()) pushed.push_back(std::move(b.stored[i]));
    }
    b.stored = std::move(pushed);
  }
  // Count first, so a caller that saw its answer also sees it in Stats().
  uint64_t appended = 0;
  uint64_t dups = 0;
  for (const Completion& c : b.completions) {
    if (c.append_done && answer_of(c).ok()) ++(c.outcome->duplicate ? dups : appended);
  }
  appends_.fetch_add(appended, std::memory_order_relaxed);
  duplicates_.fetch_add(dups, std::memory_order_relaxed);
  for (Completion& c : b.completions) {
    const Status s = answer_of(c);
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
  if (!b.stored.empty() && b.listener) b.listener(b.stored);
}

}  // namespace iris::store
