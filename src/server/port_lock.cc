#include "server/port_lock.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>

namespace iris::server {
namespace {

// The abstract-namespace address of `port`'s lock; *len is its length for bind/connect.
sockaddr_un LockAddress(uint16_t port, socklen_t* len) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  const std::string name = "iris-client-port-" + std::to_string(port);
  a.sun_path[0] = '\0';  // abstract: no file, gone with the last descriptor
  memcpy(a.sun_path + 1, name.data(), name.size());
  *len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
  return a;
}

// The pid of the process holding `port`'s lock, or 0 when it cannot be told.
pid_t HolderPid(uint16_t port) {
  socklen_t len = 0;
  const sockaddr_un a = LockAddress(port, &len);
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return 0;
  pid_t pid = 0;
  if (connect(fd, reinterpret_cast<const sockaddr*>(&a), len) == 0) {
    ucred cred{};
    socklen_t cl = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) == 0) pid = cred.pid;
  }
  close(fd);
  return pid;
}

}  // namespace

Result<std::unique_ptr<PortLock>> PortLock::Acquire(uint16_t port,
                                                    const std::string& listen_address) {
  socklen_t len = 0;
  const sockaddr_un a = LockAddress(port, &len);
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0)
    return Internal(std::string("cannot create the client port lock: ") + strerror(errno));
  if (bind(fd, reinterpret_cast<const sockaddr*>(&a), len) != 0) {
    const int err = errno;
    close(fd);
    if (err != EADDRINUSE) {
      return Internal("cannot take the client port lock of " + listen_address + ": " +
                      strerror(err));
    }
    const pid_t holder = HolderPid(port);
    return Unavailable("client address " + listen_address +
                           " is already served by another irisd (" +
                           (holder > 0 ? "pid " + std::to_string(holder) : "pid unknown") +
                           "): only the processes of one node may share a client port",
                       0);
  }
  // Listening only records our credentials for HolderPid(); nothing is ever accepted.
  listen(fd, 8);
  return std::unique_ptr<PortLock>(new PortLock(fd));
}

PortLock::~PortLock() { close(fd_); }

}  // namespace iris::server
