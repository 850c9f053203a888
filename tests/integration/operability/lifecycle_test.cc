// Operability (issue 20), the node's data lifecycle against real processes: an online
// backup under load restored into a new node (irisctl backup / restore), the refusals of a
// damaged backup and of non-empty directories, account deletion (irisctl delete-user), and
// irisd refusing a data directory written by a newer store layout.

#include <fcntl.h>
#include <poll.h>
#include <rocksdb/db.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "integration/harness/run_program.h"
#include "integration/harness/server_process.h"
#include "store/store_keys.h"
#include "support/wait_for.h"
#include "wire/opcode.h"

namespace iris::testing {
namespace {

namespace fs = std::filesystem;

constexpr uint8_t kSendAck = static_cast<uint8_t>(wire::Opcode::kSendAck);
constexpr uint8_t kWelcome = static_cast<uint8_t>(wire::Opcode::kWelcome);

std::string BuildDir() {
  const char* d = std::getenv("IRIS_BUILD_DIR");
  return d != nullptr ? d : ".";
}
std::string Irisctl() { return BuildDir() + "/tools/irisctl/irisctl"; }

// A fresh directory, removed with its contents.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/iris-lifecycle-test-XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string Sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

std::string WriteTokenFile(const TempDir& dir, const ServerProcess& server) {
  const std::string path = dir.Sub("admin.token");
  std::ofstream(path) << server.admin_token() << "\n";
  chmod(path.c_str(), 0600);
  return path;
}

std::string Admin(const ServerProcess& s) { return "127.0.0.1:" + std::to_string(s.admin_port()); }

// One sender under load: user `sender` sends to `recipient` with up to kWindow requests in
// flight until `stop`, or `cap` messages; every acknowledged body is recorded with whether
// the acknowledgement arrived before `backup_began` was set.
struct Sender {
  static constexpr int kWindow = 16;
  uint64_t sender = 0;
  uint64_t recipient = 0;
  int cap = 0;
  std::vector<std::string> acked_before;  // acknowledged before the backup request began
  int acked_after = 0;
  int acked = 0;
  std::string failure;

  void Run(const ServerProcess& server, const std::atomic<bool>& backup_began,
           const std::atomic<bool>& stop, std::atomic<int>* progress) {
    auto c = TestClient::Connect(server);
    if (c == nullptr) {
      failure = "cannot connect";
      return;
    }
    c->Login(server, sender);
    std::vector<v1::Envelope> none;
    c->CatchUp(&none);
    int sent = 0;
    while (!stop.load() && sent < cap) {
      const int burst = std::min(kWindow, cap - sent);
      for (int i = 0; i < burst; ++i) {
        c->SendAsync(static_cast<uint64_t>(sent + i + 1), recipient,
                     "u" + std::to_string(sender) + "-" + std::to_string(sent + i), NewKey());
      }
      for (int i = 0; i < burst; ++i) {
        const client::ReceivedFrame f = c->Expect(kSendAck, 20'000);
        // Read the flag after the acknowledgement arrived: false means it arrived before
        // the backup request was sent.
        const bool before = !backup_began.load();
        v1::SendAck a;
        if (f.opcode != kSendAck || !a.ParseFromString(f.payload) ||
            a.request_id() != static_cast<uint64_t>(sent + i + 1)) {
          failure = "bad SEND_ACK for request " + std::to_string(sent + i + 1);
          return;
        }
        if (before) {
          acked_before.push_back("u" + std::to_string(sender) + "-" + std::to_string(sent + i));
        } else {
          ++acked_after;
        }
        ++acked;
        progress->fetch_add(1);
      }
      sent += burst;
    }
  }
};

// The online backup of a node under load, restored into a new data directory and served by
// a new irisd: every message acknowledged before the backup began is there.
TEST(BackupRestore, BackupUnderLoadRestoresEveryAcknowledgedMessage) {
  TempDir tmp;
  // An inbox cap above anything the load sends: sync serves every message (none archived).
  const std::vector<std::string> flags = {"--inbox-cap", "1000000"};
  ServerProcess source(flags);
  source.Start();
  ASSERT_FALSE(HasFatalFailure());
  const std::string token_file = WriteTokenFile(tmp, source);

  constexpr int kSenders = 4;
  constexpr int kCap = 50'000;  // per sender, a bound should the backup be slow
  std::vector<Sender> senders(kSenders);
  std::atomic<bool> backup_began{false};
  std::atomic<bool> stop{false};
  std::atomic<int> progress{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kSenders; ++i) {
    senders[i].sender = 1 + i;
    senders[i].recipient = 101 + i;
    senders[i].cap = kCap;
    threads.emplace_back([&, i] { senders[i].Run(source, backup_began, stop, &progress); });
  }
  // Mid-load: once messages flow.
  EXPECT_TRUE(PollUntil([&] { return progress.load() >= 2000; }, 60'000));
  const std::string backup_dir = tmp.Sub("backups/b1");
  backup_began.store(true);
  std::string out;
  const int rc = RunProgram({Irisctl(), "backup", "--admin", Admin(source), "--token-file",
                             token_file, "--to", backup_dir},
                            &out);
  const int at_backup_end = progress.load();
  // The load goes on past the backup.
  EXPECT_TRUE(PollUntil([&] { return progress.load() >= at_backup_end + 200; }, 60'000))
      << "the senders stopped (cap reached?) at " << progress.load();
  stop.store(true);
  for (auto& t : threads) t.join();
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("backup written to " + backup_dir), std::string::npos) << out;
  size_t before_total = 0;
  int after_total = 0;
  for (const Sender& s : senders) {
    ASSERT_TRUE(s.failure.empty()) << s.failure;
    before_total += s.acked_before.size();
    after_total += s.acked_after;
  }
  ASSERT_GT(before_total, 0u);
  EXPECT_GT(after_total, 0) << "no acknowledgement after the backup began: not under load";
  std::printf("acknowledged before the backup began: %zu, after: %d\n", before_total, after_total);

  EXPECT_TRUE(fs::exists(backup_dir + "/SHA256SUMS"));
  EXPECT_TRUE(fs::exists(backup_dir + "/iris-backup.json"));
  ASSERT_EQ(RunProgram({Irisctl(), "verify-backup", "--from", backup_dir}, &out), 0) << out;

  // Restore into the (empty) data directory of a new node, and start it there.
  ServerProcess restored(flags);
  ASSERT_EQ(
      RunProgram({Irisctl(), "restore", "--from", backup_dir, "--data-dir", restored.data_dir()},
                 &out),
      0)
      << out;
  EXPECT_NE(out.find("restored"), std::string::npos) << out;
  restored.Start();
  ASSERT_FALSE(HasFatalFailure());
  for (const Sender& s : senders) {
    auto c = TestClient::Connect(restored);  // the restored certificate verifies
    ASSERT_NE(c, nullptr);
    // A token minted with the source node's secret: the restored node has it.
    auto welcome = c->Hello(source.Token(s.recipient));
    ASSERT_EQ(welcome.opcode, kWelcome) << "recipient " << s.recipient;
    std::vector<v1::Envelope> got;
    c->CatchUp(&got);
    std::set<std::string> bodies;
    for (const auto& e : got) bodies.insert(e.body());
    size_t missing = 0;
    for (const std::string& b : s.acked_before) missing += bodies.count(b) == 0 ? 1 : 0;
    EXPECT_EQ(missing, 0u) << "recipient " << s.recipient << ": " << missing << " of "
                           << s.acked_before.size()
                           << " messages acknowledged before the backup are missing";
    // Nothing that was never acknowledged (every stored body was sent, and each once).
    EXPECT_EQ(bodies.size(), got.size());
    EXPECT_LE(got.size(), static_cast<size_t>(s.acked));
  }
  // The restored node takes new messages.
  auto alice = TestClient::Connect(restored);
  alice->Login(restored, 1);
  auto ack = alice->Send(1, 101, "after restore", NewKey());
  EXPECT_EQ(ack.opcode, kSendAck);

  // Refusals: a backup into a non-empty directory, a restore into a non-empty one.
  ASSERT_EQ(RunProgram({Irisctl(), "backup", "--admin", Admin(source), "--token-file", token_file,
                        "--to", backup_dir},
                       &out),
            1)
      << out;
  EXPECT_NE(out.find("exists and is not empty"), std::string::npos) << out;
  ASSERT_EQ(
      RunProgram({Irisctl(), "restore", "--from", backup_dir, "--data-dir", source.data_dir()},
                 &out),
      1)
      << out;
  EXPECT_NE(out.find("is not empty"), std::string::npos) << out;
}

// A damaged file in a backup: verify and restore name it; restore leaves nothing behind.
TEST(BackupRestore, DamagedBackupIsRefusedNamingTheFile) {
  TempDir tmp;
  ServerProcess source;
  source.Start();
  ASSERT_FALSE(HasFatalFailure());
  const std::string token_file = WriteTokenFile(tmp, source);
  auto alice = TestClient::Connect(source);
  alice->Login(source, 1);
  for (int i = 0; i < 50; ++i) ASSERT_EQ(alice->Send(i + 1, 2, "m", NewKey()).opcode, kSendAck);
  // A relative --to lands under <data-dir>/backups by default.
  std::string out;
  ASSERT_EQ(RunProgram({Irisctl(), "backup", "--admin", Admin(source), "--token-file", token_file,
                        "--to", "nightly"},
                       &out),
            0)
      << out;
  const std::string backup = source.data_dir() + "/backups/nightly";
  ASSERT_TRUE(fs::exists(backup + "/SHA256SUMS")) << out;
  // Damage a copy (the backup's store files are hard links to the live store's).
  const std::string copy = tmp.Sub("copy");
  fs::copy(backup, copy, fs::copy_options::recursive);
  std::string victim;
  for (const auto& e : fs::directory_iterator(copy + "/store")) {
    if (e.path().extension() == ".sst") victim = e.path().string();
  }
  ASSERT_FALSE(victim.empty());
  {
    std::fstream f(victim, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(100);
    char c = 0;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x40);
    f.seekp(100);
    f.write(&c, 1);
  }
  const std::string name = "store/" + fs::path(victim).filename().string();
  EXPECT_EQ(RunProgram({Irisctl(), "verify-backup", "--from", copy}, &out), 1) << out;
  EXPECT_NE(out.find(name + " does not match its checksum"), std::string::npos) << out;
  const std::string target = tmp.Sub("new-node");
  EXPECT_EQ(RunProgram({Irisctl(), "restore", "--from", copy, "--data-dir", target}, &out), 1)
      << out;
  EXPECT_NE(out.find(name + " does not match its checksum"), std::string::npos) << out;
  EXPECT_TRUE(fs::is_empty(target));
  // The undamaged original restores.
  EXPECT_EQ(RunProgram({Irisctl(), "restore", "--from", backup, "--data-dir", target}, &out), 0)
      << out;
  // Bad requests are answered with the reason, without touching the disk.
  ASSERT_EQ(RunProgram({Irisctl(), "backup", "--admin", Admin(source), "--token-file", token_file,
                        "--to", "../escape"},
                       &out),
            1);
  EXPECT_NE(out.find("without . or .."), std::string::npos) << out;
  std::ofstream(tmp.Sub("wrong.token")) << "not-the-admin-token-at-all\n";
  chmod(tmp.Sub("wrong.token").c_str(), 0600);
  ASSERT_EQ(RunProgram({Irisctl(), "backup", "--admin", Admin(source), "--token-file",
                        tmp.Sub("wrong.token"), "--to", "x"},
                       &out),
            1);
  EXPECT_NE(out.find("HTTP 401"), std::string::npos) << out;
}

// Account deletion: the user's messages are gone, their tokens are refused, other users keep
// theirs; a token issued after the deletion logs in to an empty inbox.
TEST(AccountDeletion, DeleteUserRemovesTheirDataAndRevokesTheirTokens) {
  TempDir tmp;
  ServerProcess server;
  server.Start();
  ASSERT_FALSE(HasFatalFailure());
  const std::string token_file = WriteTokenFile(tmp, server);
  auto alice = TestClient::Connect(server);
  alice->Login(server, 1);
  for (int i = 0; i < 30; ++i) {
    ASSERT_EQ(alice->Send(2 * i + 1, 2, "to-bob", NewKey()).opcode, kSendAck);
    ASSERT_EQ(alice->Send(2 * i + 2, 3, "to-carol", NewKey()).opcode, kSendAck);
  }
  const std::string old_token = server.Token(2);
  std::string out;
  ASSERT_EQ(RunProgram({Irisctl(), "delete-user", "--admin", Admin(server), "--token-file",
                        token_file, "--user", "2"},
                       &out),
            0)
      << out;
  EXPECT_NE(out.find("deleted user 2: 30 messages"), std::string::npos) << out;

  auto bob = TestClient::Connect(server);
  EXPECT_NE(bob->Hello(old_token).opcode, kWelcome) << "a token of the deleted user still works";
  auth::Claims later;
  later.user_id = 2;
  later.iat = SystemClock::Instance().WallMillis() / 1000 + 2;  // after the revocation
  later.exp = later.iat + 3600;
  later.jti = "after-deletion";
  auto bob2 = TestClient::Connect(server);
  ASSERT_EQ(bob2->Hello(server.Token(later)).opcode, kWelcome);
  std::vector<v1::Envelope> got;
  bob2->CatchUp(&got);
  EXPECT_TRUE(got.empty()) << got.size() << " messages left for the deleted user";

  auto carol = TestClient::Connect(server);
  carol->Login(server, 3);
  got.clear();
  carol->CatchUp(&got);
  EXPECT_EQ(got.size(), 30u);

  // Bad input gets the reason.
  ASSERT_EQ(RunProgram({Irisctl(), "delete-user", "--admin", Admin(server), "--token-file",
                        token_file, "--user", "0"},
                       &out),
            2);
  EXPECT_NE(out.find("--user must be non-zero"), std::string::npos) << out;
}

// Writes layout version `version` into the stopped node's store; with `new_cf`, also a
// column family this build does not know (what a future layout may add).
void StampLayout(const std::string& store_path, uint32_t version, bool new_cf) {
  std::vector<std::string> names;
  ASSERT_TRUE(rocksdb::DB::ListColumnFamilies(rocksdb::DBOptions(), store_path, &names).ok());
  std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
  for (const auto& n : names) cfs.emplace_back(n, rocksdb::ColumnFamilyOptions());
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  ASSERT_TRUE(rocksdb::DB::Open(rocksdb::DBOptions(), store_path, cfs, &handles, &raw).ok());
  std::unique_ptr<rocksdb::DB> db(raw);
  if (new_cf) {
    rocksdb::ColumnFamilyHandle* h = nullptr;
    ASSERT_TRUE(db->CreateColumnFamily(rocksdb::ColumnFamilyOptions(), "future", &h).ok());
    handles.push_back(h);
  }
  for (auto* h : handles) {
    if (h->GetName() == "meta") {
      rocksdb::WriteOptions wo;
      wo.sync = true;
      ASSERT_TRUE(db->Put(wo, h, store::kMetaLayoutVersionKey, store::EncodeU32(version)).ok());
    }
  }
  for (auto* h : handles) ASSERT_TRUE(db->DestroyColumnFamilyHandle(h).ok());
  ASSERT_TRUE(db->Close().ok());
}

// irisd refuses a data directory written by a newer store layout, naming both versions,
// and exits non-zero — also when that layout added a column family.
TEST(FormatVersion, IrisdRefusesADataDirectoryOfANewerLayout) {
  for (const bool new_cf : {false, true}) {
    SCOPED_TRACE(new_cf ? "with a new column family" : "version only");
    ServerProcess server;
    server.Start();
    ASSERT_FALSE(HasFatalFailure());
    server.Stop();
    const uint32_t newer = store::kLayoutVersion + 1;
    StampLayout(server.data_dir() + "/store", newer, new_cf);
    ASSERT_FALSE(HasFatalFailure());
    std::string out;
    const int rc = server.RunUntilExit(&out);
    EXPECT_NE(rc, 0) << out;
    EXPECT_NE(rc, -1) << out;
    EXPECT_NE(out.find("has layout version " + std::to_string(newer)), std::string::npos) << out;
    EXPECT_NE(out.find("this build reads layout version " + std::to_string(store::kLayoutVersion)),
              std::string::npos)
        << out;
  }
}

}  // namespace
}  // namespace iris::testing
