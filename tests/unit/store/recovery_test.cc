// Crash recovery from a damaged WAL tail, and the error paths of damaged records.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "store/inbox_store.h"
#include "store/store_db.h"
#include "store/store_keys.h"
#include "unit/store/store_test_util.h"

namespace iris::store {
namespace {

using testing::One;
using testing::ScanAll;
using testing::TempDir;
using testing::TestOptions;

std::unique_ptr<InboxStore> OpenOrDie(const StoreOptions& o) {
  Result<std::unique_ptr<InboxStore>> s = InboxStore::Open(o);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? std::move(s).value() : nullptr;
}

// The live WAL: the *.log file with the highest number.
std::string NewestWal(const std::string& dir) {
  std::string best;
  uint64_t best_n = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (entry.path().extension() != ".log") continue;
    const uint64_t n = std::stoull(name.substr(0, name.size() - 4));
    if (best.empty() || n > best_n) {
      best = entry.path().string();
      best_n = n;
    }
  }
  return best;
}

std::unique_ptr<StoreDb> OpenRaw(const std::string& path) {
  StoreDbOptions o;
  o.path = path;
  o.write_buffer_bytes = 1u << 20;
  Result<std::unique_ptr<StoreDb>> db = StoreDb::Open(o);
  EXPECT_TRUE(db.ok()) << db.status().ToString();
  return db.ok() ? std::move(db).value() : nullptr;
}

void PutRaw(const std::string& path, Cf cf, const std::string& key, const std::string& value) {
  auto db = OpenRaw(path);
  ASSERT_NE(db, nullptr);
  rocksdb::WriteOptions wo;
  wo.sync = true;
  ASSERT_TRUE(db->db()->Put(wo, db->cf(cf), key, value).ok());
}

TEST(RecoveryTest, GarbageAfterTheLastWalRecordIsCutOffAndAckedDataKept) {
  TempDir dir;
  const StoreOptions o = TestOptions(dir.path());
  std::vector<uint64_t> acked;
  {
    auto store = OpenOrDie(o);
    ASSERT_NE(store, nullptr);
    for (int i = 0; i < 50; ++i) {
      Result<AppendOutcome> r = store->Append(1, "k" + std::to_string(i), One(1, 2, "m"));
      ASSERT_TRUE(r.ok());
      acked.push_back(r->message_id);
    }
  }
  const std::string wal = NewestWal(dir.path());
  ASSERT_FALSE(wal.empty());
  {
    const uint32_t seed = 20260124;
    std::printf("seed=%u\n", seed);
    std::mt19937 rng(seed);
    std::ofstream out(wal, std::ios::binary | std::ios::app);
    for (int i = 0; i < 300; ++i) out.put(static_cast<char>(rng()));
  }
  auto store = OpenOrDie(o);
  ASSERT_NE(store, nullptr);
  Result<std::vector<v1::Envelope>> all = ScanAll(*store, 2);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), acked.size());
  for (size_t i = 0; i < acked.size(); ++i) EXPECT_EQ((*all)[i].id(), acked[i]);
  // Still writable, ids still increasing, dedup intact.
  Result<AppendOutcome> retry = store->Append(1, "k0", One(1, 2, "m"));
  ASSERT_TRUE(retry.ok());
  EXPECT_TRUE(retry->duplicate);
  Result<AppendOutcome> next = store->Append(1, "", One(1, 2, "after"));
  ASSERT_TRUE(next.ok());
  EXPECT_GT(next->message_id, acked.back());
}

TEST(RecoveryTest, TornLastRecordIsDroppedAndTheStoreStaysConsistent) {
  TempDir dir;
  const StoreOptions o = TestOptions(dir.path());
  std::vector<uint64_t> acked;
  uintmax_t size_before_last = 0;
  {
    auto store = OpenOrDie(o);
    ASSERT_NE(store, nullptr);
    for (int i = 0; i < 20; ++i) {
      Result<AppendOutcome> r = store->Append(1, "", One(1, 2, std::string(500, 'a')));
      ASSERT_TRUE(r.ok());
      acked.push_back(r->message_id);
    }
  }
  // The durability mark as a power failure during the next sync would leave it: it was
  // last brought up to date before that sync returned.
  const std::string mark = dir.path() + "/" + std::string(kDurabilityMarkFile);
  const std::string mark_before = mark + ".before";
  std::filesystem::copy_file(mark, mark_before);
  {
    auto store = OpenOrDie(o);
    ASSERT_NE(store, nullptr);
    size_before_last = std::filesystem::file_size(NewestWal(dir.path()));
    // This write's record is torn below, as if power failed during its sync (so it was
    // never acknowledged).
    ASSERT_TRUE(store->Append(1, "torn-key", One(1, 2, std::string(500, 'z'))).ok());
  }
  std::filesystem::rename(mark_before, mark);
  const std::string wal = NewestWal(dir.path());
  const uintmax_t full = std::filesystem::file_size(wal);
  ASSERT_GT(full, size_before_last + 100);
  std::filesystem::resize_file(wal, size_before_last + (full - size_before_last) / 2);

  auto store = OpenOrDie(o);
  ASSERT_NE(store, nullptr);
  Result<std::vector<v1::Envelope>> all = ScanAll(*store, 2);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), acked.size());
  for (size_t i = 0; i < acked.size(); ++i) EXPECT_EQ((*all)[i].id(), acked[i]);
  EXPECT_EQ(store->LastId(), acked.back());
  // The torn write left no dedup entry behind: the client's retry is stored.
  Result<AppendOutcome> retry = store->Append(1, "torn-key", One(1, 2, "z"));
  ASSERT_TRUE(retry.ok());
  EXPECT_FALSE(retry->duplicate);
  EXPECT_GT(retry->message_id, acked.back());
}

// Acknowledged appends, then the store closed: the live WAL holds them all.
std::vector<uint64_t> AppendAndClose(const StoreOptions& o, int n) {
  std::vector<uint64_t> acked;
  auto store = OpenOrDie(o);
  if (store == nullptr) return acked;
  for (int i = 0; i < n; ++i) {
    Result<AppendOutcome> r = store->Append(1, "", One(1, 2, std::string(500, 'a')));
    EXPECT_TRUE(r.ok());
    if (r.ok()) acked.push_back(r->message_id);
  }
  return acked;
}

// A synced WAL cut short (here to half: every record after the cut was acknowledged) must
// not open as a smaller database: the durability mark says how far it reached.
TEST(RecoveryTest, TruncatedSyncedWalFailsOpen) {
  TempDir dir;
  const StoreOptions o = TestOptions(dir.path());
  ASSERT_EQ(AppendAndClose(o, 200).size(), 200u);
  const std::string wal = NewestWal(dir.path());
  ASSERT_FALSE(wal.empty());
  std::filesystem::resize_file(wal, std::filesystem::file_size(wal) / 2);
  Result<std::unique_ptr<InboxStore>> s = InboxStore::Open(o);
  ASSERT_FALSE(s.ok()) << "a store whose WAL lost acknowledged appends opened";
  EXPECT_EQ(s.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(s.status().message().find("the write-ahead log was truncated or lost"),
            std::string::npos)
      << s.status().ToString();
}

// A bit flip in a record in the middle of the synced WAL must fail Open (RocksDB's
// point-in-time recovery would stop there and drop every later, acknowledged, record).
TEST(RecoveryTest, BitFlipInTheMiddleOfTheSyncedWalFailsOpen) {
  TempDir dir;
  const StoreOptions o = TestOptions(dir.path());
  ASSERT_EQ(AppendAndClose(o, 200).size(), 200u);
  // Without the mark, only the WAL's own checksums can tell.
  std::filesystem::remove(dir.path() + "/" + std::string(kDurabilityMarkFile));
  const std::string wal = NewestWal(dir.path());
  ASSERT_FALSE(wal.empty());
  const uintmax_t size = std::filesystem::file_size(wal);
  uintmax_t off = size / 2;
  if (off % 32768 > 32768 - 16) off -= 64;  // not in a block's zero trailer
  {
    std::fstream f(wal, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(off));
    char c = 0;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x10);
    f.seekp(static_cast<std::streamoff>(off));
    f.write(&c, 1);
    ASSERT_TRUE(f.good());
  }
  Result<std::unique_ptr<InboxStore>> s = InboxStore::Open(o);
  ASSERT_FALSE(s.ok()) << "a store with a damaged synced WAL opened";
  EXPECT_NE(s.status().message().find("is damaged and was not opened"), std::string::npos)
      << s.status().ToString();
}

// The mark never claims more than the WAL holds: a store killed between marks, or closed
// cleanly, reopens with everything.
TEST(RecoveryTest, DurabilityMarkFollowsTheSyncedWal) {
  TempDir dir;
  StoreDbOptions o;
  o.path = dir.path();
  o.durability_mark_interval_ms = 0;  // only explicit updates and Close
  {
    Result<std::unique_ptr<StoreDb>> db = StoreDb::Open(o);
    ASSERT_TRUE(db.ok()) << db.status().ToString();
    rocksdb::WriteOptions wo;
    wo.sync = true;
    for (int i = 0; i < 10; ++i) {
      ASSERT_TRUE((*db)->db()->Put(wo, (*db)->cf(Cf::kMeta), "k" + std::to_string(i), "v").ok());
    }
    (*db)->NoteDurable((*db)->db());
    ASSERT_TRUE((*db)->UpdateDurabilityMark().ok());
    EXPECT_TRUE(std::filesystem::exists(dir.path() + "/" + std::string(kDurabilityMarkFile)));
  }
  Result<std::unique_ptr<StoreDb>> again = StoreDb::Open(o);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  std::string v;
  EXPECT_TRUE((*again)->db()->Get(rocksdb::ReadOptions(), (*again)->cf(Cf::kMeta), "k9", &v).ok());
}

TEST(RecoveryTest, MalformedHighWaterMarkFailsOpenWithInternal) {
  TempDir dir;
  { auto store = OpenOrDie(TestOptions(dir.path())); }
  PutRaw(dir.path(), Cf::kMeta, MetaHlcKey(0), "bad");
  Result<std::unique_ptr<InboxStore>> s = InboxStore::Open(TestOptions(dir.path()));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kInternal);
}

TEST(RecoveryTest, MalformedRecordsAreReportedAsInternal) {
  TempDir dir;
  { auto store = OpenOrDie(TestOptions(dir.path())); }
  const auto v = [](uint64_t id) { return VnodeOf(id, StoreOptions().vnodes); };
  PutRaw(dir.path(), Cf::kInbox, InboxKey(v(2), 2, 5), "\xff\xff\xff");  // not an envelope
  PutRaw(dir.path(), Cf::kArchive, InboxKey(v(2), 2, 1), "\xff\xff\xff");
  PutRaw(dir.path(), Cf::kMeta, MetaUserStateKey(v(3), 3), "short");
  PutRaw(dir.path(), Cf::kMeta, MetaSettingsKey(v(4), 4), "toolong");
  PutRaw(dir.path(), Cf::kMeta, MetaLastSeenKey(v(4), 4), "x");
  PutRaw(dir.path(), Cf::kKeys, KeysBundleKey(v(4), 4), "x");
  PutRaw(dir.path(), Cf::kGroups, GroupKey(v(4), 4), "\xff\xff");
  auto store = OpenOrDie(TestOptions(dir.path()));
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->Scan(2, 0, 10, 1 << 20).status().code(), StatusCode::kInternal);
  EXPECT_EQ(store->History(2, 0, 10, 1 << 20).status().code(), StatusCode::kInternal);
  EXPECT_EQ(store->Scan(3, 0, 10, 1 << 20).status().code(), StatusCode::kInternal);
  EXPECT_EQ(store->GetSettings(4).status().code(), StatusCode::kInternal);
  EXPECT_EQ(store->GetLastSeen(4).status().code(), StatusCode::kInternal);
  EXPECT_EQ(store->FetchKeys(4).status().code(), StatusCode::kInternal);
  EXPECT_EQ(store->UploadKeys(4, v1::KeysUpload()).code(), StatusCode::kInternal);
  EXPECT_EQ(store->GetGroup(4).status().code(), StatusCode::kInternal);
  // An append to a user whose counters are unreadable fails as a whole ...
  std::vector<v1::Envelope> fan = One(1, 5, "ok");
  fan.push_back(testing::MakeEnvelope(1, 3, "bad"));
  Result<AppendOutcome> r = store->Append(1, "fan-key", std::move(fan));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInternal);
  Result<std::vector<v1::Envelope>> five = ScanAll(*store, 5);
  ASSERT_TRUE(five.ok());
  EXPECT_TRUE(five->empty());
  // ... without poisoning the batch or the key for others.
  Result<AppendOutcome> fine = store->Append(1, "fan-key", One(1, 5, "ok"));
  ASSERT_TRUE(fine.ok());
  EXPECT_FALSE(fine->duplicate);
}

TEST(RecoveryTest, RocksStatusesMapOntoIrisCodes) {
  EXPECT_TRUE(FromRocks(rocksdb::Status::OK(), "x").ok());
  EXPECT_EQ(FromRocks(rocksdb::Status::NoSpace("full"), "x").code(), StatusCode::kStorageFull);
  EXPECT_EQ(FromRocks(rocksdb::Status::IOError("eio"), "x").code(), StatusCode::kInternal);
  EXPECT_EQ(FromRocks(rocksdb::Status::Corruption("bad"), "x").code(), StatusCode::kInternal);
  EXPECT_GT(FromRocks(rocksdb::Status::NoSpace("full"), "x").retry_after_ms(), 0u);
}

}  // namespace
}  // namespace iris::store
