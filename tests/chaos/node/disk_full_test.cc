// Full disk under irisd (issue 17): irisd's data directory is a small tmpfs the test mounts
// (in a private mount namespace; root needed — the test FAILS, never skips, when it cannot
// mount). A ballast file created by the test leaves a few MiB free; clients send until they
// get STORAGE_FULL; nothing acknowledged may be lost; deleting the ballast must let writes
// resume in the same irisd process (no restart). Repeated `cycles` times.
#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "harness/chaos.h"
#include "support/wait_for.h"

namespace iris::chaos {
namespace {

constexpr uint64_t kLeaveFree = 6ull << 20;  // what the ballast leaves for irisd to fill

// Writes `path` with `bytes` bytes (fewer when the disk fills first); returns the count.
uint64_t WriteBallast(const std::string& path, uint64_t bytes) {
  FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) return 0;
  const std::string chunk(1 << 20, 'b');
  uint64_t written = 0;
  while (written < bytes) {
    const size_t n = std::fwrite(
        chunk.data(), 1, static_cast<size_t>(std::min<uint64_t>(chunk.size(), bytes - written)), f);
    written += n;
    if (n == 0) break;
  }
  std::fclose(f);
  return written;
}

uint64_t FreeBytes(const std::string& dir) {
  struct statvfs v {};
  if (statvfs(dir.c_str(), &v) != 0) return 0;
  return static_cast<uint64_t>(v.f_bavail) * v.f_frsize;
}

bool StillRunning(pid_t pid) {
  int status = 0;
  return pid > 0 && waitpid(pid, &status, WNOHANG) == 0;
}

TEST(ChaosNode, DiskFullRefusesThenResumesWithoutRestart) {
  const uint64_t seed = ChaosSeed();
  const int cycles = ChaosCycles(2, 20);
  // A private mount namespace: the tmpfs is invisible outside this process and its children.
  ASSERT_EQ(unshare(CLONE_NEWNS), 0)
      << "unshare(CLONE_NEWNS) failed: " << std::strerror(errno)
      << " — the disk-full test needs root (CAP_SYS_ADMIN); it must not be skipped";
  ASSERT_EQ(mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr), 0) << std::strerror(errno);

  testing::ServerProcess server(ChaosServerArgs());
  const std::string dir = server.data_dir();
  ASSERT_EQ(mount("tmpfs", dir.c_str(), "tmpfs", 0, "size=64m,mode=0700"), 0)
      << "cannot mount a tmpfs on " << dir << ": " << std::strerror(errno)
      << " — the disk-full test needs root (CAP_SYS_ADMIN); it must not be skipped";
  struct Unmount {
    std::string dir;
    ~Unmount() {
      if (umount(dir.c_str()) != 0) umount2(dir.c_str(), MNT_DETACH);
    }
  } unmount{dir};

  server.Start();
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  const pid_t pid = server.pid();
  ChaosOptions o;
  o.seed = seed;
  o.body_bytes = 8 * 1024;  // fills the disk quickly
  ChaosRun run(&server, o);
  run.StartClients();
  const std::string ballast = dir + "/chaos-ballast";
  const uint32_t kFull = static_cast<uint32_t>(StatusCode::kStorageFull);
  for (int i = 0; i < cycles; ++i) {
    const uint64_t free_now = FreeBytes(dir);
    ASSERT_GT(free_now, kLeaveFree) << "cycle " << i << ": the tmpfs is already full";
    ASSERT_GT(WriteBallast(ballast, free_now - kLeaveFree), 0u);
    // The clients fill the rest and are refused with STORAGE_FULL (every client once more).
    const uint64_t full_before = run.errors(kFull);
    ASSERT_TRUE(testing::PollUntil(
        [&] { return run.errors(kFull) >= full_before + static_cast<uint64_t>(o.clients); }, 60'000,
        10))
        << "cycle " << i << ": no STORAGE_FULL within 60 s (" << run.errors(kFull) - full_before
        << " seen, " << FreeBytes(dir) << " bytes free, acks " << run.acks() << ")";
    ASSERT_TRUE(StillRunning(pid)) << "irisd exited on a full disk";
    // Free space: writes resume in the same process.
    ASSERT_EQ(std::remove(ballast.c_str()), 0);
    const uint64_t acks = run.acks();
    ASSERT_TRUE(run.WaitAcks(acks + 2 * static_cast<uint64_t>(o.clients), 60'000))
        << "cycle " << i << ": writes did not resume after freeing space";
    ASSERT_TRUE(StillRunning(pid)) << "irisd restarted or exited";
    ASSERT_EQ(server.pid(), pid);
  }
  const CheckerReport r = run.FinishAndCheck(
      "disk-full", cycles, "\"storage_full\":" + std::to_string(run.errors(kFull)) + ",");
  EXPECT_GE(r.refused, static_cast<uint64_t>(cycles * o.clients));
  server.Stop(SIGTERM);
}

}  // namespace
}  // namespace iris::chaos
