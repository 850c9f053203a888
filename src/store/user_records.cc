// Small per-user and per-group records: settings, last-seen times, prekey bundles, groups.
// Every write goes through the commit queue, so it is synced and shares the sync of the
// appends around it. Prekey consumption is a read-modify-write serialised per user by a
// striped mutex held until the write is durable: two concurrent FetchKeys never see the
// same one-time prekey, and a consumed prekey stays consumed after a crash.
#include "common/assert.h"
#include "common/bytes.h"
#include "store/inbox_store_impl.h"

namespace iris::store {

Status InboxStore::Impl::PutSettings(uint64_t user, const UserSettings& s) {
  return UpdateSettings(user, [&s](UserSettings& current) {
                           current = s;
                           return Status::Ok();
                         })
      .status();
}

Result<UserSettings> InboxStore::Impl::UpdateSettings(
    uint64_t user, std::function<Status(UserSettings&)> change) {
  IRIS_ASSERT_NOT_ON_LOOP_THREAD();  // waits for the group commit's fdatasync
  if (user == 0) return BadRequest("store: settings of user 0");
  auto promise = std::make_shared<std::promise<Status>>();
  std::future<Status> written = promise->get_future();
  auto result = std::make_shared<UserSettings>();
  CommitRequest r;
  r.bytes = 64;
  r.body = SettingsWriteRequest{user, std::move(change), result,
                                [promise](Status s) { promise->set_value(s); }};
  Enqueue(std::move(r));
  IRIS_RETURN_IF_ERROR(written.get());
  return *result;
}

Result<UserSettings> InboxStore::Impl::GetSettings(uint64_t user) const {
  const StoreDb::ReadHold db = db_->Hold();
  if (!db.ok()) return StoreDb::ReadHold::Closed();
  std::string v;
  const rocksdb::Status s = db.db()->Get(rocksdb::ReadOptions(), db.cf(Cf::kMeta),
                                         MetaSettingsKey(Vnode(user), user), &v);
  if (s.IsNotFound()) return UserSettings{};
  if (!s.ok()) return FromRocks(s, "store: read settings");
  std::optional<UserSettings> decoded = DecodeUserSettings(v);
  if (!decoded) return Internal("store: malformed settings of user " + std::to_string(user));
  return std::move(*decoded);
}

Result<std::vector<uint64_t>> InboxStore::Impl::WhoWrote(
    uint64_t user, const std::vector<uint64_t>& candidates) const {
  std::vector<uint64_t> out;
  if (candidates.empty()) return out;
  const StoreDb::ReadHold db = db_->Hold();
  if (!db.ok()) return StoreDb::ReadHold::Closed();
  const int32_t vnode = Vnode(user);
  std::vector<std::string> keys;
  keys.reserve(candidates.size());
  for (uint64_t c : candidates) keys.push_back(MetaWroteKey(vnode, user, c));
  std::vector<rocksdb::Slice> slices(keys.begin(), keys.end());
  std::vector<rocksdb::ColumnFamilyHandle*> cfs(keys.size(), db.cf(Cf::kMeta));
  std::vector<std::string> values;
  const std::vector<rocksdb::Status> got =
      db.db()->MultiGet(rocksdb::ReadOptions(), cfs, slices, &values);
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i].ok()) {
      out.push_back(candidates[i]);
    } else if (!got[i].IsNotFound()) {
      return FromRocks(got[i], "store: read contacts");
    }
  }
  return out;
}

Status InboxStore::Impl::PutLastSeen(uint64_t user, uint64_t last_seen_ms) {
  std::vector<KvOp> ops;
  ops.push_back(KvOp{Cf::kMeta, MetaLastSeenKey(Vnode(user), user), EncodeU64(last_seen_ms)});
  return WriteRecords(std::move(ops));
}

Result<uint64_t> InboxStore::Impl::GetLastSeen(uint64_t user) const {
  const StoreDb::ReadHold db = db_->Hold();
  if (!db.ok()) return StoreDb::ReadHold::Closed();
  std::string v;
  const rocksdb::Status s = db.db()->Get(rocksdb::ReadOptions(), db.cf(Cf::kMeta),
                                         MetaLastSeenKey(Vnode(user), user), &v);
  if (s.IsNotFound()) return uint64_t{0};
  if (!s.ok()) return FromRocks(s, "store: read last seen");
  const std::optional<uint64_t> ms = DecodeU64(v);
  if (!ms) return Internal("store: malformed last seen");
  return *ms;
}

Status InboxStore::Impl::PutRevokedJti(std::string_view jti, int64_t until_ms) {
  if (jti.empty()) return BadRequest("store: empty jti");
  std::vector<KvOp> ops;
  ops.push_back(
      KvOp{Cf::kMeta, MetaRevokedJtiKey(jti), EncodeU64(static_cast<uint64_t>(until_ms))});
  return WriteRecords(std::move(ops));
}

Status InboxStore::Impl::PutRevokedUser(uint64_t user, int64_t before_ms) {
  // Keep the latest time ever given (as the in-memory list does).
  {
    const StoreDb::ReadHold db = db_->Hold();
    if (!db.ok()) return StoreDb::ReadHold::Closed();
    std::string v;
    const rocksdb::Status s =
        db.db()->Get(rocksdb::ReadOptions(), db.cf(Cf::kMeta), MetaRevokedUserKey(user), &v);
    if (s.ok()) {
      const std::optional<uint64_t> old = DecodeU64(v);
      if (old && static_cast<int64_t>(*old) >= before_ms) return Status::Ok();
    } else if (!s.IsNotFound()) {
      return FromRocks(s, "store: read user revocation");
    }
  }
  std::vector<KvOp> ops;
  ops.push_back(
      KvOp{Cf::kMeta, MetaRevokedUserKey(user), EncodeU64(static_cast<uint64_t>(before_ms))});
  return WriteRecords(std::move(ops));
}

Result<StoredRevocations> InboxStore::Impl::LoadRevocations(int64_t now_ms) {
  StoredRevocations out;
  std::vector<KvOp> expired;
  {
    const StoreDb::ReadHold db = db_->Hold();
    if (!db.ok()) return StoreDb::ReadHold::Closed();
    for (const char prefix : {kMetaRevokedJtiPrefix, kMetaRevokedUserPrefix}) {
      const std::string lower(1, prefix);
      const std::string upper(1, static_cast<char>(prefix + 1));
      const rocksdb::Slice upper_slice(upper);
      rocksdb::ReadOptions ro;
      ro.iterate_upper_bound = &upper_slice;
      std::unique_ptr<rocksdb::Iterator> it(db.db()->NewIterator(ro, db.cf(Cf::kMeta)));
      for (it->Seek(lower); it->Valid(); it->Next()) {
        const std::string_view key(it->key().data(), it->key().size());
        const std::optional<uint64_t> ms =
            DecodeU64(std::string_view(it->value().data(), it->value().size()));
        if (!ms) return Internal("store: malformed revocation record");
        const auto when = static_cast<int64_t>(*ms);
        if (prefix == kMetaRevokedJtiPrefix) {
          if (when < now_ms) {
            expired.push_back(KvOp{Cf::kMeta, std::string(key), std::nullopt});
          } else {
            out.jtis.emplace_back(std::string(key.substr(1)), when);
          }
        } else {
          if (key.size() != 9) return Internal("store: malformed user revocation key");
          out.users.emplace_back(GetBigEndian64(key.data() + 1), when);
        }
      }
      if (!it->status().ok()) return FromRocks(it->status(), "store: read revocations");
    }
  }
  if (!expired.empty()) IRIS_RETURN_IF_ERROR(WriteRecords(std::move(expired)));
  return out;
}

namespace {

Result<std::optional<StoredBundle>> ReadBundle(const StoreDb::ReadHold& db, int32_t vnode,
                                               uint64_t user, uint32_t device) {
  std::string v;
  const rocksdb::Status s = db.db()->Get(rocksdb::ReadOptions(), db.cf(Cf::kKeys),
                                         DeviceKeysBundleKey(vnode, user, device), &v);
  if (s.IsNotFound()) return std::optional<StoredBundle>();
  if (!s.ok()) return FromRocks(s, "store: read prekey bundle");
  std::optional<StoredBundle> b = DecodeStoredBundle(v);
  if (!b) return Internal("store: malformed prekey bundle");
  return b;
}

// The end of the key range that starts at `prefix` (every key with that prefix sorts
// before it).
std::string PrefixEnd(std::string prefix) {
  prefix.back() = static_cast<char>(prefix.back() + 1);
  return prefix;
}

}  // namespace

Result<std::vector<std::string>> InboxStore::Impl::PoolKeys(uint64_t user, uint32_t device) const {
  const StoreDb::ReadHold db = db_->Hold();
  if (!db.ok()) return StoreDb::ReadHold::Closed();
  const std::string prefix = DevicePreKeyPrefix(Vnode(user), user, device);
  const std::string upper = PrefixEnd(prefix);
  const rocksdb::Slice upper_slice(upper);
  rocksdb::ReadOptions ro;
  ro.iterate_upper_bound = &upper_slice;
  std::unique_ptr<rocksdb::Iterator> it(db.db()->NewIterator(ro, db.cf(Cf::kKeys)));
  std::vector<std::string> out;
  for (it->Seek(prefix); it->Valid(); it->Next()) out.push_back(it->key().ToString());
  if (!it->status().ok()) return FromRocks(it->status(), "store: read prekeys");
  return out;
}

Status InboxStore::Impl::UploadKeys(uint64_t user, const v1::KeysUpload& upload) {
  const uint32_t device = std::max<uint32_t>(upload.device_id(), kPrimaryDevice);
  if (device > kMaxDeviceId) return BadRequest("store: keys of device " + std::to_string(device));
  const int32_t vnode = Vnode(user);
  std::lock_guard<std::mutex> lock(key_stripes_[user % kKeyStripes]);
  std::optional<StoredBundle> existing;
  {
    const StoreDb::ReadHold db = db_->Hold();  // released before waiting for the write
    if (!db.ok()) return StoreDb::ReadHold::Closed();
    IRIS_ASSIGN_OR_RETURN(existing, ReadBundle(db, vnode, user, device));
  }
  StoredBundle b = existing.value_or(StoredBundle{});
  std::vector<KvOp> ops;
  // A new identity key is a new installation: the one-time prekeys and the signed prekey
  // stored under the old identity belong to private keys that no longer exist, and handing
  // them out would make every first message to the user undecryptable. They go in the same
  // write batch that stores the new bundle (atomic: no fetch sees a mix of the two).
  if (existing && !upload.identity_key().empty() &&
      upload.identity_key() != existing->bundle.identity_key()) {
    IRIS_ASSIGN_OR_RETURN(std::vector<std::string> stale, PoolKeys(user, device));
    for (std::string& k : stale) ops.push_back(KvOp{Cf::kKeys, std::move(k), std::nullopt});
    b.pool_size = 0;
    b.bundle.clear_signed_prekey();
  }
  const uint64_t adding = static_cast<uint64_t>(upload.one_time_prekeys_size());
  if (b.pool_size + adding > options_.max_one_time_prekeys) {
    return TooLarge("one-time prekey pool full: " + std::to_string(b.pool_size) + " stored + " +
                    std::to_string(adding) + " uploaded > " +
                    std::to_string(options_.max_one_time_prekeys) + " allowed per device");
  }
  if (!upload.identity_key().empty()) b.bundle.set_identity_key(upload.identity_key());
  if (upload.registration_id() != 0) b.bundle.set_registration_id(upload.registration_id());
  if (upload.has_signed_prekey()) *b.bundle.mutable_signed_prekey() = upload.signed_prekey();
  for (const v1::PreKey& k : upload.one_time_prekeys()) {
    ops.push_back(
        KvOp{Cf::kKeys, DevicePreKeyKey(vnode, user, device, b.next_seq++), k.SerializeAsString()});
    ++b.pool_size;
  }
  ops.push_back(KvOp{Cf::kKeys, DeviceKeysBundleKey(vnode, user, device), EncodeStoredBundle(b)});
  return WriteRecords(std::move(ops));
}

Result<std::optional<v1::KeysBundle>> InboxStore::Impl::TakeDeviceBundle(
    const StoreDb::ReadHold& db, uint64_t user, uint32_t device, std::vector<KvOp>* ops) {
  const int32_t vnode = Vnode(user);
  IRIS_ASSIGN_OR_RETURN(std::optional<StoredBundle> stored, ReadBundle(db, vnode, user, device));
  if (!stored) return std::optional<v1::KeysBundle>();
  v1::KeysBundle out = stored->bundle;
  out.set_user(user);
  out.set_device_id(device);
  if (stored->pool_size == 0) {
    out.set_one_time_prekeys_left(0);
    return std::optional<v1::KeysBundle>(std::move(out));
  }
  const std::string prefix = DevicePreKeyPrefix(vnode, user, device);
  const std::string upper = PrefixEnd(prefix);
  const rocksdb::Slice upper_slice(upper);
  rocksdb::ReadOptions ro;
  ro.iterate_upper_bound = &upper_slice;
  std::unique_ptr<rocksdb::Iterator> it(db.db()->NewIterator(ro, db.cf(Cf::kKeys)));
  it->Seek(prefix);
  if (!it->status().ok()) return FromRocks(it->status(), "store: read prekeys");
  if (it->Valid()) {
    v1::PreKey k;
    if (!k.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return Internal("store: malformed prekey");
    }
    *out.mutable_one_time_prekey() = std::move(k);
    ops->push_back(KvOp{Cf::kKeys, it->key().ToString(), std::nullopt});
    --stored->pool_size;
  } else {
    stored->pool_size = 0;  // the count drifted from the pool: trust the pool
  }
  out.set_one_time_prekeys_left(
      static_cast<uint32_t>(std::min<uint64_t>(stored->pool_size, UINT32_MAX)));
  ops->push_back(
      KvOp{Cf::kKeys, DeviceKeysBundleKey(vnode, user, device), EncodeStoredBundle(*stored)});
  return std::optional<v1::KeysBundle>(std::move(out));
}

Result<v1::KeysBundle> InboxStore::Impl::FetchKeys(uint64_t user) {
  // Every device in the user's device list (device 1 alone when none was set).
  IRIS_ASSIGN_OR_RETURN(const UserSettings settings, GetSettings(user));
  std::lock_guard<std::mutex> lock(key_stripes_[user % kKeyStripes]);
  v1::KeysBundle out;
  std::vector<KvOp> ops;
  bool found = false;
  {
    const StoreDb::ReadHold db = db_->Hold();  // released before waiting for the write
    if (!db.ok()) return StoreDb::ReadHold::Closed();
    for (uint32_t device : DeviceIds(settings.Devices())) {
      IRIS_ASSIGN_OR_RETURN(std::optional<v1::KeysBundle> b,
                            TakeDeviceBundle(db, user, device, &ops));
      if (!b) continue;
      found = true;
      if (device == kPrimaryDevice) {  // the first (ascending ids): the top-level fields
        out = std::move(*b);
      } else {
        *out.add_devices() = std::move(*b);
      }
    }
  }
  if (!found) return NotFound("store: no keys uploaded for user " + std::to_string(user));
  out.set_user(user);
  if (!settings.device_list.empty()) {
    out.mutable_device_list()->ParseFromString(settings.device_list);
  }
  if (!ops.empty()) IRIS_RETURN_IF_ERROR(WriteRecords(std::move(ops)));
  return out;
}

Result<DeviceMask> InboxStore::Impl::DevicesWithKeys(uint64_t user, DeviceMask candidates) const {
  const StoreDb::ReadHold db = db_->Hold();
  if (!db.ok()) return StoreDb::ReadHold::Closed();
  DeviceMask out = 0;
  for (uint32_t device : DeviceIds(candidates)) {
    IRIS_ASSIGN_OR_RETURN(std::optional<StoredBundle> b, ReadBundle(db, Vnode(user), user, device));
    if (b) out |= DeviceBit(device);
  }
  return out;
}

Status InboxStore::Impl::DropDeviceKeys(uint64_t user, uint32_t device) {
  const int32_t vnode = Vnode(user);
  std::lock_guard<std::mutex> lock(key_stripes_[user % kKeyStripes]);
  std::vector<KvOp> ops;
  ops.push_back(KvOp{Cf::kKeys, DeviceKeysBundleKey(vnode, user, device), std::nullopt});
  const std::string prefix = DevicePreKeyPrefix(vnode, user, device);
  ops.push_back(KvOp{Cf::kKeys, prefix, std::nullopt, PrefixEnd(prefix)});
  return WriteRecords(std::move(ops));
}

Status InboxStore::Impl::PutGroup(const v1::GroupInfo& group) {
  if (group.group_id() == 0) return BadRequest("store: group_id is 0");
  v1::GroupInfo copy = group;
  copy.clear_request_id();
  std::vector<KvOp> ops;
  ops.push_back(KvOp{Cf::kGroups, GroupKey(Vnode(group.group_id()), group.group_id()),
                     copy.SerializeAsString()});
  return WriteRecords(std::move(ops));
}

Result<std::vector<InboxStore::FanOutJob>> InboxStore::Impl::LoadFanOutJobs() const {
  const StoreDb::ReadHold db = db_->Hold();
  if (!db.ok()) return StoreDb::ReadHold::Closed();
  std::vector<InboxStore::FanOutJob> out;
  std::unique_ptr<rocksdb::Iterator> it(
      db.db()->NewIterator(rocksdb::ReadOptions(), db.cf(Cf::kGroups)));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    const rocksdb::Slice k = it->key();
    const auto ids = ParseFanOutJobKey(std::string_view(k.data(), k.size()));
    if (!ids) continue;
    const rocksdb::Slice v = it->value();
    InboxStore::FanOutJob job;
    job.group_id = ids->first;
    job.job_id = ids->second;
    if (v.size() < 8 || !job.message.ParseFromArray(v.data() + 8, static_cast<int>(v.size() - 8))) {
      return Internal("store: malformed fan-out job");
    }
    job.done_through = GetBigEndian64(v.data());
    out.push_back(std::move(job));
  }
  if (!it->status().ok()) return FromRocks(it->status(), "store: read fan-out jobs");
  return out;
}

Result<v1::GroupInfo> InboxStore::Impl::GetGroup(uint64_t group_id) const {
  const StoreDb::ReadHold db = db_->Hold();
  if (!db.ok()) return StoreDb::ReadHold::Closed();
  std::string v;
  const rocksdb::Status s = db.db()->Get(rocksdb::ReadOptions(), db.cf(Cf::kGroups),
                                         GroupKey(Vnode(group_id), group_id), &v);
  if (s.IsNotFound()) return NotFound("store: no group " + std::to_string(group_id));
  if (!s.ok()) return FromRocks(s, "store: read group");
  v1::GroupInfo g;
  if (!g.ParseFromString(v)) return Internal("store: malformed group");
  return g;
}

}  // namespace iris::store
