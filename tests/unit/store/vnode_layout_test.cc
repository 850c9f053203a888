// Store layout version 2: vnode-prefixed keys, per-shard HLC high-water marks, vnode
// checksums and deletes, and the migration of a version-1 store on open.
#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <set>

#include "store/inbox_store.h"
#include "store/legacy_keys.h"
#include "store/shard_batch.h"
#include "store/store_db.h"
#include "store/store_keys.h"
#include "unit/store/store_test_util.h"

namespace iris::store {
namespace {

using testing::HistoryAll;
using testing::MakeEnvelope;
using testing::One;
using testing::ScanAll;
using testing::TempDir;
using testing::TestOptions;

constexpr int32_t kVnodes = 4096;

int32_t V(uint64_t owner) { return VnodeOf(owner, kVnodes); }

std::unique_ptr<InboxStore> OpenOrDie(const StoreOptions& o) {
  Result<std::unique_ptr<InboxStore>> s = InboxStore::Open(o);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? std::move(s).value() : nullptr;
}

std::unique_ptr<StoreDb> OpenRaw(const std::string& path) {
  StoreDbOptions o;
  o.path = path;
  o.write_buffer_bytes = 1u << 20;
  Result<std::unique_ptr<StoreDb>> db = StoreDb::Open(o);
  EXPECT_TRUE(db.ok()) << db.status().ToString();
  return db.ok() ? std::move(db).value() : nullptr;
}

void Put(StoreDb& db, Cf cf, const std::string& key, const std::string& value) {
  rocksdb::WriteOptions wo;
  wo.sync = true;
  ASSERT_TRUE(db.db()->Put(wo, db.cf(cf), key, value).ok());
}

std::optional<std::string> Get(StoreDb& db, Cf cf, const std::string& key) {
  std::string v;
  const rocksdb::Status s = db.db()->Get(rocksdb::ReadOptions(), db.cf(cf), key, &v);
  if (!s.ok()) return std::nullopt;
  return v;
}

// Every key of a column family.
std::vector<std::string> Keys(StoreDb& db, Cf cf) {
  std::vector<std::string> out;
  std::unique_ptr<rocksdb::Iterator> it(db.db()->NewIterator(rocksdb::ReadOptions(), db.cf(cf)));
  for (it->SeekToFirst(); it->Valid(); it->Next()) out.push_back(it->key().ToString());
  return out;
}

// Two users (and groups) whose vnodes differ.
std::pair<uint64_t, uint64_t> UsersInDistinctVnodes() {
  for (uint64_t b = 3;; ++b) {
    if (V(b) != V(2)) return {2, b};
  }
}

TEST(VnodeLayoutTest, NewStoreRecordsItsVnodeCountAndRefusesAnother) {
  TempDir dir;
  { auto store = OpenOrDie(TestOptions(dir.path())); }
  StoreOptions other = TestOptions(dir.path());
  other.vnodes = 1024;
  Result<std::unique_ptr<InboxStore>> s = InboxStore::Open(other);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kBadRequest);
  EXPECT_NE(s.status().message().find("created with 4096 vnodes, opened with 1024"),
            std::string::npos)
      << s.status().message();
  for (const int32_t bad : {0, -1, kMaxVnodes + 1}) {
    StoreOptions o = TestOptions(dir.path());
    o.vnodes = bad;
    EXPECT_EQ(InboxStore::Open(o).status().code(), StatusCode::kBadRequest) << bad;
  }
  EXPECT_NE(OpenOrDie(TestOptions(dir.path())), nullptr);
}

TEST(VnodeLayoutTest, NewerLayoutVersionIsRefused) {
  TempDir dir;
  { auto store = OpenOrDie(TestOptions(dir.path())); }
  {
    auto db = OpenRaw(dir.path());
    ASSERT_NE(db, nullptr);
    Put(*db, Cf::kMeta, kMetaLayoutVersionKey, EncodeU32(kLayoutVersion + 1));
  }
  Result<std::unique_ptr<InboxStore>> s = InboxStore::Open(TestOptions(dir.path()));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kUnsupportedVersion);
  EXPECT_NE(s.status().message().find("layout version 3"), std::string::npos)
      << s.status().message();
}

TEST(VnodeLayoutTest, EveryPerOwnerRecordIsKeyedByItsOwnersVnode) {
  TempDir dir;
  uint64_t one_to_one = 0;
  uint64_t group_send = 0;
  const uint64_t group_id = 900;
  {
    auto store = OpenOrDie(TestOptions(dir.path()));
    ASSERT_NE(store, nullptr);
    EXPECT_EQ(store->VnodeOf(2), V(2));
    Result<AppendOutcome> r = store->Append(1, "k1", One(1, 2, "m"));
    ASSERT_TRUE(r.ok());
    one_to_one = r->message_id;
    std::vector<v1::Envelope> fan;
    for (uint64_t member : {3, 4}) fan.push_back(MakeEnvelope(1, member, "g", group_id));
    Result<AppendOutcome> g = store->Append(1, "k2", std::move(fan));
    ASSERT_TRUE(g.ok());
    group_send = g->message_id;
    ASSERT_TRUE(store->PutSettings(5, UserSettings{false, false}).ok());
    ASSERT_TRUE(store->PutLastSeen(5, 1234).ok());
    v1::KeysUpload up;
    up.set_identity_key("id");
    up.add_one_time_prekeys()->set_id(1);
    ASSERT_TRUE(store->UploadKeys(6, up).ok());
    v1::GroupInfo info;
    info.set_group_id(group_id);
    ASSERT_TRUE(store->PutGroup(info).ok());
  }
  auto db = OpenRaw(dir.path());
  ASSERT_NE(db, nullptr);
  EXPECT_TRUE(Get(*db, Cf::kInbox, InboxKey(V(2), 2, one_to_one)));
  EXPECT_TRUE(Get(*db, Cf::kInbox, InboxKey(V(3), 3, group_send)));
  // Dedup: the recipient's vnode for a 1:1 send, the group's for a group send.
  EXPECT_TRUE(Get(*db, Cf::kDedup, DedupKey(V(2), 1, "k1")));
  EXPECT_TRUE(Get(*db, Cf::kDedup, DedupKey(V(group_id), 1, "k2")));
  EXPECT_TRUE(Get(*db, Cf::kMeta, MetaSettingsKey(V(5), 5)));
  EXPECT_TRUE(Get(*db, Cf::kMeta, MetaLastSeenKey(V(5), 5)));
  EXPECT_TRUE(Get(*db, Cf::kKeys, KeysBundleKey(V(6), 6)));
  EXPECT_TRUE(Get(*db, Cf::kKeys, PreKeyKey(V(6), 6, 0)));
  EXPECT_TRUE(Get(*db, Cf::kGroups, GroupKey(V(group_id), group_id)));
  EXPECT_EQ(Get(*db, Cf::kMeta, kMetaLayoutVersionKey), EncodeU32(kLayoutVersion));
  EXPECT_EQ(Get(*db, Cf::kMeta, kMetaVnodesKey), EncodeU32(kVnodes));
}

TEST(VnodeLayoutTest, EachShardKeepsTheHighWaterMarkOfTheBatchesThatTouchedIt) {
  TempDir dir;
  StoreOptions o = TestOptions(dir.path());
  o.shard_of_vnode = [](int32_t vnode) { return static_cast<uint32_t>(vnode % 2); };
  uint64_t in_shard = 0;  // a user in the other shard than user 2
  for (uint64_t u = 3;; ++u) {
    if (V(u) % 2 != V(2) % 2) {
      in_shard = u;
      break;
    }
  }
  const uint32_t shard_a = static_cast<uint32_t>(V(2) % 2);
  const uint32_t shard_b = 1 - shard_a;
  uint64_t first = 0;
  uint64_t second = 0;
  {
    auto store = OpenOrDie(o);
    ASSERT_NE(store, nullptr);
    Result<AppendOutcome> a = store->Append(1, "", One(1, 2, "a"));
    ASSERT_TRUE(a.ok());
    first = a->message_id;
    Result<AppendOutcome> b = store->Append(1, "", One(1, in_shard, "b"));
    ASSERT_TRUE(b.ok());
    second = b->message_id;
  }
  {
    auto db = OpenRaw(dir.path());
    ASSERT_NE(db, nullptr);
    // Shard a's mark stays at the batch that touched it; shard b's is the later one.
    EXPECT_EQ(Get(*db, Cf::kMeta, MetaHlcKey(shard_a)), EncodeU64(first));
    EXPECT_EQ(Get(*db, Cf::kMeta, MetaHlcKey(shard_b)), EncodeU64(second));
    // A mark far ahead of the clock (another node's, say): the clock must start above it.
    Put(*db, Cf::kMeta, MetaHlcKey(7), EncodeU64(second + (uint64_t{1} << 40)));
  }
  auto store = OpenOrDie(o);
  ASSERT_NE(store, nullptr);
  Result<AppendOutcome> c = store->Append(1, "", One(1, 2, "c"));
  ASSERT_TRUE(c.ok());
  EXPECT_GT(c->message_id, second + (uint64_t{1} << 40));
}

TEST(VnodeLayoutTest, ChecksumCoversOneVnodeAndMatchesACopyOfItsRange) {
  TempDir dir;
  TempDir copy_dir;
  const auto [a, b] = UsersInDistinctVnodes();
  uint64_t empty_sum = 0;
  uint64_t sum_a = 0;
  {
    auto store = OpenOrDie(TestOptions(dir.path()));
    ASSERT_NE(store, nullptr);
    EXPECT_EQ(store->VnodeChecksum(-1).status().code(), StatusCode::kBadRequest);
    EXPECT_EQ(store->VnodeChecksum(kVnodes).status().code(), StatusCode::kBadRequest);
    Result<uint64_t> empty = store->VnodeChecksum(V(a));
    ASSERT_TRUE(empty.ok());
    empty_sum = *empty;
    ASSERT_TRUE(store->Append(1, "ka", One(1, a, "to a")).ok());
    ASSERT_TRUE(store->PutSettings(a, UserSettings{false, true}).ok());
    Result<uint64_t> with_a = store->VnodeChecksum(V(a));
    ASSERT_TRUE(with_a.ok());
    EXPECT_NE(*with_a, empty_sum);
    // Writes to another vnode and node-wide records leave it alone.
    ASSERT_TRUE(store->Append(1, "kb", One(1, b, "to b")).ok());
    ASSERT_TRUE(store->PutRevokedUser(a, 5).ok());
    EXPECT_EQ(store->VnodeChecksum(V(a)).value(), *with_a);
    EXPECT_EQ(store->VnodeChecksum(V(a)).value(), *with_a);  // deterministic
    sum_a = *with_a;
  }
  {
    // Copy the vnode's key range, column family by column family, into a fresh store.
    { auto fresh = OpenOrDie(TestOptions(copy_dir.path())); }
    auto from = OpenRaw(dir.path());
    auto to = OpenRaw(copy_dir.path());
    ASSERT_NE(from, nullptr);
    ASSERT_NE(to, nullptr);
    const std::string begin = VnodePrefix(V(a));
    const std::string end = VnodePrefix(V(a) + 1);
    for (int c = 0; c < static_cast<int>(Cf::kCount); ++c) {
      std::unique_ptr<rocksdb::Iterator> it(
          from->db()->NewIterator(rocksdb::ReadOptions(), from->cf(static_cast<Cf>(c))));
      for (it->Seek(begin); it->Valid() && it->key().compare(end) < 0; it->Next()) {
        Put(*to, static_cast<Cf>(c), it->key().ToString(), it->value().ToString());
      }
    }
  }
  auto copy = OpenOrDie(TestOptions(copy_dir.path()));
  ASSERT_NE(copy, nullptr);
  EXPECT_EQ(copy->VnodeChecksum(V(a)).value(), sum_a);
  Result<std::vector<v1::Envelope>> copied = ScanAll(*copy, a);
  ASSERT_TRUE(copied.ok());
  ASSERT_EQ(copied->size(), 1u);
  EXPECT_EQ((*copied)[0].body(), "to a");
  EXPECT_TRUE(ScanAll(*copy, b)->empty());
}

TEST(VnodeLayoutTest, DeleteVnodeRemovesExactlyItsRecordsAndForgetsItsState) {
  TempDir dir;
  StoreOptions o = TestOptions(dir.path());
  o.inbox_cap = 3;
  const auto [a, b] = UsersInDistinctVnodes();
  auto store = OpenOrDie(o);
  ASSERT_NE(store, nullptr);
  const uint64_t empty_sum = store->VnodeChecksum(V(a)).value();
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(store->Append(1, "a" + std::to_string(i), One(1, a, "m")).ok());
    ASSERT_TRUE(store->Append(1, "b" + std::to_string(i), One(1, b, "m")).ok());
  }
  ASSERT_TRUE(store->WaitArchiverIdle(10'000));
  ASSERT_TRUE(store->PutSettings(a, UserSettings{false, false}).ok());
  v1::KeysUpload up;
  up.set_identity_key("id");
  ASSERT_TRUE(store->UploadKeys(a, up).ok());
  const uint64_t sum_b = store->VnodeChecksum(V(b)).value();
  ASSERT_NE(store->VnodeChecksum(V(a)).value(), empty_sum);

  EXPECT_EQ(store->DeleteVnode(kVnodes).code(), StatusCode::kBadRequest);
  ASSERT_TRUE(store->DeleteVnode(V(a)).ok());
  EXPECT_EQ(store->VnodeChecksum(V(a)).value(), empty_sum);
  EXPECT_EQ(store->VnodeChecksum(V(b)).value(), sum_b);
  EXPECT_TRUE(ScanAll(*store, a)->empty());
  EXPECT_TRUE(HistoryAll(*store, a)->empty());
  EXPECT_TRUE(store->GetSettings(a)->read_receipts);
  EXPECT_EQ(store->FetchKeys(a).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(ScanAll(*store, b)->size(), 3u);

  // The store forgot the vnode's counters and dedup entries too: a retry is stored anew,
  // and the inbox counts from zero (no archive move until it is over the cap again).
  Result<AppendOutcome> retry = store->Append(1, "a4", One(1, a, "again"));
  ASSERT_TRUE(retry.ok());
  EXPECT_FALSE(retry->duplicate);
  ASSERT_TRUE(store->Append(1, "", One(1, a, "again 2")).ok());
  ASSERT_TRUE(store->WaitArchiverIdle(10'000));
  Result<ScanPage> page = store->Scan(a, 0, 10, 1 << 20);
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->messages.size(), 2u);
  EXPECT_FALSE(page->gap);
  EXPECT_TRUE(store->Append(1, "b0", One(1, b, "m"))->duplicate);
}

// A rebuild's copy (cluster/replication/rebuild.h): shard 0 of a store whose vnodes
// alternate between shards 0 and 1, copied chunk by chunk into a store that holds stale
// records of both shards. Afterwards every shard-0 vnode matches the source exactly (stale
// records gone), shard 1 is untouched, and the copied dedup entries are known.
TEST(VnodeLayoutTest, ShardCopyReplacesTheReceiversRangesChunkByChunk) {
  TempDir from_dir;
  TempDir to_dir;
  const auto shard_of = [](int32_t v) { return static_cast<uint32_t>(v % 2); };
  StoreOptions fo = TestOptions(from_dir.path());
  fo.shard_of_vnode = shard_of;
  StoreOptions to = TestOptions(to_dir.path());
  to.shard_of_vnode = shard_of;
  auto source = OpenOrDie(fo);
  auto target = OpenOrDie(to);
  ASSERT_NE(source, nullptr);
  ASSERT_NE(target, nullptr);
  std::vector<uint64_t> even;  // users of shard 0
  uint64_t odd = 0;            // a user of shard 1
  for (uint64_t u = 2; even.size() < 6 || odd == 0; ++u) {
    if (V(u) % 2 == 0 && even.size() < 6) even.push_back(u);
    if (V(u) % 2 == 1 && odd == 0) odd = u;
  }
  for (size_t i = 0; i < even.size(); ++i) {
    for (int m = 0; m < 8; ++m) {
      const std::string key = "k" + std::to_string(i) + "-" + std::to_string(m);
      ASSERT_TRUE(source->Append(1, key, One(1, even[i], std::string(100, 'a' + m))).ok());
    }
    ASSERT_TRUE(source->PutSettings(even[i], UserSettings{false, true}).ok());
  }
  // Stale records on the receiver: a shard-0 user's message and settings the source does
  // not have, and a shard-1 user's message that must stay.
  ASSERT_TRUE(target->Append(1, "stale", One(1, even[0], "stale")).ok());
  ASSERT_TRUE(target->PutSettings(even[5], UserSettings{false, false}).ok());
  ASSERT_TRUE(target->Append(1, "other", One(1, odd, "other shard")).ok());
  const uint64_t odd_sum = target->VnodeChecksum(V(odd)).value();

  std::string cursor;
  bool done = false;
  int chunks = 0;
  while (!done) {
    Result<std::string> chunk = source->CopyShardChunk(0, &cursor, 1024, &done);
    ASSERT_TRUE(chunk.ok()) << chunk.status().ToString();
    ASSERT_TRUE(target->InstallShardChunk(*chunk).ok());
    ASSERT_LT(++chunks, 100'000);
  }
  EXPECT_GT(chunks, 10);  // several chunks, some of them ending inside a vnode
  for (int32_t v = 0; v < kVnodes; v += 2) {
    ASSERT_EQ(target->VnodeChecksum(v).value(), source->VnodeChecksum(v).value()) << v;
  }
  EXPECT_EQ(target->VnodeChecksum(V(odd)).value(), odd_sum);
  Result<std::vector<v1::Envelope>> got = ScanAll(*target, even[0]);
  ASSERT_TRUE(got.ok());
  ASSERT_EQ(got->size(), 8u);
  EXPECT_EQ((*got)[0].body(), std::string(100, 'a'));
  EXPECT_TRUE(target->GetSettings(even[5])->share_presence);
  // A retry of a copied key is a duplicate on the receiver.
  Result<AppendOutcome> retry = target->Append(1, "k1-3", One(1, even[1], "retry"));
  ASSERT_TRUE(retry.ok());
  EXPECT_TRUE(retry->duplicate);

  // Refused: a malformed chunk, a chunk touching a node-wide key, a malformed cursor.
  EXPECT_EQ(target->InstallShardChunk("\x01garbage").code(), StatusCode::kBadRequest);
  std::string node_wide;
  AppendShardOp(ShardOp{'P', Cf::kMeta, "N", "x"}, &node_wide);
  EXPECT_EQ(target->InstallShardChunk(node_wide).code(), StatusCode::kBadRequest);
  std::string bad_cursor = "xx";
  EXPECT_EQ(source->CopyShardChunk(0, &bad_cursor, 1024, &done).status().code(),
            StatusCode::kBadRequest);
}

// ---- migration from layout version 1 ----

struct LegacyStore {
  uint64_t hlc_mark = 0;
  std::map<uint64_t, std::vector<uint64_t>> inbox;  // user -> ids (ascending)
  std::vector<uint64_t> archived;                   // ids of user 2 in the archive
  uint64_t dm_id = 0;                               // a 1:1 send with key "dm"
  uint64_t group_first_id = 0;                      // a group send with key "grp"
};

constexpr uint64_t kGroup = 777;

std::string StoredEnvelope(uint64_t sender, uint64_t recipient, uint64_t id, uint64_t group) {
  v1::Envelope e = MakeEnvelope(sender, recipient, "body " + std::to_string(id), group);
  const std::string body = EncodeEnvelopeBody(&e);
  std::string out;
  EncodeStoredEnvelope(id, 1, body, &out);
  return out;
}

// Writes a store of layout version 1 with the old key functions: inboxes of users 2..21
// (user 2 with two archived messages), dedup entries (a 1:1 send, a group send, one whose
// message is gone, one expired), settings, last seen, revocations, keys and a group.
LegacyStore WriteLegacyStore(const std::string& path) {
  LegacyStore s;
  auto db = OpenRaw(path);
  EXPECT_NE(db, nullptr);
  const int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  uint64_t id = static_cast<uint64_t>(now) << 16;
  rocksdb::WriteBatch b;
  for (int i = 0; i < 2; ++i) {
    ++id;
    b.Put(db->cf(Cf::kArchive), legacy_v1::InboxKey(2, id), StoredEnvelope(1, 2, id, 0))
        .PermitUncheckedError();
    s.archived.push_back(id);
  }
  for (uint64_t user = 2; user <= 21; ++user) {
    for (int i = 0; i < 3; ++i) {
      ++id;
      b.Put(db->cf(Cf::kInbox), legacy_v1::InboxKey(user, id), StoredEnvelope(1, user, id, 0))
          .PermitUncheckedError();
      s.inbox[user].push_back(id);
    }
  }
  s.dm_id = s.inbox[2].front();
  // A group send to users 30 and 31.
  s.group_first_id = ++id;
  for (uint64_t member : {30, 31}) {
    b.Put(db->cf(Cf::kInbox), legacy_v1::InboxKey(member, id),
          StoredEnvelope(1, member, id, kGroup))
        .PermitUncheckedError();
    s.inbox[member].push_back(id);
    if (member == 30) ++id;
  }
  s.hlc_mark = id + 1000;
  const auto dedup = [&](std::string_view key, uint64_t first, int64_t at) {
    b.Put(db->cf(Cf::kDedup), legacy_v1::DedupKey(1, key), EncodeDedupEntry({first, at}))
        .PermitUncheckedError();
  };
  dedup("dm", s.dm_id, now);
  dedup("grp", s.group_first_id, now);
  dedup("gone", 12345, now);                     // its message no longer exists
  dedup("old", s.dm_id, now - 8LL * 86400'000);  // past the 7-day window
  b.Put(db->cf(Cf::kMeta), legacy_v1::MetaHlcKey(), EncodeU64(s.hlc_mark)).PermitUncheckedError();
  b.Put(db->cf(Cf::kMeta), legacy_v1::MetaUserKey('U', 2),
        EncodeUserState({3, s.archived.back(), s.inbox[2].back()}))
      .PermitUncheckedError();
  b.Put(db->cf(Cf::kMeta), legacy_v1::MetaUserKey('S', 2), std::string(1, '\0'))
      .PermitUncheckedError();
  b.Put(db->cf(Cf::kMeta), legacy_v1::MetaUserKey('L', 2), EncodeU64(4242)).PermitUncheckedError();
  b.Put(db->cf(Cf::kMeta), MetaRevokedJtiKey("jti-1"), EncodeU64(static_cast<uint64_t>(now) * 2))
      .PermitUncheckedError();
  b.Put(db->cf(Cf::kMeta), MetaRevokedUserKey(9), EncodeU64(99)).PermitUncheckedError();
  StoredBundle bundle;
  bundle.next_seq = 1;
  bundle.pool_size = 1;
  bundle.bundle.set_identity_key("identity-2");
  b.Put(db->cf(Cf::kKeys), legacy_v1::KeysBundleKey(2), EncodeStoredBundle(bundle))
      .PermitUncheckedError();
  v1::PreKey pk;
  pk.set_id(5);
  pk.set_public_key("pk5");
  b.Put(db->cf(Cf::kKeys), legacy_v1::PreKeyKey(2, 0), pk.SerializeAsString())
      .PermitUncheckedError();
  v1::GroupInfo g;
  g.set_group_id(kGroup);
  g.set_owner(1);
  b.Put(db->cf(Cf::kGroups), legacy_v1::GroupKey(kGroup), g.SerializeAsString())
      .PermitUncheckedError();
  rocksdb::WriteOptions wo;
  wo.sync = true;
  EXPECT_TRUE(db->db()->Write(wo, &b).ok());
  return s;
}

// Checks every record of WriteLegacyStore through the store's API, and that no key of the
// old layout is left.
// `first`: the first open since WriteLegacyStore (later ones see what it consumed and
// added).
void ExpectMigrated(const std::string& path, const LegacyStore& legacy, bool first = true) {
  {
    auto store = OpenOrDie(TestOptions(path));
    ASSERT_NE(store, nullptr);
    for (const auto& [user, ids] : legacy.inbox) {
      Result<std::vector<v1::Envelope>> all = ScanAll(*store, user);
      ASSERT_TRUE(all.ok()) << all.status().ToString();
      ASSERT_EQ(all->size(), ids.size()) << user;
      for (size_t i = 0; i < ids.size(); ++i) EXPECT_EQ((*all)[i].id(), ids[i]);
    }
    Result<std::vector<v1::Envelope>> archived = HistoryAll(*store, 2);
    ASSERT_TRUE(archived.ok());
    ASSERT_EQ(archived->size(), legacy.archived.size());
    for (size_t i = 0; i < legacy.archived.size(); ++i) {
      EXPECT_EQ((*archived)[i].id(), legacy.archived[i]);
    }
    EXPECT_FALSE(store->GetSettings(2)->read_receipts);
    EXPECT_EQ(store->GetLastSeen(2).value(), 4242u);
    Result<StoredRevocations> revoked = store->LoadRevocations(0);
    ASSERT_TRUE(revoked.ok());
    EXPECT_EQ(revoked->jtis.size(), 1u);
    ASSERT_EQ(revoked->users.size(), 1u);
    EXPECT_EQ(revoked->users[0].first, 9u);
    Result<v1::KeysBundle> keys = store->FetchKeys(2);
    ASSERT_TRUE(keys.ok()) << keys.status().ToString();
    EXPECT_EQ(keys->identity_key(), "identity-2");
    if (first) {
      EXPECT_EQ(keys->one_time_prekey().public_key(), "pk5");
    }
    EXPECT_EQ(store->GetGroup(kGroup)->owner(), 1u);
    // Dedup entries kept their meaning: retries of the 1:1 and the group send are
    // duplicates with the first ids; the entry whose message is gone was dropped.
    Result<AppendOutcome> dm = store->Append(1, "dm", One(1, 2, "retry"));
    ASSERT_TRUE(dm.ok());
    EXPECT_TRUE(dm->duplicate);
    EXPECT_EQ(dm->message_id, legacy.dm_id);
    std::vector<v1::Envelope> fan;
    for (uint64_t member : {30, 31}) fan.push_back(MakeEnvelope(1, member, "retry", kGroup));
    Result<AppendOutcome> grp = store->Append(1, "grp", std::move(fan));
    ASSERT_TRUE(grp.ok());
    EXPECT_TRUE(grp->duplicate);
    EXPECT_EQ(grp->message_id, legacy.group_first_id);
    // The clock starts above the old mark.
    Result<AppendOutcome> next = store->Append(1, "", One(1, 1000, "new"));
    ASSERT_TRUE(next.ok());
    EXPECT_GT(next->message_id, legacy.hlc_mark);
  }
  auto db = OpenRaw(path);
  ASSERT_NE(db, nullptr);
  for (const std::string& k : Keys(*db, Cf::kInbox)) EXPECT_EQ(k.size(), 20u);
  for (const std::string& k : Keys(*db, Cf::kArchive)) EXPECT_EQ(k.size(), 20u);
  for (const std::string& k : Keys(*db, Cf::kGroups)) EXPECT_EQ(k.size(), 12u);
  for (const std::string& k : Keys(*db, Cf::kKeys)) EXPECT_TRUE(k.size() == 13 || k.size() == 21);
  const std::vector<std::string> dedup = Keys(*db, Cf::kDedup);
  const std::set<std::string> want = {DedupKey(V(2), 1, "dm"), DedupKey(V(kGroup), 1, "grp"),
                                      DedupKey(V(3), 1, "")};  // "" never stored
  EXPECT_EQ(dedup.size(), 2u);
  for (const std::string& k : dedup) EXPECT_EQ(want.count(k), 1u);
  for (const std::string& k : Keys(*db, Cf::kMeta)) {
    // vnode-prefixed per-user records (the new message wrote a 'W' one), or node-wide: 'H'
    // shard, 'J', 'R', 'N', 'V'.
    const bool per_user = (k.size() == 13 || (k.size() == 21 && k[4] == kMetaWroteTag)) &&
                          k[0] == '\0';
    const bool node_wide = (k[0] == 'H' && k.size() == 5) || k[0] == 'J' || k[0] == 'R' ||
                           k == kMetaVnodesKey || k == kMetaLayoutVersionKey;
    EXPECT_TRUE(per_user || node_wide) << "left-over meta key of size " << k.size();
  }
  EXPECT_EQ(Get(*db, Cf::kMeta, kMetaLayoutVersionKey), EncodeU32(kLayoutVersion));
}

TEST(LayoutMigrationTest, Version1StoreIsMigratedOnOpen) {
  TempDir dir;
  const LegacyStore legacy = WriteLegacyStore(dir.path());
  const std::string old_key = legacy_v1::InboxKey(2, legacy.dm_id);
  const std::string new_key = InboxKey(V(2), 2, legacy.dm_id);
  {
    auto db = OpenRaw(dir.path());
    ASSERT_NE(db, nullptr);
    ASSERT_TRUE(Get(*db, Cf::kInbox, old_key).has_value());
    ASSERT_FALSE(Get(*db, Cf::kMeta, kMetaLayoutVersionKey).has_value());
  }
  ASSERT_NO_FATAL_FAILURE(ExpectMigrated(dir.path(), legacy));
  {
    // The record moved under its vnode-prefixed key, and the store says version 2.
    auto db = OpenRaw(dir.path());
    ASSERT_NE(db, nullptr);
    EXPECT_FALSE(Get(*db, Cf::kInbox, old_key).has_value());
    EXPECT_TRUE(Get(*db, Cf::kInbox, new_key).has_value());
    EXPECT_EQ(Get(*db, Cf::kMeta, kMetaLayoutVersionKey), EncodeU32(kLayoutVersion));
  }
  // Opening again finds version 2 and changes nothing.
  ASSERT_NO_FATAL_FAILURE(ExpectMigrated(dir.path(), legacy, /*first=*/false));
  {
    auto store = OpenOrDie(TestOptions(dir.path()));
    ASSERT_NE(store, nullptr);
    Result<std::vector<v1::Envelope>> inbox = ScanAll(*store, 2);
    ASSERT_TRUE(inbox.ok()) << inbox.status().ToString();
    ASSERT_EQ(inbox->size(), legacy.inbox.at(2).size());
    EXPECT_EQ(inbox->front().id(), legacy.dm_id);
  }
}

TEST(LayoutMigrationTest, InterruptedMigrationIsFinishedByTheNextOpen) {
  // The states a crash between two migration batches leaves: some records under new keys
  // (their old keys deleted in the same batch), the rest under old ones; dedup entries
  // partly staged in `meta`, or staged and partly written back.
  for (const bool dedup_staged : {false, true}) {
    SCOPED_TRACE(dedup_staged ? "dedup staged" : "dedup partly staged");
    TempDir dir;
    const LegacyStore legacy = WriteLegacyStore(dir.path());
    {
      auto db = OpenRaw(dir.path());
      ASSERT_NE(db, nullptr);
      Put(*db, Cf::kMeta, kMetaVnodesKey, EncodeU32(kVnodes));
      rocksdb::WriteBatch b;
      int moved = 0;
      for (const std::string& k : Keys(*db, Cf::kInbox)) {
        if (moved++ % 2 != 0) continue;
        const uint64_t user = GetBigEndian64(k.data());
        b.Put(db->cf(Cf::kInbox), InboxKey(V(user), user, GetBigEndian64(k.data() + 8)),
              *Get(*db, Cf::kInbox, k))
            .PermitUncheckedError();
        b.Delete(db->cf(Cf::kInbox), k).PermitUncheckedError();
      }
      const std::string dm = legacy_v1::DedupKey(1, "dm");
      b.Put(db->cf(Cf::kMeta), "X" + dm, *Get(*db, Cf::kDedup, dm)).PermitUncheckedError();
      b.Delete(db->cf(Cf::kDedup), dm).PermitUncheckedError();
      if (dedup_staged) {
        for (const std::string& k : Keys(*db, Cf::kDedup)) {
          b.Put(db->cf(Cf::kMeta), "X" + k, *Get(*db, Cf::kDedup, k)).PermitUncheckedError();
          b.Delete(db->cf(Cf::kDedup), k).PermitUncheckedError();
        }
        b.Put(db->cf(Cf::kMeta), "M", "dedup-staged").PermitUncheckedError();
        // ... and the 1:1 entry already written back under its vnode.
        b.Put(db->cf(Cf::kDedup), DedupKey(V(2), 1, "dm"), *Get(*db, Cf::kDedup, dm))
            .PermitUncheckedError();
        b.Delete(db->cf(Cf::kMeta), "X" + dm).PermitUncheckedError();
      }
      ASSERT_TRUE(db->db()->Write(rocksdb::WriteOptions(), &b).ok());
    }
    // A different vnode count cannot finish it.
    StoreOptions other = TestOptions(dir.path());
    other.vnodes = 64;
    EXPECT_EQ(InboxStore::Open(other).status().code(), StatusCode::kBadRequest);
    ExpectMigrated(dir.path(), legacy);
  }
}

}  // namespace
}  // namespace iris::store
