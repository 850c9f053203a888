// Disk full (RFC-001 §13.3 "Disk full: graceful rejection, no corruption"): the store on a
// 16 MiB tmpfs mounted by the test (root or CAP_SYS_ADMIN, as in CI; the test fails, not
// skips, when it cannot mount: a CI that cannot run it must not pass it). The disk is filled by a filler file; appends must fail with STORAGE_FULL
// while everything acknowledged stays readable, writes must succeed again once the filler
// is deleted — without a restart — and the store must reopen clean afterwards, also after
// being closed while the disk was full.
#include <gtest/gtest.h>
#include <sys/mount.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include "store/inbox_store.h"
#include "unit/store/store_test_util.h"

namespace iris::store {
namespace {

using testing::One;
using testing::ScanAll;
using testing::TempDir;

// Mounts a tmpfs of `size` on a fresh directory for the lifetime of the object.
class TmpfsMount {
 public:
  explicit TmpfsMount(const std::string& dir, const std::string& size) : dir_(dir) {
    const std::string opts = "size=" + size;
    if (mount("tmpfs", dir.c_str(), "tmpfs", 0, opts.c_str()) == 0) {
      mounted_ = true;
    } else {
      error_ = std::strerror(errno);
    }
  }
  ~TmpfsMount() {
    if (mounted_ && umount(dir_.c_str()) != 0) umount2(dir_.c_str(), MNT_DETACH);
  }
  bool mounted() const { return mounted_; }
  const std::string& error() const { return error_; }

 private:
  std::string dir_;
  bool mounted_ = false;
  std::string error_;
};

// Writes `path` until the file system is full; returns the bytes written.
size_t FillDisk(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) return 0;
  std::setvbuf(f, nullptr, _IONBF, 0);
  const std::string chunk(64 * 1024, 'f');
  size_t written = 0;
  for (;;) {
    const size_t n = std::fwrite(chunk.data(), 1, chunk.size(), f);
    written += n;
    if (n < chunk.size()) break;
  }
  // Squeeze out the last partial pages too.
  while (std::fwrite("f", 1, 1, f) == 1) ++written;
  std::fclose(f);
  return written;
}

StoreOptions SmallOptions(const std::string& path) {
  StoreOptions o = testing::TestOptions(path);
  o.block_cache_bytes = 1u << 20;
  o.resume_interval_ms = 0;  // retry Resume() on every batch
  return o;
}

TEST(DiskFullTest, WritesFailWithStorageFullAndResumeWhenSpaceIsFreed) {
  TempDir dir;
  TmpfsMount mnt(dir.path(), "16m");
  ASSERT_TRUE(mnt.mounted()) << "cannot mount a tmpfs (" << mnt.error()
                             << "); the disk-full test needs root or CAP_SYS_ADMIN";
  const std::string db = dir.Sub("db");
  const std::string filler = dir.Sub("filler");
  const StoreOptions o = SmallOptions(db);
  std::vector<uint64_t> acked;
  std::string refused_key;

  {
    Result<std::unique_ptr<InboxStore>> opened = InboxStore::Open(o);
    ASSERT_TRUE(opened.ok()) << opened.status().ToString();
    InboxStore& store = **opened;
    for (int i = 0; i < 20; ++i) {
      Result<AppendOutcome> r = store.Append(1, "pre-" + std::to_string(i), One(1, 2, "before"));
      ASSERT_TRUE(r.ok()) << r.status().ToString();
      acked.push_back(r->message_id);
    }

    ASSERT_GT(FillDisk(filler), 0u);
    // RocksDB preallocates WAL space, so a few appends may still fit; then STORAGE_FULL.
    const std::string body(4096, 'x');
    Status refusal;
    for (int i = 0; i < 5000 && refusal.ok(); ++i) {
      const std::string key = "full-" + std::to_string(i);
      Result<AppendOutcome> r = store.Append(1, key, One(1, 2, body));
      if (r.ok()) {
        acked.push_back(r->message_id);
      } else {
        refusal = r.status();
        refused_key = key;
      }
    }
    ASSERT_EQ(refusal.code(), StatusCode::kStorageFull) << refusal.ToString();
    EXPECT_GT(refusal.retry_after_ms(), 0u);
    // Stays refused while the disk is full, for appends and small records alike.
    Result<AppendOutcome> again = store.Append(1, "still-full", One(1, 2, body));
    ASSERT_FALSE(again.ok());
    EXPECT_EQ(again.status().code(), StatusCode::kStorageFull);
    EXPECT_EQ(store.PutLastSeen(1, 123).code(), StatusCode::kStorageFull);
    EXPECT_GE(store.Stats().storage_full_errors, 2u);
    // Nothing acknowledged is damaged; reads keep working.
    Result<std::vector<v1::Envelope>> all = ScanAll(store, 2);
    ASSERT_TRUE(all.ok()) << all.status().ToString();
    ASSERT_EQ(all->size(), acked.size());
    for (size_t i = 0; i < acked.size(); ++i) EXPECT_EQ((*all)[i].id(), acked[i]);

    // Space returns: the very next write succeeds, without a restart.
    ASSERT_EQ(std::remove(filler.c_str()), 0);
    Result<AppendOutcome> resumed = store.Append(1, refused_key, One(1, 2, "after"));
    ASSERT_TRUE(resumed.ok()) << resumed.status().ToString();
    EXPECT_FALSE(resumed->duplicate);  // the refused append stored nothing, not even its key
    acked.push_back(resumed->message_id);
    ASSERT_TRUE(store.PutLastSeen(1, 456).ok());
    for (int i = 0; i < 10; ++i) {
      Result<AppendOutcome> r = store.Append(1, "post-" + std::to_string(i), One(1, 2, "post"));
      ASSERT_TRUE(r.ok()) << r.status().ToString();
      acked.push_back(r->message_id);
    }

    // Full again, and closed while full.
    ASSERT_GT(FillDisk(filler), 0u);
    for (int i = 0; i < 5000; ++i) {
      Result<AppendOutcome> r = store.Append(1, "", One(1, 2, body));
      if (!r.ok()) {
        EXPECT_EQ(r.status().code(), StatusCode::kStorageFull);
        break;
      }
      acked.push_back(r->message_id);
    }
  }

  // Reopening on a full disk either works or says STORAGE_FULL; it never corrupts.
  {
    Result<std::unique_ptr<InboxStore>> full_open = InboxStore::Open(o);
    if (!full_open.ok()) {
      EXPECT_EQ(full_open.status().code(), StatusCode::kStorageFull)
          << full_open.status().ToString();
    }
  }
  ASSERT_EQ(std::remove(filler.c_str()), 0);
  Result<std::unique_ptr<InboxStore>> reopened = InboxStore::Open(o);
  ASSERT_TRUE(reopened.ok()) << reopened.status().ToString();
  Result<std::vector<v1::Envelope>> all = ScanAll(**reopened, 2);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), acked.size());
  for (size_t i = 0; i < acked.size(); ++i) EXPECT_EQ((*all)[i].id(), acked[i]);
  Result<uint64_t> seen = (*reopened)->GetLastSeen(1);
  ASSERT_TRUE(seen.ok());
  EXPECT_EQ(*seen, 456u);
  Result<AppendOutcome> r = (*reopened)->Append(1, "pre-0", One(1, 2, "dup"));
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->duplicate);
  EXPECT_EQ(r->message_id, acked[0]);
  Result<AppendOutcome> fresh = (*reopened)->Append(1, "", One(1, 2, "fresh"));
  ASSERT_TRUE(fresh.ok()) << fresh.status().ToString();
  EXPECT_GT(fresh->message_id, acked.back());
  reopened->reset();
}

}  // namespace
}  // namespace iris::store
