#include "server/port_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace iris::server {
namespace {

std::string LockDir() { return access("/run/lock", W_OK | X_OK) == 0 ? "/run/lock" : "/tmp"; }

std::string ReadHolder(int fd) {
  char buf[512];
  const ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
  if (n <= 0) return "";
  std::string s(buf, static_cast<size_t>(n));
  while (!s.empty() && (s.back() == '\n' || s.back() == '\0')) s.pop_back();
  return s;
}

}  // namespace

std::string PortLock::PathFor(uint16_t port) {
  return LockDir() + "/iris-client-port-" + std::to_string(port) + ".lock";
}

Result<std::unique_ptr<PortLock>> PortLock::Acquire(uint16_t port,
                                                    const std::string& listen_address,
                                                    const std::string& data_dir) {
  const std::string path = PathFor(port);
  // A holder that stops removes the file while still holding the lock, so a file we locked
  // may already be unlinked: then lock the new one (a few rounds at most).
  for (int attempt = 0; attempt < 8; ++attempt) {
    bool writable = true;
    int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0 && (errno == EACCES || errno == EPERM)) {
      // Another user's file (sticky directory): flock works on a read-only descriptor.
      writable = false;
      fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    }
    if (fd < 0) {
      return Internal("cannot open the client port lock file " + path + ": " + strerror(errno));
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      const std::string holder = ReadHolder(fd);
      close(fd);
      if (err != EWOULDBLOCK) {
        return Internal("cannot lock " + path + ": " + strerror(err));
      }
      return Unavailable("client address " + listen_address +
                             " is already served by another irisd (" +
                             (holder.empty() ? std::string("holder unknown") : holder) + "; lock " +
                             path + "): only the processes of one node may share a client port",
                         0);
    }
    struct stat held = {};
    struct stat named = {};
    if (fstat(fd, &held) != 0 || stat(path.c_str(), &named) != 0 || held.st_ino != named.st_ino ||
        held.st_dev != named.st_dev) {
      close(fd);  // the previous holder removed it meanwhile
      continue;
    }
    if (writable) {
      fchmod(fd, 0644);  // whatever the umask: others read who holds it
      const std::string who = "pid " + std::to_string(getpid()) + ", data dir " + data_dir + "\n";
      if (ftruncate(fd, 0) == 0) {
        [[maybe_unused]] ssize_t n = pwrite(fd, who.data(), who.size(), 0);
      }
    }
    return std::unique_ptr<PortLock>(new PortLock(fd, path));
  }
  return Internal("cannot lock " + path + ": it keeps being replaced");
}

PortLock::~PortLock() {
  // Unlink first, while still locked: a process that opened this file meanwhile finds it
  // unlinked after locking it and retries with a fresh file.
  unlink(path_.c_str());
  close(fd_);
}

}  // namespace iris::server
