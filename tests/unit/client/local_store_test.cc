#include "client/local_store.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

namespace iris::client {
namespace {

class LocalStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/iris-store-test-XXXXXX";
    dir_ = mkdtemp(tmpl);
    path_ = dir_ + "/state.db";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::unique_ptr<LocalStore> Open() {
    auto s = LocalStore::Open(path_);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    return s.ok() ? std::move(*s) : nullptr;
  }
  std::string dir_, path_;
};

TEST_F(LocalStoreTest, CursorAndQueueSurviveReopenInOrder) {
  {
    auto s = Open();
    EXPECT_EQ(s->Cursor(), 0u);
    ASSERT_TRUE(s->SetCursor(0xfedcba9876543210ULL).ok());
    for (int i = 0; i < 5; ++i) {
      QueuedSend q;
      q.idem_key = std::string(15, 'k') + static_cast<char>('a' + i);
      q.recipient = 10 + static_cast<uint64_t>(i % 2);
      q.payload = "m" + std::to_string(i);
      ASSERT_TRUE(s->Enqueue(q).ok());
    }
  }
  auto s = Open();
  EXPECT_EQ(s->Cursor(), 0xfedcba9876543210ULL);
  auto q = s->Queue();
  ASSERT_EQ(q.size(), 5u);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(q[static_cast<size_t>(i)].payload, "m" + std::to_string(i));
  ASSERT_TRUE(s->Dequeue(q[1].seq, 77, 1).ok());
  EXPECT_EQ(s->Queue().size(), 4u);
  auto found = s->FindQueued(q[2].idem_key);
  ASSERT_TRUE(found.ok());
  ASSERT_TRUE(found->has_value());
  EXPECT_EQ((*found)->payload, "m2");
}

TEST_F(LocalStoreTest, DuplicateIdempotencyKeyIsRefused) {
  auto s = Open();
  QueuedSend q;
  q.idem_key = std::string(16, 'x');
  q.recipient = 1;
  q.payload = "a";
  ASSERT_TRUE(s->Enqueue(q).ok());
  EXPECT_EQ(s->Enqueue(q).status().code(), StatusCode::kInternal);
}

TEST_F(LocalStoreTest, TransactionRollsBackWithoutCommitAndSavepointsNest) {
  auto s = Open();
  {
    LocalStore::Transaction tx(*s);
    ASSERT_TRUE(s->SetCursor(5).ok());
  }
  EXPECT_EQ(s->Cursor(), 0u) << "no Commit(): rolled back";
  {
    LocalStore::Transaction outer(*s);
    ASSERT_TRUE(s->SetCursor(7).ok());
    {
      LocalStore::Transaction inner(*s);
      ASSERT_TRUE(s->StorePreKey(3, "pk").ok());
    }  // inner rolled back
    {
      LocalStore::Transaction inner(*s);
      ASSERT_TRUE(s->StorePreKey(4, "pk4").ok());
      ASSERT_TRUE(inner.Commit().ok());
    }
    ASSERT_TRUE(outer.Commit().ok());
  }
  EXPECT_EQ(s->Cursor(), 7u);
  EXPECT_FALSE(s->LoadPreKey(3)->has_value());
  EXPECT_EQ(s->LoadPreKey(4)->value(), "pk4");
  EXPECT_EQ(s->CountPreKeys(), 1u);
}

TEST_F(LocalStoreTest, IncomingIsIdempotentById) {
  auto s = Open();
  StoredIncoming m;
  m.id = 100;
  m.peer = 2;
  m.body = "hello";
  EXPECT_TRUE(*s->InsertIncoming(m));
  m.body = "other";
  EXPECT_FALSE(*s->InsertIncoming(m));
  auto all = s->Incoming(0, 10);
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].body, "hello");
  EXPECT_TRUE(s->Incoming(100, 10).empty());
}

mode_t ModeOf(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return 0;
  return st.st_mode & 07777;
}

// The database holds the identity private key and plaintext history: it and SQLite's side
// files are 0600 from the first write, and the state directory 0700, whatever the umask.
TEST_F(LocalStoreTest, StateFilesArePrivateFromTheFirstOpen) {
  const mode_t old_umask = umask(022);
  const std::string home = dir_ + "/home";
  ASSERT_TRUE(EnsurePrivateDirectory(home).ok());
  EXPECT_EQ(ModeOf(home), 0700u);
  path_ = home + "/state.db";
  {
    auto s = Open();
    ASSERT_TRUE(s);
    ASSERT_TRUE(s->Put("identity_private", "secret").ok());
    // WAL mode: the write created -wal and -shm; they are there while the store is open.
    EXPECT_EQ(ModeOf(path_), 0600u);
    EXPECT_EQ(ModeOf(path_ + "-wal"), 0600u);
    EXPECT_EQ(ModeOf(path_ + "-shm"), 0600u);
  }
  // An existing directory and database with loose modes (an older client) are tightened.
  ASSERT_EQ(chmod(home.c_str(), 0755), 0);
  ASSERT_EQ(chmod(path_.c_str(), 0644), 0);
  ASSERT_TRUE(EnsurePrivateDirectory(home).ok());
  EXPECT_EQ(ModeOf(home), 0700u);
  EXPECT_TRUE(Open());
  EXPECT_EQ(ModeOf(path_), 0600u);
  umask(old_umask);
}

// The test-only fault hook makes the named operation fail as a broken disk would.
// Send.adds_contact (docs/protocol.md, Client conventions 12): the flag is fixed with the
// ciphertext and kept for retries across reopens, and the recipients whose flagged SEND
// was acknowledged are remembered (the first record stays). A database from before the
// flag gains the column; its queued sends go without it.
TEST_F(LocalStoreTest, AddsContactFlagAndContactsSurviveReopen) {
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db,
                           "CREATE TABLE send_queue (seq INTEGER PRIMARY KEY AUTOINCREMENT, idem "
                           "BLOB NOT NULL UNIQUE, recipient INTEGER NOT NULL, kind INTEGER NOT "
                           "NULL, payload BLOB NOT NULL, wire_body BLOB NOT NULL, attempts INTEGER "
                           "NOT NULL, created_ms INTEGER NOT NULL);"
                           "INSERT INTO send_queue (idem, recipient, kind, payload, wire_body, "
                           "attempts, created_ms) VALUES (x'01', 5, 0, 'old', 'cipher', 1, 1);",
                           nullptr, nullptr, nullptr),
              SQLITE_OK);
    sqlite3_close(db);
  }
  {
    auto s = Open();
    ASSERT_TRUE(s);
    auto q = s->Queue();
    ASSERT_EQ(q.size(), 1u);
    EXPECT_EQ(q[0].wire_body, "cipher");
    EXPECT_FALSE(q[0].adds_contact);
    QueuedSend n;
    n.idem_key = std::string(16, 'n');
    n.recipient = 6;
    n.payload = "new";
    auto seq = s->Enqueue(n);
    ASSERT_TRUE(seq.ok());
    ASSERT_TRUE(s->SetWireBody(*seq, "cipher2", true).ok());
    auto added = s->ContactAdded(6);
    ASSERT_TRUE(added.ok());
    EXPECT_FALSE(*added);
    ASSERT_TRUE(s->MarkContactAdded(6, 100, 1).ok());
    ASSERT_TRUE(s->MarkContactAdded(6, 200, 2).ok());  // kept: the first record
  }
  auto s = Open();
  auto q = s->Queue();
  ASSERT_EQ(q.size(), 2u);
  EXPECT_FALSE(q[0].adds_contact);
  EXPECT_EQ(q[1].wire_body, "cipher2");
  EXPECT_TRUE(q[1].adds_contact);
  auto found = s->FindQueued(q[1].idem_key);
  ASSERT_TRUE(found.ok() && found->has_value());
  EXPECT_TRUE((*found)->adds_contact);
  for (uint64_t peer : {5, 6}) {
    auto added = s->ContactAdded(peer);
    ASSERT_TRUE(added.ok());
    EXPECT_EQ(*added, peer == 6) << peer;
  }
}

TEST_F(LocalStoreTest, InjectedFaultFailsTheNamedOperation) {
  auto s = Open();
  ASSERT_TRUE(s->StoreSession("7", 1, "record").ok());
  s->SetFaultForTesting("load_session");
  EXPECT_EQ(s->LoadSession("7", 1).status().code(), StatusCode::kInternal);
  s->SetFaultForTesting("");
  EXPECT_TRUE(s->LoadSession("7", 1).ok());
}

}  // namespace
}  // namespace iris::client
