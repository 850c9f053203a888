// Lifecycle: account deletion (DeleteUser), archive retention (ExpireArchive and the
// retention thread), checkpoints, backups (store/backup.h) and the refusal of a store
// written by a newer layout that has column families this build does not know.
#include <gtest/gtest.h>
#include <rocksdb/db.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "store/backup.h"
#include "store/inbox_store.h"
#include "store/store_db.h"
#include "store/store_keys.h"
#include "support/wait_for.h"
#include "unit/store/store_test_util.h"

namespace iris::store {
namespace {

using testing::HistoryAll;
using testing::One;
using testing::ScanAll;
using testing::TempDir;
using testing::TestOptions;

std::unique_ptr<InboxStore> OpenOrDie(const StoreOptions& o) {
  Result<std::unique_ptr<InboxStore>> s = InboxStore::Open(o);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? std::move(s).value() : nullptr;
}

std::vector<std::string> Bodies(const std::vector<v1::Envelope>& v) {
  std::vector<std::string> out;
  for (const auto& e : v) out.push_back(e.body());
  return out;
}

v1::KeysUpload SomeKeys(int one_time) {
  v1::KeysUpload u;
  u.set_identity_key("identity");
  u.set_registration_id(7);
  u.mutable_signed_prekey()->set_id(1);
  u.mutable_signed_prekey()->set_public_key("spk");
  u.mutable_signed_prekey()->set_signature("sig");
  for (int i = 0; i < one_time; ++i) {
    auto* p = u.add_one_time_prekeys();
    p->set_id(static_cast<uint32_t>(100 + i));
    p->set_public_key("otk" + std::to_string(i));
  }
  return u;
}

// ---- account deletion ----

TEST(DeleteUserTest, RemovesEveryRecordOfTheUserAndNothingElse) {
  TempDir dir;
  StoreOptions o = TestOptions(dir.path());
  o.inbox_cap = 3;  // so the user has an archive too
  auto store = OpenOrDie(o);
  ASSERT_NE(store, nullptr);
  const uint64_t gone = 42, kept = 43, friend_ = 44;
  for (int i = 0; i < 8; ++i) {
    ASSERT_TRUE(store
                    ->Append(friend_, "to-gone-" + std::to_string(i),
                             One(friend_, gone, "g" + std::to_string(i)))
                    .ok());
    ASSERT_TRUE(store
                    ->Append(friend_, "to-kept-" + std::to_string(i),
                             One(friend_, kept, "k" + std::to_string(i)))
                    .ok());
  }
  // The deleted user's own sends (dedup entries under the recipients' vnodes).
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(
        store->Append(gone, "from-gone-" + std::to_string(i), One(gone, 100 + i, "x")).ok());
  }
  ASSERT_TRUE(store->PutSettings(gone, UserSettings{false, false}).ok());
  ASSERT_TRUE(store->PutLastSeen(gone, 12345).ok());
  ASSERT_TRUE(store->UploadKeys(gone, SomeKeys(4)).ok());
  ASSERT_TRUE(store->UploadKeys(kept, SomeKeys(2)).ok());
  ASSERT_TRUE(store->WaitArchiverIdle(10'000));
  ASSERT_EQ(ScanAll(*store, gone)->size(), 3u);
  ASSERT_EQ(HistoryAll(*store, gone)->size(), 5u);

  Result<UserDeletion> d = store->DeleteUser(gone);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(d->messages, 8u);
  EXPECT_EQ(d->dedup_entries, 5u);
  EXPECT_EQ(d->prekeys, 4u);

  EXPECT_TRUE(ScanAll(*store, gone)->empty());
  EXPECT_TRUE(HistoryAll(*store, gone)->empty());
  EXPECT_EQ(store->FetchKeys(gone).status().code(), StatusCode::kNotFound);
  const Result<UserSettings> settings = store->GetSettings(gone);
  ASSERT_TRUE(settings.ok());
  EXPECT_TRUE(settings->read_receipts);  // back to the defaults
  EXPECT_EQ(*store->GetLastSeen(gone), 0u);
  // The dedup entries are gone: the same keys are new sends now.
  for (int i = 0; i < 5; ++i) {
    Result<AppendOutcome> again =
        store->Append(gone, "from-gone-" + std::to_string(i), One(gone, 100 + i, "x"));
    ASSERT_TRUE(again.ok());
    EXPECT_FALSE(again->duplicate) << i;
  }
  // Another user's data is untouched, including the friend's dedup entries.
  EXPECT_EQ(ScanAll(*store, kept)->size(), 3u);
  EXPECT_EQ(HistoryAll(*store, kept)->size(), 5u);
  EXPECT_TRUE(store->FetchKeys(kept).ok());
  EXPECT_TRUE(store->Append(friend_, "to-kept-0", One(friend_, kept, "k0"))->duplicate);

  // Counters start afresh: new messages to the user are kept as for a new user, and
  // survive a restart (the cached counters were dropped with the data).
  ASSERT_TRUE(store->Append(friend_, "after", One(friend_, gone, "new")).ok());
  EXPECT_EQ(Bodies(*ScanAll(*store, gone)), std::vector<std::string>{"new"});
  store.reset();
  store = OpenOrDie(o);
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(Bodies(*ScanAll(*store, gone)), std::vector<std::string>{"new"});
  EXPECT_TRUE(HistoryAll(*store, gone)->empty());
  EXPECT_EQ(ScanAll(*store, kept)->size(), 3u);
}

TEST(DeleteUserTest, UserZeroIsRefused) {
  TempDir dir;
  auto store = OpenOrDie(TestOptions(dir.path()));
  EXPECT_EQ(store->DeleteUser(0).status().code(), StatusCode::kBadRequest);
}

// ---- archive retention ----

// Sends `n` messages to `user` at the clock's current time.
void SendMany(InboxStore& store, uint64_t user, int n, const std::string& tag) {
  for (int i = 0; i < n; ++i) {
    ASSERT_TRUE(store.Append(9, "", One(9, user, tag + std::to_string(i))).ok());
  }
}

constexpr int64_t kDay = 86'400'000;

TEST(RetentionTest, ExpireArchiveDeletesOnlyArchivedMessagesOlderThanTheCutoff) {
  TempDir dir;
  ManualClock clock;
  StoreOptions o = TestOptions(dir.path());
  o.clock = &clock;
  o.inbox_cap = 2;
  auto store = OpenOrDie(o);
  ASSERT_NE(store, nullptr);
  SendMany(*store, 1, 5, "old");
  SendMany(*store, 2, 4, "old");
  ASSERT_TRUE(store->WaitArchiverIdle(10'000));
  clock.AdvanceMillis(10 * kDay);
  SendMany(*store, 1, 5, "new");
  SendMany(*store, 3, 4, "new");
  ASSERT_TRUE(store->WaitArchiverIdle(10'000));
  // user 1: archive old0..old4 new0..new2, inbox new3 new4; user 2: archive old0 old1,
  // inbox old2 old3; user 3: archive new0 new1.
  ASSERT_EQ(HistoryAll(*store, 1)->size(), 8u);

  Result<ArchiveExpiry> r = store->ExpireArchive(clock.WallMillis() - 7 * kDay);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->messages, 7u);
  EXPECT_EQ(r->users, 2u);
  EXPECT_EQ(Bodies(*HistoryAll(*store, 1)), (std::vector<std::string>{"new0", "new1", "new2"}));
  EXPECT_TRUE(HistoryAll(*store, 2)->empty());
  EXPECT_EQ(Bodies(*HistoryAll(*store, 3)), (std::vector<std::string>{"new0", "new1"}));
  // The inbox is never expired, however old.
  EXPECT_EQ(Bodies(*ScanAll(*store, 2)), (std::vector<std::string>{"old2", "old3"}));
  EXPECT_EQ(Bodies(*ScanAll(*store, 1)), (std::vector<std::string>{"new3", "new4"}));
  // A second pass finds nothing more.
  r = store->ExpireArchive(clock.WallMillis() - 7 * kDay);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->messages, 0u);
}

TEST(RetentionTest, BackgroundSweepAppliesTheConfiguredRetention) {
  TempDir dir;
  ManualClock clock;
  StoreOptions o = TestOptions(dir.path());
  o.clock = &clock;
  o.inbox_cap = 1;
  {
    auto store = OpenOrDie(o);
    SendMany(*store, 1, 4, "old");
    ASSERT_TRUE(store->WaitArchiverIdle(10'000));
    clock.AdvanceMillis(3 * kDay);
    SendMany(*store, 1, 2, "new");
    ASSERT_TRUE(store->WaitArchiverIdle(10'000));
    ASSERT_EQ(HistoryAll(*store, 1)->size(), 5u);
  }
  // The retention thread sweeps when the store opens, then every interval.
  o.archive_retention_ms = 2 * kDay;
  auto store = OpenOrDie(o);
  ASSERT_NE(store, nullptr);
  EXPECT_TRUE(iris::testing::PollUntil([&] { return HistoryAll(*store, 1)->size() == 1; }))
      << HistoryAll(*store, 1)->size();
  EXPECT_EQ(Bodies(*HistoryAll(*store, 1)), std::vector<std::string>{"new0"});
  EXPECT_EQ(Bodies(*ScanAll(*store, 1)), std::vector<std::string>{"new1"});
}

// ---- checkpoints and backups ----

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteAll(const std::string& path, const std::string& content) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << content;
}

TEST(BackupTest, BackupVerifiesAndRestoresIntoAnEmptyDirectory) {
  TempDir dir;
  auto store = OpenOrDie(TestOptions(dir.Sub("store")));
  ASSERT_NE(store, nullptr);
  for (int i = 0; i < 50; ++i) {
    ASSERT_TRUE(
        store->Append(1, "k" + std::to_string(i), One(1, 2 + i % 3, "m" + std::to_string(i))).ok());
  }
  WriteAll(dir.Sub("secret"), "s3cret\n");
  ManualClock clock;
  BackupRequest req;
  req.target = dir.Sub("backups/one");
  req.node_id = 7;
  req.irisd_version = "9.9.9";
  req.extra_files = {{dir.Sub("secret"), "jwt.secret"}, {dir.Sub("missing"), "admin.token"}};
  Result<BackupManifest> m = CreateBackup(*store, req, clock);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->node_id, 7u);
  EXPECT_EQ(m->layout_version, kLayoutVersion);
  EXPECT_EQ(m->vnodes, 4096u);
  EXPECT_EQ(m->last_id, store->LastId());
  EXPECT_GT(m->files, 3u);
  ASSERT_TRUE(VerifyBackup(req.target).ok()) << VerifyBackup(req.target).status().ToString();

  // A non-empty target is refused, and left as it was.
  Result<BackupManifest> again = CreateBackup(*store, req, clock);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().code(), StatusCode::kBadRequest);
  EXPECT_NE(again.status().message().find("exists and is not empty"), std::string::npos)
      << again.status().message();
  EXPECT_TRUE(VerifyBackup(req.target).ok());

  // Restore: a non-empty data directory is refused; an empty one gets the store and the
  // secrets (never a file that was not there).
  std::filesystem::create_directories(dir.Sub("busy"));
  WriteAll(dir.Sub("busy/x"), "x");
  Result<BackupManifest> refused = RestoreBackup(req.target, dir.Sub("busy"));
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("not empty"), std::string::npos);
  ASSERT_TRUE(RestoreBackup(req.target, dir.Sub("restored")).ok());
  EXPECT_EQ(ReadAll(dir.Sub("restored/jwt.secret")), "s3cret\n");
  EXPECT_FALSE(std::filesystem::exists(dir.Sub("restored/admin.token")));
  EXPECT_FALSE(std::filesystem::exists(dir.Sub("restored/.restore-partial")));
  auto restored = OpenOrDie(TestOptions(dir.Sub("restored/store")));
  ASSERT_NE(restored, nullptr);
  for (uint64_t u = 2; u < 5; ++u) {
    EXPECT_EQ(Bodies(*ScanAll(*restored, u)), Bodies(*ScanAll(*store, u))) << u;
  }
  // Its clock starts above every id of the backup.
  Result<AppendOutcome> next = restored->Append(1, "", One(1, 2, "after"));
  ASSERT_TRUE(next.ok());
  EXPECT_GT(next->message_id, m->last_id);
  // Dedup entries came along.
  EXPECT_TRUE(restored->Append(1, "k0", One(1, 2, "m0"))->duplicate);
}

TEST(BackupTest, DamagedOrNewerBackupsAreRefusedWithTheReason) {
  TempDir dir;
  auto store = OpenOrDie(TestOptions(dir.Sub("store")));
  ASSERT_NE(store, nullptr);
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(store->Append(1, "", One(1, 2, "m")).ok());
  ManualClock clock;
  BackupRequest req;
  req.target = dir.Sub("b");
  ASSERT_TRUE(CreateBackup(*store, req, clock).ok());

  // A flipped byte in a store file.
  std::string victim;
  for (const auto& e : std::filesystem::directory_iterator(dir.Sub("b/store"))) {
    if (e.path().extension() == ".sst" || e.path().filename().string().rfind("MANIFEST", 0) == 0) {
      victim = e.path().string();
      break;
    }
  }
  ASSERT_FALSE(victim.empty());
  const std::string original = ReadAll(victim);
  std::filesystem::remove(victim);  // a hard link to the live store: replace, do not edit
  std::string damaged = original;
  damaged[damaged.size() / 2] ^= 0x01;
  WriteAll(victim, damaged);
  Result<BackupManifest> v = VerifyBackup(req.target);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.status().code(), StatusCode::kBadRequest);
  EXPECT_NE(v.status().message().find("does not match its checksum"), std::string::npos)
      << v.status().message();
  const std::string name = std::filesystem::path(victim).filename().string();
  EXPECT_NE(v.status().message().find(name), std::string::npos) << v.status().message();
  Result<BackupManifest> r = RestoreBackup(req.target, dir.Sub("restored"));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("does not match its checksum"), std::string::npos);
  EXPECT_TRUE(std::filesystem::is_empty(dir.Sub("restored")));  // nothing left behind
  std::filesystem::remove(victim);
  WriteAll(victim, original);
  ASSERT_TRUE(VerifyBackup(req.target).ok());

  // An unlisted file, then a missing SHA256SUMS (an interrupted backup).
  WriteAll(dir.Sub("b/store/stray"), "x");
  v = VerifyBackup(req.target);
  ASSERT_FALSE(v.ok());
  EXPECT_NE(v.status().message().find("stray"), std::string::npos) << v.status().message();
  std::filesystem::remove(dir.Sub("b/store/stray"));
  const std::string sums = ReadAll(dir.Sub("b/SHA256SUMS"));
  std::filesystem::remove(dir.Sub("b/SHA256SUMS"));
  v = VerifyBackup(req.target);
  ASSERT_FALSE(v.ok());
  EXPECT_NE(v.status().message().find("SHA256SUMS is missing"), std::string::npos);
  WriteAll(dir.Sub("b/SHA256SUMS"), sums);

  // A backup of a newer format, or of a newer store layout.
  const std::string manifest = ReadAll(dir.Sub("b/iris-backup.json"));
  for (const auto& [field, what] : std::vector<std::pair<std::string, std::string>>{
           {"\"format\": 1", "backup format 2"},
           {"\"layout_version\": " + std::to_string(kLayoutVersion),
            "layout version " + std::to_string(kLayoutVersion + 1)}}) {
    std::string newer = manifest;
    const size_t at = newer.find(field);
    ASSERT_NE(at, std::string::npos) << field << " in " << manifest;
    const std::string bumped = field.substr(0, field.rfind(' ') + 1) +
                               std::to_string(std::stoi(field.substr(field.rfind(' ') + 1)) + 1);
    newer.replace(at, field.size(), bumped);
    WriteAll(dir.Sub("b/iris-backup.json"), newer);
    r = RestoreBackup(req.target, dir.Sub("restored"));
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kUnsupportedVersion) << r.status().ToString();
    EXPECT_NE(r.status().message().find(what), std::string::npos) << r.status().message();
  }
}

TEST(BackupTest, RelativeTargetsResolveUnderTheBackupDirectory) {
  EXPECT_EQ(*ResolveBackupTarget("/b", "nightly/1"), "/b/nightly/1");
  EXPECT_EQ(*ResolveBackupTarget("/b", "/abs/x/"), "/abs/x/");
  EXPECT_EQ(ResolveBackupTarget("/b", "../etc").status().code(), StatusCode::kBadRequest);
  EXPECT_EQ(ResolveBackupTarget("/b", "").status().code(), StatusCode::kBadRequest);
  EXPECT_EQ(ResolveBackupTarget("", "rel").status().code(), StatusCode::kBadRequest);
}

// ---- format versions ----

TEST(FormatVersionTest, NewerLayoutWithUnknownColumnFamiliesIsRefusedNamingBothVersions) {
  TempDir dir;
  { auto store = OpenOrDie(TestOptions(dir.path())); }
  {
    // What a future layout might do: a new column family, and V = kLayoutVersion + 1.
    std::vector<std::string> names;
    ASSERT_TRUE(rocksdb::DB::ListColumnFamilies(rocksdb::DBOptions(), dir.path(), &names).ok());
    std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
    for (const auto& n : names) cfs.emplace_back(n, rocksdb::ColumnFamilyOptions());
    std::vector<rocksdb::ColumnFamilyHandle*> handles;
    rocksdb::DB* raw = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(rocksdb::DBOptions(), dir.path(), cfs, &handles, &raw).ok());
    std::unique_ptr<rocksdb::DB> db(raw);
    rocksdb::ColumnFamilyHandle* future = nullptr;
    ASSERT_TRUE(db->CreateColumnFamily(rocksdb::ColumnFamilyOptions(), "future", &future).ok());
    handles.push_back(future);
    for (auto* h : handles) {
      if (h->GetName() == "meta") {
        ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), h, kMetaLayoutVersionKey,
                            EncodeU32(kLayoutVersion + 1))
                        .ok());
      }
    }
    for (auto* h : handles) ASSERT_TRUE(db->DestroyColumnFamilyHandle(h).ok());
    ASSERT_TRUE(db->Close().ok());
  }
  Result<std::unique_ptr<InboxStore>> s = InboxStore::Open(TestOptions(dir.path()));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kUnsupportedVersion) << s.status().ToString();
  EXPECT_NE(s.status().message().find("has layout version " + std::to_string(kLayoutVersion + 1)),
            std::string::npos)
      << s.status().message();
  EXPECT_NE(s.status().message().find("reads layout version " + std::to_string(kLayoutVersion)),
            std::string::npos)
      << s.status().message();
}

}  // namespace
}  // namespace iris::store
