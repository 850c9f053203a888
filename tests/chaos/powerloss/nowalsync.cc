// LD_PRELOAD mutation for the power-loss test: fsync and fdatasync of a file whose name ends
// in ".log" (RocksDB's write-ahead logs) return 0 without syncing, which is what a store that
// acknowledges before its WAL is durable (WriteOptions::sync = false) does. Every other file
// and every directory is synced as usual, so the database stays openable after a crash and
// the only thing lost is what the acknowledgements claimed was durable.
#include <dlfcn.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

namespace {

bool IsWal(int fd) {
  char link[64];
  char path[4096];
  std::snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  const ssize_t n = readlink(link, path, sizeof path - 1);
  if (n < 4) return false;
  return std::memcmp(path + n - 4, ".log", 4) == 0;
}

using SyncFn = int (*)(int);

SyncFn Next(const char* name) { return reinterpret_cast<SyncFn>(dlsym(RTLD_NEXT, name)); }

}  // namespace

extern "C" int fdatasync(int fd) {
  static SyncFn real = Next("fdatasync");
  return IsWal(fd) ? 0 : real(fd);
}

extern "C" int fsync(int fd) {
  static SyncFn real = Next("fsync");
  return IsWal(fd) ? 0 : real(fd);
}
