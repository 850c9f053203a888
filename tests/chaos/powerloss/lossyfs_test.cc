// Self-test of iris_lossyfs (docs/reliability.md, "Power loss"): what is not fsynced is gone after
// a crash, what is fsynced survives, and names follow their directory's fsync. Every test
// here fails against a file system that passes everything through.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <random>
#include <string>

#include "chaos/powerloss/lossy_mount.h"
#include "unit/store/store_test_util.h"

namespace iris::powerloss {
namespace {

using store::testing::TempDir;

std::string ReadAll(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "<missing>";
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  close(fd);
  return out;
}

bool Exists(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0;
}

// Writes `data` to `path` (created or truncated); fsyncs the file when asked.
void Write(const std::string& path, const std::string& data, bool fsync_file) {
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0) << path << ": " << strerror(errno);
  ASSERT_EQ(write(fd, data.data(), data.size()), static_cast<ssize_t>(data.size()));
  if (fsync_file) {
    ASSERT_EQ(fsync(fd), 0) << strerror(errno);
  }
  close(fd);
}

void Append(const std::string& path, const std::string& data, bool datasync) {
  const int fd = open(path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  ASSERT_GE(fd, 0) << path;
  ASSERT_EQ(write(fd, data.data(), data.size()), static_cast<ssize_t>(data.size()));
  if (datasync) {
    ASSERT_EQ(fdatasync(fd), 0) << strerror(errno);
  }
  close(fd);
}

void FsyncDir(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  ASSERT_GE(fd, 0) << path;
  ASSERT_EQ(fsync(fd), 0) << strerror(errno);
  close(fd);
}

class LossyfsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string err;
    ASSERT_TRUE(mount_.Mount(&err)) << err;
    dir_ = mount_.mountpoint() + "/d";
    ASSERT_EQ(mkdir(dir_.c_str(), 0755), 0);
  }
  void TearDown() override { mount_.Unmount(); }

  // Power loss: drop, unmount, mount again.
  void PowerLoss() {
    ASSERT_TRUE(mount_.Crash()) << "the control file refused 'crash'";
    mount_.Unmount();
    std::string err;
    ASSERT_TRUE(mount_.Mount(&err)) << err;
  }

  TempDir tmp_;
  LossyMount mount_{tmp_.Sub("backing"), tmp_.Sub("mnt")};
  std::string dir_;
};

TEST_F(LossyfsTest, UnsyncedWriteIsGoneSyncedWriteSurvives) {
  const std::string a = dir_ + "/a", b = dir_ + "/b";
  Write(a, "durable", true);
  Write(b, "durable-too", true);
  FsyncDir(dir_);
  Append(a, "+volatile", false);  // never synced
  Append(b, "+synced", true);     // fdatasync
  EXPECT_EQ(ReadAll(a), "durable+volatile") << "reads see the latest writes";
  PowerLoss();
  EXPECT_EQ(ReadAll(a), "durable") << "a write without fsync survived the crash";
  EXPECT_EQ(ReadAll(b), "durable-too+synced") << "an fdatasync'ed write was lost";
}

TEST_F(LossyfsTest, OverwriteAndTruncateWithoutFsyncAreRolledBack) {
  const std::string a = dir_ + "/a";
  Write(a, std::string(10000, 'x'), true);
  FsyncDir(dir_);
  const int fd = open(a.c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(pwrite(fd, "yyyy", 4, 4094), 4);  // across a page boundary
  ASSERT_EQ(ftruncate(fd, 5000), 0);
  char buf[8] = {};
  ASSERT_EQ(pread(fd, buf, 4, 4094), 4);
  EXPECT_EQ(std::string(buf, 4), "yyyy");
  close(fd);
  PowerLoss();
  EXPECT_EQ(ReadAll(a), std::string(10000, 'x'));
}

TEST_F(LossyfsTest, CreatedFileWithoutDirectoryFsyncIsGone) {
  const std::string f = dir_ + "/new";
  Write(f, "data", true);  // the file is fsynced, its directory is not
  ASSERT_TRUE(Exists(f));
  PowerLoss();
  EXPECT_FALSE(Exists(f)) << "a name never made durable by a directory fsync survived";
  Write(f, "data", true);
  FsyncDir(dir_);
  PowerLoss();
  EXPECT_EQ(ReadAll(f), "data");
}

TEST_F(LossyfsTest, FileInDurableDirectoryButUnsyncedDataIsEmpty) {
  const std::string f = dir_ + "/new";
  Write(f, "data", false);
  FsyncDir(dir_);  // the name is durable, the data is not
  PowerLoss();
  EXPECT_EQ(ReadAll(f), "");
}

TEST_F(LossyfsTest, RenameWithoutDirectoryFsyncIsRolledBack) {
  // RocksDB's CURRENT protocol: write a temp file, fsync it, rename it over CURRENT.
  const std::string cur = dir_ + "/CURRENT", tmp = dir_ + "/000002.dbtmp";
  Write(cur, "MANIFEST-000001\n", true);
  FsyncDir(dir_);
  Write(tmp, "MANIFEST-000002\n", true);
  ASSERT_EQ(rename(tmp.c_str(), cur.c_str()), 0);
  EXPECT_EQ(ReadAll(cur), "MANIFEST-000002\n");
  EXPECT_FALSE(Exists(tmp));
  PowerLoss();
  EXPECT_EQ(ReadAll(cur), "MANIFEST-000001\n") << "a rename without directory fsync survived";
  EXPECT_FALSE(Exists(tmp)) << "the temp file was never durably named";

  Write(tmp, "MANIFEST-000003\n", true);
  ASSERT_EQ(rename(tmp.c_str(), cur.c_str()), 0);
  FsyncDir(dir_);
  PowerLoss();
  EXPECT_EQ(ReadAll(cur), "MANIFEST-000003\n");
  EXPECT_FALSE(Exists(tmp));
}

TEST_F(LossyfsTest, UnlinkWithoutDirectoryFsyncIsRolledBack) {
  const std::string f = dir_ + "/f";
  Write(f, "kept", true);
  FsyncDir(dir_);
  ASSERT_EQ(unlink(f.c_str()), 0);
  ASSERT_FALSE(Exists(f));
  PowerLoss();
  EXPECT_EQ(ReadAll(f), "kept") << "an unlink without directory fsync survived";
  ASSERT_EQ(unlink(f.c_str()), 0);
  FsyncDir(dir_);
  PowerLoss();
  EXPECT_FALSE(Exists(f));
}

TEST_F(LossyfsTest, AfterCrashEveryOperationFailsUntilRemount) {
  const std::string f = dir_ + "/f";
  Write(f, "x", true);
  const int fd = open(f.c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(mount_.Crash());
  EXPECT_LT(write(fd, "y", 1), 0) << "a write after the power went out succeeded";
  EXPECT_NE(fdatasync(fd), 0);
  close(fd);
}

TEST_F(LossyfsTest, CleanUnmountIsASync) {
  const std::string f = dir_ + "/f";
  Write(f, "synced by umount", false);
  mount_.Unmount();
  std::string err;
  ASSERT_TRUE(mount_.Mount(&err)) << err;
  EXPECT_EQ(ReadAll(f), "synced by umount");
}

// Seeded random pwrite / ftruncate / fdatasync against an in-memory model: every read sees
// the latest writes, and after the crash the file is what it was at the last fdatasync.
TEST_F(LossyfsTest, RandomWritesMatchModelAndCrashKeepsLastSync) {
  const uint64_t seed = Seed();
  std::printf("lossyfs random writes: seed=%llu\n", static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  const std::string f = dir_ + "/f";
  Write(f, "", true);
  FsyncDir(dir_);
  const int fd = open(f.c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  std::string model, synced;
  for (int i = 0; i < 3000; ++i) {
    const uint64_t op = rng() % 10;
    if (op < 5) {
      const size_t off = rng() % 60000, n = 1 + rng() % 9000;
      std::string data(n, '\0');
      for (char& c : data) c = static_cast<char>('a' + rng() % 26);
      ASSERT_EQ(pwrite(fd, data.data(), n, static_cast<off_t>(off)), static_cast<ssize_t>(n));
      if (model.size() < off + n) model.resize(off + n, '\0');
      model.replace(off, n, data);
    } else if (op < 6) {
      const size_t size = rng() % 70000;
      ASSERT_EQ(ftruncate(fd, static_cast<off_t>(size)), 0);
      model.resize(size, '\0');
    } else if (op < 7) {
      ASSERT_EQ(fdatasync(fd), 0);
      synced = model;
    } else {
      const size_t off = rng() % 70000, n = 1 + rng() % 20000;
      std::string got(n, '\0');
      const ssize_t r = pread(fd, got.data(), n, static_cast<off_t>(off));
      const size_t want = off >= model.size() ? 0 : std::min(n, model.size() - off);
      ASSERT_EQ(r, static_cast<ssize_t>(want)) << "op " << i << ", seed " << seed;
      ASSERT_TRUE(got.compare(0, want, model, std::min(off, model.size()), want) == 0)
          << "op " << i << ": a read does not see the latest writes, seed " << seed;
    }
  }
  close(fd);
  PowerLoss();
  EXPECT_TRUE(ReadAll(f) == synced) << "after the crash the file is not its last fdatasync'ed "
                                       "content, seed "
                                    << seed;
}

TEST_F(LossyfsTest, UnknownControlCommandIsRefused) {
  EXPECT_FALSE(mount_.Control("explode"));
  EXPECT_NE(mount_.Counters().find("crashed 0"), std::string::npos) << mount_.Counters();
}

}  // namespace
}  // namespace iris::powerloss
