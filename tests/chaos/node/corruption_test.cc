// Corruption of a stopped node's data directory (issue 17): a bit flip in the middle of the
// synced write-ahead log, in an SST, in the MANIFEST, and a truncated synced WAL. irisd must
// refuse to start with a clear error; it must never start and serve fewer acknowledged
// messages. Each case then puts the undamaged copy back, starts irisd on it and runs the
// checker over the whole history, so the refused directory provably held every message.
#include <gtest/gtest.h>
#include <rocksdb/db.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "harness/chaos.h"
#include "store/store_db.h"

namespace iris::chaos {
namespace {

namespace fs = std::filesystem;

// The file of `dir` whose name ends in `suffix` (or starts with it, for "MANIFEST-") that
// sorts last (RocksDB numbers its files: the last WAL is the live one), or nullopt.
std::optional<fs::path> LastFile(const fs::path& dir, const std::string& part, bool prefix) {
  std::vector<fs::path> found;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    const bool match = prefix ? name.rfind(part, 0) == 0
                              : name.size() >= part.size() &&
                                    name.compare(name.size() - part.size(), part.size(), part) == 0;
    if (match && fs::file_size(e.path()) > 0) found.push_back(e.path());
  }
  if (found.empty()) return std::nullopt;
  std::sort(found.begin(), found.end());
  return found.back();
}

// The largest file ending in `suffix`.
std::optional<fs::path> LargestFile(const fs::path& dir, const std::string& suffix) {
  std::optional<fs::path> best;
  uintmax_t best_size = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() != suffix) continue;
    const uintmax_t size = fs::file_size(e.path());
    if (size > best_size) {
      best = e.path();
      best_size = size;
    }
  }
  return best;
}

// Flips one bit of the byte at `offset`.
void FlipBit(const fs::path& file, uintmax_t offset) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  ASSERT_TRUE(f.good()) << file;
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.read(&c, 1);
  ASSERT_TRUE(f.good()) << file << " @" << offset;
  c = static_cast<char>(c ^ 0x10);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(&c, 1);
  f.flush();
  ASSERT_TRUE(f.good()) << file;
}

// A byte in the middle of a log-format file (WAL, MANIFEST) that lies inside a record: not in
// the zero padding RocksDB leaves at the end of a 32 KiB block when a header does not fit.
uintmax_t MiddleOfLogFile(uintmax_t size) {
  constexpr uintmax_t kBlock = 32 * 1024;
  uintmax_t off = size / 2;
  if (off % kBlock > kBlock - 16) off -= 64;
  return off;
}

class CorruptionTest : public ::testing::Test {
 protected:
  // Traffic from the chaos clients until `acks` acknowledgements, then a clean stop (which
  // keeps the WAL: irisd does not flush memtables at shutdown) and a copy of the directory.
  void Prepare(uint64_t acks) {
    options_.seed = ChaosSeed();
    server_.Start();
    ASSERT_FALSE(HasFatalFailure());
    run_ = std::make_unique<ChaosRun>(&server_, options_);
    run_->StartClients();
    ASSERT_TRUE(run_->WaitAcks(acks, 60'000)) << "only " << run_->acks() << " acknowledged";
    run_->StopClients();
    const int status = server_.Stop(SIGTERM);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "wait status " << status;
    store_ = fs::path(server_.data_dir()) / "store";
    ASSERT_TRUE(fs::exists(store_));
  }

  // Keeps an undamaged copy of the data directory.
  void KeepCopy() {
    pristine_ = server_.data_dir() + ".pristine";
    fs::remove_all(pristine_);
    fs::copy(server_.data_dir(), pristine_, fs::copy_options::recursive);
  }

  // irisd on the damaged directory must exit non-zero naming the problem; then the undamaged
  // copy goes back and every acknowledged message is served.
  void ExpectRefusedThenIntact(const std::string& name, const std::string& phrase) {
    std::string output;
    const int code = server_.RunUntilExit(&output, 30'000);
    EXPECT_NE(code, 0) << "irisd started on a damaged data directory:\n" << output;
    EXPECT_NE(code, -1) << "irisd was still running at the deadline:\n" << output;
    EXPECT_NE(output.find(phrase), std::string::npos)
        << "irisd's error does not say \"" << phrase << "\":\n"
        << output;
    fs::remove_all(server_.data_dir());
    fs::copy(pristine_, server_.data_dir(), fs::copy_options::recursive);
    fs::remove_all(pristine_);
    server_.Start();
    ASSERT_FALSE(HasFatalFailure());
    run_->ServerUp();
    const CheckerReport r = run_->FinishAndCheck(name, 1);
    EXPECT_GT(r.acknowledged, 0u);
  }

  ChaosOptions options_;
  testing::ServerProcess server_{ChaosServerArgs()};
  std::unique_ptr<ChaosRun> run_;
  fs::path store_;
  std::string pristine_;
};

TEST_F(CorruptionTest, BitFlipInTheMiddleOfTheSyncedWalIsRefused) {
  Prepare(600);
  ASSERT_FALSE(HasFatalFailure());
  KeepCopy();
  const std::optional<fs::path> wal = LastFile(store_, ".log", false);
  ASSERT_TRUE(wal.has_value()) << "no WAL in " << store_;
  const uintmax_t size = fs::file_size(*wal);
  ASSERT_GT(size, 64u * 1024) << "the WAL is too short to have a middle";
  FlipBit(*wal, MiddleOfLogFile(size));
  ExpectRefusedThenIntact("corrupt-wal-bitflip", "is damaged and was not opened");
}

TEST_F(CorruptionTest, TruncatedSyncedWalIsRefused) {
  Prepare(600);
  ASSERT_FALSE(HasFatalFailure());
  KeepCopy();
  const std::optional<fs::path> wal = LastFile(store_, ".log", false);
  ASSERT_TRUE(wal.has_value()) << "no WAL in " << store_;
  const uintmax_t size = fs::file_size(*wal);
  ASSERT_GT(size, 64u * 1024);
  fs::resize_file(*wal, size / 2);
  ExpectRefusedThenIntact("corrupt-wal-truncated", "the write-ahead log was truncated or lost");
}

TEST_F(CorruptionTest, BitFlipInTheManifestIsRefused) {
  Prepare(100);
  ASSERT_FALSE(HasFatalFailure());
  KeepCopy();
  const std::optional<fs::path> manifest = LastFile(store_, "MANIFEST-", true);
  ASSERT_TRUE(manifest.has_value()) << "no MANIFEST in " << store_;
  FlipBit(*manifest, MiddleOfLogFile(fs::file_size(*manifest)));
  ExpectRefusedThenIntact("corrupt-manifest", "is damaged and was not opened");
}

TEST_F(CorruptionTest, BitFlipInAnSstIsRefusedAtStart) {
  Prepare(600);
  ASSERT_FALSE(HasFatalFailure());
  // Move the messages from the WAL into SST files (irisd flushes on its own only when a
  // memtable fills): open the stopped store directly and flush every column family.
  {
    store::StoreDbOptions o;
    o.path = store_.string();
    o.durability_mark_interval_ms = 0;
    auto db = store::StoreDb::Open(o);
    ASSERT_TRUE(db.ok()) << db.status().ToString();
    std::vector<rocksdb::ColumnFamilyHandle*> cfs;
    for (int c = 0; c < static_cast<int>(store::Cf::kCount); ++c) {
      cfs.push_back((*db)->cf(static_cast<store::Cf>(c)));
    }
    rocksdb::FlushOptions fo;
    fo.wait = true;
    const rocksdb::Status s = (*db)->db()->Flush(fo, cfs);
    ASSERT_TRUE(s.ok()) << s.ToString();
  }
  KeepCopy();
  const std::optional<fs::path> sst = LargestFile(store_, ".sst");
  ASSERT_TRUE(sst.has_value()) << "no SST in " << store_;
  FlipBit(*sst, fs::file_size(*sst) / 3);  // inside a data block (the index is at the end)
  ExpectRefusedThenIntact("corrupt-sst", "failed its checksum verification");
}

}  // namespace
}  // namespace iris::chaos
