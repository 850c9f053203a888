// Vnode key ranges: the layout check and the migration from layout version 1 at Open, the
// HLC high-water marks, and the per-vnode checksum and deletion (store_keys.h).
//
// Migration from version 1 (keys without the vnode prefix) runs in Init, before any other
// thread, in bounded WriteBatches that each put the new keys and delete the old ones, so a
// crash between two batches leaves every record under exactly one of its two keys and the
// next Open carries on. Old and new keys are told apart by their length in every column
// family but `dedup` (sender(8) key vs vnode(4) sender(8) key), so dedup entries go in two
// steps: first moved to staging keys in `meta` ('X' + old key, marker 'M' = "staged" when
// the column family is empty), then written under the vnode of the message they name (its
// group's, or its recipient's: found by scanning `inbox` and `archive` for the first id),
// dropping entries past the window or whose message no longer exists. The layout version
// is written last.
#include <xxhash.h>

#include <algorithm>
#include <limits>

#include "common/assert.h"
#include "common/bytes.h"
#include "obs/log.h"
#include "store/inbox_store_impl.h"
#include "store/shard_batch.h"

namespace iris::store {
namespace {

constexpr size_t kMigrationBatchOps = 1024;
constexpr size_t kMigrationBatchBytes = 4u << 20;
constexpr size_t kDedupChunk = 1u << 18;  // staged dedup entries resolved per inbox scan
constexpr char kMetaMigrationKey[] = "M";
constexpr char kDedupStaged[] = "dedup-staged";
constexpr char kMetaDedupStagingPrefix = 'X';

// Accumulates the puts and deletes of one migration step and writes them in bounded
// batches (not synced: the final synced write of the layout version syncs them all, and
// point-in-time recovery keeps a prefix of the batches).
class MigrationWriter {
 public:
  explicit MigrationWriter(StoreDb& db) : db_(db) {}
  Status Put(Cf cf, const std::string& key, const rocksdb::Slice& value) {
    batch_.Put(db_.cf(cf), key, value).PermitUncheckedError();
    return Added(key.size() + value.size());
  }
  Status Delete(Cf cf, const rocksdb::Slice& key) {
    batch_.Delete(db_.cf(cf), key).PermitUncheckedError();
    return Added(key.size());
  }
  Status Flush() {
    if (batch_.Count() == 0) return Status::Ok();
    const rocksdb::Status s = db_.db()->Write(rocksdb::WriteOptions(), &batch_);
    batch_.Clear();
    bytes_ = 0;
    return FromRocks(s, "store: layout migration write");
  }

 private:
  Status Added(size_t bytes) {
    bytes_ += bytes;
    if (static_cast<size_t>(batch_.Count()) >= kMigrationBatchOps ||
        bytes_ >= kMigrationBatchBytes) {
      return Flush();
    }
    return Status::Ok();
  }
  StoreDb& db_;
  rocksdb::WriteBatch batch_;
  size_t bytes_ = 0;
};

std::string_view View(const rocksdb::Slice& s) { return {s.data(), s.size()}; }

Result<std::optional<std::string>> GetMeta(const StoreDb& db, const std::string& key) {
  std::string v;
  const rocksdb::Status s = db.db()->Get(rocksdb::ReadOptions(), db.cf(Cf::kMeta), key, &v);
  if (s.IsNotFound()) return std::optional<std::string>();
  if (!s.ok()) return FromRocks(s, "store: read " + key);
  return std::optional<std::string>(std::move(v));
}

// Rewrites every key of `cf` that `convert` maps to a new key (nullopt: not an old key).
template <typename Convert>
Result<uint64_t> MigrateColumnFamily(StoreDb& db, Cf cf, Convert convert) {
  MigrationWriter w(db);
  uint64_t moved = 0;
  rocksdb::ReadOptions ro;
  ro.fill_cache = false;
  std::unique_ptr<rocksdb::Iterator> it(db.db()->NewIterator(ro, db.cf(cf)));  // a snapshot
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    const std::optional<std::string> key = convert(View(it->key()));
    if (!key) continue;
    IRIS_RETURN_IF_ERROR(w.Put(cf, *key, it->value()));
    IRIS_RETURN_IF_ERROR(w.Delete(cf, it->key()));
    ++moved;
  }
  if (!it->status().ok()) return FromRocks(it->status(), "store: layout migration read");
  IRIS_RETURN_IF_ERROR(w.Flush());
  return moved;
}

}  // namespace

Result<uint64_t> InboxStore::Impl::ReadHighWaterMark() const {
  // 'H' shard(4) per shard; a bare 'H' is a version-1 mark not migrated yet.
  const std::string prefix(1, kMetaHlcPrefix);
  std::unique_ptr<rocksdb::Iterator> it(
      db_->db()->NewIterator(rocksdb::ReadOptions(), db_->cf(Cf::kMeta)));
  uint64_t high = 0;
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    const std::optional<uint64_t> mark = DecodeU64(View(it->value()));
    if (!mark) return Internal("store: malformed HLC high-water mark");
    high = std::max(high, *mark);
  }
  if (!it->status().ok()) return FromRocks(it->status(), "store: read HLC high-water marks");
  return high;
}

Status InboxStore::Impl::EnsureLayout() {
  StoreDb& db = *db_;
  IRIS_ASSIGN_OR_RETURN(const std::optional<std::string> version_value,
                        GetMeta(db, kMetaLayoutVersionKey));
  IRIS_ASSIGN_OR_RETURN(const std::optional<std::string> vnodes_value, GetMeta(db, kMetaVnodesKey));
  std::optional<uint32_t> recorded_vnodes;
  if (vnodes_value) {
    recorded_vnodes = DecodeU32(*vnodes_value);
    if (!recorded_vnodes) return Internal("store: malformed vnode count in " + options_.path);
    if (*recorded_vnodes != static_cast<uint32_t>(options_.vnodes)) {
      return BadRequest("store: " + options_.path + " was created with " +
                        std::to_string(*recorded_vnodes) + " vnodes, opened with " +
                        std::to_string(options_.vnodes) +
                        " (the vnode count of a store cannot change)");
    }
  }
  if (version_value) {
    const std::optional<uint32_t> version = DecodeU32(*version_value);
    if (!version) return Internal("store: malformed layout version in " + options_.path);
    if (*version > kLayoutVersion) {
      return LayoutTooNew(options_.path, *version);
    }
    if (*version == kLayoutVersion) {
      if (!recorded_vnodes) return Internal("store: vnode count missing in " + options_.path);
      return Status::Ok();
    }
  }

  // No version: a new store, or one of layout version 1 (possibly mid-migration).
  bool empty = true;
  for (int c = 0; c < static_cast<int>(Cf::kCount) && empty; ++c) {
    std::unique_ptr<rocksdb::Iterator> it(
        db.db()->NewIterator(rocksdb::ReadOptions(), db.cf(static_cast<Cf>(c))));
    it->SeekToFirst();
    if (!it->status().ok()) return FromRocks(it->status(), "store: read at open");
    empty = !it->Valid();
  }
  rocksdb::WriteOptions sync;
  sync.sync = true;
  if (empty) {
    rocksdb::WriteBatch b;
    b.Put(db.cf(Cf::kMeta), kMetaVnodesKey, EncodeU32(static_cast<uint32_t>(options_.vnodes)))
        .PermitUncheckedError();
    b.Put(db.cf(Cf::kMeta), kMetaLayoutVersionKey, EncodeU32(kLayoutVersion))
        .PermitUncheckedError();
    return FromRocks(db.db()->Write(sync, &b), "store: record the layout");
  }
  if (!recorded_vnodes) {
    // Fixes V before any key is written with it, so a rerun cannot mix two vnode counts.
    IRIS_RETURN_IF_ERROR(FromRocks(db.db()->Put(sync, db.cf(Cf::kMeta), kMetaVnodesKey,
                                                EncodeU32(static_cast<uint32_t>(options_.vnodes))),
                                   "store: record the vnode count"));
  }
  return MigrateFromVersion1();
}

Status InboxStore::Impl::MigrateFromVersion1() {
  StoreDb& db = *db_;
  const int32_t vnodes = options_.vnodes;
  obs::LogInfo("store: migrating layout version 1 to 2 (vnode prefixes)",
               {{"path", options_.path}, {"vnodes", vnodes}});

  // inbox, archive: user(8) id(8) -> vnode(4) user(8) id(8).
  auto inbox = [&](std::string_view k) -> std::optional<std::string> {
    if (k.size() != 16) return std::nullopt;
    const uint64_t user = GetBigEndian64(k.data());
    return InboxKey(store::VnodeOf(user, vnodes), user, GetBigEndian64(k.data() + 8));
  };
  IRIS_ASSIGN_OR_RETURN(const uint64_t inbox_moved, MigrateColumnFamily(db, Cf::kInbox, inbox));
  IRIS_ASSIGN_OR_RETURN(const uint64_t archive_moved, MigrateColumnFamily(db, Cf::kArchive, inbox));
  // meta: tag(1) user(8) -> vnode(4) tag(1) user(8) for the per-user tags.
  IRIS_ASSIGN_OR_RETURN(
      const uint64_t meta_moved,
      MigrateColumnFamily(db, Cf::kMeta, [&](std::string_view k) -> std::optional<std::string> {
        if (k.size() != 9) return std::nullopt;
        const uint64_t user = GetBigEndian64(k.data() + 1);
        const int32_t v = store::VnodeOf(user, vnodes);
        switch (k[0]) {
          case kMetaUserStateTag: return MetaUserStateKey(v, user);
          case kMetaArchivePendingTag: return MetaArchivePendingKey(v, user);
          case kMetaSettingsTag: return MetaSettingsKey(v, user);
          case kMetaLastSeenTag: return MetaLastSeenKey(v, user);
          default: return std::nullopt;  // 'R' user(8) is node-wide
        }
      }));
  // keys: user(8) 'B' (9 bytes) and user(8) 'P' seq(8) (17); new keys are 13 and 21 bytes.
  IRIS_ASSIGN_OR_RETURN(
      const uint64_t keys_moved,
      MigrateColumnFamily(db, Cf::kKeys, [&](std::string_view k) -> std::optional<std::string> {
        if (k.size() == 9 && k[8] == 'B') {
          const uint64_t user = GetBigEndian64(k.data());
          return KeysBundleKey(store::VnodeOf(user, vnodes), user);
        }
        if (k.size() == 17 && k[8] == 'P') {
          const uint64_t user = GetBigEndian64(k.data());
          return PreKeyKey(store::VnodeOf(user, vnodes), user, GetBigEndian64(k.data() + 9));
        }
        return std::nullopt;
      }));
  // groups: group(8) -> vnode(4) group(8).
  IRIS_ASSIGN_OR_RETURN(
      const uint64_t groups_moved,
      MigrateColumnFamily(db, Cf::kGroups, [&](std::string_view k) -> std::optional<std::string> {
        if (k.size() != 8) return std::nullopt;
        const uint64_t group = GetBigEndian64(k.data());
        return GroupKey(store::VnodeOf(group, vnodes), group);
      }));

  // dedup, step 1: every (old) entry to a staging key in `meta`.
  IRIS_ASSIGN_OR_RETURN(const std::optional<std::string> staged, GetMeta(db, kMetaMigrationKey));
  if (!staged || *staged != kDedupStaged) {
    MigrationWriter w(db);
    std::unique_ptr<rocksdb::Iterator> it(
        db.db()->NewIterator(rocksdb::ReadOptions(), db.cf(Cf::kDedup)));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      std::string key(1, kMetaDedupStagingPrefix);
      key.append(it->key().data(), it->key().size());
      IRIS_RETURN_IF_ERROR(w.Put(Cf::kMeta, key, it->value()));
      IRIS_RETURN_IF_ERROR(w.Delete(Cf::kDedup, it->key()));
    }
    if (!it->status().ok()) return FromRocks(it->status(), "store: layout migration read");
    IRIS_RETURN_IF_ERROR(w.Put(Cf::kMeta, kMetaMigrationKey, kDedupStaged));
    IRIS_RETURN_IF_ERROR(w.Flush());
  }

  // dedup, step 2: each staged entry under its message's owner's vnode.
  uint64_t dedup_moved = 0;
  uint64_t dedup_dropped = 0;
  const int64_t now = clock_->WallMillis();
  for (;;) {
    struct Staged {
      std::string key;  // the staging key
      std::string value;
      uint64_t first_id = 0;
      std::optional<int32_t> vnode;  // the owner's, once found
    };
    std::vector<Staged> chunk;
    {
      const std::string prefix(1, kMetaDedupStagingPrefix);
      std::unique_ptr<rocksdb::Iterator> it(
          db.db()->NewIterator(rocksdb::ReadOptions(), db.cf(Cf::kMeta)));
      for (it->Seek(prefix);
           it->Valid() && it->key().starts_with(prefix) && chunk.size() < kDedupChunk; it->Next()) {
        chunk.push_back(Staged{it->key().ToString(), it->value().ToString()});
      }
      if (!it->status().ok()) return FromRocks(it->status(), "store: layout migration read");
    }
    if (chunk.empty()) break;
    std::vector<std::pair<uint64_t, size_t>> wanted;  // first id, index in chunk
    for (size_t i = 0; i < chunk.size(); ++i) {
      const std::optional<DedupEntry> e = DecodeDedupEntry(chunk[i].value);
      // An old key is sender(8) + 1..255 bytes; drop what is expired or unreadable.
      if (!e || chunk[i].key.size() < 1 + 9 || e->accepted_ms + options_.dedup_window_ms <= now) {
        continue;
      }
      chunk[i].first_id = e->first_id;
      wanted.emplace_back(e->first_id, i);
    }
    std::sort(wanted.begin(), wanted.end());
    for (Cf cf : {Cf::kInbox, Cf::kArchive}) {
      if (wanted.empty()) break;
      rocksdb::ReadOptions ro;
      ro.fill_cache = false;
      std::unique_ptr<rocksdb::Iterator> it(db.db()->NewIterator(ro, db.cf(cf)));
      for (it->SeekToFirst(); it->Valid(); it->Next()) {
        const std::optional<InboxKeyParts> parts = ParseInboxKey(View(it->key()));
        if (!parts) continue;
        auto at =
            std::lower_bound(wanted.begin(), wanted.end(), std::make_pair(parts->id, size_t{0}));
        if (at == wanted.end() || at->first != parts->id) continue;
        v1::Envelope e;
        if (!e.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) continue;
        const int32_t owner =
            e.group_id() != 0 ? store::VnodeOf(e.group_id(), vnodes) : parts->vnode;
        for (; at != wanted.end() && at->first == parts->id; ++at) chunk[at->second].vnode = owner;
      }
      if (!it->status().ok()) return FromRocks(it->status(), "store: layout migration read");
    }
    MigrationWriter w(db);
    for (const Staged& s : chunk) {
      if (s.vnode) {
        const std::string_view old_key = std::string_view(s.key).substr(1);
        IRIS_RETURN_IF_ERROR(
            w.Put(Cf::kDedup, DedupKey(*s.vnode, GetBigEndian64(old_key.data()), old_key.substr(8)),
                  s.value));
        ++dedup_moved;
      } else {
        ++dedup_dropped;
      }
      IRIS_RETURN_IF_ERROR(w.Delete(Cf::kMeta, s.key));
    }
    IRIS_RETURN_IF_ERROR(w.Flush());
  }

  // The HLC mark: one per shard (the node-wide clock covered them all), then the version.
  IRIS_ASSIGN_OR_RETURN(const std::optional<std::string> old_mark, GetMeta(db, "H"));
  rocksdb::WriteBatch last;
  if (old_mark) {
    const std::optional<uint64_t> mark = DecodeU64(*old_mark);
    if (!mark) return Internal("store: malformed HLC high-water mark");
    std::vector<uint32_t> shards = *ShardMap();
    std::sort(shards.begin(), shards.end());
    shards.erase(std::unique(shards.begin(), shards.end()), shards.end());
    for (const uint32_t shard : shards) {
      last.Put(db.cf(Cf::kMeta), MetaHlcKey(shard), EncodeU64(*mark)).PermitUncheckedError();
    }
    last.Delete(db.cf(Cf::kMeta), "H").PermitUncheckedError();
  }
  last.Delete(db.cf(Cf::kMeta), kMetaMigrationKey).PermitUncheckedError();
  last.Put(db.cf(Cf::kMeta), kMetaLayoutVersionKey, EncodeU32(kLayoutVersion))
      .PermitUncheckedError();
  rocksdb::WriteOptions sync;
  sync.sync = true;
  IRIS_RETURN_IF_ERROR(FromRocks(db.db()->Write(sync, &last), "store: record the layout"));
  obs::LogInfo("store: layout migrated to version 2", {{"path", options_.path},
                                                       {"inbox", inbox_moved},
                                                       {"archive", archive_moved},
                                                       {"meta", meta_moved},
                                                       {"keys", keys_moved},
                                                       {"groups", groups_moved},
                                                       {"dedup", dedup_moved},
                                                       {"dedup_dropped", dedup_dropped}});
  return Status::Ok();
}

Result<uint64_t> InboxStore::Impl::VnodeChecksum(int32_t vnode) const {
  if (vnode < 0 || vnode >= options_.vnodes) {
    return BadRequest("store: vnode " + std::to_string(vnode) + " out of range 0.." +
                      std::to_string(options_.vnodes - 1));
  }
  const StoreDb::ReadHold db = db_->Hold();
  if (!db.ok()) return StoreDb::ReadHold::Closed();
  rocksdb::ManagedSnapshot snapshot(db.db());
  const std::string begin = VnodePrefix(vnode);
  const std::string end = VnodePrefix(vnode + 1);
  const rocksdb::Slice end_slice(end);
  XXH3_state_t* state = XXH3_createState();
  if (state == nullptr) return Internal("store: out of memory for a checksum");
  XXH3_64bits_reset(state);
  // Each record as cf(1) key size(4) key value size(4) value: unambiguous across records.
  auto feed_size = [&](size_t n) {
    std::string s;
    s.push_back(static_cast<char>(n >> 24));
    s.push_back(static_cast<char>(n >> 16));
    s.push_back(static_cast<char>(n >> 8));
    s.push_back(static_cast<char>(n));
    XXH3_64bits_update(state, s.data(), s.size());
  };
  Status error;
  for (int c = 0; c < static_cast<int>(Cf::kCount) && error.ok(); ++c) {
    rocksdb::ReadOptions ro;
    ro.snapshot = snapshot.snapshot();
    ro.fill_cache = false;
    ro.iterate_upper_bound = &end_slice;
    std::unique_ptr<rocksdb::Iterator> it(db.db()->NewIterator(ro, db.cf(static_cast<Cf>(c))));
    for (it->Seek(begin); it->Valid(); it->Next()) {
      const char tag = static_cast<char>(c);
      XXH3_64bits_update(state, &tag, 1);
      feed_size(it->key().size());
      XXH3_64bits_update(state, it->key().data(), it->key().size());
      feed_size(it->value().size());
      XXH3_64bits_update(state, it->value().data(), it->value().size());
    }
    if (!it->status().ok()) error = FromRocks(it->status(), "store: vnode checksum");
  }
  const uint64_t sum = XXH3_64bits_digest(state);
  XXH3_freeState(state);
  if (!error.ok()) return error;
  return sum;
}

Result<std::string> InboxStore::Impl::CopyShardChunk(uint32_t shard, std::string* cursor,
                                                     size_t max_bytes, bool* done,
                                                     uint64_t* read_lsn) const {
  *done = false;
  const std::shared_ptr<const std::vector<uint32_t>> map = ShardMap();
  const int32_t vnodes = options_.vnodes;
  const auto next_vnode = [&](int32_t v) {
    for (; map && v < vnodes && static_cast<size_t>(v) < map->size(); ++v) {
      if ((*map)[static_cast<size_t>(v)] == shard) return v;
    }
    return vnodes;
  };
  // The cursor: vnode(4) cf(1) the first key not copied yet.
  int32_t vnode = 0;
  int cf = 0;
  std::string from;
  if (cursor->empty()) {
    vnode = next_vnode(0);
    if (vnode < vnodes) from = VnodePrefix(vnode);
  } else {
    const std::optional<uint32_t> v = DecodeU32(std::string_view(*cursor).substr(0, 4));
    if (cursor->size() < 5 || !v || *v >= static_cast<uint32_t>(vnodes) ||
        static_cast<unsigned char>((*cursor)[4]) >= static_cast<int>(Cf::kCount)) {
      return BadRequest("store: malformed shard copy cursor");
    }
    vnode = static_cast<int32_t>(*v);
    cf = static_cast<unsigned char>((*cursor)[4]);
    from = cursor->substr(5);
  }
  const StoreDb::ReadHold db = db_->Hold();
  if (!db.ok()) return StoreDb::ReadHold::Closed();
  rocksdb::ManagedSnapshot snapshot(db.db());
  if (read_lsn != nullptr) {
    rocksdb::ReadOptions ro;
    ro.snapshot = snapshot.snapshot();
    std::string v;
    const rocksdb::Status s =
        db.db()->Get(ro, db.cf(Cf::kMeta), MetaReplicatedLsnKey(shard), &v);
    if (!s.ok() && !s.IsNotFound()) return FromRocks(s, "store: read the replicated lsn");
    const std::optional<uint64_t> lsn = s.ok() ? DecodeU64(v) : std::optional<uint64_t>(0);
    if (!lsn) return Internal("store: malformed replicated lsn of shard " + std::to_string(shard));
    *read_lsn = *lsn;
  }
  std::string out;
  size_t bytes = 0;
  while (vnode < vnodes) {
    const std::string end = VnodePrefix(vnode + 1);
    const rocksdb::Slice end_slice(end);
    rocksdb::ReadOptions ro;
    ro.snapshot = snapshot.snapshot();
    ro.fill_cache = false;
    ro.iterate_upper_bound = &end_slice;
    const Cf family = static_cast<Cf>(cf);
    std::unique_ptr<rocksdb::Iterator> it(db.db()->NewIterator(ro, db.cf(family)));
    std::string puts;
    std::string range_end = end;  // exclusive
    bool full = false;
    for (it->Seek(from); it->Valid(); it->Next()) {
      if (bytes >= max_bytes) {  // the range ends before this record; the next chunk has it
        range_end = it->key().ToString();
        full = true;
        break;
      }
      AppendShardOp(ShardOp{'P', family, it->key().ToString(), it->value().ToString()}, &puts);
      bytes += it->key().size() + it->value().size() + 8;
    }
    if (!it->status().ok()) return FromRocks(it->status(), "store: copy a shard");
    AppendShardOp(ShardOp{'R', family, from, range_end}, &out);
    out += puts;
    bytes += from.size() + range_end.size() + 8;
    if (full) {
      *cursor = EncodeU32(static_cast<uint32_t>(vnode)) + static_cast<char>(cf) + range_end;
      return out;
    }
    if (++cf == static_cast<int>(Cf::kCount)) {
      cf = 0;
      vnode = next_vnode(vnode + 1);
    }
    if (vnode < vnodes) from = VnodePrefix(vnode);
    if (bytes >= max_bytes && vnode < vnodes) {
      *cursor = EncodeU32(static_cast<uint32_t>(vnode)) + static_cast<char>(cf) + from;
      return out;
    }
  }
  *done = true;
  cursor->clear();
  return out;
}

Status InboxStore::Impl::DeleteVnode(int32_t vnode) {
  if (vnode < 0 || vnode >= options_.vnodes) {
    return BadRequest("store: vnode " + std::to_string(vnode) + " out of range 0.." +
                      std::to_string(options_.vnodes - 1));
  }
  IRIS_ASSERT_NOT_ON_LOOP_THREAD();  // waits for the group commit's fdatasync
  auto promise = std::make_shared<std::promise<Status>>();
  std::future<Status> result = promise->get_future();
  CommitRequest r;
  r.bytes = 16;
  r.body = VnodeDeleteRequest{vnode, [promise](Status s) { promise->set_value(s); }};
  Enqueue(std::move(r));
  return result.get();
}

}  // namespace iris::store
