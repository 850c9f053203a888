#pragma once
// A mounted iris_lossyfs for the power-loss tests: starts the daemon over a backing
// directory, waits (deadline) for the mount to answer, injects a power loss through the
// control file, and always unmounts (fusermount3 -u, else umount -l) on destruction.

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "support/wait_for.h"

namespace iris::powerloss {

// Where iris_lossyfs is: $IRIS_BUILD_DIR/tests/chaos/powerloss/iris_lossyfs, else the path
// compiled in.
inline std::string LossyfsPath() {
  const char* build = std::getenv("IRIS_BUILD_DIR");
  if (build != nullptr && *build != '\0') {
    const std::string p = std::string(build) + "/tests/chaos/powerloss/iris_lossyfs";
    if (access(p.c_str(), X_OK) == 0) return p;
  }
  return IRIS_LOSSYFS;
}

// The LD_PRELOAD library that makes WAL syncs no-ops (nowalsync.cc): the mutation.
inline std::string NoWalSyncPath() {
  const char* build = std::getenv("IRIS_BUILD_DIR");
  if (build != nullptr && *build != '\0') {
    const std::string p =
        std::string(build) + "/tests/chaos/powerloss/libiris_lossyfs_nowalsync.so";
    if (access(p.c_str(), R_OK) == 0) return p;
  }
  return IRIS_LOSSYFS_NOWALSYNC;
}

inline uint64_t EnvOr(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::strtoull(v, nullptr, 10) : fallback;
}

// IRIS_CHAOS_SEED replays a run; otherwise a fresh seed per run. Printed by the caller.
inline uint64_t Seed() {
  const uint64_t s = EnvOr("IRIS_CHAOS_SEED", 0);
  return s != 0 ? s
                : (static_cast<uint64_t>(std::random_device{}()) << 32) | std::random_device{}();
}

// Power losses per test: IRIS_POWERLOSS_CYCLES, else 100 with IRIS_CHAOS_LONG=1, else `ci`.
inline uint64_t Cycles(uint64_t ci) {
  return EnvOr("IRIS_POWERLOSS_CYCLES", EnvOr("IRIS_CHAOS_LONG", 0) != 0 ? 100 : ci);
}

// Runs argv to completion; returns its exit status (-1 when it could not run).
inline int Run(const std::vector<std::string>& argv) {
  const pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    std::vector<char*> a;
    for (const std::string& s : argv) a.push_back(const_cast<char*>(s.c_str()));
    a.push_back(nullptr);
    execvp(a[0], a.data());
    _exit(127);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

class LossyMount {
 public:
  // Creates both directories if missing. Does not mount.
  LossyMount(std::string backing, std::string mountpoint)
      : backing_(std::move(backing)), mnt_(std::move(mountpoint)) {
    mkdir(backing_.c_str(), 0700);
    mkdir(mnt_.c_str(), 0700);
  }
  ~LossyMount() { Unmount(); }
  LossyMount(const LossyMount&) = delete;
  LossyMount& operator=(const LossyMount&) = delete;

  // Starts the daemon and waits up to 10 s for the control file to appear. False (with
  // *error) when the daemon exits or the mount does not appear.
  bool Mount(std::string* error) {
    pid_ = fork();
    if (pid_ < 0) {
      *error = "fork failed";
      return false;
    }
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGTERM);  // a dying test takes the mount with it (auto_unmount)
      execl(LossyfsPath().c_str(), "iris_lossyfs", backing_.c_str(), mnt_.c_str(), nullptr);
      _exit(127);
    }
    bool exited = false;
    const bool up = testing::PollUntil(
        [&] {
          int status = 0;
          if (!exited && waitpid(pid_, &status, WNOHANG) == pid_) exited = true;
          struct stat st {};
          return exited || stat(ctl().c_str(), &st) == 0;
        },
        10'000);
    if (exited || !up) {
      *error = exited ? "iris_lossyfs exited before the mount appeared (is /dev/fuse usable?)"
                      : "the mount did not appear within 10 s";
      if (!exited) Unmount();
      pid_ = -1;
      return false;
    }
    return true;
  }

  // fusermount3 -u, else umount -l; then reaps the daemon (SIGKILL after 10 s). Idempotent.
  void Unmount() {
    if (pid_ <= 0) return;
    if (Run({"fusermount3", "-u", "-q", mnt_}) != 0) Run({"umount", "-l", mnt_});
    int status = 0;
    bool reaped =
        testing::PollUntil([&] { return waitpid(pid_, &status, WNOHANG) == pid_; }, 10'000);
    if (!reaped) {
      kill(pid_, SIGKILL);
      waitpid(pid_, &status, 0);
      Run({"umount", "-l", mnt_});
    }
    pid_ = -1;
  }

  // Writes a command (crash | sync) to the control file; true when accepted.
  bool Control(const std::string& cmd) {
    const int fd = open(ctl().c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) return false;
    const bool ok = write(fd, cmd.data(), cmd.size()) == static_cast<ssize_t>(cmd.size());
    close(fd);
    return ok;
  }
  bool Crash() { return Control("crash"); }
  bool Sync() { return Control("sync"); }

  // The daemon's counters ("writes N\nfsyncs N\n...").
  std::string Counters() const {
    std::ifstream in(ctl());
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }

  bool mounted() const { return pid_ > 0; }
  const std::string& mountpoint() const { return mnt_; }
  const std::string& backing() const { return backing_; }
  std::string ctl() const { return mnt_ + "/.lossyfs-ctl"; }

 private:
  std::string backing_;
  std::string mnt_;
  pid_t pid_ = -1;
};

}  // namespace iris::powerloss
